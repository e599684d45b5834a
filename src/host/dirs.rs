//! Where shim keeps things on the host: `/var/lib/shim` (state that survives a reboot) and
//! `/run/shim` (bundles, locks, probe memory: gone at reboot, like transient units). Every
//! path shim writes is derived from a [`Dirs`], so tests root it in a temporary directory.
//!
//! This module is the one place that spells the layout below those roots (the names must not
//! change lightly: hosts have files there, and a renamed file is a lost record):
//!
//! ```text
//! /var/lib/shim/                      state
//!   images/                           the image store (its own layout: image/layout.rs)
//!   state/<id>.json                   each service's deployment record (host/state.rs)
//!   volumes/<id>/<volume>/            volumes
//!   secrets/<id>/<digest>.json, files/   secret snapshots and files (host/secrets.rs)
//!   cron/<id>.json, cron/<id>/<job>.last.json   cron records
//!   podman/                           podman's graph root
//! /run/shim/                          run
//!   instances/<id>/<stem>/            instance bundles (their inside: plan::InstanceDir)
//!   runs/<id>/<stem>/                 one-off bundles
//!   cron/<id>/<job>/                  cron job bundles
//!   supervise/<id>.json, <id>.fast.json   probe memory
//!   locks/<id>.lock, lock             service locks, the host lock
//!   podman/                           podman's run root
//! /etc/systemd/system/shim-<id>.service   units: each service's own unit
//! ```
//!
//! Modules that take a root path rather than a `Dirs` (`StateStore`, `ServiceLock`) call the
//! free functions below, so the names stay here.

use std::path::{Path, PathBuf};

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
    /// Every service's volumes.
    pub fn volumes_root(&self) -> PathBuf {
        self.state.join("volumes")
    }
    /// A service's volumes (`mounts` of type volume): kept across upgrades and reboots.
    pub fn volumes(&self, service: &str) -> PathBuf {
        self.volumes_root().join(service)
    }
    /// Every service's secret snapshots.
    pub fn secrets_root(&self) -> PathBuf {
        self.state.join("secrets")
    }
    /// A service's secret snapshots.
    pub fn secrets(&self, service: &str) -> PathBuf {
        self.secrets_root().join(service)
    }
    /// A secrets snapshot of a service, named by the hex of its digest.
    pub fn secret_snapshot(&self, service: &str, hex: &str) -> PathBuf {
        self.secrets(service).join(format!("{hex}.json"))
    }
    /// Where a service's secret files are kept (bind-mounted into its instances).
    pub fn secret_files(&self, service: &str) -> PathBuf {
        self.secrets(service).join("files")
    }
    /// The cron records: `<id>.json` per service, `<id>/` for its jobs' last results.
    pub fn cron_states(&self) -> PathBuf {
        self.state.join("cron")
    }
    /// A service's cron record (its jobs and their revision).
    pub fn cron_state(&self, service: &str) -> PathBuf {
        self.cron_states().join(format!("{service}.json"))
    }
    /// Where a job's last result is recorded (by its ExecStopPost).
    pub fn cron_last(&self, service: &str, job: &str) -> PathBuf {
        self.cron_states()
            .join(service)
            .join(format!("{job}.last.json"))
    }
    /// A cron job's bundle directory.
    pub fn cron_job(&self, service: &str, job: &str) -> PathBuf {
        self.run.join("cron").join(service).join(job)
    }
    /// Every service's instance bundles.
    pub fn instances_root(&self) -> PathBuf {
        self.run.join("instances")
    }
    pub fn instances(&self, service: &str) -> PathBuf {
        self.instances_root().join(service)
    }
    /// A one-off run's bundle: `/run/shim/runs/<service>/<stem>`.
    pub fn run_bundle(&self, service: &str, stem: &str) -> PathBuf {
        self.run.join("runs").join(service).join(stem)
    }
    /// The probe's memory of a service (crash counts, notes) between runs.
    pub fn probe_memory(&self, service: &str) -> PathBuf {
        self.run.join("supervise").join(format!("{service}.json"))
    }
    /// The probe's fast-path record of a service.
    pub fn probe_fast_record(&self, service: &str) -> PathBuf {
        self.run
            .join("supervise")
            .join(format!("{service}.fast.json"))
    }
    /// A unit file shim writes to `/etc/systemd/system` (each service's own unit).
    pub fn unit_file(&self, name: &str) -> PathBuf {
        self.units.join(name)
    }
    /// The host lock (port allocation, `shim start`).
    pub fn host_lock(&self) -> PathBuf {
        self.run.join("lock")
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

/// The deployment records' directory below the state root (`StateStore`).
pub fn service_states(state_root: &Path) -> PathBuf {
    state_root.join("state")
}

/// A service's deployment record in [`service_states`].
pub fn service_state(states: &Path, service: &str) -> PathBuf {
    states.join(format!("{service}.json"))
}

/// The service locks' directory below the run root (`ServiceLock`).
pub fn locks(run_root: &Path) -> PathBuf {
    run_root.join("locks")
}

/// A service's lock file in [`locks`].
pub fn service_lock(locks: &Path, service: &str) -> PathBuf {
    locks.join(format!("{service}.lock"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Hosts have files at these paths: each is pinned as it is on today's hosts.
    #[test]
    fn layout_is_pinned() {
        let d = Dirs {
            state: PathBuf::from("/var/lib/shim"),
            run: PathBuf::from("/run/shim"),
            units: PathBuf::from("/etc/systemd/system"),
        };
        let p = |p: PathBuf| p.display().to_string();
        assert_eq!(p(d.images()), "/var/lib/shim/images");
        assert_eq!(p(d.volumes("a")), "/var/lib/shim/volumes/a");
        assert_eq!(p(d.secrets("a")), "/var/lib/shim/secrets/a");
        assert_eq!(
            p(d.secret_snapshot("a", "ab")),
            "/var/lib/shim/secrets/a/ab.json"
        );
        assert_eq!(p(d.secret_files("a")), "/var/lib/shim/secrets/a/files");
        assert_eq!(p(d.cron_state("a")), "/var/lib/shim/cron/a.json");
        assert_eq!(p(d.cron_last("a", "k")), "/var/lib/shim/cron/a/k.last.json");
        assert_eq!(p(d.cron_job("a", "k")), "/run/shim/cron/a/k");
        assert_eq!(p(d.instances("a")), "/run/shim/instances/a");
        assert_eq!(p(d.run_bundle("a", "s")), "/run/shim/runs/a/s");
        assert_eq!(p(d.probe_memory("a")), "/run/shim/supervise/a.json");
        assert_eq!(
            p(d.probe_fast_record("a")),
            "/run/shim/supervise/a.fast.json"
        );
        assert_eq!(p(d.host_lock()), "/run/shim/lock");
        assert_eq!(
            p(d.unit_file("shim-a.service")),
            "/etc/systemd/system/shim-a.service"
        );
        assert_eq!(p(d.podman().root), "/var/lib/shim/podman");
        assert_eq!(p(d.podman().runroot), "/run/shim/podman");
        let states = service_states(&d.state);
        assert_eq!(p(service_state(&states, "a")), "/var/lib/shim/state/a.json");
        assert_eq!(
            p(service_lock(&locks(&d.run), "a")),
            "/run/shim/locks/a.lock"
        );
    }
}
