//! The deployment record's definition, as of state file version 1 (`host::state`'s
//! `STATE_VERSION`; files without a version hold the same shape): the shape in which a
//! deployed [`ServiceDef`] is persisted (in each state file's `deployment`) and hashed (into
//! the deployment's id).
//!
//! Flow: `Deployment.definition` is a [`ServiceDef`] in memory; it is written and read
//! through [`DefinitionRecord`] ([`as_record`]), and [`DefinitionRecord::digest`] hashes the
//! record, never the config types. The config types can then change shape freely (a health
//! check becoming an enum, a new key) while the record, and with it every deployed id, stays
//! as it was. The golden tests (`plan::golden_tests`, `tests/golden/`) pin the record's JSON
//! and the ids computed from it.
//!
//! The rule for a new config key: add it here as a field that old records lack, with
//! `#[serde(default, skip_serializing_if = …)]` so that a definition that does not use it
//! serializes (and hashes) exactly as before; fill it in `From<&ServiceDef>`, read it back in
//! `From<DefinitionRecord>`. Field order is part of the hash: append, never reorder. The
//! golden tests must pass unchanged; add a golden service that uses the new key.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sha2::Digest as _;

use crate::config::{
    Health, Ident, Limits, MountDef, ProcessDef, Proxy, Runtime, Seccomp, SecretFile, ServiceDef,
};

/// A service's definition as deployed (field order is hashed: append only).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DefinitionRecord {
    pub id: Ident,
    pub source: PathBuf,
    pub line: Option<usize>,
    pub image: String,
    pub image_line: Option<usize>,
    pub runtime: RuntimeRecord,
    pub env: BTreeMap<String, String>,
    pub env_files: Vec<PathBuf>,
    pub user: Option<String>,
    pub seccomp: SeccompRecord,
    pub cron: Option<String>,
    pub processes: BTreeMap<Ident, ProcessRecord>,
}

/// A process's definition as deployed. The `default`s read records written before the key
/// existed; the `skip_serializing_if`s keep the hash of a definition that does not use a
/// newer key as it was before that key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessRecord {
    pub name: Ident,
    pub command: Option<Vec<String>>,
    pub count: u32,
    pub health: Option<HealthRecord>,
    pub port: bool,
    pub stop_timeout: Duration,
    pub stop_signal: Option<String>,
    pub read_only: bool,
    pub env: BTreeMap<String, String>,
    pub proxy: Option<ProxyRecord>,
    pub drain: Duration,
    pub singleton: bool,
    #[serde(default)]
    pub limits: LimitsRecord,
    #[serde(default)]
    pub mounts: Vec<MountRecord>,
    #[serde(default)]
    pub cap_add: Vec<String>,
    #[serde(default)]
    pub cap_drop: Vec<String>,
    #[serde(default)]
    pub init: bool,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub secrets: Vec<SecretRecord>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seccomp: Option<SeccompRecord>,
}

/// A health check as deployed: an HTTP `path`, "" with no `command` for a TCP connect, or a
/// `command` (absent for the others, as before command checks existed).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthRecord {
    pub path: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub command: Vec<String>,
    pub interval: Duration,
    pub timeout: Duration,
    pub unhealthy_after: u32,
    pub start_period: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RuntimeRecord {
    Runc,
    Crun,
    Podman,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SeccompRecord {
    Default,
    Unconfined,
    Profile(PathBuf),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProxyRecord {
    pub upstream: String,
    pub file: PathBuf,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LimitsRecord {
    pub memory: Option<u64>,
    pub cpus_milli: Option<u32>,
    pub pids: Option<u64>,
    pub nofile: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum MountRecord {
    Bind {
        source: PathBuf,
        target: String,
        read_only: bool,
    },
    Volume {
        source: String,
        target: String,
        read_only: bool,
    },
    Tmpfs {
        target: String,
        size: Option<u64>,
        mode: u32,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecretRecord {
    pub source: PathBuf,
    pub target: String,
    pub mode: u32,
}

/// SHA-256 over length-prefixed parts, so that no two different lists of parts hash alike.
pub(crate) fn sha256_hex(parts: &[&[u8]]) -> String {
    let mut h = sha2::Sha256::new();
    for p in parts {
        h.update((p.len() as u64).to_le_bytes());
        h.update(p);
    }
    hex::encode(h.finalize())
}

impl DefinitionRecord {
    /// The digest of a definition as it reaches the instances: everything but where it was
    /// read from (file and lines) and how many instances each process has (a deployment
    /// scales in place: `shim upgrade` starts or stops the difference), and the seccomp
    /// profiles' texts (the service's, then each process's own, by name).
    pub fn digest(
        &self,
        seccomp: Option<&str>,
        process_seccomp: &BTreeMap<String, Option<String>>,
    ) -> String {
        let mut d = self.clone();
        d.source = PathBuf::new();
        d.line = None;
        d.image_line = None;
        for p in d.processes.values_mut() {
            p.count = 0;
        }
        // Serializing plain data (strings, numbers, maps with string keys) cannot fail.
        let json = serde_json::to_vec(&d).unwrap_or_default();
        let mut parts: Vec<&[u8]> = vec![&json, seccomp.unwrap_or("\0unconfined").as_bytes()];
        // Only processes with a profile of their own add parts: other digests stay as they were.
        for (name, text) in process_seccomp {
            parts.push(name.as_bytes());
            parts.push(text.as_deref().unwrap_or("\0unconfined").as_bytes());
        }
        format!("sha256:{}", sha256_hex(&parts))
    }
}

impl From<&ServiceDef> for DefinitionRecord {
    fn from(s: &ServiceDef) -> Self {
        DefinitionRecord {
            id: s.id.clone(),
            source: s.source.clone(),
            line: s.line,
            image: s.image.clone(),
            image_line: s.image_line,
            runtime: s.runtime.into(),
            env: s.env.clone(),
            env_files: s.env_files.clone(),
            user: s.user.clone(),
            seccomp: (&s.seccomp).into(),
            cron: s.cron.clone(),
            processes: s
                .processes
                .iter()
                .map(|(k, p)| (k.clone(), p.into()))
                .collect(),
        }
    }
}

impl From<DefinitionRecord> for ServiceDef {
    fn from(r: DefinitionRecord) -> Self {
        ServiceDef {
            id: r.id,
            source: r.source,
            line: r.line,
            image: r.image,
            image_line: r.image_line,
            runtime: r.runtime.into(),
            env: r.env,
            env_files: r.env_files,
            user: r.user,
            seccomp: r.seccomp.into(),
            cron: r.cron,
            processes: r
                .processes
                .into_iter()
                .map(|(k, p)| (k, p.into()))
                .collect(),
        }
    }
}

impl From<&ProcessDef> for ProcessRecord {
    fn from(p: &ProcessDef) -> Self {
        ProcessRecord {
            name: p.name.clone(),
            command: p.command.clone(),
            count: p.count,
            health: p.health.as_ref().map(HealthRecord::from),
            port: p.port,
            stop_timeout: p.stop_timeout,
            stop_signal: p.stop_signal.clone(),
            read_only: p.read_only,
            env: p.env.clone(),
            proxy: p.proxy.as_ref().map(|x| ProxyRecord {
                upstream: x.upstream.clone(),
                file: x.file.clone(),
            }),
            drain: p.drain,
            singleton: p.singleton,
            limits: p.limits.into(),
            mounts: p.mounts.iter().map(MountRecord::from).collect(),
            cap_add: p.cap_add.clone(),
            cap_drop: p.cap_drop.clone(),
            init: p.init,
            secrets: p.secrets.iter().map(SecretRecord::from).collect(),
            seccomp: p.seccomp.as_ref().map(SeccompRecord::from),
        }
    }
}

impl From<ProcessRecord> for ProcessDef {
    fn from(p: ProcessRecord) -> Self {
        ProcessDef {
            name: p.name,
            command: p.command,
            count: p.count,
            health: p.health.map(Health::from),
            port: p.port,
            stop_timeout: p.stop_timeout,
            stop_signal: p.stop_signal,
            read_only: p.read_only,
            env: p.env,
            proxy: p.proxy.map(|x| Proxy {
                upstream: x.upstream,
                file: x.file,
            }),
            drain: p.drain,
            singleton: p.singleton,
            limits: p.limits.into(),
            mounts: p.mounts.into_iter().map(MountDef::from).collect(),
            cap_add: p.cap_add,
            cap_drop: p.cap_drop,
            init: p.init,
            secrets: p.secrets.into_iter().map(SecretFile::from).collect(),
            seccomp: p.seccomp.map(Seccomp::from),
        }
    }
}

impl From<&Health> for HealthRecord {
    fn from(h: &Health) -> Self {
        HealthRecord {
            path: h.path.clone(),
            command: h.command.clone(),
            interval: h.interval,
            timeout: h.timeout,
            unhealthy_after: h.unhealthy_after,
            start_period: h.start_period,
        }
    }
}

impl From<HealthRecord> for Health {
    fn from(h: HealthRecord) -> Self {
        Health {
            path: h.path,
            command: h.command,
            interval: h.interval,
            timeout: h.timeout,
            unhealthy_after: h.unhealthy_after,
            start_period: h.start_period,
        }
    }
}

impl From<Runtime> for RuntimeRecord {
    fn from(r: Runtime) -> Self {
        match r {
            Runtime::Runc => RuntimeRecord::Runc,
            Runtime::Crun => RuntimeRecord::Crun,
            Runtime::Podman => RuntimeRecord::Podman,
        }
    }
}

impl From<RuntimeRecord> for Runtime {
    fn from(r: RuntimeRecord) -> Self {
        match r {
            RuntimeRecord::Runc => Runtime::Runc,
            RuntimeRecord::Crun => Runtime::Crun,
            RuntimeRecord::Podman => Runtime::Podman,
        }
    }
}

impl From<&Seccomp> for SeccompRecord {
    fn from(s: &Seccomp) -> Self {
        match s {
            Seccomp::Default => SeccompRecord::Default,
            Seccomp::Unconfined => SeccompRecord::Unconfined,
            Seccomp::Profile(p) => SeccompRecord::Profile(p.clone()),
        }
    }
}

impl From<SeccompRecord> for Seccomp {
    fn from(s: SeccompRecord) -> Self {
        match s {
            SeccompRecord::Default => Seccomp::Default,
            SeccompRecord::Unconfined => Seccomp::Unconfined,
            SeccompRecord::Profile(p) => Seccomp::Profile(p),
        }
    }
}

impl From<Limits> for LimitsRecord {
    fn from(l: Limits) -> Self {
        LimitsRecord {
            memory: l.memory,
            cpus_milli: l.cpus_milli,
            pids: l.pids,
            nofile: l.nofile,
        }
    }
}

impl From<LimitsRecord> for Limits {
    fn from(l: LimitsRecord) -> Self {
        Limits {
            memory: l.memory,
            cpus_milli: l.cpus_milli,
            pids: l.pids,
            nofile: l.nofile,
        }
    }
}

impl From<&MountDef> for MountRecord {
    fn from(m: &MountDef) -> Self {
        match m.clone() {
            MountDef::Bind {
                source,
                target,
                read_only,
            } => MountRecord::Bind {
                source,
                target,
                read_only,
            },
            MountDef::Volume {
                source,
                target,
                read_only,
            } => MountRecord::Volume {
                source,
                target,
                read_only,
            },
            MountDef::Tmpfs { target, size, mode } => MountRecord::Tmpfs { target, size, mode },
        }
    }
}

impl From<MountRecord> for MountDef {
    fn from(m: MountRecord) -> Self {
        match m {
            MountRecord::Bind {
                source,
                target,
                read_only,
            } => MountDef::Bind {
                source,
                target,
                read_only,
            },
            MountRecord::Volume {
                source,
                target,
                read_only,
            } => MountDef::Volume {
                source,
                target,
                read_only,
            },
            MountRecord::Tmpfs { target, size, mode } => MountDef::Tmpfs { target, size, mode },
        }
    }
}

impl From<&SecretFile> for SecretRecord {
    fn from(s: &SecretFile) -> Self {
        SecretRecord {
            source: s.source.clone(),
            target: s.target.clone(),
            mode: s.mode,
        }
    }
}

impl From<SecretRecord> for SecretFile {
    fn from(s: SecretRecord) -> Self {
        SecretFile {
            source: s.source,
            target: s.target,
            mode: s.mode,
        }
    }
}

/// `#[serde(with = "…")]` for `Deployment.definition`: a [`ServiceDef`] written and read as
/// its [`DefinitionRecord`].
pub mod as_record {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    use super::DefinitionRecord;
    use crate::config::ServiceDef;

    pub fn serialize<S: Serializer>(def: &ServiceDef, s: S) -> Result<S::Ok, S::Error> {
        DefinitionRecord::from(def).serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<ServiceDef, D::Error> {
        DefinitionRecord::deserialize(d).map(ServiceDef::from)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_golden_definition_round_trips_through_its_record() {
        for (name, def) in crate::plan::golden_tests::definitions() {
            let back = ServiceDef::from(DefinitionRecord::from(&def));
            assert_eq!(back, def, "{name}");
        }
    }

    #[test]
    fn the_digest_ignores_where_it_was_read_and_counts() {
        let defs = crate::plan::golden_tests::definitions();
        let mut r = DefinitionRecord::from(&defs["web"]);
        let before = r.digest(Some("{}"), &BTreeMap::new());
        r.source = "/elsewhere.toml".into();
        r.line = Some(1);
        r.image_line = Some(2);
        r.processes.values_mut().for_each(|p| p.count += 5);
        assert_eq!(r.digest(Some("{}"), &BTreeMap::new()), before);
        assert_ne!(r.digest(None, &BTreeMap::new()), before);
        let own = BTreeMap::from([("http".to_string(), None)]);
        assert_ne!(r.digest(Some("{}"), &own), before);
    }
}
