//! The snapshot of a deployment's secrets: the variables read from its `env_files` when it
//! was deployed, kept root-only under `/var/lib/shim/secrets/<service>/<digest>.json` (mode
//! 0600 in 0700 directories), named by their digest (`plan::deployment::secrets_digest`).
//! Every later start reads them from here, not from the files: a secret changes for the
//! instances only when `shim upgrade` rolls it out.

use std::collections::BTreeSet;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};

use crate::host::dirs::Dirs;
use crate::plan::deployment::secrets_digest;

fn dir(dirs: &Dirs, id: &str) -> PathBuf {
    dirs.state.join("secrets").join(id)
}

fn path(dirs: &Dirs, id: &str, digest: &str) -> PathBuf {
    let hex = digest.strip_prefix("sha256:").unwrap_or(digest);
    dir(dirs, id).join(format!("{hex}.json"))
}

/// Saves a snapshot (idempotent: the name is the digest of the content). Returns its digest.
pub fn save(dirs: &Dirs, id: &str, secrets: &[(String, String)]) -> Result<String> {
    use std::os::unix::fs::DirBuilderExt;
    let digest = secrets_digest(secrets);
    for d in [dirs.state.join("secrets"), dir(dirs, id)] {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&d)
            .with_context(|| format!("creating {}", d.display()))?;
    }
    let p = path(dirs, id, &digest);
    if !p.exists() {
        crate::host::fsutil::write_atomic(&p, &serde_json::to_vec(secrets)?, 0o600)?;
    }
    Ok(digest)
}

/// The snapshot with `digest`, checked against it.
pub fn load(dirs: &Dirs, id: &str, digest: &str) -> Result<Vec<(String, String)>> {
    if digest == secrets_digest(&[]) {
        return Ok(Vec::new());
    }
    let p = path(dirs, id, digest);
    let bytes = std::fs::read(&p).with_context(|| {
        format!(
            "reading the secrets snapshot {} of service {id}'s deployment (run `shim upgrade --id {id}` to deploy the env_files as they are now)",
            p.display()
        )
    })?;
    let secrets: Vec<(String, String)> =
        serde_json::from_slice(&bytes).with_context(|| format!("reading {}", p.display()))?;
    if secrets_digest(&secrets) != digest {
        bail!(
            "the secrets snapshot {} does not match its digest (damaged or edited): run `shim upgrade --id {id}` to deploy the env_files as they are now",
            p.display()
        );
    }
    Ok(secrets)
}

/// Removes the snapshots of `id` whose digest is not in `keep`.
pub fn prune(dirs: &Dirs, id: &str, keep: &BTreeSet<String>) {
    let keep: BTreeSet<PathBuf> = keep.iter().map(|d| path(dirs, id, d)).collect();
    let Ok(entries) = std::fs::read_dir(dir(dirs, id)) else {
        return;
    };
    for e in entries.flatten() {
        if !keep.contains(&e.path()) {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshots_are_root_only_checked_and_pruned() {
        use std::os::unix::fs::PermissionsExt;
        let t = tempfile::tempdir().unwrap();
        let dirs = Dirs {
            state: t.path().join("state"),
            run: t.path().join("run"),
            units: "/etc/systemd/system".into(),
        };
        let a = vec![("DB_PASSWORD".to_string(), "one".to_string())];
        let b = vec![("DB_PASSWORD".to_string(), "two".to_string())];
        let da = save(&dirs, "app", &a).unwrap();
        let db = save(&dirs, "app", &b).unwrap();
        assert_eq!(load(&dirs, "app", &da).unwrap(), a);
        assert_eq!(load(&dirs, "app", &db).unwrap(), b);
        let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&path(&dirs, "app", &da)), 0o600);
        assert_eq!(mode(&dir(&dirs, "app")), 0o700);
        // An edited snapshot is refused, not used.
        std::fs::write(path(&dirs, "app", &da), serde_json::to_vec(&b).unwrap()).unwrap();
        let e = load(&dirs, "app", &da).unwrap_err().to_string();
        assert!(e.contains("does not match its digest"), "{e}");
        // No secrets need no file.
        assert!(load(&dirs, "other", &secrets_digest(&[]))
            .unwrap()
            .is_empty());
        prune(&dirs, "app", &[db.clone()].into());
        assert!(!path(&dirs, "app", &da).exists());
        assert_eq!(load(&dirs, "app", &db).unwrap(), b);
        let e = load(&dirs, "app", &da).unwrap_err().to_string();
        assert!(e.contains("shim upgrade --id app"), "{e}");
    }
}
