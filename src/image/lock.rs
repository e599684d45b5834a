//! Per-object exclusive locks (`flock` on a lock file beside the object). The holder deletes
//! the lock file when it releases it, so that none pile up (one per blob ever pulled
//! otherwise). That creates a race: a waiter that opened the file before the deletion gets a
//! lock on an unlinked inode while a newcomer locks a fresh file. So after locking we check
//! that the path still names the inode we locked, and start over if it does not.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};

use super::ImageError;

/// A held lock; released on drop (or when the process dies).
pub(crate) struct Lock {
    _flock: Flock<File>,
    path: PathBuf,
    /// Exclusive holders delete the file; shared ones cannot know whether others still
    /// hold it, so they leave it (the next exclusive holder deletes it).
    exclusive: bool,
}

impl Drop for Lock {
    /// Deletes the lock file while still holding the lock: waiters notice (see the module
    /// documentation) and retry on a new file. Runs before `_flock` drops and unlocks.
    fn drop(&mut self) {
        if self.exclusive {
            let _ = fs::remove_file(&self.path);
        }
    }
}

fn errno(e: nix::errno::Errno) -> io::Error {
    io::Error::from_raw_os_error(e as i32)
}

/// Blocks until the lock at `path` is held.
pub(crate) fn lock(path: &Path) -> Result<Lock, ImageError> {
    acquire(path, FlockArg::LockExclusive).map(|l| l.expect("blocking lock always returns one"))
}

/// Blocks until a shared hold of the lock at `path` is had: any number of shared holders,
/// no exclusive one (a layer used as a lower while another is unpacked over it, which a
/// prune, taking the lock exclusively, must not remove).
pub(crate) fn lock_shared(path: &Path) -> Result<Lock, ImageError> {
    acquire(path, FlockArg::LockShared).map(|l| l.expect("blocking lock always returns one"))
}

/// Takes the lock at `path` if nobody holds it; `None` if somebody does.
pub(crate) fn try_lock(path: &Path) -> Result<Option<Lock>, ImageError> {
    acquire(path, FlockArg::LockExclusiveNonblock)
}

fn acquire(path: &Path, how: FlockArg) -> Result<Option<Lock>, ImageError> {
    loop {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(path)
            .map_err(|e| ImageError::io(path, "opening lock", e))?;
        let flock = match Flock::lock(file, how) {
            Ok(l) => l,
            Err((_, nix::errno::Errno::EWOULDBLOCK)) => return Ok(None),
            Err((_, e)) => return Err(ImageError::io(path, "locking", errno(e))),
        };
        let held = flock
            .metadata()
            .map_err(|e| ImageError::io(path, "checking lock", e))?;
        match fs::metadata(path) {
            Ok(m) if m.ino() == held.ino() && m.dev() == held.dev() => {
                return Ok(Some(Lock {
                    _flock: flock,
                    path: path.to_path_buf(),
                    exclusive: !matches!(how, FlockArg::LockShared),
                }))
            }
            Ok(_) => continue,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(ImageError::io(path, "checking lock", e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exclusive_and_survives_removal_by_holder() {
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join(".lock-x");
        let a = lock(&p).unwrap();
        assert!(try_lock(&p).unwrap().is_none());
        // A waiter blocked on the old file must end up holding the new one, alone.
        let waiter = std::thread::spawn({
            let p = p.clone();
            move || {
                let l = lock(&p).unwrap();
                let ino = fs::metadata(&p).unwrap().ino();
                std::thread::sleep(std::time::Duration::from_millis(100));
                drop(l);
                ino
            }
        });
        std::thread::sleep(std::time::Duration::from_millis(50));
        drop(a);
        std::thread::sleep(std::time::Duration::from_millis(20));
        // While the waiter holds the (new) file, nobody else gets it.
        assert!(try_lock(&p).unwrap().is_none());
        let ino = waiter.join().unwrap();
        assert_ne!(ino, 0);
        // Released locks leave no file behind.
        assert!(!p.exists());
        let b = try_lock(&p).unwrap().expect("free again");
        drop(b);
        assert!(!p.exists());
    }
}
