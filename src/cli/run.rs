//! `shim run`: a one-off command in a container of a service's image (see `run.rs`).

use std::path::Path;

use anyhow::Result;
use clap::Args;

use crate::host::Host;
use crate::ops::run::RunRequest;

/// Run a command in a container of a service's image, as a transient systemd unit.
///
/// The container gets the service's env, secrets and user (or those of --process), at the
/// service's current revision unless --revision says otherwise. Attached by default: the
/// command's output comes here and goes to the journal (SHIM_RUN=<unit>); its exit code is
/// shim's; Ctrl-C, SIGTERM and SIGHUP reach it. If shim itself is killed, systemd stops the
/// command. Shim's own failures exit 1 (2 for bad input) before the command runs.
///
/// Example: shim run --id billing_app -- bin/rails db:migrate
///
/// More examples:
///   shim run --id billing_app -t -- bin/rails console
///   gunzip -c dump.gz | shim run --id billing_app -i -- bin/restore
///   shim run --id billing_app --detach -- bin/rake reindex    (prints the unit name)
#[derive(Args, Debug)]
#[command(verbatim_doc_comment)]
pub struct RunArgs {
    /// Service id, as in [services.ID].
    #[arg(long)]
    pub id: String,
    /// Revision to run (default: the service's current revision on this host).
    #[arg(long)]
    pub revision: Option<String>,
    /// Borrow this process's settings (env, read_only, stop signal and timeout).
    #[arg(long)]
    pub process: Option<String>,
    /// Pass standard input to the command (without it the command reads /dev/null).
    #[arg(short = 'i', long)]
    pub interactive: bool,
    /// A pseudo-terminal for the command (a console: `-t -- /bin/sh`); implies -i.
    #[arg(short = 't', long)]
    pub tty: bool,
    /// Start it and print the unit name; output goes to the journal only.
    #[arg(long)]
    pub detach: bool,
    /// The command and its arguments (after `--`).
    #[arg(
        required = true,
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "CMD"
    )]
    pub command: Vec<String>,
}

pub fn run(host: &Host, config: &Path, args: RunArgs) -> Result<()> {
    let defs = crate::config::load(config)?;
    let req = RunRequest {
        id: args.id,
        revision: args.revision,
        process: args.process,
        interactive: args.interactive,
        tty: args.tty,
        detach: args.detach,
        argv: args.command,
    };
    let code = crate::ops::run::run(host, &defs, &req)?;
    std::process::exit(code);
}
