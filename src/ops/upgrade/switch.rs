//! Pointing each proxied process's nginx upstream at the new revision's instances: the files
//! are rendered purely (`plan::upstream`), written atomically, checked with `nginx -t`, and
//! applied by a reload confirmed by new workers. All or nothing: any failure restores every
//! file this switch wrote (and reloads nginx on them again if the reload itself failed), so
//! nginx keeps serving the old revision. Under `[shim] switch = "nftables"` the kernel's rule
//! is replaced instead, with no reload (`ops::upstreams::switch_nftables`).

use anyhow::{bail, Result};

use crate::host::nginx;
use crate::host::systemd::UnitInfo;
use crate::host::Host;
use crate::plan::Prepared;

/// One proxied process's upstream file as the switch will write it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamFile {
    pub file: std::path::PathBuf,
    pub upstream: String,
    pub text: String,
    pub ports: Vec<u16>,
    /// The process, and what its instances are (the nftables rule's comment names them).
    pub process: String,
    pub revision: String,
    pub deployment: String,
    /// The process's count: how many slots its upstream lists under `switch = "nftables"`.
    pub slots: usize,
}

/// The upstream file of each proxied process, rendered from `units` (the new revision's
/// instances). Instances beyond `count` are left out: they are stopped right after the switch.
pub fn plan_files(p: &Prepared, units: &[UnitInfo]) -> Result<Vec<UpstreamFile>> {
    let mut out = Vec::new();
    for def in p.service.processes.values() {
        let Some(proxy) = &def.proxy else { continue };
        let ports = crate::plan::upstream::upstream_ports(
            units
                .iter()
                .filter(|u| u.process() == Some(def.name.as_str()))
                .filter_map(|u| {
                    Some((
                        u.field(crate::plan::fields::INSTANCE)?.parse().ok()?,
                        u.port()?,
                    ))
                }),
            def.count,
        );
        if ports.is_empty() && def.count > 0 {
            bail!("no running instance of {} to point nginx at", def.name);
        }
        let tag = p.deployment.tag(def.name.as_str());
        let text = crate::plan::upstream::render_upstream(
            &proxy.upstream,
            p.service.id.as_str(),
            def.name.as_str(),
            &p.revision,
            &tag,
            &ports,
        );
        out.push(UpstreamFile {
            file: proxy.file.clone(),
            upstream: proxy.upstream.clone(),
            text,
            ports,
            process: def.name.to_string(),
            revision: p.revision.clone(),
            deployment: tag,
            slots: def.count as usize,
        });
    }
    Ok(out)
}

/// Points nginx at `units` in the host's switch mode; restores everything on failure.
pub fn switch(
    host: &Host,
    p: &Prepared,
    units: &[UnitInfo],
    settings: &crate::config::HostSettings,
    details: &mut Vec<String>,
) -> Result<()> {
    let files = plan_files(p, units)?;
    let nginx_unit = settings.nginx_unit.as_str();
    if settings.switch == crate::config::SwitchMode::Nftables {
        return crate::ops::upstreams::switch_nftables(
            host,
            nginx_unit,
            p.service.id.as_str(),
            &files,
            details,
        );
    }
    let mut backups = Vec::new();
    for f in &files {
        match nginx::write_upstream(&f.file, &f.text) {
            Ok(Some(b)) => {
                details.push(format!(
                    "{}: upstream {} → {:?}",
                    f.file.display(),
                    f.upstream,
                    f.ports
                ));
                backups.push(b);
            }
            Ok(None) => details.push(format!("{}: unchanged", f.file.display())),
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
    details.push(format!("{nginx_unit} reloaded; new workers running"));
    Ok(())
}
