//! Command health checks (`health = { command = [...] }`): `runc exec` / `crun exec` of the
//! check's argv in the instance's container, as `podman healthcheck run` does with conmon's
//! help, but with nothing resident: the probe (or the upgrade's health gate) starts the
//! runtime's `exec`, and the check is healthy when it exits 0 before its timeout.
//!
//! The check runs as the container's own process does: `exec --process FILE` with the
//! `process` of the instance's bundle (`config.json`: user, environment, working directory,
//! capabilities, rlimits, no-new-privileges), only its `args` replaced, for runc and crun
//! alike (crun's `exec` without `--process` would run as root with an empty environment).
//!
//! Several checks run at once: all are started, then waited for until each one's deadline. A
//! check past its deadline gets SIGTERM (the runtime's `exec` passes it on), then, 200 ms
//! later, SIGKILL to the process in the container (its pid from `--pid-file`) and to the
//! runtime's `exec`; what it may have forked dies with the instance's cgroup at the latest.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use oci_spec::runtime::{Process, Spec};

use crate::plan::health::{Check, Container};

/// How long a check that got SIGTERM at its deadline has before SIGKILL.
const TERM_GRACE: Duration = Duration::from_millis(200);

/// How often running checks are looked at while waiting.
const POLL: Duration = Duration::from_millis(2);

/// The argv of a command check (pure): `RUNTIME exec --process P --pid-file F CONTAINER`,
/// built by `plan::runtime_args::Exec` like every other runtime command line.
pub fn exec_argv(runtime: &str, container: &str, process: &Path, pid_file: &Path) -> Vec<String> {
    crate::plan::runtime_args::argv(
        Path::new(runtime),
        &crate::plan::runtime_args::Exec {
            process,
            pid_file,
            id: container,
        },
    )
}

/// The process a command check runs (pure): the container's own `process` (from its
/// bundle's `config.json`) with `args` replaced by `argv`, without a terminal.
pub fn check_process(spec: &Spec, argv: &[String]) -> Result<Process, String> {
    let mut p = spec.process().clone().ok_or("config.json has no process")?;
    p.set_args(Some(argv.to_vec()));
    p.set_terminal(Some(false));
    p.set_console_size(None);
    Ok(p)
}

/// The process of a command check of `container`: read from its bundle, as [`check_process`]
/// makes it.
pub fn load_process(container: &Container, argv: &[String]) -> Result<Process, String> {
    let config = container.bundle.join("config.json");
    let text = std::fs::read_to_string(&config)
        .map_err(|err| format!("reading {}: {err}", config.display()))?;
    let spec: Spec =
        serde_json::from_str(&text).map_err(|e| format!("{}: {e}", config.display()))?;
    check_process(&spec, argv)
}

/// One command check to run: `process` in `container`, healthy when it exits 0 within
/// `timeout`.
pub struct CommandCheck<'a> {
    /// Its place in the caller's batch, which the verdicts are keyed by.
    pub index: usize,
    pub container: &'a Container,
    pub process: Result<Process, String>,
    pub timeout: Duration,
}

/// Where the check's process file and pid file go: in the instance's directory (0700), with
/// names of their own per check.
fn check_files(bundle: &Path) -> (PathBuf, PathBuf) {
    let n = format!(
        "{}-{:x}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0)
    );
    (
        bundle.join(format!("health-{n}.json")),
        bundle.join(format!("health-{n}.pid")),
    )
}

/// The verdict on an exited check (pure): 0 healthy, else the status (a signal negated).
pub fn verdict(status: std::process::ExitStatus) -> Check {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(0), _) => Check::Passed,
        (Some(n), _) => Check::Exited(n),
        (None, Some(sig)) => Check::Exited(-sig),
        (None, None) => Check::NoAnswer("exited without a status".into()),
    }
}

struct Job {
    index: usize,
    child: Child,
    deadline: Instant,
    timeout: Duration,
    termed: Option<Instant>,
    /// The process and pid files, removed when the check is over.
    files: Vec<PathBuf>,
}

/// The command checks of one batch, started.
pub struct Running {
    jobs: Vec<Job>,
    /// Checks that could not start, with why.
    failed: Vec<(usize, Check)>,
}

impl Running {
    /// Starts every check of `checks` (a check whose process could not be made fails here).
    pub fn start(checks: Vec<CommandCheck<'_>>, start: Instant) -> Running {
        let mut r = Running {
            jobs: Vec::new(),
            failed: Vec::new(),
        };
        for c in checks {
            let index = c.index;
            let bin = match crate::host::runtime::runtime_binary(c.container.runtime) {
                Ok(b) => b.display().to_string(),
                Err(err) => {
                    r.failed.push((index, Check::NoAnswer(format!("{err:#}"))));
                    continue;
                }
            };
            let (process, pid_file) = check_files(&c.container.bundle);
            let written = c.process.and_then(|p| {
                let text = serde_json::to_string(&p).map_err(|e| e.to_string())?;
                crate::host::fsutil::write_atomic(&process, text.as_bytes(), 0o600)
                    .map_err(|err| format!("{err:#}"))
            });
            if let Err(err) = written {
                r.failed.push((index, Check::NoAnswer(err)));
                continue;
            }
            let argv = exec_argv(&bin, &c.container.name, &process, &pid_file);
            r.spawn(index, &argv, start, c.timeout);
            match r.jobs.last_mut() {
                Some(j) if j.index == index => j.files = vec![process, pid_file],
                _ => {
                    let _ = std::fs::remove_file(&process);
                }
            }
        }
        r
    }

    /// Starts `argv` as check `index`, due `timeout` after `start`.
    fn spawn(&mut self, index: usize, argv: &[String], start: Instant, timeout: Duration) {
        let Some((bin, args)) = argv.split_first() else {
            self.failed
                .push((index, Check::NoAnswer("empty command".into())));
            return;
        };
        let spawned = Command::new(bin)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
        match spawned {
            Ok(child) => self.jobs.push(Job {
                index,
                child,
                deadline: start + timeout,
                timeout,
                termed: None,
                files: Vec::new(),
            }),
            Err(err) => self
                .failed
                .push((index, Check::NoAnswer(format!("running {bin}: {err}")))),
        }
    }

    /// Waits for every started check (each until its deadline, then stopped); the verdicts by
    /// request index.
    pub fn wait(&mut self) -> Vec<(usize, Check)> {
        let mut out = std::mem::take(&mut self.failed);
        while !self.jobs.is_empty() {
            let now = Instant::now();
            let mut i = 0;
            while i < self.jobs.len() {
                match self.poll_job(i, now) {
                    Some(c) => {
                        let j = self.jobs.swap_remove(i);
                        for f in &j.files {
                            let _ = std::fs::remove_file(f);
                        }
                        out.push((j.index, c));
                    }
                    None => i += 1,
                }
            }
            if !self.jobs.is_empty() {
                std::thread::sleep(POLL);
            }
        }
        out
    }

    /// The verdict of job `i` if it is over (exited, or killed after its deadline).
    fn poll_job(&mut self, i: usize, now: Instant) -> Option<Check> {
        let j = &mut self.jobs[i];
        let timed_out = || Check::NoAnswer(format!("command timed out after {:?}", j.timeout));
        match j.child.try_wait() {
            Ok(Some(_)) if j.termed.is_some() => Some(timed_out()),
            Ok(Some(st)) => Some(verdict(st)),
            Err(e) => Some(Check::NoAnswer(format!("waiting for the check: {e}"))),
            Ok(None) if now < j.deadline => None,
            Ok(None) => match j.termed {
                None => {
                    let pid = nix::unistd::Pid::from_raw(j.child.id() as i32);
                    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
                    j.termed = Some(now);
                    None
                }
                Some(t) if now.duration_since(t) < TERM_GRACE => None,
                Some(_) => {
                    // The process in the container first (the runtime does not pass SIGKILL
                    // on), then the runtime's exec.
                    if let Some(pid) = j
                        .files
                        .get(1)
                        .and_then(|f| std::fs::read_to_string(f).ok())
                        .and_then(|t| t.trim().parse::<i32>().ok())
                        .filter(|p| *p > 1)
                    {
                        let _ = nix::sys::signal::kill(
                            nix::unistd::Pid::from_raw(pid),
                            nix::sys::signal::Signal::SIGKILL,
                        );
                    }
                    let _ = j.child.kill();
                    let _ = j.child.wait();
                    Some(timed_out())
                }
            },
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        for j in &mut self.jobs {
            let _ = j.child.kill();
            let _ = j.child.wait();
            for f in &j.files {
                let _ = std::fs::remove_file(f);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::ExitStatusExt;

    #[test]
    fn argv_and_verdicts() {
        assert_eq!(
            exec_argv(
                "/usr/sbin/runc",
                "shim-app-web-r1-1",
                Path::new("/b/health-1.json"),
                Path::new("/b/health-1.pid")
            ),
            [
                "/usr/sbin/runc",
                "exec",
                "--process",
                "/b/health-1.json",
                "--pid-file",
                "/b/health-1.pid",
                "shim-app-web-r1-1"
            ]
        );
        let config = r#"{"ociVersion":"1.0.2","process":{"terminal":true,"consoleSize":{"height":1,"width":1},"user":{"uid":1234,"gid":1234},"args":["bin/app"],"env":["PORT=20001","A=b"],"cwd":"/app"},"root":{"path":"rootfs"}}"#;
        let spec: Spec = serde_json::from_str(config).unwrap();
        let p = serde_json::to_value(check_process(&spec, &["bin/check".into()]).unwrap()).unwrap();
        assert_eq!(p["args"], serde_json::json!(["bin/check"]));
        assert_eq!(p["user"]["uid"], 1234);
        assert_eq!(p["env"][0], "PORT=20001");
        assert_eq!(
            (p["cwd"].as_str(), p["terminal"].as_bool()),
            (Some("/app"), Some(false))
        );
        assert!(p.get("consoleSize").is_none());
        let mut bare = spec.clone();
        bare.set_process(None);
        assert!(check_process(&bare, &[]).is_err());
        assert_eq!(
            verdict(std::process::ExitStatus::from_raw(0)),
            Check::Passed
        );
        assert_eq!(
            verdict(std::process::ExitStatus::from_raw(3 << 8)),
            Check::Exited(3)
        );
        assert_eq!(
            verdict(std::process::ExitStatus::from_raw(9)),
            Check::Exited(-9)
        );
        assert!(Check::Passed.healthy() && !Check::Exited(1).healthy());
        assert_eq!(Check::Exited(-9).to_string(), "command killed by signal 9");
    }

    #[test]
    fn checks_run_at_once_and_each_stops_at_its_deadline() {
        let sh = |c: &str| vec!["/bin/sh".to_string(), "-c".into(), c.into()];
        let start = Instant::now();
        let mut r = Running {
            jobs: Vec::new(),
            failed: Vec::new(),
        };
        r.spawn(0, &sh("exit 0"), start, Duration::from_secs(5));
        r.spawn(1, &sh("exit 3"), start, Duration::from_secs(5));
        // Ignores SIGTERM: needs the SIGKILL after the grace.
        r.spawn(
            2,
            &sh("trap '' TERM; sleep 30"),
            start,
            Duration::from_millis(300),
        );
        r.spawn(3, &sh("sleep 30"), start, Duration::from_millis(300));
        r.spawn(
            4,
            &["/nonexistent/check".to_string()],
            start,
            Duration::from_secs(1),
        );
        let mut out = r.wait();
        out.sort_by_key(|(i, _)| *i);
        let took = start.elapsed();
        assert_eq!(out[0], (0, Check::Passed));
        assert_eq!(out[1], (1, Check::Exited(3)));
        assert!(
            matches!(&out[2].1, Check::NoAnswer(m) if m.contains("timed out")),
            "{out:?}"
        );
        assert!(
            matches!(&out[3].1, Check::NoAnswer(m) if m.contains("timed out")),
            "{out:?}"
        );
        assert!(
            matches!(&out[4].1, Check::NoAnswer(m) if m.contains("/nonexistent/check")),
            "{out:?}"
        );
        assert!(
            took < Duration::from_secs(2),
            "checks ran one after another: {took:?}"
        );
    }
}
