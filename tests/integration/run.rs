//! `shim run` against real systemd, runc/crun and journald in the sandbox: exit codes, stdin,
//! output in the journal, signals, a pty session driven through tmux, --detach, and cleanup
//! after shim itself is SIGKILLed.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::common::*;

fn run_toml(id: &str, runtime: &str) -> String {
    format!(
        r#"
[shim]
port_range = [26000, 26999]

[services.{id}]
image = "oci:{{layout}}:{{revision}}"
runtime = "{runtime}"
env = {{ FROM_DEFINITION = "yes" }}

[services.{id}.processes.web]
count = 1
health = {{ path = "/health" }}

[services.{id}.processes.quick]
command = ["/bin/sleep", "1000"]
count = 0
stop_timeout = "2s"
env = {{ FROM_PROCESS = "quick" }}
"#
    )
}

fn shim_cmd(config: &std::path::Path) -> Command {
    let mut c = Command::new(SHIM);
    c.arg("--config").arg(config);
    c
}

/// Nothing of any run of `id` is left: units, runtime state, bundles, mounts.
fn assert_no_run_left(id: &str, runtime: &str) {
    wait_for(Duration::from_secs(20), "run units to go", || {
        units_matching(&format!("shimrun-{id}-*"))
            .is_empty()
            .then_some(())
    });
    let left: Vec<String> = runtime_containers(runtime)
        .into_iter()
        .filter(|c| c.starts_with(&format!("shimrun-{id}-")))
        .collect();
    assert!(left.is_empty(), "runtime state left: {left:?}");
    let dir = std::path::PathBuf::from(format!("/run/shim/runs/{id}"));
    let bundles: Vec<_> = std::fs::read_dir(&dir)
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(bundles.is_empty(), "bundles left: {bundles:?}");
    let m = mounts_containing(&format!("/run/shim/runs/{id}/"));
    assert!(m.is_empty(), "mounts left: {m:?}");
}

/// The pid of the run's container process whose argv[0] is `argv0` (not `runc init` any more).
fn command_pid(unit: &str, argv0: &str) -> Option<u32> {
    cgroup_pids(&unit_cgroup(unit).join("container"))
        .into_iter()
        .find(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .ok()
                .and_then(|c| c.split(|b| *b == 0).next().map(|a| a == argv0.as_bytes()))
                .unwrap_or(false)
        })
}

/// `shim run --id ID --revision rev1 ARGS…`, waited for.
fn shim_run(config: &std::path::Path, id: &str, args: &[&str]) -> std::process::Output {
    run(shim_cmd(config)
        .args(["run", "--id", id, "--revision", "rev1"])
        .args(args))
}

/// Starts `shim run --id ID --revision rev1 ARGS…` with piped output and waits until the
/// command `argv0` runs in its container; returns the child, the unit and the command's pid.
fn spawn_run(
    config: &std::path::Path,
    id: &str,
    args: &[&str],
    argv0: &str,
) -> (std::process::Child, String, u32) {
    let child = shim_cmd(config)
        .args(["run", "--id", id, "--revision", "rev1"])
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn shim run");
    let (unit, pid) = wait_for(Duration::from_secs(20), "the run's command", || {
        units_matching(&format!("shimrun-{id}-*.service"))
            .into_iter()
            .find(|u| unit_prop(u, "ActiveState") == "active")
            .and_then(|u| command_pid(&u, argv0).map(|p| (u, p)))
    });
    (child, unit, pid)
}

fn exit_codes_and_output(id: &str, runtime: &str) {
    let cfg = TestConfig::new(&run_toml(id, runtime));
    let c = cfg.path();

    // 0, with stdout and stderr apart, and the definition's env.
    let o = shim_run(
        c,
        id,
        &[
            "--",
            "/bin/sh",
            "-c",
            "echo out:$FROM_DEFINITION:$SHIM_SERVICE:$SHIM_REVISION; echo err >&2",
        ],
    );
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(stdout(&o), format!("out:yes:{id}:rev1\n"));
    assert!(stderr(&o).contains("err"), "{}", stderr(&o));

    // 1 and any other status are passed through.
    for code in [1, 42] {
        let o = shim_run(c, id, &["--", "/bin/sh", "-c", &format!("exit {code}")]);
        assert_eq!(o.status.code(), Some(code), "{}", stderr(&o));
    }

    // --process borrows that process's env.
    let o = shim_run(
        c,
        id,
        &[
            "--process",
            "quick",
            "--",
            "/bin/sh",
            "-c",
            "echo $FROM_PROCESS",
        ],
    );
    assert_eq!(stdout(&o), "quick\n", "{}", stderr(&o));

    // 137: the container's init SIGKILLed from outside.
    let (child, _unit, pid) = spawn_run(c, id, &["--", "sleep", "300"], "sleep");
    // From the host, as the OOM killer or an operator's `kill -9` would.
    let o = run(Command::new("kill").args(["-KILL", &pid.to_string()]));
    assert!(o.status.success(), "kill: {}", stderr(&o));
    let out = child.wait_with_output().expect("wait shim run");
    assert_eq!(out.status.code(), Some(137), "{}", stderr(&out));
    assert!(!pid_alive(pid));
    assert_no_run_left(id, runtime);
}

#[test]
fn run_exit_codes_and_output_runc() {
    if !in_sandbox() {
        return;
    }
    exit_codes_and_output("runrc", "runc");
}

#[test]
fn run_exit_codes_and_output_crun() {
    if !in_sandbox() {
        return;
    }
    if !crun_can_filter_devices() {
        let cfg = TestConfig::new(&run_toml("runcr", "crun"));
        assert_crun_refused(
            cfg.path(),
            &["run", "--id", "runcr", "--revision", "rev1", "--", "true"],
            "shimrun-runcr-*",
        );
        return;
    }
    exit_codes_and_output("runcr", "crun");
}

#[test]
fn run_stdin_journal_detach_and_bad_input() {
    if !in_sandbox() {
        return;
    }
    let id = "runio";
    let cfg = TestConfig::new(&run_toml(id, "runc"));
    let c = cfg.path();

    // -i pipes stdin through, EOF included.
    let mut child = shim_cmd(c)
        .args([
            "run",
            "--id",
            id,
            "--revision",
            "rev1",
            "-i",
            "--",
            "/bin/sh",
            "-c",
            "tr a-z A-Z; echo journal-marker-$$",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(b"piped line one\nline two\n")
        .expect("write stdin");
    let out = child.wait_with_output().expect("wait");
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(
        text.starts_with("PIPED LINE ONE\nLINE TWO\njournal-marker-"),
        "{text}"
    );

    // ... and the output is in the journal, tagged.
    let _ = run(Command::new("journalctl").arg("--sync"));
    let j = run(Command::new("journalctl").args([
        "--no-pager",
        "-o",
        "json",
        &format!("SHIM_SERVICE={id}"),
    ]));
    let entries: Vec<serde_json::Value> = stdout(&j)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let line = entries
        .iter()
        .find(|e| e["MESSAGE"] == "PIPED LINE ONE")
        .unwrap_or_else(|| panic!("output not in the journal: {entries:?}"));
    assert_eq!(line["SHIM_REVISION"], "rev1");
    assert!(line["SHIM_RUN"]
        .as_str()
        .is_some_and(|u| u.starts_with(&format!("shimrun-{id}-rev1-"))));

    // Without -i the command reads /dev/null, not shim's stdin.
    let mut child = shim_cmd(c)
        .args(["run", "--id", id, "--revision", "rev1", "--", "cat"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn");
    let _ = child.stdin.as_mut().expect("stdin").write_all(b"ignored\n");
    let out = child.wait_with_output().expect("wait");
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(stdout(&out), "");

    // SIGTERM to shim reaches the command, which exits on its own terms.
    let (child, _, _) = spawn_run(
        c,
        id,
        &[
            "--",
            "/bin/sh",
            "-c",
            "trap 'echo got-term; exit 7' TERM; echo ready; while true; do sleep 0.1; done",
        ],
        "/bin/sh",
    );
    std::thread::sleep(Duration::from_millis(300));
    let _ = run(Command::new("kill").args(["-TERM", &child.id().to_string()]));
    let out = child.wait_with_output().expect("wait");
    assert_eq!(out.status.code(), Some(7), "{}", stderr(&out));
    assert!(stdout(&out).contains("got-term"), "{}", stdout(&out));

    // --detach prints the unit and returns; the command runs on, output in the journal.
    let o = shim_run(
        c,
        id,
        &[
            "--detach",
            "--",
            "/bin/sh",
            "-c",
            "sleep 1; echo detached-done",
        ],
    );
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let unit = stdout(&o).trim().to_string();
    assert!(unit.starts_with(&format!("shimrun-{id}-rev1-")) && unit.ends_with(".service"));
    wait_for(Duration::from_secs(20), "the detached output", || {
        let j = run(Command::new("journalctl").args(["--no-pager", "-o", "cat", "-u", &unit]));
        stdout(&j).contains("detached-done").then_some(())
    });

    // Bad input: exit 2, nothing started.
    let o = shim_run(c, id, &["--process", "nope", "--", "true"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("no such process"), "{}", stderr(&o));
    let o = run(shim_cmd(c).args(["run", "--id", id, "--", "true"]));
    assert_eq!(o.status.code(), Some(2), "no current revision yet");
    assert!(stderr(&o).contains("--revision"), "{}", stderr(&o));
    assert_no_run_left(id, "runc");
}

#[test]
fn run_killed_shim_leaves_nothing() {
    if !in_sandbox() {
        return;
    }
    let id = "runkill";
    let cfg = TestConfig::new(&run_toml(id, "runc"));
    // `quick` stops within 2 s (sleep as the container's init ignores SIGTERM, so it is
    // SIGKILLed at stop_timeout).
    let (mut child, _, pid) = spawn_run(
        cfg.path(),
        id,
        &["--process", "quick", "--", "sleep", "1000"],
        "sleep",
    );
    child.kill().expect("SIGKILL shim");
    let _ = child.wait();
    wait_for(Duration::from_secs(20), "the container to be gone", || {
        (!pid_alive(pid)).then_some(())
    });
    assert_no_run_left(id, "runc");
}

/// tmux helpers: a detached session running a command, keys, and the screen.
fn tmux(args: &[&str]) -> String {
    let o = run(Command::new("tmux").args(["-L", "shimtest"]).args(args));
    stdout(&o)
}

fn screen() -> String {
    tmux(&["capture-pane", "-p", "-t", "t"])
}

/// Waits until the screen satisfies `f`; on timeout, fails showing the last screen.
fn wait_screen(what: &str, f: impl Fn(&str) -> bool) -> String {
    let start = std::time::Instant::now();
    loop {
        let s = screen();
        if f(&s) {
            return s;
        }
        if start.elapsed() > Duration::from_secs(20) {
            panic!("timed out waiting for {what}; the screen:\n{s}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn run_tty_console_through_tmux() {
    if !in_sandbox() {
        return;
    }
    let id = "runtty";
    let cfg = TestConfig::new(&run_toml(id, "runc"));
    let cmd = format!(
        "{SHIM} --config {} run --id {id} --revision rev1 -t -- /bin/sh; echo EXIT=$?; sleep 60",
        cfg.path().display()
    );
    let _ = tmux(&["kill-server"]);
    tmux(&[
        "new-session",
        "-d",
        "-s",
        "t",
        "-x",
        "120",
        "-y",
        "30",
        &cmd,
    ]);
    wait_screen("the shell prompt", |s| s.contains("/app #"));

    // A command and its answer; the terminal is a real pty of the caller's size.
    tmux(&[
        "send-keys",
        "-t",
        "t",
        "echo answer-$((6*7)); tty; stty size",
        "Enter",
    ]);
    // (`stty size` prints "rows cols"; the screen is read until its answer is there.)
    let s = wait_screen("the answer and the size 30 120", |s| {
        s.contains("answer-42") && s.lines().any(|l| l.trim() == "30 120")
    });
    assert!(s.contains("/dev/pts/"), "{s}");

    // Ctrl-C interrupts the foreground command, not the session.
    tmux(&["send-keys", "-t", "t", "sleep 100", "Enter"]);
    std::thread::sleep(Duration::from_millis(500));
    tmux(&["send-keys", "-t", "t", "C-c"]);
    tmux(&[
        "send-keys",
        "-t",
        "t",
        "echo after-$((1+1))-ctrl-c",
        "Enter",
    ]);
    wait_screen("the shell after Ctrl-C", |s| s.contains("after-2-ctrl-c"));

    // The window size follows the caller's terminal.
    tmux(&["resize-window", "-t", "t", "-x", "100", "-y", "25"]);
    std::thread::sleep(Duration::from_millis(500));
    tmux(&["send-keys", "-t", "t", "clear; stty size", "Enter"]);
    wait_screen("the new size 25 100", |s| {
        s.lines().any(|l| l.trim() == "25 100")
    });

    // Job control works in the shell.
    tmux(&["send-keys", "-t", "t", "sleep 200 &", "Enter"]);
    tmux(&["send-keys", "-t", "t", "jobs", "Enter"]);
    wait_screen("a background job", |s| s.contains("Running"));
    tmux(&["send-keys", "-t", "t", "kill %1; exit 5", "Enter"]);
    wait_screen("the exit code", |s| s.contains("EXIT=5"));
    let _ = tmux(&["kill-server"]);
    assert_no_run_left(id, "runc");
}
