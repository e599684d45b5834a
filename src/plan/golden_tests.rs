//! Golden tests: deployment ids pinned to the values a shim computed before the deployment
//! record had a type of its own. Upgrading shim must not change the id of an unchanged
//! deployment: if it did, the first `shim upgrade` after a shim upgrade would redeploy every
//! service on every host, and `shim rollback` would no longer find the instances it names.
//!
//! Flow: `tests/golden/services.toml` (every config key, over a few services) is read as
//! `shim upgrade` reads it; each service becomes a [`Deployment`] with fixed facts from the
//! host (revision, manifest, seccomp texts, secrets, ports), plus a few variants (restarted
//! processes, untagged). For each, `tests/golden/ids.json` pins the definition digest, the id
//! and every process's tag, and `tests/golden/deployments.json` the record as it is
//! serialized into state files (its JSON field names). Each recorded deployment must also
//! load back with the same id: that is what an old state file on a host gives.
//!
//! The fixtures were written by this test with `SHIM_GOLDEN_WRITE=1` from the code of
//! 2026-12-07 (before `plan::record`). Never regenerate them to make a change pass: a
//! mismatch means that change moves every deployed id. Add new services or variants to the
//! fixtures instead (write them, then check that the existing entries did not move).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::Value;

use super::deployment::{content_digest, port_key, secrets_digest};
use super::Deployment;
use crate::config::{ResolvedUser, Seccomp, ServiceDef};
use crate::image::ImageConfig;

/// Where the fixtures live.
pub fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden")
}

/// Whether this run writes the fixtures instead of comparing with them.
pub fn writing() -> bool {
    std::env::var_os("SHIM_GOLDEN_WRITE").is_some()
}

/// Compares `value` with the fixture `name` (or writes it, see [`writing`]).
pub fn check_fixture(name: &str, value: &Value) {
    let path = golden_dir().join(name);
    if writing() {
        let mut text = serde_json::to_string_pretty(value).unwrap();
        text.push('\n');
        std::fs::write(&path, text).unwrap();
        return;
    }
    let text = std::fs::read_to_string(&path).unwrap();
    let want: Value = serde_json::from_str(&text).unwrap();
    if let (Value::Object(w), Value::Object(g)) = (&want, value) {
        for (k, v) in w {
            assert_eq!(
                g.get(k),
                Some(v),
                "{name}: {k} moved (see src/plan/golden_tests.rs)"
            );
        }
    }
    assert_eq!(&want, value, "{name} (see src/plan/golden_tests.rs)");
}

/// The golden definitions, as `shim upgrade` reads them.
pub fn definitions() -> BTreeMap<String, ServiceDef> {
    let text = std::fs::read_to_string(golden_dir().join("services.toml")).unwrap();
    let defs = crate::config::parse_sources(&[("/etc/shim/services.toml".into(), text)]).unwrap();
    defs.services
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
}

/// The text shim would have read for a seccomp setting (None: unconfined).
fn seccomp_text(s: &Seccomp) -> Option<String> {
    match s {
        Seccomp::Default => Some("{\"defaultAction\":\"SCMP_ACT_ERRNO\",\"golden\":1}".into()),
        Seccomp::Unconfined => None,
        Seccomp::Profile(p) => Some(format!("{{\"golden\":\"{}\"}}", p.display())),
    }
}

/// `sha256:` and 64 hex digits derived from `seed`.
fn digest_of(seed: &str) -> String {
    content_digest(seed.as_bytes())
}

/// The deployment of `def` at revision r1 with fixed facts from the host.
pub fn deployment(def: &ServiceDef) -> Deployment {
    let id = def.id.as_str();
    let process_seccomp = def
        .processes
        .values()
        .filter_map(|p| Some((p.name.to_string(), seccomp_text(p.seccomp.as_ref()?))))
        .collect();
    let secret_files = def
        .processes
        .values()
        .flat_map(|p| &p.secrets)
        .map(|s| {
            let src = s.source.display().to_string();
            let digest = digest_of(&format!("content of {src}"));
            (src, digest)
        })
        .collect();
    let env_secrets: Vec<(String, String)> = def
        .env_files
        .iter()
        .enumerate()
        .map(|(i, f)| (format!("SECRET_{i}"), f.display().to_string()))
        .collect();
    let mut ports = BTreeMap::new();
    let mut next = 21000;
    for p in def.processes.values() {
        for index in 1..=p.count {
            let port = if p.port { next } else { 0 };
            next += 1;
            ports.insert(port_key(p.name.as_str(), index), port);
        }
    }
    Deployment {
        revision: "r1".into(),
        image: def.image_for("r1").unwrap(),
        manifest_digest: digest_of(&format!("manifest of {id}")),
        image_config: ImageConfig {
            entrypoint: vec!["/entrypoint.sh".into()],
            cmd: vec!["serve".into()],
            env: vec!["PATH=/usr/bin:/bin".into(), format!("IMAGE={id}")],
            working_dir: Some("/app".into()),
            user: Some("app".into()),
            stop_signal: if id == "web" {
                Some("SIGQUIT".into())
            } else {
                None
            },
        },
        user: ResolvedUser {
            uid: 1000,
            gid: 1000,
        },
        definition: def.clone(),
        seccomp: seccomp_text(&def.seccomp),
        process_seccomp,
        secrets_digest: secrets_digest(&env_secrets),
        secret_files,
        generations: BTreeMap::new(),
        ports,
        deployed_usec: 1_765_000_000_000_000,
        untagged: false,
    }
}

/// Every golden deployment by name: each service's, and variants `<service>@<what>`.
pub fn deployments() -> BTreeMap<String, Deployment> {
    let mut out = BTreeMap::new();
    for (name, def) in definitions() {
        out.insert(name, deployment(&def));
    }
    let base = |n: &str| out.get(n).cloned().unwrap();
    let (web, tcp, minimal) = (base("web"), base("tcp"), base("minimal"));
    let variants = [
        ("web@restarted-http", web.restarted(&["http".into()])),
        ("web@restarted-all-twice", web.restarted(&[]).restarted(&[])),
        ("tcp@r2", {
            let mut d = tcp.clone();
            d.revision = "r2".into();
            d.image = d.definition.image_for("r2").unwrap();
            d
        }),
        ("minimal@untagged", {
            let mut d = minimal;
            d.untagged = true;
            d
        }),
    ];
    for (name, d) in variants {
        out.insert(name.to_string(), d);
    }
    out
}

/// What is pinned of a deployment's identity.
fn identity(d: &Deployment) -> Value {
    serde_json::json!({
        "definition_digest": d.definition_digest(),
        "id": d.id(),
        "tags": d.tags(),
    })
}

#[test]
fn deployment_ids_are_those_of_the_golden_fixtures() {
    let all = deployments();
    let ids: serde_json::Map<String, Value> =
        all.iter().map(|(k, d)| (k.clone(), identity(d))).collect();
    check_fixture("ids.json", &Value::Object(ids));
}

#[test]
fn deployment_records_serialize_as_the_golden_fixtures() {
    let all = deployments();
    let records: serde_json::Map<String, Value> = all
        .iter()
        .map(|(k, d)| (k.clone(), serde_json::to_value(d).unwrap()))
        .collect();
    check_fixture("deployments.json", &Value::Object(records));
}

#[test]
fn recorded_deployments_load_with_their_golden_ids() {
    if writing() {
        return;
    }
    let read = |name: &str| -> serde_json::Map<String, Value> {
        let text = std::fs::read_to_string(golden_dir().join(name)).unwrap();
        serde_json::from_str(&text).unwrap()
    };
    let (records, ids) = (read("deployments.json"), read("ids.json"));
    assert_eq!(
        records.keys().collect::<Vec<_>>(),
        ids.keys().collect::<Vec<_>>()
    );
    for (name, record) in records {
        let d: Deployment = serde_json::from_value(record.clone()).unwrap();
        assert_eq!(identity(&d), ids[&name], "{name}");
        // And it is written back as it was read.
        assert_eq!(serde_json::to_value(&d).unwrap(), record, "{name}");
    }
}
