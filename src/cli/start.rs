//! `shim start`: start every instance of a service at a revision, through the same steps as an
//! upgrade (health-gated, nginx pointed at the instances when a process has `proxy`), but it
//! refuses to replace another running revision. Running it again changes nothing; after
//! `count` was raised it starts the missing instances, after it was lowered it stops extras.

use std::path::Path;

use anyhow::Result;
use clap::Args;

use crate::cli::upgrade::CommonArgs;
use crate::host::Host;
use crate::ops::upgrade::{converge, Kind};

/// Start all instances of all processes of a service.
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
    #[command(flatten)]
    pub common: CommonArgs,
}

pub fn run(host: &Host, config: &Path, args: StartArgs) -> Result<()> {
    let defs = crate::config::load(config)?;
    defs.service(&args.id)?;
    let mut opts = args.common.options(Kind::Start, config);
    let revision = match args.revision {
        Some(r) => r,
        None => {
            let st = host.state().load(&args.id)?;
            opts.deployed = st.deployment.clone();
            crate::cli::upgrade::current_revision(host, &args.id)?
        }
    };
    converge(host, &defs, &args.id, &revision, &opts).map(|_| ())
}
