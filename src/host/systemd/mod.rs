//! The one place that talks to systemd. Callers see the [`Systemd`] trait with plain types
//! ([`UnitSpec`] in, [`UnitInfo`]/[`JobOutcome`] out); zbus types never leave this module.
//!
//! Flow of a start: connect to the system bus, `Subscribe`, open the `JobRemoved` stream
//! *before* calling `StartTransientUnit` (else a fast job could finish unseen), call it for
//! every unit, then read the stream until every job returned has been removed, or time out.
//! zbus 6 is async only; each public call runs to completion with `zbus::block_on`, which keeps
//! the rest of shim synchronous.

mod dbus;
#[cfg(test)]
pub mod fake;
pub mod state;

pub use dbus::DbusSystemd;
#[cfg(test)]
pub use fake::FakeSystemd;
pub use state::{ActiveState, Phase, SubState};

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;

use crate::plan::UnitSpec;

/// What shim knows about one of its units, from one listing plus one property read.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct UnitInfo {
    pub name: String,
    pub description: String,
    pub load_state: String,
    pub active_state: ActiveState,
    pub sub_state: SubState,
    pub main_pid: u32,
    pub n_restarts: u32,
    /// Microseconds since the epoch when the main process started, 0 if never.
    pub main_start_usec: u64,
    /// How the last main process ended: `ExecMainCode` (CLD_EXITED=1, CLD_KILLED=2, ...)
    /// and `ExecMainStatus` (exit status or signal number).
    pub exec_main_code: i32,
    pub exec_main_status: i32,
    /// Microseconds since the epoch when the last main process exited, 0 if it has not.
    pub exec_main_exit_usec: u64,
    /// For a failed unit, when it entered that state (µs since the epoch); 0 otherwise.
    pub failed_since_usec: u64,
    /// systemd ≥ 254: the delay before the next automatic restart (`RestartUSecNext`), which
    /// grows with `RestartSteps=`; 0 where systemd does not say (252).
    pub restart_usec_next: u64,
    /// The service's `Result` when its last main process ended ("success", "exit-code",
    /// "signal", "oom-kill", …); "" where not read (a running unit never restarted).
    pub result: String,
    /// `SHIM_*` fields from LogExtraFields: what service/process/revision/instance/port it is.
    pub fields: BTreeMap<String, String>,
}

impl UnitInfo {
    /// Where the unit is in its life: the one classification behind "running" and
    /// "present" (see [`Phase`]).
    pub fn phase(&self) -> Phase {
        Phase::of(&self.active_state, &self.sub_state, self.main_pid)
    }

    /// Running: active, sub-state running, with a main process.
    pub fn is_running(&self) -> bool {
        self.phase() == Phase::Running
    }

    /// Present: running or on its way up; a failed, inactive or stopping unit is not.
    pub fn is_present(&self) -> bool {
        self.phase().is_present()
    }

    /// Failed or inactive: left behind by a stop or a crash, to be reset.
    pub fn is_left(&self) -> bool {
        self.phase() == Phase::Left
    }

    /// How the last main process ended, for error messages.
    pub fn last_exit(&self) -> Option<String> {
        if self.result == "oom-kill" {
            return Some(
                "killed by the OOM killer (result oom-kill: over its memory limit)".into(),
            );
        }
        match self.exec_main_code {
            1 => Some(format!("exited with status {}", self.exec_main_status)),
            2 | 3 => Some(format!(
                "killed by signal {}",
                nix::sys::signal::Signal::try_from(self.exec_main_status)
                    .map(|s| s.as_str().to_string())
                    .unwrap_or_else(|_| self.exec_main_status.to_string())
            )),
            _ => None,
        }
    }

    pub fn field(&self, k: &str) -> Option<&str> {
        self.fields.get(k).map(|s| s.as_str())
    }

    /// What instance this unit is, from its `SHIM_*` fields (never from its name, which
    /// cannot be parsed back unambiguously); `None` for units that are not instances.
    pub fn key(&self) -> Option<crate::plan::InstanceKey> {
        crate::plan::InstanceKey::from_fields(&self.fields)
    }

    /// The revision it runs (`SHIM_REVISION`), "" if it carries none.
    pub fn revision(&self) -> &str {
        self.field(crate::plan::fields::REVISION)
            .unwrap_or_default()
    }

    /// Its deployment tag (`SHIM_DEPLOYMENT`), "" if it carries none.
    pub fn deployment(&self) -> &str {
        self.field(crate::plan::fields::DEPLOYMENT)
            .unwrap_or_default()
    }

    /// The process it is an instance of (`SHIM_PROCESS`).
    pub fn process(&self) -> Option<&str> {
        self.field(crate::plan::fields::PROCESS)
    }

    /// Its instance index (`SHIM_INSTANCE`), 0 if it carries none.
    pub fn index(&self) -> u32 {
        self.field(crate::plan::fields::INSTANCE)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0)
    }

    /// The host port it was given (`SHIM_PORT`).
    pub fn port(&self) -> Option<u16> {
        self.field(crate::plan::fields::PORT)?.parse().ok()
    }

    /// Where the instance answers ([`crate::plan::Endpoint`]), from the port it was given.
    pub fn endpoint(&self) -> Option<crate::plan::Endpoint> {
        self.port().map(crate::plan::Endpoint::for_instance)
    }
}

/// One unit as `ListUnitsByPatterns` lists it, before any of its properties is read: what
/// `shim status` needs to decide which units it must ask systemd more about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListedUnit {
    pub name: String,
    pub description: String,
    pub load_state: String,
    pub active_state: ActiveState,
    pub sub_state: SubState,
    /// The unit's D-Bus object path, for reading its properties later.
    pub path: String,
}

impl ListedUnit {
    /// Active and running as the listing says (the main pid is not listed: a property read
    /// gives [`UnitInfo::is_running`]).
    pub fn is_running(&self) -> bool {
        self.active_state == ActiveState::Active && self.sub_state == SubState::Running
    }
}

/// Why one unit's properties could not be read after it was listed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReadError {
    /// The unit is gone (`org.freedesktop.systemd1.NoSuchUnit`, or its object path no longer
    /// exists): it vanished between the listing and the read.
    Vanished,
    /// Anything else (a timeout, a bus limit, a dropped connection), with the cause: the unit
    /// may well still be there.
    Failed(String),
}

/// The units of `listed` whose properties were read (`reads`, one per unit, in order), built
/// with `build`. A unit that vanished is left out; any other read error fails the whole
/// read: a unit left out because a read failed would look missing to the caller, and the
/// probe would start it a second time. Shared by the real reader and the fake, so a test
/// that scripts a read error exercises this very decision.
pub fn collect_reads<T>(
    listed: &[ListedUnit],
    reads: impl IntoIterator<Item = Result<T, ReadError>>,
    build: impl Fn(&ListedUnit, T) -> UnitInfo,
) -> Result<Vec<UnitInfo>, SystemdError> {
    let mut out = Vec::new();
    for (u, read) in listed.iter().zip(reads) {
        match read {
            Ok(p) => out.push(build(u, p)),
            Err(ReadError::Vanished) => {}
            Err(ReadError::Failed(message)) => {
                return Err(SystemdError::Call {
                    call: "Get",
                    unit: u.name.clone(),
                    message,
                })
            }
        }
    }
    Ok(out)
}

/// A timer, as `shim cron list` and `shim status` show it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TimerInfo {
    pub name: String,
    pub active_state: ActiveState,
    /// When it elapses next, µs since the epoch; 0 if never.
    pub next_elapse_usec: u64,
    /// When it last elapsed, µs since the epoch; 0 if never.
    pub last_trigger_usec: u64,
}

/// How a job ended: systemd's `JobRemoved` result ("done", "failed", "timeout", "canceled",
/// "dependency", "skipped") per unit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct JobOutcome {
    pub unit: String,
    pub result: String,
}

impl JobOutcome {
    pub fn ok(&self) -> bool {
        self.result == "done"
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SystemdError {
    #[error(
        "cannot connect to systemd on the system bus: {0} (is systemd PID 1 and dbus running?)"
    )]
    Connect(String),
    #[error("{call} {unit}: {message}")]
    Call {
        call: &'static str,
        unit: String,
        message: String,
    },
    #[error("timed out after {0:?} waiting for systemd jobs of: {1}")]
    Timeout(Duration, String),
}

/// The operations shim needs from systemd. Everything is batched: one call covers many units.
pub trait Systemd {
    /// Units whose names match any of the glob patterns, with their properties.
    fn list_units(&self, patterns: &[String]) -> Result<Vec<UnitInfo>, SystemdError>;
    /// Starts transient units and waits for their start jobs to finish.
    fn start_transient(
        &self,
        units: &[UnitSpec],
        timeout: Duration,
    ) -> Result<Vec<JobOutcome>, SystemdError>;
    /// Reloads a unit (e.g. nginx) and waits for the job.
    fn reload_unit(&self, name: &str, timeout: Duration) -> Result<JobOutcome, SystemdError>;
    /// Stops units and waits for the stop jobs. Units that do not exist count as stopped.
    /// A stopped unit that had failed is reset too, so that it is unloaded like any other
    /// stopped transient unit (units keep their failed state visible until then).
    fn stop_units(
        &self,
        names: &[String],
        timeout: Duration,
    ) -> Result<Vec<JobOutcome>, SystemdError>;
    /// Starts units that are loaded (e.g. a failed instance after its backoff) and waits for
    /// the start jobs.
    fn start_units(
        &self,
        names: &[String],
        timeout: Duration,
    ) -> Result<Vec<JobOutcome>, SystemdError>;
    /// Starts one transient unit together with auxiliary transient units created in the same
    /// call (a timer and the service it triggers), and waits for the main unit's job.
    fn start_transient_with_aux(
        &self,
        unit: &UnitSpec,
        aux: &[UnitSpec],
        timeout: Duration,
    ) -> Result<JobOutcome, SystemdError>;
    /// Sends `signal` to the unit's main process only (`KillUnit` with whom = "main").
    fn kill_main(&self, name: &str, signal: i32) -> Result<(), SystemdError>;
    /// Clears the failed state (and the start rate limit) of units; missing units are fine.
    fn reset_failed(&self, names: &[String]) -> Result<(), SystemdError>;
    /// Clears a failed unit's failed state and start limit and starts it again, waiting for
    /// the start job. A reference is held meanwhile: once reset, a unit with
    /// `CollectMode=inactive` would otherwise be unloaded before the start arrives.
    fn restart_failed(&self, name: &str, timeout: Duration) -> Result<JobOutcome, SystemdError>;
    /// The manager's `Version` property, e.g. "252.39-1~deb12u2".
    fn version(&self) -> Result<String, SystemdError>;
    /// The units whose names match any of `patterns`: one `ListUnitsByPatterns`, no
    /// properties. [`Systemd::list_units`] is this followed by [`Systemd::read_units`].
    fn list(&self, patterns: &[String]) -> Result<Vec<ListedUnit>, SystemdError>;
    /// `listed` with their properties (units that vanished meanwhile are left out).
    fn read_units(&self, listed: &[ListedUnit]) -> Result<Vec<UnitInfo>, SystemdError>;
    /// The timers among `listed`, with when they elapse next and last did.
    fn read_timers(&self, listed: &[ListedUnit]) -> Result<Vec<TimerInfo>, SystemdError>;
    /// Timers whose names match `patterns`.
    fn timers(&self, patterns: &[String]) -> Result<Vec<TimerInfo>, SystemdError> {
        let listed = self.list(patterns)?;
        self.read_timers(&listed)
    }
    /// Starts `unit` (with auxiliary units created in the same call) whose properties include
    /// file descriptors, e.g. `StandardInputFileDescriptor`: systemd receives duplicates.
    fn start_with_fds(
        &self,
        unit: &UnitSpec,
        aux: &[UnitSpec],
        fds: &[(&str, std::os::fd::BorrowedFd<'_>)],
        timeout: Duration,
    ) -> Result<JobOutcome, SystemdError>;
    /// Drops the reference `AddRef=yes` gave this client, so the unit can be unloaded.
    fn unref(&self, name: &str) -> Result<(), SystemdError>;
    /// `systemctl daemon-reload`: systemd reads the unit files again (returns when done).
    fn daemon_reload(&self) -> Result<(), SystemdError>;
    /// `systemctl enable` of unit files (their `[Install]` links); no reload needed.
    fn enable_unit_files(&self, names: &[String]) -> Result<(), SystemdError>;
    /// `systemctl disable` of unit files; files that do not exist are fine.
    fn disable_unit_files(&self, names: &[String]) -> Result<(), SystemdError>;
    /// `systemctl is-enabled`: "enabled", "disabled", "masked", … ; None when no such file.
    fn unit_file_state(&self, name: &str) -> Result<Option<String>, SystemdError>;
    /// Queues stop jobs without waiting for them: for units whose stop jobs are ordered
    /// after the caller's own (an `ExecStop` stopping units that are `Before=` its unit
    /// would otherwise wait for itself). Missing units are fine.
    fn queue_stop(&self, names: &[String]) -> Result<(), SystemdError>;
    /// The manager's `SystemState`: "running", "degraded", "stopping" (shutting down), …
    fn system_state(&self) -> Result<String, SystemdError>;
}

/// A shared handle on systemd: the operations and the threads they start (the signal
/// forwarder of `shim run`) use the one connection made where the program starts.
pub type SharedSystemd = std::sync::Arc<dyn Systemd + Send + Sync>;

/// The major version in systemd's `Version` string ("252.39-1~deb12u2" → 252, "v254" → 254).
pub fn parse_major_version(v: &str) -> Option<u32> {
    let digits: String = v
        .trim()
        .trim_start_matches(['v', 'V'])
        .chars()
        .take_while(|c| c.is_ascii_digit())
        .collect();
    digits.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_unit_that_vanished_is_left_out_and_any_other_read_error_is_an_error() {
        let listed: Vec<ListedUnit> = ["a.service", "b.service"]
            .map(|n| ListedUnit {
                name: n.into(),
                description: String::new(),
                load_state: "loaded".into(),
                active_state: "active".into(),
                sub_state: "running".into(),
                path: String::new(),
            })
            .to_vec();
        let build = |u: &ListedUnit, pid: u32| UnitInfo {
            name: u.name.clone(),
            main_pid: pid,
            ..Default::default()
        };
        let got = collect_reads(&listed, [Ok(7), Err(ReadError::Vanished)], build).unwrap();
        assert_eq!(
            got.iter().map(|u| u.name.as_str()).collect::<Vec<_>>(),
            ["a.service"]
        );
        let err = collect_reads(
            &listed,
            [Err(ReadError::Failed("Timeout".into())), Ok(8)],
            build,
        )
        .unwrap_err();
        assert_eq!(err.to_string(), "Get a.service: Timeout");
    }

    #[test]
    fn major_versions() {
        assert_eq!(parse_major_version("252.39-1~deb12u2"), Some(252));
        assert_eq!(parse_major_version("254"), Some(254));
        assert_eq!(parse_major_version("v256.7"), Some(256));
        assert_eq!(parse_major_version("unknown"), None);
    }
}
