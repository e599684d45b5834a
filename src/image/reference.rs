//! Image references as the user writes them. Parsing is pure: it checks the syntax and
//! never touches the filesystem, so a reference can be validated when a config is loaded
//! and resolved later. The `oci:` syntax follows skopeo's (`oci:PATH[:REF]`, split at the
//! first `:` after the transport) so the same string works with both tools.

use std::fmt;
use std::path::{Path, PathBuf};

use super::ImageError;

/// The tag used when a reference names none, as skopeo and docker do.
pub const DEFAULT_TAG: &str = "latest";

/// A parsed image reference. Only local OCI layouts exist today; `oci-archive:` and
/// registry references will be further variants, each resolved through its own
/// [`super::Source`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImageRef {
    /// `oci:/abs/path:tag`: an OCI image layout directory (as written by `skopeo copy
    /// ... oci:DIR:TAG` or `umoci`), and the `org.opencontainers.image.ref.name`
    /// annotation to look up in its `index.json`.
    OciLayout { path: PathBuf, tag: String },
}

impl ImageRef {
    /// Parses `oci:/abs/path/to/layout[:tag]`; the tag defaults to `latest`. The path must be
    /// absolute (a reference outlives the working directory it was written in) and cannot
    /// contain `:`, since the first `:` after the path starts the tag.
    pub fn parse(s: &str) -> Result<ImageRef, ImageError> {
        let bad = |reason: &str| ImageError::InvalidReference {
            input: s.to_string(),
            reason: reason.to_string(),
        };
        let Some(rest) = s.strip_prefix("oci:") else {
            return Err(bad(
                "unsupported transport: only local OCI layouts are supported, written as \
                 oci:/absolute/path/to/layout[:tag]",
            ));
        };
        let (path, tag) = match rest.split_once(':') {
            Some((path, tag)) => (path, tag),
            None => (rest, DEFAULT_TAG),
        };
        if path.is_empty() {
            return Err(bad("missing layout path after oci:"));
        }
        if !Path::new(path).is_absolute() {
            return Err(bad("the layout path must be absolute (start with /)"));
        }
        if let Some(reason) = tag_problem(tag) {
            return Err(bad(&reason));
        }
        Ok(ImageRef::OciLayout {
            path: PathBuf::from(path),
            tag: tag.to_string(),
        })
    }
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

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            // The tag is always written out so the displayed form names the image exactly,
            // whether or not the user relied on the default.
            ImageRef::OciLayout { path, tag } => write!(f, "oci:{}:{tag}", path.display()),
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
        ];
        for (input, want) in cases {
            assert_eq!(ImageRef::parse(input).unwrap(), want, "{input}");
        }
    }

    #[test]
    fn display_round_trips() {
        for input in ["oci:/a/b:c", "oci:/a/b", "oci:/x:docker.io/y:z"] {
            let r = ImageRef::parse(input).unwrap();
            assert_eq!(ImageRef::parse(&r.to_string()).unwrap(), r);
        }
        assert_eq!(
            ImageRef::parse("oci:/a/b").unwrap().to_string(),
            "oci:/a/b:latest"
        );
        assert_eq!(
            ImageRef::parse("oci:/a/b:v1").unwrap().to_string(),
            "oci:/a/b:v1"
        );
    }

    #[test]
    fn rejects_bad_references_showing_input_and_reason() {
        let cases = [
            ("", "unsupported transport"),
            ("/abs/path:tag", "unsupported transport"),
            ("docker://alpine:3", "unsupported transport"),
            ("OCI:/a:b", "unsupported transport"),
            ("oci:", "missing layout path"),
            ("oci::tag", "missing layout path"),
            ("oci:relative/dir:tag", "must be absolute"),
            ("oci:./dir", "must be absolute"),
            ("oci:/a:", "empty tag"),
            ("oci:/a:v 1", "invalid character ' '"),
            ("oci:/a:v\n1", "invalid character '\\n'"),
        ];
        for (input, reason) in cases {
            let err = ImageRef::parse(input).unwrap_err().to_string();
            assert!(err.contains(reason), "{input:?}: {err}");
            assert!(
                err.contains(&format!("{input:?}")),
                "{input:?}: error does not show input: {err}"
            );
        }
    }
}
