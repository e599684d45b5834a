//! `shim stop`: stop every instance of a service and remember that it is stopped (so reboot
//! reconciliation leaves it down). The probe timer goes first, so that no probe brings an
//! instance back meanwhile. Idempotent; works for services no longer defined.

use std::path::Path;
use std::time::Duration;

use anyhow::Result;
use clap::Args;

use crate::config::Ident;
use crate::deploy::{self, Dirs};
use crate::error::BadInput;
use crate::state::StateStore;
use crate::systemd::DbusSystemd;

/// Stop all instances of a service.
///
/// Example: shim stop --id billing_app
#[derive(Args, Debug)]
pub struct StopArgs {
    /// Service id.
    #[arg(long)]
    pub id: String,
}

pub fn run(config: &Path, args: StopArgs) -> Result<()> {
    Ident::parse(&args.id).map_err(|m| BadInput(format!("--id: service id {m}")))?;
    // The longest stop_timeout of the service if it is still defined, plus margin for
    // SIGKILL and cleanup; a generous default when the definition is gone.
    let timeout = crate::config::load(config)
        .ok()
        .and_then(|d| d.service(&args.id).ok().cloned())
        .and_then(|s| s.processes.values().map(|p| p.stop_timeout).max())
        .map(|t| t + Duration::from_secs(30))
        .unwrap_or(Duration::from_secs(300));
    let dirs = Dirs::from_env();
    let sd = DbusSystemd::connect()?;
    // Stopping the probe's units also stops a probe running right now.
    let had_probe = crate::supervise::remove_probe_timer(&sd, &args.id)?;
    // Its cron jobs stop too (a job running now finishes); their state stays, so a later
    // start at the same revision brings them back.
    let cron_removed = crate::cron_sync::remove_all(&sd, &args.id)?;
    let units = deploy::service_units(&sd, &args.id)?;
    let stopped = deploy::stop_units(&sd, &units, timeout)?;
    deploy::remove_stale_dirs(&dirs.instances(&args.id), &Default::default())?;
    let _ = std::fs::remove_dir(dirs.instances(&args.id));

    let store = StateStore::new(&dirs.state);
    let mut st = store.load(&args.id)?;
    if st.current.is_some() || !stopped.is_empty() {
        st.stopped = true;
        store.save(&args.id, &st)?;
    }
    crate::supervise::forget(&dirs, &args.id)?;
    if had_probe {
        println!(
            "removed  {}",
            crate::plan::probe::probe_timer_name(&args.id)
        );
    }
    for l in &cron_removed {
        println!("{l}");
    }
    for u in &stopped {
        println!("stopped  {u}");
    }
    if stopped.is_empty() {
        println!("{} has no running instances", args.id);
    }
    Ok(())
}
