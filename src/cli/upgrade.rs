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

/// Switch a service to a revision with no dropped requests (also its first deploy).
///
/// Starts the new instances, waits until they are healthy, points nginx at them, drains and
/// stops the old ones. If anything fails, the old revision keeps serving.
///
/// Example: shim upgrade --id billing_app --revision 279d9035886d4c0427549863c4c2101e4a63e041
#[derive(Args, Debug)]
pub struct UpgradeArgs {
    /// Service id.
    #[arg(long)]
    pub id: String,
    /// The revision to deploy (fills {revision} in the image reference).
    #[arg(long)]
    pub revision: String,
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
        }
    }
}

/// Go back to the previous revision, through the same health-gated flow as upgrade.
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

pub fn run_upgrade(host: &Host, config: &Path, args: UpgradeArgs) -> Result<()> {
    let defs = crate::config::load(config)?;
    converge(
        host,
        &defs,
        &args.id,
        &args.revision,
        &args.common.options(Kind::Upgrade, config),
    )
    .map(|_| ())
}

pub fn run_rollback(host: &Host, config: &Path, args: RollbackArgs) -> Result<()> {
    let defs = crate::config::load(config)?;
    defs.service(&args.id)?;
    let st = host.state().load(&args.id)?;
    let Some(previous) = st.previous else {
        return Err(BadInput(format!(
            "service {} has no previous revision to roll back to (current: {})",
            args.id,
            st.current.as_deref().unwrap_or("none")
        ))
        .into());
    };
    converge(
        host,
        &defs,
        &args.id,
        &previous,
        &args.common.options(Kind::Rollback, config),
    )
    .map(|_| ())
}
