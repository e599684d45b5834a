//! `shim start`: start every instance of a service at a revision, through the same steps as an
//! upgrade (health-gated, nginx pointed at the instances when a process has `proxy`), but it
//! refuses to replace another running revision. Running it again changes nothing; after
//! `count` was raised it starts the missing instances, after it was lowered it stops extras.
//! Then the service's unit `shim-<id>.service` is started too (its `ExecStart`, `shim start
//! --from-unit`, finds the deployment running): `shim start` and `systemctl start` are one
//! operation (see `ops::service_unit`).

use std::path::Path;

use anyhow::Result;
use clap::Args;

use crate::cli::upgrade::CommonArgs;
use crate::host::Host;
use crate::ops::upgrade::rules::target;
use crate::ops::upgrade::{converge, Kind};

/// Start all instances of all processes of a service, and its unit shim-<id>.service.
///
/// Without --revision: the recorded deployment, exactly as deployed; this is what
/// `systemctl start shim-<id>.service` runs, and what a service stopped with `shim stop` or
/// `systemctl stop` needs to come back.
///
/// Example: shim start --id billing_app --revision 279d9035886d4c0427549863c4c2101e4a63e041
#[derive(Args, Debug)]
pub struct StartArgs {
    /// Service id, as in [services.ID].
    #[arg(long)]
    pub id: String,
    /// Revision (e.g. a git SHA): fills {revision} in the image reference. Default: the
    /// recorded deployment, exactly as it was deployed (image digest, definition, secrets).
    #[arg(long)]
    pub revision: Option<String>,
    /// Run as the service unit's ExecStart: the recorded deployment; the unit itself is not
    /// started (it is being started).
    #[arg(long, hide = true, conflicts_with = "revision")]
    pub from_unit: bool,
    /// The service unit's ExecCondition: fails (exit 1: the unit's start is skipped) for a
    /// stopped service while the system boots, so that an enabled unit does not bring back
    /// a service stopped before the reboot; any other start goes ahead.
    #[arg(long, hide = true, requires = "from_unit")]
    pub condition: bool,
    #[command(flatten)]
    pub common: CommonArgs,
}

pub fn run(host: &Host, config: &Path, args: StartArgs) -> Result<()> {
    if args.condition {
        return condition(host, &args.id);
    }
    let defs = crate::config::load(config)?;
    defs.service(&args.id)?;
    let mut opts = args.common.options(Kind::Start, config);
    let revision = target(host, &args.id, &mut opts, args.revision)?;
    converge(host, &defs, &args.id, &revision, &opts)?;
    if args.common.dry_run {
        return Ok(());
    }
    if args.from_unit {
        // What `systemctl status shim-<id>.service` shows last: what runs.
        summary(host, &args.id)
    } else {
        crate::ops::service_unit::activate(host, &args.id, config)
    }
}

/// See [`StartArgs::condition`].
fn condition(host: &Host, id: &str) -> Result<()> {
    let st = host.state().load(id)?;
    if st.stopped && host.systemd()?.system_state()? == "starting" {
        let unit = crate::plan::names::service_unit_name(id);
        anyhow::bail!(
            "service {id} is stopped: left down at boot (`shim start --id {id}` or `systemctl start '{unit}'` brings it back)"
        );
    }
    Ok(())
}

/// The deployment and its instances, one line each.
fn summary(host: &Host, id: &str) -> Result<()> {
    let st = host.state().load(id)?;
    if let Some(d) = &st.deployment {
        println!(
            "{id}: revision {} deployment {} image {} ({})",
            d.revision,
            d.id(),
            d.image,
            d.manifest_digest
        );
    }
    for u in crate::ops::view::ServiceView::observe(host.systemd()?, id)?.units() {
        println!("instance {} {}/{}", u.name, u.active_state, u.sub_state);
    }
    Ok(())
}
