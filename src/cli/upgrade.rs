//! `shim upgrade` and `shim rollback`: the deploy hook's commands. See `ops::upgrade` for the
//! steps and their failure handling.

use crate::cli::parse_duration_arg;

use std::path::Path;
use std::time::Duration;

use anyhow::Result;
use clap::Args;

use crate::error::BadInput;
use crate::host::Host;
use crate::ops::upgrade::{converge, Kind, Options};

/// Deploy a revision, or roll out a definition or secret change, with no dropped requests.
///
/// Resolves the image tag to a digest and records the deployment (revision, image digest,
/// definition, env_files snapshot) before anything starts; then starts the new instances,
/// waits until they are healthy, points nginx at them, drains and stops the old ones. If
/// anything fails, the old deployment keeps serving. Without --revision: the current one,
/// with the definitions and env_files as they are now ("nothing to do" if that is what runs).
///
/// Example: shim upgrade --id billing_app --revision 279d9035886d4c0427549863c4c2101e4a63e041
#[derive(Args, Debug)]
pub struct UpgradeArgs {
    /// Service id.
    #[arg(long)]
    pub id: String,
    /// The revision to deploy (fills {revision} in the image reference); default: the current.
    #[arg(long)]
    pub revision: Option<String>,
    #[command(flatten)]
    pub common: CommonArgs,
}

#[derive(Args, Debug)]
pub struct CommonArgs {
    /// Print the plan and stop; nothing is changed.
    #[arg(long)]
    pub dry_run: bool,
    /// Time for new instances to become healthy (default: each process's health.start_period).
    #[arg(long, value_parser = parse_duration_arg)]
    pub timeout: Option<Duration>,
    /// How long to wait for another shim command working on the same service.
    #[arg(long, value_parser = parse_duration_arg, default_value = "5min")]
    pub lock_timeout: Duration,
    /// One JSON object per step (for CI logs).
    #[arg(long)]
    pub json: bool,
}

impl CommonArgs {
    pub fn options(&self, kind: Kind, config: &Path) -> Options {
        Options {
            kind,
            dry_run: self.dry_run,
            timeout: self.timeout,
            lock_timeout: self.lock_timeout,
            json: self.json,
            config: config.to_path_buf(),
            deployed: None,
            restart: Vec::new(),
        }
    }
}

/// Replace the current deployment's instances with new ones, with no dropped requests.
///
/// What to run after rotating a certificate the app reads at boot, say. The same image digest, definition and secrets snapshot as deployed: nothing is read
/// afresh. New instances start beside the old ones, nginx switches once they are healthy,
/// then the old ones drain and stop.
///
/// Example: shim restart --id billing_app --process web
#[derive(Args, Debug)]
pub struct RestartArgs {
    /// Service id.
    #[arg(long)]
    pub id: String,
    /// Only this process's instances (repeatable); default: all.
    #[arg(long)]
    pub process: Vec<String>,
    #[command(flatten)]
    pub common: CommonArgs,
}

/// The current revision of `id`, for commands whose --revision defaults to it.
pub fn current_revision(host: &Host, id: &str) -> Result<String> {
    let st = host.state().load(id)?;
    st.current.ok_or_else(|| {
        BadInput(format!(
            "service {id} has no deployed revision: pass --revision"
        ))
        .into()
    })
}

/// Go back to the previous deployment, through the same health-gated flow as upgrade.
///
/// Exactly as it ran: its image digest, definition and secrets snapshot.
///
/// Example: shim rollback --id billing_app
#[derive(Args, Debug)]
pub struct RollbackArgs {
    /// Service id.
    #[arg(long)]
    pub id: String,
    #[command(flatten)]
    pub common: CommonArgs,
}

/// A stopped service is not deployed to: it stays down until started, and an upgrade that
/// brought it up would undo the stop.
fn refuse_stopped(host: &Host, id: &str, verb: &str) -> Result<()> {
    if host.state().load(id)?.stopped {
        let unit = crate::plan::service_unit::service_unit_name(id);
        return Err(BadInput(format!(
            "service {id} is stopped (shim stop or systemctl stop {unit}); nothing was changed: \
             bring it back with `shim start --id {id}` (or `systemctl start '{unit}'`), then {verb} it"
        ))
        .into());
    }
    Ok(())
}

/// After a converge that did not fail: the service's unit is active (started if it was not:
/// its ExecStart finds the deployment running).
fn activate(host: &Host, id: &str, config: &Path, common: &CommonArgs) -> Result<()> {
    if common.dry_run {
        return Ok(());
    }
    crate::ops::service_unit::activate(host, id, config)
}

pub fn run_upgrade(host: &Host, config: &Path, args: UpgradeArgs) -> Result<()> {
    let defs = crate::config::load(config)?;
    defs.service(&args.id)?;
    refuse_stopped(host, &args.id, "upgrade")?;
    let revision = match args.revision {
        Some(r) => r,
        None => current_revision(host, &args.id)?,
    };
    converge(
        host,
        &defs,
        &args.id,
        &revision,
        &args.common.options(Kind::Upgrade, config),
    )?;
    activate(host, &args.id, config, &args.common)
}

pub fn run_restart(host: &Host, config: &Path, args: RestartArgs) -> Result<()> {
    let defs = crate::config::load(config)?;
    defs.service(&args.id)?;
    let st = host.state().load(&args.id)?;
    let (Some(d), false) = (&st.deployment, st.stopped) else {
        return Err(BadInput(format!(
            "service {} has no running deployment to restart{}",
            args.id,
            if st.stopped {
                " (it is stopped: `shim start`)"
            } else {
                " (deploy it with `shim upgrade`)"
            }
        ))
        .into());
    };
    for p in &args.process {
        if !d
            .definition
            .processes
            .values()
            .any(|x| x.name.as_str() == p)
        {
            return Err(BadInput(format!(
                "--process {p}: service {} has no such process in its deployment (it has {})",
                args.id,
                d.definition
                    .processes
                    .keys()
                    .map(|k| k.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
            .into());
        }
    }
    let mut opts = args.common.options(Kind::Restart, config);
    opts.deployed = Some(d.restarted(&args.process));
    opts.restart = args.process.clone();
    converge(host, &defs, &args.id, &d.revision, &opts)?;
    activate(host, &args.id, config, &args.common)
}

pub fn run_rollback(host: &Host, config: &Path, args: RollbackArgs) -> Result<()> {
    let defs = crate::config::load(config)?;
    defs.service(&args.id)?;
    refuse_stopped(host, &args.id, "roll back")?;
    let st = host.state().load(&args.id)?;
    let Some(previous) = st.previous else {
        return Err(BadInput(format!(
            "service {} has no previous revision to roll back to (current: {})",
            args.id,
            st.current.as_deref().unwrap_or("none")
        ))
        .into());
    };
    let mut opts = args.common.options(Kind::Rollback, config);
    // The previous deployment exactly as it ran (a record from a shim that kept none: its
    // revision, read afresh).
    opts.deployed = st.previous_deployment.filter(|d| d.revision == previous);
    converge(host, &defs, &args.id, &previous, &opts)?;
    activate(host, &args.id, config, &args.common)
}
