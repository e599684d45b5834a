//! An in-memory [`Systemd`] for unit tests of the modules that drive it: it records every
//! call and keeps started units "active" until stopped.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::time::Duration;

use super::{JobOutcome, Systemd, SystemdError, UnitInfo};
use crate::plan::{Prop, UnitSpec};

#[derive(Default)]
pub struct FakeSystemd {
    pub units: RefCell<BTreeMap<String, UnitInfo>>,
    pub calls: RefCell<Vec<String>>,
    /// Units whose start job should fail.
    pub fail_start: RefCell<Vec<String>>,
}

fn glob_match(pattern: &str, name: &str) -> bool {
    match pattern.split_once('*') {
        None => pattern == name,
        Some((pre, post)) => {
            name.len() >= pre.len() + post.len() && name.starts_with(pre) && name.ends_with(post)
        }
    }
}

impl Systemd for FakeSystemd {
    fn list_units(&self, patterns: &[String]) -> Result<Vec<UnitInfo>, SystemdError> {
        self.calls
            .borrow_mut()
            .push(format!("list {}", patterns.join(" ")));
        Ok(self
            .units
            .borrow()
            .values()
            .filter(|u| patterns.iter().any(|p| glob_match(p, &u.name)))
            .cloned()
            .collect())
    }

    fn start_transient(
        &self,
        units: &[UnitSpec],
        _timeout: Duration,
    ) -> Result<Vec<JobOutcome>, SystemdError> {
        let mut out = Vec::new();
        for u in units {
            self.calls.borrow_mut().push(format!("start {}", u.name));
            if self.units.borrow().contains_key(&u.name) {
                return Err(SystemdError::Call {
                    call: "StartTransientUnit",
                    unit: u.name.clone(),
                    message: "Unit already exists".into(),
                });
            }
            if self.fail_start.borrow().contains(&u.name) {
                out.push(JobOutcome {
                    unit: u.name.clone(),
                    result: "failed".into(),
                });
                continue;
            }
            let fields = u
                .properties
                .iter()
                .find_map(|(k, v)| match (k.as_str(), v) {
                    ("LogExtraFields", Prop::Bytes(f)) => Some(f.clone()),
                    _ => None,
                })
                .unwrap_or_default()
                .iter()
                .filter_map(|f| {
                    f.split_once('=')
                        .map(|(a, b)| (a.to_string(), b.to_string()))
                })
                .collect();
            self.units.borrow_mut().insert(
                u.name.clone(),
                UnitInfo {
                    name: u.name.clone(),
                    load_state: "loaded".into(),
                    active_state: "active".into(),
                    sub_state: "running".into(),
                    main_pid: 4242,
                    main_start_usec: 1,
                    fields,
                    ..Default::default()
                },
            );
            out.push(JobOutcome {
                unit: u.name.clone(),
                result: "done".into(),
            });
        }
        Ok(out)
    }

    fn reload_unit(&self, name: &str, _timeout: Duration) -> Result<JobOutcome, SystemdError> {
        self.calls.borrow_mut().push(format!("reload {name}"));
        Ok(JobOutcome {
            unit: name.to_string(),
            result: "done".into(),
        })
    }

    fn stop_units(
        &self,
        names: &[String],
        _timeout: Duration,
    ) -> Result<Vec<JobOutcome>, SystemdError> {
        let mut out = Vec::new();
        for n in names {
            self.calls.borrow_mut().push(format!("stop {n}"));
            self.units.borrow_mut().remove(n);
            out.push(JobOutcome {
                unit: n.clone(),
                result: "done".into(),
            });
        }
        Ok(out)
    }

    fn start_units(
        &self,
        names: &[String],
        _timeout: Duration,
    ) -> Result<Vec<JobOutcome>, SystemdError> {
        let mut out = Vec::new();
        for n in names {
            self.calls.borrow_mut().push(format!("start-unit {n}"));
            let mut units = self.units.borrow_mut();
            let result = match units.get_mut(n) {
                Some(u) => {
                    u.active_state = "active".into();
                    u.sub_state = "running".into();
                    "done"
                }
                None => "failed",
            };
            out.push(JobOutcome {
                unit: n.clone(),
                result: result.into(),
            });
        }
        Ok(out)
    }

    fn start_transient_with_aux(
        &self,
        unit: &UnitSpec,
        aux: &[UnitSpec],
        timeout: Duration,
    ) -> Result<JobOutcome, SystemdError> {
        let all: Vec<UnitSpec> = std::iter::once(unit.clone())
            .chain(aux.iter().cloned())
            .collect();
        let mut out = self.start_transient(&all, timeout)?;
        Ok(out.remove(0))
    }

    fn kill_main(&self, name: &str, signal: i32) -> Result<(), SystemdError> {
        self.calls
            .borrow_mut()
            .push(format!("kill {name} {signal}"));
        Ok(())
    }

    fn reset_failed(&self, names: &[String]) -> Result<(), SystemdError> {
        for n in names {
            self.calls.borrow_mut().push(format!("reset-failed {n}"));
        }
        Ok(())
    }

    fn restart_failed(&self, name: &str, timeout: Duration) -> Result<JobOutcome, SystemdError> {
        self.reset_failed(&[name.to_string()])?;
        let mut out = self.start_units(&[name.to_string()], timeout)?;
        Ok(out.remove(0))
    }

    fn version(&self) -> Result<String, SystemdError> {
        Ok("252.39-1~deb12u2".into())
    }
}
