//! The upgrade's switch: each proxied process pointed at the new revision's instances. The
//! targets are planned purely from the healthy units ([`plan_targets`]) and applied through
//! the host's proxy switch (`ops::proxy`), all or nothing: any failure leaves the proxy on
//! the old revision.

use anyhow::{bail, Result};

use crate::host::systemd::UnitInfo;
use crate::host::Host;
use crate::plan::proxy::{upstream_endpoints, Pointer, Target};
use crate::plan::Prepared;

/// The target of each proxied process, from `units` (the new revision's instances).
/// Instances beyond `count` are left out: they are stopped right after the switch.
pub fn plan_targets(p: &Prepared, units: &[UnitInfo]) -> Result<Vec<Target>> {
    let mut out = Vec::new();
    for def in p.service.processes.values() {
        if def.proxy.is_none() {
            continue;
        }
        let endpoints = upstream_endpoints(
            units
                .iter()
                .filter(|u| u.process() == Some(def.name.as_str()))
                .filter_map(|u| {
                    Some((
                        u.field(crate::plan::fields::INSTANCE)?.parse().ok()?,
                        u.endpoint()?,
                    ))
                }),
            def.count,
        );
        if endpoints.is_empty() && def.count > 0 {
            bail!("no running instance of {} to point nginx at", def.name);
        }
        let tag = p.deployment.tag(def.name.as_str());
        out.push(Target {
            process: def.name.to_string(),
            to: Pointer::serving(&p.revision, &tag, endpoints),
        });
    }
    Ok(out)
}

/// Points the proxy at `units` in the host's switch mode; restores everything on failure.
pub fn switch(
    host: &Host,
    p: &Prepared,
    units: &[UnitInfo],
    settings: &crate::config::HostSettings,
    details: &mut Vec<String>,
) -> Result<()> {
    let targets = plan_targets(p, units)?;
    crate::ops::proxy::for_host(host, settings).apply(&p.service, &targets, details)
}
