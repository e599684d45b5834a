//! Removing images: `shim image rm` (one reference) and `shim image prune` (everything no
//! service needs). What is kept is decided by pure functions over the records
//! ([`plan_prune`]) and the mounts of running instances ([`InUse::from_mountinfo`]); the
//! removal itself then takes each object's lock without waiting (an object being downloaded
//! or unpacked right now is skipped, not waited for) and deletes it.
//!
//! Races with a concurrent pull are closed by holding the records' lock for the whole prune
//! (a pull records its image before downloading layers, so it waits until the prune is
//! over), and by a grace period: blobs, rootfs directories and records younger than it are
//! kept, which covers a `shim start` between unpacking and mounting.

use std::collections::BTreeSet;
use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::Duration;

use serde::Serialize;

use super::lock;
use super::refs::{now_secs, RefRecord};
use super::resolve::{self, Platform};
use super::store::remove_tree;
use super::{Digest, ImageError, ImageRef, ImageStore};

/// Rootfs and layer directories that running instances have mounted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InUse {
    pub rootfs: BTreeSet<Digest>,
    /// Chain ids of layer directories named in an overlay's `lowerdir=` (relative to the
    /// layer store, as instances mount them, or absolute).
    pub layers: BTreeSet<Digest>,
}

impl InUse {
    /// Every `<rootfs_dir>/<64 hex>` mentioned in a mount table (an instance's overlay has
    /// it as `lowerdir=`). Matching anywhere on the line is deliberately broad: a false
    /// positive keeps a directory, a false negative would pull it from under a container.
    pub fn from_mountinfo(text: &str, rootfs_dir: &Path, layers_dir: &Path) -> InUse {
        let prefix = format!(
            "{}/",
            rootfs_dir.display().to_string().trim_end_matches('/')
        );
        let mut rootfs = BTreeSet::new();
        for line in text.lines() {
            let mut rest = line;
            while let Some(i) = rest.find(&prefix) {
                rest = &rest[i + prefix.len()..];
                let hex: String = rest.chars().take(64).collect();
                if let Some(d) = Digest::parse(&format!("sha256:{hex}")) {
                    rootfs.insert(d);
                }
            }
        }
        InUse {
            rootfs,
            layers: lowerdir_layers(text, layers_dir),
        }
    }

    /// The mounts of this host (this process's mount namespace, which is systemd's).
    pub fn current(store: &ImageStore) -> Result<InUse, ImageError> {
        let path = Path::new("/proc/self/mountinfo");
        let text = fs::read_to_string(path).map_err(|e| ImageError::io(path, "reading", e))?;
        Ok(InUse::from_mountinfo(
            &text,
            &store.rootfs_dir(),
            &store.layer_paths().layers(),
        ))
    }
}

/// The layer directories in the `lowerdir=` entries of a mount table: `<layers_dir>/<hex>`,
/// and bare `<hex>` names (an instance of a many-layer image mounts them relative to the
/// layer store; counted whatever store they were in: a false positive only keeps a
/// directory).
fn lowerdir_layers(text: &str, layers_dir: &Path) -> BTreeSet<Digest> {
    let prefix = format!(
        "{}/",
        layers_dir.display().to_string().trim_end_matches('/')
    );
    let mut out = BTreeSet::new();
    for line in text.lines() {
        let mut rest = line;
        while let Some(i) = rest.find("lowerdir=") {
            rest = &rest[i + "lowerdir=".len()..];
            let value = rest.split([',', ' ']).next().unwrap_or("");
            for item in value.split(':') {
                let item = item.trim_end_matches('/');
                let name = match item.strip_prefix(&prefix) {
                    Some(rest) => rest,
                    None if !item.contains('/') => item,
                    None => continue,
                };
                if let Some(d) = Digest::parse(&format!("sha256:{name}")) {
                    out.insert(d);
                }
            }
        }
    }
    out
}

/// What `rm` did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RemoveReport {
    pub reference: String,
    pub blobs_removed: usize,
    pub bytes_freed: u64,
    pub rootfs_removed: bool,
    /// Why the rootfs stayed, when it did and existed.
    pub rootfs_kept: Option<String>,
    /// Layer directories removed (no other image has them, none is mounted).
    pub layers_removed: usize,
    /// Layer directories kept because another image or a running instance uses them.
    pub layers_kept: usize,
}

/// What `prune` did (or would do, in a dry run).
#[derive(Debug, Clone, Default, Serialize)]
pub struct PruneReport {
    pub records_removed: Vec<String>,
    pub records_kept: Vec<String>,
    pub blobs_removed: usize,
    pub rootfs_removed: Vec<String>,
    pub rootfs_in_use: Vec<String>,
    /// Layer directories removed (chain ids), and those kept only because mounted.
    pub layers_removed: Vec<String>,
    pub layers_in_use: Vec<String>,
    pub bytes_freed: u64,
    /// Kept references with no record: their blobs cannot be identified.
    pub unrecorded: Vec<String>,
    pub partials_removed: usize,
}

/// The decision of a prune over the records.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct PrunePlan {
    pub keep_records: BTreeSet<String>,
    pub keep_blobs: BTreeSet<String>,
    pub keep_rootfs: BTreeSet<String>,
    pub drop_records: BTreeSet<String>,
}

/// Keeps the records of `keep` (references as displayed) and those resolved less than
/// `grace` ago, with their blobs and rootfs; everything else is dropped.
pub(crate) fn plan_prune(
    records: &[RefRecord],
    keep: &BTreeSet<String>,
    now: u64,
    grace: Duration,
) -> PrunePlan {
    let mut plan = PrunePlan::default();
    for r in records {
        let recent = now.saturating_sub(r.resolved_at) < grace.as_secs();
        if keep.contains(&r.reference) || recent {
            plan.keep_records.insert(r.reference.clone());
            plan.keep_rootfs.insert(r.manifest.clone());
            plan.keep_blobs
                .extend(r.blobs.iter().map(|b| b.digest.clone()));
        } else {
            plan.drop_records.insert(r.reference.clone());
        }
    }
    plan
}

/// Removes the tree `path` (in `dir`, named by `d`) unless its lock is held (it is being
/// unpacked, or used as a lower): moved out of the way first, so that nobody sees it half
/// deleted. Returns the lock, still held, if it removed it; None if busy or gone.
fn remove_aside(
    lock_path: &Path,
    path: &Path,
    dir: &Path,
    d: &Digest,
) -> Result<Option<lock::Lock>, ImageError> {
    let Some(l) = lock::try_lock(lock_path)? else {
        return Ok(None);
    };
    let doomed = dir.join(format!(".tmp-{}-rm{}", d.hex(), std::process::id()));
    match fs::rename(path, &doomed) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(ImageError::io(path, "moving aside for removal", e)),
    }
    remove_tree(&doomed).map_err(|e| ImageError::io(&doomed, "removing", e))?;
    Ok(Some(l))
}

/// Whether a file changed (was written or renamed) less than `grace` ago.
fn is_recent(path: &Path, grace: Duration) -> bool {
    if grace.is_zero() {
        return false;
    }
    fs::symlink_metadata(path).is_ok_and(|m| {
        let now = now_secs() as i64;
        now.saturating_sub(m.ctime()) < grace.as_secs() as i64
    })
}

impl ImageStore {
    /// The unpacked rootfs directories, by manifest digest.
    fn list_rootfs(&self) -> Result<Vec<Digest>, ImageError> {
        super::layers::digest_entries(&self.rootfs_dir(), false)
    }

    /// Removes one rootfs unless it is being unpacked. Returns whether it was.
    fn remove_rootfs(&self, d: &Digest) -> Result<bool, ImageError> {
        let lock = self.rootfs_lock_path(d);
        Ok(remove_aside(&lock, &self.rootfs_path(d), &self.rootfs_dir(), d)?.is_some())
    }

    /// Removes a blob if nobody is downloading it; returns the bytes freed.
    fn remove_blob(&self, d: &Digest) -> Result<Option<u64>, ImageError> {
        let size = self.blobs.size(d).unwrap_or(0);
        Ok(self.blobs.remove(d)?.then_some(size))
    }

    /// Forgets `r` and removes its blobs and rootfs, except what another recorded image
    /// shares or a running instance has mounted.
    pub fn remove(&self, r: &ImageRef, in_use: &InUse) -> Result<RemoveReport, ImageError> {
        let name = r.to_string();
        self.refs().update(|records| {
            let Some(pos) = records.iter().position(|x| x.reference == name) else {
                return Err(ImageError::NotRecorded {
                    reference: name.clone(),
                    recorded: records.iter().map(|x| x.reference.clone()).collect(),
                });
            };
            let gone = records.remove(pos);
            let mut report = RemoveReport {
                reference: name.clone(),
                ..Default::default()
            };
            let shared: BTreeSet<&str> = records
                .iter()
                .flat_map(|x| x.blobs.iter().map(|b| b.digest.as_str()))
                .collect();
            for b in &gone.blobs {
                if shared.contains(b.digest.as_str()) {
                    continue;
                }
                if let Some(d) = Digest::parse(&b.digest) {
                    if let Some(n) = self.remove_blob(&d)? {
                        report.blobs_removed += 1;
                        report.bytes_freed += n;
                    }
                }
            }
            if let Some(d) = Digest::parse(&gone.manifest) {
                if self.is_unpacked(&d) {
                    if in_use.rootfs.contains(&d) {
                        report.rootfs_kept = Some("mounted by a running instance".into());
                    } else if let Some(other) = records.iter().find(|x| x.manifest == gone.manifest)
                    {
                        report.rootfs_kept = Some(format!("also the image of {}", other.reference));
                    } else {
                        report.rootfs_removed = self.remove_rootfs(&d)?;
                        if !report.rootfs_removed {
                            report.rootfs_kept = Some("being unpacked right now".into());
                        }
                    }
                }
                let keep = self.chains_of(records.iter().map(|x| x.manifest.as_str()));
                let lp = self.layer_paths();
                if !records.iter().any(|x| x.manifest == gone.manifest) {
                    for hex in lp.read_image(&d).map(|r| r.chain).unwrap_or_default() {
                        let Some(c) = Digest::parse(&format!("sha256:{hex}")) else {
                            continue;
                        };
                        if keep.contains(&c) || in_use.layers.contains(&c) {
                            report.layers_kept += 1;
                        } else if let Some(n) = self.remove_layer(&c)? {
                            report.layers_removed += 1;
                            report.bytes_freed += n;
                        }
                    }
                    let _ = fs::remove_file(lp.image(&d));
                }
            }
            Ok(report)
        })
    }

    /// Removes every record, blob and rootfs not needed by `keep` (the current and previous
    /// revisions of the services), by `keep_manifests` (the manifest digests their recorded
    /// deployments pin, whatever their tags point at now), by a running instance (`in_use`),
    /// or by anything younger than `grace`. With `dry_run`, only reports.
    /// Kept references never resolved on this host (or whose record was lost): layouts can
    /// be resolved locally to find their rootfs (added to `keep_rootfs`); the others cannot,
    /// and are returned.
    fn keep_unrecorded(
        &self,
        keep: &[ImageRef],
        records: &[RefRecord],
        keep_rootfs: &mut BTreeSet<String>,
    ) -> Vec<String> {
        let mut unrecorded = Vec::new();
        for r in keep {
            let name = r.to_string();
            if records.iter().any(|x| x.reference == name) {
                continue;
            }
            let local = match r {
                ImageRef::OciLayout { .. } => self
                    .source(r)
                    .and_then(|s| resolve::resolve_chain(s.as_ref(), r, &Platform::host()))
                    .ok(),
                _ => None,
            };
            match local {
                Some((img, _)) => {
                    keep_rootfs.insert(img.manifest_digest);
                }
                None => unrecorded.push(name),
            }
        }
        unrecorded
    }

    /// Chain ids of the layers of these manifests (as unpacked here).
    fn chains_of<'a>(&self, manifests: impl Iterator<Item = &'a str>) -> BTreeSet<Digest> {
        let lp = self.layer_paths();
        manifests
            .filter_map(Digest::parse)
            .filter_map(|m| lp.read_image(&m))
            .flat_map(|r| r.chain)
            .filter_map(|h| Digest::parse(&format!("sha256:{h}")))
            .collect()
    }

    /// Removes one layer directory unless it is being unpacked; the bytes freed if it was.
    fn remove_layer(&self, c: &Digest) -> Result<Option<u64>, ImageError> {
        let lp = self.layer_paths();
        let bytes = lp.read_info(c).map(|i| i.disk_bytes).unwrap_or(0);
        let Some(_held) = remove_aside(&lp.lock(c), &lp.layer(c), &lp.layers(), c)? else {
            return Ok(None);
        };
        let _ = fs::remove_file(lp.info(c));
        Ok(Some(bytes))
    }

    /// [`ImageStore::prune`] of the layer store: layer directories that no kept manifest
    /// has, no running instance mounts and that are older than `grace` go, with the chain
    /// records of manifests no longer kept, and leftovers of interrupted unpacks.
    fn prune_layers(
        &self,
        keep_manifests: &BTreeSet<String>,
        in_use: &InUse,
        grace: Duration,
        dry_run: bool,
        report: &mut PruneReport,
    ) -> Result<(), ImageError> {
        let lp = self.layer_paths();
        let keep = self.chains_of(keep_manifests.iter().map(String::as_str));
        for c in lp.list()? {
            if keep.contains(&c) {
                continue;
            }
            if in_use.layers.contains(&c) {
                report.layers_in_use.push(c.to_string());
                continue;
            }
            if is_recent(&lp.layer(&c), grace) || is_recent(&lp.info(&c), grace) {
                continue;
            }
            let freed = if dry_run {
                Some(lp.read_info(&c).map(|i| i.disk_bytes).unwrap_or(0))
            } else {
                self.remove_layer(&c)?
            };
            if let Some(n) = freed {
                report.bytes_freed += n;
                report.layers_removed.push(c.to_string());
            }
        }
        if dry_run {
            return Ok(());
        }
        for rec in lp.list_images() {
            if !keep_manifests.contains(&rec.manifest) {
                if let Some(m) = Digest::parse(&rec.manifest) {
                    if !is_recent(&lp.image(&m), grace) {
                        let _ = fs::remove_file(lp.image(&m));
                    }
                }
            }
        }
        self.sweep_layer_leftovers(&lp)?;
        if let Ok(entries) = fs::read_dir(lp.manifests()) {
            for e in entries.flatten() {
                let temp = e.file_name().to_string_lossy().contains(".tmp-");
                if temp && !is_recent(&e.path(), Duration::from_secs(60)) {
                    let _ = fs::remove_file(e.path());
                }
            }
        }
        Ok(())
    }

    /// Removes `.tmp-<hex>-*` directories whose unpack is not running (its lock is free),
    /// and info files without their directory.
    fn sweep_layer_leftovers(&self, lp: &super::layers::LayerPaths) -> Result<(), ImageError> {
        let dir = lp.layers();
        let Ok(entries) = fs::read_dir(&dir) else {
            return Ok(());
        };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let hex = name.strip_prefix(".tmp-").and_then(|r| r.get(..64));
            if let Some(c) = hex.and_then(|h| Digest::parse(&format!("sha256:{h}"))) {
                if let Some(_l) = lock::try_lock(&lp.lock(&c))? {
                    let p = e.path();
                    remove_tree(&p).map_err(|e| ImageError::io(&p, "removing", e))?;
                }
            } else if name.contains(".tmp-") && !is_recent(&e.path(), Duration::from_secs(60)) {
                // A record's temporary file (a writer killed before its rename).
                let _ = fs::remove_file(e.path());
            } else if let Some(c) = name
                .strip_suffix(".json")
                .and_then(|h| Digest::parse(&format!("sha256:{h}")))
            {
                if !lp.layer(&c).exists() && !is_recent(&e.path(), Duration::from_secs(60)) {
                    let _ = fs::remove_file(e.path());
                }
            }
        }
        Ok(())
    }

    pub fn prune(
        &self,
        keep: &[ImageRef],
        keep_manifests: &BTreeSet<String>,
        in_use: &InUse,
        grace: Duration,
        dry_run: bool,
    ) -> Result<PruneReport, ImageError> {
        let mut keep_names: BTreeSet<String> = keep.iter().map(|r| r.to_string()).collect();
        self.refs().update(|records| {
            let mut report = PruneReport::default();
            keep_names.extend(
                records
                    .iter()
                    .filter(|r| keep_manifests.contains(&r.manifest))
                    .map(|r| r.reference.clone()),
            );
            let plan = plan_prune(records, &keep_names, now_secs(), grace);
            let mut keep_rootfs = plan.keep_rootfs.clone();
            keep_rootfs.extend(keep_manifests.iter().cloned());
            report.unrecorded = self.keep_unrecorded(keep, records, &mut keep_rootfs);
            report.records_kept = plan.keep_records.iter().cloned().collect();
            report.records_removed = plan.drop_records.iter().cloned().collect();

            for (d, size) in self.blobs.list()? {
                if plan.keep_blobs.contains(&d.to_string())
                    || is_recent(&self.blobs.path(&d), grace)
                {
                    continue;
                }
                if dry_run {
                    report.blobs_removed += 1;
                    report.bytes_freed += size;
                } else if let Some(n) = self.remove_blob(&d)? {
                    report.blobs_removed += 1;
                    report.bytes_freed += n;
                }
            }
            for d in self.list_rootfs()? {
                if keep_rootfs.contains(&d.to_string()) {
                    continue;
                }
                if in_use.rootfs.contains(&d) {
                    report.rootfs_in_use.push(d.to_string());
                    continue;
                }
                if is_recent(&self.rootfs_path(&d), grace) {
                    continue;
                }
                if dry_run || self.remove_rootfs(&d)? {
                    report.rootfs_removed.push(d.to_string());
                }
            }
            self.prune_layers(&keep_rootfs, in_use, grace, dry_run, &mut report)?;
            if !dry_run {
                let keep_blob = |d: &Digest| plan.keep_blobs.contains(&d.to_string());
                report.partials_removed = self.blobs.sweep(&keep_blob)?.len();
                records.retain(|x| !plan.drop_records.contains(&x.reference));
            }
            Ok(report)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::refs::BlobRef;

    const A: &str = "sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    const B: &str = "sha256:bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";
    const C: &str = "sha256:cccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccc";

    #[test]
    fn mountinfo_in_use() {
        let text = format!(
            "36 35 98:0 / /mnt1 rw,noatime master:1 - ext3 /dev/root rw,errors=continue\n\
             412 29 0:51 / /run/shim/instances/app/shim-app-web-r1-1/rootfs rw,relatime - overlay overlay rw,lowerdir=/var/lib/shim/images/rootfs/{},upperdir=/run/shim/instances/app/shim-app-web-r1-1/upper,workdir=/run/shim/instances/app/shim-app-web-r1-1/work\n\
             413 29 0:52 / /x rw - overlay overlay rw,lowerdir=/other/images/rootfs/{}\n\
             414 29 0:53 / /y rw - overlay overlay rw,lowerdir=/var/lib/shim/images/rootfs/short:/var/lib/shim/images/rootfs/{}\n",
            &A[7..],
            &B[7..],
            &B[7..],
        );
        let u = InUse::from_mountinfo(
            &text,
            Path::new("/var/lib/shim/images/rootfs"),
            Path::new("/var/lib/shim/images/layers"),
        );
        assert_eq!(
            u.rootfs
                .into_iter()
                .map(|d| d.to_string())
                .collect::<Vec<_>>(),
            vec![A.to_string(), B.to_string()]
        );
        assert!(InUse::from_mountinfo("", Path::new("/r"), Path::new("/l"))
            .rootfs
            .is_empty());
        // Layer directories, relative (as instances mount them) or absolute.
        let text = format!(
            "415 29 0:54 / /run/shim/instances/a/u/rootfs rw - overlay overlay rw,lowerdir={}:{},upperdir=/u,workdir=/w\n\
             416 29 0:55 / /z rw - overlay overlay rw,lowerdir=/var/lib/shim/images/layers/{}/,upperdir=/u\n\
             417 29 0:56 / /o rw - overlay overlay rw,lowerdir=/other/store/layers/{}\n",
            &A[7..],
            &B[7..],
            &A[7..],
            &C[7..]
        );
        let u = InUse::from_mountinfo(
            &text,
            Path::new("/var/lib/shim/images/rootfs"),
            Path::new("/var/lib/shim/images/layers"),
        );
        let layers: Vec<String> = u.layers.into_iter().map(|d| d.to_string()).collect();
        assert_eq!(layers, vec![A.to_string(), B.to_string()]);
    }

    fn rec(name: &str, manifest: &str, blobs: &[&str], at: u64) -> RefRecord {
        RefRecord {
            reference: name.into(),
            manifest: manifest.into(),
            top: manifest.into(),
            top_media_type: String::new(),
            blobs: blobs
                .iter()
                .map(|d| BlobRef {
                    digest: d.to_string(),
                    size: 1,
                })
                .collect(),
            layers_size: 0,
            resolved_at: at,
        }
    }

    #[test]
    fn prune_plan_keeps_deployed_and_recent() {
        let records = [
            rec("h/app:r1", "m1", &["m1", "c1", "l1", "shared"], 100),
            rec("h/app:r2", "m2", &["m2", "c2", "l2", "shared"], 100),
            rec("h/app:r3", "m3", &["m3", "c3", "l3"], 100),
            rec("h/new:r1", "m4", &["m4", "l4"], 990),
        ];
        let keep: BTreeSet<String> = ["h/app:r2".to_string(), "h/gone:x".to_string()].into();
        let plan = plan_prune(&records, &keep, 1000, Duration::from_secs(60));
        let set = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>();
        assert_eq!(plan.keep_records, set(&["h/app:r2", "h/new:r1"]));
        assert_eq!(plan.drop_records, set(&["h/app:r1", "h/app:r3"]));
        assert_eq!(plan.keep_rootfs, set(&["m2", "m4"]));
        assert_eq!(
            plan.keep_blobs,
            set(&["m2", "c2", "l2", "shared", "m4", "l4"])
        );
        // Without grace, only what is kept explicitly stays.
        let plan = plan_prune(&records, &keep, 1000, Duration::ZERO);
        assert_eq!(plan.keep_records, set(&["h/app:r2"]));
    }
}
