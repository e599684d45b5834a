//! The command line: one file per subcommand, each with its clap `*Args` (doc comments are the
//! `--help` text) and a `run`.

mod cron;
mod generate;
mod image;
mod instance;
pub mod logs;
mod probe;
mod reconcile;
mod run;
mod show;
mod start;
mod status;
mod stop;
mod supervise;
mod upgrade;
mod volume;

use std::path::PathBuf;

use anyhow::Result;

use crate::host::Host;
use clap::{Parser, Subcommand};

/// Shown after the top-level --help and in shim(1): the exit codes come from `error.rs`.
fn after_help() -> String {
    format!(
        "{}\nDefinitions are read from /etc/shim/services.toml and /etc/shim/services.d/*.toml.\n\
         Documentation: /usr/share/doc/shim (docs/ in the repository), man shim-COMMAND.",
        crate::error::render_exit_codes_help()
    )
}

/// Run containers on this host as systemd units: no daemon, systemd supervises.
#[derive(Parser, Debug)]
#[command(name = "shim", version, after_help = after_help())]
pub struct Cli {
    /// Service definitions: a file (plus services.d/*.toml beside it) or a directory holding
    /// services.toml and/or services.d/.
    #[arg(long, global = true, env = crate::plan::fields::env::CONFIG, default_value = crate::config::DEFAULT_CONFIG)]
    pub config: PathBuf,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    Start(start::StartArgs),
    Upgrade(upgrade::UpgradeArgs),
    Rollback(upgrade::RollbackArgs),
    Restart(upgrade::RestartArgs),
    Stop(stop::StopArgs),
    Status(status::StatusArgs),
    Show(show::ShowArgs),
    Run(run::RunArgs),
    Cron(cron::CronArgs),
    Logs(logs::LogsArgs),
    Image(image::ImageArgs),
    Volume(volume::VolumeArgs),
    Supervise(supervise::SuperviseArgs),
    Reconcile(reconcile::ReconcileArgs),
    Probe(probe::ProbeArgs),
    #[command(hide = true)]
    Instance(instance::InstanceArgs),
    #[command(hide = true)]
    Generate(generate::GenerateArgs),
}

/// A duration flag (`--lock-timeout 30s`), as the definitions spell durations.
pub fn parse_duration_arg(s: &str) -> Result<std::time::Duration, String> {
    crate::config::parse_duration(s)
}

/// `shim probe` as its timer runs it, without clap (see [`probe::lean_args`]).
pub fn probe_lean_args(args: &[std::ffi::OsString]) -> Option<probe::Lean> {
    probe::lean_args(args, std::env::var_os(crate::plan::fields::env::CONFIG))
}

pub fn probe_run_lean(host: &Host, l: &probe::Lean, init_logging: impl FnOnce()) -> Result<()> {
    probe::run_lean(host, l, init_logging)
}

pub fn run(host: &Host, cli: Cli) -> Result<()> {
    match cli.command {
        Command::Start(a) => start::run(host, &cli.config, a),
        Command::Upgrade(a) => upgrade::run_upgrade(host, &cli.config, a),
        Command::Rollback(a) => upgrade::run_rollback(host, &cli.config, a),
        Command::Restart(a) => upgrade::run_restart(host, &cli.config, a),
        Command::Stop(a) => stop::run(host, &cli.config, a),
        Command::Status(a) => status::run(host, &cli.config, a),
        Command::Show(a) => show::run(host, &cli.config, a),
        Command::Run(a) => run::run(host, &cli.config, a),
        Command::Cron(a) => cron::run(host, &cli.config, a),
        Command::Image(a) => image::run(host, &cli.config, a),
        Command::Volume(a) => volume::run(host, &cli.config, a),
        Command::Supervise(a) => supervise::run(host, &cli.config, a),
        Command::Reconcile(a) => reconcile::run(host, &cli.config, a),
        Command::Probe(a) => probe::run(host, &cli.config, a),
        Command::Logs(a) => logs::run(host, &cli.config, a),
        Command::Instance(a) => instance::run(a),
        Command::Generate(a) => generate::run(a),
    }
}

#[cfg(test)]
mod help_tests {
    use clap::CommandFactory;

    use super::Cli;

    /// The lines of the `Commands:` section of a rendered help.
    fn command_lines(help: &str) -> Vec<String> {
        help.lines()
            .skip_while(|l| l.trim_end() != "Commands:")
            .skip(1)
            .take_while(|l| !l.trim().is_empty())
            .map(str::to_string)
            .collect()
    }

    /// Every listed command takes one short line: its name and a one-sentence summary (the
    /// first paragraph of its doc comment; the rest is for `shim help CMD` and the man pages).
    fn assert_short(cmd: &mut clap::Command, path: &str) {
        let help = cmd.render_help().to_string();
        let lines = command_lines(&help);
        let visible: Vec<&str> = cmd
            .get_subcommands()
            .filter(|c| !c.is_hide_set())
            .map(|c| c.get_name())
            .collect();
        assert!(!lines.is_empty(), "{path}: no Commands section in:\n{help}");
        // One line per command (rendering added clap's `help`), no continuation lines.
        assert_eq!(lines.len(), visible.len(), "{path}:\n{help}");
        for line in &lines {
            let name = line.split_whitespace().next().unwrap_or_default();
            assert!(
                line.starts_with("  ") && visible.contains(&name),
                "{path}: not a command line: {line:?}"
            );
            assert!(
                line.chars().count() <= 100,
                "{path}: {} characters: {line:?}",
                line.chars().count()
            );
        }
    }

    #[test]
    fn top_level_help_lists_each_command_on_one_short_line() {
        assert_short(&mut Cli::command(), "shim");
    }

    #[test]
    fn subcommand_helps_list_each_command_on_one_short_line() {
        let mut cli = Cli::command();
        cli.build();
        for sub in cli.get_subcommands_mut() {
            if sub.has_subcommands() {
                let path = format!("shim {}", sub.get_name());
                assert_short(sub, &path);
            }
        }
    }
}
