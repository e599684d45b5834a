//! shim-testapp: a tiny HTTP/1.1 server used as the workload in shim's
//! integration tests. Standard library only, so the binary can be dropped
//! into a minimal image next to the shared libraries it links.
//!
//! Environment:
//! - `PORT` (default 8080): listens on 0.0.0.0:PORT.
//! - `APP_REVISION`, `SHIM_INSTANCE`: echoed by `GET /`.
//! - `APP_HEALTH_FAIL=1`: `/health` answers 500.
//! - `APP_BOOT_DELAY_MS=N`: sleep N ms before listening (slow start).
//! - `APP_CRASH_AFTER_MS=N`: exit with code 3 after N ms.
//! - `APP_IGNORE_SIGTERM=1`: ignore SIGTERM (forces the supervisor to SIGKILL).
//! - `APP_SIGTERM_EXIT=N`: exit with status N on SIGTERM (143, as a shell's `trap` or the
//!   JVM does: systemd counts it as a failure), instead of 0.
//!
//! Routes (any method; HEAD gets headers only):
//! - `/` → `revision=R instance=I pid=P`
//! - `/health` → 200 `ok`, or 500 if APP_HEALTH_FAIL=1, /tmp/unhealthy exists
//!   or `/admin/unhealthy` was called (`/admin/healthy` clears it)
//! - `/admin/hang` → answers, then never answers any request again
//! - `/admin/crash` → exit 3; `/admin/exit?code=N` → exit N (after answering)
//! - `/env` → KEY=VALUE lines, sorted
//! - `/write?path=P&data=D`, `/read?path=P` (404 if missing)
//! - `/whoami` → `uid=N gid=N` (effective ids, from /proc/self/status)
//! - `/sleep?ms=N` → answers after N ms (in-flight requests during a stop)

use std::collections::HashMap;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::Duration;

/// Set by `/admin/hang`: every later request is read and never answered.
static HANG: AtomicBool = AtomicBool::new(false);
/// Set by `/admin/unhealthy`, cleared by `/admin/healthy`.
static UNHEALTHY: AtomicBool = AtomicBool::new(false);

const MAX_LINE: usize = 16 * 1024;
const MAX_HEADERS: usize = 100;

// libc is linked by std anyway; declaring the few functions we need avoids a
// dependency on the libc crate.
extern "C" {
    fn signal(signum: i32, handler: usize) -> usize;
    fn _exit(status: i32) -> !;
    fn getpid() -> i32;
}
const SIGINT: i32 = 2;
const SIGTERM: i32 = 15;
const SIG_IGN: usize = 1;

/// The status SIGTERM exits with (`APP_SIGTERM_EXIT`), set before the handler is installed.
static SIGTERM_EXIT: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(0);

extern "C" fn exit_on_signal(sig: i32) {
    // Why a handler at all: as PID 1 of a container the kernel ignores
    // signals that have the default action, so without it SIGTERM would do
    // nothing. _exit is async-signal-safe; every log line is already flushed.
    let code = if sig == SIGTERM {
        SIGTERM_EXIT.load(Ordering::Relaxed)
    } else {
        0
    };
    unsafe { _exit(code) }
}

fn install_signal_handlers() {
    let ignore = env_flag("APP_IGNORE_SIGTERM");
    let code = std::env::var("APP_SIGTERM_EXIT").ok();
    if let Some(code) = code.and_then(|v| v.trim().parse::<i32>().ok()) {
        SIGTERM_EXIT.store(code, Ordering::Relaxed);
    }
    unsafe {
        if ignore {
            signal(SIGTERM, SIG_IGN);
        } else {
            signal(SIGTERM, exit_on_signal as extern "C" fn(i32) as usize);
        }
        signal(SIGINT, exit_on_signal as extern "C" fn(i32) as usize);
    }
}

fn env_or(key: &str, default: &str) -> String {
    std::env::var(key).unwrap_or_else(|_| default.to_string())
}

fn env_flag(key: &str) -> bool {
    std::env::var(key).map(|v| v == "1").unwrap_or(false)
}

fn env_ms(key: &str) -> Option<u64> {
    std::env::var(key).ok().and_then(|v| v.trim().parse().ok())
}

/// Write one line to stdout and flush it (journald sees it immediately).
/// Errors are ignored: a closed stdout must not kill the app.
fn log(line: &str) {
    let mut out = io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

fn main() {
    install_signal_handlers();
    {
        let mut err = io::stderr().lock();
        let _ = writeln!(err, "testapp stderr hello");
        let _ = err.flush();
    }

    let port: u16 = match env_or("PORT", "8080").trim().parse() {
        Ok(p) => p,
        Err(_) => {
            eprintln!("testapp: invalid PORT");
            process::exit(2);
        }
    };
    let revision = env_or("APP_REVISION", "unknown");
    let instance = env_or("SHIM_INSTANCE", "?");

    if let Some(ms) = env_ms("APP_CRASH_AFTER_MS") {
        thread::spawn(move || {
            thread::sleep(Duration::from_millis(ms));
            log(&format!(
                "testapp crashing after {ms} ms (APP_CRASH_AFTER_MS)"
            ));
            process::exit(3);
        });
    }
    if let Some(ms) = env_ms("APP_BOOT_DELAY_MS") {
        thread::sleep(Duration::from_millis(ms));
    }

    let listener = match TcpListener::bind(("0.0.0.0", port)) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("testapp: cannot listen on 0.0.0.0:{port}: {e}");
            process::exit(1);
        }
    };
    log(&format!(
        "testapp listening on :{port} revision={revision} instance={instance}"
    ));

    for conn in listener.incoming() {
        match conn {
            Ok(stream) => {
                thread::spawn(move || {
                    let _ = handle_connection(stream);
                });
            }
            // e.g. EMFILE under load: back off instead of spinning.
            Err(_) => thread::sleep(Duration::from_millis(10)),
        }
    }
}

struct Request {
    method: String,
    /// The request line, logged to stdout.
    line: String,
    path: String,
    query: HashMap<String, String>,
    keep_alive: bool,
}

struct Response {
    status: u16,
    body: String,
    /// Exit the process with this code once the response is sent.
    exit_after: Option<i32>,
}

impl Response {
    fn new(status: u16, body: impl Into<String>) -> Self {
        Response {
            status,
            body: body.into(),
            exit_after: None,
        }
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        500 => "Internal Server Error",
        _ => "Unknown",
    }
}

/// Serve requests on one connection until the client closes it or asks to.
fn handle_connection(stream: TcpStream) -> io::Result<()> {
    let _ = stream.set_nodelay(true);
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut writer = stream;
    loop {
        let req = match read_request(&mut reader) {
            Ok(Some(r)) => r,
            Ok(None) => return Ok(()), // clean close between requests
            Err(e) => {
                let _ = write_response(
                    &mut writer,
                    "GET",
                    &Response::new(400, format!("{e}\n")),
                    false,
                );
                return Ok(());
            }
        };
        if HANG.load(Ordering::SeqCst) {
            hang_forever();
        }
        log(&req.line);
        let resp = route(&req);
        write_response(&mut writer, &req.method, &resp, req.keep_alive)?;
        if let Some(code) = resp.exit_after {
            log(&format!("testapp exiting with code {code}"));
            process::exit(code);
        }
        if !req.keep_alive {
            return Ok(());
        }
    }
}

fn hang_forever() -> ! {
    loop {
        thread::sleep(Duration::from_secs(3600));
    }
}

/// Read one line (up to CRLF), bounded. Ok(None) on EOF before any byte.
fn read_line(reader: &mut BufReader<TcpStream>) -> io::Result<Option<String>> {
    let mut buf = Vec::new();
    let n = reader
        .by_ref()
        .take(MAX_LINE as u64)
        .read_until(b'\n', &mut buf)?;
    if n == 0 {
        return Ok(None);
    }
    if buf.last() != Some(&b'\n') {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "line too long or truncated",
        ));
    }
    while matches!(buf.last(), Some(b'\n') | Some(b'\r')) {
        buf.pop();
    }
    Ok(Some(String::from_utf8_lossy(&buf).into_owned()))
}

fn bad(msg: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.to_string())
}

fn read_request(reader: &mut BufReader<TcpStream>) -> io::Result<Option<Request>> {
    // Tolerate empty lines before a request line (RFC 9112 §2.2).
    let line = loop {
        match read_line(reader)? {
            None => return Ok(None),
            Some(l) if l.is_empty() => continue,
            Some(l) => break l,
        }
    };
    let mut parts = line.split_whitespace();
    let (method, target, version) = match (parts.next(), parts.next(), parts.next()) {
        (Some(m), Some(t), Some(v)) if v.starts_with("HTTP/1.") => {
            (m.to_string(), t.to_string(), v.to_string())
        }
        _ => return Err(bad("bad request line")),
    };

    let mut content_length: u64 = 0;
    let mut chunked = false;
    let mut connection = String::new();
    let mut count = 0;
    loop {
        let h = read_line(reader)?.ok_or_else(|| bad("eof in headers"))?;
        if h.is_empty() {
            break;
        }
        count += 1;
        if count > MAX_HEADERS {
            return Err(bad("too many headers"));
        }
        let (name, value) = h.split_once(':').ok_or_else(|| bad("bad header"))?;
        let value = value.trim();
        match name.trim().to_ascii_lowercase().as_str() {
            "content-length" => {
                content_length = value.parse().map_err(|_| bad("bad content-length"))?
            }
            "transfer-encoding" => chunked = value.to_ascii_lowercase().contains("chunked"),
            "connection" => connection = value.to_ascii_lowercase(),
            _ => {}
        }
    }

    // Bodies are not used by any route, but must be consumed to keep the
    // connection in sync for the next request.
    if chunked {
        discard_chunked(reader)?;
    } else if content_length > 0 {
        let copied = io::copy(&mut reader.by_ref().take(content_length), &mut io::sink())?;
        if copied != content_length {
            return Err(bad("eof in body"));
        }
    }

    let keep_alive = if version == "HTTP/1.0" {
        connection.contains("keep-alive")
    } else {
        !connection.contains("close")
    };
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p.to_string(), parse_query(q)),
        None => (target.clone(), HashMap::new()),
    };
    Ok(Some(Request {
        method,
        line,
        path,
        query,
        keep_alive,
    }))
}

fn discard_chunked(reader: &mut BufReader<TcpStream>) -> io::Result<()> {
    loop {
        let line = read_line(reader)?.ok_or_else(|| bad("eof in chunk size"))?;
        let size_hex = line.split(';').next().unwrap_or("").trim();
        let size = u64::from_str_radix(size_hex, 16).map_err(|_| bad("bad chunk size"))?;
        if size == 0 {
            // Trailers, up to the empty line.
            while !read_line(reader)?
                .ok_or_else(|| bad("eof in trailers"))?
                .is_empty()
            {}
            return Ok(());
        }
        io::copy(&mut reader.by_ref().take(size), &mut io::sink())?;
        read_line(reader)?; // CRLF after the chunk data
    }
}

fn parse_query(q: &str) -> HashMap<String, String> {
    q.split('&')
        .filter(|kv| !kv.is_empty())
        .map(|kv| match kv.split_once('=') {
            Some((k, v)) => (percent_decode(k), percent_decode(v)),
            None => (percent_decode(kv), String::new()),
        })
        .collect()
}

fn percent_decode(s: &str) -> String {
    fn hex(c: u8) -> Option<u8> {
        (c as char).to_digit(16).map(|d| d as u8)
    }
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => match (hex(b[i + 1]), hex(b[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push(h << 4 | l);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn write_response(
    w: &mut TcpStream,
    method: &str,
    resp: &Response,
    keep_alive: bool,
) -> io::Result<()> {
    let mut head = format!(
        "HTTP/1.1 {} {}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\n",
        resp.status,
        reason(resp.status),
        resp.body.len()
    );
    head.push_str(if keep_alive {
        "Connection: keep-alive\r\n\r\n"
    } else {
        "Connection: close\r\n\r\n"
    });
    let mut out = head.into_bytes();
    if method != "HEAD" {
        out.extend_from_slice(resp.body.as_bytes());
    }
    w.write_all(&out)?;
    w.flush()
}

fn healthy() -> bool {
    !env_flag("APP_HEALTH_FAIL")
        && !UNHEALTHY.load(Ordering::SeqCst)
        && !std::path::Path::new("/tmp/unhealthy").exists()
}

/// Effective uid and gid, from the second field of Uid:/Gid: in
/// /proc/self/status (real, effective, saved, fs).
fn whoami() -> String {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|rest| rest.split_whitespace().nth(1))
            .unwrap_or("?")
            .to_string()
    };
    format!("uid={} gid={}\n", field("Uid:"), field("Gid:"))
}

fn route(req: &Request) -> Response {
    let q = |k: &str| req.query.get(k).cloned();
    match req.path.as_str() {
        "/" => Response::new(
            200,
            format!(
                "revision={} instance={} pid={}\n",
                env_or("APP_REVISION", "unknown"),
                env_or("SHIM_INSTANCE", "?"),
                unsafe { getpid() }
            ),
        ),
        "/health" => {
            if healthy() {
                Response::new(200, "ok\n")
            } else {
                Response::new(500, "unhealthy\n")
            }
        }
        "/admin/unhealthy" => {
            UNHEALTHY.store(true, Ordering::SeqCst);
            Response::new(200, "now unhealthy\n")
        }
        "/admin/healthy" => {
            UNHEALTHY.store(false, Ordering::SeqCst);
            Response::new(200, "now healthy\n")
        }
        "/admin/hang" => {
            // This request is answered; every later one (on any connection)
            // is read and never answered.
            HANG.store(true, Ordering::SeqCst);
            log("testapp hanging: no further requests will be answered");
            Response::new(200, "hanging\n")
        }
        "/admin/crash" => Response {
            exit_after: Some(3),
            ..Response::new(200, "crashing\n")
        },
        "/admin/exit" => match q("code").unwrap_or_default().parse::<i32>() {
            Ok(code) => Response {
                exit_after: Some(code),
                ..Response::new(200, format!("exiting with {code}\n"))
            },
            Err(_) => Response::new(400, "need ?code=N\n"),
        },
        "/env" => {
            let mut vars: Vec<String> = std::env::vars_os()
                .map(|(k, v)| format!("{}={}", k.to_string_lossy(), v.to_string_lossy()))
                .collect();
            vars.sort();
            let mut body = vars.join("\n");
            body.push('\n');
            Response::new(200, body)
        }
        "/write" => match (q("path"), q("data")) {
            (Some(path), data) => {
                let data = data.unwrap_or_default();
                match std::fs::write(&path, data.as_bytes()) {
                    Ok(()) => Response::new(200, format!("wrote {} bytes to {path}\n", data.len())),
                    Err(e) => Response::new(500, format!("write {path}: {e}\n")),
                }
            }
            _ => Response::new(400, "need ?path=P&data=D\n"),
        },
        "/read" => match q("path") {
            Some(path) => match std::fs::read(&path) {
                Ok(b) => Response::new(200, String::from_utf8_lossy(&b).into_owned()),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    Response::new(404, format!("{path}: not found\n"))
                }
                Err(e) => Response::new(500, format!("read {path}: {e}\n")),
            },
            None => Response::new(400, "need ?path=P\n"),
        },
        "/whoami" => Response::new(200, whoami()),
        "/sleep" => {
            let ms: u64 = q("ms").and_then(|v| v.parse().ok()).unwrap_or(1000);
            thread::sleep(Duration::from_millis(ms));
            Response::new(200, format!("slept {ms} ms\n"))
        }
        _ => Response::new(404, "not found\n"),
    }
}
