//! Where shim keeps things on the host: `/var/lib/shim` (state that survives a reboot) and
//! `/run/shim` (bundles, locks, probe memory: gone at reboot, like transient units). Every
//! path shim writes is derived from a [`Dirs`], so tests root it in a temporary directory.

use std::path::PathBuf;

use crate::plan;

/// Where shim keeps things on the host. Overridable (hidden env vars) for tests only.
#[derive(Debug, Clone)]
pub struct Dirs {
    /// `/var/lib/shim`: image cache, deployment state.
    pub state: PathBuf,
    /// `/run/shim`: instance bundles and locks; gone at reboot, like transient units.
    pub run: PathBuf,
    /// `/etc/systemd/system`: where shim writes each service's unit (`shim-<id>.service`), so
    /// that `systemctl enable/disable` work on it (see `plan::service_unit`).
    pub units: PathBuf,
}

impl Dirs {
    pub fn from_env() -> Dirs {
        Dirs {
            state: std::env::var_os(crate::plan::fields::env::STATE_DIR)
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from("/var/lib/shim")),
            run: std::env::var_os(crate::plan::fields::env::RUN_DIR)
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from("/run/shim")),
            units: std::env::var_os(crate::plan::fields::env::UNIT_DIR)
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from("/etc/systemd/system")),
        }
    }
    pub fn images(&self) -> PathBuf {
        self.state.join("images")
    }
    /// A service's volumes (`mounts` of type volume): kept across upgrades and reboots.
    pub fn volumes(&self, service: &str) -> PathBuf {
        self.state.join("volumes").join(service)
    }
    pub fn instances(&self, service: &str) -> PathBuf {
        self.run.join("instances").join(service)
    }
    /// podman's store for shim's containers (`runtime = "podman"`): graph root under the state
    /// directory, run root on /run's tmpfs (see docs/podman.md).
    pub fn podman(&self) -> plan::PodmanStorage {
        plan::PodmanStorage {
            root: self.state.join("podman"),
            runroot: self.run.join("podman"),
        }
    }
}
