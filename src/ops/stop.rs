//! Taking a service down. First nginx stops sending it requests: each proxied process's
//! upstream file is closed (one server marked `down`, so nginx answers 502 and never the
//! ports the service frees, which the next service may be given), nginx is reloaded, and the
//! instances get their `drain` for the requests in flight. Then its probe timer (a probe
//! running now stops too), its cron timers
//! (a job running now finishes; their state stays, so a start at the same revision brings them
//! back), its instances (each with its stop signal and timeout), their directories, and what
//! the probe remembered. One teardown serves `shim stop` and reconcile's removal of services
//! no longer defined; both hold the service lock while it runs. Idempotent: a second run finds
//! nothing and changes nothing.

use std::time::Duration;

use anyhow::Result;

use crate::config::{Definitions, ServiceDef};
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
    /// One line per upstream file closed.
    pub closed: Vec<String>,
    /// How the drain after closing them ended (None: nothing was closed, or nothing ran).
    pub drained: Option<String>,
    /// What went wrong without stopping the stop (an upstream that could not be closed).
    pub warnings: Vec<String>,
}

/// Points each proxied process's upstream at no instance (see the module docs) through the
/// host's proxy switch, which reloads nginx if it runs. Files already closed, absent or not
/// shim's are left alone (the last is an error). Returns one line per process closed.
pub fn close_upstreams(
    host: &Host,
    svc: &ServiceDef,
    settings: &crate::config::HostSettings,
) -> Result<Vec<String>> {
    crate::ops::proxy::for_host(host, settings).close(svc)
}

/// Who runs a stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopBy {
    /// `shim stop`, reconcile: the instances are stopped here, and waited for.
    Command,
    /// The service unit's `ExecStop` (`systemctl stop shim-<id>.service`): the instances are
    /// `PartOf=` and `Before=` the unit, so their stop jobs are queued behind this very
    /// `ExecStop`; waiting for them would wait for itself. Their stops are queued (for
    /// instances of an older shim, not `PartOf=` the unit) and systemd runs them once the
    /// drain is done; their directories are removed by the next start. `shutdown`: the
    /// system is going down; the service is not marked stopped, so that it comes back at boot
    /// (as the enablement of its unit says).
    Unit { shutdown: bool },
}

/// Stops everything of service `id`; `timeout` bounds each stop job. The caller holds the
/// service lock (see [`stop`]).
pub fn teardown(host: &Host, id: &str, timeout: Duration, _lock: &ServiceLock) -> Result<Teardown> {
    teardown_by(host, id, timeout, StopBy::Command)
}

fn teardown_by(host: &Host, id: &str, timeout: Duration, by: StopBy) -> Result<Teardown> {
    let sd = host.systemd()?;
    let had_probe = crate::ops::probe_timer::remove_probe_timer(sd, id)?;
    let cron = crate::ops::cron::remove_all(sd, id)?;
    let units = crate::ops::view::ServiceView::observe(sd, id)?.into_units();
    let stopped = match by {
        StopBy::Command => {
            let stopped = instances::stop_units(sd, &units, timeout)?;
            let dir = host.dirs.instances(id);
            instances::remove_stale_dirs(&dir, &Default::default())?;
            let _ = std::fs::remove_dir(&dir);
            stopped
        }
        StopBy::Unit { .. } => {
            let names: Vec<String> = units.iter().map(|u| u.name.clone()).collect();
            sd.queue_stop(&names)?;
            names
        }
    };
    crate::ops::probe::forget(&host.dirs, id)?;
    Ok(Teardown {
        probe_timer: had_probe.then(|| crate::plan::names::probe_timer_name(id)),
        cron,
        stopped,
        closed: Vec::new(),
        drained: None,
        warnings: Vec::new(),
    })
}

/// Whether anything of service `id` is on this host: a recorded state, an instance, its
/// probe timer or a cron timer (a stop of a service no longer defined still works).
pub fn known(host: &Host, id: &str) -> Result<bool> {
    if host.state().path(id).exists() {
        return Ok(true);
    }
    let sd = host.systemd()?;
    if !crate::ops::view::ServiceView::observe(sd, id)?.is_empty() {
        return Ok(true);
    }
    let timers = sd.list_units(&[
        crate::plan::names::probe_timer_name(id),
        crate::plan::names::cron_timers_glob(Some(id)),
    ])?;
    Ok(!timers.is_empty())
}

/// `shim stop`: under the service lock, the state marked stopped (so that neither the probe
/// nor reconcile brings the service back, even while this stop runs), nginx off the service
/// and its drain (when `defs` still define it), then the teardown. A failure to close the
/// upstream is reported and the stop goes on: a stop must not be held up by nginx.
pub fn stop(
    host: &Host,
    defs: Option<&Definitions>,
    id: &str,
    timeout: Duration,
    lock_timeout: Duration,
    by: StopBy,
) -> Result<Teardown> {
    let lock = ServiceLock::acquire(&host.dirs.run, id, lock_timeout)?;
    let units = crate::ops::view::ServiceView::observe(host.systemd()?, id)?.into_units();
    let store = host.state();
    let mut st = store.load(id)?;
    let shutdown = by == StopBy::Unit { shutdown: true };
    if (st.current.is_some() || !units.is_empty()) && !st.stopped && !shutdown {
        st.stopped = true;
        store.save(id, &st)?;
    }
    let (mut closed, mut warnings, mut drained) = (Vec::new(), Vec::new(), None);
    if let Some((d, svc)) = defs.and_then(|d| Some((d, d.service(id).ok()?))) {
        match close_upstreams(host, svc, &d.settings) {
            Ok(lines) if !lines.is_empty() => {
                closed = lines;
                let drain = svc
                    .processes
                    .values()
                    .filter(|p| p.proxy.is_some())
                    .map(|p| p.drain)
                    .max()
                    .unwrap_or_default();
                if !units.is_empty() {
                    let ends = units.iter().filter_map(|u| u.endpoint()).collect();
                    drained = Some(instances::drain(host, &ends, drain));
                }
            }
            Ok(_) => {}
            Err(e) => warnings.push(format!("{e:#}")),
        }
    }
    let mut done = teardown_by(host, id, timeout, by)?;
    drop(lock);
    done.closed = closed;
    done.warnings = warnings;
    done.drained = drained;
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
    fn a_stop_by_the_unit_queues_the_instances_and_at_shutdown_keeps_the_service_up() {
        for shutdown in [false, true] {
            let fh = testkit::host();
            let h = &fh.host;
            fh.systemd.insert(unit("shim-app-web-r1-1.service", "app"));
            fh.systemd
                .insert(unit("shim-app-web-x-1.service", "app-web"));
            let dir = h.dirs.instances("app").join("shim-app-web-r1-1.service");
            std::fs::create_dir_all(&dir).unwrap();
            let st = crate::host::state::ServiceState {
                current: Some("r1".into()),
                ..Default::default()
            };
            h.state().save("app", &st).unwrap();
            let by = StopBy::Unit { shutdown };
            let t = stop(h, None, "app", Duration::from_secs(5), Duration::ZERO, by).unwrap();
            assert_eq!(t.stopped, vec!["shim-app-web-r1-1.service".to_string()]);
            // Queued, not waited for (the stop jobs wait for this ExecStop); the look-alike
            // is untouched; the directory stays for the next start to remove.
            let calls = fh.systemd.calls();
            assert!(calls.contains(&"queue-stop shim-app-web-r1-1.service".to_string()));
            assert!(
                !calls.iter().any(|c| c.starts_with("stop shim-app-web")),
                "{calls:?}"
            );
            assert_eq!(fh.systemd.unit_names(), vec!["shim-app-web-x-1.service"]);
            assert!(dir.exists());
            // At shutdown the service is not marked stopped: it comes back at boot.
            assert_eq!(h.state().load("app").unwrap().stopped, !shutdown);
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
        let t = stop(
            h,
            None,
            "app",
            Duration::from_secs(5),
            Duration::ZERO,
            StopBy::Command,
        )
        .unwrap();
        assert_eq!(t.stopped, vec!["shim-app-web-r1-1.service".to_string()]);
        assert_eq!(t.probe_timer.as_deref(), Some("shim-probe-app.timer"));
        assert_eq!(fh.systemd.unit_names(), vec!["shim-app-web-x-1.service"]);
        assert!(store.load("app").unwrap().stopped);
        let again = stop(
            h,
            None,
            "app",
            Duration::from_secs(5),
            Duration::ZERO,
            StopBy::Command,
        )
        .unwrap();
        assert_eq!(again, Teardown::default());
        assert!(store.load("app").unwrap().stopped);
    }

    #[test]
    fn stop_waits_for_the_service_lock_and_names_its_holder() {
        let fh = testkit::host();
        let _held = ServiceLock::acquire(&fh.host.dirs.run, "app", Duration::ZERO).unwrap();
        let e = stop(
            &fh.host,
            None,
            "app",
            Duration::from_secs(5),
            Duration::from_millis(60),
            StopBy::Command,
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

    #[test]
    fn stop_takes_nginx_off_the_service_then_drains_then_stops() {
        let fh = testkit::host();
        let h = &fh.host;
        let file = fh.tmp.path().join("nginx/app.conf");
        let defs = testkit::defs(&format!(
            "[services.app]\nimage = \"oci:/i:{{revision}}\"\n[services.app.processes.web]\n\
             health = {{ path = \"/h\" }}\ndrain = \"3s\"\nproxy = {{ upstream = \"app_web\", file = \"{}\" }}\n",
            file.display()
        ));
        std::fs::create_dir_all(file.parent().unwrap()).unwrap();
        std::fs::write(
            &file,
            crate::plan::upstream::render_upstream(
                "app_web",
                "app",
                "web",
                "r1",
                "",
                &crate::plan::proxy::at_ports(&[20000]),
            ),
        )
        .unwrap();
        fh.systemd.insert(UnitInfo {
            name: "nginx.service".into(),
            active_state: "active".into(),
            main_pid: 10,
            ..Default::default()
        });
        fh.systemd.insert(unit("shim-app-web-r1-1.service", "app"));
        let t = stop(
            h,
            Some(&defs),
            "app",
            Duration::from_secs(5),
            Duration::ZERO,
            StopBy::Command,
        )
        .unwrap();
        assert_eq!(t.stopped, vec!["shim-app-web-r1-1.service".to_string()]);
        assert_eq!(t.closed.len(), 1, "{:?}", t.closed);
        assert!(
            t.drained
                .as_deref()
                .is_some_and(|d| d.contains("no connection")),
            "{:?}",
            t.drained
        );
        let text = std::fs::read_to_string(&file).unwrap();
        assert!(!text.contains("20000") && text.contains("down;"), "{text}");
        let calls = fh.systemd.calls();
        let reload = calls
            .iter()
            .position(|c| c == "reload nginx.service")
            .unwrap();
        let stop_at = calls
            .iter()
            .position(|c| c == "stop shim-app-web-r1-1.service")
            .unwrap();
        assert!(reload < stop_at, "{calls:?}");
        // A second stop: the file is already closed, nothing reloaded again.
        let again = stop(
            h,
            Some(&defs),
            "app",
            Duration::from_secs(5),
            Duration::ZERO,
            StopBy::Command,
        )
        .unwrap();
        assert!(again.closed.is_empty(), "{:?}", again.closed);
        assert_eq!(
            fh.systemd
                .calls()
                .iter()
                .filter(|c| *c == "reload nginx.service")
                .count(),
            1
        );
    }

    #[test]
    fn a_foreign_upstream_file_is_reported_and_the_stop_goes_on() {
        let fh = testkit::host();
        let file = fh.tmp.path().join("app.conf");
        std::fs::write(&file, "events {}\n").unwrap();
        let defs = testkit::defs(&format!(
            "[services.app]\nimage = \"oci:/i:{{revision}}\"\n[services.app.processes.web]\n\
             health = {{ path = \"/h\" }}\nproxy = {{ upstream = \"app_web\", file = \"{}\" }}\n",
            file.display()
        ));
        fh.systemd.insert(unit("shim-app-web-r1-1.service", "app"));
        let t = stop(
            &fh.host,
            Some(&defs),
            "app",
            Duration::from_secs(5),
            Duration::ZERO,
            StopBy::Command,
        )
        .unwrap();
        assert!(t.closed.is_empty(), "{:?}", t.closed);
        assert!(
            t.warnings.len() == 1 && t.warnings[0].contains("not written by shim"),
            "{:?}",
            t.warnings
        );
        assert_eq!(t.stopped.len(), 1);
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "events {}\n");
    }
}
