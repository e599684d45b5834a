//! `oci-archive:` images: an OCI image layout packed in a tar file, as `skopeo copy ...
//! oci-archive:FILE:TAG` writes it. The archive is scanned once for its entries (seeking
//! over the data), `index.json` is read from it, and blobs are then copied into the content
//! store straight from their offsets in the file, verified like any download. Nothing is
//! extracted to disk besides the blobs the image needs.

use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::PathBuf;
use std::sync::OnceLock;

use oci_spec::image::{Descriptor, ImageIndex};

use super::blobs::{BlobStore, Fetch, FetchError, Opened};
use super::layout::select_tag;
use super::remote::Remote;
use super::{Digest, ImageError};

/// `index.json` and `oci-layout` are not content-addressed: bounded like in a layout.
const MAX_METADATA: u64 = 16 << 20;

pub(crate) struct OciArchive {
    path: PathBuf,
    tag: Option<String>,
    scanned: OnceLock<Result<Scan, String>>,
}

/// What a scan of the archive found.
struct Scan {
    /// Regular files by normalised path: (offset of the data in the file, size).
    entries: HashMap<String, (u64, u64)>,
    index_json: Vec<u8>,
}

impl OciArchive {
    pub(crate) fn new(path: PathBuf, tag: Option<String>) -> OciArchive {
        OciArchive {
            path,
            tag,
            scanned: OnceLock::new(),
        }
    }

    fn invalid(&self, reason: impl Into<String>) -> ImageError {
        ImageError::InvalidArchive {
            path: self.path.clone(),
            reason: reason.into(),
        }
    }

    fn scan(&self) -> Result<&Scan, ImageError> {
        self.scanned
            .get_or_init(|| scan(&self.path))
            .as_ref()
            .map_err(|reason| self.invalid(reason.clone()))
    }
}

/// `./blobs/sha256/x` and `blobs/sha256/x` are the same entry.
fn normalise(path: &str) -> String {
    path.trim_start_matches("./")
        .trim_start_matches('/')
        .to_string()
}

/// Opens the archive, refusing a compressed one (with what to do about it).
fn open_plain_tar(path: &PathBuf) -> Result<File, String> {
    let mut file = File::open(path).map_err(|e| format!("cannot open: {e}"))?;
    let mut magic = [0u8; 4];
    let n = file
        .read(&mut magic)
        .map_err(|e| format!("cannot read: {e}"))?;
    match &magic[..n] {
        [0x1f, 0x8b, ..] => {
            return Err("gzip-compressed; an OCI archive is a plain tar (gunzip it first)".into())
        }
        [0x28, 0xb5, 0x2f, 0xfd] => {
            return Err("zstd-compressed; an OCI archive is a plain tar (unzstd it first)".into())
        }
        _ => {}
    }
    file.seek(SeekFrom::Start(0))
        .map_err(|e| format!("cannot read: {e}"))?;
    Ok(file)
}

/// Checks the `oci-layout` file's version.
fn check_layout_marker(marker: &[u8]) -> Result<(), String> {
    #[derive(serde::Deserialize)]
    struct Marker {
        #[serde(rename = "imageLayoutVersion")]
        version: String,
    }
    let marker: Marker = serde_json::from_slice(marker).map_err(|e| format!("oci-layout: {e}"))?;
    if !marker.version.starts_with("1.") {
        return Err(format!(
            "unsupported imageLayoutVersion {:?} (expected 1.x)",
            marker.version
        ));
    }
    Ok(())
}

fn scan(path: &PathBuf) -> Result<Scan, String> {
    let file = open_plain_tar(path)?;
    let mut archive = tar::Archive::new(file);
    let mut entries = HashMap::new();
    let mut index_json = None;
    let mut oci_layout = None;
    let mut docker_manifest = false;
    let not_tar = |e: std::io::Error| format!("not a tar archive ({e})");
    for entry in archive.entries_with_seek().map_err(not_tar)? {
        let mut entry = entry.map_err(not_tar)?;
        let name = normalise(&String::from_utf8_lossy(&entry.path_bytes()));
        if !matches!(
            entry.header().entry_type(),
            tar::EntryType::Regular | tar::EntryType::Continuous
        ) {
            continue;
        }
        let size = entry.size();
        match name.as_str() {
            "index.json" | "oci-layout" => {
                if size > MAX_METADATA {
                    return Err(format!("{name} is larger than {MAX_METADATA} bytes"));
                }
                let mut data = Vec::new();
                entry
                    .read_to_end(&mut data)
                    .map_err(|e| format!("reading {name}: {e}"))?;
                if name == "index.json" {
                    index_json = Some(data);
                } else {
                    oci_layout = Some(data);
                }
            }
            "manifest.json" => docker_manifest = true,
            _ => {
                entries.insert(name, (entry.raw_file_position(), size));
            }
        }
    }
    let Some(marker) = oci_layout else {
        let hint = if docker_manifest {
            " (it has a manifest.json: a `docker save` archive? convert it with \
             `skopeo copy docker-archive:FILE oci-archive:FILE.oci`)"
        } else {
            ""
        };
        return Err(format!("no oci-layout file: not an OCI archive{hint}"));
    };
    check_layout_marker(&marker)?;
    let index_json = index_json.ok_or("no index.json: not an OCI archive")?;
    Ok(Scan {
        entries,
        index_json,
    })
}

impl Remote for OciArchive {
    fn describe(&self) -> String {
        format!("OCI archive {}", self.path.display())
    }

    fn tagged(&self, _blobs: &BlobStore) -> Result<Vec<Descriptor>, ImageError> {
        let scan = self.scan()?;
        let index: ImageIndex = serde_json::from_slice(&scan.index_json)
            .map_err(|e| self.invalid(format!("index.json: {e}")))?;
        match &self.tag {
            Some(tag) => {
                let (found, available) = select_tag(index.manifests(), tag);
                if found.is_empty() {
                    return Err(ImageError::TagNotFound {
                        location: self.describe(),
                        tag: tag.clone(),
                        available,
                    });
                }
                Ok(found)
            }
            None => match index.manifests().as_slice() {
                [one] => Ok(vec![one.clone()]),
                many => {
                    let (_, available) = select_tag(many, "");
                    Err(self.invalid(format!(
                        "holds {} images; name one with oci-archive:{}:TAG (tags: {})",
                        many.len(),
                        self.path.display(),
                        if available.is_empty() {
                            "none".to_string()
                        } else {
                            available.join(", ")
                        }
                    )))
                }
            },
        }
    }

    fn fetcher<'a>(
        &'a self,
        digest: &Digest,
        _size: u64,
        _manifest: bool,
    ) -> Result<Box<dyn Fetch + 'a>, ImageError> {
        let scan = self.scan()?;
        let name = format!("blobs/sha256/{}", digest.hex());
        let &(offset, size) = scan
            .entries
            .get(&name)
            .ok_or_else(|| self.invalid(format!("blob {digest} is missing ({name})")))?;
        Ok(Box::new(ArchiveFetch {
            path: self.path.clone(),
            name,
            offset,
            size,
        }))
    }
}

/// Reads one blob out of the archive file.
struct ArchiveFetch {
    path: PathBuf,
    name: String,
    offset: u64,
    size: u64,
}

impl Fetch for ArchiveFetch {
    fn open_at(&self, offset: u64) -> Result<Opened, FetchError> {
        let fatal =
            |e: std::io::Error| FetchError::Fatal(ImageError::io(&self.path, "reading archive", e));
        let mut f = File::open(&self.path).map_err(fatal)?;
        let offset = offset.min(self.size);
        f.seek(SeekFrom::Start(self.offset + offset))
            .map_err(fatal)?;
        Ok(Opened {
            reader: Box::new(f.take(self.size - offset)),
            start: offset,
        })
    }

    fn origin(&self) -> String {
        format!("{}:{}", self.path.display(), self.name)
    }
}
