//! The podman backend (`runtime = "podman"`): the transient unit runs `podman run` the way
//! podman's own Quadlet generator does (podman-systemd.unit(5)): `--rm --replace --name`,
//! `--cgroups=split --sdnotify=conmon --detach`, `Type=notify`, `NotifyAccess=all`,
//! `KillMode=mixed`, `Delegate=yes`, `ExecStop=podman rm --force`, and an idempotent
//! `ExecStopPost=-podman rm --force --ignore`.
//!
//! Main PID: conmon. With `--sdnotify=conmon`, conmon (podman's per-container monitor) tells
//! systemd `MAINPID=<conmon>` and `READY=1` once the container runs; `podman run --detach`
//! itself exits. conmon lives in the unit's cgroup (`<unit>/runtime`) and the container below
//! it (`<unit>/libpod-payload-<id>`, `--cgroups=split` under `Delegate=yes`). When the
//! container exits, conmon exits with its status, so systemd's `Restart=` sees every crash;
//! killing conmon makes the unit fail too, and the stop path removes the orphaned container.
//!
//! Image: podman is fed shim's own verified, unpacked image (`--rootfs <cached rootfs>:O`), not
//! a reference to pull. The `:O` suffix makes podman mount a private overlay over the shared
//! read-only rootfs (upper dir under podman's runroot, gone with the container), as shim does
//! for runc/crun. So the bytes that run are the ones shim verified (digests, diff_ids), pulled
//! once into one store with one set of credentials, before any unit changes; podman never
//! touches a registry. The price: podman has no image object, so shim passes what the image
//! config says (env, workdir, entrypoint/cmd) explicitly, exactly as it writes config.json for
//! runc/crun, and `podman images` lists nothing.
//!
//! Environment: every variable (image env, definitions, env_files secrets, PORT, SHIM_*) goes
//! into `<instance dir>/env` (0600, directory 0700) passed with `--env-file`, never onto the
//! command line: ExecStart is visible to anyone with `systemctl show`.
//!
//! Storage: podman's own store for shim (`--root`, `--runroot`, see [`PodmanStorage`]), apart
//! from the host's default one, so that `podman system prune` or `podman rm -a` by hand does not
//! reach shim's containers, and so that the store sits where overlay mounts work.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;

use super::runtime_args::Args;
use super::unit::{self, Exec, Prop, UnitSpec};
use super::{merge_env, plan_args, InstanceDir, InstanceKey, PlanContext};
use crate::config::ProcessDef;

/// Where podman keeps shim's containers: `--root` (graph root: container metadata, podman's
/// database) and `--runroot` (runtime state and the containers' overlay upper dirs; on tmpfs,
/// gone at reboot like the transient units).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PodmanStorage {
    /// `/var/lib/shim/podman`.
    pub root: PathBuf,
    /// `/run/shim/podman`.
    pub runroot: PathBuf,
}

impl PodmanStorage {
    /// The global flags that select this store; every podman command on shim's containers
    /// needs them (e.g. `podman --root /var/lib/shim/podman --runroot /run/shim/podman ps`).
    pub fn global_args(&self) -> Vec<String> {
        vec![
            "--root".into(),
            self.root.display().to_string(),
            "--runroot".into(),
            self.runroot.display().to_string(),
        ]
    }
}

/// Extra stop time on top of `stop_timeout`: `ExecStop` (`podman rm`) waits `stop_timeout`
/// before SIGKILL, then removes the container; systemd must not kill it while it does.
pub const STOP_MARGIN: Duration = Duration::from_secs(15);

/// The tmpfs on /tmp of a read_only instance: the same as the runc/crun bundle's.
const READ_ONLY_TMP: &str = "/tmp:rw,nosuid,nodev,mode=1777,size=65536k";

/// Whole seconds, rounded up (podman takes seconds; never stop sooner than asked).
fn secs_up(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

/// The env file's text: `KEY=VALUE` lines, taken literally by podman (no quoting, no
/// escapes), so a value with a newline cannot be passed and is refused.
pub fn render_env_file(env: &[String]) -> Result<String, String> {
    let mut out = String::new();
    for kv in env {
        if kv.contains(['\n', '\r', '\0']) {
            let name = kv.split_once('=').map_or(kv.as_str(), |(k, _)| k);
            return Err(format!(
                "env {name}: its value has a line break, which podman's --env-file cannot carry; \
                 use runtime = \"runc\" or \"crun\", or remove the line break"
            ));
        }
        out.push_str(kv);
        out.push('\n');
    }
    Ok(out)
}

/// The full environment of the instance, for its env file.
pub(super) fn plan_env(
    cx: &PlanContext<'_>,
    process: &ProcessDef,
    key: &InstanceKey,
    port: Option<u16>,
) -> Result<Vec<String>, String> {
    let env = merge_env(cx, process, key, port);
    render_env_file(&env)?;
    Ok(env)
}

fn podman(cx: &PlanContext<'_>, args: &[&str]) -> Vec<String> {
    let mut argv = vec![cx.runtime_bin.display().to_string()];
    argv.extend(cx.podman.global_args());
    argv.extend(args.iter().map(|s| s.to_string()));
    argv
}

fn exec(argv: Vec<String>, ignore_failure: bool) -> Prop {
    Prop::Exec(vec![Exec {
        path: argv[0].clone(),
        argv,
        ignore_failure,
    }])
}

/// `podman run …` for one instance.
pub fn run_argv(
    cx: &PlanContext<'_>,
    process: &ProcessDef,
    key: &InstanceKey,
    dir: &Path,
) -> Result<Vec<String>, String> {
    let opts = RunOptions {
        name: key.stem(),
        user: format!("{}:{}", cx.user.uid, cx.user.gid),
        workdir: cx
            .image
            .working_dir
            .as_deref()
            .filter(|w| !w.is_empty())
            .unwrap_or("/")
            .to_string(),
        env_file: InstanceDir(dir).env_file().display().to_string(),
        stop_signal: unit::stop_signal(cx, process),
        stop_timeout: secs_up(process.stop_timeout).to_string(),
        read_only: process.read_only,
    };
    let mut argv = vec![cx.runtime_bin.display().to_string()];
    argv.extend(cx.podman.global_args());
    argv.extend(opts.args());
    // The shared, verified rootfs with a private overlay on top (":O").
    argv.push("--rootfs".into());
    let [rootfs] = cx.lowers else {
        return Err(format!(
            "podman runs from one whole rootfs, but the image has {} layer directories here",
            cx.lowers.len()
        ));
    };
    argv.push(format!("{}:O", rootfs.display()));
    // Everything after the rootfs is the container's argv, taken verbatim by podman.
    argv.extend(plan_args(cx, process)?);
    Ok(argv)
}

/// `run` and its options for one instance, up to (not including) `--rootfs`: plain data,
/// rendered by [`Args::args`] in the order units on hosts carry.
struct RunOptions {
    /// The container's name: the instance's stem.
    name: String,
    /// `uid:gid`.
    user: String,
    workdir: String,
    env_file: String,
    stop_signal: String,
    /// Whole seconds.
    stop_timeout: String,
    read_only: bool,
}

impl Args for RunOptions {
    fn args(&self) -> Vec<String> {
        let mut a: Vec<String> = [
            "run",
            "--name",
            &self.name,
            // A leftover container of the same name (a crash between start and cleanup) is
            // replaced; the container is removed when it exits, so a restart starts afresh.
            "--replace",
            "--rm",
            "--detach",
            // conmon in the unit's cgroup, the container in a cgroup below it (Delegate=yes):
            // stopping the unit, or killing its cgroup, takes the container with it.
            "--cgroups=split",
            // conmon reports MAINPID and READY=1 (Type=notify, NotifyAccess=all).
            "--sdnotify=conmon",
            // The container's stdout/stderr are the unit's: journald tags them with the unit's
            // LogExtraFields, so `journalctl SHIM_SERVICE=…` works as with runc/crun.
            "--log-driver",
            "passthrough",
            // The host's network and hostname (ports are host ports), as for runc/crun.
            "--network",
            "host",
            "--uts",
            "host",
            // Only what shim plans reaches the container: not the host's proxy variables.
            "--http-proxy=false",
            // As `runc spec`'s default (noNewPrivileges).
            "--security-opt",
            "no-new-privileges",
            "--user",
            &self.user,
            "--workdir",
            &self.workdir,
            "--env-file",
            &self.env_file,
            "--stop-signal",
            &self.stop_signal,
            "--stop-timeout",
            &self.stop_timeout,
        ]
        .map(String::from)
        .to_vec();
        if self.read_only {
            // Read-only root with a tmpfs on /tmp only (podman would add /run and /var/tmp too).
            a.extend(
                [
                    "--read-only",
                    "--read-only-tmpfs=false",
                    "--tmpfs",
                    READ_ONLY_TMP,
                ]
                .map(String::from),
            );
        }
        a
    }
}

/// The unit of a podman instance: the runc/crun unit's shared properties (description, slice,
/// restart policy, logging fields), with the process model replaced by Quadlet's.
pub(super) fn plan_unit(
    cx: &PlanContext<'_>,
    process: &ProcessDef,
    key: &InstanceKey,
    dir: &Path,
    port: Option<u16>,
) -> Result<UnitSpec, String> {
    let base = unit::plan_unit(cx, process, key, dir, port);
    let stem = key.stem();
    let timeout = secs_up(process.stop_timeout).to_string();
    let mut props: Vec<(String, Prop)> = Vec::with_capacity(base.properties.len() + 2);
    for (k, v) in base.properties {
        match k.as_str() {
            "Type" => {
                props.push((k, Prop::Str("notify".into())));
                // READY=1 and MAINPID come from conmon, not from the process systemd started.
                props.push(("NotifyAccess".into(), Prop::Str("all".into())));
            }
            // The OCI bundle's overlay, pid file and runtime state are not used.
            "PIDFile" | "GuessMainPID" | "ExecStartPre" => {}
            // The stop signal goes to the container through podman (--stop-signal, ExecStop);
            // systemd's SIGTERM only reaches conmon, if it is still there afterwards.
            "KillSignal" => {}
            "ExecStart" => {
                props.push((k, exec(run_argv(cx, process, key, dir)?, false)));
                // Stop like `docker stop`: the stop signal, stop_timeout, then SIGKILL.
                props.push((
                    "ExecStop".into(),
                    exec(
                        podman(
                            cx,
                            &["rm", "--force", "--ignore", "--time", &timeout, &stem],
                        ),
                        false,
                    ),
                ));
            }
            // Whatever is left (conmon was killed, ExecStop failed): removed at once.
            // Idempotent, and must not turn a clean stop into a failure.
            "ExecStopPost" => props.push((
                k,
                exec(
                    podman(cx, &["rm", "--force", "--ignore", "--time", "0", &stem]),
                    true,
                ),
            )),
            "TimeoutStopUSec" => {
                props.push((k, unit::usec(process.stop_timeout + STOP_MARGIN)));
            }
            _ => props.push((k, v)),
        }
    }
    Ok(UnitSpec {
        name: base.name,
        properties: props,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_file_is_literal_lines_and_refuses_line_breaks() {
        assert_eq!(
            render_env_file(&["A=1".into(), "B=x y 'z'".into(), "C=".into()]).unwrap(),
            "A=1\nB=x y 'z'\nC=\n"
        );
        let err = render_env_file(&["KEY=-----BEGIN\nxyz".into()]).unwrap_err();
        assert!(err.starts_with("env KEY:"), "{err}");
    }

    #[test]
    fn stop_timeout_rounds_up() {
        assert_eq!(secs_up(Duration::from_secs(5)), 5);
        assert_eq!(secs_up(Duration::from_millis(1500)), 2);
        assert_eq!(secs_up(Duration::ZERO), 0);
    }
}
