//! The command lines shim gives an OCI runtime (runc, crun), as plain data: one option
//! builder per runtime command, each turned into arguments by [`Args::args`] and compared
//! with `assert_eq!` in tests. Modelled on containerd's rust-extensions runc crate
//! (`crates/runc/src/options.rs`, `trait Args`), which builds runc's options the same way.
//!
//! Flow: a caller fills a builder ([`Run`], [`Exec`], [`Delete`]) and asks [`argv`] for the
//! whole command line (the runtime binary first), or [`Args::args`] for the arguments alone
//! (for `std::process::Command::args`). The order of the options is the one runc and crun
//! document and the one units on hosts already carry: changing it changes the rendered units.

use std::path::Path;

/// A runtime command's arguments, without the runtime binary.
pub trait Args {
    fn args(&self) -> Vec<String>;
}

/// `run [--detach] [--pid-file F] --bundle DIR ID`: create and start a container from its
/// bundle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Run<'a> {
    /// `--detach`: the runtime returns once the container runs (instances, whose unit is
    /// `Type=forking`); without it, it waits for the container (one-offs, cron jobs).
    pub detach: bool,
    /// `--pid-file`: where the runtime writes the container's pid (systemd's `PIDFile=`).
    pub pid_file: Option<&'a Path>,
    pub bundle: &'a Path,
    pub id: &'a str,
}

impl Args for Run<'_> {
    fn args(&self) -> Vec<String> {
        let mut a = vec!["run".to_string()];
        if self.detach {
            a.push("--detach".into());
        }
        if let Some(p) = self.pid_file {
            a.extend(["--pid-file".into(), p.display().to_string()]);
        }
        a.extend([
            "--bundle".into(),
            self.bundle.display().to_string(),
            self.id.to_string(),
        ]);
        a
    }
}

/// `exec --process P --pid-file F ID`: run the process described by the JSON file `P` in a
/// running container (command health checks).
// Not yet called: host/exec_check.rs still spells this argv in its `exec_argv` (its owner
// rewrites that file in issue 24's health-check part and switches to this builder there).
#[allow(dead_code)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exec<'a> {
    pub process: &'a Path,
    pub pid_file: &'a Path,
    pub id: &'a str,
}

impl Args for Exec<'_> {
    fn args(&self) -> Vec<String> {
        vec![
            "exec".into(),
            "--process".into(),
            self.process.display().to_string(),
            "--pid-file".into(),
            self.pid_file.display().to_string(),
            self.id.to_string(),
        ]
    }
}

/// `delete [--force] ID`: remove a container's runtime state (`--force`: even if it runs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delete<'a> {
    pub force: bool,
    pub id: &'a str,
}

impl Args for Delete<'_> {
    fn args(&self) -> Vec<String> {
        let mut a = vec!["delete".to_string()];
        if self.force {
            a.push("--force".into());
        }
        a.push(self.id.to_string());
        a
    }
}

/// The whole command line: `runtime` then the command's arguments.
pub fn argv(runtime: &Path, cmd: &impl Args) -> Vec<String> {
    let mut v = vec![runtime.display().to_string()];
    v.extend(cmd.args());
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_detached_with_pid_file() {
        let cmd = Run {
            detach: true,
            pid_file: Some(Path::new("/run/shim/i/x/pid")),
            bundle: Path::new("/run/shim/i/x"),
            id: "shim-a-web-r1-1",
        };
        assert_eq!(
            argv(Path::new("/usr/sbin/runc"), &cmd),
            [
                "/usr/sbin/runc",
                "run",
                "--detach",
                "--pid-file",
                "/run/shim/i/x/pid",
                "--bundle",
                "/run/shim/i/x",
                "shim-a-web-r1-1"
            ]
        );
    }

    #[test]
    fn run_in_the_foreground() {
        let cmd = Run {
            detach: false,
            pid_file: None,
            bundle: Path::new("/d"),
            id: "shimrun-a-r1-x",
        };
        assert_eq!(cmd.args(), ["run", "--bundle", "/d", "shimrun-a-r1-x"]);
    }

    #[test]
    fn exec_a_process_file() {
        let cmd = Exec {
            process: Path::new("/t/p.json"),
            pid_file: Path::new("/t/pid"),
            id: "c1",
        };
        assert_eq!(
            argv(Path::new("crun"), &cmd),
            [
                "crun",
                "exec",
                "--process",
                "/t/p.json",
                "--pid-file",
                "/t/pid",
                "c1"
            ]
        );
    }

    #[test]
    fn delete_forced_or_not() {
        let forced = Delete {
            force: true,
            id: "c1",
        };
        assert_eq!(forced.args(), ["delete", "--force", "c1"]);
        let plain = Delete {
            force: false,
            id: "c1",
        };
        assert_eq!(plain.args(), ["delete", "c1"]);
    }
}
