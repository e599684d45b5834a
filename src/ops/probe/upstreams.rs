//! The probe's part in the proxy: after its checks and kills, each proxied process's upstream
//! is pointed at its healthy instances (planned purely by `decide::plan_upstreams`), through
//! the host's proxy switch (`ops::proxy`), under the service lock the probe holds. Only the
//! processes whose pointer differs from what the proxy points at now are applied; a process
//! whose proxy cannot be taken over (an upstream file shim did not write) is noted once and
//! left out, the others still synced. The outcome goes to the journal.

use std::collections::BTreeMap;

use super::decide::{plan_upstreams, Action, Inputs};
use super::note_once;
use super::Memory;
use crate::config::HostSettings;
use crate::host::health::Check;
use crate::host::journal::{NOTICE, WARNING};
use crate::host::Host;

/// Points each proxied process's upstream at its healthy instances (those running whose
/// last check passed, or that have no health check): an instance that failed a check, was
/// killed (`kills`) or is down leaves the upstream until it passes again; a replacement
/// joins once healthy. If none is healthy, the running ones are listed (fail open, as load
/// balancers do); if none runs, the upstream is closed (502) rather than pointing at ports
/// another service may be given. Returns whether the proxy was changed (or tried to be).
pub fn sync_upstreams(
    host: &Host,
    settings: &HostSettings,
    inp: &Inputs<'_>,
    (checks, kills): (&BTreeMap<String, Check>, &[Action]),
    mem: &mut Memory,
) -> bool {
    let id = inp.service.id.as_str();
    let killed: Vec<&str> = kills
        .iter()
        .filter_map(|a| match a {
            Action::Kill { unit, .. } => Some(unit.as_str()),
            _ => None,
        })
        .collect();
    let proxy = crate::ops::proxy::for_host(host, settings);
    let now = crate::ops::proxy::compared(proxy.as_ref(), inp.service);
    let mut changed = Vec::new();
    for t in plan_upstreams(inp, checks, &killed) {
        if now.get(&t.process).cloned().flatten().as_ref() == Some(&t.to) {
            continue;
        }
        match proxy.preflight(inp.service, &t.process) {
            Ok(()) => changed.push(t),
            Err(e) => note_once(
                host,
                mem,
                &format!("upstream:{}", t.process),
                id,
                &format!("cannot point the upstream of {}: {e:#}", t.process),
            ),
        }
    }
    if changed.is_empty() {
        return false;
    }
    let mut details = Vec::new();
    let (priority, message) = match proxy.apply(inp.service, &changed, &mut details) {
        Ok(()) => (NOTICE, details.join("; ")),
        Err(e) => (WARNING, format!("pointing the upstreams failed: {e:#}")),
    };
    host.journal.send(
        priority,
        &message,
        &[
            (crate::plan::fields::SERVICE, id.to_string()),
            (crate::plan::fields::ACTION, "upstream".into()),
        ],
    );
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::state::ServiceState;
    use crate::ops::probe::decide::tests::{inputs, running, DEF, S};
    use crate::plan::proxy::{at_ports, Pointer};
    use crate::plan::upstream::parse_upstream;

    #[test]
    fn the_probe_points_each_upstream_at_its_healthy_instances_and_skips_a_foreign_file() {
        let fh = crate::host::FakeHost::new();
        fh.systemd.insert(crate::host::systemd::UnitInfo {
            name: "nginx.service".into(),
            active_state: "active".into(),
            sub_state: "running".into(),
            main_pid: 100,
            ..Default::default()
        });
        let dir = fh.tmp.path().display().to_string();
        let text = DEF
            .replace(
                "start_period = \"10s\" }",
                &format!("start_period = \"10s\" }}\nproxy = {{ upstream = \"app_web\", file = \"{dir}/web.conf\" }}"),
            )
            .replace(
                "command = [\"/w\"]\n",
                &format!("command = [\"/w\"]\nhealth = {{ path = \"/h\" }}\nproxy = {{ upstream = \"app_w\", file = \"{dir}/worker.conf\" }}\n"),
            );
        let d = crate::ops::testkit::defs(&text);
        let foreign = "upstream app_w { server 10.0.0.1:80; }\n";
        std::fs::write(fh.tmp.path().join("worker.conf"), foreign).unwrap();
        let units = [
            running("web", 1, 11),
            running("web", 2, 12),
            running("worker", 1, 13),
        ];
        let checks: BTreeMap<String, Check> = units
            .iter()
            .map(|u| (u.name.clone(), Check::Healthy(200)))
            .collect();
        let (st, seen) = (ServiceState::default(), Memory::default());
        let inp = inputs(&d, &st, &units, &seen, 200 * S);
        let mut mem = Memory::default();
        assert!(sync_upstreams(
            &fh.host,
            &d.settings,
            &inp,
            (&checks, &[]),
            &mut mem
        ));
        let web = std::fs::read_to_string(fh.tmp.path().join("web.conf")).unwrap();
        assert_eq!(
            parse_upstream(&web),
            Some(Pointer::serving("r1", "", at_ports(&[20001, 20002])))
        );
        let worker = std::fs::read_to_string(fh.tmp.path().join("worker.conf")).unwrap();
        assert_eq!(worker, foreign, "not shim's: left alone");
        assert!(mem.noted.contains("upstream:worker"), "{:?}", mem.noted);
        // Pointed where it should: nothing to do the next time, no second reload.
        let reloads = || {
            fh.systemd
                .calls()
                .iter()
                .filter(|c| *c == "reload nginx.service")
                .count()
        };
        assert_eq!(reloads(), 1);
        let mut mem = Memory::default();
        std::fs::remove_file(fh.tmp.path().join("worker.conf")).unwrap();
        let again = sync_upstreams(&fh.host, &d.settings, &inp, (&checks, &[]), &mut mem);
        assert!(again, "the worker's file, now absent, is written");
        assert_eq!(reloads(), 2);
        assert!(!sync_upstreams(
            &fh.host,
            &d.settings,
            &inp,
            (&checks, &[]),
            &mut mem
        ));
        assert_eq!(reloads(), 2);
    }
}
