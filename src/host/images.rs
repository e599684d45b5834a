//! Gathering what a plan needs from the host, before anything changes: the image resolved,
//! verified and unpacked (the `image` module's store), the env files read, the user resolved
//! in the image's /etc/passwd, the runtime found. Behind [`Preparer`], so that the operations'
//! tests hand them a [`Prepared`] without an image store.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::config::{parse_env_file, Definitions, ServiceDef};
use crate::error::BadInput;
use crate::host::dirs::Dirs;
use crate::image::{ImageConfig, ImageRef, ImageStore};
use crate::plan::{self, Prepared, ResolvedUser};

/// What [`Preparer::prepare`] is asked for.
pub struct PrepareRequest<'a> {
    pub defs: &'a Definitions,
    pub id: &'a str,
    pub revision: &'a str,
    /// False for a dry run: the image is read and verified, but not unpacked.
    pub unpack: bool,
    /// How systemd spaces out restarts on this host (from its version).
    pub restart: plan::RestartPolicy,
    /// Whether crun may be given its device filter (see `PlanContext::restrict_devices`).
    pub cap_sys_resource: bool,
}

/// Gathers the host facts for one service at one revision.
pub trait Preparer: Send + Sync {
    fn prepare(&self, dirs: &Dirs, req: &PrepareRequest<'_>) -> Result<Prepared>;
}

/// A preparer for tests that do not reach the image store.
#[cfg(test)]
pub struct FailingPreparer;

#[cfg(test)]
impl Preparer for FailingPreparer {
    fn prepare(&self, _dirs: &Dirs, req: &PrepareRequest<'_>) -> Result<Prepared> {
        anyhow::bail!(
            "no image store in this test (asked for {} at {})",
            req.id,
            req.revision
        )
    }
}

/// The real one: the image store under `dirs.images()`, files, `$PATH`.
pub struct StorePreparer;

impl Preparer for StorePreparer {
    fn prepare(&self, dirs: &Dirs, req: &PrepareRequest<'_>) -> Result<Prepared> {
        prepare(dirs, req)
    }
}

fn read_secrets(svc: &ServiceDef) -> Result<Vec<(String, String)>> {
    let mut out = Vec::new();
    for f in &svc.env_files {
        let text = std::fs::read_to_string(f).map_err(|e| {
            BadInput(format!(
                "{}: services.{}.env_files: cannot read {}: {e}",
                svc.source.display(),
                svc.id,
                f.display()
            ))
        })?;
        out.extend(parse_env_file(f, &text)?);
    }
    Ok(out)
}

fn resolve_image_user(
    svc: &ServiceDef,
    image: &ImageConfig,
    rootfs: &Path,
    unpacked: bool,
) -> Result<(ResolvedUser, Option<String>)> {
    let spec_text = svc
        .user
        .clone()
        .or_else(|| image.user.clone().filter(|u| !u.is_empty()))
        .unwrap_or_else(|| "0:0".into());
    let spec = plan::parse_user_spec(&spec_text)
        .map_err(|m| BadInput(format!("user {spec_text:?}: {m}")))?;
    // The image's own files, read inside its root only and bounded (a hostile image may
    // ship symlinks to host files, a FIFO or a device there).
    let read = |p: &str| -> Result<String> {
        crate::host::fsutil::read_in_root(rootfs, p, 1 << 20)
            .map(Option::unwrap_or_default)
            .map_err(|e| anyhow::Error::from(BadInput(format!("{e:#}"))))
    };
    if !unpacked && !rootfs.is_dir() {
        // Dry run with the image not unpacked yet: numbers are fine, names must wait.
        let numeric = plan::resolve_user(&spec, "", "");
        return Ok(match numeric {
            Ok(u) => (u, None),
            Err(_) => (
                ResolvedUser { uid: 0, gid: 0 },
                Some(format!(
                    "user {spec_text:?} is resolved from the image's /etc/passwd at start"
                )),
            ),
        });
    }
    let u = plan::resolve_user(&spec, &read("etc/passwd")?, &read("etc/group")?).map_err(|m| {
        BadInput(format!(
            "{}: services.{}.user: {m}",
            svc.source.display(),
            svc.id
        ))
    })?;
    Ok((u, None))
}

/// The path of the running shim binary, for the units' ExecStartPre/ExecStopPost. If the
/// package was upgraded while this command runs, /proc/self/exe says "… (deleted)": the new
/// binary at the same path is the one units should run.
pub fn shim_binary() -> Result<PathBuf> {
    let exe = std::env::current_exe().context("finding the shim binary")?;
    let text = exe.to_string_lossy();
    Ok(match text.strip_suffix(" (deleted)") {
        Some(p) => PathBuf::from(p),
        None => exe,
    })
}

/// What can be checked of a request without touching anything: the revision is one, the
/// service is defined, its image reference with the revision filled in (returned as written
/// and parsed) parses.
fn check_request<'d>(
    defs: &'d Definitions,
    id: &str,
    revision: &str,
) -> Result<(&'d ServiceDef, String, ImageRef)> {
    plan::validate_revision(revision).map_err(|m| BadInput(format!("--revision: {m}")))?;
    let svc = defs.service(id)?;
    let reference = svc.image_for(revision)?;
    let image_ref = ImageRef::parse(&reference).map_err(|e| {
        BadInput(format!(
            "{}:{}: services.{}.image: {e}",
            svc.source.display(),
            svc.image_line.unwrap_or(0),
            svc.id
        ))
    })?;
    Ok((svc, reference, image_ref))
}

/// Where Debian's golang-github-containers-common puts the profile podman uses by default.
pub const DEFAULT_SECCOMP: &str = "/usr/share/containers/seccomp.json";

/// The text of the service's seccomp profile; None for `unconfined`.
fn read_seccomp(svc: &ServiceDef) -> Result<Option<String>> {
    let (path, missing) = match &svc.seccomp {
        crate::config::Seccomp::Unconfined => return Ok(None),
        crate::config::Seccomp::Default => (
            PathBuf::from(DEFAULT_SECCOMP),
            format!(
                "the default seccomp profile {DEFAULT_SECCOMP} is not installed (Debian: apt install golang-github-containers-common); or set seccomp = \"unconfined\" in services.{} ({}) to run without one",
                svc.id,
                svc.source.display()
            ),
        ),
        crate::config::Seccomp::Profile(p) => (
            p.clone(),
            format!(
                "{}: services.{}.seccomp: cannot read {}",
                svc.source.display(),
                svc.id,
                p.display()
            ),
        ),
    };
    match std::fs::read_to_string(&path) {
        Ok(t) => Ok(Some(t)),
        Err(e) => Err(anyhow::Error::from(BadInput(format!("{missing}: {e}")))),
    }
}

/// The running kernel's (major, minor), (0, 0) if it cannot be read.
fn kernel_version() -> (u32, u32) {
    let Ok(u) = nix::sys::utsname::uname() else {
        return (0, 0);
    };
    let r = u.release().to_string_lossy().to_string();
    let mut it = r
        .split(|c: char| !c.is_ascii_digit())
        .map(|p| p.parse().unwrap_or(0));
    (it.next().unwrap_or(0), it.next().unwrap_or(0))
}

/// Secrets with their values replaced by where they come from, for display.
pub fn redacted_secrets(svc: &ServiceDef) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for f in &svc.env_files {
        let text = std::fs::read_to_string(f).unwrap_or_default();
        for (k, _) in parse_env_file(f, &text).unwrap_or_default() {
            out.push((k, format!("<secret from {}>", f.display())));
        }
    }
    out
}

/// Gathers the host facts for `req.id` at `req.revision`. With `unpack` false (dry run)
/// nothing is written: the image is read and verified, but not unpacked.
fn prepare(dirs: &Dirs, req: &PrepareRequest<'_>) -> Result<Prepared> {
    let (defs, id, revision, unpack) = (req.defs, req.id, req.revision, req.unpack);
    let (svc, reference, image_ref) = check_request(defs, id, revision)?;
    let svc = svc.clone();
    let secrets = read_secrets(&svc)?;
    let runtime_bin = crate::host::runtime::runtime_binary(svc.runtime)?;
    let store = ImageStore::with_settings(dirs.images(), defs.settings.registry())
        .with_progress(crate::image::progress::auto());
    let image = store
        .resolve(&image_ref)
        .with_context(|| format!("resolving image {reference}"))?;
    let rootfs = if unpack {
        store
            .ensure_rootfs(&image)
            .with_context(|| format!("unpacking image {reference}"))?
    } else {
        crate::image::Digest::parse(&image.manifest_digest)
            .map(|d| store.rootfs_path(&d))
            .unwrap_or_default()
    };
    let (user, user_note) = resolve_image_user(&svc, &image.config, &rootfs, unpack)?;
    let shim_exe = shim_binary()?;
    let host_files = ["/etc/resolv.conf", "/etc/hosts"]
        .iter()
        .map(PathBuf::from)
        .filter(|p| p.is_file())
        .collect();
    let seccomp = read_seccomp(&svc)?;
    Ok(Prepared {
        seccomp,
        kernel: kernel_version(),
        instances_dir: dirs.instances(svc.id.as_str()),
        revision: revision.to_string(),
        image,
        rootfs,
        secrets,
        user,
        user_note,
        runtime_bin,
        shim_exe,
        host_files,
        port_range: defs.settings.port_range,
        restrict_devices: svc.runtime != crate::config::Runtime::Crun || req.cap_sys_resource,
        restart: req.restart,
        podman: dirs.podman(),
        service: svc,
    })
}
