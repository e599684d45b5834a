//! The health-check seam: [`HealthChecker`] makes a batch of [`Probe`]s (HTTP, TCP and
//! command checks alike) and returns one [`Check`] per probe, in order.
//!
//! Flow of the real checker ([`RealHealthChecker`]): the command checks' processes are made
//! from their bundles (`exec_check::load_process`, a typed OCI `Process`) and started first,
//! the socket checks (`http_check`) are polled from this thread meanwhile, then the commands
//! are waited for, each until its own deadline. The two halves know nothing of each other;
//! only this module dispatches on the probe's kind.

use std::time::Instant;

pub use crate::plan::health::{Check, Probe, Target};

use crate::host::exec_check::{self, CommandCheck};
use crate::host::http_check::{self, SocketCheck};

/// Health checks as the operations make them.
pub trait HealthChecker: Send + Sync {
    /// Several checks at once; one result per probe, in order.
    fn check_all(&self, probes: &[&Probe]) -> Vec<Check>;
}

/// Real checks: sockets to the instances' endpoints, commands through the runtime's `exec`.
pub struct RealHealthChecker;

impl HealthChecker for RealHealthChecker {
    fn check_all(&self, probes: &[&Probe]) -> Vec<Check> {
        let start = Instant::now();
        let commands: Vec<CommandCheck<'_>> = probes
            .iter()
            .enumerate()
            .filter_map(|(index, p)| match &p.target {
                Target::Command { container, argv } => Some(CommandCheck {
                    index,
                    container,
                    process: exec_check::load_process(container, argv),
                    timeout: p.timeout(),
                }),
                _ => None,
            })
            .collect();
        let mut running = exec_check::Running::start(commands, start);
        let (slots, sockets): (Vec<usize>, Vec<SocketCheck<'_>>) = probes
            .iter()
            .enumerate()
            .filter_map(|(i, p)| Some((i, socket_check(p)?)))
            .unzip();
        let mut out = vec![Check::NoAnswer("no result".into()); probes.len()];
        for (i, c) in slots
            .into_iter()
            .zip(http_check::check_sockets(&sockets, start))
        {
            out[i] = c;
        }
        for (i, c) in running.wait() {
            if let Some(slot) = out.get_mut(i) {
                *slot = c;
            }
        }
        out
    }
}

/// The socket check a probe makes, if it is an HTTP or TCP one.
fn socket_check(p: &Probe) -> Option<SocketCheck<'_>> {
    let (endpoint, path) = match &p.target {
        Target::Http { endpoint, path } => (*endpoint, Some(path.as_str())),
        Target::Tcp { endpoint } => (*endpoint, None),
        Target::Command { .. } => return None,
    };
    Some(SocketCheck {
        endpoint,
        path,
        timeout: p.timeout(),
    })
}

/// Scripted answers, for unit tests: by port for HTTP and TCP checks, by container for
/// command checks; `default` for anything else; a probe with no answer is refused. Every
/// probe is recorded in `asked` as (port, path): (0, "command ARGV") for a command.
#[cfg(test)]
#[derive(Default)]
pub struct FakeHealthChecker {
    pub answers: std::sync::Mutex<std::collections::BTreeMap<u16, Check>>,
    pub commands: std::sync::Mutex<std::collections::BTreeMap<String, Check>>,
    /// Answers that apply to any probe without its own (e.g. "every new instance is healthy").
    pub default: std::sync::Mutex<Option<Check>>,
    pub asked: std::sync::Mutex<Vec<(u16, String)>>,
}

#[cfg(test)]
impl HealthChecker for FakeHealthChecker {
    fn check_all(&self, probes: &[&Probe]) -> Vec<Check> {
        use crate::host::systemd::fake::lock;
        probes
            .iter()
            .map(|p| {
                let (asked, own) = match &p.target {
                    Target::Http { endpoint, path } => (
                        (endpoint.port, path.clone()),
                        lock(&self.answers).get(&endpoint.port).cloned(),
                    ),
                    Target::Tcp { endpoint } => (
                        (endpoint.port, String::new()),
                        lock(&self.answers).get(&endpoint.port).cloned(),
                    ),
                    Target::Command { container, argv } => (
                        (0, format!("command {}", argv.join(" "))),
                        lock(&self.commands).get(&container.name).cloned(),
                    ),
                };
                lock(&self.asked).push(asked);
                own.or_else(|| lock(&self.default).clone())
                    .unwrap_or_else(|| Check::NoAnswer("connection refused".into()))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::health::Container;
    use crate::plan::Endpoint;
    use std::io::{Read, Write};
    use std::time::Duration;

    /// One batch of each kind through the real checker: each probe gets its own verdict, in
    /// order, the HTTP one sent to the endpoint with its authority as `Host:`.
    #[test]
    fn the_real_checker_dispatches_each_kind_and_keeps_the_order() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let seen = std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            let mut buf = [0u8; 512];
            let n = s.read(&mut buf).unwrap();
            s.write_all(b"HTTP/1.1 204 No Content\r\n\r\n").unwrap();
            String::from_utf8_lossy(&buf[..n]).to_string()
        });
        let tmp = tempfile::tempdir().unwrap();
        let endpoint = Endpoint::for_instance(port);
        let timeout_ms = 2000;
        let http = Probe {
            target: Target::Http {
                endpoint,
                path: "/up".into(),
            },
            timeout_ms,
        };
        // No bundle: the command check fails to start, with why, and holds up nothing.
        let cmd = Probe {
            target: Target::Command {
                container: Container::of(crate::config::Runtime::Runc, tmp.path(), "c.service"),
                argv: vec!["true".into()],
            },
            timeout_ms,
        };
        let t0 = Instant::now();
        let out = RealHealthChecker.check_all(&[&cmd, &http]);
        assert!(t0.elapsed() < Duration::from_secs(2));
        assert!(matches!(&out[0], Check::NoAnswer(_)), "{out:?}");
        assert_eq!(out[1], Check::Healthy(204));
        let request = seen.join().unwrap();
        assert!(
            request.contains(&format!("Host: {}\r\n", endpoint.authority())),
            "{request}"
        );
    }
}
