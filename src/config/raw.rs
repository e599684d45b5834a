//! The definition file as written (serde, unknown keys refused), and its validation into
//! [`ServiceDef`]s. Values that need checks beyond their type are `Spanned` so that the error
//! can name their line.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use super::{
    line_of, parse_duration, ConfigError, Health, HostSettings, Ident, Limits, MountDef,
    ProcessDef, Proxy, Runtime, SecretFile, ServiceDef,
};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    shim: Option<Spanned<RawShim>>,
    #[serde(default)]
    services: BTreeMap<Spanned<String>, Spanned<RawService>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawShim {
    port_range: Option<Spanned<[i64; 2]>>,
    nginx_unit: Option<Spanned<String>>,
    switch: Option<Spanned<String>>,
    restart_max_delay: Option<Spanned<String>>,
    insecure_registries: Option<Vec<Spanned<String>>>,
    auth_file: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawService {
    image: Option<Spanned<String>>,
    #[serde(default = "default_runtime")]
    runtime: Spanned<Runtime>,
    #[serde(default)]
    env: BTreeMap<Spanned<String>, String>,
    #[serde(default)]
    env_files: Vec<Spanned<String>>,
    user: Option<Spanned<String>>,
    /// `"default"` (containers-common's profile), `"unconfined"`, or an absolute path.
    seccomp: Option<Spanned<String>>,
    /// The app's crontab generator: a program inside the image that prints a crontab.
    cron: Option<Spanned<String>>,
    /// Resource limits (also per process, where they win): `memory = "512M"`, `cpus = 1.5`,
    /// `pids = 256`, `nofile = 65536`.
    memory: Option<Spanned<String>>,
    cpus: Option<Spanned<toml::Value>>,
    pids: Option<Spanned<i64>>,
    nofile: Option<Spanned<i64>>,
    mounts: Option<Spanned<Vec<Spanned<RawMount>>>>,
    cap_add: Option<Spanned<Vec<Spanned<String>>>>,
    cap_drop: Option<Spanned<Vec<Spanned<String>>>>,
    /// A minimal init as PID 1 (tini).
    init: Option<bool>,
    /// Files copied at deploy and bind-mounted read-only (`source`, `target`, `mode`).
    secrets: Option<Spanned<Vec<Spanned<RawSecret>>>>,

    #[serde(default)]
    processes: BTreeMap<Spanned<String>, Spanned<RawProcess>>,
}

fn default_runtime() -> Spanned<Runtime> {
    Spanned::new(0..0, Runtime::Runc)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProcess {
    command: Option<Spanned<Vec<String>>>,
    count: Option<Spanned<i64>>,
    health: Option<Spanned<RawHealth>>,
    port: Option<bool>,
    proxy: Option<Spanned<RawProxy>>,
    drain: Option<Spanned<String>>,
    #[serde(default)]
    singleton: bool,
    stop_timeout: Option<Spanned<String>>,
    stop_signal: Option<Spanned<String>>,
    #[serde(default)]
    read_only: bool,
    #[serde(default)]
    env: BTreeMap<Spanned<String>, String>,
    /// Resource limits (the service's are the default): `memory = "512M"`, `cpus = 1.5`,
    /// `pids = 256`, `nofile = 65536`.
    memory: Option<Spanned<String>>,
    cpus: Option<Spanned<toml::Value>>,
    pids: Option<Spanned<i64>>,
    nofile: Option<Spanned<i64>>,
    mounts: Option<Spanned<Vec<Spanned<RawMount>>>>,
    cap_add: Option<Spanned<Vec<Spanned<String>>>>,
    cap_drop: Option<Spanned<Vec<Spanned<String>>>>,
    /// A minimal init as PID 1 (tini).
    init: Option<bool>,
    /// Files copied at deploy and bind-mounted read-only (the service's are the default).
    secrets: Option<Spanned<Vec<Spanned<RawSecret>>>>,
    /// This process's own system-call filter (the service's is the default).
    seccomp: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSecret {
    source: Spanned<String>,
    target: Spanned<String>,
    mode: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMount {
    #[serde(rename = "type")]
    typ: Spanned<String>,
    source: Option<Spanned<String>>,
    target: Spanned<String>,
    read_only: Option<bool>,
    size: Option<Spanned<String>>,
    mode: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProxy {
    upstream: Spanned<String>,
    file: Spanned<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHealth {
    path: Option<Spanned<String>>,
    /// A TCP check: a connect to `$PORT` (instead of an HTTP `path`).
    tcp: Option<bool>,
    /// A command check, run in the instance's container.
    command: Option<Spanned<Vec<String>>>,
    interval: Option<Spanned<String>>,
    timeout: Option<Spanned<String>>,
    unhealthy_after: Option<Spanned<i64>>,
    start_period: Option<Spanned<String>>,
}

pub(super) struct ParsedFile {
    pub settings: Option<(HostSettings, Option<usize>)>,
    pub services: Vec<ServiceDef>,
}

/// Largest `count` accepted: a typo like `count = 4000` should not start thousands of units.
const MAX_COUNT: i64 = 256;

struct Ctx<'a> {
    file: &'a Path,
    text: &'a str,
}

impl Ctx<'_> {
    fn err<T>(
        &self,
        span: &std::ops::Range<usize>,
        key: String,
        message: String,
    ) -> Result<T, ConfigError> {
        Err(ConfigError {
            file: self.file.to_path_buf(),
            line: Some(line_of(self.text, span.start)),
            key,
            message,
        })
    }

    fn duration(&self, v: &Spanned<String>, key: String) -> Result<Duration, ConfigError> {
        parse_duration(v.get_ref()).or_else(|m| self.err(&v.span(), key, m))
    }
}

pub(super) fn parse_file(file: &Path, text: &str) -> Result<ParsedFile, ConfigError> {
    let raw: RawFile = toml::from_str(text).map_err(|e| {
        let line = e.span().map(|s| line_of(text, s.start));
        ConfigError {
            file: file.to_path_buf(),
            line,
            // For unknown fields toml's message names the key already; for a wrong type it
            // points at the value only, so recover the key from the text.
            key: e.span().map(|s| key_at(text, s.start)).unwrap_or_default(),
            message: e.message().trim().to_string(),
        }
    })?;
    let cx = Ctx { file, text };

    let settings = match &raw.shim {
        None => None,
        Some(shim) => {
            let s = validate_shim(&cx, shim.get_ref())?;
            Some((s, Some(line_of(text, shim.span().start))))
        }
    };

    let mut services = Vec::new();
    for (id, svc) in &raw.services {
        services.push(validate_service(&cx, id, svc)?);
    }
    Ok(ParsedFile { settings, services })
}

/// The `[shim]` table.
fn validate_shim(cx: &Ctx<'_>, shim: &RawShim) -> Result<HostSettings, ConfigError> {
    let mut s = HostSettings::default();
    if let Some(range) = &shim.port_range {
        s.port_range = validate_port_range(cx, range)?;
    }
    if let Some(unit) = &shim.nginx_unit {
        let u = unit.get_ref();
        let ok = u.ends_with(".service")
            && u.len() > 8
            && u.chars()
                .all(|c| c.is_ascii_alphanumeric() || ":_.@-".contains(c));
        if !ok {
            return cx.err(
                &unit.span(),
                "shim.nginx_unit".into(),
                format!("{u:?} is not a service unit name like \"nginx.service\""),
            );
        }
        s.nginx_unit = u.clone();
    }
    if let Some(sw) = &shim.switch {
        s.switch = match sw.get_ref().as_str() {
            "reload" => super::SwitchMode::Reload,
            "nftables" => super::SwitchMode::Nftables,
            other => {
                return cx.err(
                    &sw.span(),
                    "shim.switch".into(),
                    format!("{other:?} is not a switch: use \"reload\" (rewrite the upstream file, reload nginx) or \"nftables\" (a stable address per process, the switch in the kernel)"),
                )
            }
        };
    }
    if let Some(d) = &shim.restart_max_delay {
        let key = "shim.restart_max_delay".to_string();
        let v = cx.duration(d, key.clone())?;
        if v < super::RESTART_SEC {
            return cx.err(
                &d.span(),
                key,
                format!(
                    "must be at least the first restart delay ({})",
                    super::format_duration(super::RESTART_SEC)
                ),
            );
        }
        s.restart_max_delay = v;
    }
    for r in shim.insecure_registries.iter().flatten() {
        if let Err(m) = crate::image::validate_registry_host(r.get_ref()) {
            return cx.err(&r.span(), "shim.insecure_registries".into(), m);
        }
        s.insecure_registries.push(r.get_ref().to_ascii_lowercase());
    }
    if let Some(f) = &shim.auth_file {
        let path = PathBuf::from(f.get_ref());
        if !path.is_absolute() {
            return cx.err(
                &f.span(),
                "shim.auth_file".into(),
                format!("{:?} must be an absolute path", f.get_ref()),
            );
        }
        s.auth_file = path;
    }
    Ok(s)
}

/// `[shim] port_range`: two ports within 1024..65535, the first not above the second.
fn validate_port_range(cx: &Ctx<'_>, range: &Spanned<[i64; 2]>) -> Result<(u16, u16), ConfigError> {
    let [lo, hi] = *range.get_ref();
    let key = "shim.port_range".to_string();
    if !(1024..=65535).contains(&lo) || !(1024..=65535).contains(&hi) {
        return cx.err(
            &range.span(),
            key,
            format!("[{lo}, {hi}]: ports must be within 1024..65535"),
        );
    }
    if lo > hi {
        return cx.err(
            &range.span(),
            key,
            format!("[{lo}, {hi}]: the first port must not be above the second"),
        );
    }
    // Proven by the range checks just above.
    Ok((lo as u16, hi as u16))
}

fn validate_env(
    cx: &Ctx<'_>,
    env: &BTreeMap<Spanned<String>, String>,
    prefix: &str,
) -> Result<BTreeMap<String, String>, ConfigError> {
    let mut out = BTreeMap::new();
    for (k, v) in env {
        let name = k.get_ref();
        let ok = !name.is_empty()
            && !name.starts_with(|c: char| c.is_ascii_digit())
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !ok {
            return cx.err(
                &k.span(),
                format!("{prefix}.env.{name}"),
                format!("{name:?} is not a valid environment variable name (letters, digits and '_', not starting with a digit)"),
            );
        }
        if v.contains('\0') {
            return cx.err(
                &k.span(),
                format!("{prefix}.env.{name}"),
                "value contains a NUL byte".into(),
            );
        }
        out.insert(name.clone(), v.clone());
    }
    Ok(out)
}

/// Ids whose service unit `shim-<id>.service` is one the package ships.
const RESERVED_SERVICE_IDS: [&str; 1] = ["reconcile"];

fn refuse_reserved(cx: &Ctx<'_>, id: &Spanned<String>, prefix: &str) -> Result<(), ConfigError> {
    if !RESERVED_SERVICE_IDS.contains(&id.get_ref().as_str()) {
        return Ok(());
    }
    cx.err(
        &id.span(),
        prefix.to_string(),
        format!(
            "service id {:?} is reserved: its unit shim-{0}.service would be shim's own",
            id.get_ref()
        ),
    )
}

fn validate_service(
    cx: &Ctx<'_>,
    id: &Spanned<String>,
    svc: &Spanned<RawService>,
) -> Result<ServiceDef, ConfigError> {
    let prefix = format!("services.{}", id.get_ref());
    let ident = Ident::parse(id.get_ref())
        .or_else(|m| cx.err(&id.span(), prefix.clone(), format!("service id {m}")))?;
    refuse_reserved(cx, id, &prefix)?;
    let line = Some(line_of(cx.text, id.span().start));
    let r = svc.get_ref();

    let image = validate_image(cx, &prefix, id, &r.image)?;
    let env = validate_env(cx, &r.env, &prefix)?;
    let env_files = validate_env_files(cx, &prefix, &r.env_files)?;
    let user = match &r.user {
        None => None,
        Some(u) => {
            super::parse_user_spec(u.get_ref())
                .or_else(|m| cx.err(&u.span(), format!("{prefix}.user"), m))?;
            Some(u.get_ref().clone())
        }
    };
    let cron = match &r.cron {
        None => None,
        Some(c) => Some(validate_cron(cx, &prefix, c)?),
    };
    let seccomp = match &r.seccomp {
        None => super::Seccomp::Default,
        Some(v) => parse_seccomp(cx, &prefix, v)?,
    };
    let limits = validate_limits(cx, &prefix, (&r.memory, &r.cpus, &r.pids, &r.nofile))?;
    let surface = Surface {
        limits,
        mounts: validate_mounts(cx, &prefix, &r.mounts)?,
        cap_add: validate_caps(cx, &format!("{prefix}.cap_add"), &r.cap_add)?,
        cap_drop: validate_caps(cx, &format!("{prefix}.cap_drop"), &r.cap_drop)?,
        init: r.init.unwrap_or(false),
        secrets: validate_secrets(cx, &prefix, &r.secrets)?,
    };
    let processes = validate_processes(cx, &prefix, id, &r.processes, &surface)?;
    if *r.runtime.get_ref() == Runtime::Podman {
        for (name, p) in &processes {
            let command_check = p.health.as_ref().is_some_and(|h| !h.command.is_empty());
            if !p.mounts.is_empty()
                || !p.cap_add.is_empty()
                || !p.cap_drop.is_empty()
                || p.init
                || command_check
                || !p.secrets.is_empty()
                || p.seccomp.is_some()
            {
                return cx.err(
                    &r.runtime.span(),
                    format!("{prefix}.processes.{name}"),
                    "mounts, cap_add, cap_drop, init, secrets, a process's own seccomp and command health checks are not supported with runtime = \"podman\" yet: use runc or crun".into(),
                );
            }
        }
    }

    Ok(ServiceDef {
        id: ident,
        source: cx.file.to_path_buf(),
        line,
        image: image.get_ref().clone(),
        image_line: Some(line_of(cx.text, image.span().start)),
        runtime: *r.runtime.get_ref(),
        env,
        env_files,
        user,
        seccomp,
        cron,
        processes,
    })
}

/// `image`: present, and a reference that parses once a revision is filled in.
fn validate_image<'a>(
    cx: &Ctx<'_>,
    prefix: &str,
    id: &Spanned<String>,
    image: &'a Option<Spanned<String>>,
) -> Result<&'a Spanned<String>, ConfigError> {
    let Some(image) = image else {
        return cx.err(
            &id.span(),
            format!("{prefix}.image"),
            "missing: every service needs an image, e.g. \"oci:/var/lib/images/app:{revision}\""
                .into(),
        );
    };
    if image.get_ref().trim().is_empty() {
        return cx.err(&image.span(), format!("{prefix}.image"), "is empty".into());
    }
    // The reference must parse once a revision is filled in; catching a typo here keeps it from
    // surfacing half way through a deploy.
    let probe = image.get_ref().replace("{revision}", "0000000");
    if let Err(e) = crate::image::ImageRef::parse(&probe) {
        return cx.err(&image.span(), format!("{prefix}.image"), e.to_string());
    }
    Ok(image)
}

/// `env_files`: absolute paths.
fn validate_env_files(
    cx: &Ctx<'_>,
    prefix: &str,
    files: &[Spanned<String>],
) -> Result<Vec<PathBuf>, ConfigError> {
    let mut env_files = Vec::new();
    for f in files {
        let p = PathBuf::from(f.get_ref());
        if !p.is_absolute() {
            return cx.err(
                &f.span(),
                format!("{prefix}.env_files"),
                format!("{:?} must be an absolute path", f.get_ref()),
            );
        }
        env_files.push(p);
    }
    Ok(env_files)
}

/// `cron`: the path of the crontab generator in the image.
fn validate_cron(cx: &Ctx<'_>, prefix: &str, c: &Spanned<String>) -> Result<String, ConfigError> {
    let v = c.get_ref();
    if v.trim().is_empty() || v.contains('\0') || v.trim() != v {
        return cx.err(
            &c.span(),
            format!("{prefix}.cron"),
            format!(
                "{v:?} must be the path of a program in the image that prints a crontab, \
                 e.g. \"bin/generate-cron\" (relative to the image's working directory) \
                 or \"/app/bin/generate-cron\""
            ),
        );
    }
    Ok(v.clone())
}

/// `processes`: at least one, each with a valid name.
fn validate_processes(
    cx: &Ctx<'_>,
    prefix: &str,
    id: &Spanned<String>,
    raw: &BTreeMap<Spanned<String>, Spanned<RawProcess>>,
    service: &Surface,
) -> Result<BTreeMap<Ident, ProcessDef>, ConfigError> {
    if raw.is_empty() {
        return cx.err(
            &id.span(),
            format!("{prefix}.processes"),
            "missing: define at least one process, e.g. [services.ID.processes.web]".into(),
        );
    }
    let mut processes = BTreeMap::new();
    for (pname, p) in raw {
        let pprefix = format!("{prefix}.processes.{}", pname.get_ref());
        let pident = Ident::parse(pname.get_ref())
            .or_else(|m| cx.err(&pname.span(), pprefix.clone(), format!("process name {m}")))?;
        let mut def = validate_process(cx, &pprefix, pident.clone(), p)?;
        let r = p.get_ref();
        def.limits = def.limits.or(service.limits);
        if r.mounts.is_none() {
            def.mounts = service.mounts.clone();
        }
        if r.cap_add.is_none() {
            def.cap_add = service.cap_add.clone();
        }
        if r.cap_drop.is_none() {
            def.cap_drop = service.cap_drop.clone();
        }
        if r.init.is_none() {
            def.init = service.init;
        }
        if r.secrets.is_none() {
            def.secrets = service.secrets.clone();
        }
        if let Some(s) = def
            .secrets
            .iter()
            .find(|s| def.mounts.iter().any(|m| m.target() == s.target))
        {
            return cx.err(
                &p.span(),
                format!("{pprefix}.secrets"),
                format!("target {:?} is both a secret and a mount", s.target),
            );
        }
        processes.insert(pident, def);
    }
    Ok(processes)
}

fn validate_process(
    cx: &Ctx<'_>,
    prefix: &str,
    name: Ident,
    p: &Spanned<RawProcess>,
) -> Result<ProcessDef, ConfigError> {
    let r = p.get_ref();
    let command = match &r.command {
        None => None,
        Some(c) => Some(validate_command(cx, prefix, c)?),
    };
    let count = match &r.count {
        None => 1,
        Some(c) => validate_count(cx, prefix, c)?,
    };
    let health = match &r.health {
        None => None,
        Some(h) => Some(validate_health(cx, &format!("{prefix}.health"), h)?),
    };
    let checks_port = health.as_ref().is_some_and(Health::needs_port);
    if r.port == Some(false) && r.proxy.is_some() {
        return cx.err(
            &p.span(),
            format!("{prefix}.port"),
            "port = false but a proxied process needs a port for nginx to reach".into(),
        );
    }
    if r.port == Some(false) && checks_port {
        return cx.err(
            &p.span(),
            format!("{prefix}.port"),
            "port = false but HTTP and TCP health checks need a port to reach the instance (a command check does not)".into(),
        );
    }
    let stop_timeout = match &r.stop_timeout {
        None => Duration::from_secs(30),
        Some(s) => validate_stop_timeout(cx, prefix, s)?,
    };
    let stop_signal = match &r.stop_signal {
        None => None,
        Some(s) => Some(
            normalise_signal(s.get_ref())
                .or_else(|m| cx.err(&s.span(), format!("{prefix}.stop_signal"), m))?,
        ),
    };
    let env = validate_env(cx, &r.env, prefix)?;
    let proxy = match &r.proxy {
        None => None,
        Some(px) => Some(validate_proxy(cx, prefix, px, health.is_some())?),
    };
    if let (Some(px), 0) = (&r.proxy, count) {
        return cx.err(
            &px.span(),
            format!("{prefix}.proxy"),
            "count = 0 with a proxy: nginx would be pointed at no instance (remove the proxy, or raise count)".into(),
        );
    }
    let drain = match &r.drain {
        None => Duration::from_secs(5),
        Some(d) => cx.duration(d, format!("{prefix}.drain"))?,
    };
    let limits = validate_limits(cx, prefix, (&r.memory, &r.cpus, &r.pids, &r.nofile))?;
    Ok(ProcessDef {
        limits,
        mounts: validate_mounts(cx, prefix, &r.mounts)?,
        cap_add: validate_caps(cx, &format!("{prefix}.cap_add"), &r.cap_add)?,
        cap_drop: validate_caps(cx, &format!("{prefix}.cap_drop"), &r.cap_drop)?,
        init: r.init.unwrap_or(false),
        secrets: validate_secrets(cx, prefix, &r.secrets)?,
        seccomp: match &r.seccomp {
            None => None,
            Some(v) => Some(parse_seccomp(cx, prefix, v)?),
        },
        name,
        command,
        count,
        port: r.port.unwrap_or(checks_port || r.proxy.is_some()),
        health,
        stop_timeout,
        stop_signal,
        read_only: r.read_only,
        env,
        proxy,
        drain,
        singleton: r.singleton,
    })
}

/// What a service gives its processes by default: limits, mounts, capabilities.
struct Surface {
    limits: Limits,
    mounts: Vec<MountDef>,
    cap_add: Vec<String>,
    cap_drop: Vec<String>,
    init: bool,
    secrets: Vec<SecretFile>,
}

/// `seccomp = "default" | "unconfined" | "/abs/profile.json"` at `prefix`.
fn parse_seccomp(
    cx: &Ctx<'_>,
    prefix: &str,
    v: &Spanned<String>,
) -> Result<super::Seccomp, ConfigError> {
    Ok(match v.get_ref().as_str() {
        "default" => super::Seccomp::Default,
        "unconfined" => super::Seccomp::Unconfined,
        p if p.starts_with('/') => super::Seccomp::Profile(PathBuf::from(p)),
        other => {
            return cx.err(
                &v.span(),
                format!("{prefix}.seccomp"),
                format!("{other:?}: use \"default\", \"unconfined\" or an absolute path to a seccomp profile"),
            )
        }
    })
}

/// `secrets`: files on the host (absolute `source`), each bind-mounted read-only at an
/// absolute `target` no other secret has, with an octal `mode` (default `0400`).
fn validate_secrets(
    cx: &Ctx<'_>,
    prefix: &str,
    raw: &Option<Spanned<Vec<Spanned<RawSecret>>>>,
) -> Result<Vec<SecretFile>, ConfigError> {
    let Some(list) = raw else {
        return Ok(Vec::new());
    };
    let mut out: Vec<SecretFile> = Vec::new();
    for (i, m) in list.get_ref().iter().enumerate() {
        let key = format!("{prefix}.secrets[{i}]");
        let r = m.get_ref();
        let bad_path = |p: &str| {
            !p.starts_with('/') || p == "/" || p.split('/').any(|c| c == ".." || c == ".")
        };
        let (source, target) = (r.source.get_ref(), r.target.get_ref());
        if bad_path(source) || source.ends_with('/') {
            let msg =
                format!("{source:?}: an absolute path of a file on this host, without . or ..");
            return mount_err(cx, &key, &r.source.span(), "source", msg);
        }
        if bad_path(target) || target.ends_with('/') {
            let msg =
                format!("{target:?}: an absolute path of a file in the container, without . or ..");
            return mount_err(cx, &key, &r.target.span(), "target", msg);
        }
        let mode = match &r.mode {
            None => 0o400,
            Some(v) => match u32::from_str_radix(v.get_ref(), 8)
                .ok()
                .filter(|m| *m <= 0o777)
            {
                Some(m) => m,
                None => {
                    let msg = format!(
                        "{:?}: an octal file mode such as \"0400\" or \"0440\"",
                        v.get_ref()
                    );
                    return mount_err(cx, &key, &v.span(), "mode", msg);
                }
            },
        };
        if out.iter().any(|o| o.target == *target) {
            return cx.err(&m.span(), key, format!("target {target:?} is given twice"));
        }
        out.push(SecretFile {
            source: PathBuf::from(source),
            target: target.clone(),
            mode,
        });
    }
    Ok(out)
}

/// Directories a mount must not expose: the host's root and shim's own state.
const FORBIDDEN_SOURCES: [&str; 3] = ["/", "/var/lib/shim", "/run/shim"];

/// `mounts`: each a bind (an absolute `source` that is not `/` nor shim's state), a volume
/// (a name) or a tmpfs (`size`, `mode`), at an absolute `target` no other mount has.
fn validate_mounts(
    cx: &Ctx<'_>,
    prefix: &str,
    raw: &Option<Spanned<Vec<Spanned<RawMount>>>>,
) -> Result<Vec<MountDef>, ConfigError> {
    let Some(list) = raw else {
        return Ok(Vec::new());
    };
    let mut out: Vec<MountDef> = Vec::new();
    for (i, m) in list.get_ref().iter().enumerate() {
        let key = format!("{prefix}.mounts[{i}]");
        let def = validate_mount(cx, &key, m)?;
        if out.iter().any(|o| o.target() == def.target()) {
            return cx.err(
                &m.span(),
                key,
                format!("target {:?} is mounted twice", def.target()),
            );
        }
        out.push(def);
    }
    Ok(out)
}

/// An error about `key.what` of a mount.
fn mount_err<T>(
    cx: &Ctx<'_>,
    key: &str,
    span: &std::ops::Range<usize>,
    what: &str,
    msg: String,
) -> Result<T, ConfigError> {
    cx.err(span, format!("{key}.{what}"), msg)
}

fn validate_mount(cx: &Ctx<'_>, key: &str, m: &Spanned<RawMount>) -> Result<MountDef, ConfigError> {
    let r = m.get_ref();
    let target = r.target.get_ref().clone();
    if !target.starts_with('/') || target == "/" || target.split('/').any(|c| c == ".." || c == ".")
    {
        let msg =
            format!("{target:?}: an absolute path in the container, not / and without . or ..");
        return mount_err(cx, key, &r.target.span(), "target", msg);
    }
    let typ = r.typ.get_ref().as_str();
    let source = |want: &str| match &r.source {
        Some(s) => Ok(s),
        None => cx.err(
            &m.span(),
            format!("{key}.source"),
            format!("missing: a {typ} mount needs a source ({want})"),
        ),
    };
    if typ != "tmpfs" {
        for (k, v) in [("size", &r.size), ("mode", &r.mode)] {
            if let Some(v) = v {
                let msg = format!("only for a tmpfs mount, not a {typ} one");
                return mount_err(cx, key, &v.span(), k, msg);
            }
        }
    }
    let read_only = r.read_only.unwrap_or(false);
    match typ {
        "bind" => {
            let s = source("an absolute host path")?;
            let source = validate_bind_source(cx, key, s)?;
            Ok(MountDef::Bind {
                source,
                target,
                read_only,
            })
        }
        "volume" => {
            let s = source("a name")?;
            Ident::parse(s.get_ref())
                .or_else(|e| mount_err(cx, key, &s.span(), "source", format!("volume name {e}")))?;
            let source = s.get_ref().clone();
            Ok(MountDef::Volume {
                source,
                target,
                read_only,
            })
        }
        "tmpfs" => validate_tmpfs(cx, key, r, target),
        other => {
            let msg = format!("{other:?}: use \"bind\", \"volume\" or \"tmpfs\"");
            mount_err(cx, key, &r.typ.span(), "type", msg)
        }
    }
}

/// A bind mount's source: an absolute host path, not `/` nor shim's own state.
fn validate_bind_source(
    cx: &Ctx<'_>,
    key: &str,
    s: &Spanned<String>,
) -> Result<PathBuf, ConfigError> {
    let src = s.get_ref();
    let norm = src.trim_end_matches('/');
    let forbidden = FORBIDDEN_SOURCES.iter().any(|f| {
        let f = f.trim_end_matches('/');
        norm.is_empty() || norm == f || (!f.is_empty() && norm.starts_with(&format!("{f}/")))
    });
    if !src.starts_with('/') || src.split('/').any(|c| c == "..") || forbidden {
        let msg = format!(
            "{src:?}: an absolute host path, not / and not under /var/lib/shim or /run/shim"
        );
        return mount_err(cx, key, &s.span(), "source", msg);
    }
    Ok(PathBuf::from(src))
}

/// A tmpfs mount: no source, a `size` of at least 4K, an octal `mode` (1777 by default).
fn validate_tmpfs(
    cx: &Ctx<'_>,
    key: &str,
    r: &RawMount,
    target: String,
) -> Result<MountDef, ConfigError> {
    if let Some(s) = &r.source {
        return mount_err(
            cx,
            key,
            &s.span(),
            "source",
            "a tmpfs mount has no source".into(),
        );
    }
    let size = match &r.size {
        None => None,
        Some(v) => match super::parse_bytes(v.get_ref()).filter(|b| *b >= 4096) {
            Some(b) => Some(b),
            None => {
                let msg = format!(
                    "{:?}: bytes with K, M, G (powers of 1024), at least 4K",
                    v.get_ref()
                );
                return mount_err(cx, key, &v.span(), "size", msg);
            }
        },
    };
    let mode = match &r.mode {
        None => 0o1777,
        Some(v) => match u32::from_str_radix(v.get_ref(), 8)
            .ok()
            .filter(|m| *m <= 0o7777)
        {
            Some(m) => m,
            None => {
                let msg = format!(
                    "{:?}: an octal mode such as \"1777\" or \"0700\"",
                    v.get_ref()
                );
                return mount_err(cx, key, &v.span(), "mode", msg);
            }
        },
    };
    Ok(MountDef::Tmpfs { target, size, mode })
}

/// `cap_add`/`cap_drop`: capability names (`NET_RAW`, `CAP_NET_RAW`, any case), as `CAP_NAME`.
fn validate_caps(
    cx: &Ctx<'_>,
    key: &str,
    raw: &Option<Spanned<Vec<Spanned<String>>>>,
) -> Result<Vec<String>, ConfigError> {
    let Some(list) = raw else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    for c in list.get_ref() {
        let cap = super::parse_capability(c.get_ref())
            .ok_or(())
            .or_else(|_| {
                cx.err(
                    &c.span(),
                    key.to_string(),
                    format!(
                        "{:?} is not a capability Linux knows (e.g. \"NET_RAW\", \"SYS_PTRACE\")",
                        c.get_ref()
                    ),
                )
            })?;
        let name = format!("CAP_{cap}");
        if !out.contains(&name) {
            out.push(name);
        }
    }
    Ok(out)
}

/// The raw limit keys of a service or process.
type RawLimits<'a> = (
    &'a Option<Spanned<String>>,
    &'a Option<Spanned<toml::Value>>,
    &'a Option<Spanned<i64>>,
    &'a Option<Spanned<i64>>,
);

/// Largest `nofile`: the kernel's default `fs.nr_open`.
const MAX_NOFILE: i64 = 1 << 20;

/// `memory`, `cpus`, `pids`, `nofile`.
fn validate_limits(
    cx: &Ctx<'_>,
    prefix: &str,
    (memory, cpus, pids, nofile): RawLimits<'_>,
) -> Result<Limits, ConfigError> {
    let memory = match memory {
        None => None,
        Some(m) => Some(
            super::parse_bytes(m.get_ref())
                .filter(|b| *b >= 1 << 20)
                .ok_or(())
                .or_else(|_| {
                    cx.err(
                        &m.span(),
                        format!("{prefix}.memory"),
                        format!("{:?}: give bytes with K, M, G or T (powers of 1024), at least 1M, e.g. \"512M\"", m.get_ref()),
                    )
                })?,
        ),
    };
    let cpus_milli = match cpus {
        None => None,
        Some(c) => {
            let v = match c.get_ref() {
                toml::Value::Integer(i) => Some(*i as f64),
                toml::Value::Float(f) => Some(*f),
                _ => None,
            };
            match v {
                Some(v) if (0.01..=1024.0).contains(&v) => Some((v * 1000.0).round() as u32),
                _ => {
                    return cx.err(
                        &c.span(),
                        format!("{prefix}.cpus"),
                        format!(
                            "{}: a number of CPUs from 0.01 to 1024, e.g. 1.5",
                            c.get_ref()
                        ),
                    )
                }
            }
        }
    };
    let count =
        |v: &Option<Spanned<i64>>, key: &str, max: i64| -> Result<Option<u64>, ConfigError> {
            match v {
                None => Ok(None),
                Some(n) if (1..=max).contains(n.get_ref()) => Ok(Some(*n.get_ref() as u64)),
                Some(n) => cx.err(
                    &n.span(),
                    format!("{prefix}.{key}"),
                    format!("{}: from 1 to {max}", n.get_ref()),
                ),
            }
        };
    Ok(Limits {
        memory,
        cpus_milli,
        pids: count(pids, "pids", 4_194_304)?,
        nofile: count(nofile, "nofile", MAX_NOFILE)?,
    })
}

/// `command`: names a program.
fn validate_command(
    cx: &Ctx<'_>,
    prefix: &str,
    c: &Spanned<Vec<String>>,
) -> Result<Vec<String>, ConfigError> {
    if c.get_ref().is_empty() || c.get_ref()[0].is_empty() {
        return cx.err(
            &c.span(),
            format!("{prefix}.command"),
            "must name a program; leave it out to use the image's entrypoint and cmd".into(),
        );
    }
    Ok(c.get_ref().clone())
}

/// `count`: within 0..MAX_COUNT.
fn validate_count(cx: &Ctx<'_>, prefix: &str, c: &Spanned<i64>) -> Result<u32, ConfigError> {
    let n = *c.get_ref();
    if !(0..=MAX_COUNT).contains(&n) {
        return cx.err(
            &c.span(),
            format!("{prefix}.count"),
            format!("{n} is out of range 0..{MAX_COUNT}"),
        );
    }
    Ok(n as u32) // within 0..=256, checked just above
}

/// `stop_timeout`: a duration above 0.
fn validate_stop_timeout(
    cx: &Ctx<'_>,
    prefix: &str,
    s: &Spanned<String>,
) -> Result<Duration, ConfigError> {
    let d = cx.duration(s, format!("{prefix}.stop_timeout"))?;
    if d.is_zero() {
        return cx.err(
            &s.span(),
            format!("{prefix}.stop_timeout"),
            "must be more than 0".into(),
        );
    }
    Ok(d)
}

/// `proxy`: an nginx upstream name and an absolute .conf path, for a health-checked process.
fn validate_proxy(
    cx: &Ctx<'_>,
    prefix: &str,
    px: &Spanned<RawProxy>,
    has_health: bool,
) -> Result<Proxy, ConfigError> {
    let px_r = px.get_ref();
    let up = px_r.upstream.get_ref();
    if up.is_empty()
        || !up
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        return cx.err(
            &px_r.upstream.span(),
            format!("{prefix}.proxy.upstream"),
            format!("{up:?} is not an nginx upstream name (letters, digits, '_', '-')"),
        );
    }
    let file = PathBuf::from(px_r.file.get_ref());
    if !file.is_absolute() || file.extension().is_none_or(|e| e != "conf") {
        return cx.err(
            &px_r.file.span(),
            format!("{prefix}.proxy.file"),
            format!(
                "{:?} must be an absolute path ending in .conf",
                px_r.file.get_ref()
            ),
        );
    }
    if !has_health {
        return cx.err(&px.span(), format!("{prefix}.proxy"), "a proxied process needs a health check: nginx is only switched to instances that answer it".into());
    }
    Ok(Proxy {
        upstream: up.clone(),
        file,
    })
}

/// Which check `h` is: exactly one of `path` (HTTP), `tcp = true` or `command`. Returns the
/// path ("" unless HTTP) and the command (empty unless a command check).
fn health_kind(
    cx: &Ctx<'_>,
    prefix: &str,
    h: &Spanned<RawHealth>,
) -> Result<(String, Vec<String>), ConfigError> {
    let r = h.get_ref();
    let given = [
        r.path.is_some(),
        r.tcp.unwrap_or(false),
        r.command.is_some(),
    ];
    if given.iter().filter(|g| **g).count() != 1 {
        return cx.err(
            &h.span(),
            format!("{prefix}.path"),
            "give exactly one of path = \"/health\" (an HTTP check), tcp = true (a connect to $PORT) or command = [\"bin/check\"] (run in the container, healthy on exit 0)".into(),
        );
    }
    if let Some(c) = &r.command {
        let argv = c.get_ref();
        if argv.is_empty() || argv.iter().any(|a| a.is_empty() || a.contains('\0')) {
            return cx.err(
                &c.span(),
                format!("{prefix}.command"),
                "must be a non-empty list of non-empty arguments, e.g. [\"bin/healthcheck\", \"--quick\"]".into(),
            );
        }
        return Ok((String::new(), argv.clone()));
    }
    let Some(p) = &r.path else {
        return Ok((String::new(), Vec::new()));
    };
    let path = p.get_ref();
    if !path.starts_with('/') || path.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return cx.err(
            &p.span(),
            format!("{prefix}.path"),
            format!("{path:?} must be an absolute URL path like \"/health\""),
        );
    }
    Ok((path.clone(), Vec::new()))
}

fn validate_health(
    cx: &Ctx<'_>,
    prefix: &str,
    h: &Spanned<RawHealth>,
) -> Result<Health, ConfigError> {
    let r = h.get_ref();
    let (path, command) = health_kind(cx, prefix, h)?;
    let get = |v: &Option<Spanned<String>>, key: &str, default: Duration| match v {
        None => Ok(default),
        Some(s) => cx.duration(s, format!("{prefix}.{key}")),
    };
    let interval = get(&r.interval, "interval", Duration::from_secs(5))?;
    let timeout = get(&r.timeout, "timeout", Duration::from_secs(2))?;
    let start_period = get(&r.start_period, "start_period", Duration::from_secs(30))?;
    let span = |v: &Option<Spanned<String>>| v.as_ref().map(|s| s.span()).unwrap_or(h.span());
    if interval < Duration::from_secs(1) {
        return cx.err(
            &span(&r.interval),
            format!("{prefix}.interval"),
            "must be at least 1s (the probe runs at most once a second)".into(),
        );
    }
    if !command.is_empty() && timeout > Duration::from_secs(60) {
        return cx.err(
            &span(&r.timeout),
            format!("{prefix}.timeout"),
            "a command check's timeout is at most 60s (the probe run that makes it has a time limit)".into(),
        );
    }
    if timeout.is_zero() || timeout > interval {
        return cx.err(
            &span(&r.timeout),
            format!("{prefix}.timeout"),
            "must be more than 0 and not longer than interval".into(),
        );
    }
    let unhealthy_after = match &r.unhealthy_after {
        None => 3,
        Some(n) => {
            if !(1..=100).contains(n.get_ref()) {
                return cx.err(
                    &n.span(),
                    format!("{prefix}.unhealthy_after"),
                    format!("{} is out of range 1..100", n.get_ref()),
                );
            }
            *n.get_ref() as u32 // within 1..=100, checked just above
        }
    };
    Ok(Health {
        path,
        command,
        interval,
        timeout,
        unhealthy_after,
        start_period,
    })
}

/// `"SIGTERM"`, `"TERM"` or `"sigterm"` → `"SIGTERM"`, refusing names the kernel does not know.
pub(crate) fn normalise_signal(s: &str) -> Result<String, String> {
    let upper = s.trim().to_ascii_uppercase();
    let name = if upper.starts_with("SIG") {
        upper
    } else {
        format!("SIG{upper}")
    };
    nix::sys::signal::Signal::from_str(&name)
        .map(|sig| sig.as_str().to_string())
        .map_err(|_| format!("{s:?} is not a signal name (e.g. SIGTERM, SIGINT, SIGQUIT)"))
}

/// The dotted key whose value starts at byte `pos`: the last `[table]` header above it plus
/// the `key =` on its line (best effort, for error messages only).
fn key_at(text: &str, pos: usize) -> String {
    let pos = pos.min(text.len());
    let line_start = text[..pos].rfind('\n').map_or(0, |i| i + 1);
    let before = &text[line_start..pos];
    let key = before
        .rfind('=')
        .map(|eq| before[..eq].trim())
        .map(|k| {
            k.rsplit(['{', ','])
                .next()
                .unwrap_or(k)
                .trim()
                .trim_matches('"')
                .to_string()
        })
        .unwrap_or_default();
    let table = text[..line_start]
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| l.starts_with('[') && l.ends_with(']'))
        .map(|l| l.trim_matches(['[', ']']).trim().to_string())
        .unwrap_or_default();
    match (table.is_empty(), key.is_empty()) {
        (_, true) => table,
        (true, false) => key,
        (false, false) => format!("{table}.{key}"),
    }
}
