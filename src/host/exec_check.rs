//! Command health checks (`health = { command = [...] }`): `runc exec` / `crun exec` of the
//! check's argv in the instance's container, as `podman healthcheck run` does with conmon's
//! help, but with nothing resident: the probe (or the upgrade's health gate) starts the
//! runtime's `exec`, and the check is healthy when it exits 0 before its timeout.
//!
//! Several checks run at once: all are started, then waited for until each one's deadline. A
//! check past its deadline gets SIGTERM (the runtime's `exec` passes it on to the process in
//! the container), then SIGKILL 200 ms later; whatever it left behind in the container dies
//! with the instance's cgroup at the latest.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::host::http_check::{Check, Request};

/// How long a check that got SIGTERM at its deadline has before SIGKILL.
const TERM_GRACE: Duration = Duration::from_millis(200);

/// How often running checks are looked at while waiting.
const POLL: Duration = Duration::from_millis(2);

/// The argv of a command check (pure): `RUNTIME exec CONTAINER ARGV…`.
pub fn exec_argv(runtime: &str, container: &str, argv: &[String]) -> Vec<String> {
    let mut v = vec![runtime.to_string(), "exec".into(), container.to_string()];
    v.extend(argv.iter().cloned());
    v
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
}

/// The command checks of one batch, started.
pub struct Running {
    jobs: Vec<Job>,
    /// Checks that could not start, with why.
    failed: Vec<(usize, Check)>,
}

impl Running {
    /// Starts every command check among `reqs` (the others are not looked at).
    pub fn start(reqs: &[Request<'_>], start: Instant) -> Running {
        let mut r = Running {
            jobs: Vec::new(),
            failed: Vec::new(),
        };
        for (index, req) in reqs.iter().enumerate() {
            let Some(e) = req.exec else { continue };
            let bin = match crate::host::runtime::runtime_binary(e.runtime) {
                Ok(b) => b.display().to_string(),
                Err(err) => {
                    r.failed.push((index, Check::NoAnswer(format!("{err:#}"))));
                    continue;
                }
            };
            r.spawn(
                index,
                &exec_argv(&bin, &e.container, &e.argv),
                start,
                req.timeout,
            );
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
                    Some(c) => out.push((self.jobs.swap_remove(i).index, c)),
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
                &["bin/check".into(), "-q".into()]
            ),
            [
                "/usr/sbin/runc",
                "exec",
                "shim-app-web-r1-1",
                "bin/check",
                "-q"
            ]
        );
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
