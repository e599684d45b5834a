//! Reconcile's decisions, pure: what differs about a deployed service ([`drift`]), and what
//! to do with each service ([`ServiceAction`]: [`plan_idle`], [`plan_deployed`],
//! [`plan_timers`]) and with services no longer defined ([`orphans`]). Everything here is a
//! function of what `super` observed; nothing touches the host.

use std::collections::{BTreeMap, BTreeSet};

use crate::config::{Definitions, ProcessDef, ServiceDef};
use crate::host::state::ServiceState;
use crate::host::systemd::UnitInfo;
use crate::ops::upgrade;
use crate::plan::names::service_of_probe_timer;
use crate::plan::proxy::{Pointed, Pointer};

/// Why a deployed service differs from its definition at `revision`; empty when it matches.
/// `pointed` holds what each proxied process's upstream points at now (None: unknown).
/// A failed or stopping instance is missing, not present: the converge's start replaces it.
pub fn drift(
    svc: &ServiceDef,
    st: &ServiceState,
    serving: Serving<'_>,
    units: &[UnitInfo],
    pointed: &Pointed,
) -> Vec<String> {
    let (dep, revision) = serving;
    let mut why = Vec::new();
    if let Some(a) = &st.upgrading {
        why.push(format!(
            "an upgrade to {} was interrupted ({:?})",
            a.revision, a.phase
        ));
    }
    if dep.is_none() && st.current.is_some() {
        why.push("no deployment recorded (deployed by an older shim): record one".into());
    }
    let owned = |u: &UnitInfo| upgrade::recover::owned_by(dep, revision, u);
    let others: BTreeSet<String> = units
        .iter()
        .filter(|u| !owned(u))
        .map(|u| match u.deployment() {
            "" => u.revision().to_string(),
            tag => format!("{} ({tag})", u.revision()),
        })
        .collect();
    if !others.is_empty() {
        why.push(format!(
            "instances of other deployments are left: {}",
            others.into_iter().collect::<Vec<_>>().join(", ")
        ));
    }
    // A unit left behind (failed, inactive) or on its way down is not one of its instances:
    // it is missing, and the converge's start replaces it.
    let current: Vec<&UnitInfo> = units
        .iter()
        .filter(|u| owned(u) && u.is_present())
        .collect();
    let defined: BTreeSet<&str> = svc.processes.values().map(|p| p.name.as_str()).collect();
    let undefined: BTreeSet<&str> = current
        .iter()
        .filter_map(|u| u.process())
        .filter(|p| !defined.contains(p))
        .collect();
    for p in undefined {
        why.push(format!("process {p} is no longer defined"));
    }
    for d in svc.processes.values() {
        let tag = dep.map(|x| x.tag(d.name.as_str())).unwrap_or_default();
        why.extend(process_drift(d, (revision, &tag), &current, pointed));
    }
    why
}

/// What serves: the recorded deployment (None for a service deployed by an older shim) and
/// its revision.
pub type Serving<'a> = (Option<&'a crate::plan::Deployment>, &'a str);

/// What differs about one process's instances of `revision` (`current`): missing or extra
/// instances, what its upstream points at. Pure.
fn process_drift(
    d: &ProcessDef,
    (revision, tag): (&str, &str),
    current: &[&UnitInfo],
    pointed: &Pointed,
) -> Vec<String> {
    let mut why = Vec::new();
    let index = |u: &UnitInfo| -> u32 { u.index() };
    let mine: Vec<&&UnitInfo> = current
        .iter()
        .filter(|u| u.process() == Some(d.name.as_str()))
        .collect();
    let have: BTreeSet<u32> = mine.iter().map(|u| index(u)).collect();
    let missing = (1..=d.count).filter(|i| !have.contains(i)).count();
    let extra = have.iter().filter(|i| **i > d.count || **i == 0).count();
    if missing > 0 {
        why.push(format!(
            "{}: {missing} of {} instance(s) missing",
            d.name, d.count
        ));
    }
    if extra > 0 {
        why.push(format!(
            "{}: {extra} instance(s) beyond count {}",
            d.name, d.count
        ));
    }
    if let Some(px) = &d.proxy {
        let endpoints = crate::plan::proxy::upstream_endpoints(
            mine.iter().filter_map(|u| Some((index(u), u.endpoint()?))),
            d.count,
        );
        let want = Pointer::serving(revision, tag, endpoints);
        if pointed.get(d.name.as_str()).cloned().flatten() != Some(want) {
            why.push(format!(
                "{}: nginx upstream {} does not point at its instances",
                d.name,
                px.file.display()
            ));
        }
    }
    why
}

/// What reconcile does with one service. [`ServiceAction::line`] is what it prints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServiceAction {
    /// Not deployed or stopped (`why`), with nothing of it loaded.
    Nothing { why: &'static str },
    /// Not deployed or stopped (`why`), but its probe or cron timers are loaded.
    RemoveTimers { why: &'static str },
    /// Deployed and different from its deployment: converge to `revision` (from the recorded
    /// deployment `deployed`, if there is one).
    Converge {
        revision: String,
        deployed: Option<Box<crate::plan::Deployment>>,
        why: Vec<String>,
        paused: String,
    },
    /// Its instances match, its cron timers do not (`why`): sync them.
    SyncCron { revision: String, why: String },
    /// Its instances match, its probe timer does not (`why`): create it.
    CreateProbeTimer {
        revision: String,
        why: String,
        paused: String,
    },
    /// Everything matches.
    InSync { revision: String, paused: String },
    /// No longer defined: tear it down (probe and cron timers, `instances` units, dirs).
    RemoveOrphan { instances: usize },
}

impl ServiceAction {
    /// The line printed after the service's id.
    pub fn line(&self) -> String {
        match self {
            Self::Nothing { why } => format!("{why}: nothing to do"),
            Self::RemoveTimers { why } => format!("{why}: remove its probe and cron timers"),
            Self::Converge {
                revision,
                why,
                paused,
                ..
            } => format!("converge to {revision}: {}{paused}", why.join("; ")),
            Self::SyncCron { revision, why } => format!("{revision}: {why}: sync it"),
            Self::CreateProbeTimer {
                revision,
                why,
                paused,
            } => format!("{revision}: {why}: create it{paused}"),
            Self::InSync { revision, paused } => format!("{revision}: ok{paused}"),
            Self::RemoveOrphan { instances } => {
                format!("not defined: stop {instances} instance(s) and its probe and cron timers")
            }
        }
    }

    /// Whether it changes something (or would, in a dry run).
    pub fn acts(&self) -> bool {
        !matches!(self, Self::Nothing { .. } | Self::InSync { .. })
    }
}

/// The decision for a service not deployed or stopped; None when it is deployed and running
/// (see [`plan_deployed`]). `timers_loaded`: its probe timer or a cron timer is loaded. Pure.
pub fn plan_idle(st: &ServiceState, timers_loaded: bool) -> Option<ServiceAction> {
    let why = match (&st.current, st.stopped) {
        (Some(_), false) => return None,
        (_, true) => "stopped",
        (None, false) => "not deployed",
    };
    Some(if timers_loaded {
        ServiceAction::RemoveTimers { why }
    } else {
        ServiceAction::Nothing { why }
    })
}

/// ` (supervision paused…)` after a line about a paused service, or nothing. Pure.
pub fn paused_note(st: &ServiceState) -> String {
    if st.paused {
        " (supervision paused)".to_string()
    } else if !st.paused_processes.is_empty() {
        format!(
            " (supervision paused for {})",
            st.paused_processes
                .iter()
                .cloned()
                .collect::<Vec<_>>()
                .join(", ")
        )
    } else {
        String::new()
    }
}

/// The decision for a deployed service from its units and upstream files ([`drift`]):
/// converge, or None when its instances match (then [`plan_timers`]). Pure.
pub fn plan_deployed(
    svc: &ServiceDef,
    st: &ServiceState,
    serving: Serving<'_>,
    units: &[UnitInfo],
    pointed: &Pointed,
) -> Option<ServiceAction> {
    let svc = serving.0.map(|d| &d.definition).unwrap_or(svc);
    let why = drift(svc, st, serving, units, pointed);
    (!why.is_empty()).then(|| ServiceAction::Converge {
        revision: serving.1.to_string(),
        deployed: serving.0.cloned().map(Box::new),
        why,
        paused: paused_note(st),
    })
}

/// The decisions for a deployed service whose instances match, from what differs about its
/// cron timers and its probe timer (None: nothing). Pure.
pub fn plan_timers(
    revision: &str,
    paused: &str,
    cron: Option<String>,
    probe: Option<String>,
) -> Vec<ServiceAction> {
    let (revision, paused) = (revision.to_string(), paused.to_string());
    let mut out = Vec::new();
    if let Some(why) = cron {
        out.push(ServiceAction::SyncCron {
            revision: revision.clone(),
            why,
        });
    }
    out.push(match probe {
        Some(why) => ServiceAction::CreateProbeTimer {
            revision,
            why,
            paused,
        },
        None => ServiceAction::InSync { revision, paused },
    });
    out
}

/// Services no longer defined that still have instances (counted), a probe timer or cron
/// timers: from every `shim-*` unit and the services with cron timers. Pure.
pub fn orphans(
    defs: &Definitions,
    units: &[UnitInfo],
    cron_services: &BTreeSet<String>,
) -> BTreeMap<String, usize> {
    let defined: BTreeSet<&str> = defs.services.keys().map(|k| k.as_str()).collect();
    let mut out: BTreeMap<String, usize> = BTreeMap::new();
    for u in units {
        if let Some(s) = u
            .field(crate::plan::fields::SERVICE)
            .filter(|s| !defined.contains(s))
        {
            *out.entry(s.to_string()).or_default() += 1;
        }
    }
    let timers = units.iter().filter_map(|u| service_of_probe_timer(&u.name));
    for s in timers.chain(cron_services.iter().map(String::as_str)) {
        if !defined.contains(s) {
            out.entry(s.to_string()).or_default();
        }
    }
    out
}
