//! HTTP health checks of instances (loopback only) and the verdict on them.
//!
//! One `GET` over a plain `TcpStream`, reading no more than the status line: the probe runs
//! every few seconds for every service, and an HTTP client (ureq spawned a resolver thread,
//! called getaddrinfo and zeroed 256 KiB of buffers per request) was most of its CPU time.
//! Only the instance's own loopback port is ever asked, so no proxy, TLS or DNS is needed.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use serde::Serialize;

/// The outcome of one health request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum Check {
    /// A 2xx answer.
    Healthy(u16),
    /// Any other HTTP status.
    Status(u16),
    /// No HTTP answer: refused, reset, timed out.
    NoAnswer(String),
}

impl Check {
    pub fn healthy(&self) -> bool {
        matches!(self, Check::Healthy(_))
    }
}

impl std::fmt::Display for Check {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Check::Healthy(s) => write!(f, "HTTP {s}"),
            Check::Status(s) => write!(f, "HTTP {s}"),
            Check::NoAnswer(e) => write!(f, "no answer ({e})"),
        }
    }
}

/// Classifies an HTTP status (pure).
pub fn verdict(status: u16) -> Check {
    if (200..300).contains(&status) {
        Check::Healthy(status)
    } else {
        Check::Status(status)
    }
}

/// GET `http://127.0.0.1:{port}{path}` within `timeout`. Only ever the instance's own loopback
/// port: instances share the host's network, and probes must not go anywhere else.
pub fn check(port: u16, path: &str, timeout: Duration) -> Check {
    match get_status(port, path, timeout) {
        Ok(status) => verdict(status),
        Err(e) => Check::NoAnswer(e),
    }
}

fn get_status(port: u16, path: &str, timeout: Duration) -> Result<u16, String> {
    let deadline = Instant::now() + timeout;
    let left = || {
        deadline
            .checked_duration_since(Instant::now())
            .filter(|d| !d.is_zero())
            .ok_or_else(|| format!("timeout after {timeout:?}"))
    };
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let mut s = TcpStream::connect_timeout(&addr, left()?).map_err(|e| e.to_string())?;
    s.set_write_timeout(Some(left()?))
        .map_err(|e| e.to_string())?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUser-Agent: shim-probe\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| e.to_string())?;
    // The status line is all that is needed: "HTTP/1.1 200 OK".
    let mut buf = [0u8; 256];
    let mut n = 0;
    loop {
        if let Some(end) = buf[..n].windows(2).position(|w| w == b"\r\n") {
            return parse_status_line(&buf[..end]);
        }
        if n == buf.len() {
            return Err("status line too long".into());
        }
        s.set_read_timeout(Some(left()?))
            .map_err(|e| e.to_string())?;
        match s.read(&mut buf[n..]) {
            Ok(0) => return Err("connection closed before a status line".into()),
            Ok(k) => n += k,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return Err(format!("timeout after {timeout:?}"))
            }
            Err(e) => return Err(e.to_string()),
        }
    }
}

/// The status code of an HTTP/1.x status line (pure).
pub fn parse_status_line(line: &[u8]) -> Result<u16, String> {
    let text = String::from_utf8_lossy(line);
    let mut parts = text.split(' ');
    match (parts.next(), parts.next().map(str::parse::<u16>)) {
        (Some(v), Some(Ok(code))) if v.starts_with("HTTP/1.") && (100..1000).contains(&code) => {
            Ok(code)
        }
        _ => Err(format!("not an HTTP answer: {text:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    #[test]
    fn status_lines() {
        assert_eq!(parse_status_line(b"HTTP/1.1 204 No Content"), Ok(204));
        assert_eq!(parse_status_line(b"HTTP/1.0 500"), Ok(500));
        assert!(parse_status_line(b"SSH-2.0-OpenSSH").is_err());
        assert!(parse_status_line(b"HTTP/1.1 abc").is_err());
    }

    #[test]
    fn verdicts() {
        assert!(verdict(200).healthy());
        assert!(verdict(204).healthy());
        assert_eq!(verdict(500), Check::Status(500));
        assert_eq!(verdict(302), Check::Status(302));
    }

    fn serve_once(reply: &'static str) -> u16 {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        std::thread::spawn(move || {
            if let Ok((mut s, _)) = l.accept() {
                let mut buf = [0u8; 1024];
                let _ = s.read(&mut buf);
                let _ = s.write_all(reply.as_bytes());
            }
        });
        port
    }

    #[test]
    fn checks_real_sockets() {
        let ok = serve_once("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
        assert_eq!(
            check(ok, "/health", Duration::from_secs(2)),
            Check::Healthy(200)
        );
        let bad = serve_once("HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n");
        assert_eq!(
            check(bad, "/health", Duration::from_secs(2)),
            Check::Status(503)
        );
        // Accepts but never answers: a hung instance.
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let hung = l.local_addr().unwrap().port();
        let c = check(hung, "/health", Duration::from_millis(200));
        assert!(matches!(c, Check::NoAnswer(_)), "{c:?}");
        drop(l);
        let closed = check(hung, "/health", Duration::from_millis(200));
        assert!(matches!(closed, Check::NoAnswer(_)), "{closed:?}");
    }
}
