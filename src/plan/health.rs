//! Health checks as one type, from the definition to the verdict (pure).
//!
//! Flow: a process's `config::Health` says what kind of check it is ([`HealthCheck`]);
//! [`Probe::for_instance`] binds it to one instance by the one rule of what a check asks: HTTP
//! and TCP checks the instance's [`Endpoint`], a command check its container; a checker
//! (`host::health::HealthChecker`) makes the probes and returns a [`Check`] for each. The
//! upgrade's health gate, the probe (and its fast path's record) and `shim show` all go
//! through these types.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config::{Health, HealthCheck, Runtime};
use crate::plan::Endpoint;

/// The container a command check runs in: the instance's, named after its unit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Container {
    pub runtime: Runtime,
    /// The container id: the instance's unit name without `.service`.
    pub name: String,
    /// The instance's bundle directory (its `config.json` gives the check's process).
    pub bundle: PathBuf,
}

impl Container {
    /// The container of instance `unit` of a service run by `runtime`, whose bundles are
    /// under `instances_dir`.
    pub fn of(runtime: Runtime, instances_dir: &Path, unit: &str) -> Container {
        let name = super::names::stem_of_service(unit)
            .unwrap_or(unit)
            .to_string();
        Container {
            runtime,
            bundle: instances_dir.join(&name),
            name,
        }
    }
}

/// What a check asks of one instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Target {
    /// `GET path` sent to the endpoint (with `Host: endpoint.authority()`).
    Http { endpoint: Endpoint, path: String },
    /// A connect to the endpoint.
    Tcp { endpoint: Endpoint },
    /// `argv` run in the container, as its own process runs (user, environment, cwd).
    Command {
        container: Container,
        argv: Vec<String>,
    },
}

/// One instance's health check: what it asks, and how long it may take.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Probe {
    #[serde(flatten)]
    pub target: Target,
    pub timeout_ms: u64,
}

impl Probe {
    /// The check `h` of instance `unit` (at `endpoint`, if it has one). `None` when an HTTP
    /// or TCP check's instance has no endpoint recorded: there is nothing to ask.
    pub fn for_instance(
        h: &Health,
        runtime: Runtime,
        instances_dir: &Path,
        unit: &str,
        endpoint: Option<Endpoint>,
    ) -> Option<Probe> {
        let target = match h.check() {
            HealthCheck::Http { path } => Target::Http {
                endpoint: endpoint?,
                path,
            },
            HealthCheck::Tcp => Target::Tcp {
                endpoint: endpoint?,
            },
            HealthCheck::Command { argv } => Target::Command {
                container: Container::of(runtime, instances_dir, unit),
                argv,
            },
        };
        Some(Probe {
            target,
            timeout_ms: u64::try_from(h.timeout.as_millis()).unwrap_or(u64::MAX),
        })
    }

    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms)
    }

    /// With at most `max` to answer.
    pub fn capped(mut self, max: Duration) -> Probe {
        self.timeout_ms = self
            .timeout_ms
            .min(u64::try_from(max.as_millis()).unwrap_or(u64::MAX));
        self
    }

    /// A command check (a process in the container, paced by the gate), not a socket one.
    pub fn is_command(&self) -> bool {
        matches!(self.target, Target::Command { .. })
    }

    /// Where it was checked, for messages: ` on :PORT/path` for socket checks, nothing for a
    /// command.
    pub fn on(&self) -> String {
        match &self.target {
            Target::Http { endpoint, path } => format!(" on :{}{path}", endpoint.port),
            Target::Tcp { endpoint } => format!(" on :{}", endpoint.port),
            Target::Command { .. } => String::new(),
        }
    }
}

/// The outcome of one check.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum Check {
    /// A 2xx answer (0: a TCP check connected).
    Healthy(u16),
    /// Any other HTTP status.
    Status(u16),
    /// No HTTP answer: refused, reset, timed out; or a command check that could not run or
    /// did not finish in time.
    NoAnswer(String),
    /// A command check exited 0.
    Passed,
    /// A command check exited with this status (or was killed by this signal, negated).
    Exited(i32),
}

impl Check {
    pub fn healthy(&self) -> bool {
        matches!(self, Check::Healthy(_) | Check::Passed)
    }
}

impl std::fmt::Display for Check {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Check::Healthy(0) => write!(f, "TCP connected"),
            Check::Healthy(s) => write!(f, "HTTP {s}"),
            Check::Status(s) => write!(f, "HTTP {s}"),
            Check::NoAnswer(e) => write!(f, "no answer ({e})"),
            Check::Passed => write!(f, "command exited 0"),
            Check::Exited(n) if *n < 0 => write!(f, "command killed by signal {}", -n),
            Check::Exited(n) => write!(f, "command exited {n}"),
        }
    }
}

/// Classifies an HTTP status.
pub fn verdict(status: u16) -> Check {
    if (200..300).contains(&status) {
        Check::Healthy(status)
    } else {
        Check::Status(status)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn health(path: &str, command: &[&str]) -> Health {
        Health {
            path: path.into(),
            command: command.iter().map(|s| s.to_string()).collect(),
            interval: Duration::from_secs(5),
            timeout: Duration::from_secs(3),
            unhealthy_after: 3,
            start_period: Duration::from_secs(10),
        }
    }

    /// The one rule: HTTP and TCP checks ask the instance's endpoint, a command its container;
    /// a socket check of an instance without an endpoint asks nothing.
    #[test]
    fn a_check_asks_the_endpoint_or_the_container() {
        let e = Some(Endpoint::for_instance(20001));
        let dir = Path::new("/run/shim/instances/app");
        let unit = "shim-app-web-r1-1.service";
        let bind = |h: &Health, e| Probe::for_instance(h, Runtime::Runc, dir, unit, e);
        let http = bind(&health("/up", &[]), e).unwrap();
        assert_eq!(
            http.target,
            Target::Http {
                endpoint: Endpoint::for_instance(20001),
                path: "/up".into()
            }
        );
        assert_eq!((http.on(), http.timeout_ms), (" on :20001/up".into(), 3000));
        let tcp = bind(&health("", &[]), e).unwrap();
        assert_eq!(tcp.on(), " on :20001");
        assert_eq!(
            tcp.target,
            Target::Tcp {
                endpoint: Endpoint::for_instance(20001)
            }
        );
        let cmd = bind(&health("", &["bin/check"]), None).unwrap();
        assert_eq!(
            cmd.target,
            Target::Command {
                container: Container {
                    runtime: Runtime::Runc,
                    name: "shim-app-web-r1-1".into(),
                    bundle: dir.join("shim-app-web-r1-1"),
                },
                argv: vec!["bin/check".into()],
            }
        );
        assert!(cmd.is_command() && !http.is_command() && cmd.on().is_empty());
        assert_eq!(bind(&health("/up", &[]), None), None);
        assert_eq!(bind(&health("", &[]), None), None);
        assert_eq!(http.capped(Duration::from_secs(1)).timeout_ms, 1000);
    }

    #[test]
    fn verdicts() {
        assert!(verdict(200).healthy());
        assert!(verdict(204).healthy());
        assert_eq!(verdict(500), Check::Status(500));
        assert_eq!(verdict(302), Check::Status(302));
        assert!(Check::Passed.healthy() && !Check::Exited(1).healthy());
        assert_eq!(Check::Healthy(0).to_string(), "TCP connected");
    }
}
