//! `shim volume`: the named volumes shim keeps per service (`mounts = [{ type = "volume" }]`).
//! `ls` lists them with their size and the instances using them; `rm` removes one, refusing
//! while an instance of the service may have it mounted. Nothing else ever deletes a volume.

use std::path::Path;
use std::time::Duration;

use anyhow::Result;
use clap::{Args, Subcommand};

use super::parse_duration_arg;
use crate::config::Ident;
use crate::error::BadInput;
use crate::host::Host;
use crate::image::progress::human_bytes;

/// List and remove the named volumes of services.
///
/// Example: shim volume ls --id billing_app
#[derive(Args, Debug)]
pub struct VolumeArgs {
    #[command(subcommand)]
    pub command: VolumeCommand,
}

#[derive(Subcommand, Debug)]
pub enum VolumeCommand {
    #[command(alias = "list")]
    Ls(VolumeLsArgs),
    Rm(VolumeRmArgs),
}

/// List volumes: service, name, size, the running instances that use it.
///
/// Example: shim volume ls --id billing_app --json
#[derive(Args, Debug)]
pub struct VolumeLsArgs {
    /// Only this service's volumes.
    #[arg(long)]
    pub id: Option<String>,
    /// Machine-readable output: a JSON array.
    #[arg(long)]
    pub json: bool,
}

/// Remove a volume and everything in it (refused while an instance uses it).
///
/// Example: shim volume rm --id billing_app cache
#[derive(Args, Debug)]
pub struct VolumeRmArgs {
    /// Service id.
    #[arg(long)]
    pub id: String,
    /// The volume's name (its `source` in the definition).
    pub name: String,
    /// How long to wait for another shim command working on the service.
    #[arg(long, value_parser = parse_duration_arg, default_value = "5min")]
    pub lock_timeout: Duration,
}

fn check_id(id: &str) -> Result<()> {
    Ident::parse(id).map_err(|m| BadInput(format!("--id: service id {m}")))?;
    Ok(())
}

pub fn run(host: &Host, _config: &Path, args: VolumeArgs) -> Result<()> {
    match args.command {
        VolumeCommand::Ls(a) => {
            if let Some(id) = &a.id {
                check_id(id)?;
            }
            let vols = crate::ops::volumes::list(host, a.id.as_deref())?;
            if a.json {
                println!("{}", serde_json::to_string_pretty(&vols)?);
                return Ok(());
            }
            print!("{}", render(&vols));
            Ok(())
        }
        VolumeCommand::Rm(a) => {
            check_id(&a.id)?;
            let path = crate::ops::volumes::remove(host, &a.id, &a.name, a.lock_timeout)?;
            println!("removed volume {} of {} ({})", a.name, a.id, path.display());
            Ok(())
        }
    }
}

/// The table `shim volume ls` prints (pure).
pub fn render(vols: &[crate::ops::volumes::Volume]) -> String {
    let mut out = format!(
        "{:<20} {:<20} {:>10}  USED BY\n",
        "SERVICE", "VOLUME", "SIZE"
    );
    for v in vols {
        let used = if v.used_by.is_empty() {
            "-".to_string()
        } else {
            v.used_by.join(", ")
        };
        out.push_str(&format!(
            "{:<20} {:<20} {:>10}  {used}\n",
            v.service,
            v.name,
            human_bytes(v.bytes)
        ));
    }
    out
}
