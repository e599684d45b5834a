//! `shim instance prepare|cleanup`: run by systemd around each instance's container
//! (ExecStartPre/ExecStopPost), never by hand. Short-lived: nothing of shim stays resident.

use std::path::PathBuf;

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
        #[arg(long)]
        lower: PathBuf,
        dir: PathBuf,
    },
    /// Delete the runtime's state, unmount and discard the writable layer.
    Cleanup {
        #[arg(long)]
        runtime: PathBuf,
        dir: PathBuf,
    },
}

pub fn run(args: InstanceArgs) -> Result<()> {
    match args.step {
        Step::Prepare { lower, dir } => crate::runtime::prepare(&lower, &dir),
        Step::Cleanup { runtime, dir } => crate::runtime::cleanup(&runtime, &dir),
    }
}
