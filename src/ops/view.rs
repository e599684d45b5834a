//! What of a service is on this host: one observation of its units, and the one meaning of
//! "running", "present" and "belongs to". Flow: [`ServiceView::observe`] lists the service's
//! units once (`plan::names::service_units_glob`, one `ListUnitsByPatterns` and one property read per unit) and
//! keeps those whose recorded identity (`SHIM_SERVICE`) is the service, never judging by
//! name (`a`'s pattern also matches `a-b`'s units). The decisions then ask the view:
//!
//! - **running**: active, sub-state running, with a main process ([`UnitInfo::is_running`]);
//!   what the probe checks, the health wait waits for and status shows as up;
//! - **present**: running or on its way up (activating, between automatic restarts). A unit
//!   that failed or is inactive (left behind by a stop or a crash) or is on its way down is
//!   never present: start, reconcile, upgrade and volume rm do not count it; a start resets
//!   it and starts a fresh instance in its place;
//! - **belongs to a deployment**: its `SHIM_REVISION`, `SHIM_PROCESS` and `SHIM_DEPLOYMENT`
//!   fields ([`of_deployment`], [`owned_by`]).
//!
//! The states themselves are classified once, in `host::systemd::state` ([`Phase`]).
//! Why in `ops/` and not `host/`: ownership needs the deployment records (`plan`) and the
//! decisions that use it are the operations'; the host adapter only reports what systemd
//! says.

use std::collections::BTreeSet;

use anyhow::Result;

#[cfg(doc)]
use crate::host::systemd::Phase;
use crate::host::systemd::{Systemd, UnitInfo};
use crate::plan::{self, Deployment};

/// The units of one service, from one listing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServiceView {
    units: Vec<UnitInfo>,
}

impl ServiceView {
    /// Lists the units of service `id` once (see the module docs).
    pub fn observe(sd: &dyn Systemd, id: &str) -> Result<ServiceView> {
        let all = sd.list_units(&[plan::names::service_units_glob(id)])?;
        Ok(ServiceView::of(id, all))
    }

    /// The units of service `id` among `units` (a wider listing, e.g. every `shim-*` unit).
    pub fn of(id: &str, units: impl IntoIterator<Item = UnitInfo>) -> ServiceView {
        ServiceView {
            units: units.into_iter().filter(|u| of_service(u, id)).collect(),
        }
    }

    /// Every unit of the service, whatever its state (what a teardown stops).
    pub fn units(&self) -> &[UnitInfo] {
        &self.units
    }

    pub fn into_units(self) -> Vec<UnitInfo> {
        self.units
    }

    /// No unit of the service is loaded at all.
    pub fn is_empty(&self) -> bool {
        self.units.is_empty()
    }

    /// The names of every unit of the service.
    pub fn names(&self) -> BTreeSet<String> {
        self.units.iter().map(|u| u.name.clone()).collect()
    }

    /// The present units (running or on their way up).
    pub fn present(&self) -> impl Iterator<Item = &UnitInfo> {
        self.units.iter().filter(|u| u.is_present())
    }

    /// Whether any unit is present.
    pub fn any_present(&self) -> bool {
        self.present().next().is_some()
    }
}

/// Whether `u` is a unit of service `id`, by its recorded `SHIM_SERVICE`.
pub fn of_service(u: &UnitInfo, id: &str) -> bool {
    u.field(plan::fields::SERVICE) == Some(id)
}

/// Whether `u` is an instance of deployment `d`: its revision, and its process's tag.
pub fn of_deployment(u: &UnitInfo, d: &Deployment) -> bool {
    d.owns(u.revision(), u.process().unwrap_or(""), u.deployment())
}

/// Whether `u` is an instance of deployment `d` at `revision`, or, with no deployment
/// recorded (a service deployed by an older shim), an untagged instance of `revision`.
pub fn owned_by(d: Option<&Deployment>, revision: &str, u: &UnitInfo) -> bool {
    match d {
        Some(d) => of_deployment(u, d),
        None => u.revision() == revision && u.deployment().is_empty(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::systemd::FakeSystemd;

    fn unit(name: &str, service: &str, state: &str, sub: &str, pid: u32) -> UnitInfo {
        UnitInfo {
            name: name.into(),
            active_state: state.into(),
            sub_state: sub.into(),
            main_pid: pid,
            fields: [(plan::fields::SERVICE.to_string(), service.to_string())].into(),
            ..Default::default()
        }
    }

    #[test]
    fn a_view_holds_the_services_units_by_identity_and_classifies_them_once() {
        let sd = FakeSystemd::default();
        for u in [
            unit("shim-a-web-r1-1.service", "a", "active", "running", 7),
            unit(
                "shim-a-web-r1-2.service",
                "a",
                "activating",
                "auto-restart",
                0,
            ),
            unit("shim-a-web-r1-3.service", "a", "failed", "failed", 0),
            unit(
                "shim-a-web-r1-4.service",
                "a",
                "deactivating",
                "stop-sigterm",
                9,
            ),
            // Service a-b's unit matches a's pattern: not a's.
            unit("shim-a-b-web-r1-1.service", "a-b", "active", "running", 8),
        ] {
            sd.insert(u);
        }
        let v = ServiceView::observe(&sd, "a").unwrap();
        let names = |it: Vec<&UnitInfo>| -> Vec<String> {
            it.into_iter().map(|u| u.name[11..].to_string()).collect()
        };
        assert_eq!(v.units().len(), 4);
        let running = v.units().iter().filter(|u| u.is_running()).collect();
        assert_eq!(names(running), ["r1-1.service"]);
        assert_eq!(
            names(v.present().collect()),
            ["r1-1.service", "r1-2.service"]
        );
        let left = v.units().iter().filter(|u| u.is_left()).collect();
        assert_eq!(names(left), ["r1-3.service"]);
        assert!(v.any_present());
    }
}
