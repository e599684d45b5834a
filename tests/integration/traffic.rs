//! The switch without an nginx reload (`[shim] switch = "nftables"`, issue 14), under
//! keep-alive load through real nginx in the sandbox: clients that each keep one connection
//! to nginx alive and send request after request on it. Every non-200, connect or read error
//! and timeout is a failure, and a failed request is never retried (a fresh connection is
//! opened for the next one). 50 upgrades alternating rev1/rev2 must fail nothing, nginx's
//! workers must be the same before and after (no reload), a 5 s request started before a
//! switch completes with 200, and after `shim stop` the site answers 502. The same loop with
//! `switch = "reload"` is run for the record: its failures are printed, not asserted.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::common::*;

fn toml(id: &str, switch: &str) -> String {
    format!(
        r#"
[shim]
port_range = [24000, 24999]
switch = "{switch}"

[services.{id}]
image = "oci:{{layout}}:{{revision}}"

[services.{id}.processes.web]
count = 2
health = {{ path = "/health", interval = "1s", timeout = "1s", start_period = "10s" }}
proxy = {{ upstream = "{id}_web", file = "/etc/nginx/shim/{id}.conf" }}
drain = "6s"
stop_timeout = "5s"
"#
    )
}

fn site(id: &str, port: u16) {
    site_with(id, port, "")
}

/// The test site, with `extra` directives in its `location /`.
fn site_with(id: &str, port: u16, extra: &str) {
    let site = format!(
        "include /etc/nginx/shim/{id}.conf;\nserver {{\n  listen 127.0.0.1:{port};\n  location / {{ proxy_pass http://{id}_web; {extra} }}\n}}\n"
    );
    std::fs::write(format!("/etc/nginx/sites-enabled/shim-{id}"), site).unwrap();
    let o = sh("systemctl start nginx && nginx -t && systemctl reload nginx");
    assert!(o.status.success(), "{}", stderr(&o));
    wait_for(Duration::from_secs(10), "nginx on the test site", || {
        http_get(port, "/").filter(|(c, _)| *c == 200)
    });
}

fn unsite(id: &str) {
    let _ = std::fs::remove_file(format!("/etc/nginx/sites-enabled/shim-{id}"));
    let _ = std::fs::remove_file(format!("/etc/nginx/shim/{id}.conf"));
    let _ = sh("systemctl reload nginx");
}

/// nginx's main pid and its children (the workers): a reload replaces the workers.
fn nginx_processes() -> (String, String) {
    let main = unit_prop("nginx.service", "MainPID");
    let o = sh(&format!("pgrep -P {main} | sort | tr '\\n' ' '"));
    (main, stdout(&o))
}

/// One kept-alive connection to nginx.
struct Conn {
    w: TcpStream,
    r: BufReader<TcpStream>,
}

impl Conn {
    fn open(port: u16, timeout: Duration) -> Result<Conn, String> {
        let w = TcpStream::connect(("127.0.0.1", port)).map_err(|e| format!("connect: {e}"))?;
        w.set_read_timeout(Some(timeout)).ok();
        w.set_nodelay(true).ok();
        let r = BufReader::new(w.try_clone().map_err(|e| format!("clone: {e}"))?);
        Ok(Conn { w, r })
    }

    /// GET `path`: the status, the body, whether the connection stays open.
    fn get(&mut self, path: &str) -> Result<(u16, String, bool), String> {
        self.w
            .write_all(format!("GET {path} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes())
            .map_err(|e| format!("write: {e}"))?;
        let mut line = String::new();
        match self.r.read_line(&mut line) {
            Ok(0) => return Err("closed before any answer".into()),
            Ok(_) => {}
            Err(e) => return Err(format!("read: {e}")),
        }
        let code: u16 = line
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .ok_or_else(|| format!("bad status line {line:?}"))?;
        let (mut length, mut keep) = (None, true);
        loop {
            let mut h = String::new();
            self.r
                .read_line(&mut h)
                .map_err(|e| format!("headers: {e}"))?;
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            let (k, v) = h.split_once(':').unwrap_or((h, ""));
            match k.to_ascii_lowercase().as_str() {
                "content-length" => length = v.trim().parse::<usize>().ok(),
                "connection" => keep = !v.trim().eq_ignore_ascii_case("close"),
                _ => {}
            }
        }
        let mut body = vec![0; length.ok_or("no Content-Length")?];
        self.r
            .read_exact(&mut body)
            .map_err(|e| format!("body: {e}"))?;
        Ok((code, String::from_utf8_lossy(&body).into_owned(), keep))
    }
}

#[derive(Default, Debug)]
struct Stats {
    ok: u64,
    reused: u64,
    failed: Vec<String>,
    /// The longest a request took, and how many took over 500 ms.
    slowest: Duration,
    over_500ms: u64,
}

/// `threads` clients, each on one kept-alive connection, until stopped.
struct Load {
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
    stats: Arc<Mutex<Stats>>,
}

impl Load {
    fn start(port: u16, threads: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let stats = Arc::new(Mutex::new(Stats::default()));
        let threads = (0..threads)
            .map(|_| {
                let (stop, stats) = (stop.clone(), stats.clone());
                std::thread::spawn(move || {
                    let mut conn: Option<Conn> = None;
                    while !stop.load(Ordering::Relaxed) {
                        let reused = conn.is_some();
                        if conn.is_none() {
                            match Conn::open(port, Duration::from_secs(5)) {
                                Ok(c) => conn = Some(c),
                                Err(e) => {
                                    stats.lock().unwrap().failed.push(e);
                                    std::thread::sleep(Duration::from_millis(10));
                                    continue;
                                }
                            }
                        }
                        let t0 = Instant::now();
                        let r = conn.as_mut().unwrap().get("/");
                        let took = t0.elapsed();
                        let mut st = stats.lock().unwrap();
                        st.slowest = st.slowest.max(took);
                        st.over_500ms += u64::from(took > Duration::from_millis(500));
                        match r {
                            Ok((200, _, keep)) => {
                                st.ok += 1;
                                st.reused += u64::from(reused);
                                if !keep {
                                    conn = None;
                                }
                            }
                            Ok((code, body, _)) => {
                                st.failed.push(format!(
                                    "HTTP {code}: {}",
                                    body.lines().next().unwrap_or("")
                                ));
                                conn = None;
                            }
                            Err(e) => {
                                // Not retried: the request failed. The next one opens anew.
                                st.failed.push(format!(
                                    "{e} (on a {} connection)",
                                    if reused { "reused" } else { "new" }
                                ));
                                conn = None;
                            }
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

/// `n` upgrades alternating rev2/rev1 under keep-alive load; the 5 s request is started
/// before upgrade 3. Returns the load's stats and the long request's outcome.
fn upgrades_under_load(
    cfg: &TestConfig,
    id: &str,
    port: u16,
    n: usize,
) -> (Stats, Result<(u16, String, bool), String>, Duration) {
    let load = Load::start(port, 8);
    std::thread::sleep(Duration::from_millis(300));
    let started = Instant::now();
    let mut long = None;
    for i in 0..n {
        if i == 2 {
            long = Some(std::thread::spawn(move || {
                let mut c = Conn::open(port, Duration::from_secs(20))?;
                c.get("/sleep?ms=5000")
            }));
            std::thread::sleep(Duration::from_millis(200));
        }
        let rev = if i % 2 == 0 { "rev2" } else { "rev1" };
        shim_ok(cfg.path(), &["upgrade", "--id", id, "--revision", rev]);
    }
    let took = started.elapsed();
    std::thread::sleep(Duration::from_millis(300));
    let long = long
        .map(|t| t.join().unwrap())
        .unwrap_or(Err("not started".into()));
    (load.finish(), long, took)
}

#[test]
fn fifty_upgrades_under_keep_alive_load_with_nftables_fail_nothing_and_never_reload() {
    require_sandbox!();
    let o = sh("command -v nft");
    assert!(
        o.status.success(),
        "nft is not installed (apt install nftables)"
    );
    let (id, port) = ("nftka", 8931);
    let cfg = TestConfig::new(&toml(id, "nftables"));
    shim_ok(cfg.path(), &["upgrade", "--id", id, "--revision", "rev1"]);
    site(id, port);
    let file = std::fs::read_to_string(format!("/etc/nginx/shim/{id}.conf")).unwrap();
    assert!(
        file.contains(":1 max_fails=1")
            && file.contains(":2 max_fails=1")
            && file.contains("server 127."),
        "one slot per instance: {file}"
    );
    let chain = format!("svc_{id}/web");
    let rule = stdout(&sh(&format!("nft list chain ip shim {chain}")));
    assert!(rule.contains("revision rev1"), "{rule}");

    let before = nginx_processes();
    let (st, long, took) = upgrades_under_load(&cfg, id, port, 50);
    let after = nginx_processes();
    println!(
        "nftables: 50 upgrades in {took:?}: {} ok ({} on reused connections), {} failed: {:?}",
        st.ok,
        st.reused,
        st.failed.len(),
        st.failed.iter().take(5).collect::<Vec<_>>()
    );
    assert!(
        st.failed.is_empty(),
        "{} failed: {:?}",
        st.failed.len(),
        st.failed
    );
    assert!(st.ok > 500 && st.reused * 10 > st.ok * 9, "{st:?}");
    // A reload starts new workers; the old workers of the site's own reload may still be
    // exiting when `before` is taken, so: same master, and no worker that was not there.
    assert_eq!(before.0, after.0, "nginx was restarted");
    let was: Vec<&str> = before.1.split_whitespace().collect();
    assert!(
        after.1.split_whitespace().all(|p| was.contains(&p)),
        "nginx was reloaded: new workers {after:?}, before {before:?}"
    );
    assert_eq!(
        std::fs::read_to_string(format!("/etc/nginx/shim/{id}.conf")).unwrap(),
        file,
        "the upstream file was rewritten"
    );
    let (code, body, _) = long.expect("the 5 s request");
    assert_eq!(code, 200, "{body}");
    let rule = stdout(&sh(&format!("nft list chain ip shim {chain}")));
    assert!(rule.contains("revision rev1"), "{rule}");

    shim_ok(cfg.path(), &["stop", "--id", id]);
    let (code, _) = http_get(port, "/").expect("nginx answers");
    assert_eq!(code, 502, "a stopped service answers 502");
    let rule = stdout(&sh(&format!("nft list chain ip shim {chain}")));
    assert!(!rule.contains("dnat"), "{rule}");
    unsite(id);
}

#[test]
fn fifty_upgrades_under_keep_alive_load_with_reload_for_the_record() {
    require_sandbox!();
    let (id, port) = ("reloadka", 8932);
    let cfg = TestConfig::new(&toml(id, "reload"));
    shim_ok(cfg.path(), &["upgrade", "--id", id, "--revision", "rev1"]);
    site(id, port);
    let (st, long, took) = upgrades_under_load(&cfg, id, port, 50);
    println!(
        "reload (for the record, not asserted): 50 upgrades in {took:?}: {} ok ({} on reused connections), {} failed, long request: {:?}; first failures: {:?}",
        st.ok,
        st.reused,
        st.failed.len(),
        long.map(|(c, _, _)| c),
        st.failed.iter().take(5).collect::<Vec<_>>()
    );
    shim_ok(cfg.path(), &["stop", "--id", id]);
    unsite(id);
}

/// A hung instance (SIGSTOPped: the kernel still accepts connections into its listen backlog,
/// nothing answers) under keep-alive load, with the site's `proxy_read_timeout 1s` and
/// `proxy_next_upstream error timeout`, and the probe made slow (checks every 5 s, 3 failures
/// to kill) so that only nginx's passive detection stands between the clients and the hung
/// instance for the first ~15 s: no request fails, none takes much over a second, and the
/// probe then replaces the instance.
fn a_hung_instance_costs_a_second_at_most(switch: &str, id: &str, port: u16) {
    let cfg = TestConfig::new(
        &toml(id, switch)
            .replace(
                r#"interval = "1s", timeout = "1s""#,
                r#"interval = "5s", timeout = "1s", unhealthy_after = 3"#,
            )
            .replace("count = 2", "count = 3"),
    );
    shim_ok(cfg.path(), &["upgrade", "--id", id, "--revision", "rev1"]);
    site_with(
        id,
        port,
        "proxy_read_timeout 1s; proxy_next_upstream error timeout; proxy_next_upstream_tries 3;",
    );
    let units = stdout(&sh(&format!(
        "systemctl list-units --plain --no-legend 'shim-{id}-web-*' | awk '{{print $1}}' | sort"
    )));
    let victim = units.lines().next().expect("an instance unit").to_string();
    let pid = unit_prop(&victim, "MainPID");
    let load = Load::start(port, 8);
    std::thread::sleep(Duration::from_millis(500));
    assert!(sh(&format!("kill -STOP {pid}")).status.success());
    let stopped = Instant::now();
    std::thread::sleep(Duration::from_secs(8));
    let st = load.finish();
    println!(
        "{switch}: hung instance {victim} (pid {pid}) for 8 s: {} ok, {} failed, slowest {:?}, {} over 500 ms",
        st.ok,
        st.failed.len(),
        st.slowest,
        st.over_500ms
    );
    let gone = wait_for(
        Duration::from_secs(40),
        "the probe replaces the hung instance",
        || {
            let now = unit_prop(&victim, "MainPID");
            (now != pid).then_some(now)
        },
    );
    println!(
        "{switch}: replaced after {:?} (new pid {gone})",
        stopped.elapsed()
    );
    let _ = sh(&format!("kill -CONT {pid}"));
    assert!(
        st.failed.is_empty(),
        "{} failed: {:?}",
        st.failed.len(),
        st.failed
    );
    assert!(
        st.slowest < Duration::from_millis(1800),
        "a request waited {:?} on the hung instance",
        st.slowest
    );
    assert!(
        st.over_500ms > 0,
        "no request met the hung instance: the test proves nothing"
    );
    assert!(st.ok > 200, "{st:?}");
    shim_ok(cfg.path(), &["stop", "--id", id]);
    unsite(id);
}

#[test]
fn a_hung_instance_costs_a_second_at_most_with_nftables() {
    require_sandbox!();
    a_hung_instance_costs_a_second_at_most("nftables", "hungnft", 8933);
}

#[test]
fn a_hung_instance_costs_a_second_at_most_with_reload() {
    require_sandbox!();
    a_hung_instance_costs_a_second_at_most("reload", "hungrl", 8934);
}
