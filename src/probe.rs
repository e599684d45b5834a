//! HTTP health checks of instances (ureq, loopback only) and the verdict on them.

use std::time::Duration;

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
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(timeout))
        .http_status_as_error(false)
        .max_idle_connections(0)
        .build()
        .into();
    match agent.get(format!("http://127.0.0.1:{port}{path}")).call() {
        Ok(resp) => verdict(resp.status().as_u16()),
        Err(e) => Check::NoAnswer(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

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
