//! Host adapters: everything that touches the machine, each behind a trait with its fake
//! beside it. systemd over D-Bus (`systemd`, the only D-Bus code), the nginx binary and its
//! upstream files (`nginx`), health checks (`health`: HTTP and TCP in `http_check`, commands in
//! `exec_check`), the journal (`journal`),
//! `/proc` (`procfs`), time (`clock`), and the image store and files a plan is gathered from
//! (`images`). Path-based adapters (the state store, locks, the OCI runtime's directories)
//! take their roots from [`dirs::Dirs`], which tests point at a temporary directory.
//!
//! [`Host`] bundles them. `main` builds the one real Host; operations take `&Host` and never
//! construct an adapter themselves. systemd is connected on first use, through the connector
//! `main` gives: a command that never asks systemd (the probe's fast path, `shim show` on a
//! build machine, the units' own `shim instance` hooks) never connects.

pub mod clock;
pub mod dirs;
pub mod exec_check;
pub mod fsutil;
pub mod health;
pub mod http_check;
pub mod images;
pub mod journal;
pub mod lock;
pub mod nft;
pub mod nginx;
pub mod procfs;
pub mod runtime;
pub mod secrets;
pub mod state;
pub mod systemd;

use std::sync::OnceLock;

use self::systemd::{SharedSystemd, Systemd, SystemdError};

/// How the one systemd connection is made (given by `main`; a test gives its fake).
pub type Connector = Box<dyn Fn() -> Result<SharedSystemd, SystemdError> + Send + Sync>;

/// The machine, as the operations see it.
pub struct Host {
    connect: Connector,
    systemd: OnceLock<SharedSystemd>,
    pub nginx: Box<dyn nginx::Nginx>,
    pub nft: Box<dyn nft::Nft>,
    pub health: Box<dyn health::HealthChecker>,
    pub journal: Box<dyn journal::Journal>,
    pub procfs: Box<dyn procfs::Procfs>,
    pub clock: Box<dyn clock::Clock>,
    pub images: Box<dyn images::Preparer>,
    pub dirs: dirs::Dirs,
}

impl Host {
    /// The real host: adapters over the machine, systemd through `connect`.
    pub fn real(connect: Connector, dirs: dirs::Dirs) -> Host {
        Host {
            connect,
            systemd: OnceLock::new(),
            nginx: Box::new(nginx::NginxBinary),
            nft: Box::new(nft::NftBinary),
            health: Box::new(health::RealHealthChecker),
            journal: Box::new(journal::Journald),
            procfs: Box::new(procfs::RealProcfs),
            clock: Box::new(clock::SystemClock),
            images: Box::new(images::StorePreparer),
            dirs,
        }
    }

    /// systemd, connected on first use; later calls share the connection.
    pub fn systemd(&self) -> Result<&dyn Systemd, SystemdError> {
        Ok(self.shared_systemd()?.as_ref())
    }

    /// The same connection as a shared handle, for a thread of the operation's own.
    pub fn shared_systemd(&self) -> Result<&SharedSystemd, SystemdError> {
        if let Some(sd) = self.systemd.get() {
            return Ok(sd);
        }
        let sd = (self.connect)()?;
        Ok(self.systemd.get_or_init(|| sd))
    }

    /// The deployment state store (`/var/lib/shim/state`).
    pub fn state(&self) -> state::StateStore {
        state::StateStore::new(&self.dirs.state)
    }
}

/// A host made of fakes, rooted in a temporary directory, for unit tests. The fields hold
/// the fakes so that a test can script them and read back what was done.
#[cfg(test)]
pub struct FakeHost {
    pub host: Host,
    pub systemd: std::sync::Arc<systemd::FakeSystemd>,
    /// The nftables the host's `nft` field applies scripts to.
    pub nft: std::sync::Arc<nft::FakeNft>,
    pub tmp: tempfile::TempDir,
}

#[cfg(test)]
impl FakeHost {
    pub fn new() -> FakeHost {
        Self::with(|_| {})
    }

    /// A fake host whose adapters `f` may replace (e.g. a scripted preparer).
    pub fn with(f: impl FnOnce(&mut Host)) -> FakeHost {
        let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
        let sd = std::sync::Arc::new(systemd::FakeSystemd::default());
        let shared: SharedSystemd = sd.clone();
        let fake_nft = std::sync::Arc::new(nft::FakeNft::default());
        let mut host = Host {
            connect: Box::new(move || Ok(shared.clone())),
            systemd: OnceLock::new(),
            nginx: Box::new(nginx::FakeNginx::default()),
            nft: Box::new(fake_nft.clone()),
            health: Box::new(health::FakeHealthChecker::default()),
            journal: Box::new(journal::FakeJournal),
            procfs: Box::new(procfs::FakeProcfs::default()),
            clock: Box::new(clock::FakeClock::default()),
            images: Box::new(images::FailingPreparer),
            dirs: dirs::Dirs {
                state: tmp.path().join("state"),
                run: tmp.path().join("run"),
                units: tmp.path().join("units"),
            },
        };
        sd.unit_dirs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(tmp.path().join("units"));
        f(&mut host);
        FakeHost {
            host,
            systemd: sd,
            nft: fake_nft,
            tmp,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::Arc;

    #[test]
    fn systemd_is_connected_once_on_first_use_and_shared() {
        let connects = Arc::new(AtomicU32::new(0));
        let fake = Arc::new(systemd::FakeSystemd::default());
        let (c, f) = (connects.clone(), fake.clone());
        let mut fh = FakeHost::new();
        fh.host.connect = Box::new(move || {
            c.fetch_add(1, Ordering::SeqCst);
            Ok(f.clone() as SharedSystemd)
        });
        assert_eq!(
            connects.load(Ordering::SeqCst),
            0,
            "building a Host connects nothing"
        );
        fh.host.systemd().unwrap().version().unwrap();
        fh.host.systemd().unwrap().list_units(&[]).unwrap();
        assert_eq!(connects.load(Ordering::SeqCst), 1);
        assert_eq!(fake.calls(), vec!["list ".to_string()]);
        assert!(fh.host.dirs.state.starts_with(fh.tmp.path()));
    }

    #[test]
    fn a_failed_connection_is_an_error_each_time_not_a_panic() {
        let mut fh = FakeHost::new();
        fh.host.connect = Box::new(|| Err(SystemdError::Connect("no bus".into())));
        for _ in 0..2 {
            let e = fh
                .host
                .systemd()
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(e.contains("no bus"), "{e}");
        }
    }

    #[test]
    fn the_fake_systemd_edits_units_in_place() {
        let fh = FakeHost::new();
        fh.systemd.insert(systemd::UnitInfo {
            name: "a.service".into(),
            active_state: "active".into(),
            ..Default::default()
        });
        fh.systemd
            .edit("a.service", |u| u.active_state = "failed".into());
        fh.systemd
            .edit("missing.service", |u| u.active_state = "x".into());
        let units = fh
            .host
            .systemd()
            .unwrap()
            .list_units(&["*".into()])
            .unwrap();
        assert_eq!(units.len(), 1);
        assert_eq!(
            units[0].active_state,
            crate::host::systemd::ActiveState::Failed
        );
    }
}
