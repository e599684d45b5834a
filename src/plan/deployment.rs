//! A deployment: what `shim upgrade` decided a service runs, recorded before anything starts
//! and never looked up again. Every later start of an instance (systemd's restarts, the
//! probe's replacements, reboot's reconcile, cron, `shim run`) starts from it:
//!
//! - the **revision** and the image's **manifest digest** (the tag was resolved once, at the
//!   upgrade; moving it changes nothing until the next one), with the image's config and the
//!   user resolved in its /etc/passwd;
//! - the **effective definition**: the service's definition as it was read, and the text of
//!   its seccomp profile;
//! - a digest of the **secrets** read from its `env_files` (their snapshot is a root-only file
//!   beside the state, `host::secrets`);
//! - each instance's **port**, kept for its whole life.
//!
//! Its [`id`](Deployment::id) is a digest of the first three: two upgrades that would run the
//! same thing give the same id ("nothing to do"). Each process's instances carry a
//! [`tag`](Deployment::tag) (in their unit name and `SHIM_DEPLOYMENT`) derived from the id and
//! the process's restart generation, so that the instances of a new deployment of the same
//! revision, or of a rolling `shim restart`, run beside the old ones until nginx switches.
//! Pure: the host adapters gather and store it. It is stored as JSON in the state file
//! (`host::state`), its definition in the shape of `plan::record` (versioned, pinned by the
//! golden tests in `plan::golden_tests`): a field added here needs a default for the records
//! written before it, and, if it enters the id, must leave the id of a deployment that does
//! not use it as it was.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use sha2::Digest as _;

use super::record::{sha256_hex, DefinitionRecord};
use crate::config::{ResolvedUser, ServiceDef};
use crate::image::ImageConfig;

/// What a service runs; see the module documentation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Deployment {
    pub revision: String,
    /// The image reference with the revision filled in, as the definition wrote it.
    pub image: String,
    /// `sha256:<hex>` of the image's platform manifest: what every start runs.
    pub manifest_digest: String,
    pub image_config: ImageConfig,
    /// The user the containers run as, resolved in the image when it was deployed.
    pub user: ResolvedUser,
    /// The definition as it was deployed (its `source` and lines are where it came from),
    /// persisted and hashed as its [`DefinitionRecord`].
    #[serde(with = "super::record::as_record")]
    pub definition: ServiceDef,
    /// The seccomp profile's text; None for `seccomp = "unconfined"`.
    pub seccomp: Option<String>,
    /// The profile text of each process with a `seccomp` of its own (None: unconfined).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub process_seccomp: BTreeMap<String, Option<String>>,
    /// `sha256:<hex>` of the secrets read from `env_files` (see [`secrets_digest`]).
    pub secrets_digest: String,
    /// The content digest (`sha256:<hex>`) of each secret file (`secrets = [...]`) when it was
    /// deployed, by source path; its copy is `host::secrets`' (see [`secret_file_name`]).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub secret_files: BTreeMap<String, String>,
    /// Per process, how many times `shim restart` replaced its instances.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub generations: BTreeMap<String, u32>,
    /// Each instance's port, by [`port_key`].
    #[serde(default)]
    pub ports: BTreeMap<String, u16>,
    /// When it was recorded (µs since the epoch).
    pub deployed_usec: u64,
    /// Set only in tests: instances are named as by a shim without deployment records
    /// (`shim-app-web-r1-1`), so that tests about other things can name units simply.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub untagged: bool,
}

/// `web.1`: the key of an instance in [`Deployment::ports`].
pub fn port_key(process: &str, index: u32) -> String {
    format!("{process}.{index}")
}

/// The digest of a definition as it reaches the instances (see
/// [`DefinitionRecord::digest`]: the definition is hashed as its record, never as the
/// config types).
pub fn definition_digest(
    svc: &ServiceDef,
    seccomp: Option<&str>,
    process_seccomp: &BTreeMap<String, Option<String>>,
) -> String {
    DefinitionRecord::from(svc).digest(seccomp, process_seccomp)
}

/// The digest of the secrets read from `env_files`, in the order they apply.
pub fn secrets_digest(secrets: &[(String, String)]) -> String {
    let parts: Vec<&[u8]> = secrets
        .iter()
        .flat_map(|(k, v)| [k.as_bytes(), v.as_bytes()])
        .collect();
    format!("sha256:{}", sha256_hex(&parts))
}

/// The name of the stored copy of a secret file: its content digest, and the owner and mode
/// the container sees it with (`<hex>-<uid>-<gid>-<mode>`).
pub fn secret_file_name(digest: &str, uid: u32, gid: u32, mode: u32) -> String {
    let hex = digest.strip_prefix("sha256:").unwrap_or(digest);
    format!("{hex}-{uid}-{gid}-{mode:04o}")
}

/// The digest of a secret file's content.
pub fn content_digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(bytes)))
}

/// What differs between two deployments' contents, in words (empty: the same).
pub fn differences(old: &Deployment, new: &Deployment) -> Vec<&'static str> {
    let mut out = Vec::new();
    if old.revision != new.revision {
        out.push("revision");
    }
    if old.manifest_digest != new.manifest_digest {
        out.push("image");
    }
    if old.definition_digest() != new.definition_digest() {
        out.push("definition");
    }
    if old.secrets_digest != new.secrets_digest || old.secret_files != new.secret_files {
        out.push("secrets");
    }
    if counts(&old.definition) != counts(&new.definition) {
        out.push("count");
    }
    out
}

/// Each process's `count`.
pub fn counts(svc: &ServiceDef) -> BTreeMap<String, u32> {
    svc.processes
        .values()
        .map(|p| (p.name.to_string(), p.count))
        .collect()
}

impl Deployment {
    /// The digest of the effective definition (see [`definition_digest`]).
    pub fn definition_digest(&self) -> String {
        definition_digest(
            &self.definition,
            self.seccomp.as_deref(),
            &self.process_seccomp,
        )
    }

    /// 12 hex digits identifying what runs: revision, manifest, definition, secrets.
    pub fn id(&self) -> String {
        let files = self.secret_files_digest();
        let definition = self.definition_digest();
        let mut parts: Vec<&[u8]> = vec![
            self.revision.as_bytes(),
            self.manifest_digest.as_bytes(),
            definition.as_bytes(),
            self.secrets_digest.as_bytes(),
        ];
        // Only when there are secret files: records from before them keep their ids.
        if let Some(f) = &files {
            parts.push(f.as_bytes());
        }
        sha256_hex(&parts)[..12].to_string()
    }

    /// One digest of all secret files' digests (None without secret files).
    fn secret_files_digest(&self) -> Option<String> {
        if self.secret_files.is_empty() {
            return None;
        }
        let parts: Vec<&[u8]> = self
            .secret_files
            .iter()
            .flat_map(|(k, v)| [k.as_bytes(), v.as_bytes()])
            .collect();
        Some(sha256_hex(&parts))
    }

    /// The tag of `process`'s instances: 8 hex digits of the id and the process's restart
    /// generation ("" for an untagged test deployment).
    pub fn tag(&self, process: &str) -> String {
        if self.untagged {
            return String::new();
        }
        let generation = self.generations.get(process).copied().unwrap_or(0);
        let h = sha256_hex(&[
            self.id().as_bytes(),
            process.as_bytes(),
            &generation.to_le_bytes(),
        ]);
        h[..8].to_string()
    }

    /// Every process's tag.
    pub fn tags(&self) -> BTreeMap<String, String> {
        self.definition
            .processes
            .values()
            .map(|d| (d.name.to_string(), self.tag(d.name.as_str())))
            .collect()
    }

    /// Whether an instance of `process` at `revision` with `tag` is one of this deployment's.
    pub fn owns(&self, revision: &str, process: &str, tag: &str) -> bool {
        revision == self.revision
            && self
                .definition
                .processes
                .values()
                .any(|d| d.name.as_str() == process)
            && tag == self.tag(process)
    }

    /// The recorded port of an instance.
    pub fn port(&self, process: &str, index: u32) -> Option<u16> {
        self.ports.get(&port_key(process, index)).copied()
    }

    /// The same deployment with the instances of `processes` (all if empty) due for a
    /// rolling restart: their generation goes up, so they get new tags, and their ports are
    /// forgotten (the new instances run beside the old ones until the switch).
    pub fn restarted(&self, processes: &[String]) -> Deployment {
        let mut d = self.clone();
        let names: Vec<String> = self
            .definition
            .processes
            .values()
            .map(|p| p.name.to_string())
            .filter(|n| processes.is_empty() || processes.contains(n))
            .collect();
        for n in &names {
            *d.generations.entry(n.clone()).or_insert(0) += 1;
            d.ports.retain(|k, _| !k.starts_with(&format!("{n}.")));
        }
        d
    }
}

#[cfg(test)]
pub mod tests {
    use super::*;

    pub fn sample() -> Deployment {
        let defs = crate::config::parse_sources(&[(
            "/etc/shim/services.toml".into(),
            "[services.app]\nimage = \"reg.example/app:{revision}\"\nenv = { A = \"1\" }\n\
             [services.app.processes.web]\ncount = 2\nport = true\n\
             [services.app.processes.worker]\n"
                .into(),
        )])
        .unwrap();
        Deployment {
            revision: "r1".into(),
            image: "reg.example/app:r1".into(),
            manifest_digest: format!("sha256:{}", "a".repeat(64)),
            image_config: ImageConfig::default(),
            user: ResolvedUser { uid: 0, gid: 0 },
            definition: defs.services.values().next().unwrap().clone(),
            seccomp: Some("{}".into()),
            secrets_digest: secrets_digest(&[("S".into(), "v".into())]),
            secret_files: Default::default(),
            process_seccomp: Default::default(),
            generations: BTreeMap::new(),
            ports: BTreeMap::new(),
            deployed_usec: 1,
            untagged: false,
        }
    }

    #[test]
    fn the_id_follows_content_only() {
        let a = sample();
        let mut b = a.clone();
        b.ports.insert(port_key("web", 1), 30000);
        b.deployed_usec = 2;
        b.definition.source = "/etc/shim/services.d/other.toml".into();
        b.definition.line = Some(7);
        assert_eq!(
            a.id(),
            b.id(),
            "ports, time and where it was read do not count"
        );
        assert!(differences(&a, &b).is_empty());
        // A count changes what runs, not the deployment: it scales in place.
        b.definition
            .processes
            .values_mut()
            .for_each(|p| p.count += 1);
        assert_eq!(a.id(), b.id());
        assert_eq!(a.tag("web"), b.tag("web"));
        assert_eq!(differences(&a, &b), vec!["count"]);
        type Change = (&'static str, fn(&mut Deployment));
        let changes: [Change; 5] = [
            ("revision", |d| d.revision = "r2".into()),
            ("image", |d| {
                d.manifest_digest = format!("sha256:{}", "b".repeat(64))
            }),
            ("definition", |d| {
                d.definition.env.insert("B".into(), "2".into());
            }),
            ("definition", |d| d.seccomp = None),
            ("secrets", |d| {
                d.secrets_digest = secrets_digest(&[("S".into(), "w".into())])
            }),
        ];
        for (what, change) in changes {
            let mut c = a.clone();
            change(&mut c);
            assert_ne!(a.id(), c.id(), "{what}");
            assert_eq!(differences(&a, &c), vec![what]);
        }
    }

    #[test]
    fn secrets_digest_tells_keys_from_values() {
        let ab = secrets_digest(&[("A".into(), "B".into())]);
        let a_b = secrets_digest(&[("AB".into(), "".into())]);
        assert_ne!(ab, a_b);
        assert_ne!(secrets_digest(&[]), ab);
    }

    #[test]
    fn a_restart_gives_its_processes_new_tags_and_keeps_the_others() {
        let mut a = sample();
        a.ports.insert(port_key("web", 1), 30000);
        a.ports.insert(port_key("worker", 1), 0);
        let b = a.restarted(&["web".into()]);
        assert_eq!(a.id(), b.id(), "the same deployment");
        assert_ne!(a.tag("web"), b.tag("web"));
        assert_eq!(a.tag("worker"), b.tag("worker"));
        assert_eq!(b.port("web", 1), None);
        assert_eq!(b.port("worker", 1), Some(0));
        assert!(b.owns("r1", "worker", &a.tag("worker")));
        assert!(!b.owns("r1", "web", &a.tag("web")));
        assert!(!b.owns("r2", "web", &b.tag("web")));
        assert!(!b.owns("r1", "nope", &b.tag("web")));
        let all = a.restarted(&[]);
        assert_ne!(all.tag("worker"), a.tag("worker"));
        assert_eq!(a.tag("web").len(), 8);
    }

    #[test]
    fn round_trips_through_json() {
        let mut a = sample();
        a.ports.insert(port_key("web", 2), 30001);
        let text = serde_json::to_string(&a).unwrap();
        let b: Deployment = serde_json::from_str(&text).unwrap();
        assert_eq!(a, b);
        assert_eq!(a.id(), b.id());
        // A hostile record with a bad process name is refused, not used in a unit name.
        let bad = text.replace("\"worker\"", "\"../x\"");
        assert!(serde_json::from_str::<Deployment>(&bad).is_err());
    }
}
