//! A registry client for the OCI distribution API
//! (<https://github.com/opencontainers/distribution-spec/blob/main/spec.md>), over ureq:
//! `GET /v2/<name>/manifests/<reference>` with an `Accept` list covering OCI and Docker
//! schema 2 manifests and indexes, `GET /v2/<name>/blobs/<digest>` (with `Range` to resume),
//! and `GET /v2/<name>/tags/list` to say which tags exist when one is missing.
//!
//! Authentication is answered when asked for: a 401 carries a `WWW-Authenticate` challenge;
//! `Bearer` sends us to the token endpoint it names (with basic credentials if auth.json has
//! some, anonymously otherwise), `Basic` takes the credentials directly. The resulting
//! header is reused for the following requests and renegotiated on the next 401 (tokens
//! expire during long pulls).
//!
//! HTTPS by default, verified against the host's trust store; plain HTTP only for the
//! registries listed in `[shim] insecure_registries`. Connects and reads time out (a
//! registry that is down fails within seconds), and redirects (to blob storage) are
//! followed without the `Authorization` header.

use std::collections::BTreeMap;
use std::io::Read;
use std::sync::Mutex;
use std::time::Duration;

use oci_spec::image::{Descriptor, MediaType};
use ureq::http::{Response, StatusCode};
use ureq::Body;

use super::auth::{self, Challenge, Credentials};
use super::blobs::{Fetch, FetchError, Opened};
use super::reference::RegistryRef;
use super::{Digest, ImageError, RegistrySettings};

/// What we accept for a manifest, most specific first.
const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.index.v1+json, \
application/vnd.oci.image.manifest.v1+json, \
application/vnd.docker.distribution.manifest.list.v2+json, \
application/vnd.docker.distribution.manifest.v2+json";

/// Manifests are small; a larger answer is refused rather than buffered.
const MAX_MANIFEST: u64 = 16 << 20;
/// Error bodies are only read for their message.
const MAX_ERROR_BODY: u64 = 64 << 10;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(30);
/// A read that brings nothing for this long is a stalled connection; the download resumes
/// on a new one.
const READ_TIMEOUT: Duration = Duration::from_secs(30);

pub(crate) struct Client {
    agent: ureq::Agent,
    /// `https://host[:port]` (or `http://` for insecure registries).
    base: String,
    reference: RegistryRef,
    insecure: bool,
    credentials: Option<Credentials>,
}

/// The `Authorization` value that worked last, per `base/repository`, for the whole process:
/// resolution, parallel layer downloads and later clients of the same repository reuse one
/// token instead of each answering the challenge again.
static AUTHORIZATION: Mutex<BTreeMap<String, String>> = Mutex::new(BTreeMap::new());
/// Held while answering a challenge, so that parallel downloads hitting the same 401 ask
/// the token service once.
static NEGOTIATION: Mutex<()> = Mutex::new(());

/// What listing a repository's tags told.
enum Tags {
    Listed(Vec<String>),
    NoRepository,
    /// Not allowed, not supported, or not parseable: the error stays about the manifest.
    Unknown,
}

/// Whether `registry` (`host[:port]`) is listed as plain HTTP.
fn is_insecure(settings: &RegistrySettings, registry: &str) -> bool {
    settings
        .insecure_registries
        .iter()
        .any(|r| r.eq_ignore_ascii_case(registry))
}

fn agent() -> ureq::Agent {
    let tls = ureq::tls::TlsConfig::builder()
        .root_certs(ureq::tls::RootCerts::PlatformVerifier)
        .build();
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_resolve(Some(CONNECT_TIMEOUT))
        .timeout_connect(Some(CONNECT_TIMEOUT))
        .timeout_recv_response(Some(RESPONSE_TIMEOUT))
        .timeout_per_read(Some(READ_TIMEOUT))
        .max_redirects(10)
        .user_agent(concat!("shim/", env!("CARGO_PKG_VERSION")))
        .tls_config(tls)
        .build()
        .into()
}

/// The media type of a response: `Content-Type` without parameters.
fn content_type(resp: &Response<Body>) -> Option<String> {
    resp.headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .map(|v| v.split(';').next().unwrap_or("").trim().to_string())
        .filter(|v| !v.is_empty())
}

/// `{"errors": [{"code": "MANIFEST_UNKNOWN", "message": "..."}]}`, the distribution
/// spec's error body; the codes and messages found.
pub(crate) fn parse_error_body(body: &[u8]) -> Vec<(String, String)> {
    #[derive(serde::Deserialize)]
    struct Errors {
        #[serde(default)]
        errors: Vec<ErrorEntry>,
    }
    #[derive(serde::Deserialize)]
    struct ErrorEntry {
        #[serde(default)]
        code: String,
        #[serde(default)]
        message: String,
    }
    serde_json::from_slice::<Errors>(body)
        .map(|e| e.errors.into_iter().map(|e| (e.code, e.message)).collect())
        .unwrap_or_default()
}

/// The media type a manifest declares in its body, for servers that send a generic
/// `Content-Type`.
fn declared_media_type(body: &[u8]) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Typed {
        #[serde(rename = "mediaType")]
        media_type: Option<String>,
        manifests: Option<serde_json::Value>,
        #[serde(rename = "schemaVersion")]
        schema_version: Option<u32>,
    }
    let t: Typed = serde_json::from_slice(body).ok()?;
    match (t.media_type, t.manifests, t.schema_version) {
        (Some(m), _, _) => Some(m),
        // OCI allows leaving mediaType out; the shape tells.
        (None, Some(_), Some(2)) => Some("application/vnd.oci.image.index.v1+json".into()),
        (None, None, Some(2)) => Some("application/vnd.oci.image.manifest.v1+json".into()),
        (None, _, Some(1)) => Some("application/vnd.docker.distribution.manifest.v1+json".into()),
        _ => None,
    }
}

impl Client {
    /// A client for `reference`'s repository. Reads credentials now, so that an unsafe
    /// auth file is reported before anything is downloaded.
    pub(crate) fn new(
        reference: &RegistryRef,
        settings: &RegistrySettings,
    ) -> Result<Client, ImageError> {
        let insecure = is_insecure(settings, &reference.registry);
        let scheme = if insecure { "http" } else { "https" };
        let credentials = auth::load_credentials(
            &settings.auth_file,
            &reference.registry,
            &reference.repository,
        )?;
        Ok(Client {
            agent: agent(),
            base: format!("{scheme}://{}", reference.api_host()),
            reference: reference.clone(),
            insecure,
            credentials,
        })
    }

    fn url(&self, tail: &str) -> String {
        format!("{}/v2/{}/{tail}", self.base, self.reference.repository)
    }

    /// Maps a transport failure (no answer at all) to an error naming the registry.
    fn unreachable(&self, url: &str, e: ureq::Error) -> ImageError {
        // Nothing answering at all is not a protocol problem; anything else on HTTPS may be
        // a plain-HTTP registry.
        let no_answer = match &e {
            ureq::Error::HostNotFound | ureq::Error::ConnectionFailed | ureq::Error::Timeout(_) => {
                true
            }
            ureq::Error::Io(io) => matches!(
                io.kind(),
                std::io::ErrorKind::ConnectionRefused | std::io::ErrorKind::TimedOut
            ),
            _ => false,
        };
        let hint = if self.insecure || no_answer {
            String::new()
        } else {
            format!(
                "; if {} serves plain HTTP, list it in [shim] insecure_registries",
                self.reference.registry
            )
        };
        ImageError::Unreachable {
            registry: self.reference.registry.clone(),
            url: url.to_string(),
            cause: e.to_string(),
            hint,
        }
    }

    fn auth_key(&self) -> String {
        format!("{}/{}", self.base, self.reference.repository)
    }

    fn authorization(&self) -> Option<String> {
        AUTHORIZATION
            .lock()
            .ok()
            .and_then(|m| m.get(&self.auth_key()).cloned())
    }

    /// One GET, answering an authentication challenge once if the registry asks.
    fn get(
        &self,
        url: &str,
        accept: Option<&str>,
        range_from: Option<u64>,
    ) -> Result<Response<Body>, ImageError> {
        let mut answered = false;
        // Bounded: another thread's answer may be tried once before ours.
        for _ in 0..3 {
            let mut req = self.agent.get(url);
            if let Some(a) = accept {
                req = req.header("Accept", a);
            }
            if let Some(from) = range_from {
                req = req.header("Range", format!("bytes={from}-"));
            }
            let sent = self.authorization();
            if let Some(a) = &sent {
                req = req.header("Authorization", a);
            }
            let resp = req.call().map_err(|e| self.unreachable(url, e))?;
            if resp.status() != StatusCode::UNAUTHORIZED || answered {
                return Ok(resp);
            }
            let _negotiating = NEGOTIATION.lock();
            if self.authorization() != sent {
                // Someone answered while we waited: try theirs.
                continue;
            }
            let challenges: Vec<Challenge> = resp
                .headers()
                .get_all("www-authenticate")
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(auth::parse_www_authenticate)
                .collect();
            let header = self.answer(url, &challenges)?;
            if let Ok(mut m) = AUTHORIZATION.lock() {
                m.insert(self.auth_key(), header);
            }
            answered = true;
        }
        Err(self.unauthorized(format!("{url}: still 401 after answering the challenge")))
    }

    fn unauthorized(&self, reason: String) -> ImageError {
        ImageError::Unauthorized {
            registry: self.reference.registry.clone(),
            repository: self.reference.repository.clone(),
            reason,
        }
    }

    /// The `Authorization` header answering `challenges` (Bearer preferred).
    fn answer(&self, url: &str, challenges: &[Challenge]) -> Result<String, ImageError> {
        if let Some(c) = challenges.iter().find(|c| c.scheme == "bearer") {
            return self.fetch_token(c);
        }
        if challenges.iter().any(|c| c.scheme == "basic") {
            return match &self.credentials {
                Some(c) => Ok(c.basic_header()),
                None => Err(self.unauthorized(
                    "the registry requires a login and the auth file has no credentials for it"
                        .into(),
                )),
            };
        }
        Err(self.unauthorized(format!(
            "401 for {url} without a usable WWW-Authenticate challenge (schemes: {})",
            if challenges.is_empty() {
                "none".to_string()
            } else {
                challenges
                    .iter()
                    .map(|c| c.scheme.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            }
        )))
    }

    /// Runs the token flow of a Bearer challenge and returns `Bearer <token>`.
    fn fetch_token(&self, c: &Challenge) -> Result<String, ImageError> {
        let Some(realm) = c.params.get("realm") else {
            return Err(self.unauthorized("Bearer challenge without a realm".into()));
        };
        let secure_realm = realm.starts_with("https://");
        if !secure_realm && !realm.starts_with("http://") {
            return Err(self.unauthorized(format!("token realm {realm:?} is not an http(s) URL")));
        }
        let mut req = self.agent.get(realm);
        if let Some(s) = c.params.get("service") {
            req = req.query("service", s);
        }
        let scope = c
            .params
            .get("scope")
            .cloned()
            .unwrap_or_else(|| format!("repository:{}:pull", self.reference.repository));
        req = req.query("scope", &scope);
        if let Some(creds) = &self.credentials {
            // Passwords only travel encrypted, unless the registry itself is declared
            // insecure (then its token service is, too).
            if !secure_realm && !self.insecure {
                return Err(self.unauthorized(format!(
                    "refusing to send credentials to the plain-HTTP token service {realm}"
                )));
            }
            req = req.header("Authorization", creds.basic_header());
        }
        let resp = req.call().map_err(|e| self.unreachable(realm, e))?;
        let status = resp.status();
        let body = read_limited(resp, MAX_ERROR_BODY).unwrap_or_default();
        if !status.is_success() {
            let who = match &self.credentials {
                Some(c) => format!("as {:?}", c.username),
                None => "anonymously (no credentials in the auth file)".to_string(),
            };
            return Err(self.unauthorized(format!(
                "token service {realm} refused {scope} {who}: {} {}",
                status.as_u16(),
                summarize(&body)
            )));
        }
        let token = auth::parse_token_response(&body)
            .map_err(|e| self.unauthorized(format!("token service {realm}: {e}")))?;
        Ok(format!("Bearer {token}"))
    }

    /// The error for a non-success answer to a manifest or blob request.
    fn status_error(&self, url: &str, resp: Response<Body>, what: &str) -> ImageError {
        let status = resp.status().as_u16();
        let body = read_limited(resp, MAX_ERROR_BODY).unwrap_or_default();
        let codes = parse_error_body(&body);
        let has = |c: &str| codes.iter().any(|(code, _)| code == c);
        match status {
            401 | 403 => self.unauthorized(format!(
                "{status} for {url}{}: {}",
                match &self.credentials {
                    Some(c) => format!(" (as {:?})", c.username),
                    None => " (anonymous: no credentials in the auth file)".to_string(),
                },
                summarize(&body)
            )),
            404 if has("NAME_UNKNOWN") => ImageError::RepositoryNotFound {
                registry: self.reference.registry.clone(),
                repository: self.reference.repository.clone(),
            },
            // Registries answer MANIFEST_UNKNOWN for a missing repository too; listing
            // its tags tells the two apart (and names the tags that do exist).
            404 if what == "manifest" => match self.list_tags() {
                Tags::NoRepository => ImageError::RepositoryNotFound {
                    registry: self.reference.registry.clone(),
                    repository: self.reference.repository.clone(),
                },
                listing => ImageError::ManifestNotFound {
                    registry: self.reference.registry.clone(),
                    repository: self.reference.repository.clone(),
                    reference: self.reference.manifest_reference(),
                    available: match listing {
                        Tags::Listed(t) => Some(t),
                        _ => None,
                    },
                },
            },
            _ => ImageError::RegistryStatus {
                url: url.to_string(),
                status,
                message: summarize(&body),
            },
        }
    }

    /// The repository's tags, for the "tag not found" message.
    fn list_tags(&self) -> Tags {
        #[derive(serde::Deserialize)]
        struct TagList {
            tags: Option<Vec<String>>,
        }
        let url = self.url("tags/list?n=1000");
        let Ok(resp) = self.get(&url, None, None) else {
            return Tags::Unknown;
        };
        let status = resp.status().as_u16();
        let Ok(body) = read_limited(resp, MAX_MANIFEST) else {
            return Tags::Unknown;
        };
        if status == 404
            && parse_error_body(&body)
                .iter()
                .any(|(c, _)| c == "NAME_UNKNOWN")
        {
            return Tags::NoRepository;
        }
        if status != 200 {
            return Tags::Unknown;
        }
        match serde_json::from_slice::<TagList>(&body) {
            Ok(TagList { tags: Some(mut t) }) => {
                t.sort();
                Tags::Listed(t)
            }
            _ => Tags::Unknown,
        }
    }

    /// Fetches the manifest (or index) `reference` (a tag or digest), verified against the
    /// digest when it is one, and returns its descriptor and bytes.
    pub(crate) fn manifest(&self, reference: &str) -> Result<(Descriptor, Vec<u8>), ImageError> {
        let url = self.url(&format!("manifests/{reference}"));
        let resp = self.get(&url, Some(MANIFEST_ACCEPT), None)?;
        if !resp.status().is_success() {
            return Err(self.status_error(&url, resp, "manifest"));
        }
        let header_type = content_type(&resp);
        let header_digest = resp
            .headers()
            .get("docker-content-digest")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let body = read_limited(resp, MAX_MANIFEST).map_err(|e| ImageError::InvalidImage {
            what: "manifest",
            origin: url.clone(),
            reason: e,
        })?;
        let digest = Digest::of(&body);
        let expected = Digest::parse(reference).or_else(|| {
            // Only a sha256 header can be compared; others are ignored.
            header_digest.as_deref().and_then(Digest::parse)
        });
        if let Some(expected) = expected {
            if expected != digest {
                return Err(ImageError::DigestMismatch {
                    expected: expected.to_string(),
                    actual: digest.to_string(),
                    origin: url,
                });
            }
        }
        let media_type = match header_type.as_deref() {
            Some(t) if t != "application/json" && t != "text/plain" => t.to_string(),
            _ => declared_media_type(&body).unwrap_or_default(),
        };
        let oci_digest: oci_spec::image::Digest =
            digest
                .to_string()
                .parse()
                .map_err(|e| ImageError::InvalidImage {
                    what: "manifest",
                    origin: url.clone(),
                    reason: format!("digest: {e}"),
                })?;
        let desc = Descriptor::new(
            MediaType::from(media_type.as_str()),
            body.len() as u64,
            oci_digest,
        );
        Ok((desc, body))
    }

    /// A [`Fetch`] for blob `digest` (from `/manifests/` for manifests and indexes, which
    /// registries need not serve as blobs).
    pub(crate) fn fetcher<'a>(&'a self, digest: &Digest, manifest: bool) -> RegistryFetch<'a> {
        let kind = if manifest { "manifests" } else { "blobs" };
        RegistryFetch {
            client: self,
            url: self.url(&format!("{kind}/{digest}")),
            manifest,
        }
    }
}

/// Reads a body up to `limit` bytes.
fn read_limited(resp: Response<Body>, limit: u64) -> Result<Vec<u8>, String> {
    resp.into_body()
        .into_with_config()
        .limit(limit)
        .read_to_vec()
        .map_err(|e| e.to_string())
}

/// A one-line excerpt of an error body: the distribution error messages if there are, else
/// the start of the text.
fn summarize(body: &[u8]) -> String {
    let codes = parse_error_body(body);
    if !codes.is_empty() {
        return codes
            .iter()
            .map(|(c, m)| format!("{c}: {m}"))
            .collect::<Vec<_>>()
            .join("; ");
    }
    let text = String::from_utf8_lossy(body);
    let line: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if line.chars().count() > 200 {
        format!("{}…", line.chars().take(200).collect::<String>())
    } else {
        line
    }
}

/// Downloads one blob, resuming with `Range`.
pub(crate) struct RegistryFetch<'a> {
    client: &'a Client,
    url: String,
    manifest: bool,
}

impl Fetch for RegistryFetch<'_> {
    fn open_at(&self, offset: u64) -> Result<Opened, FetchError> {
        let accept = self.manifest.then_some(MANIFEST_ACCEPT);
        let range = (offset > 0).then_some(offset);
        let resp = match self.client.get(&self.url, accept, range) {
            Ok(r) => r,
            // A dropped connection while downloading is worth retrying; but a registry
            // that cannot be reached at all was reachable moments ago for the manifest,
            // so retry that too, a bounded number of times.
            Err(e @ ImageError::Unreachable { .. }) => {
                return Err(FetchError::Transient(e.to_string()))
            }
            Err(e) => return Err(FetchError::Fatal(e)),
        };
        let status = resp.status();
        let start = match status.as_u16() {
            200 => 0,
            206 => {
                let range = resp
                    .headers()
                    .get("content-range")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("");
                match parse_content_range_start(range) {
                    Some(s) => s,
                    None => {
                        return Err(FetchError::Transient(format!(
                            "206 answer with an unusable Content-Range {range:?}"
                        )))
                    }
                }
            }
            // The partial file is longer than the blob: it cannot be a prefix of it.
            416 => {
                return Err(FetchError::Transient(
                    "the server refused the range (416); restarting".into(),
                ))
            }
            408 | 429 | 500..=599 => {
                let body = read_limited(resp, MAX_ERROR_BODY).unwrap_or_default();
                return Err(FetchError::Transient(format!(
                    "{} from {}: {}",
                    status.as_u16(),
                    self.url,
                    summarize(&body)
                )));
            }
            _ => {
                return Err(FetchError::Fatal(
                    self.client.status_error(&self.url, resp, "blob"),
                ))
            }
        };
        Ok(Opened {
            reader: Box::new(resp.into_body().into_reader()) as Box<dyn Read + Send>,
            start,
        })
    }

    fn origin(&self) -> String {
        self.url.clone()
    }
}

/// The first byte of `bytes FIRST-LAST/TOTAL`.
pub(crate) fn parse_content_range_start(v: &str) -> Option<u64> {
    let rest = v.trim().strip_prefix("bytes")?.trim_start();
    let (first, _) = rest.split_once('-')?;
    first.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_bodies_and_ranges() {
        let body = br#"{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown","detail":{"Tag":"x"}}]}"#;
        assert_eq!(
            parse_error_body(body),
            vec![(
                "MANIFEST_UNKNOWN".to_string(),
                "manifest unknown".to_string()
            )]
        );
        assert_eq!(summarize(body), "MANIFEST_UNKNOWN: manifest unknown");
        assert_eq!(
            summarize(b"  <html>\n  oops </html>"),
            "<html> oops </html>"
        );
        assert!(parse_error_body(b"not json").is_empty());

        assert_eq!(parse_content_range_start("bytes 100-199/200"), Some(100));
        assert_eq!(parse_content_range_start("bytes 0-0/*"), Some(0));
        assert_eq!(parse_content_range_start("items 1-2/3"), None);
        assert_eq!(parse_content_range_start(""), None);
    }

    #[test]
    fn media_type_from_body() {
        assert_eq!(
            declared_media_type(br#"{"schemaVersion":2,"mediaType":"application/vnd.docker.distribution.manifest.v2+json"}"#).as_deref(),
            Some("application/vnd.docker.distribution.manifest.v2+json")
        );
        assert_eq!(
            declared_media_type(br#"{"schemaVersion":2,"manifests":[]}"#).as_deref(),
            Some("application/vnd.oci.image.index.v1+json")
        );
        assert_eq!(
            declared_media_type(br#"{"schemaVersion":2,"config":{}}"#).as_deref(),
            Some("application/vnd.oci.image.manifest.v1+json")
        );
        assert_eq!(declared_media_type(b"[]"), None);
    }

    #[test]
    fn insecure_match_is_exact_host_and_port() {
        let s = RegistrySettings {
            insecure_registries: vec!["127.0.0.1:5000".into(), "Reg.Local".into()],
            auth_file: "/nonexistent".into(),
        };
        assert!(is_insecure(&s, "127.0.0.1:5000"));
        assert!(!is_insecure(&s, "127.0.0.1:5001"));
        assert!(!is_insecure(&s, "127.0.0.1"));
        assert!(is_insecure(&s, "reg.local"));
    }
}
