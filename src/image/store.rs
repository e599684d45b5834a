//! The image store, `<root>` (e.g. `/var/lib/shim/images`): the entry point of resolution,
//! the content store (`blobs/`, see `blobs`), the record of resolved references
//! (`refs.json`, see `refs`) and the cache of unpacked rootfs directories,
//! `rootfs/<manifest hex>/`.
//!
//! Resolution asks the reference's [`Source`] for the manifest and config and records the
//! result; registries and archives copy what they read into the content store on the way.
//! Unpacking downloads the missing layers in parallel while applying the ones already
//! there, in order. A cached rootfs is only ever published complete: it is built in
//! `rootfs/.tmp-<hex>-<pid>`, flushed, and renamed into place while holding an exclusive
//! flock on `rootfs/.lock-<hex>`, so concurrent callers wait for one unpack and then find it
//! done, and whatever a crash left behind is recognisable as a temporary directory and
//! removed by the next caller holding the lock.

use std::fs::{self, File};
use std::io::{self, BufReader, Read};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};

use flate2::read::MultiGzDecoder;

use super::archive::OciArchive;
use super::blobs::BlobStore;
use super::digest::{HashingReader, VerifyingReader};
use super::layers::{self, ImageLayers, LayerInfo, LayerPaths};
use super::layout::OciLayout;
use super::lock;
use super::progress::{Progress, Quiet};
use super::refs::{self, BlobRef, RefDb, RefRecord};
use super::registry::Client;
use super::remote::{self, Recorded, RegistryRemote, StoreSource};
use super::resolve::{self, Chain, Platform};
use super::unpack::Unpacker;
use super::{
    Compression, Digest, ImageError, ImageRef, Layer, RegistrySettings, ResolvedImage, Source,
};

/// Large reads keep syscalls down: tar reads headers 512 bytes at a time.
const LAYER_READ_BUFFER: usize = 256 * 1024;

/// Layers downloaded at once (skopeo and podman default to 6; a single host deploying
/// does not need to hit its registry harder).
const PARALLEL_DOWNLOADS: usize = 4;

/// Owns `<root>` (e.g. `/var/lib/shim/images`): `blobs/` (the content store), `rootfs/`
/// (unpacked images) and `refs.json` (what was resolved).
#[derive(Clone)]
pub struct ImageStore {
    root: PathBuf,
    pub(crate) blobs: BlobStore,
    settings: RegistrySettings,
    progress: Arc<dyn Progress>,
}

impl std::fmt::Debug for ImageStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ImageStore")
            .field("root", &self.root)
            .field("settings", &self.settings)
            .finish()
    }
}

/// A recorded image and what of it is on this host, for `shim image ls`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct StoredImage {
    #[serde(flatten)]
    pub record: RefRecord,
    /// Every blob the record lists is in the store (always true for layouts).
    pub complete: bool,
    /// Bytes of the image's blobs in the store.
    pub stored_bytes: u64,
    pub unpacked: bool,
    /// Unpacked layers: how many, and the disk they take, split into the layers no other
    /// recorded image has (what removing this image would free) and those shared.
    pub layers: usize,
    pub unique_bytes: u64,
    pub shared_bytes: u64,
    /// The unpacked layer directories, lowest first (empty unless all are here).
    pub layer_dirs: Vec<PathBuf>,
}

impl ImageStore {
    /// The store at `root` with default registry settings (tests).
    #[cfg(test)]
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self::with_settings(root, RegistrySettings::default())
    }

    /// The store at `root` with explicit registry settings, quiet.
    pub fn with_settings(root: impl Into<PathBuf>, settings: RegistrySettings) -> Self {
        let root = root.into();
        ImageStore {
            blobs: BlobStore::new(&root),
            root,
            settings,
            progress: Arc::new(Quiet),
        }
    }

    pub fn with_progress(mut self, progress: Arc<dyn Progress>) -> Self {
        self.progress = progress;
        self
    }

    pub(crate) fn refs(&self) -> RefDb {
        RefDb::new(&self.root)
    }

    /// The [`Source`] serving a reference: layouts are read in place, registries and
    /// archives through the content store.
    pub fn source(&self, r: &ImageRef) -> Result<Box<dyn Source>, ImageError> {
        Ok(match r {
            ImageRef::OciLayout { path, tag } => Box::new(OciLayout::new(path, tag)),
            ImageRef::OciArchive { path, tag } => Box::new(StoreSource {
                remote: OciArchive::new(path.clone(), tag.clone()),
                blobs: self.blobs.clone(),
                progress: self.progress.clone(),
            }),
            ImageRef::Registry(rr) => Box::new(StoreSource {
                remote: RegistryRemote {
                    client: Client::new(rr, &self.settings)?,
                    reference: rr.clone(),
                },
                blobs: self.blobs.clone(),
                progress: self.progress.clone(),
            }),
        })
    }

    /// Reads the tagged manifest (through an index if needed, for the host platform) and its
    /// config, verifying every blob's digest and size, and records the result. For registries
    /// and archives the manifest and config are copied into the content store on the way;
    /// if the registry cannot be reached, an earlier pull of the same reference is used (with
    /// a warning), so services restart while their registry is down.
    pub fn resolve(&self, r: &ImageRef) -> Result<ResolvedImage, ImageError> {
        let resolved = self
            .source(r)
            .and_then(|src| resolve::resolve_chain(src.as_ref(), r, &Platform::host()));
        let (img, chain) = match resolved {
            Ok(x) => x,
            Err(e @ ImageError::Unreachable { .. }) => match self.resolve_recorded(r) {
                Some(x) => {
                    tracing::warn!(
                        "{e}; using the manifest pulled earlier, {}",
                        x.0.manifest_digest
                    );
                    x
                }
                None => return Err(e),
            },
            Err(e) => return Err(e),
        };
        self.record(r, &img, &chain)?;
        Ok(img)
    }

    /// The image as an earlier pull recorded it, if everything resolution reads is stored.
    fn resolve_recorded(&self, r: &ImageRef) -> Option<(ResolvedImage, Chain)> {
        let rec = self.refs().get(&r.to_string()).ok()??;
        let top = Digest::parse(&rec.top)?;
        let desc = remote::recorded_descriptor(&self.blobs, &top, &rec.top_media_type)?;
        let source = StoreSource {
            remote: Recorded {
                top: desc,
                origin: r.to_string(),
            },
            blobs: self.blobs.clone(),
            progress: Arc::new(Quiet),
        };
        resolve::resolve_chain(&source, r, &Platform::host()).ok()
    }

    fn record(&self, r: &ImageRef, img: &ResolvedImage, chain: &Chain) -> Result<(), ImageError> {
        let in_store = !matches!(r, ImageRef::OciLayout { .. });
        let blobs = if in_store {
            chain
                .json_blobs
                .iter()
                .map(|(d, size)| (d, *size))
                .chain(img.layers.iter().map(|l| (&l.digest, l.size)))
                .map(|(d, size)| BlobRef {
                    digest: d.to_string(),
                    size,
                })
                .collect()
        } else {
            Vec::new()
        };
        let rec = RefRecord {
            reference: r.to_string(),
            manifest: img.manifest_digest.clone(),
            top: chain.top.digest().to_string(),
            top_media_type: chain.top.media_type().to_string(),
            blobs,
            layers_size: img.layers.iter().map(|l| l.size).sum(),
            resolved_at: refs::now_secs(),
        };
        match self.refs().record(rec) {
            Ok(()) => Ok(()),
            // A layout is read in place and needs nothing from the store: a read-only or
            // foreign store (a dry run as another user) must not stop it.
            Err(e) if !in_store => {
                tracing::debug!("not recording {r}: {e}");
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    pub(crate) fn rootfs_dir(&self) -> PathBuf {
        self.root.join("rootfs")
    }

    /// Where the rootfs of a manifest is (or would be) cached.
    pub fn rootfs_path(&self, manifest_digest: &Digest) -> PathBuf {
        self.rootfs_dir().join(manifest_digest.hex())
    }

    pub(crate) fn rootfs_lock_path(&self, manifest_digest: &Digest) -> PathBuf {
        self.rootfs_dir()
            .join(format!(".lock-{}", manifest_digest.hex()))
    }

    /// Returns the unpacked rootfs of `img`, downloading missing layers and unpacking it
    /// first if it is not cached. Safe to call concurrently from several processes; on error
    /// nothing is left behind but verified blobs and resumable partial downloads.
    pub fn ensure_rootfs(&self, img: &ResolvedImage) -> Result<PathBuf, ImageError> {
        let source = self.source(&img.reference)?;
        self.ensure_rootfs_with(img, source.as_ref(), true)
    }

    /// Downloads the layers of `img` into the content store without unpacking them.
    pub fn fetch_layers(&self, img: &ResolvedImage) -> Result<(), ImageError> {
        let source = self.source(&img.reference)?;
        self.begin_progress(img, source.as_ref());
        let r = img
            .layers
            .iter()
            .try_for_each(|l| source.prefetch(&l.digest, l.size));
        self.progress.end();
        r
    }

    fn begin_progress(&self, img: &ResolvedImage, source: &dyn Source) {
        let all: Vec<&Layer> = img.layers.iter().collect();
        self.begin_progress_of(img, &all, source);
    }

    fn begin_progress_of(&self, img: &ResolvedImage, layers: &[&Layer], source: &dyn Source) {
        let missing: Vec<&&Layer> = layers
            .iter()
            .filter(|l| !source.is_local(&l.digest))
            .collect();
        self.progress.begin(
            &img.reference.to_string(),
            missing.len(),
            missing.iter().map(|l| l.size).sum(),
        );
    }

    pub(crate) fn layer_paths(&self) -> LayerPaths {
        LayerPaths {
            root: self.root.clone(),
        }
    }

    /// The layer directories of `img`, lowest first, unpacked or not (a dry run's plan).
    pub fn planned_layers(&self, img: &ResolvedImage) -> Vec<PathBuf> {
        let lp = self.layer_paths();
        layers::chain_ids(&img.layers)
            .iter()
            .map(|c| lp.layer(c))
            .collect()
    }

    /// The layer directories of an image unpacked earlier (lowest first), if all are here.
    pub fn unpacked_layers(&self, manifest_digest: &Digest) -> Option<Vec<PathBuf>> {
        self.layer_paths().unpacked(manifest_digest)
    }

    /// Returns the layer directories of `img`, lowest first, downloading and unpacking the
    /// ones not on this host (each into its own directory, over the ones below it). Layers
    /// shared with an image already here are neither fetched nor unpacked again. Safe to
    /// call concurrently from several processes; on error no partial layer is visible.
    pub fn ensure_layers(&self, img: &ResolvedImage) -> Result<Vec<PathBuf>, ImageError> {
        let source = self.source(&img.reference)?;
        self.ensure_layers_with(img, source.as_ref(), true)
    }

    pub(crate) fn ensure_layers_with(
        &self,
        img: &ResolvedImage,
        source: &dyn Source,
        preserve_ownership: bool,
    ) -> Result<Vec<PathBuf>, ImageError> {
        let manifest = Digest::parse_for(&img.manifest_digest, "manifest")?;
        let lp = self.layer_paths();
        let chain = layers::chain_ids(&img.layers);
        let dirs: Vec<PathBuf> = chain.iter().map(|c| lp.layer(c)).collect();
        // The chain is recorded before the layers are looked at: from then on a prune (which
        // keeps the layers of recorded, recent images) cannot remove one this call found.
        let record = ImageLayers {
            manifest: manifest.to_string(),
            chain: chain.iter().map(|c| c.hex().to_string()).collect(),
        };
        lp.create_dirs()?;
        if lp.read_image(&manifest).as_ref() != Some(&record) {
            lp.write_image(&record, &manifest)?;
        }
        // Held until the layers are all here: a prune (which takes a layer's lock
        // exclusively, without waiting) cannot remove one that is a lower of what is being
        // unpacked. Taken on the layers here, which are then looked at again.
        let mut held = Vec::new();
        for (i, d) in dirs.iter().enumerate() {
            if is_cached(d)? {
                held.push(lock::lock_shared(&lp.lock(&chain[i]))?);
            }
        }
        let mut missing = Vec::new();
        for (i, d) in dirs.iter().enumerate() {
            if !is_cached(d)? {
                missing.push(i);
            }
        }
        if !missing.is_empty() {
            let todo: Vec<&Layer> = missing.iter().map(|&i| &img.layers[i]).collect();
            self.begin_progress_of(img, &todo, source);
            let r = for_each_fetched(source, &todo, self.progress.as_ref(), |k, layer, bytes| {
                let i = missing[k];
                let lowers = layers::lowers_of(&dirs, i);
                self.unpack_layer_dir(&lp, bytes, layer, &chain[i], lowers, preserve_ownership)?;
                held.push(lock::lock_shared(&lp.lock(&chain[i]))?);
                if !is_cached(&dirs[i])? {
                    return Err(ImageError::io(
                        &dirs[i],
                        "unpacking",
                        io::Error::other(
                            "removed (by a prune) as soon as it was unpacked: pull again",
                        ),
                    ));
                }
                Ok(())
            });
            self.progress.end();
            r?;
            tracing::info!(image = %img.reference, source = %source.describe(), unpacked = missing.len(), shared = dirs.len() - missing.len(), "unpacked image layers");
        }
        Ok(dirs)
    }

    /// Unpacks one layer into `layers/<chain hex>/` over `lowers` (topmost first), unless
    /// another process did meanwhile.
    fn unpack_layer_dir(
        &self,
        lp: &LayerPaths,
        bytes: LayerBytes<'_>,
        layer: &Layer,
        chain: &Digest,
        lowers: Vec<PathBuf>,
        preserve_ownership: bool,
    ) -> Result<(), ImageError> {
        let target = lp.layer(chain);
        if is_cached(&target)? {
            return Ok(());
        }
        let _lock = lock::lock(&lp.lock(chain))?;
        if is_cached(&target)? {
            return Ok(());
        }
        let dir = lp.layers();
        remove_stale_tmp(&dir, chain.hex())?;
        let tmp = dir.join(format!(".tmp-{}-{}", chain.hex(), std::process::id()));
        fs::DirBuilder::new()
            .mode(0o700)
            .create(&tmp)
            .map_err(|e| ImageError::io(&tmp, "creating", e))?;
        let built = (|| {
            let mut unpacker = Unpacker::layered(&tmp, preserve_ownership, lowers);
            unpacker.init_root()?;
            unpack_layer(&mut unpacker, layer, bytes)?;
            let info = LayerInfo {
                chain_id: chain.to_string(),
                diff_id: layer.diff_id.to_string(),
                digest: layer.digest.to_string(),
                size: layer.size,
                disk_bytes: layers::tree_bytes(&tmp),
                unpacked_at: refs::now_secs(),
            };
            lp.write_info(&info, chain)?;
            publish(&tmp, &target, &dir)
        })();
        if let Err(e) = built {
            if let Err(rm) = remove_tree(&tmp) {
                tracing::warn!(path = %tmp.display(), "removing failed unpack: {rm}");
            }
            return Err(e);
        }
        Ok(())
    }

    /// Whether the rootfs of `manifest_digest` is unpacked.
    pub fn is_unpacked(&self, manifest_digest: &Digest) -> bool {
        is_cached(&self.rootfs_path(manifest_digest)).unwrap_or(false)
    }

    /// Every recorded image and how much of it is here.
    pub fn list(&self) -> Result<Vec<StoredImage>, ImageError> {
        let records = self.refs().load()?;
        let lp = self.layer_paths();
        let chain_of = |m: &str| -> Vec<Digest> {
            Digest::parse(m)
                .and_then(|d| lp.read_image(&d))
                .map(|r| r.chain)
                .unwrap_or_default()
                .iter()
                .filter_map(|h| Digest::parse(&format!("sha256:{h}")))
                .filter(|c| lp.layer(c).is_dir())
                .collect()
        };
        // How many distinct manifests have each layer.
        let mut users: std::collections::HashMap<Digest, std::collections::BTreeSet<&str>> =
            Default::default();
        for r in &records {
            for c in chain_of(&r.manifest) {
                users.entry(c).or_default().insert(r.manifest.as_str());
            }
        }
        let mut out = Vec::new();
        for record in &records {
            let (mut unique_bytes, mut shared_bytes) = (0, 0);
            let chain = chain_of(&record.manifest);
            for c in &chain {
                let bytes = lp.read_info(c).map(|i| i.disk_bytes).unwrap_or(0);
                if users.get(c).map_or(0, |u| u.len()) > 1 {
                    shared_bytes += bytes;
                } else {
                    unique_bytes += bytes;
                }
            }
            let mut img = self.stored(record.clone());
            img.layer_dirs = Digest::parse(&record.manifest)
                .and_then(|d| self.unpacked_layers(&d))
                .unwrap_or_default();
            img.unpacked |= !img.layer_dirs.is_empty();
            img.layers = chain.len();
            img.unique_bytes = unique_bytes;
            img.shared_bytes = shared_bytes;
            out.push(img);
        }
        Ok(out)
    }

    /// What of `record`'s blobs is in the store, and whether its whole rootfs is unpacked.
    fn stored(&self, record: RefRecord) -> StoredImage {
        let mut complete = true;
        let mut stored_bytes = 0;
        for b in &record.blobs {
            match Digest::parse(&b.digest).and_then(|d| self.blobs.size(&d)) {
                Some(n) => stored_bytes += n,
                None => complete = false,
            }
        }
        let unpacked = Digest::parse(&record.manifest).is_some_and(|d| self.is_unpacked(&d));
        StoredImage {
            record,
            complete,
            stored_bytes,
            unpacked,
            layers: 0,
            unique_bytes: 0,
            shared_bytes: 0,
            layer_dirs: Vec::new(),
        }
    }

    pub(crate) fn ensure_rootfs_with(
        &self,
        img: &ResolvedImage,
        source: &dyn Source,
        preserve_ownership: bool,
    ) -> Result<PathBuf, ImageError> {
        // Parsed, not trusted: the hex becomes a path component.
        let digest = Digest::parse_for(&img.manifest_digest, "manifest")?;
        let dir = self.rootfs_dir();
        let target = self.rootfs_path(&digest);
        if is_cached(&target)? {
            return Ok(target);
        }

        // 0700: the cached trees contain the images' setuid binaries and devices, which
        // unprivileged users must not reach.
        fs::create_dir_all(&self.root).map_err(|e| ImageError::io(&self.root, "creating", e))?;
        match fs::DirBuilder::new().mode(0o700).create(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(ImageError::io(&dir, "creating", e)),
        }

        // The lock is released when `_lock` drops (or the process dies), which is what makes
        // any temporary directory found while holding it stale.
        let _lock = lock::lock(&self.rootfs_lock_path(&digest))?;

        // Someone else may have finished while we waited.
        if is_cached(&target)? {
            return Ok(target);
        }
        remove_stale_tmp(&dir, digest.hex())?;

        let tmp = dir.join(format!(".tmp-{}-{}", digest.hex(), std::process::id()));
        fs::DirBuilder::new()
            .mode(0o700)
            .create(&tmp)
            .map_err(|e| ImageError::io(&tmp, "creating", e))?;
        self.begin_progress(img, source);
        let built = unpack_image(
            source,
            &img.layers,
            &tmp,
            preserve_ownership,
            self.progress.as_ref(),
        )
        .and_then(|()| publish(&tmp, &target, &dir));
        self.progress.end();
        if let Err(e) = built {
            if let Err(rm) = remove_tree(&tmp) {
                tracing::warn!(path = %tmp.display(), "removing failed unpack: {rm}");
            }
            return Err(e);
        }
        tracing::info!(image = %img.reference, source = %source.describe(), rootfs = %target.display(), "unpacked image");
        Ok(target)
    }
}

/// Removes a directory tree, making directories writable first if that is what stops it
/// (an unpacked image has read-only directories; root does not care, other users do).
pub(crate) fn remove_tree(path: &Path) -> io::Result<()> {
    match fs::remove_dir_all(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
            make_dirs_writable(path)?;
            fs::remove_dir_all(path)
        }
        Err(e) => Err(e),
    }
}

fn make_dirs_writable(path: &Path) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let m = fs::symlink_metadata(path)?;
    if m.is_dir() {
        fs::set_permissions(path, fs::Permissions::from_mode(0o700))?;
        for e in fs::read_dir(path)? {
            make_dirs_writable(&e?.path())?;
        }
    }
    Ok(())
}

fn is_cached(target: &Path) -> Result<bool, ImageError> {
    match fs::symlink_metadata(target) {
        Ok(m) if m.file_type().is_dir() => Ok(true),
        Ok(_) => Err(ImageError::io(
            target,
            "checking cached rootfs",
            io::Error::new(
                io::ErrorKind::AlreadyExists,
                "exists but is not a directory",
            ),
        )),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(ImageError::io(target, "checking cached rootfs", e)),
    }
}

/// Removes `.tmp-<hex>-*` directories left by crashed unpacks. Only called with the lock
/// held, so none of them belongs to a live unpack.
fn remove_stale_tmp(dir: &Path, hex: &str) -> Result<(), ImageError> {
    let prefix = format!(".tmp-{hex}-");
    let entries = fs::read_dir(dir).map_err(|e| ImageError::io(dir, "listing", e))?;
    for entry in entries {
        let entry = entry.map_err(|e| ImageError::io(dir, "listing", e))?;
        if entry.file_name().to_string_lossy().starts_with(&prefix) {
            let path = entry.path();
            tracing::info!(path = %path.display(), "removing leftover of an interrupted unpack");
            remove_tree(&path).map_err(|e| ImageError::io(&path, "removing stale unpack", e))?;
        }
    }
    Ok(())
}

/// Makes the finished tree durable, then visible: without the syncfs a crash shortly after
/// the rename could leave a published rootfs with missing file contents.
fn publish(tmp: &Path, target: &Path, dir: &Path) -> Result<(), ImageError> {
    let tmp_fd = File::open(tmp).map_err(|e| ImageError::io(tmp, "opening", e))?;
    nix::unistd::syncfs(&tmp_fd)
        .map_err(|e| ImageError::io(tmp, "syncing", io::Error::from_raw_os_error(e as i32)))?;
    fs::rename(tmp, target)
        .map_err(|e| ImageError::io(target, "renaming unpacked rootfs into place", e))?;
    let dir_fd = File::open(dir).map_err(|e| ImageError::io(dir, "opening", e))?;
    dir_fd
        .sync_all()
        .map_err(|e| ImageError::io(dir, "syncing", e))
}

/// Unpacks `layers` in order into the empty directory `dest` (a whole rootfs: the podman
/// runtime's, and what earlier versions of shim cached).
pub(crate) fn unpack_image(
    source: &dyn Source,
    layers: &[Layer],
    dest: &Path,
    preserve_ownership: bool,
    progress: &dyn Progress,
) -> Result<(), ImageError> {
    let mut unpacker = Unpacker::new(dest, preserve_ownership);
    unpacker.init_root()?;
    let all: Vec<&Layer> = layers.iter().collect();
    for_each_fetched(source, &all, progress, |_, layer, bytes| {
        unpack_layer(&mut unpacker, layer, bytes)
    })
}

/// A layer's bytes as [`for_each_fetched`] hands them to its caller.
pub(crate) struct LayerBytes<'a> {
    pub reader: Box<dyn Read + Send + 'a>,
    pub origin: String,
}

/// Where the download of one layer is.
enum Download {
    Pending,
    Done,
    Failed(Option<ImageError>),
}

/// Calls `apply` on each of `layers` in order with its bytes. For remote sources, up to
/// [`PARALLEL_DOWNLOADS`] layers download into the content store at once, and each layer is
/// unpacked **as it arrives**: its reader follows the download's partial file (see
/// [`Follow`]), so unpacking overlaps the download instead of waiting for it, and reads the
/// bytes from the page cache right after they were written. Digest and diff_id are still
/// checked on what was read; a failed download wins over the unpack error it caused.
pub(crate) fn for_each_fetched(
    source: &dyn Source,
    layers: &[&Layer],
    progress: &dyn Progress,
    mut apply: impl FnMut(usize, &Layer, LayerBytes<'_>) -> Result<(), ImageError>,
) -> Result<(), ImageError> {
    let n = layers.len();
    if !source.is_remote() || n == 0 {
        for (i, layer) in layers.iter().enumerate() {
            progress.unpacking(i, n);
            let blob = source.open_blob(&layer.digest, layer.size)?;
            let bytes = LayerBytes {
                reader: blob.reader,
                origin: blob.origin,
            };
            apply(i, layer, bytes)?;
        }
        return Ok(());
    }
    let done: Mutex<Vec<Download>> = Mutex::new((0..n).map(|_| Download::Pending).collect());
    let ready = Condvar::new();
    let next = AtomicUsize::new(0);
    let cancel = AtomicBool::new(false);
    std::thread::scope(|s| {
        for _ in 0..PARALLEL_DOWNLOADS.min(n) {
            s.spawn(|| download_worker(source, layers, &next, &cancel, &done, &ready));
        }
        let state = |i: usize| -> Option<bool> {
            // A poisoned lock means a download thread panicked: count it as failed.
            match done.lock().as_deref().map(|d| &d[i]) {
                Ok(Download::Pending) => None,
                Ok(Download::Done) => Some(true),
                Ok(Download::Failed(_)) | Err(_) => Some(false),
            }
        };
        let result = (|| {
            for (i, layer) in layers.iter().enumerate() {
                progress.unpacking(i, n);
                let this = || state(i);
                let bytes = match source.download_paths(&layer.digest) {
                    Some((partial, published)) => LayerBytes {
                        origin: published.display().to_string(),
                        reader: Box::new(Follow {
                            partial,
                            published,
                            size: layer.size,
                            pos: 0,
                            file: None,
                            final_file: false,
                            state: &this,
                        }),
                    },
                    None => {
                        wait_download(&done, &ready, i)?;
                        let blob = source.open_blob(&layer.digest, layer.size)?;
                        LayerBytes {
                            reader: blob.reader,
                            origin: blob.origin,
                        }
                    }
                };
                let applied = apply(i, layer, bytes);
                // The download's own error explains a failed unpack best.
                wait_download(&done, &ready, i)?;
                applied?;
            }
            Ok(())
        })();
        if result.is_err() {
            cancel.store(true, Ordering::Relaxed);
            // Workers that stopped on an error leave later layers unclaimed: nobody waits
            // for them any more.
        }
        result
    })
}

/// One download thread: takes the next layer not taken yet and downloads it into the
/// content store, until none is left, one failed, or the unpack gave up.
fn download_worker(
    source: &dyn Source,
    layers: &[&Layer],
    next: &AtomicUsize,
    cancel: &AtomicBool,
    done: &Mutex<Vec<Download>>,
    ready: &Condvar,
) {
    loop {
        if cancel.load(Ordering::Relaxed) {
            break;
        }
        let i = next.fetch_add(1, Ordering::Relaxed);
        if i >= layers.len() {
            break;
        }
        // A panic must not leave the layer pending for ever (its unpack would wait on it).
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            source.prefetch(&layers[i].digest, layers[i].size)
        }))
        .unwrap_or_else(|_| {
            Err(ImageError::InvalidImage {
                what: "layer",
                origin: layers[i].digest.to_string(),
                reason: "its download thread panicked".to_string(),
            })
        });
        let failed = r.is_err();
        if let Ok(mut d) = done.lock() {
            d[i] = match r {
                Ok(()) => Download::Done,
                Err(e) => Download::Failed(Some(e)),
            };
        }
        ready.notify_all();
        if failed {
            break;
        }
    }
}

/// Waits until download `i` is over; its error, if it failed.
fn wait_download(done: &Mutex<Vec<Download>>, ready: &Condvar, i: usize) -> Result<(), ImageError> {
    let poisoned = || ImageError::InvalidImage {
        what: "layer",
        origin: format!("download {i}"),
        reason: "a download thread panicked".to_string(),
    };
    let mut d = done.lock().map_err(|_| poisoned())?;
    loop {
        match &mut d[i] {
            Download::Pending => d = ready.wait(d).map_err(|_| poisoned())?,
            Download::Done => return Ok(()),
            Download::Failed(e) => return Err(e.take().unwrap_or_else(poisoned)),
        }
    }
}

/// Reads a blob while another thread downloads it into the content store: from the partial
/// file as it grows (waiting for more when it reaches its end), then, once the download is
/// verified and published, from the blob itself. A download that restarts from zero
/// rewrites the same bytes (the blob is content-addressed, and what was read is verified at
/// the end), so reading by offset stays right. A failed download ends the read with an
/// error.
struct Follow<'a> {
    partial: PathBuf,
    published: PathBuf,
    size: u64,
    pos: u64,
    file: Option<File>,
    /// `file` is the published blob (it will not grow any more).
    final_file: bool,
    /// The download: None while it runs, then whether it succeeded.
    state: &'a (dyn Fn() -> Option<bool> + Sync),
}

/// How long a follower waits for the download to bring more bytes before looking again.
const FOLLOW_POLL: std::time::Duration = std::time::Duration::from_millis(2);

impl Read for Follow<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        use std::os::unix::fs::FileExt;
        if self.pos >= self.size || buf.is_empty() {
            return Ok(0);
        }
        let want = usize::try_from(self.size - self.pos)
            .unwrap_or(usize::MAX)
            .min(buf.len());
        loop {
            if self.file.is_none() || (!self.final_file && self.published.exists()) {
                match File::open(&self.published) {
                    Ok(f) => {
                        self.file = Some(f);
                        self.final_file = true;
                    }
                    Err(_) if self.file.is_none() => self.file = File::open(&self.partial).ok(),
                    Err(_) => {}
                }
            }
            if let Some(f) = &self.file {
                let got = f.read_at(&mut buf[..want], self.pos)?;
                if got > 0 {
                    self.pos += got as u64;
                    return Ok(got);
                }
                if self.final_file {
                    // Shorter than announced: the verifier says so.
                    return Ok(0);
                }
            }
            match (self.state)() {
                None => std::thread::sleep(FOLLOW_POLL),
                Some(true) => {
                    // Published: read on from the blob itself.
                    let f = File::open(&self.published)?;
                    self.file = Some(f);
                    self.final_file = true;
                }
                Some(false) => {
                    return Err(io::Error::other(
                        "the layer's download failed (its error follows)",
                    ))
                }
            }
        }
    }
}

/// Streams one layer blob through digest verification, decompression and diff_id hashing
/// into the unpacker. Both digests are checked whatever the unpack's outcome, and a digest
/// mismatch wins over any unpack error (a corrupt blob usually fails as bad gzip or tar).
pub(crate) fn unpack_layer(
    unpacker: &mut Unpacker,
    layer: &Layer,
    bytes: LayerBytes<'_>,
) -> Result<(), ImageError> {
    let origin = bytes.origin;
    let mut verifier = VerifyingReader::new(
        BufReader::with_capacity(LAYER_READ_BUFFER, bytes.reader),
        layer.digest.clone(),
        layer.size,
        origin.clone(),
    );
    let unpacked = apply_stream(unpacker, layer, &mut verifier, &origin);
    verifier.finish()?;
    let diff_id = unpacked?;
    if diff_id != layer.diff_id {
        return Err(ImageError::DiffIdMismatch {
            layer: layer.digest.to_string(),
            expected: layer.diff_id.to_string(),
            actual: diff_id.to_string(),
        });
    }
    Ok(())
}

/// Bytes per chunk handed from the decompressing thread to the unpacking one, and chunks
/// in flight (so at most 2 MiB of a layer is held in memory).
const PIPE_CHUNK: usize = 256 * 1024;
const PIPE_DEPTH: usize = 8;

/// Decompresses `blob` (read through its digest check) and hashes the tar stream for the
/// diff_id on a thread of its own while this one applies the tar: inflate and both digests
/// on one core, the tar and the filesystem on the other. Returns the tar stream's digest
/// (the unpack reads the stream to its end, padding included, so it covers all of it).
fn apply_stream<R: Read + Send>(
    unpacker: &mut Unpacker,
    layer: &Layer,
    blob: R,
    origin: &str,
) -> Result<Digest, ImageError> {
    let read_err = |cause| ImageError::BlobRead {
        digest: layer.digest.to_string(),
        origin: origin.to_string(),
        cause,
    };
    std::thread::scope(|s| {
        let (tx, rx) = std::sync::mpsc::sync_channel::<io::Result<Vec<u8>>>(PIPE_DEPTH);
        let producer = s.spawn(move || -> Result<Digest, ImageError> {
            let tar: Box<dyn Read> = match layer.compression {
                Compression::None => Box::new(blob),
                Compression::Gzip => Box::new(MultiGzDecoder::new(blob)),
                Compression::Zstd => {
                    Box::new(zstd::stream::read::Decoder::new(blob).map_err(read_err)?)
                }
            };
            let mut tar = HashingReader::new(tar);
            loop {
                let mut buf = vec![0u8; PIPE_CHUNK];
                let (n, err) = read_some(&mut tar, &mut buf);
                buf.truncate(n);
                // A send fails when the unpack stopped reading (it failed); its error is
                // the one reported.
                if n > 0 && tx.send(Ok(buf)).is_err() {
                    break;
                }
                match err {
                    Some(e) => {
                        let _ = tx.send(Err(e));
                        break;
                    }
                    None if n == 0 => break,
                    None => {}
                }
            }
            Ok(tar.digest())
        });
        let mut stream = ChannelReader {
            rx,
            cur: Vec::new(),
            off: 0,
        };
        let applied = unpacker
            .apply_layer(&layer.digest.to_string(), &mut stream)
            .and_then(|()| {
                io::copy(&mut stream, &mut io::sink())
                    .map(drop)
                    .map_err(read_err)
            });
        // Dropping the receiver ends the producer if the unpack stopped early.
        drop(stream);
        let produced = producer.join().unwrap_or_else(|_| {
            Err(read_err(io::Error::other(
                "the decompressing thread panicked",
            )))
        });
        applied?;
        produced
    })
}

/// One read of what the stream has now (not waiting to fill `buf`: the unpack must see the
/// bytes of a slow download as they come); what was read, and the error, if one stopped it.
fn read_some(r: &mut impl Read, buf: &mut [u8]) -> (usize, Option<io::Error>) {
    loop {
        match r.read(buf) {
            Ok(n) => return (n, None),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return (0, Some(e)),
        }
    }
}

/// The receiving end of [`apply_stream`]'s channel, as a reader.
struct ChannelReader {
    rx: std::sync::mpsc::Receiver<io::Result<Vec<u8>>>,
    cur: Vec<u8>,
    off: usize,
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.off == self.cur.len() {
            match self.rx.recv() {
                Ok(Ok(chunk)) => {
                    self.cur = chunk;
                    self.off = 0;
                }
                Ok(Err(e)) => return Err(e),
                // The producer is done: the end of the stream.
                Err(_) => return Ok(0),
            }
        }
        let n = buf.len().min(self.cur.len() - self.off);
        buf[..n].copy_from_slice(&self.cur[self.off..self.off + n]);
        self.off += n;
        Ok(n)
    }
}
