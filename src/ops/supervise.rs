//! `shim supervise pause|resume` as operations: check the target against the definitions
//! ([`check_target`]), record the pause or its end in the service's state under the service
//! lock ([`set_paused`]; an upgrade saves the state too and must not undo it), and after a
//! resume start the probe's service right away ([`probe_now`]) so that it converges now
//! rather than at the next tick. The CLI prints what each step says.

use std::time::Duration;

use anyhow::Result;

use crate::config::Definitions;
use crate::error::BadInput;
use crate::host::lock::ServiceLock;
use crate::host::Host;
use crate::plan::names::probe_service_name;

/// What a pause or resume left in the state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Supervision {
    /// Paused (the whole service or the process).
    Paused,
    /// Resumed, the probe acts again.
    Resumed,
    /// The process was resumed, but the whole service is still paused.
    ServiceStillPaused,
}

/// What [`probe_now`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProbeRun {
    /// No probe service is loaded (the service is not running).
    NoTimer,
    /// The probe ran (its unit's name).
    Probed(String),
    /// The probe's start job ended otherwise (unit, result).
    Failed(String, String),
    /// systemd answered nothing.
    Unknown,
}

/// The service (and the process) must be defined. Without readable definitions (`None`)
/// anything goes: a pause only ever makes the probe do less.
pub fn check_target(defs: Option<&Definitions>, id: &str, process: Option<&str>) -> Result<()> {
    let Some(defs) = defs else {
        return Ok(());
    };
    let svc = defs.service(id)?;
    if let Some(p) = process {
        if !svc.processes.values().any(|d| d.name.as_str() == p) {
            return Err(BadInput(format!(
                "--process: service {id} has no process {p:?} (it has: {})",
                svc.processes
                    .values()
                    .map(|d| d.name.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
            .into());
        }
    }
    Ok(())
}

/// Pauses (`pause`) or resumes service `id`, or only its `process`, under the service lock.
/// Resuming the whole service also resumes every process.
pub fn set_paused(
    host: &Host,
    id: &str,
    process: Option<&str>,
    pause: bool,
    lock_timeout: Duration,
) -> Result<Supervision> {
    let _lock = ServiceLock::acquire(&host.dirs.run, id, lock_timeout)?;
    let store = host.state();
    let mut st = store.load(id)?;
    match (process, pause) {
        (None, true) => st.paused = true,
        (None, false) => {
            st.paused = false;
            st.paused_processes.clear();
        }
        (Some(p), true) => {
            st.paused_processes.insert(p.to_string());
        }
        (Some(p), false) => {
            st.paused_processes.remove(p);
        }
    }
    store.save(id, &st)?;
    Ok(if pause {
        Supervision::Paused
    } else if st.paused {
        Supervision::ServiceStillPaused
    } else {
        Supervision::Resumed
    })
}

/// Starts the service's probe now, if it has a probe timer.
pub fn probe_now(host: &Host, id: &str) -> Result<ProbeRun> {
    let sd = host.systemd()?;
    let probe = probe_service_name(id);
    if sd.list_units(std::slice::from_ref(&probe))?.is_empty() {
        return Ok(ProbeRun::NoTimer);
    }
    let out = sd.start_units(std::slice::from_ref(&probe), Duration::from_secs(150))?;
    Ok(match out.first() {
        Some(o) if o.ok() => ProbeRun::Probed(probe),
        Some(o) => ProbeRun::Failed(probe, o.result.clone()),
        None => ProbeRun::Unknown,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::systemd::UnitInfo;
    use crate::ops::testkit;

    const DEF: &str = r#"
[services.app]
image = "oci:/i:{revision}"

[services.app.processes.web]
command = ["/w"]
"#;

    #[test]
    fn the_target_must_be_defined_unless_the_definitions_are_unreadable() {
        let d = testkit::defs(DEF);
        assert!(check_target(Some(&d), "app", Some("web")).is_ok());
        let e = check_target(Some(&d), "app", Some("nope")).unwrap_err();
        assert_eq!(
            e.to_string(),
            "--process: service app has no process \"nope\" (it has: web)"
        );
        assert!(check_target(Some(&d), "other", None).is_err());
        assert!(check_target(None, "other", Some("x")).is_ok());
    }

    #[test]
    fn pause_and_resume_are_recorded_under_the_lock() {
        let fh = testkit::host();
        let h = &fh.host;
        let t = Duration::ZERO;
        assert_eq!(
            set_paused(h, "app", None, true, t).unwrap(),
            Supervision::Paused
        );
        assert_eq!(
            set_paused(h, "app", Some("web"), true, t).unwrap(),
            Supervision::Paused
        );
        assert_eq!(
            set_paused(h, "app", Some("web"), false, t).unwrap(),
            Supervision::ServiceStillPaused
        );
        set_paused(h, "app", Some("web"), true, t).unwrap();
        assert_eq!(
            set_paused(h, "app", None, false, t).unwrap(),
            Supervision::Resumed
        );
        let st = h.state().load("app").unwrap();
        assert!(!st.paused && st.paused_processes.is_empty());

        let _held = ServiceLock::acquire(&h.dirs.run, "app", t).unwrap();
        assert!(set_paused(h, "app", None, true, t).is_err());
        assert!(!h.state().load("app").unwrap().paused);
    }

    #[test]
    fn probe_now_starts_the_probe_service_if_there_is_one() {
        let fh = testkit::host();
        assert_eq!(probe_now(&fh.host, "app").unwrap(), ProbeRun::NoTimer);
        fh.systemd.insert(UnitInfo {
            name: "shim-probe-app.service".into(),
            active_state: "inactive".into(),
            ..Default::default()
        });
        assert_eq!(
            probe_now(&fh.host, "app").unwrap(),
            ProbeRun::Probed("shim-probe-app.service".into())
        );
        assert!(fh
            .systemd
            .calls()
            .contains(&"start-unit shim-probe-app.service".to_string()));
    }
}
