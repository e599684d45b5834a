//! The `nft` binary, as the nftables switch uses it (`[shim] switch = "nftables"`): the
//! targets of a switch applied as one script with `nft -f -` (one transaction: all of it or
//! nothing), and one chain listed back as JSON (`nft -j list chain`). Both ways are typed:
//! scripts are rendered and listings parsed purely by `plan::nft`. A missing binary is an
//! error that says what to install, or how to go back to the reload switch.

use std::io::Write;

use anyhow::{bail, Context, Result};

use crate::plan::nft::{ChainRule, Target};

/// nftables, as the switch uses it.
pub trait Nft: Send + Sync {
    /// Points each target's chain at its instances, atomically (`nft -f -` of
    /// [`crate::plan::nft::render_script`]).
    fn apply(&self, targets: &[Target]) -> Result<()>;
    /// The rule of `chain` in table `ip <table>`: None when the table or chain does not
    /// exist, Some(None) when the chain holds no rule (closed).
    fn list_chain(&self, table: &str, chain: &str) -> Result<Option<Option<ChainRule>>>;
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
    fn apply(&self, targets: &[Target]) -> Result<()> {
        let script = crate::plan::nft::render_script(targets);
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

    fn list_chain(&self, table: &str, chain: &str) -> Result<Option<Option<ChainRule>>> {
        let out = std::process::Command::new("nft")
            .args(["-j", "list", "chain", "ip", table, chain])
            .output()
            .map_err(spawn_error)?;
        if out.status.success() {
            let json = String::from_utf8_lossy(&out.stdout);
            return crate::plan::nft::parse_chain_json(&json)
                .map(Some)
                .with_context(|| format!("reading nft -j list chain ip {table} {chain}"));
        }
        let err = String::from_utf8_lossy(&out.stderr);
        if err.contains("No such file or directory") {
            return Ok(None);
        }
        bail!(
            "nft -j list chain ip {table} {chain} failed: {}",
            err.trim_end()
        )
    }
}

/// An nftables of chains held in memory, as data: each target's chain gets the rule
/// `plan::nft::plan_rule` makes of it (none when closed). It records every script (as
/// rendered) and refuses scripts (changing nothing, as the kernel's transaction would) while
/// `refuse` is set.
#[cfg(test)]
#[derive(Default)]
pub struct FakeNft {
    pub refuse: std::sync::atomic::AtomicBool,
    pub scripts: std::sync::Mutex<Vec<String>>,
    pub chains:
        std::sync::Mutex<std::collections::BTreeMap<String, Option<crate::plan::nft::Rule>>>,
}

#[cfg(test)]
impl FakeNft {
    /// The rules of `chain` as the script wrote them (None: no such chain).
    pub fn rules(&self, chain: &str) -> Option<Vec<String>> {
        crate::host::systemd::fake::lock(&self.chains)
            .get(chain)
            .map(|r| r.iter().map(crate::plan::nft::Rule::render).collect())
    }

    /// Every chain gone, as after a reboot.
    pub fn wipe(&self) {
        crate::host::systemd::fake::lock(&self.chains).clear();
    }
}

#[cfg(test)]
impl Nft for FakeNft {
    fn apply(&self, targets: &[Target]) -> Result<()> {
        use std::sync::atomic::Ordering;
        crate::host::systemd::fake::lock(&self.scripts)
            .push(crate::plan::nft::render_script(targets));
        if self.refuse.load(Ordering::SeqCst) {
            bail!("nft -f - failed (exit status: 1):\nError: (fake) refused");
        }
        let mut chains = crate::host::systemd::fake::lock(&self.chains);
        for t in targets {
            let chain = crate::plan::nft::chain_name(&t.service, &t.process);
            chains.insert(chain, crate::plan::nft::plan_rule(t));
        }
        Ok(())
    }

    fn list_chain(&self, _table: &str, chain: &str) -> Result<Option<Option<ChainRule>>> {
        Ok(crate::host::systemd::fake::lock(&self.chains)
            .get(chain)
            .map(|r| r.as_ref().map(crate::plan::nft::Rule::read_back)))
    }
}
