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
    /// Start from this recorded deployment (its pinned image digest, frozen definition and
    /// secrets snapshot) instead of reading the definitions, env_files and image tag afresh.
    pub deployed: Option<&'a plan::Deployment>,
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

pub(crate) fn read_secrets(svc: &ServiceDef) -> Result<Vec<(String, String)>> {
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
    lowers: &[PathBuf],
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
    let top_first: Vec<PathBuf> = lowers.iter().rev().cloned().collect();
    let read = |p: &str| -> Result<String> {
        let text = match lowers {
            [root] => crate::host::fsutil::read_in_root(root, p, 1 << 20),
            _ => crate::image::read_in_layers(&top_first, p, 1 << 20),
        };
        text.map(Option::unwrap_or_default)
            .map_err(|e| anyhow::Error::from(BadInput(format!("{e:#}"))))
    };
    let present = !lowers.is_empty() && lowers.iter().all(|l| l.is_dir());
    if !unpacked && !present {
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

/// The static init bound into containers with `init = true`: Debian's tini package.
pub const INIT_BIN: &str = "/usr/bin/tini-static";

/// `init = true` needs the init on this host.
fn check_init(svc: &ServiceDef) -> Result<()> {
    match svc.processes.values().find(|p| p.init) {
        Some(p) if !Path::new(INIT_BIN).is_file() => Err(BadInput(format!(
            "{}: services.{}.processes.{}.init: {INIT_BIN} is not installed (Debian: apt install tini)",
            svc.source.display(),
            svc.id,
            p.name
        ))
        .into()),
        _ => Ok(()),
    }
}

/// Each bind mount's source must exist on this host (checked at every prepare: a start from a
/// record too, as the host may have changed).
fn check_mount_sources(svc: &ServiceDef) -> Result<()> {
    for p in svc.processes.values() {
        for m in &p.mounts {
            if let crate::config::MountDef::Bind { source, .. } = m {
                if !source.exists() {
                    return Err(BadInput(format!(
                        "{}: services.{}.processes.{}.mounts: bind source {} does not exist on this host",
                        svc.source.display(),
                        svc.id,
                        p.name,
                        source.display()
                    ))
                    .into());
                }
            }
        }
    }
    Ok(())
}

/// What of a deployment the definitions and files on disk would change now: "definition"
/// (the service's definition or its seccomp profile's text) and "secrets" (the env_files'
/// contents). The image tag is not looked up (that needs the registry); a file that cannot be
/// read counts as a change (the upgrade then says why).
pub fn changes_on_disk(svc: &ServiceDef, d: &plan::Deployment) -> Vec<&'static str> {
    let mut out = Vec::new();
    let seccomp = read_seccomp(svc);
    let own = read_process_seccomp(svc);
    let same_def = seccomp.as_ref().is_ok_and(|s| {
        own.as_ref().is_ok_and(|o| {
            plan::deployment::definition_digest(svc, s.as_deref(), o) == d.definition_digest()
        })
    });
    if !same_def {
        out.push("definition");
    }
    let same_files = crate::host::secrets::read_files(svc)
        .is_ok_and(|f| crate::host::secrets::digests(&f) == d.secret_files);
    let same_secrets = same_files
        && read_secrets(svc)
            .is_ok_and(|s| plan::deployment::secrets_digest(&s) == d.secrets_digest);
    if !same_secrets {
        out.push("secrets");
    }
    if plan::deployment::counts(svc) != plan::deployment::counts(&d.definition) {
        out.push("count");
    }
    out
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
pub(crate) fn read_seccomp(svc: &ServiceDef) -> Result<Option<String>> {
    read_profile(svc, &svc.seccomp, &format!("services.{}.seccomp", svc.id))
}

/// The profile text of each process with a `seccomp` of its own.
pub(crate) fn read_process_seccomp(
    svc: &ServiceDef,
) -> Result<std::collections::BTreeMap<String, Option<String>>> {
    svc.processes
        .values()
        .filter_map(|p| Some((p, p.seccomp.as_ref()?)))
        .map(|(p, s)| {
            let key = format!("services.{}.processes.{}.seccomp", svc.id, p.name);
            Ok((p.name.to_string(), read_profile(svc, s, &key)?))
        })
        .collect()
}

/// The text of profile `which` (None: unconfined); `key` names it in errors.
fn read_profile(
    svc: &ServiceDef,
    which: &crate::config::Seccomp,
    key: &str,
) -> Result<Option<String>> {
    let (path, missing) = match which {
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
                "{}: {key}: cannot read {}",
                svc.source.display(),
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

/// Gathers the host facts for `req.id` at `req.revision` (or from `req.deployed`). With
/// `unpack` false (dry run) nothing is written: the image is read and verified, but not
/// unpacked.
fn prepare(dirs: &Dirs, req: &PrepareRequest<'_>) -> Result<Prepared> {
    if let Some(d) = req.deployed {
        return prepare_deployed(dirs, req, d);
    }
    let (defs, id, revision, unpack) = (req.defs, req.id, req.revision, req.unpack);
    let (svc, reference, image_ref) = check_request(defs, id, revision)?;
    let svc = svc.clone();
    check_mount_sources(&svc)?;
    check_init(&svc)?;
    let secrets = read_secrets(&svc)?;
    let secret_files = crate::host::secrets::read_files(&svc)?;
    let runtime_bin = crate::host::runtime::runtime_binary(svc.runtime)?;
    let store = ImageStore::with_settings(dirs.images(), defs.settings.registry())
        .with_progress(crate::image::progress::auto());
    let image = store
        .resolve(&image_ref)
        .with_context(|| format!("resolving image {reference}"))?;
    let lowers = image_dirs(&store, &image, svc.runtime, unpack)
        .with_context(|| format!("unpacking image {reference}"))?;
    let (user, user_note) = resolve_image_user(&svc, &image.config, &lowers, unpack)?;
    let seccomp = read_seccomp(&svc)?;
    let process_seccomp = read_process_seccomp(&svc)?;
    let deployment = plan::Deployment {
        revision: revision.to_string(),
        image: reference.clone(),
        manifest_digest: image.manifest_digest.clone(),
        image_config: image.config.clone(),
        user,
        definition: svc,
        seccomp,
        process_seccomp,
        secrets_digest: plan::deployment::secrets_digest(&secrets),
        secret_files: crate::host::secrets::digests(&secret_files),
        generations: Default::default(),
        ports: Default::default(),
        deployed_usec: wall_usec(),
        untagged: false,
    };
    let gathered = Gathered {
        image,
        lowers,
        secrets,
        secret_files,
        user_note,
        runtime_bin,
    };
    assemble(dirs, req, deployment, gathered)
}

/// What [`prepare`] and [`prepare_deployed`] gather besides the deployment itself.
struct Gathered {
    image: crate::image::ResolvedImage,
    lowers: Vec<PathBuf>,
    secrets: Vec<(String, String)>,
    /// The secret files' contents, read for a new deployment (empty for a recorded one: its
    /// copies are stored already).
    secret_files: std::collections::BTreeMap<String, Vec<u8>>,
    user_note: Option<String>,
    runtime_bin: PathBuf,
}

/// The [`Prepared`] of deployment `d`: its definition, revision, user and seccomp profile,
/// what was gathered for it, and the host's own facts.
fn assemble(
    dirs: &Dirs,
    req: &PrepareRequest<'_>,
    d: plan::Deployment,
    g: Gathered,
) -> Result<Prepared> {
    let svc = d.definition.clone();
    let host_files = ["/etc/resolv.conf", "/etc/hosts"]
        .iter()
        .map(PathBuf::from)
        .filter(|p| p.is_file())
        .collect();
    Ok(Prepared {
        volumes_dir: dirs.volumes(svc.id.as_str()),
        init_bin: PathBuf::from(INIT_BIN),
        seccomp: d.seccomp.clone(),
        kernel: kernel_version(),
        instances_dir: dirs.instances(svc.id.as_str()),
        revision: d.revision.clone(),
        image: g.image,
        lowers: g.lowers,
        secrets: g.secrets,
        secret_file_contents: g.secret_files,
        secret_files_dir: crate::host::secrets::files_dir(dirs, svc.id.as_str()),
        user: d.user,
        user_note: g.user_note,
        runtime_bin: g.runtime_bin,
        shim_exe: shim_binary()?,
        host_files,
        port_range: req.defs.settings.port_range,
        restrict_devices: svc.runtime != crate::config::Runtime::Crun || req.cap_sys_resource,
        restart: req.restart,
        podman: dirs.podman(),
        service: svc,
        deployment: d,
    })
}

fn wall_usec() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// The directories an instance of `image` stacks, lowest first: its layer directories
/// (unpacked now unless `unpack` is false), or for podman, which takes one directory, the
/// whole rootfs.
fn image_dirs(
    store: &ImageStore,
    image: &crate::image::ResolvedImage,
    runtime: crate::config::Runtime,
    unpack: bool,
) -> Result<Vec<PathBuf>> {
    let podman = runtime == crate::config::Runtime::Podman;
    Ok(match (podman, unpack) {
        (true, true) => vec![store.ensure_rootfs(image)?],
        (true, false) => crate::image::Digest::parse(&image.manifest_digest)
            .map(|d| vec![store.rootfs_path(&d)])
            .unwrap_or_default(),
        (false, true) => store.ensure_layers(image)?,
        (false, false) => store.planned_layers(image),
    })
}

/// What of a deployment's image is on this host already: a whole rootfs cached by an
/// earlier version of shim (a host keeps running from it until its next upgrade), or, for
/// runc/crun, the layer directories of the manifest.
fn stored_dirs(
    store: &ImageStore,
    digest: &crate::image::Digest,
    runtime: crate::config::Runtime,
) -> Option<Vec<PathBuf>> {
    if store.is_unpacked(digest) {
        return Some(vec![store.rootfs_path(digest)]);
    }
    if runtime == crate::config::Runtime::Podman {
        return None;
    }
    store.unpacked_layers(digest)
}

/// The image of a deployment, by its pinned manifest digest: what the store has of it, else
/// fetched again by digest (a registry), or from its source as long as that still holds the
/// same manifest; never another manifest.
fn pinned_image(
    store: &ImageStore,
    d: &plan::Deployment,
    unpack: bool,
) -> Result<(crate::image::ResolvedImage, Vec<PathBuf>)> {
    let digest = crate::image::Digest::parse(&d.manifest_digest).ok_or_else(|| {
        anyhow::anyhow!(
            "the deployment's manifest digest {:?} is not a digest",
            d.manifest_digest
        )
    })?;
    let mut r = ImageRef::parse(&d.image).map_err(|e| anyhow::anyhow!("{}: {e}", d.image))?;
    let recorded = crate::image::ResolvedImage {
        reference: r.clone(),
        manifest_digest: d.manifest_digest.clone(),
        config: d.image_config.clone(),
        layers: Vec::new(),
    };
    let runtime = d.definition.runtime;
    match stored_dirs(store, &digest, runtime) {
        Some(dirs) => return Ok((recorded, dirs)),
        // A dry run: where podman's rootfs will be; the layers are only known once fetched.
        None if !unpack && runtime == crate::config::Runtime::Podman => {
            return Ok((recorded, vec![store.rootfs_path(&digest)]))
        }
        None if !unpack => return Ok((recorded, Vec::new())),
        None => {}
    }
    if let ImageRef::Registry(rr) = &mut r {
        rr.digest = Some(digest.clone());
    }
    let img = store.resolve(&r).with_context(|| {
        format!(
            "fetching the deployed image {} ({})",
            d.image, d.manifest_digest
        )
    })?;
    if img.manifest_digest != d.manifest_digest {
        anyhow::bail!(
            "the deployed image {} ({}) is no longer in the image store, and {} now has manifest {}: run `shim upgrade --id {}` to deploy what it is now",
            d.image,
            d.manifest_digest,
            d.image,
            img.manifest_digest,
            d.definition.id
        );
    }
    let dirs = image_dirs(store, &img, runtime, true)
        .with_context(|| format!("unpacking image {}", d.image))?;
    Ok((
        crate::image::ResolvedImage {
            config: d.image_config.clone(),
            ..img
        },
        dirs,
    ))
}

/// [`prepare`] from a recorded deployment: its definition, image digest, user, seccomp
/// profile and secrets snapshot; only the host's own facts (runtime, binary, ports range)
/// are read now.
fn prepare_deployed(
    dirs: &Dirs,
    req: &PrepareRequest<'_>,
    d: &plan::Deployment,
) -> Result<Prepared> {
    let svc = &d.definition;
    // The record goes into unit names and paths: a damaged one must not.
    plan::validate_revision(&d.revision).map_err(|m| {
        anyhow::anyhow!(
            "the deployment record of {}: revision {m}: the state file was edited or damaged",
            req.id
        )
    })?;
    if svc.id.as_str() != req.id {
        anyhow::bail!(
            "the deployment record of {} is for service {}: the state file was edited or damaged",
            req.id,
            svc.id
        );
    }
    check_mount_sources(svc)?;
    check_init(svc)?;
    let secrets = crate::host::secrets::load(dirs, req.id, &d.secrets_digest)?;
    if req.unpack {
        crate::host::secrets::check_files(dirs, d)?;
    }
    let runtime_bin = crate::host::runtime::runtime_binary(svc.runtime)?;
    let store = ImageStore::with_settings(dirs.images(), req.defs.settings.registry())
        .with_progress(crate::image::progress::auto());
    let (image, lowers) = pinned_image(&store, d, req.unpack)?;
    let gathered = Gathered {
        image,
        lowers,
        secrets,
        secret_files: Default::default(),
        user_note: None,
        runtime_bin,
    };
    assemble(dirs, req, d.clone(), gathered)
}
