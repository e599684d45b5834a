//! Exit codes, in one place, and the error that means "bad input".
//!
//! [`EXIT_CODES`] is the single source: `--help` (after_help), the man pages and
//! docs/exit-codes.md are rendered from it (a unit test keeps the document in step).
//!
//! | code | meaning |
//! |------|---------|
//! | 0 | success |
//! | 1 | the operation failed (systemd, the runtime, the image, the host) |
//! | 2 | bad input or usage: definitions, flags, env files; nothing was changed |

use crate::config::ConfigError;
use crate::image::ImageError;

pub const EXIT_OK: i32 = 0;
pub const EXIT_FAILED: i32 = 1;
pub const EXIT_BAD_INPUT: i32 = 2;

/// Every exit code shim uses, with what it means to the caller.
pub const EXIT_CODES: &[(i32, &str)] = &[
    (EXIT_OK, "success"),
    (
        EXIT_FAILED,
        "the operation failed (systemd, the runtime, the image, nginx, a health check, the host)",
    ),
    (
        EXIT_BAD_INPUT,
        "bad input or usage: definitions, flags, env files, an unknown service, revision or \
         image tag; nothing was changed",
    ),
];

/// The exit codes as one line each, for `--help`.
pub fn render_exit_codes_help() -> String {
    let mut s = String::from("Exit codes:\n");
    for (code, meaning) in EXIT_CODES {
        s.push_str(&format!("  {code}  {meaning}\n"));
    }
    s
}

/// The exit codes as a Markdown table, as docs/exit-codes.md holds it.
pub fn render_exit_codes_markdown() -> String {
    let mut s = String::from("| code | meaning |\n|------|---------|\n");
    for (code, meaning) in EXIT_CODES {
        s.push_str(&format!("| {code} | {meaning} |\n"));
    }
    s
}

/// An error caused by what the user gave (flags, files), not by the host: exit code 2.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct BadInput(pub String);

/// The exit code for an error chain: 2 when any cause is bad input, else 1.
pub fn exit_code(err: &anyhow::Error) -> i32 {
    let bad = err.chain().any(|e| {
        e.is::<BadInput>()
            || e.is::<ConfigError>()
            || e.downcast_ref::<ImageError>()
                .is_some_and(image_error_is_bad_input)
    });
    if bad {
        EXIT_BAD_INPUT
    } else {
        EXIT_FAILED
    }
}

/// Image errors that come from what the user asked for (a reference or tag that does not
/// exist) rather than from a broken image or host.
fn image_error_is_bad_input(e: &ImageError) -> bool {
    matches!(
        e,
        ImageError::InvalidReference { .. }
            | ImageError::TagNotFound { .. }
            | ImageError::PlatformNotFound { .. }
            | ImageError::InvalidLayout { .. }
            | ImageError::InvalidArchive { .. }
            | ImageError::ManifestNotFound { .. }
            | ImageError::RepositoryNotFound { .. }
            | ImageError::Credentials { .. }
            | ImageError::NotRecorded { .. }
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// docs/exit-codes.md carries the table rendered from [`EXIT_CODES`]; regenerate it with
    /// `shim generate exit-codes` when this fails.
    #[test]
    fn exit_codes_doc_is_in_step() {
        let doc =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/exit-codes.md"))
                .unwrap();
        assert!(
            doc.contains(&render_exit_codes_markdown()),
            "docs/exit-codes.md is out of date: run `shim generate exit-codes`"
        );
    }

    #[test]
    fn codes() {
        assert_eq!(exit_code(&BadInput("x".into()).into()), EXIT_BAD_INPUT);
        assert_eq!(
            exit_code(&anyhow::Error::from(BadInput("x".into())).context("while y")),
            EXIT_BAD_INPUT
        );
        assert_eq!(exit_code(&anyhow::anyhow!("boom")), EXIT_FAILED);
    }
}
