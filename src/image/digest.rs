//! Content digests and verified reading. A blob is only trusted after its bytes have been
//! hashed and counted against the descriptor that pointed at it: small JSON blobs are read
//! whole and checked before parsing, layers are checked while they stream through the
//! unpacker ([`VerifyingReader`]), and the caller calls [`VerifyingReader::finish`] at the end
//! so a mismatch fails the unpack before its result is published.

use std::fmt;
use std::io::{self, Read};

use sha2::{Digest as _, Sha256};

use super::ImageError;

/// A validated `sha256:<64 lowercase hex>` digest. Validation matters beyond correctness:
/// the hex part is used to build blob and rootfs paths, so it must never contain `/` or `..`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest {
    hex: String,
}

impl Digest {
    /// Parses `sha256:<hex>`; other algorithms are refused because nothing else is used in
    /// practice and every supported algorithm is one more way to get verification wrong.
    pub fn parse(s: &str) -> Option<Digest> {
        let hex = s.strip_prefix("sha256:")?;
        let valid = hex.len() == 64 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        valid.then(|| Digest {
            hex: hex.to_string(),
        })
    }

    /// Parses a digest found in image metadata, naming `what` in the error.
    pub(crate) fn parse_for(s: &str, what: &str) -> Result<Digest, ImageError> {
        Digest::parse(s).ok_or_else(|| ImageError::UnsupportedDigest {
            what: what.to_string(),
            digest: s.to_string(),
        })
    }

    /// The digest of `data`.
    pub fn of(data: &[u8]) -> Digest {
        Digest::from_hasher(Sha256::new_with_prefix(data))
    }

    pub(crate) fn from_hasher(h: Sha256) -> Digest {
        Digest {
            hex: hex::encode(h.finalize()),
        }
    }

    /// The 64 hex characters, safe to use as a file name.
    pub fn hex(&self) -> &str {
        &self.hex
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", self.hex)
    }
}

/// Reads a blob through a hasher and byte counter. Reading past the expected size is an
/// error straight away, so a blob that is larger than announced (or endless) cannot make us
/// unpack or buffer more than the descriptor promised.
pub(crate) struct VerifyingReader<R> {
    inner: R,
    hasher: Sha256,
    count: u64,
    expected: Digest,
    expected_size: u64,
    origin: String,
}

impl<R: Read> VerifyingReader<R> {
    pub(crate) fn new(inner: R, expected: Digest, expected_size: u64, origin: String) -> Self {
        VerifyingReader {
            inner,
            hasher: Sha256::new(),
            count: 0,
            expected,
            expected_size,
            origin,
        }
    }

    /// Reads whatever the consumer left unread (tar padding, trailing gzip bytes), then
    /// compares size and digest. Must be called on every path, including after an unpack
    /// error: a corrupt blob usually shows up first as a tar or gzip error, and the digest
    /// mismatch is the more useful diagnosis.
    pub(crate) fn finish(mut self) -> Result<(), ImageError> {
        let mut buf = vec![0u8; 64 * 1024];
        while self.count <= self.expected_size {
            let n = match self.inner.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    return Err(ImageError::BlobRead {
                        digest: self.expected.to_string(),
                        origin: self.origin,
                        cause: e,
                    })
                }
            };
            self.hasher.update(&buf[..n]);
            self.count += n as u64;
        }
        if self.count != self.expected_size {
            return Err(ImageError::SizeMismatch {
                digest: self.expected.to_string(),
                origin: self.origin,
                expected: self.expected_size,
                actual: if self.count > self.expected_size {
                    format!("more than {}", self.expected_size)
                } else {
                    self.count.to_string()
                },
            });
        }
        let actual = Digest::from_hasher(self.hasher);
        if actual != self.expected {
            return Err(ImageError::DigestMismatch {
                expected: self.expected.to_string(),
                actual: actual.to_string(),
                origin: self.origin,
            });
        }
        Ok(())
    }
}

impl<R: Read> Read for VerifyingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.count > self.expected_size {
            return Err(oversize_error(self.expected_size));
        }
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        if self.count > self.expected_size {
            return Err(oversize_error(self.expected_size));
        }
        Ok(n)
    }
}

fn oversize_error(size: u64) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("blob is larger than the {size} bytes its descriptor announces"),
    )
}

/// Hashes what passes through, without expectations: used on the decompressed layer
/// stream to compute the diff_id, which the image config records.
pub(crate) struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
}

impl<R: Read> HashingReader<R> {
    pub(crate) fn new(inner: R) -> Self {
        HashingReader {
            inner,
            hasher: Sha256::new(),
        }
    }

    /// The digest of what was read so far.
    pub(crate) fn digest(self) -> Digest {
        Digest::from_hasher(self.hasher)
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EMPTY: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn parse_accepts_only_lowercase_sha256() {
        assert_eq!(
            Digest::parse(EMPTY).map(|d| d.to_string()).as_deref(),
            Some(EMPTY)
        );
        assert_eq!(Digest::of(b"").to_string(), EMPTY);
        for bad in [
            "",
            "sha256:",
            "sha256:abc",
            &EMPTY.to_uppercase(),
            &EMPTY.replace("sha256", "sha512"),
            &format!("{EMPTY}0"),
            "sha256:../../../../../../../../../../../../../../../../../../../../../etc",
        ] {
            assert!(Digest::parse(bad).is_none(), "{bad:?} accepted");
        }
    }

    fn verify(
        data: &[u8],
        expected: Digest,
        size: u64,
        read_first: usize,
    ) -> Result<(), ImageError> {
        let mut r = VerifyingReader::new(data, expected, size, "test".into());
        let mut buf = vec![0; read_first];
        let _ = r.read(&mut buf);
        r.finish()
    }

    #[test]
    fn verifying_reader_checks_size_and_digest() {
        let data = b"hello world";
        let d = Digest::of(data);
        assert!(verify(data, d.clone(), 11, 0).is_ok());
        assert!(verify(data, d.clone(), 11, 5).is_ok());
        let err = verify(data, d.clone(), 10, 4).unwrap_err();
        assert!(
            matches!(&err, ImageError::SizeMismatch { actual, expected: 10, .. } if actual == "more than 10"),
            "{err}"
        );
        let err = verify(data, d.clone(), 12, 0).unwrap_err();
        assert!(
            matches!(&err, ImageError::SizeMismatch { actual, .. } if actual == "11"),
            "{err}"
        );
        let err = verify(b"hello World", d.clone(), 11, 3).unwrap_err();
        match err {
            ImageError::DigestMismatch {
                expected, actual, ..
            } => {
                assert_eq!(expected, d.to_string());
                assert_eq!(actual, Digest::of(b"hello World").to_string());
            }
            other => panic!("unexpected {other}"),
        }
    }

    #[test]
    fn verifying_reader_refuses_to_read_past_size() {
        let mut r = VerifyingReader::new(&b"0123456789"[..], Digest::of(b"0123"), 4, "t".into());
        let mut out = Vec::new();
        assert!(r.read_to_end(&mut out).is_err());
        assert!(out.len() <= 10);
    }
}
