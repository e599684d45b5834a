//! `shim upgrade` (and `start`, `rollback`): bring a service to a revision without dropping a
//! request, as an explicit sequence of steps, each timed and reported:
//!
//! ```text
//! lock → fetch → recover → plan → [singletons] → start → health → switch → drain → stop-old → record → probe
//! ```
//!
//! The last step creates (or refreshes) the service's probe timer (see `supervise`).
//!
//! Nothing changes before `start`: the lock, the image, and the repair of an interrupted
//! attempt come first. Until `switch` the old revision serves, so any failure there stops the
//! new instances and leaves the host as it was. The phase is persisted (`state::Attempt`) at
//! the two points that matter, so that when shim is killed the next upgrade (or reconcile)
//! knows whether nginx already points at the new revision ([`recover`]).

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _, Result};
use serde::Serialize;

use crate::config::{Definitions, ProcessDef};
use crate::error::BadInput;
use crate::host::lock::ServiceLock;
use crate::host::nginx;
use crate::host::state::{Attempt, Phase, ServiceState, StateStore};
use crate::host::systemd::{Systemd, UnitInfo};
use crate::host::Host;
use crate::ops::instances;
use crate::plan::Prepared;

#[derive(Debug, Clone)]
pub struct Options {
    pub dry_run: bool,
    /// Overrides each process's `health.start_period` as the time to become healthy.
    pub timeout: Option<Duration>,
    pub lock_timeout: Duration,
    pub json: bool,
    /// `shim start`: refuse instead of replacing a running revision.
    pub refuse_other_revision: bool,
    /// What the command is called in messages ("upgrade", "start", "rollback", "reconcile").
    pub verb: &'static str,
    /// The definitions the command read; the probe timer runs `shim --config` with it.
    pub config: std::path::PathBuf,
    /// `shim reconcile` of the current revision: instances that do not become healthy are
    /// kept (there is nothing else to serve; systemd and the probe keep retrying them)
    /// instead of being stopped, and the command fails at the end.
    pub keep_unhealthy: bool,
}

/// One line per step: name, duration, details. JSON lines with `--json`.
struct Reporter {
    json: bool,
    quiet_details: bool,
}

#[derive(Serialize)]
struct StepLine<'a> {
    step: &'a str,
    ok: bool,
    ms: u128,
    details: &'a [String],
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

impl Reporter {
    fn step<T>(&self, name: &str, f: impl FnOnce(&mut Vec<String>) -> Result<T>) -> Result<T> {
        let t = Instant::now();
        let mut details = Vec::new();
        let r = f(&mut details);
        let ms = t.elapsed().as_millis();
        if self.json {
            let line = StepLine {
                step: name,
                ok: r.is_ok(),
                ms,
                details: &details,
                error: r.as_ref().err().map(|e| format!("{e:#}")),
            };
            println!("{}", serde_json::to_string(&line).unwrap_or_default());
        } else {
            let status = if r.is_ok() { "ok" } else { "FAILED" };
            println!("  {name:<9} {status:<6} {ms:>6} ms");
            if !self.quiet_details {
                for d in &details {
                    println!("            {d}");
                }
            }
        }
        test_hook(name);
        r
    }
}

/// Test hook: `SHIM_TEST_KILL_AFTER=<step>` makes shim SIGKILL itself right after that step,
/// so tests can check what the next run repairs. Harmless when unset.
fn test_hook(step: &str) {
    if std::env::var("SHIM_TEST_KILL_AFTER").is_ok_and(|s| s == step) {
        let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGKILL);
    }
}

fn rev_of(u: &UnitInfo) -> &str {
    u.field("SHIM_REVISION").unwrap_or_default()
}

fn process_of<'a>(p: &'a Prepared, u: &UnitInfo) -> Option<&'a ProcessDef> {
    let name = u.field("SHIM_PROCESS")?;
    p.service
        .processes
        .values()
        .find(|d| d.name.as_str() == name)
}

/// Repairs what an interrupted attempt left: before the switch, its instances are stopped;
/// after it, its revision is the current one. Then instances of any revision that is neither
/// current nor the target are stopped (nginx cannot point at them).
fn recover(
    host: &Host,
    p: &Prepared,
    nginx_unit: &str,
    st: &mut ServiceState,
    store: &StateStore,
    details: &mut Vec<String>,
) -> Result<()> {
    let sd = host.systemd()?;
    let id = p.service.id.as_str();
    // After an interrupted switch, nginx may have moved off the old instances moments ago:
    // they get their drain time before being stopped, as in a normal upgrade.
    let mut drain_first = false;
    if let Some(mut a) = st.upgrading.take() {
        // Killed during the switch itself: whether nginx took the new file is what decides,
        // and the files say which revision they point at.
        if a.phase == Phase::Starting && switched_files(p, &a.revision) {
            a.phase = Phase::Switched;
        }
        match a.phase {
            Phase::Starting => details.push(format!(
                "an upgrade to {} was interrupted before nginx switched: its instances are removed",
                a.revision
            )),
            Phase::Switched => {
                drain_first = true;
                details.push(format!(
                    "an upgrade to {} was interrupted after nginx switched: it is the current revision",
                    a.revision
                ));
                if st.current.as_deref() != Some(a.revision.as_str()) {
                    st.previous = st.current.take();
                    st.current = Some(a.revision);
                }
            }
        }
        store.save(id, st)?;
    }
    let keep: BTreeSet<&str> = st
        .current
        .iter()
        .map(|s| s.as_str())
        .chain([p.revision.as_str()])
        .collect();
    // Units of the target revision left by an attempt interrupted before the switch are not
    // serving either; they are started afresh so every new instance is health-checked by this
    // run.
    let stale_target = st.current.is_some() && st.current.as_deref() != Some(p.revision.as_str());
    let leftovers: Vec<UnitInfo> = instances::service_units(sd, id)?
        .into_iter()
        .filter(|u| !keep.contains(rev_of(u)) || (stale_target && rev_of(u) == p.revision))
        .collect();
    if !leftovers.is_empty() {
        if drain_first {
            // Killed between writing the file and the reload, nginx may still serve the old
            // instances: make it load what the files say before they go.
            if p.service.processes.values().any(|d| d.proxy.is_some()) {
                host.nginx.test_config()?;
                nginx::reload(host, nginx_unit, Duration::from_secs(30))?;
                details.push(format!(
                    "{nginx_unit} reloaded to be sure it serves the upstream files"
                ));
            }
            let drain = leftovers
                .iter()
                .filter_map(|u| process_of(p, u).map(|d| d.drain))
                .max()
                .unwrap_or(Duration::from_secs(5));
            details.push(format!("draining the old instances for {drain:?} first"));
            host.clock.sleep(drain);
        }
        let names = instances::stop_units(sd, &leftovers, Duration::from_secs(300))?;
        for n in names {
            details.push(format!("stopped leftover {n}"));
        }
    }
    Ok(())
}

/// Whether any of the service's upstream files already points at `revision`.
fn switched_files(p: &Prepared, revision: &str) -> bool {
    p.service
        .processes
        .values()
        .filter_map(|d| d.proxy.as_ref())
        .any(|px| {
            std::fs::read_to_string(&px.file)
                .ok()
                .is_some_and(|t| crate::plan::upstream::file_revision(&t) == Some(revision))
        })
}

/// Why an instance did not become healthy.
struct Unhealthy {
    unit: String,
    reason: String,
}

/// Waits until every instance of `revision` with a health check answers 2xx. Fails fast when
/// an instance's process exits (a new revision that crashes at boot will not get better).
fn wait_healthy(
    host: &Host,
    p: &Prepared,
    timeout_override: Option<Duration>,
    started: &[String],
    details: &mut Vec<String>,
) -> Result<(), Vec<Unhealthy>> {
    let sd = host.systemd().map_err(|e| {
        vec![Unhealthy {
            unit: p.service.id.to_string(),
            reason: e.to_string(),
        }]
    })?;
    let start = host.clock.now();
    let mut healthy: BTreeSet<String> = BTreeSet::new();
    // Instances that were running before this command may have been restarted long ago
    // (a crash, a health kill): only restarts from now on count against them.
    let baseline: BTreeMap<String, u32> = instances::service_units(sd, p.service.id.as_str())
        .unwrap_or_default()
        .into_iter()
        .filter(|u| !started.contains(&u.name))
        .map(|u| (u.name, u.n_restarts))
        .collect();
    let restarted = |u: &UnitInfo| u.n_restarts > baseline.get(&u.name).copied().unwrap_or(0);
    let mut last: BTreeMap<String, String> = BTreeMap::new();
    loop {
        let units: Vec<UnitInfo> = instances::service_units(sd, p.service.id.as_str())
            .map_err(|e| {
                vec![Unhealthy {
                    unit: p.service.id.to_string(),
                    reason: e.to_string(),
                }]
            })?
            .into_iter()
            .filter(|u| rev_of(u) == p.revision)
            .collect();
        let mut pending = Vec::new();
        let mut failed = Vec::new();
        for u in &units {
            let Some(def) = process_of(p, u) else {
                continue;
            };
            let Some(h) = &def.health else { continue };
            if healthy.contains(&u.name) {
                continue;
            }
            let deadline = timeout_override.unwrap_or(h.start_period);
            if restarted(u) || u.active_state != "active" {
                failed.push(Unhealthy {
                    unit: u.name.clone(),
                    reason: u
                        .last_exit()
                        .map(|e| format!("its process {e}"))
                        .unwrap_or_else(|| format!("unit is {}/{}", u.active_state, u.sub_state)),
                });
                continue;
            }
            let Some(port) = u.field("SHIM_PORT").and_then(|s| s.parse().ok()) else {
                failed.push(Unhealthy {
                    unit: u.name.clone(),
                    reason: "no port recorded".into(),
                });
                continue;
            };
            let c = host
                .http
                .check(port, &h.path, h.timeout.min(Duration::from_secs(1)));
            if c.healthy() {
                healthy.insert(u.name.clone());
                details.push(format!(
                    "{} healthy after {} ms ({c} on :{port}{})",
                    u.name,
                    host.clock.now().duration_since(start).as_millis(),
                    h.path
                ));
            } else if host.clock.now().duration_since(start) >= deadline {
                failed.push(Unhealthy {
                    unit: u.name.clone(),
                    reason: format!(
                        "not healthy within {deadline:?}: last check {c} on :{port}{}",
                        h.path
                    ),
                });
            } else {
                last.insert(u.name.clone(), c.to_string());
                pending.push(u.name.clone());
            }
        }
        if !failed.is_empty() {
            return Err(failed);
        }
        if pending.is_empty() {
            // Healthy once is not enough if the process died right after: check that none
            // of the instances restarted while the others were being checked.
            let now = instances::service_units(sd, p.service.id.as_str()).unwrap_or_default();
            let restarted: Vec<Unhealthy> = now
                .iter()
                .filter(|u| healthy.contains(&u.name))
                .filter(|u2| restarted(u2) || u2.active_state != "active")
                .map(|u2| Unhealthy {
                    unit: u2.name.clone(),
                    reason: u2
                        .last_exit()
                        .map(|e| format!("its process {e} after answering"))
                        .unwrap_or_else(|| format!("unit is {}/{}", u2.active_state, u2.sub_state)),
                })
                .collect();
            return if restarted.is_empty() {
                Ok(())
            } else {
                Err(restarted)
            };
        }
        host.clock.sleep(Duration::from_millis(25));
    }
}

/// Points each proxied process's upstream at the revision's instances, checks with `nginx -t`
/// and reloads nginx. All or nothing: any failure restores every file it wrote.
fn switch(host: &Host, p: &Prepared, nginx_unit: &str, details: &mut Vec<String>) -> Result<()> {
    let sd = host.systemd()?;
    let units: Vec<UnitInfo> = instances::service_units(sd, p.service.id.as_str())?
        .into_iter()
        .filter(|u| rev_of(u) == p.revision)
        .collect();
    let mut backups = Vec::new();
    for def in p.service.processes.values() {
        let Some(proxy) = &def.proxy else { continue };
        let mut ports: Vec<(u32, u16)> = units
            .iter()
            .filter(|u| u.field("SHIM_PROCESS") == Some(def.name.as_str()))
            .filter_map(|u| {
                Some((
                    u.field("SHIM_INSTANCE")?.parse().ok()?,
                    u.field("SHIM_PORT")?.parse().ok()?,
                ))
            })
            // Instances beyond `count` are stopped right after the switch (scaled down).
            .filter(|(i, _)| *i <= def.count)
            .collect();
        ports.sort();
        let ports: Vec<u16> = ports.into_iter().map(|(_, p)| p).collect();
        if ports.is_empty() && def.count > 0 {
            bail!("no running instance of {} to point nginx at", def.name);
        }
        let text = crate::plan::upstream::render_upstream(
            &proxy.upstream,
            p.service.id.as_str(),
            def.name.as_str(),
            &p.revision,
            &ports,
        );
        match nginx::write_upstream(&proxy.file, &text) {
            Ok(Some(b)) => {
                details.push(format!(
                    "{}: upstream {} → {:?}",
                    proxy.file.display(),
                    proxy.upstream,
                    ports
                ));
                backups.push(b);
            }
            Ok(None) => details.push(format!("{}: unchanged", proxy.file.display())),
            Err(e) => {
                restore(&backups);
                return Err(e);
            }
        }
    }
    if backups.is_empty() {
        return Ok(());
    }
    if let Err(e) = host.nginx.test_config() {
        restore(&backups);
        return Err(e.context("the new upstream was refused; previous file restored"));
    }
    if let Err(e) = nginx::reload(host, nginx_unit, Duration::from_secs(30)) {
        restore(&backups);
        // Put nginx back on the old file too; if this fails as well, the error says both.
        let again = nginx::reload(host, nginx_unit, Duration::from_secs(30));
        let e = e.context("reloading nginx failed; previous upstream restored");
        return Err(match again {
            Ok(()) => e,
            Err(e2) => e.context(format!(
                "and reloading it with the previous file failed too: {e2:#}"
            )),
        });
    }
    details.push(format!("{nginx_unit} reloaded; new workers running"));
    Ok(())
}

fn restore(backups: &[nginx::Backup]) {
    for b in backups {
        if let Err(e) = b.restore() {
            eprintln!("shim: restoring an upstream file failed: {e:#}");
        }
    }
}

/// Stops the instances a failed attempt started; the old revision keeps serving.
fn bail_out(
    sd: &dyn Systemd,
    p: &Prepared,
    started: &[String],
    store: &StateStore,
    st: &mut ServiceState,
) {
    let units: Vec<UnitInfo> = instances::service_units(sd, p.service.id.as_str())
        .unwrap_or_default()
        .into_iter()
        .filter(|u| started.contains(&u.name))
        .collect();
    if let Err(e) = instances::stop_units(sd, &units, Duration::from_secs(300)) {
        eprintln!("shim: stopping the new instances failed: {e:#}; the next `shim upgrade` or `shim reconcile` removes them");
        return;
    }
    st.upgrading = None;
    let _ = store.save(p.service.id.as_str(), st);
    if let Ok(live) = instances::service_units(sd, p.service.id.as_str()) {
        let live: BTreeSet<String> = live.into_iter().map(|u| u.name).collect();
        let _ = instances::remove_stale_dirs(&p.instances_dir, &live);
    }
}

/// Brings service `id` to `revision`; see the module docs for the steps.
pub fn converge(
    host: &Host,
    defs: &Definitions,
    id: &str,
    revision: &str,
    opts: &Options,
) -> Result<()> {
    converge_locked(host, defs, id, revision, opts, None)
}

/// [`converge`] by a caller that may already hold the service's lock (reconcile takes it
/// before it looks at the service, so that what it saw is still true when it acts).
pub fn converge_locked(
    host: &Host,
    defs: &Definitions,
    id: &str,
    revision: &str,
    opts: &Options,
    lock: Option<ServiceLock>,
) -> Result<()> {
    let dirs = &host.dirs;
    let rep = Reporter {
        json: opts.json,
        quiet_details: false,
    };
    let t0 = Instant::now();
    if !opts.json {
        println!("{} {id} to {revision}", opts.verb);
    }
    let _lock = match lock {
        Some(l) => Some(l),
        None if opts.dry_run => None,
        None => Some(rep.step("lock", |_| {
            ServiceLock::acquire(&dirs.run, id, opts.lock_timeout)
        })?),
    };
    let prepared = rep.step("fetch", |d| {
        let p = instances::prepare(host, defs, id, revision, !opts.dry_run)?;
        d.push(format!(
            "image {} ({})",
            p.image.reference, p.image.manifest_digest
        ));
        Ok(p)
    })?;
    let sd = host.systemd()?;
    let store = StateStore::new(&dirs.state);
    let mut st = store.load(id)?;

    if !opts.dry_run {
        rep.step("recover", |d| {
            recover(
                host,
                &prepared,
                &defs.settings.nginx_unit,
                &mut st,
                &store,
                d,
            )
        })?;
    }
    let units = instances::service_units(sd, id)?;
    let (same, old): (Vec<UnitInfo>, Vec<UnitInfo>) =
        units.into_iter().partition(|u| rev_of(u) == revision);
    if opts.refuse_other_revision && !old.is_empty() {
        let revs: BTreeSet<&str> = old.iter().map(rev_of).collect();
        return Err(BadInput(format!(
            "service {id} is running revision {}; `shim start` does not replace a revision (use `shim upgrade`, or `shim stop --id {id}` first)",
            revs.into_iter().collect::<Vec<_>>().join(", ")
        ))
        .into());
    }
    let wanted = prepared.all_instances();
    let wanted_names: BTreeSet<String> = prepared
        .plan(&[], &wanted, &Default::default())?
        .into_iter()
        .map(|p| p.unit.name)
        .collect();
    let extra: Vec<UnitInfo> = same
        .iter()
        .filter(|u| !wanted_names.contains(&u.name))
        .cloned()
        .collect();
    let proxied = prepared
        .service
        .processes
        .values()
        .any(|p| p.proxy.is_some());
    rep.step("plan", |d| {
        let have: BTreeSet<&str> = same.iter().map(|u| u.name.as_str()).collect();
        let to_start = wanted_names.iter().filter(|n| !have.contains(n.as_str())).count();
        d.push(format!("start {to_start} new instance(s) of {revision}"));
        if !old.is_empty() {
            let revs: BTreeSet<&str> = old.iter().map(rev_of).collect();
            d.push(format!("then stop {} instance(s) of {}", old.len(), revs.into_iter().collect::<Vec<_>>().join(", ")));
        }
        if !extra.is_empty() {
            d.push(format!("stop {} instance(s) no longer wanted (count lowered)", extra.len()));
        }
        for def in prepared.service.processes.values() {
            if let Some(px) = &def.proxy {
                d.push(format!("point nginx upstream {} ({}) at {}", px.upstream, px.file.display(), def.name));
            }
        }
        if proxied && !opts.dry_run {
            // Fail before anything changes if nginx cannot be reloaded.
            let unit = &defs.settings.nginx_unit;
            let info = sd
                .list_units(std::slice::from_ref(unit))?
                .into_iter()
                .find(|u| &u.name == unit);
            match info {
                Some(u) if u.active_state == "active" => {}
                Some(u) => bail!("{unit} is {}/{}: start nginx before deploying proxied processes", u.active_state, u.sub_state),
                None => bail!("{unit} is not loaded: start nginx (or set [shim] nginx_unit) before deploying proxied processes"),
            }
        }
        Ok(())
    })?;
    if opts.dry_run {
        if !opts.json {
            println!("dry run: nothing changed");
        }
        return Ok(());
    }
    // The app's crontab at the new revision, read before anything changes: a bad one stops the
    // upgrade here. Installed after the switch (step "cron").
    let has_cron_state = crate::ops::cron::state_path(dirs, id).exists();
    let cron_jobs = if prepared.service.cron.is_some() || has_cron_state {
        Some(rep.step("crontab", |d| {
            let jobs = crate::ops::cron::jobs_for(host, &prepared)?;
            match &jobs {
                Some(j) => d.push(format!(
                    "{} job(s) from {}",
                    j.len(),
                    prepared.service.cron.as_deref().unwrap_or("")
                )),
                None => d.push("no cron key any more: its timers go".into()),
            }
            Ok(jobs)
        })?)
    } else {
        None
    };

    st.upgrading = Some(Attempt {
        revision: revision.to_string(),
        phase: Phase::Starting,
    });
    store.save(id, &st)?;

    let singleton_old: Vec<UnitInfo> = old
        .iter()
        .filter(|u| process_of(&prepared, u).is_some_and(|d| d.singleton))
        .cloned()
        .collect();
    if !singleton_old.is_empty() {
        rep.step("singleton", |d| {
            for n in instances::stop_units(sd, &singleton_old, Duration::from_secs(300))? {
                d.push(format!("stopped {n} first (singleton)"));
            }
            Ok(())
        })?;
    }

    let report = rep.step("start", |d| {
        let r = instances::start_instances(host, &prepared, &wanted)?;
        d.extend(r.started.iter().map(|u| format!("started {u}")));
        d.extend(r.already_running.iter().map(|u| format!("running {u}")));
        Ok(r)
    });
    let report = match report {
        Ok(r) => r,
        Err(e) => {
            // start_instances already stopped what it started.
            st.upgrading = None;
            store.save(id, &st)?;
            return Err(e);
        }
    };

    let health = rep.step("health", |d| {
        wait_healthy(host, &prepared, opts.timeout, &report.started, d).map_err(|failed| {
            let mut msg = format!(
                "{} instance(s) of {revision} did not become healthy:",
                failed.len()
            );
            for f in &failed {
                msg.push_str(&format!("\n  {}: {}", f.unit, f.reason));
            }
            for f in &failed {
                msg.push_str(&format!(
                    "\n--- last journal lines of {} ---\n{}",
                    f.unit,
                    host.journal.tail(&f.unit, 10)
                ));
            }
            anyhow!(msg)
        })
    });
    let mut unhealthy = None;
    if let Err(e) = health {
        if opts.keep_unhealthy {
            // Nothing else serves this revision: keep what runs, point nginx at it and let
            // systemd and the probe retry until it is healthy.
            unhealthy = Some(e);
        } else {
            bail_out(sd, &prepared, &report.started, &store, &mut st);
            let serving = st.current.clone().unwrap_or_else(|| "nothing".into());
            return Err(e.context(format!(
                "{} of {id} to {revision} bailed out; {serving} is still serving",
                opts.verb
            )));
        }
    }

    if let Err(e) = rep.step("switch", |d| {
        switch(host, &prepared, &defs.settings.nginx_unit, d)
    }) {
        bail_out(sd, &prepared, &report.started, &store, &mut st);
        return Err(e.context(format!(
            "{} of {id} to {revision} bailed out; nginx was left as it was",
            opts.verb
        )));
    }
    st.upgrading = Some(Attempt {
        revision: revision.to_string(),
        phase: Phase::Switched,
    });
    store.save(id, &st)?;

    let old_rest: Vec<UnitInfo> = old
        .iter()
        .filter(|u| !singleton_old.iter().any(|s| s.name == u.name))
        .cloned()
        .collect();
    if !old_rest.is_empty() {
        let drain = old_rest
            .iter()
            .filter_map(|u| process_of(&prepared, u).map(|d| d.drain))
            .max()
            .unwrap_or(Duration::from_secs(5));
        rep.step("drain", |d| {
            d.push(format!(
                "waiting {drain:?} for requests in flight to the old instances"
            ));
            host.clock.sleep(drain);
            Ok(())
        })?;
    }
    let to_stop: Vec<UnitInfo> = old_rest.into_iter().chain(extra).collect();
    if !to_stop.is_empty() {
        rep.step("stop-old", |d| {
            for n in instances::stop_units(sd, &to_stop, Duration::from_secs(300))? {
                let scaled =
                    rev_of(to_stop.iter().find(|u| u.name == n).unwrap_or(&to_stop[0])) == revision;
                d.push(format!(
                    "stopped {n}{}",
                    if scaled { " (scaled down)" } else { "" }
                ));
            }
            Ok(())
        })?;
    }

    rep.step("record", |d| {
        if st.current.as_deref() != Some(revision) {
            st.previous = st.current.take();
            st.current = Some(revision.to_string());
        }
        st.upgrading = None;
        st.stopped = false;
        store.save(id, &st)?;
        let live: BTreeSet<String> = instances::service_units(sd, id)?
            .into_iter()
            .map(|u| u.name)
            .collect();
        instances::remove_stale_dirs(&prepared.instances_dir, &live)?;
        d.push(format!(
            "current {revision}{}",
            st.previous
                .as_ref()
                .map(|p| format!(" (previous {p})"))
                .unwrap_or_default()
        ));
        Ok(())
    })?;
    rep.step("probe", |d| {
        let change = crate::ops::probe_timer::ensure_probe_timer(
            host,
            &prepared.service,
            &prepared.shim_exe,
            &opts.config,
        )?;
        let timer = crate::plan::probe_timer::probe_timer_name(id);
        let every = crate::config::format_duration(crate::plan::probe_timer::probe_interval(
            &prepared.service,
        ));
        let what = match change {
            crate::ops::probe_timer::TimerChange::Unchanged => "unchanged",
            crate::ops::probe_timer::TimerChange::Created => "created",
            crate::ops::probe_timer::TimerChange::Replaced => "replaced",
        };
        d.push(format!("{timer} {what}: probe every {every}"));
        Ok(())
    })?;
    if let Some(jobs) = &cron_jobs {
        rep.step("cron", |d| {
            let lines = crate::ops::cron::install(host, &prepared, &opts.config, jobs.as_deref())
                .context(format!(
                    "{revision} is serving, but its cron jobs were not installed (the previous ones may still run); run `shim cron sync --id {id}`"
                ))?;
            d.extend(lines);
            Ok(())
        })?;
    }
    if let Some(e) = unhealthy {
        return Err(e.context(format!(
            "{} of {id} to {revision}: instances kept running although not healthy yet; systemd and the probe keep retrying them",
            opts.verb
        )));
    }
    if opts.json {
        println!(
            "{}",
            serde_json::json!({"result": "ok", "service": id, "revision": revision, "ms": t0.elapsed().as_millis()})
        );
    } else {
        println!("done in {} ms", t0.elapsed().as_millis());
    }
    Ok(())
}
