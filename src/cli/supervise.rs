//! `shim supervise pause|resume`: stop the probe from acting on a service (or one of its
//! processes) and let it act again. Persisted in the service's state under /var/lib/shim, so
//! a pause survives reboots; `shim status` shows it.

use crate::cli::parse_duration_arg;

use std::path::Path;
use std::time::Duration;

use anyhow::Result;
use clap::{Args, Subcommand};

use crate::config::Ident;
use crate::error::BadInput;
use crate::host::lock::ServiceLock;
use crate::host::state::StateStore;
use crate::plan::probe_timer::probe_service_name;

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
    // The service (and the process) must be defined; with no readable definitions, the
    // pause is recorded anyway (it only ever makes the probe do less).
    if let Ok(defs) = crate::config::load(config) {
        let svc = defs.service(&t.id)?;
        if let Some(p) = &t.process {
            if !svc.processes.values().any(|d| d.name.as_str() == p) {
                return Err(BadInput(format!(
                    "--process: service {} has no process {p:?} (it has: {})",
                    t.id,
                    svc.processes
                        .values()
                        .map(|d| d.name.to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                ))
                .into());
            }
        }
    }
    let dirs = host.dirs.clone();
    let what = match &t.process {
        Some(p) => format!("{} (process {p})", t.id),
        None => t.id.clone(),
    };
    {
        // Under the service's lock: an upgrade saves the state too and must not undo this.
        let _lock = ServiceLock::acquire(&dirs.run, &t.id, t.lock_timeout)?;
        let store = StateStore::new(&dirs.state);
        let mut st = store.load(&t.id)?;
        match (&t.process, pause) {
            (None, true) => st.paused = true,
            (None, false) => {
                st.paused = false;
                st.paused_processes.clear();
            }
            (Some(p), true) => {
                st.paused_processes.insert(p.clone());
            }
            (Some(p), false) => {
                st.paused_processes.remove(p);
            }
        }
        store.save(&t.id, &st)?;
        if pause {
            println!("supervision of {what} paused: the probe leaves it alone until `shim supervise resume --id {}`", t.id);
            return Ok(());
        }
        if st.paused {
            println!(
                "process {} resumed, but the whole service {} is still paused",
                t.process.as_deref().unwrap_or_default(),
                t.id
            );
            return Ok(());
        }
    }
    println!("supervision of {what} resumed");
    // Probe now rather than at the next tick, so that resume converges right away.
    let sd = host.systemd()?;
    let probe = probe_service_name(&t.id);
    if sd.list_units(std::slice::from_ref(&probe))?.is_empty() {
        println!(
            "{} has no probe timer (not running); nothing to probe",
            t.id
        );
        return Ok(());
    }
    let out = sd.start_units(std::slice::from_ref(&probe), Duration::from_secs(150))?;
    match out.first() {
        Some(o) if o.ok() => println!("probed {} ({probe})", t.id),
        Some(o) => println!("probe run {probe}: {}", o.result),
        None => {}
    }
    Ok(())
}
