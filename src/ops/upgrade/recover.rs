//! Repairing what an interrupted attempt left, before a new one plans anything. The decision
//! is pure ([`decide`]): from the persisted phase of the attempt, the service's units as
//! observed now, and which revision the upstream files point at. Then [`apply`] does it.
//!
//! - Killed before nginx switched (`starting`, and no upstream file names the attempt's
//!   revision): its instances never served; they are stopped.
//! - Killed after the switch (`switched`), or during it (`starting`, but a file already names
//!   the attempt's revision): the attempt's revision is the current one. nginx is reloaded to
//!   be sure it serves the files, and the old instances get their drain time before they stop.
//! - Instances of any revision that is neither current nor the target are stopped (nginx
//!   cannot point at them), and so are target instances left by an attempt that never
//!   switched (they are started afresh, so that this run health-checks every new instance).

use std::time::Duration;

use anyhow::Result;

use crate::host::state::{Phase, ServiceState, StateStore};
use crate::host::systemd::UnitInfo;
use crate::host::Host;
use crate::ops::instances;
use crate::plan::{Deployment, Prepared};

/// What recovery does, decided from what it saw.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Recovery {
    /// The attempt's revision becomes the current one (it had switched).
    pub promote: Option<String>,
    /// The interrupted attempt is forgotten (the state is saved without it).
    pub clear_attempt: bool,
    /// What the operator is told.
    pub notes: Vec<String>,
    /// Units to stop.
    pub leftovers: Vec<String>,
    /// nginx may still serve the old instances: reload it, then drain, before stopping them.
    pub drain_first: bool,
}

/// Decides the recovery. `files_name_attempt`: whether an upstream file of the service
/// already points at the attempt's revision.
pub fn decide(
    st: &ServiceState,
    target: &Deployment,
    units: &[UnitInfo],
    files_name_attempt: bool,
) -> Recovery {
    let mut r = Recovery::default();
    let (mut current, mut current_rev) = (st.deployment.as_ref(), st.current.as_deref());
    if let Some(a) = &st.upgrading {
        r.clear_attempt = true;
        let switched = a.phase == Phase::Switched || files_name_attempt;
        if switched {
            r.drain_first = true;
            r.notes.push(format!(
                "an upgrade to {} was interrupted after nginx switched: it is the current revision",
                a.revision
            ));
            r.promote = Some(a.revision.clone());
            current_rev = Some(a.revision.as_str());
            current = a.deployment.as_ref();
        } else {
            r.notes.push(format!(
                "an upgrade to {} was interrupted before nginx switched: its instances are removed",
                a.revision
            ));
        }
    }
    // Kept: the instances of what serves (if nothing does yet, of the target). The target's
    // instances left by an attempt that never switched are started afresh, so that this run
    // health-checks every new instance.
    let keep = |u: &UnitInfo| match current_rev {
        Some(rev) => owned_by(current, rev, u),
        None => crate::ops::view::of_deployment(u, target),
    };
    r.leftovers = units
        .iter()
        .filter(|u| !keep(u))
        .map(|u| u.name.clone())
        .collect();
    if r.leftovers.is_empty() {
        r.drain_first = false;
    }
    r
}

/// Whether `u` is an instance of deployment `d` at `revision`, or, with no deployment
/// recorded (a service deployed by an older shim), an untagged instance of `revision`.
pub fn owned_by(d: Option<&Deployment>, revision: &str, u: &UnitInfo) -> bool {
    crate::ops::view::owned_by(d, revision, u)
}

/// The state after `r`: the attempt gone, a switched attempt promoted.
pub fn recovered_state(st: &ServiceState, r: &Recovery) -> ServiceState {
    let mut st = st.clone();
    let attempt = st.upgrading.clone();
    if r.clear_attempt {
        st.upgrading = None;
    }
    if let Some(rev) = &r.promote {
        st.promote(attempt.and_then(|a| a.deployment), rev);
    }
    st
}

/// Observes, decides and repairs; saves the recovered state before stopping anything.
pub fn run(
    host: &Host,
    p: &Prepared,
    settings: &crate::config::HostSettings,
    st: &mut ServiceState,
    store: &StateStore,
    details: &mut Vec<String>,
) -> Result<()> {
    let sd = host.systemd()?;
    let id = p.service.id.as_str();
    let proxy = crate::ops::proxy::for_host(host, settings);
    let units = crate::ops::view::ServiceView::observe(sd, id)?.into_units();
    let pointed = proxy.pointed(&p.service);
    let r = decide(
        st,
        &p.deployment,
        &units,
        st.upstreams_name_attempt(&pointed),
    );
    details.extend(r.notes.iter().cloned());
    if r.clear_attempt {
        *st = recovered_state(st, &r);
        store.save(id, st)?;
    }
    if r.leftovers.is_empty() {
        return Ok(());
    }
    let leftovers: Vec<UnitInfo> = units
        .into_iter()
        .filter(|u| r.leftovers.contains(&u.name))
        .collect();
    if r.drain_first {
        // Killed between a switch's write and its apply, the proxy may still serve the old
        // instances: make it serve what it points at before they go.
        details.extend(proxy.settle(&p.service)?);
        let drain = super::drain_of(p, &leftovers);
        let ends = leftovers.iter().filter_map(|u| u.endpoint()).collect();
        details.push(instances::drain(host, &ends, drain));
    }
    for n in instances::stop_units(sd, &leftovers, Duration::from_secs(300))? {
        details.push(format!("stopped leftover {n}"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::state::Attempt;

    /// A deployment of `rev`; `gen` restarts of web.
    fn dep(rev: &str, gen: u32) -> Deployment {
        let mut d = crate::plan::deployment::tests::sample();
        d.revision = rev.into();
        if gen > 0 {
            d.generations.insert("web".into(), gen);
        }
        d
    }

    fn tagged(rev: &str, gen: u32, i: u32) -> UnitInfo {
        let tag = dep(rev, gen).tag("web");
        UnitInfo {
            name: format!("shim-app-web-{rev}-{tag}-{i}.service"),
            fields: [
                (crate::plan::fields::SERVICE.to_string(), "app".to_string()),
                (crate::plan::fields::PROCESS.to_string(), "web".to_string()),
                (crate::plan::fields::REVISION.to_string(), rev.to_string()),
                (crate::plan::fields::DEPLOYMENT.to_string(), tag),
            ]
            .into(),
            ..Default::default()
        }
    }

    fn unit(rev: &str, i: u32) -> UnitInfo {
        tagged(rev, 0, i)
    }

    fn name(rev: &str, i: u32) -> String {
        unit(rev, i).name
    }

    fn st(current: Option<&str>, attempt: Option<(&str, Phase)>) -> ServiceState {
        ServiceState {
            current: current.map(String::from),
            deployment: current.map(|r| dep(r, 0)),
            previous: None,
            upgrading: attempt.map(|(r, phase)| Attempt {
                revision: r.into(),
                phase,
                deployment: Some(dep(r, 0)),
            }),
            ..Default::default()
        }
    }

    #[test]
    fn nothing_interrupted_nothing_left_means_nothing_to_do() {
        let r = decide(
            &st(Some("r1"), None),
            &dep("r2", 0),
            &[unit("r1", 1)],
            false,
        );
        assert_eq!(r, Recovery::default());
    }

    #[test]
    fn killed_before_the_switch_removes_the_attempts_instances() {
        let units = [unit("r1", 1), unit("r2", 1)];
        // The next run targets r3: r2's instance is a leftover, r1 keeps serving.
        let r = decide(
            &st(Some("r1"), Some(("r2", Phase::Starting))),
            &dep("r3", 0),
            &units,
            false,
        );
        assert_eq!(r.leftovers, vec![name("r2", 1)]);
        assert!(r.clear_attempt && r.promote.is_none() && !r.drain_first);
        assert!(
            r.notes[0].contains("before nginx switched"),
            "{:?}",
            r.notes
        );
        // Retrying r2 itself: its old instance is started afresh (health-checked again).
        let r = decide(
            &st(Some("r1"), Some(("r2", Phase::Starting))),
            &dep("r2", 0),
            &units,
            false,
        );
        assert_eq!(r.leftovers, vec![name("r2", 1)]);
    }

    #[test]
    fn killed_after_the_switch_promotes_the_attempt_and_drains_the_old() {
        let units = [unit("r1", 1), unit("r2", 1)];
        let r = decide(
            &st(Some("r1"), Some(("r2", Phase::Switched))),
            &dep("r3", 0),
            &units,
            false,
        );
        assert_eq!(r.promote.as_deref(), Some("r2"));
        assert!(r.drain_first);
        assert_eq!(r.leftovers, vec![name("r1", 1)]);
        let after = recovered_state(&st(Some("r1"), Some(("r2", Phase::Switched))), &r);
        assert_eq!(after.current.as_deref(), Some("r2"));
        assert_eq!(after.previous.as_deref(), Some("r1"));
        assert_eq!(after.deployment, Some(dep("r2", 0)));
        assert_eq!(after.previous_deployment, Some(dep("r1", 0)));
        assert!(after.upgrading.is_none());
    }

    #[test]
    fn an_interrupted_rolling_restart_is_undone_by_tag_not_revision() {
        // Restarting web of r1 (generation 1) was killed before the switch: the new
        // generation's instance goes, the running one stays, though both are r1.
        let mut s = st(Some("r1"), None);
        s.upgrading = Some(Attempt {
            revision: "r1".into(),
            phase: Phase::Starting,
            deployment: Some(dep("r1", 1)),
        });
        let units = [tagged("r1", 0, 1), tagged("r1", 1, 1)];
        let r = decide(&s, &dep("r1", 0), &units, false);
        assert_eq!(r.leftovers, vec![units[1].name.clone()]);
        // After the switch, the old generation goes and the new one is current.
        s.upgrading.as_mut().unwrap().phase = Phase::Switched;
        let r = decide(&s, &dep("r1", 1), &units, false);
        assert_eq!(r.leftovers, vec![units[0].name.clone()]);
        let after = recovered_state(&s, &r);
        assert_eq!(after.deployment, Some(dep("r1", 1)));
        assert_eq!(
            after.previous.as_deref(),
            None,
            "the same revision: no previous"
        );
    }

    #[test]
    fn a_service_deployed_by_an_older_shim_keeps_its_untagged_instances() {
        let legacy = UnitInfo {
            name: "shim-app-web-r1-1.service".into(),
            fields: [
                (crate::plan::fields::SERVICE.to_string(), "app".to_string()),
                (crate::plan::fields::PROCESS.to_string(), "web".to_string()),
                (crate::plan::fields::REVISION.to_string(), "r1".to_string()),
            ]
            .into(),
            ..Default::default()
        };
        let s = ServiceState {
            current: Some("r1".into()),
            ..Default::default()
        };
        // Redeploying r1 with a record: the untagged instance serves until the switch.
        let r = decide(&s, &dep("r1", 0), &[legacy.clone(), unit("r2", 1)], false);
        assert_eq!(r.leftovers, vec![name("r2", 1)]);
    }

    #[test]
    fn killed_during_the_switch_counts_as_switched_when_a_file_names_the_attempt() {
        let units = [unit("r1", 1), unit("r2", 1)];
        let r = decide(
            &st(Some("r1"), Some(("r2", Phase::Starting))),
            &dep("r2", 0),
            &units,
            true,
        );
        assert_eq!(r.promote.as_deref(), Some("r2"));
        assert_eq!(r.leftovers, vec![name("r1", 1)]);
        assert!(r.notes[0].contains("after nginx switched"));
    }

    #[test]
    fn a_first_deploy_killed_after_the_switch_has_nothing_to_drain() {
        let r = decide(
            &st(None, Some(("r1", Phase::Switched))),
            &dep("r1", 0),
            &[unit("r1", 1)],
            false,
        );
        assert_eq!(r.promote.as_deref(), Some("r1"));
        assert!(r.leftovers.is_empty() && !r.drain_first);
    }
}
