//! Bringing a service's instances up and down: the effectful half of start and stop (and, later,
//! upgrade and reconcile). Flow of a start: [`prepare`] gathers every host fact the plan needs
//! (image resolved and unpacked, secrets read, user resolved, runtime found) and fails before
//! anything changes; [`start_instances`] takes the host lock, plans the missing instances,
//! writes their bundles and starts their units in one batch; if any start fails, everything this
//! call started is stopped again and its directories removed.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{anyhow, Context, Result};

use crate::config::{ConfigError, Definitions, ServiceDef};
use crate::error::BadInput;
use crate::image::{ImageConfig, ImageRef, ImageStore, ResolvedImage};
use crate::plan::{self, InstancePlan, PlanContext, ResolvedUser};
use crate::systemd::{journal_tail, Systemd, UnitInfo};

/// Where shim keeps things on the host. Overridable (hidden env vars) for tests only.
#[derive(Debug, Clone)]
pub struct Dirs {
    /// `/var/lib/shim`: image cache, deployment state.
    pub state: PathBuf,
    /// `/run/shim`: instance bundles and locks; gone at reboot, like transient units.
    pub run: PathBuf,
}

impl Dirs {
    pub fn from_env() -> Dirs {
        Dirs {
            state: std::env::var_os("SHIM_STATE_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from("/var/lib/shim")),
            run: std::env::var_os("SHIM_RUN_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from("/run/shim")),
        }
    }
    pub fn images(&self) -> PathBuf {
        self.state.join("images")
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

/// Everything a plan of one service at one revision needs, gathered before anything changes.
pub struct Prepared {
    pub service: ServiceDef,
    pub revision: String,
    pub image: ResolvedImage,
    pub rootfs: PathBuf,
    pub secrets: Vec<(String, String)>,
    pub user: ResolvedUser,
    /// A note for `shim show` when the user could not be resolved without unpacking.
    pub user_note: Option<String>,
    pub runtime_bin: PathBuf,
    pub shim_exe: PathBuf,
    pub instances_dir: PathBuf,
    pub host_files: Vec<PathBuf>,
    pub port_range: (u16, u16),
    pub restrict_devices: bool,
    pub restart: plan::RestartPolicy,
    pub podman: plan::PodmanStorage,
}

/// Parses an env file: `KEY=VALUE` lines, `#` comments, blank lines, optional `export `,
/// values optionally in matching single or double quotes (taken literally).
pub fn parse_env_file(path: &Path, text: &str) -> Result<Vec<(String, String)>, ConfigError> {
    let mut out = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line = line.strip_prefix("export ").unwrap_or(line);
        let err = |message: String| ConfigError {
            file: path.to_path_buf(),
            line: Some(i + 1),
            key: String::new(),
            message,
        };
        let Some((k, v)) = line.split_once('=') else {
            return Err(err("expected KEY=VALUE".into()));
        };
        let k = k.trim();
        if k.is_empty()
            || k.starts_with(|c: char| c.is_ascii_digit())
            || !k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        {
            return Err(err(format!("{k:?} is not a valid variable name")));
        }
        let v = v.trim();
        let v = if v.len() >= 2
            && ((v.starts_with('"') && v.ends_with('"'))
                || (v.starts_with('\'') && v.ends_with('\'')))
        {
            &v[1..v.len() - 1]
        } else {
            v
        };
        out.push((k.to_string(), v.to_string()));
    }
    Ok(out)
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
    let read = |p: &str| std::fs::read_to_string(rootfs.join(p)).unwrap_or_default();
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
    let u = plan::resolve_user(&spec, &read("etc/passwd"), &read("etc/group")).map_err(|m| {
        BadInput(format!(
            "{}: services.{}.user: {m}",
            svc.source.display(),
            svc.id
        ))
    })?;
    Ok((u, None))
}

/// Whether this process's capability bounding set has CAP_SYS_RESOURCE (see
/// `PlanContext::restrict_devices`); a host without it cannot give it to systemd or crun.
fn has_cap_sys_resource() -> bool {
    const CAP_SYS_RESOURCE: u32 = 24; // linux/capability.h
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapBnd:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .is_some_and(|caps| caps & (1 << CAP_SYS_RESOURCE) != 0)
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

/// How systemd should space out restarts here: asks the manager for its version over D-Bus.
/// Where there is no systemd to ask (`shim show` on a build machine), the policy that works
/// everywhere.
pub fn restart_policy(max_delay: Duration) -> plan::RestartPolicy {
    let major = crate::systemd::DbusSystemd::connect()
        .and_then(|sd| crate::systemd::Systemd::version(&sd))
        .ok()
        .and_then(|v| crate::systemd::parse_major_version(&v));
    plan::RestartPolicy::for_version(major, max_delay)
}

/// Gathers the host facts for `id` at `revision`. With `unpack` false (dry run) nothing is
/// written: the image is read and verified, but not unpacked.
pub fn prepare(
    defs: &Definitions,
    id: &str,
    revision: &str,
    dirs: &Dirs,
    unpack: bool,
) -> Result<Prepared> {
    plan::validate_revision(revision).map_err(|m| BadInput(format!("--revision: {m}")))?;
    let svc = defs.service(id)?.clone();
    let reference = svc.image_for(revision)?;
    let image_ref = ImageRef::parse(&reference).map_err(|e| {
        BadInput(format!(
            "{}:{}: services.{}.image: {e}",
            svc.source.display(),
            svc.image_line.unwrap_or(0),
            svc.id
        ))
    })?;
    let secrets = read_secrets(&svc)?;
    let runtime_bin = crate::runtime::runtime_binary(svc.runtime)?;
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
    Ok(Prepared {
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
        restrict_devices: svc.runtime != crate::config::Runtime::Crun || has_cap_sys_resource(),
        restart: restart_policy(defs.settings.restart_max_delay),
        podman: dirs.podman(),
        service: svc,
    })
}

impl Prepared {
    /// The plan context; `secrets` lets `shim show` pass redacted values.
    pub fn context<'a>(&'a self, secrets: &'a [(String, String)]) -> PlanContext<'a> {
        PlanContext {
            service: &self.service,
            revision: &self.revision,
            image: &self.image.config,
            rootfs: &self.rootfs,
            secrets,
            user: self.user,
            runtime_bin: &self.runtime_bin,
            shim_exe: &self.shim_exe,
            instances_dir: &self.instances_dir,
            host_files: &self.host_files,
            restrict_devices: self.restrict_devices,
            restart: self.restart,
            podman: &self.podman,
        }
    }

    /// Secrets with their values replaced by where they come from, for display.
    pub fn redacted_secrets(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        for f in &self.service.env_files {
            let text = std::fs::read_to_string(f).unwrap_or_default();
            for (k, _) in parse_env_file(f, &text).unwrap_or_default() {
                out.push((k, format!("<secret from {}>", f.display())));
            }
        }
        out
    }

    /// Plans the given (process, index) instances with the given ports.
    pub fn plan(
        &self,
        secrets: &[(String, String)],
        wanted: &[(String, u32)],
        ports: &BTreeMap<(String, u32), u16>,
    ) -> Result<Vec<InstancePlan>> {
        let cx = self.context(secrets);
        wanted
            .iter()
            .map(|(p, i)| {
                let process = self
                    .service
                    .processes
                    .iter()
                    .find(|(k, _)| k.as_str() == p)
                    .map(|(_, v)| v)
                    .ok_or_else(|| anyhow!("process {p} not defined"))?;
                let port = ports.get(&(p.clone(), *i)).copied();
                plan::plan_instance(&cx, process, *i, port).map_err(|m| anyhow!(BadInput(m)))
            })
            .collect()
    }

    /// Every (process, index) the definition asks for.
    pub fn all_instances(&self) -> Vec<(String, u32)> {
        plan::instance_keys(&self.service, &self.revision)
            .map(|(k, _)| (k.process.to_string(), k.index))
            .collect()
    }
}

/// Holds `/run/shim/lock` exclusively: port allocation and unit creation of concurrent shim
/// commands must not interleave. Released when dropped (the fd closes).
pub struct HostLock(#[allow(dead_code)] nix::fcntl::Flock<std::fs::File>);

pub fn lock_host(dirs: &Dirs) -> Result<HostLock> {
    std::fs::create_dir_all(&dirs.run)
        .with_context(|| format!("creating {}", dirs.run.display()))?;
    let p = dirs.run.join("lock");
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&p)
        .with_context(|| format!("opening {}", p.display()))?;
    // Blocks until another shim command holding it is done.
    let lock = nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, e)| e)
        .with_context(|| format!("locking {}", p.display()))?;
    Ok(HostLock(lock))
}

/// The units of one service (the name pattern alone could also match `id-other`'s units).
pub fn service_units(sd: &dyn Systemd, id: &str) -> Result<Vec<UnitInfo>> {
    Ok(sd
        .list_units(&[plan::service_unit_pattern(id)])?
        .into_iter()
        .filter(|u| u.field("SHIM_SERVICE") == Some(id))
        .collect())
}

fn port_free(port: u16) -> bool {
    std::net::TcpListener::bind(("0.0.0.0", port)).is_ok()
}

fn write_bundle(p: &InstancePlan) -> Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    // Root-only: config.json holds the secrets from env_files.
    let parent = p.dir.parent().unwrap_or(Path::new("/"));
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(parent)
        .with_context(|| format!("creating {}", parent.display()))?;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&p.dir)
        .with_context(|| format!("creating {}", p.dir.display()))?;
    // config.json (runc/crun) or the env file (podman): both hold the secrets.
    let (path, text) = p.render_files().map_err(|m| anyhow!(BadInput(m)))?;
    crate::state::write_atomic(&path, text.as_bytes(), 0o600)?;
    // What the instance is, for `shim status`; its start count begins again with this unit.
    let d = plan::InstanceDir(&p.dir);
    crate::state::write_atomic(&d.meta(), &serde_json::to_vec(&p.meta())?, 0o600)?;
    match std::fs::remove_file(d.starts()) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(e).with_context(|| format!("removing {}", d.starts().display()))
        }
        _ => Ok(()),
    }
}

/// Removes instance directories of `prepared`'s service that no unit uses any more.
pub fn remove_stale_dirs(instances_dir: &Path, live_units: &BTreeSet<String>) -> Result<()> {
    let Ok(entries) = std::fs::read_dir(instances_dir) else {
        return Ok(());
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        if !live_units.contains(&format!("{name}.service")) {
            // Best effort unmount first: cleanup may not have run if the unit never started.
            let _ = nix::mount::umount2(&e.path().join("rootfs"), nix::mount::MntFlags::MNT_DETACH);
            std::fs::remove_dir_all(e.path())
                .with_context(|| format!("removing {}", e.path().display()))?;
        }
    }
    Ok(())
}

/// What a start did.
#[derive(Debug, Default)]
pub struct StartReport {
    pub started: Vec<String>,
    pub already_running: Vec<String>,
}

/// How long a start job may take: runc returns once the container's init runs.
pub const START_TIMEOUT: Duration = Duration::from_secs(90);

/// Starts the instances of `wanted` that are not already running. All or nothing: if one fails
/// to start, the ones this call started are stopped again.
pub fn start_instances(
    sd: &dyn Systemd,
    prepared: &Prepared,
    wanted: &[(String, u32)],
    dirs: &Dirs,
) -> Result<StartReport> {
    let _lock = lock_host(dirs)?;
    let all = sd.list_units(&["shim-*".to_string()])?;
    let mut report = StartReport::default();
    let names: BTreeSet<String> = all.iter().map(|u| u.name.clone()).collect();
    let taken: BTreeSet<u16> = all
        .iter()
        .filter_map(|u| u.field("SHIM_PORT")?.parse().ok())
        .collect();

    let key_of = |p: &str, i: u32| plan::InstanceKey {
        service: prepared.service.id.clone(),
        process: crate::config::Ident::parse(p).unwrap_or_else(|_| prepared.service.id.clone()),
        revision: prepared.revision.clone(),
        index: i,
    };
    let mut missing = Vec::new();
    for (p, i) in wanted {
        let name = key_of(p, *i).unit_name();
        if names.contains(&name) {
            report.already_running.push(name);
        } else {
            missing.push((p.clone(), *i));
        }
    }
    if missing.is_empty() {
        return Ok(report);
    }
    let needs_port: Vec<(String, u32)> = missing
        .iter()
        .filter(|(p, _)| {
            prepared
                .service
                .processes
                .values()
                .any(|d| d.name.as_str() == p && d.port)
        })
        .cloned()
        .collect();
    let ports = plan::allocate_ports(prepared.port_range, needs_port.len(), &taken, |p| {
        !port_free(p)
    })
    .map_err(|m| anyhow!(m))?;
    let port_map: BTreeMap<(String, u32), u16> = needs_port.into_iter().zip(ports).collect();
    let plans = prepared.plan(&prepared.secrets, &missing, &port_map)?;
    for p in &plans {
        write_bundle(p)?;
    }
    let units: Vec<_> = plans.iter().map(|p| p.unit.clone()).collect();
    let outcome = sd.start_transient(&units, START_TIMEOUT);
    let failed: Vec<String> = match &outcome {
        Ok(outcomes) => outcomes
            .iter()
            .filter(|o| !o.ok())
            .map(|o| format!("{} ({})", o.unit, o.result))
            .collect(),
        Err(e) => vec![e.to_string()],
    };
    if failed.is_empty() {
        report.started = units.into_iter().map(|u| u.name).collect();
        return Ok(report);
    }
    // Roll back: stop what this call started, so the host is as it was.
    let mut msg = format!(
        "starting {} failed: {}",
        prepared.service.id,
        failed.join(", ")
    );
    for u in &units {
        if failed.iter().any(|f| f.starts_with(&u.name)) {
            msg.push_str(&format!(
                "\n--- last journal lines of {} ---\n{}",
                u.name,
                journal_tail(&u.name, 15)
            ));
        }
    }
    let names: Vec<String> = units.iter().map(|u| u.name.clone()).collect();
    match sd.stop_units(&names, Duration::from_secs(60)) {
        Ok(_) => {
            for p in &plans {
                let _ = std::fs::remove_dir_all(&p.dir);
            }
        }
        // Keep the directories: the units may still need them; `shim stop` cleans both.
        Err(e) => msg.push_str(&format!(
            "\nrolling back also failed ({e}); run `shim stop --id {}`",
            prepared.service.id
        )),
    }
    Err(anyhow!(msg))
}

/// Stops units and removes their instance directories. Idempotent.
pub fn stop_units(sd: &dyn Systemd, units: &[UnitInfo], timeout: Duration) -> Result<Vec<String>> {
    let names: Vec<String> = units.iter().map(|u| u.name.clone()).collect();
    if names.is_empty() {
        return Ok(names);
    }
    let outcomes = sd.stop_units(&names, timeout)?;
    let bad: Vec<String> = outcomes
        .iter()
        .filter(|o| !o.ok())
        .map(|o| format!("{} ({})", o.unit, o.result))
        .collect();
    if !bad.is_empty() {
        return Err(anyhow!("stopping failed for: {}", bad.join(", ")));
    }
    Ok(names)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse_sources;
    use crate::image::{ImageRef, ResolvedImage};
    use crate::systemd::FakeSystemd;

    fn prepared(dirs: &Dirs) -> Prepared {
        let defs = parse_sources(&[(
            PathBuf::from("/etc/shim/services.toml"),
            "[shim]\nport_range = [30000, 30010]\n[services.app]\nimage = \"oci:/i:{revision}\"\n\
             [services.app.processes.web]\ncount = 2\nport = true\ncommand = [\"/app\"]\n\
             [services.app.processes.worker]\ncommand = [\"/w\"]\n"
                .into(),
        )])
        .unwrap();
        Prepared {
            service: defs.service("app").unwrap().clone(),
            revision: "r1".into(),
            image: ResolvedImage {
                reference: ImageRef::parse("oci:/i:r1").unwrap(),
                manifest_digest: format!("sha256:{}", "a".repeat(64)),
                config: ImageConfig::default(),
                layers: vec![],
            },
            rootfs: dirs.state.join("rootfs"),
            secrets: vec![("S".into(), "v".into())],
            user: ResolvedUser { uid: 0, gid: 0 },
            user_note: None,
            runtime_bin: "/usr/sbin/runc".into(),
            shim_exe: "/usr/bin/shim".into(),
            instances_dir: dirs.instances("app"),
            host_files: vec![],
            port_range: defs.settings.port_range,
            restrict_devices: true,
            restart: plan::RestartPolicy::StartLimit,
            podman: dirs.podman(),
        }
    }

    fn dirs(t: &tempfile::TempDir) -> Dirs {
        Dirs {
            state: t.path().join("state"),
            run: t.path().join("run"),
        }
    }

    #[test]
    fn starts_missing_instances_once_with_distinct_ports() {
        let t = tempfile::tempdir().unwrap();
        let d = dirs(&t);
        let p = prepared(&d);
        let sd = FakeSystemd::default();
        let r = start_instances(&sd, &p, &p.all_instances(), &d).unwrap();
        assert_eq!(r.started.len(), 3);
        let ports: BTreeSet<String> = sd
            .units
            .borrow()
            .values()
            .filter_map(|u| u.field("SHIM_PORT").map(str::to_string))
            .collect();
        assert_eq!(ports, ["30000", "30001"].map(String::from).into());
        // Bundles are written, root-only.
        use std::os::unix::fs::PermissionsExt;
        let cfg = d.instances("app").join("shim-app-web-r1-1/config.json");
        assert_eq!(
            std::fs::metadata(&cfg).unwrap().permissions().mode() & 0o777,
            0o600
        );
        // And what each instance is, for `shim status`.
        let meta: plan::InstanceMeta = serde_json::from_slice(
            &std::fs::read(d.instances("app").join("shim-app-web-r1-2/meta.json")).unwrap(),
        )
        .unwrap();
        assert_eq!(meta.unit, "shim-app-web-r1-2.service");
        assert_eq!((meta.instance, meta.port), (2, Some(30001)));
        // Again: nothing new is started.
        let again = start_instances(&sd, &p, &p.all_instances(), &d).unwrap();
        assert!(again.started.is_empty());
        assert_eq!(again.already_running.len(), 3);
    }

    #[test]
    fn a_failed_start_rolls_back_everything_it_started() {
        let t = tempfile::tempdir().unwrap();
        let d = dirs(&t);
        let p = prepared(&d);
        let sd = FakeSystemd::default();
        sd.fail_start
            .borrow_mut()
            .push("shim-app-web-r1-2.service".into());
        let err = start_instances(&sd, &p, &p.all_instances(), &d).unwrap_err();
        assert!(
            err.to_string()
                .contains("shim-app-web-r1-2.service (failed)"),
            "{err}"
        );
        assert!(
            sd.units.borrow().is_empty(),
            "units left: {:?}",
            sd.units.borrow().keys()
        );
        let calls = sd.calls.borrow();
        assert_eq!(
            calls.iter().filter(|c| c.starts_with("stop ")).count(),
            3,
            "{calls:?}"
        );
        let left: Vec<_> = std::fs::read_dir(d.instances("app")).unwrap().collect();
        assert!(left.is_empty(), "instance dirs left: {left:?}");
    }

    #[test]
    fn env_files_parse_like_docker_and_name_bad_lines() {
        let p = Path::new("/etc/shim/secrets/a.env");
        let v = parse_env_file(p, "# c\n\nA=1\nexport B='two words'\nC=\"x=y\"\nD=\n").unwrap();
        assert_eq!(
            v,
            [("A", "1"), ("B", "two words"), ("C", "x=y"), ("D", "")]
                .map(|(a, b)| (a.to_string(), b.to_string()))
        );
        let e = parse_env_file(p, "A=1\nnonsense\n").unwrap_err();
        assert_eq!(
            e.to_string(),
            "/etc/shim/secrets/a.env:2: expected KEY=VALUE"
        );
        assert!(parse_env_file(p, "1A=x").is_err());
    }
}
