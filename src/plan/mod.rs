//! Planning, and nothing else: a validated [`ServiceDef`], a revision and what the image says
//! become, per instance, the transient unit's properties ([`UnitSpec`]) and the OCI runtime
//! config (`config.json`). No I/O happens here: every fact from the host (paths, ports,
//! secrets, the image config) comes in through [`PlanContext`], so the output is a pure
//! function of its input and is snapshot-tested.

mod bundle;
pub mod deployment;
pub mod endpoint;
pub mod fields;
pub mod health;
pub mod names;
pub mod nft;
pub mod oneoff;
pub mod podman;
mod prepared;
pub mod probe_timer;
pub mod proxy;
pub mod record;
pub mod runtime_args;
pub mod seccomp;
pub mod service_unit;
mod unit;
pub mod upstream;

pub use crate::config::{parse_user_spec, resolve_user, ResolvedUser};
pub use bundle::render_config;
pub use deployment::Deployment;
pub use endpoint::Endpoint;
pub use podman::PodmanStorage;
pub use prepared::Prepared;
pub use unit::{Prop, RestartPolicy, UnitSpec, RESTART_SEC, START_LIMIT_INTERVAL};

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::config::{Ident, ProcessDef, Runtime, ServiceDef};
use crate::image::ImageConfig;

/// Identifies one instance: service, process, revision, index (1-based).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct InstanceKey {
    pub service: Ident,
    pub process: Ident,
    pub revision: String,
    /// The deployment tag (`Deployment::tag`); "" for an instance named as before
    /// deployments were recorded.
    pub deployment: String,
    pub index: u32,
}

pub use names::REV_IN_NAME;

impl InstanceKey {
    /// `shim-billing_app-web-279d9035886d-1a2b3c4d-1`: the unit name without `.service`, also
    /// used as the container id and the instance directory name (the revision as
    /// [`rev_in_name`] gives it). All parts are validated idents or
    /// revisions (`[A-Za-z0-9._-]`), which are valid unit-name characters as they are.
    ///
    /// With a deployment tag: `shim-billing_app-web-279d9035886d-5e6f7a8b-1`, the revision's
    /// first [`REV_IN_NAME`] characters and the tag (which is derived from the whole
    /// revision, so two revisions with the same first characters still differ).
    pub fn stem(&self) -> String {
        names::instance_stem(
            self.service.as_str(),
            self.process.as_str(),
            &self.revision,
            &self.deployment,
            self.index,
        )
    }

    /// `<stem>.service`.
    ///
    /// There is deliberately no way back from a unit name to the key: names are ambiguous.
    /// Service and process ids may both contain `-`, so service `a` with process `b-web` and
    /// service `a-b` with process `web` both give `shim-a-b-web-<rev>-1` (one set of
    /// definitions cannot hold both: `config` refuses it), and a long revision is only its
    /// first [`REV_IN_NAME`] characters and a hash. Read a unit's identity from
    /// the `SHIM_*` fields it carries with [`InstanceKey::from_fields`] instead.
    pub fn unit_name(&self) -> String {
        names::service_of_stem(&self.stem())
    }

    /// The key from the [`fields`] a unit carries (its `LogExtraFields`, or
    /// [`InstanceMeta::fields`]): `SHIM_SERVICE`, `SHIM_PROCESS`, `SHIM_REVISION` and
    /// `SHIM_INSTANCE`, exactly. `None` if one is missing or not valid (an index of 0, say),
    /// e.g. for a one-off run or a cron job, which carry no instance.
    pub fn from_fields(f: &std::collections::BTreeMap<String, String>) -> Option<InstanceKey> {
        let service = Ident::parse(f.get(fields::SERVICE)?).ok()?;
        let process = Ident::parse(f.get(fields::PROCESS)?).ok()?;
        let revision = f.get(fields::REVISION)?;
        validate_revision(revision).ok()?;
        let index: u32 = f.get(fields::INSTANCE)?.parse().ok()?;
        if index == 0 {
            return None;
        }
        let deployment = f.get(fields::DEPLOYMENT).cloned().unwrap_or_default();
        if !deployment.chars().all(|c| c.is_ascii_hexdigit()) || deployment.len() > 16 {
            return None;
        }
        Some(InstanceKey {
            service,
            process,
            revision: revision.clone(),
            deployment,
            index,
        })
    }
}

/// Every instance deployment `dep` asks for, with its process, in process order.
pub fn instance_keys(dep: &Deployment) -> impl Iterator<Item = (InstanceKey, &ProcessDef)> + '_ {
    let service = &dep.definition;
    service.processes.values().flat_map(move |d| {
        let tag = dep.tag(d.name.as_str());
        (1..=d.count).map(move |index| {
            (
                InstanceKey {
                    service: service.id.clone(),
                    process: d.name.clone(),
                    revision: dep.revision.clone(),
                    deployment: tag.clone(),
                    index,
                },
                d,
            )
        })
    })
}

/// Revisions go into unit names, paths and image tags: keep them to characters safe in all.
pub fn validate_revision(rev: &str) -> Result<(), String> {
    if rev.is_empty() || rev.len() > 128 {
        return Err(format!("revision {rev:?} must be 1 to 128 characters"));
    }
    if rev.starts_with(['.', '-']) {
        return Err(format!("revision {rev:?} must not start with '.' or '-'"));
    }
    match rev
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        Some(c) => Err(format!(
            "revision {rev:?} contains {c:?}; use letters, digits, '.', '_' and '-' (a git SHA is ideal)"
        )),
        None => Ok(()),
    }
}

/// Host facts the plan depends on, gathered by the caller.
#[derive(Debug, Clone)]
pub struct PlanContext<'a> {
    pub service: &'a ServiceDef,
    pub revision: &'a str,
    pub image: &'a ImageConfig,
    /// The shared, read-only unpacked image.
    /// The image's layer directories, lowest first (one whole rootfs for podman and for
    /// images cached whole by earlier versions).
    pub lowers: &'a [PathBuf],
    /// Variables from `env_files`, in file order (values may be redacted for display).
    pub secrets: &'a [(String, String)],
    pub user: ResolvedUser,
    /// Absolute path of the OCI runtime binary.
    pub runtime_bin: &'a Path,
    /// Absolute path of the shim binary, run as ExecStartPre/ExecStopPost helper.
    pub shim_exe: &'a Path,
    /// Where instance directories live (`/run/shim/instances`): on tmpfs, gone at reboot
    /// together with the transient units.
    pub instances_dir: &'a Path,
    /// Host files bind-mounted read-only into every container (resolv.conf, hosts) that exist.
    pub host_files: &'a [PathBuf],
    /// Whether config.json restricts devices (deny-all + the runtime's defaults). crun loads an
    /// eBPF device filter for that and first raises RLIMIT_MEMLOCK, which needs
    /// CAP_SYS_RESOURCE: on hosts without it the filter is left out for crun.
    pub restrict_devices: bool,
    /// How systemd spaces out restarts (depends on its version).
    pub restart: RestartPolicy,
    /// podman's store for shim's containers (`runtime = "podman"` only).
    pub podman: &'a PodmanStorage,
    /// The seccomp profile's text (Docker's or the OCI format), None for `unconfined`.
    pub seccomp: Option<&'a str>,
    /// The host kernel's (major, minor), for the profile's `minKernel` rules.
    pub kernel: (u32, u32),
    /// The deployment planned from: its tags name the instances (None: untagged names).
    pub deployment: Option<&'a Deployment>,
    /// Where the service's volumes are (`/var/lib/shim/volumes/<service>`).
    pub volumes_dir: &'a Path,
    /// The static init bound into containers of processes with `init = true` (tini).
    pub init_bin: &'a Path,
    /// Where the deployment's secret files are stored (`host::secrets::files_dir`).
    pub secret_files_dir: &'a Path,
}

/// Everything needed to start one instance.
#[derive(Debug, Clone, Serialize)]
pub struct InstancePlan {
    pub key: InstanceKey,
    pub port: Option<u16>,
    /// The instance directory (0700): config.json or the env file (0600), the overlay, the
    /// pid file.
    pub dir: PathBuf,
    pub unit: UnitSpec,
    /// What the runtime reads from the instance directory.
    pub files: InstanceFiles,
}

/// The runtime's input, written to the instance directory before the unit starts.
#[derive(Debug, Clone, Serialize)]
pub enum InstanceFiles {
    /// runc/crun: the OCI bundle's `config.json`.
    Oci(Box<oci_spec::runtime::Spec>),
    /// podman: the container's whole environment, for `--env-file` (`KEY=VALUE` lines).
    Podman { env: Vec<String> },
}

impl InstancePlan {
    /// The OCI config, for runc/crun instances.
    #[cfg(test)]
    pub fn oci_config(&self) -> Option<&oci_spec::runtime::Spec> {
        match &self.files {
            InstanceFiles::Oci(spec) => Some(spec),
            InstanceFiles::Podman { .. } => None,
        }
    }

    /// What goes into `meta.json`.
    pub fn meta(&self) -> InstanceMeta {
        InstanceMeta {
            unit: self.key.unit_name(),
            service: self.key.service.to_string(),
            process: self.key.process.to_string(),
            revision: self.key.revision.clone(),
            deployment: self.key.deployment.clone(),
            instance: self.key.index,
            port: self.port,
        }
    }

    /// Where the runtime's input goes and its text (holds secrets: mode 0600).
    pub fn render_files(&self) -> Result<(PathBuf, String), String> {
        let d = InstanceDir(&self.dir);
        Ok(match &self.files {
            InstanceFiles::Oci(spec) => (d.config(), render_config(spec)),
            InstanceFiles::Podman { env } => (d.env_file(), podman::render_env_file(env)?),
        })
    }
}

/// Layout of an instance directory; shared by the planner and `shim instance prepare/cleanup`.
pub struct InstanceDir<'a>(pub &'a Path);

impl InstanceDir<'_> {
    pub fn config(&self) -> PathBuf {
        self.0.join("config.json")
    }
    /// podman instances: the env file passed with `--env-file`.
    pub fn env_file(&self) -> PathBuf {
        self.0.join("env")
    }
    pub fn pid_file(&self) -> PathBuf {
        self.0.join("container.pid")
    }
    /// Mount point of the instance's overlay; the container's root.
    pub fn rootfs(&self) -> PathBuf {
        self.0.join("rootfs")
    }
    /// upper/ and work/ of the overlay: the instance's private writable layer.
    pub fn layer(&self) -> PathBuf {
        self.0.join("layer")
    }
    /// The overlay's upperdir and workdir, in [`InstanceDir::layer`].
    pub fn upper_work(&self) -> (PathBuf, PathBuf) {
        let layer = self.layer();
        (layer.join("upper"), layer.join("work"))
    }
    /// The revision a one-off or cron job runs (written with its bundle, read back by its
    /// ExecStopPost for `shim cron list`).
    pub fn revision(&self) -> PathBuf {
        self.0.join("revision")
    }
    /// What the instance is ([`InstanceMeta`]), written with the bundle; read by `shim status`.
    pub fn meta(&self) -> PathBuf {
        self.0.join("meta.json")
    }
    /// How many times `shim instance prepare` ran (runc/crun: every start and restart).
    pub fn starts(&self) -> PathBuf {
        self.0.join("starts")
    }
}

/// The facts of an instance that never change while its unit exists, written to `meta.json`
/// in its directory when it is planned, so that `shim status` need not ask systemd for them
/// (they are also the unit's `LogExtraFields`). The field names are read back by later shim
/// versions: only add fields, with defaults.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct InstanceMeta {
    pub unit: String,
    pub service: String,
    pub process: String,
    /// The full revision (the unit name has only its first [`REV_IN_NAME`] characters).
    pub revision: String,
    /// The deployment tag ("" before deployments were recorded).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub deployment: String,
    pub instance: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
}

impl InstanceMeta {
    /// The `SHIM_*` journal fields of the unit, as the unit's `LogExtraFields` says them.
    pub fn fields(&self) -> std::collections::BTreeMap<String, String> {
        let mut f: std::collections::BTreeMap<String, String> = [
            (fields::SERVICE, self.service.clone()),
            (fields::PROCESS, self.process.clone()),
            (fields::REVISION, self.revision.clone()),
            (fields::INSTANCE, self.instance.to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        if let Some(p) = self.port {
            f.insert(fields::PORT.into(), p.to_string());
        }
        if !self.deployment.is_empty() {
            f.insert(fields::DEPLOYMENT.into(), self.deployment.clone());
        }
        f
    }
}

/// Plans instance `index` of `process`.
pub fn plan_instance(
    cx: &PlanContext<'_>,
    process: &ProcessDef,
    index: u32,
    port: Option<u16>,
) -> Result<InstancePlan, String> {
    let key = InstanceKey {
        service: cx.service.id.clone(),
        process: process.name.clone(),
        revision: cx.revision.to_string(),
        deployment: cx
            .deployment
            .map(|d| d.tag(process.name.as_str()))
            .unwrap_or_default(),
        index,
    };
    let dir = cx.instances_dir.join(key.stem());
    let (unit, files) = match cx.service.runtime {
        Runtime::Podman => (
            podman::plan_unit(cx, process, &key, &dir, port)?,
            InstanceFiles::Podman {
                env: podman::plan_env(cx, process, &key, port)?,
            },
        ),
        Runtime::Runc | Runtime::Crun => (
            unit::plan_unit(cx, process, &key, &dir, port),
            InstanceFiles::Oci(Box::new(bundle::plan_config(
                cx, process, &key, &dir, port,
            )?)),
        ),
    };
    Ok(InstancePlan {
        key,
        port,
        dir,
        unit,
        files,
    })
}

/// Picks `n` ports from `range` (inclusive), lowest first, skipping any in `taken` (ports of
/// running instances, which must never be handed out twice) and any `in_use` by other programs.
pub fn allocate_ports(
    range: (u16, u16),
    n: usize,
    taken: &BTreeSet<u16>,
    in_use: impl Fn(u16) -> bool,
) -> Result<Vec<u16>, String> {
    let mut out = Vec::with_capacity(n);
    for port in range.0..=range.1 {
        if out.len() == n {
            break;
        }
        if !taken.contains(&port) && !in_use(port) {
            out.push(port);
        }
    }
    if out.len() < n {
        return Err(format!(
            "port_range {}..{} has only {} free ports, {n} needed; widen [shim] port_range",
            range.0,
            range.1,
            out.len()
        ));
    }
    Ok(out)
}

/// The final environment: image env, then service env, process env, env_files, then what shim
/// itself sets. Later sources override earlier ones; the first position of a name is kept so
/// the order stays stable.
pub fn merge_env(
    cx: &PlanContext<'_>,
    process: &ProcessDef,
    key: &InstanceKey,
    port: Option<u16>,
) -> Vec<String> {
    let mut env: Vec<(String, String)> = Vec::new();
    let mut set = |k: &str, v: &str| match env.iter_mut().find(|(ek, _)| ek == k) {
        Some(slot) => slot.1 = v.to_string(),
        None => env.push((k.to_string(), v.to_string())),
    };
    set(
        "PATH",
        "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    );
    for kv in &cx.image.env {
        let (k, v) = kv.split_once('=').unwrap_or((kv.as_str(), ""));
        set(k, v);
    }
    for (k, v) in &cx.service.env {
        set(k, v);
    }
    for (k, v) in &process.env {
        set(k, v);
    }
    for (k, v) in cx.secrets {
        set(k, v);
    }
    if let Some(port) = port {
        set("PORT", &port.to_string());
    }
    set(fields::SERVICE, key.service.as_str());
    set(fields::PROCESS, key.process.as_str());
    set(fields::REVISION, &key.revision);
    set(fields::INSTANCE, &key.index.to_string());
    env.into_iter().map(|(k, v)| format!("{k}={v}")).collect()
}

/// The argv: the process's command, else the image's entrypoint + cmd.
pub fn plan_args(cx: &PlanContext<'_>, process: &ProcessDef) -> Result<Vec<String>, String> {
    let args = match &process.command {
        Some(c) => c.clone(),
        None => cx
            .image
            .entrypoint
            .iter()
            .chain(cx.image.cmd.iter())
            .cloned()
            .collect(),
    };
    if args.is_empty() {
        return Err(format!(
            "process {:?}: the image has no entrypoint or cmd, so the process needs a command",
            process.name.as_str()
        ));
    }
    Ok(args)
}

/// The text of `shim show` for planned instances: each unit as a unit file, then its
/// config.json (or podman env file) with the secrets as the caller redacted them.
pub fn render_show(plans: &[InstancePlan], notes: &[String]) -> String {
    let mut out = String::new();
    for n in notes {
        out.push_str(&format!("# note: {n}\n"));
    }
    for p in plans {
        out.push_str(&p.unit.render());
        // config.json (runc/crun) or the env file (podman), secrets already redacted.
        match p.render_files() {
            Ok((path, text)) => {
                out.push_str(&format!("# {}\n", path.display()));
                out.push_str(text.trim_end());
            }
            Err(e) => out.push_str(&format!("# error: {e}")),
        }
        out.push_str("\n\n");
    }
    out
}

#[cfg(test)]
mod tests;

#[cfg(test)]
pub(crate) mod golden_tests;
