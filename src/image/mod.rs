//! Images: turn an image reference into a rootfs a container can run from. The flow is
//! [`ImageRef::parse`] (pure syntax) → [`ImageStore::resolve`], which asks the reference's
//! [`Source`] for the tagged descriptor, follows image indexes down to the host platform's
//! manifest, and reads the manifest and config, verifying every blob's size and sha256
//! before parsing it → [`ImageStore::ensure_rootfs`], which unpacks the layers in order into
//! a private temporary directory (verifying each layer's digest and diff_id while it
//! streams, applying whiteouts, refusing any entry that would write outside the rootfs) and
//! renames it into a cache keyed by manifest digest, under a per-digest lock. The unpacked
//! rootfs is only ever visible complete.
//!
//! Sources: an OCI layout directory is read in place (`layout`). Registries (`registry`,
//! over the OCI distribution API) and OCI archives (`archive`) are copied blob by blob into
//! the content store (`blobs`: verified while streaming, resumable, locked per digest) and
//! read from there (`remote`); layers download in parallel while earlier ones unpack.
//! Resolved references are recorded (`refs`) for `shim image ls`, `rm` and `prune` (`gc`).

mod archive;
mod auth;
mod blobs;
mod digest;
mod gc;
mod layers;
mod layout;
mod lock;
mod overlay;
pub mod progress;
mod reference;
mod refs;
mod registry;
mod remote;
mod resolve;
mod store;
pub(crate) mod unpack;

#[cfg(test)]
mod pull_tests;
#[cfg(test)]
mod store_tests;
#[cfg(test)]
mod testutil;
#[cfg(test)]
mod umoci_compare_tests;
#[cfg(test)]
mod unpack_tests;

use std::io::{self, Read};
use std::path::PathBuf;

pub use auth::DEFAULT_AUTH_FILE;
pub use digest::Digest;
pub use gc::InUse;
pub use overlay::{read_in_layers, read_regular};
pub use reference::{validate_registry_host, ImageRef};
pub use store::ImageStore;

/// Host settings for registries, from the `[shim]` table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistrySettings {
    /// `host[:port]` of registries spoken to over plain HTTP.
    pub insecure_registries: Vec<String>,
    /// Credentials in podman's auth.json format.
    pub auth_file: PathBuf,
}

impl Default for RegistrySettings {
    fn default() -> Self {
        RegistrySettings {
            insecure_registries: Vec::new(),
            auth_file: PathBuf::from(DEFAULT_AUTH_FILE),
        }
    }
}

/// What the container needs from the image config (the OCI `config` section).
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct ImageConfig {
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    /// `K=V` strings, in image order.
    pub env: Vec<String>,
    pub working_dir: Option<String>,
    pub user: Option<String>,
    pub stop_signal: Option<String>,
}

/// An image whose manifest and config have been read and verified; enough to build a
/// container spec and to unpack the rootfs.
#[derive(Debug, Clone)]
pub struct ResolvedImage {
    pub reference: ImageRef,
    /// `sha256:<hex>` of the platform-specific manifest (not of an index above it): the
    /// identity of the filesystem, hence the rootfs cache key.
    pub manifest_digest: String,
    pub config: ImageConfig,
    /// Layers in application order (lowest first).
    pub layers: Vec<Layer>,
}

/// One layer of a resolved image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layer {
    /// Digest of the blob as stored (compressed).
    pub digest: Digest,
    pub size: u64,
    pub media_type: String,
    pub compression: Compression,
    /// Digest of the uncompressed tar stream, from the config's `rootfs.diff_ids`.
    pub diff_id: Digest,
}

/// How a layer blob is compressed; derived from its media type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

/// Where an image's objects come from. Resolution and unpacking only go through this, so
/// each kind of reference only needs its implementation. Implementations hand out raw
/// bytes; callers verify them.
pub trait Source: Send + Sync {
    /// Human-readable location for error messages, e.g. `OCI layout /srv/images/app`.
    fn describe(&self) -> String;
    /// The descriptors the reference's tag points at: usually one manifest or index, but a
    /// layout may tag one manifest per platform under the same name.
    fn tagged_descriptors(&self) -> Result<Vec<oci_spec::image::Descriptor>, ImageError>;
    /// Opens the blob with this digest; `size` is what its descriptor announces.
    fn open_blob(&self, digest: &Digest, size: u64) -> Result<Blob, ImageError>;
    /// Opens a manifest or index (registries serve those from their own endpoint).
    fn open_manifest(&self, digest: &Digest, size: u64) -> Result<Blob, ImageError> {
        self.open_blob(digest, size)
    }
    /// Makes a blob local ahead of [`Source::open_blob`], so that layers can download in
    /// parallel while earlier ones unpack. Nothing to do for local sources.
    fn prefetch(&self, _digest: &Digest, _size: u64) -> Result<(), ImageError> {
        Ok(())
    }
    /// Whether blobs come over the network or from another file (worth prefetching).
    fn is_remote(&self) -> bool {
        false
    }
    /// Whether the blob is already local (for progress totals).
    fn is_local(&self, _digest: &Digest) -> bool {
        true
    }
    /// Where [`Source::prefetch`] writes the blob while it downloads, and where it is once
    /// verified: an unpack can then read it as it arrives (see `store::Follow`).
    fn download_paths(&self, _digest: &Digest) -> Option<(PathBuf, PathBuf)> {
        None
    }
}

/// An unverified blob stream and where it comes from (a path or URL, for messages).
pub struct Blob {
    pub reader: Box<dyn Read + Send>,
    pub origin: String,
}

/// Errors of this module. Each message names the object (reference, path, digest, tar
/// entry) and the cause, since they end up in front of an operator without more context.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("invalid image reference {input:?}: {reason}")]
    InvalidReference { input: String, reason: String },

    #[error("{path}: not a usable OCI image layout: {reason}")]
    InvalidLayout { path: PathBuf, reason: String },

    #[error(
        "tag {tag:?} not found in {location}; available tags: {}",
        list_or_none(available)
    )]
    TagNotFound {
        /// e.g. `OCI layout /srv/images/app`.
        location: String,
        tag: String,
        available: Vec<String>,
    },

    #[error("{path}: not a usable OCI archive: {reason}")]
    InvalidArchive { path: PathBuf, reason: String },

    #[error(
        "manifest {reference:?} not found in {registry}/{repository}{}",
        match available {
            Some(tags) => format!("; available tags: {}", list_or_none(tags)),
            None => String::new(),
        }
    )]
    ManifestNotFound {
        registry: String,
        repository: String,
        reference: String,
        /// The repository's tags, when they could be listed.
        available: Option<Vec<String>>,
    },

    #[error("repository {repository:?} not found in registry {registry}")]
    RepositoryNotFound {
        registry: String,
        repository: String,
    },

    #[error("registry {registry} refused access to {repository}: {reason}")]
    Unauthorized {
        registry: String,
        repository: String,
        reason: String,
    },

    #[error("cannot reach registry {registry} ({url}): {cause}{hint}")]
    Unreachable {
        registry: String,
        url: String,
        cause: String,
        /// Extra explanation, starting with "; " when present.
        hint: String,
    },

    #[error("registry answered {status} to GET {url}: {message}")]
    RegistryStatus {
        url: String,
        status: u16,
        message: String,
    },

    #[error("blob {digest} ({origin}): download failed after {attempts} attempts with {got} of {size} bytes received: {cause}")]
    DownloadFailed {
        digest: String,
        origin: String,
        attempts: u32,
        got: u64,
        size: u64,
        cause: String,
    },

    #[error("registry credentials {path}: {reason}")]
    Credentials { path: PathBuf, reason: String },

    #[error(
        "{reference} is not a pulled image; pulled: {}",
        list_or_none(recorded)
    )]
    NotRecorded {
        reference: String,
        recorded: Vec<String>,
    },

    #[error(
        "{image}: no manifest for platform {wanted}; available: {}",
        list_or_none(available)
    )]
    PlatformNotFound {
        image: String,
        wanted: String,
        available: Vec<String>,
    },

    #[error("{what} {digest}: unsupported media type {media_type:?}{hint}")]
    UnsupportedMediaType {
        what: &'static str,
        digest: String,
        media_type: String,
        /// Extra explanation, starting with "; " when present.
        hint: String,
    },

    #[error("{what}: unsupported digest {digest:?} (only sha256:<64 lowercase hex> is supported)")]
    UnsupportedDigest { what: String, digest: String },

    #[error("blob {expected} ({origin}): digest mismatch: expected {expected}, got {actual}")]
    DigestMismatch {
        expected: String,
        actual: String,
        origin: String,
    },

    #[error("blob {digest} ({origin}): size mismatch: descriptor says {expected} bytes, blob has {actual}")]
    SizeMismatch {
        digest: String,
        origin: String,
        expected: u64,
        actual: String,
    },

    #[error("blob {digest} ({origin}): {cause}")]
    BlobRead {
        digest: String,
        origin: String,
        cause: io::Error,
    },

    #[error("layer {layer}: uncompressed content has digest {actual} but the image config's diff_id is {expected}")]
    DiffIdMismatch {
        layer: String,
        expected: String,
        actual: String,
    },

    #[error("{what} {origin}: invalid: {reason}")]
    InvalidImage {
        what: &'static str,
        origin: String,
        reason: String,
    },

    /// An entry that would escape the rootfs or otherwise cannot be applied safely; the
    /// unpack is refused rather than silently skipping the entry.
    #[error("layer {layer}: refusing tar entry {entry:?}: {reason}")]
    UnsafeEntry {
        layer: String,
        entry: String,
        reason: String,
    },

    #[error("layer {layer}: tar entry {entry:?}: {cause}")]
    Unpack {
        layer: String,
        entry: String,
        cause: io::Error,
    },

    #[error("{path}: {op}: {cause}")]
    Io {
        path: PathBuf,
        op: &'static str,
        cause: io::Error,
    },
}

fn list_or_none(items: &[String]) -> String {
    if items.is_empty() {
        "(none)".to_string()
    } else {
        items.join(", ")
    }
}

impl ImageError {
    pub(crate) fn io(path: impl Into<PathBuf>, op: &'static str, cause: io::Error) -> Self {
        ImageError::Io {
            path: path.into(),
            op,
            cause,
        }
    }
}
