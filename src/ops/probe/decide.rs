//! The probe's decisions, pure: given what a run observed ([`Inputs`]: the definitions, the
//! recorded state, the service's units, what earlier runs remembered, the time), what to do.
//!
//! Flow: [`plan_checks`] picks the instances to health-check (running, with a health check,
//! past `start_period`), [`reuse_checks`] takes those the fast path already made in this run;
//! [`decide_counts`] finds missing instances (start them) and crash-looping ones whose backoff
//! has passed (retry them); [`decide_health`] counts consecutive failed checks per main process
//! and, after `unhealthy_after` of them, kills it so that systemd's own `Restart=` brings the
//! instance back. Each returns the [`Action`]s and the probe's memory after them; `run` does
//! the I/O around them.

use std::collections::BTreeMap;
use std::time::Duration;

use super::{
    backoff_delay, failed_since_usec, is_running, is_stable, next_retry_usec, usecs, Memory,
};
use crate::config::{ProcessDef, ServiceDef};
use crate::host::health::{Check, Probe};
use crate::host::state::ServiceState;
use crate::host::systemd::{ActiveState, UnitInfo};
use crate::plan::instance_keys;
use crate::plan::proxy::{upstream_endpoints, Pointer, Target};
use crate::plan::Endpoint;

/// Everything a decision depends on.
pub struct Inputs<'a> {
    /// The deployment supervised (the one that serves).
    pub deployment: &'a crate::plan::Deployment,
    /// Its definition.
    pub service: &'a ServiceDef,
    pub state: &'a ServiceState,
    /// The service's units, all revisions.
    pub units: &'a [UnitInfo],
    pub memory: &'a Memory,
    pub now_usec: u64,
    pub max_delay: Duration,
    /// Where the service's instance directories (bundles) are.
    pub instances_dir: std::path::PathBuf,
}

/// What the probe does about one instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// No unit for this instance: start it.
    Start {
        process: String,
        index: u32,
        unit: String,
    },
    /// Failed after a crash loop and its backoff has passed: reset and start it.
    Retry {
        process: String,
        index: u32,
        unit: String,
        retry: u32,
        waited: Duration,
    },
    /// Unhealthy `unhealthy_after` times in a row: kill its main process, `pid`.
    Kill {
        process: String,
        index: u32,
        unit: String,
        pid: u32,
        reason: String,
    },
}

/// A health check to make.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckReq {
    pub unit: String,
    pub probe: Probe,
}

fn process_def<'a>(svc: &'a ServiceDef, u: &UnitInfo) -> Option<&'a ProcessDef> {
    let name = u.process()?;
    svc.processes.values().find(|p| p.name.as_str() == name)
}

fn index_of(u: &UnitInfo) -> u32 {
    u.index()
}

/// Units of the current revision whose process is defined and not paused.
fn supervised<'a>(
    inp: &'a Inputs<'a>,
) -> impl Iterator<Item = (&'a UnitInfo, &'a ProcessDef)> + 'a {
    inp.units
        .iter()
        .filter(|u| crate::ops::view::of_deployment(u, inp.deployment))
        .filter_map(|u| Some((u, process_def(inp.service, u)?)))
        .filter(|(_, d)| !inp.state.is_paused(d.name.as_str()))
}

/// The instances to health-check: running, with a health check, past `start_period`.
pub fn plan_checks(inp: &Inputs<'_>) -> Vec<CheckReq> {
    supervised(inp)
        .filter(|(u, _)| is_running(u))
        .filter_map(|(u, d)| {
            let h = d.health.as_ref()?;
            let up = inp.now_usec.saturating_sub(u.main_start_usec);
            if u.main_start_usec == 0 || up < h.start_period.as_micros() as u64 {
                return None;
            }
            let svc = inp.service;
            Some(CheckReq {
                unit: u.name.clone(),
                probe: Probe::for_instance(
                    h,
                    svc.runtime,
                    &inp.instances_dir,
                    &u.name,
                    u.endpoint(),
                )?,
            })
        })
        .collect()
}

/// Splits the planned checks into those the fast path already made in this run, on the same
/// main process (their results), and those still to make.
pub fn reuse_checks<'r>(
    reqs: &'r [CheckReq],
    units: &[UnitInfo],
    pre: &super::Prechecked,
) -> (BTreeMap<String, Check>, Vec<&'r CheckReq>) {
    let mut done = BTreeMap::new();
    let mut todo = Vec::new();
    for r in reqs {
        let pid = units.iter().find(|u| u.name == r.unit).map(|u| u.main_pid);
        match pre.get(&r.unit) {
            Some((p, c)) if Some(*p) == pid => {
                done.insert(r.unit.clone(), c.clone());
            }
            _ => todo.push(r),
        }
    }
    (done, todo)
}

/// Missing instances and crash loops. Returns the actions and the memory after them.
pub fn decide_counts(inp: &Inputs<'_>) -> (Vec<Action>, Memory) {
    let mut mem = inp.memory.clone();
    let mut actions = Vec::new();
    for (u, d) in supervised(inp) {
        let m = mem.units.entry(u.name.clone()).or_default();
        if is_stable(u, inp.now_usec) {
            // Up long enough: whatever crash loop there was is over.
            m.retries = 0;
            m.last_start_usec = 0;
            m.failed_seen_usec = 0;
        } else if u.active_state == ActiveState::Failed {
            if failed_since_usec(u, m) == 0 {
                m.failed_seen_usec = inp.now_usec;
            }
            let due = next_retry_usec(u, m, inp.max_delay);
            if inp.now_usec >= due {
                let since = failed_since_usec(u, m);
                m.retries += 1;
                m.last_start_usec = inp.now_usec;
                m.failed_seen_usec = 0;
                actions.push(Action::Retry {
                    process: d.name.to_string(),
                    index: index_of(u),
                    unit: u.name.clone(),
                    retry: m.retries,
                    waited: Duration::from_micros(inp.now_usec.saturating_sub(since)),
                });
            }
        }
    }
    let mut wanted = Vec::new();
    for (key, d) in instance_keys(inp.deployment) {
        if inp.state.is_paused(d.name.as_str()) {
            continue;
        }
        let unit = key.unit_name();
        wanted.push(unit.clone());
        if inp.units.iter().any(|u| u.name == unit) {
            continue;
        }
        // A start that failed before is retried with the same backoff.
        if let Some(m) = mem.units.get(&unit) {
            let due = m
                .last_start_usec
                .saturating_add(usecs(backoff_delay(m.retries, inp.max_delay)));
            if m.retries > 0 && inp.now_usec < due {
                continue;
            }
        }
        actions.push(Action::Start {
            process: d.name.to_string(),
            index: key.index,
            unit,
        });
    }
    // Forget units that are gone and not wanted (stopped, scaled down, other revisions).
    mem.units.retain(|name, m| {
        !m.is_empty() && (wanted.contains(name) || inp.units.iter().any(|u| &u.name == name))
    });
    (actions, mem)
}

/// What each proxied process's upstream should point at, as the probe wants it: its
/// healthy instances (running, not `killed` in this run, and with a passed check in this run
/// or no health check), or all running ones if none is healthy (fail open), or closed if
/// none runs. Paused processes are left as they are.
pub fn plan_upstreams(
    inp: &Inputs<'_>,
    checks: &BTreeMap<String, Check>,
    killed: &[&str],
) -> Vec<Target> {
    let mut out = Vec::new();
    for d in inp.service.processes.values() {
        if d.proxy.is_none() || inp.state.is_paused(d.name.as_str()) {
            continue;
        }
        let running: Vec<(&UnitInfo, Endpoint)> = supervised(inp)
            .filter(|(u, p)| {
                p.name == d.name && is_running(u) && !killed.contains(&u.name.as_str())
            })
            .filter_map(|(u, _)| Some((u, u.endpoint()?)))
            .collect();
        let healthy: Vec<(&UnitInfo, Endpoint)> = running
            .iter()
            .filter(|(u, _)| d.health.is_none() || checks.get(&u.name).is_some_and(Check::healthy))
            .copied()
            .collect();
        let listed = if healthy.is_empty() { running } else { healthy };
        let endpoints = upstream_endpoints(listed.iter().map(|(u, e)| (index_of(u), *e)), d.count);
        let process = d.name.as_str();
        let to = if endpoints.is_empty() {
            Pointer::Closed
        } else {
            Pointer::serving(
                &inp.deployment.revision,
                &inp.deployment.tag(process),
                endpoints,
            )
        };
        out.push(Target {
            process: process.to_string(),
            to,
        });
    }
    out
}

/// Counts consecutive failed checks per process and kills after `unhealthy_after`.
pub fn decide_health(
    inp: &Inputs<'_>,
    checks: &BTreeMap<String, Check>,
    mut mem: Memory,
) -> (Vec<Action>, Memory) {
    let mut actions = Vec::new();
    for (u, d) in supervised(inp) {
        let (Some(c), Some(h)) = (checks.get(&u.name), d.health.as_ref()) else {
            continue;
        };
        let m = mem.units.entry(u.name.clone()).or_default();
        if m.pid != u.main_pid {
            // Another process than the one counted: start over.
            m.failures = 0;
            m.pid = 0;
        }
        if c.healthy() {
            m.failures = 0;
            m.pid = 0;
            continue;
        }
        m.failures += 1;
        m.pid = u.main_pid;
        if m.failures >= h.unhealthy_after {
            actions.push(Action::Kill {
                process: d.name.to_string(),
                index: index_of(u),
                unit: u.name.clone(),
                pid: u.main_pid,
                reason: format!(
                    "{} consecutive failed health checks ({}) (last: {c})",
                    m.failures,
                    h.what()
                ),
            });
            m.failures = 0;
        }
    }
    mem.units.retain(|_, m| !m.is_empty());
    (actions, mem)
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::config::{parse_sources, Definitions};
    use crate::ops::probe::UnitMemory;
    use std::path::PathBuf;

    pub(in crate::ops::probe) const DEF: &str = r#"
[services.app]
image = "oci:/i:{revision}"

[services.app.processes.web]
count = 2
health = { path = "/health", interval = "1s", timeout = "1s", unhealthy_after = 3, start_period = "10s" }

[services.app.processes.worker]
command = ["/w"]
"#;

    pub(in crate::ops::probe) const S: u64 = 1_000_000;

    pub(in crate::ops::probe) fn defs() -> Definitions {
        parse_sources(&[(PathBuf::from("/etc/shim/services.toml"), DEF.into())]).unwrap()
    }

    pub(in crate::ops::probe) fn unit(
        process: &str,
        index: u32,
        state: &str,
        sub: &str,
        pid: u32,
        start: u64,
    ) -> UnitInfo {
        let mut fields = std::collections::BTreeMap::new();
        fields.insert(crate::plan::fields::SERVICE.to_string(), "app".to_string());
        fields.insert(
            crate::plan::fields::PROCESS.to_string(),
            process.to_string(),
        );
        fields.insert(crate::plan::fields::REVISION.to_string(), "r1".to_string());
        fields.insert(crate::plan::fields::INSTANCE.to_string(), index.to_string());
        fields.insert(
            crate::plan::fields::PORT.to_string(),
            (20000 + index).to_string(),
        );
        UnitInfo {
            name: format!("shim-app-{process}-r1-{index}.service"),
            load_state: "loaded".into(),
            active_state: state.into(),
            sub_state: sub.into(),
            main_pid: pid,
            main_start_usec: start,
            fields,
            ..Default::default()
        }
    }

    pub(in crate::ops::probe) fn running(process: &str, index: u32, pid: u32) -> UnitInfo {
        unit(process, index, "active", "running", pid, 100 * S)
    }

    pub(in crate::ops::probe) fn inputs<'a>(
        d: &'a Definitions,
        st: &'a ServiceState,
        units: &'a [UnitInfo],
        memory: &'a Memory,
        now: u64,
    ) -> Inputs<'a> {
        let dep = Box::leak(Box::new(crate::ops::testkit::deployment(d, "app", "r1")));
        Inputs {
            service: &dep.definition,
            deployment: dep,
            state: st,
            units,
            memory,
            now_usec: now,
            max_delay: Duration::from_secs(8),
            instances_dir: "/run/shim/instances/app".into(),
        }
    }

    #[test]
    fn a_healthy_service_needs_nothing_and_remembers_nothing() {
        let d = defs();
        let st = ServiceState::default();
        let units = [
            running("web", 1, 11),
            running("web", 2, 12),
            running("worker", 1, 13),
        ];
        let mem = Memory::default();
        let inp = inputs(&d, &st, &units, &mem, 200 * S);
        assert_eq!(plan_checks(&inp).len(), 2);
        let (a, m) = decide_counts(&inp);
        assert!(a.is_empty(), "{a:?}");
        let checks = units[..2]
            .iter()
            .map(|u| (u.name.clone(), Check::Healthy(200)))
            .collect();
        let (a, m) = decide_health(&inp, &checks, m);
        assert!(a.is_empty());
        assert_eq!(m, Memory::default());
    }

    #[test]
    fn missing_instances_are_started_but_not_other_revisions_or_extras() {
        let d = defs();
        let st = ServiceState::default();
        let mut old = running("web", 2, 9);
        old.fields
            .insert(crate::plan::fields::REVISION.into(), "r0".into());
        old.name = "shim-app-web-r0-2.service".into();
        let units = [running("web", 1, 11), old, running("web", 3, 14)];
        let mem = Memory::default();
        let (a, _) = decide_counts(&inputs(&d, &st, &units, &mem, 200 * S));
        assert_eq!(
            a,
            vec![
                Action::Start {
                    process: "web".into(),
                    index: 2,
                    unit: "shim-app-web-r1-2.service".into()
                },
                Action::Start {
                    process: "worker".into(),
                    index: 1,
                    unit: "shim-app-worker-r1-1.service".into()
                },
            ]
        );
    }

    #[test]
    fn start_period_is_respected() {
        let d = defs();
        let st = ServiceState::default();
        let units = [unit("web", 1, "active", "running", 11, 195 * S)];
        let mem = Memory::default();
        assert!(plan_checks(&inputs(&d, &st, &units, &mem, 200 * S)).is_empty());
        assert_eq!(
            plan_checks(&inputs(&d, &st, &units, &mem, 206 * S)).len(),
            1
        );
    }

    #[test]
    fn kills_after_unhealthy_after_consecutive_failures_of_one_process() {
        let d = defs();
        let st = ServiceState::default();
        let units = [running("web", 1, 11), running("web", 2, 12)];
        let bad: BTreeMap<String, Check> = [(units[0].name.clone(), Check::Status(500))].into();
        let mut mem = Memory::default();
        for round in 1..=3 {
            let inp = inputs(&d, &st, &units, &mem, 200 * S);
            let (a, m) = decide_health(&inp, &bad, mem.clone());
            if round < 3 {
                assert!(a.is_empty(), "round {round}: {a:?}");
                assert_eq!(m.units[&units[0].name].failures, round);
            } else {
                assert_eq!(a.len(), 1);
                assert!(
                    matches!(&a[0], Action::Kill { unit, reason, .. }
                        if unit == &units[0].name && reason.contains("3 consecutive") && reason.contains("HTTP 500")),
                    "{a:?}"
                );
            }
            mem = m;
        }
        // A success in between starts the count over.
        let mut mem = Memory::default();
        for (i, c) in [
            Check::Status(500),
            Check::Status(500),
            Check::Healthy(200),
            Check::Status(500),
        ]
        .into_iter()
        .enumerate()
        {
            let checks = [(units[0].name.clone(), c)].into();
            let (a, m) = decide_health(
                &inputs(&d, &st, &units, &mem, 200 * S),
                &checks,
                mem.clone(),
            );
            assert!(a.is_empty(), "check {i}");
            mem = m;
        }
        // So does a new process (systemd restarted it meanwhile).
        let restarted = [running("web", 1, 99)];
        let (a, m) = decide_health(
            &inputs(&d, &st, &restarted, &mem, 200 * S),
            &bad,
            mem.clone(),
        );
        assert!(a.is_empty());
        assert_eq!(m.units[&units[0].name].failures, 1);
    }

    #[test]
    fn crash_loops_are_retried_with_doubling_capped_backoff_then_forgotten() {
        let d = defs();
        let st = ServiceState::default();
        let mut failed = unit("worker", 1, "failed", "failed", 0, 0);
        failed.exec_main_exit_usec = 100 * S;
        let all = |u: &UnitInfo| [running("web", 1, 11), running("web", 2, 12), u.clone()];
        let mut mem = Memory::default();
        // First retry 4 s after the exit (step 0 was systemd's own 2 s restart).
        let units = all(&failed);
        let (a, _) = decide_counts(&inputs(&d, &st, &units, &mem, 103 * S));
        assert!(a.is_empty());
        let (a, m) = decide_counts(&inputs(&d, &st, &units, &mem, 104 * S));
        assert!(
            matches!(&a[..], [Action::Retry { retry: 1, waited, .. }] if waited.as_secs() == 4),
            "{a:?}"
        );
        mem = m;
        // It crashed again at 106: the next retry waits 8 s, then the cap (8 s) holds.
        let mut exit = 106 * S;
        for retry in 2..=4 {
            failed.exec_main_exit_usec = exit;
            let units = all(&failed);
            let (a, _) = decide_counts(&inputs(&d, &st, &units, &mem, exit + 7 * S));
            assert!(a.is_empty(), "retry {retry} too early: {a:?}");
            let (a, m) = decide_counts(&inputs(&d, &st, &units, &mem, exit + 8 * S));
            assert_eq!(a.len(), 1, "retry {retry}");
            mem = m;
            exit += 10 * S;
        }
        assert_eq!(mem.units[&failed.name].retries, 4);
        // Once it stays up for the start limit interval, the backoff is forgotten.
        let up = unit("worker", 1, "active", "running", 7, 200 * S);
        let units = all(&up);
        let (_, m) = decide_counts(&inputs(&d, &st, &units, &mem, 231 * S));
        assert!(!m.units.contains_key(&up.name), "{m:?}");
    }

    #[test]
    fn paused_services_and_processes_are_left_alone() {
        let d = defs();
        let units = [unit("web", 1, "failed", "failed", 0, 0)];
        let mem = Memory::default();
        let st = ServiceState {
            paused_processes: ["web".to_string()].into(),
            ..Default::default()
        };
        let (a, _) = decide_counts(&inputs(&d, &st, &units, &mem, 500 * S));
        // Only the worker (not paused) is started; web is neither retried nor completed.
        assert_eq!(a.len(), 1, "{a:?}");
        assert!(matches!(&a[0], Action::Start { process, .. } if process == "worker"));
        let st = ServiceState {
            paused: true,
            ..Default::default()
        };
        assert!(decide_counts(&inputs(&d, &st, &units, &mem, 500 * S))
            .0
            .is_empty());
    }

    #[test]
    fn a_failed_start_of_a_missing_instance_backs_off_too() {
        let d = defs();
        let st = ServiceState::default();
        let units = [running("web", 1, 11), running("web", 2, 12)];
        let mut mem = Memory::default();
        mem.units.insert(
            "shim-app-worker-r1-1.service".into(),
            UnitMemory {
                retries: 2,
                last_start_usec: 100 * S,
                ..Default::default()
            },
        );
        let (a, m) = decide_counts(&inputs(&d, &st, &units, &mem, 107 * S));
        assert!(a.is_empty(), "{a:?}");
        assert!(m.units.contains_key("shim-app-worker-r1-1.service"));
        let (a, _) = decide_counts(&inputs(&d, &st, &units, &mem, 108 * S));
        assert_eq!(a.len(), 1);
    }

    #[test]
    fn upstreams_list_the_healthy_instances_fail_open_and_close_when_none_runs() {
        let text = DEF.replace(
            "start_period = \"10s\" }",
            "start_period = \"10s\" }\nproxy = { upstream = \"app_web\", file = \"/etc/nginx/shim/app.conf\" }",
        );
        let d = parse_sources(&[(PathBuf::from("/etc/shim/services.toml"), text)]).unwrap();
        let st = ServiceState::default();
        let mem = Memory::default();
        let ports = |units: &[UnitInfo], checks: &BTreeMap<String, Check>, killed: &[&str]| {
            let inp = inputs(&d, &st, units, &mem, 200 * S);
            let targets = plan_upstreams(&inp, checks, killed);
            assert_eq!(targets.len(), 1);
            let ports: Vec<u16> = targets[0].to.endpoints().iter().map(|e| e.port).collect();
            (ports, targets[0].to.clone())
        };
        let units = [
            running("web", 1, 11),
            running("web", 2, 12),
            running("worker", 1, 13),
        ];
        let ok = |u: &UnitInfo| (u.name.clone(), Check::Healthy(200));
        let bad = |u: &UnitInfo| (u.name.clone(), Check::Status(500));
        // Both healthy: both listed, in instance order.
        let all: BTreeMap<_, _> = [ok(&units[0]), ok(&units[1])].into();
        assert_eq!(ports(&units, &all, &[]).0, vec![20001, 20002]);
        // One failed its check: it leaves the upstream.
        let one: BTreeMap<_, _> = [bad(&units[0]), ok(&units[1])].into();
        assert_eq!(ports(&units, &one, &[]).0, vec![20002]);
        // Killed in this run: out too, though its check passed.
        assert_eq!(
            ports(&units, &all, &[units[1].name.as_str()]).0,
            vec![20001]
        );
        // Not checked yet (start_period): not healthy, so not listed while another is.
        let first: BTreeMap<_, _> = [ok(&units[0])].into();
        assert_eq!(ports(&units, &first, &[]).0, vec![20001]);
        // None healthy: every running one (fail open).
        let none: BTreeMap<_, _> = [bad(&units[0]), bad(&units[1])].into();
        assert_eq!(ports(&units, &none, &[]).0, vec![20001, 20002]);
        // Down behind shim's back: not running, not listed.
        let down = [
            unit("web", 1, "inactive", "dead", 0, 0),
            running("web", 2, 12),
        ];
        assert_eq!(ports(&down, &BTreeMap::new(), &[]).0, vec![20002]);
        // Another deployment's instance is not ours to list.
        let mut other = running("web", 1, 11);
        other
            .fields
            .insert(crate::plan::fields::REVISION.into(), "r0".into());
        assert_eq!(ports(&[other], &BTreeMap::new(), &[]).0, Vec::<u16>::new());
        // None running: closed (502), naming no port another service could be given.
        let (p, to) = ports(&[], &BTreeMap::new(), &[]);
        assert!(p.is_empty());
        assert_eq!(to, Pointer::Closed);
    }
}
