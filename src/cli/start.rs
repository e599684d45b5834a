//! `shim start`: start every instance of a service at a revision. Running it again changes
//! nothing; after `count` was raised it starts the missing instances, after it was lowered it
//! stops the extra ones.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use anyhow::Result;
use clap::Args;

use crate::deploy::{self, Dirs};
use crate::error::BadInput;
use crate::state::StateStore;
use crate::systemd::DbusSystemd;

/// Start all instances of all processes of a service.
///
/// Example: shim start --id billing_app --revision 279d9035886d4c0427549863c4c2101e4a63e041
#[derive(Args, Debug)]
pub struct StartArgs {
    /// Service id, as in [services.ID].
    #[arg(long)]
    pub id: String,
    /// Revision (e.g. a git SHA): fills {revision} in the image reference.
    #[arg(long)]
    pub revision: String,
}

pub fn run(config: &Path, args: StartArgs) -> Result<()> {
    let defs = crate::config::load(config)?;
    let dirs = Dirs::from_env();
    let prepared = deploy::prepare(&defs, &args.id, &args.revision, &dirs, true)?;
    let sd = DbusSystemd::connect()?;

    let existing = deploy::service_units(&sd, &args.id)?;
    let other: BTreeSet<&str> = existing
        .iter()
        .filter_map(|u| u.field("SHIM_REVISION"))
        .filter(|r| *r != args.revision)
        .collect();
    if !other.is_empty() {
        return Err(BadInput(format!(
            "service {} is running revision {}; `shim start` does not replace a revision (use `shim upgrade`, or `shim stop --id {}` first)",
            args.id,
            other.into_iter().collect::<Vec<_>>().join(", "),
            args.id
        ))
        .into());
    }

    let wanted = prepared.all_instances();
    let report = deploy::start_instances(&sd, &prepared, &wanted, &dirs)?;

    // Scaled down: instances of this revision the definition no longer asks for.
    let wanted_names: BTreeSet<String> = prepared
        .plan(&[], &wanted, &Default::default())?
        .into_iter()
        .map(|p| p.unit.name)
        .collect();
    let extra: Vec<_> = existing
        .into_iter()
        .filter(|u| !wanted_names.contains(&u.name))
        .collect();
    let stopped = deploy::stop_units(&sd, &extra, Duration::from_secs(300))?;
    let live: BTreeSet<String> = deploy::service_units(&sd, &args.id)?
        .into_iter()
        .map(|u| u.name)
        .collect();
    deploy::remove_stale_dirs(&prepared.instances_dir, &live)?;

    let store = StateStore::new(&dirs.state);
    let mut st = store.load(&args.id)?;
    if st.current.as_deref() != Some(args.revision.as_str()) {
        st.previous = st.current.take();
        st.current = Some(args.revision.clone());
    }
    st.stopped = false;
    store.save(&args.id, &st)?;

    for u in &report.started {
        println!("started  {u}");
    }
    for u in &report.already_running {
        println!("running  {u}");
    }
    for u in &stopped {
        println!("stopped  {u} (scaled down)");
    }
    Ok(())
}
