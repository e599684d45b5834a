//! `shim reconcile`: bring the host back to the definitions and the recorded revisions (at
//! boot, from units/shim-reconcile.service, or after editing the definitions): the arguments; see
//! `ops::reconcile`, which prints as it goes and fails naming the services it could not repair.

use crate::cli::parse_duration_arg;

use std::path::Path;
use std::time::Duration;

use anyhow::Result;
use clap::Args;

use crate::host::Host;
use crate::ops::reconcile::{self, Options};

/// Make this host match the definitions, changing only what differs.
///
/// Every service with a recorded current revision (and not stopped) runs `count` instances
/// of that revision, nginx points at them and its probe timer runs; leftovers of interrupted
/// upgrades and units of services no longer defined are removed. Each defined service's unit
/// shim-<id>.service is written and, for a running service, started. A second run does
/// nothing.
///
/// Example: shim reconcile --dry-run
#[derive(Args, Debug)]
pub struct ReconcileArgs {
    /// Print what would change, change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// How long to wait for another shim command working on a service.
    #[arg(long, value_parser = parse_duration_arg, default_value = "5min")]
    pub lock_timeout: Duration,
    /// Run at boot (shim-reconcile.service): a service whose unit shim-<id>.service is
    /// disabled (`systemctl disable`) stays down, and is marked stopped.
    #[arg(long)]
    pub boot: bool,
}

pub fn run(host: &Host, config: &Path, args: ReconcileArgs) -> Result<()> {
    let defs = crate::config::load(config)?;
    reconcile::run(
        host,
        &defs,
        &Options {
            dry_run: args.dry_run,
            lock_timeout: args.lock_timeout,
            config: config.to_path_buf(),
            boot: args.boot,
        },
    )
}
