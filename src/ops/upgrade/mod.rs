//! `shim upgrade` (and `start`, `rollback`, reconcile's repair): bring a service to a revision
//! without dropping a request, as an explicit state machine ([`machine`]), each step timed
//! and reported ([`report`]):
//!
//! ```text
//! fetch → lock → recover → plan → [crontab] → [singleton] → start → health → switch
//!      → [drain → stop-old] → record → probe → [cron] → done
//! ```
//!
//! The fetch step comes first and alone: it yields the [`Prepared`] deployment, and only then
//! is a [`Run`] made, holding it, so that every later step has it by construction (zincati's
//! states carrying their data; no "prepared yet?" check at run time). [`Run::tick`] performs
//! one step and names the next; [`machine::Machine`] refuses an illegal transition. The
//! command's rules ([`rules`]) are checked on the state read under the service lock. The
//! operation prints nothing: begin, step and closing lines go to the sink in
//! [`Options::progress`] ([`report`]), which the CLI gives. Nothing changes before `start`: the image, the lock, and the repair of
//! an interrupted attempt ([`recover`], a pure decision from the persisted phase, the units
//! and the upstream files) come first. Until `switch` the old revision serves, so any failure
//! there stops the new instances and leaves the host as it was. The phase is persisted
//! (`state::Attempt`) at the two transitions that matter, `starting` before the first new
//! instance starts and `switched` once nginx serves the new revision, so that when shim is
//! killed the next upgrade (or reconcile) knows which revision serves.
//!
//! The units are observed once per step that needs them (plan, health's rounds, record), not
//! at every call; the health wait ([`health`]) and the switch ([`switch`]) share the last
//! observation. `start`, `rollback` and reconcile are the same machine with another [`Kind`].

pub mod health;
pub mod machine;
pub mod recover;
pub mod report;
pub mod rules;
pub mod switch;

#[cfg(test)]
mod tests;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _, Result};

use crate::config::{Definitions, ProcessDef};
use crate::error::BadInput;
use crate::host::lock::ServiceLock;
use crate::host::state::{Attempt, Phase, ServiceState, StateStore};
use crate::host::systemd::UnitInfo;
use crate::host::Host;
use crate::ops::cron::CronJob;
use crate::ops::instances::{self, StartReport};
use crate::plan::Prepared;
use machine::{Machine, Step};
use report::{Event, Reporter};

/// Which command drives the machine: the same steps, a different plan around them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `shim upgrade`: replace whatever runs.
    Upgrade,
    /// `shim start`: refuse instead of replacing a running revision.
    Start,
    /// `shim rollback`: the previous deployment, through the same flow.
    Rollback,
    /// `shim restart`: the current deployment's instances (of some processes) replaced by new
    /// ones, through the same flow.
    Restart,
    /// `shim reconcile` of the current revision: instances that do not become healthy are
    /// kept (there is nothing else to serve; systemd and the probe keep retrying them)
    /// instead of being stopped, and the command fails at the end.
    Reconcile,
}

impl Kind {
    /// What the command is called in messages.
    pub fn verb(self) -> &'static str {
        match self {
            Kind::Upgrade => "upgrade",
            Kind::Start => "start",
            Kind::Rollback => "rollback",
            Kind::Restart => "restart",
            Kind::Reconcile => "reconcile",
        }
    }
    fn refuses_other_revision(self) -> bool {
        self == Kind::Start
    }
    fn keeps_unhealthy(self) -> bool {
        self == Kind::Reconcile
    }
}

#[derive(Debug, Clone)]
pub struct Options {
    pub kind: Kind,
    pub dry_run: bool,
    /// Overrides each process's `health.start_period` as the time to become healthy.
    pub timeout: Option<Duration>,
    pub lock_timeout: Duration,
    /// The definitions the command read; the probe timer runs `shim --config` with it.
    pub config: std::path::PathBuf,
    /// Start from this recorded deployment (reconcile, rollback, restart, `shim start`
    /// without a revision) instead of the definitions and the image tag as they are now.
    pub deployed: Option<crate::plan::Deployment>,
    /// `shim restart`: the processes whose instances are replaced (all if empty).
    pub restart: Vec<String>,
    /// Where the step lines go (the operation prints nothing itself).
    pub progress: report::Sink,
}

/// How an upgrade ended (when it did not fail).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub service: String,
    pub revision: String,
    /// The deployment's id.
    pub deployment: String,
    pub dry_run: bool,
    /// False when the deployment was already running in full: nothing was touched.
    pub changed: bool,
    pub ms: u128,
    /// The steps taken, `init` first.
    pub steps: Vec<Step>,
}

impl Outcome {
    /// The closing line(s) the CLI prints.
    pub fn render(&self, json: bool) -> String {
        if self.dry_run && !json {
            return "dry run: nothing changed\n".into();
        }
        if json {
            // The closing line is a contract (docs/fleet.md; the Ansible modules read it):
            // `changed` of a dry run says whether the real run would change anything.
            let result = if self.dry_run { "dry-run" } else { "ok" };
            format!(
                "{}\n",
                serde_json::json!({"result": result, "service": self.service, "revision": self.revision, "deployment": self.deployment, "changed": self.changed, "ms": self.ms})
            )
        } else if !self.changed {
            format!(
                "nothing to do: deployment {} of {} runs in full ({} ms)\n",
                self.deployment, self.revision, self.ms
            )
        } else {
            format!("done in {} ms\n", self.ms)
        }
    }
}

fn process_of<'a>(p: &'a Prepared, u: &UnitInfo) -> Option<&'a ProcessDef> {
    let name = u.process()?;
    p.service
        .processes
        .values()
        .find(|d| d.name.as_str() == name)
}

/// The longest `drain` of the processes of `units` (5 s if none is known).
fn drain_of(p: &Prepared, units: &[UnitInfo]) -> Duration {
    units
        .iter()
        .filter_map(|u| process_of(p, u).map(|d| d.drain))
        .max()
        .unwrap_or(Duration::from_secs(5))
}

/// What the plan step decided, from one observation of the service's units.
#[derive(Default)]
struct Planned {
    /// Units of the target revision already running.
    same: Vec<UnitInfo>,
    /// Units of other revisions: stopped after the switch (singletons before the start).
    old: Vec<UnitInfo>,
    /// Units of the target revision beyond `count`: stopped after the switch.
    extra: Vec<UnitInfo>,
    /// The (process, index) pairs the definition asks for.
    wanted: Vec<(String, u32)>,
}

impl Planned {
    fn singleton_old(&self, p: &Prepared) -> Vec<UnitInfo> {
        self.old
            .iter()
            .filter(|u| process_of(p, u).is_some_and(|d| d.singleton))
            .cloned()
            .collect()
    }
    fn old_rest(&self, p: &Prepared) -> Vec<UnitInfo> {
        self.old
            .iter()
            .filter(|u| !process_of(p, u).is_some_and(|d| d.singleton))
            .cloned()
            .collect()
    }
}

/// One upgrade in progress, once its image is fetched: the [`Prepared`] deployment every
/// later step needs is this state's own (there is no run without it), and what the steps
/// found and decided so far.
struct Run<'a> {
    host: &'a Host,
    defs: &'a Definitions,
    id: &'a str,
    revision: &'a str,
    opts: &'a Options,
    rep: Reporter,
    store: StateStore,
    lock: Option<ServiceLock>,
    p: Prepared,
    st: ServiceState,
    planned: Planned,
    cron_jobs: Option<Option<Vec<CronJob>>>,
    started: StartReport,
    /// The new revision's units as the health wait last saw them.
    healthy_units: Vec<UnitInfo>,
    /// Reconcile: the health failure kept for the end.
    unhealthy: Option<anyhow::Error>,
    /// The deployment runs in full already: nothing to do.
    unchanged: bool,
}

/// Brings service `id` to `revision`; see the module docs for the steps.
pub fn converge(
    host: &Host,
    defs: &Definitions,
    id: &str,
    revision: &str,
    opts: &Options,
) -> Result<Outcome> {
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
) -> Result<Outcome> {
    let t0 = Instant::now();
    let verb = opts.kind.verb();
    opts.progress.event(&Event::Begin {
        verb,
        service: id,
        revision,
    });
    let rep = Reporter {
        sink: opts.progress.clone(),
    };
    let mut m = Machine::default();
    m.advance(Step::Fetch)?;
    let p = match fetch(host, defs, id, revision, opts, &rep) {
        Ok(p) => p,
        Err(e) => {
            m.advance(Step::Failed)?;
            return Err(e);
        }
    };
    let mut run = Run {
        host,
        defs,
        id,
        revision,
        opts,
        rep,
        store: host.state(),
        lock,
        p,
        st: ServiceState::default(),
        planned: Planned::default(),
        cron_jobs: None,
        started: StartReport::default(),
        healthy_units: Vec::new(),
        unhealthy: None,
        unchanged: false,
    };
    run.drive(&mut m)?;
    if let Some(e) = run.unhealthy.take() {
        return Err(e.context(format!(
            "{verb} of {id} to {revision}: instances kept running although not healthy yet; systemd and the probe keep retrying them"
        )));
    }
    let out = Outcome {
        service: id.to_string(),
        revision: revision.to_string(),
        deployment: run.p.deployment.id(),
        changed: !run.unchanged,
        dry_run: opts.dry_run,
        ms: t0.elapsed().as_millis(),
        steps: m.history().to_vec(),
    };
    opts.progress.event(&Event::Done(&out));
    Ok(out)
}

/// The fetch step: the image (or the recorded deployment) prepared, before the lock is taken,
/// so that bad input leaves not even a lock file behind.
fn fetch(
    host: &Host,
    defs: &Definitions,
    id: &str,
    rev: &str,
    opts: &Options,
    rep: &Reporter,
) -> Result<Prepared> {
    let unpack = !opts.dry_run;
    let deployed = opts.deployed.as_ref();
    rep.step("fetch", |d| {
        let p = match deployed {
            Some(dep) => {
                if dep.revision != rev {
                    bail!(
                        "internal error: deployment of {} asked for at {rev}",
                        dep.revision
                    );
                }
                d.push(format!("deployment {} (recorded)", dep.id()));
                instances::prepare_deployed(host, defs, dep, unpack)?
            }
            None => instances::prepare(host, defs, id, rev, unpack)?,
        };
        // Upstream files shim would not replace are refused here too, before the lock
        // file is made.
        crate::ops::proxy::for_host(host, &defs.settings).preflight_all(&p.service)?;
        d.push(format!(
            "image {} ({})",
            p.image.reference, p.image.manifest_digest
        ));
        Ok(p)
    })
}

/// The service's own unit, written (and enabled) when the service is first started or
/// recorded (see `ops::service_unit`); a failure is a warning in the step's lines, since the
/// service itself runs without it.
fn ensure_unit(host: &Host, id: &str, config: &std::path::Path, d: &mut Vec<String>) {
    use crate::ops::service_unit::{ensure, FileChange};
    let name = crate::plan::names::service_unit_name(id);
    match ensure(host, id, config, true) {
        Ok(FileChange::Unchanged) => {}
        Ok(FileChange::Created) => d.push(format!("{name} written and enabled")),
        Ok(FileChange::Rewritten) => d.push(format!("{name} rewritten")),
        Err(e) => d.push(format!("warning: {name}: {e:#}")),
    }
}

impl Run<'_> {
    /// Performs the steps after fetch, each one the last named, until `done`; a failed step
    /// ends the machine in `failed`.
    fn drive(&mut self, m: &mut Machine) -> Result<()> {
        let mut next = self.after_fetch();
        loop {
            let step = match next {
                Ok(step) => step,
                Err(e) => {
                    m.advance(Step::Failed)?;
                    return Err(e);
                }
            };
            m.advance(step)?;
            if m.step() == Step::Done {
                return Ok(());
            }
            next = self.tick(step);
        }
    }

    /// Performs `step`; returns the step that follows.
    fn tick(&mut self, step: Step) -> Result<Step> {
        match step {
            Step::Lock => self.tick_lock(),
            Step::Recover => self.tick_recover(),
            Step::Plan => self.tick_plan(),
            Step::Crontab => self.tick_crontab(),
            Step::Singleton => self.tick_singleton(),
            Step::Start => self.tick_start(),
            Step::Health => self.tick_health(),
            Step::Switch => self.tick_switch(),
            Step::Drain => self.tick_drain(),
            Step::StopOld => self.tick_stop_old(),
            Step::Record => self.tick_record(),
            Step::Probe => self.tick_probe(),
            Step::Cron => self.tick_cron(),
            Step::Init | Step::Fetch | Step::Done | Step::Failed => {
                bail!("internal error: {} is not a step to perform", step.name())
            }
        }
    }

    fn tick_lock(&mut self) -> Result<Step> {
        let (run_dir, id, t) = (&self.host.dirs.run, self.id, self.opts.lock_timeout);
        let (store, opts) = (&self.store, self.opts);
        let (lock, st) = self.rep.step("lock", |_| {
            let lock = ServiceLock::acquire(run_dir, id, t)?;
            // What the state says is read under the lock only, and the command's rules are
            // checked on it: a `shim stop` that landed while this waited is refused here.
            Ok((lock, load_checked(store, id, opts)?))
        })?;
        self.lock = Some(lock);
        self.st = st;
        self.adopt_recorded()?;
        Ok(Step::Recover)
    }

    /// Under the lock, with the state read: a fresh deployment with the same content as the
    /// current one is the current one (its ports and restart generations); a recorded one
    /// asked for must still be what the state records.
    fn adopt_recorded(&mut self) -> Result<()> {
        let p = &mut self.p;
        let recorded = [
            self.st.deployment.as_ref(),
            self.st.previous_deployment.as_ref(),
        ];
        if self.opts.deployed.is_none() {
            if let Some(cur) = recorded
                .into_iter()
                .flatten()
                .find(|d| d.id() == p.deployment.id())
            {
                // The same deployment (its counts may differ: it scales in place): its
                // restart generations, so its instances keep their tags, and, for the
                // current one, its ports (a previous one's may be taken by now).
                p.deployment.generations = cur.generations.clone();
                if self.st.deployment.as_ref().map(|c| c.id()) == Some(cur.id()) {
                    p.deployment.ports = cur.ports.clone();
                }
                p.deployment.deployed_usec = cur.deployed_usec;
            }
            return Ok(());
        }
        // A recorded deployment asked for must still be the one the state records: an
        // upgrade that ran while this command waited for the lock wins.
        let attempt = self
            .st
            .upgrading
            .as_ref()
            .and_then(|a| a.deployment.as_ref());
        let expected = match self.opts.kind {
            Kind::Rollback => vec![self.st.previous_deployment.as_ref()],
            // What serves may be an interrupted attempt's, which recovery promotes.
            Kind::Reconcile => vec![self.st.deployment.as_ref(), attempt],
            _ => vec![self.st.deployment.as_ref()],
        };
        if !expected
            .into_iter()
            .flatten()
            .any(|d| d.id() == p.deployment.id())
        {
            bail!(
                "the deployment of {} changed while this {} waited for its lock (now {}): run it again",
                self.id,
                self.opts.kind.verb(),
                self.st.current.as_deref().unwrap_or("none")
            );
        }
        // A restart replaces the instances that run now: its new generations are counted
        // from the state read under the lock (another restart may have run meanwhile).
        if let (Kind::Restart, Some(cur)) = (self.opts.kind, &self.st.deployment) {
            p.deployment = cur.restarted(&self.opts.restart);
        }
        Ok(())
    }

    /// Where the run goes once fetched: a dry run plans from the state as it is, reconcile
    /// (which holds the lock already) recovers, any other run takes the lock.
    fn after_fetch(&mut self) -> Result<Step> {
        if !self.opts.dry_run && self.lock.is_none() {
            return Ok(Step::Lock);
        }
        self.st = load_checked(&self.store, self.id, self.opts)?;
        self.adopt_recorded()?;
        Ok(if self.opts.dry_run {
            Step::Plan
        } else {
            Step::Recover
        })
    }

    fn tick_recover(&mut self) -> Result<Step> {
        let p = &self.p;
        let (host, settings) = (self.host, &self.defs.settings);
        let (st, store) = (&mut self.st, &self.store);
        self.rep
            .step("recover", |d| recover::run(host, p, settings, st, store, d))?;
        Ok(Step::Plan)
    }

    fn tick_plan(&mut self) -> Result<Step> {
        let planned = self.observe_plan()?;
        let p = &self.p;
        let (host, opts, rev) = (self.host, self.opts, self.revision);
        let settings = &self.defs.settings;
        let nginx_unit = &settings.nginx_unit;
        let current = self.st.deployment.as_ref().filter(|_| !self.st.stopped);
        let unchanged = matches!(opts.kind, Kind::Upgrade | Kind::Start)
            && self.st.upgrading.is_none()
            && current
                .is_some_and(|c| c.id() == p.deployment.id() && c.tags() == p.deployment.tags())
            && planned.old.is_empty()
            && planned.extra.is_empty()
            && planned.same.len() == planned.wanted.len()
            && planned.same.iter().all(|u| u.is_present());
        if unchanged {
            self.rep.step("plan", |d| {
                d.push(format!(
                    "nothing to do: deployment {} of {rev} runs in full; the definitions, env_files and image are what it was deployed with",
                    p.deployment.id()
                ));
                Ok(())
            })?;
            self.unchanged = true;
            return Ok(Step::Done);
        }
        self.rep.step("plan", |d| {
            if let Some(c) = current {
                let what = crate::plan::deployment::differences(c, &p.deployment);
                if !what.is_empty() {
                    d.push(format!(
                        "deployment {} replaces {}: {} changed",
                        p.deployment.id(),
                        c.id(),
                        what.join(", ")
                    ));
                }
            }
            describe_plan(p, &planned, rev, d)?;
            // Files shim would not replace, and an nginx that cannot be reloaded, fail here,
            // before anything changes.
            crate::ops::proxy::for_host(host, settings).preflight_all(&p.service)?;
            let proxied = p.service.processes.values().any(|p| p.proxy.is_some());
            if proxied && !opts.dry_run {
                crate::host::nginx::require_active(host, nginx_unit)?;
            }
            Ok(())
        })?;
        self.planned = planned;
        if self.opts.dry_run {
            return Ok(Step::Done);
        }
        let has_cron_state = crate::ops::cron::state_path(&self.host.dirs, self.id).exists();
        if p.service.cron.is_some() || has_cron_state {
            return Ok(Step::Crontab);
        }
        self.persist_starting()
    }

    /// The one observation the plan is made from; refuses `start` over another revision.
    fn observe_plan(&self) -> Result<Planned> {
        let p = &self.p;
        let units =
            crate::ops::view::ServiceView::observe(self.host.systemd()?, self.id)?.into_units();
        let (same, old): (Vec<UnitInfo>, Vec<UnitInfo>) =
            units.into_iter().partition(|u| owned(p, u));
        // Only what is present refuses a start: units left behind are stopped with the rest.
        if self.opts.kind.refuses_other_revision() && old.iter().any(|u| u.is_present()) {
            let revs: BTreeSet<&str> = old
                .iter()
                .filter(|u| u.is_present())
                .map(|u| u.revision())
                .collect();
            let id = self.id;
            return Err(BadInput(format!(
                "service {id} is running revision {}; `shim start` does not replace a revision (use `shim upgrade`, or `shim stop --id {id}` first)",
                revs.into_iter().collect::<Vec<_>>().join(", ")
            ))
            .into());
        }
        let wanted = p.all_instances();
        let wanted_names: BTreeSet<String> = p
            .plan(&[], &wanted, &Default::default())?
            .into_iter()
            .map(|p| p.unit.name)
            .collect();
        let extra = same
            .iter()
            .filter(|u| !wanted_names.contains(&u.name))
            .cloned()
            .collect();
        Ok(Planned {
            same,
            old,
            extra,
            wanted,
        })
    }

    fn tick_crontab(&mut self) -> Result<Step> {
        let p = &self.p;
        let host = self.host;
        // The app's crontab at the new revision, read before anything changes: a bad one
        // stops the upgrade here. Installed after the switch (step "cron").
        let jobs = self.rep.step("crontab", |d| {
            let jobs = crate::ops::cron::jobs_for(host, p)?;
            match &jobs {
                Some(j) => d.push(format!(
                    "{} job(s) from {}",
                    j.len(),
                    p.service.cron.as_deref().unwrap_or("")
                )),
                None => d.push("no cron key any more: its timers go".into()),
            }
            Ok(jobs)
        })?;
        self.cron_jobs = Some(jobs);
        self.persist_starting()
    }

    /// The first persisted transition: from here on, new instances may exist. The deployment
    /// (with its secrets snapshot) is recorded before any of them starts.
    fn persist_starting(&mut self) -> Result<Step> {
        let p = &self.p;
        crate::host::secrets::save(&self.host.dirs, self.id, &p.secrets)?;
        crate::host::secrets::save_files(&self.host.dirs, &p.deployment, &p.secret_file_contents)?;
        crate::host::secrets::check_files(&self.host.dirs, &p.deployment)?;
        self.st.upgrading = Some(Attempt {
            revision: self.revision.to_string(),
            phase: Phase::Starting,
            deployment: Some(p.deployment.clone()),
        });
        self.store.save(self.id, &self.st)?;
        let p = &self.p;
        Ok(if self.planned.singleton_old(p).is_empty() {
            Step::Start
        } else {
            Step::Singleton
        })
    }

    fn tick_singleton(&mut self) -> Result<Step> {
        let singles = self.planned.singleton_old(&self.p);
        let sd = self.host.systemd()?;
        self.rep.step("singleton", |d| {
            for n in instances::stop_units(sd, &singles, Duration::from_secs(300))? {
                d.push(format!("stopped {n} first (singleton)"));
            }
            Ok(())
        })?;
        Ok(Step::Start)
    }

    fn tick_start(&mut self) -> Result<Step> {
        let p = &self.p;
        let (host, wanted) = (self.host, &self.planned.wanted);
        let (id, config) = (self.id, &self.opts.config);
        let r = self.rep.step("start", |d| {
            // Before the instances: they are PartOf= it, and the daemon-reload a new unit
            // file needs resets systemd's start limits, which must count their starts.
            ensure_unit(host, id, config, d);
            let r = instances::start_instances(host, p, wanted)?;
            d.extend(r.started.iter().map(|u| format!("started {u}")));
            d.extend(r.already_running.iter().map(|u| format!("running {u}")));
            d.extend(r.reset.iter().map(|u| format!("reset {u}, left behind")));
            Ok(r)
        });
        match r {
            Ok(r) => {
                // The ports the new instances were given, recorded before nginx is pointed
                // at them.
                if r.record_ports(&mut self.p.deployment) {
                    if let Some(a) = self.st.upgrading.as_mut() {
                        a.deployment = Some(self.p.deployment.clone());
                    }
                    self.store.save(self.id, &self.st)?;
                }
                self.started = r;
                Ok(Step::Health)
            }
            Err(e) => {
                // start_instances already stopped what it started.
                self.st.upgrading = None;
                self.store.save(self.id, &self.st)?;
                Err(e)
            }
        }
    }

    fn tick_health(&mut self) -> Result<Step> {
        let p = &self.p;
        let (host, timeout, started) = (self.host, self.opts.timeout, &self.started.started);
        let same = &self.planned.same;
        let revision = self.revision;
        let r = self.rep.step("health", |d| {
            health::wait_healthy(host, p, timeout, started, same, d)
                .map_err(|failed| unhealthy_error(host, revision, &failed))
        });
        match r {
            Ok(units) => self.healthy_units = units,
            Err(e) if self.opts.kind.keeps_unhealthy() => {
                // Nothing else serves this revision: keep what runs, point nginx at it and
                // let systemd and the probe retry until it is healthy.
                self.unhealthy = Some(e);
                self.healthy_units =
                    crate::ops::view::ServiceView::observe(host.systemd()?, self.id)?
                        .into_units()
                        .into_iter()
                        .filter(|u| owned(p, u))
                        .collect();
            }
            Err(e) => {
                self.bail_out();
                let serving = self.st.current.clone().unwrap_or_else(|| "nothing".into());
                return Err(e.context(format!(
                    "{} of {} to {revision} bailed out; {serving} is still serving",
                    self.opts.kind.verb(),
                    self.id
                )));
            }
        }
        Ok(Step::Switch)
    }

    fn tick_switch(&mut self) -> Result<Step> {
        let p = &self.p;
        let (host, units) = (self.host, &self.healthy_units);
        let settings = &self.defs.settings;
        if let Err(e) = self
            .rep
            .step("switch", |d| switch::switch(host, p, units, settings, d))
        {
            self.bail_out();
            return Err(e.context(format!(
                "{} of {} to {} bailed out; nginx was left as it was",
                self.opts.kind.verb(),
                self.id,
                self.revision
            )));
        }
        // The second persisted transition: nginx serves the new revision.
        self.st.upgrading = Some(Attempt {
            revision: self.revision.to_string(),
            phase: Phase::Switched,
            deployment: Some(p.deployment.clone()),
        });
        self.store.save(self.id, &self.st)?;
        let p = &self.p;
        Ok(if !self.planned.old_rest(p).is_empty() {
            Step::Drain
        } else if !self.planned.extra.is_empty() {
            Step::StopOld
        } else {
            Step::Record
        })
    }

    fn tick_drain(&mut self) -> Result<Step> {
        let p = &self.p;
        let old = self.planned.old_rest(p);
        let drain = drain_of(p, &old);
        let ends: BTreeSet<crate::plan::Endpoint> =
            old.iter().filter_map(|u| u.endpoint()).collect();
        let host = self.host;
        self.rep.step("drain", |d| {
            d.push(instances::drain(host, &ends, drain));
            Ok(())
        })?;
        Ok(Step::StopOld)
    }

    fn tick_stop_old(&mut self) -> Result<Step> {
        let p = &self.p;
        let to_stop: Vec<UnitInfo> = self
            .planned
            .old_rest(p)
            .into_iter()
            .chain(self.planned.extra.iter().cloned())
            .collect();
        let sd = self.host.systemd()?;
        self.rep.step("stop-old", |d| {
            for n in instances::stop_units(sd, &to_stop, Duration::from_secs(300))? {
                let scaled = to_stop
                    .iter()
                    .find(|u| u.name == n)
                    .is_some_and(|u| owned(p, u));
                d.push(format!(
                    "stopped {n}{}",
                    if scaled { " (scaled down)" } else { "" }
                ));
            }
            Ok(())
        })?;
        Ok(Step::Record)
    }

    fn tick_record(&mut self) -> Result<Step> {
        let p = &self.p;
        let (sd, id, revision) = (self.host.systemd()?, self.id, self.revision);
        let (st, store) = (&mut self.st, &self.store);
        let (host, dirs, config) = (self.host, &self.host.dirs, &self.opts.config);
        self.rep.step("record", |d| {
            st.promote(Some(p.deployment.clone()), revision);
            st.upgrading = None;
            st.stopped = false;
            store.save(id, st)?;
            crate::host::secrets::prune(dirs, id, &st.secrets_in_use());
            let live = crate::ops::view::ServiceView::observe(sd, id)?.names();
            instances::remove_stale_dirs(&p.instances_dir, &live)?;
            ensure_unit(host, id, config, d);
            d.push(format!(
                "current {revision} (deployment {}, {}){}",
                p.deployment.id(),
                p.deployment.manifest_digest,
                st.previous
                    .as_ref()
                    .map(|p| format!(" (previous {p})"))
                    .unwrap_or_default()
            ));
            Ok(())
        })?;
        Ok(Step::Probe)
    }

    fn tick_probe(&mut self) -> Result<Step> {
        let p = &self.p;
        let (host, config) = (self.host, &self.opts.config);
        self.rep.step("probe", |d| {
            let change =
                crate::ops::probe_timer::ensure_probe_timer(host, &p.service, &p.shim_exe, config)?;
            let timer = crate::plan::names::probe_timer_name(p.service.id.as_str());
            let every = crate::config::format_duration(crate::plan::probe_timer::probe_interval(
                &p.service,
            ));
            let what = match change {
                crate::ops::probe_timer::TimerChange::Unchanged => "unchanged",
                crate::ops::probe_timer::TimerChange::Created => "created",
                crate::ops::probe_timer::TimerChange::Replaced => "replaced",
            };
            d.push(format!("{timer} {what}: probe every {every}"));
            Ok(())
        })?;
        Ok(if self.cron_jobs.is_some() {
            Step::Cron
        } else {
            Step::Done
        })
    }

    fn tick_cron(&mut self) -> Result<Step> {
        let p = &self.p;
        let (host, config, id, revision) = (self.host, &self.opts.config, self.id, self.revision);
        let jobs = self.cron_jobs.as_ref().and_then(|j| j.as_deref());
        self.rep.step("cron", |d| {
            let lines = crate::ops::cron::install(host, p, config, jobs).context(format!(
                "{revision} is serving, but its cron jobs were not installed (the previous ones may still run); run `shim cron sync --id {id}`"
            ))?;
            d.extend(lines);
            Ok(())
        })?;
        Ok(Step::Done)
    }

    /// Stops the instances this attempt started; the old revision keeps serving. If the
    /// stop fails, the attempt stays recorded so that the next upgrade or reconcile removes
    /// them.
    fn bail_out(&mut self) {
        let Ok(sd) = self.host.systemd() else { return };
        let names = self.started.started.clone();
        if let Err(e) = sd
            .stop_units(&names, Duration::from_secs(300))
            .map_err(anyhow::Error::from)
            .and_then(|o| match o.iter().find(|o| !o.ok()) {
                Some(bad) => Err(anyhow!(
                    "stopping failed for: {} ({})",
                    bad.unit,
                    bad.result
                )),
                None => Ok(()),
            })
        {
            self.rep.sink.event(&Event::Warning(&format!(
                "stopping the new instances failed: {e:#}; the next `shim upgrade` or `shim reconcile` removes them"
            )));
            return;
        }
        self.st.upgrading = None;
        let _ = self.store.save(self.id, &self.st);
        if let Ok(live) = crate::ops::view::ServiceView::observe(sd, self.id) {
            let _ = instances::remove_stale_dirs(&self.p.instances_dir, &live.names());
        }
    }
}

/// The service's state, and the command's rules ([`rules::check`]) checked on it.
fn load_checked(store: &StateStore, id: &str, opts: &Options) -> Result<ServiceState> {
    let st = store.load(id)?;
    rules::check(opts.kind, id, &st, &opts.restart)?;
    Ok(st)
}

/// Whether `u` is an instance of the deployment `p` plans (its revision and its process's
/// tag).
fn owned(p: &Prepared, u: &UnitInfo) -> bool {
    recover::owned_by(Some(&p.deployment), &p.revision, u)
}

/// The plan step's details: what starts, what stops, which upstreams move.
fn describe_plan(
    p: &Prepared,
    planned: &Planned,
    revision: &str,
    d: &mut Vec<String>,
) -> Result<()> {
    let have: BTreeSet<&str> = planned
        .same
        .iter()
        .filter(|u| u.is_present())
        .map(|u| u.name.as_str())
        .collect();
    let wanted: BTreeSet<String> = p
        .plan(&[], &planned.wanted, &Default::default())?
        .into_iter()
        .map(|p| p.unit.name)
        .collect();
    let to_start = wanted.iter().filter(|n| !have.contains(n.as_str())).count();
    d.push(format!("start {to_start} new instance(s) of {revision}"));
    if !planned.old.is_empty() {
        let revs: BTreeSet<&str> = planned.old.iter().map(|u| u.revision()).collect();
        d.push(format!(
            "then stop {} instance(s) of {}",
            planned.old.len(),
            revs.into_iter().collect::<Vec<_>>().join(", ")
        ));
    }
    if !planned.extra.is_empty() {
        d.push(format!(
            "stop {} instance(s) no longer wanted (count lowered)",
            planned.extra.len()
        ));
    }
    for def in p.service.processes.values() {
        if let Some(px) = &def.proxy {
            d.push(format!(
                "point nginx upstream {} ({}) at {}",
                px.upstream,
                px.file.display(),
                def.name
            ));
        }
    }
    Ok(())
}

/// The health step's error: each instance's reason, then its last journal lines.
fn unhealthy_error(host: &Host, revision: &str, failed: &[health::Unhealthy]) -> anyhow::Error {
    let mut msg = format!(
        "{} instance(s) of {revision} did not become healthy:",
        failed.len()
    );
    for f in failed {
        msg.push_str(&format!("\n  {}: {}", f.unit, f.reason));
    }
    for f in failed {
        msg.push_str(&format!(
            "\n--- last journal lines of {} ---\n{}",
            f.unit,
            host.journal.tail(&f.unit, 10)
        ));
    }
    anyhow!(msg)
}
