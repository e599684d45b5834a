//! The command line: one file per subcommand, each with its clap `*Args` (doc comments are the
//! `--help` text) and a `run`.

mod image;
mod instance;
mod show;
mod start;
mod status;
mod stop;
mod upgrade;

use std::path::PathBuf;

use anyhow::Result;
use clap::{Parser, Subcommand};

const AFTER_HELP: &str = "\
Exit codes: 0 success; 1 the operation failed; 2 bad input (definitions, flags), nothing changed.

Definitions are read from /etc/shim/services.toml and /etc/shim/services.d/*.toml.";

/// Run containers on this host as systemd units: no daemon, systemd supervises.
#[derive(Parser, Debug)]
#[command(name = "shim", version, after_help = AFTER_HELP)]
pub struct Cli {
    /// Service definitions: a file (plus services.d/*.toml beside it) or a directory holding
    /// services.toml and/or services.d/.
    #[arg(long, global = true, env = "SHIM_CONFIG", default_value = crate::config::DEFAULT_CONFIG)]
    pub config: PathBuf,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    Start(start::StartArgs),
    Upgrade(upgrade::UpgradeArgs),
    Rollback(upgrade::RollbackArgs),
    Stop(stop::StopArgs),
    Status(status::StatusArgs),
    Show(show::ShowArgs),
    Image(image::ImageArgs),
    #[command(hide = true)]
    Instance(instance::InstanceArgs),
}

pub fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Start(a) => start::run(&cli.config, a),
        Command::Upgrade(a) => upgrade::run_upgrade(&cli.config, a),
        Command::Rollback(a) => upgrade::run_rollback(&cli.config, a),
        Command::Stop(a) => stop::run(&cli.config, a),
        Command::Status(a) => status::run(a),
        Command::Show(a) => show::run(&cli.config, a),
        Command::Image(a) => image::run(&cli.config, a),
        Command::Instance(a) => instance::run(a),
    }
}

/// `shim show`'s renderer, for the planner's snapshot tests.
#[cfg(test)]
pub fn show_render_for_tests(plans: &[crate::plan::InstancePlan], notes: &[String]) -> String {
    show::render(plans, notes)
}
