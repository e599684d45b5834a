//! `shim supervise pause|resume`: stop the probe from acting on a service (or one of its
//! processes) and let it act again. Persisted in the service's state under /var/lib/shim, so
//! a pause survives reboots; `shim status` shows it. The arguments and the messages; the
//! operations are in `ops::supervise`.

use crate::cli::parse_duration_arg;

use std::path::Path;
use std::time::Duration;

use anyhow::Result;
use clap::{Args, Subcommand};

use crate::config::Ident;
use crate::error::BadInput;
use crate::ops::supervise::{self, ProbeRun, Supervision};

/// Pause or resume supervision of a service by its probe.
///
/// While paused the probe does nothing for the service (or process): no health checks, no
/// kills, no starts of missing instances, no retries of crash-looping ones. systemd itself
/// still restarts a process that exits (`Restart=` is fixed when a unit is created), up to
/// its start limit.
///
/// Example: shim supervise pause --id billing_app --process web
#[derive(Args, Debug)]
pub struct SuperviseArgs {
    #[command(subcommand)]
    pub command: SuperviseCommand,
}

#[derive(Subcommand, Debug)]
pub enum SuperviseCommand {
    /// Stop the probe from acting on the service (or one process) until resumed.
    ///
    /// Persisted across reboots and shown by `shim status`.
    ///
    /// Example: shim supervise pause --id billing_app --process web
    Pause(Target),
    /// Let the probe act again, and probe right away.
    ///
    /// Example: shim supervise resume --id billing_app
    Resume(Target),
}

#[derive(Args, Debug)]
pub struct Target {
    /// Service id.
    #[arg(long)]
    pub id: String,
    /// Only this process of the service (default: the whole service).
    #[arg(long)]
    pub process: Option<String>,
    /// How long to wait for another shim command working on the service.
    #[arg(long, value_parser = parse_duration_arg, default_value = "5min")]
    pub lock_timeout: Duration,
}

pub fn run(host: &crate::host::Host, config: &Path, args: SuperviseArgs) -> Result<()> {
    let (pause, t) = match args.command {
        SuperviseCommand::Pause(t) => (true, t),
        SuperviseCommand::Resume(t) => (false, t),
    };
    Ident::parse(&t.id).map_err(|m| BadInput(format!("--id: service id {m}")))?;
    let defs = crate::config::load(config).ok();
    supervise::check_target(defs.as_ref(), &t.id, t.process.as_deref())?;
    let what = match &t.process {
        Some(p) => format!("{} (process {p})", t.id),
        None => t.id.clone(),
    };
    match supervise::set_paused(host, &t.id, t.process.as_deref(), pause, t.lock_timeout)? {
        Supervision::Paused => {
            println!("supervision of {what} paused: the probe leaves it alone until `shim supervise resume --id {}`", t.id);
            return Ok(());
        }
        Supervision::ServiceStillPaused => {
            println!(
                "process {} resumed, but the whole service {} is still paused",
                t.process.as_deref().unwrap_or_default(),
                t.id
            );
            return Ok(());
        }
        Supervision::Resumed => println!("supervision of {what} resumed"),
    }
    // Probe now rather than at the next tick, so that resume converges right away.
    match supervise::probe_now(host, &t.id)? {
        ProbeRun::NoTimer => println!(
            "{} has no probe timer (not running); nothing to probe",
            t.id
        ),
        ProbeRun::Probed(probe) => println!("probed {} ({probe})", t.id),
        ProbeRun::Failed(probe, result) => println!("probe run {probe}: {result}"),
        ProbeRun::Unknown => {}
    }
    Ok(())
}
