//! One-off containers (`shim run`, cron jobs) and the timers of cron jobs, as plain data.
//!
//! A one-off is a transient service whose main process is the OCI runtime running in the
//! foreground (`runc run`, not `--detach`): the runtime forwards every signal to the
//! container's init and exits with its status (128+N when killed by signal N), so systemd's
//! `ExecMainStatus` is the command's exit code, however fast the command ends. (Detached with a
//! pid file, as instances run, a command that exits before systemd reads the pid file leaves
//! the unit failed with "protocol" and no exit code.) The runtime first moves itself into a
//! `runtime` leaf of the unit's delegated cgroup (`shim instance exec`), so the container's
//! cgroup (`…/container`) and the runtime never share a cgroup with children, which cgroup v2
//! forbids once controllers are enabled.
//!
//! Names: `shimrun-<service>-<rev12>-<tag>.service` for runs and `shimcron-<service>-<job>`
//! `.timer`/`.service` for cron jobs: outside `shim-*`, so nothing that manages instances
//! (upgrade, reconcile, probe) ever mistakes them for instances.

use std::path::{Path, PathBuf};
use std::time::Duration;

use oci_spec::runtime::Spec;

use super::names::{anchor_scope, cron_stem, SLICE};
use super::unit::{signal_number, stop_signal, usec, Exec};
use super::{bundle, fields, merge_env, InstanceKey, PlanContext, Prop, UnitSpec};
use crate::config::{Ident, ProcessDef};

/// How the caller is connected to a one-off's standard streams.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attach {
    /// `--detach`: stdin is /dev/null, output goes to the journal only.
    Detached,
    /// Attached without a terminal: the caller passes its stdin (or nothing) and pipes for
    /// stdout/stderr as file descriptors; the unit is bound to an anchor scope holding a child
    /// of the caller, so it is stopped if the caller dies.
    Pipes,
    /// `-t`: the caller's terminal is the runtime's stdio and the container gets a pty of its
    /// own (config.json `terminal: true`); the runtime proxies and follows the window size.
    Tty,
}

/// What one one-off runs.
#[derive(Debug, Clone)]
pub struct OneOff<'a> {
    /// Unit name without `.service`; also the container id and the bundle directory's name.
    pub stem: String,
    /// The process whose settings (env, user, read_only, stop signal/timeout) it borrows.
    pub process: Option<&'a ProcessDef>,
    pub argv: Vec<String>,
    /// Variables added over the process's environment (crontab `NAME=value`, `TERM`).
    pub env: Vec<(String, String)>,
    /// Journal fields besides SHIM_SERVICE/PROCESS/REVISION, e.g. `SHIM_RUN=<stem>`.
    pub fields: Vec<(String, String)>,
    pub attach: Attach,
    /// The bundle directory.
    pub dir: PathBuf,
}

/// A planned one-off: its unit and its `config.json`.
#[derive(Debug, Clone)]
pub struct OneOffPlan {
    pub unit: UnitSpec,
    pub config: Spec,
}

/// ExecStartPre (`shim instance prepare`), ExecStart (the runtime, through `shim instance
/// exec`) and ExecStopPost (`shim instance cleanup --remove`) of a `shim run`.
fn oneoff_exec_props(cx: &PlanContext<'_>, req: &OneOff<'_>) -> [(&'static str, Prop); 3] {
    use super::runtime_args::{argv, Cleanup, Prepare};
    let prepare = Prepare {
        lowers: cx.lowers,
        dir: &req.dir,
    };
    let cleanup = Cleanup {
        remove: true,
        record: None,
        runtime: cx.runtime_bin,
        dir: &req.dir,
    };
    [
        ("ExecStartPre", exec(argv(cx.shim_exe, &prepare), false)),
        (
            "ExecStart",
            exec(
                runtime_exec_argv(cx.shim_exe, cx.runtime_bin, &req.dir, &req.stem),
                false,
            ),
        ),
        ("ExecStopPost", exec(argv(cx.shim_exe, &cleanup), true)),
    ]
}

/// The process a run without `--process` uses: the service's settings, no command of its own.
pub fn default_process() -> Result<ProcessDef, String> {
    Ok(ProcessDef {
        name: Ident::parse("run")?,
        command: None,
        count: 0,
        health: None,
        port: false,
        stop_timeout: Duration::from_secs(30),
        stop_signal: None,
        read_only: false,
        env: Default::default(),
        proxy: None,
        drain: Duration::ZERO,
        singleton: false,
        limits: Default::default(),
        mounts: Vec::new(),
        cap_add: Vec::new(),
        cap_drop: Vec::new(),
        init: false,
        secrets: Vec::new(),
        seccomp: None,
    })
}

fn exec(argv: Vec<String>, ignore_failure: bool) -> Prop {
    Prop::Exec(vec![Exec {
        path: argv[0].clone(),
        argv,
        ignore_failure,
    }])
}

/// The runtime running a one-off's bundle in the foreground: `RUNTIME run --bundle DIR ID`.
pub fn runtime_run_argv(runtime: &Path, dir: &Path, id: &str) -> Vec<String> {
    let run = super::runtime_args::Run {
        detach: false,
        pid_file: None,
        bundle: dir,
        id,
    };
    super::runtime_args::argv(runtime, &run)
}

/// The command a one-off's unit starts with: `shim instance exec` moves into the `runtime`
/// cgroup leaf, then becomes the runtime ([`runtime_run_argv`]).
pub fn runtime_exec_argv(shim: &Path, runtime: &Path, dir: &Path, id: &str) -> Vec<String> {
    let exec = super::runtime_args::ExecRuntime {
        runtime,
        run: super::runtime_args::Run {
            detach: false,
            pid_file: None,
            bundle: dir,
            id,
        },
    };
    super::runtime_args::argv(shim, &exec)
}

/// `config.json` of a one-off: the instance's config (image, env, user, mounts, hardening)
/// with the given argv, no `$PORT`, no SHIM_INSTANCE, a terminal if asked for, and the
/// container's cgroup below the one-off's unit.
pub fn plan_oneoff_config(cx: &PlanContext<'_>, req: &OneOff<'_>) -> Result<Spec, String> {
    let fallback = default_process()?;
    let process = req.process.unwrap_or(&fallback);
    if req.argv.is_empty() {
        return Err("no command given: shim run ... -- CMD [ARGS...]".into());
    }
    let key = InstanceKey {
        service: cx.service.id.clone(),
        process: process.name.clone(),
        revision: cx.revision.to_string(),
        deployment: String::new(),
        index: 0,
    };
    let mut spec = bundle::plan_config(cx, process, &key, &req.dir, None)?;
    let instance = format!("{}=", fields::INSTANCE);
    let mut env: Vec<String> = merge_env(cx, process, &key, None)
        .into_iter()
        .filter(|kv| !kv.starts_with(&instance))
        .collect();
    for (k, v) in req.env.iter().chain(req.fields.iter()) {
        let prefix = format!("{k}=");
        env.retain(|kv| !kv.starts_with(&prefix));
        env.push(format!("{k}={v}"));
    }
    if let Some(p) = spec.process_mut() {
        p.set_args(Some(req.argv.clone()));
        p.set_env(Some(env));
        p.set_terminal(Some(req.attach == Attach::Tty));
    }
    if let Some(linux) = spec.linux_mut() {
        linux.set_cgroups_path(Some(PathBuf::from(format!(
            "{}/{}.service/container",
            super::names::slice_cgroup(cx.service.id.as_str()),
            req.stem
        ))));
    }
    Ok(spec)
}

/// Journal fields of a one-off.
fn oneoff_fields(cx: &PlanContext<'_>, process: &str, extra: &[(String, String)]) -> Vec<String> {
    let mut f = vec![
        format!("{}={}", fields::SERVICE, cx.service.id),
        format!("{}={process}", fields::PROCESS),
        format!("{}={}", fields::REVISION, cx.revision),
    ];
    f.extend(extra.iter().map(|(k, v)| format!("{k}={v}")));
    f
}

/// A short, single-line rendering of an argv for descriptions.
pub fn describe_argv(argv: &[String]) -> String {
    let s = argv.join(" ").replace(['\n', '\r'], " ");
    if s.chars().count() > 60 {
        format!("{}…", s.chars().take(59).collect::<String>())
    } else {
        s
    }
}

/// The unit and config of a `shim run`.
pub fn plan_oneoff(cx: &PlanContext<'_>, req: &OneOff<'_>) -> Result<OneOffPlan, String> {
    let config = plan_oneoff_config(cx, req)?;
    let fallback = default_process()?;
    let process = req.process.unwrap_or(&fallback);
    let s = |v: &str| v.to_string();
    let rev12: String = cx.revision.chars().take(super::REV_IN_NAME).collect();
    let signal = stop_signal(cx, process);
    let mut props: Vec<(&str, Prop)> = vec![
        (
            "Description",
            Prop::Str(format!(
                "shim run {} (revision {rev12}): {}",
                cx.service.id,
                describe_argv(&req.argv)
            )),
        ),
        (
            "Slice",
            Prop::Str(super::names::slice_name(cx.service.id.as_str())),
        ),
        ("Type", Prop::Str(s("exec"))),
        ("Delegate", Prop::Bool(true)),
    ];
    props.extend(oneoff_exec_props(cx, req));
    props.extend([
        // The stop signal to the runtime, which passes it to the container's init; whatever is
        // left after stop_timeout is killed.
        ("KillMode", Prop::Str(s("mixed"))),
        ("KillSignal", Prop::I32(signal_number(&signal))),
        ("TimeoutStopUSec", usec(process.stop_timeout)),
        ("Restart", Prop::Str(s("no"))),
        ("CollectMode", Prop::Str(s("inactive-or-failed"))),
        (
            "SyslogIdentifier",
            Prop::Str(format!("{}-{}", cx.service.id, process.name)),
        ),
        (
            "LogExtraFields",
            Prop::Bytes(oneoff_fields(cx, process.name.as_str(), &req.fields)),
        ),
    ]);
    match req.attach {
        Attach::Detached => {}
        Attach::Pipes | Attach::Tty => {
            let anchor = anchor_scope(&req.stem);
            props.extend([
                // Keep the unit loaded after it ends until the caller has read its exit status.
                ("AddRef", Prop::Bool(true)),
                ("BindsTo", Prop::Strs(vec![anchor.clone()])),
                ("After", Prop::Strs(vec![anchor])),
            ]);
        }
    }
    Ok(OneOffPlan {
        unit: UnitSpec {
            name: format!("{}.service", req.stem),
            properties: props.into_iter().map(|(k, v)| (k.to_string(), v)).collect(),
        },
        config,
    })
}

/// The anchor scope of an attached run, holding `pid` (a child of the caller).
pub fn plan_anchor(stem: &str, pid: u32) -> UnitSpec {
    let props: Vec<(&str, Prop)> = vec![
        (
            "Description",
            Prop::Str(format!("shim run {stem}: the caller's anchor")),
        ),
        ("Slice", Prop::Str(SLICE.to_string())),
        ("PIDs", Prop::U32s(vec![pid])),
        ("CollectMode", Prop::Str("inactive-or-failed".into())),
    ];
    UnitSpec {
        name: anchor_scope(stem),
        properties: props.into_iter().map(|(k, v)| (k.to_string(), v)).collect(),
    }
}

/// One cron job as installed: what the timer and its service are made of.
#[derive(Debug, Clone)]
pub struct CronJobUnits<'a> {
    pub service: &'a str,
    pub job: &'a str,
    /// The schedule as written in the crontab and the command, for the description.
    pub schedule_text: &'a str,
    pub command: &'a str,
    pub calendars: &'a [String],
    /// Text after `%`: the job's standard input.
    pub stdin: Option<&'a str>,
    pub shim_exe: &'a Path,
    pub runtime_bin: &'a Path,
    /// Definitions path, passed to `shim cron exec` so it reads what sync read.
    pub config: &'a Path,
    /// The job's bundle directory.
    pub dir: &'a Path,
    /// Where the job's last result is recorded (by its ExecStopPost).
    pub last_file: &'a Path,
    pub stop_timeout: Duration,
}

/// A timer and the service it starts. The service runs `shim cron exec`, which reads which
/// revision is current from the cron state file at each run, then becomes the runtime: so a
/// sync that changes only the revision switches every job at once, by one rename.
pub fn plan_cron_job(j: &CronJobUnits<'_>) -> (UnitSpec, UnitSpec) {
    let stem = cron_stem(j.service, j.job);
    let s = |v: &str| v.to_string();
    let description = format!(
        "shim cron {}: {} {}",
        j.service,
        j.schedule_text,
        describe_argv(&[j.command.to_string()])
    );
    let timer = cron_timer_props(j, description.clone());
    let mut service: Vec<(&str, Prop)> = vec![
        ("Description", Prop::Str(description)),
        ("Slice", Prop::Str(super::names::slice_name(j.service))),
        ("Type", Prop::Str(s("exec"))),
        ("Delegate", Prop::Bool(true)),
    ];
    service.extend(cron_exec_props(j));
    service.extend([
        ("KillMode", Prop::Str(s("mixed"))),
        ("TimeoutStopUSec", usec(j.stop_timeout)),
        ("Restart", Prop::Str(s("no"))),
        ("SyslogIdentifier", Prop::Str(format!("{}-cron", j.service))),
        (
            "LogExtraFields",
            Prop::Bytes(vec![
                format!("{}={}", fields::SERVICE, j.service),
                format!("{}=cron", fields::PROCESS),
                format!("{}={}", fields::CRON, j.job),
            ]),
        ),
    ]);
    if let Some(input) = j.stdin {
        service.push(("StandardInput", Prop::Str(s("data"))));
        service.push(("StandardInputData", Prop::Data(input.as_bytes().to_vec())));
        service.push(("StandardOutput", Prop::Str(s("journal"))));
    }
    let unit = |name: String, props: Vec<(&str, Prop)>| UnitSpec {
        name,
        properties: props.into_iter().map(|(k, v)| (k.to_string(), v)).collect(),
    };
    (
        unit(format!("{stem}.timer"), timer),
        unit(format!("{stem}.service"), service),
    )
}

/// The timer of a cron job: its calendars, to the second, not catching up missed runs.
fn cron_timer_props(j: &CronJobUnits<'_>, description: String) -> Vec<(&'static str, Prop)> {
    let mut p = vec![
        ("Description", Prop::Str(description)),
        (
            "TimersCalendar",
            Prop::Calendars(
                j.calendars
                    .iter()
                    .map(|c| ("OnCalendar".to_string(), c.clone()))
                    .collect(),
            ),
        ),
        // cron starts jobs at second 0; the default accuracy would let them slip up to a
        // minute.
        ("AccuracyUSec", Prop::USec(1_000_000)),
        ("RandomizedDelayUSec", Prop::USec(0)),
        ("Persistent", Prop::Bool(false)),
        // It triggers the service of the same name (Unit= cannot be set on transient timers).
    ];
    // Stopped with the service's unit (a job running then finishes: its service is not).
    p.extend(super::service_unit::timer_deps(j.service));
    p
}

/// ExecStart (`shim cron exec`) and ExecStopPost (`shim instance cleanup --record`) of a
/// cron job's service.
fn cron_exec_props(j: &CronJobUnits<'_>) -> [(&'static str, Prop); 2] {
    let s = |v: &str| v.to_string();
    [
        (
            "ExecStart",
            exec(
                vec![
                    j.shim_exe.display().to_string(),
                    s("--config"),
                    j.config.display().to_string(),
                    s("cron"),
                    s("exec"),
                    s("--id"),
                    s(j.service),
                    s("--job"),
                    s(j.job),
                ],
                false,
            ),
        ),
        (
            "ExecStopPost",
            exec(
                super::runtime_args::argv(
                    j.shim_exe,
                    &super::runtime_args::Cleanup {
                        remove: true,
                        record: Some(j.last_file),
                        runtime: j.runtime_bin,
                        dir: j.dir,
                    },
                ),
                true,
            ),
        ),
    ]
}
