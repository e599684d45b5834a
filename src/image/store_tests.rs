//! End-to-end tests of [`ImageStore`] on layouts written by hand: resolution (tags,
//! indexes, media types), blob verification (digest, size, diff_id), and the rootfs
//! cache (atomic publication, crash leftovers, concurrent callers).

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use serde_json::json;
use tempfile::TempDir;

use super::testutil::{is_root, write_blob, TarBuilder, TestLayout};
use super::{Compression, ImageConfig, ImageError, ImageRef, ImageStore, ResolvedImage};

/// A two-layer image: base files, then an update with a whiteout and a hardlink.
fn two_layers() -> Vec<(Vec<u8>, Compression)> {
    let mut l1 = TarBuilder::new();
    l1.dir("bin", 0o755)
        .file("bin/app", "#!/bin/sh\necho hi\n", 0o755)
        .dir("etc", 0o755)
        .file("etc/old", "old", 0o644);
    let mut l2 = TarBuilder::new();
    l2.whiteout("etc/old")
        .file("etc/new", "new", 0o644)
        .hardlink("bin/app2", "bin/app");
    vec![
        (l1.build(), Compression::Gzip),
        (l2.build(), Compression::None),
    ]
}

struct Fixture {
    _tmp: TempDir,
    layout: TestLayout,
    store: ImageStore,
    store_root: std::path::PathBuf,
}

fn fixture(layers: &[(Vec<u8>, Compression)]) -> Fixture {
    let tmp = TempDir::new().unwrap();
    let layout = TestLayout::create(&tmp.path().join("layout"), "v1", layers);
    let store_root = tmp.path().join("store");
    Fixture {
        store: ImageStore::new(&store_root),
        store_root,
        layout,
        _tmp: tmp,
    }
}

impl Fixture {
    fn resolve(&self) -> Result<ResolvedImage, ImageError> {
        self.store.resolve(&self.layout.reference())
    }

    fn ensure(&self, img: &ResolvedImage) -> Result<std::path::PathBuf, ImageError> {
        self.store.ensure_rootfs_with(
            img,
            self.store.source(&img.reference).unwrap().as_ref(),
            is_root(),
        )
    }

    /// Names in `<store>/rootfs`, excluding lock files.
    fn cache_entries(&self) -> Vec<String> {
        let dir = self.store_root.join("rootfs");
        let mut v: Vec<String> = match fs::read_dir(&dir) {
            Ok(rd) => rd
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect(),
            Err(_) => Vec::new(),
        };
        v.retain(|n| !n.starts_with(".lock-"));
        v.sort();
        v
    }
}

#[test]
fn resolves_and_unpacks_into_cache() {
    let f = fixture(&two_layers());
    let img = f.resolve().unwrap();
    assert_eq!(img.manifest_digest, f.layout.manifest_digest.to_string());
    assert_eq!(img.reference, f.layout.reference());
    assert_eq!(img.layers.len(), 2);
    assert_eq!(img.layers[0].compression, Compression::Gzip);
    assert_eq!(img.layers[1].compression, Compression::None);
    assert_eq!(
        img.config,
        ImageConfig {
            entrypoint: vec!["/bin/app".into()],
            cmd: vec!["serve".into()],
            env: vec!["PATH=/usr/bin:/bin".into()],
            working_dir: Some("/srv".into()),
            user: Some("1000:1000".into()),
            stop_signal: Some("SIGTERM".into()),
        }
    );

    let start = std::time::Instant::now();
    let rootfs = f.ensure(&img).unwrap();
    println!("unpacked two-layer test image in {:?}", start.elapsed());
    assert_eq!(
        rootfs,
        f.store_root
            .join("rootfs")
            .join(f.layout.manifest_digest.hex())
    );
    assert_eq!(fs::read_to_string(rootfs.join("etc/new")).unwrap(), "new");
    assert!(!rootfs.join("etc/old").exists());
    assert_eq!(
        fs::metadata(rootfs.join("bin/app2")).unwrap().ino(),
        fs::metadata(rootfs.join("bin/app")).unwrap().ino()
    );
    assert_eq!(
        f.cache_entries(),
        vec![f.layout.manifest_digest.hex().to_string()]
    );
    assert_eq!(
        fs::metadata(f.store_root.join("rootfs")).unwrap().mode() & 0o777,
        0o700
    );

    // Cached: the second call does not unpack again (a marker file survives).
    fs::write(rootfs.join("marker"), "").unwrap();
    assert_eq!(f.ensure(&img).unwrap(), rootfs);
    assert!(rootfs.join("marker").exists());
}

#[test]
fn corrupt_layer_fails_with_both_digests_and_leaves_nothing() {
    let f = fixture(&two_layers());
    let img = f.resolve().unwrap();
    for layer in [0, 1] {
        let path = f.layout.blob_path(&f.layout.layer_digests[layer]);
        let mut data = fs::read(&path).unwrap();
        let original = data.clone();
        // Same size, one byte different, in the middle of the data.
        let i = data.len() / 2;
        data[i] ^= 0x20;
        fs::write(&path, &data).unwrap();
        let err = f.ensure(&img).unwrap_err();
        match &err {
            ImageError::DigestMismatch {
                expected, actual, ..
            } => {
                assert_eq!(expected, &f.layout.layer_digests[layer].to_string());
                assert_eq!(actual, &super::Digest::of(&data).to_string());
            }
            other => panic!("layer {layer}: expected DigestMismatch, got {other}"),
        }
        let msg = err.to_string();
        assert!(
            msg.contains("expected sha256:") && msg.contains("got sha256:"),
            "{msg}"
        );
        assert_eq!(f.cache_entries(), Vec::<String>::new(), "layer {layer}");
        fs::write(&path, original).unwrap();
    }
    assert!(f.ensure(&img).is_ok());
}

#[test]
fn wrong_sizes_are_refused() {
    for delta in [-1i64, 1] {
        let mut f = fixture(&two_layers());
        let mut manifest = f.layout.manifest.clone();
        let size = manifest["layers"][0]["size"].as_i64().unwrap();
        manifest["layers"][0]["size"] = json!(size + delta);
        f.layout.set_manifest(manifest);
        let img = f.resolve().unwrap();
        let err = f.ensure(&img).unwrap_err();
        match &err {
            ImageError::SizeMismatch {
                expected, actual, ..
            } => {
                assert_eq!(*expected as i64, size + delta);
                if delta < 0 {
                    assert_eq!(actual, &format!("more than {}", size - 1));
                } else {
                    assert_eq!(actual, &size.to_string());
                }
            }
            other => panic!("expected SizeMismatch, got {other}"),
        }
        assert_eq!(f.cache_entries(), Vec::<String>::new());
    }
}

#[test]
fn corrupt_manifest_and_config_fail_resolution() {
    let f = fixture(&two_layers());
    let manifest_blob = f.layout.blob_path(&f.layout.manifest_digest);
    let mut data = fs::read(&manifest_blob).unwrap();
    data[10] ^= 1;
    fs::write(&manifest_blob, &data).unwrap();
    assert!(matches!(
        f.resolve(),
        Err(ImageError::DigestMismatch { .. })
    ));

    let f = fixture(&two_layers());
    let config_digest =
        super::Digest::parse(f.layout.manifest["config"]["digest"].as_str().unwrap()).unwrap();
    fs::write(f.layout.blob_path(&config_digest), b"{}").unwrap();
    let err = f.resolve().unwrap_err();
    assert!(matches!(err, ImageError::SizeMismatch { .. }), "{err}");
}

#[test]
fn diff_id_mismatch_is_refused() {
    let mut f = fixture(&two_layers());
    let config_digest =
        super::Digest::parse(f.layout.manifest["config"]["digest"].as_str().unwrap()).unwrap();
    let mut config: serde_json::Value =
        serde_json::from_slice(&fs::read(f.layout.blob_path(&config_digest)).unwrap()).unwrap();
    let wrong = super::Digest::of(b"something else").to_string();
    config["rootfs"]["diff_ids"][1] = json!(wrong);
    let bytes = serde_json::to_vec(&config).unwrap();
    let new_config = write_blob(&f.layout.dir, &bytes);
    let mut manifest = f.layout.manifest.clone();
    manifest["config"]["digest"] = json!(new_config.to_string());
    manifest["config"]["size"] = json!(bytes.len());
    f.layout.set_manifest(manifest);
    let img = f.resolve().unwrap();
    let err = f.ensure(&img).unwrap_err();
    match &err {
        ImageError::DiffIdMismatch {
            expected, layer, ..
        } => {
            assert_eq!(expected, &wrong);
            assert_eq!(layer, &f.layout.layer_digests[1].to_string());
        }
        other => panic!("expected DiffIdMismatch, got {other}"),
    }
    assert_eq!(f.cache_entries(), Vec::<String>::new());
}

#[test]
fn missing_tag_lists_available_tags() {
    let f = fixture(&two_layers());
    let r = ImageRef::OciLayout {
        path: f.layout.dir.clone(),
        tag: "v2".into(),
    };
    let err = f.store.resolve(&r).unwrap_err();
    assert!(matches!(err, ImageError::TagNotFound { .. }));
    let msg = err.to_string();
    assert!(
        msg.contains("\"v2\"")
            && msg.contains("available tags: v1")
            && msg.contains(&f.layout.dir.display().to_string()),
        "{msg}"
    );
}

#[test]
fn not_a_layout() {
    let tmp = TempDir::new().unwrap();
    let store = ImageStore::new(tmp.path().join("store"));
    let r = ImageRef::OciLayout {
        path: tmp.path().to_path_buf(),
        tag: "latest".into(),
    };
    let msg = store.resolve(&r).unwrap_err().to_string();
    assert!(
        msg.contains("missing oci-layout") && msg.contains(&tmp.path().display().to_string()),
        "{msg}"
    );
}

#[test]
fn unsupported_layer_media_type_is_named() {
    let mut f = fixture(&two_layers());
    let mut manifest = f.layout.manifest.clone();
    manifest["layers"][1]["mediaType"] = json!("application/vnd.oci.image.layer.v1.tar+bzip2");
    f.layout.set_manifest(manifest);
    let err = f.resolve().unwrap_err();
    assert!(matches!(err, ImageError::UnsupportedMediaType { .. }));
    let msg = err.to_string();
    assert!(
        msg.contains("application/vnd.oci.image.layer.v1.tar+bzip2") && msg.contains("zstd"),
        "{msg}"
    );
    assert!(
        msg.contains(&f.layout.layer_digests[1].to_string()),
        "{msg}"
    );
}

#[test]
fn zstd_layers_unpack_like_gzip_ones() {
    let layers = two_layers();
    let zstd: Vec<_> = layers
        .iter()
        .map(|(tar, _)| (tar.clone(), Compression::Zstd))
        .collect();
    let f = fixture(&zstd);
    let img = f.resolve().unwrap();
    assert!(img
        .layers
        .iter()
        .all(|l| l.compression == Compression::Zstd));
    let rootfs = f.ensure(&img).unwrap();
    assert_eq!(fs::read_to_string(rootfs.join("etc/new")).unwrap(), "new");
    assert!(!rootfs.join("etc/old").exists());
    assert!(rootfs.join("bin/app2").exists());

    // A zstd layer whose bytes are corrupt fails on its digest.
    let path = f.layout.blob_path(&f.layout.layer_digests[0]);
    let mut data = fs::read(&path).unwrap();
    let i = data.len() / 2;
    data[i] ^= 0xff;
    fs::write(&path, &data).unwrap();
    let g = fixture(&zstd);
    fs::write(g.layout.blob_path(&g.layout.layer_digests[0]), &data).unwrap();
    let img = g.resolve().unwrap();
    assert!(matches!(
        g.ensure(&img),
        Err(ImageError::DigestMismatch { .. })
    ));
}

#[test]
fn docker_media_types_are_accepted() {
    let mut f = fixture(&two_layers());
    let mut manifest = f.layout.manifest.clone();
    manifest["mediaType"] = json!("application/vnd.docker.distribution.manifest.v2+json");
    manifest["layers"][0]["mediaType"] = json!("application/vnd.docker.image.rootfs.diff.tar.gzip");
    f.layout.set_manifest(manifest.clone());
    let bytes = serde_json::to_vec(&manifest).unwrap();
    f.layout.set_index(vec![json!({
        "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
        "digest": f.layout.manifest_digest.to_string(),
        "size": bytes.len(),
        "annotations": {"org.opencontainers.image.ref.name": "v1"},
    })]);
    let img = f.resolve().unwrap();
    assert_eq!(img.layers[0].compression, Compression::Gzip);
    let rootfs = f.ensure(&img).unwrap();
    assert!(rootfs.join("bin/app").exists());
}

#[test]
fn index_selects_host_platform() {
    let f = fixture(&two_layers());
    let amd64_bytes = serde_json::to_vec(&f.layout.manifest).unwrap();
    // A manifest for another platform, and an attestation-like entry.
    let other = write_blob(&f.layout.dir, br#"{"not": "used"}"#);
    let index = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [
            {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": other.to_string(), "size": 15,
             "platform": {"os": "linux", "architecture": "arm64", "variant": "v8"}},
            {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": f.layout.manifest_digest.to_string(),
             "size": amd64_bytes.len(), "platform": {"os": "linux", "architecture": super::resolve::Platform::host().architecture}},
        ],
    });
    let index_bytes = serde_json::to_vec(&index).unwrap();
    let index_digest = write_blob(&f.layout.dir, &index_bytes);
    f.layout.set_index(vec![json!({
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "digest": index_digest.to_string(),
        "size": index_bytes.len(),
        "annotations": {"org.opencontainers.image.ref.name": "v1"},
    })]);
    let img = f.resolve().unwrap();
    // The cache key is the platform manifest, not the index.
    assert_eq!(img.manifest_digest, f.layout.manifest_digest.to_string());

    // No entry for this platform: the error lists what exists.
    let only_arm = json!({"schemaVersion": 2, "manifests": [index["manifests"][0].clone()]});
    let bytes = serde_json::to_vec(&only_arm).unwrap();
    let d = write_blob(&f.layout.dir, &bytes);
    f.layout.set_index(vec![json!({
        "mediaType": "application/vnd.oci.image.index.v1+json", "digest": d.to_string(), "size": bytes.len(),
        "annotations": {"org.opencontainers.image.ref.name": "v1"},
    })]);
    let msg = f.resolve().unwrap_err().to_string();
    assert!(
        msg.contains("no manifest for platform linux/")
            && msg.contains("available: linux/arm64/v8"),
        "{msg}"
    );
}

#[test]
fn leftover_tmp_dir_is_removed() {
    let f = fixture(&two_layers());
    let img = f.resolve().unwrap();
    let hex = f.layout.manifest_digest.hex().to_string();
    let stale = f
        .store_root
        .join("rootfs")
        .join(format!(".tmp-{hex}-999999"));
    fs::create_dir_all(stale.join("half/written")).unwrap();
    // Another image's temporary directory is not ours to remove.
    let other = f
        .store_root
        .join("rootfs")
        .join(format!(".tmp-{}-1", "0".repeat(64)));
    fs::create_dir_all(&other).unwrap();
    f.ensure(&img).unwrap();
    assert!(!stale.exists());
    assert!(other.exists());
}

#[test]
fn traversal_in_image_fails_without_publishing() {
    let mut evil = TarBuilder::new();
    evil.symlink("etc", "/etc")
        .file("etc/shim-test-evil", "evil", 0o644);
    let f = fixture(&[(evil.build(), Compression::Gzip)]);
    let img = f.resolve().unwrap();
    let err = f.ensure(&img).unwrap_err();
    assert!(matches!(err, ImageError::UnsafeEntry { .. }), "{err}");
    assert!(
        err.to_string()
            .contains(&f.layout.layer_digests[0].to_string()),
        "{err}"
    );
    assert!(!Path::new("/etc/shim-test-evil").exists());
    assert_eq!(f.cache_entries(), Vec::<String>::new());
}

#[test]
fn concurrent_callers_share_one_unpack() {
    let f = fixture(&two_layers());
    let img = f.resolve().unwrap();
    let results: Vec<_> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..4).map(|_| s.spawn(|| f.ensure(&img))).collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let want = f
        .store_root
        .join("rootfs")
        .join(f.layout.manifest_digest.hex());
    for r in results {
        assert_eq!(r.unwrap(), want);
    }
    assert_eq!(fs::read_to_string(want.join("etc/new")).unwrap(), "new");
    assert_eq!(
        f.cache_entries(),
        vec![f.layout.manifest_digest.hex().to_string()]
    );
}

#[test]
fn manifest_digest_is_validated_before_use_as_path() {
    let f = fixture(&two_layers());
    let mut img = f.resolve().unwrap();
    img.manifest_digest = "sha256:../../../tmp".into();
    let err = f.ensure(&img).unwrap_err();
    assert!(matches!(err, ImageError::UnsupportedDigest { .. }), "{err}");
}
