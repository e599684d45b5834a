//! The merged view of a stack of unpacked layer directories, as overlayfs shows it, read
//! without mounting anything: a whiteout (a character device 0/0) hides the path and what is
//! below it, an opaque directory (`trusted.overlay.opaque=y`) hides the lower layers'
//! contents of that directory, a non-directory hides lower directories of the same path.
//!
//! Used while unpacking a layer on top of others (what a parent directory, a hardlink target
//! or a whited-out path is in the layers below) and to read the image's own files (its
//! /etc/passwd) before any container runs. [`resolve`] follows symlinks with the image's
//! root as `/`, so `/etc/passwd -> /etc/shadow` names the image's own shadow, never the
//! host's.

use std::fs::{self, Metadata};
use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Component, Path, PathBuf};

/// The xattr overlayfs reads to make a directory opaque.
pub(crate) const OPAQUE_XATTR: &str = "trusted.overlay.opaque";

/// What a path is in the merged view.
#[derive(Debug)]
pub(crate) enum Found {
    /// It exists: the topmost layer's copy and its metadata.
    Entry(PathBuf, Metadata),
    /// It does not exist (or a parent is not a directory).
    Missing,
    /// A parent component (relative path given) is a symlink.
    SymlinkParent(PathBuf),
}

pub(crate) fn is_whiteout(m: &Metadata) -> bool {
    m.file_type().is_char_device() && m.rdev() == 0
}

pub(crate) fn is_opaque(p: &Path) -> bool {
    matches!(xattr_get(p, OPAQUE_XATTR), Ok(Some(v)) if v == b"y")
}

/// The value of xattr `name` of `p` (not following a symlink), None if it has none.
pub(crate) fn xattr_get(p: &Path, name: &str) -> io::Result<Option<Vec<u8>>> {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    let path = CString::new(p.as_os_str().as_bytes())?;
    let key = CString::new(name)?;
    // SAFETY: NUL-terminated strings that outlive the call; a null buffer of length 0
    // asks for the value's size.
    let size = unsafe { libc::lgetxattr(path.as_ptr(), key.as_ptr(), std::ptr::null_mut(), 0) };
    let mut buf = vec![0u8; size.max(0) as usize];
    // SAFETY: NUL-terminated strings that outlive the call; buf's pointer/length describe
    // a live, writable buffer.
    let n = unsafe {
        libc::lgetxattr(
            path.as_ptr(),
            key.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    if n < 0 {
        let e = io::Error::last_os_error();
        return match e.raw_os_error() {
            Some(libc::ENODATA) | Some(libc::ENOTSUP) | Some(libc::ERANGE) => Ok(None),
            _ => Err(e),
        };
    }
    buf.truncate(n as usize);
    Ok(Some(buf))
}

fn lstat_opt(p: &Path) -> io::Result<Option<Metadata>> {
    match fs::symlink_metadata(p) {
        Ok(m) => Ok(Some(m)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        // A file where a directory was expected on the way down.
        Err(e) if e.raw_os_error() == Some(libc::ENOTDIR) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Looks `rel` (normal components only) up in `layers`, topmost first, without following a
/// symlink anywhere.
pub(crate) fn lookup(layers: &[PathBuf], rel: &Path) -> io::Result<Found> {
    let comps: Vec<Component> = rel.components().collect();
    let Some(top) = layers.first() else {
        return Ok(Found::Missing);
    };
    if comps.is_empty() {
        return Ok(match lstat_opt(top)? {
            Some(m) => Found::Entry(top.clone(), m),
            None => Found::Missing,
        });
    }
    let mut active: Vec<&PathBuf> = layers.iter().collect();
    let mut cur = PathBuf::new();
    for (i, c) in comps.iter().enumerate() {
        cur.push(c);
        let last = i + 1 == comps.len();
        let mut below = Vec::new();
        let mut first: Option<(PathBuf, Metadata)> = None;
        for l in &active {
            let p = l.join(&cur);
            let Some(m) = lstat_opt(&p)? else { continue };
            if is_whiteout(&m) || (first.is_some() && !m.is_dir()) {
                break;
            }
            let dir = m.is_dir();
            if first.is_none() {
                first = Some((p.clone(), m));
            }
            if !dir {
                break;
            }
            below.push(*l);
            if !last && is_opaque(&p) {
                break;
            }
        }
        match first {
            None => return Ok(Found::Missing),
            Some((p, m)) if last => return Ok(Found::Entry(p, m)),
            Some((_, m)) if m.file_type().is_symlink() => return Ok(Found::SymlinkParent(cur)),
            Some((_, m)) if !m.is_dir() => return Ok(Found::Missing),
            Some(_) => active = below,
        }
    }
    Ok(Found::Missing)
}

/// Cleans `target` (a symlink's target) against `base`, with the image root as `/`: `..`
/// stops at the root, as it does in a chroot.
fn join_in_root(base: &Path, target: &Path) -> PathBuf {
    let mut out: Vec<std::ffi::OsString> = if target.is_absolute() {
        Vec::new()
    } else {
        base.components()
            .filter_map(|c| match c {
                Component::Normal(n) => Some(n.to_os_string()),
                _ => None,
            })
            .collect()
    };
    for c in target.components() {
        match c {
            Component::Normal(n) => out.push(n.to_os_string()),
            Component::ParentDir => {
                out.pop();
            }
            _ => {}
        }
    }
    out.iter().collect()
}

/// Where `rel` really is, following symlinks (at most 40, like the kernel) inside the image:
/// the topmost layer's copy of the final non-symlink, None if it does not exist.
pub(crate) fn resolve(layers: &[PathBuf], rel: &Path) -> io::Result<Option<(PathBuf, Metadata)>> {
    let mut want = join_in_root(Path::new(""), rel);
    for _ in 0..40 {
        match lookup(layers, &want)? {
            Found::Missing => return Ok(None),
            Found::Entry(p, m) if m.file_type().is_symlink() => {
                let t = fs::read_link(&p)?;
                let parent = want.parent().map(Path::to_path_buf).unwrap_or_default();
                want = join_in_root(&parent, &t);
            }
            Found::Entry(p, m) => return Ok(Some((p, m))),
            Found::SymlinkParent(link) => {
                let (p, _) = match lookup(layers, &link)? {
                    Found::Entry(p, m) => (p, m),
                    _ => return Ok(None),
                };
                let t = fs::read_link(&p)?;
                let rest = want
                    .strip_prefix(&link)
                    .unwrap_or(Path::new(""))
                    .to_path_buf();
                let parent = link.parent().map(Path::to_path_buf).unwrap_or_default();
                want = join_in_root(&parent, &t).join(rest);
            }
        }
    }
    Err(io::Error::other(format!(
        "too many levels of symbolic links resolving /{}",
        rel.display()
    )))
}

/// Reads the image's file `rel` (a regular file of at most `max` bytes) through the merged
/// view of `layers` (topmost first). `Ok(None)` when it does not exist; a FIFO, a device or
/// a larger file is an error naming it.
pub fn read_in_layers(layers: &[PathBuf], rel: &str, max: u64) -> anyhow::Result<Option<String>> {
    use anyhow::Context;
    use std::os::unix::fs::OpenOptionsExt;
    let what = || format!("the image's /{rel}");
    let Some((path, meta)) = resolve(layers, Path::new(rel)).with_context(what)? else {
        return Ok(None);
    };
    if !meta.file_type().is_file() {
        anyhow::bail!("{} is not a regular file", what());
    }
    let f = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(&path)
        .with_context(what)?;
    read_regular(f, &what, max).map(Some)
}

/// The text of the open file `f` if it is a regular file of at most `max` bytes (checked on
/// the handle, and again while reading, since it may grow); `what` names it in errors.
pub fn read_regular(f: fs::File, what: &dyn Fn() -> String, max: u64) -> anyhow::Result<String> {
    use anyhow::Context;
    use std::io::Read;
    let meta = f.metadata().with_context(what)?;
    if !meta.file_type().is_file() {
        anyhow::bail!("{} is not a regular file", what());
    }
    if meta.len() > max {
        anyhow::bail!("{} is larger than {max} bytes", what());
    }
    let mut text = String::new();
    f.take(max + 1)
        .read_to_string(&mut text)
        .with_context(what)?;
    if text.len() as u64 > max {
        anyhow::bail!("{} is larger than {max} bytes", what());
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn whiteout(p: &Path) {
        nix::sys::stat::mknod(
            p,
            nix::sys::stat::SFlag::S_IFCHR,
            nix::sys::stat::Mode::from_bits_truncate(0),
            0,
        )
        .unwrap();
    }

    fn set_opaque(p: &Path) -> bool {
        use std::ffi::CString;
        use std::os::unix::ffi::OsStrExt;
        let path = CString::new(p.as_os_str().as_bytes()).unwrap();
        let key = CString::new(OPAQUE_XATTR).unwrap();
        // SAFETY: live NUL-terminated strings and a one-byte value.
        unsafe { libc::lsetxattr(path.as_ptr(), key.as_ptr(), b"y".as_ptr().cast(), 1, 0) == 0 }
    }

    #[test]
    fn lookup_honours_whiteouts_opaque_dirs_and_files_over_dirs() {
        if !nix::unistd::Uid::effective().is_root() {
            eprintln!("SKIP: whiteouts need mknod (root)");
            return;
        }
        let t = tempfile::tempdir().unwrap();
        let (lo, hi) = (t.path().join("lo"), t.path().join("hi"));
        for d in ["etc", "opq", "gone", "file-over-dir"] {
            fs::create_dir_all(lo.join(d)).unwrap();
        }
        fs::write(lo.join("etc/passwd"), "root:x:0:0::/:/bin/sh\n").unwrap();
        fs::write(lo.join("etc/shadow"), "secret").unwrap();
        fs::write(lo.join("opq/old"), "").unwrap();
        fs::write(lo.join("gone/x"), "").unwrap();
        fs::write(lo.join("file-over-dir/x"), "").unwrap();
        fs::create_dir_all(hi.join("opq")).unwrap();
        fs::create_dir_all(hi.join("etc")).unwrap();
        fs::write(hi.join("opq/new"), "").unwrap();
        whiteout(&hi.join("gone"));
        fs::write(hi.join("file-over-dir"), "").unwrap();
        symlink("/etc/shadow", hi.join("etc/link")).unwrap();
        symlink("../../../etc", hi.join("up")).unwrap();
        let layers = vec![hi.clone(), lo.clone()];
        let found = |p: &str| match lookup(&layers, Path::new(p)).unwrap() {
            Found::Entry(path, _) => Some(path),
            _ => None,
        };
        assert_eq!(found("etc/passwd"), Some(lo.join("etc/passwd")));
        assert_eq!(found("gone"), None);
        assert_eq!(found("gone/x"), None);
        assert_eq!(found("file-over-dir/x"), None);
        assert_eq!(found("opq/old"), Some(lo.join("opq/old")));
        if set_opaque(&hi.join("opq")) {
            assert_eq!(found("opq/old"), None);
            assert_eq!(found("opq/new"), Some(hi.join("opq/new")));
        } else {
            eprintln!("SKIP (opaque part): this filesystem refuses trusted xattrs");
        }
        assert!(matches!(
            lookup(&layers, Path::new("up/passwd")).unwrap(),
            Found::SymlinkParent(p) if p == Path::new("up")
        ));
        // Symlinks resolve inside the image, `..` stopping at its root.
        assert_eq!(
            read_in_layers(&layers, "etc/link", 100).unwrap().as_deref(),
            Some("secret")
        );
        assert_eq!(
            read_in_layers(&layers, "up/passwd", 100)
                .unwrap()
                .as_deref(),
            Some("root:x:0:0::/:/bin/sh\n")
        );
        assert_eq!(read_in_layers(&layers, "gone/x", 100).unwrap(), None);
        symlink("loop", hi.join("loop")).unwrap();
        assert!(read_in_layers(&layers, "loop", 100).is_err());
    }
}
