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

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{anyhow, Result};

use crate::config::{Definitions, ServiceDef};
use crate::host::lock::ServiceLock;
use crate::host::state::ServiceState;
use crate::host::Host;
use crate::ops::upgrade;

mod decide;
#[cfg(test)]
mod tests;

pub use decide::*;

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
    // Drift compares with what should be: an upstream file in an older shim's form is drift.
    let compared = crate::ops::proxy::compared(proxy.as_ref(), svc);
    if let Some(a) = plan_deployed(svc, &st, (deployed, &revision), &units, &compared) {
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
