//! Exit codes, in one place, and the error that means "bad input".
//!
//! | code | meaning |
//! |------|---------|
//! | 0 | success |
//! | 1 | the operation failed (systemd, the runtime, the image, the host) |
//! | 2 | bad input or usage: definitions, flags, env files; nothing was changed |

use crate::config::ConfigError;
use crate::image::ImageError;

pub const EXIT_FAILED: i32 = 1;
pub const EXIT_BAD_INPUT: i32 = 2;

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
