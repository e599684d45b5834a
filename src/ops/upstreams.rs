//! Pointing nginx at a service's instances, in the host's switch mode (`[shim] switch`):
//! `reload` writes each upstream file and reloads nginx (`host::nginx`); `nftables` keeps each
//! file on the process's stable address (written, checked and reloaded only when it
//! changes: the first deploy) and replaces the kernel's DNAT rule for it in one `nft -f`
//! transaction, with no reload (`plan::nft`). Used by the upgrade's switch, the probe's
//! upstream sync, `shim stop` and recovery; [`pointed`] reads back what nginx points at in
//! either mode, as upstream file texts, for recovery and reconcile.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{Context, Result};

use crate::config::ServiceDef;
use crate::host::nginx;
use crate::host::Host;
use crate::ops::upgrade::switch::UpstreamFile;
use crate::plan::nft::{self, Target};

/// What each proxied process's upstream points at now, by file path, as the upstream file
/// text it stands for: the files themselves under `reload`; under `nftables`, the kernel's
/// rule for the process rendered as that file (None: no chain, as after a reboot).
pub fn pointed(
    host: &Host,
    mode: crate::config::SwitchMode,
    svc: &ServiceDef,
) -> BTreeMap<PathBuf, Option<String>> {
    if mode == crate::config::SwitchMode::Reload {
        return nginx::read_upstream_files(svc);
    }
    let id = svc.id.as_str();
    svc.processes
        .values()
        .filter_map(|d| Some((d, d.proxy.as_ref()?)))
        .map(|(d, px)| {
            let chain = nft::chain_name(id, d.name.as_str());
            let listing = host.nft.list_chain(nft::TABLE, &chain).ok().flatten();
            let text = nft::as_upstream_text(&px.upstream, id, d.name.as_str(), listing.as_deref());
            (px.file.clone(), text)
        })
        .collect()
}

/// The nft target of one planned upstream.
fn target(service: &str, f: &UpstreamFile) -> Target {
    Target {
        service: service.into(),
        process: f.process.clone(),
        revision: f.revision.clone(),
        deployment: f.deployment.clone(),
        ports: f.ports.clone(),
        slots: f.slots,
    }
}

/// The targets that put `files`' processes back where the kernel has them now (a process with
/// no chain yet goes back to closed).
fn current_targets(host: &Host, service: &str, files: &[UpstreamFile]) -> Vec<Target> {
    files
        .iter()
        .map(|f| {
            let chain = nft::chain_name(service, &f.process);
            let now = host.nft.list_chain(nft::TABLE, &chain).ok().flatten();
            let p = now
                .as_deref()
                .and_then(nft::parse_chain)
                .unwrap_or_default();
            Target {
                service: service.into(),
                process: f.process.clone(),
                revision: p.revision,
                deployment: p.deployment,
                ports: p.ports,
                slots: p.slots,
            }
        })
        .collect()
}

/// The nftables switch: the kernel's rules for `files`' processes replaced in one
/// transaction, then each upstream file made to list the stable address (nginx checked and
/// reloaded only if a file changed). If the files cannot be applied, the previous rules are
/// put back, so nothing changed. One line per change goes to `details`.
pub fn switch_nftables(
    host: &Host,
    nginx_unit: &str,
    service: &str,
    files: &[UpstreamFile],
    details: &mut Vec<String>,
) -> Result<()> {
    if files.is_empty() {
        return Ok(());
    }
    let before = current_targets(host, service, files);
    let targets: Vec<Target> = files.iter().map(|f| target(service, f)).collect();
    // Fewer slots than nginx has now (a scale-down): until nginx is reloaded on the smaller
    // file, its extra slots keep a rule (onto the new instances), then the rule shrinks.
    let wide: Vec<Target> = targets
        .iter()
        .zip(&before)
        .map(|(t, b)| Target {
            slots: t.slots.max(b.slots),
            ..t.clone()
        })
        .collect();
    host.nft
        .apply(&nft::render_script(&wide))
        .context("replacing the nftables rule (the previous rule is untouched)")?;
    for f in files {
        details.push(format!(
            "nft {} → {:?} (one transaction, no nginx reload)",
            nft::stable_endpoint(service, &f.process),
            f.ports
        ));
    }
    if let Err(e) = ensure_stable_files(host, nginx_unit, service, files, details) {
        if let Err(e2) = host.nft.apply(&nft::render_script(&before)) {
            return Err(e.context(format!(
                "and restoring the previous nftables rule failed: {e2:#}"
            )));
        }
        return Err(e.context("previous nftables rule restored"));
    }
    if wide != targets {
        host.nft
            .apply(&nft::render_script(&targets))
            .context("shrinking the nftables rule to the new slots")?;
    }
    Ok(())
}

/// Each upstream file on its process's stable address; nginx tested and reloaded if one
/// changed (the first deploy, or the first under `switch = "nftables"`).
fn ensure_stable_files(
    host: &Host,
    nginx_unit: &str,
    service: &str,
    files: &[UpstreamFile],
    details: &mut Vec<String>,
) -> Result<()> {
    let mut backups = Vec::new();
    for f in files {
        let text = nft::render_stable_upstream(&f.upstream, service, &f.process, f.slots);
        match nginx::write_upstream(&f.file, &text) {
            Ok(Some(b)) => {
                details.push(format!(
                    "{}: upstream {} → {} (stable address)",
                    f.file.display(),
                    f.upstream,
                    nft::stable_endpoint(service, &f.process)
                ));
                backups.push(b);
            }
            Ok(None) => {}
            Err(e) => {
                nginx::restore(&backups);
                return Err(e);
            }
        }
    }
    if backups.is_empty() {
        return Ok(());
    }
    nginx::apply(host, nginx_unit, &backups)?;
    details.push(format!(
        "{nginx_unit} reloaded once to take the stable address"
    ));
    Ok(())
}

/// Closes every proxied process of `svc` in the kernel (its chain flushed: the stable
/// address reaches nothing, nginx answers 502). The upstream files stay as they are.
pub fn close_nftables(host: &Host, svc: &ServiceDef) -> Result<Vec<String>> {
    let id = svc.id.as_str();
    let mut targets = Vec::new();
    let mut lines = Vec::new();
    for d in svc.processes.values() {
        let Some(px) = &d.proxy else { continue };
        let chain = nft::chain_name(id, d.name.as_str());
        match host.nft.list_chain(nft::TABLE, &chain)? {
            Some(l) if nft::parse_chain(&l).is_some() => {}
            _ => continue,
        }
        lines.push(format!("closed   {} (nft chain {chain})", px.upstream));
        targets.push(Target {
            service: id.into(),
            process: d.name.to_string(),
            revision: String::new(),
            deployment: String::new(),
            ports: Vec::new(),
            slots: d.count as usize,
        });
    }
    if !targets.is_empty() {
        host.nft
            .apply(&nft::render_script(&targets))
            .context("closing the upstream in nftables failed")?;
    }
    Ok(lines)
}
