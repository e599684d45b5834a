//! Transient unit properties for one instance, as plain data ([`Prop`]) that the systemd module
//! turns into D-Bus variants and `shim show` prints in unit-file syntax.
//!
//! The shape: `Type=forking` + `PIDFile=` around `runc run --detach`, so the container's init
//! becomes the unit's main process and no runtime or shim process stays resident;
//! `Delegate=yes` so the runtime may create the container's cgroup below the unit's own (the
//! container cannot escape the unit); `ExecStartPre`/`ExecStopPost` run `shim instance
//! prepare/cleanup` to mount and discard the instance's writable layer and the runtime state.

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use serde::Serialize;

use super::runtime_args;
use super::{fields, InstanceDir, InstanceKey, PlanContext};
use crate::config::ProcessDef;

/// A transient unit: its name and properties in the order they are sent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UnitSpec {
    pub name: String,
    pub properties: Vec<(String, Prop)>,
}

/// One command line of `ExecStart=` and friends (D-Bus `a(sasb)`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Exec {
    pub path: String,
    pub argv: Vec<String>,
    pub ignore_failure: bool,
}

/// A property value, typed as systemd's D-Bus API wants it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum Prop {
    Str(String),
    Bool(bool),
    /// Microseconds (`t`), for `*USec` properties.
    USec(u64),
    I32(i32),
    U32(u32),
    /// `t` (MemoryMax, TasksMax, LimitNOFILE).
    U64(u64),
    /// `aay`: each string sent as bytes (LogExtraFields).
    Bytes(Vec<String>),
    Exec(Vec<Exec>),
    /// `as` (Environment).
    Strs(Vec<String>),
    /// `a(st)`: monotonic timer settings, e.g. ("OnUnitActiveSec", 5_000_000) (µs).
    Timers(Vec<(String, u64)>),
    /// `a(ss)`: calendar timer settings, e.g. ("OnCalendar", "*-*-* 02:00:00").
    Calendars(Vec<(String, String)>),
    /// `au` (a scope's PIDs).
    U32s(Vec<u32>),
    /// `ay` (StandardInputData).
    Data(Vec<u8>),
}

pub use crate::config::RESTART_SEC;

/// On systemd < 254 (no `RestartSteps=`), a unit started more than this many times within
/// [`START_LIMIT_INTERVAL`] lands in `failed` (`start-limit-hit`) instead of being restarted
/// every [`RESTART_SEC`]: one quick restart after a crash or a health kill, then the probe
/// takes over and retries with a doubling delay (see `supervise`).
pub const START_LIMIT_BURST: u32 = 2;
pub const START_LIMIT_INTERVAL: Duration = Duration::from_secs(30);

/// How systemd itself spaces out restarts; depends on the manager's version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum RestartPolicy {
    /// systemd < 254: restart every `RestartSec=` up to the start limit, then `failed`; the
    /// probe resets and restarts failed units once their backoff has passed, forever.
    StartLimit,
    /// systemd ≥ 254: `RestartSteps=`/`RestartMaxDelaySec=` grow the delay from `RestartSec=`
    /// to `max_delay`, doubling; no start limit.
    Steps { max_delay: Duration },
}

/// The version from which systemd knows `RestartSteps=` and `RestartMaxDelaySec=`.
pub const RESTART_STEPS_SINCE: u32 = 254;

impl RestartPolicy {
    pub fn for_version(major: Option<u32>, max_delay: Duration) -> RestartPolicy {
        match major {
            Some(v) if v >= RESTART_STEPS_SINCE => RestartPolicy::Steps { max_delay },
            _ => RestartPolicy::StartLimit,
        }
    }
}

/// Restart properties for an instance unit (`Restart=always` either way: never give up).
pub fn restart_props(policy: RestartPolicy) -> Vec<(&'static str, Prop)> {
    let mut p = vec![
        ("Restart", Prop::Str("always".into())),
        ("RestartUSec", usec(RESTART_SEC)),
    ];
    match policy {
        RestartPolicy::StartLimit => {
            p.push(("StartLimitIntervalUSec", usec(START_LIMIT_INTERVAL)));
            p.push(("StartLimitBurst", Prop::U32(START_LIMIT_BURST)));
        }
        RestartPolicy::Steps { max_delay } => {
            // Delays grow geometrically from RestartSec to the max in this many steps:
            // doubling means log2(max / RestartSec) steps.
            let ratio = max_delay.as_secs_f64() / RESTART_SEC.as_secs_f64();
            let steps = ratio.log2().ceil().max(1.0) as u32;
            p.push(("RestartSteps", Prop::U32(steps)));
            p.push(("RestartMaxDelayUSec", usec(max_delay.max(RESTART_SEC))));
            // Never stop retrying for good: a dependency outage must not leave a service dead.
            p.push(("StartLimitIntervalUSec", Prop::USec(0)));
        }
    }
    p
}

/// The unit properties of resource limits: systemd enforces them on the unit's cgroup, which
/// holds the container's.
pub fn limit_props(l: &crate::config::Limits) -> Vec<(&'static str, Prop)> {
    let mut p = Vec::new();
    if let Some(m) = l.memory {
        p.push(("MemoryMax", Prop::U64(m)));
    }
    if let Some(c) = l.cpus_milli {
        // CPUQuota= is CPU time per second of wall time: 1.5 CPUs = 1.5 s each second.
        p.push(("CPUQuotaPerSecUSec", Prop::USec(u64::from(c) * 1000)));
    }
    if let Some(n) = l.pids {
        p.push(("TasksMax", Prop::U64(n)));
    }
    if let Some(n) = l.nofile {
        // The runtime inherits the unit's limit, so the container's equal one needs no
        // privilege to set.
        p.push(("LimitNOFILE", Prop::U64(n)));
        p.push(("LimitNOFILESoft", Prop::U64(n)));
    }
    p
}

pub(super) fn usec(d: Duration) -> Prop {
    Prop::USec(u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

fn exec(argv: Vec<String>, ignore_failure: bool) -> Prop {
    Prop::Exec(vec![Exec {
        path: argv[0].clone(),
        argv,
        ignore_failure,
    }])
}

/// The signal number for a normalised name; config validation only lets known names through.
pub fn signal_number(name: &str) -> i32 {
    nix::sys::signal::Signal::from_str(name)
        .map(|s| s as i32)
        .unwrap_or(libc::SIGTERM)
}

/// The stop signal: the process's, else the image's, else SIGTERM.
pub fn stop_signal(cx: &PlanContext<'_>, process: &ProcessDef) -> String {
    process
        .stop_signal
        .clone()
        .or_else(|| {
            cx.image
                .stop_signal
                .as_deref()
                .and_then(|s| crate::config::normalise_signal(s).ok())
        })
        .unwrap_or_else(|| "SIGTERM".into())
}

/// The journal fields that tag every line of the instance's output, and that `shim status`
/// reads back to know what a unit is.
pub fn log_fields(key: &InstanceKey, port: Option<u16>) -> Vec<String> {
    let mut f = vec![
        format!("{}={}", fields::SERVICE, key.service),
        format!("{}={}", fields::PROCESS, key.process),
        format!("{}={}", fields::REVISION, key.revision),
        format!("{}={}", fields::INSTANCE, key.index),
    ];
    if let Some(p) = port {
        f.push(format!("{}={p}", fields::PORT));
    }
    if !key.deployment.is_empty() {
        f.push(format!("{}={}", fields::DEPLOYMENT, key.deployment));
    }
    f
}

pub(super) fn plan_unit(
    cx: &PlanContext<'_>,
    process: &ProcessDef,
    key: &InstanceKey,
    dir: &Path,
    port: Option<u16>,
) -> UnitSpec {
    let d = InstanceDir(dir);
    let s = |v: &str| v.to_string();
    let stem = key.stem();
    let rev12: String = key.revision.chars().take(super::REV_IN_NAME).collect();
    let signal = stop_signal(cx, process);

    let mut props: Vec<(&str, Prop)> = vec![
        (
            "Description",
            Prop::Str(format!(
                "shim {} {} #{} (revision {rev12})",
                key.service, key.process, key.index
            )),
        ),
        (
            "Slice",
            Prop::Str(super::names::slice_name(key.service.as_str())),
        ),
        ("Type", Prop::Str(s("forking"))),
        ("PIDFile", Prop::Str(d.pid_file().display().to_string())),
        ("GuessMainPID", Prop::Bool(false)),
        ("Delegate", Prop::Bool(true)),
    ];
    props.extend(instance_deps(key.service.as_str()));
    props.extend(exec_props(cx, dir, &stem));
    props.extend([
        // Stop like `docker stop`: the stop signal to the container's init only, then after
        // stop_timeout SIGKILL to everything left in the cgroup.
        ("KillMode", Prop::Str(s("mixed"))),
        ("KillSignal", Prop::I32(signal_number(&signal))),
        ("TimeoutStopUSec", usec(process.stop_timeout)),
    ]);
    props.extend(limit_props(&process.limits));
    props.extend(restart_props(cx.restart));
    props.extend([
        // Unload the unit once stopped, so the same name can be started again; a failed one
        // stays loaded so that `shim status` shows it (and its next retry) until the probe
        // restarts it or `shim stop` resets it.
        ("CollectMode", Prop::Str(s("inactive"))),
        (
            "SyslogIdentifier",
            Prop::Str(format!("{}-{}-{}", key.service, key.process, key.index)),
        ),
        ("LogExtraFields", Prop::Bytes(log_fields(key, port))),
    ]);
    UnitSpec {
        name: key.unit_name(),
        properties: props.into_iter().map(|(k, v)| (k.to_string(), v)).collect(),
    }
}

/// ExecStartPre (`shim instance prepare`), ExecStart (the runtime) and ExecStopPost
/// (`shim instance cleanup`).
fn exec_props(cx: &PlanContext<'_>, dir: &Path, stem: &str) -> [(&'static str, Prop); 3] {
    use runtime_args::{argv, Cleanup, Prepare, Run};
    let pid_file = InstanceDir(dir).pid_file();
    let prepare = Prepare {
        lowers: cx.lowers,
        dir,
    };
    let run = Run {
        detach: true,
        pid_file: Some(&pid_file),
        bundle: dir,
        id: stem,
    };
    let cleanup = Cleanup {
        remove: false,
        record: None,
        runtime: cx.runtime_bin,
        dir,
    };
    [
        ("ExecStartPre", exec(argv(cx.shim_exe, &prepare), false)),
        ("ExecStart", exec(argv(cx.runtime_bin, &run), false)),
        // Cleanup is idempotent and must not turn a clean stop into a failure.
        ("ExecStopPost", exec(argv(cx.shim_exe, &cleanup), true)),
    ]
}

impl UnitSpec {
    /// Unit-file syntax, for `shim show` and snapshots.
    pub fn render(&self) -> String {
        let mut out = format!("# {}\n", self.name);
        for (k, v) in &self.properties {
            let value = match v {
                Prop::Str(s) => s.clone(),
                Prop::Bool(b) => if *b { "yes" } else { "no" }.to_string(),
                Prop::USec(u) => crate::config::format_duration(Duration::from_micros(*u)),
                Prop::I32(n) => n.to_string(),
                Prop::U32(n) => n.to_string(),
                Prop::U64(n) => n.to_string(),
                Prop::Strs(v) => v.join(" "),
                Prop::U32s(v) => v
                    .iter()
                    .map(|n| n.to_string())
                    .collect::<Vec<_>>()
                    .join(" "),
                Prop::Data(d) => {
                    use base64::Engine as _;
                    base64::engine::general_purpose::STANDARD.encode(d)
                }
                Prop::Calendars(v) => {
                    for (name, spec) in v {
                        out.push_str(&format!("{name}={spec}\n"));
                    }
                    continue;
                }
                Prop::Timers(v) => {
                    for (name, u) in v {
                        let d = crate::config::format_duration(Duration::from_micros(*u));
                        out.push_str(&format!("{name}={d}\n"));
                    }
                    continue;
                }
                Prop::Bytes(v) => {
                    for f in v {
                        out.push_str(&format!("{k}={f}\n"));
                    }
                    continue;
                }
                Prop::Exec(cmds) => cmds
                    .iter()
                    .map(|c| {
                        format!(
                            "{}{}",
                            if c.ignore_failure { "-" } else { "" },
                            c.argv.join(" ")
                        )
                    })
                    .collect::<Vec<_>>()
                    .join(" ; "),
            };
            out.push_str(&format!("{k}={value}\n"));
        }
        out
    }
}

/// The dependencies of an instance unit on its service unit: stopping (or restarting) the
/// service unit stops it, and after the service unit's `ExecStop` (the drain) has returned,
/// since stop jobs run in the inverse order of `Before=`.
pub fn instance_deps(id: &str) -> Vec<(&'static str, Prop)> {
    let unit = super::names::service_unit_name(id);
    vec![
        ("PartOf", Prop::Strs(vec![unit.clone()])),
        ("Before", Prop::Strs(vec![unit])),
    ]
}
