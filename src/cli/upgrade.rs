//! `shim upgrade` and `shim rollback`: the deploy hook's commands. See `ops::upgrade` for the
//! steps and their failure handling.

use crate::cli::parse_duration_arg;

use std::path::Path;
use std::time::Duration;

use anyhow::Result;
use clap::Args;

use crate::error::BadInput;
use crate::host::Host;
use crate::ops::upgrade::report::{Printer, Sink};
use crate::ops::upgrade::rules::target;
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
            config: config.to_path_buf(),
            deployed: None,
            restart: Vec::new(),
            progress: Sink::new(Printer { json: self.json }),
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

/// After a converge that did not fail: the service's unit is active (started if it was not:
/// its ExecStart finds the deployment running).
fn activate(host: &Host, id: &str, config: &Path, common: &CommonArgs) -> Result<()> {
    if common.dry_run {
        return Ok(());
    }
    crate::ops::service_unit::activate(host, id, config)
}

pub fn run_upgrade(host: &Host, config: &Path, args: UpgradeArgs) -> Result<()> {
    let opts = args.common.options(Kind::Upgrade, config);
    drive(host, config, &args.id, opts, args.revision, &args.common)
}

pub fn run_restart(host: &Host, config: &Path, args: RestartArgs) -> Result<()> {
    let mut opts = args.common.options(Kind::Restart, config);
    opts.restart = args.process.clone();
    drive(host, config, &args.id, opts, None, &args.common)
}

pub fn run_rollback(host: &Host, config: &Path, args: RollbackArgs) -> Result<()> {
    let opts = args.common.options(Kind::Rollback, config);
    drive(host, config, &args.id, opts, None, &args.common)
}

/// The definitions read, what to deploy resolved and the command's rules checked by the
/// operation (again under the service lock), the machine run, the service's unit activated.
fn drive(
    host: &Host,
    config: &Path,
    id: &str,
    mut opts: Options,
    revision: Option<String>,
    common: &CommonArgs,
) -> Result<()> {
    let defs = crate::config::load(config)?;
    defs.service(id)?;
    let revision = target(host, id, &mut opts, revision)?;
    converge(host, &defs, id, &revision, &opts)?;
    activate(host, id, config, common)
}
