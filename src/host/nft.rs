//! The `nft` binary, as the nftables switch uses it (`[shim] switch = "nftables"`): a script
//! applied with `nft -f -` (one transaction: all of it or nothing), and one chain listed back.
//! The scripts are rendered purely by `plan::nft`. A missing binary is an error that says
//! what to install, or how to go back to the reload switch.

use std::io::Write;

use anyhow::{bail, Context, Result};

/// nftables, as the switch uses it.
pub trait Nft: Send + Sync {
    /// Applies `script` atomically (`nft -f -`).
    fn apply(&self, script: &str) -> Result<()>;
    /// `nft list chain ip <table> <chain>`; None when the table or chain does not exist.
    fn list_chain(&self, table: &str, chain: &str) -> Result<Option<String>>;
}

/// The installed `nft`.
pub struct NftBinary;

fn spawn_error(e: std::io::Error) -> anyhow::Error {
    if e.kind() == std::io::ErrorKind::NotFound {
        anyhow::anyhow!("running nft: not found; install nftables (apt install nftables) or set [shim] switch = \"reload\"")
    } else {
        anyhow::Error::new(e).context("running nft")
    }
}

impl Nft for NftBinary {
    fn apply(&self, script: &str) -> Result<()> {
        let mut child = std::process::Command::new("nft")
            .args(["-f", "-"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .map_err(spawn_error)?;
        if let Some(mut stdin) = child.stdin.take() {
            stdin
                .write_all(script.as_bytes())
                .context("writing the script to nft")?;
        }
        let out = child.wait_with_output().context("waiting for nft")?;
        if !out.status.success() {
            bail!(
                "nft -f - failed ({}):\n{}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim_end()
            );
        }
        Ok(())
    }

    fn list_chain(&self, table: &str, chain: &str) -> Result<Option<String>> {
        let out = std::process::Command::new("nft")
            .args(["list", "chain", "ip", table, chain])
            .output()
            .map_err(spawn_error)?;
        if out.status.success() {
            return Ok(Some(String::from_utf8_lossy(&out.stdout).into_owned()));
        }
        let err = String::from_utf8_lossy(&out.stderr);
        if err.contains("No such file or directory") {
            return Ok(None);
        }
        bail!(
            "nft list chain ip {table} {chain} failed: {}",
            err.trim_end()
        )
    }
}

/// An nftables of chains held in memory: it understands the lines `plan::nft` writes
/// (`flush chain`, `add rule`; the rest is declarations), records every script, and refuses
/// scripts (changing nothing, as the kernel's transaction would) while `refuse` is set.
#[cfg(test)]
#[derive(Default)]
pub struct FakeNft {
    pub refuse: std::sync::atomic::AtomicBool,
    pub scripts: std::sync::Mutex<Vec<String>>,
    pub chains: std::sync::Mutex<std::collections::BTreeMap<String, Vec<String>>>,
}

#[cfg(test)]
impl FakeNft {
    /// The rules of `chain` (None: no such chain).
    pub fn rules(&self, chain: &str) -> Option<Vec<String>> {
        crate::host::systemd::fake::lock(&self.chains)
            .get(chain)
            .cloned()
    }

    /// Every chain gone, as after a reboot.
    pub fn wipe(&self) {
        crate::host::systemd::fake::lock(&self.chains).clear();
    }
}

#[cfg(test)]
impl Nft for FakeNft {
    fn apply(&self, script: &str) -> Result<()> {
        use std::sync::atomic::Ordering;
        crate::host::systemd::fake::lock(&self.scripts).push(script.to_string());
        if self.refuse.load(Ordering::SeqCst) {
            bail!("nft -f - failed (exit status: 1):\nError: (fake) refused");
        }
        let mut chains = crate::host::systemd::fake::lock(&self.chains);
        for line in script.lines() {
            let words: Vec<&str> = line.split_whitespace().collect();
            match words.as_slice() {
                ["chain", name, "{", "}"] => {
                    chains.entry(name.to_string()).or_default();
                }
                ["flush", "chain", "ip", _, name] => {
                    chains.insert(name.to_string(), Vec::new());
                }
                ["add", "rule", "ip", _, name, ..] if *name != "nat" => {
                    let rule = line.splitn(6, ' ').nth(5).unwrap_or("").to_string();
                    chains.entry(name.to_string()).or_default().push(rule);
                }
                _ => {}
            }
        }
        Ok(())
    }

    fn list_chain(&self, table: &str, chain: &str) -> Result<Option<String>> {
        Ok(self.rules(chain).map(|rules| {
            let body: String = rules.iter().map(|r| format!("\t\t{r}\n")).collect();
            format!("table ip {table} {{\n\tchain {chain} {{\n{body}\t}}\n}}\n")
        }))
    }
}
