//! The snapshot of a deployment's secrets: the variables read from its `env_files` when it
//! was deployed, kept root-only under `/var/lib/shim/secrets/<service>/<digest>.json` (mode
//! 0600 in 0700 directories), named by their digest (`plan::deployment::secrets_digest`).
//! Every later start reads them from here, not from the files: a secret changes for the
//! instances only when `shim upgrade` rolls it out.
//!
//! Secret files (`secrets = [{ source, target, mode }]`) are copied the same way, into
//! `/var/lib/shim/secrets/<service>/files/<hex>-<uid>-<gid>-<mode>` (`plan::deployment::
//! secret_file_name`): owned by the container's user with the mode asked for, below root-only
//! directories, and bind-mounted read-only at the target, so no one else on the host can read
//! them and the container sees exactly what was deployed.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use anyhow::{bail, Context, Result};

use crate::config::ServiceDef;
use crate::host::dirs::Dirs;
use crate::plan::deployment::{content_digest, secret_file_name, secrets_digest, Deployment};

fn dir(dirs: &Dirs, id: &str) -> PathBuf {
    dirs.secrets(id)
}

fn path(dirs: &Dirs, id: &str, digest: &str) -> PathBuf {
    let hex = digest.strip_prefix("sha256:").unwrap_or(digest);
    dirs.secret_snapshot(id, hex)
}

/// Saves a snapshot (idempotent: the name is the digest of the content). Returns its digest.
pub fn save(dirs: &Dirs, id: &str, secrets: &[(String, String)]) -> Result<String> {
    use std::os::unix::fs::DirBuilderExt;
    let digest = secrets_digest(secrets);
    for d in [dirs.secrets_root(), dir(dirs, id)] {
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

/// Removes the snapshots and secret files of `id` whose digest is not in `keep`.
pub fn prune(dirs: &Dirs, id: &str, keep: &BTreeSet<String>) {
    let hexes: BTreeSet<&str> = keep
        .iter()
        .map(|d| d.strip_prefix("sha256:").unwrap_or(d))
        .collect();
    let keep: BTreeSet<PathBuf> = keep.iter().map(|d| path(dirs, id, d)).collect();
    if let Ok(entries) = std::fs::read_dir(dir(dirs, id)) {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_file()) && !keep.contains(&e.path()) {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
    if let Ok(entries) = std::fs::read_dir(files_dir(dirs, id)) {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let hex = name.split('-').next().unwrap_or("");
            if !hexes.contains(hex) {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
}

/// Where a service's secret files are kept.
pub fn files_dir(dirs: &Dirs, id: &str) -> PathBuf {
    dirs.secret_files(id)
}

/// Most bytes a secret file may have: certificates and keys, not data.
const SECRET_FILE_MAX: u64 = 1 << 20;

/// Reads every secret file of `svc` (each source once), as they are now. A missing or
/// unreadable source, or one that is not a regular file, is bad input naming the key.
pub fn read_files(svc: &ServiceDef) -> Result<BTreeMap<String, Vec<u8>>> {
    let mut out = BTreeMap::new();
    for p in svc.processes.values() {
        for (i, f) in p.secrets.iter().enumerate() {
            let key = f.source.display().to_string();
            if out.contains_key(&key) {
                continue;
            }
            let bad = |why: String| {
                crate::error::BadInput(format!(
                    "{}: services.{}.processes.{}.secrets[{i}].source: {key}: {why}",
                    svc.source.display(),
                    svc.id,
                    p.name
                ))
            };
            let bytes = read_bounded(&f.source).map_err(bad)?;
            out.insert(key, bytes);
        }
    }
    Ok(out)
}

/// The content digest of each secret file read by [`read_files`], by source: what a
/// deployment records.
pub fn digests(contents: &BTreeMap<String, Vec<u8>>) -> BTreeMap<String, String> {
    contents
        .iter()
        .map(|(k, v)| (k.clone(), content_digest(v)))
        .collect()
}

/// A secret file's bytes: opened once (not following a final symlink, not blocking on a
/// FIFO), checked to be a regular file of at most [`SECRET_FILE_MAX`] on that handle, read
/// through it. Nothing of shim's own state may be a source.
fn read_bounded(path: &std::path::Path) -> std::result::Result<Vec<u8>, String> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let s = path.display().to_string();
    if ["/var/lib/shim", "/run/shim"]
        .iter()
        .any(|f| s == *f || s.starts_with(&format!("{f}/")))
    {
        return Err("is shim's own state, not a secret of the app's".into());
    }
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| e.to_string())?;
    let meta = f.metadata().map_err(|e| e.to_string())?;
    if !meta.is_file() {
        return Err("not a regular file".into());
    }
    let mut bytes = Vec::new();
    f.take(SECRET_FILE_MAX + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| e.to_string())?;
    if bytes.len() as u64 > SECRET_FILE_MAX {
        return Err("more than 1 MiB: a secret file is a key or a certificate, not data".into());
    }
    Ok(bytes)
}

/// The stored copy of each secret file of deployment `d`'s processes, as the bundle mounts
/// them: (path, content digest, mode).
fn wanted_files(dirs: &Dirs, d: &Deployment) -> Result<Vec<(PathBuf, String, u32)>> {
    let id = d.definition.id.as_str();
    let mut out = Vec::new();
    for p in d.definition.processes.values() {
        for f in &p.secrets {
            let source = f.source.display().to_string();
            let Some(digest) = d.secret_files.get(&source) else {
                bail!("the deployment of {id} has no copy of secret file {source}: the state file was edited or damaged; run `shim upgrade --id {id}`");
            };
            let name = secret_file_name(digest, d.user.uid, d.user.gid, f.mode);
            out.push((files_dir(dirs, id).join(name), digest.clone(), f.mode));
        }
    }
    Ok(out)
}

/// Stores deployment `d`'s secret files from `contents` (as [`read_files`] read them), owned
/// by the container's user with each one's mode. Idempotent.
pub fn save_files(dirs: &Dirs, d: &Deployment, contents: &BTreeMap<String, Vec<u8>>) -> Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    let wanted = wanted_files(dirs, d)?;
    if wanted.is_empty() {
        return Ok(());
    }
    let id = d.definition.id.as_str();
    for p in [dirs.secrets_root(), dir(dirs, id), files_dir(dirs, id)] {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&p)
            .with_context(|| format!("creating {}", p.display()))?;
    }
    let by_digest: BTreeMap<String, &Vec<u8>> =
        contents.values().map(|b| (content_digest(b), b)).collect();
    for (path, digest, mode) in wanted {
        // A copy that is there as deployed is kept; one that is not (edited, wrong owner or
        // mode after a crash) is written again.
        if copy_matches(&path, &digest, mode, d.user.uid, d.user.gid) {
            continue;
        }
        let Some(bytes) = by_digest.get(&digest) else {
            bail!("the secret file copy {} does not match its deployment and its source now has other content: run `shim upgrade --id {id}` to deploy the secret files as they are now", path.display());
        };
        crate::host::fsutil::write_atomic_owned(
            &path,
            bytes,
            mode,
            Some((d.user.uid, d.user.gid)),
        )?;
    }
    Ok(())
}

/// Whether the copy at `path` has content `digest`, `mode` and owner `uid:gid`.
fn copy_matches(path: &std::path::Path, digest: &str, mode: u32, uid: u32, gid: u32) -> bool {
    use std::os::unix::fs::MetadataExt;
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return false;
    };
    meta.is_file()
        && meta.mode() & 0o7777 == mode
        && meta.uid() == uid
        && meta.gid() == gid
        && std::fs::read(path).is_ok_and(|b| content_digest(&b) == digest)
}

/// Checks that deployment `d`'s secret files are stored as deployed (content digest, owner
/// and mode), before a start mounts them.
pub fn check_files(dirs: &Dirs, d: &Deployment) -> Result<()> {
    let id = d.definition.id.as_str();
    for (path, digest, mode) in wanted_files(dirs, d)? {
        if !copy_matches(&path, &digest, mode, d.user.uid, d.user.gid) {
            bail!(
                "the secret file copy {} is missing or does not match its deployment (damaged or edited): run `shim upgrade --id {id}` to deploy the secret files as they are now",
                path.display()
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_files_are_stored_with_owner_and_mode_checked_and_pruned() {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let t = tempfile::tempdir().unwrap();
        let dirs = Dirs {
            state: t.path().join("state"),
            run: t.path().join("run"),
            units: t.path().join("units"),
        };
        let src = t.path().join("db.pem");
        std::fs::write(&src, b"-----BEGIN KEY-----\n").unwrap();
        let toml = format!(
            "[services.app]\nimage = \"oci:/i:{{revision}}\"\n[services.app.processes.web]\nsecrets = [{{ source = \"{}\", target = \"/run/secrets/db.pem\", mode = \"0440\" }}]\n",
            src.display()
        );
        let defs =
            crate::config::parse_sources(&[("/etc/shim/services.toml".into(), toml)]).unwrap();
        let svc = defs.service("app").unwrap().clone();
        let contents = read_files(&svc).unwrap();
        let mut d = crate::ops::testkit::deployment(&defs, "app", "r1");
        d.secret_files = digests(&contents);
        let me = (
            nix::unistd::getuid().as_raw(),
            nix::unistd::getgid().as_raw(),
        );
        d.user = crate::config::ResolvedUser {
            uid: me.0,
            gid: me.1,
        };
        // Not stored yet: a start refuses.
        assert!(check_files(&dirs, &d).is_err());
        save_files(&dirs, &d, &contents).unwrap();
        check_files(&dirs, &d).unwrap();
        let digest = d.secret_files.values().next().unwrap().clone();
        let copy = files_dir(&dirs, "app").join(secret_file_name(&digest, me.0, me.1, 0o440));
        let meta = std::fs::metadata(&copy).unwrap();
        assert_eq!((meta.mode() & 0o7777, meta.uid()), (0o440, me.0));
        assert_eq!(
            std::fs::metadata(files_dir(&dirs, "app"))
                .unwrap()
                .permissions()
                .mode()
                & 0o777,
            0o700
        );
        // Editing the source changes nothing deployed.
        std::fs::write(&src, b"other").unwrap();
        check_files(&dirs, &d).unwrap();
        assert_eq!(std::fs::read(&copy).unwrap(), b"-----BEGIN KEY-----\n");
        // An edited copy is refused.
        std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::fs::write(&copy, b"tampered").unwrap();
        std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o440)).unwrap();
        let e = check_files(&dirs, &d).unwrap_err().to_string();
        assert!(e.contains("does not match"), "{e}");
        // The next upgrade with the deployed content repairs it (also a copy a crash left
        // with the wrong owner or mode).
        save_files(&dirs, &d, &contents).unwrap();
        check_files(&dirs, &d).unwrap();
        std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(check_files(&dirs, &d).is_err());
        save_files(&dirs, &d, &contents).unwrap();
        check_files(&dirs, &d).unwrap();
        // Shim's own state is no secret source.
        let own = "[services.app]\nimage = \"oci:/i:{revision}\"\n[services.app.processes.web]\nsecrets = [{ source = \"/var/lib/shim/secrets/other/x.json\", target = \"/s\" }]\n".to_string();
        let defs2 =
            crate::config::parse_sources(&[("/etc/shim/services.toml".into(), own)]).unwrap();
        let e = read_files(defs2.service("app").unwrap())
            .unwrap_err()
            .to_string();
        assert!(e.contains("shim's own state"), "{e}");
        // Pruned once no record uses it; kept while one does.
        prune(&dirs, "app", &[digest.clone()].into());
        assert!(copy.exists());
        prune(&dirs, "app", &BTreeSet::new());
        assert!(!copy.exists());
        // A missing source is bad input naming the key.
        std::fs::remove_file(&src).unwrap();
        let e = read_files(&svc).unwrap_err();
        assert!(e.is::<crate::error::BadInput>());
        assert!(
            e.to_string()
                .contains("services.app.processes.web.secrets[0].source"),
            "{e}"
        );
    }

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
