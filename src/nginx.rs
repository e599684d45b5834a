//! Pointing nginx at a process's instances: the upstream file shim owns (rendered purely by
//! [`render_upstream`]), written atomically, checked with `nginx -t`, applied with a reload of
//! the nginx unit through systemd, and confirmed by seeing a new generation of workers.
//! Every failure restores the previous file, so nginx keeps serving what it served.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};

use crate::systemd::Systemd;

/// The upstream block for `ports` (loopback only: instances share the host's network).
pub fn render_upstream(
    upstream: &str,
    service: &str,
    process: &str,
    revision: &str,
    ports: &[u16],
) -> String {
    let mut out = format!(
        "# Written by shim for service {service}, process {process}, revision {revision}.\n\
         # Do not edit: the next `shim upgrade` replaces it.\n\
         upstream {upstream} {{\n"
    );
    for p in ports {
        out.push_str(&format!("    server 127.0.0.1:{p} max_fails=0;\n"));
    }
    out.push_str("}\n");
    out
}

/// The revision an upstream file written by shim points at (from its header), if any.
pub fn file_revision(text: &str) -> Option<&str> {
    let first = text.lines().next()?;
    let rest = first.strip_prefix("# Written by shim for service ")?;
    rest.rsplit_once(", revision ")
        .map(|(_, r)| r.trim_end_matches('.'))
}

/// What was in the file before a switch, to put back on failure.
pub struct Backup {
    path: PathBuf,
    previous: Option<Vec<u8>>,
}

impl Backup {
    pub fn restore(&self) -> Result<()> {
        match &self.previous {
            Some(bytes) => crate::state::write_atomic(&self.path, bytes, 0o644),
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
pub fn write_upstream(path: &Path, content: &str) -> Result<Option<Backup>> {
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
    crate::state::write_atomic(path, content.as_bytes(), 0o644)?;
    Ok(Some(Backup {
        path: path.to_path_buf(),
        previous,
    }))
}

/// `nginx -t`: the whole configuration, as nginx will load it.
pub fn test_config() -> Result<()> {
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

fn children(pid: u32) -> BTreeSet<u32> {
    let path = format!("/proc/{pid}/task/{pid}/children");
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

/// Reloads nginx through systemd and waits until a worker that did not exist before is
/// running: nginx starts new workers only once it has loaded the new configuration.
pub fn reload(sd: &dyn Systemd, unit: &str, timeout: Duration) -> Result<()> {
    let info = sd
        .list_units(&[unit.to_string()])?
        .into_iter()
        .find(|u| u.name == unit)
        .ok_or_else(|| anyhow!("{unit} is not loaded; shim reloads it to apply upstream changes (set [shim] nginx_unit)"))?;
    if info.active_state != "active" || info.main_pid == 0 {
        bail!(
            "{unit} is {}/{}: start nginx before deploying proxied processes",
            info.active_state,
            info.sub_state
        );
    }
    let master = info.main_pid;
    let before = children(master);
    let job = sd.reload_unit(unit, timeout)?;
    if !job.ok() {
        bail!("reloading {unit}: job {}", job.result);
    }
    let deadline = Instant::now() + timeout;
    loop {
        let now = children(master);
        if now.iter().any(|p| !before.contains(p)) {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("{unit} reloaded but no new nginx worker appeared within {timeout:?}; the new configuration was not taken");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstream_snapshot() {
        insta::assert_snapshot!(render_upstream(
            "billing_app_web",
            "billing_app",
            "web",
            "279d9035886d",
            &[20001, 20002]
        ));
    }

    #[test]
    fn file_revision_reads_the_header() {
        let t = render_upstream("u", "svc", "web", "279d9035886d", &[1]);
        assert_eq!(file_revision(&t), Some("279d9035886d"));
        assert_eq!(file_revision("upstream u { server 127.0.0.1:1; }"), None);
    }

    #[test]
    fn write_is_skipped_when_unchanged_and_restorable() {
        let t = tempfile::tempdir().unwrap();
        let f = t.path().join("shim/app.conf");
        let b = write_upstream(&f, "one").unwrap().expect("written");
        assert_eq!(std::fs::read_to_string(&f).unwrap(), "one");
        assert!(write_upstream(&f, "one").unwrap().is_none());
        let b2 = write_upstream(&f, "two").unwrap().expect("written");
        b2.restore().unwrap();
        assert_eq!(std::fs::read_to_string(&f).unwrap(), "one");
        b.restore().unwrap();
        assert!(
            !f.exists(),
            "restoring the first write removes the file it created"
        );
    }
}
