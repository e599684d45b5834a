//! `shim probe`: one supervision pass over a service, as its probe timer runs it every
//! health interval (see `supervise::probe`).

use std::path::Path;

use anyhow::Result;
use clap::Args;

use crate::config::Ident;
use crate::deploy::Dirs;
use crate::error::BadInput;

/// Probe a service once: start missing instances, health-check the running ones (killing
/// the main process of one that failed `unhealthy_after` checks in a row, so that systemd
/// restarts it) and retry crash-looping ones whose backoff has passed.
///
/// The service's probe timer (shim-probe-ID.timer) runs this every health interval; it
/// logs actions to the journal (`journalctl SHIM_SERVICE=ID SHIM_ACTION=kill`) and nothing
/// when all is well.
///
/// Example: shim probe --id billing_app
#[derive(Args, Debug)]
pub struct ProbeArgs {
    /// Service id.
    #[arg(long)]
    pub id: String,
}

pub fn run(config: &Path, args: ProbeArgs) -> Result<()> {
    Ident::parse(&args.id).map_err(|m| BadInput(format!("--id: service id {m}")))?;
    crate::supervise::probe::run(config, &args.id, &Dirs::from_env())
}
