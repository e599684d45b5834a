//! Zero-downtime upgrades against real nginx in the sandbox, with a load generator running
//! through nginx the whole time.

use std::io::{Read, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::common::*;

/// Each test gets its own nginx server block on its own port, so tests cannot see each
/// other's upstreams.
fn port_of(id: &str) -> u16 {
    8100 + (id.bytes().map(u16::from).sum::<u16>() % 800)
}

thread_local! {
    static PORT: std::cell::Cell<u16> = const { std::cell::Cell::new(0) };
}

fn nginx_port() -> u16 {
    PORT.with(|p| p.get())
}

fn upgrade_toml(id: &str, count: u32) -> String {
    format!(
        r#"
[shim]
port_range = [23000, 23999]

[services.{id}]
image = "oci:{{layout}}:{{revision}}"

[services.{id}.processes.web]
count = {count}
health = {{ path = "/health", interval = "1s", timeout = "1s", start_period = "10s" }}
proxy = {{ upstream = "{id}_web", file = "/etc/nginx/shim/{id}.conf" }}
drain = "1s"
stop_timeout = "5s"

[services.{id}.processes.worker]
command = ["/bin/sh", "-c", "trap 'exit 0' TERM; while true; do sleep 1; done"]
count = 1
"#
    )
}

/// Starts nginx with a site proxying to the service's upstream (the site is enabled after the
/// first deploy wrote the upstream file, as an operator would).
fn enable_site(id: &str) {
    let port = port_of(id);
    PORT.with(|p| p.set(port));
    let site = format!(
        "include /etc/nginx/shim/{id}.conf;\nserver {{\n  listen 127.0.0.1:{port};\n  location / {{ proxy_pass http://{id}_web; }}\n}}\n"
    );
    std::fs::write(format!("/etc/nginx/sites-enabled/shim-{id}"), site).unwrap();
    let o = sh("nginx -t && systemctl reload nginx");
    assert!(o.status.success(), "{}", stderr(&o));
    // systemctl reload returns once nginx was signalled; wait for the new listener.
    wait_for(
        Duration::from_secs(10),
        "nginx listening on the test site",
        || std::net::TcpStream::connect(("127.0.0.1", port)).ok(),
    );
}

fn ensure_nginx() {
    let o = sh("systemctl start nginx && systemctl is-active nginx");
    assert!(o.status.success(), "nginx: {} {}", stdout(&o), stderr(&o));
}

/// Requests through nginx from 4 threads until stopped, one connection per request (what a
/// load balancer in front would see); counts every outcome and the revisions answered.
struct Load {
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
    stats: Arc<Mutex<Stats>>,
}

#[derive(Default, Debug)]
struct Stats {
    ok: u64,
    failed: Vec<String>,
    revisions: std::collections::BTreeMap<String, u64>,
}

/// Removes a test's site and upstream again.
fn disable_site(id: &str) {
    let _ = std::fs::remove_file(format!("/etc/nginx/sites-enabled/shim-{id}"));
    let _ = std::fs::remove_file(format!("/etc/nginx/shim/{id}.conf"));
    let _ = sh("systemctl reload nginx");
}

fn failures(st: &Stats) -> String {
    format!(
        "{} failed, first: {:?}",
        st.failed.len(),
        &st.failed[..st.failed.len().min(3)]
    )
}

fn one_request() -> Result<(u16, String), String> {
    one_request_to(nginx_port())
}

fn one_request_to(port: u16) -> Result<(u16, String), String> {
    let mut s =
        std::net::TcpStream::connect(("127.0.0.1", port)).map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok();
    s.write_all(b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        .map_err(|e| format!("write: {e}"))?;
    let mut buf = String::new();
    s.read_to_string(&mut buf)
        .map_err(|e| format!("read: {e}"))?;
    let code: u16 = buf
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("bad response {buf:?}"))?;
    let body = buf
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((code, body))
}

impl Load {
    fn start() -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let stats = Arc::new(Mutex::new(Stats::default()));
        let port = nginx_port();
        let threads = (0..4)
            .map(|_| {
                let (stop, stats) = (stop.clone(), stats.clone());
                std::thread::spawn(move || {
                    let deadline = Instant::now() + Duration::from_secs(240);
                    while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                        let r = one_request_to(port);
                        let mut st = stats.lock().unwrap();
                        match r {
                            Ok((200, body)) => {
                                st.ok += 1;
                                let rev = body.split_whitespace().next().unwrap_or("").to_string();
                                *st.revisions.entry(rev).or_default() += 1;
                            }
                            Ok((code, body)) => st.failed.push(format!(
                                "HTTP {code}: {}",
                                body.lines().next().unwrap_or("")
                            )),
                            Err(e) => st.failed.push(e),
                        }
                    }
                })
            })
            .collect();
        Load {
            stop,
            threads,
            stats,
        }
    }

    fn finish(self) -> Stats {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            t.join().unwrap();
        }
        Arc::try_unwrap(self.stats).unwrap().into_inner().unwrap()
    }
}

fn served_revision() -> String {
    let (_, body) = one_request().expect("nginx answers");
    body.split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string()
}

#[test]
fn ten_upgrades_under_load_drop_nothing() {
    require_sandbox!();
    ensure_nginx();
    let id = "zdt";
    let cfg = TestConfig::new(&upgrade_toml(id, 2));
    let out = shim_ok(cfg.path(), &["upgrade", "--id", id, "--revision", "rev1"]);
    assert!(out.contains("switch"), "{out}");
    enable_site(id);
    assert_eq!(served_revision(), "revision=rev1");

    // --dry-run prints the plan and changes nothing.
    let dry = shim_ok(
        cfg.path(),
        &["upgrade", "--id", id, "--revision", "rev2", "--dry-run"],
    );
    assert!(dry.contains("start 3 new instance(s) of rev2"), "{dry}");
    assert!(dry.contains("dry run: nothing changed"), "{dry}");
    assert!(units_matching(&format!("shim-{id}-*-rev2-*")).is_empty());
    assert_eq!(served_revision(), "revision=rev1");

    let load = Load::start();
    std::thread::sleep(Duration::from_millis(300));
    let mut times = Vec::new();
    for i in 0..10 {
        let rev = if i % 2 == 0 { "rev2" } else { "rev1" };
        let t = Instant::now();
        shim_ok(cfg.path(), &["upgrade", "--id", id, "--revision", rev]);
        times.push(t.elapsed().as_millis());
        assert_eq!(
            served_revision(),
            format!("revision={rev}"),
            "after upgrade {i}"
        );
    }
    std::thread::sleep(Duration::from_millis(300));
    let stats = load.finish();
    eprintln!(
        "upgrade times (ms): {times:?}; load: {} ok, {} failed, revisions {:?}",
        stats.ok,
        stats.failed.len(),
        stats.revisions
    );
    assert!(stats.failed.is_empty(), "{}", failures(&stats));
    assert!(
        stats.ok > 100,
        "too little load to mean anything: {}",
        stats.ok
    );
    assert!(stats.revisions.get("revision=rev1").is_some_and(|n| *n > 0));
    assert!(stats.revisions.get("revision=rev2").is_some_and(|n| *n > 0));
    // Only the last revision's instances are left; the state says so.
    let rows = status(cfg.path(), id);
    assert!(rows.iter().all(|r| r["revision"] == "rev1"), "{rows:?}");
    assert_eq!(rows.len(), 3);
    let st: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(format!("/var/lib/shim/state/{id}.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(st["current"], "rev1");
    assert_eq!(st["previous"], "rev2");

    // Rollback goes to the previous revision through the same flow.
    let load = Load::start();
    shim_ok(cfg.path(), &["rollback", "--id", id]);
    let stats = load.finish();
    assert!(stats.failed.is_empty(), "{}", failures(&stats));
    assert_eq!(served_revision(), "revision=rev2");
    shim_ok(cfg.path(), &["stop", "--id", id]);
    disable_site(id);
}

#[test]
fn unhealthy_or_crashing_revision_bails_out_and_old_keeps_serving() {
    require_sandbox!();
    ensure_nginx();
    let id = "bail";
    let cfg = TestConfig::new(
        &upgrade_toml(id, 2).replace("start_period = \"10s\"", "start_period = \"2s\""),
    );
    shim_ok(cfg.path(), &["upgrade", "--id", id, "--revision", "rev1"]);
    enable_site(id);
    let upstream_before = std::fs::read_to_string(format!("/etc/nginx/shim/{id}.conf")).unwrap();
    let units_before = status(cfg.path(), id);

    for (bad, why) in [("revbad", "HTTP 500"), ("revcrash", "exited with status 3")] {
        let load = Load::start();
        let o = shim(cfg.path(), &["upgrade", "--id", id, "--revision", bad]);
        let stats = load.finish();
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(1), "{bad}: {}\n{err}", stdout(&o));
        assert!(err.contains("bailed out"), "{err}");
        assert!(err.contains(why), "{bad}: reason {why:?} missing: {err}");
        assert!(err.contains("last journal lines"), "{err}");
        assert!(stats.failed.is_empty(), "{bad}: {}", failures(&stats));
        assert_eq!(served_revision(), "revision=rev1");
        assert_eq!(
            std::fs::read_to_string(format!("/etc/nginx/shim/{id}.conf")).unwrap(),
            upstream_before
        );
        let rows = status(cfg.path(), id);
        assert_eq!(
            rows,
            units_before
                .iter()
                .map(|r| {
                    let mut r = r.clone();
                    r["uptime_secs"] = rows
                        .iter()
                        .find(|x| x["unit"] == r["unit"])
                        .map(|x| x["uptime_secs"].clone())
                        .unwrap_or_default();
                    r
                })
                .collect::<Vec<_>>(),
            "{bad}: instances changed"
        );
        assert!(units_matching(&format!("shim-{id}-*-{bad}-*")).is_empty());
    }
    shim_ok(cfg.path(), &["stop", "--id", id]);
    disable_site(id);
}

#[test]
fn nginx_refusing_the_config_restores_the_file() {
    require_sandbox!();
    ensure_nginx();
    let id = "ngx";
    let cfg = TestConfig::new(&upgrade_toml(id, 1));
    shim_ok(cfg.path(), &["upgrade", "--id", id, "--revision", "rev1"]);
    enable_site(id);
    let before = std::fs::read_to_string(format!("/etc/nginx/shim/{id}.conf")).unwrap();
    // A second definition of the same upstream elsewhere makes `nginx -t` fail once the
    // file changes (duplicate upstream).
    std::fs::write(
        "/etc/nginx/conf.d/zz-broken.conf",
        format!("upstream {id}_web {{ server 127.0.0.1:1; }}\n"),
    )
    .unwrap();
    let o = shim(cfg.path(), &["upgrade", "--id", id, "--revision", "rev2"]);
    std::fs::remove_file("/etc/nginx/conf.d/zz-broken.conf").unwrap();
    assert_eq!(o.status.code(), Some(1), "{}", stdout(&o));
    assert!(stderr(&o).contains("nginx -t failed"), "{}", stderr(&o));
    assert_eq!(
        std::fs::read_to_string(format!("/etc/nginx/shim/{id}.conf")).unwrap(),
        before
    );
    assert!(units_matching(&format!("shim-{id}-*-rev2-*")).is_empty());
    assert_eq!(served_revision_on(id), "revision=rev1");
    shim_ok(cfg.path(), &["stop", "--id", id]);
    disable_site(id);
}

fn served_revision_on(_id: &str) -> String {
    served_revision()
}

#[test]
fn killed_upgrade_is_repaired_by_the_next() {
    require_sandbox!();
    ensure_nginx();
    let id = "kill";
    let cfg = TestConfig::new(&upgrade_toml(id, 2));
    shim_ok(cfg.path(), &["upgrade", "--id", id, "--revision", "rev1"]);
    enable_site(id);
    let mut rev = "rev1";
    for step in ["start", "health", "switch", "drain", "stop-old"] {
        let next = if rev == "rev1" { "rev2" } else { "rev1" };
        let load = Load::start();
        let o = run(std::process::Command::new(SHIM)
            .arg("--config")
            .arg(cfg.path())
            .args(["upgrade", "--id", id, "--revision", next])
            .env("SHIM_TEST_KILL_AFTER", step));
        assert_eq!(
            o.status.code(),
            None,
            "{step}: shim was not killed: {}",
            stdout(&o)
        );
        // Whatever was left, nginx serves a healthy revision meanwhile.
        let served = served_revision();
        assert!(
            served == "revision=rev1" || served == "revision=rev2",
            "{step}: {served}"
        );
        // The next upgrade repairs and completes.
        let out = shim_ok(cfg.path(), &["upgrade", "--id", id, "--revision", next]);
        let stats = load.finish();
        eprintln!("after kill at {step}: {}\nrepair:\n{out}", stdout(&o));
        assert!(stats.failed.is_empty(), "{step}: {}", failures(&stats));
        assert_eq!(
            served_revision(),
            format!("revision={next}"),
            "{step}: {out}"
        );
        let rows = status(cfg.path(), id);
        assert_eq!(
            rows.len(),
            3,
            "{step}: leaked or missing instances: {rows:?}\n{out}"
        );
        assert!(
            rows.iter().all(|r| r["revision"] == next),
            "{step}: {rows:?}"
        );
        // No runc container or mount of the old revision is left.
        let stem = format!("shim-{id}-web-{rev}-");
        assert!(
            !runtime_containers("runc")
                .iter()
                .any(|c| c.starts_with(&stem)),
            "{step}: runc containers of {rev} left"
        );
        assert!(
            mounts_containing(&stem).is_empty(),
            "{step}: mounts of {rev} left"
        );
        rev = next;
    }
    shim_ok(cfg.path(), &["stop", "--id", id]);
    disable_site(id);
}

#[test]
fn concurrent_upgrades_wait_for_each_other() {
    require_sandbox!();
    ensure_nginx();
    let id = "conc";
    let cfg = TestConfig::new(&upgrade_toml(id, 1));
    shim_ok(cfg.path(), &["upgrade", "--id", id, "--revision", "rev1"]);
    enable_site(id);
    let path = cfg.path().to_path_buf();
    let a = {
        let path = path.clone();
        std::thread::spawn(move || shim(&path, &["upgrade", "--id", "conc", "--revision", "rev2"]))
    };
    std::thread::sleep(Duration::from_millis(100));
    let b = shim(
        &path,
        &[
            "upgrade",
            "--id",
            "conc",
            "--revision",
            "rev1",
            "--lock-timeout",
            "60s",
        ],
    );
    let a = a.join().unwrap();
    assert!(a.status.success(), "{}", stderr(&a));
    assert!(b.status.success(), "{}", stderr(&b));
    // Whichever came second won; both ended consistent.
    let rows = status(&path, id);
    assert_eq!(rows.len(), 2, "{rows:?}");
    let rev = rows[0]["revision"].as_str().unwrap().to_string();
    assert!(rows.iter().all(|r| r["revision"] == rev.as_str()));
    assert_eq!(served_revision(), format!("revision={rev}"));
    // A short lock timeout fails clearly, naming the holder. The holder upgrades to the
    // revision that does not serve (so it has work to do while it holds the lock), and the
    // waiter starts only once the lock is seen held: no reliance on which thread runs first.
    let other = if rev == "rev1" { "rev2" } else { "rev1" };
    let holder = {
        let path = path.clone();
        std::thread::spawn(move || shim(&path, &["upgrade", "--id", "conc", "--revision", other]))
    };
    wait_until_locked(id, &holder);
    let c = shim(
        &path,
        &[
            "upgrade",
            "--id",
            "conc",
            "--revision",
            rev.as_str(),
            "--lock-timeout",
            "10ms",
        ],
    );
    let h = holder.join().unwrap();
    assert!(h.status.success(), "{}", stderr(&h));
    assert_eq!(c.status.code(), Some(1), "{}", stderr(&c));
    assert!(
        stderr(&c).contains("locked by another shim command (pid"),
        "{}",
        stderr(&c)
    );
    shim_ok(&path, &["stop", "--id", id]);
    disable_site(id);
}

/// Waits (up to 60 s) until service `id`'s lock is held by another process, as `flock -n`
/// sees it; panics if `holder` finished first.
fn wait_until_locked(id: &str, holder: &std::thread::JoinHandle<std::process::Output>) {
    let lock = format!("/run/shim/locks/{id}.lock");
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let free = std::path::Path::new(&lock).exists()
            && std::process::Command::new("flock")
                .args(["-n", &lock, "true"])
                .status()
                .is_ok_and(|s| s.success());
        if std::path::Path::new(&lock).exists() && !free {
            return;
        }
        assert!(
            !holder.is_finished(),
            "the holder finished before it was seen holding the lock"
        );
        assert!(std::time::Instant::now() < deadline, "{lock} never held");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// The chaos test, recovery by reconcile (what the boot runs): an upgrade SIGKILLed right
/// after each step, then `shim reconcile`, under load. Killed before nginx switched, the old
/// revision goes on serving and the attempt's instances go; killed at or after the switch,
/// the new one serves (the audit saw reconcile bring the old one back: it took its target
/// before recovery promoted the switched attempt). Either way no failed request, and no unit,
/// runc container or mount of the other revision is left, nor a held lock.
#[test]
fn reconcile_after_a_kill_at_each_step_keeps_what_nginx_served() {
    require_sandbox!();
    ensure_nginx();
    let id = "kswitch";
    let cfg = TestConfig::new(&upgrade_toml(id, 2));
    shim_ok(cfg.path(), &["upgrade", "--id", id, "--revision", "rev1"]);
    enable_site(id);
    // Supervision paused: the probe must not repair anything behind the reconcile's back.
    shim_ok(cfg.path(), &["supervise", "pause", "--id", id]);
    let mut rev = "rev1";
    for step in ["start", "health", "switch", "drain", "stop-old"] {
        let next = if rev == "rev1" { "rev2" } else { "rev1" };
        let switched = !matches!(step, "start" | "health");
        let load = Load::start();
        let o = run(std::process::Command::new(SHIM)
            .arg("--config")
            .arg(cfg.path())
            .args(["upgrade", "--id", id, "--revision", next])
            .env("SHIM_TEST_KILL_AFTER", step));
        assert_eq!(o.status.code(), None, "{step}: not killed: {}", stdout(&o));
        // What nginx was pointed at when shim died (a request this instant may still reach a
        // worker of the previous generation: both revisions run).
        let serving = if switched { next } else { rev };
        let file = std::fs::read_to_string(format!("/etc/nginx/shim/{id}.conf")).unwrap();
        assert!(
            file.contains(&format!("revision {serving}, deployment ")),
            "{step}: {file}"
        );
        let out = shim_ok(cfg.path(), &["reconcile"]);
        let stats = load.finish();
        assert!(stats.failed.is_empty(), "{step}: {}", failures(&stats));
        assert_eq!(
            served_revision(),
            format!("revision={serving}"),
            "{step}: reconcile changed the serving revision:\n{out}"
        );
        let rows = status(cfg.path(), id);
        assert_eq!(rows.len(), 3, "{step}: {rows:?}\n{out}");
        assert!(
            rows.iter().all(|r| r["revision"] == serving),
            "{step}: {rows:?}"
        );
        let st: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(format!("/var/lib/shim/state/{id}.json")).unwrap(),
        )
        .unwrap();
        assert_eq!(st["current"], serving, "{step}: {st}");
        assert!(st.get("upgrading").is_none(), "{step}: {st}");
        // Nothing of the other revision is left behind.
        let gone = if switched { rev } else { next };
        let stem = format!("shim-{id}-web-{gone}-");
        assert!(
            units_matching(&format!("{stem}*")).is_empty(),
            "{step}: units of {gone}"
        );
        assert!(
            !runtime_containers("runc")
                .iter()
                .any(|c| c.starts_with(&stem)),
            "{step}: runc containers of {gone}: {:?}",
            runtime_containers("runc")
        );
        assert!(
            mounts_containing(&stem).is_empty(),
            "{step}: mounts of {gone}"
        );
        // And the lock is free again.
        let l = std::fs::File::open(format!("/run/shim/locks/{id}.lock")).unwrap();
        assert!(
            nix::fcntl::Flock::lock(l, nix::fcntl::FlockArg::LockExclusiveNonblock).is_ok(),
            "{step}: the service lock is still held"
        );
        rev = serving;
    }
    shim_ok(cfg.path(), &["stop", "--id", id]);
    disable_site(id);
}

/// `shim stop` takes nginx off the service before its instances go: the site answers 502
/// from then on, and never the next service given the freed ports.
#[test]
fn a_stopped_services_site_never_serves_the_next_service_on_its_ports() {
    require_sandbox!();
    ensure_nginx();
    let id = "stopa";
    let cfg = TestConfig::new(&upgrade_toml(id, 1));
    shim_ok(cfg.path(), &["upgrade", "--id", id, "--revision", "rev1"]);
    enable_site(id);
    assert_eq!(served_revision(), "revision=rev1");
    let freed: Vec<u64> = status(cfg.path(), id)
        .iter()
        .filter_map(|r| r["port"].as_u64())
        .collect();
    let out = shim_ok(cfg.path(), &["stop", "--id", id]);
    assert!(out.contains("closed"), "{out}");
    let file = std::fs::read_to_string(format!("/etc/nginx/shim/{id}.conf")).unwrap();
    for p in &freed {
        assert!(!file.contains(&format!(":{p} ")), "{file}");
    }
    // Another service, same port range: it is given the freed port.
    let other = "stopb";
    let ocfg = TestConfig::new(&upgrade_toml(other, 1).replace(
        &format!(
            "proxy = {{ upstream = \"{other}_web\", file = \"/etc/nginx/shim/{other}.conf\" }}\n"
        ),
        "",
    ));
    shim_ok(ocfg.path(), &["start", "--id", other, "--revision", "rev2"]);
    let ports: Vec<u64> = status(ocfg.path(), other)
        .iter()
        .filter_map(|r| r["port"].as_u64())
        .collect();
    assert!(
        ports.iter().any(|p| freed.contains(p)),
        "{ports:?} vs {freed:?}"
    );
    for _ in 0..5 {
        let r = one_request();
        assert!(
            matches!(&r, Ok((502, _))),
            "the stopped service's site must not answer: {r:?}"
        );
    }
    shim_ok(ocfg.path(), &["stop", "--id", other]);
    disable_site(id);
}
