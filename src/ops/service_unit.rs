//! Each service's own unit, `shim-<id>.service` (rendered by `plan::service_unit`, which
//! says why it is a file shim writes and not a generator's output): written to
//! `/etc/systemd/system` when the service is deployed or reconciled, enabled when first
//! written for a deployed service (it came up at boot before it had a unit), started so that
//! it is active while the service runs, removed with the service.
//!
//! `shim stop` and `systemctl stop shim-<id>.service` are one operation: `shim stop` does
//! the stop (so that the operator sees its lines) and then stops the unit, whose `ExecStop`
//! (`shim stop --from-unit`) finds nothing left; `systemctl stop` runs that `ExecStop`
//! first, which does the stop. Starting is the same the other way round. Nothing loops:
//! the `--from-unit` runs never touch the unit.

use std::path::Path;
use std::time::Duration;

use anyhow::{anyhow, Context, Result};

use crate::host::Host;
use crate::plan::names::service_unit_name;
use crate::plan::service_unit::{render_service_unit, MARKER};

/// What [`ensure`] did to the unit file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileChange {
    Unchanged,
    Created,
    Rewritten,
}

/// The unit's state as `shim status` shows it.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct UnitState {
    pub name: String,
    /// "active", "inactive", "failed", "activating", "deactivating"; "" when not loaded.
    pub active: String,
    /// "enabled", "disabled", … ; None when shim has written no unit file.
    pub enabled: Option<String>,
    /// The service is stopped (`shim stop`, `systemctl stop`): nothing brings it back until
    /// it is started.
    pub stopped: bool,
}

impl UnitState {
    /// `shim-app.service: active, enabled`.
    pub fn line(&self) -> String {
        let line = self.unit_line();
        if self.stopped {
            format!("{line}; stopped: `shim start` or `systemctl start` brings it back")
        } else {
            line
        }
    }

    fn unit_line(&self) -> String {
        match &self.enabled {
            None => format!(
                "{}: not installed (shim upgrade or reconcile writes it)",
                self.name
            ),
            Some(e) => format!(
                "{}: {}, {e}",
                self.name,
                if self.active.is_empty() {
                    "inactive"
                } else {
                    &self.active
                }
            ),
        }
    }
}

/// The definitions' path as the unit runs it (absolute: systemd runs units from `/`).
fn absolute(config: &Path) -> std::path::PathBuf {
    std::fs::canonicalize(config).unwrap_or_else(|_| config.to_path_buf())
}

/// Which service a unit file shim wrote is for (from its first line, never from its name).
fn service_of_file(text: &str) -> Option<&str> {
    let rest = text
        .lines()
        .next()?
        .strip_prefix(MARKER)?
        .strip_prefix(' ')?;
    rest.split(';').next().filter(|s| !s.is_empty())
}

/// Writes `shim-<id>.service` if its text differs and reloads systemd if it did. A file
/// created now is enabled when `enable_new`. An administrator's own file of that name is
/// left alone (an error says so).
pub fn ensure(host: &Host, id: &str, config: &Path, enable_new: bool) -> Result<FileChange> {
    let name = service_unit_name(id);
    let path = host.dirs.unit_file(&name);
    let shim = crate::host::images::shim_binary()?;
    let text = render_service_unit(id, &shim, &absolute(config), &unit_env(&host.dirs));
    let old = match std::fs::read_to_string(&path) {
        Ok(t) => Some(t),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(anyhow!(e).context(format!("reading {}", path.display()))),
    };
    let change = match &old {
        Some(t) if *t == text => return Ok(FileChange::Unchanged),
        Some(t) if service_of_file(t) != Some(id) => {
            return Err(anyhow!(
                "{} exists and was not written by shim for service {id}: remove or rename it",
                path.display()
            ))
        }
        Some(_) => FileChange::Rewritten,
        None => FileChange::Created,
    };
    std::fs::create_dir_all(&host.dirs.units)
        .with_context(|| format!("creating {}", host.dirs.units.display()))?;
    crate::host::fsutil::write_atomic(&path, text.as_bytes(), 0o644)?;
    let sd = host.systemd()?;
    sd.daemon_reload()?;
    if change == FileChange::Created && enable_new {
        sd.enable_unit_files(std::slice::from_ref(&name))?;
    }
    Ok(change)
}

/// The environment the unit's commands need to see this command's directories.
fn unit_env(dirs: &crate::host::dirs::Dirs) -> Vec<(String, String)> {
    let mut env = crate::ops::probe_timer::probe_env(dirs);
    if dirs.units != Path::new("/etc/systemd/system") {
        env.push((
            crate::plan::fields::env::UNIT_DIR.into(),
            dirs.units.display().to_string(),
        ));
    }
    env
}

/// The unit's state; see [`UnitState`].
pub fn state(host: &Host, id: &str) -> Result<UnitState> {
    let name = service_unit_name(id);
    let sd = host.systemd()?;
    let enabled = if host.dirs.unit_file(&name).exists() {
        sd.unit_file_state(&name)?
    } else {
        None
    };
    let active = sd
        .list(std::slice::from_ref(&name))?
        .into_iter()
        .find(|u| u.name == name)
        .map(|u| u.active_state.to_string())
        .unwrap_or_default();
    Ok(UnitState {
        name,
        active,
        enabled,
        stopped: false,
    })
}

/// Makes the unit active after the service was started by a command other than the unit's
/// own `ExecStart`: writes it if needed and starts it; its `ExecStart` finds the recorded
/// deployment running and does nothing.
pub fn activate(host: &Host, id: &str, config: &Path) -> Result<()> {
    ensure(host, id, config, true)?;
    let st = state(host, id)?;
    if st.active == "active" {
        return Ok(());
    }
    let name = st.name;
    let out = host.systemd()?.start_units(
        std::slice::from_ref(&name),
        crate::plan::service_unit::START_TIMEOUT,
    )?;
    match out.first() {
        Some(o) if o.ok() => Ok(()),
        _ => Err(anyhow!(
            "the service runs, but starting its unit {name} failed: see `systemctl status {name}` and `journalctl -u {name}`"
        )),
    }
}

/// Makes the unit inactive after the service was stopped by a command other than the unit's
/// own `ExecStop` (which then finds nothing left to stop).
pub fn deactivate(host: &Host, id: &str, timeout: Duration) -> Result<()> {
    let st = state(host, id)?;
    if st.active.is_empty() || st.active == "inactive" {
        return Ok(());
    }
    let sd = host.systemd()?;
    sd.stop_units(std::slice::from_ref(&st.name), timeout)?;
    Ok(())
}

/// The services that have a unit file shim wrote, by the id in its first line.
pub fn installed(host: &Host) -> Vec<String> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(&host.dirs.units) else {
        return out;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        if !crate::plan::names::is_service_unit_shaped(&name) {
            continue;
        }
        let Ok(text) = std::fs::read_to_string(e.path()) else {
            continue;
        };
        if let Some(id) = service_of_file(&text) {
            if service_unit_name(id) == name {
                out.push(id.to_string());
            }
        }
    }
    out.sort();
    out
}

/// Removes the unit of a service no longer defined (its teardown already ran): stopped,
/// disabled, file removed, systemd reloaded. Returns whether there was one.
pub fn remove(host: &Host, id: &str) -> Result<bool> {
    let name = service_unit_name(id);
    let path = host.dirs.unit_file(&name);
    if !path.exists() {
        return Ok(false);
    }
    let sd = host.systemd()?;
    // Its ExecStop finds nothing of the service left, and leaves no record behind.
    sd.stop_units(std::slice::from_ref(&name), Duration::from_secs(300))?;
    sd.disable_unit_files(std::slice::from_ref(&name))?;
    std::fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?;
    sd.daemon_reload()?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::systemd::Systemd;
    use crate::ops::testkit;

    #[test]
    fn ensure_writes_once_enables_once_and_never_takes_over_a_foreign_file() {
        let fh = testkit::host();
        let h = &fh.host;
        let cfg = Path::new("/etc/shim/services.toml");
        assert_eq!(ensure(h, "app", cfg, true).unwrap(), FileChange::Created);
        let st = state(h, "app").unwrap();
        assert_eq!(st.enabled.as_deref(), Some("enabled"));
        assert_eq!(st.active, "inactive");
        // Disabled by the operator: a later ensure neither rewrites nor enables it again.
        fh.systemd
            .disable_unit_files(&["shim-app.service".to_string()])
            .unwrap();
        assert_eq!(ensure(h, "app", cfg, true).unwrap(), FileChange::Unchanged);
        assert_eq!(
            state(h, "app").unwrap().enabled.as_deref(),
            Some("disabled")
        );
        assert_eq!(installed(h), vec!["app".to_string()]);
        // Another path: rewritten, still disabled.
        assert_eq!(
            ensure(h, "app", Path::new("/x.toml"), true).unwrap(),
            FileChange::Rewritten
        );
        assert_eq!(
            state(h, "app").unwrap().enabled.as_deref(),
            Some("disabled")
        );
        // A file of that name not written by shim is refused.
        std::fs::write(h.dirs.units.join("shim-web.service"), "[Service]\n").unwrap();
        let e = ensure(h, "web", cfg, true).unwrap_err().to_string();
        assert!(e.contains("not written by shim"), "{e}");
        assert_eq!(installed(h), vec!["app".to_string()]);
    }

    #[test]
    fn look_alike_ids_have_their_own_files() {
        let fh = testkit::host();
        let h = &fh.host;
        let cfg = Path::new("/c.toml");
        for id in ["a", "a-b", "web", "web2"] {
            ensure(h, id, cfg, true).unwrap();
        }
        assert_eq!(installed(h), vec!["a", "a-b", "web", "web2"]);
        assert!(remove(h, "a").unwrap());
        assert_eq!(installed(h), vec!["a-b", "web", "web2"]);
        assert!(!remove(h, "a").unwrap());
        assert!(h.dirs.units.join("shim-a\\x2db.service").exists());
    }

    #[test]
    fn activate_starts_the_unit_once_and_deactivate_stops_it() {
        let fh = testkit::host();
        let h = &fh.host;
        let cfg = Path::new("/c.toml");
        activate(h, "app", cfg).unwrap();
        assert_eq!(state(h, "app").unwrap().active, "active");
        activate(h, "app", cfg).unwrap();
        let starts = fh
            .systemd
            .calls()
            .iter()
            .filter(|c| *c == "start-unit shim-app.service")
            .count();
        assert_eq!(starts, 1);
        deactivate(h, "app", Duration::from_secs(1)).unwrap();
        assert_eq!(state(h, "app").unwrap().active, "inactive");
        assert_eq!(
            state(h, "app").unwrap().line(),
            "shim-app.service: inactive, enabled"
        );
    }
}
