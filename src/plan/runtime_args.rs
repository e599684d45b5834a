//! The command lines shim gives an OCI runtime (runc, crun), as plain data: one option
//! builder per runtime command, each turned into arguments by [`Args::args`] and compared
//! with `assert_eq!` in tests. Modelled on containerd's rust-extensions runc crate
//! (`crates/runc/src/options.rs`, `trait Args`), which builds runc's options the same way.
//!
//! Flow: a caller fills a builder ([`Run`], [`Exec`], [`Delete`]) and asks [`argv`] for the
//! whole command line (the runtime binary first), or [`Args::args`] for the arguments alone
//! (for `std::process::Command::args`). The order of the options is the one runc and crun
//! document and the one units on hosts already carry: changing it changes the rendered units.
//!
//! The hooks a unit runs around the runtime (`shim instance prepare`, `exec`, `cleanup`) are
//! built the same way ([`Prepare`], [`ExecRuntime`], [`Cleanup`]; the binary is shim's own).

use std::path::{Path, PathBuf};

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

/// `instance prepare [--lower L]... DIR`: mount an instance's rootfs (ExecStartPre). The
/// lowers are the image's layer directories, lowest first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prepare<'a> {
    pub lowers: &'a [PathBuf],
    pub dir: &'a Path,
}

impl Args for Prepare<'_> {
    fn args(&self) -> Vec<String> {
        let mut a = vec!["instance".to_string(), "prepare".into()];
        for l in self.lowers {
            a.extend(["--lower".into(), l.display().to_string()]);
        }
        a.push(self.dir.display().to_string());
        a
    }
}

/// `instance exec -- RUNTIME run ...`: move into the `runtime` cgroup leaf, then become the
/// runtime (a one-off's ExecStart).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecRuntime<'a> {
    pub runtime: &'a Path,
    pub run: Run<'a>,
}

impl Args for ExecRuntime<'_> {
    fn args(&self) -> Vec<String> {
        let mut a = vec!["instance".to_string(), "exec".into(), "--".into()];
        a.extend(argv(self.runtime, &self.run));
        a
    }
}

/// `instance cleanup [--remove] [--record F] --runtime RUNTIME DIR`: delete the runtime's
/// state and unmount (ExecStopPost); `--remove` also removes the bundle, `--record` writes
/// how the unit ended to `F` (cron jobs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cleanup<'a> {
    pub remove: bool,
    pub record: Option<&'a Path>,
    pub runtime: &'a Path,
    pub dir: &'a Path,
}

impl Args for Cleanup<'_> {
    fn args(&self) -> Vec<String> {
        let mut a = vec!["instance".to_string(), "cleanup".into()];
        if self.remove {
            a.push("--remove".into());
        }
        if let Some(f) = self.record {
            a.extend(["--record".into(), f.display().to_string()]);
        }
        a.extend([
            "--runtime".into(),
            self.runtime.display().to_string(),
            self.dir.display().to_string(),
        ]);
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
    fn instance_hooks() {
        let lowers = [PathBuf::from("/l/1"), PathBuf::from("/l/2")];
        let prepare = Prepare {
            lowers: &lowers,
            dir: Path::new("/d"),
        };
        assert_eq!(
            argv(Path::new("/shim"), &prepare),
            ["/shim", "instance", "prepare", "--lower", "/l/1", "--lower", "/l/2", "/d"]
        );
        let exec = ExecRuntime {
            runtime: Path::new("/runc"),
            run: Run {
                detach: false,
                pid_file: None,
                bundle: Path::new("/d"),
                id: "x",
            },
        };
        assert_eq!(
            exec.args(),
            ["instance", "exec", "--", "/runc", "run", "--bundle", "/d", "x"]
        );
        let cleanup = Cleanup {
            remove: true,
            record: Some(Path::new("/r.json")),
            runtime: Path::new("/runc"),
            dir: Path::new("/d"),
        };
        assert_eq!(
            cleanup.args(),
            [
                "instance",
                "cleanup",
                "--remove",
                "--record",
                "/r.json",
                "--runtime",
                "/runc",
                "/d"
            ]
        );
        let plain = Cleanup {
            remove: false,
            record: None,
            ..cleanup
        };
        assert_eq!(
            plain.args(),
            ["instance", "cleanup", "--runtime", "/runc", "/d"]
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
