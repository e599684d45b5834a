//! Sources whose blobs are copied into the content store before anything reads them: a
//! registry, an OCI archive, or (when the registry cannot be reached) nothing but what an
//! earlier pull recorded. [`StoreSource`] is the one [`Source`] over all of them: it asks
//! its [`Remote`] for the tagged descriptors, downloads each blob into the store the first
//! time it is needed (verified, resumable, locked; see `blobs`), and then serves it from
//! there, so resolution and unpacking only ever read local, verified files.

use std::sync::Arc;

use oci_spec::image::{Descriptor, MediaType};

use super::blobs::{BlobStore, Fetch};
use super::progress::Progress;
use super::reference::RegistryRef;
use super::registry::Client;
use super::{Blob, Digest, ImageError, Source};

/// Where blobs come from, and what the reference tags.
pub(crate) trait Remote: Send + Sync {
    fn describe(&self) -> String;
    /// The tagged descriptors; a remote that reads the tagged manifest to answer (a
    /// registry) stores it in `blobs` too.
    fn tagged(&self, blobs: &BlobStore) -> Result<Vec<Descriptor>, ImageError>;
    /// A downloader for one blob (`manifest`: a manifest or index, which registries serve
    /// from their own endpoint).
    fn fetcher<'a>(
        &'a self,
        digest: &Digest,
        size: u64,
        manifest: bool,
    ) -> Result<Box<dyn Fetch + 'a>, ImageError>;
}

pub(crate) struct StoreSource<R> {
    pub remote: R,
    pub blobs: BlobStore,
    pub progress: Arc<dyn Progress>,
}

impl<R: Remote> StoreSource<R> {
    fn ensure(&self, digest: &Digest, size: u64, manifest: bool) -> Result<(), ImageError> {
        if self.blobs.contains(digest) {
            return Ok(());
        }
        let fetch = self.remote.fetcher(digest, size, manifest)?;
        self.blobs
            .fetch(digest, size, fetch.as_ref(), self.progress.as_ref())
    }
}

impl<R: Remote> Source for StoreSource<R> {
    fn describe(&self) -> String {
        self.remote.describe()
    }

    fn tagged_descriptors(&self) -> Result<Vec<Descriptor>, ImageError> {
        self.remote.tagged(&self.blobs)
    }

    fn open_blob(&self, digest: &Digest, size: u64) -> Result<Blob, ImageError> {
        self.ensure(digest, size, false)?;
        self.blobs.open(digest)
    }

    fn open_manifest(&self, digest: &Digest, size: u64) -> Result<Blob, ImageError> {
        self.ensure(digest, size, true)?;
        self.blobs.open(digest)
    }

    fn prefetch(&self, digest: &Digest, size: u64) -> Result<(), ImageError> {
        self.ensure(digest, size, false)
    }

    fn is_remote(&self) -> bool {
        true
    }

    fn is_local(&self, digest: &Digest) -> bool {
        self.blobs.contains(digest)
    }

    fn download_paths(&self, digest: &Digest) -> Option<(std::path::PathBuf, std::path::PathBuf)> {
        Some((self.blobs.partial_path(digest), self.blobs.path(digest)))
    }
}

/// A registry repository.
pub(crate) struct RegistryRemote {
    pub client: Client,
    pub reference: RegistryRef,
}

/// The descriptor of a manifest already in the store (a digest reference pulled before):
/// no network needed.
fn stored_manifest_descriptor(blobs: &BlobStore, d: &Digest) -> Option<Descriptor> {
    let size = blobs.size(d)?;
    let data = std::fs::read(blobs.path(d)).ok()?;
    #[derive(serde::Deserialize)]
    struct Typed {
        #[serde(rename = "mediaType")]
        media_type: Option<String>,
        manifests: Option<serde_json::Value>,
    }
    let t: Typed = serde_json::from_slice(&data).ok()?;
    let media_type = t.media_type.unwrap_or_else(|| {
        if t.manifests.is_some() {
            "application/vnd.oci.image.index.v1+json".into()
        } else {
            "application/vnd.oci.image.manifest.v1+json".into()
        }
    });
    Some(Descriptor::new(
        MediaType::from(media_type.as_str()),
        size,
        d.to_string().parse::<oci_spec::image::Digest>().ok()?,
    ))
}

impl Remote for RegistryRemote {
    fn describe(&self) -> String {
        format!("registry {}", self.reference.registry)
    }

    fn tagged(&self, blobs: &BlobStore) -> Result<Vec<Descriptor>, ImageError> {
        if let Some(d) = &self.reference.digest {
            if let Some(desc) = stored_manifest_descriptor(blobs, d) {
                return Ok(vec![desc]);
            }
        }
        let (desc, body) = self.client.manifest(&self.reference.manifest_reference())?;
        let digest = Digest::parse_for(desc.digest().as_ref(), "manifest")?;
        blobs.put_bytes(&digest, &body, &self.describe())?;
        Ok(vec![desc])
    }

    fn fetcher<'a>(
        &'a self,
        digest: &Digest,
        _size: u64,
        manifest: bool,
    ) -> Result<Box<dyn Fetch + 'a>, ImageError> {
        Ok(Box::new(self.client.fetcher(digest, manifest)))
    }
}

/// What an earlier pull recorded, used when the registry cannot be reached: the tagged
/// descriptor as it was then; every blob must already be in the store.
pub(crate) struct Recorded {
    pub top: Descriptor,
    pub origin: String,
}

impl Remote for Recorded {
    fn describe(&self) -> String {
        format!("content store (recorded pull of {})", self.origin)
    }

    fn tagged(&self, _blobs: &BlobStore) -> Result<Vec<Descriptor>, ImageError> {
        Ok(vec![self.top.clone()])
    }

    fn fetcher<'a>(
        &'a self,
        digest: &Digest,
        _size: u64,
        _manifest: bool,
    ) -> Result<Box<dyn Fetch + 'a>, ImageError> {
        Err(ImageError::InvalidImage {
            what: "blob",
            origin: digest.to_string(),
            reason: format!(
                "not in the content store, and {} cannot be reached to download it",
                self.origin
            ),
        })
    }
}

/// The stored manifest descriptor for `d`, for [`Recorded`] users.
pub(crate) fn recorded_descriptor(
    blobs: &BlobStore,
    d: &Digest,
    media_type: &str,
) -> Option<Descriptor> {
    let size = blobs.size(d)?;
    Some(Descriptor::new(
        MediaType::from(media_type),
        size,
        d.to_string().parse::<oci_spec::image::Digest>().ok()?,
    ))
}
