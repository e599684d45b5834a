//! Immutable deployments against real systemd, nginx and a real registry in the sandbox: a
//! deployment pins the image's manifest digest, the definition and a snapshot of the
//! `env_files` once, at `shim upgrade`; every later start (systemd's restart, the probe's
//! replacement, `shim run`, `shim reconcile`) runs exactly that, whatever the tag, the
//! definitions or the secrets files say meanwhile, until the next `shim upgrade --id ID`
//! rolls the change out (or says there is nothing to do). Also: the probe keeps each
//! upstream equal to the healthy instances of the current deployment, instances keep their
//! ports, and `shim restart` replaces every instance without dropping a request.
//!
//! The load generator here mixes clients that open a connection per request with clients
//! that keep their connection to nginx alive across many requests (asserted: most of their
//! requests really go over a reused connection). A keep-alive client, like any HTTP client
//! (RFC 9110 §9.2.2), resends an idempotent request once on a fresh connection when a reused
//! one was closed before any byte of the answer came back (nginx closes idle keep-alive
//! connections when it reloads); such resends are counted and printed, everything else that
//! is not a 200 is a failure.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::common::*;
use crate::registry::{push, sh_ok, start_registry, WORK};

/// A registry of these tests' own, so that moving its tag cannot disturb the registry tests.
const REGISTRY: &str = "127.0.0.1:5002";

// --- nginx ----------------------------------------------------------------------------

fn ensure_nginx() {
    let o = sh("systemctl start nginx && systemctl is-active nginx");
    assert!(o.status.success(), "nginx: {} {}", stdout(&o), stderr(&o));
}

fn upstream_path(id: &str) -> String {
    format!("/etc/nginx/shim/{id}.conf")
}

/// Starts serving the service's upstream on 127.0.0.1:`port` (after the first deploy wrote
/// the upstream file, as an operator would).
fn enable_site(id: &str, port: u16) {
    let site = format!(
        "include {};\nserver {{\n  listen 127.0.0.1:{port};\n  location / {{ proxy_pass http://{id}_web; }}\n}}\n",
        upstream_path(id)
    );
    std::fs::write(format!("/etc/nginx/sites-enabled/shim-{id}"), site).unwrap();
    let o = sh("nginx -t && systemctl reload nginx");
    assert!(o.status.success(), "{}", stderr(&o));
    wait_for(Duration::from_secs(10), "nginx on the test site", || {
        one_request(port, "/")
            .ok()
            .filter(|(c, _)| *c == 200)
            .map(|_| ())
    });
}

fn disable_site(id: &str) {
    let _ = std::fs::remove_file(format!("/etc/nginx/sites-enabled/shim-{id}"));
    let _ = std::fs::remove_file(upstream_path(id));
    let _ = sh("systemctl reload nginx");
}

/// The ports the upstream file lists (empty if closed or missing).
fn upstream_ports(id: &str) -> BTreeSet<u16> {
    std::fs::read_to_string(upstream_path(id))
        .unwrap_or_default()
        .lines()
        .filter(|l| !l.contains(" down"))
        .filter_map(|l| l.trim().strip_prefix("server 127.0.0.1:"))
        .filter_map(|r| r.split([' ', ';']).next()?.parse().ok())
        .collect()
}

// --- HTTP -----------------------------------------------------------------------------

/// One request on a connection of its own.
fn one_request(port: u16, path: &str) -> Result<(u16, String), String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok();
    s.set_nodelay(true).ok();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").as_bytes())
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

/// A client connection kept alive across requests.
struct Conn {
    w: TcpStream,
    r: BufReader<TcpStream>,
}

/// How a request on a kept-alive connection failed: `answered` if any byte of a response
/// came back (then it must not be resent).
struct ConnError {
    what: String,
    answered: bool,
}

impl Conn {
    fn open(port: u16) -> Result<Conn, String> {
        let w = TcpStream::connect(("127.0.0.1", port)).map_err(|e| format!("connect: {e}"))?;
        w.set_read_timeout(Some(Duration::from_secs(5))).ok();
        // One segment per request, sent at once: no Nagle delay between requests.
        w.set_nodelay(true).ok();
        let r = BufReader::new(w.try_clone().map_err(|e| format!("clone: {e}"))?);
        Ok(Conn { w, r })
    }

    /// GET `path`; returns the status, the body and whether the connection stays open.
    fn get(&mut self, path: &str) -> Result<(u16, String, bool), ConnError> {
        let early = |what: String| ConnError {
            what,
            answered: false,
        };
        let late = |what: String| ConnError {
            what,
            answered: true,
        };
        self.w
            .write_all(format!("GET {path} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes())
            .map_err(|e| early(format!("write: {e}")))?;
        let mut line = String::new();
        match self.r.read_line(&mut line) {
            Ok(0) => return Err(early("closed before any answer".into())),
            Ok(_) => {}
            Err(e) => return Err(early(format!("read: {e}"))),
        }
        let code: u16 = line
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .ok_or_else(|| late(format!("bad status line {line:?}")))?;
        let mut length = None;
        let mut keep = true;
        loop {
            let mut h = String::new();
            self.r
                .read_line(&mut h)
                .map_err(|e| late(format!("reading headers: {e}")))?;
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            let (k, v) = h.split_once(':').unwrap_or((h, ""));
            match k.to_ascii_lowercase().as_str() {
                "content-length" => length = v.trim().parse::<usize>().ok(),
                "connection" => keep = !v.trim().eq_ignore_ascii_case("close"),
                "transfer-encoding" => return Err(late(format!("unexpected {h}"))),
                _ => {}
            }
        }
        let n = length.ok_or_else(|| late("no Content-Length".into()))?;
        let mut body = vec![0; n];
        self.r
            .read_exact(&mut body)
            .map_err(|e| late(format!("reading body: {e}")))?;
        Ok((code, String::from_utf8_lossy(&body).into_owned(), keep))
    }
}

// --- load -----------------------------------------------------------------------------

#[derive(Default, Debug)]
struct Stats {
    ok: u64,
    /// Requests answered over a connection that had carried an earlier request.
    reused: u64,
    /// Requests resent once because a reused connection closed before answering.
    resent: u64,
    failed: Vec<String>,
    /// What the answers said (see `Load::start`'s `classify`), with counts.
    seen: BTreeMap<String, u64>,
}

fn failures(st: &Stats) -> String {
    format!(
        "{} failed of {}, first: {:?}",
        st.failed.len(),
        st.ok + st.failed.len() as u64,
        &st.failed[..st.failed.len().min(5)]
    )
}

/// Clients hammering nginx on `port` until stopped: `close` threads with a connection per
/// request, `keep` threads each on one kept-alive connection.
struct Load {
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
    stats: Arc<Mutex<Stats>>,
}

impl Load {
    fn start(port: u16, path: &'static str, classify: fn(&str) -> String) -> Load {
        let (close, keep) = (2, 4);
        let stop = Arc::new(AtomicBool::new(false));
        let stats = Arc::new(Mutex::new(Stats::default()));
        let mut threads = Vec::new();
        for n in 0..close + keep {
            let (stop, stats) = (stop.clone(), stats.clone());
            let keep_alive = n >= close;
            threads.push(std::thread::spawn(move || {
                let deadline = Instant::now() + Duration::from_secs(300);
                let mut conn: Option<Conn> = None;
                while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                    let outcome = if keep_alive {
                        let reused = conn.is_some();
                        if conn.is_none() {
                            match Conn::open(port) {
                                Ok(c) => conn = Some(c),
                                Err(e) => {
                                    stats.lock().unwrap().failed.push(e);
                                    continue;
                                }
                            }
                        }
                        match conn.as_mut().unwrap().get(path) {
                            Ok((code, body, still_open)) => {
                                if !still_open {
                                    conn = None;
                                }
                                if reused {
                                    stats.lock().unwrap().reused += 1;
                                }
                                Ok((code, body))
                            }
                            Err(e) => {
                                conn = None;
                                if reused && !e.answered {
                                    stats.lock().unwrap().resent += 1;
                                    continue;
                                }
                                Err(e.what)
                            }
                        }
                    } else {
                        one_request(port, path)
                    };
                    let mut st = stats.lock().unwrap();
                    match outcome {
                        Ok((200, body)) => {
                            st.ok += 1;
                            *st.seen.entry(classify(&body)).or_default() += 1;
                        }
                        Ok((code, body)) => st.failed.push(format!(
                            "HTTP {code}: {}",
                            body.lines().next().unwrap_or("")
                        )),
                        Err(e) => st.failed.push(e),
                    }
                }
            }));
        }
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
        let st = Arc::try_unwrap(self.stats).unwrap().into_inner().unwrap();
        eprintln!(
            "load: {} ok ({} over reused connections, {} resent), {} failed, seen {:?}",
            st.ok,
            st.reused,
            st.resent,
            st.failed.len(),
            st.seen
        );
        st
    }
}

/// Asserts a load saw no failure, was heavy enough, and its keep-alive clients really
/// reused their connections.
fn assert_clean(st: &Stats, what: &str) {
    assert!(st.failed.is_empty(), "{what}: {}", failures(st));
    assert!(
        st.ok > 100,
        "{what}: too little load to mean anything: {st:?}"
    );
    assert!(
        st.reused * 3 > st.ok,
        "{what}: the keep-alive clients did not keep their connections: {} of {} reused",
        st.reused,
        st.ok
    );
}

/// `revision=R` of `GET /`.
fn revision_of(body: &str) -> String {
    body.split_whitespace().next().unwrap_or("").to_string()
}

/// The line `KEY=...` of `GET /env` for the key the test watches (see [`env_line`]).
fn color_of(body: &str) -> String {
    env_line(body, "DEPLOY_COLOR").unwrap_or_else(|| "DEPLOY_COLOR unset".into())
}

fn secret_of(body: &str) -> String {
    env_line(body, "DB_PASSWORD").unwrap_or_else(|| "DB_PASSWORD unset".into())
}

fn env_line(body: &str, key: &str) -> Option<String> {
    body.lines()
        .find(|l| l.starts_with(&format!("{key}=")))
        .map(str::to_string)
}

// --- the service ------------------------------------------------------------------------

/// A proxied web process of `count` instances, probed every second, with `extra` lines at
/// the end of the service's table (env, env_files) and `shim` lines in `[shim]`. The probe
/// checks an instance only once it is past `start_period` (2 s here), so a replacement joins
/// the upstream only then; `unhealthy_after` is high so that an unhealthy instance is taken
/// out of the upstream but not killed.
fn service_toml(id: &str, image: &str, count: u32, shim: &str, extra: &str) -> String {
    format!(
        r#"
[shim]
port_range = [28000, 28999]
{shim}

[services.{id}]
image = "{image}"
{extra}

[services.{id}.processes.web]
count = {count}
health = {{ path = "/health", interval = "1s", timeout = "1s", unhealthy_after = 100, start_period = "2s" }}
proxy = {{ upstream = "{id}_web", file = "/etc/nginx/shim/{id}.conf" }}
drain = "1s"
stop_timeout = "5s"
"#
    )
}

fn write_config(cfg: &TestConfig, text: &str) {
    std::fs::write(cfg.path().join("services.toml"), text).unwrap();
}

fn state_of(id: &str) -> serde_json::Value {
    let p = format!("/var/lib/shim/state/{id}.json");
    serde_json::from_str(&std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{p}: {e}")))
        .unwrap_or_else(|e| panic!("{p}: {e}"))
}

/// The last line of `shim upgrade|restart --json`: the outcome.
fn outcome(out: &str) -> serde_json::Value {
    let last = out
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("");
    let v: serde_json::Value =
        serde_json::from_str(last).unwrap_or_else(|e| panic!("last line not JSON ({e}):\n{out}"));
    assert_eq!(v["result"], "ok", "{out}");
    v
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Inst {
    unit: String,
    port: u16,
    main_pid: u32,
}

/// The service's instances by index, from `shim status --json`, each checked against
/// systemd (active, same main pid).
fn instances(cfg: &Path, id: &str) -> BTreeMap<u64, Inst> {
    status(cfg, id)
        .iter()
        .map(|r| {
            let unit = r["unit"].as_str().expect("unit").to_string();
            let i = Inst {
                port: r["port"].as_u64().expect("port") as u16,
                main_pid: r["main_pid"].as_u64().unwrap_or(0) as u32,
                unit,
            };
            (r["instance"].as_u64().expect("instance"), i)
        })
        .collect()
}

fn main_pid(unit: &str) -> u32 {
    unit_prop(unit, "MainPID").parse().unwrap_or(0)
}

/// Waits until `unit` runs a main process other than `old` and answers on `port`.
fn wait_replaced(unit: &str, old: u32, port: u16) -> u32 {
    let pid = wait_for(Duration::from_secs(30), &format!("{unit} back"), || {
        let p = main_pid(unit);
        (p != 0 && p != old && unit_prop(unit, "ActiveState") == "active").then_some(p)
    });
    wait_answer(port);
    pid
}

fn get_ok(port: u16, path: &str) -> String {
    wait_for(
        Duration::from_secs(20),
        &format!("GET {path} on {port}"),
        || {
            http_get(port, path)
                .filter(|(c, _)| *c == 200)
                .map(|(_, b)| b)
        },
    )
}

/// `shim run` in the foreground; its stdout.
fn shim_run(cfg: &Path, id: &str, script: &str) -> String {
    let o = run(Command::new(SHIM)
        .arg("--config")
        .arg(cfg)
        .args(["run", "--id", id, "--", "/bin/sh", "-c", script]));
    assert!(
        o.status.success(),
        "shim run failed ({:?}):\n{}\n{}",
        o.status.code(),
        stdout(&o),
        stderr(&o)
    );
    stdout(&o)
}

fn probe_timer(id: &str) -> String {
    format!("shim-probe-{id}.timer")
}

/// Waits for `n` more runs of the service's probe.
fn wait_probe_runs(id: &str, n: usize) {
    let svc = format!("shim-probe-{id}.service");
    let mut seen = Vec::new();
    wait_for(Duration::from_secs(10 * n as u64), "probe runs", || {
        let t = unit_prop(&svc, "ExecMainStartTimestampMonotonic");
        if t != "0" && !t.is_empty() && !seen.contains(&t) {
            seen.push(t);
        }
        (seen.len() > n).then_some(())
    });
}

/// The manifest digest the registry's tag points at now.
fn registry_digest(reference: &str) -> String {
    let out = sh_ok(&format!(
        "skopeo inspect --tls-verify=false docker://{reference} | jq -r .Digest"
    ));
    let d = out.trim().to_string();
    assert!(d.starts_with("sha256:"), "{reference}: {out}");
    d
}

fn skip_without_registry() -> bool {
    if !Path::new("/usr/bin/docker-registry").exists() {
        eprintln!("SKIP: /usr/bin/docker-registry missing (apt-get install docker-registry)");
        return true;
    }
    false
}

// --- tests ------------------------------------------------------------------------------

/// The tag moves to other content after the deploy: a systemd restart, a probe replacement,
/// `shim run` and `shim reconcile` from nothing all run the pinned digest, status shows it;
/// `shim upgrade --id ID` then rolls the moved tag out, under load.
#[test]
fn a_moved_tag_changes_nothing_until_the_next_upgrade() {
    require_sandbox!();
    if skip_without_registry() {
        return;
    }
    ensure_nginx();
    let layout = image_layout();
    std::fs::create_dir_all(WORK).unwrap();
    start_registry("deploy", REGISTRY, false);
    let reference = format!("{REGISTRY}/team/dep:live");
    push(layout, "rev1", &reference, false);
    let d1 = registry_digest(&reference);

    let id = "dep_pin";
    let cfg = TestConfig::new(&service_toml(
        id,
        &format!("{REGISTRY}/team/dep:{{revision}}"),
        2,
        &format!("insecure_registries = [\"{REGISTRY}\"]\nauth_file = \"/nonexistent/auth.json\""),
        "",
    ));
    let first = outcome(&shim_ok(
        cfg.path(),
        &["upgrade", "--id", id, "--revision", "live", "--json"],
    ));
    assert_eq!(first["changed"], true, "{first}");
    let dep_id = first["deployment"].as_str().unwrap().to_string();
    let site = 9301;
    enable_site(id, site);
    let st = state_of(id);
    assert_eq!(st["deployment"]["revision"], "live", "{st}");
    assert_eq!(st["deployment"]["image"], reference.as_str(), "{st}");
    assert_eq!(st["deployment"]["manifest_digest"], d1.as_str(), "{st}");
    let before = instances(cfg.path(), id);
    assert_eq!(before.len(), 2, "{before:?}");
    for i in before.values() {
        assert_eq!(revision_of(&get_ok(i.port, "/")), "revision=rev1", "{i:?}");
    }

    // The tag moves to another image (the test app's rev2: another config, another digest).
    push(layout, "rev2", &reference, false);
    let d2 = registry_digest(&reference);
    assert_ne!(d1, d2, "pushing rev2 did not move the tag");

    // (a) kill -9 of instance 1's container init: systemd restarts it, same port, pinned.
    let i1 = &before[&1];
    let o = run(Command::new("kill").args(["-9", &i1.main_pid.to_string()]));
    assert!(o.status.success(), "{}", stderr(&o));
    wait_replaced(&i1.unit, i1.main_pid, i1.port);
    assert_eq!(
        revision_of(&get_ok(i1.port, "/")),
        "revision=rev1",
        "systemd's restart ran the moved tag"
    );

    // (b) systemctl stop of instance 2: the probe starts it again from the record.
    let i2 = &before[&2];
    let o = run(Command::new("systemctl").args(["stop", &i2.unit]));
    assert!(o.status.success(), "{}", stderr(&o));
    wait_replaced(&i2.unit, i2.main_pid, i2.port);
    assert_eq!(
        revision_of(&get_ok(i2.port, "/")),
        "revision=rev1",
        "the probe's replacement ran the moved tag"
    );

    // (c) shim run: the deployment's image, not the tag's.
    let out = shim_run(cfg.path(), id, "echo \"image says $APP_REVISION\"");
    assert!(out.contains("image says rev1"), "shim run: {out}");

    // Status: every instance of the deployment, at the pinned digest; nothing "changed".
    let rows = status(cfg.path(), id);
    assert_eq!(rows.len(), 2, "{rows:?}");
    for r in &rows {
        assert_eq!(r["image_digest"], d1.as_str(), "{r}");
        assert_eq!(r["deployment"], dep_id.as_str(), "{r}");
    }
    let table = shim_ok(cfg.path(), &["status", "--id", id]);
    assert!(
        table.contains(&format!(
            "deployment {dep_id} of revision live: image {reference} at {d1}"
        )),
        "{table}"
    );
    assert!(!table.contains("changed since deploy"), "{table}");

    // (d) everything gone behind shim's back (as after a reboot: no instance, no probe
    // timer): reconcile brings back the deployment, pinned, on its ports, under its names.
    let o = run(Command::new("systemctl").args(["stop", &probe_timer(id)]));
    assert!(o.status.success(), "{}", stderr(&o));
    for i in before.values() {
        let o = run(Command::new("systemctl").args(["stop", &i.unit]));
        assert!(o.status.success(), "{}", stderr(&o));
    }
    assert!(status(cfg.path(), id).is_empty(), "instances left");
    let out = shim_ok(cfg.path(), &["reconcile"]);
    let after = instances(cfg.path(), id);
    assert_eq!(after.len(), 2, "{out}\n{after:?}");
    for (n, i) in &after {
        assert_eq!(i.unit, before[n].unit, "{out}");
        assert_eq!(i.port, before[n].port, "{out}");
        assert_eq!(
            revision_of(&get_ok(i.port, "/")),
            "revision=rev1",
            "reconcile ran the moved tag:\n{out}"
        );
    }
    assert_eq!(
        unit_prop(&probe_timer(id), "ActiveState"),
        "active",
        "reconcile did not bring the probe timer back:\n{out}"
    );
    assert_eq!(state_of(id)["deployment"]["manifest_digest"], d1.as_str());
    for r in status(cfg.path(), id) {
        assert_eq!(r["image_digest"], d1.as_str(), "{r}");
    }
    // nginx serves the pinned image through the reconciled upstream.
    wait_for(Duration::from_secs(10), "nginx serving again", || {
        one_request(site, "/")
            .ok()
            .filter(|(c, b)| *c == 200 && revision_of(b) == "revision=rev1")
    });

    // The next `shim upgrade --id ID` picks up the moved tag, with nothing dropped.
    let load = Load::start(site, "/", revision_of);
    std::thread::sleep(Duration::from_millis(300));
    let next = outcome(&shim_ok(cfg.path(), &["upgrade", "--id", id, "--json"]));
    std::thread::sleep(Duration::from_millis(300));
    let stats = load.finish();
    assert_eq!(next["changed"], true, "{next}");
    assert_eq!(next["revision"], "live", "{next}");
    assert_ne!(next["deployment"], dep_id.as_str(), "{next}");
    assert_clean(&stats, "upgrade to the moved tag");
    assert!(stats.seen.contains_key("revision=rev1"), "{stats:?}");
    assert!(stats.seen.contains_key("revision=rev2"), "{stats:?}");
    assert_eq!(state_of(id)["deployment"]["manifest_digest"], d2.as_str());
    let rows = status(cfg.path(), id);
    assert_eq!(rows.len(), 2, "{rows:?}");
    for r in &rows {
        assert_eq!(r["image_digest"], d2.as_str(), "{r}");
        let port = r["port"].as_u64().unwrap() as u16;
        assert_eq!(revision_of(&get_ok(port, "/")), "revision=rev2", "{r}");
    }
    for _ in 0..10 {
        let (code, body) = one_request(site, "/").unwrap();
        assert_eq!((code, revision_of(&body)), (200, "revision=rev2".into()));
    }
    shim_ok(cfg.path(), &["stop", "--id", id]);
    disable_site(id);
    let _ = sh("systemctl stop shim-test-registry-deploy");
}

/// A definition change (an env key) rolled out by `shim upgrade --id ID` under load: every
/// instance gets it, no request fails; the same upgrade again touches nothing.
#[test]
fn a_definition_change_rolls_out_under_load_and_then_there_is_nothing_to_do() {
    require_sandbox!();
    ensure_nginx();
    let id = "dep_cfg";
    let image = "oci:{layout}:{revision}";
    let cfg = TestConfig::new(&service_toml(id, image, 3, "", "env = { A = \"1\" }"));
    let first = outcome(&shim_ok(
        cfg.path(),
        &["upgrade", "--id", id, "--revision", "rev1", "--json"],
    ));
    let site = 9302;
    enable_site(id, site);
    let before = instances(cfg.path(), id);
    assert_eq!(before.len(), 3);
    for i in before.values() {
        assert_eq!(color_of(&get_ok(i.port, "/env")), "DEPLOY_COLOR unset");
    }

    // The definition changes on disk: nothing runs it yet, status says so.
    write_config(
        &cfg,
        &service_toml(
            id,
            &image.replace("{layout}", &image_layout().display().to_string()),
            3,
            "",
            "env = { A = \"1\", DEPLOY_COLOR = \"blue\" }",
        ),
    );
    let table = shim_ok(cfg.path(), &["status", "--id", id]);
    assert!(
        table.contains(&format!(
            "definition changed since deploy: run `shim upgrade --id {id}` to roll it out"
        )),
        "{table}"
    );
    // The probe (which reads the definitions every run) does not roll it out by itself.
    wait_probe_runs(id, 2);
    assert_eq!(instances(cfg.path(), id), before);

    let load = Load::start(site, "/env", color_of);
    std::thread::sleep(Duration::from_millis(500));
    let out = shim_ok(cfg.path(), &["upgrade", "--id", id]);
    std::thread::sleep(Duration::from_millis(500));
    let stats = load.finish();
    assert!(!out.contains("nothing to do"), "{out}");
    assert!(out.contains("definition changed"), "{out}");
    assert_clean(&stats, "definition rollout");
    assert!(stats.seen.contains_key("DEPLOY_COLOR unset"), "{stats:?}");
    assert!(stats.seen.contains_key("DEPLOY_COLOR=blue"), "{stats:?}");

    let after = instances(cfg.path(), id);
    assert_eq!(after.len(), 3, "{out}\n{after:?}");
    let old_units: BTreeSet<&str> = before.values().map(|i| i.unit.as_str()).collect();
    for i in after.values() {
        assert!(!old_units.contains(i.unit.as_str()), "{i:?} is an old one");
        assert_eq!(
            color_of(&get_ok(i.port, "/env")),
            "DEPLOY_COLOR=blue",
            "{i:?}"
        );
        assert_eq!(unit_prop(&i.unit, "ActiveState"), "active");
    }
    assert_eq!(
        upstream_ports(id),
        after.values().map(|i| i.port).collect::<BTreeSet<_>>()
    );
    for _ in 0..10 {
        let (code, body) = one_request(site, "/env").unwrap();
        assert_eq!((code, color_of(&body)), (200, "DEPLOY_COLOR=blue".into()));
    }
    let rows = status(cfg.path(), id);
    let dep_id = rows[0]["deployment"].as_str().unwrap().to_string();
    assert_ne!(dep_id, first["deployment"].as_str().unwrap());
    assert!(
        rows.iter().all(|r| r["deployment"] == dep_id.as_str()),
        "{rows:?}"
    );
    let table = shim_ok(cfg.path(), &["status", "--id", id]);
    assert!(!table.contains("changed since deploy"), "{table}");

    // The same again: nothing to do, nothing touched (units, main pids, upstream file).
    let upstream = std::fs::read_to_string(upstream_path(id)).unwrap();
    let mtime = std::fs::metadata(upstream_path(id))
        .unwrap()
        .modified()
        .unwrap();
    let again = shim_ok(cfg.path(), &["upgrade", "--id", id]);
    assert!(again.contains("nothing to do"), "{again}");
    assert!(!again.contains("started"), "{again}");
    assert_eq!(instances(cfg.path(), id), after, "{again}");
    let json = outcome(&shim_ok(cfg.path(), &["upgrade", "--id", id, "--json"]));
    assert_eq!(json["changed"], false, "{json}");
    assert_eq!(json["deployment"], dep_id.as_str(), "{json}");
    assert_eq!(instances(cfg.path(), id), after);
    for i in after.values() {
        assert_eq!(main_pid(&i.unit), i.main_pid, "{i:?}");
    }
    assert_eq!(
        std::fs::read_to_string(upstream_path(id)).unwrap(),
        upstream
    );
    assert_eq!(
        std::fs::metadata(upstream_path(id))
            .unwrap()
            .modified()
            .unwrap(),
        mtime,
        "the upstream file was rewritten"
    );
    shim_ok(cfg.path(), &["stop", "--id", id]);
    disable_site(id);
}

/// A secret edited in its env_file reaches no instance (not a restarted one, not a replaced
/// one, not `shim run`) until `shim upgrade --id ID` rolls it out; the snapshot is root-only
/// and the secret is in neither the state file nor the units' properties.
#[test]
fn a_rotated_secret_reaches_instances_only_through_upgrade() {
    require_sandbox!();
    ensure_nginx();
    let id = "dep_sec";
    let dir = PathBuf::from("/var/lib/shim-test/deploy");
    std::fs::create_dir_all(&dir).unwrap();
    let env_file = dir.join(format!("{id}.env"));
    std::fs::write(
        &env_file,
        "# rotated by the test\nDB_PASSWORD=old-secret-1\n",
    )
    .unwrap();
    std::fs::set_permissions(&env_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let cfg = TestConfig::new(&service_toml(
        id,
        "oci:{layout}:{revision}",
        2,
        "",
        &format!("env_files = [\"{}\"]", env_file.display()),
    ));
    shim_ok(cfg.path(), &["upgrade", "--id", id, "--revision", "rev1"]);
    let site = 9303;
    enable_site(id, site);
    let before = instances(cfg.path(), id);
    assert_eq!(before.len(), 2);
    for i in before.values() {
        assert_eq!(
            secret_of(&get_ok(i.port, "/env")),
            "DB_PASSWORD=old-secret-1"
        );
    }
    let snapshot = |st: &serde_json::Value| {
        let digest = st["deployment"]["secrets_digest"]
            .as_str()
            .unwrap()
            .to_string();
        PathBuf::from(format!(
            "/var/lib/shim/secrets/{id}/{}.json",
            digest.strip_prefix("sha256:").unwrap()
        ))
    };
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o7777;
    let old_snap = snapshot(&state_of(id));
    assert_eq!(mode(&old_snap), 0o600, "{}", old_snap.display());
    assert_eq!(mode(old_snap.parent().unwrap()), 0o700);
    assert!(std::fs::read_to_string(&old_snap)
        .unwrap()
        .contains("old-secret-1"));

    // Rotate the secret in the file.
    std::fs::write(&env_file, "DB_PASSWORD=new-secret-2\n").unwrap();
    let table = shim_ok(cfg.path(), &["status", "--id", id]);
    assert!(table.contains("secrets changed since deploy"), "{table}");

    // A systemd restart (SIGKILL through systemctl kill) keeps the snapshot's value.
    let i1 = &before[&1];
    let o = run(Command::new("systemctl").args(["kill", "-s", "KILL", &i1.unit]));
    assert!(o.status.success(), "{}", stderr(&o));
    wait_replaced(&i1.unit, i1.main_pid, i1.port);
    assert_eq!(
        secret_of(&get_ok(i1.port, "/env")),
        "DB_PASSWORD=old-secret-1",
        "a restart read the edited env_file"
    );
    // So does the probe's replacement of a stopped instance, and `shim run`.
    let i2 = &before[&2];
    let o = run(Command::new("systemctl").args(["stop", &i2.unit]));
    assert!(o.status.success(), "{}", stderr(&o));
    wait_replaced(&i2.unit, i2.main_pid, i2.port);
    assert_eq!(
        secret_of(&get_ok(i2.port, "/env")),
        "DB_PASSWORD=old-secret-1",
        "the probe's replacement read the edited env_file"
    );
    let out = shim_run(cfg.path(), id, "echo \"pw=$DB_PASSWORD\"");
    assert!(out.contains("pw=old-secret-1"), "shim run: {out}");

    // The upgrade rolls it out to every instance, with nothing dropped.
    let load = Load::start(site, "/env", secret_of);
    std::thread::sleep(Duration::from_millis(500));
    let out = shim_ok(cfg.path(), &["upgrade", "--id", id]);
    std::thread::sleep(Duration::from_millis(500));
    let stats = load.finish();
    assert!(out.contains("secrets changed"), "{out}");
    assert_clean(&stats, "secret rotation");
    assert!(
        stats.seen.contains_key("DB_PASSWORD=new-secret-2"),
        "{stats:?}"
    );
    let after = instances(cfg.path(), id);
    assert_eq!(after.len(), 2, "{out}\n{after:?}");
    for i in after.values() {
        assert_eq!(
            secret_of(&get_ok(i.port, "/env")),
            "DB_PASSWORD=new-secret-2",
            "{i:?}"
        );
        // Never in a unit property anyone may read.
        let show = stdout(&run(Command::new("systemctl").args(["show", &i.unit])));
        assert!(
            !show.contains("new-secret-2"),
            "secret in systemctl show {}",
            i.unit
        );
    }
    for _ in 0..10 {
        let (code, body) = one_request(site, "/env").unwrap();
        assert_eq!(
            (code, secret_of(&body)),
            (200, "DB_PASSWORD=new-secret-2".into())
        );
    }
    let st = state_of(id);
    let new_snap = snapshot(&st);
    assert_ne!(new_snap, old_snap);
    assert_eq!(mode(&new_snap), 0o600, "{}", new_snap.display());
    let state_text = std::fs::read_to_string(format!("/var/lib/shim/state/{id}.json")).unwrap();
    assert!(
        !state_text.contains("new-secret-2") && !state_text.contains("old-secret-1"),
        "a secret in the state file"
    );
    for e in std::fs::read_dir(new_snap.parent().unwrap()).unwrap() {
        let p = e.unwrap().path();
        assert_eq!(mode(&p), 0o600, "{}", p.display());
    }
    // And a restart after the rollout keeps the new value.
    let i1 = &after[&1];
    let o = run(Command::new("systemctl").args(["kill", "-s", "KILL", &i1.unit]));
    assert!(o.status.success(), "{}", stderr(&o));
    wait_replaced(&i1.unit, i1.main_pid, i1.port);
    assert_eq!(
        secret_of(&get_ok(i1.port, "/env")),
        "DB_PASSWORD=new-secret-2"
    );
    shim_ok(cfg.path(), &["stop", "--id", id]);
    disable_site(id);
    let _ = std::fs::remove_file(&env_file);
}

/// The probe keeps the upstream equal to the healthy instances (an unhealthy one leaves it
/// and comes back; stopped and killed ones come back on their ports), never listing a port
/// that is not the deployment's; `shim restart` then replaces every instance under load.
#[test]
fn the_upstream_follows_the_healthy_instances_and_restart_replaces_all() {
    require_sandbox!();
    ensure_nginx();
    let id = "dep_rst";
    let cfg = TestConfig::new(&service_toml(id, "oci:{layout}:{revision}", 3, "", ""));
    shim_ok(cfg.path(), &["upgrade", "--id", id, "--revision", "rev1"]);
    let site = 9304;
    enable_site(id, site);
    let before = instances(cfg.path(), id);
    assert_eq!(before.len(), 3);
    let ports: BTreeSet<u16> = before.values().map(|i| i.port).collect();
    assert_eq!(ports.len(), 3, "{before:?}");
    assert_eq!(upstream_ports(id), ports);
    let recorded: BTreeSet<u16> = state_of(id)["deployment"]["ports"]
        .as_object()
        .unwrap()
        .values()
        .map(|p| p.as_u64().unwrap() as u16)
        .collect();
    assert_eq!(recorded, ports);

    // A watcher: the upstream never lists a port outside the deployment's, and never closes
    // (instance 1, at least, runs throughout).
    let stop = Arc::new(AtomicBool::new(false));
    let watcher = {
        let (stop, ports) = (stop.clone(), ports.clone());
        std::thread::spawn(move || {
            let mut bad = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let now = upstream_ports(id);
                if now.is_empty() || !now.is_subset(&ports) {
                    bad.push(now);
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            bad
        })
    };

    // Instance 1 turns unhealthy (it keeps running): the probe takes it out of the upstream,
    // and puts it back once it passes again.
    let p1 = before[&1].port;
    assert_eq!(http_get(p1, "/admin/unhealthy").map(|(c, _)| c), Some(200));
    let without1: BTreeSet<u16> = ports.iter().copied().filter(|p| *p != p1).collect();
    wait_for(
        Duration::from_secs(10),
        "instance 1 out of the upstream",
        || (upstream_ports(id) == without1).then_some(()),
    );
    assert_eq!(
        main_pid(&before[&1].unit),
        before[&1].main_pid,
        "the unhealthy instance was killed (unhealthy_after = 100)"
    );
    // (nginx's old workers finish what they have; new connections go to the new ones.)
    std::thread::sleep(Duration::from_millis(500));
    for _ in 0..20 {
        let (code, body) = one_request(site, "/").unwrap();
        assert_eq!(code, 200);
        assert!(
            !body.contains("instance=1 "),
            "nginx still sends to instance 1: {body}"
        );
    }
    assert_eq!(http_get(p1, "/admin/healthy").map(|(c, _)| c), Some(200));
    wait_for(
        Duration::from_secs(10),
        "instance 1 back in the upstream",
        || (upstream_ports(id) == ports).then_some(()),
    );

    // Instance 2 stopped behind shim's back, instance 3's init killed: both back on their
    // ports, under their names; the upstream lists all three again and stays so.
    let (i2, i3) = (&before[&2], &before[&3]);
    let o = run(Command::new("systemctl").args(["stop", &i2.unit]));
    assert!(o.status.success(), "{}", stderr(&o));
    let o = run(Command::new("kill").args(["-9", &i3.main_pid.to_string()]));
    assert!(o.status.success(), "{}", stderr(&o));
    wait_replaced(&i2.unit, i2.main_pid, i2.port);
    wait_replaced(&i3.unit, i3.main_pid, i3.port);
    wait_for(Duration::from_secs(10), "all three in the upstream", || {
        (upstream_ports(id) == ports).then_some(())
    });
    let now = instances(cfg.path(), id);
    for (n, i) in &now {
        assert_eq!(
            (&i.unit, i.port),
            (&before[n].unit, before[n].port),
            "{now:?}"
        );
    }
    wait_probe_runs(id, 3);
    assert_eq!(upstream_ports(id), ports, "the upstream did not stay");
    stop.store(true, Ordering::Relaxed);
    let bad = watcher.join().unwrap();
    assert!(
        bad.is_empty(),
        "the upstream listed ports outside {ports:?} or none: {:?}",
        &bad[..bad.len().min(5)]
    );

    // shim restart: all new instances (names, main pids), nothing dropped, the upstream
    // equals them, the deployment is the same one.
    let dep_before = status(cfg.path(), id)[0]["deployment"].clone();
    let now = instances(cfg.path(), id);
    let load = Load::start(site, "/", revision_of);
    std::thread::sleep(Duration::from_millis(500));
    let out = shim_ok(cfg.path(), &["restart", "--id", id]);
    std::thread::sleep(Duration::from_millis(500));
    let stats = load.finish();
    assert_clean(&stats, "shim restart");
    let after = instances(cfg.path(), id);
    assert_eq!(after.len(), 3, "{out}\n{after:?}");
    let old_units: BTreeSet<&str> = now.values().map(|i| i.unit.as_str()).collect();
    let old_pids: BTreeSet<u32> = now.values().map(|i| i.main_pid).collect();
    for i in after.values() {
        assert!(
            !old_units.contains(i.unit.as_str()),
            "{i:?} not replaced:\n{out}"
        );
        assert!(
            !old_pids.contains(&i.main_pid),
            "{i:?} not replaced:\n{out}"
        );
        assert_eq!(unit_prop(&i.unit, "ActiveState"), "active");
        assert_eq!(revision_of(&get_ok(i.port, "/")), "revision=rev1");
    }
    for u in &old_units {
        assert!(units_matching(u).is_empty(), "{u} left:\n{out}");
    }
    let new_ports: BTreeSet<u16> = after.values().map(|i| i.port).collect();
    assert_eq!(new_ports.len(), 3);
    assert_eq!(upstream_ports(id), new_ports, "{out}");
    assert!(status(cfg.path(), id)
        .iter()
        .all(|r| r["deployment"] == dep_before));
    // The new instances' ports are recorded, and the probe keeps them and nothing else.
    let recorded: BTreeSet<u16> = state_of(id)["deployment"]["ports"]
        .as_object()
        .unwrap()
        .values()
        .map(|p| p.as_u64().unwrap() as u16)
        .collect();
    assert_eq!(recorded, new_ports);
    wait_probe_runs(id, 2);
    assert_eq!(
        instances(cfg.path(), id),
        after,
        "the probe changed instances"
    );
    assert_eq!(upstream_ports(id), new_ports);

    // A process the deployment does not have is refused, nothing touched.
    let o = shim(cfg.path(), &["restart", "--id", id, "--process", "nope"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("no such process"), "{}", stderr(&o));
    assert_eq!(instances(cfg.path(), id), after);

    // --process web: replaced again, still nothing dropped.
    let load = Load::start(site, "/", revision_of);
    std::thread::sleep(Duration::from_millis(300));
    shim_ok(cfg.path(), &["restart", "--id", id, "--process", "web"]);
    std::thread::sleep(Duration::from_millis(300));
    let stats = load.finish();
    assert_clean(&stats, "shim restart --process web");
    let again = instances(cfg.path(), id);
    assert!(again
        .values()
        .all(|i| !after.values().any(|a| a.unit == i.unit)));
    assert_eq!(
        upstream_ports(id),
        again.values().map(|i| i.port).collect::<BTreeSet<_>>()
    );
    shim_ok(cfg.path(), &["stop", "--id", id]);
    disable_site(id);
}
