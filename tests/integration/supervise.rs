//! Supervision against real systemd in the sandbox: the probe timer (hung and missing
//! instances, quiet when healthy), crash-loop backoff on systemd 252, pause/resume, and
//! `shim reconcile`. The reboot scenario cannot run from inside the sandbox: it is
//! tests/reboot-test.sh, run from the host by tests/run-integration.sh.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::common::*;

/// A service with a web process probed every second.
fn web_toml(id: &str, count: u32, unhealthy_after: u32) -> String {
    format!(
        r#"
[shim]
port_range = [25000, 25999]
restart_max_delay = "8s"

[services.{id}]
image = "oci:{{layout}}:{{revision}}"

[services.{id}.processes.web]
count = {count}
health = {{ path = "/health", interval = "1s", timeout = "1s", unhealthy_after = {unhealthy_after}, start_period = "1s" }}
stop_timeout = "3s"
"#
    )
}

fn row(rows: &[serde_json::Value], instance: u64) -> &serde_json::Value {
    rows.iter()
        .find(|r| r["instance"] == instance)
        .unwrap_or_else(|| panic!("no instance {instance} in {rows:?}"))
}

fn port(r: &serde_json::Value) -> u16 {
    r["port"].as_u64().expect("port") as u16
}

fn unit(r: &serde_json::Value) -> String {
    r["unit"].as_str().expect("unit").to_string()
}

fn main_pid(unit: &str) -> u32 {
    unit_prop(unit, "MainPID").parse().unwrap_or(0)
}

/// A journal position, to read only what comes after it.
fn journal_cursor() -> String {
    let o = run(Command::new("journalctl").args(["-n", "0", "--show-cursor", "--no-pager"]));
    let s = stdout(&o);
    s.lines()
        .find_map(|l| l.strip_prefix("-- cursor: "))
        .unwrap_or_else(|| panic!("no cursor in {s:?}"))
        .trim()
        .to_string()
}

/// Journal entries after `cursor` matching `matches`, as JSON objects. (`--cursor` and not
/// `--after-cursor`, which finds nothing together with field matches in journalctl 252.)
fn journal_since(cursor: &str, matches: &[&str]) -> Vec<serde_json::Value> {
    let _ = run(Command::new("journalctl").args(["--sync"]));
    let o = run(Command::new("journalctl")
        .args(["--no-pager", "-o", "json", "--cursor", cursor])
        .args(matches));
    stdout(&o)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|e| e["__CURSOR"].as_str() != Some(cursor))
        .collect()
}

fn field<'a>(e: &'a serde_json::Value, k: &str) -> &'a str {
    e[k].as_str().unwrap_or_default()
}

fn wait_probe_runs(id: &str, n: u32) {
    let svc = format!("shim-probe-{id}.service");
    let mut seen = Vec::new();
    wait_for(Duration::from_secs(10 * n as u64), "probe runs", || {
        let t = unit_prop(&svc, "ExecMainStartTimestampMonotonic");
        if t != "0" && !t.is_empty() && !seen.contains(&t) {
            seen.push(t);
        }
        (seen.len() as u32 > n).then_some(())
    });
}

/// kill -9 of a container's init: systemd's own Restart= brings it back; the probe does
/// not need to act.
#[test]
fn killed_container_is_restarted_by_systemd() {
    require_sandbox!();
    let id = "sup_kill";
    let cfg = TestConfig::new(&web_toml(id, 2, 3));
    let cursor = journal_cursor();
    shim_ok(cfg.path(), &["start", "--id", id, "--revision", "rev1"]);
    let rows = status(cfg.path(), id);
    let u = unit(row(&rows, 1));
    let pid = main_pid(&u);
    let o = run(Command::new("kill").args(["-9", &pid.to_string()]));
    assert!(o.status.success(), "{}", stderr(&o));
    let t = Instant::now();
    wait_for(Duration::from_secs(20), "the killed instance back", || {
        let p = main_pid(&u);
        (p != 0 && p != pid && unit_prop(&u, "ActiveState") == "active").then_some(())
    });
    let body = wait_answer(port(row(&rows, 1)));
    eprintln!(
        "kill -9: answering again after {} ms",
        t.elapsed().as_millis()
    );
    assert!(body.contains("revision=rev1"), "{body}");
    assert_eq!(unit_prop(&u, "NRestarts"), "1");
    let acted = journal_since(
        &cursor,
        &[&format!("SHIM_SERVICE={id}"), "SHIM_ACTION=kill"],
    );
    assert!(acted.is_empty(), "the probe acted: {acted:?}");
    shim_ok(cfg.path(), &["stop", "--id", id]);
}

/// A hung instance (alive, /health not answering) is killed by the probe after
/// `unhealthy_after` failed checks and restarted by systemd, within interval × unhealthy_after
/// plus a check timeout, RestartSec and its boot; the reason is in the journal.
#[test]
fn hung_instance_is_replaced() {
    require_sandbox!();
    let id = "sup_hang";
    let cfg = TestConfig::new(&web_toml(id, 2, 2));
    shim_ok(cfg.path(), &["start", "--id", id, "--revision", "rev1"]);
    let rows = status(cfg.path(), id);
    let (hung, other) = (row(&rows, 1), row(&rows, 2));
    let (u, p) = (unit(hung), port(hung));
    let pid = main_pid(&u);
    let other_pid = main_pid(&unit(other));
    // Past start_period, so the probe checks it.
    std::thread::sleep(Duration::from_millis(1200));
    let cursor = journal_cursor();
    let t = Instant::now();
    assert_eq!(http_get(p, "/admin/hang").map(|r| r.0), Some(200));
    let detected = wait_for(
        Duration::from_secs(20),
        "the kill of the hung instance",
        || (main_pid(&u) != pid).then(|| t.elapsed()),
    );
    wait_for(
        Duration::from_secs(20),
        "the replaced instance healthy",
        || http_get(p, "/health").filter(|(c, _)| *c == 200),
    );
    let healthy = t.elapsed();
    eprintln!(
        "hung instance: detected (killed) after {} ms, healthy again after {} ms",
        detected.as_millis(),
        healthy.as_millis()
    );
    // interval 1 s × unhealthy_after 2 + 1 s check timeout + RestartSec 2 s + boot, + slack.
    assert!(
        healthy < Duration::from_secs(8),
        "took {healthy:?} to replace a hung instance"
    );
    assert_eq!(
        main_pid(&unit(other)),
        other_pid,
        "the healthy one was touched"
    );
    let e = journal_since(
        &cursor,
        &[&format!("SHIM_SERVICE={id}"), "SHIM_ACTION=kill"],
    );
    assert_eq!(e.len(), 1, "{e:?}");
    assert_eq!(field(&e[0], "SHIM_INSTANCE"), "1");
    assert_eq!(field(&e[0], "SHIM_UNIT"), u);
    assert!(
        field(&e[0], "SHIM_REASON").contains("2 consecutive failed health checks"),
        "{e:?}"
    );
    assert_eq!(field(&e[0], "PRIORITY"), "4");
    shim_ok(cfg.path(), &["stop", "--id", id]);
}

/// An instance stopped behind shim's back is started again by the probe.
#[test]
fn missing_instance_is_started_again() {
    require_sandbox!();
    let id = "sup_miss";
    let cfg = TestConfig::new(&web_toml(id, 2, 3));
    shim_ok(cfg.path(), &["start", "--id", id, "--revision", "rev1"]);
    let rows = status(cfg.path(), id);
    let r = row(&rows, 2);
    let u = unit(r);
    let cursor = journal_cursor();
    let o = run(Command::new("systemctl").args(["stop", &u]));
    assert!(o.status.success(), "{}", stderr(&o));
    let t = Instant::now();
    wait_for(Duration::from_secs(10), "the missing instance back", || {
        (unit_prop(&u, "ActiveState") == "active").then_some(())
    });
    let body = wait_answer(port(r));
    eprintln!(
        "missing instance: running again after {} ms",
        t.elapsed().as_millis()
    );
    assert!(body.contains("instance=2"), "{body}");
    let e = journal_since(
        &cursor,
        &[&format!("SHIM_SERVICE={id}"), "SHIM_ACTION=start"],
    );
    assert_eq!(e.len(), 1, "{e:?}");
    assert_eq!(field(&e[0], "SHIM_UNIT"), u);
    shim_ok(cfg.path(), &["stop", "--id", id]);
    assert!(
        units_matching(&format!("shim-probe-{id}.*")).is_empty(),
        "stop left the probe timer: {:?}",
        units_matching(&format!("shim-probe-{id}.*"))
    );
}

/// A healthy service's probe runs leave nothing in the journal.
#[test]
fn probe_is_quiet_when_healthy() {
    require_sandbox!();
    let id = "sup_quiet";
    let cfg = TestConfig::new(&web_toml(id, 2, 3));
    shim_ok(cfg.path(), &["start", "--id", id, "--revision", "rev1"]);
    assert_eq!(
        unit_prop(&format!("shim-probe-{id}.timer"), "ActiveState"),
        "active"
    );
    // Past start_period, so that the runs below check health.
    std::thread::sleep(Duration::from_millis(1500));
    let cursor = journal_cursor();
    wait_probe_runs(id, 3);
    let probe = format!("shim-probe-{id}.service");
    let lines = journal_since(&cursor, &["-u", &probe]);
    let tagged = journal_since(&cursor, &[&format!("SHIM_SERVICE={id}")]);
    let ours: Vec<_> = tagged
        .iter()
        .filter(|e| field(e, "SYSLOG_IDENTIFIER") == "shim-probe")
        .collect();
    assert!(lines.is_empty(), "healthy probe runs logged: {lines:?}");
    assert!(ours.is_empty(), "healthy probe runs logged: {ours:?}");
    // It did run, and checked the instances (they log each request).
    let checks = tagged
        .iter()
        .filter(|e| field(e, "MESSAGE").starts_with("GET /health"))
        .count();
    assert!(checks >= 4, "{checks} health checks seen");
    assert_eq!(unit_prop(&probe, "Result"), "success");
    shim_ok(cfg.path(), &["stop", "--id", id]);
}

/// Most probe runs take the fast path (no D-Bus) once a full run found the service clean;
/// it must not hide anything a full run would act on: a definitions change (here a scale up
/// without a deploy), an instance stopped behind its back.
#[test]
fn probe_fast_path_falls_back_on_any_change() {
    require_sandbox!();
    let id = "sup_fast";
    let cfg = TestConfig::new(&web_toml(id, 2, 3));
    shim_ok(cfg.path(), &["start", "--id", id, "--revision", "rev1"]);
    let record = std::path::PathBuf::from(format!("/run/shim/supervise/{id}.fast.json"));
    // Past start_period, a full run checks both instances and leaves the record.
    wait_for(Duration::from_secs(10), "the fast path's record", || {
        record.exists().then_some(())
    });
    let text = std::fs::read_to_string(&record).unwrap();
    let second = instance_unit(cfg.path(), id, "web", 2);
    assert!(text.contains(&second), "{text}");
    // Fast runs leave it alone (the full run that wrote it said when).
    let before = std::fs::metadata(&record).unwrap().modified().unwrap();
    wait_probe_runs(id, 2);
    assert_eq!(
        std::fs::metadata(&record).unwrap().modified().unwrap(),
        before
    );
    // Another `shim probe` by hand, the lean way its timer runs it: fast, quiet, fine.
    let o = shim(cfg.path(), &["probe", "--id", id]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).is_empty(), "{}", stderr(&o));

    // Scaled up in the definitions only: the digest differs, so a full run looks again, but
    // the probe supervises what was deployed (2 instances); `shim status` says the
    // definitions changed, and `shim upgrade --id` scales in place (#1 and #2 keep running).
    let cursor = journal_cursor();
    let pids: Vec<u32> = (1..=2)
        .map(|i| main_pid(&instance_unit(cfg.path(), id, "web", i)))
        .collect();
    let scaled = web_toml(id, 3, 3).replace("{layout}", &image_layout().display().to_string());
    std::fs::write(cfg.path().join("services.toml"), scaled).unwrap();
    wait_for(
        Duration::from_secs(10),
        "a full run recording again",
        || {
            std::fs::metadata(&record)
                .ok()
                .and_then(|m| m.modified().ok())
                .filter(|m| *m > before)
                .map(|_| ())
        },
    );
    assert_eq!(status(cfg.path(), id).len(), 2, "the probe started nothing");
    assert!(journal_since(
        &cursor,
        &[&format!("SHIM_SERVICE={id}"), "SHIM_ACTION=start"]
    )
    .is_empty());
    let table = shim_ok(cfg.path(), &["status", "--id", id]);
    assert!(table.contains("count changed since deploy"), "{table}");
    let out = shim_ok(cfg.path(), &["upgrade", "--id", id]);
    assert!(out.contains("start 1 new instance(s)"), "{out}");
    let third = instance_unit(cfg.path(), id, "web", 3);
    assert_eq!(unit_prop(&third, "ActiveState"), "active");
    let after: Vec<u32> = (1..=2)
        .map(|i| main_pid(&instance_unit(cfg.path(), id, "web", i)))
        .collect();
    assert_eq!(pids, after, "scaling up replaced nothing");
    // Then a record with all three.
    wait_for(Duration::from_secs(10), "a record of 3 instances", || {
        std::fs::read_to_string(&record)
            .ok()
            .filter(|t| t.contains(&third))
            .map(|_| ())
    });

    // An instance stopped behind the probe's back: its main process is gone, a full run
    // starts it again.
    let first = instance_unit(cfg.path(), id, "web", 1);
    let o = run(Command::new("systemctl").args(["stop", &first]));
    assert!(o.status.success(), "{}", stderr(&o));
    wait_for(Duration::from_secs(10), "instance 1 back", || {
        (unit_prop(&first, "ActiveState") == "active").then_some(())
    });
    shim_ok(cfg.path(), &["stop", "--id", id]);
    assert!(!record.exists(), "stop leaves the fast path's record");
}

/// Answers every connection with an HTTP 200 while `up` is set; refuses (closed socket)
/// otherwise. The crash-looping worker's "dependency".
struct Dependency {
    port: u16,
    up: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
}

impl Dependency {
    fn new() -> Dependency {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let up = Arc::new(AtomicBool::new(false));
        let stop = Arc::new(AtomicBool::new(false));
        let (u, s) = (up.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut listener: Option<std::net::TcpListener> = None;
            while !s.load(Ordering::Relaxed) {
                if u.load(Ordering::Relaxed) {
                    let l = listener.get_or_insert_with(|| {
                        let l = std::net::TcpListener::bind(("127.0.0.1", port)).unwrap();
                        l.set_nonblocking(true).unwrap();
                        l
                    });
                    if let Ok((mut c, _)) = l.accept() {
                        let _ = c.set_nonblocking(false);
                        let mut buf = [0u8; 512];
                        let _ = c.read(&mut buf);
                        let _ = c.write_all(b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok");
                    }
                } else {
                    listener = None;
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        });
        Dependency { port, up, stop }
    }

    fn set(&self, up: bool) {
        self.up.store(up, Ordering::Relaxed);
        std::thread::sleep(Duration::from_millis(50));
    }
}

impl Drop for Dependency {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// A worker that exits at boot while its dependency is down: after one quick systemd
/// restart it lands in `failed`, and the probe retries it with a delay doubling up to
/// restart_max_delay (8 s here); `shim status` shows the next retry; once the dependency is
/// back the worker comes back by itself.
#[test]
fn crash_loop_backs_off_is_capped_and_recovers() {
    require_sandbox!();
    let id = "sup_loop";
    let dep = Dependency::new();
    let toml = web_toml(id, 1, 3)
        + &format!(
            r#"
[services.{id}.processes.worker]
command = ["/bin/sh", "-c", "wget -q -O /dev/null http://127.0.0.1:{}/ || {{ echo dependency down; exit 3; }}; echo dependency up; exec sleep 100000"]
stop_timeout = "1s"
"#,
            dep.port
        );
    let cfg = TestConfig::new(&toml);
    dep.set(true);
    shim_ok(cfg.path(), &["start", "--id", id, "--revision", "rev1"]);
    let worker = instance_unit(cfg.path(), id, "worker", 1);
    wait_for(Duration::from_secs(10), "the worker up", || {
        (unit_prop(&worker, "ActiveState") == "active").then_some(())
    });
    // The dependency goes away and the worker dies: from now on it cannot start.
    dep.set(false);
    let cursor = journal_cursor();
    let o = run(Command::new("systemctl").args(["kill", "-s", "KILL", &worker]));
    assert!(o.status.success(), "{}", stderr(&o));

    // Watch for ~36 s: every start attempt logs "dependency down"; status shows the retry.
    let mut saw_retry = None;
    let watch = Instant::now();
    while watch.elapsed() < Duration::from_secs(36) {
        if saw_retry.is_none() {
            let rows = status(cfg.path(), id);
            if let Some(r) = rows
                .iter()
                .find(|r| r["process"] == "worker" && r["state"] == "failed")
            {
                if r["next_retry"]["by"] == "probe" {
                    saw_retry = Some(r["next_retry"].clone());
                }
            }
        }
        assert_ne!(
            unit_prop(&worker, "LoadState"),
            "not-found",
            "the crash-looping unit was unloaded"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    let starts: Vec<u64> = journal_since(&cursor, &[&format!("SHIM_SERVICE={id}")])
        .iter()
        .filter(|e| field(e, "MESSAGE") == "dependency down")
        .filter_map(|e| field(e, "__REALTIME_TIMESTAMP").parse().ok())
        .collect();
    let gaps: Vec<f64> = starts
        .windows(2)
        .map(|w| (w[1] - w[0]) as f64 / 1e6)
        .collect();
    eprintln!(
        "crash loop: gaps between start attempts (s): {gaps:.1?}; status showed {saw_retry:?}"
    );
    // Systemd's quick restarts are ~2 s apart; the probe's retries wait longer each time
    // (4 s, then 8 s = the cap), each followed by one quick restart by systemd.
    let long: Vec<f64> = gaps.iter().copied().filter(|g| *g > 3.5).collect();
    assert!(long.len() >= 3, "too few backoff retries: {gaps:?}");
    assert!(
        long.windows(2).all(|w| w[1] >= w[0] - 1.0),
        "backoff shrank: {long:?}"
    );
    assert!(
        long[long.len() - 1] > long[0] + 2.0,
        "backoff did not grow: {long:?}"
    );
    // Cap: 8 s after the failure, which comes one RestartSec (2 s) after the last attempt,
    // plus up to one probe interval (1 s) and slack.
    assert!(
        long.iter().all(|g| *g < 8.0 + 2.0 + 1.0 + 1.5),
        "backoff exceeded the cap: {long:?}"
    );
    let retry = saw_retry.expect("status never showed the failed worker's next retry");
    assert!(retry["in_secs"].as_u64().unwrap() <= 8, "{retry}");
    let e = journal_since(
        &cursor,
        &[&format!("SHIM_SERVICE={id}"), "SHIM_ACTION=retry"],
    );
    assert!(e.len() >= 2, "{e:?}");

    // The cause goes away: it comes back by itself, never left failed for good.
    dep.set(true);
    let t = Instant::now();
    wait_for(Duration::from_secs(20), "the worker back by itself", || {
        (unit_prop(&worker, "ActiveState") == "active"
            && unit_prop(&worker, "SubState") == "running")
            .then_some(())
    });
    eprintln!(
        "crash loop: back {} ms after the dependency returned",
        t.elapsed().as_millis()
    );
    shim_ok(cfg.path(), &["stop", "--id", id]);
    assert!(units_matching(&format!("shim-{id}-*")).is_empty());
}

/// Paused: a missing instance stays missing and an unhealthy one is left alone; status
/// says so and the pause is in the persisted state. Resumed: both are repaired.
#[test]
fn pause_stops_the_probe_and_resume_converges() {
    require_sandbox!();
    let id = "sup_pause";
    let toml = web_toml(id, 2, 2)
        + &format!(
            "\n[services.{id}.processes.worker]\ncommand = [\"/bin/sh\", \"-c\", \"trap 'exit 0' TERM; while true; do sleep 1; done\"]\nstop_timeout = \"3s\"\n"
        );
    let cfg = TestConfig::new(&toml);
    shim_ok(cfg.path(), &["start", "--id", id, "--revision", "rev1"]);
    std::thread::sleep(Duration::from_millis(1200));
    let rows = status(cfg.path(), id);
    let web1 = rows
        .iter()
        .find(|r| r["process"] == "web" && r["instance"] == 1)
        .unwrap();
    let web2 = unit(
        rows.iter()
            .find(|r| r["process"] == "web" && r["instance"] == 2)
            .unwrap(),
    );
    let (u1, p1) = (unit(web1), port(web1));
    let pid1 = main_pid(&u1);

    let out = shim_ok(cfg.path(), &["supervise", "pause", "--id", id]);
    assert!(out.contains("paused"), "{out}");
    let st: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(format!("/var/lib/shim/state/{id}.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(st["paused"], true, "{st}");
    let cursor = journal_cursor();
    assert_eq!(http_get(p1, "/admin/unhealthy").map(|r| r.0), Some(200));
    let o = run(Command::new("systemctl").args(["stop", &web2]));
    assert!(o.status.success());
    wait_probe_runs(id, 4);
    assert_eq!(main_pid(&u1), pid1, "a paused probe killed an instance");
    assert!(
        units_matching(&web2).is_empty(),
        "a paused probe started an instance"
    );
    let acted = journal_since(
        &cursor,
        &[
            &format!("SHIM_SERVICE={id}"),
            "SYSLOG_IDENTIFIER=shim-probe",
        ],
    );
    assert!(acted.is_empty(), "{acted:?}");
    let rows = status(cfg.path(), id);
    assert!(rows.iter().all(|r| r["paused"] == true), "{rows:?}");
    let table = shim_ok(cfg.path(), &["status", "--id", id]);
    assert!(table.contains("supervision paused"), "{table}");

    // Resume: the probe runs right away and repairs both.
    let out = shim_ok(cfg.path(), &["supervise", "resume", "--id", id]);
    assert!(out.contains("resumed"), "{out}");
    wait_for(Duration::from_secs(10), "the missing instance back", || {
        (unit_prop(&web2, "ActiveState") == "active").then_some(())
    });
    wait_for(
        Duration::from_secs(15),
        "the unhealthy instance replaced",
        || (main_pid(&u1) != pid1).then_some(()),
    );
    wait_for(
        Duration::from_secs(15),
        "the replaced instance healthy",
        || http_get(p1, "/health").filter(|(c, _)| *c == 200),
    );

    // A process-level pause leaves the other processes supervised.
    shim_ok(
        cfg.path(),
        &["supervise", "pause", "--id", id, "--process", "worker"],
    );
    let worker = instance_unit(cfg.path(), id, "worker", 1);
    assert!(
        run(Command::new("systemctl").args(["stop", &worker, &web2]))
            .status
            .success()
    );
    wait_for(
        Duration::from_secs(10),
        "web back while worker is paused",
        || (unit_prop(&web2, "ActiveState") == "active").then_some(()),
    );
    wait_probe_runs(id, 2);
    assert!(
        units_matching(&worker).is_empty(),
        "a paused process was started"
    );
    let rows = status(cfg.path(), id);
    assert!(rows.iter().all(|r| r["paused"] == false), "{rows:?}");
    let o = shim(
        cfg.path(),
        &["supervise", "pause", "--id", id, "--process", "nope"],
    );
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    shim_ok(
        cfg.path(),
        &["supervise", "resume", "--id", id, "--process", "worker"],
    );
    wait_for(Duration::from_secs(10), "the worker back", || {
        (unit_prop(&worker, "ActiveState") == "active").then_some(())
    });
    shim_ok(cfg.path(), &["stop", "--id", id]);
}

fn upstream_file(id: &str) -> String {
    std::fs::read_to_string(format!("/etc/nginx/shim/{id}.conf")).unwrap_or_default()
}

fn upstream_servers(id: &str) -> usize {
    upstream_file(id).matches("server 127.0.0.1:").count()
}

fn main_pids(cfg: &std::path::Path, id: &str) -> BTreeMap<String, u64> {
    status(cfg, id)
        .iter()
        .map(|r| {
            (
                r["unit"].as_str().unwrap().to_string(),
                r["main_pid"].as_u64().unwrap_or(0),
            )
        })
        .collect()
}

/// Reconcile: `--dry-run` changes nothing; a run repairs an upgrade killed midway to what
/// was deployed (an edited `count` is only reported: `shim upgrade` rolls it out, in place),
/// points nginx at the instances, removes services no longer defined; a second run does
/// nothing.
#[test]
fn reconcile_scales_repairs_and_is_idempotent() {
    require_sandbox!();
    let o = sh("systemctl start nginx && systemctl is-active nginx");
    assert!(o.status.success(), "nginx: {}", stderr(&o));
    let (a, b) = ("rec_a", "rec_b");
    let def = |count: u32, with_b: bool| {
        let mut t = format!(
            r#"
[shim]
port_range = [26000, 26999]

[services.{a}]
image = "oci:{{layout}}:{{revision}}"

[services.{a}.processes.web]
count = {count}
health = {{ path = "/health", interval = "1s", timeout = "1s", start_period = "10s" }}
proxy = {{ upstream = "{a}_web", file = "/etc/nginx/shim/{a}.conf" }}
drain = "0s"
stop_timeout = "3s"
"#
        );
        if with_b {
            t.push_str(&format!(
                "\n[services.{b}]\nimage = \"oci:{{layout}}:{{revision}}\"\n[services.{b}.processes.web]\nhealth = {{ path = \"/health\" }}\n"
            ));
        }
        t
    };
    let cfg = TestConfig::new(&def(2, true));
    // Leftovers of other tests are services these definitions do not know: clear them first.
    shim_ok(cfg.path(), &["reconcile"]);
    let write = |text: String| {
        std::fs::write(
            cfg.path().join("services.toml"),
            text.replace("{layout}", &image_layout().display().to_string()),
        )
        .unwrap()
    };
    shim_ok(cfg.path(), &["upgrade", "--id", a, "--revision", "rev1"]);
    shim_ok(cfg.path(), &["start", "--id", b, "--revision", "rev1"]);
    assert_eq!(upstream_servers(a), 2);

    // Nothing differs: a reconcile does nothing.
    let out = shim_ok(cfg.path(), &["reconcile"]);
    assert!(out.contains("nothing to do"), "{out}");

    // The probe goes on supervising the serving revision after an interrupted upgrade (it
    // would scale rev1 to the edited count 3 within a second): paused here, so that what the
    // dry run sees is what reconcile repairs.
    shim_ok(cfg.path(), &["supervise", "pause", "--id", a]);
    // An upgrade killed after its instances started leaves rev2 units and a recorded attempt.
    let o = run(Command::new(SHIM)
        .arg("--config")
        .arg(cfg.path())
        .args(["upgrade", "--id", a, "--revision", "rev2"])
        .env("SHIM_TEST_KILL_AFTER", "start"));
    assert_eq!(o.status.code(), None, "not killed: {}", stdout(&o));
    assert!(!units_matching(&format!("shim-{a}-web-rev2-*")).is_empty());
    // count 2 → 3, and b is no longer defined.
    write(def(3, false));

    let before = main_pids(cfg.path(), a);
    let plan = shim_ok(cfg.path(), &["reconcile", "--dry-run"]);
    assert!(plan.contains("dry run: nothing changed"), "{plan}");
    assert!(plan.contains("interrupted"), "{plan}");
    assert!(
        plan.contains("count changed since deploy: run `shim upgrade --id rec_a`"),
        "{plan}"
    );
    assert!(plan.contains(b) && plan.contains("not defined"), "{plan}");
    assert_eq!(main_pids(cfg.path(), a), before, "dry run changed units");
    assert!(!units_matching(&format!("shim-{b}-*")).is_empty());

    let out = shim_ok(cfg.path(), &["reconcile"]);
    let rows = status(cfg.path(), a);
    assert_eq!(rows.len(), 2, "what was deployed: {rows:?}\n{out}");
    assert_eq!(
        main_pids(cfg.path(), a),
        before
            .into_iter()
            .filter(|(u, _)| u.contains("-rev1-"))
            .collect::<BTreeMap<_, _>>(),
        "the serving instances were kept"
    );
    // The edited count, rolled out in place: one more instance, the two others kept.
    shim_ok(cfg.path(), &["supervise", "resume", "--id", a]);
    let out = shim_ok(cfg.path(), &["upgrade", "--id", a]);
    assert!(out.contains("start 1 new instance(s)"), "{out}");
    let rows = status(cfg.path(), a);
    assert_eq!(rows.len(), 3, "{rows:?}\n{out}");
    assert!(rows.iter().all(|r| r["revision"] == "rev1"), "{rows:?}");
    assert_eq!(upstream_servers(a), 3, "{}", upstream_file(a));
    for r in &rows {
        assert!(upstream_file(a).contains(&format!("127.0.0.1:{}", port(r))));
    }
    assert!(units_matching(&format!("shim-{b}-*")).is_empty());
    assert!(units_matching(&format!("shim-probe-{b}.*")).is_empty());
    assert_eq!(
        unit_prop(&format!("shim-probe-{a}.timer"), "ActiveState"),
        "active"
    );
    let st: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(format!("/var/lib/shim/state/{a}.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(st["current"], "rev1");
    assert!(st.get("upgrading").is_none(), "{st}");

    // Idempotent: the second run changes nothing (same processes, same state file).
    let pids = main_pids(cfg.path(), a);
    let state_before = std::fs::read_to_string(format!("/var/lib/shim/state/{a}.json")).unwrap();
    let mtime = |p: &str| std::fs::metadata(p).unwrap().modified().unwrap();
    let up_mtime = mtime(&format!("/etc/nginx/shim/{a}.conf"));
    let again = shim_ok(cfg.path(), &["reconcile"]);
    assert!(again.contains("nothing to do"), "{again}");
    assert_eq!(main_pids(cfg.path(), a), pids);
    assert_eq!(
        std::fs::read_to_string(format!("/var/lib/shim/state/{a}.json")).unwrap(),
        state_before
    );
    assert_eq!(mtime(&format!("/etc/nginx/shim/{a}.conf")), up_mtime);

    // Scale down 3 → 1: nginx no longer lists the stopped instances.
    write(def(1, false));
    shim_ok(cfg.path(), &["upgrade", "--id", a]);
    assert_eq!(status(cfg.path(), a).len(), 1);
    assert_eq!(upstream_servers(a), 1, "{}", upstream_file(a));
    let again = shim_ok(cfg.path(), &["reconcile"]);
    assert!(again.contains("nothing to do"), "{again}");

    // A stopped service is left down by reconcile.
    shim_ok(cfg.path(), &["stop", "--id", a]);
    let out = shim_ok(cfg.path(), &["reconcile"]);
    assert!(out.contains("stopped"), "{out}");
    assert!(units_matching(&format!("shim-{a}-*")).is_empty());
    let _ = std::fs::remove_file(format!("/etc/nginx/shim/{a}.conf"));
}
