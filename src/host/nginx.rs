//! nginx, as the proxy switch backends use it (`ops::proxy`): upstream files shim owns
//! written atomically, checked with `nginx -t`, applied with a reload of the nginx unit
//! through systemd, and confirmed by seeing a new generation of workers. [`apply_files`] is
//! the one "write, keep a backup, check, reload, confirm, restore on failure" path: every
//! failure restores the previous files, so nginx keeps serving what it served.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};

use crate::host::Host;

/// What was in the file before a switch, to put back on failure.
#[derive(Clone)]
struct Backup {
    path: PathBuf,
    previous: Option<Vec<u8>>,
}

impl Backup {
    fn restore(&self) -> Result<()> {
        match &self.previous {
            Some(bytes) => crate::host::fsutil::write_atomic(&self.path, bytes, 0o644),
            None => match std::fs::remove_file(&self.path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    Err(e).with_context(|| format!("removing {}", self.path.display()))
                }
                _ => Ok(()),
            },
        }
    }
}

/// Writes `content` to `path` atomically if it differs; returns the backup, or None when the
/// file already says exactly this.
fn write_upstream(path: &Path, content: &str) -> Result<Option<Backup>> {
    check_owned(path)?;
    let previous = match std::fs::read(path) {
        Ok(b) => Some(b),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    if previous.as_deref() == Some(content.as_bytes()) {
        return Ok(None);
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    crate::host::fsutil::write_atomic(path, content.as_bytes(), 0o644)?;
    Ok(Some(Backup {
        path: path.to_path_buf(),
        previous,
    }))
}

/// Refuses (bad input: nothing is changed) to replace a file shim did not write: shim's
/// upstream files start with the header `plan::upstream` renders. An absent file is fine.
pub fn check_owned(path: &Path) -> Result<()> {
    use std::io::Read;
    let mut head = [0u8; 64];
    let n = match std::fs::File::open(path) {
        Ok(f) => f.take(head.len() as u64).read(&mut head).unwrap_or(0),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    if head[..n].starts_with(crate::plan::upstream::HEADER.as_bytes()) {
        return Ok(());
    }
    Err(crate::error::BadInput(format!(
        "{} exists and was not written by shim (it does not start with {:?}): shim only replaces its own upstream files; point proxy.file at another path, or remove the file",
        path.display(),
        crate::plan::upstream::HEADER
    ))
    .into())
}

/// Whether [`apply_files`] reloads nginx when it finds it stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reload {
    /// Reload, and fail (restoring the files) if nginx does not run.
    Always,
    /// Reload only a running nginx; a stopped one reads the files when it starts (`shim stop`
    /// with nginx down).
    IfActive,
}

/// Writes each of `files` (path, text; those that already say it are left), then, if one
/// changed, checks and reloads nginx ([`apply`]). Any failure puts back every file written,
/// so nginx keeps serving what it served. Returns, per file, whether it changed.
pub fn apply_files(
    host: &Host,
    unit: &str,
    files: &[(&Path, String)],
    when: Reload,
) -> Result<Vec<bool>> {
    let mut backups = Vec::new();
    let mut changed = Vec::new();
    for (path, text) in files {
        match write_upstream(path, text) {
            Ok(b) => {
                changed.push(b.is_some());
                backups.extend(b);
            }
            Err(e) => {
                restore(&backups);
                return Err(e);
            }
        }
    }
    if backups.is_empty() {
        return Ok(changed);
    }
    if when == Reload::IfActive {
        let active = unit_state(host, unit)?
            .is_some_and(|u| u.active_state == crate::host::systemd::ActiveState::Active);
        if !active {
            return Ok(changed);
        }
    }
    apply(host, unit, &backups)?;
    Ok(changed)
}

/// The nginx unit as systemd has it (None: not loaded).
fn unit_state(host: &Host, unit: &str) -> Result<Option<crate::host::systemd::UnitInfo>> {
    Ok(host
        .systemd()?
        .list_units(&[unit.to_string()])?
        .into_iter()
        .find(|u| u.name == unit))
}

/// The nginx unit, if it is active; else an error that says to start it.
pub fn require_active(host: &Host, unit: &str) -> Result<crate::host::systemd::UnitInfo> {
    match unit_state(host, unit)? {
        Some(u) if u.active_state == crate::host::systemd::ActiveState::Active => Ok(u),
        Some(u) => bail!(
            "{unit} is {}/{}: start nginx before deploying proxied processes",
            u.active_state,
            u.sub_state
        ),
        None => bail!("{unit} is not loaded: start nginx (or set [shim] nginx_unit) before deploying proxied processes"),
    }
}

/// The nginx binary, as the switch uses it.
pub trait Nginx: Send + Sync {
    /// `nginx -t`: the whole configuration, as nginx will load it.
    fn test_config(&self) -> Result<()>;
}

/// The installed nginx.
pub struct NginxBinary;

impl Nginx for NginxBinary {
    fn test_config(&self) -> Result<()> {
        let out = std::process::Command::new("nginx")
            .arg("-t")
            .output()
            .context("running nginx -t (is nginx installed?)")?;
        if !out.status.success() {
            bail!(
                "nginx -t failed:\n{}",
                String::from_utf8_lossy(&out.stderr).trim_end()
            );
        }
        Ok(())
    }
}

/// An nginx whose `nginx -t` passes or fails as a test says; it counts the calls.
#[cfg(test)]
#[derive(Default)]
pub struct FakeNginx {
    pub refuse: std::sync::atomic::AtomicBool,
    pub tests: std::sync::atomic::AtomicU32,
}

#[cfg(test)]
impl Nginx for FakeNginx {
    fn test_config(&self) -> Result<()> {
        use std::sync::atomic::Ordering;
        self.tests.fetch_add(1, Ordering::SeqCst);
        if self.refuse.load(Ordering::SeqCst) {
            bail!("nginx -t failed:\nnginx: [emerg] (fake) refused");
        }
        Ok(())
    }
}

/// Reloads nginx through systemd and waits until a worker that did not exist before is
/// running: nginx starts new workers only once it has loaded the new configuration.
pub fn reload(host: &Host, unit: &str, timeout: Duration) -> Result<()> {
    let sd = host.systemd()?;
    let info = unit_state(host, unit)?
        .ok_or_else(|| anyhow!("{unit} is not loaded; shim reloads it to apply upstream changes (set [shim] nginx_unit)"))?;
    if info.active_state != crate::host::systemd::ActiveState::Active || info.main_pid == 0 {
        bail!(
            "{unit} is {}/{}: start nginx before deploying proxied processes",
            info.active_state,
            info.sub_state
        );
    }
    let master = info.main_pid;
    let before = host.procfs.children(master);
    let job = sd.reload_unit(unit, timeout)?;
    if !job.ok() {
        bail!("reloading {unit}: job {}", job.result);
    }
    let deadline = host.clock.now() + timeout;
    loop {
        let now = host.procfs.children(master);
        if now.iter().any(|p| !before.contains(p)) {
            return Ok(());
        }
        if host.clock.now() > deadline {
            bail!("{unit} reloaded but no new nginx worker appeared within {timeout:?}; the new configuration was not taken");
        }
        host.clock.sleep(Duration::from_millis(10));
    }
}

/// `nginx -t`, then the reload; on failure every file of `backups` is restored (and, when the
/// reload itself failed, nginx reloaded again on the old files), so nginx keeps serving
/// what it served. The error says which failed, and both if the second reload fails too.
fn apply(host: &Host, unit: &str, backups: &[Backup]) -> Result<()> {
    if let Err(e) = host.nginx.test_config() {
        restore(backups);
        return Err(e.context("the new upstream was refused; previous file restored"));
    }
    if let Err(e) = reload(host, unit, Duration::from_secs(30)) {
        restore(backups);
        // Put nginx back on the old file too; if this fails as well, the error says both.
        let again = reload(host, unit, Duration::from_secs(30));
        let e = e.context("reloading nginx failed; previous upstream restored");
        return Err(match again {
            Ok(()) => e,
            Err(e2) => e.context(format!(
                "and reloading it with the previous file failed too: {e2:#}"
            )),
        });
    }
    Ok(())
}

/// Puts back what `backups` hold; a failure is reported, the others still restored.
fn restore(backups: &[Backup]) {
    for b in backups {
        if let Err(e) = b.restore() {
            eprintln!("shim: restoring an upstream file failed: {e:#}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_is_skipped_when_unchanged_and_restorable() {
        let t = tempfile::tempdir().unwrap();
        let f = t.path().join("shim/app.conf");
        let one = crate::plan::upstream::render_upstream(
            "u",
            "app",
            "web",
            "r1",
            "",
            &crate::plan::proxy::at_ports(&[1]),
        );
        let two = crate::plan::upstream::render_upstream(
            "u",
            "app",
            "web",
            "r2",
            "",
            &crate::plan::proxy::at_ports(&[2]),
        );
        let b = write_upstream(&f, &one).unwrap().expect("written");
        assert_eq!(std::fs::read_to_string(&f).unwrap(), one);
        assert!(write_upstream(&f, &one).unwrap().is_none());
        let b2 = write_upstream(&f, &two).unwrap().expect("written");
        b2.restore().unwrap();
        assert_eq!(std::fs::read_to_string(&f).unwrap(), one);
        b.restore().unwrap();
        assert!(
            !f.exists(),
            "restoring the first write removes the file it created"
        );
    }

    #[test]
    fn a_file_shim_did_not_write_is_never_replaced() {
        let t = tempfile::tempdir().unwrap();
        let f = t.path().join("nginx.conf");
        std::fs::write(&f, "events {}\n").unwrap();
        let up = crate::plan::upstream::render_upstream(
            "u",
            "app",
            "web",
            "r1",
            "",
            &crate::plan::proxy::at_ports(&[1]),
        );
        let e = write_upstream(&f, &up)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains("was not written by shim"), "{e}");
        assert_eq!(std::fs::read_to_string(&f).unwrap(), "events {}\n");
        assert!(check_owned(&t.path().join("absent.conf")).is_ok());
    }
}
