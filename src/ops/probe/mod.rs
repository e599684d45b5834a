//! Supervision beyond what systemd does by itself: systemd restarts a process that exits;
//! shim's probe also catches processes that are alive but cannot work, instances that are
//! missing, and crash loops; `shim reconcile` brings the host back to the recorded state
//! (at boot, when transient units are gone).
//!
//! Flow: a successful start/upgrade/reconcile creates the service's probe timer
//! ([`crate::ops::probe_timer::ensure_probe_timer`], units planned by `plan::probe_timer`).
//! Every interval systemd runs `shim probe --id ID` ([`run::run`]): observe the service's
//! units (one D-Bus listing), health-check the instances concurrently, decide purely
//! ([`decide::decide_counts`], [`decide::decide_health`]) and act: start missing instances, kill the main process of an
//! instance that failed `unhealthy_after` checks in a row (systemd's own `Restart=` brings it
//! back), retry crash-looping units once their backoff has passed.
//!
//! Backoff on systemd 252, which has no `RestartSteps=`: instance units carry a start limit
//! (`plan::START_LIMIT_*`), so after one quick restart a crash loop lands in `failed` (kept
//! visible by `CollectMode=inactive`). The probe then resets and starts the unit when
//! [`next_retry_usec`] has passed: `RestartSec` doubling per retry, capped by
//! `[shim] restart_max_delay` (default 5 min), forever. A unit that stays up for the start
//! limit interval has its backoff forgotten. On systemd ≥ 254 the units use
//! `RestartSteps=`/`RestartMaxDelaySec=` and never fail; the probe has nothing to retry.
//!
//! What the probe remembers between runs (consecutive failed checks, retries) is in
//! `/run/shim/supervise/<id>.json` ([`Memory`]): on tmpfs, gone at reboot with the units.
//! Beside it, `<id>.fast.json`: what the last full run verified, which lets most runs skip
//! D-Bus ([`fast`]).

pub mod decide;
pub mod fast;
pub mod run;
pub mod upstreams;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::host::dirs::Dirs;
use crate::host::journal::NOTICE;
use crate::host::systemd::UnitInfo;
use crate::host::Host;
use crate::plan::{RESTART_SEC, START_LIMIT_INTERVAL};

/// What the probe remembers about one unit.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnitMemory {
    /// Consecutive failed health checks of the process `pid`.
    #[serde(default, skip_serializing_if = "is_zero32")]
    pub failures: u32,
    #[serde(default, skip_serializing_if = "is_zero32")]
    pub pid: u32,
    /// Backoff retries since the unit last ran stably.
    #[serde(default, skip_serializing_if = "is_zero32")]
    pub retries: u32,
    /// When the probe last started it (µs since the epoch).
    #[serde(default, skip_serializing_if = "is_zero64")]
    pub last_start_usec: u64,
    /// When the probe first saw it failed without a known exit time.
    #[serde(default, skip_serializing_if = "is_zero64")]
    pub failed_seen_usec: u64,
}

fn is_zero32(n: &u32) -> bool {
    *n == 0
}

fn is_zero64(n: &u64) -> bool {
    *n == 0
}

impl UnitMemory {
    fn is_empty(&self) -> bool {
        self == &UnitMemory::default()
    }
}

/// Checks already made in this run, for the full run: unit → (main pid checked, result).
/// Here, not in `fast.rs` (which fills it) nor `run.rs`, so that `decide.rs` can take it
/// without a file cycle.
pub type Prechecked = BTreeMap<String, (u32, crate::host::health::Check)>;

/// Logs a condition once (until it clears), so that a probe every few seconds stays quiet.
fn note_once(host: &Host, mem: &mut Memory, key: &str, id: &str, message: &str) {
    if mem.noted.insert(key.to_string()) {
        host.journal.send(
            NOTICE,
            message,
            &[(crate::plan::fields::SERVICE, id.to_string())],
        );
    }
}

/// Everything the probe remembers about one service.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Memory {
    #[serde(default)]
    pub units: BTreeMap<String, UnitMemory>,
    /// Conditions already reported once (e.g. an interrupted upgrade), so that a probe every
    /// few seconds does not repeat them.
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub noted: BTreeSet<String>,
}

fn memory_path(dirs: &Dirs, id: &str) -> PathBuf {
    dirs.probe_memory(id)
}

pub fn load_memory(dirs: &Dirs, id: &str) -> Memory {
    std::fs::read(memory_path(dirs, id))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default()
}

pub fn save_memory(dirs: &Dirs, id: &str, m: &Memory) -> Result<()> {
    let p = memory_path(dirs, id);
    if m == &Memory::default() {
        return match std::fs::remove_file(&p) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(e).with_context(|| format!("removing {}", p.display()))
            }
            _ => Ok(()),
        };
    }
    if let Some(dir) = p.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    crate::host::fsutil::write_atomic(&p, &serde_json::to_vec(m)?, 0o644)
}

/// Forgets everything about a service (it was stopped).
pub fn forget(dirs: &Dirs, id: &str) -> Result<()> {
    fast::save_record(dirs, id, None);
    save_memory(dirs, id, &Memory::default())
}

/// The delay of backoff step `step`: `RestartSec` doubled `step` times, at most `max`.
pub fn backoff_delay(step: u32, max: Duration) -> Duration {
    let factor = 2u32.saturating_pow(step.min(30));
    RESTART_SEC.saturating_mul(factor).min(max.max(RESTART_SEC))
}

pub(crate) fn usecs(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// When a failed unit went down: when systemd says it failed; else the latest of its main
/// process's exit, the probe's last start of it and when the probe first saw it failed (a
/// container that exits before systemd reads its pid file leaves no main process exit).
pub fn failed_since_usec(u: &UnitInfo, m: &UnitMemory) -> u64 {
    if u.failed_since_usec != 0 {
        return u.failed_since_usec;
    }
    u.exec_main_exit_usec
        .max(m.last_start_usec)
        .max(m.failed_seen_usec)
}

/// When the probe retries a failed unit that it retried `m.retries` times already. Step 0
/// of the backoff (`RestartSec`) was systemd's own quick restart; the probe's retries start
/// at step 1.
pub fn next_retry_usec(u: &UnitInfo, m: &UnitMemory, max: Duration) -> u64 {
    failed_since_usec(u, m).saturating_add(usecs(backoff_delay(m.retries + 1, max)))
}

/// Whether a unit ran long enough to count as stable: its backoff is forgotten.
pub fn is_stable(u: &UnitInfo, now_usec: u64) -> bool {
    is_running(u)
        && u.main_start_usec != 0
        && now_usec.saturating_sub(u.main_start_usec) >= usecs(START_LIMIT_INTERVAL)
}

/// Running as every operation means it ([`UnitInfo::is_running`]).
pub fn is_running(u: &UnitInfo) -> bool {
    u.is_running()
}

/// A unit waiting to be restarted, as `shim status` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Retry {
    /// Who restarts it: "systemd" (between automatic restarts) or "probe" (a failed unit
    /// after a crash loop, systemd 252).
    pub by: &'static str,
    /// The probe's retry number (1 = the first after systemd gave up); for systemd, the
    /// automatic restart's number.
    pub retry: u32,
    /// Seconds until it, 0 if due (the probe acts on its next run).
    pub in_secs: u64,
}

/// The next restart of a unit, if it is waiting for one.
pub fn pending_retry(u: &UnitInfo, m: &UnitMemory, max: Duration, now_usec: u64) -> Option<Retry> {
    let (by, retry, at) = match (u.active_state.as_str(), u.sub_state.as_str()) {
        ("failed", _) => ("probe", m.retries + 1, next_retry_usec(u, m, max)),
        (_, "auto-restart") => {
            let delay = match u.restart_usec_next {
                0 => usecs(RESTART_SEC),
                d => d,
            };
            (
                "systemd",
                u.n_restarts + 1,
                u.exec_main_exit_usec.saturating_add(delay),
            )
        }
        _ => return None,
    };
    Some(Retry {
        by,
        retry,
        in_secs: at.saturating_sub(now_usec).div_ceil(1_000_000),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unit(state: &str, sub: &str, exit: u64) -> UnitInfo {
        UnitInfo {
            name: "shim-a-web-r-1.service".into(),
            description: String::new(),
            load_state: "loaded".into(),
            active_state: state.into(),
            sub_state: sub.into(),
            main_pid: 0,
            n_restarts: 0,
            main_start_usec: 0,
            exec_main_code: 1,
            exec_main_status: 3,
            exec_main_exit_usec: exit,
            failed_since_usec: 0,
            restart_usec_next: 0,
            result: String::new(),
            fields: Default::default(),
        }
    }

    #[test]
    fn backoff_doubles_from_restart_sec_and_is_capped() {
        let max = Duration::from_secs(300);
        let delays: Vec<u64> = (0..10).map(|s| backoff_delay(s, max).as_secs()).collect();
        assert_eq!(delays, [2, 4, 8, 16, 32, 64, 128, 256, 300, 300]);
        assert_eq!(backoff_delay(1000, max), max);
        // A max below RestartSec cannot make the delay shorter than systemd's own.
        assert_eq!(backoff_delay(3, Duration::ZERO), RESTART_SEC);
    }

    #[test]
    fn retries_are_timed_from_the_last_failure() {
        let max = Duration::from_secs(8);
        let u = unit("failed", "failed", 10_000_000);
        let mut m = UnitMemory::default();
        assert_eq!(next_retry_usec(&u, &m, max), 14_000_000);
        m.retries = 1;
        m.last_start_usec = 20_000_000;
        assert_eq!(next_retry_usec(&u, &m, max), 28_000_000);
        m.retries = 5;
        assert_eq!(next_retry_usec(&u, &m, max), 28_000_000);
        let r = pending_retry(&u, &m, max, 25_500_000).unwrap();
        assert_eq!(
            r,
            Retry {
                by: "probe",
                retry: 6,
                in_secs: 3
            }
        );
        assert_eq!(pending_retry(&u, &m, max, 30_000_000).unwrap().in_secs, 0);
        // When systemd says when it failed, that is the reference.
        let mut u2 = u.clone();
        u2.failed_since_usec = 29_000_000;
        assert_eq!(next_retry_usec(&u2, &m, max), 37_000_000);
        let auto = unit("activating", "auto-restart", 10_000_000);
        assert_eq!(
            pending_retry(&auto, &UnitMemory::default(), max, 11_000_000)
                .unwrap()
                .in_secs,
            1
        );
        assert!(pending_retry(&unit("active", "running", 0), &m, max, 0).is_none());
    }

    #[test]
    fn memory_round_trips_and_an_empty_one_is_no_file() {
        let t = tempfile::tempdir().unwrap();
        let dirs = Dirs {
            state: t.path().join("s"),
            run: t.path().join("r"),
            units: "/etc/systemd/system".into(),
        };
        assert_eq!(load_memory(&dirs, "a"), Memory::default());
        let mut m = Memory::default();
        m.units.insert(
            "u".into(),
            UnitMemory {
                failures: 2,
                pid: 7,
                ..Default::default()
            },
        );
        save_memory(&dirs, "a", &m).unwrap();
        assert_eq!(load_memory(&dirs, "a"), m);
        save_memory(&dirs, "a", &Memory::default()).unwrap();
        assert!(!memory_path(&dirs, "a").exists());
    }
}
