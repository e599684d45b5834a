//! `shim stop`: stop every instance of a service and remember that it is stopped (so reboot
//! reconciliation leaves it down). The probe timer goes first, so that no probe brings an
//! instance back meanwhile. Idempotent; works for services no longer defined. Then the
//! service's unit `shim-<id>.service` is stopped too: `shim stop` and `systemctl stop` are
//! one operation (see `ops::service_unit`); `--from-unit` is that unit's `ExecStop`.

use std::path::Path;
use std::time::Duration;

use anyhow::Result;
use clap::Args;

use crate::cli::parse_duration_arg;
use crate::config::Ident;
use crate::error::BadInput;
use crate::host::Host;
use crate::ops::stop::StopBy;

/// Stop all instances of a service, and its unit shim-<id>.service.
///
/// nginx is taken off the service first, then the drain, then the probe and cron timers and
/// the instances. The service stays stopped (the probe, reconcile and boot leave it down)
/// until `shim start --id ID` or `systemctl start shim-<id>.service`; the same as
/// `systemctl stop shim-<id>.service`.
///
/// `systemctl stop` of a single instance unit (shim-<id>-<process>-…-<n>.service) is not a
/// stop: for supervision it is a restart, and the probe starts a new instance at its next
/// run. Stop the service's unit, or this command, to take the service down.
///
/// Example: shim stop --id billing_app
#[derive(Args, Debug)]
pub struct StopArgs {
    /// Service id.
    #[arg(long)]
    pub id: String,
    /// How long to wait for another shim command working on the service.
    #[arg(long, value_parser = parse_duration_arg, default_value = "5min")]
    pub lock_timeout: Duration,
    /// Run as the service unit's ExecStop: do not stop the unit itself, do not wait for the
    /// instances (systemd stops them once this returns).
    #[arg(long, hide = true)]
    pub from_unit: bool,
}

pub fn run(host: &Host, config: &Path, args: StopArgs) -> Result<()> {
    Ident::parse(&args.id).map_err(|m| BadInput(format!("--id: service id {m}")))?;
    // The longest stop_timeout of the service if it is still defined, plus margin for
    // SIGKILL and cleanup; a generous default when the definition is gone.
    let defs = crate::config::load(config).ok();
    let timeout = defs
        .as_ref()
        .and_then(|d| d.service(&args.id).ok())
        .and_then(|s| s.processes.values().map(|p| p.stop_timeout).max())
        .map(|t| t + Duration::from_secs(30))
        .unwrap_or(Duration::from_secs(300));
    let defined = defs.as_ref().is_some_and(|d| d.service(&args.id).is_ok());
    if !defined && !crate::ops::stop::known(host, &args.id)? {
        // Nothing of that name is defined, recorded or running: most likely a typo. Checked
        // before the lock is taken, so that nothing at all is written.
        return Err(BadInput(format!(
            "service {} is not defined in {} and nothing of it is on this host",
            args.id,
            config.display()
        ))
        .into());
    }
    let by = if args.from_unit {
        let state = host.systemd()?.system_state()?;
        StopBy::Unit {
            shutdown: state == "stopping",
        }
    } else {
        StopBy::Command
    };
    let done = crate::ops::stop::stop(
        host,
        defs.as_ref(),
        &args.id,
        timeout,
        args.lock_timeout,
        by,
    )?;
    print_teardown(&args.id, &done, args.from_unit);
    if !args.from_unit {
        crate::ops::service_unit::deactivate(host, &args.id, timeout)?;
    }
    if let StopBy::Unit { shutdown: true } = by {
        println!("system shutting down: {} is not marked stopped", args.id);
    }
    Ok(())
}

fn print_teardown(id: &str, done: &crate::ops::stop::Teardown, from_unit: bool) {
    for w in &done.warnings {
        eprintln!("shim: warning: {w}");
    }
    for l in &done.closed {
        println!("{l}");
    }
    if let Some(d) = &done.drained {
        println!("drained  {d}");
    }
    if let Some(t) = &done.probe_timer {
        println!("removed  {t}");
    }
    for l in &done.cron {
        println!("{l}");
    }
    let verb = if from_unit { "stopping" } else { "stopped " };
    for u in &done.stopped {
        println!("{verb} {u}");
    }
    if done.stopped.is_empty() {
        println!("{id} has no running instances");
    }
}
