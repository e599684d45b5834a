//! File helpers every adapter uses: atomic replacement of a file (write a temporary file
//! beside it, fsync, rename), so that a reader or a crash sees the old or the new content,
//! never half of one.

use std::io::Write;
use std::path::Path;

use anyhow::{Context, Result};

/// Writes `data` to `path` via a temp file in the same directory, fsync and rename.
///
/// The temp file is created new (`O_EXCL`) and not through a symlink (`O_NOFOLLOW`), under a
/// name no one can guess in advance: in a directory another user can write to, a symlink
/// planted at the temp name cannot redirect the write to another file. The rename replaces
/// `path` itself, even where `path` is a symlink.
pub fn write_atomic(path: &Path, data: &[u8], mode: u32) -> Result<()> {
    write_atomic_owned(path, data, mode, None)
}

/// [`write_atomic`], the file given exactly `mode` (whatever the umask) and, if asked, the
/// owner `(uid, gid)` before it is renamed into place: `path` never exists with other
/// permissions.
pub fn write_atomic_owned(
    path: &Path,
    data: &[u8],
    mode: u32,
    owner: Option<(u32, u32)>,
) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut attempt = 0u32;
    let (tmp, mut f) = loop {
        let tmp = path.with_extension(format!("tmp-{}-{:016x}", std::process::id(), nonce()));
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .mode(mode)
            .open(&tmp)
        {
            Ok(f) => break (tmp, f),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && attempt < 8 => attempt += 1,
            Err(e) => return Err(e).with_context(|| format!("creating {}", tmp.display())),
        }
    };
    let perms = |f: &std::fs::File| -> std::io::Result<()> {
        use std::os::unix::fs::PermissionsExt;
        if let Some((uid, gid)) = owner {
            std::os::unix::fs::fchown(f, Some(uid), Some(gid))?;
            f.set_permissions(std::fs::Permissions::from_mode(mode))?;
        }
        Ok(())
    };
    let written = f
        .write_all(data)
        .and_then(|_| perms(&f))
        .and_then(|_| f.sync_all())
        .with_context(|| format!("writing {}", tmp.display()))
        .and_then(|_| {
            std::fs::rename(&tmp, path)
                .with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))
        });
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

/// 64 bits no other process can predict: the temp file's name.
fn nonce() -> u64 {
    let mut b = [0u8; 8];
    if std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut b))
        .is_err()
    {
        // No /dev/urandom: the time's nanoseconds; O_EXCL still refuses a planted name.
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        b[..4].copy_from_slice(&t.to_le_bytes());
    }
    u64::from_le_bytes(b)
}

/// Reads a small file of an image's root filesystem (`rel`, e.g. `etc/passwd`) without ever
/// leaving `root`: the path, and every symlink on it, resolve with `root` as `/`
/// (openat2's RESOLVE_IN_ROOT, so `/etc/passwd -> /etc/shadow` reads the image's own
/// shadow, never the host's). Only a regular file of at most `max` bytes is read: a FIFO (which
/// would hang the read), a device (`/dev/zero` grows memory forever) or a huge file is an
/// error naming it. `Ok(None)` when it does not exist.
pub fn read_in_root(root: &Path, rel: &str, max: u64) -> Result<Option<String>> {
    use nix::fcntl::{openat2, OFlag, OpenHow, ResolveFlag};
    let what = || format!("the image's /{rel}");
    let dir = std::fs::File::open(root).with_context(|| format!("opening {}", root.display()))?;
    let how = OpenHow::new()
        // O_NONBLOCK: opening a FIFO must not wait for a writer.
        .flags(OFlag::O_RDONLY | OFlag::O_CLOEXEC | OFlag::O_NONBLOCK | OFlag::O_NOCTTY)
        .resolve(ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS);
    let fd = match openat2(&dir, rel, how) {
        Ok(fd) => fd,
        Err(nix::errno::Errno::ENOENT) | Err(nix::errno::Errno::ENOTDIR) => return Ok(None),
        Err(e) => return Err(e).with_context(what),
    };
    crate::image::read_regular(std::fs::File::from(fd), &what, max).map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_writes_replace_the_file_and_leave_no_temp_file() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("a.json");
        write_atomic(&p, b"one", 0o600).unwrap();
        write_atomic(&p, b"two", 0o600).unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"two");
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let names: Vec<_> = std::fs::read_dir(t.path()).unwrap().collect();
        assert_eq!(names.len(), 1, "{names:?}");
        // A symlink at the destination is replaced, never written through.
        let victim = t.path().join("victim");
        std::fs::write(&victim, "keep").unwrap();
        let link = t.path().join("link.conf");
        std::os::unix::fs::symlink(&victim, &link).unwrap();
        write_atomic(&link, b"upstream", 0o644).unwrap();
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "keep");
        assert_eq!(std::fs::read_to_string(&link).unwrap(), "upstream");
        assert!(!std::fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink());
        // A failed write leaves no temp file behind.
        assert!(write_atomic(&t.path().join("missing/x"), b"x", 0o600).is_err());
    }

    #[test]
    fn image_files_are_read_inside_the_root_only_and_bounded() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("rootfs");
        std::fs::create_dir_all(root.join("etc")).unwrap();
        std::fs::write(root.join("etc/group"), "root:x:0:\n").unwrap();
        assert_eq!(
            read_in_root(&root, "etc/group", 1024).unwrap().as_deref(),
            Some("root:x:0:\n")
        );
        assert_eq!(read_in_root(&root, "etc/passwd", 1024).unwrap(), None);
        // Absolute and escaping symlinks resolve inside the root: never the host's files.
        let host_file = t.path().join("host-secret");
        std::fs::write(&host_file, "secret").unwrap();
        std::os::unix::fs::symlink(&host_file, root.join("etc/passwd")).unwrap();
        assert_eq!(read_in_root(&root, "etc/passwd", 1024).unwrap(), None);
        std::fs::remove_file(root.join("etc/passwd")).unwrap();
        std::os::unix::fs::symlink("../../host-secret", root.join("etc/passwd")).unwrap();
        assert_eq!(read_in_root(&root, "etc/passwd", 1024).unwrap(), None);
        std::fs::remove_file(root.join("etc/passwd")).unwrap();
        // A FIFO does not hang; a directory or a huge file is refused, named.
        nix::unistd::mkfifo(&root.join("etc/passwd"), nix::sys::stat::Mode::S_IRWXU).unwrap();
        let e = read_in_root(&root, "etc/passwd", 1024)
            .unwrap_err()
            .to_string();
        assert!(e.contains("/etc/passwd is not a regular file"), "{e}");
        std::fs::create_dir(root.join("etc/shadow")).unwrap();
        assert!(read_in_root(&root, "etc/shadow", 1024).is_err());
        std::fs::write(root.join("etc/big"), vec![b'x'; 2048]).unwrap();
        let e = read_in_root(&root, "etc/big", 1024)
            .unwrap_err()
            .to_string();
        assert!(e.contains("larger than 1024 bytes"), "{e}");
        // /dev/zero as a symlink resolves inside the root, where there is none.
        std::os::unix::fs::symlink("/dev/zero", root.join("etc/zero")).unwrap();
        assert_eq!(read_in_root(&root, "etc/zero", 1024).unwrap(), None);
    }
}
