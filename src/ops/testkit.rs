//! Fixtures for the operations' unit tests: definitions from TOML text, a [`Prepared`] made
//! without an image store ([`FakePreparer`]), and units as the fake systemd holds them.

use std::path::PathBuf;

use anyhow::Result;

use crate::config::{parse_sources, Definitions};
use crate::host::dirs::Dirs;
use crate::host::images::{PrepareRequest, Preparer};
use crate::host::FakeHost;
use crate::image::{ImageConfig, ImageRef, ResolvedImage};
use crate::plan::{self, Prepared, ResolvedUser};

/// Definitions parsed from `toml` as if it were /etc/shim/services.toml.
pub fn defs(toml: &str) -> Definitions {
    parse_sources(&[(PathBuf::from("/etc/shim/services.toml"), toml.into())])
        .unwrap_or_else(|e| panic!("test definitions: {e:#}"))
}

/// The made-up manifest digest of `revision`'s image.
fn digest_of(revision: &str) -> String {
    let hex: String = format!("{revision:0<64}")
        .chars()
        .map(|c| if c.is_ascii_hexdigit() { c } else { 'a' })
        .take(64)
        .collect();
    format!("sha256:{}", hex.to_lowercase())
}

/// The deployment the fake preparer gathers for `id` at `revision`: untagged (instances are
/// named `shim-app-web-r1-1`), so that tests about other things can name units simply.
///
/// Its digests are those of the definition and files on disk, as the real preparer's are, so
/// that "changed since deploy" is said only when a test changes them.
pub fn deployment(defs: &Definitions, id: &str, revision: &str) -> plan::Deployment {
    let service = defs.service(id).unwrap_or_else(|e| panic!("{e:#}")).clone();
    let seccomp = crate::host::images::read_seccomp(&service).ok().flatten();
    let secrets = crate::host::images::read_secrets(&service).unwrap_or_default();
    plan::Deployment {
        revision: revision.into(),
        image: format!("oci:/i:{revision}"),
        manifest_digest: digest_of(revision),
        image_config: ImageConfig::default(),
        user: ResolvedUser { uid: 0, gid: 0 },
        seccomp,
        secrets_digest: plan::deployment::secrets_digest(&secrets),
        secret_files: Default::default(),
        process_seccomp: Default::default(),
        generations: Default::default(),
        ports: Default::default(),
        deployed_usec: 0,
        untagged: true,
        definition: service,
    }
}

/// What the real preparer would gather, with a made-up image (digest from the revision).
pub fn prepared(defs: &Definitions, id: &str, revision: &str, dirs: &Dirs) -> Prepared {
    let service = defs.service(id).unwrap_or_else(|e| panic!("{e:#}")).clone();
    Prepared {
        deployment: deployment(defs, id, revision),
        volumes_dir: dirs.volumes(id),
        init_bin: "/usr/bin/tini-static".into(),
        instances_dir: dirs.instances(service.id.as_str()),
        revision: revision.into(),
        image: ResolvedImage {
            reference: ImageRef::parse(&format!("oci:/i:{revision}"))
                .unwrap_or_else(|e| panic!("{e}")),
            manifest_digest: digest_of(revision),
            config: ImageConfig::default(),
            layers: vec![],
        },
        lowers: vec![dirs.state.join("rootfs")],
        secrets: vec![("S".into(), "v".into())],
        secret_file_contents: Default::default(),
        secret_files_dir: dirs.state.join("secrets").join(id).join("files"),
        user: ResolvedUser { uid: 0, gid: 0 },
        user_note: None,
        runtime_bin: "/usr/sbin/runc".into(),
        shim_exe: "/usr/bin/shim".into(),
        host_files: vec![],
        port_range: defs.settings.port_range,
        restrict_devices: true,
        restart: plan::RestartPolicy::StartLimit,
        podman: dirs.podman(),
        seccomp: None,
        kernel: (6, 1),
        service,
    }
}

/// A preparer that needs no image: [`prepared`] for every request; revisions listed in
/// `bad` fail as an image that cannot be resolved would.
#[derive(Default)]
pub struct FakePreparer {
    pub bad: std::sync::Mutex<Vec<String>>,
    /// Gather tagged deployments, as the real preparer does.
    pub tagged: bool,
}

impl Preparer for FakePreparer {
    fn prepare(&self, dirs: &Dirs, req: &PrepareRequest<'_>) -> Result<Prepared> {
        plan::validate_revision(req.revision)
            .map_err(|m| crate::error::BadInput(format!("--revision: {m}")))?;
        if crate::host::systemd::fake::lock(&self.bad)
            .iter()
            .any(|b| b == req.revision)
        {
            anyhow::bail!("resolving image oci:/i:{}: no such tag", req.revision);
        }
        if let Some(d) = req.deployed {
            let mut p = prepared(req.defs, req.id, req.revision, dirs);
            p.service = d.definition.clone();
            p.deployment = d.clone();
            p.restart = req.restart;
            return Ok(p);
        }
        let mut p = prepared(req.defs, req.id, req.revision, dirs);
        p.deployment.untagged = !self.tagged;
        p.restart = req.restart;
        Ok(p)
    }
}

/// A fake host whose preparer is a [`FakePreparer`].
pub fn host() -> FakeHost {
    FakeHost::with(|h| h.images = Box::new(FakePreparer::default()))
}

// A test keeps an `Arc` of each fake it scripts and gives the Host a clone.
impl<T: crate::host::health::HealthChecker> crate::host::health::HealthChecker
    for std::sync::Arc<T>
{
    fn check_all(&self, probes: &[&crate::host::health::Probe]) -> Vec<crate::host::health::Check> {
        (**self).check_all(probes)
    }
}

impl<T: crate::host::nginx::Nginx> crate::host::nginx::Nginx for std::sync::Arc<T> {
    fn test_config(&self) -> Result<()> {
        (**self).test_config()
    }
}

impl<T: crate::host::nft::Nft> crate::host::nft::Nft for std::sync::Arc<T> {
    fn apply(&self, targets: &[crate::plan::nft::Target]) -> Result<()> {
        (**self).apply(targets)
    }
    fn list_chain(
        &self,
        table: &str,
        chain: &str,
    ) -> Result<Option<Option<crate::plan::nft::ChainRule>>> {
        (**self).list_chain(table, chain)
    }
}

impl<T: crate::host::procfs::Procfs> crate::host::procfs::Procfs for std::sync::Arc<T> {
    fn children(&self, pid: u32) -> std::collections::BTreeSet<u32> {
        (**self).children(pid)
    }
    fn port_free(&self, port: u16) -> bool {
        (**self).port_free(port)
    }
    fn has_cap_sys_resource(&self) -> bool {
        (**self).has_cap_sys_resource()
    }
    fn connections(&self, ends: &std::collections::BTreeSet<crate::plan::Endpoint>) -> usize {
        (**self).connections(ends)
    }
    fn nofile_hard(&self) -> u64 {
        (**self).nofile_hard()
    }
}

impl<T: crate::host::clock::Clock> crate::host::clock::Clock for std::sync::Arc<T> {
    fn now(&self) -> std::time::Instant {
        (**self).now()
    }
    fn sleep(&self, d: std::time::Duration) {
        (**self).sleep(d)
    }
    fn wall_usec(&self) -> u64 {
        (**self).wall_usec()
    }
}

impl<T: Preparer> Preparer for std::sync::Arc<T> {
    fn prepare(&self, dirs: &Dirs, req: &PrepareRequest<'_>) -> Result<Prepared> {
        (**self).prepare(dirs, req)
    }
}
