//! What is deployed, persisted under the state directory (`/var/lib/shim/state/<id>.json`):
//! the current and previous revision of each service, and whether it was stopped on purpose.
//! Written atomically (temp file, fsync, rename) so a crash leaves the old or the new record,
//! never half of one. `shim reconcile` (at boot) reads it to bring services back. It also
//! says whether supervision is paused (`shim supervise pause`), which survives reboots.
//!
//! The file carries a `version` ([`STATE_VERSION`]), written on every save. Reading goes
//! through one function, [`read_state_file`]: version check (a file from a newer shim is
//! refused, naming the file, exit 2), then [`migrate`], the one place that turns what older
//! shims wrote into a [`ServiceState`] and lists every fallback for older records.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::error::BadInput;
use crate::plan::proxy::{Pointed, Pointer};
use crate::plan::Deployment;

/// The version of the state file this shim writes and the newest it reads.
/// - 0 (no `version`): written by shims before the version existed; the same shape as 1,
///   with the fields each older shim did not know missing (see [`migrate`]).
/// - 1: the deployment's definition in the shape of `plan::record::DefinitionRecord`.
///
/// A change that an older shim would misread (a field renamed, a meaning changed) bumps it
/// and adds a step to [`migrate`]; a new optional field with a default does not.
pub const STATE_VERSION: u32 = 1;

/// What is written: the version first, then the state.
#[derive(Serialize)]
struct StateFileOut<'a> {
    version: u32,
    #[serde(flatten)]
    state: &'a ServiceState,
}

/// Reads a state file's bytes: refuses a version newer than [`STATE_VERSION`] (before
/// reading anything else of it, whose shape this shim cannot know), then [`migrate`]s.
pub fn read_state_file(bytes: &[u8]) -> Result<ServiceState> {
    let mut value: serde_json::Value = serde_json::from_slice(bytes)?;
    let version = match value.as_object_mut().and_then(|o| o.remove("version")) {
        None => 0,
        Some(v) => v
            .as_u64()
            .and_then(|n| u32::try_from(n).ok())
            .ok_or_else(|| BadInput(format!("its version {v} is not a version number")))?,
    };
    if version > STATE_VERSION {
        return Err(BadInput(format!(
            "it was written by a newer shim (state file version {version}; this shim reads \
             versions up to {STATE_VERSION}): upgrade shim on this host, or move the file aside"
        ))
        .into());
    }
    migrate(version, value)
}

/// The one place where what older shims wrote becomes a [`ServiceState`]. Versions 0 and 1
/// have one shape; what older shims did not write is filled by the `#[serde(default)]`s of
/// the record types, which are these fallbacks:
/// - no `stopped` (the first shims): not stopped;
/// - no `upgrading`, `paused`, `paused_processes`: none;
/// - no `deployment` (shims before deployment records): None, and the next upgrade or
///   reconcile records one (`ops::reconcile`); until then its instances are untagged
///   (`shim-app-web-r1-1`) and recovery keeps them (`ops::upgrade::recover`);
/// - in a deployment: no `ports`, `generations`, `secret_files`, `process_seccomp` (shims
///   before them): empty, which keeps the id those shims computed (`plan::deployment`);
/// - in its definition: no `limits`, `mounts`, `cap_add`, `cap_drop`, `init`, `secrets`,
///   `seccomp` of a process, no `command` of a health check: the defaults
///   (`plan::record`).
pub fn migrate(version: u32, value: serde_json::Value) -> Result<ServiceState> {
    match version {
        0 | 1 => Ok(serde_json::from_value(value)?),
        // read_state_file refused the newer ones.
        _ => Err(BadInput(format!("no migration from state file version {version}")).into()),
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceState {
    pub current: Option<String>,
    pub previous: Option<String>,
    /// Set by `shim stop`: reconcile must not bring the service back.
    #[serde(default)]
    pub stopped: bool,
    /// An upgrade in progress (or interrupted): which revision, and how far it got.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upgrading: Option<Attempt>,
    /// `shim supervise pause --id`: the probe leaves the whole service alone.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub paused: bool,
    /// `shim supervise pause --id --process`: the probe leaves these processes alone.
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub paused_processes: BTreeSet<String>,
    /// The current deployment (its revision is `current`); None for a service deployed by a
    /// shim that recorded none (the next upgrade or reconcile records one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deployment: Option<Deployment>,
    /// The one before it, for `shim rollback`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_deployment: Option<Deployment>,
}

impl ServiceState {
    /// The revision the service serves: the recorded current one, unless an upgrade was
    /// interrupted after nginx switched to its revision (its phase says so, or one of the
    /// service's upstreams, `pointed` by process, already points at it): then that revision.
    /// None for a service stopped or never deployed. Reconcile converges to it (the converge's
    /// recovery then promotes the attempt) and the probe supervises it. Pure.
    pub fn serving_revision(&self, pointed: &Pointed) -> Option<String> {
        if self.stopped {
            return None;
        }
        if let Some(a) = &self.upgrading {
            if a.phase == Phase::Switched || self.upstreams_name_attempt(pointed) {
                return Some(a.revision.clone());
            }
        }
        self.current.clone()
    }

    /// Whether one of the service's upstreams (`pointed` by process) already points at the
    /// interrupted attempt: nginx was switched even if the phase did not get saved.
    pub fn upstreams_name_attempt(&self, pointed: &Pointed) -> bool {
        self.upgrading.as_ref().is_some_and(|a| {
            let current: BTreeSet<String> = self
                .deployment
                .iter()
                .flat_map(|d| d.tags().into_values())
                .collect();
            // The attempt's own tags (those it shares with the current deployment, a rolling
            // restart's untouched processes, say nothing).
            let new: BTreeSet<String> = a
                .deployment
                .iter()
                .flat_map(|d| d.tags().into_values())
                .filter(|t| !t.is_empty() && !current.contains(t))
                .collect();
            pointed.values().flatten().any(|p| match p {
                Pointer::Closed => false,
                Pointer::Serving(s) => match &a.deployment {
                    Some(_) => new.contains(&s.deployment),
                    None => s.revision == a.revision,
                },
            })
        })
    }

    /// The deployment that serves (see [`ServiceState::serving_revision`]).
    pub fn serving_deployment(&self, pointed: &Pointed) -> Option<&Deployment> {
        if self.stopped {
            return None;
        }
        if let Some(a) = &self.upgrading {
            if a.phase == Phase::Switched || self.upstreams_name_attempt(pointed) {
                return a.deployment.as_ref();
            }
        }
        self.deployment.as_ref()
    }

    /// The digests of the secrets snapshots this state still refers to.
    pub fn secrets_in_use(&self) -> BTreeSet<String> {
        [
            &self.deployment,
            &self.previous_deployment,
            &self.upgrading.as_ref().and_then(|a| a.deployment.clone()),
        ]
        .into_iter()
        .flatten()
        .flat_map(|d| {
            std::iter::once(d.secrets_digest.clone()).chain(d.secret_files.values().cloned())
        })
        .collect()
    }

    /// Makes `d` the current deployment (the current one becomes the previous, unless it is
    /// the same deployment restarted or with other ports).
    pub fn promote(&mut self, d: Option<Deployment>, revision: &str) {
        let other_revision = self.current.as_deref() != Some(revision);
        let shift = match (&self.deployment, &d) {
            (Some(a), Some(b)) => other_revision || a.id() != b.id(),
            // The first record of a revision an older shim deployed replaces nothing.
            _ => other_revision,
        };
        if shift {
            self.previous = self.current.take();
            self.previous_deployment = self.deployment.take();
        }
        self.current = Some(revision.to_string());
        if d.is_some() || shift {
            self.deployment = d;
        }
    }

    /// Whether the probe must leave `process` alone.
    pub fn is_paused(&self, process: &str) -> bool {
        self.paused || self.paused_processes.contains(process)
    }
}

/// How far an upgrade got; what the next one (or reconcile) must repair if it was killed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attempt {
    pub revision: String,
    pub phase: Phase,
    /// The deployment being rolled out, recorded before its first instance starts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deployment: Option<Deployment>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// New instances may be starting; nginx still points at the old revision.
    Starting,
    /// nginx points at the new revision; old instances may still be running.
    Switched,
}

pub struct StateStore {
    dir: PathBuf,
}

impl StateStore {
    pub fn new(state_root: &Path) -> StateStore {
        StateStore {
            dir: crate::host::dirs::service_states(state_root),
        }
    }

    pub fn path(&self, id: &str) -> PathBuf {
        crate::host::dirs::service_state(&self.dir, id)
    }

    pub fn load(&self, id: &str) -> Result<ServiceState> {
        let p = self.path(id);
        match std::fs::read(&p) {
            Ok(bytes) => {
                read_state_file(&bytes).with_context(|| format!("reading {}", p.display()))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(ServiceState::default()),
            Err(e) => Err(e).with_context(|| format!("reading {}", p.display())),
        }
    }

    /// Every service's state that can be read (a damaged file, or one written by a newer
    /// shim, is skipped: its service is reported where it is looked at by name, and one bad
    /// file does not stop the others' upgrades). For what must not guess, [`Self::load_every`].
    pub fn load_all(&self) -> Vec<(String, ServiceState)> {
        self.ids()
            .into_iter()
            .filter_map(|id| Some((id.clone(), self.load(&id).ok()?)))
            .collect()
    }

    /// Every service's state, or the first file that cannot be read, named: for decisions
    /// that would destroy what a skipped record pins (image gc would remove the manifests of a
    /// state file written by a newer shim after a downgrade).
    pub fn load_every(&self) -> Result<Vec<(String, ServiceState)>> {
        self.ids()
            .into_iter()
            .map(|id| Ok((id.clone(), self.load(&id)?)))
            .collect()
    }

    /// The ids that have a state file.
    fn ids(&self) -> Vec<String> {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        entries
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().to_string_lossy().to_string();
                name.strip_suffix(".json").map(str::to_string)
            })
            .collect()
    }

    pub fn save(&self, id: &str, st: &ServiceState) -> Result<()> {
        std::fs::create_dir_all(&self.dir)
            .with_context(|| format!("creating {}", self.dir.display()))?;
        let p = self.path(id);
        let data = serde_json::to_vec_pretty(&StateFileOut {
            version: STATE_VERSION,
            state: st,
        })?;
        crate::host::fsutil::write_atomic(&p, &data, 0o644)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_defaults() {
        let t = tempfile::tempdir().unwrap();
        let s = StateStore::new(t.path());
        assert_eq!(s.load("a").unwrap(), ServiceState::default());
        let st = ServiceState {
            current: Some("b".into()),
            previous: Some("a".into()),
            stopped: false,
            upgrading: Some(Attempt {
                revision: "c".into(),
                phase: Phase::Switched,
                deployment: Some(crate::plan::deployment::tests::sample()),
            }),
            paused: false,
            paused_processes: ["web".to_string()].into(),
            deployment: None,
            previous_deployment: None,
        };
        assert!(st.is_paused("web") && !st.is_paused("worker"));
        s.save("a", &st).unwrap();
        assert_eq!(s.load("a").unwrap(), st);
        // No temp files are left behind.
        let names: Vec<_> = std::fs::read_dir(t.path().join("state"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("a.json")]);
    }

    /// A complete state file as the shim of 2026-12-07 wrote it (every field set, the
    /// deployments from the golden fixtures, see `plan::golden_tests`).
    fn golden_state() -> ServiceState {
        let mut all = crate::plan::golden_tests::deployments();
        let mut take = |name: &str| all.remove(name).unwrap();
        ServiceState {
            current: Some("r1".into()),
            previous: Some("r0".into()),
            stopped: true,
            upgrading: Some(Attempt {
                revision: "r2".into(),
                phase: Phase::Starting,
                deployment: Some(take("tcp@r2")),
            }),
            paused: true,
            paused_processes: ["listener".to_string()].into(),
            deployment: Some(take("tcp")),
            previous_deployment: Some(take("web@restarted-http")),
        }
    }

    #[test]
    fn a_golden_state_file_loads_and_keeps_its_ids() {
        use crate::plan::golden_tests::{check_fixture, golden_dir, writing};
        let st = golden_state();
        check_fixture("state.json", &serde_json::to_value(&st).unwrap());
        if writing() {
            return;
        }
        let t = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(t.path().join("state")).unwrap();
        std::fs::copy(
            golden_dir().join("state.json"),
            t.path().join("state/tcp.json"),
        )
        .unwrap();
        let loaded = StateStore::new(t.path()).load("tcp").unwrap();
        assert_eq!(loaded, st);
        let ids: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(golden_dir().join("ids.json")).unwrap())
                .unwrap();
        let id = |d: &Option<Deployment>| d.as_ref().unwrap().id();
        assert_eq!(id(&loaded.deployment), ids["tcp"]["id"]);
        assert_eq!(
            id(&loaded.previous_deployment),
            ids["web@restarted-http"]["id"]
        );
        let attempt = loaded.upgrading.as_ref().unwrap().deployment.clone();
        assert_eq!(id(&attempt), ids["tcp@r2"]["id"]);
        // Saved again, it is the same file with a version.
        let store = StateStore::new(t.path());
        store.save("tcp", &loaded).unwrap();
        let mut saved: serde_json::Value =
            serde_json::from_slice(&std::fs::read(store.path("tcp")).unwrap()).unwrap();
        let version = saved.as_object_mut().unwrap().remove("version");
        assert_eq!(version, Some(serde_json::json!(STATE_VERSION)));
        let golden: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(golden_dir().join("state.json")).unwrap(),
        )
        .unwrap();
        assert_eq!(saved, golden);
    }

    #[test]
    fn a_state_file_from_a_newer_shim_is_refused_naming_it() {
        let t = tempfile::tempdir().unwrap();
        let s = StateStore::new(t.path());
        s.save("app", &golden_state()).unwrap();
        let text = std::fs::read_to_string(s.path("app")).unwrap();
        assert!(text.starts_with("{\n  \"version\": 1,"), "{text}");
        let newer = text.replacen("\"version\": 1", "\"version\": 2", 1);
        std::fs::write(s.path("app"), newer).unwrap();
        let err = s.load("app").unwrap_err();
        let msg = format!("{err:#}");
        assert!(msg.contains(&s.path("app").display().to_string()), "{msg}");
        assert!(msg.contains("newer shim (state file version 2"), "{msg}");
        assert_eq!(crate::error::exit_code(&err), crate::error::EXIT_BAD_INPUT);
        // The listing skips it, as any file it cannot read: nothing of it is misread. The
        // strict listing (image gc) refuses, naming it.
        assert!(s.load_all().is_empty());
        let every = format!("{:#}", s.load_every().unwrap_err());
        assert!(
            every.contains(&s.path("app").display().to_string()),
            "{every}"
        );
        s.save("other", &ServiceState::default()).unwrap();
        assert_eq!(s.load_all().len(), 1);
        assert!(s.load_every().is_err());
        std::fs::write(s.path("app"), r#"{"version": "one", "current": "r1"}"#).unwrap();
        let msg = format!("{:#}", s.load("app").unwrap_err());
        assert!(msg.contains("\"one\" is not a version number"), "{msg}");
    }

    #[test]
    fn a_state_file_from_before_deployment_records_loads() {
        let t = tempfile::tempdir().unwrap();
        let s = StateStore::new(t.path());
        std::fs::create_dir_all(t.path().join("state")).unwrap();
        std::fs::write(
            s.path("old"),
            r#"{"current": "r2", "previous": "r1", "stopped": false}"#,
        )
        .unwrap();
        let st = s.load("old").unwrap();
        assert_eq!(st.current.as_deref(), Some("r2"));
        assert_eq!(st.previous.as_deref(), Some("r1"));
        assert!(st.deployment.is_none() && st.upgrading.is_none() && !st.paused);
        // The oldest shim wrote no `stopped`.
        std::fs::write(s.path("older"), r#"{"current": "r1", "previous": null}"#).unwrap();
        assert_eq!(s.load("older").unwrap().current.as_deref(), Some("r1"));
    }
}
