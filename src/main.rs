//! shim: run containers in production on one Linux host, supervised by systemd, no daemon.
//!
//! main parses the command line, sets up logging, dispatches to `cli::*`, prints the error
//! chain and maps it to the exit code (see `error.rs`).

mod cli;
mod config;
mod cron;
mod cron_sync;
mod deploy;
mod error;
mod image;
mod lock;
mod nginx;
mod plan;
mod probe;
mod run;
mod runtime;
mod state;
mod supervise;
mod systemd;
mod upgrade;

use clap::Parser;

fn main() {
    let args = cli::Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("SHIM_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .without_time()
        .init();
    if let Err(err) = cli::run(args) {
        eprintln!("shim: error: {err:#}");
        std::process::exit(error::exit_code(&err));
    }
}
