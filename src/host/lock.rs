//! Per-service lock for operations that change a service (start, upgrade, rollback, stop):
//! an flock on `/run/shim/locks/<id>.lock`, whose content names the holder (pid and start
//! time) so that a waiter that gives up can say who holds it. The kernel drops the lock when
//! the holder dies, even by SIGKILL: a crashed upgrade never leaves a stale lock.

use std::io::{Seek, Write};
use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use nix::fcntl::{Flock, FlockArg};

/// Another command holds the lock.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Busy(String);

#[derive(Debug)]
pub struct ServiceLock(#[allow(dead_code)] Flock<std::fs::File>);

fn holder_line() -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let args: Vec<String> = std::env::args().collect();
    format!(
        "pid {} since {now} (unix time): {}\n",
        std::process::id(),
        args.join(" ")
    )
}

impl ServiceLock {
    /// Takes the lock if nobody holds it; `None` if another shim command does (the probe
    /// skips a run rather than wait for an upgrade).
    pub fn try_acquire(run_dir: &Path, id: &str) -> Result<Option<ServiceLock>> {
        match Self::acquire(run_dir, id, Duration::ZERO) {
            Ok(l) => Ok(Some(l)),
            Err(e) if e.downcast_ref::<Busy>().is_some() => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Takes the lock, waiting up to `timeout` for another holder to finish.
    pub fn acquire(run_dir: &Path, id: &str, timeout: Duration) -> Result<ServiceLock> {
        // The id names a file: refuse anything that is not a service id (`../../x`, say)
        // before touching the file system, whatever the caller checked.
        crate::config::Ident::parse(id)
            .map_err(|m| crate::error::BadInput(format!("--id: service id {m}")))?;
        let dir = crate::host::dirs::locks(run_dir);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let path = crate::host::dirs::service_lock(&dir, id);
        let deadline = Instant::now() + timeout;
        loop {
            let file = std::fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .read(true)
                .write(true)
                .open(&path)
                .with_context(|| format!("opening {}", path.display()))?;
            match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
                Ok(mut lock) => {
                    lock.set_len(0)?;
                    lock.rewind()?;
                    lock.write_all(holder_line().as_bytes())?;
                    return Ok(ServiceLock(lock));
                }
                Err((_, nix::errno::Errno::EWOULDBLOCK)) => {
                    if Instant::now() >= deadline {
                        let holder = std::fs::read_to_string(&path).unwrap_or_default();
                        return Err(Busy(format!(
                            "service {id} is locked by another shim command ({}); waited {timeout:?} (--lock-timeout)",
                            holder.trim()
                        ))
                        .into());
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err((_, e)) => {
                    return Err(e).with_context(|| format!("locking {}", path.display()))
                }
            }
        }
    }
}

/// Holds `/run/shim/lock` exclusively: port allocation and unit creation of concurrent shim
/// commands must not interleave. Released when dropped (the fd closes).
pub struct HostLock(#[allow(dead_code)] nix::fcntl::Flock<std::fs::File>);

pub fn lock_host(dirs: &crate::host::dirs::Dirs) -> Result<HostLock> {
    std::fs::create_dir_all(&dirs.run)
        .with_context(|| format!("creating {}", dirs.run.display()))?;
    let p = dirs.host_lock();
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&p)
        .with_context(|| format!("opening {}", p.display()))?;
    // Blocks until another shim command holding it is done.
    let lock = nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, e)| e)
        .with_context(|| format!("locking {}", p.display()))?;
    Ok(HostLock(lock))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_holder_waits_then_names_the_first() {
        let t = tempfile::tempdir().unwrap();
        let first = ServiceLock::acquire(t.path(), "app", Duration::ZERO).unwrap();
        let err = ServiceLock::acquire(t.path(), "app", Duration::from_millis(120)).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains(&format!("pid {}", std::process::id())),
            "{msg}"
        );
        assert!(msg.contains("--lock-timeout"), "{msg}");
        assert!(ServiceLock::try_acquire(t.path(), "app").unwrap().is_none());
        // Another service is independent.
        ServiceLock::acquire(t.path(), "other", Duration::ZERO).unwrap();
        drop(first);
        ServiceLock::acquire(t.path(), "app", Duration::ZERO).unwrap();
    }

    #[test]
    fn an_id_that_is_not_a_service_id_touches_no_file() {
        let t = tempfile::tempdir().unwrap();
        let run = t.path().join("a/b/run");
        for id in ["../../x", "a/b", "", ".."] {
            let e = ServiceLock::acquire(&run, id, Duration::ZERO).unwrap_err();
            assert_eq!(crate::error::exit_code(&e), 2, "{id}: {e}");
        }
        assert!(!t.path().join("a").exists(), "nothing created");
        assert!(!t.path().join("x.lock").exists());
    }
}
