//! The image store: resolution entry point and the cache of unpacked rootfs directories,
//! `<root>/rootfs/<manifest hex>/`. A cached rootfs is only ever published complete: it is
//! built in `<root>/rootfs/.tmp-<hex>-<pid>`, flushed, and renamed into place while holding
//! an exclusive flock on `<root>/rootfs/.lock-<hex>`, so concurrent callers wait for one
//! unpack and then find it done, and whatever a crash left behind is recognisable as a
//! temporary directory and removed by the next caller holding the lock.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, Read};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use flate2::read::MultiGzDecoder;
use nix::fcntl::{Flock, FlockArg};

use super::digest::{HashingReader, VerifyingReader};
use super::layout::OciLayout;
use super::resolve::{self, Platform};
use super::unpack::Unpacker;
use super::{Compression, Digest, ImageError, ImageRef, Layer, ResolvedImage, Source};

/// Large reads keep syscalls down: tar reads headers 512 bytes at a time.
const LAYER_READ_BUFFER: usize = 256 * 1024;

/// Owns `<root>` (e.g. `/var/lib/shim/images`).
#[derive(Debug, Clone)]
pub struct ImageStore {
    root: PathBuf,
}

impl ImageStore {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        ImageStore { root: root.into() }
    }

    /// The [`Source`] serving a reference. Lives on the store so future sources (registries)
    /// can keep their blob cache under `<root>`.
    pub fn source(&self, r: &ImageRef) -> Box<dyn Source> {
        match r {
            ImageRef::OciLayout { path, tag } => Box::new(OciLayout::new(path, tag)),
        }
    }

    /// Reads the tagged manifest (through an index if needed, for the host platform) and its
    /// config, verifying every blob's digest and size. Writes nothing.
    pub fn resolve(&self, r: &ImageRef) -> Result<ResolvedImage, ImageError> {
        resolve::resolve(self.source(r).as_ref(), r, &Platform::host())
    }

    fn rootfs_dir(&self) -> PathBuf {
        self.root.join("rootfs")
    }

    /// Where the rootfs of a manifest is (or would be) cached.
    pub fn rootfs_path(&self, manifest_digest: &Digest) -> PathBuf {
        self.rootfs_dir().join(manifest_digest.hex())
    }

    /// Returns the unpacked rootfs of `img`, unpacking it first if it is not cached. Safe to
    /// call concurrently from several processes; on error nothing is left behind.
    pub fn ensure_rootfs(&self, img: &ResolvedImage) -> Result<PathBuf, ImageError> {
        self.ensure_rootfs_with(img, self.source(&img.reference).as_ref(), true)
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

        let lock_path = dir.join(format!(".lock-{}", digest.hex()));
        let lock_file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&lock_path)
            .map_err(|e| ImageError::io(&lock_path, "opening lock", e))?;
        // The lock is released when `_lock` drops (or the process dies), which is what makes
        // any temporary directory found while holding it stale. The lock file itself stays:
        // deleting it would let a waiter lock an unlinked inode while a newcomer locks a new one.
        let _lock = Flock::lock(lock_file, FlockArg::LockExclusive).map_err(|(_, e)| {
            ImageError::io(
                &lock_path,
                "locking",
                io::Error::from_raw_os_error(e as i32),
            )
        })?;

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
        let built = unpack_image(source, &img.layers, &tmp, preserve_ownership)
            .and_then(|()| publish(&tmp, &target, &dir));
        if let Err(e) = built {
            if let Err(rm) = fs::remove_dir_all(&tmp) {
                tracing::warn!(path = %tmp.display(), "removing failed unpack: {rm}");
            }
            return Err(e);
        }
        tracing::info!(image = %img.reference, source = %source.describe(), rootfs = %target.display(), "unpacked image");
        Ok(target)
    }
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
            fs::remove_dir_all(&path)
                .map_err(|e| ImageError::io(&path, "removing stale unpack", e))?;
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

/// Unpacks `layers` in order into the empty directory `dest`.
pub(crate) fn unpack_image(
    source: &dyn Source,
    layers: &[Layer],
    dest: &Path,
    preserve_ownership: bool,
) -> Result<(), ImageError> {
    let mut unpacker = Unpacker::new(dest, preserve_ownership);
    unpacker.init_root()?;
    for layer in layers {
        unpack_layer(&mut unpacker, source, layer)?;
    }
    Ok(())
}

/// Streams one layer blob through digest verification, decompression and diff_id hashing
/// into the unpacker. Both digests are checked whatever the unpack's outcome, and a digest
/// mismatch wins over any unpack error (a corrupt blob usually fails as bad gzip or tar).
fn unpack_layer(
    unpacker: &mut Unpacker,
    source: &dyn Source,
    layer: &Layer,
) -> Result<(), ImageError> {
    let blob = source.open_blob(&layer.digest)?;
    let origin = blob.origin.clone();
    let mut verifier = VerifyingReader::new(
        BufReader::with_capacity(LAYER_READ_BUFFER, blob.reader),
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

fn apply_stream<R: Read>(
    unpacker: &mut Unpacker,
    layer: &Layer,
    blob: R,
    origin: &str,
) -> Result<Digest, ImageError> {
    let tar: Box<dyn Read + '_> = match layer.compression {
        Compression::None => Box::new(blob),
        Compression::Gzip => Box::new(MultiGzDecoder::new(blob)),
    };
    let mut hashing = HashingReader::new(tar);
    unpacker.apply_layer(&layer.digest.to_string(), &mut hashing)?;
    hashing
        .drain_and_digest()
        .map_err(|e| ImageError::BlobRead {
            digest: layer.digest.to_string(),
            origin: origin.to_string(),
            cause: e,
        })
}
