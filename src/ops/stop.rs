//! Taking a service down: its probe timer (a probe running now stops too), its cron timers
//! (a job running now finishes; their state stays, so a start at the same revision brings them
//! back), its instances (each with its stop signal and timeout), their directories, and what
//! the probe remembered. One teardown serves `shim stop` and reconcile's removal of services
//! no longer defined; both hold the service lock while it runs. Idempotent: a second run finds
//! nothing and changes nothing.

use std::time::Duration;

use anyhow::Result;

use crate::host::lock::ServiceLock;
use crate::host::Host;
use crate::ops::instances;

/// What a teardown removed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Teardown {
    /// The probe timer's name, if there was one.
    pub probe_timer: Option<String>,
    /// One line per cron timer removed.
    pub cron: Vec<String>,
    /// The instance units stopped.
    pub stopped: Vec<String>,
}

/// Stops everything of service `id`; `timeout` bounds each stop job. The caller holds the
/// service lock (see [`stop`]).
pub fn teardown(host: &Host, id: &str, timeout: Duration, _lock: &ServiceLock) -> Result<Teardown> {
    let sd = host.systemd()?;
    let had_probe = crate::ops::probe_timer::remove_probe_timer(sd, id)?;
    let cron = crate::ops::cron::remove_all(sd, id)?;
    let units = instances::service_units(sd, id)?;
    let stopped = instances::stop_units(sd, &units, timeout)?;
    let dir = host.dirs.instances(id);
    instances::remove_stale_dirs(&dir, &Default::default())?;
    let _ = std::fs::remove_dir(&dir);
    crate::ops::probe::forget(&host.dirs, id)?;
    Ok(Teardown {
        probe_timer: had_probe.then(|| crate::plan::probe_timer::probe_timer_name(id)),
        cron,
        stopped,
    })
}

/// Whether anything of service `id` is on this host: a recorded state, an instance, its
/// probe timer or a cron timer (a stop of a service no longer defined still works).
pub fn known(host: &Host, id: &str) -> Result<bool> {
    if host.state().path(id).exists() {
        return Ok(true);
    }
    let sd = host.systemd()?;
    if !instances::service_units(sd, id)?.is_empty() {
        return Ok(true);
    }
    let timers = sd.list_units(&[
        crate::plan::probe_timer::probe_timer_name(id),
        format!("{}{id}-*.timer", crate::plan::oneoff::CRON_PREFIX),
    ])?;
    Ok(!timers.is_empty())
}

/// `shim stop`: the teardown under the service lock, and the state marked stopped so that
/// neither the probe nor reconcile brings the service back.
pub fn stop(host: &Host, id: &str, timeout: Duration, lock_timeout: Duration) -> Result<Teardown> {
    let lock = ServiceLock::acquire(&host.dirs.run, id, lock_timeout)?;
    let done = teardown(host, id, timeout, &lock)?;
    let store = host.state();
    let mut st = store.load(id)?;
    if st.current.is_some() || !done.stopped.is_empty() {
        st.stopped = true;
        store.save(id, &st)?;
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::systemd::UnitInfo;
    use crate::ops::testkit;

    fn unit(name: &str, service: &str) -> UnitInfo {
        UnitInfo {
            name: name.into(),
            active_state: "active".into(),
            sub_state: "running".into(),
            fields: [(
                crate::plan::fields::SERVICE.to_string(),
                service.to_string(),
            )]
            .into(),
            ..Default::default()
        }
    }

    #[test]
    fn stop_removes_instances_probe_and_marks_the_state_and_is_idempotent() {
        let fh = testkit::host();
        let h = &fh.host;
        fh.systemd.insert(unit("shim-app-web-r1-1.service", "app"));
        // A look-alike service's unit matches the name pattern but is not app's.
        fh.systemd
            .insert(unit("shim-app-web-x-1.service", "app-web"));
        fh.systemd.insert(unit("shim-probe-app.timer", ""));
        fh.systemd.insert(unit("shim-probe-app.service", ""));
        let store = h.state();
        let st = crate::host::state::ServiceState {
            current: Some("r1".into()),
            ..Default::default()
        };
        store.save("app", &st).unwrap();
        let t = stop(h, "app", Duration::from_secs(5), Duration::ZERO).unwrap();
        assert_eq!(t.stopped, vec!["shim-app-web-r1-1.service".to_string()]);
        assert_eq!(t.probe_timer.as_deref(), Some("shim-probe-app.timer"));
        assert_eq!(fh.systemd.unit_names(), vec!["shim-app-web-x-1.service"]);
        assert!(store.load("app").unwrap().stopped);
        let again = stop(h, "app", Duration::from_secs(5), Duration::ZERO).unwrap();
        assert_eq!(again, Teardown::default());
        assert!(store.load("app").unwrap().stopped);
    }

    #[test]
    fn stop_waits_for_the_service_lock_and_names_its_holder() {
        let fh = testkit::host();
        let _held = ServiceLock::acquire(&fh.host.dirs.run, "app", Duration::ZERO).unwrap();
        let e = stop(
            &fh.host,
            "app",
            Duration::from_secs(5),
            Duration::from_millis(60),
        )
        .unwrap_err();
        assert!(
            format!("{e:#}").contains("locked by another shim command"),
            "{e:#}"
        );
        assert!(
            fh.systemd.calls().is_empty(),
            "nothing was asked of systemd"
        );
    }

    #[test]
    fn known_is_anything_of_the_service_on_the_host() {
        let fh = testkit::host();
        let h = &fh.host;
        assert!(!known(h, "app").unwrap());
        fh.systemd
            .insert(unit("shim-app-web-x-1.service", "app-web"));
        assert!(
            !known(h, "app").unwrap(),
            "a look-alike's unit is not app's"
        );
        fh.systemd.insert(unit("shim-probe-app.timer", ""));
        assert!(known(h, "app").unwrap());
        let fh = testkit::host();
        fh.host.state().save("app", &Default::default()).unwrap();
        assert!(known(&fh.host, "app").unwrap());
    }
}
