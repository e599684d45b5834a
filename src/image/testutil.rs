//! Test helpers: layer tarballs built entry by entry (with raw names, so malicious paths
//! can be written), and OCI layouts written by hand from a list of layers, so tests control
//! every byte of what the store reads.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use flate2::write::GzEncoder;
use serde_json::{json, Value};
use tar::{EntryType, Header};

use super::layout::REF_NAME;
use super::{Compression, Digest, ImageRef};

/// Default mtime of test entries, so trees are comparable.
pub(crate) const MTIME: u64 = 1_600_000_000;

/// Builds a layer tar in memory. Every method appends one entry.
pub(crate) struct TarBuilder {
    builder: tar::Builder<Vec<u8>>,
    /// Owner and mtime applied to the following entries.
    pub uid: u64,
    pub gid: u64,
    pub mtime: u64,
}

impl TarBuilder {
    pub(crate) fn new() -> Self {
        TarBuilder {
            builder: tar::Builder::new(Vec::new()),
            uid: 0,
            gid: 0,
            mtime: MTIME,
        }
    }

    /// Appends an entry with a raw name and link name (no validation: tests need `..`).
    pub(crate) fn raw(
        &mut self,
        path: &str,
        kind: EntryType,
        mode: u32,
        link: Option<&str>,
        data: &[u8],
    ) -> &mut Self {
        let mut h = Header::new_gnu();
        {
            let gnu = h.as_gnu_mut().expect("new_gnu header is GNU");
            assert!(path.len() <= gnu.name.len(), "test path too long: {path}");
            gnu.name[..path.len()].copy_from_slice(path.as_bytes());
            if let Some(link) = link {
                assert!(link.len() <= gnu.linkname.len());
                gnu.linkname[..link.len()].copy_from_slice(link.as_bytes());
            }
        }
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_uid(self.uid);
        h.set_gid(self.gid);
        h.set_mtime(self.mtime);
        h.set_size(data.len() as u64);
        if matches!(kind, EntryType::Char | EntryType::Block) {
            h.set_device_major(1).unwrap();
            h.set_device_minor(3).unwrap();
        }
        h.set_cksum();
        self.builder.append(&h, data).unwrap();
        self
    }

    /// A character device with these numbers (`raw` makes 1:3).
    pub(crate) fn char_device(&mut self, path: &str, major: u32, minor: u32) -> &mut Self {
        let mut h = Header::new_gnu();
        h.set_path(path).unwrap();
        h.set_entry_type(EntryType::Char);
        h.set_mode(0o600);
        h.set_uid(self.uid);
        h.set_gid(self.gid);
        h.set_mtime(self.mtime);
        h.set_size(0);
        h.set_device_major(major).unwrap();
        h.set_device_minor(minor).unwrap();
        h.set_cksum();
        self.builder.append(&h, &b""[..]).unwrap();
        self
    }

    pub(crate) fn dir(&mut self, path: &str, mode: u32) -> &mut Self {
        self.raw(path, EntryType::Directory, mode, None, b"")
    }

    pub(crate) fn file(&mut self, path: &str, data: &str, mode: u32) -> &mut Self {
        self.raw(path, EntryType::Regular, mode, None, data.as_bytes())
    }

    pub(crate) fn symlink(&mut self, path: &str, target: &str) -> &mut Self {
        self.raw(path, EntryType::Symlink, 0o777, Some(target), b"")
    }

    pub(crate) fn hardlink(&mut self, path: &str, target: &str) -> &mut Self {
        self.raw(path, EntryType::Link, 0o644, Some(target), b"")
    }

    pub(crate) fn fifo(&mut self, path: &str, mode: u32) -> &mut Self {
        self.raw(path, EntryType::Fifo, mode, None, b"")
    }

    /// `dir/.wh.name` for `path` = `dir/name`.
    pub(crate) fn whiteout(&mut self, path: &str) -> &mut Self {
        let (dir, name) = path.rsplit_once('/').map_or(("", path), |(d, n)| (d, n));
        let wh = if dir.is_empty() {
            format!(".wh.{name}")
        } else {
            format!("{dir}/.wh.{name}")
        };
        self.raw(&wh, EntryType::Regular, 0o644, None, b"")
    }

    pub(crate) fn opaque(&mut self, dir: &str) -> &mut Self {
        self.raw(
            &format!("{dir}/.wh..wh..opq"),
            EntryType::Regular,
            0o644,
            None,
            b"",
        )
    }

    /// A regular file with PAX extended attributes (`SCHILY.xattr.*`) and a sub-second mtime.
    pub(crate) fn file_with_pax(
        &mut self,
        path: &str,
        data: &str,
        pax: &[(&str, &[u8])],
    ) -> &mut Self {
        self.builder
            .append_pax_extensions(pax.iter().copied())
            .unwrap();
        self.file(path, data, 0o644)
    }

    pub(crate) fn owner(&mut self, uid: u64, gid: u64) -> &mut Self {
        self.uid = uid;
        self.gid = gid;
        self
    }

    pub(crate) fn build(&mut self) -> Vec<u8> {
        let b = std::mem::replace(&mut self.builder, tar::Builder::new(Vec::new()));
        b.into_inner().unwrap()
    }
}

pub(crate) fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

/// An OCI layout written by [`TestLayout::create`].
pub(crate) struct TestLayout {
    pub dir: PathBuf,
    pub tag: String,
    pub manifest: Value,
    pub manifest_digest: Digest,
    pub layer_digests: Vec<Digest>,
}

impl TestLayout {
    /// Writes an image of `layers` (uncompressed tars, stored with the given compression)
    /// to a new layout at `dir`, tagged `tag`.
    pub(crate) fn create(dir: &Path, tag: &str, layers: &[(Vec<u8>, Compression)]) -> TestLayout {
        fs::create_dir_all(dir.join("blobs/sha256")).unwrap();
        fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
        let mut descs = Vec::new();
        let mut diff_ids = Vec::new();
        let mut layer_digests = Vec::new();
        for (tar, compression) in layers {
            diff_ids.push(Digest::of(tar).to_string());
            let (blob, media_type) = match compression {
                Compression::None => (tar.clone(), "application/vnd.oci.image.layer.v1.tar"),
                Compression::Gzip => (gzip(tar), "application/vnd.oci.image.layer.v1.tar+gzip"),
                Compression::Zstd => (
                    zstd::encode_all(&tar[..], 3).unwrap(),
                    "application/vnd.oci.image.layer.v1.tar+zstd",
                ),
            };
            let digest = write_blob(dir, &blob);
            descs.push(
                json!({"mediaType": media_type, "digest": digest.to_string(), "size": blob.len()}),
            );
            layer_digests.push(digest);
        }
        let config = json!({
            "architecture": "amd64",
            "os": "linux",
            "config": {"Entrypoint": ["/bin/app"], "Cmd": ["serve"], "Env": ["PATH=/usr/bin:/bin"],
                       "WorkingDir": "/srv", "User": "1000:1000", "StopSignal": "SIGTERM"},
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
        });
        let config_bytes = serde_json::to_vec(&config).unwrap();
        let config_digest = write_blob(dir, &config_bytes);
        let manifest = json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                       "digest": config_digest.to_string(), "size": config_bytes.len()},
            "layers": descs,
        });
        let mut layout = TestLayout {
            dir: dir.to_path_buf(),
            tag: tag.to_string(),
            manifest: Value::Null,
            manifest_digest: Digest::of(b""),
            layer_digests,
        };
        layout.set_manifest(manifest);
        layout
    }

    /// Stores `manifest` and points the tag at it (the only entry of index.json).
    pub(crate) fn set_manifest(&mut self, manifest: Value) {
        let bytes = serde_json::to_vec(&manifest).unwrap();
        self.manifest_digest = write_blob(&self.dir, &bytes);
        self.manifest = manifest;
        let desc = json!({
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": self.manifest_digest.to_string(),
            "size": bytes.len(),
            "annotations": {REF_NAME: self.tag},
        });
        self.set_index(vec![desc]);
    }

    pub(crate) fn set_index(&self, manifests: Vec<Value>) {
        let index = json!({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": manifests});
        fs::write(
            self.dir.join("index.json"),
            serde_json::to_vec(&index).unwrap(),
        )
        .unwrap();
    }

    pub(crate) fn blob_path(&self, d: &Digest) -> PathBuf {
        self.dir.join("blobs/sha256").join(d.hex())
    }

    pub(crate) fn reference(&self) -> ImageRef {
        ImageRef::OciLayout {
            path: self.dir.clone(),
            tag: self.tag.clone(),
        }
    }
}

pub(crate) fn write_blob(dir: &Path, data: &[u8]) -> Digest {
    let d = Digest::of(data);
    fs::write(dir.join("blobs/sha256").join(d.hex()), data).unwrap();
    d
}

pub(crate) fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}
