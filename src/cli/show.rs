//! `shim show`: the dry run. Prints, for every instance, the unit properties and the
//! config.json that `shim start` would use, with secrets redacted. Reads the definitions and
//! the image (verifying it); writes nothing, starts nothing.

use std::path::Path;

use anyhow::Result;
use clap::Args;

use crate::plan;

/// Print the units and OCI configs a start would create (dry run).
///
/// Example: shim show --id billing_app --revision 279d9035886d
#[derive(Args, Debug)]
pub struct ShowArgs {
    /// Service id.
    #[arg(long)]
    pub id: String,
    /// Revision to plan for (default: the current one: what `shim upgrade --id` would start).
    #[arg(long)]
    pub revision: Option<String>,
}

pub fn run(host: &crate::host::Host, config: &Path, args: ShowArgs) -> Result<()> {
    let defs = crate::config::load(config)?;
    defs.service(&args.id)?;
    let revision = match args.revision {
        Some(r) => r,
        None => crate::cli::upgrade::current_revision(host, &args.id)?,
    };
    let shown = crate::ops::show::plan(host, &defs, &args.id, &revision)?;
    print!("{}", plan::render_show(&shown.plans, &shown.notes));
    Ok(())
}
