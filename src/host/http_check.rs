//! HTTP and TCP health checks of instances: the socket half of `host::health`'s checker.
//!
//! One `GET` per instance over a plain TCP socket, reading no more than the status line: the
//! probe runs every few seconds for every service, and an HTTP client (ureq spawned a resolver
//! thread, called getaddrinfo and zeroed 256 KiB of buffers per request) was most of its CPU
//! time. Only the instance's own endpoint (`plan::Endpoint`, formed in one place) is ever
//! asked, so no proxy, TLS or DNS is needed.
//!
//! [`check_sockets`] makes several checks at once from one thread: non-blocking connects, the
//! request written with one `send`, then `poll(2)` until every check has its status line or
//! its own deadline. A thread per check cost more than the checks (stack mappings, a malloc
//! arena each), and a request written piecewise by `write!` was one TCP segment per piece.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::fd::{AsFd, AsRawFd};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout};
use nix::sys::socket::{self, sockopt, AddressFamily, SockFlag, SockType, SockaddrStorage};

use crate::plan::health::{verdict, Check};
use crate::plan::Endpoint;

/// One socket check: a connect to `endpoint`, then, for an HTTP check, `GET path` (with
/// `Host: endpoint.authority()`) within `timeout`; a TCP check (no path) is the connect alone
/// (healthy as `Check::Healthy(0)`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SocketCheck<'a> {
    pub endpoint: Endpoint,
    pub path: Option<&'a str>,
    pub timeout: Duration,
}

/// The bytes of a request (pure): written with one `send`.
pub fn render_request(endpoint: Endpoint, path: &str) -> Vec<u8> {
    format!(
        "GET {path} HTTP/1.1\r\nHost: {}\r\nUser-Agent: shim-probe\r\nConnection: close\r\n\r\n",
        endpoint.authority()
    )
    .into_bytes()
}

enum Step {
    Connecting,
    /// Bytes of the request written so far.
    Sending(usize),
    /// Bytes of the answer read so far.
    Reading(usize),
    Done(Check),
}

struct Conn {
    sock: Option<TcpStream>,
    request: Vec<u8>,
    buf: [u8; 256],
    step: Step,
    deadline: Instant,
    timeout: Duration,
}

fn os_error(e: Errno) -> Check {
    Check::NoAnswer(std::io::Error::from_raw_os_error(e as i32).to_string())
}

impl Conn {
    fn open(r: &SocketCheck<'_>, start: Instant) -> Conn {
        let mut c = Conn {
            sock: None,
            // No request for a TCP check: connected is healthy.
            request: match r.path {
                None => Vec::new(),
                Some(path) => render_request(r.endpoint, path),
            },
            buf: [0; 256],
            step: Step::Connecting,
            deadline: start + r.timeout,
            timeout: r.timeout,
        };
        let family = if r.endpoint.ip.is_ipv4() {
            AddressFamily::Inet
        } else {
            AddressFamily::Inet6
        };
        let fd = match socket::socket(
            family,
            SockType::Stream,
            SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
            None,
        ) {
            Ok(fd) => fd,
            Err(e) => {
                c.step = Step::Done(os_error(e));
                return c;
            }
        };
        let addr = SockaddrStorage::from(r.endpoint.socket_addr());
        match socket::connect(fd.as_raw_fd(), &addr) {
            Ok(()) if c.request.is_empty() => {
                c.step = Step::Done(Check::Healthy(0));
                return c;
            }
            Ok(()) => c.step = Step::Sending(0),
            Err(Errno::EINPROGRESS) => {}
            Err(e) => {
                c.step = Step::Done(os_error(e));
                return c;
            }
        }
        c.sock = Some(TcpStream::from(fd));
        c
    }

    fn done(&self) -> bool {
        matches!(self.step, Step::Done(_))
    }

    fn events(&self) -> PollFlags {
        match self.step {
            Step::Reading(_) => PollFlags::POLLIN,
            _ => PollFlags::POLLOUT,
        }
    }

    fn finish(&mut self, c: Check) {
        self.step = Step::Done(c);
        self.sock = None;
    }

    /// Moves on after `poll` said the socket is ready (or in error).
    fn advance(&mut self) {
        let Some(sock) = self.sock.as_mut() else {
            return;
        };
        let would_block = |e: &std::io::Error| e.kind() == std::io::ErrorKind::WouldBlock;
        match self.step {
            Step::Connecting => match socket::getsockopt(&*sock, sockopt::SocketError) {
                Ok(0) if self.request.is_empty() => self.finish(Check::Healthy(0)),
                Ok(0) => {
                    self.step = Step::Sending(0);
                    self.advance();
                }
                Ok(err) => self.finish(os_error(Errno::from_raw(err))),
                Err(e) => self.finish(os_error(e)),
            },
            Step::Sending(sent) => match sock.write(&self.request[sent..]) {
                Ok(n) if sent + n >= self.request.len() => self.step = Step::Reading(0),
                Ok(n) => self.step = Step::Sending(sent + n),
                Err(e) if would_block(&e) => {}
                Err(e) => self.finish(Check::NoAnswer(e.to_string())),
            },
            // The status line is all that is needed: "HTTP/1.1 200 OK".
            Step::Reading(have) => match sock.read(&mut self.buf[have..]) {
                Ok(0) => self.finish(Check::NoAnswer(
                    "connection closed before a status line".into(),
                )),
                Ok(k) => {
                    let n = have + k;
                    if let Some(end) = self.buf[..n].windows(2).position(|w| w == b"\r\n") {
                        let c = match parse_status_line(&self.buf[..end]) {
                            Ok(status) => verdict(status),
                            Err(e) => Check::NoAnswer(e),
                        };
                        self.finish(c);
                    } else if n == self.buf.len() {
                        self.finish(Check::NoAnswer("status line too long".into()));
                    } else {
                        self.step = Step::Reading(n);
                    }
                }
                Err(e) if would_block(&e) => {}
                Err(e) => self.finish(Check::NoAnswer(e.to_string())),
            },
            Step::Done(_) => {}
        }
    }
}

/// Makes the socket checks concurrently from this thread; each has its own deadline, counted
/// from `start`. Results are in the order of `reqs`.
pub fn check_sockets(reqs: &[SocketCheck<'_>], start: Instant) -> Vec<Check> {
    let mut conns: Vec<Conn> = reqs.iter().map(|r| Conn::open(r, start)).collect();
    loop {
        let now = Instant::now();
        for c in conns.iter_mut().filter(|c| !c.done()) {
            if now >= c.deadline {
                let t = c.timeout;
                c.finish(Check::NoAnswer(format!("timeout after {t:?}")));
            }
        }
        let waiting: Vec<usize> = (0..conns.len())
            .filter(|&i| !conns[i].done() && conns[i].sock.is_some())
            .collect();
        let Some(next) = waiting.iter().map(|&i| conns[i].deadline).min() else {
            break;
        };
        // Rounded up, so that a wake-up is never before the deadline it waits for.
        let ms = next
            .saturating_duration_since(now)
            .as_micros()
            .div_ceil(1000);
        let timeout = PollTimeout::try_from(ms).unwrap_or(PollTimeout::MAX);
        let ready: Vec<(usize, bool)> = {
            let mut fds: Vec<PollFd<'_>> = waiting
                .iter()
                .filter_map(|&i| {
                    let c = &conns[i];
                    Some(PollFd::new(c.sock.as_ref()?.as_fd(), c.events()))
                })
                .collect();
            match nix::poll::poll(&mut fds, timeout) {
                Ok(_) => waiting
                    .iter()
                    .zip(&fds)
                    .map(|(&i, f)| (i, f.revents().is_some_and(|r| !r.is_empty())))
                    .collect(),
                Err(Errno::EINTR) => Vec::new(),
                Err(e) => {
                    drop(fds);
                    for &i in &waiting {
                        conns[i].finish(os_error(e));
                    }
                    break;
                }
            }
        };
        for (i, is_ready) in ready {
            if is_ready {
                conns[i].advance();
            }
        }
    }
    conns
        .into_iter()
        .map(|c| match c.step {
            Step::Done(c) => c,
            _ => Check::NoAnswer("no result".into()),
        })
        .collect()
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

    fn at(port: u16) -> Endpoint {
        Endpoint::for_instance(port)
    }

    fn check_all(reqs: &[SocketCheck<'_>]) -> Vec<Check> {
        check_sockets(reqs, Instant::now())
    }

    /// One HTTP check.
    fn check(port: u16, path: &str, timeout: Duration) -> Check {
        check_all(&[SocketCheck {
            endpoint: at(port),
            path: Some(path),
            timeout,
        }])
        .remove(0)
    }

    #[test]
    fn status_lines() {
        assert_eq!(parse_status_line(b"HTTP/1.1 204 No Content"), Ok(204));
        assert_eq!(parse_status_line(b"HTTP/1.0 500"), Ok(500));
        assert!(parse_status_line(b"SSH-2.0-OpenSSH").is_err());
        assert!(parse_status_line(b"HTTP/1.1 abc").is_err());
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
    fn a_tcp_check_is_a_connect_alone() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let req = |port| SocketCheck {
            endpoint: at(port),
            path: None,
            timeout: Duration::from_millis(500),
        };
        assert_eq!(check_all(&[req(port)]), vec![Check::Healthy(0)]);
        assert_eq!(Check::Healthy(0).to_string(), "TCP connected");
        // Nothing was sent on the connection.
        let (mut s, _) = l.accept().unwrap();
        s.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let mut buf = [0u8; 16];
        assert!(matches!(
            std::io::Read::read(&mut s, &mut buf),
            Ok(0) | Err(_)
        ));
        drop(l);
        // A port bound but not listening refuses connections, and stays ours while the check
        // runs (a port merely closed could be taken meanwhile by a parallel test's listener).
        let (_bound, closed) = bound_not_listening();
        assert!(
            !check_all(&[req(closed)])[0].healthy(),
            "refused when closed"
        );
    }

    /// A TCP socket bound to a free loopback port without listening, and the port.
    fn bound_not_listening() -> (std::os::fd::OwnedFd, u16) {
        use nix::sys::socket::{
            bind, getsockname, socket, AddressFamily, SockFlag, SockType, SockaddrIn,
        };
        let fd = socket(
            AddressFamily::Inet,
            SockType::Stream,
            SockFlag::empty(),
            None,
        )
        .unwrap();
        bind(
            std::os::fd::AsRawFd::as_raw_fd(&fd),
            &SockaddrIn::new(127, 0, 0, 1, 0),
        )
        .unwrap();
        let addr: SockaddrIn = getsockname(std::os::fd::AsRawFd::as_raw_fd(&fd)).unwrap();
        (fd, addr.port())
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

    #[test]
    fn requests_are_one_piece() {
        assert_eq!(
            String::from_utf8(render_request(at(20001), "/health")).unwrap(),
            "GET /health HTTP/1.1\r\nHost: 127.0.0.1:20001\r\nUser-Agent: shim-probe\r\nConnection: close\r\n\r\n"
        );
    }

    #[test]
    fn many_checks_at_once_each_with_its_own_deadline() {
        let ok = serve_once("HTTP/1.1 204 No Content\r\n\r\n");
        let bad = serve_once("HTTP/1.1 500 Oops\r\n\r\n");
        let garbage = serve_once("SSH-2.0-OpenSSH\r\n");
        let closes = serve_once("");
        let hung_l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let hung = hung_l.local_addr().unwrap().port();
        let refused = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let req = |port, ms| SocketCheck {
            endpoint: at(port),
            path: Some("/health"),
            timeout: Duration::from_millis(ms),
        };
        let t0 = Instant::now();
        let out = check_all(&[
            req(hung, 300),
            req(ok, 2000),
            req(bad, 2000),
            req(refused, 2000),
            req(garbage, 2000),
            req(closes, 2000),
        ]);
        let took = t0.elapsed();
        assert_eq!(out.len(), 6);
        assert_eq!(out[0], Check::NoAnswer("timeout after 300ms".into()));
        assert_eq!(out[1], Check::Healthy(204));
        assert_eq!(out[2], Check::Status(500));
        assert!(
            matches!(&out[3], Check::NoAnswer(e) if e.contains("refused")),
            "{:?}",
            out[3]
        );
        assert!(
            matches!(&out[4], Check::NoAnswer(e) if e.contains("not an HTTP answer")),
            "{:?}",
            out[4]
        );
        assert!(matches!(&out[5], Check::NoAnswer(_)), "{:?}", out[5]);
        // The hung one did not hold up the others, nor they it: all within its deadline.
        assert!(took >= Duration::from_millis(300), "{took:?}");
        assert!(took < Duration::from_millis(1500), "{took:?}");
        assert!(check_all(&[]).is_empty());
        drop(hung_l);
    }
}
