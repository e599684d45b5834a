//! Service definitions: TOML as written -> validated [`ServiceDef`]s.
//!
//! Flow: [`load`] finds the files (`services.toml` plus `services.d/*.toml`, in name order),
//! each file is deserialized into the `raw` structs (serde, `deny_unknown_fields`, values that
//! need semantic checks wrapped in `toml::Spanned` so errors can name their line), then
//! [`validate`] turns them into the types the planner uses. Every error is a [`ConfigError`]
//! naming file, line and key; the CLI maps it to exit code 2 before anything is touched.

mod duration;
mod env_file;
mod raw;
mod user;

pub use duration::{format_duration, parse_bytes, parse_duration};
pub use env_file::parse_env_file;
pub use user::{parse_user_spec, resolve_user, ResolvedUser};

/// How long systemd waits before restarting a crashed instance: the first step of the backoff.
/// Here rather than in `plan` because validation refuses a `restart_max_delay` below it.
pub const RESTART_SEC: std::time::Duration = std::time::Duration::from_secs(2);
pub(crate) use raw::normalise_signal;

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;

/// Where definitions live unless `--config`/`SHIM_CONFIG` says otherwise.
pub const DEFAULT_CONFIG: &str = "/etc/shim/services.toml";

/// A bad definition: which file, which line, which key, and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: PathBuf,
    pub line: Option<usize>,
    pub key: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        if !self.key.is_empty() {
            write!(f, ": {}", self.key)?;
        }
        write!(f, ": {}", self.message)
    }
}

impl std::error::Error for ConfigError {}

/// A validated identifier (service id or process name): `[a-z0-9_-]`, 1..=64 characters.
/// Being valid by construction, it can go into unit names, paths and journal fields unescaped.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Ident(String);

impl TryFrom<String> for Ident {
    type Error = String;
    fn try_from(s: String) -> Result<Ident, String> {
        Ident::parse(&s)
    }
}

impl From<Ident> for String {
    fn from(i: Ident) -> String {
        i.0
    }
}

impl Ident {
    pub fn parse(s: &str) -> Result<Ident, String> {
        if s.is_empty() || s.len() > 64 {
            return Err(format!(
                "{s:?} must be 1 to 64 characters long (it has {})",
                s.len()
            ));
        }
        if let Some(c) = s
            .chars()
            .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_' || *c == '-'))
        {
            return Err(format!(
                "{s:?} contains {c:?}; only lowercase letters, digits, '_' and '-' are allowed"
            ));
        }
        Ok(Ident(s.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Ident {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Which OCI runtime runs a service's containers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Runtime {
    Runc,
    Crun,
    Podman,
}

impl Runtime {
    pub fn name(self) -> &'static str {
        match self {
            Runtime::Runc => "runc",
            Runtime::Crun => "crun",
            Runtime::Podman => "podman",
        }
    }
}

/// How an upgrade points nginx at the new instances (`[shim] switch`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SwitchMode {
    /// Rewrite the upstream file and reload nginx (old workers close idle keep-alive
    /// connections: clients sending on them see errors, issue 14).
    #[default]
    Reload,
    /// nginx's upstream is a stable per-process loopback address; the switch replaces an
    /// nftables DNAT rule in one `nft -f` transaction. nginx is never reloaded for a switch.
    Nftables,
}

/// The stable address of a proxied process under `switch = "nftables"`: `127.X.Y.Z` from a
/// SHA-256 of `service/process`, X in 1..=254 (never 127.0.0.0/16, never 127.255.255.255),
/// Z in 1..=254. Port [`STABLE_PORT`]. Two defined processes with the same address are
/// refused when the definitions are read (`check_proxies`).
pub fn stable_address(service: &str, process: &str) -> std::net::Ipv4Addr {
    use sha2::Digest;
    let h = sha2::Sha256::digest(format!("{service}/{process}").as_bytes());
    let x = 1 + h[0] % 254;
    let z = 1 + h[2] % 254;
    std::net::Ipv4Addr::new(127, x, h[1], z)
}

/// The port of every stable address: 1 (tcpmux), which nothing on a Linux host listens on,
/// so that an address with no rule (a stopped service, or after a reboot before `shim
/// reconcile`) is refused (nginx: 502) instead of reaching a listener on `*:PORT`, such as
/// nginx itself on port 80.
pub const STABLE_PORT: u16 = 1;

/// Host-wide settings from the `[shim]` table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HostSettings {
    /// Inclusive range of host ports handed to instances as `$PORT`.
    pub port_range: (u16, u16),
    /// The unit reloaded after an upstream file changes.
    pub nginx_unit: String,
    /// How the upgrade's switch points nginx at new instances.
    pub switch: SwitchMode,
    /// The longest delay between restarts of a crash-looping instance (the backoff doubles
    /// from `RestartSec` up to this).
    pub restart_max_delay: Duration,
    /// Registries (`host[:port]`) spoken to over plain HTTP instead of HTTPS.
    pub insecure_registries: Vec<String>,
    /// Registry credentials, podman's auth.json format, readable by root only.
    pub auth_file: PathBuf,
}

impl HostSettings {
    /// What the image store needs of these settings.
    pub fn registry(&self) -> crate::image::RegistrySettings {
        crate::image::RegistrySettings {
            insecure_registries: self.insecure_registries.clone(),
            auth_file: self.auth_file.clone(),
        }
    }
}

impl Default for HostSettings {
    fn default() -> Self {
        HostSettings {
            port_range: (20000, 29999),
            nginx_unit: "nginx.service".into(),
            switch: SwitchMode::Reload,
            restart_max_delay: Duration::from_secs(300),
            insecure_registries: Vec::new(),
            auth_file: PathBuf::from(crate::image::DEFAULT_AUTH_FILE),
        }
    }
}

/// Where a process's instances are announced to nginx.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Proxy {
    /// The `upstream` block's name.
    pub upstream: String,
    /// The file shim owns and rewrites; the nginx site includes it.
    pub file: PathBuf,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Health {
    /// The HTTP check's URL path; "" for a TCP check (`tcp = true`: a connect to `$PORT`) or a
    /// command check.
    pub path: String,
    /// A command check's argv (`command = [...]`), run in the instance's container: healthy
    /// when it exits 0. Empty for HTTP and TCP checks.
    pub command: Vec<String>,
    pub interval: Duration,
    pub timeout: Duration,
    pub unhealthy_after: u32,
    pub start_period: Duration,
}

/// What a health check asks, decided once from the definition as written (`path`, `tcp =
/// true` or `command`): the one place the "empty path means TCP" rule lives. Which instance
/// address or container it asks is bound later (`plan::health::Probe`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HealthCheck {
    /// `GET path` on the instance's endpoint; healthy on 2xx.
    Http { path: String },
    /// A connect to the instance's endpoint.
    Tcp,
    /// `argv` run in the instance's container; healthy on exit 0.
    Command { argv: Vec<String> },
}

impl HealthCheck {
    /// What is checked, in words: `GET /health`, `TCP connect` or `command bin/check`.
    pub fn what(&self) -> String {
        match self {
            HealthCheck::Http { path } => format!("GET {path}"),
            HealthCheck::Tcp => "TCP connect".into(),
            HealthCheck::Command { argv } => format!("command {}", argv.join(" ")),
        }
    }
}

impl Health {
    /// The kind of check (see [`HealthCheck`]).
    pub fn check(&self) -> HealthCheck {
        if !self.command.is_empty() {
            HealthCheck::Command {
                argv: self.command.clone(),
            }
        } else if self.path.is_empty() {
            HealthCheck::Tcp
        } else {
            HealthCheck::Http {
                path: self.path.clone(),
            }
        }
    }

    /// What is checked, in words: `GET /health` or `TCP connect`.
    pub fn what(&self) -> String {
        self.check().what()
    }

    /// Whether the check reaches the instance over its port (HTTP and TCP checks do).
    pub fn needs_port(&self) -> bool {
        !matches!(self.check(), HealthCheck::Command { .. })
    }
}

/// Resource limits of an instance (`memory`, `cpus`, `pids`, `nofile`), set on its unit so
/// that systemd enforces them on everything in it; None: no limit of shim's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Limits {
    /// Bytes: the unit's `MemoryMax=`.
    pub memory: Option<u64>,
    /// Thousandths of a CPU: the unit's `CPUQuota=` (`cpus = 1.5` is 1500, 150%).
    pub cpus_milli: Option<u32>,
    /// The unit's `TasksMax=`.
    pub pids: Option<u64>,
    /// `RLIMIT_NOFILE`, soft and hard (the unit's `LimitNOFILE=` and the container's).
    pub nofile: Option<u64>,
}

impl Limits {
    /// These limits, each one missing taken from `dflt` (the service's).
    pub fn or(self, dflt: Limits) -> Limits {
        Limits {
            memory: self.memory.or(dflt.memory),
            cpus_milli: self.cpus_milli.or(dflt.cpus_milli),
            pids: self.pids.or(dflt.pids),
            nofile: self.nofile.or(dflt.nofile),
        }
    }
}

/// A capability by name: `NET_RAW`, `CAP_NET_RAW`, any case.
pub fn parse_capability(name: &str) -> Option<oci_spec::runtime::Capability> {
    serde_json::from_value(serde_json::Value::String(name.to_string())).ok()
}

/// One of a process's `mounts`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MountDef {
    /// A host directory or file, bound recursively (`rbind`) at `target`.
    Bind {
        source: PathBuf,
        target: String,
        read_only: bool,
    },
    /// A directory shim keeps per service under `/var/lib/shim/volumes/<service>/<source>`,
    /// created on first use (owned by the container's user) and never deleted implicitly.
    Volume {
        source: String,
        target: String,
        read_only: bool,
    },
    /// A memory-backed directory, emptied at every start.
    Tmpfs {
        target: String,
        size: Option<u64>,
        mode: u32,
    },
}

impl MountDef {
    pub fn target(&self) -> &str {
        match self {
            MountDef::Bind { target, .. }
            | MountDef::Volume { target, .. }
            | MountDef::Tmpfs { target, .. } => target,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessDef {
    pub name: Ident,
    /// Replaces the image's entrypoint + cmd when set.
    pub command: Option<Vec<String>>,
    pub count: u32,
    pub health: Option<Health>,
    /// Whether each instance gets a host port as `$PORT` (implied by `health`).
    pub port: bool,
    pub stop_timeout: Duration,
    /// Signal name as systemd and runc know it, e.g. "SIGTERM"; else the image's, else SIGTERM.
    pub stop_signal: Option<String>,
    pub read_only: bool,
    /// Process-level env, applied over the service's.
    pub env: BTreeMap<String, String>,
    pub proxy: Option<Proxy>,
    /// How long old instances keep running after nginx stopped sending them requests.
    pub drain: Duration,
    /// Never run two instances at once, even during an upgrade: old stopped before new start.
    pub singleton: bool,
    /// Resource limits (the process's keys, else the service's).
    pub limits: Limits,
    /// Bind mounts, volumes and tmpfs (the process's list, else the service's).
    pub mounts: Vec<MountDef>,
    /// Capabilities added to and dropped from the runtime's default set, as `CAP_NAME`.
    pub cap_add: Vec<String>,
    pub cap_drop: Vec<String>,
    /// Run a minimal init (tini) as the container's PID 1, in front of the command: it
    /// forwards signals and reaps zombies (`docker run --init`).
    pub init: bool,
    /// Files copied at deploy into the deployment's root-only storage and bind-mounted
    /// read-only (`secrets = [...]`).
    pub secrets: Vec<SecretFile>,
    /// This process's own `seccomp` (None: the service's).
    pub seccomp: Option<Seccomp>,
}

/// One of a process's `secrets`: the host file `source`, copied when deployed, seen by the
/// container read-only at `target`, owned by the container's user with `mode`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretFile {
    pub source: PathBuf,
    pub target: String,
    pub mode: u32,
}

/// `seccomp = …`: which system-call filter a service's containers run under.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Seccomp {
    /// The profile container users expect: the one containers-common ships (Debian's
    /// golang-github-containers-common, `/usr/share/containers/seccomp.json`), as podman uses.
    #[default]
    Default,
    /// No filter (an explicit opt-out).
    Unconfined,
    /// A profile of the operator's, in Docker's or the OCI format.
    Profile(PathBuf),
}

/// A validated service definition. Not serialized: a deployment persists and hashes it as
/// its `plan::record::DefinitionRecord`, so that these types can change shape without
/// changing a deployed id (a new key is added to the record, see there).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceDef {
    pub id: Ident,
    /// The file (and line) that defined it, for error messages later on.
    pub source: PathBuf,
    pub line: Option<usize>,
    /// The image reference template, possibly containing `{revision}`.
    pub image: String,
    pub image_line: Option<usize>,
    pub runtime: Runtime,
    pub env: BTreeMap<String, String>,
    pub env_files: Vec<PathBuf>,
    pub user: Option<String>,
    /// The system-call filter of its containers (runc, crun).
    pub seccomp: Seccomp,
    /// `cron = "bin/generate-cron"`: run in the image, prints the app's crontab (`shim cron`).
    pub cron: Option<String>,
    pub processes: BTreeMap<Ident, ProcessDef>,
}

impl ServiceDef {
    /// The image reference for a revision. `{revision}` is required in the template whenever a
    /// revision is deployed, or every revision would silently run the same image.
    pub fn image_for(&self, revision: &str) -> Result<String, ConfigError> {
        if !self.image.contains("{revision}") {
            return Err(ConfigError {
                file: self.source.clone(),
                line: self.image_line,
                key: format!("services.{}.image", self.id),
                message: format!(
                    "{:?} has no {{revision}} placeholder, so --revision {revision} cannot select an image",
                    self.image
                ),
            });
        }
        Ok(self.image.replace("{revision}", revision))
    }
}

/// Everything read from the definition files.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Definitions {
    pub settings: HostSettings,
    pub services: BTreeMap<Ident, ServiceDef>,
}

impl Definitions {
    /// The service with this id, or an error listing the known ids.
    pub fn service(&self, id: &str) -> Result<&ServiceDef, ConfigError> {
        self.services
            .iter()
            .find(|(k, _)| k.as_str() == id)
            .map(|(_, v)| v)
            .ok_or_else(|| ConfigError {
                file: PathBuf::from("--id"),
                line: None,
                key: String::new(),
                message: format!(
                    "no service {id:?} is defined (known: {})",
                    if self.services.is_empty() {
                        "none".to_string()
                    } else {
                        self.services
                            .keys()
                            .map(|k| k.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    }
                ),
            })
    }
}

/// The files that make up the definitions rooted at `path`: if `path` is a directory,
/// `path/services.toml` (when present) and `path/services.d/*.toml`; if it is a file, that file
/// and `services.d/*.toml` beside it.
pub fn config_files(path: &Path) -> Result<Vec<PathBuf>, ConfigError> {
    let io_err = |p: &Path, e: std::io::Error| ConfigError {
        file: p.to_path_buf(),
        line: None,
        key: String::new(),
        message: format!("cannot read: {e}"),
    };
    let (main, dir) = if path.is_dir() {
        (path.join("services.toml"), path.join("services.d"))
    } else {
        let parent = path.parent().unwrap_or(Path::new("."));
        (path.to_path_buf(), parent.join("services.d"))
    };
    let mut files = Vec::new();
    if main.exists() {
        files.push(main);
    } else if !path.is_dir() && !dir.is_dir() {
        // Definitions only in services.d/ (Chef/Ansible often write one file per service)
        // are as good as a services.toml; neither is an error that says where it looked.
        return Err(ConfigError {
            file: path.to_path_buf(),
            line: None,
            key: String::new(),
            message: format!(
                "cannot read: no such file, and no {} directory beside it",
                dir.display()
            ),
        });
    }
    if dir.is_dir() {
        let mut extra = Vec::new();
        for entry in std::fs::read_dir(&dir).map_err(|e| io_err(&dir, e))? {
            let p = entry.map_err(|e| io_err(&dir, e))?.path();
            if p.extension().is_some_and(|e| e == "toml") && p.is_file() {
                extra.push(p);
            }
        }
        extra.sort();
        files.extend(extra);
    }
    Ok(files)
}

/// Reads and validates every definition file under `path` (see [`config_files`]).
pub fn load(path: &Path) -> Result<Definitions, ConfigError> {
    let mut sources = Vec::new();
    for file in config_files(path)? {
        let text = std::fs::read_to_string(&file).map_err(|e| ConfigError {
            file: file.clone(),
            line: None,
            key: String::new(),
            message: format!("cannot read: {e}"),
        })?;
        sources.push((file, text));
    }
    parse_sources(&sources)
}

/// Pure core of [`load`]: validates the given (file, text) pairs as one set of definitions.
pub fn parse_sources(sources: &[(PathBuf, String)]) -> Result<Definitions, ConfigError> {
    let mut defs = Definitions::default();
    let mut settings_from: Option<PathBuf> = None;
    for (file, text) in sources {
        let parsed = raw::parse_file(file, text)?;
        if let Some(settings) = parsed.settings {
            if let Some(first) = &settings_from {
                return Err(ConfigError {
                    file: file.clone(),
                    line: settings.1,
                    key: "shim".into(),
                    message: format!(
                        "host settings are already given in {}; keep [shim] in one file",
                        first.display()
                    ),
                });
            }
            settings_from = Some(file.clone());
            defs.settings = settings.0;
        }
        for svc in parsed.services {
            if let Some(prev) = defs.services.get(&svc.id) {
                return Err(ConfigError {
                    file: file.clone(),
                    line: svc.line,
                    key: format!("services.{}", svc.id),
                    message: format!(
                        "service {:?} is already defined in {}{}",
                        svc.id.as_str(),
                        prev.source.display(),
                        prev.line.map(|l| format!(":{l}")).unwrap_or_default()
                    ),
                });
            }
            defs.services.insert(svc.id.clone(), svc);
        }
    }
    check_proxies(&defs)?;
    Ok(defs)
}

/// Unit names join service and process with `-`, which ids may contain too: service `a`
/// with process `b-web` and service `a-b` with process `web` would share every unit name.
/// One set of definitions may not hold both (refused naming both).
fn check_unit_names(defs: &Definitions) -> Result<(), ConfigError> {
    let mut seen: BTreeMap<String, (&ServiceDef, &ProcessDef)> = BTreeMap::new();
    for svc in defs.services.values() {
        for p in svc.processes.values() {
            let joined = format!("{}-{}", svc.id, p.name);
            if let Some((os, op)) = seen.insert(joined.clone(), (svc, p)) {
                return Err(ConfigError {
                    file: svc.source.clone(),
                    line: svc.line,
                    key: format!("services.{}.processes.{}", svc.id, p.name),
                    message: format!(
                        "its units would be named like those of services.{}.processes.{} ({}): both give shim-{joined}-…; rename one",
                        os.id,
                        op.name,
                        os.source.display()
                    ),
                });
            }
        }
    }
    Ok(())
}

/// Each proxied process needs an upstream file and an upstream name of its own: two writers
/// of one file drop each other's upstream, and two upstream blocks of one name make
/// `nginx -t` fail only at switch time. Refused at load time, naming both.
fn check_proxies(defs: &Definitions) -> Result<(), ConfigError> {
    check_unit_names(defs)?;
    let mut files: BTreeMap<&Path, (&ServiceDef, &ProcessDef)> = BTreeMap::new();
    let mut names: BTreeMap<&str, (&ServiceDef, &ProcessDef)> = BTreeMap::new();
    let mut addrs: BTreeMap<std::net::Ipv4Addr, (&ServiceDef, &ProcessDef)> = BTreeMap::new();
    for svc in defs.services.values() {
        for p in svc.processes.values() {
            let Some(px) = &p.proxy else { continue };
            let addr = stable_address(svc.id.as_str(), p.name.as_str());
            if let Some(other) = addrs.insert(addr, (svc, p)) {
                return Err(ConfigError {
                    file: svc.source.clone(),
                    line: svc.line,
                    key: format!("services.{}.processes.{}", svc.id, p.name),
                    message: format!(
                        "its stable address {addr} (switch = \"nftables\") is also that of services.{}.processes.{}: rename one",
                        other.0.id, other.1.name
                    ),
                });
            }
            let err = |what: &str, key: &str, other: (&ServiceDef, &ProcessDef)| {
                ConfigError {
                file: svc.source.clone(),
                line: svc.line,
                key: format!("services.{}.processes.{}.proxy.{key}", svc.id, p.name),
                message: format!(
                    "{what} is also that of services.{}.processes.{} ({}): each proxied process needs its own",
                    other.0.id,
                    other.1.name,
                    other.0.source.display()
                ),
            }
            };
            if let Some(other) = files.insert(&px.file, (svc, p)) {
                return Err(err(
                    &format!("{:?}", px.file.display().to_string()),
                    "file",
                    other,
                ));
            }
            if let Some(other) = names.insert(&px.upstream, (svc, p)) {
                return Err(err(
                    &format!("upstream {:?}", px.upstream),
                    "upstream",
                    other,
                ));
            }
        }
    }
    Ok(())
}

/// 1-based line of byte offset `pos` in `text`.
pub(crate) fn line_of(text: &str, pos: usize) -> usize {
    text[..pos.min(text.len())]
        .bytes()
        .filter(|b| *b == b'\n')
        .count()
        + 1
}

#[cfg(test)]
mod tests;
