//! The definition file as written (serde, unknown keys refused), and its validation into
//! [`ServiceDef`]s. Values that need checks beyond their type are `Spanned` so that the error
//! can name their line.
//!
//! Flow: `parse_file` deserializes the whole file into the `Raw*` types below, then validates
//! it table by table, one file per section: `shim.rs` the `[shim]` settings, `service.rs` a
//! service (id, image, env, cron, its processes), `process.rs` a process, `mounts.rs` its
//! mounts and secrets, `limits.rs` its limits and capabilities, `health.rs` its health check.

mod health;
mod limits;
mod mounts;
mod process;
mod service;
mod shim;

// The sections call each other through these (`use super::*` in each).
use health::*;
use limits::*;
use mounts::*;
pub(crate) use process::normalise_signal;
use process::*;
use service::*;
use shim::*;

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
