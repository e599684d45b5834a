//! A service's probe timer: `shim-probe-ID.timer` runs `shim probe --id ID` every health
//! interval (units planned by [`crate::plan::probe_timer`]).
//!
//! Flow: a successful start, upgrade or reconcile calls [`ensure_probe_timer`], which asks
//! [`probe_timer_drift`] whether the timer is missing, inactive or differs from what the
//! definitions plan (interval, binary, definitions path, [`probe_env`]); if so it removes the
//! old timer ([`remove_probe_timer`]), waits until systemd has unloaded it and starts the new
//! one with its service. Reconcile reports the drift in its plan; stop and reconcile's removal
//! of an undefined service call [`remove_probe_timer`].

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{anyhow, Context, Result};

use crate::config::ServiceDef;
use crate::host::dirs::Dirs;
use crate::host::systemd::Systemd;
use crate::host::Host;
use crate::plan::names::{probe_service_name, probe_timer_name};
use crate::plan::probe_timer::{plan_probe, ProbeContext};

/// Environment the probe needs to see the same state and run directories as the command
/// that created it (only ever differs from the defaults in tests).
pub fn probe_env(dirs: &Dirs) -> Vec<(String, String)> {
    let default = Dirs {
        state: PathBuf::from("/var/lib/shim"),
        run: PathBuf::from("/run/shim"),
        units: "/etc/systemd/system".into(),
    };
    let mut env = Vec::new();
    if dirs.state != default.state {
        env.push((
            crate::plan::fields::env::STATE_DIR.into(),
            dirs.state.display().to_string(),
        ));
    }
    if dirs.run != default.run {
        env.push((
            crate::plan::fields::env::RUN_DIR.into(),
            dirs.run.display().to_string(),
        ));
    }
    env
}

/// What [`ensure_probe_timer`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimerChange {
    Unchanged,
    Created,
    Replaced,
}

/// The service's probe timer and service as the definitions ask for them (the definitions'
/// path made absolute: the timer runs from `/`).
fn planned(
    host: &Host,
    svc: &ServiceDef,
    shim_exe: &Path,
    config: &Path,
) -> Result<crate::plan::probe_timer::ProbeUnits> {
    let config = std::path::absolute(config)?;
    let env = probe_env(&host.dirs);
    Ok(plan_probe(&ProbeContext {
        service: svc,
        shim_exe,
        config: &config,
        env: &env,
    }))
}

/// How a probe timer is now, for reconcile's plan: `None` when it is what the definitions
/// ask for and active.
pub fn probe_timer_drift(
    host: &Host,
    svc: &ServiceDef,
    shim_exe: &Path,
    config: &Path,
) -> Result<Option<String>> {
    let sd = host.systemd()?;
    let planned = planned(host, svc, shim_exe, config)?;
    let name = &planned.timer.name;
    let now = sd.list_units(std::slice::from_ref(name))?;
    let want = match &planned.timer.properties[0].1 {
        crate::plan::Prop::Str(d) => d.clone(),
        _ => String::new(),
    };
    Ok(match now.iter().find(|u| &u.name == name) {
        None => Some("probe timer missing".into()),
        Some(u) if u.active_state != crate::host::systemd::ActiveState::Active => {
            Some(format!("probe timer is {}", u.active_state))
        }
        Some(u) if u.description != want => Some("probe timer differs from the definitions".into()),
        Some(_) => None,
    })
}

/// Makes the service's probe timer exist, be active and match the definitions: replaced if
/// it differs (interval, binary, definitions path), left alone otherwise.
pub fn ensure_probe_timer(
    host: &Host,
    svc: &ServiceDef,
    shim_exe: &Path,
    config: &Path,
) -> Result<TimerChange> {
    let Some(_) = probe_timer_drift(host, svc, shim_exe, config)? else {
        return Ok(TimerChange::Unchanged);
    };
    let sd = host.systemd()?;
    let planned = planned(host, svc, shim_exe, config)?;
    let id = svc.id.as_str();
    let existed = remove_probe_timer(sd, id)?;
    // A stopped transient unit is unloaded by systemd's garbage collection, soon after its
    // stop job; creating one with the same name before that fails ("already exists").
    let names = [probe_timer_name(id), probe_service_name(id)];
    let deadline = host.clock.now() + Duration::from_secs(10);
    loop {
        let left = sd.list_units(&names)?;
        if left.is_empty() {
            break;
        }
        if host.clock.now() >= deadline {
            return Err(anyhow!(
                "{} still loaded 10 s after it was stopped",
                left.iter()
                    .map(|u| u.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        host.clock.sleep(Duration::from_millis(10));
    }
    let out = sd
        .start_transient_with_aux(
            &planned.timer,
            std::slice::from_ref(&planned.service),
            Duration::from_secs(30),
        )
        .with_context(|| format!("starting the probe timer of {id}"))?;
    if !out.ok() {
        return Err(anyhow!("starting {}: {}", out.unit, out.result));
    }
    Ok(if existed {
        TimerChange::Replaced
    } else {
        TimerChange::Created
    })
}

/// Stops and unloads a service's probe timer and its service (a probe running right now is
/// stopped too). Returns whether there was anything. Idempotent.
pub fn remove_probe_timer(sd: &dyn Systemd, id: &str) -> Result<bool> {
    let names = vec![probe_timer_name(id), probe_service_name(id)];
    let existed = !sd.list_units(&names)?.is_empty();
    if existed {
        let out = sd.stop_units(&names, Duration::from_secs(150))?;
        if let Some(bad) = out.iter().find(|o| !o.ok()) {
            return Err(anyhow!("stopping {}: {}", bad.unit, bad.result));
        }
    }
    Ok(existed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::testkit;

    const DEFS: &str = r#"
[services.app]
image = "oci:/i:{revision}"

[services.app.processes.web]
command = ["/web"]
health = { path = "/health", interval = "3s" }
"#;

    #[test]
    fn the_timer_is_created_left_alone_replaced_when_it_differs_and_removed() {
        let fh = testkit::host();
        let h = &fh.host;
        let defs = testkit::defs(DEFS);
        let svc = defs.service("app").unwrap();
        let (exe, config) = (
            Path::new("/usr/bin/shim"),
            Path::new("/etc/shim/services.toml"),
        );
        let timer = "shim-probe-app.timer";
        assert_eq!(
            probe_timer_drift(h, svc, exe, config).unwrap().as_deref(),
            Some("probe timer missing")
        );
        assert_eq!(
            ensure_probe_timer(h, svc, exe, config).unwrap(),
            TimerChange::Created
        );
        assert_eq!(
            fh.systemd.unit_names(),
            ["shim-probe-app.service", "shim-probe-app.timer"]
        );
        assert_eq!(probe_timer_drift(h, svc, exe, config).unwrap(), None);
        assert_eq!(
            ensure_probe_timer(h, svc, exe, config).unwrap(),
            TimerChange::Unchanged
        );
        // Another binary: the timer differs and is replaced.
        let other = Path::new("/usr/local/bin/shim");
        assert_eq!(
            probe_timer_drift(h, svc, other, config).unwrap().as_deref(),
            Some("probe timer differs from the definitions")
        );
        assert_eq!(
            ensure_probe_timer(h, svc, other, config).unwrap(),
            TimerChange::Replaced
        );
        assert!(fh.systemd.calls().contains(&format!("stop {timer}")));
        assert_eq!(probe_timer_drift(h, svc, other, config).unwrap(), None);
        // An inactive one is drift too.
        fh.systemd
            .edit(timer, |u| u.active_state = "inactive".into());
        assert_eq!(
            probe_timer_drift(h, svc, other, config).unwrap().as_deref(),
            Some("probe timer is inactive")
        );
        let sd = h.systemd().unwrap();
        assert!(remove_probe_timer(sd, "app").unwrap());
        assert!(fh.systemd.unit_names().is_empty());
        assert!(!remove_probe_timer(sd, "app").unwrap());
    }

    #[test]
    fn probe_env_only_carries_overrides() {
        let d = Dirs {
            state: "/var/lib/shim".into(),
            run: "/run/shim".into(),
            units: "/etc/systemd/system".into(),
        };
        assert!(probe_env(&d).is_empty());
        let d = Dirs {
            state: "/tmp/s".into(),
            run: "/run/shim".into(),
            units: "/etc/systemd/system".into(),
        };
        assert_eq!(
            probe_env(&d),
            vec![(
                crate::plan::fields::env::STATE_DIR.to_string(),
                "/tmp/s".to_string()
            )]
        );
    }
}
