//! `shim show`: the dry run. Prints, for every instance, the unit properties and the
//! config.json that `shim start` would use, with secrets redacted. Reads the definitions and
//! the image (verifying it); writes nothing, starts nothing.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use anyhow::Result;
use clap::Args;

use crate::plan::{self, InstancePlan};

/// Print the units and OCI configs a start would create (dry run).
///
/// Example: shim show --id billing_app --revision 279d9035886d
#[derive(Args, Debug)]
pub struct ShowArgs {
    /// Service id.
    #[arg(long)]
    pub id: String,
    /// Revision to plan for.
    #[arg(long)]
    pub revision: String,
}

/// The text of `shim show` for planned instances.
pub fn render(plans: &[InstancePlan], notes: &[String]) -> String {
    let mut out = String::new();
    for n in notes {
        out.push_str(&format!("# note: {n}\n"));
    }
    for p in plans {
        out.push_str(&p.unit.render());
        // config.json (runc/crun) or the env file (podman), secrets already redacted.
        match p.render_files() {
            Ok((path, text)) => {
                out.push_str(&format!("# {}\n", path.display()));
                out.push_str(text.trim_end());
            }
            Err(e) => out.push_str(&format!("# error: {e}")),
        }
        out.push_str("\n\n");
    }
    out
}

pub fn run(host: &crate::host::Host, config: &Path, args: ShowArgs) -> Result<()> {
    let defs = crate::config::load(config)?;
    let _dirs = host.dirs.clone();
    let prepared = crate::ops::instances::prepare(host, &defs, &args.id, &args.revision, false)?;
    let mut notes: Vec<String> = prepared.user_note.iter().cloned().collect();
    // Ports as a start would pick them now: reads systemd when reachable, never writes.
    let taken: BTreeSet<u16> = match host.systemd() {
        Ok(sd) => sd
            .list_units(&["shim-*".to_string()])
            .unwrap_or_default()
            .iter()
            .filter_map(|u| u.port())
            .collect(),
        Err(_) => {
            notes.push("systemd not reachable: ports are shown as on an empty host".into());
            BTreeSet::new()
        }
    };
    let wanted = prepared.all_instances();
    let needs_port: Vec<(String, u32)> = wanted
        .iter()
        .filter(|(p, _)| {
            prepared
                .service
                .processes
                .values()
                .any(|d| d.name.as_str() == p && d.port)
        })
        .cloned()
        .collect();
    let ports = plan::allocate_ports(prepared.port_range, needs_port.len(), &taken, |_| false)
        .map_err(anyhow::Error::msg)?;
    let ports: BTreeMap<_, _> = needs_port.into_iter().zip(ports).collect();
    let plans = prepared.plan(
        &crate::host::images::redacted_secrets(&prepared.service),
        &wanted,
        &ports,
    )?;
    print!("{}", render(&plans, &notes));
    Ok(())
}
