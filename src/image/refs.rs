//! The record of resolved references, `<root>/refs.json`: for each reference (as displayed
//! by [`super::ImageRef`]), the manifest it resolved to and every blob the image uses. It
//! is what `shim image ls` lists, what `rm` and `prune` compute reachability from, and what
//! lets a service restart from the store while its registry is unreachable. Updated under
//! `<root>/refs.lock` and replaced atomically, so readers never see half a file.

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::lock;
use super::ImageError;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlobRef {
    pub digest: String,
    pub size: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefRecord {
    pub reference: String,
    /// The platform manifest: the rootfs cache key.
    pub manifest: String,
    /// What the tag pointed at (an index, or the manifest itself) and its media type.
    pub top: String,
    pub top_media_type: String,
    /// Every blob of the image in the content store (indexes on the way, manifest, config,
    /// layers); empty for OCI layouts, whose blobs stay in the layout.
    pub blobs: Vec<BlobRef>,
    /// Sum of the layer sizes (compressed), for display.
    pub layers_size: u64,
    /// Unix time of the last resolution.
    pub resolved_at: u64,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct RefFile {
    version: u32,
    images: Vec<RefRecord>,
}

pub(crate) struct RefDb {
    path: PathBuf,
    lock: PathBuf,
}

pub(crate) fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl RefDb {
    pub(crate) fn new(root: &Path) -> RefDb {
        RefDb {
            path: root.join("refs.json"),
            lock: root.join("refs.lock"),
        }
    }

    /// Every record, sorted by reference; none if nothing was recorded yet.
    pub(crate) fn load(&self) -> Result<Vec<RefRecord>, ImageError> {
        match fs::read(&self.path) {
            Ok(data) => {
                let f: RefFile = serde_json::from_slice(&data).map_err(|e| {
                    ImageError::io(
                        &self.path,
                        "reading",
                        io::Error::new(io::ErrorKind::InvalidData, e),
                    )
                })?;
                Ok(f.images)
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(e) => Err(ImageError::io(&self.path, "reading", e)),
        }
    }

    pub(crate) fn get(&self, reference: &str) -> Result<Option<RefRecord>, ImageError> {
        Ok(self.load()?.into_iter().find(|r| r.reference == reference))
    }

    /// Applies `f` to the records and writes them back, under the lock (held while `f`
    /// runs: prune deletes blobs from inside it, so that no pull records an image meanwhile).
    /// Nothing is written if `f` fails.
    pub(crate) fn update<T>(
        &self,
        f: impl FnOnce(&mut Vec<RefRecord>) -> Result<T, ImageError>,
    ) -> Result<T, ImageError> {
        if let Some(dir) = self.path.parent() {
            fs::create_dir_all(dir).map_err(|e| ImageError::io(dir, "creating", e))?;
        }
        let _lock = lock::lock(&self.lock)?;
        let mut images = self.load()?;
        let out = f(&mut images)?;
        images.sort_by(|a, b| a.reference.cmp(&b.reference));
        let data =
            serde_json::to_vec_pretty(&RefFile { version: 1, images }).expect("records serialize");
        let tmp = self
            .path
            .with_extension(format!("tmp-{}", std::process::id()));
        let write = || -> io::Result<()> {
            let mut f = fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)?;
            f.write_all(&data)?;
            f.sync_all()?;
            fs::rename(&tmp, &self.path)
        };
        write().map_err(|e| ImageError::io(&self.path, "writing", e))?;
        Ok(out)
    }

    /// Inserts or replaces the record for `rec.reference`.
    pub(crate) fn record(&self, rec: RefRecord) -> Result<(), ImageError> {
        self.update(|images| {
            images.retain(|r| r.reference != rec.reference);
            images.push(rec);
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(r: &str, m: &str) -> RefRecord {
        RefRecord {
            reference: r.into(),
            manifest: m.into(),
            top: m.into(),
            top_media_type: "application/vnd.oci.image.manifest.v1+json".into(),
            blobs: vec![BlobRef {
                digest: m.into(),
                size: 3,
            }],
            layers_size: 0,
            resolved_at: 1,
        }
    }

    #[test]
    fn records_replace_and_sort() {
        let tmp = tempfile::tempdir().unwrap();
        let db = RefDb::new(tmp.path());
        assert!(db.load().unwrap().is_empty());
        db.record(rec("h.io/b:1", "sha256:b")).unwrap();
        db.record(rec("h.io/a:1", "sha256:a")).unwrap();
        db.record(rec("h.io/b:1", "sha256:c")).unwrap();
        let all = db.load().unwrap();
        assert_eq!(
            all.iter()
                .map(|r| (r.reference.as_str(), r.manifest.as_str()))
                .collect::<Vec<_>>(),
            vec![("h.io/a:1", "sha256:a"), ("h.io/b:1", "sha256:c")]
        );
        assert_eq!(db.get("h.io/a:1").unwrap().unwrap().manifest, "sha256:a");
        assert!(db.get("h.io/x:1").unwrap().is_none());
        let removed = db
            .update(|images| {
                let n = images.len();
                images.retain(|r| r.reference != "h.io/a:1");
                Ok(n - images.len())
            })
            .unwrap();
        assert_eq!(removed, 1);
        assert_eq!(db.load().unwrap().len(), 1);
        // No temporary files left.
        let names: Vec<_> = fs::read_dir(tmp.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert!(
            names.iter().all(|n| n == "refs.json" || n == "refs.lock"),
            "{names:?}"
        );
    }
}
