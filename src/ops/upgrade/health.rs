//! Waiting until every new instance with a health check answers 2xx. Each round checks the
//! instances not yet healthy over HTTP (every 25 ms); the units themselves are observed from
//! systemd once every [`OBSERVE_EVERY`] rounds and once more at the end, not at every round:
//! a process that exits is still caught within a quarter of a second, and a health wait costs
//! a few D-Bus calls instead of one per 25 ms. An instance whose process exits or restarts
//! fails the wait at once (a revision that crashes at boot will not get better).

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use crate::host::health::{Check, Probe};
use crate::host::systemd::UnitInfo;
use crate::host::Host;
use crate::plan::Prepared;

/// How often the health loop polls.
pub const POLL: Duration = Duration::from_millis(25);
/// Every how many polls the units are observed again.
pub const OBSERVE_EVERY: u32 = 10;

/// Why an instance did not become healthy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unhealthy {
    pub unit: String,
    pub reason: String,
}

/// Why a unit is not usable, if it is not: restarted since the wait began, or not active.
fn broken(u: &UnitInfo, baseline: &BTreeMap<String, u32>, suffix: &str) -> Option<Unhealthy> {
    let restarted = u.n_restarts > baseline.get(&u.name).copied().unwrap_or(0);
    (restarted || !u.is_running()).then(|| Unhealthy {
        unit: u.name.clone(),
        reason: u
            .last_exit()
            .map(|e| format!("its process {e}{suffix}"))
            .unwrap_or_else(|| format!("unit is {}/{}", u.active_state, u.sub_state)),
    })
}

struct Wait<'a> {
    host: &'a Host,
    p: &'a Prepared,
    timeout_override: Option<Duration>,
    start: Instant,
    baseline: BTreeMap<String, u32>,
    healthy: BTreeSet<String>,
    /// When each instance's command check last ran: they are paced (each is a process in
    /// the container), socket checks are not.
    last_command: BTreeMap<String, Duration>,
}

/// How often the gate runs a not-yet-healthy instance's command check at most.
const COMMAND_PACE: Duration = Duration::from_secs(1);

impl Wait<'_> {
    fn observe(&self) -> Result<Vec<UnitInfo>, Vec<Unhealthy>> {
        let sd = self.host.systemd().map_err(|e| self.whole(e.to_string()))?;
        crate::ops::view::ServiceView::observe(sd, self.p.service.id.as_str())
            .map(|v| {
                let us = v.into_units();
                // The deployment's own instances only: a new deployment of the same revision
                // (a definition or secret change, `shim restart`) runs beside the old one's
                // instances, which are neither waited for nor handed to the switch.
                us.into_iter().filter(|u| super::owned(self.p, u)).collect()
            })
            .map_err(|e| self.whole(e.to_string()))
    }

    fn whole(&self, reason: String) -> Vec<Unhealthy> {
        vec![Unhealthy {
            unit: self.p.service.id.to_string(),
            reason,
        }]
    }

    /// One round over `units`: checks those not yet healthy. Returns the pending ones.
    fn round(
        &mut self,
        units: &[UnitInfo],
        details: &mut Vec<String>,
    ) -> Result<usize, Vec<Unhealthy>> {
        let elapsed = self.host.clock.now().duration_since(self.start);
        let (mut pending, mut failed) = (0, Vec::new());
        for u in units {
            let Some(h) = super::process_of(self.p, u).and_then(|d| d.health.as_ref()) else {
                continue;
            };
            if self.healthy.contains(&u.name) {
                continue;
            }
            if let Some(b) = broken(u, &self.baseline, "") {
                failed.push(b);
                continue;
            }
            let deadline = self.timeout_override.unwrap_or(h.start_period);
            match self.check(u, h, elapsed) {
                Err(reason) => failed.push(Unhealthy {
                    unit: u.name.clone(),
                    reason,
                }),
                Ok(None) => pending += 1,
                Ok(Some((c, on))) if c.healthy() => {
                    self.healthy.insert(u.name.clone());
                    details.push(format!(
                        "{} healthy after {} ms ({c}{on})",
                        u.name,
                        elapsed.as_millis(),
                    ));
                }
                Ok(Some((c, on))) if elapsed >= deadline => failed.push(Unhealthy {
                    unit: u.name.clone(),
                    reason: format!("not healthy within {deadline:?}: last check {c}{on}"),
                }),
                Ok(Some(_)) => pending += 1,
            }
        }
        if failed.is_empty() {
            Ok(pending)
        } else {
            Err(failed)
        }
    }

    /// Checks instance `u` once, unless it is a command check that ran less than
    /// [`COMMAND_PACE`] ago (`None`): the verdict and where it was asked (` on :PORT/path`).
    /// An HTTP or TCP check of an instance without an endpoint is an error.
    fn check(
        &mut self,
        u: &UnitInfo,
        h: &crate::config::Health,
        elapsed: Duration,
    ) -> Result<Option<(Check, String)>, String> {
        let svc = &self.p.service;
        let probe =
            Probe::for_instance(h, svc.runtime, &self.p.instances_dir, &u.name, u.endpoint())
                .ok_or("no port recorded")?;
        let probe = if probe.is_command() {
            let last = self.last_command.get(&u.name).copied();
            if last.is_some_and(|t| elapsed.saturating_sub(t) < COMMAND_PACE) {
                return Ok(None);
            }
            self.last_command.insert(u.name.clone(), elapsed);
            // A command may need its whole timeout.
            probe
        } else {
            // A socket check is retried each round.
            probe.capped(Duration::from_secs(1))
        };
        let c = self
            .host
            .health
            .check_all(&[&probe])
            .pop()
            .unwrap_or_else(|| Check::NoAnswer("no result".into()));
        Ok(Some((c, probe.on())))
    }
}

/// Waits until every instance of the deployment `p` with a health check answers 2xx. `started`:
/// the units this run started (restarts of the others before now do not count). Returns the
/// last observation of the deployment's units, for the switch.
pub fn wait_healthy(
    host: &Host,
    p: &Prepared,
    timeout_override: Option<Duration>,
    started: &[String],
    before: &[UnitInfo],
    details: &mut Vec<String>,
) -> Result<Vec<UnitInfo>, Vec<Unhealthy>> {
    // Instances that were running before this command may have been restarted long ago
    // (a crash, a health kill): only restarts from now on count against them.
    let baseline = before
        .iter()
        .filter(|u| !started.contains(&u.name))
        .map(|u| (u.name.clone(), u.n_restarts))
        .collect();
    let mut w = Wait {
        host,
        p,
        timeout_override,
        start: host.clock.now(),
        baseline,
        healthy: BTreeSet::new(),
        last_command: BTreeMap::new(),
    };
    let mut units = w.observe()?;
    let mut rounds = 0u32;
    while w.round(&units, details)? > 0 {
        host.clock.sleep(POLL);
        rounds += 1;
        if rounds.is_multiple_of(OBSERVE_EVERY) {
            units = w.observe()?;
        }
    }
    // Healthy once is not enough if the process died right after: check that none of the
    // instances restarted while the others were being checked.
    let now = w.observe()?;
    let restarted: Vec<Unhealthy> = now
        .iter()
        .filter(|u| w.healthy.contains(&u.name))
        .filter_map(|u| broken(u, &w.baseline, " after answering"))
        .collect();
    if restarted.is_empty() {
        Ok(now)
    } else {
        Err(restarted)
    }
}
