//! One probe run of one service (`shim probe --id ID`, started by the service's probe timer):
//! the fast path if it can vouch for the service ([`fast`]), else a full run.
//!
//! A full run ([`run_full`]): load what earlier runs remembered ([`Memory`]) and the
//! definitions, then
//!
//! 1. [`target`]: the service must be defined, have a current revision, not be stopped or
//!    paused; the service lock must be free (an upgrade, start or stop working on it is left
//!    alone this time); after an interrupted upgrade, the revision that serves is the one
//!    supervised ([`note_interrupted`]);
//! 2. observe: the service's units (one D-Bus listing) and the time ([`Host::clock`]), as
//!    [`Inputs`] for the pure decisions in [`super::decide`];
//! 3. check and act on counts ([`check_and_start`]): the health checks (concurrent, from one
//!    thread, through [`Host::health`]) run beside the starts of missing instances and the
//!    retries of crash-looping ones ([`act_starts`], [`act_retries`]);
//! 4. act on health ([`act_kills`]): after `unhealthy_after` consecutive failed checks
//!    (outside `start_period`), SIGKILL the unit's main process through D-Bus, so that
//!    systemd's own `Restart=` path brings the instance back;
//! 5. point the proxy at the healthy instances ([`super::upstreams::sync_upstreams`], through
//!    the host's proxy switch);
//! 6. record: the memory after the run, and, when the service was found clean, the fast
//!    path's record ([`record_clean`]).
//!
//! Every action is logged to the journal ([`Host::journal`]) with SHIM_SERVICE, SHIM_PROCESS,
//! SHIM_INSTANCE, SHIM_UNIT, SHIM_ACTION and SHIM_REASON. A healthy run logs nothing.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::Result;

use super::decide::{decide_counts, decide_health, plan_checks, reuse_checks, Action, Inputs};
use super::fast;
use super::{load_memory, note_once, save_memory, Memory};
use crate::config::Definitions;
use crate::host::health::{Check, Probe};
use crate::host::journal::{NOTICE, WARNING};
use crate::host::lock::ServiceLock;
use crate::host::state::ServiceState;
use crate::host::systemd::{Systemd, UnitInfo};
use crate::host::Host;
use crate::ops::instances;

/// One probe run of service `id`: the fast path if it can vouch for the service
/// ([`fast::try_fast`]), else a full run. `before_full` runs first when the full run is
/// needed (`shim probe`'s lean entry sets up logging only then).
pub fn run(host: &Host, config: &Path, id: &str, before_full: impl FnOnce()) -> Result<()> {
    let pre = match fast::try_fast(host, config, id) {
        Ok(()) => return Ok(()),
        Err((why, pre)) => {
            before_full();
            tracing::debug!(service = id, "full probe run: {why}");
            pre
        }
    };
    run_full(host, config, id, &pre)
}

/// A full probe run: systemd is asked. `pre`: checks the fast path already made in this run.
pub fn run_full(host: &Host, config: &Path, id: &str, pre: &fast::Prechecked) -> Result<()> {
    let dirs = &host.dirs;
    // Taken before anything is read: whatever changes after it makes the record's digest
    // differ, so a record never vouches for inputs newer than the ones judged.
    let inputs = fast::enabled()
        .then(|| fast::inputs_digest(config, dirs, id))
        .flatten();
    let mut mem = load_memory(dirs, id);
    let before = mem.clone();
    let mut record = None;
    let r = match crate::config::load(config) {
        Ok(defs) => {
            mem.noted.retain(|k| !k.starts_with("config:"));
            let run = Run {
                host,
                defs: &defs,
                id,
                pre,
                inputs: inputs.as_deref(),
            };
            run.probe(&mut mem, &mut record)
        }
        Err(e) => {
            note_bad_definitions(host, &mut mem, id, &e);
            Ok(())
        }
    };
    if mem != before {
        save_memory(dirs, id, &mem)?;
    }
    if record.is_none() {
        fast::save_record(dirs, id, None);
    }
    r
}

/// Definitions that cannot be read are reported once per distinct error, not every few
/// seconds; the timer stays, so the probe works again as soon as the definitions do.
fn note_bad_definitions(host: &Host, mem: &mut Memory, id: &str, e: &dyn std::fmt::Display) {
    let key = format!("config:{e}");
    if !mem.noted.contains(&key) {
        mem.noted.retain(|k| !k.starts_with("config:"));
        mem.noted.insert(key);
        host.journal.send(
            WARNING,
            &format!("cannot read the definitions, nothing is probed: {e}"),
            &[(crate::plan::fields::SERVICE, id.to_string())],
        );
    }
}

/// A full run with the definitions read.
struct Run<'a> {
    host: &'a Host,
    defs: &'a Definitions,
    id: &'a str,
    /// Checks the fast path already made in this run.
    pre: &'a fast::Prechecked,
    /// The digest of the inputs for the fast path's record; `None`: write no record.
    inputs: Option<&'a str>,
}

/// What a run acts on: the service's deployment that serves.
struct Target {
    deployment: crate::plan::Deployment,
    st: ServiceState,
    revision: String,
}

/// What acting needs besides the actions.
struct Acting<'a> {
    host: &'a Host,
    sd: &'a dyn Systemd,
    defs: &'a Definitions,
    id: &'a str,
    revision: &'a str,
    deployment: &'a crate::plan::Deployment,
}

impl Run<'_> {
    /// Steps 1 to 6 of the module's flow; `mem` is updated, `record` set if one was written.
    fn probe(&self, mem: &mut Memory, record: &mut Option<fast::Record>) -> Result<()> {
        let (host, id) = (self.host, self.id);
        let Some(t) = target(host, self.defs, id, mem)? else {
            return Ok(());
        };
        // An upgrade, start or stop is working on the service: leave it alone this time.
        let Some(_lock) = ServiceLock::try_acquire(&host.dirs.run, id)? else {
            return Ok(());
        };
        note_interrupted(host, &t, id, mem);
        let sd = host.systemd()?;
        let units = crate::ops::view::ServiceView::observe(sd, id)?.into_units();
        let memory = mem.clone();
        let inp = Inputs {
            deployment: &t.deployment,
            service: &t.deployment.definition,
            state: &t.st,
            units: &units,
            memory: &memory,
            now_usec: host.clock.wall_usec(),
            max_delay: self.defs.settings.restart_max_delay,
            instances_dir: host.dirs.instances(id),
        };
        let cx = Acting {
            host,
            sd,
            defs: self.defs,
            id,
            revision: &t.revision,
            deployment: &t.deployment,
        };
        let (count_actions, after_counts, checks) = check_and_start(&cx, &inp, self.pre);
        // Units may have changed while acting (a retried one restarted): judge checks against
        // the pids they were made on, which `units` still holds.
        let (kills, mut after) = decide_health(&inp, &checks, after_counts);
        act_kills(&cx, &kills);
        let resynced = super::upstreams::sync_upstreams(
            host,
            &self.defs.settings,
            &inp,
            (&checks, &kills),
            mem,
        );
        if let Some(inputs) = self.inputs {
            let acted = !count_actions.is_empty() || !kills.is_empty() || resynced;
            *record = record_clean(host, &inp, &checks, acted, &after, inputs);
        }
        after.noted = mem.noted.clone();
        *mem = after;
        Ok(())
    }
}

/// The service to probe at its current revision, or `None` when there is nothing to do: not
/// defined (noted once), never started, stopped, or paused.
fn target(host: &Host, defs: &Definitions, id: &str, mem: &mut Memory) -> Result<Option<Target>> {
    let Ok(svc) = defs.service(id) else {
        note_once(
            host,
            mem,
            "undefined",
            id,
            &format!("service {id} is no longer defined: nothing to probe; `shim reconcile` removes its units and this timer"),
        );
        return Ok(None);
    };
    mem.noted.remove("undefined");
    let st = host.state().load(id)?;
    // After an interrupted upgrade, the revision nginx serves (which may be the attempt's).
    let upstreams = match st.upgrading {
        Some(_) => crate::ops::proxy::for_host(host, &defs.settings).pointed(svc),
        None => Default::default(),
    };
    let Some(revision) = st.serving_revision(&upstreams) else {
        return Ok(None);
    };
    if st.paused {
        return Ok(None);
    }
    let Some(deployment) = st.serving_deployment(&upstreams).cloned() else {
        note_once(
            host,
            mem,
            "unrecorded",
            id,
            &format!("service {id} was deployed by a shim that recorded no deployment: the probe waits for `shim reconcile` or `shim upgrade --id {id}` to record one"),
        );
        return Ok(None);
    };
    mem.noted.remove("unrecorded");
    Ok(Some(Target {
        deployment,
        st,
        revision,
    }))
}

/// Notes (once) an interrupted upgrade. The probe goes on supervising the revision that
/// serves ([`ServiceState::serving_revision`]): a hung or crashed serving instance must not
/// stay in rotation until someone runs `shim reconcile`. The attempt's other instances are
/// left for reconcile or the next upgrade to repair.
fn note_interrupted(host: &Host, t: &Target, id: &str, mem: &mut Memory) {
    let Some(a) = &t.st.upgrading else {
        mem.noted.remove("interrupted");
        return;
    };
    note_once(
        host,
        mem,
        "interrupted",
        id,
        &format!(
            "an upgrade of {id} to {} was interrupted; the probe supervises {}, the revision that serves, until `shim reconcile` or the next upgrade repairs the rest",
            a.revision, t.revision
        ),
    );
}

/// Decides on counts and crash loops, and makes the health checks beside acting on them (a
/// start can take seconds); with nothing to start or retry, on this thread. Returns the
/// count actions, the memory after them and every check's result by unit.
fn check_and_start(
    cx: &Acting<'_>,
    inp: &Inputs<'_>,
    pre: &fast::Prechecked,
) -> (Vec<Action>, Memory, BTreeMap<String, Check>) {
    let host = cx.host;
    let reqs = plan_checks(inp);
    let (count_actions, mut after_counts) = decide_counts(inp);
    let (mut checks, todo) = reuse_checks(&reqs, inp.units, pre);
    let requests: Vec<&Probe> = todo.iter().map(|r| &r.probe).collect();
    let made = if count_actions.is_empty() {
        host.health.check_all(&requests)
    } else {
        std::thread::scope(|s| {
            let h = s.spawn(|| host.health.check_all(&requests));
            act_starts(cx, &count_actions, &mut after_counts);
            act_retries(cx, &count_actions);
            h.join().unwrap_or_default()
        })
    };
    checks.extend(todo.iter().map(|r| r.unit.clone()).zip(made));
    (count_actions, after_counts, checks)
}

/// The fast path's record of a service found clean, or `None`. Written while the service's
/// lock is held: a stop or upgrade that follows sees it.
fn record_clean(
    host: &Host,
    inp: &Inputs<'_>,
    checks: &BTreeMap<String, Check>,
    acted: bool,
    after: &Memory,
    inputs: &str,
) -> Option<fast::Record> {
    let procs = inp
        .units
        .iter()
        .filter_map(|u| Some((u.main_pid, fast::read_proc(u.main_pid)?)))
        .filter(|(pid, _)| *pid != 0)
        .collect();
    let record = fast::plan_record(inp, checks, acted, after, &procs, inputs)?;
    fast::save_record(&host.dirs, inp.service.id.as_str(), Some(&record));
    Some(record)
}

/// The journal fields of an action on one instance.
fn fields(cx: &Acting<'_>, process: &str, index: u32, unit: &str) -> Vec<(&'static str, String)> {
    vec![
        (crate::plan::fields::SERVICE, cx.id.to_string()),
        (crate::plan::fields::PROCESS, process.to_string()),
        (crate::plan::fields::INSTANCE, index.to_string()),
        (crate::plan::fields::REVISION, cx.revision.to_string()),
        (crate::plan::fields::UNIT, unit.to_string()),
    ]
}

/// Starts the missing instances of `actions` (one prepare for all of them). A start that
/// failed is remembered, so that the next one waits for its backoff.
fn act_starts(cx: &Acting<'_>, actions: &[Action], mem: &mut Memory) {
    let missing: Vec<(&str, u32, &str)> = actions
        .iter()
        .filter_map(|a| match a {
            Action::Start {
                process,
                index,
                unit,
            } => Some((process.as_str(), *index, unit.as_str())),
            _ => None,
        })
        .collect();
    if missing.is_empty() {
        return;
    }
    let wanted: Vec<(String, u32)> = missing
        .iter()
        .map(|(p, i, _)| (p.to_string(), *i))
        .collect();
    let r = instances::prepare_deployed(cx.host, cx.defs, cx.deployment, true)
        .and_then(|p| instances::start_instances(cx.host, &p, &wanted));
    if let Ok(started) = &r {
        record_new_ports(cx, started);
    }
    for (process, index, unit) in missing {
        let mut f = fields(cx, process, index, unit);
        f.push((crate::plan::fields::ACTION, "start".into()));
        match &r {
            Ok(_) => {
                f.push((crate::plan::fields::REASON, "instance missing".into()));
                let message = format!("started missing instance {unit}");
                cx.host.journal.send(NOTICE, &message, &f);
                mem.units.remove(unit);
            }
            Err(e) => {
                let m = mem.units.entry(unit.to_string()).or_default();
                m.retries += 1;
                m.last_start_usec = cx.host.clock.wall_usec();
                f.push((
                    crate::plan::fields::REASON,
                    format!("instance missing; starting it failed: {e:#}"),
                ));
                let message = format!(
                    "starting missing instance {unit} failed (retry {}): {e:#}",
                    m.retries
                );
                cx.host.journal.send(WARNING, &message, &f);
            }
        }
    }
}

/// A replacement could not have its recorded port (another program took it): the
/// deployment records the new one, under the service lock the probe holds. The upstream
/// follows once the instance is healthy ([`super::upstreams::sync_upstreams`]).
fn record_new_ports(cx: &Acting<'_>, started: &instances::StartReport) {
    let store = cx.host.state();
    let Ok(mut st) = store.load(cx.id) else {
        return;
    };
    let Some(d) = st
        .deployment
        .as_mut()
        .filter(|d| d.id() == cx.deployment.id())
    else {
        return;
    };
    let old = d.ports.clone();
    if !started.record_ports(d) {
        return;
    }
    if let Err(e) = store.save(cx.id, &st) {
        tracing::warn!("recording the new ports of {}: {e:#}", cx.id);
        return;
    }
    for ((p, i), port) in &started.ports {
        let was = old.get(&crate::plan::deployment::port_key(p, *i));
        if was.is_some_and(|w| w != port) {
            let message = format!(
                "instance {p} #{i} of {} got port {port}: its port {} was taken",
                cx.id,
                was.copied().unwrap_or(0)
            );
            cx.host.journal.send(
                WARNING,
                &message,
                &[(crate::plan::fields::SERVICE, cx.id.to_string())],
            );
        }
    }
}

/// Resets and starts the failed units of `actions` whose backoff has passed.
fn act_retries(cx: &Acting<'_>, actions: &[Action]) {
    for a in actions {
        let Action::Retry {
            process,
            index,
            unit,
            retry,
            waited,
        } = a
        else {
            continue;
        };
        let r = cx.sd.restart_failed(unit, instances::START_TIMEOUT);
        let mut f = fields(cx, process, *index, unit);
        f.push((crate::plan::fields::ACTION, "retry".into()));
        f.push((
            crate::plan::fields::REASON,
            format!("crash loop: retry {retry} after {} s", waited.as_secs()),
        ));
        let (priority, message) = match r {
            Ok(out) if out.ok() => (
                NOTICE,
                format!(
                    "restarted crash-looping instance {unit} (retry {retry}, {} s after it failed)",
                    waited.as_secs()
                ),
            ),
            Ok(out) => (
                WARNING,
                format!(
                    "restarting crash-looping instance {unit} failed: {}",
                    out.result
                ),
            ),
            Err(e) => (
                WARNING,
                format!("restarting crash-looping instance {unit} failed: {e}"),
            ),
        };
        cx.host.journal.send(priority, &message, &f);
    }
}

/// Kills the main process of the unhealthy units of `actions`, if it is still the one that
/// failed the checks.
fn act_kills(cx: &Acting<'_>, actions: &[Action]) {
    for a in actions {
        let Action::Kill {
            process,
            index,
            unit,
            pid,
            reason,
        } = a
        else {
            continue;
        };
        // The checks took a while: if systemd replaced the process meanwhile, the new one has
        // not failed anything yet.
        let now: Vec<UnitInfo> = cx
            .sd
            .list_units(std::slice::from_ref(unit))
            .unwrap_or_default();
        if now.first().map(|u| u.main_pid) != Some(*pid) {
            continue;
        }
        let mut f = fields(cx, process, *index, unit);
        f.push((crate::plan::fields::ACTION, "kill".into()));
        f.push((crate::plan::fields::REASON, reason.clone()));
        let message = match cx.sd.kill_main(unit, libc::SIGKILL) {
            Ok(()) => format!(
                "killed unhealthy instance {unit} (pid {pid}) so that systemd restarts it: {reason}"
            ),
            Err(e) => format!("killing unhealthy instance {unit} failed: {e} ({reason})"),
        };
        cx.host.journal.send(WARNING, &message, &f);
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;
    use crate::host::clock::FakeClock;
    use crate::host::health::FakeHealthChecker;
    use crate::host::journal::{Entry, RecordingJournal};
    use crate::host::state::{Attempt, Phase};
    use crate::host::systemd::fake::lock;
    use crate::host::FakeHost;
    use crate::ops::probe::decide::tests::{running, unit, DEF, S};
    use crate::ops::testkit::FakePreparer;

    /// `decide`'s definitions, with a command for web (the fake image has none).
    fn def() -> String {
        DEF.replace(
            "[services.app.processes.web]\n",
            "[services.app.processes.web]\ncommand = [\"/web\"]\n",
        )
    }

    /// A fake host whose HTTP checks and journal the test scripts and reads, with the
    /// definitions of `decide`'s tests in a file and app's recorded state at revision r1.
    struct Probe {
        fh: FakeHost,
        http: Arc<FakeHealthChecker>,
        journal: Arc<RecordingJournal>,
        config: PathBuf,
    }

    impl Probe {
        fn new() -> Probe {
            let http = Arc::new(FakeHealthChecker::default());
            let journal = Arc::new(RecordingJournal::default());
            let (h, j) = (http.clone(), journal.clone());
            let fh = FakeHost::with(|host| {
                host.images = Box::new(FakePreparer::default());
                host.health = Box::new(h);
                host.journal = Box::new(j);
            });
            *lock(&http.default) = Some(Check::Healthy(200));
            let config = fh.tmp.path().join("services.toml");
            std::fs::write(&config, def()).unwrap();
            let p = Probe {
                fh,
                http,
                journal,
                config,
            };
            p.set_state(ServiceState {
                current: Some("r1".into()),
                ..Default::default()
            });
            p
        }

        /// Saves app's state, with the (untagged) deployment records the fake preparer
        /// would have made for its revisions.
        fn set_state(&self, mut st: ServiceState) {
            let defs = crate::ops::testkit::defs(&def());
            let dep = |r: &str| crate::ops::testkit::deployment(&defs, "app", r);
            if st.deployment.is_none() {
                st.deployment = st.current.as_deref().map(dep);
            }
            if let Some(a) = st.upgrading.as_mut() {
                a.deployment = a.deployment.take().or_else(|| Some(dep(&a.revision)));
            }
            self.fh.host.state().save("app", &st).unwrap();
        }

        /// The three expected instances, running and up for long.
        fn all_running(&self) {
            for u in [
                running("web", 1, 11),
                running("web", 2, 12),
                running("worker", 1, 13),
            ] {
                self.fh.systemd.insert(u);
            }
        }

        fn run(&self) {
            run_full(&self.fh.host, &self.config, "app", &Default::default()).unwrap();
        }

        fn run_id(&self, id: &str) {
            run_full(&self.fh.host, &self.config, id, &Default::default()).unwrap();
        }

        fn memory(&self) -> Memory {
            load_memory(&self.fh.host.dirs, "app")
        }

        fn sleep(&self, secs: u64) {
            self.fh.host.clock.sleep(Duration::from_secs(secs));
        }

        /// The systemd calls that change something (not the listings).
        fn changes(&self) -> Vec<String> {
            self.fh
                .systemd
                .calls()
                .into_iter()
                .filter(|c| !c.starts_with("list "))
                .collect()
        }

        fn logged(&self) -> Vec<Entry> {
            self.journal.entries()
        }
    }

    fn action(e: &Entry) -> &str {
        e.fields
            .get(crate::plan::fields::ACTION)
            .map(String::as_str)
            .unwrap_or("")
    }

    #[test]
    fn missing_instances_are_started_and_logged() {
        let p = Probe::new();
        p.fh.systemd.insert(running("web", 1, 11));
        p.run();
        let starts: Vec<String> = p
            .changes()
            .into_iter()
            .filter(|c| c.starts_with("start "))
            .collect();
        assert_eq!(
            starts,
            [
                "start shim-app-web-r1-2.service",
                "start shim-app-worker-r1-1.service"
            ]
        );
        let logged = p.logged();
        assert_eq!(logged.len(), 2, "{logged:?}");
        assert!(logged.iter().all(|e| action(e) == "start"
            && e.priority == NOTICE
            && e.fields[crate::plan::fields::REASON] == "instance missing"));
        assert_eq!(
            logged[1].fields[crate::plan::fields::UNIT],
            "shim-app-worker-r1-1.service"
        );
        assert_eq!(p.memory(), Memory::default());
    }

    #[test]
    fn a_dbus_read_error_during_a_probe_plans_and_makes_no_duplicate_start() {
        use crate::host::systemd::ReadError;
        let p = Probe::new();
        p.all_running();
        // web 2 is there and running, but reading its properties fails (a D-Bus timeout):
        // it must not be taken for missing and started a second time.
        lock(&p.fh.systemd.fail_read).insert(
            "shim-app-web-r1-2.service".into(),
            ReadError::Failed("Connection timed out (org.freedesktop.DBus.Error.Timeout)".into()),
        );
        let err = run_full(&p.fh.host, &p.config, "app", &Default::default()).unwrap_err();
        assert!(
            format!("{err:#}").contains("shim-app-web-r1-2.service: Connection timed out"),
            "{err:#}"
        );
        assert!(p.changes().is_empty(), "{:?}", p.changes());
        assert!(p.logged().iter().all(|e| action(e) != "start"));
    }

    #[test]
    fn a_healthy_service_is_left_alone_and_nothing_is_logged() {
        let p = Probe::new();
        p.all_running();
        p.run();
        assert!(p.changes().is_empty(), "{:?}", p.changes());
        assert!(p.logged().is_empty());
        assert_eq!(p.memory(), Memory::default());
        // Both web instances were checked on their own ports, the worker (no check) not.
        let asked: Vec<u16> = lock(&p.http.asked).iter().map(|(port, _)| *port).collect();
        assert_eq!(asked, [20001, 20002]);
    }

    #[test]
    fn an_instance_failing_unhealthy_after_checks_in_a_row_is_killed() {
        let p = Probe::new();
        p.all_running();
        lock(&p.http.answers).insert(20001, Check::Status(500));
        let web1 = "shim-app-web-r1-1.service";
        for round in 1..=2 {
            p.run();
            assert!(p.changes().is_empty(), "round {round}: {:?}", p.changes());
            let m = &p.memory().units[web1];
            assert_eq!((m.failures, m.pid), (round, 11), "round {round}");
        }
        p.run();
        assert_eq!(p.changes(), [format!("kill {web1} {}", libc::SIGKILL)]);
        let logged = p.logged();
        assert_eq!(logged.len(), 1, "{logged:?}");
        assert_eq!(action(&logged[0]), "kill");
        assert_eq!(logged[0].priority, WARNING);
        assert!(
            logged[0].fields[crate::plan::fields::REASON]
                .contains("3 consecutive failed health checks"),
            "{logged:?}"
        );
        // The count starts over for the next process.
        assert_eq!(p.memory().units[web1].failures, 0);
    }

    /// Health checks that all fail and, while they run, systemd replaces web 1's process.
    struct RestartedWhileChecking(Arc<crate::host::systemd::FakeSystemd>);

    impl crate::host::health::HealthChecker for RestartedWhileChecking {
        fn check_all(&self, reqs: &[&crate::host::health::Probe]) -> Vec<Check> {
            self.0
                .edit("shim-app-web-r1-1.service", |u| u.main_pid = 99);
            reqs.iter().map(|_| Check::Status(500)).collect()
        }
    }

    #[test]
    fn a_process_replaced_while_checking_is_not_killed() {
        let mut p = Probe::new();
        p.all_running();
        let web1 = "shim-app-web-r1-1.service";
        let mut m = Memory::default();
        m.units.insert(
            web1.into(),
            crate::ops::probe::UnitMemory {
                failures: 2,
                pid: 11,
                ..Default::default()
            },
        );
        save_memory(&p.fh.host.dirs, "app", &m).unwrap();
        p.fh.host.health = Box::new(RestartedWhileChecking(p.fh.systemd.clone()));
        p.run();
        assert!(p.changes().is_empty(), "{:?}", p.changes());
        assert!(p.logged().is_empty());
    }

    #[test]
    fn a_crash_looping_unit_is_retried_only_after_its_backoff() {
        let p = Probe::new();
        p.all_running();
        let worker = "shim-app-worker-r1-1.service";
        p.fh.systemd.edit(worker, |u| {
            *u = unit("worker", 1, "failed", "failed", 0, 0);
            u.exec_main_exit_usec = FakeClock::WALL_BASE_USEC;
        });
        // Step 0 (2 s) was systemd's own restart; the probe's first retry is 4 s after the exit.
        p.run();
        p.sleep(3);
        p.run();
        assert!(p.changes().is_empty(), "{:?}", p.changes());
        p.sleep(1);
        p.run();
        assert_eq!(
            p.changes(),
            [
                format!("reset-failed {worker}"),
                format!("start-unit {worker}")
            ]
        );
        let m = &p.memory().units[worker];
        assert_eq!(m.retries, 1);
        assert_eq!(m.last_start_usec, FakeClock::WALL_BASE_USEC + 4 * S);
        let logged = p.logged();
        assert_eq!(logged.len(), 1, "{logged:?}");
        assert_eq!(action(&logged[0]), "retry");
        assert_eq!(
            logged[0].fields[crate::plan::fields::REASON],
            "crash loop: retry 1 after 4 s"
        );
    }

    #[test]
    fn a_failed_start_is_remembered_and_retried_after_its_backoff() {
        let p = Probe::new();
        p.fh.systemd.insert(running("web", 1, 11));
        p.fh.systemd.insert(running("web", 2, 12));
        // The worker's unit fails to start.
        lock(&p.fh.systemd.fail_start).push("shim-app-worker-r1-1.service".into());
        let worker = "shim-app-worker-r1-1.service";
        p.run();
        let m = &p.memory().units[worker];
        assert_eq!(
            (m.retries, m.last_start_usec),
            (1, FakeClock::WALL_BASE_USEC)
        );
        assert_eq!(p.logged().len(), 1);
        assert_eq!(p.logged()[0].priority, WARNING);
        assert!(
            p.logged()[0].message.contains("failed (retry 1)"),
            "{:?}",
            p.logged()
        );
        // Backoff step 1 is 4 s: nothing before, a second attempt after.
        p.sleep(3);
        p.run();
        assert_eq!(p.logged().len(), 1);
        p.sleep(1);
        p.run();
        assert_eq!(p.logged().len(), 2);
        assert_eq!(p.memory().units[worker].retries, 2);
    }

    #[test]
    fn a_paused_service_or_process_is_left_alone() {
        let p = Probe::new();
        p.set_state(ServiceState {
            current: Some("r1".into()),
            paused: true,
            ..Default::default()
        });
        p.run();
        assert!(
            p.fh.systemd.calls().is_empty(),
            "{:?}",
            p.fh.systemd.calls()
        );
        assert!(lock(&p.http.asked).is_empty());
        // Only web paused: the worker is still started, web is neither started nor checked.
        p.set_state(ServiceState {
            current: Some("r1".into()),
            paused_processes: ["web".to_string()].into(),
            ..Default::default()
        });
        p.fh.systemd.insert(running("web", 1, 11));
        lock(&p.http.answers).insert(20001, Check::Status(500));
        p.run();
        let starts: Vec<String> = p
            .changes()
            .into_iter()
            .filter(|c| c.starts_with("start "))
            .collect();
        assert_eq!(starts, ["start shim-app-worker-r1-1.service"]);
        assert!(lock(&p.http.asked).is_empty());
    }

    #[test]
    fn a_stopped_or_never_started_service_is_left_alone() {
        let p = Probe::new();
        for st in [
            ServiceState::default(),
            ServiceState {
                current: Some("r1".into()),
                stopped: true,
                ..Default::default()
            },
        ] {
            p.set_state(st);
            p.run();
        }
        assert!(
            p.fh.systemd.calls().is_empty(),
            "{:?}",
            p.fh.systemd.calls()
        );
        assert!(p.logged().is_empty());
    }

    #[test]
    fn after_an_interrupted_upgrade_the_serving_revision_is_still_supervised() {
        // Killed before nginx switched: r1 serves. Its missing instances are started (a hung
        // or crashed serving instance must not wait for `shim reconcile`); r2 is left alone.
        let p = Probe::new();
        p.set_state(ServiceState {
            current: Some("r1".into()),
            upgrading: Some(Attempt {
                revision: "r2".into(),
                phase: Phase::Starting,
                deployment: None,
            }),
            ..Default::default()
        });
        p.run();
        p.run();
        let starts: Vec<String> = p
            .changes()
            .into_iter()
            .filter(|c| c.starts_with("start "))
            .collect();
        assert!(!starts.is_empty(), "{:?}", p.changes());
        assert!(starts.iter().all(|c| c.contains("-r1-")), "{starts:?}");
        let notes: Vec<_> = p
            .logged()
            .into_iter()
            .filter(|e| e.message.contains("was interrupted"))
            .collect();
        assert_eq!(notes.len(), 1, "noted once: {notes:?}");
        assert!(
            notes[0].message.contains("the probe supervises r1"),
            "{notes:?}"
        );
        assert!(p.memory().noted.contains("interrupted"));
        // Repaired (the state is plain again): the note is forgotten.
        p.set_state(ServiceState {
            current: Some("r1".into()),
            ..Default::default()
        });
        p.run();
        assert!(!p.memory().noted.contains("interrupted"));
    }

    #[test]
    fn after_a_kill_past_the_switch_the_attempts_revision_is_supervised() {
        let p = Probe::new();
        p.set_state(ServiceState {
            current: Some("r1".into()),
            upgrading: Some(Attempt {
                revision: "r2".into(),
                phase: Phase::Switched,
                deployment: None,
            }),
            ..Default::default()
        });
        p.run();
        let starts: Vec<String> = p
            .changes()
            .into_iter()
            .filter(|c| c.starts_with("start "))
            .collect();
        assert!(!starts.is_empty(), "{:?}", p.changes());
        assert!(starts.iter().all(|c| c.contains("-r2-")), "{starts:?}");
    }

    #[test]
    fn the_service_lock_held_by_another_command_means_nothing_is_done() {
        let p = Probe::new();
        let _held = ServiceLock::acquire(&p.fh.host.dirs.run, "app", Duration::ZERO).unwrap();
        p.run();
        assert!(
            p.fh.systemd.calls().is_empty(),
            "{:?}",
            p.fh.systemd.calls()
        );
        assert!(lock(&p.http.asked).is_empty());
        assert!(p.logged().is_empty());
    }

    #[test]
    fn an_undefined_service_is_noted_once() {
        let p = Probe::new();
        p.run_id("gone");
        p.run_id("gone");
        assert!(p.fh.systemd.calls().is_empty());
        let logged = p.logged();
        assert_eq!(logged.len(), 1, "{logged:?}");
        assert!(logged[0]
            .message
            .contains("service gone is no longer defined"));
        assert_eq!(logged[0].fields[crate::plan::fields::SERVICE], "gone");
        assert!(load_memory(&p.fh.host.dirs, "gone")
            .noted
            .contains("undefined"));
    }

    #[test]
    fn unreadable_definitions_are_reported_once_per_distinct_error() {
        let p = Probe::new();
        std::fs::write(&p.config, "[services.app\n").unwrap();
        p.run();
        p.run();
        assert_eq!(p.logged().len(), 1);
        assert_eq!(p.logged()[0].priority, WARNING);
        std::fs::write(&p.config, "[services.app]\nimage = 3\n").unwrap();
        p.run();
        assert_eq!(p.logged().len(), 2, "{:?}", p.logged());
        // Readable again: the probe works and the note is gone.
        std::fs::write(&p.config, def()).unwrap();
        p.all_running();
        p.run();
        assert_eq!(p.memory(), Memory::default());
        assert!(p.fh.systemd.calls().iter().any(|c| c.starts_with("list ")));
    }

    /// A record as a full run would leave it, for this test process (so that `/proc` knows
    /// it) standing for web 1.
    fn save_record_of_me(p: &Probe) {
        let dirs = &p.fh.host.dirs;
        let me = std::process::id();
        let rec = fast::Record {
            inputs: fast::inputs_digest(&p.config, dirs, "app").unwrap(),
            verified_usec: p.fh.host.clock.wall_usec(),
            instances: vec![fast::Instance {
                unit: "shim-app-web-r1-1.service".into(),
                pid: me,
                process: fast::read_proc(me).unwrap(),
                check: Some(crate::host::health::Probe {
                    target: crate::host::health::Target::Http {
                        endpoint: crate::plan::Endpoint::for_instance(20001),
                        path: "/health".into(),
                    },
                    timeout_ms: 1000,
                }),
            }],
        };
        fast::save_record(dirs, "app", Some(&rec));
    }

    #[test]
    fn the_fast_path_checks_through_the_host_and_asks_systemd_nothing() {
        let p = Probe::new();
        save_record_of_me(&p);
        let mut full = false;
        run(&p.fh.host, &p.config, "app", || full = true).unwrap();
        assert!(!full);
        assert!(p.fh.systemd.calls().is_empty());
        assert_eq!(*lock(&p.http.asked), [(20001, "/health".to_string())]);
        // A minute later (the fake clock) the record is stale: a full run.
        p.sleep(61);
        run(&p.fh.host, &p.config, "app", || full = true).unwrap();
        assert!(full);
        assert!(!p.fh.systemd.calls().is_empty());
    }

    #[test]
    fn a_failed_fast_check_falls_back_to_a_full_run_that_does_not_check_again() {
        let p = Probe::new();
        let me = std::process::id();
        p.all_running();
        p.fh.systemd
            .edit("shim-app-web-r1-1.service", |u| u.main_pid = me);
        save_record_of_me(&p);
        lock(&p.http.answers).insert(20001, Check::Status(503));
        let mut full = false;
        run(&p.fh.host, &p.config, "app", || full = true).unwrap();
        assert!(full);
        // web 1 once (fast path, reused by the full run), web 2 once (full run).
        let asked: Vec<u16> = lock(&p.http.asked).iter().map(|(port, _)| *port).collect();
        assert_eq!(asked, [20001, 20002]);
        assert_eq!(p.memory().units["shim-app-web-r1-1.service"].failures, 1);
        // The failure is counted: no record vouches for the service any more.
        assert_eq!(fast::load_record(&p.fh.host.dirs, "app"), None);
    }
}
