//! `shim reconcile`: make the host match the definitions and the recorded state, e.g. at boot
//! (units/shim-reconcile.service) when every transient unit is gone, or after editing the
//! definitions (`count` 2 → 4 scales without a deploy).
//!
//! Flow: per defined service, look, decide, act. A service not deployed or stopped only has
//! leftover probe and cron timers removed ([`plan_idle`]). A deployed one is looked at under
//! its lock: [`drift`] says what differs (missing or extra instances, leftovers of other
//! revisions or of an interrupted upgrade, an nginx upstream not pointing at the instances);
//! if anything does, `upgrade::converge_locked` to the current revision repairs it (its
//! `recover` step removes what an interrupted upgrade left) and refreshes the probe timer;
//! otherwise its cron timers and probe timer are checked ([`plan_timers`]). Then services no
//! longer defined that still have units or timers ([`orphans`]) are torn down with
//! `stop::teardown` under their lock. Each decision is a [`ServiceAction`], chosen by a pure
//! function from what was seen, and printed as one line per service as it is acted on
//! ([`Report`]). Nothing that matches is touched, so a second run does nothing; `--dry-run`
//! prints the plan and changes nothing.
//!
//! A paused service is still brought back (reconcile is asked for explicitly, or runs at
//! boot); pausing stops the probe from acting, not the operator.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{anyhow, Result};

use crate::config::{Definitions, ProcessDef, ServiceDef};
use crate::host::lock::ServiceLock;
use crate::host::state::ServiceState;
use crate::host::systemd::UnitInfo;
use crate::host::Host;
use crate::ops::upgrade;
use crate::plan::names::service_of_probe_timer;
use crate::plan::proxy::{Pointed, Pointer};

#[derive(Debug, Clone)]
pub struct Options {
    pub dry_run: bool,
    pub lock_timeout: Duration,
    /// The definitions' path, for the probe timers.
    pub config: PathBuf,
    /// At boot (`shim-reconcile.service`): a service whose unit is disabled stays down (it is
    /// marked stopped), and units are not started (systemd starts the enabled ones after
    /// this: waiting for them here would wait for ourselves).
    pub boot: bool,
}

/// Why a deployed service differs from its definition at `revision`; empty when it matches.
/// `pointed` holds what each proxied process's upstream points at now (None: unknown).
/// Failed (crash-looping) instances count as present: they are the probe's to retry.
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

/// What reconcile said and which services failed. Lines are printed as they are made when
/// `live` (the command; converge prints its own steps in between), and kept for tests.
#[derive(Debug, Default)]
pub struct Report {
    live: bool,
    /// What reconcile printed on stdout, in order.
    pub lines: Vec<String>,
    /// What it printed on stderr: one `shim: reconcile of <id>: …` per failure.
    pub errors: Vec<String>,
    /// The services whose repair failed (once per failure).
    pub failed: Vec<String>,
    /// Something differed (and, unless a dry run, was acted on).
    pub acted: bool,
}

impl Report {
    fn line(&mut self, s: String) {
        if self.live {
            println!("{s}");
        }
        self.lines.push(s);
    }

    /// One line about a service: what reconcile found and does.
    fn say(&mut self, id: &str, what: &str) {
        self.line(format!("  {id:<20} {what}"));
    }

    fn fail(&mut self, id: &str, e: String) {
        let s = format!("shim: reconcile of {id}: {e}");
        if self.live {
            eprintln!("{s}");
        }
        self.errors.push(s);
        self.failed.push(id.to_string());
    }
}

/// What every step needs.
struct Cx<'a> {
    host: &'a Host,
    defs: &'a Definitions,
    opts: &'a Options,
    shim_exe: &'a Path,
}

/// `shim reconcile`: [`reconcile`], printing as it goes; fails naming the services whose
/// repair failed.
pub fn run(host: &Host, defs: &Definitions, opts: &Options) -> Result<()> {
    let rep = reconcile(host, defs, opts, true)?;
    if rep.failed.is_empty() {
        Ok(())
    } else {
        Err(anyhow!("reconcile failed for: {}", rep.failed.join(", ")))
    }
}

/// Every defined service, then the services no longer defined; see the module docs.
/// `live`: print the lines as they are made.
pub fn reconcile(host: &Host, defs: &Definitions, opts: &Options, live: bool) -> Result<Report> {
    let sd = host.systemd()?;
    let shim_exe = crate::host::images::shim_binary()?;
    let cx = Cx {
        host,
        defs,
        opts,
        shim_exe: &shim_exe,
    };
    let mut rep = Report {
        live,
        ..Default::default()
    };
    rep.line(format!(
        "reconcile{}: {} service(s) defined",
        if opts.dry_run { " (dry run)" } else { "" },
        defs.services.len()
    ));
    // One service's problem (a corrupt state file, a lock held too long, systemd refusing
    // a call) is reported and the next service reconciled: at boot, every other service
    // must come back.
    for svc in defs.services.values() {
        if let Err(e) = reconcile_service(&cx, svc, &mut rep) {
            rep.fail(svc.id.as_str(), format!("{e:#}"));
        }
    }
    let all = sd.list_units(&[crate::plan::names::ALL_UNITS_GLOB.to_string()])?;
    let cron = crate::ops::cron::services_with_timers(sd)?;
    for (id, instances) in orphans(defs, &all, &cron) {
        let a = ServiceAction::RemoveOrphan { instances };
        if let Err(e) = act(&cx, &id, &a, None, &mut rep) {
            rep.fail(&id, format!("{e:#}"));
        }
    }
    remove_orphan_units(&cx, &mut rep);
    if !rep.acted {
        rep.line("nothing to do".into());
    } else if opts.dry_run {
        rep.line("dry run: nothing changed".into());
    }
    Ok(rep)
}

/// The units of services no longer defined (their instances and timers are gone by now).
fn remove_orphan_units(cx: &Cx<'_>, rep: &mut Report) {
    for id in crate::ops::service_unit::installed(cx.host) {
        if cx.defs.services.keys().any(|k| k.as_str() == id) {
            continue;
        }
        let unit = crate::plan::names::service_unit_name(&id);
        rep.say(&id, &format!("not defined: removing its unit {unit}"));
        rep.acted = true;
        if cx.opts.dry_run {
            continue;
        }
        if let Err(e) = crate::ops::service_unit::remove(cx.host, &id) {
            rep.fail(&id, format!("{e:#}"));
        }
    }
}

/// The service's unit: written if missing or different (enabled when first written for a
/// service that runs). A service whose unit is disabled and not active is down by the
/// operator's choice (`systemctl disable` and a reboot, or `systemctl disable --now`):
/// `Ok(false)` says to leave it so, at boot and after, until its unit is started.
fn service_unit(cx: &Cx<'_>, id: &str, st: &ServiceState, rep: &mut Report) -> Result<bool> {
    let running = st.current.is_some() && !st.stopped;
    if !cx.opts.dry_run {
        if let Err(e) = crate::ops::service_unit::ensure(cx.host, id, &cx.opts.config, running) {
            rep.fail(id, format!("its unit: {e:#}"));
        }
    }
    if !running {
        return Ok(true);
    }
    let unit = crate::ops::service_unit::state(cx.host, id)?;
    let disabled = unit.enabled.as_deref() == Some("disabled");
    if !disabled || unit.active == "active" || unit.active == "activating" {
        return Ok(true);
    }
    rep.say(
        id,
        &format!(
            "{} is disabled and inactive: left down (`systemctl start '{0}'` brings it up, `systemctl enable` at boot too)",
            unit.name
        ),
    );
    Ok(false)
}

/// After a service was looked at: its unit is active when the service runs (not at boot).
fn activate_unit(cx: &Cx<'_>, id: &str, rep: &mut Report) {
    if cx.opts.dry_run || cx.opts.boot {
        return;
    }
    match cx.host.state().load(id) {
        Ok(st) if st.current.is_some() && !st.stopped => {
            if let Err(e) = crate::ops::service_unit::activate(cx.host, id, &cx.opts.config) {
                rep.fail(id, format!("{e:#}"));
            }
        }
        _ => {}
    }
}

/// One defined service: its unit, then look, decide, act.
fn reconcile_service(cx: &Cx<'_>, svc: &ServiceDef, rep: &mut Report) -> Result<()> {
    let id = svc.id.as_str();
    let st = cx.host.state().load(id)?;
    if !service_unit(cx, id, &st, rep)? {
        // Left down: its unit is not started either (its ExecStart would bring it up).
        return Ok(());
    }
    reconcile_running(cx, svc, rep)?;
    // A failed repair is not retried by starting the unit (whose ExecStart would converge).
    if !rep.failed.iter().any(|f| f == id) {
        activate_unit(cx, id, rep);
    }
    Ok(())
}

/// One defined service whose unit does not keep it down: look, decide, act.
fn reconcile_running(cx: &Cx<'_>, svc: &ServiceDef, rep: &mut Report) -> Result<()> {
    let (sd, dirs, store) = (cx.host.systemd()?, &cx.host.dirs, cx.host.state());
    let id = svc.id.as_str();
    let st = store.load(id)?;
    let proxy = crate::ops::proxy::for_host(cx.host, &cx.defs.settings);
    let pointed = proxy.pointed(svc);
    let Some(revision) = st.serving_revision(&pointed) else {
        let probe = sd.list_units(&[crate::plan::names::probe_timer_name(id)])?;
        let cron = sd.list_units(&[crate::plan::names::cron_timers_glob(Some(id))])?;
        if let Some(a) = plan_idle(&st, !probe.is_empty() || !cron.is_empty()) {
            act(cx, id, &a, None, rep)?;
        }
        return Ok(());
    };
    // Look and act under the service's lock, so an upgrade running meanwhile is not undone
    // with what reconcile saw before it finished.
    let lock = if cx.opts.dry_run {
        None
    } else {
        Some(ServiceLock::acquire(&dirs.run, id, cx.opts.lock_timeout)?)
    };
    let st = store.load(id)?;
    let pointed = proxy.pointed(svc);
    let revision = st.serving_revision(&pointed).unwrap_or(revision);
    let deployed = st.serving_deployment(&pointed);
    if let Some(note) = crate::ops::instances::definition_change_note(svc, deployed) {
        rep.say(id, &note);
    }
    let units = crate::ops::view::ServiceView::observe(sd, id)?.into_units();
    if let Some(a) = plan_deployed(svc, &st, (deployed, &revision), &units, &pointed) {
        return act(cx, id, &a, lock, rep);
    }
    // The timers follow the deployed definition too.
    let svc = deployed.map(|d| &d.definition).unwrap_or(svc);
    let cron = crate::ops::cron::drift(sd, svc, dirs, &revision)?;
    let probe =
        crate::ops::probe_timer::probe_timer_drift(cx.host, svc, cx.shim_exe, &cx.opts.config)?;
    for a in plan_timers(&revision, &paused_note(&st), cron, probe) {
        act(cx, id, &a, None, rep)?;
    }
    drop(lock);
    Ok(())
}

/// Prints what `a` is and, unless a dry run, does it. A failed repair is reported and the
/// next service reconciled; `lock` is the service's, held by the caller for a converge.
fn act(
    cx: &Cx<'_>,
    id: &str,
    a: &ServiceAction,
    lock: Option<ServiceLock>,
    rep: &mut Report,
) -> Result<()> {
    rep.say(id, &a.line());
    rep.acted |= a.acts();
    if cx.opts.dry_run {
        return Ok(());
    }
    let (host, sd) = (cx.host, cx.host.systemd()?);
    match a {
        ServiceAction::Nothing { .. } | ServiceAction::InSync { .. } => {}
        ServiceAction::RemoveTimers { .. } => {
            crate::ops::probe_timer::remove_probe_timer(sd, id)?;
            crate::ops::cron::remove_all(sd, id)?;
        }
        ServiceAction::Converge {
            revision, deployed, ..
        } => {
            let uopts = upgrade::Options {
                kind: upgrade::Kind::Reconcile,
                dry_run: false,
                timeout: None,
                lock_timeout: cx.opts.lock_timeout,
                config: cx.opts.config.clone(),
                deployed: deployed.as_deref().cloned(),
                restart: Vec::new(),
                // Reconcile prints as it goes; the repair's step lines go with its own.
                progress: upgrade::report::Sink::new(upgrade::report::Printer { json: false }),
            };
            if let Err(e) = upgrade::converge_locked(host, cx.defs, id, revision, &uopts, lock) {
                rep.fail(id, format!("{e:#}"));
                // Nothing of it came back (at boot: the image is gone, say): its upstream must
                // not go on listing ports that other services may be given now.
                if !crate::ops::view::ServiceView::observe(sd, id)?.any_present() {
                    let svc = cx.defs.service(id)?;
                    match crate::ops::stop::close_upstreams(host, svc, &cx.defs.settings) {
                        Ok(lines) => lines.iter().for_each(|l| rep.say(id, l)),
                        Err(e) => rep.fail(id, format!("{e:#}")),
                    }
                }
            }
        }
        ServiceAction::SyncCron { revision, .. } => {
            match crate::ops::cron::repair(host, cx.defs, &cx.opts.config, id, revision) {
                Ok(lines) => lines.iter().for_each(|l| rep.say(id, l)),
                Err(e) => rep.fail(id, format!("cron: {e:#}")),
            }
        }
        ServiceAction::CreateProbeTimer { .. } => {
            let st = host.state().load(id)?;
            let svc = match &st.deployment {
                Some(d) => &d.definition,
                None => cx.defs.service(id)?,
            };
            if let Err(e) =
                crate::ops::probe_timer::ensure_probe_timer(host, svc, cx.shim_exe, &cx.opts.config)
            {
                rep.fail(id, format!("{e:#}"));
            }
        }
        ServiceAction::RemoveOrphan { .. } => {
            let r = ServiceLock::acquire(&host.dirs.run, id, cx.opts.lock_timeout)
                .and_then(|l| crate::ops::stop::teardown(host, id, ORPHAN_STOP_TIMEOUT, &l));
            if let Err(e) = r {
                rep.fail(id, format!("{e:#}"));
            }
        }
    }
    Ok(())
}

/// How long each stop job of an orphan's instances may take.
const ORPHAN_STOP_TIMEOUT: Duration = Duration::from_secs(300);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse_sources;
    use crate::host::state::{Attempt, Phase};
    use crate::host::systemd::Systemd;

    const DEF: &str = r#"
[services.app]
image = "oci:/i:{revision}"

[services.app.processes.web]
count = 2
health = { path = "/health" }
proxy = { upstream = "app_web", file = "/etc/nginx/shim/app.conf" }

[services.app.processes.worker]
command = ["/w"]
"#;

    fn unit(process: &str, rev: &str, index: u32, port: Option<u16>) -> UnitInfo {
        let mut fields = BTreeMap::new();
        fields.insert(crate::plan::fields::SERVICE.to_string(), "app".to_string());
        fields.insert(
            crate::plan::fields::PROCESS.to_string(),
            process.to_string(),
        );
        fields.insert(crate::plan::fields::REVISION.to_string(), rev.to_string());
        fields.insert(crate::plan::fields::INSTANCE.to_string(), index.to_string());
        if let Some(p) = port {
            fields.insert(crate::plan::fields::PORT.to_string(), p.to_string());
        }
        UnitInfo {
            name: format!("shim-app-{process}-{rev}-{index}.service"),
            load_state: "loaded".into(),
            active_state: "active".into(),
            sub_state: "running".into(),
            main_pid: 1,
            main_start_usec: 1,
            fields,
            ..Default::default()
        }
    }

    fn upstream(ports: &[u16]) -> Pointed {
        [(
            "web".to_string(),
            Some(Pointer::serving(
                "r1",
                "",
                crate::plan::proxy::at_ports(ports),
            )),
        )]
        .into()
    }

    #[test]
    fn a_matching_service_has_no_drift_and_each_difference_is_named() {
        let d = parse_sources(&[(PathBuf::from("/etc/shim/services.toml"), DEF.into())]).unwrap();
        let svc = d.service("app").unwrap();
        let st = ServiceState {
            current: Some("r1".into()),
            ..Default::default()
        };
        let ok = vec![
            unit("web", "r1", 1, Some(20000)),
            unit("web", "r1", 2, Some(20001)),
            unit("worker", "r1", 1, None),
        ];
        let dep = crate::ops::testkit::deployment(&d, "app", "r1");
        assert_eq!(
            drift(
                svc,
                &st,
                (Some(&dep), "r1"),
                &ok,
                &upstream(&[20000, 20001])
            ),
            Vec::<String>::new()
        );
        // A service deployed by a shim that recorded no deployment gets one.
        assert_eq!(
            drift(svc, &st, (None, "r1"), &ok, &upstream(&[20000, 20001])),
            vec!["no deployment recorded (deployed by an older shim): record one"]
        );

        // A missing worker, an extra web, a leftover of r0, a stale upstream file.
        let units = vec![
            unit("web", "r1", 1, Some(20000)),
            unit("web", "r1", 2, Some(20001)),
            unit("web", "r1", 3, Some(20002)),
            unit("web", "r0", 1, Some(20005)),
        ];
        let why = drift(svc, &st, (Some(&dep), "r1"), &units, &upstream(&[20005]));
        assert_eq!(
            why,
            vec![
                "instances of other deployments are left: r0",
                "web: 1 instance(s) beyond count 2",
                "web: nginx upstream /etc/nginx/shim/app.conf does not point at its instances",
                "worker: 1 of 1 instance(s) missing",
            ],
        );

        // An interrupted upgrade is drift even when the units look right.
        let st = ServiceState {
            current: Some("r1".into()),
            upgrading: Some(Attempt {
                revision: "r2".into(),
                phase: Phase::Starting,
                deployment: None,
            }),
            ..Default::default()
        };
        let why = drift(
            svc,
            &st,
            (Some(&dep), "r1"),
            &ok,
            &upstream(&[20000, 20001]),
        );
        assert_eq!(why.len(), 1);
        assert!(why[0].contains("interrupted"), "{why:?}");
    }

    #[test]
    fn a_failed_or_stopping_instance_is_missing_not_present() {
        let d = parse_sources(&[(PathBuf::from("/etc/shim/services.toml"), DEF.into())]).unwrap();
        let svc = d.service("app").unwrap();
        let st = ServiceState {
            current: Some("r1".into()),
            ..Default::default()
        };
        let dep = crate::ops::testkit::deployment(&d, "app", "r1");
        for (state, sub) in [("failed", "failed"), ("deactivating", "stop-sigterm")] {
            let mut worker = unit("worker", "r1", 1, None);
            worker.active_state = state.into();
            worker.sub_state = sub.into();
            let units = vec![
                unit("web", "r1", 1, Some(20000)),
                unit("web", "r1", 2, Some(20001)),
                worker,
            ];
            let why = drift(
                svc,
                &st,
                (Some(&dep), "r1"),
                &units,
                &upstream(&[20000, 20001]),
            );
            assert_eq!(why, vec!["worker: 1 of 1 instance(s) missing"], "{state}");
        }
    }

    /// One worker, no proxy and no health check: converge runs against the fakes.
    const WORKER: &str = r#"
[services.app]
image = "oci:/i:{revision}"

[services.app.processes.worker]
command = ["/w"]
"#;

    fn opts(dry_run: bool) -> Options {
        Options {
            dry_run,
            lock_timeout: Duration::ZERO,
            config: PathBuf::from("/etc/shim/services.toml"),
            boot: false,
        }
    }

    /// Records `id` as deployed at `rev` (the fake preparer's untagged deployment of WORKER).
    fn deploy(h: &Host, id: &str, rev: &str) {
        let d = crate::ops::testkit::defs(WORKER);
        let st = ServiceState {
            current: Some(rev.into()),
            deployment: Some(crate::ops::testkit::deployment(&d, id, rev)),
            ..Default::default()
        };
        h.state().save(id, &st).unwrap();
    }

    fn loaded(name: &str, service: &str) -> UnitInfo {
        let mut fields = BTreeMap::new();
        if !service.is_empty() {
            fields.insert(
                crate::plan::fields::SERVICE.to_string(),
                service.to_string(),
            );
        }
        UnitInfo {
            name: name.into(),
            active_state: "active".into(),
            sub_state: "running".into(),
            fields,
            ..Default::default()
        }
    }

    /// The lines about services, without the column padding.
    fn said(r: &Report) -> Vec<String> {
        r.lines
            .iter()
            .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
            .collect()
    }

    fn changes(calls: &[String]) -> Vec<&String> {
        calls.iter().filter(|c| !c.starts_with("list ")).collect()
    }

    #[test]
    fn a_service_not_deployed_has_its_leftover_timers_removed() {
        let fh = crate::ops::testkit::host();
        let d = crate::ops::testkit::defs(WORKER);
        fh.systemd.insert(loaded("shim-probe-app.timer", ""));
        fh.systemd.insert(loaded("shim-probe-app.service", ""));
        fh.systemd
            .insert(loaded("shimcron-app-0123456789.timer", ""));
        let r = reconcile(&fh.host, &d, &opts(false), false).unwrap();
        assert_eq!(
            said(&r),
            vec![
                "reconcile: 1 service(s) defined",
                "app not deployed: remove its probe and cron timers",
            ]
        );
        assert!(r.acted && r.failed.is_empty());
        // Only the service's own unit is left: written, not enabled (nothing deployed).
        assert_eq!(fh.systemd.unit_names(), vec!["shim-app.service"]);
        assert_eq!(
            crate::ops::service_unit::state(&fh.host, "app")
                .unwrap()
                .enabled
                .as_deref(),
            Some("disabled")
        );
    }

    #[test]
    fn a_stopped_service_is_left_alone() {
        let fh = crate::ops::testkit::host();
        let d = crate::ops::testkit::defs(WORKER);
        let st = ServiceState {
            current: Some("r1".into()),
            stopped: true,
            ..Default::default()
        };
        fh.host.state().save("app", &st).unwrap();
        let r = reconcile(&fh.host, &d, &opts(false), false).unwrap();
        assert_eq!(
            said(&r),
            vec![
                "reconcile: 1 service(s) defined",
                "app stopped: nothing to do",
                "nothing to do",
            ]
        );
        // Its unit is written (so that `systemctl start` can bring it back), not enabled,
        // not started.
        assert_eq!(changes(&fh.systemd.calls()), vec!["daemon-reload"]);
        assert_eq!(
            crate::ops::service_unit::state(&fh.host, "app")
                .unwrap()
                .enabled
                .as_deref(),
            Some("disabled")
        );
        assert!(fh.host.state().load("app").unwrap().stopped);
    }

    fn boot() -> Options {
        Options {
            boot: true,
            ..opts(false)
        }
    }

    #[test]
    fn a_deployed_service_gets_its_unit_enabled_and_started_but_not_at_boot() {
        let fh = crate::ops::testkit::host();
        let h = &fh.host;
        let d = crate::ops::testkit::defs(WORKER);
        deploy(h, "app", "r1");
        let r = reconcile(h, &d, &boot(), false).unwrap();
        assert!(r.failed.is_empty(), "{:?}", r.errors);
        let st = crate::ops::service_unit::state(h, "app").unwrap();
        assert_eq!(st.enabled.as_deref(), Some("enabled"));
        // At boot systemd starts the enabled unit itself, after shim-reconcile.service.
        assert_eq!(st.active, "inactive");
        assert!(!fh
            .systemd
            .calls()
            .iter()
            .any(|c| c.starts_with("start-unit")));
        // Later (by hand): the unit is started, once.
        reconcile(h, &d, &opts(false), false).unwrap();
        reconcile(h, &d, &opts(false), false).unwrap();
        let starts: Vec<String> = fh
            .systemd
            .calls()
            .into_iter()
            .filter(|c| c.starts_with("start-unit"))
            .collect();
        assert_eq!(starts, vec!["start-unit shim-app.service"]);
    }

    #[test]
    fn a_disabled_inactive_service_stays_down_at_boot_and_after_until_started() {
        let fh = crate::ops::testkit::host();
        let h = &fh.host;
        let d = crate::ops::testkit::defs(WORKER);
        deploy(h, "app", "r1");
        crate::ops::service_unit::ensure(h, "app", Path::new("/etc/shim/services.toml"), false)
            .unwrap();
        let r = reconcile(h, &d, &boot(), false).unwrap();
        assert!(r.failed.is_empty(), "{:?}", r.errors);
        let down = "shim-app.service is disabled and inactive: left down";
        assert!(said(&r)[1].contains(down), "{:?}", said(&r));
        // Not marked stopped: `systemctl enable` and a reboot bring it back.
        assert!(!h.state().load("app").unwrap().stopped);
        let none = || {
            crate::ops::view::ServiceView::observe(fh.systemd.as_ref(), "app")
                .unwrap()
                .is_empty()
        };
        assert!(none());
        // A later reconcile (not at boot) leaves it down too, and does not start its unit
        // (whose ExecStart would bring it up).
        let r = reconcile(h, &d, &opts(false), false).unwrap();
        assert!(said(&r)[1].contains(down), "{:?}", said(&r));
        assert!(none());
        assert!(!fh
            .systemd
            .calls()
            .iter()
            .any(|c| c.starts_with("start-unit")));
        // Enabled: the next boot brings it back.
        fh.systemd
            .enable_unit_files(&["shim-app.service".to_string()])
            .unwrap();
        let r = reconcile(h, &d, &boot(), false).unwrap();
        assert!(r.failed.is_empty(), "{:?}", r.errors);
        assert!(!none());
    }

    #[test]
    fn the_unit_of_a_service_no_longer_defined_is_removed_not_a_look_alikes() {
        let fh = crate::ops::testkit::host();
        let h = &fh.host;
        let cfg = Path::new("/etc/shim/services.toml");
        for id in ["app", "app-web", "app2"] {
            crate::ops::service_unit::ensure(h, id, cfg, true).unwrap();
        }
        let d = crate::ops::testkit::defs(&WORKER.replace("services.app", "services.app-web"));
        let r = reconcile(h, &d, &opts(false), false).unwrap();
        assert!(r.failed.is_empty(), "{:?}", r.errors);
        assert_eq!(crate::ops::service_unit::installed(h), vec!["app-web"]);
        assert!(
            said(&r).contains(&"app not defined: removing its unit shim-app.service".to_string())
        );
    }

    #[test]
    fn an_orphan_is_torn_down_and_a_look_alike_is_not_touched() {
        let fh = crate::ops::testkit::host();
        let h = &fh.host;
        // `app-web` is defined (not deployed); `app` is not defined any more.
        let d = crate::ops::testkit::defs(&WORKER.replace("services.app", "services.app-web"));
        fh.systemd
            .insert(loaded("shim-app-worker-r1-1.service", "app"));
        fh.systemd.insert(loaded("shim-probe-app.timer", ""));
        fh.systemd
            .insert(loaded("shim-app-web-worker-r1-1.service", "app-web"));
        let orphan_dir = h.dirs.instances("app").join("shim-app-worker-r1-1");
        let kept_dir = h.dirs.instances("app-web").join("shim-app-web-worker-r1-1");
        for dir in [&orphan_dir, &kept_dir] {
            std::fs::create_dir_all(dir).unwrap();
        }
        let r = reconcile(h, &d, &opts(false), false).unwrap();
        assert_eq!(
            said(&r),
            vec![
                "reconcile: 1 service(s) defined",
                "app-web not deployed: nothing to do",
                "app not defined: stop 1 instance(s) and its probe and cron timers",
            ]
        );
        assert!(r.failed.is_empty(), "{:?}", r.errors);
        assert_eq!(
            fh.systemd.unit_names(),
            vec![
                "shim-app-web-worker-r1-1.service",
                "shim-app\\x2dweb.service"
            ]
        );
        assert!(!h.dirs.instances("app").exists());
        assert!(kept_dir.exists());
    }

    #[test]
    fn a_dry_run_changes_nothing() {
        let fh = crate::ops::testkit::host();
        let h = &fh.host;
        let d = crate::ops::testkit::defs(WORKER);
        deploy(h, "app", "r1");
        fh.systemd
            .insert(loaded("shim-gone-worker-r1-1.service", "gone"));
        let r = reconcile(h, &d, &opts(true), false).unwrap();
        assert_eq!(
            said(&r),
            vec![
                "reconcile (dry run): 1 service(s) defined",
                "app converge to r1: worker: 1 of 1 instance(s) missing",
                "gone not defined: stop 1 instance(s) and its probe and cron timers",
                "dry run: nothing changed",
            ]
        );
        assert!(
            changes(&fh.systemd.calls()).is_empty(),
            "{:?}",
            fh.systemd.calls()
        );
        assert_eq!(
            fh.systemd.unit_names(),
            vec!["shim-gone-worker-r1-1.service"]
        );
    }

    #[test]
    fn converge_then_nothing_to_do_then_a_missing_probe_timer_is_created() {
        let fh = crate::ops::testkit::host();
        let h = &fh.host;
        let d = crate::ops::testkit::defs(WORKER);
        deploy(h, "app", "r1");
        let r = reconcile(h, &d, &opts(false), false).unwrap();
        assert!(r.failed.is_empty(), "{:?}", r.errors);
        assert_eq!(
            said(&r)[1],
            "app converge to r1: worker: 1 of 1 instance(s) missing"
        );
        assert!(fh
            .systemd
            .unit_names()
            .contains(&"shim-probe-app.timer".to_string()));

        // Converge made the probe timer run the prepared `shim_exe` (testkit: /usr/bin/shim),
        // reconcile wants the running binary (here the test's): on a host both are the same.
        let r = reconcile(h, &d, &opts(false), false).unwrap();
        assert_eq!(
            said(&r)[1..],
            ["app r1: probe timer differs from the definitions: create it".to_string()]
        );

        // A matching service: nothing to do, and a second run changes nothing.
        for _ in 0..2 {
            let before = fh.systemd.calls().len();
            let units = fh.systemd.unit_names();
            let r = reconcile(h, &d, &opts(false), false).unwrap();
            assert_eq!(
                said(&r),
                vec![
                    "reconcile: 1 service(s) defined",
                    "app r1: ok",
                    "nothing to do"
                ]
            );
            assert!(changes(&fh.systemd.calls()[before..]).is_empty());
            assert_eq!(fh.systemd.unit_names(), units);
        }

        // The probe timer is gone (e.g. stopped by hand): it is created again.
        fh.systemd
            .stop_units(
                &[
                    "shim-probe-app.timer".into(),
                    "shim-probe-app.service".into(),
                ],
                Duration::from_secs(1),
            )
            .unwrap();
        let r = reconcile(h, &d, &opts(false), false).unwrap();
        assert_eq!(
            said(&r)[1..],
            ["app r1: probe timer missing: create it".to_string()]
        );
        assert!(r.acted && r.failed.is_empty(), "{:?}", r.errors);
        assert!(fh
            .systemd
            .unit_names()
            .contains(&"shim-probe-app.timer".to_string()));
    }

    #[test]
    fn timers_are_checked_only_once_the_instances_match() {
        assert_eq!(
            plan_timers("r1", "", Some("crontab of r1 not installed".into()), None),
            vec![
                ServiceAction::SyncCron {
                    revision: "r1".into(),
                    why: "crontab of r1 not installed".into()
                },
                ServiceAction::InSync {
                    revision: "r1".into(),
                    paused: String::new()
                },
            ]
        );
        let st = ServiceState {
            paused_processes: ["web".to_string()].into(),
            ..Default::default()
        };
        assert_eq!(paused_note(&st), " (supervision paused for web)");
        assert_eq!(
            plan_idle(&st, false),
            Some(ServiceAction::Nothing {
                why: "not deployed"
            })
        );
    }

    #[test]
    fn a_failed_converge_is_reported_and_fails_the_command() {
        let fh = crate::host::FakeHost::with(|h| {
            h.images = Box::new(crate::ops::testkit::FakePreparer {
                bad: std::sync::Mutex::new(vec!["r1".into()]),
                tagged: false,
            })
        });
        let d = crate::ops::testkit::defs(WORKER);
        deploy(&fh.host, "app", "r1");
        let r = reconcile(&fh.host, &d, &opts(false), false).unwrap();
        assert_eq!(r.failed, vec!["app"]);
        assert!(
            r.errors[0].starts_with("shim: reconcile of app: ")
                && r.errors[0].contains("no such tag"),
            "{:?}",
            r.errors
        );
        let e = run(&fh.host, &d, &opts(false)).unwrap_err();
        assert_eq!(e.to_string(), "reconcile failed for: app");
    }

    const TWO: &str = r#"
[services.app]
image = "oci:/i:{revision}"

[services.app.processes.worker]
command = ["/w"]

[services.broken]
image = "oci:/i:{revision}"

[services.broken.processes.worker]
command = ["/w"]
"#;

    #[test]
    fn a_corrupt_state_file_of_one_service_does_not_stop_the_others() {
        let fh = crate::ops::testkit::host();
        let h = &fh.host;
        let d = crate::ops::testkit::defs(TWO);
        deploy(h, "app", "r1");
        let bad = h.state().path("broken");
        std::fs::write(&bad, "{\"current\": 7").unwrap();
        let r = reconcile(h, &d, &opts(false), false).unwrap();
        assert_eq!(r.failed, vec!["broken".to_string()]);
        let e = r.errors.join("\n");
        assert!(e.contains(&bad.display().to_string()), "{e}");
        assert!(fh
            .systemd
            .unit_names()
            .contains(&"shim-app-worker-r1-1.service".to_string()));
        // The broken one is left alone: its file as it was, nothing of it started.
        assert_eq!(std::fs::read_to_string(&bad).unwrap(), "{\"current\": 7");
        assert!(fh
            .systemd
            .unit_names()
            .iter()
            .all(|n| !n.contains("broken")));
        // And `shim reconcile` fails naming it.
        let e = run(h, &d, &opts(false)).unwrap_err().to_string();
        assert_eq!(e, "reconcile failed for: broken");
    }

    #[test]
    fn the_target_is_an_attempt_that_switched_not_the_recorded_current() {
        let files = |rev: Option<&str>| -> Pointed {
            [(
                "web".to_string(),
                rev.map(|r| Pointer::serving(r, "", crate::plan::proxy::at_ports(&[1]))),
            )]
            .into()
        };
        let st = |phase| ServiceState {
            current: Some("r1".into()),
            upgrading: Some(Attempt {
                revision: "r2".into(),
                phase,
                deployment: None,
            }),
            ..Default::default()
        };
        assert_eq!(
            st(Phase::Switched)
                .serving_revision(&files(Some("r1")))
                .as_deref(),
            Some("r2")
        );
        assert_eq!(
            st(Phase::Starting)
                .serving_revision(&files(Some("r2")))
                .as_deref(),
            Some("r2")
        );
        assert_eq!(
            st(Phase::Starting)
                .serving_revision(&files(Some("r1")))
                .as_deref(),
            Some("r1")
        );
        assert_eq!(
            st(Phase::Starting)
                .serving_revision(&files(None))
                .as_deref(),
            Some("r1")
        );
        let first = ServiceState {
            upgrading: Some(Attempt {
                revision: "r1".into(),
                phase: Phase::Switched,
                deployment: None,
            }),
            ..Default::default()
        };
        assert_eq!(first.serving_revision(&files(None)).as_deref(), Some("r1"));
        let stopped = ServiceState {
            stopped: true,
            ..st(Phase::Switched)
        };
        assert_eq!(stopped.serving_revision(&files(None)), None);
    }

    #[test]
    fn reconcile_after_a_kill_past_the_switch_keeps_the_new_revision() {
        let fh = crate::ops::testkit::host();
        let h = &fh.host;
        let d = crate::ops::testkit::defs(WORKER);
        deploy(h, "app", "r1");
        reconcile(h, &d, &opts(false), false).unwrap();
        // As shim leaves it when killed during drain of an upgrade to r2: r2 runs beside r1,
        // the attempt is recorded as switched, current still says r1.
        let mut st = h.state().load("app").unwrap();
        st.upgrading = Some(Attempt {
            revision: "r2".into(),
            phase: Phase::Switched,
            deployment: None,
        });
        h.state().save("app", &st).unwrap();
        let mut u = loaded("shim-app-worker-r2-1.service", "app");
        for (k, v) in [
            (crate::plan::fields::PROCESS, "worker"),
            (crate::plan::fields::REVISION, "r2"),
            (crate::plan::fields::INSTANCE, "1"),
        ] {
            u.fields.insert(k.to_string(), v.to_string());
        }
        fh.systemd.insert(u);
        let r = reconcile(h, &d, &opts(false), false).unwrap();
        assert!(r.failed.is_empty(), "{:?}", r.errors);
        let st = h.state().load("app").unwrap();
        assert_eq!(
            (st.current.as_deref(), st.previous.as_deref()),
            (Some("r2"), Some("r1"))
        );
        assert!(st.upgrading.is_none());
        let names = fh.systemd.unit_names();
        assert!(
            names.contains(&"shim-app-worker-r2-1.service".to_string()),
            "{names:?}"
        );
        assert!(
            !names.contains(&"shim-app-worker-r1-1.service".to_string()),
            "{names:?}"
        );
    }

    #[test]
    fn a_service_that_does_not_come_back_has_its_upstream_closed() {
        let fh = crate::host::FakeHost::with(|h| {
            h.images = Box::new(crate::ops::testkit::FakePreparer {
                bad: std::sync::Mutex::new(vec!["r1".into()]),
                tagged: false,
            })
        });
        let file = fh.tmp.path().join("app.conf");
        let d = crate::ops::testkit::defs(&format!(
            "[services.app]\nimage = \"oci:/i:{{revision}}\"\n[services.app.processes.web]\n\
             health = {{ path = \"/h\" }}\nproxy = {{ upstream = \"app_web\", file = \"{}\" }}\n",
            file.display()
        ));
        // Before the reboot, nginx pointed at port 20000; after it, the image is gone.
        std::fs::write(
            &file,
            crate::plan::upstream::render_upstream(
                "app_web",
                "app",
                "web",
                "r1",
                "",
                &crate::plan::proxy::at_ports(&[20000]),
            ),
        )
        .unwrap();
        deploy(&fh.host, "app", "r1");
        let r = reconcile(&fh.host, &d, &opts(false), false).unwrap();
        assert_eq!(r.failed, vec!["app"]);
        let text = std::fs::read_to_string(&file).unwrap();
        assert!(!text.contains("20000") && text.contains("down;"), "{text}");
        assert!(
            said(&r).iter().any(|l| l.contains("closed")),
            "{:?}",
            said(&r)
        );
    }
}
