//! One probe run of one service (`shim probe --id ID`, started by the service's probe timer):
//! the fast path if it can vouch for the service ([`fast`]), else a full run: observe,
//! decide, act.
//!
//! - observe: the definitions, the recorded state (current revision, paused), the service's
//!   units (one D-Bus listing), what earlier runs remembered ([`Memory`]);
//! - health checks (concurrent, from one thread; beside the main thread when that has
//!   instances to start or retry), and counts and crash loops ([`decide_counts`]: start
//!   missing instances, retry failed ones whose backoff has passed);
//! - [`decide_health`]: after `unhealthy_after` consecutive failed checks (outside
//!   `start_period`), SIGKILL the unit's main process through D-Bus, so that systemd's own
//!   `Restart=` path brings the instance back.
//!
//! The deciding is pure (unit-tested below); every action is logged to the journal with
//! SHIM_SERVICE, SHIM_PROCESS, SHIM_INSTANCE, SHIM_UNIT, SHIM_ACTION and SHIM_REASON. A
//! healthy run logs nothing; a full one that finds the service clean writes the fast path's
//! record, nothing else.

use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Result;

use super::decide::{decide_counts, decide_health, plan_checks, reuse_checks, Action, Inputs};
use super::fast;
use super::{load_memory, save_memory, Memory};
use crate::config::{Definitions, ServiceDef};
use crate::host::http_check as http;
use crate::host::journal::{self, NOTICE, WARNING};
use crate::host::lock::ServiceLock;
use crate::host::state::StateStore;
use crate::host::systemd::Systemd;
use crate::host::Host;
use crate::ops::instances;

pub(super) fn now_usec() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// Logs a condition once (until it clears), so that a probe every few seconds stays quiet.
fn note_once(mem: &mut Memory, key: &str, id: &str, message: &str) {
    if mem.noted.insert(key.to_string()) {
        journal::send(NOTICE, message, &[("SHIM_SERVICE", id.to_string())]);
    }
}

/// One probe run of service `id`: the fast path if it can vouch for the service
/// ([`fast::try_fast`]), else a full run. `before_full` runs first when the full run is
/// needed (`shim probe`'s lean entry sets up logging only then).
pub fn run(host: &Host, config: &Path, id: &str, before_full: impl FnOnce()) -> Result<()> {
    let pre = match fast::try_fast(config, &host.dirs, id) {
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
            run_with(
                host,
                &defs,
                id,
                &mut mem,
                pre,
                inputs.as_deref(),
                &mut record,
            )
        }
        // Reported once per distinct error, not every few seconds; the timer stays, so the
        // probe works again as soon as the definitions do.
        Err(e) => {
            let key = format!("config:{e}");
            if !mem.noted.contains(&key) {
                mem.noted.retain(|k| !k.starts_with("config:"));
                mem.noted.insert(key);
                journal::send(
                    WARNING,
                    &format!("cannot read the definitions, nothing is probed: {e}"),
                    &[("SHIM_SERVICE", id.to_string())],
                );
            }
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

fn run_with(
    host: &Host,
    defs: &Definitions,
    id: &str,
    mem: &mut Memory,
    pre: &fast::Prechecked,
    inputs: Option<&str>,
    record: &mut Option<fast::Record>,
) -> Result<()> {
    let Ok(svc) = defs.service(id) else {
        note_once(
            mem,
            "undefined",
            id,
            &format!("service {id} is no longer defined: nothing to probe; `shim reconcile` removes its units and this timer"),
        );
        return Ok(());
    };
    mem.noted.remove("undefined");
    let dirs = &host.dirs;
    let st = StateStore::new(&dirs.state).load(id)?;
    let Some(revision) = st.current.clone().filter(|_| !st.stopped) else {
        return Ok(());
    };
    if st.paused {
        return Ok(());
    }
    // An upgrade, start or stop is working on the service: leave it alone this time.
    let Some(_lock) = ServiceLock::try_acquire(&dirs.run, id)? else {
        return Ok(());
    };
    if let Some(a) = &st.upgrading {
        note_once(
            mem,
            "interrupted",
            id,
            &format!(
                "an upgrade of {id} to {} was interrupted; the probe waits until `shim reconcile` or the next upgrade repairs it",
                a.revision
            ),
        );
        return Ok(());
    }
    mem.noted.remove("interrupted");

    let sd = host.systemd()?;
    let units = instances::service_units(sd, id)?;
    let memory = mem.clone();
    let inp = Inputs {
        service: svc,
        state: &st,
        revision: &revision,
        units: &units,
        memory: &memory,
        now_usec: now_usec(),
        max_delay: defs.settings.restart_max_delay,
    };
    let reqs = plan_checks(&inp);
    let (count_actions, mut after_counts) = decide_counts(&inp);

    let (mut checks, todo) = reuse_checks(&reqs, &units, pre);
    let requests: Vec<http::Request<'_>> = todo
        .iter()
        .map(|r| http::Request {
            port: r.port,
            path: &r.path,
            timeout: r.timeout,
        })
        .collect();
    // The checks run beside the starts and retries (a start can take seconds); with nothing
    // to do, on this thread.
    let made = if count_actions.is_empty() {
        host.http.check_all(&requests)
    } else {
        std::thread::scope(|s| {
            let h = s.spawn(|| host.http.check_all(&requests));
            act(
                host,
                sd,
                defs,
                svc,
                &revision,
                &count_actions,
                &mut after_counts,
            );
            h.join().unwrap_or_default()
        })
    };
    checks.extend(todo.iter().map(|r| r.unit.clone()).zip(made));

    // Units may have changed while acting (a retried one restarted): judge checks against
    // the pids they were made on, which `units` still holds.
    let (kills, mut after) = decide_health(&inp, &checks, after_counts);
    act(host, sd, defs, svc, &revision, &kills, &mut after);
    if let Some(inputs) = inputs {
        let procs = units
            .iter()
            .filter_map(|u| Some((u.main_pid, fast::read_proc(u.main_pid)?)))
            .filter(|(pid, _)| *pid != 0)
            .collect();
        let acted = !count_actions.is_empty() || !kills.is_empty();
        *record = fast::plan_record(&inp, &checks, acted, &after, &procs, inputs);
        // Written while the service's lock is held: a stop or upgrade that follows sees it.
        if let Some(r) = record.as_ref() {
            fast::save_record(dirs, id, Some(r));
        }
    }
    after.noted = mem.noted.clone();
    *mem = after;
    Ok(())
}

fn fields(
    id: &str,
    revision: &str,
    process: &str,
    index: u32,
    unit: &str,
) -> Vec<(&'static str, String)> {
    vec![
        ("SHIM_SERVICE", id.to_string()),
        ("SHIM_PROCESS", process.to_string()),
        ("SHIM_INSTANCE", index.to_string()),
        ("SHIM_REVISION", revision.to_string()),
        ("SHIM_UNIT", unit.to_string()),
    ]
}

fn act(
    host: &Host,
    sd: &dyn Systemd,
    defs: &Definitions,
    svc: &ServiceDef,
    revision: &str,
    actions: &[Action],
    mem: &mut Memory,
) {
    let id = svc.id.as_str();
    let missing: Vec<(String, u32, String)> = actions
        .iter()
        .filter_map(|a| match a {
            Action::Start {
                process,
                index,
                unit,
            } => Some((process.clone(), *index, unit.clone())),
            _ => None,
        })
        .collect();
    if !missing.is_empty() {
        let wanted: Vec<(String, u32)> = missing.iter().map(|(p, i, _)| (p.clone(), *i)).collect();
        let r = instances::prepare(host, defs, id, revision, true)
            .and_then(|p| instances::start_instances(host, &p, &wanted));
        for (process, index, unit) in &missing {
            let mut f = fields(id, revision, process, *index, unit);
            f.push(("SHIM_ACTION", "start".into()));
            match &r {
                Ok(_) => {
                    f.push(("SHIM_REASON", "instance missing".into()));
                    journal::send(NOTICE, &format!("started missing instance {unit}"), &f);
                    mem.units.remove(unit);
                }
                Err(e) => {
                    let m = mem.units.entry(unit.clone()).or_default();
                    m.retries += 1;
                    m.last_start_usec = now_usec();
                    f.push((
                        "SHIM_REASON",
                        format!("instance missing; starting it failed: {e:#}"),
                    ));
                    journal::send(
                        WARNING,
                        &format!(
                            "starting missing instance {unit} failed (retry {}): {e:#}",
                            m.retries
                        ),
                        &f,
                    );
                }
            }
        }
    }
    for a in actions {
        match a {
            Action::Start { .. } => {}
            Action::Retry {
                process,
                index,
                unit,
                retry,
                waited,
            } => {
                let r = sd.restart_failed(unit, instances::START_TIMEOUT);
                let mut f = fields(id, revision, process, *index, unit);
                f.push(("SHIM_ACTION", "retry".into()));
                f.push((
                    "SHIM_REASON",
                    format!("crash loop: retry {retry} after {} s", waited.as_secs()),
                ));
                match r {
                    Ok(out) if out.ok() => journal::send(
                        NOTICE,
                        &format!(
                            "restarted crash-looping instance {unit} (retry {retry}, {} s after it failed)",
                            waited.as_secs()
                        ),
                        &f,
                    ),
                    Ok(out) => journal::send(
                        WARNING,
                        &format!(
                            "restarting crash-looping instance {unit} failed: {}",
                            out.result
                        ),
                        &f,
                    ),
                    Err(e) => journal::send(
                        WARNING,
                        &format!("restarting crash-looping instance {unit} failed: {e}"),
                        &f,
                    ),
                }
            }
            Action::Kill {
                process,
                index,
                unit,
                pid,
                reason,
            } => {
                // The checks took a while: if systemd replaced the process meanwhile, the new
                // one has not failed anything yet.
                let now = sd
                    .list_units(std::slice::from_ref(unit))
                    .unwrap_or_default();
                if now.first().map(|u| u.main_pid) != Some(*pid) {
                    continue;
                }
                let mut f = fields(id, revision, process, *index, unit);
                f.push(("SHIM_ACTION", "kill".into()));
                f.push(("SHIM_REASON", reason.clone()));
                match sd.kill_main(unit, libc::SIGKILL) {
                    Ok(()) => journal::send(
                        WARNING,
                        &format!("killed unhealthy instance {unit} (pid {pid}) so that systemd restarts it: {reason}"),
                        &f,
                    ),
                    Err(e) => journal::send(
                        WARNING,
                        &format!("killing unhealthy instance {unit} failed: {e} ({reason})"),
                        &f,
                    ),
                }
            }
        }
    }
}
