//! `shim generate` (hidden): files derived from the command-line definitions, for packaging
//! (packaging/build-deb.sh) and the docs: man pages (clap_mangen), shell completions
//! (clap_complete) and the exit-code table of docs/exit-codes.md. Rendering is pure.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::{Args, CommandFactory, Subcommand};
use clap_complete::Shell;

/// Generate man pages, shell completions or the exit-code table from shim's own definitions.
///
/// Example: shim generate man target/man && shim generate completions bash > shim.bash
#[derive(Args, Debug)]
pub struct GenerateArgs {
    #[command(subcommand)]
    what: What,
}

#[derive(Subcommand, Debug)]
enum What {
    /// Write shim.1 and one shim-COMMAND.1 per command into DIR.
    Man { dir: PathBuf },
    /// Print the completion script for SHELL.
    Completions { shell: Shell },
    /// Print the exit-code table of docs/exit-codes.md (Markdown).
    ExitCodes,
}

/// Man pages as (file name, roff text): shim.1, then shim-COMMAND.1 and
/// shim-COMMAND-SUB.1 for every command that is not hidden.
pub fn render_man_pages() -> Result<Vec<(String, String)>> {
    fn walk(cmd: &clap::Command, out: &mut Vec<(String, String)>) -> Result<()> {
        let man = clap_mangen::Man::new(cmd.clone()).manual("shim manual");
        let mut buf = Vec::new();
        man.render(&mut buf)?;
        out.push((man.get_filename(), String::from_utf8(buf)?));
        for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
            walk(sub, out)?;
        }
        Ok(())
    }
    let mut cmd = super::Cli::command().disable_help_subcommand(true);
    // Building propagates global flags (--config) and sets the display names that become the
    // file names (shim-upgrade.1).
    cmd.build();
    let mut out = Vec::new();
    walk(&cmd, &mut out)?;
    Ok(out)
}

/// The command tree without its hidden commands: clap_complete's bash generator offers hidden
/// subcommands too, so they are left out of the tree it is given.
fn public_command() -> clap::Command {
    let full = super::Cli::command();
    let mut cmd = clap::Command::new("shim")
        .version(env!("CARGO_PKG_VERSION"))
        .args(full.get_arguments().cloned());
    if let Some(about) = full.get_about() {
        cmd = cmd.about(about.clone());
    }
    cmd.subcommands(full.get_subcommands().filter(|s| !s.is_hide_set()).cloned())
}

pub fn render_completions(shell: Shell) -> String {
    let mut cmd = public_command();
    let mut buf = Vec::new();
    clap_complete::generate(shell, &mut cmd, "shim", &mut buf);
    String::from_utf8_lossy(&buf).into_owned()
}

fn write_man(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    for (name, text) in render_man_pages()? {
        let path = dir.join(&name);
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
        println!("{}", path.display());
    }
    Ok(())
}

pub fn run(args: GenerateArgs) -> Result<()> {
    match args.what {
        What::Man { dir } => write_man(&dir),
        What::Completions { shell } => {
            print!("{}", render_completions(shell));
            Ok(())
        }
        What::ExitCodes => {
            print!("{}", crate::error::render_exit_codes_markdown());
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn man_pages_name_every_command_and_flag() {
        let pages = render_man_pages().unwrap();
        let names: Vec<&str> = pages.iter().map(|(n, _)| n.as_str()).collect();
        for want in [
            "shim.1",
            "shim-upgrade.1",
            "shim-rollback.1",
            "shim-logs.1",
            "shim-status.1",
            "shim-image-pull.1",
        ] {
            assert!(names.contains(&want), "{want} missing from {names:?}");
        }
        // Hidden commands get no page.
        assert!(!names
            .iter()
            .any(|n| n.contains("instance") || n.contains("generate")));
        let upgrade = &pages.iter().find(|(n, _)| n == "shim-upgrade.1").unwrap().1;
        // roff escapes '-' as '\-'.
        for flag in ["id", "revision", "dry", "timeout", "lock", "json", "config"] {
            assert!(
                upgrade.contains(&format!("\\-\\-{flag}")),
                "--{flag} missing from shim-upgrade.1:\n{upgrade}"
            );
        }
        assert!(upgrade.contains("Example: shim upgrade"), "{upgrade}");
        let top = &pages[0].1;
        assert!(top.contains("Exit codes"), "{top}");
    }

    #[test]
    fn completions_know_the_commands() {
        for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
            let s = render_completions(shell);
            for word in ["upgrade", "rollback", "logs", "--revision"] {
                assert!(s.contains(word), "{shell}: {word} missing");
            }
        }
        // Hidden commands are not offered (bash keeps a case branch for them, unused).
        let bash = render_completions(Shell::Bash);
        let top = bash.lines().find(|l| l.contains("opts=\"-h -V")).unwrap();
        assert!(
            top.contains(" upgrade ") && !top.contains("generate"),
            "{top}"
        );
        assert!(!top.contains("instance"), "{top}");
    }

    /// Every command's --help carries an example (the `Example:` line of its doc comment).
    #[test]
    fn every_command_has_an_example() {
        fn walk(cmd: &clap::Command, path: String, missing: &mut Vec<String>) {
            for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
                let name = format!("{path} {}", sub.get_name());
                let about = sub
                    .get_long_about()
                    .or(sub.get_about())
                    .map(|s| s.to_string())
                    .unwrap_or_default();
                if !about.contains("Example: shim") {
                    missing.push(name.clone());
                }
                walk(sub, name, missing);
            }
        }
        let mut missing = Vec::new();
        walk(&super::super::Cli::command(), "shim".into(), &mut missing);
        assert!(missing.is_empty(), "no `Example:` in --help of {missing:?}");
    }
}
