//! One probe run of one service (`shim probe --id ID`, started by the service's probe timer):
//! the fast path if it can vouch for the service ([`fast`]), else a full run.
//!
//! A full run ([`run_full`]): load what earlier runs remembered ([`Memory`]) and the
//! definitions, then
//!
//! 1. [`target`]: the service must be defined, have a current revision, not be stopped or
//!    paused; the service lock must be free (an upgrade, start or stop working on it is left
//!    alone this time); no interrupted upgrade may be recorded ([`interrupted`]);
//! 2. observe: the service's units (one D-Bus listing) and the time ([`Host::clock`]), as
//!    [`Inputs`] for the pure decisions in [`super::decide`];
//! 3. check and act on counts ([`check_and_start`]): the health checks (concurrent, from one
//!    thread, through [`Host::http`]) run beside the starts of missing instances and the
//!    retries of crash-looping ones ([`act_starts`], [`act_retries`]);
//! 4. act on health ([`act_kills`]): after `unhealthy_after` consecutive failed checks
//!    (outside `start_period`), SIGKILL the unit's main process through D-Bus, so that
//!    systemd's own `Restart=` path brings the instance back;
//! 5. record: the memory after the run, and, when the service was found clean, the fast
//!    path's record ([`record_clean`]).
//!
//! Every action is logged to the journal ([`Host::journal`]) with SHIM_SERVICE, SHIM_PROCESS,
//! SHIM_INSTANCE, SHIM_UNIT, SHIM_ACTION and SHIM_REASON. A healthy run logs nothing.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::Result;

use super::decide::{decide_counts, decide_health, plan_checks, reuse_checks, Action, Inputs};
use super::fast;
use super::{load_memory, save_memory, Memory};
use crate::config::{Definitions, ServiceDef};
use crate::host::http_check::{self as http, Check};
use crate::host::journal::{NOTICE, WARNING};
use crate::host::lock::ServiceLock;
use crate::host::state::ServiceState;
use crate::host::systemd::{Systemd, UnitInfo};
use crate::host::Host;
use crate::ops::instances;

/// Logs a condition once (until it clears), so that a probe every few seconds stays quiet.
fn note_once(host: &Host, mem: &mut Memory, key: &str, id: &str, message: &str) {
    if mem.noted.insert(key.to_string()) {
        host.journal
            .send(NOTICE, message, &[("SHIM_SERVICE", id.to_string())]);
    }
}

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
            &[("SHIM_SERVICE", id.to_string())],
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

/// What a run acts on: the service at its recorded current revision.
struct Target<'a> {
    svc: &'a ServiceDef,
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
}

impl Run<'_> {
    /// Steps 1 to 5 of the module's flow; `mem` is updated, `record` set if one was written.
    fn probe(&self, mem: &mut Memory, record: &mut Option<fast::Record>) -> Result<()> {
        let (host, id) = (self.host, self.id);
        let Some(t) = target(host, self.defs, id, mem)? else {
            return Ok(());
        };
        // An upgrade, start or stop is working on the service: leave it alone this time.
        let Some(_lock) = ServiceLock::try_acquire(&host.dirs.run, id)? else {
            return Ok(());
        };
        if interrupted(host, &t.st, id, mem) {
            return Ok(());
        }
        let sd = host.systemd()?;
        let units = instances::service_units(sd, id)?;
        let memory = mem.clone();
        let inp = Inputs {
            service: t.svc,
            state: &t.st,
            revision: &t.revision,
            units: &units,
            memory: &memory,
            now_usec: host.clock.wall_usec(),
            max_delay: self.defs.settings.restart_max_delay,
        };
        let cx = Acting {
            host,
            sd,
            defs: self.defs,
            id,
            revision: &t.revision,
        };
        let (count_actions, after_counts, checks) = check_and_start(&cx, &inp, self.pre);
        // Units may have changed while acting (a retried one restarted): judge checks against
        // the pids they were made on, which `units` still holds.
        let (kills, mut after) = decide_health(&inp, &checks, after_counts);
        act_kills(&cx, &kills);
        if let Some(inputs) = self.inputs {
            let acted = !count_actions.is_empty() || !kills.is_empty();
            *record = record_clean(host, &inp, &checks, acted, &after, inputs);
        }
        after.noted = mem.noted.clone();
        *mem = after;
        Ok(())
    }
}

/// The service to probe at its current revision, or `None` when there is nothing to do: not
/// defined (noted once), never started, stopped, or paused.
fn target<'d>(
    host: &Host,
    defs: &'d Definitions,
    id: &str,
    mem: &mut Memory,
) -> Result<Option<Target<'d>>> {
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
    let Some(revision) = st.current.clone().filter(|_| !st.stopped) else {
        return Ok(None);
    };
    if st.paused {
        return Ok(None);
    }
    Ok(Some(Target { svc, st, revision }))
}

/// Whether an interrupted upgrade is recorded (noted once): the probe waits until
/// `shim reconcile` or the next upgrade repairs it.
fn interrupted(host: &Host, st: &ServiceState, id: &str, mem: &mut Memory) -> bool {
    if let Some(a) = &st.upgrading {
        note_once(
            host,
            mem,
            "interrupted",
            id,
            &format!(
                "an upgrade of {id} to {} was interrupted; the probe waits until `shim reconcile` or the next upgrade repairs it",
                a.revision
            ),
        );
        return true;
    }
    mem.noted.remove("interrupted");
    false
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
    let requests: Vec<http::Request<'_>> = todo
        .iter()
        .map(|r| http::Request {
            port: r.port,
            path: &r.path,
            timeout: r.timeout,
        })
        .collect();
    let made = if count_actions.is_empty() {
        host.http.check_all(&requests)
    } else {
        std::thread::scope(|s| {
            let h = s.spawn(|| host.http.check_all(&requests));
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
        ("SHIM_SERVICE", cx.id.to_string()),
        ("SHIM_PROCESS", process.to_string()),
        ("SHIM_INSTANCE", index.to_string()),
        ("SHIM_REVISION", cx.revision.to_string()),
        ("SHIM_UNIT", unit.to_string()),
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
    let r = instances::prepare(cx.host, cx.defs, cx.id, cx.revision, true)
        .and_then(|p| instances::start_instances(cx.host, &p, &wanted));
    for (process, index, unit) in missing {
        let mut f = fields(cx, process, index, unit);
        f.push(("SHIM_ACTION", "start".into()));
        match &r {
            Ok(_) => {
                f.push(("SHIM_REASON", "instance missing".into()));
                let message = format!("started missing instance {unit}");
                cx.host.journal.send(NOTICE, &message, &f);
                mem.units.remove(unit);
            }
            Err(e) => {
                let m = mem.units.entry(unit.to_string()).or_default();
                m.retries += 1;
                m.last_start_usec = cx.host.clock.wall_usec();
                f.push((
                    "SHIM_REASON",
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
        f.push(("SHIM_ACTION", "retry".into()));
        f.push((
            "SHIM_REASON",
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
        f.push(("SHIM_ACTION", "kill".into()));
        f.push(("SHIM_REASON", reason.clone()));
        let message = match cx.sd.kill_main(unit, libc::SIGKILL) {
            Ok(()) => format!(
                "killed unhealthy instance {unit} (pid {pid}) so that systemd restarts it: {reason}"
            ),
            Err(e) => format!("killing unhealthy instance {unit} failed: {e} ({reason})"),
        };
        cx.host.journal.send(WARNING, &message, &f);
    }
}
