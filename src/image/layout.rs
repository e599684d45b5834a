//! [`Source`] for an OCI image layout directory (`oci-layout`, `index.json`,
//! `blobs/sha256/<hex>`), as written by skopeo, umoci or buildah. Tags live in
//! `index.json` as the `org.opencontainers.image.ref.name` annotation of its entries.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use oci_spec::image::{Descriptor, ImageIndex};

use super::{Blob, Digest, ImageError, Source};

/// The annotation holding a manifest's tag in `index.json`.
pub(crate) const REF_NAME: &str = "org.opencontainers.image.ref.name";

/// `index.json` is not content-addressed, so it gets a generous but finite read limit
/// instead of a descriptor size.
const MAX_INDEX_JSON: u64 = 16 << 20;

pub(crate) struct OciLayout {
    path: PathBuf,
    tag: String,
}

impl OciLayout {
    pub(crate) fn new(path: &Path, tag: &str) -> Self {
        OciLayout {
            path: path.to_path_buf(),
            tag: tag.to_string(),
        }
    }

    fn invalid(&self, reason: impl Into<String>) -> ImageError {
        ImageError::InvalidLayout {
            path: self.path.clone(),
            reason: reason.into(),
        }
    }

    fn read_limited(&self, name: &str) -> Result<Vec<u8>, ImageError> {
        let path = self.path.join(name);
        let file = File::open(&path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                self.invalid(format!("missing {name}"))
            } else {
                ImageError::io(&path, "opening", e)
            }
        })?;
        let mut data = Vec::new();
        file.take(MAX_INDEX_JSON + 1)
            .read_to_end(&mut data)
            .map_err(|e| ImageError::io(&path, "reading", e))?;
        if data.len() as u64 > MAX_INDEX_JSON {
            return Err(self.invalid(format!("{name} is larger than {MAX_INDEX_JSON} bytes")));
        }
        Ok(data)
    }

    /// Checks the `oci-layout` marker, so pointing at the wrong directory gives a clear
    /// message rather than "index.json not found".
    fn check_marker(&self) -> Result<(), ImageError> {
        #[derive(serde::Deserialize)]
        struct Marker {
            #[serde(rename = "imageLayoutVersion")]
            version: String,
        }
        let data = self.read_limited("oci-layout")?;
        let marker: Marker =
            serde_json::from_slice(&data).map_err(|e| self.invalid(format!("oci-layout: {e}")))?;
        // Only 1.x exists; a future major version may change the directory structure.
        if !marker.version.starts_with("1.") {
            return Err(self.invalid(format!(
                "unsupported imageLayoutVersion {:?} (expected 1.x)",
                marker.version
            )));
        }
        Ok(())
    }
}

impl Source for OciLayout {
    fn describe(&self) -> String {
        format!("OCI layout {}", self.path.display())
    }

    fn tagged_descriptors(&self) -> Result<Vec<Descriptor>, ImageError> {
        self.check_marker()?;
        let data = self.read_limited("index.json")?;
        let index: ImageIndex =
            serde_json::from_slice(&data).map_err(|e| self.invalid(format!("index.json: {e}")))?;
        let (found, available) = select_tag(index.manifests(), &self.tag);
        if found.is_empty() {
            return Err(ImageError::TagNotFound {
                location: self.describe(),
                tag: self.tag.clone(),
                available,
            });
        }
        Ok(found)
    }

    fn open_blob(&self, digest: &Digest, _size: u64) -> Result<Blob, ImageError> {
        let path = self.path.join("blobs/sha256").join(digest.hex());
        let file = File::open(&path).map_err(|e| ImageError::BlobRead {
            digest: digest.to_string(),
            origin: path.display().to_string(),
            cause: e,
        })?;
        Ok(Blob {
            reader: Box::new(file),
            origin: path.display().to_string(),
        })
    }
}

/// Splits index entries into those tagged `tag` and the sorted list of all tags (for the
/// error message when nothing matches).
pub(crate) fn select_tag(entries: &[Descriptor], tag: &str) -> (Vec<Descriptor>, Vec<String>) {
    let name_of = |d: &Descriptor| d.annotations().as_ref()?.get(REF_NAME).cloned();
    let found = entries
        .iter()
        .filter(|d| name_of(d).as_deref() == Some(tag))
        .cloned()
        .collect();
    let mut available: Vec<String> = entries.iter().filter_map(name_of).collect();
    available.sort();
    available.dedup();
    (found, available)
}

#[cfg(test)]
mod tests {
    use super::*;
    use oci_spec::image::MediaType;
    use std::collections::HashMap;

    fn desc(tag: Option<&str>, n: u8) -> Descriptor {
        let digest: oci_spec::image::Digest = format!("sha256:{n:064x}").parse().unwrap();
        let mut d = Descriptor::new(MediaType::ImageManifest, 1, digest);
        if let Some(tag) = tag {
            d.set_annotations(Some(HashMap::from([(
                REF_NAME.to_string(),
                tag.to_string(),
            )])));
        }
        d
    }

    #[test]
    fn select_tag_matches_exactly_and_lists_tags() {
        let entries = [
            desc(Some("v2"), 1),
            desc(None, 2),
            desc(Some("v1"), 3),
            desc(Some("v2"), 4),
        ];
        let (found, available) = select_tag(&entries, "v2");
        assert_eq!(found, vec![entries[0].clone(), entries[3].clone()]);
        assert_eq!(available, vec!["v1", "v2"]);
        let (found, _) = select_tag(&entries, "v");
        assert!(found.is_empty());
    }
}
