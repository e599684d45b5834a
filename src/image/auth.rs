//! Registry authentication, the pure parts: `WWW-Authenticate` challenges (RFC 7235, as
//! registries send them: `Bearer realm="…",service="…",scope="…"` for the token flow of
//! <https://distribution.github.io/distribution/spec/auth/token/>, or `Basic realm="…"`),
//! token responses, and credentials from a podman/docker style `auth.json`
//! (`{"auths": {"host:port": {"auth": base64("user:password")}}}`, see
//! containers-auth.json(5)). The file holds passwords, so it is refused unless only its
//! owner, who must be us, can read or change it.

use std::collections::BTreeMap;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use base64::Engine as _;

use super::ImageError;

/// Where credentials are read from unless `[shim] auth_file` says otherwise.
pub const DEFAULT_AUTH_FILE: &str = "/etc/shim/auth.json";

/// One challenge: the scheme (lowercased) and its parameters (keys lowercased).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Challenge {
    pub scheme: String,
    pub params: BTreeMap<String, String>,
}

/// Parses a `WWW-Authenticate` value, which may hold several challenges
/// (`Basic realm="x", Bearer realm="y",scope="a:b:pull,push"`). Quoted values may contain
/// commas and backslash escapes. Malformed input yields what could be parsed.
pub(crate) fn parse_www_authenticate(value: &str) -> Vec<Challenge> {
    let mut out: Vec<Challenge> = Vec::new();
    let b = value.as_bytes();
    let mut i = 0;
    let skip = |i: &mut usize, set: &[u8]| {
        while *i < b.len() && set.contains(&b[*i]) {
            *i += 1;
        }
    };
    let token = |i: &mut usize| {
        let start = *i;
        while *i < b.len() && !b" \t,=\"".contains(&b[*i]) {
            *i += 1;
        }
        value[start..*i].to_string()
    };
    loop {
        skip(&mut i, b" \t,");
        if i >= b.len() {
            break;
        }
        let word = token(&mut i);
        if word.is_empty() {
            // A stray quote or '=': skip it.
            i += 1;
            continue;
        }
        let after_ws = {
            let mut j = i;
            skip(&mut j, b" \t");
            j
        };
        if after_ws < b.len() && b[after_ws] == b'=' {
            // A parameter of the current challenge.
            i = after_ws + 1;
            skip(&mut i, b" \t");
            let val = if i < b.len() && b[i] == b'"' {
                i += 1;
                let mut v = String::new();
                while i < b.len() && b[i] != b'"' {
                    if b[i] == b'\\' && i + 1 < b.len() {
                        i += 1;
                    }
                    // Push whole UTF-8 characters.
                    let ch = value[i..].chars().next().unwrap_or('\u{fffd}');
                    v.push(ch);
                    i += ch.len_utf8();
                }
                i += 1;
                v
            } else {
                token(&mut i)
            };
            if let Some(c) = out.last_mut() {
                c.params.insert(word.to_ascii_lowercase(), val);
            }
        } else {
            out.push(Challenge {
                scheme: word.to_ascii_lowercase(),
                params: BTreeMap::new(),
            });
        }
    }
    out
}

/// A username and password for one registry.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct Credentials {
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Credentials({:?}, <redacted>)", self.username)
    }
}

impl Credentials {
    /// The `Authorization` header value for basic authentication.
    pub(crate) fn basic_header(&self) -> String {
        let raw = format!("{}:{}", self.username, self.password);
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(raw)
        )
    }
}

#[derive(serde::Deserialize)]
struct AuthFile {
    #[serde(default)]
    auths: BTreeMap<String, AuthEntry>,
}

#[derive(serde::Deserialize)]
struct AuthEntry {
    auth: Option<String>,
    username: Option<String>,
    password: Option<String>,
}

/// Normalises an `auths` key to `host[:port][/path]`: docker writes
/// `https://index.docker.io/v1/`, podman `registry.example.com/namespace`.
fn normalise_key(key: &str) -> String {
    let k = key
        .strip_prefix("https://")
        .or_else(|| key.strip_prefix("http://"))
        .unwrap_or(key);
    let k = k.trim_end_matches('/');
    let k = k
        .strip_suffix("/v1")
        .or_else(|| k.strip_suffix("/v2"))
        .unwrap_or(k);
    let (host, path) = match k.split_once('/') {
        Some((h, p)) => (h, Some(p)),
        None => (k, None),
    };
    let mut host = host.to_ascii_lowercase();
    if host == "index.docker.io" || host == "registry-1.docker.io" {
        host = "docker.io".into();
    }
    match path {
        Some(p) => format!("{host}/{p}"),
        None => host,
    }
}

/// The credentials in `text` (an auth.json) for `repository` on `registry`: the entry for
/// the longest matching `registry/namespace` prefix, else the one for the registry.
pub(crate) fn credentials_from_json(
    text: &str,
    registry: &str,
    repository: &str,
) -> Result<Option<Credentials>, String> {
    let file: AuthFile = serde_json::from_str(text).map_err(|e| format!("invalid JSON: {e}"))?;
    let full = format!("{registry}/{repository}");
    let mut best: Option<(usize, &String, &AuthEntry)> = None;
    for (key, entry) in &file.auths {
        let k = normalise_key(key);
        let matches = k == registry
            || full == k
            || (full.starts_with(&k) && full.as_bytes().get(k.len()) == Some(&b'/'));
        if matches && best.is_none_or(|(len, _, _)| k.len() > len) {
            best = Some((k.len(), key, entry));
        }
    }
    let Some((_, key, entry)) = best else {
        return Ok(None);
    };
    if let Some(auth) = &entry.auth {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(auth.trim())
            .map_err(|e| format!("auths.{key:?}.auth is not base64: {e}"))?;
        let decoded = String::from_utf8(decoded)
            .map_err(|_| format!("auths.{key:?}.auth does not decode to text"))?;
        let (user, pass) = decoded
            .split_once(':')
            .ok_or_else(|| format!("auths.{key:?}.auth does not decode to user:password"))?;
        return Ok(Some(Credentials {
            username: user.to_string(),
            password: pass.to_string(),
        }));
    }
    match (&entry.username, &entry.password) {
        (Some(u), Some(p)) => Ok(Some(Credentials {
            username: u.clone(),
            password: p.clone(),
        })),
        _ => Err(format!(
            "auths.{key:?} has neither \"auth\" nor \"username\" and \"password\""
        )),
    }
}

/// Reads the credentials for `registry`/`repository` from the auth file at `path`. A
/// missing file means anonymous access; a file others can read (or that someone else owns)
/// is refused outright, whether or not it has an entry for this registry.
pub(crate) fn load_credentials(
    path: &Path,
    registry: &str,
    repository: &str,
) -> Result<Option<Credentials>, ImageError> {
    let bad = |reason: String| ImageError::Credentials {
        path: path.to_path_buf(),
        reason,
    };
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(bad(format!("cannot read: {e}"))),
    };
    let mode = meta.mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(bad(format!(
            "mode {mode:04o} lets other users read or change registry credentials; \
             run chmod 600 {}",
            path.display()
        )));
    }
    let me = nix::unistd::geteuid().as_raw();
    if meta.uid() != me {
        return Err(bad(format!(
            "owned by uid {}, not by uid {me} who runs shim; registry credentials must \
             belong to the user reading them",
            meta.uid()
        )));
    }
    let text = std::fs::read_to_string(path).map_err(|e| bad(format!("cannot read: {e}")))?;
    credentials_from_json(&text, registry, repository).map_err(bad)
}

/// What the token endpoint returns: docker's `token`, or OAuth2's `access_token`.
pub(crate) fn parse_token_response(body: &[u8]) -> Result<String, String> {
    #[derive(serde::Deserialize)]
    struct TokenResponse {
        token: Option<String>,
        access_token: Option<String>,
    }
    let r: TokenResponse =
        serde_json::from_slice(body).map_err(|e| format!("token response is not JSON: {e}"))?;
    r.token
        .filter(|t| !t.is_empty())
        .or(r.access_token.filter(|t| !t.is_empty()))
        .ok_or_else(|| "token response has no \"token\" or \"access_token\"".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn ch(scheme: &str, params: &[(&str, &str)]) -> Challenge {
        Challenge {
            scheme: scheme.into(),
            params: params
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    #[test]
    fn parses_challenges() {
        assert_eq!(
            parse_www_authenticate(
                r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/alpine:pull""#
            ),
            vec![ch(
                "bearer",
                &[
                    ("realm", "https://auth.docker.io/token"),
                    ("service", "registry.docker.io"),
                    ("scope", "repository:library/alpine:pull")
                ]
            )]
        );
        // Commas inside quotes, spaces around '=', unquoted values, escapes, two challenges.
        assert_eq!(
            parse_www_authenticate(
                r#"Basic realm="Registry Realm", Bearer realm = "http://127.0.0.1:5001/token", scope="repository:a/b:pull,push",service=reg, error="a\"b""#
            ),
            vec![
                ch("basic", &[("realm", "Registry Realm")]),
                ch(
                    "bearer",
                    &[
                        ("realm", "http://127.0.0.1:5001/token"),
                        ("scope", "repository:a/b:pull,push"),
                        ("service", "reg"),
                        ("error", "a\"b"),
                    ]
                ),
            ]
        );
        assert_eq!(parse_www_authenticate("BASIC"), vec![ch("basic", &[])]);
        assert_eq!(parse_www_authenticate(""), vec![]);
        // Garbage does not panic.
        for junk in [
            "=",
            "\"",
            "Bearer realm=\"unterminated",
            ",,,",
            "Bearer =x",
            "é=\"ü\"",
        ] {
            let _ = parse_www_authenticate(junk);
        }
    }

    fn b64(s: &str) -> String {
        base64::engine::general_purpose::STANDARD.encode(s)
    }

    fn creds(u: &str, p: &str) -> Option<Credentials> {
        Some(Credentials {
            username: u.into(),
            password: p.into(),
        })
    }

    #[test]
    fn picks_credentials_by_registry_and_namespace() {
        let text = format!(
            r#"{{"auths": {{
                "127.0.0.1:5000": {{"auth": "{}"}},
                "registry.example.com": {{"auth": "{}"}},
                "registry.example.com/team": {{"auth": "{}"}},
                "https://index.docker.io/v1/": {{"auth": "{}"}},
                "plain.example.com": {{"username": "u", "password": "p"}}
            }}}}"#,
            b64("alice:s3cret:with:colons"),
            b64("bob:b"),
            b64("team:t"),
            b64("hub:h"),
        );
        let get = |reg: &str, repo: &str| credentials_from_json(&text, reg, repo).unwrap();
        assert_eq!(
            get("127.0.0.1:5000", "team/app"),
            creds("alice", "s3cret:with:colons")
        );
        assert_eq!(get("registry.example.com", "other/app"), creds("bob", "b"));
        assert_eq!(get("registry.example.com", "team/app"), creds("team", "t"));
        // A prefix match must end at a path boundary.
        assert_eq!(get("registry.example.com", "teams/app"), creds("bob", "b"));
        assert_eq!(get("docker.io", "library/alpine"), creds("hub", "h"));
        assert_eq!(get("plain.example.com", "x"), creds("u", "p"));
        assert_eq!(get("127.0.0.1:5001", "team/app"), None);

        for (bad, want) in [
            ("{", "invalid JSON"),
            (r#"{"auths": {"h.io": {"auth": "!!"}}}"#, "not base64"),
            (
                &format!(
                    r#"{{"auths": {{"h.io": {{"auth": "{}"}}}}}}"#,
                    b64("nocolon")
                ),
                "user:password",
            ),
            (r#"{"auths": {"h.io": {}}}"#, "neither"),
        ] {
            let err = credentials_from_json(bad, "h.io", "a").unwrap_err();
            assert!(err.contains(want), "{bad}: {err}");
        }
        assert_eq!(credentials_from_json("{}", "h.io", "a").unwrap(), None);
    }

    #[test]
    fn auth_file_permissions_are_enforced() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("auth.json");
        assert_eq!(load_credentials(&path, "h.io", "a").unwrap(), None);
        std::fs::write(
            &path,
            format!(r#"{{"auths": {{"h.io": {{"auth": "{}"}}}}}}"#, b64("u:p")),
        )
        .unwrap();
        for mode in [0o644, 0o640, 0o604, 0o660] {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
            let err = load_credentials(&path, "h.io", "a")
                .unwrap_err()
                .to_string();
            assert!(
                err.contains(&path.display().to_string())
                    && err.contains(&format!("mode {mode:04o}"))
                    && err.contains("chmod 600"),
                "{err}"
            );
        }
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(
            load_credentials(&path, "h.io", "a").unwrap(),
            creds("u", "p")
        );
        assert_eq!(load_credentials(&path, "other.io", "a").unwrap(), None);
        assert_eq!(
            creds("u", "p").unwrap().basic_header(),
            format!("Basic {}", b64("u:p"))
        );
        // Debug output never shows the password.
        assert!(!format!("{:?}", creds("u", "hunter2")).contains("hunter2"));
    }

    #[test]
    fn token_responses() {
        assert_eq!(parse_token_response(br#"{"token":"abc"}"#).unwrap(), "abc");
        assert_eq!(
            parse_token_response(br#"{"access_token":"xyz","expires_in":300}"#).unwrap(),
            "xyz"
        );
        assert_eq!(
            parse_token_response(br#"{"token":"","access_token":"xyz"}"#).unwrap(),
            "xyz"
        );
        assert!(parse_token_response(br#"{}"#).is_err());
        assert!(parse_token_response(b"<html>").is_err());
    }
}
