//! The content store: blobs by digest under `<root>/blobs/sha256/<hex>`, shared by every
//! image and revision that uses them. A blob only ever appears there complete and verified:
//! it is downloaded into `.partial-<hex>` while being hashed and counted, and renamed into
//! place when its digest and size match. Everything about one digest happens under the lock
//! `.lock-<hex>`, so concurrent pulls of the same blob wait for one download and then find
//! it done.
//!
//! Interrupted downloads resume: a partial file left by a dropped connection (or a killed
//! process) is re-hashed and the rest is asked for with an HTTP `Range` request; a server
//! that answers with the whole blob instead restarts it cleanly. Attempts that make no
//! progress are bounded. A digest mismatch deletes the partial file, since its bytes cannot
//! be told apart.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use sha2::{Digest as _, Sha256};

use super::lock;
use super::progress::Progress;
use super::{Blob, Digest, ImageError};

/// Attempts in a row that add no bytes before a download is given up.
const MAX_ATTEMPTS_WITHOUT_PROGRESS: u32 = 3;
/// Hard cap on attempts for one blob, whatever the progress (a server trickling a few bytes
/// per connection would otherwise keep us busy forever).
const MAX_ATTEMPTS: u32 = 50;
const COPY_BUFFER: usize = 256 * 1024;

/// A stream of a blob's bytes, starting at `start`.
pub(crate) struct Opened {
    pub reader: Box<dyn Read + Send>,
    /// Where the stream starts in the blob: the offset asked for, or 0 if the server ignored
    /// the range.
    pub start: u64,
}

/// Why opening a stream failed, and whether trying again may help.
pub(crate) enum FetchError {
    /// A dropped connection, a timeout, a 5xx: worth another attempt.
    Transient(String),
    /// A 404, refused credentials, an invalid answer: final.
    Fatal(ImageError),
}

/// Where a missing blob comes from (a registry, an archive).
pub(crate) trait Fetch {
    /// Opens the blob from byte `offset` on (0: the whole blob).
    fn open_at(&self, offset: u64) -> Result<Opened, FetchError>;
    /// For messages: a URL or path.
    fn origin(&self) -> String;
}

#[derive(Debug, Clone)]
pub(crate) struct BlobStore {
    root: PathBuf,
    dir: PathBuf,
    /// Pause between attempts; shortened by tests.
    pub(crate) retry_pause: Duration,
}

impl BlobStore {
    /// The store under the image root `root` (e.g. `/var/lib/shim/images`).
    pub(crate) fn new(root: &Path) -> BlobStore {
        BlobStore {
            root: root.to_path_buf(),
            dir: root.join("blobs").join("sha256"),
            retry_pause: Duration::from_millis(300),
        }
    }

    pub(crate) fn path(&self, d: &Digest) -> PathBuf {
        self.dir.join(d.hex())
    }

    pub(crate) fn lock_path(&self, d: &Digest) -> PathBuf {
        self.dir.join(format!(".lock-{}", d.hex()))
    }

    pub(crate) fn partial_path(&self, d: &Digest) -> PathBuf {
        self.dir.join(format!(".partial-{}", d.hex()))
    }

    /// Size of the stored blob, if it is stored.
    pub(crate) fn size(&self, d: &Digest) -> Option<u64> {
        fs::metadata(self.path(d))
            .ok()
            .filter(|m| m.is_file())
            .map(|m| m.len())
    }

    pub(crate) fn contains(&self, d: &Digest) -> bool {
        self.size(d).is_some()
    }

    pub(crate) fn open(&self, d: &Digest) -> Result<Blob, ImageError> {
        let path = self.path(d);
        let file = File::open(&path).map_err(|e| ImageError::BlobRead {
            digest: d.to_string(),
            origin: path.display().to_string(),
            cause: e,
        })?;
        Ok(Blob {
            reader: Box::new(file),
            origin: path.display().to_string(),
        })
    }

    /// Creates `<root>` and the blob directory. 0700: private images' layers (and whatever
    /// secrets their authors baked in) are for root only.
    pub(crate) fn create_dirs(&self) -> Result<(), ImageError> {
        for d in [self.root.clone(), self.root.join("blobs"), self.dir.clone()] {
            match fs::DirBuilder::new().recursive(true).mode(0o700).create(&d) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(ImageError::io(&d, "creating", e)),
            }
        }
        Ok(())
    }

    /// Stores `data` as blob `d` after checking that it is.
    pub(crate) fn put_bytes(
        &self,
        d: &Digest,
        data: &[u8],
        origin: &str,
    ) -> Result<(), ImageError> {
        let actual = Digest::of(data);
        if &actual != d {
            return Err(ImageError::DigestMismatch {
                expected: d.to_string(),
                actual: actual.to_string(),
                origin: origin.to_string(),
            });
        }
        if self.contains(d) {
            return Ok(());
        }
        self.create_dirs()?;
        let _lock = lock::lock(&self.lock_path(d))?;
        if self.contains(d) {
            return Ok(());
        }
        let partial = self.partial_path(d);
        let write = || -> io::Result<()> {
            let mut f = OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&partial)?;
            f.write_all(data)?;
            f.sync_all()
        };
        write().map_err(|e| ImageError::io(&partial, "writing", e))?;
        self.publish(&partial, d)
    }

    fn publish(&self, partial: &Path, d: &Digest) -> Result<(), ImageError> {
        let target = self.path(d);
        fs::rename(partial, &target)
            .map_err(|e| ImageError::io(&target, "renaming verified blob into place", e))?;
        File::open(&self.dir)
            .and_then(|f| f.sync_all())
            .map_err(|e| ImageError::io(&self.dir, "syncing", e))
    }

    /// Makes blob `d` of `size` bytes present, downloading it through `fetch` unless it
    /// already is. See the module documentation for resuming, retries and verification.
    pub(crate) fn fetch(
        &self,
        d: &Digest,
        size: u64,
        fetch: &dyn Fetch,
        progress: &dyn Progress,
    ) -> Result<(), ImageError> {
        if self.contains(d) {
            return Ok(());
        }
        self.create_dirs()?;
        let _lock = lock::lock(&self.lock_path(d))?;
        // Someone else may have finished while we waited.
        if self.contains(d) {
            return Ok(());
        }
        let partial = self.partial_path(d);
        let mut part = Partial::open(&partial)?;
        part.resume(d, size)?;
        progress.blob_started(d, size, part.have);
        self.download(&mut part, d, size, fetch, progress)?;
        self.verify_and_publish(part, d, fetch, progress)
    }

    /// Downloads the rest of blob `d` into `part`, retrying as the module documentation says.
    fn download(
        &self,
        part: &mut Partial<'_>,
        d: &Digest,
        size: u64,
        fetch: &dyn Fetch,
        progress: &dyn Progress,
    ) -> Result<(), ImageError> {
        let mut best = part.have;
        let mut attempts = 0u32;
        let mut stalled = 0u32;
        let mut last_error = String::new();
        let mut buf = vec![0u8; COPY_BUFFER];
        while part.have < size {
            if attempts > 0 {
                std::thread::sleep(self.retry_pause * stalled.max(1));
            }
            attempts += 1;
            match fetch.open_at(part.have) {
                Ok(opened) => {
                    if let Some(e) = part.take(opened, d, size, &mut buf, progress)? {
                        last_error = e;
                    }
                }
                Err(FetchError::Fatal(e)) => return Err(e),
                Err(FetchError::Transient(msg)) => last_error = msg,
            }
            let have = part.have;
            if have > best {
                best = have;
                stalled = 0;
            } else if have < size {
                stalled += 1;
            }
            if have < size && (stalled >= MAX_ATTEMPTS_WITHOUT_PROGRESS || attempts >= MAX_ATTEMPTS)
            {
                // The partial file stays: the next pull resumes from it.
                let _ = part.file.sync_all();
                return Err(ImageError::DownloadFailed {
                    digest: d.to_string(),
                    origin: fetch.origin(),
                    attempts,
                    got: have,
                    size,
                    cause: last_error,
                });
            }
        }
        Ok(())
    }

    /// Checks the complete download against `d`, then moves it into place.
    fn verify_and_publish(
        &self,
        part: Partial<'_>,
        d: &Digest,
        fetch: &dyn Fetch,
        progress: &dyn Progress,
    ) -> Result<(), ImageError> {
        let Partial {
            path: partial,
            file,
            hasher,
            ..
        } = part;
        let actual = Digest::from_hasher(hasher);
        if &actual != d {
            drop(file);
            let _ = fs::remove_file(partial);
            return Err(ImageError::DigestMismatch {
                expected: d.to_string(),
                actual: actual.to_string(),
                origin: fetch.origin(),
            });
        }
        file.sync_all()
            .map_err(|e| ImageError::io(partial, "syncing", e))?;
        drop(file);
        self.publish(partial, d)?;
        progress.blob_done(d);
        Ok(())
    }

    /// Digests of every stored blob (partial downloads and lock files excluded).
    pub(crate) fn list(&self) -> Result<Vec<(Digest, u64)>, ImageError> {
        let entries = match fs::read_dir(&self.dir) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(ImageError::io(&self.dir, "listing", e)),
        };
        let mut out = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| ImageError::io(&self.dir, "listing", e))?;
            let name = entry.file_name();
            let Some(d) = name
                .to_str()
                .and_then(|n| Digest::parse(&format!("sha256:{n}")))
            else {
                continue;
            };
            let len = entry.metadata().map(|m| m.len()).unwrap_or(0);
            out.push((d, len));
        }
        out.sort();
        Ok(out)
    }

    /// Removes blob `d` (and its lock file) unless a download of it is in progress.
    /// Returns whether it was removed.
    pub(crate) fn remove(&self, d: &Digest) -> Result<bool, ImageError> {
        let Some(l) = lock::try_lock(&self.lock_path(d))? else {
            return Ok(false);
        };
        for p in [self.path(d), self.partial_path(d)] {
            match fs::remove_file(&p) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(ImageError::io(&p, "removing", e)),
            }
        }
        drop(l);
        Ok(true)
    }

    /// Removes what interrupted downloads left (partial files, lock files of blobs that are
    /// not stored) unless `keep` says the digest is still wanted or a download holds its
    /// lock. Returns the partial files removed.
    pub(crate) fn sweep(&self, keep: &dyn Fn(&Digest) -> bool) -> Result<Vec<PathBuf>, ImageError> {
        let entries = match fs::read_dir(&self.dir) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(ImageError::io(&self.dir, "listing", e)),
        };
        let mut removed = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| ImageError::io(&self.dir, "listing", e))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let hex = name
                .strip_prefix(".partial-")
                .or_else(|| name.strip_prefix(".lock-"));
            let Some(d) = hex.and_then(|h| Digest::parse(&format!("sha256:{h}"))) else {
                continue;
            };
            if self.contains(&d) || keep(&d) {
                continue;
            }
            // Held: a download is running; it is not ours to remove.
            let Some(l) = lock::try_lock(&self.lock_path(&d))? else {
                continue;
            };
            let partial = self.partial_path(&d);
            if fs::remove_file(&partial).is_ok() {
                removed.push(partial);
            }
            drop(l);
        }
        Ok(removed)
    }
}

/// A download in progress: the `.partial` file, the hash of what it holds, and its length.
struct Partial<'a> {
    path: &'a Path,
    file: File,
    hasher: Sha256,
    have: u64,
}

impl<'a> Partial<'a> {
    fn open(path: &'a Path) -> Result<Partial<'a>, ImageError> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(path)
            .map_err(|e| ImageError::io(path, "opening", e))?;
        Ok(Partial {
            path,
            file,
            hasher: Sha256::new(),
            have: 0,
        })
    }

    fn io_err(&self, op: &'static str, e: io::Error) -> ImageError {
        ImageError::io(self.path, op, e)
    }

    /// Re-hashes what an earlier attempt left, unless it cannot be a prefix of this blob.
    fn resume(&mut self, d: &Digest, size: u64) -> Result<(), ImageError> {
        let have = self
            .file
            .metadata()
            .map_err(|e| self.io_err("reading", e))?
            .len();
        if have > size {
            self.file
                .set_len(0)
                .map_err(|e| self.io_err("truncating", e))?;
        } else if have > 0 {
            let mut buf = vec![0u8; COPY_BUFFER];
            let mut left = have;
            while left > 0 {
                let n = self
                    .file
                    .read(&mut buf)
                    .map_err(|e| self.io_err("reading", e))?;
                if n == 0 {
                    break;
                }
                let n = n.min(usize::try_from(left).unwrap_or(usize::MAX));
                self.hasher.update(&buf[..n]);
                left -= n as u64;
            }
            tracing::info!(digest = %d, bytes = have, "resuming an interrupted download");
            self.have = have;
        }
        Ok(())
    }

    /// Appends what one response brings. `Some(cause)` when it ended before the blob did (or
    /// started at the wrong offset); errors only for local I/O.
    fn take(
        &mut self,
        opened: Opened,
        d: &Digest,
        size: u64,
        buf: &mut [u8],
        progress: &dyn Progress,
    ) -> Result<Option<String>, ImageError> {
        if opened.start == 0 && self.have > 0 {
            // The server ignored the range and sent the whole blob: start over.
            progress.blob_restarted(d, self.have);
            self.file
                .set_len(0)
                .map_err(|e| self.io_err("truncating", e))?;
            self.hasher = Sha256::new();
            self.have = 0;
        }
        if opened.start != self.have {
            return Ok(Some(format!(
                "asked for the bytes from {} on, the server sent from {}",
                self.have, opened.start
            )));
        }
        self.file
            .seek(SeekFrom::Start(self.have))
            .map_err(|e| self.io_err("seeking", e))?;
        let mut reader = opened.reader;
        while self.have < size {
            let have = self.have;
            let want = usize::try_from(size - have)
                .unwrap_or(usize::MAX)
                .min(buf.len());
            let n = match reader.read(&mut buf[..want]) {
                Ok(0) => {
                    return Ok(Some(format!(
                        "the connection ended after {have} of {size} bytes"
                    )))
                }
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Ok(Some(e.to_string())),
            };
            self.file
                .write_all(&buf[..n])
                .map_err(|e| self.io_err("writing", e))?;
            self.hasher.update(&buf[..n]);
            self.have += n as u64;
            progress.blob_bytes(d, n as u64);
        }
        Ok(None)
    }
}
