//! `shim probe`: one supervision pass over a service, as its probe timer runs it every
//! health interval (see `supervise::probe`).

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use anyhow::Result;
use clap::Args;

use crate::config::Ident;
use crate::error::BadInput;

/// Probe a service once: start missing instances, repair unhealthy or crashed ones.
///
/// A running instance that failed `unhealthy_after` checks in a row has its main process
/// killed, so that systemd restarts it; crash-looping ones whose backoff has passed are
/// retried.
///
/// The service's probe timer (shim-probe-ID.timer) runs this every health interval; it
/// logs actions to the journal (`journalctl SHIM_SERVICE=ID SHIM_ACTION=kill`) and nothing
/// when all is well.
///
/// Example: shim probe --id billing_app
#[derive(Args, Debug)]
pub struct ProbeArgs {
    /// Service id.
    #[arg(long)]
    pub id: String,
}

pub fn run(host: &crate::host::Host, config: &Path, args: ProbeArgs) -> Result<()> {
    Ident::parse(&args.id).map_err(|m| BadInput(format!("--id: service id {m}")))?;
    crate::ops::probe::run::run(host, config, &args.id, || {})
}

/// `shim probe` as its timer runs it, recognised without clap.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lean {
    pub config: PathBuf,
    pub id: String,
}

/// Recognises exactly the command lines a probe timer runs (`--config PATH probe --id ID`,
/// or `probe --id ID` with the definitions from `$SHIM_CONFIG` or the default), with a valid
/// id (pure). Anything else (`--help`, other spellings, a bad id) is left to clap, which
/// accepts the same meanings and explains errors.
///
/// Why: the probe runs every few seconds for every service, and building clap's command
/// tree for all subcommands and setting up logging were a good part of a healthy run's CPU
/// time.
pub fn lean_args(args: &[OsString], env_config: Option<OsString>) -> Option<Lean> {
    fn plain(a: &OsString) -> Option<&str> {
        a.to_str().filter(|s| !s.is_empty() && !s.starts_with('-'))
    }
    let (config, rest) = match args {
        [flag, path, rest @ ..] if flag == "--config" => (PathBuf::from(plain(path)?), rest),
        rest => (
            env_config
                .filter(|c| !c.is_empty())
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from(crate::config::DEFAULT_CONFIG)),
            rest,
        ),
    };
    match rest {
        [cmd, flag, id] if cmd == "probe" && flag == "--id" => {
            let id = plain(id)?;
            Ident::parse(id).ok()?;
            Some(Lean {
                config,
                id: id.to_string(),
            })
        }
        _ => None,
    }
}

/// Runs a probe recognised by [`lean_args`]; `init_logging` is called only if the run is a
/// full one (the fast path logs nothing).
pub fn run_lean(host: &crate::host::Host, l: &Lean, init_logging: impl FnOnce()) -> Result<()> {
    crate::ops::probe::run::run(host, &l.config, &l.id, init_logging)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn args(s: &str) -> Vec<OsString> {
        s.split_whitespace().map(OsString::from).collect()
    }

    /// Whatever the lean entry takes, clap reads the same way.
    fn same_as_clap(line: &str, env: Option<&str>) -> Option<Lean> {
        let lean = lean_args(&args(line), env.map(OsString::from))?;
        let mut argv = vec![OsString::from("shim")];
        argv.extend(args(line));
        let cli = crate::cli::Cli::try_parse_from(argv).unwrap();
        let crate::cli::Command::Probe(p) = cli.command else {
            panic!("not a probe: {line}");
        };
        assert_eq!(p.id, lean.id, "{line}");
        if line.starts_with("--config") {
            assert_eq!(cli.config, lean.config, "{line}");
        }
        Some(lean)
    }

    #[test]
    fn the_timer_command_line_is_recognised_like_clap_does() {
        let l = same_as_clap(
            "--config /etc/shim/services.toml probe --id billing_app",
            None,
        )
        .unwrap();
        assert_eq!(
            l,
            Lean {
                config: "/etc/shim/services.toml".into(),
                id: "billing_app".into()
            }
        );
        let l = same_as_clap("probe --id web", None).unwrap();
        assert_eq!(l.config, PathBuf::from(crate::config::DEFAULT_CONFIG));
        let l = lean_args(&args("probe --id web"), Some("/tmp/defs".into())).unwrap();
        assert_eq!(l.config, PathBuf::from("/tmp/defs"));
        // An explicit --config wins over the environment, as with clap.
        let l = lean_args(&args("--config /a probe --id web"), Some("/b".into())).unwrap();
        assert_eq!(l.config, PathBuf::from("/a"));
    }

    #[test]
    fn anything_else_is_left_to_clap() {
        for line in [
            "",
            "probe",
            "probe --id",
            "probe --help",
            "probe --id web --help",
            "probe --id=web",
            "--config=/a probe --id web",
            "--config probe --id web",
            "probe --id -x",
            "probe --id ../etc",
            "probe --id Bad-Id!",
            "status --id web",
            "--config /a status --id web",
            "probe --id web --config /a",
        ] {
            assert_eq!(lean_args(&args(line), None), None, "{line:?}");
        }
    }
}
