//! Resolution: from the descriptors a [`Source`] tags, through image indexes (choosing the
//! host platform), to a manifest and its config. Every JSON blob is size-limited, read whole
//! and verified against its descriptor before it is parsed, so nothing unverified is ever
//! interpreted. Media-type and platform decisions are pure functions, tested on their own.

use std::fmt;
use std::io::Read;

use oci_spec::image::{Descriptor, ImageConfiguration, ImageIndex, ImageManifest};

use super::digest::VerifyingReader;
use super::{Compression, Digest, ImageConfig, ImageError, ImageRef, Layer, ResolvedImage, Source};

/// Manifests, indexes and configs are small; a descriptor announcing more is refused before
/// anything is read (configs with long histories are the largest, well under this).
const MAX_JSON_BLOB: u64 = 16 << 20;

/// Indexes may nest (an index tagging a multi-platform index); real images use one level,
/// the bound only stops a malicious cycle.
const MAX_INDEX_DEPTH: usize = 4;

const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";

/// What a descriptor points at, by media type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Index,
    Manifest,
}

pub(crate) fn kind_of(media_type: &str) -> Option<Kind> {
    match media_type {
        OCI_INDEX | DOCKER_LIST => Some(Kind::Index),
        OCI_MANIFEST | DOCKER_MANIFEST => Some(Kind::Manifest),
        _ => None,
    }
}

/// Compression of a layer media type, or why it cannot be unpacked (as the error hint).
pub(crate) fn layer_compression(media_type: &str) -> Result<Compression, &'static str> {
    match media_type {
        "application/vnd.oci.image.layer.v1.tar" => Ok(Compression::None),
        "application/vnd.oci.image.layer.v1.tar+gzip"
        | "application/vnd.docker.image.rootfs.diff.tar.gzip" => Ok(Compression::Gzip),
        "application/vnd.oci.image.layer.v1.tar+zstd"
        | "application/vnd.docker.image.rootfs.diff.tar.zstd" => Ok(Compression::Zstd),
        // Their content is meant to come from elsewhere than the image's registry (the
        // descriptor's `urls`, in practice Microsoft's servers for Windows base layers); the
        // OCI spec deprecated them in 1.1.
        t if t.contains("nondistributable") || t.contains("foreign") => Err(
            "; it is a non-distributable (foreign) layer, whose content the registry does not hold: shim only runs layers it can fetch from the image's own registry or archive and verify; rebuild the image on a distributable base",
        ),
        _ => Err("; supported layer types are uncompressed, gzip- and zstd-compressed tar"),
    }
}

/// An `os/arch[/variant]` platform, compared by the strings OCI uses (GOOS/GOARCH).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Platform {
    pub os: String,
    pub architecture: String,
    pub variant: Option<String>,
}

impl Platform {
    /// The platform this binary runs on, in GOARCH spelling.
    pub(crate) fn host() -> Platform {
        let architecture = match std::env::consts::ARCH {
            "x86_64" => "amd64",
            "x86" => "386",
            "aarch64" => "arm64",
            "powerpc64" if cfg!(target_endian = "little") => "ppc64le",
            "loongarch64" => "loong64",
            other => other,
        };
        Platform {
            os: std::env::consts::OS.to_string(),
            architecture: architecture.to_string(),
            variant: None,
        }
    }

    fn of(d: &Descriptor) -> Option<Platform> {
        d.platform().as_ref().map(|p| Platform {
            os: p.os().to_string(),
            architecture: p.architecture().to_string(),
            variant: p.variant().clone(),
        })
    }

    /// How well `self` (a candidate) suits `want`: `None` if it cannot run, higher is better.
    /// An unspecified variant on either side matches any (arm64 images say `v8`, or nothing).
    fn score(&self, want: &Platform) -> Option<u8> {
        if self.os != want.os || self.architecture != want.architecture {
            return None;
        }
        match (&self.variant, &want.variant) {
            (Some(a), Some(b)) if a == b => Some(2),
            (Some(_), Some(_)) => None,
            _ => Some(1),
        }
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

/// Picks the candidate for `want`. A lone candidate without a platform is taken as is (a
/// plain tagged manifest); otherwise the best platform match wins, the first on ties (index
/// order is the publisher's preference); failing that, a single platform-less candidate.
/// On failure returns the descriptions of what was available.
pub(crate) fn select_platform<'a>(
    candidates: &'a [Descriptor],
    want: &Platform,
) -> Result<&'a Descriptor, Vec<String>> {
    if let [only] = candidates {
        if only.platform().is_none() {
            return Ok(only);
        }
    }
    let mut best: Option<(u8, &Descriptor)> = None;
    for d in candidates {
        if let Some(s) = Platform::of(d).and_then(|p| p.score(want)) {
            if best.is_none_or(|(b, _)| s > b) {
                best = Some((s, d));
            }
        }
    }
    if let Some((_, d)) = best {
        return Ok(d);
    }
    let unplatformed: Vec<&Descriptor> = candidates
        .iter()
        .filter(|d| d.platform().is_none())
        .collect();
    if let [only] = unplatformed[..] {
        return Ok(only);
    }
    Err(candidates
        .iter()
        .map(|d| match Platform::of(d) {
            Some(p) => p.to_string(),
            None => format!("{} (no platform)", d.digest()),
        })
        .collect())
}

/// Reads a JSON blob whole, verifying size and digest before returning it.
fn read_json_blob(
    source: &dyn Source,
    desc: &Descriptor,
    what: &'static str,
) -> Result<(Digest, Vec<u8>), ImageError> {
    let digest = Digest::parse_for(desc.digest().as_ref(), what)?;
    let size = desc.size();
    if size > MAX_JSON_BLOB {
        return Err(ImageError::InvalidImage {
            what,
            origin: digest.to_string(),
            reason: format!(
                "descriptor size {size} exceeds the {MAX_JSON_BLOB}-byte limit for JSON blobs"
            ),
        });
    }
    let blob = if what == "config" {
        source.open_blob(&digest, size)?
    } else {
        source.open_manifest(&digest, size)?
    };
    let origin = blob.origin.clone();
    let mut reader = VerifyingReader::new(blob.reader, digest.clone(), size, origin.clone());
    // usize::try_from cannot fail on the 64-bit hosts we run on, and size is bounded above.
    let mut data = Vec::with_capacity(usize::try_from(size).unwrap_or(0));
    let read = reader.read_to_end(&mut data);
    // finish() first: an oversize or corrupt blob is better reported as such than as the
    // read error the size guard produced.
    reader.finish()?;
    read.map_err(|e| ImageError::BlobRead {
        digest: digest.to_string(),
        origin,
        cause: e,
    })?;
    Ok((digest, data))
}

fn parse_json<T: serde::de::DeserializeOwned>(
    data: &[u8],
    what: &'static str,
    digest: &Digest,
) -> Result<T, ImageError> {
    serde_json::from_slice(data).map_err(|e| ImageError::InvalidImage {
        what,
        origin: digest.to_string(),
        reason: format!("bad JSON: {e}"),
    })
}

/// What resolution read besides the result: the descriptor the tag pointed at and every
/// JSON blob on the way (indexes, manifest, config), for the record of the pull.
#[derive(Debug, Clone)]
pub(crate) struct Chain {
    pub top: Descriptor,
    pub json_blobs: Vec<(Digest, u64)>,
}

/// Resolves `reference` through `source` for the platform `want`; also returns the
/// [`Chain`] of what was read.
pub(crate) fn resolve_chain(
    source: &dyn Source,
    reference: &ImageRef,
    want: &Platform,
) -> Result<(ResolvedImage, Chain), ImageError> {
    let tagged = source.tagged_descriptors()?;
    let top = select_platform(&tagged, want)
        .map_err(|available| platform_not_found(reference, want, available))?
        .clone();
    let mut json_blobs = Vec::new();
    let (manifest_digest, manifest_json) =
        find_manifest(source, reference, want, top.clone(), &mut json_blobs)?;
    let manifest: ImageManifest = parse_json(&manifest_json, "manifest", &manifest_digest)?;
    let image_config = read_config(source, &manifest, &manifest_digest, &mut json_blobs)?;
    let layers = manifest_layers(&manifest, &image_config)?;

    Ok((
        ResolvedImage {
            reference: reference.clone(),
            manifest_digest: manifest_digest.to_string(),
            config: image_config_of(&image_config),
            layers,
        },
        Chain { top, json_blobs },
    ))
}

fn platform_not_found(reference: &ImageRef, want: &Platform, available: Vec<String>) -> ImageError {
    ImageError::PlatformNotFound {
        image: reference.to_string(),
        wanted: want.to_string(),
        available,
    }
}

/// Follows indexes from `desc` (the tagged descriptor) down to the image manifest for `want`;
/// returns its digest and JSON. Every JSON blob read is added to `json_blobs`.
fn find_manifest(
    source: &dyn Source,
    reference: &ImageRef,
    want: &Platform,
    mut desc: Descriptor,
    json_blobs: &mut Vec<(Digest, u64)>,
) -> Result<(Digest, Vec<u8>), ImageError> {
    let mut depth = 0;
    loop {
        let media_type = desc.media_type().to_string();
        match kind_of(&media_type) {
            Some(Kind::Manifest) => {
                let (digest, data) = read_json_blob(source, &desc, "manifest")?;
                json_blobs.push((digest.clone(), desc.size()));
                return Ok((digest, data));
            }
            Some(Kind::Index) if depth < MAX_INDEX_DEPTH => {
                depth += 1;
                let (digest, data) = read_json_blob(source, &desc, "image index")?;
                json_blobs.push((digest.clone(), desc.size()));
                let index: ImageIndex = parse_json(&data, "image index", &digest)?;
                desc = select_platform(index.manifests(), want)
                    .map_err(|available| platform_not_found(reference, want, available))?
                    .clone();
            }
            Some(Kind::Index) => {
                return Err(ImageError::InvalidImage {
                    what: "image index",
                    origin: desc.digest().to_string(),
                    reason: format!("indexes nested more than {MAX_INDEX_DEPTH} deep"),
                })
            }
            None => {
                return Err(ImageError::UnsupportedMediaType {
                    what: "tagged object",
                    digest: desc.digest().to_string(),
                    hint: if media_type.contains("manifest.v1") {
                        "; Docker schema 1 manifests are obsolete: push the image again with \
                         a current tool"
                            .to_string()
                    } else {
                        "; expected an image manifest or index".to_string()
                    },
                    media_type,
                })
            }
        }
    }
}

/// Reads and checks the image config `manifest` names (added to `json_blobs`).
fn read_config(
    source: &dyn Source,
    manifest: &ImageManifest,
    manifest_digest: &Digest,
    json_blobs: &mut Vec<(Digest, u64)>,
) -> Result<ImageConfiguration, ImageError> {
    let config_desc = manifest.config();
    let config_type = config_desc.media_type().to_string();
    if config_type != OCI_CONFIG && config_type != DOCKER_CONFIG {
        return Err(ImageError::UnsupportedMediaType {
            what: "config",
            digest: config_desc.digest().to_string(),
            media_type: config_type,
            hint: format!("; manifest {manifest_digest} is not a container image (an artifact?)"),
        });
    }
    let (config_digest, config_json) = read_json_blob(source, config_desc, "config")?;
    json_blobs.push((config_digest.clone(), config_desc.size()));
    let image_config: ImageConfiguration = parse_json(&config_json, "config", &config_digest)?;
    let invalid_config = |reason: String| ImageError::InvalidImage {
        what: "config",
        origin: config_digest.to_string(),
        reason,
    };
    let rootfs = image_config.rootfs();
    if rootfs.typ() != "layers" {
        return Err(invalid_config(format!(
            "rootfs.type is {:?}, expected \"layers\"",
            rootfs.typ()
        )));
    }
    if rootfs.diff_ids().len() != manifest.layers().len() {
        return Err(invalid_config(format!(
            "{} diff_ids for the {} layers of manifest {manifest_digest}",
            rootfs.diff_ids().len(),
            manifest.layers().len()
        )));
    }
    Ok(image_config)
}

/// The manifest's layers, each with its diff_id from the config (as many as layers).
fn manifest_layers(
    manifest: &ImageManifest,
    image_config: &ImageConfiguration,
) -> Result<Vec<Layer>, ImageError> {
    manifest
        .layers()
        .iter()
        .zip(image_config.rootfs().diff_ids())
        .map(|(l, diff_id)| {
            let digest = Digest::parse_for(l.digest().as_ref(), "layer")?;
            let media_type = l.media_type().to_string();
            let compression = layer_compression(&media_type).map_err(|hint| {
                ImageError::UnsupportedMediaType {
                    what: "layer",
                    digest: digest.to_string(),
                    media_type: media_type.clone(),
                    hint: hint.to_string(),
                }
            })?;
            Ok(Layer {
                diff_id: Digest::parse_for(diff_id, "config diff_id")?,
                digest,
                size: l.size(),
                media_type,
                compression,
            })
        })
        .collect()
}

/// The run-time part of the config; absent fields become empty, and empty strings are
/// treated as absent since Docker writes `"WorkingDir": ""` for "not set".
pub(crate) fn image_config_of(c: &ImageConfiguration) -> ImageConfig {
    let Some(c) = c.config() else {
        return ImageConfig::default();
    };
    let non_empty = |s: &Option<String>| s.clone().filter(|s| !s.is_empty());
    ImageConfig {
        entrypoint: c.entrypoint().clone().unwrap_or_default(),
        cmd: c.cmd().clone().unwrap_or_default(),
        env: c.env().clone().unwrap_or_default(),
        working_dir: non_empty(c.working_dir()),
        user: non_empty(c.user()),
        stop_signal: non_empty(c.stop_signal()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use oci_spec::image::{MediaType, PlatformBuilder};

    fn desc(n: u8, platform: Option<(&str, &str, Option<&str>)>) -> Descriptor {
        let digest: oci_spec::image::Digest = format!("sha256:{n:064x}").parse().unwrap();
        let mut d = Descriptor::new(MediaType::ImageManifest, 1, digest);
        if let Some((os, arch, variant)) = platform {
            let mut b = PlatformBuilder::default().os(os).architecture(arch);
            if let Some(v) = variant {
                b = b.variant(v);
            }
            d.set_platform(Some(b.build().unwrap()));
        }
        d
    }

    fn want(arch: &str, variant: Option<&str>) -> Platform {
        Platform {
            os: "linux".into(),
            architecture: arch.into(),
            variant: variant.map(str::to_string),
        }
    }

    #[test]
    fn host_platform_is_linux_goarch() {
        let h = Platform::host();
        assert_eq!(h.os, "linux");
        #[cfg(target_arch = "x86_64")]
        assert_eq!(h.to_string(), "linux/amd64");
    }

    #[test]
    fn platform_selection() {
        let amd = desc(1, Some(("linux", "amd64", None)));
        let arm = desc(2, Some(("linux", "arm64", Some("v8"))));
        let attest = desc(3, Some(("unknown", "unknown", None)));
        let bare = desc(4, None);
        let index = [arm.clone(), attest.clone(), amd.clone()];

        assert_eq!(select_platform(&index, &want("amd64", None)), Ok(&amd));
        assert_eq!(select_platform(&index, &want("arm64", None)), Ok(&arm));
        assert_eq!(
            select_platform(&index, &want("arm64", Some("v8"))),
            Ok(&arm)
        );
        assert!(select_platform(&index, &want("arm64", Some("v9"))).is_err());
        let err = select_platform(&index, &want("s390x", None)).unwrap_err();
        assert_eq!(
            err,
            vec!["linux/arm64/v8", "unknown/unknown", "linux/amd64"]
        );

        // A lone tagged manifest without platform is taken whatever the host.
        assert_eq!(
            select_platform(std::slice::from_ref(&bare), &want("s390x", None)),
            Ok(&bare)
        );
        // A lone manifest for another platform is not.
        assert!(select_platform(std::slice::from_ref(&arm), &want("amd64", None)).is_err());
        // Exact variant beats unspecified; first wins on ties.
        let arm_plain = desc(5, Some(("linux", "arm64", None)));
        let two = [arm_plain.clone(), arm.clone()];
        assert_eq!(select_platform(&two, &want("arm64", Some("v8"))), Ok(&arm));
        assert_eq!(select_platform(&two, &want("arm64", None)), Ok(&arm_plain));
        // Several platform-less candidates are ambiguous.
        let err =
            select_platform(&[bare.clone(), desc(6, None)], &want("amd64", None)).unwrap_err();
        assert_eq!(err.len(), 2);
        assert!(err[0].ends_with("(no platform)"), "{err:?}");
        // One platform-less next to non-matching ones is the fallback.
        assert_eq!(
            select_platform(&[arm.clone(), bare.clone()], &want("amd64", None)),
            Ok(&bare)
        );
    }

    #[test]
    fn media_types() {
        assert_eq!(kind_of(OCI_INDEX), Some(Kind::Index));
        assert_eq!(kind_of(DOCKER_LIST), Some(Kind::Index));
        assert_eq!(kind_of(OCI_MANIFEST), Some(Kind::Manifest));
        assert_eq!(kind_of(DOCKER_MANIFEST), Some(Kind::Manifest));
        assert_eq!(kind_of("application/vnd.oci.image.layer.v1.tar"), None);

        assert_eq!(
            layer_compression("application/vnd.oci.image.layer.v1.tar"),
            Ok(Compression::None)
        );
        assert_eq!(
            layer_compression("application/vnd.oci.image.layer.v1.tar+gzip"),
            Ok(Compression::Gzip)
        );
        assert_eq!(
            layer_compression("application/vnd.docker.image.rootfs.diff.tar.gzip"),
            Ok(Compression::Gzip)
        );
        assert_eq!(
            layer_compression("application/vnd.oci.image.layer.v1.tar+zstd"),
            Ok(Compression::Zstd)
        );
        assert!(layer_compression("text/plain").is_err());
        for foreign in [
            "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
            "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
            "application/vnd.oci.image.layer.nondistributable.v1.tar",
        ] {
            let hint = layer_compression(foreign).unwrap_err();
            assert!(
                hint.contains("non-distributable (foreign)"),
                "{foreign}: {hint}"
            );
        }
    }

    #[test]
    fn image_config_extraction() {
        let json = r#"{
            "architecture": "amd64", "os": "linux",
            "config": {"Entrypoint": ["/bin/app"], "Cmd": ["--serve"], "Env": ["A=1", "PATH=/bin"],
                       "WorkingDir": "", "User": "1000:1000", "StopSignal": "SIGINT"},
            "rootfs": {"type": "layers", "diff_ids": []}
        }"#;
        let c: ImageConfiguration = serde_json::from_str(json).unwrap();
        assert_eq!(
            image_config_of(&c),
            ImageConfig {
                entrypoint: vec!["/bin/app".into()],
                cmd: vec!["--serve".into()],
                env: vec!["A=1".into(), "PATH=/bin".into()],
                working_dir: None,
                user: Some("1000:1000".into()),
                stop_signal: Some("SIGINT".into()),
            }
        );
        let bare: ImageConfiguration = serde_json::from_str(
            r#"{"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": []}}"#,
        )
        .unwrap();
        assert_eq!(image_config_of(&bare), ImageConfig::default());
    }
}
