//! The nftables switch (`[shim] switch = "nftables"`): each proxied process's upstream file
//! lists its stable address (written, checked and reloaded only when it changes: the first
//! deploy, or a new count), and the kernel's DNAT rule for that address is replaced in one
//! `nft -f` transaction, with no reload (`plan::nft` plans the rules as data). If the files
//! cannot be applied, the previous rules are put back. What serves is read back from the
//! kernel's rules (`nft -j list chain`).

use anyhow::{Context, Result};

use super::{check_file_owned, proxied, ProxySwitch};
use crate::config::ServiceDef;
use crate::host::nginx::{apply_files, Reload};
use crate::host::Host;
use crate::plan::nft::{self, ChainRule};
use crate::plan::proxy::{Pointed, Target};

/// The kernel's rules, behind nginx's stable addresses; `unit` is reloaded when a file
/// changes.
pub struct Nftables<'h> {
    pub host: &'h Host,
    pub unit: &'h str,
}

impl Nftables<'_> {
    /// The rule of `process`'s chain (None: no chain; Some(None): flushed). An error reads
    /// as no chain: the callers compare, and an unknown chain is rewritten.
    fn chain(&self, service: &str, process: &str) -> Option<Option<ChainRule>> {
        let chain = nft::chain_name(service, process);
        self.host.nft.list_chain(nft::TABLE, &chain).ok().flatten()
    }

    /// The nft targets that put `targets`' processes back where the kernel has them now (a
    /// process with no chain yet goes back to closed).
    fn current(&self, service: &str, targets: &[nft::Target]) -> Vec<nft::Target> {
        targets
            .iter()
            .map(|t| {
                let r = self
                    .chain(service, &t.process)
                    .flatten()
                    .unwrap_or_default();
                nft::Target {
                    service: service.into(),
                    process: t.process.clone(),
                    revision: r.revision,
                    deployment: r.deployment,
                    endpoints: r.endpoints,
                    slots: r.slots,
                }
            })
            .collect()
    }

    /// Each upstream file of `targets` on its process's stable address; nginx tested and
    /// reloaded if one changed (the first deploy, or the first under `switch = "nftables"`).
    fn ensure_stable_files(
        &self,
        svc: &ServiceDef,
        targets: &[nft::Target],
        details: &mut Vec<String>,
    ) -> Result<()> {
        let id = svc.id.as_str();
        let mut files = Vec::new();
        let mut lines = Vec::new();
        for t in targets {
            let Some((px, _)) = proxied(svc, &t.process) else {
                continue;
            };
            let text = nft::render_stable_upstream(&px.upstream, id, &t.process, t.slots);
            files.push((px.file.as_path(), text));
            lines.push(format!(
                "{}: upstream {} → {} (stable address)",
                px.file.display(),
                px.upstream,
                nft::stable_endpoint(id, &t.process)
            ));
        }
        let changed = apply_files(self.host, self.unit, &files, Reload::Always)?;
        details.extend(
            lines
                .into_iter()
                .zip(&changed)
                .filter(|(_, c)| **c)
                .map(|(l, _)| l),
        );
        if changed.contains(&true) {
            details.push(format!(
                "{} reloaded once to take the stable address",
                self.unit
            ));
        }
        Ok(())
    }
}

impl ProxySwitch for Nftables<'_> {
    fn preflight(&self, svc: &ServiceDef, process: &str) -> Result<()> {
        check_file_owned(svc, process)
    }

    fn pointed(&self, svc: &ServiceDef) -> Pointed {
        let id = svc.id.as_str();
        svc.processes
            .values()
            .filter(|d| d.proxy.is_some())
            .map(|d| {
                let rule = self.chain(id, d.name.as_str());
                let pointer = rule.map(|r| ChainRule::pointer(r.as_ref()));
                (d.name.to_string(), pointer)
            })
            .collect()
    }

    /// The kernel's rules for `targets`' processes replaced in one transaction, then each
    /// upstream file made to list the stable address. If the files cannot be applied, the
    /// previous rules are put back, so nothing changed.
    fn apply(&self, svc: &ServiceDef, targets: &[Target], details: &mut Vec<String>) -> Result<()> {
        let id = svc.id.as_str();
        let targets: Vec<nft::Target> = targets
            .iter()
            .filter_map(|t| {
                let (_, count) = proxied(svc, &t.process)?;
                Some(nft::Target::new(id, &t.process, &t.to, count as usize))
            })
            .collect();
        if targets.is_empty() {
            return Ok(());
        }
        let before = self.current(id, &targets);
        // Fewer slots than nginx has now (a scale-down): until nginx is reloaded on the smaller
        // file, its extra slots keep a rule (onto the new instances), then the rule shrinks.
        let wide: Vec<nft::Target> = targets
            .iter()
            .zip(&before)
            .map(|(t, b)| nft::Target {
                slots: t.slots.max(b.slots),
                ..t.clone()
            })
            .collect();
        self.host
            .nft
            .apply(&wide)
            .context("replacing the nftables rule (the previous rule is untouched)")?;
        for t in &targets {
            details.push(format!(
                "nft {} → {} (one transaction, no nginx reload)",
                nft::stable_endpoint(id, &t.process),
                t.pointer().describe()
            ));
        }
        if let Err(e) = self.ensure_stable_files(svc, &targets, details) {
            if let Err(e2) = self.host.nft.apply(&before) {
                return Err(e.context(format!(
                    "and restoring the previous nftables rule failed: {e2:#}"
                )));
            }
            return Err(e.context("previous nftables rule restored"));
        }
        if wide != targets {
            self.host
                .nft
                .apply(&targets)
                .context("shrinking the nftables rule to the new slots")?;
        }
        Ok(())
    }

    /// Every proxied process with a rule closed in the kernel (its chain flushed: the stable
    /// address reaches nothing, nginx answers 502). The upstream files stay as they are.
    fn close(&self, svc: &ServiceDef) -> Result<Vec<String>> {
        let id = svc.id.as_str();
        let mut targets = Vec::new();
        let mut lines = Vec::new();
        for d in svc.processes.values() {
            let Some(px) = &d.proxy else { continue };
            let chain = nft::chain_name(id, d.name.as_str());
            if !matches!(self.host.nft.list_chain(nft::TABLE, &chain)?, Some(Some(_))) {
                continue;
            }
            lines.push(format!("closed   {} (nft chain {chain})", px.upstream));
            targets.push(nft::Target::new(
                id,
                d.name.as_str(),
                &crate::plan::proxy::Pointer::Closed,
                d.count as usize,
            ));
        }
        if !targets.is_empty() {
            self.host
                .nft
                .apply(&targets)
                .context("closing the upstream in nftables failed")?;
        }
        Ok(lines)
    }

    /// The kernel's rule, replaced atomically, already says what serves: nothing to do.
    fn settle(&self, _svc: &ServiceDef) -> Result<Option<String>> {
        Ok(None)
    }
}
