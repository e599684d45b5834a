//! `shim instance prepare|cleanup`: run by systemd around each instance's container
//! (ExecStartPre/ExecStopPost), never by hand. Short-lived: nothing of shim stays resident.

use std::path::PathBuf;

use std::os::unix::process::CommandExt;

use anyhow::Result;
use clap::{Args, Subcommand};

#[derive(Args, Debug)]
pub struct InstanceArgs {
    #[command(subcommand)]
    step: Step,
}

#[derive(Subcommand, Debug)]
enum Step {
    /// Mount the instance's overlay (fresh writable layer over the shared image).
    Prepare {
        /// An image layer directory, lowest first (repeated).
        #[arg(long = "lower", required = true)]
        lower: Vec<PathBuf>,
        dir: PathBuf,
    },
    /// Delete the runtime's state, unmount and discard the writable layer.
    Cleanup {
        #[arg(long)]
        runtime: PathBuf,
        /// Remove the whole directory afterwards (one-offs: nothing in it is needed again).
        #[arg(long)]
        remove: bool,
        /// Record how the unit ended ($SERVICE_RESULT, $EXIT_CODE, $EXIT_STATUS) in this file.
        #[arg(long)]
        record: Option<PathBuf>,
        dir: PathBuf,
    },
    /// Move into the `runtime` leaf of the unit's cgroup, then execute ARGV (the runtime).
    Exec {
        #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
        argv: Vec<String>,
    },
    /// Block until standard input closes (the anchor of an attached `shim run`).
    Anchor,
}

pub fn run(args: InstanceArgs) -> Result<()> {
    match args.step {
        Step::Prepare { lower, dir } => crate::host::runtime::prepare(&lower, &dir),
        Step::Cleanup {
            runtime,
            remove,
            record,
            dir,
        } => {
            let cleaned = crate::host::runtime::cleanup(&runtime, &dir);
            if let Some(file) = record {
                if let Err(e) = crate::host::runtime::record_last_result(&file, &dir) {
                    eprintln!("recording the result: {e:#}");
                }
            }
            cleaned?;
            if remove {
                crate::host::runtime::remove_dir(&dir)?;
            }
            Ok(())
        }
        Step::Exec { argv } => {
            crate::host::runtime::enter_cgroup_leaf("runtime")?;
            let err = std::process::Command::new(&argv[0]).args(&argv[1..]).exec();
            Err(anyhow::anyhow!(err).context(format!("executing {}", argv[0])))
        }
        Step::Anchor => {
            // The caller blocked the signals it forwards, and a child inherits the mask.
            let _ = nix::sys::signal::SigSet::all().thread_unblock();
            let mut sink = Vec::new();
            let _ = std::io::Read::read_to_end(&mut std::io::stdin(), &mut sink);
            Ok(())
        }
    }
}
