//! The layer store, `<root>/layers/`: one unpacked directory per layer, shared by every
//! image and revision that has the layer on the same layers below it, and stacked by an
//! overlay mount (read-only lowers, the instance's own writable layer on top) as
//! containers/storage's overlay driver does.
//!
//! A layer directory is keyed by its **chain id** (the OCI image spec's
//! `ChainID(L0) = DiffID(L0)`, `ChainID(Ln) = sha256(ChainID(Ln-1) + " " + DiffID(Ln))`),
//! not by its diff_id alone: what its directory holds depends on the layers below (a
//! whiteout is only written where a lower layer has the path, an implied parent directory
//! takes its lower metadata, a hardlink to a lower file copies that file up). Images built
//! on the same base share the base's directories; a one-layer change unpacks one layer.
//!
//! `layers/<hex>/` is the tree, `layers/<hex>.json` what it is ([`LayerInfo`]), and
//! `manifests/<manifest hex>.json` the chain of an unpacked image ([`ImageLayers`]), which
//! lets a start from a deployment record find its layers without the registry. A layer is
//! built in `layers/.tmp-<hex>-<pid>/` under the flock `layers/.lock-<hex>`, flushed, and
//! renamed into place: never visible half unpacked; a crash leaves a temporary directory the
//! next holder of the lock removes.

use std::fs;
use std::io;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use sha2::{Digest as _, Sha256};

use super::{Digest, ImageError, Layer};

/// The chain ids of `layers` (lowest first), per the OCI image spec.
pub(crate) fn chain_ids(layers: &[Layer]) -> Vec<Digest> {
    let mut out: Vec<Digest> = Vec::with_capacity(layers.len());
    for l in layers {
        let next = match out.last() {
            None => l.diff_id.clone(),
            Some(parent) => {
                let mut h = Sha256::new();
                h.update(format!("{parent} {}", l.diff_id).as_bytes());
                Digest::from_hasher(h)
            }
        };
        out.push(next);
    }
    out
}

/// `layers/<hex>.json`: what a layer directory holds.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct LayerInfo {
    pub chain_id: String,
    pub diff_id: String,
    /// The blob it was unpacked from (compressed), and its size.
    pub digest: String,
    pub size: u64,
    /// Bytes the directory takes on disk (allocated blocks, each inode once).
    pub disk_bytes: u64,
    pub unpacked_at: u64,
}

/// `manifests/<hex>.json`: the chain ids of an unpacked image, lowest layer first.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ImageLayers {
    pub manifest: String,
    pub chain: Vec<String>,
}

/// Paths of the layer store under the image store's root.
#[derive(Debug, Clone)]
pub(crate) struct LayerPaths {
    pub root: PathBuf,
}

impl LayerPaths {
    pub fn layers(&self) -> PathBuf {
        self.root.join("layers")
    }
    pub fn manifests(&self) -> PathBuf {
        self.root.join("manifests")
    }
    pub fn layer(&self, chain: &Digest) -> PathBuf {
        self.layers().join(chain.hex())
    }
    pub fn info(&self, chain: &Digest) -> PathBuf {
        self.layers().join(format!("{}.json", chain.hex()))
    }
    pub fn lock(&self, chain: &Digest) -> PathBuf {
        self.layers().join(format!(".lock-{}", chain.hex()))
    }
    pub fn image(&self, manifest: &Digest) -> PathBuf {
        self.manifests().join(format!("{}.json", manifest.hex()))
    }

    /// The recorded chain of an unpacked image, if every layer directory is there.
    pub fn unpacked(&self, manifest: &Digest) -> Option<Vec<PathBuf>> {
        let rec = self.read_image(manifest)?;
        let dirs: Option<Vec<PathBuf>> = rec
            .chain
            .iter()
            .map(|h| Digest::parse(&format!("sha256:{h}")).map(|d| self.layer(&d)))
            .collect();
        let dirs = dirs?;
        dirs.iter().all(|d| d.is_dir()).then_some(dirs)
    }

    pub fn read_image(&self, manifest: &Digest) -> Option<ImageLayers> {
        let text = fs::read(self.image(manifest)).ok()?;
        let rec: ImageLayers = serde_json::from_slice(&text).ok()?;
        (rec.manifest == manifest.to_string()).then_some(rec)
    }

    pub fn read_info(&self, chain: &Digest) -> Option<LayerInfo> {
        serde_json::from_slice(&fs::read(self.info(chain)).ok()?).ok()
    }

    /// Every published layer directory's chain id.
    pub fn list(&self) -> Result<Vec<Digest>, ImageError> {
        digest_entries(&self.layers(), true)
    }

    /// Every image chain record.
    pub fn list_images(&self) -> Vec<ImageLayers> {
        let Ok(entries) = fs::read_dir(self.manifests()) else {
            return Vec::new();
        };
        entries
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                let d = Digest::parse(&format!("sha256:{}", name.strip_suffix(".json")?))?;
                self.read_image(&d)
            })
            .collect()
    }

    pub fn create_dirs(&self) -> Result<(), ImageError> {
        fs::create_dir_all(&self.root).map_err(|e| ImageError::io(&self.root, "creating", e))?;
        // 0700: layer trees contain the images' setuid binaries and devices.
        for d in [self.layers(), self.manifests()] {
            match fs::DirBuilder::new().mode(0o700).create(&d) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(ImageError::io(&d, "creating", e)),
            }
        }
        Ok(())
    }

    pub fn write_image(&self, rec: &ImageLayers, manifest: &Digest) -> Result<(), ImageError> {
        write_json(&self.image(manifest), rec)
    }

    pub fn write_info(&self, info: &LayerInfo, chain: &Digest) -> Result<(), ImageError> {
        write_json(&self.info(chain), info)
    }
}

fn write_json(path: &Path, value: &impl serde::Serialize) -> Result<(), ImageError> {
    let text = serde_json::to_vec_pretty(value).map_err(|e| {
        ImageError::io(
            path,
            "encoding",
            io::Error::new(io::ErrorKind::InvalidData, e),
        )
    })?;
    write_atomic(path, &text)
}

fn write_atomic(path: &Path, data: &[u8]) -> Result<(), ImageError> {
    use std::io::Write;
    let tmp = path.with_extension(format!("tmp-{}", std::process::id()));
    let r = (|| {
        let mut f = fs::File::create(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if r.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    r.map_err(|e| ImageError::io(path, "writing", e))
}

/// The entries of `dir` named by a digest's hex (only directories if `dirs_only`), sorted;
/// none if `dir` does not exist.
pub(crate) fn digest_entries(dir: &Path, dirs_only: bool) -> Result<Vec<Digest>, ImageError> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(ImageError::io(dir, "listing", e)),
    };
    let mut out = Vec::new();
    for e in entries {
        let e = e.map_err(|e| ImageError::io(dir, "listing", e))?;
        let Some(d) = e
            .file_name()
            .to_str()
            .and_then(|n| Digest::parse(&format!("sha256:{n}")))
        else {
            continue;
        };
        if !dirs_only || e.file_type().is_ok_and(|t| t.is_dir()) {
            out.push(d);
        }
    }
    out.sort();
    Ok(out)
}

/// Bytes a tree takes on disk: allocated blocks, each inode once (hardlinks).
pub(crate) fn tree_bytes(root: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let mut seen = std::collections::HashSet::new();
    let mut total = 0u64;
    let mut stack = vec![root.to_path_buf()];
    while let Some(p) = stack.pop() {
        let Ok(m) = fs::symlink_metadata(&p) else {
            continue;
        };
        if seen.insert((m.dev(), m.ino())) {
            total += m.blocks() * 512;
        }
        if m.is_dir() {
            if let Ok(rd) = fs::read_dir(&p) {
                stack.extend(rd.flatten().map(|e| e.path()));
            }
        }
    }
    total
}

/// The directories of the lowers of layer `i` (the layers below it, topmost first).
pub(crate) fn lowers_of(dirs: &[PathBuf], i: usize) -> Vec<PathBuf> {
    dirs[..i].iter().rev().cloned().collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::Compression;

    fn layer(diff: &str) -> Layer {
        Layer {
            digest: Digest::of(diff.as_bytes()),
            size: 1,
            media_type: String::new(),
            compression: Compression::None,
            diff_id: Digest::parse(diff).unwrap(),
        }
    }

    #[test]
    fn chain_ids_follow_the_oci_spec() {
        let a = format!("sha256:{}", "a".repeat(64));
        let b = format!("sha256:{}", "b".repeat(64));
        let ids = chain_ids(&[layer(&a), layer(&b)]);
        assert_eq!(ids[0].to_string(), a);
        // sha256("sha256:aaa… sha256:bbb…"), computed independently with sha256sum.
        let expected = {
            let out = std::process::Command::new("sh")
                .arg("-c")
                .arg(format!("printf '%s' '{a} {b}' | sha256sum"))
                .output()
                .unwrap();
            String::from_utf8(out.stdout).unwrap()[..64].to_string()
        };
        assert_eq!(ids[1].hex(), expected);
        // The same diff_id on another base is another layer directory.
        let other = chain_ids(&[layer(&b), layer(&b)]);
        assert_ne!(other[1], ids[1]);
    }
}
