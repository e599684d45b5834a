//! An in-memory [`Systemd`] for unit tests of the operations that drive it: it records every
//! call, keeps started units "active/running" until stopped, and lets a test script failures
//! (a start job that fails, a stop that fails, a unit that crashes) and read back what was
//! asked. Thread-safe (a `Mutex` each), so it fits [`super::SharedSystemd`] like the real one.

use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use super::{JobOutcome, ListedUnit, ReadError, Systemd, SystemdError, TimerInfo, UnitInfo};
use crate::plan::{Prop, UnitSpec};

#[derive(Default)]
pub struct FakeSystemd {
    pub units: Mutex<BTreeMap<String, UnitInfo>>,
    pub calls: Mutex<Vec<String>>,
    /// Units whose start job should fail.
    pub fail_start: Mutex<Vec<String>>,
    /// Units whose stop job should fail.
    pub fail_stop: Mutex<Vec<String>>,
    /// The specs of every transient unit started, by name (the last one wins).
    pub specs: Mutex<BTreeMap<String, UnitSpec>>,
    /// Called after every start of a transient unit: lets a test make a fresh unit crash,
    /// move to another state, or change something else on the "host".
    #[allow(clippy::type_complexity)]
    pub on_start: Mutex<Option<Box<dyn Fn(&mut UnitInfo) + Send>>>,
    /// Unit files systemd knows of (loaded at `daemon_reload` from the directories a test
    /// names in `unit_dirs`), with their enablement ("enabled"/"disabled").
    pub unit_files: Mutex<BTreeMap<String, String>>,
    /// Directories whose `*.service` files `daemon_reload` loads (as inactive units).
    pub unit_dirs: Mutex<Vec<std::path::PathBuf>>,
    /// What `system_state` says ("running" when empty).
    pub system_state: Mutex<String>,
    /// Units whose property read fails after they are listed, and how: `Vanished` (the unit
    /// went away meanwhile) or `Failed` (a D-Bus error: the whole read is an error).
    pub fail_read: Mutex<BTreeMap<String, ReadError>>,
    /// Called on every unit a stop job stops: lets a test say how its process ended (e.g.
    /// `failed` with result `exit-code` and status 143). A unit it leaves failed stays loaded,
    /// as `CollectMode=inactive` keeps it, until it is reset.
    #[allow(clippy::type_complexity)]
    pub on_stop: Mutex<Option<Box<dyn Fn(&mut UnitInfo) + Send>>>,
}

/// Locks a fake's field; a poisoned lock means a test already panicked.
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn glob_match(pattern: &str, name: &str) -> bool {
    match pattern.split_once('*') {
        None => pattern == name,
        Some((pre, post)) => {
            name.len() >= pre.len() + post.len() && name.starts_with(pre) && name.ends_with(post)
        }
    }
}

impl FakeSystemd {
    /// The calls made so far, e.g. `["list shim-app-*", "start shim-app-web-…"]`.
    pub fn calls(&self) -> Vec<String> {
        lock(&self.calls).clone()
    }

    /// The names of the units loaded now.
    pub fn unit_names(&self) -> Vec<String> {
        lock(&self.units).keys().cloned().collect()
    }

    /// Changes a loaded unit (e.g. to make it fail); no-op when it is not loaded.
    pub fn edit(&self, name: &str, f: impl FnOnce(&mut UnitInfo)) {
        if let Some(u) = lock(&self.units).get_mut(name) {
            f(u);
        }
    }

    /// Adds a unit as if something else had started it.
    pub fn insert(&self, u: UnitInfo) {
        lock(&self.units).insert(u.name.clone(), u);
    }

    /// A stopped unit is unloaded, unless a unit file backs it (then it is inactive) or
    /// `on_stop` made it fail (then it stays, failed, until reset).
    fn stop_one(&self, n: &str) {
        let mut units = lock(&self.units);
        let Some(u) = units.get_mut(n) else { return };
        if u.active_state == super::ActiveState::Failed {
            return;
        }
        if let Some(f) = lock(&self.on_stop).as_ref() {
            f(u);
        }
        if u.active_state == super::ActiveState::Failed {
            u.main_pid = 0;
        } else if lock(&self.unit_files).contains_key(n) {
            u.active_state = "inactive".into();
            u.sub_state = "dead".into();
            u.main_pid = 0;
        } else {
            units.remove(n);
        }
    }

    /// The loaded units matching any of `patterns`, as a listing shows them.
    fn matching(&self, patterns: &[String]) -> Vec<ListedUnit> {
        lock(&self.units)
            .values()
            .filter(|u| patterns.iter().any(|p| glob_match(p, &u.name)))
            .map(|u| ListedUnit {
                path: format!("/org/freedesktop/systemd1/unit/{}", u.name),
                name: u.name.clone(),
                description: u.description.clone(),
                load_state: u.load_state.clone(),
                active_state: u.active_state.clone(),
                sub_state: u.sub_state.clone(),
            })
            .collect()
    }

    /// Reads `listed` as the real reader does (see [`super::collect_reads`]), with the read
    /// errors of `fail_read`; a unit no longer loaded has vanished.
    fn read(&self, listed: &[ListedUnit]) -> Result<Vec<UnitInfo>, SystemdError> {
        let units = lock(&self.units);
        let fail = lock(&self.fail_read);
        let reads: Vec<Result<UnitInfo, ReadError>> = listed
            .iter()
            .map(|l| match (fail.get(&l.name), units.get(&l.name)) {
                (Some(e), _) => Err(e.clone()),
                (None, Some(u)) => Ok(u.clone()),
                (None, None) => Err(ReadError::Vanished),
            })
            .collect();
        super::collect_reads(listed, reads, |_, u| u)
    }

    /// Clears a failed unit's failed state: a unit file backs it, it is inactive; else it
    /// is unloaded (`CollectMode=inactive`).
    fn reset_one(&self, n: &str) {
        let mut units = lock(&self.units);
        let Some(u) = units.get_mut(n) else { return };
        if u.active_state != super::ActiveState::Failed {
            return;
        }
        if lock(&self.unit_files).contains_key(n) {
            u.active_state = "inactive".into();
            u.sub_state = "dead".into();
        } else {
            units.remove(n);
        }
    }

    fn record(&self, call: String) {
        lock(&self.calls).push(call);
    }
}

fn extra_fields(u: &UnitSpec) -> BTreeMap<String, String> {
    u.properties
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
        .collect()
}

fn description(u: &UnitSpec) -> String {
    u.properties
        .iter()
        .find_map(|(k, v)| match (k.as_str(), v) {
            ("Description", Prop::Str(d)) => Some(d.clone()),
            _ => None,
        })
        .unwrap_or_default()
}

impl Systemd for FakeSystemd {
    fn list_units(&self, patterns: &[String]) -> Result<Vec<UnitInfo>, SystemdError> {
        self.record(format!("list {}", patterns.join(" ")));
        let listed = self.matching(patterns);
        self.read(&listed)
    }

    fn start_transient(
        &self,
        units: &[UnitSpec],
        _timeout: Duration,
    ) -> Result<Vec<JobOutcome>, SystemdError> {
        let mut out = Vec::new();
        for u in units {
            self.record(format!("start {}", u.name));
            if lock(&self.units).contains_key(&u.name) {
                return Err(SystemdError::Call {
                    call: "StartTransientUnit",
                    unit: u.name.clone(),
                    message: "Unit already exists".into(),
                });
            }
            lock(&self.specs).insert(u.name.clone(), u.clone());
            if lock(&self.fail_start).contains(&u.name) {
                out.push(JobOutcome {
                    unit: u.name.clone(),
                    result: "failed".into(),
                });
                continue;
            }
            let mut info = UnitInfo {
                name: u.name.clone(),
                description: description(u),
                load_state: "loaded".into(),
                active_state: "active".into(),
                sub_state: if u.name.ends_with(".timer") {
                    "waiting".into()
                } else {
                    "running".into()
                },
                main_pid: 4242,
                main_start_usec: 1,
                fields: extra_fields(u),
                ..Default::default()
            };
            if let Some(f) = lock(&self.on_start).as_ref() {
                f(&mut info);
            }
            lock(&self.units).insert(u.name.clone(), info);
            out.push(JobOutcome {
                unit: u.name.clone(),
                result: "done".into(),
            });
        }
        Ok(out)
    }

    fn reload_unit(&self, name: &str, _timeout: Duration) -> Result<JobOutcome, SystemdError> {
        self.record(format!("reload {name}"));
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
            self.record(format!("stop {n}"));
            let fail = lock(&self.fail_stop).contains(n);
            if !fail {
                self.stop_one(n);
            }
            // As the real one: a stopped unit that failed is reset too, which unloads it.
            self.reset_one(n);
            out.push(JobOutcome {
                unit: n.clone(),
                result: if fail { "failed" } else { "done" }.into(),
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
            self.record(format!("start-unit {n}"));
            let mut units = lock(&self.units);
            let fail = lock(&self.fail_start).contains(n);
            let result = match units.get_mut(n) {
                Some(_) if fail => "failed",
                Some(u) => {
                    u.active_state = "active".into();
                    u.sub_state =
                        if n.ends_with(".service") && lock(&self.unit_files).contains_key(n) {
                            "exited".into()
                        } else {
                            "running".into()
                        };
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
        self.record(format!("kill {name} {signal}"));
        Ok(())
    }

    fn reset_failed(&self, names: &[String]) -> Result<(), SystemdError> {
        for n in names {
            self.record(format!("reset-failed {n}"));
            self.reset_one(n);
        }
        Ok(())
    }

    fn restart_failed(&self, name: &str, timeout: Duration) -> Result<JobOutcome, SystemdError> {
        // The real one holds a reference meanwhile: the reset unit is not unloaded.
        self.record(format!("reset-failed {name}"));
        let mut out = self.start_units(&[name.to_string()], timeout)?;
        Ok(out.remove(0))
    }

    fn version(&self) -> Result<String, SystemdError> {
        Ok("252.39-1~deb12u2".into())
    }

    fn list(&self, patterns: &[String]) -> Result<Vec<ListedUnit>, SystemdError> {
        self.record(format!("list {}", patterns.join(" ")));
        Ok(self.matching(patterns))
    }

    fn read_units(&self, listed: &[ListedUnit]) -> Result<Vec<UnitInfo>, SystemdError> {
        self.read(listed)
    }

    fn read_timers(&self, listed: &[ListedUnit]) -> Result<Vec<TimerInfo>, SystemdError> {
        Ok(listed
            .iter()
            .filter(|l| l.name.ends_with(".timer"))
            .map(|l| TimerInfo {
                name: l.name.clone(),
                active_state: l.active_state.clone(),
                next_elapse_usec: 0,
                last_trigger_usec: 0,
            })
            .collect())
    }

    fn start_with_fds(
        &self,
        unit: &UnitSpec,
        aux: &[UnitSpec],
        _fds: &[(&str, std::os::fd::BorrowedFd<'_>)],
        timeout: Duration,
    ) -> Result<JobOutcome, SystemdError> {
        self.start_transient_with_aux(unit, aux, timeout)
    }

    fn unref(&self, name: &str) -> Result<(), SystemdError> {
        self.record(format!("unref {name}"));
        Ok(())
    }

    fn daemon_reload(&self) -> Result<(), SystemdError> {
        self.record("daemon-reload".into());
        let mut found = Vec::new();
        for d in lock(&self.unit_dirs).iter() {
            for e in std::fs::read_dir(d).into_iter().flatten().flatten() {
                let name = e.file_name().to_string_lossy().to_string();
                if name.ends_with(".service") && e.path().is_file() {
                    found.push(name);
                }
            }
        }
        let mut files = lock(&self.unit_files);
        let mut units = lock(&self.units);
        files.retain(|n, _| found.contains(n));
        units.retain(|n, u| found.contains(n) || u.sub_state != super::SubState::Dead);
        for n in found {
            files.entry(n.clone()).or_insert_with(|| "disabled".into());
            units.entry(n.clone()).or_insert_with(|| UnitInfo {
                name: n,
                load_state: "loaded".into(),
                active_state: "inactive".into(),
                sub_state: "dead".into(),
                ..Default::default()
            });
        }
        Ok(())
    }

    fn enable_unit_files(&self, names: &[String]) -> Result<(), SystemdError> {
        for n in names {
            self.record(format!("enable {n}"));
            match lock(&self.unit_files).get_mut(n) {
                Some(s) => *s = "enabled".into(),
                None => {
                    return Err(SystemdError::Call {
                        call: "EnableUnitFiles",
                        unit: n.clone(),
                        message: "No such file or directory".into(),
                    })
                }
            }
        }
        Ok(())
    }

    fn disable_unit_files(&self, names: &[String]) -> Result<(), SystemdError> {
        for n in names {
            self.record(format!("disable {n}"));
            if let Some(s) = lock(&self.unit_files).get_mut(n) {
                *s = "disabled".into();
            }
        }
        Ok(())
    }

    fn unit_file_state(&self, name: &str) -> Result<Option<String>, SystemdError> {
        Ok(lock(&self.unit_files).get(name).cloned())
    }

    fn queue_stop(&self, names: &[String]) -> Result<(), SystemdError> {
        for n in names {
            self.record(format!("queue-stop {n}"));
            self.stop_one(n);
        }
        Ok(())
    }

    fn system_state(&self) -> Result<String, SystemdError> {
        let s = lock(&self.system_state).clone();
        Ok(if s.is_empty() { "running".into() } else { s })
    }
}
