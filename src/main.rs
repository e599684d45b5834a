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
    let argv: Vec<std::ffi::OsString> = std::env::args_os().collect();
    // `shim probe` runs every few seconds for every service: the command line its timer uses
    // skips clap, and logging is set up only if the run is not the fast path's.
    let lean = cli::probe_lean_args(argv.get(1..).unwrap_or_default());
    let result = match lean {
        Some(l) => cli::probe_run_lean(&l, init_logging),
        None => {
            let args = cli::Cli::parse_from(argv);
            init_logging();
            cli::run(args)
        }
    };
    if let Err(err) = result {
        eprintln!("shim: error: {err:#}");
        std::process::exit(error::exit_code(&err));
    }
}

fn init_logging() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("SHIM_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .without_time()
        .init();
}
