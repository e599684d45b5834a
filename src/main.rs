//! shim: run containers in production on one Linux host, supervised by systemd, no daemon.
//!
//! main builds the one [`host::Host`] (the adapters over this machine; the only place a
//! systemd connection is made), parses the command line, sets up logging, dispatches to
//! `cli::*`, prints the error chain and maps it to the exit code (see `error.rs`).
//!
//! Rings: `cli` (parse, render) → `ops` (operations) → `host` (adapters behind traits) →
//! the pure core `plan`, `config`, `crontab`, with `image` (the image store) beside `host`.

mod cli;
mod config;
mod crontab;
mod error;
mod host;
mod image;
mod ops;
mod plan;
mod timefmt;

use clap::Parser;

fn main() {
    let argv: Vec<std::ffi::OsString> = std::env::args_os().collect();
    // `shim probe` runs every few seconds for every service: the command line its timer uses
    // skips clap, and logging is set up only if the run is not the fast path's.
    let lean = cli::probe_lean_args(argv.get(1..).unwrap_or_default());
    // The one Host: adapters over this machine. Building it does no I/O; systemd is connected
    // here, on the first operation that asks for it, and shared from then on.
    let host = host::Host::real(
        Box::new(|| {
            host::systemd::DbusSystemd::connect()
                .map(|sd| std::sync::Arc::new(sd) as host::systemd::SharedSystemd)
        }),
        host::dirs::Dirs::from_env(),
    );
    let result = match lean {
        Some(l) => cli::probe_run_lean(&host, &l, init_logging),
        None => {
            let args = cli::Cli::parse_from(argv);
            init_logging();
            cli::run(&host, args)
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
            tracing_subscriber::EnvFilter::try_from_env(crate::plan::fields::env::LOG)
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        // No colour codes where stderr is not a terminal (a pipe, the journal at boot).
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .without_time()
        .init();
}
