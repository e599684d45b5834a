//! `shim show`, the dry run: the instances a start would create now, planned with the ports
//! a start would pick (read from systemd when it is reachable, never written) and the
//! secrets redacted. Reads the definitions and the image (verifying it); writes nothing,
//! starts nothing. The CLI prints them with `plan::render_show`.

use std::collections::{BTreeMap, BTreeSet};

use anyhow::Result;

use crate::config::Definitions;
use crate::host::Host;
use crate::plan::{self, InstancePlan};

/// What `shim show` prints.
pub struct Shown {
    pub plans: Vec<InstancePlan>,
    /// Caveats (a user resolved only at start, systemd not reachable).
    pub notes: Vec<String>,
}

/// Plans every instance of `id` at `revision` as a start would, changing nothing.
pub fn plan(host: &Host, defs: &Definitions, id: &str, revision: &str) -> Result<Shown> {
    let prepared = crate::ops::instances::prepare(host, defs, id, revision, false)?;
    let mut notes: Vec<String> = prepared.user_note.iter().cloned().collect();
    notes.extend(health_lines(&prepared.service));
    if let Err(e) = crate::ops::instances::check_device_filter(&prepared) {
        notes.push(format!("a start would be refused: {e}"));
    }
    // Ports as a start would pick them now: reads systemd when reachable, never writes.
    let taken: BTreeSet<u16> = match host.systemd() {
        Ok(sd) => sd
            .list_units(&[crate::plan::names::ALL_UNITS_GLOB.to_string()])
            .unwrap_or_default()
            .iter()
            .filter_map(|u| u.port())
            .collect(),
        Err(_) => {
            notes.push("systemd not reachable: ports are shown as on an empty host".into());
            BTreeSet::new()
        }
    };
    let wanted = prepared.all_instances();
    let needs_port = crate::ops::instances::needing_ports(&prepared, &wanted);
    let ports = plan::allocate_ports(prepared.port_range, needs_port.len(), &taken, |_| false)
        .map_err(anyhow::Error::msg)?;
    let ports: BTreeMap<_, _> = needs_port.into_iter().zip(ports).collect();
    let plans = prepared.plan(
        &crate::host::images::redacted_secrets(&prepared.service),
        &wanted,
        &ports,
    )?;
    Ok(Shown { plans, notes })
}

/// One line per health-checked process: what is checked and how often (what the probe and
/// the upgrade's gate will do).
pub fn health_lines(svc: &crate::config::ServiceDef) -> Vec<String> {
    svc.processes
        .values()
        .filter_map(|d| Some((d, d.health.as_ref()?)))
        .map(|(d, h)| {
            format!(
                "health of {}: {} every {}, timeout {}, unhealthy after {} failures, start period {}",
                d.name,
                h.what(),
                crate::config::format_duration(h.interval),
                crate::config::format_duration(h.timeout),
                h.unhealthy_after,
                crate::config::format_duration(h.start_period),
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::systemd::UnitInfo;
    use crate::ops::testkit;

    #[test]
    fn show_skips_ports_in_use_and_changes_nothing() {
        let defs = testkit::defs(
            "[shim]\nport_range = [30000, 30010]\n[services.app]\nimage = \"oci:/i:{revision}\"\n\
             [services.app.processes.web]\ncount = 2\nport = true\ncommand = [\"/app\"]\n",
        );
        let fh = testkit::host();
        fh.systemd.insert(UnitInfo {
            name: "shim-other-web-x-1.service".into(),
            fields: [(plan::fields::PORT.to_string(), "30000".to_string())].into(),
            ..Default::default()
        });
        let shown = plan(&fh.host, &defs, "app", "r1").unwrap();
        let ports: Vec<_> = shown.plans.iter().map(|p| p.meta().port).collect();
        assert_eq!(ports, vec![Some(30001), Some(30002)]);
        assert!(shown.notes.is_empty());
        assert!(fh.systemd.calls().iter().all(|c| c.starts_with("list ")));
        assert!(!fh.host.dirs.run.exists(), "nothing written");
    }
}
