//! The probe's fast path: a healthy service is confirmed without asking systemd.
//!
//! A full probe run (`probe::run_full`) connects to the system bus, lists the service's units
//! and reads their properties: most of the CPU time of a run, spent every few seconds to learn,
//! nearly always, that nothing changed. So when a full run finds the service clean (every
//! expected instance of the current revision running and healthy, no other unit of the
//! service, nothing paused, nothing remembered, nothing done) it writes a [`Record`] of what it
//! verified: each instance's main process (pid, start time, cgroup) and its health check. The
//! next runs then only:
//!
//! 1. check that no [`Memory`](super::Memory) file exists (nothing is being counted or backed
//!    off), read the record and compare its digest of the inputs (definitions files, recorded
//!    state, shim version, directories) and its age ([`MAX_AGE`]);
//! 2. read `/proc/PID/stat` and `/proc/PID/cgroup` of each recorded main process: still alive,
//!    the same process (start time), still in its unit's cgroup. systemd kills a unit's
//!    cgroup when the unit stops or fails (`KillMode=mixed`), and a restart is a new process,
//!    so an unchanged main process means the unit is still up;
//! 3. make the health checks (through [`Host::health`]).
//!
//! All good: done, nothing written. Any doubt (no record, a digest or process that differs, a
//! failed check, an old record) falls back to the full run, which gets the checks already made
//! so that no instance is checked twice in one run. [`judge`], [`judge_checks`] and
//! [`plan_record`] decide (pure, unit-tested below); the I/O around them is a few small reads.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::decide::Inputs;
use super::{usecs, Memory};
use crate::config::ProcessDef;
use crate::host::dirs::Dirs;
use crate::host::health::{Check, Probe};
use crate::host::Host;
use crate::plan::instance_keys;

/// A record older than this is not trusted: a full run looks at everything systemd knows
/// (e.g. a unit of the service started by hand beside the expected ones) at least this often.
pub const MAX_AGE: Duration = Duration::from_secs(60);

/// Set to `0` to make every probe run a full one (troubleshooting, benchmarks).
pub const ENV_SWITCH: &str = crate::plan::fields::env::PROBE_FAST;

/// Bumped when [`Record`] or what [`inputs_digest`] covers changes meaning.
const FORMAT: &str = "shim-probe-fast-2";

/// What a full run verified, for the fast runs after it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// [`inputs_digest`] when the full run started.
    pub inputs: String,
    /// When the full run verified it (µs since the epoch).
    pub verified_usec: u64,
    pub instances: Vec<Instance>,
}

/// One expected instance as the full run found it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Instance {
    pub unit: String,
    /// The unit's main process.
    pub pid: u32,
    #[serde(flatten)]
    pub process: Proc,
    /// Its health check, if its process has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub check: Option<Probe>,
}

/// What `/proc/PID` says of a process.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Proc {
    /// Start time in clock ticks after boot (`/proc/PID/stat`, field 22): a pid reused by
    /// another process does not match.
    pub started: u64,
    /// Its cgroup v2 path (the `0::` line of `/proc/PID/cgroup`).
    pub cgroup: String,
}

/// Why a run is a full one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fallback {
    Disabled,
    NoRecord,
    /// The probe remembers failed checks or retries: only a full run updates them.
    Memory,
    InputsChanged,
    Stale,
    Gone(String),
    Replaced(String),
    Unhealthy(String, Check),
}

impl std::fmt::Display for Fallback {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Fallback::Disabled => write!(f, "fast path disabled by {ENV_SWITCH}=0"),
            Fallback::NoRecord => write!(f, "no record of a verified healthy state"),
            Fallback::Memory => write!(f, "failed checks or retries are being counted"),
            Fallback::InputsChanged => write!(f, "definitions or recorded state changed"),
            Fallback::Stale => write!(f, "record older than {} s", MAX_AGE.as_secs()),
            Fallback::Gone(u) => write!(f, "main process of {u} is gone"),
            Fallback::Replaced(u) => write!(f, "main process of {u} was replaced"),
            Fallback::Unhealthy(u, c) => write!(f, "{u} failed its health check: {c}"),
        }
    }
}

pub use super::Prechecked;

/// Whether a record can stand for systemd this time (pure). `procs[i]` is what `/proc` says
/// now of `rec.instances[i].pid`, `None` if it is gone.
pub fn judge(
    rec: &Record,
    inputs: &str,
    memory_exists: bool,
    now_usec: u64,
    procs: &[Option<Proc>],
) -> Result<(), Fallback> {
    if memory_exists {
        return Err(Fallback::Memory);
    }
    if rec.inputs != inputs {
        return Err(Fallback::InputsChanged);
    }
    // A clock that went backwards makes the record's age unknown: stale too.
    if now_usec < rec.verified_usec || now_usec - rec.verified_usec > usecs(MAX_AGE) {
        return Err(Fallback::Stale);
    }
    for (i, inst) in rec.instances.iter().enumerate() {
        match procs.get(i) {
            Some(Some(p)) if p == &inst.process => {}
            Some(Some(_)) => return Err(Fallback::Replaced(inst.unit.clone())),
            _ => return Err(Fallback::Gone(inst.unit.clone())),
        }
    }
    Ok(())
}

/// The checks a fast run makes: `(index into rec.instances, check)`.
pub fn planned_checks(rec: &Record) -> Vec<(usize, &Probe)> {
    rec.instances
        .iter()
        .enumerate()
        .filter_map(|(i, inst)| Some((i, inst.check.as_ref()?)))
        .collect()
}

/// Whether every check passed (pure); the results go to the full run if not.
pub fn judge_checks(
    rec: &Record,
    results: &[(usize, Check)],
) -> Result<(), (Fallback, Prechecked)> {
    let Some((i, bad)) = results.iter().find(|(_, c)| !c.healthy()) else {
        return Ok(());
    };
    let unit = rec
        .instances
        .get(*i)
        .map(|x| x.unit.clone())
        .unwrap_or_default();
    let pre = results
        .iter()
        .filter_map(|(i, c)| {
            let inst = rec.instances.get(*i)?;
            Some((inst.unit.clone(), (inst.pid, c.clone())))
        })
        .collect();
    Err((Fallback::Unhealthy(unit, bad.clone()), pre))
}

/// Whether the cgroup path `cg` is the unit's (or below it: runc puts the container in a
/// child cgroup of the delegated unit cgroup).
fn in_unit_cgroup(cg: &str, unit: &str) -> bool {
    cg.split('/').any(|c| c == unit)
}

/// The record a full run leaves after seeing the service clean, or `None` (pure).
///
/// Clean: the recorded state is plain (not paused, no process paused, no upgrade under way);
/// the service's units are exactly the expected instances of the current revision, all
/// running; each one with a health check was checked in this run and passed; nothing was
/// done and nothing is remembered; `/proc` knows each main process, in its unit's cgroup.
pub fn plan_record(
    inp: &Inputs<'_>,
    checks: &BTreeMap<String, Check>,
    acted: bool,
    mem_after: &Memory,
    procs: &BTreeMap<u32, Proc>,
    inputs: &str,
) -> Option<Record> {
    let st = inp.state;
    if acted
        || mem_after != &Memory::default()
        || st.paused
        || !st.paused_processes.is_empty()
        || st.upgrading.is_some()
        || st.stopped
    {
        return None;
    }
    let expected: Vec<(String, &ProcessDef)> = instance_keys(inp.deployment)
        .map(|(k, d)| (k.unit_name(), d))
        .collect();
    if inp.units.len() != expected.len() {
        return None;
    }
    let mut instances = Vec::new();
    for (unit, d) in expected {
        let u = inp.units.iter().find(|u| u.name == unit)?;
        if !super::is_running(u) {
            return None;
        }
        let process = procs.get(&u.main_pid)?;
        if !in_unit_cgroup(&process.cgroup, &unit) {
            return None;
        }
        let check = match &d.health {
            None => None,
            Some(h) => {
                if !checks.get(&unit)?.healthy() {
                    return None;
                }
                let svc = inp.service;
                Some(Probe::for_instance(
                    h,
                    svc.runtime,
                    &inp.instances_dir,
                    &u.name,
                    u.endpoint(),
                )?)
            }
        };
        instances.push(Instance {
            unit,
            pid: u.main_pid,
            process: process.clone(),
            check,
        });
    }
    Some(Record {
        inputs: inputs.to_string(),
        verified_usec: inp.now_usec,
        instances,
    })
}

/// Parses `/proc/PID/stat` and `/proc/PID/cgroup` (pure).
pub fn parse_proc(stat: &str, cgroup: &str) -> Option<Proc> {
    // The command name (field 2) is in parentheses and may hold spaces or parentheses:
    // fields are counted after the last ')'. starttime is field 22, the 20th after it.
    let rest = &stat[stat.rfind(')')? + 1..];
    let started = rest.split_ascii_whitespace().nth(19)?.parse().ok()?;
    let cgroup = cgroup
        .lines()
        .find_map(|l| l.strip_prefix("0::"))?
        .to_string();
    Some(Proc { started, cgroup })
}

/// The digest of a run's inputs (pure): `parts` are (name, contents) pairs.
pub fn digest(parts: &[(&[u8], Option<&[u8]>)]) -> String {
    let mut h = Sha256::new();
    h.update(FORMAT.as_bytes());
    for (name, contents) in parts {
        h.update((name.len() as u64).to_le_bytes());
        h.update(name);
        match contents {
            Some(c) => {
                h.update([1]);
                h.update((c.len() as u64).to_le_bytes());
                h.update(c);
            }
            None => h.update([0]),
        }
    }
    hex::encode(h.finalize())
}

// ---- I/O, kept thin ----

/// Reads what `/proc` says of `pid`; `None` if it is gone.
pub fn read_proc(pid: u32) -> Option<Proc> {
    let mut stat = [0u8; 1024];
    let mut cgroup = [0u8; 4096];
    let stat = read_small(&format!("/proc/{pid}/stat"), &mut stat)?;
    let cgroup = read_small(&format!("/proc/{pid}/cgroup"), &mut cgroup)?;
    parse_proc(stat, cgroup)
}

/// Reads a small file into `buf` with as few reads as it takes (`read_to_string` on a
/// /proc file, whose size is 0, grows its buffer over five or six reads). `None` if it does
/// not fit or is not text.
fn read_small<'b>(path: &str, buf: &'b mut [u8]) -> Option<&'b str> {
    use std::io::Read;
    let mut f = std::fs::File::open(path).ok()?;
    let mut n = 0;
    loop {
        match f.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return None,
        }
        if n == buf.len() {
            return None;
        }
    }
    std::str::from_utf8(&buf[..n]).ok()
}

/// Digest of everything a probe run's decisions depend on besides systemd: the definitions
/// files (names and contents), the service's recorded state, shim's version, the directories.
/// `None` if the definitions cannot be listed (the full run reports why).
pub fn inputs_digest(config: &Path, dirs: &Dirs, id: &str) -> Option<String> {
    let files = crate::config::config_files(config).ok()?;
    let state = crate::host::state::StateStore::new(&dirs.state).path(id);
    let mut parts: Vec<(Vec<u8>, Option<Vec<u8>>)> = vec![
        (b"version".to_vec(), Some(env!("CARGO_PKG_VERSION").into())),
        (b"id".to_vec(), Some(id.as_bytes().to_vec())),
        (b"config".to_vec(), Some(path_bytes(config))),
        (b"state-dir".to_vec(), Some(path_bytes(&dirs.state))),
        (b"run-dir".to_vec(), Some(path_bytes(&dirs.run))),
    ];
    for f in files.iter().chain(std::iter::once(&state)) {
        let contents = match std::fs::read(f) {
            Ok(c) => Some(c),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(_) => return None,
        };
        parts.push((path_bytes(f), contents));
    }
    let borrowed: Vec<(&[u8], Option<&[u8]>)> = parts
        .iter()
        .map(|(n, c)| (n.as_slice(), c.as_deref()))
        .collect();
    Some(digest(&borrowed))
}

fn path_bytes(p: &Path) -> Vec<u8> {
    use std::os::unix::ffi::OsStrExt;
    p.as_os_str().as_bytes().to_vec()
}

pub fn record_path(dirs: &Dirs, id: &str) -> PathBuf {
    dirs.probe_fast_record(id)
}

pub fn load_record(dirs: &Dirs, id: &str) -> Option<Record> {
    let b = std::fs::read(record_path(dirs, id)).ok()?;
    serde_json::from_slice(&b).ok()
}

/// Writes the record, or removes it (`None`). Best effort: without it the next run is a full
/// one, which is correct, only slower.
pub fn save_record(dirs: &Dirs, id: &str, rec: Option<&Record>) {
    let p = record_path(dirs, id);
    match rec {
        None => {
            let _ = std::fs::remove_file(&p);
        }
        Some(r) => {
            let Ok(bytes) = serde_json::to_vec(r) else {
                return;
            };
            if let Some(dir) = p.parent() {
                let _ = std::fs::create_dir_all(dir);
            }
            if crate::host::fsutil::write_atomic(&p, &bytes, 0o644).is_err() {
                let _ = std::fs::remove_file(&p);
            }
        }
    }
}

/// Whether the fast path is on (it is unless `SHIM_PROBE_FAST=0`).
pub fn enabled() -> bool {
    std::env::var_os(ENV_SWITCH).is_none_or(|v| v != "0")
}

/// The fast path: `Ok` if the service is confirmed healthy without systemd, else why not and
/// the checks made so far (for the full run).
pub fn try_fast(host: &Host, config: &Path, id: &str) -> Result<(), (Fallback, Prechecked)> {
    let dirs = &host.dirs;
    let none = |f: Fallback| (f, Prechecked::new());
    if !enabled() {
        return Err(none(Fallback::Disabled));
    }
    let memory_exists = std::fs::symlink_metadata(super::memory_path(dirs, id)).is_ok();
    let rec = load_record(dirs, id).ok_or_else(|| none(Fallback::NoRecord))?;
    let inputs = inputs_digest(config, dirs, id).ok_or_else(|| none(Fallback::InputsChanged))?;
    let procs: Vec<Option<Proc>> = rec.instances.iter().map(|i| read_proc(i.pid)).collect();
    let now_usec = host.clock.wall_usec();
    judge(&rec, &inputs, memory_exists, now_usec, &procs).map_err(none)?;
    let planned = planned_checks(&rec);
    let reqs: Vec<&Probe> = planned.iter().map(|(_, p)| *p).collect();
    let results: Vec<(usize, Check)> = planned
        .iter()
        .map(|(i, _)| *i)
        .zip(host.health.check_all(&reqs))
        .collect();
    judge_checks(&rec, &results)
}

#[cfg(test)]
mod tests {
    use super::super::decide::tests::{defs, inputs, running, unit, S};
    use super::super::decide::{plan_checks, reuse_checks};
    use super::super::UnitMemory;
    use super::*;
    use crate::host::state::{Attempt, Phase, ServiceState};
    use crate::host::systemd::UnitInfo;

    fn procs_of(units: &[UnitInfo]) -> BTreeMap<u32, Proc> {
        units
            .iter()
            .map(|u| {
                (
                    u.main_pid,
                    Proc {
                        started: 1000 + u64::from(u.main_pid),
                        cgroup: format!("/shim.slice/{}/container", u.name),
                    },
                )
            })
            .collect()
    }

    fn healthy(units: &[UnitInfo]) -> BTreeMap<String, Check> {
        units
            .iter()
            .filter(|u| u.process() == Some("web"))
            .map(|u| (u.name.clone(), Check::Healthy(200)))
            .collect()
    }

    fn clean() -> Vec<UnitInfo> {
        vec![
            running("web", 1, 11),
            running("web", 2, 12),
            running("worker", 1, 13),
        ]
    }

    fn record_of(units: &[UnitInfo], st: &ServiceState) -> Option<Record> {
        let d = defs();
        let mem = Memory::default();
        let inp = inputs(&d, st, units, &mem, 200 * S);
        plan_record(
            &inp,
            &healthy(units),
            false,
            &Memory::default(),
            &procs_of(units),
            "in",
        )
    }

    #[test]
    fn a_clean_service_is_recorded_with_its_processes_and_checks() {
        let units = clean();
        let r = record_of(&units, &ServiceState::default()).unwrap();
        assert_eq!(r.inputs, "in");
        assert_eq!(r.verified_usec, 200 * S);
        let names: Vec<&str> = r.instances.iter().map(|i| i.unit.as_str()).collect();
        assert_eq!(
            names,
            [
                "shim-app-web-r1-1.service",
                "shim-app-web-r1-2.service",
                "shim-app-worker-r1-1.service"
            ]
        );
        assert_eq!(r.instances[1].pid, 12);
        assert_eq!(r.instances[1].process.started, 1012);
        assert_eq!(
            r.instances[1].check,
            Some(Probe {
                target: crate::host::health::Target::Http {
                    endpoint: crate::plan::Endpoint::for_instance(20002),
                    path: "/health".into(),
                },
                timeout_ms: 1000,
            })
        );
        // The worker has no health check: only its process is watched.
        assert_eq!(r.instances[2].check, None);
        // Fast runs check exactly the web instances.
        let planned: Vec<usize> = planned_checks(&r).iter().map(|(i, _)| *i).collect();
        assert_eq!(planned, [0, 1]);
    }

    #[test]
    fn anything_unusual_leaves_no_record() {
        let d = defs();
        let plain = ServiceState::default();
        let units = clean();
        let mem = Memory::default();
        let inp = inputs(&d, &plain, &units, &mem, 200 * S);
        let procs = procs_of(&units);
        let checks = healthy(&units);
        let none = Memory::default();
        // Something was done in this run.
        assert!(plan_record(&inp, &checks, true, &none, &procs, "in").is_none());
        // Something is remembered (a failed check being counted, a retry, a notice).
        let mut counting = Memory::default();
        counting.units.insert(
            units[0].name.clone(),
            UnitMemory {
                failures: 1,
                pid: 11,
                ..Default::default()
            },
        );
        assert!(plan_record(&inp, &checks, false, &counting, &procs, "in").is_none());
        let mut noted = Memory::default();
        noted.noted.insert("interrupted".into());
        assert!(plan_record(&inp, &checks, false, &noted, &procs, "in").is_none());
        // A failed check, or one not made (start period).
        let mut bad = checks.clone();
        bad.insert(units[1].name.clone(), Check::Status(500));
        assert!(plan_record(&inp, &bad, false, &none, &procs, "in").is_none());
        let mut missing = checks.clone();
        missing.remove(&units[1].name);
        assert!(plan_record(&inp, &missing, false, &none, &procs, "in").is_none());
        // /proc does not know a main process, or it is in another cgroup.
        let mut gone = procs.clone();
        gone.remove(&13);
        assert!(plan_record(&inp, &checks, false, &none, &gone, "in").is_none());
        let mut moved = procs.clone();
        moved.insert(
            12,
            Proc {
                started: 1012,
                cgroup: "/system.slice/other.service".into(),
            },
        );
        assert!(plan_record(&inp, &checks, false, &none, &moved, "in").is_none());

        // Paused, partly paused, an upgrade under way, stopped.
        for st in [
            ServiceState {
                paused: true,
                ..Default::default()
            },
            ServiceState {
                paused_processes: ["worker".to_string()].into(),
                ..Default::default()
            },
            ServiceState {
                upgrading: Some(Attempt {
                    revision: "r2".into(),
                    phase: Phase::Starting,
                    deployment: None,
                }),
                ..Default::default()
            },
            ServiceState {
                stopped: true,
                ..Default::default()
            },
        ] {
            assert!(record_of(&units, &st).is_none(), "{st:?}");
        }
    }

    #[test]
    fn only_exactly_the_expected_units_all_running_are_recorded() {
        let plain = ServiceState::default();
        // One missing.
        assert!(record_of(&clean()[..2], &plain).is_none());
        // One more than the count (scaled down in the definitions, or started by hand).
        let mut extra = clean();
        extra.push(running("web", 3, 14));
        assert!(record_of(&extra, &plain).is_none());
        // An instance of another revision beside them (draining, or left over).
        let mut old = running("web", 1, 9);
        old.fields
            .insert(crate::plan::fields::REVISION.into(), "r0".into());
        old.name = "shim-app-web-r0-1.service".into();
        let mut with_old = clean();
        with_old.push(old);
        assert!(record_of(&with_old, &plain).is_none());
        // Instead of an expected one: right count, wrong unit.
        let mut wrong = clean();
        wrong[2] = running("web", 3, 14);
        assert!(record_of(&wrong, &plain).is_none());
        // Not running: failed, restarting, still starting, stopping.
        for (state, sub) in [
            ("failed", "failed"),
            ("activating", "auto-restart"),
            ("activating", "start-pre"),
            ("deactivating", "stop-sigterm"),
        ] {
            let mut u = clean();
            u[2] = unit("worker", 1, state, sub, 13, 100 * S);
            assert!(record_of(&u, &plain).is_none(), "{state}/{sub}");
        }
    }

    fn proc_of(r: &Record) -> Vec<Option<Proc>> {
        r.instances
            .iter()
            .map(|i| Some(i.process.clone()))
            .collect()
    }

    #[test]
    fn a_record_stands_only_for_the_same_inputs_processes_and_a_short_while() {
        let r = record_of(&clean(), &ServiceState::default()).unwrap();
        let now = 200 * S;
        let p = proc_of(&r);
        assert_eq!(judge(&r, "in", false, now, &p), Ok(()));
        assert_eq!(judge(&r, "in", false, now + 60 * S, &p), Ok(()));
        assert_eq!(judge(&r, "in", true, now, &p), Err(Fallback::Memory));
        // Definitions or recorded state changed (count, revision, paused, an upgrade...).
        assert_eq!(
            judge(&r, "other", false, now, &p),
            Err(Fallback::InputsChanged)
        );
        assert_eq!(
            judge(&r, "in", false, now + 61 * S, &p),
            Err(Fallback::Stale)
        );
        // The clock went back: the record's age is unknown.
        assert_eq!(judge(&r, "in", false, now - S, &p), Err(Fallback::Stale));
        // A main process gone (the unit stopped, failed or is restarting).
        let mut gone = p.clone();
        gone[2] = None;
        assert_eq!(
            judge(&r, "in", false, now, &gone),
            Err(Fallback::Gone("shim-app-worker-r1-1.service".into()))
        );
        assert_eq!(
            judge(&r, "in", false, now, &p[..2]),
            Err(Fallback::Gone("shim-app-worker-r1-1.service".into()))
        );
        // The pid is another process now (restarted, pid reused), or in another cgroup.
        let mut reused = p.clone();
        if let Some(Some(x)) = reused.get_mut(0) {
            x.started += 1;
        }
        assert_eq!(
            judge(&r, "in", false, now, &reused),
            Err(Fallback::Replaced("shim-app-web-r1-1.service".into()))
        );
        let mut moved = p.clone();
        if let Some(Some(x)) = moved.get_mut(1) {
            x.cgroup = "/shim.slice/shim-app-web-r1-9.service".into();
        }
        assert_eq!(
            judge(&r, "in", false, now, &moved),
            Err(Fallback::Replaced("shim-app-web-r1-2.service".into()))
        );
    }

    #[test]
    fn a_failed_check_falls_back_and_hands_over_what_was_checked() {
        let r = record_of(&clean(), &ServiceState::default()).unwrap();
        assert_eq!(
            judge_checks(&r, &[(0, Check::Healthy(200)), (1, Check::Healthy(204))]),
            Ok(())
        );
        let results = [
            (0, Check::Healthy(200)),
            (1, Check::NoAnswer("timeout after 1s".into())),
        ];
        let Err((why, pre)) = judge_checks(&r, &results) else {
            panic!("a failed check passed");
        };
        assert!(
            matches!(&why, Fallback::Unhealthy(u, Check::NoAnswer(_)) if u == "shim-app-web-r1-2.service"),
            "{why:?}"
        );
        assert_eq!(pre.len(), 2);
        assert_eq!(
            pre["shim-app-web-r1-2.service"],
            (12, Check::NoAnswer("timeout after 1s".into()))
        );

        // The full run uses them for the same main processes, and checks the others.
        let d = defs();
        let st = ServiceState::default();
        let mem = Memory::default();
        let mut units = clean();
        units[0].main_pid = 99; // web 1 was restarted since the fast path checked it
        let inp = inputs(&d, &st, &units, &mem, 200 * S);
        let reqs = plan_checks(&inp);
        let (done, todo) = reuse_checks(&reqs, &units, &pre);
        assert_eq!(
            done.keys().collect::<Vec<_>>(),
            ["shim-app-web-r1-2.service"]
        );
        assert_eq!(todo.len(), 1);
        assert_eq!(todo[0].unit, "shim-app-web-r1-1.service");
    }

    #[test]
    fn proc_files_are_parsed() {
        let stat = "1000 (my (odd) app) S 980 1000 1000 0 -1 4194560 1529 0 0 0 3 1 0 0 20 0 \
                    3 0 1020629 7421952 1019 18446744073709551615";
        let cgroup = "9:name=systemd:/\n1:cpu:/\n0::/shim.slice/shim-a-web-r-1.service/container\n";
        assert_eq!(
            parse_proc(stat, cgroup),
            Some(Proc {
                started: 1020629,
                cgroup: "/shim.slice/shim-a-web-r-1.service/container".into()
            })
        );
        assert_eq!(parse_proc("1000 (x) S 1 2", cgroup), None);
        assert_eq!(parse_proc(stat, "1:cpu:/\n"), None);
        assert!(in_unit_cgroup(
            "/shim.slice/shim-a-web-r-1.service/container",
            "shim-a-web-r-1.service"
        ));
        assert!(!in_unit_cgroup(
            "/shim.slice/shim-a-web-r-1.service-x",
            "shim-a-web-r-1.service"
        ));
    }

    #[test]
    fn the_digest_covers_names_contents_and_absence() {
        let base = digest(&[(b"a.toml", Some(b"x = 1")), (b"state", None)]);
        assert_eq!(
            base,
            digest(&[(b"a.toml", Some(b"x = 1")), (b"state", None)])
        );
        for other in [
            digest(&[(b"a.toml", Some(b"x = 2")), (b"state", None)]),
            digest(&[(b"b.toml", Some(b"x = 1")), (b"state", None)]),
            digest(&[(b"a.toml", Some(b"x = 1")), (b"state", Some(b""))]),
            digest(&[(b"a.toml", Some(b"x = 1"))]),
            // Boundaries are part of it: no two splits of the same bytes agree.
            digest(&[(b"a.toml", Some(b"x = 1state")), (b"", None)]),
        ] {
            assert_ne!(base, other);
        }
    }

    #[test]
    fn inputs_digest_follows_the_files_it_covers() {
        let t = tempfile::tempdir().unwrap();
        let dirs = Dirs {
            state: t.path().join("s"),
            run: t.path().join("r"),
            units: "/etc/systemd/system".into(),
        };
        let cfg = t.path().join("services.toml");
        std::fs::write(&cfg, "[services.app]\n").unwrap();
        let a = inputs_digest(&cfg, &dirs, "app").unwrap();
        assert_eq!(inputs_digest(&cfg, &dirs, "app").unwrap(), a);
        assert_ne!(inputs_digest(&cfg, &dirs, "other").unwrap(), a);
        // A drop-in added beside it.
        std::fs::create_dir(t.path().join("services.d")).unwrap();
        std::fs::write(t.path().join("services.d/b.toml"), "").unwrap();
        let b = inputs_digest(&cfg, &dirs, "app").unwrap();
        assert_ne!(b, a);
        // The recorded state written.
        std::fs::create_dir_all(dirs.state.join("state")).unwrap();
        std::fs::write(dirs.state.join("state/app.json"), "{}").unwrap();
        assert_ne!(inputs_digest(&cfg, &dirs, "app").unwrap(), b);
        // No definitions at all (no file, no services.d beside it): no digest (the full run
        // says why).
        let empty = tempfile::tempdir().unwrap();
        assert_eq!(
            inputs_digest(&empty.path().join("nope.toml"), &dirs, "app"),
            None
        );
    }

    #[test]
    fn records_round_trip_and_are_removed() {
        let t = tempfile::tempdir().unwrap();
        let dirs = Dirs {
            state: t.path().join("s"),
            run: t.path().join("r"),
            units: "/etc/systemd/system".into(),
        };
        let r = record_of(&clean(), &ServiceState::default()).unwrap();
        save_record(&dirs, "app", Some(&r));
        assert_eq!(load_record(&dirs, "app"), Some(r));
        save_record(&dirs, "app", None);
        assert_eq!(load_record(&dirs, "app"), None);
        // Removing what is not there is fine.
        save_record(&dirs, "app", None);
    }

    #[test]
    fn this_process_is_readable_in_proc() {
        let me = read_proc(std::process::id()).unwrap();
        assert!(me.started > 0);
        assert!(me.cgroup.starts_with('/'));
        assert_eq!(read_proc(u32::MAX), None);
    }
}
