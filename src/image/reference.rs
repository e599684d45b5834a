//! Image references as the user writes them. Parsing is pure: it checks the syntax and
//! never touches the filesystem or the network, so a reference can be validated when a
//! config is loaded and resolved later.
//!
//! Three forms, following skopeo's transports so the same string works with both tools:
//! - `oci:PATH[:TAG]`: an OCI layout directory (split at the first `:` after the transport);
//! - `oci-archive:PATH[:TAG]`: the same layout in a tar file;
//! - `[docker://]HOST[:PORT]/REPO/NAME[:TAG][@sha256:HEX]`: a registry. The host is
//!   required: short names like `alpine` would depend on a search list (podman's
//!   `unqualified-search-registries`), which is a guess production deploys should not make.
//!   The name grammar is the distribution project's
//!   (<https://github.com/distribution/reference/blob/main/reference.go>).

use std::fmt;
use std::path::{Path, PathBuf};

use super::{Digest, ImageError};

/// The tag used when a reference names none, as skopeo and docker do.
pub const DEFAULT_TAG: &str = "latest";

/// Docker Hub's name in references, and the host actually serving its API.
const DOCKER_HUB: &str = "docker.io";
const DOCKER_HUB_API: &str = "registry-1.docker.io";

/// Transports skopeo knows that shim does not read, so that naming one gives a clear error
/// instead of an attempt to parse it as a registry host.
const OTHER_TRANSPORTS: &[&str] = &[
    "containers-storage",
    "dir",
    "docker-archive",
    "docker-daemon",
    "ostree",
    "sif",
    "tarball",
];

/// A parsed image reference; each kind is resolved through its own [`super::Source`].
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ImageRef {
    /// `oci:/abs/path:tag`: an OCI image layout directory (as written by `skopeo copy
    /// ... oci:DIR:TAG` or `umoci`), and the `org.opencontainers.image.ref.name`
    /// annotation to look up in its `index.json`.
    OciLayout { path: PathBuf, tag: String },
    /// `oci-archive:/abs/path.tar[:tag]`: an OCI layout in a tar file (`skopeo copy ...
    /// oci-archive:FILE:TAG`). Without a tag the archive must hold exactly one image.
    OciArchive { path: PathBuf, tag: Option<String> },
    /// An image in a registry, spoken to with the OCI distribution API.
    Registry(RegistryRef),
}

/// `host[:port]/repository` plus a tag, a digest, or both (then the digest is what is
/// pulled and the tag is informative, as with docker).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RegistryRef {
    /// As written (lowercased host), `docker.io` for Docker Hub.
    pub registry: String,
    /// Path components joined with `/`, e.g. `team/app` (`library/alpine` on Docker Hub).
    pub repository: String,
    pub tag: Option<String>,
    pub digest: Option<Digest>,
}

impl RegistryRef {
    /// What to put after `/manifests/`: the digest when there is one, else the tag.
    pub fn manifest_reference(&self) -> String {
        match (&self.digest, &self.tag) {
            (Some(d), _) => d.to_string(),
            (None, Some(t)) => t.clone(),
            (None, None) => DEFAULT_TAG.to_string(),
        }
    }

    /// The `host[:port]` serving the registry API (Docker Hub's differs from its name).
    pub fn api_host(&self) -> &str {
        if self.registry == DOCKER_HUB {
            DOCKER_HUB_API
        } else {
            &self.registry
        }
    }
}

impl ImageRef {
    /// Parses a reference (see the module documentation for the forms).
    pub fn parse(s: &str) -> Result<ImageRef, ImageError> {
        let bad = |reason: &str| ImageError::InvalidReference {
            input: s.to_string(),
            reason: reason.to_string(),
        };
        if s.trim().is_empty() {
            return Err(bad("empty image reference"));
        }
        if s.starts_with('/') || s.starts_with('.') {
            return Err(bad(
                "a path needs a transport: oci:/path/to/layout[:tag] or \
                 oci-archive:/path/to/image.tar[:tag]",
            ));
        }
        if let Some(rest) = s.strip_prefix("oci:") {
            let (path, tag) = split_path_tag(rest, "oci:", "layout").map_err(|r| bad(&r))?;
            return Ok(ImageRef::OciLayout {
                path,
                tag: tag.unwrap_or_else(|| DEFAULT_TAG.to_string()),
            });
        }
        if let Some(rest) = s.strip_prefix("oci-archive:") {
            let (path, tag) =
                split_path_tag(rest, "oci-archive:", "archive").map_err(|r| bad(&r))?;
            return Ok(ImageRef::OciArchive { path, tag });
        }
        if let Some((transport, _)) = s.split_once(':') {
            let lower = transport.to_ascii_lowercase();
            if OTHER_TRANSPORTS.contains(&lower.as_str()) {
                return Err(bad(&format!(
                    "unsupported transport {transport}: (supported: oci:, oci-archive:, \
                     docker:// or host/repository:tag)"
                )));
            }
            if lower != transport && ["oci", "oci-archive", "docker"].contains(&lower.as_str()) {
                return Err(bad(&format!("transports are lowercase: write {lower}:")));
            }
        }
        if let Some((scheme, _)) = s.split_once("://") {
            if scheme != "docker" {
                return Err(bad(&format!(
                    "unsupported transport {scheme}://: registry images are written \
                     [docker://]host[:port]/repository[:tag] (HTTPS unless the host is in \
                     [shim] insecure_registries)"
                )));
            }
        }
        let rest = s.strip_prefix("docker://").unwrap_or(s);
        parse_registry(rest)
            .map(ImageRef::Registry)
            .map_err(|r| bad(&r))
    }
}

/// Splits `PATH[:TAG]` for the local transports; the path must be absolute (a reference
/// outlives the working directory it was written in) and cannot contain `:`.
fn split_path_tag(
    rest: &str,
    transport: &str,
    what: &str,
) -> Result<(PathBuf, Option<String>), String> {
    let (path, tag) = match rest.split_once(':') {
        Some((path, tag)) => (path, Some(tag)),
        None => (rest, None),
    };
    if path.is_empty() {
        return Err(format!("missing {what} path after {transport}"));
    }
    if !Path::new(path).is_absolute() {
        return Err(format!("the {what} path must be absolute (start with /)"));
    }
    if let Some(tag) = tag {
        if let Some(reason) = tag_problem(tag) {
            return Err(reason);
        }
    }
    Ok((PathBuf::from(path), tag.map(str::to_string)))
}

/// Why `tag` cannot be a ref name, if it cannot. The OCI annotation allows far more than a
/// registry tag (tools store `docker.io/library/alpine:3.19` there), so only what could
/// never be meant is refused: nothing, whitespace, control characters.
fn tag_problem(tag: &str) -> Option<String> {
    if tag.is_empty() {
        return Some("empty tag after ':' (omit the ':' to use \"latest\")".to_string());
    }
    tag.chars()
        .find(|c| c.is_whitespace() || c.is_control())
        .map(|c| format!("tag contains the invalid character {c:?}"))
}

fn parse_registry(s: &str) -> Result<RegistryRef, String> {
    let (name_tag, digest) = match s.split_once('@') {
        Some((n, d)) => {
            let digest = Digest::parse(d)
                .ok_or_else(|| format!("digest {d:?} is not sha256:<64 lowercase hex digits>"))?;
            (n, Some(digest))
        }
        None => (s, None),
    };
    // The tag is after the last ':' that follows the last '/' (a ':' before it is a port).
    let last_slash = name_tag.rfind('/');
    let (name, tag) = match name_tag.rfind(':') {
        Some(i) if last_slash.is_none_or(|s| i > s) => {
            (&name_tag[..i], Some(name_tag[i + 1..].to_string()))
        }
        _ => (name_tag, None),
    };
    let Some((host, repository)) = name.split_once('/') else {
        return Err(format!(
            "not fully qualified: name the registry, e.g. {DOCKER_HUB}/library/{name_tag} or \
             registry.example.com/team/{name_tag} (local images: oci:/path/to/layout:tag)"
        ));
    };
    if !(host.contains('.') || host.contains(':') || host == "localhost") {
        return Err(format!(
            "{host:?} is not a registry host (no '.' or port): name the registry, e.g. \
             {DOCKER_HUB}/{name_tag} or registry.example.com/{name_tag}"
        ));
    }
    check_host(host)?;
    for component in repository.split('/') {
        check_path_component(component)?;
    }
    if repository.len() > 255 {
        return Err("repository name longer than 255 characters".to_string());
    }
    if let Some(tag) = &tag {
        check_registry_tag(tag)?;
    }
    let mut registry = host.to_ascii_lowercase();
    let mut repository = repository.to_string();
    if registry == "index.docker.io" {
        registry = DOCKER_HUB.to_string();
    }
    if registry == DOCKER_HUB && !repository.contains('/') {
        repository = format!("library/{repository}");
    }
    let tag = match (&tag, &digest) {
        (None, None) => Some(DEFAULT_TAG.to_string()),
        _ => tag,
    };
    Ok(RegistryRef {
        registry,
        repository,
        tag,
        digest,
    })
}

/// Checks a `host[:port]` as listed in `[shim] insecure_registries`.
pub fn validate_registry_host(s: &str) -> Result<(), String> {
    if s.contains("://") {
        return Err(format!("{s:?}: write host[:port] without a scheme"));
    }
    if s.contains('/') {
        return Err(format!("{s:?}: write host[:port] without a path"));
    }
    check_host(s)
}

/// `host[:port]`: DNS labels (or an IPv4 address) or a bracketed IPv6 address.
fn check_host(host: &str) -> Result<(), String> {
    let (name, port) = if let Some(rest) = host.strip_prefix('[') {
        let (v6, after) = rest
            .split_once(']')
            .ok_or_else(|| format!("registry host {host:?}: unclosed '['"))?;
        if v6.parse::<std::net::Ipv6Addr>().is_err() {
            return Err(format!("registry host {host:?}: invalid IPv6 address"));
        }
        match after {
            "" => return Ok(()),
            p => (
                "",
                Some(
                    p.strip_prefix(':')
                        .ok_or_else(|| format!("registry host {host:?}: junk after ']'"))?,
                ),
            ),
        }
    } else {
        match host.split_once(':') {
            Some((n, p)) => (n, Some(p)),
            None => (host, None),
        }
    };
    if let Some(port) = port {
        if !port.parse::<u16>().is_ok_and(|p| p > 0) || port.starts_with('+') {
            return Err(format!("registry host {host:?}: invalid port {port:?}"));
        }
    }
    if host.starts_with('[') {
        return Ok(());
    }
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    if name.is_empty() || !name.split('.').all(label_ok) {
        return Err(format!(
            "registry host {name:?} is not a valid host name (letters, digits, '-' and '.')"
        ));
    }
    Ok(())
}

/// One repository path component: `[a-z0-9]+` runs joined by `.`, `_`, `__` or `-+`.
fn check_path_component(c: &str) -> Result<(), String> {
    if c.is_empty() {
        return Err("empty repository path component (\"//\" or a trailing '/')".to_string());
    }
    if let Some(ch) = c.chars().find(|ch| ch.is_ascii_uppercase()) {
        return Err(format!(
            "repository {c:?} contains {ch:?}: repository names must be lowercase"
        ));
    }
    let bytes = c.as_bytes();
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    let bad = || {
        format!(
            "repository component {c:?} is invalid (lowercase letters and digits, separated \
             by '.', '_', '__' or dashes)"
        )
    };
    if !alnum(bytes[0]) || !alnum(bytes[bytes.len() - 1]) {
        return Err(bad());
    }
    let mut i = 0;
    while i < bytes.len() {
        if alnum(bytes[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < bytes.len() && !alnum(bytes[i]) {
            i += 1;
        }
        let sep = &c[start..i];
        let ok = sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|b| b == b'-');
        if !ok {
            return Err(bad());
        }
    }
    Ok(())
}

/// Registry tags: `[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`.
fn check_registry_tag(tag: &str) -> Result<(), String> {
    if tag.is_empty() {
        return Err("empty tag after ':' (omit the ':' to use \"latest\")".to_string());
    }
    let ok = tag.len() <= 128
        && tag
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_')
        && tag
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "tag {tag:?} is invalid (up to 128 letters, digits, '_', '.' and '-', not starting \
             with '.' or '-')"
        ))
    }
}

impl fmt::Display for RegistryRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            // The tag is always written out so the displayed form names the image exactly,
            // whether or not the user relied on the default.
            ImageRef::OciLayout { path, tag } => write!(f, "oci:{}:{tag}", path.display()),
            ImageRef::OciArchive { path, tag } => {
                write!(f, "oci-archive:{}", path.display())?;
                if let Some(t) = tag {
                    write!(f, ":{t}")?;
                }
                Ok(())
            }
            ImageRef::Registry(r) => r.fmt(f),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout(path: &str, tag: &str) -> ImageRef {
        ImageRef::OciLayout {
            path: PathBuf::from(path),
            tag: tag.to_string(),
        }
    }

    fn reg(registry: &str, repository: &str, tag: Option<&str>, digest: Option<&str>) -> ImageRef {
        ImageRef::Registry(RegistryRef {
            registry: registry.into(),
            repository: repository.into(),
            tag: tag.map(str::to_string),
            digest: digest.map(|d| Digest::parse(d).unwrap()),
        })
    }

    const D: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn parses_good_references() {
        let cases = [
            (
                "oci:/var/lib/images/app:v1.2",
                layout("/var/lib/images/app", "v1.2"),
            ),
            (
                "oci:/var/lib/images/app",
                layout("/var/lib/images/app", "latest"),
            ),
            ("oci:/img/", layout("/img/", "latest")),
            ("oci:/img:1.0_rc-2", layout("/img", "1.0_rc-2")),
            // Tools store full names as ref.name; everything after the first ':' is the tag.
            (
                "oci:/img:docker.io/library/alpine:3.19",
                layout("/img", "docker.io/library/alpine:3.19"),
            ),
            (
                "oci-archive:/srv/app.tar:v1",
                ImageRef::OciArchive {
                    path: "/srv/app.tar".into(),
                    tag: Some("v1".into()),
                },
            ),
            (
                "oci-archive:/srv/app.tar",
                ImageRef::OciArchive {
                    path: "/srv/app.tar".into(),
                    tag: None,
                },
            ),
            (
                "127.0.0.1:5000/team/app:279d9035886d",
                reg("127.0.0.1:5000", "team/app", Some("279d9035886d"), None),
            ),
            (
                "docker://127.0.0.1:5000/team/app:v1",
                reg("127.0.0.1:5000", "team/app", Some("v1"), None),
            ),
            (
                "registry.example.com/team/app",
                reg("registry.example.com", "team/app", Some("latest"), None),
            ),
            (
                "Registry.Example.com/a/b/c:V_1.0-rc",
                reg("registry.example.com", "a/b/c", Some("V_1.0-rc"), None),
            ),
            (
                &format!("localhost/app@{D}"),
                reg("localhost", "app", None, Some(D)),
            ),
            (
                &format!("localhost:5000/app:v1@{D}"),
                reg("localhost:5000", "app", Some("v1"), Some(D)),
            ),
            (
                "docker.io/alpine:3.19",
                reg("docker.io", "library/alpine", Some("3.19"), None),
            ),
            (
                "index.docker.io/grafana/grafana",
                reg("docker.io", "grafana/grafana", Some("latest"), None),
            ),
            (
                "[::1]:5000/my_app/web-server__x.y:1",
                reg("[::1]:5000", "my_app/web-server__x.y", Some("1"), None),
            ),
            (
                "host.example/a--b/c",
                reg("host.example", "a--b/c", Some("latest"), None),
            ),
        ];
        for (input, want) in cases {
            assert_eq!(ImageRef::parse(input).unwrap(), want, "{input}");
        }
    }

    #[test]
    fn display_round_trips() {
        for input in [
            "oci:/a/b:c",
            "oci:/a/b",
            "oci:/x:docker.io/y:z",
            "oci-archive:/a.tar",
            "oci-archive:/a.tar:v1",
            "h.io/a/b:c",
            "docker://h.io:5000/a",
            &format!("h.io/a:t@{D}"),
            &format!("h.io/a@{D}"),
        ] {
            let r = ImageRef::parse(input).unwrap();
            assert_eq!(ImageRef::parse(&r.to_string()).unwrap(), r, "{input}");
        }
        let shown = |s: &str| ImageRef::parse(s).unwrap().to_string();
        assert_eq!(shown("oci:/a/b"), "oci:/a/b:latest");
        assert_eq!(shown("oci:/a/b:v1"), "oci:/a/b:v1");
        assert_eq!(shown("docker://h.io/a"), "h.io/a:latest");
        assert_eq!(shown("docker.io/nginx"), "docker.io/library/nginx:latest");
        assert_eq!(shown(&format!("h.io/a@{D}")), format!("h.io/a@{D}"));
    }

    #[test]
    fn api_host_and_manifest_reference() {
        let r = |s: &str| match ImageRef::parse(s).unwrap() {
            ImageRef::Registry(r) => r,
            other => panic!("{other:?}"),
        };
        assert_eq!(r("docker.io/alpine").api_host(), "registry-1.docker.io");
        assert_eq!(r("h.io:5000/a").api_host(), "h.io:5000");
        assert_eq!(r("h.io/a").manifest_reference(), "latest");
        assert_eq!(r("h.io/a:v2").manifest_reference(), "v2");
        assert_eq!(r(&format!("h.io/a:v2@{D}")).manifest_reference(), D);
    }

    #[test]
    fn rejects_bad_references_showing_input_and_reason() {
        let cases = [
            ("", "empty image reference"),
            ("/abs/path:tag", "a path needs a transport"),
            ("./dir", "a path needs a transport"),
            ("docker://alpine:3", "not fully qualified"),
            ("alpine", "not fully qualified"),
            ("alpine:latest", "not fully qualified"),
            ("team/app:v1", "\"team\" is not a registry host"),
            ("OCI:/a:b", "transports are lowercase"),
            ("dir:/tmp/x", "unsupported transport dir:"),
            (
                "docker-archive:/x.tar",
                "unsupported transport docker-archive:",
            ),
            ("oci:", "missing layout path"),
            ("oci::tag", "missing layout path"),
            ("oci:relative/dir:tag", "must be absolute"),
            ("oci-archive:x.tar", "archive path must be absolute"),
            ("oci-archive:", "missing archive path"),
            ("oci:/a:", "empty tag"),
            ("oci:/a:v 1", "invalid character ' '"),
            ("oci:/a:v\n1", "invalid character '\\n'"),
            ("h.io/Team/app", "must be lowercase"),
            ("h.io/team//app", "empty repository path component"),
            ("h.io/team/app/", "empty repository path component"),
            ("h.io/-app", "is invalid"),
            ("h.io/a...b", "is invalid"),
            ("h.io/a:", "empty tag"),
            ("h.io/a:-x", "tag \"-x\" is invalid"),
            ("h.io/a:v/1", "component \"a:v\" is invalid"),
            ("http://h.io/a:1", "unsupported transport http://"),
            ("h.io/a@sha256:abc", "is not sha256"),
            ("h.io/a@md5:abc", "is not sha256"),
            ("h.io:0/a", "invalid port"),
            ("h.io:99999/a", "invalid port"),
            ("h.io:x/a", "invalid port"),
            ("h_o.io/a", "not a valid host name"),
            ("[zz]:5000/a", "invalid IPv6"),
        ];
        for (input, reason) in cases {
            let err = ImageRef::parse(input).unwrap_err().to_string();
            assert!(err.contains(reason), "{input:?}: {err}");
            assert!(
                err.contains(&format!("{input:?}")),
                "{input:?}: error does not show input: {err}"
            );
        }
        let long_tag = format!("h.io/a:{}", "x".repeat(129));
        assert!(ImageRef::parse(&long_tag).is_err());
    }

    #[test]
    fn revision_placeholder_probe_parses() {
        // Config validation parses the template with {revision} replaced by a dummy.
        for t in [
            "127.0.0.1:5000/team/app:{revision}",
            "oci-archive:/srv/app-{revision}.tar",
            "oci:/srv/app:{revision}",
        ] {
            let probe = t.replace("{revision}", "0000000");
            ImageRef::parse(&probe).unwrap();
        }
    }
}
