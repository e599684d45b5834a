//! Pulls against a fake registry (a few dozen lines of HTTP/1.1 over `std::net`, serving
//! manifests and blobs from memory): the distribution API as the client uses it, bearer and
//! basic authentication, unknown tags and repositories, an unreachable registry, corrupt and
//! truncated blobs, resumed downloads, concurrent pulls, platform selection, the fallback to
//! a recorded pull, OCI archives, and `rm`/`prune` on the resulting store.

use std::collections::{BTreeSet, HashMap};
use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::{json, Value};
use tempfile::TempDir;

use super::gc::InUse;
use super::testutil::{gzip, is_root, TarBuilder, TestLayout};
use super::{Compression, Digest, ImageError, ImageRef, ImageStore, RegistrySettings};

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";

#[derive(Clone, Default)]
enum Auth {
    #[default]
    None,
    Basic(String, String),
    /// Bearer tokens from `/token`; the token service wants these credentials if any.
    Bearer(Option<(String, String)>),
}

#[derive(Default)]
struct State {
    repo: String,
    /// By tag and by digest: (media type, bytes).
    manifests: HashMap<String, (String, Vec<u8>)>,
    blobs: HashMap<String, Vec<u8>>,
    auth: Auth,
    /// Blob digest → (responses still to cut short, bytes sent before cutting).
    truncate: HashMap<String, (u32, usize)>,
    ignore_range: bool,
    /// Blob digest → (bytes sent before a pause, the pause): a slow registry.
    stall: HashMap<String, (usize, Duration)>,
    /// "GET /v2/... [range]" per request, and Authorization headers seen.
    log: Vec<String>,
    auth_headers: Vec<String>,
}

struct FakeRegistry {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    stop: Arc<AtomicBool>,
}

impl Drop for FakeRegistry {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = TcpStream::connect(self.addr);
    }
}

fn respond(
    s: &mut TcpStream,
    status: &str,
    headers: &[(&str, String)],
    body: &[u8],
    cut: Option<usize>,
) {
    let mut head = format!(
        "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    let _ = s.write_all(head.as_bytes());
    let body = match cut {
        Some(n) => &body[..n.min(body.len())],
        None => body,
    };
    let _ = s.write_all(body);
    let _ = s.flush();
}

fn error_body(code: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({"errors": [{"code": code, "message": code.to_lowercase()}]}))
        .unwrap()
}

impl FakeRegistry {
    fn start(repo: &str) -> FakeRegistry {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new(State {
            repo: repo.to_string(),
            ..Default::default()
        }));
        let stop = Arc::new(AtomicBool::new(false));
        let (st, sp) = (state.clone(), stop.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if sp.load(Ordering::Relaxed) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                let st = st.clone();
                std::thread::spawn(move || serve(conn, addr, &st));
            }
        });
        FakeRegistry { addr, state, stop }
    }

    fn host(&self) -> String {
        self.addr.to_string()
    }

    fn with<T>(&self, f: impl FnOnce(&mut State) -> T) -> T {
        f(&mut self.state.lock().unwrap())
    }

    fn put_blob(&self, data: &[u8]) -> Digest {
        let d = Digest::of(data);
        self.with(|s| s.blobs.insert(d.to_string(), data.to_vec()));
        d
    }

    fn put_manifest(&self, tag: Option<&str>, media_type: &str, data: &[u8]) -> Digest {
        let d = Digest::of(data);
        self.with(|s| {
            s.manifests
                .insert(d.to_string(), (media_type.into(), data.to_vec()));
            if let Some(t) = tag {
                s.manifests
                    .insert(t.into(), (media_type.into(), data.to_vec()));
            }
        });
        d
    }

    /// Pushes an image of `layers`; returns (manifest digest, layer digests, manifest JSON).
    fn push_image(
        &self,
        tag: Option<&str>,
        layers: &[(Vec<u8>, Compression)],
        arch: &str,
    ) -> (Digest, Vec<Digest>, Value) {
        let mut descs = Vec::new();
        let mut diff_ids = Vec::new();
        let mut digests = Vec::new();
        for (tar, c) in layers {
            diff_ids.push(Digest::of(tar).to_string());
            let (blob, mt) = match c {
                Compression::None => (tar.clone(), "application/vnd.oci.image.layer.v1.tar"),
                Compression::Gzip => (
                    gzip(tar),
                    "application/vnd.docker.image.rootfs.diff.tar.gzip",
                ),
                Compression::Zstd => (
                    zstd::encode_all(&tar[..], 3).unwrap(),
                    "application/vnd.oci.image.layer.v1.tar+zstd",
                ),
            };
            let d = self.put_blob(&blob);
            descs.push(json!({"mediaType": mt, "digest": d.to_string(), "size": blob.len()}));
            digests.push(d);
        }
        let config = serde_json::to_vec(&json!({
            "architecture": arch, "os": "linux",
            "config": {"Entrypoint": ["/bin/app"], "Env": ["PATH=/bin"]},
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
        }))
        .unwrap();
        let cd = self.put_blob(&config);
        let manifest = json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
            "config": {"mediaType": "application/vnd.docker.container.image.v1+json", "digest": cd.to_string(), "size": config.len()},
            "layers": descs,
        });
        let bytes = serde_json::to_vec(&manifest).unwrap();
        let md = self.put_manifest(
            tag,
            "application/vnd.docker.distribution.manifest.v2+json",
            &bytes,
        );
        (md, digests, manifest)
    }

    fn requests(&self, needle: &str) -> usize {
        self.with(|s| s.log.iter().filter(|l| l.contains(needle)).count())
    }
}

fn serve(mut conn: TcpStream, addr: SocketAddr, st: &Mutex<State>) {
    let mut reader = BufReader::new(conn.try_clone().unwrap());
    let mut line = String::new();
    if reader.read_line(&mut line).is_err() || line.is_empty() {
        return;
    }
    let path = line.split_whitespace().nth(1).unwrap_or("").to_string();
    let mut headers = HashMap::new();
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h).is_err() || h.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
        }
    }
    let range_from: Option<usize> = headers
        .get("range")
        .and_then(|r| r.strip_prefix("bytes="))
        .and_then(|r| r.trim_end_matches('-').parse().ok());
    let mut s = st.lock().unwrap();
    s.log.push(format!(
        "GET {path}{}",
        range_from
            .map(|r| format!(" range={r}"))
            .unwrap_or_default()
    ));
    let authz = headers.get("authorization").cloned().unwrap_or_default();
    s.auth_headers.push(authz.clone());

    if let Some(q) = path.strip_prefix("/token?") {
        let creds_ok = match &s.auth {
            Auth::Bearer(Some((u, p))) => {
                authz
                    == format!(
                        "Basic {}",
                        base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"))
                    )
            }
            _ => true,
        };
        drop(s);
        if !creds_ok {
            return respond(
                &mut conn,
                "401 Unauthorized",
                &[],
                b"{\"details\":\"bad credentials\"}",
                None,
            );
        }
        assert!(
            q.contains("scope=repository%3A") || q.contains("scope=repository:"),
            "{q}"
        );
        return respond(&mut conn, "200 OK", &[], br#"{"token":"tok-123"}"#, None);
    }

    let authorized = match &s.auth {
        Auth::None => true,
        Auth::Basic(u, p) => {
            authz
                == format!(
                    "Basic {}",
                    base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"))
                )
        }
        Auth::Bearer(_) => authz == "Bearer tok-123",
    };
    if !authorized {
        let challenge = match &s.auth {
            Auth::Basic(..) => "Basic realm=\"fake\"".to_string(),
            _ => format!(
                "Bearer realm=\"http://{addr}/token\",service=\"fake\",scope=\"repository:{}:pull\"",
                s.repo
            ),
        };
        drop(s);
        return respond(
            &mut conn,
            "401 Unauthorized",
            &[("WWW-Authenticate", challenge)],
            &error_body("UNAUTHORIZED"),
            None,
        );
    }

    let prefix = format!("/v2/{}/", s.repo);
    let Some(rest) = path.strip_prefix(&prefix) else {
        drop(s);
        // As distribution does: MANIFEST_UNKNOWN for a manifest of an unknown repository,
        // NAME_UNKNOWN when listing its tags.
        let code = if path.contains("/manifests/") {
            "MANIFEST_UNKNOWN"
        } else {
            "NAME_UNKNOWN"
        };
        return respond(&mut conn, "404 Not Found", &[], &error_body(code), None);
    };
    if rest.starts_with("tags/list") {
        let mut tags: Vec<&String> = s
            .manifests
            .keys()
            .filter(|k| !k.starts_with("sha256:"))
            .collect();
        tags.sort();
        let body = serde_json::to_vec(&json!({"name": s.repo, "tags": tags})).unwrap();
        drop(s);
        return respond(&mut conn, "200 OK", &[], &body, None);
    }
    if let Some(r) = rest.strip_prefix("manifests/") {
        let found = s.manifests.get(r).cloned();
        drop(s);
        return match found {
            Some((mt, data)) => respond(
                &mut conn,
                "200 OK",
                &[
                    ("Content-Type", mt),
                    ("Docker-Content-Digest", Digest::of(&data).to_string()),
                ],
                &data,
                None,
            ),
            None => respond(
                &mut conn,
                "404 Not Found",
                &[],
                &error_body("MANIFEST_UNKNOWN"),
                None,
            ),
        };
    }
    if let Some(d) = rest.strip_prefix("blobs/") {
        let Some(data) = s.blobs.get(d).cloned() else {
            drop(s);
            return respond(
                &mut conn,
                "404 Not Found",
                &[],
                &error_body("BLOB_UNKNOWN"),
                None,
            );
        };
        let cut = match s.truncate.get_mut(d) {
            Some((n, at)) if *n > 0 => {
                *n -= 1;
                Some(*at)
            }
            _ => None,
        };
        let ignore_range = s.ignore_range;
        let stall = s.stall.get(d).copied();
        drop(s);
        if let (Some((at, pause)), None) = (stall, range_from) {
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                data.len()
            );
            let at = at.min(data.len());
            let _ = conn.write_all(head.as_bytes());
            let _ = conn.write_all(&data[..at]);
            let _ = conn.flush();
            std::thread::sleep(pause);
            let _ = conn.write_all(&data[at..]);
            return;
        }
        return match range_from.filter(|_| !ignore_range) {
            Some(from) if from < data.len() => respond(
                &mut conn,
                "206 Partial Content",
                &[(
                    "Content-Range",
                    format!("bytes {from}-{}/{}", data.len() - 1, data.len()),
                )],
                &data[from..],
                cut,
            ),
            _ => respond(&mut conn, "200 OK", &[], &data, cut),
        };
    }
    drop(s);
    respond(
        &mut conn,
        "404 Not Found",
        &[],
        &error_body("UNSUPPORTED"),
        None,
    )
}

/// An image with whiteouts and a hardlink across three layers in all three compressions.
fn layers() -> Vec<(Vec<u8>, Compression)> {
    let mut l1 = TarBuilder::new();
    l1.dir("bin", 0o755)
        .file("bin/app", "#!/bin/sh\necho hi\n", 0o755)
        .dir("etc", 0o755)
        .file("etc/old", "old", 0o644)
        .file("etc/big", &"x".repeat(300_000), 0o644);
    let mut l2 = TarBuilder::new();
    l2.whiteout("etc/old")
        .file("etc/new", "new", 0o644)
        .hardlink("bin/app2", "bin/app");
    let mut l3 = TarBuilder::new();
    l3.file("etc/third", "3", 0o600);
    vec![
        (l1.build(), Compression::Gzip),
        (l2.build(), Compression::Zstd),
        (l3.build(), Compression::None),
    ]
}

struct Env {
    tmp: TempDir,
    reg: FakeRegistry,
    store: ImageStore,
}

impl Env {
    fn new(repo: &str) -> Env {
        let tmp = TempDir::new().unwrap();
        let reg = FakeRegistry::start(repo);
        let store = store_for(tmp.path(), &reg.host());
        Env { tmp, reg, store }
    }

    fn reference(&self, rest: &str) -> ImageRef {
        ImageRef::parse(&format!("{}/{rest}", self.reg.host())).unwrap()
    }

    fn pull(&self, r: &ImageRef) -> Result<PathBuf, ImageError> {
        pull_with(&self.store, r)
    }

    fn auth_file(&self) -> PathBuf {
        self.tmp.path().join("auth.json")
    }

    fn write_auth(&self, user: &str, pass: &str) {
        use std::os::unix::fs::PermissionsExt;
        let b64 = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"));
        let text = json!({"auths": {self.reg.host(): {"auth": b64}}}).to_string();
        fs::write(self.auth_file(), text).unwrap();
        fs::set_permissions(self.auth_file(), fs::Permissions::from_mode(0o600)).unwrap();
    }

    fn blob_files(&self) -> Vec<String> {
        sorted_names(&self.tmp.path().join("store/blobs/sha256"))
    }
}

fn store_for(dir: &Path, host: &str) -> ImageStore {
    let mut store = ImageStore::with_settings(
        dir.join("store"),
        RegistrySettings {
            insecure_registries: vec![host.to_string()],
            auth_file: dir.join("auth.json"),
        },
    );
    store.blobs.retry_pause = Duration::from_millis(10);
    store
}

fn pull_with(store: &ImageStore, r: &ImageRef) -> Result<PathBuf, ImageError> {
    let img = store.resolve(r)?;
    let source = store.source(r)?;
    store.ensure_rootfs_with(&img, source.as_ref(), is_root())
}

fn check_rootfs(rootfs: &Path) {
    use std::os::unix::fs::MetadataExt;
    assert_eq!(fs::read_to_string(rootfs.join("etc/new")).unwrap(), "new");
    assert_eq!(fs::read_to_string(rootfs.join("etc/third")).unwrap(), "3");
    assert!(!rootfs.join("etc/old").exists());
    assert_eq!(
        fs::metadata(rootfs.join("bin/app2")).unwrap().ino(),
        fs::metadata(rootfs.join("bin/app")).unwrap().ino()
    );
}

#[test]
fn pulls_through_an_index_into_the_store() {
    let env = Env::new("team/app");
    let (md, layer_digests, manifest) = env.reg.push_image(None, &layers(), "amd64");
    // Another platform's manifest in the same index: never downloaded.
    let (other, other_layers, _) =
        env.reg
            .push_image(None, &[(b"x".repeat(1024), Compression::None)], "arm64");
    let mbytes = serde_json::to_vec(&manifest).unwrap();
    let index = serde_json::to_vec(&json!({
        "schemaVersion": 2, "mediaType": OCI_INDEX,
        "manifests": [
            {"mediaType": "application/vnd.docker.distribution.manifest.v2+json", "digest": other.to_string(), "size": 10,
             "platform": {"os": "linux", "architecture": "arm64"}},
            {"mediaType": "application/vnd.docker.distribution.manifest.v2+json", "digest": md.to_string(), "size": mbytes.len(),
             "platform": {"os": "linux", "architecture": super::resolve::Platform::host().architecture}},
        ]
    }))
    .unwrap();
    let index_digest = env.reg.put_manifest(Some("v1"), OCI_INDEX, &index);

    let r = env.reference("team/app:v1");
    let rootfs = env.pull(&r).unwrap();
    check_rootfs(&rootfs);
    assert_eq!(rootfs, env.tmp.path().join("store/rootfs").join(md.hex()));
    // Index, manifest, config and layers are in the store; nothing of the other platform.
    let files = env.blob_files();
    for d in layer_digests.iter().chain([&md, &index_digest]) {
        assert!(
            files.contains(&d.hex().to_string()),
            "{d} not stored: {files:?}"
        );
    }
    assert!(!files.contains(&other.hex().to_string()));
    assert!(!files.contains(&other_layers[0].hex().to_string()));
    assert!(
        !files.iter().any(|f| f.starts_with(".partial-")),
        "{files:?}"
    );

    // Recorded, listed as complete and unpacked.
    let listed = env.store.list().unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].record.reference, r.to_string());
    assert_eq!(listed[0].record.manifest, md.to_string());
    assert_eq!(listed[0].record.top, index_digest.to_string());
    assert_eq!(
        listed[0].record.blobs.len(),
        6,
        "index, manifest, config, 3 layers"
    );
    assert!(listed[0].complete && listed[0].unpacked);

    // Pulling again downloads no blob.
    let blob_gets = env.reg.requests("/blobs/");
    assert_eq!(env.pull(&r).unwrap(), rootfs);
    assert_eq!(env.reg.requests("/blobs/"), blob_gets);

    // The same image by digest needs no network at all once stored.
    let by_digest = env.reference(&format!("team/app@{index_digest}"));
    let before = env.reg.with(|s| s.log.len());
    assert_eq!(env.pull(&by_digest).unwrap(), rootfs);
    assert_eq!(env.reg.with(|s| s.log.len()), before);
}

#[test]
fn anonymous_bearer_token_and_credentials() {
    let env = Env::new("team/app");
    env.reg.push_image(Some("v1"), &layers(), "amd64");
    env.reg.with(|s| s.auth = Auth::Bearer(None));
    check_rootfs(&env.pull(&env.reference("team/app:v1")).unwrap());
    assert!(env.reg.requests("/token?") >= 1);
    // One token for the whole pull, reused by every blob download.
    assert_eq!(env.reg.requests("/token?"), 1);

    // A token service that wants credentials: from auth.json, sent as basic auth.
    let env = Env::new("team/app");
    env.reg.push_image(Some("v1"), &layers(), "amd64");
    env.reg
        .with(|s| s.auth = Auth::Bearer(Some(("ci".into(), "pw".into()))));
    let err = env.pull(&env.reference("team/app:v1")).unwrap_err();
    assert!(matches!(err, ImageError::Unauthorized { .. }), "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains(&env.reg.host()) && msg.contains("anonymously"),
        "{msg}"
    );
    env.write_auth("ci", "pw");
    let store = store_for(env.tmp.path(), &env.reg.host());
    check_rootfs(&pull_with(&store, &env.reference("team/app:v1")).unwrap());
}

#[test]
fn basic_auth_from_auth_file() {
    let env = Env::new("team/app");
    env.reg.push_image(Some("v1"), &layers(), "amd64");
    env.reg
        .with(|s| s.auth = Auth::Basic("u".into(), "p".into()));
    let r = env.reference("team/app:v1");
    let err = env.pull(&r).unwrap_err();
    assert!(
        err.to_string()
            .contains("requires a login and the auth file has no credentials"),
        "{err}"
    );
    env.write_auth("u", "wrong");
    let store = store_for(env.tmp.path(), &env.reg.host());
    let err = pull_with(&store, &r).unwrap_err();
    assert!(matches!(err, ImageError::Unauthorized { .. }), "{err}");
    assert!(err.to_string().contains("(as \"u\")"), "{err}");
    env.write_auth("u", "p");
    let store = store_for(env.tmp.path(), &env.reg.host());
    check_rootfs(&pull_with(&store, &r).unwrap());

    // A world-readable auth file is refused before anything is fetched.
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(env.auth_file(), fs::Permissions::from_mode(0o644)).unwrap();
    let before = env.reg.with(|s| s.log.len());
    let err = pull_with(&store, &env.reference("team/app:v2")).unwrap_err();
    assert!(matches!(err, ImageError::Credentials { .. }), "{err}");
    assert!(err.to_string().contains("mode 0644"), "{err}");
    assert_eq!(env.reg.with(|s| s.log.len()), before);
}

#[test]
fn unknown_tag_repository_and_unreachable_registry() {
    let env = Env::new("team/app");
    env.reg.push_image(Some("v1"), &layers(), "amd64");
    env.reg.push_image(Some("v2"), &layers()[..1], "amd64");
    let err = env
        .store
        .resolve(&env.reference("team/app:v3"))
        .unwrap_err();
    assert!(matches!(err, ImageError::ManifestNotFound { .. }), "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains("\"v3\"") && msg.contains("available tags: v1, v2"),
        "{msg}"
    );

    let err = env
        .store
        .resolve(&env.reference("team/nope:v1"))
        .unwrap_err();
    assert!(
        matches!(err, ImageError::RepositoryNotFound { .. }),
        "{err}"
    );
    assert!(err.to_string().contains("\"team/nope\""), "{err}");

    // Nothing listens on this port any more.
    let port = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let host = format!("127.0.0.1:{port}");
    let store = store_for(env.tmp.path(), &host);
    let start = Instant::now();
    let err = store
        .resolve(&ImageRef::parse(&format!("{host}/team/app:v1")).unwrap())
        .unwrap_err();
    assert!(start.elapsed() < Duration::from_secs(10));
    assert!(matches!(err, ImageError::Unreachable { .. }), "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains(&format!("cannot reach registry {host}")),
        "{msg}"
    );

    // HTTPS is the default: a plain-HTTP registry not listed as insecure fails with a hint.
    let https = ImageStore::with_settings(
        env.tmp.path().join("store2"),
        RegistrySettings {
            insecure_registries: vec![],
            auth_file: env.auth_file(),
        },
    );
    let err = https.resolve(&env.reference("team/app:v1")).unwrap_err();
    assert!(err.to_string().contains("insecure_registries"), "{err}");
}

#[test]
fn corrupt_blob_fails_naming_digest_and_leaves_nothing() {
    let env = Env::new("team/app");
    let (_, layer_digests, _) = env.reg.push_image(Some("v1"), &layers(), "amd64");
    let bad = layer_digests[0].to_string();
    env.reg.with(|s| {
        let b = s.blobs.get_mut(&bad).unwrap();
        let i = b.len() / 2;
        b[i] ^= 0x55;
    });
    let err = env.pull(&env.reference("team/app:v1")).unwrap_err();
    match &err {
        ImageError::DigestMismatch { expected, .. } => assert_eq!(expected, &bad),
        other => panic!("expected a digest mismatch, got {other}"),
    }
    assert!(err.to_string().contains(&bad));
    let files = env.blob_files();
    assert!(!files.iter().any(|f| f.contains(&bad[7..])), "{files:?}");
    assert!(!env
        .tmp
        .path()
        .join("store/rootfs")
        .read_dir()
        .unwrap()
        .any(|e| {
            let n = e.unwrap().file_name().into_string().unwrap();
            !n.starts_with(".lock-")
        }));
}

#[test]
fn truncated_downloads_resume_with_range() {
    let env = Env::new("team/app");
    let (_, layer_digests, _) = env.reg.push_image(Some("v1"), &layers(), "amd64");
    let big = layer_digests[0].to_string();
    env.reg.with(|s| s.truncate.insert(big.clone(), (2, 100)));
    check_rootfs(&env.pull(&env.reference("team/app:v1")).unwrap());
    let log = env.reg.with(|s| s.log.clone());
    let gets: Vec<&String> = log.iter().filter(|l| l.contains(&big)).collect();
    assert_eq!(gets.len(), 3, "{gets:?}");
    assert!(gets[1].ends_with("range=100"), "{gets:?}");
    assert!(gets[2].ends_with("range=200"), "{gets:?}");
}

#[test]
fn endless_truncation_fails_then_a_later_pull_resumes() {
    let env = Env::new("team/app");
    let (_, layer_digests, _) = env.reg.push_image(Some("v1"), &layers(), "amd64");
    let big = layer_digests[0].clone();
    env.reg.with(|s| {
        s.ignore_range = true;
        s.truncate.insert(big.to_string(), (100, 150));
    });
    let r = env.reference("team/app:v1");
    let err = env.pull(&r).unwrap_err();
    assert!(matches!(err, ImageError::DownloadFailed { .. }), "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains(&big.to_string()) && msg.contains("150 of"),
        "{msg}"
    );
    // The partial download stays for the next attempt, which asks for the rest.
    let partial = env
        .tmp
        .path()
        .join("store/blobs/sha256")
        .join(format!(".partial-{}", big.hex()));
    assert_eq!(fs::metadata(&partial).unwrap().len(), 150);
    env.reg.with(|s| {
        s.ignore_range = false;
        s.truncate.clear();
        s.log.clear();
    });
    check_rootfs(&env.pull(&r).unwrap());
    let gets: Vec<String> = env
        .reg
        .with(|s| s.log.clone())
        .into_iter()
        .filter(|l| l.contains(&big.to_string()))
        .collect();
    assert_eq!(gets.len(), 1, "{gets:?}");
    assert!(gets[0].ends_with("range=150"), "{gets:?}");
    assert!(!partial.exists());
}

#[test]
fn concurrent_pulls_download_each_blob_once() {
    let env = Env::new("team/app");
    let (md, layer_digests, _) = env.reg.push_image(Some("v1"), &layers(), "amd64");
    let r = env.reference("team/app:v1");
    let results: Vec<_> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..4)
            .map(|_| {
                s.spawn(|| {
                    let store = store_for(env.tmp.path(), &env.reg.host());
                    pull_with(&store, &r)
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for r in results {
        check_rootfs(&r.unwrap());
    }
    for d in &layer_digests {
        assert_eq!(env.reg.requests(&format!("blobs/{d}")), 1, "{d}");
    }
    let rootfs_entries: Vec<String> = fs::read_dir(env.tmp.path().join("store/rootfs"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| !n.starts_with(".lock-"))
        .collect();
    assert_eq!(rootfs_entries, vec![md.hex().to_string()]);
}

#[test]
fn only_other_platforms_is_refused() {
    let env = Env::new("team/app");
    let (md, _, manifest) = env.reg.push_image(None, &layers(), "s390x");
    let index = serde_json::to_vec(&json!({
        "schemaVersion": 2, "mediaType": OCI_INDEX,
        "manifests": [{"mediaType": OCI_MANIFEST, "digest": md.to_string(),
                       "size": serde_json::to_vec(&manifest).unwrap().len(),
                       "platform": {"os": "linux", "architecture": "s390x"}}],
    }))
    .unwrap();
    env.reg.put_manifest(Some("v1"), OCI_INDEX, &index);
    let err = env
        .store
        .resolve(&env.reference("team/app:v1"))
        .unwrap_err();
    assert!(matches!(err, ImageError::PlatformNotFound { .. }), "{err}");
    assert!(err.to_string().contains("available: linux/s390x"), "{err}");
    assert_eq!(env.reg.requests("/blobs/"), 0);
}

#[test]
fn unreachable_registry_falls_back_to_the_recorded_pull() {
    let env = Env::new("team/app");
    let (md, _, _) = env.reg.push_image(Some("v1"), &layers(), "amd64");
    let r = env.reference("team/app:v1");
    let rootfs = env.pull(&r).unwrap();
    let Env { tmp, reg, store } = env;
    drop(reg);
    std::thread::sleep(Duration::from_millis(50));
    let img = store.resolve(&r).unwrap();
    assert_eq!(img.manifest_digest, md.to_string());
    assert_eq!(store.ensure_rootfs(&img).unwrap(), rootfs);
    // Never pulled: no fallback.
    let other = ImageRef::parse(&format!(
        "{}/team/app:v2",
        r.to_string().split('/').next().unwrap()
    ))
    .unwrap();
    assert!(matches!(
        store.resolve(&other),
        Err(ImageError::Unreachable { .. })
    ));
    drop(tmp);
}

fn tar_dir(dir: &Path, out: &Path) {
    let f = fs::File::create(out).unwrap();
    let mut b = tar::Builder::new(f);
    b.append_dir_all(".", dir).unwrap();
    b.finish().unwrap();
}

#[test]
fn oci_archives() {
    let tmp = TempDir::new().unwrap();
    let layout = TestLayout::create(&tmp.path().join("layout"), "v1", &layers());
    let archive = tmp.path().join("image.tar");
    tar_dir(&layout.dir, &archive);
    let store = ImageStore::with_settings(tmp.path().join("store"), RegistrySettings::default());
    for r in [
        format!("oci-archive:{}:v1", archive.display()),
        format!("oci-archive:{}", archive.display()),
    ] {
        let r = ImageRef::parse(&r).unwrap();
        check_rootfs(&pull_with(&store, &r).unwrap());
    }
    // Blobs were copied into the store, verified; the archive can go.
    for d in &layout.layer_digests {
        assert!(tmp
            .path()
            .join("store/blobs/sha256")
            .join(d.hex())
            .is_file());
    }
    let err = store
        .resolve(&ImageRef::parse(&format!("oci-archive:{}:v9", archive.display())).unwrap())
        .unwrap_err();
    assert!(matches!(err, ImageError::TagNotFound { .. }), "{err}");
    assert!(err.to_string().contains("available tags: v1"), "{err}");

    // Not OCI archives, each said so.
    let junk = tmp.path().join("junk.tar");
    fs::write(
        &junk,
        b"this is not a tar file at all, just some text that goes on",
    )
    .unwrap();
    let docker = tmp.path().join("docker");
    fs::create_dir(&docker).unwrap();
    fs::write(docker.join("manifest.json"), "[]").unwrap();
    let docker_tar = tmp.path().join("docker.tar");
    tar_dir(&docker, &docker_tar);
    let gz = tmp.path().join("image.tar.gz");
    fs::write(&gz, gzip(&fs::read(&archive).unwrap())).unwrap();
    for (path, want) in [
        (&junk, "not"),
        (&docker_tar, "docker save"),
        (&gz, "gzip-compressed"),
        (&tmp.path().join("missing.tar"), "cannot open"),
    ] {
        let r = ImageRef::parse(&format!("oci-archive:{}", path.display())).unwrap();
        let err = store.resolve(&r).unwrap_err();
        assert!(matches!(err, ImageError::InvalidArchive { .. }), "{err}");
        let msg = err.to_string();
        assert!(
            msg.contains(want) && msg.contains(&path.display().to_string()),
            "{msg}"
        );
        assert_eq!(crate::error::exit_code(&anyhow::Error::from(err)), 2);
    }

    // A corrupt blob inside the archive is caught on import.
    let corrupt = tmp.path().join("corrupt");
    let layout = TestLayout::create(&corrupt, "v1", &layers());
    let p = layout.blob_path(&layout.layer_digests[1]);
    let mut data = fs::read(&p).unwrap();
    let i = data.len() / 2;
    data[i] ^= 1;
    fs::write(&p, data).unwrap();
    let corrupt_tar = tmp.path().join("corrupt.tar");
    tar_dir(&corrupt, &corrupt_tar);
    let r = ImageRef::parse(&format!("oci-archive:{}", corrupt_tar.display())).unwrap();
    let store = ImageStore::with_settings(tmp.path().join("store3"), RegistrySettings::default());
    let err = pull_with(&store, &r).unwrap_err();
    assert!(matches!(err, ImageError::DigestMismatch { .. }), "{err}");
}

#[test]
fn rm_and_prune_keep_what_is_shared_deployed_or_mounted() {
    let env = Env::new("team/app");
    let base = layers();
    let (m1, l1, _) = env.reg.push_image(Some("r1"), &base, "amd64");
    let mut more = base.clone();
    more.push((
        TarBuilder::new().file("r2", "2", 0o644).build(),
        Compression::Gzip,
    ));
    let (m2, l2, _) = env.reg.push_image(Some("r2"), &more, "amd64");
    let (m3, _, _) = env.reg.push_image(
        Some("r3"),
        &[(
            TarBuilder::new().file("r3", "3", 0o644).build(),
            Compression::Gzip,
        )],
        "amd64",
    );
    let (r1, r2, r3) = (
        env.reference("team/app:r1"),
        env.reference("team/app:r2"),
        env.reference("team/app:r3"),
    );
    for r in [&r1, &r2, &r3] {
        env.pull(r).unwrap();
    }
    let stored = |d: &Digest| {
        env.tmp
            .path()
            .join("store/blobs/sha256")
            .join(d.hex())
            .is_file()
    };
    let unpacked = |d: &Digest| env.tmp.path().join("store/rootfs").join(d.hex()).is_dir();

    // rm r1: its layers are shared with r2 and stay; its manifest and rootfs go.
    let rep = env.store.remove(&r1, &InUse::default()).unwrap();
    assert!(rep.rootfs_removed, "{rep:?}");
    assert!(!unpacked(&m1) && !stored(&m1));
    assert!(l1.iter().all(stored));
    let err = env.store.remove(&r1, &InUse::default()).unwrap_err();
    assert!(matches!(err, ImageError::NotRecorded { .. }), "{err}");

    // prune keeping r2 (deployed), with r3's rootfs mounted: r3's record and blobs go, its
    // rootfs stays; r2 stays whole.
    let in_use = InUse {
        rootfs: BTreeSet::from([m3.clone()]),
        ..Default::default()
    };
    let dry = env
        .store
        .prune(
            std::slice::from_ref(&r2),
            &Default::default(),
            &in_use,
            Duration::ZERO,
            true,
        )
        .unwrap();
    assert_eq!(dry.records_removed, vec![r3.to_string()]);
    assert!(stored(&m3), "dry run removed something");
    let rep = env
        .store
        .prune(
            std::slice::from_ref(&r2),
            &Default::default(),
            &in_use,
            Duration::ZERO,
            false,
        )
        .unwrap();
    assert_eq!(rep.records_removed, vec![r3.to_string()]);
    assert_eq!(rep.rootfs_in_use, vec![m3.to_string()]);
    assert!(!stored(&m3) && unpacked(&m3));
    assert!(stored(&m2) && unpacked(&m2) && l2.iter().all(stored));
    let names: Vec<String> = env
        .store
        .list()
        .unwrap()
        .into_iter()
        .map(|i| i.record.reference)
        .collect();
    assert_eq!(names, vec![r2.to_string()]);

    // Nothing deployed, nothing mounted, a grace period covering everything: all stays.
    let rep = env
        .store
        .prune(
            &[],
            &Default::default(),
            &InUse::default(),
            Duration::from_secs(3600),
            false,
        )
        .unwrap();
    assert!(
        rep.records_removed.is_empty() && rep.blobs_removed == 0 && rep.rootfs_removed.is_empty(),
        "{rep:?}"
    );
    // A manifest a recorded deployment pins is kept, whatever its tag says now.
    let pinned: std::collections::BTreeSet<String> = env
        .store
        .list()
        .unwrap()
        .into_iter()
        .map(|i| i.record.manifest)
        .collect();
    let blobs_before = env.blob_files();
    let rep = env
        .store
        .prune(&[], &pinned, &InUse::default(), Duration::ZERO, false)
        .unwrap();
    assert!(
        rep.records_removed.is_empty()
            && rep.blobs_removed == 0
            && rep.rootfs_removed.iter().all(|d| !pinned.contains(d)),
        "{rep:?}"
    );
    assert_eq!(env.blob_files(), blobs_before);

    // Without grace, everything goes.
    let rep = env
        .store
        .prune(
            &[],
            &Default::default(),
            &InUse::default(),
            Duration::ZERO,
            false,
        )
        .unwrap();
    assert_eq!(rep.records_removed, vec![r2.to_string()]);
    assert!(env.blob_files().is_empty(), "{:?}", env.blob_files());
    let left: Vec<String> = fs::read_dir(env.tmp.path().join("store/rootfs"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

#[test]
fn progress_events_count_downloaded_bytes() {
    #[derive(Default)]
    struct Rec(Mutex<(u64, u64, usize, usize)>);
    impl super::progress::Progress for Rec {
        fn begin(&self, _: &str, layers: usize, total: u64) {
            let mut g = self.0.lock().unwrap();
            g.0 = total;
            g.2 = layers;
        }
        fn blob_bytes(&self, _: &Digest, n: u64) {
            self.0.lock().unwrap().1 += n;
        }
        fn blob_done(&self, _: &Digest) {
            self.0.lock().unwrap().3 += 1;
        }
    }
    let env = Env::new("team/app");
    let (_, _, manifest) = env.reg.push_image(Some("v1"), &layers(), "amd64");
    let total: u64 = manifest["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["size"].as_u64().unwrap())
        .sum();
    let rec = Arc::new(Rec::default());
    let store = store_for(env.tmp.path(), &env.reg.host()).with_progress(rec.clone());
    let r = env.reference("team/app:v1");
    let img = store.resolve(&r).unwrap();
    store
        .ensure_rootfs_with(&img, store.source(&r).unwrap().as_ref(), is_root())
        .unwrap();
    let g = rec.0.lock().unwrap();
    assert_eq!((g.0, g.2), (total, 3));
    // Manifest and config were downloaded during resolution, before `begin`.
    assert!(g.1 >= total, "{} < {total}", g.1);
    assert!(g.3 >= 3);
}

fn pull_layers(store: &ImageStore, r: &ImageRef) -> Result<Vec<PathBuf>, ImageError> {
    let img = store.resolve(r)?;
    let source = store.source(r)?;
    store.ensure_layers_with(&img, source.as_ref(), is_root())
}

fn layer_dirs(env: &Env) -> Vec<String> {
    sorted_names(&env.tmp.path().join("store/layers"))
}

/// The names in `dir`, sorted; none if it does not exist.
fn sorted_names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .map(|rd| {
            rd.map(|e| e.unwrap().file_name().into_string().unwrap())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// The layer store: a revision that adds one small layer to an image already here fetches
/// and unpacks that layer only, a layer that fails to unpack leaves nothing visible, and
/// rm/prune remove a layer once no image has it and no instance mounts it.
#[test]
fn a_second_revision_fetches_and_unpacks_only_its_new_layer() {
    use std::os::unix::fs::MetadataExt;
    let env = Env::new("team/app");
    let base = layers();
    let (_, l1, _) = env.reg.push_image(Some("r1"), &base, "amd64");
    let mut more = base.clone();
    more.push((
        TarBuilder::new().file("etc/REVISION", "r2", 0o644).build(),
        Compression::Gzip,
    ));
    let (m2, l2, _) = env.reg.push_image(Some("r2"), &more, "amd64");
    let (r1, r2) = (env.reference("team/app:r1"), env.reference("team/app:r2"));

    let d1 = pull_layers(&env.store, &r1).unwrap();
    assert_eq!(d1.len(), 3);
    let inodes =
        |d: &[PathBuf]| -> Vec<u64> { d.iter().map(|p| fs::metadata(p).unwrap().ino()).collect() };
    let before = inodes(&d1);
    let d2 = pull_layers(&env.store, &r2).unwrap();
    assert_eq!(d2.len(), 4);
    assert_eq!(
        &d2[..3],
        &d1[..],
        "the shared layers are the same directories"
    );
    assert_eq!(inodes(&d2[..3]), before, "and were not unpacked again");
    for l in &l1 {
        assert_eq!(env.reg.requests(&l.to_string()), 1, "{l} fetched once");
    }
    assert_eq!(env.reg.requests(&l2[3].to_string()), 1);
    // The new layer's directory holds only its own file.
    let mut own: Vec<_> = walk(&d2[3]);
    own.sort();
    assert_eq!(own, vec!["etc", "etc/REVISION"]);
    let top_first: Vec<PathBuf> = d2.iter().rev().cloned().collect();
    let read = |p: &str| super::read_in_layers(&top_first, p, 1000).unwrap();
    assert_eq!(read("etc/REVISION").as_deref(), Some("r2"));
    assert_eq!(read("etc/new").as_deref(), Some("new"));
    assert_eq!(read("etc/old"), None, "whited out in layer 2");
    // Pulling again changes nothing.
    assert_eq!(pull_layers(&env.store, &r2).unwrap(), d2);
    assert_eq!(env.store.unpacked_layers(&m2), Some(d2.clone()));
    let listed = env.store.list().unwrap();
    let row = listed
        .iter()
        .find(|i| i.record.manifest == m2.to_string())
        .unwrap();
    assert_eq!(row.layers, 4);
    assert!(
        row.shared_bytes > row.unique_bytes && row.unique_bytes > 0,
        "{row:?}"
    );

    // A layer that fails half way (a tar cut inside an entry) leaves no directory and no
    // temporary one; the shared layers stay.
    let mut bad = TarBuilder::new()
        .file("big", &"y".repeat(10_000), 0o644)
        .build();
    bad.truncate(3000);
    let mut broken = base.clone();
    broken.push((bad, Compression::None));
    env.reg.push_image(Some("r3"), &broken, "amd64");
    let err = pull_layers(&env.store, &env.reference("team/app:r3")).unwrap_err();
    assert!(err.to_string().contains("truncated"), "{err}");
    let names = layer_dirs(&env);
    assert!(!names.iter().any(|n| n.starts_with(".tmp-")), "{names:?}");
    assert_eq!(
        names.iter().filter(|n| n.len() == 64).count(),
        4,
        "{names:?}"
    );

    // A crashed unpack's leftover is removed by the next unpack of that layer.
    let chain = d2[3].file_name().unwrap().to_str().unwrap().to_string();
    crate::image::store::remove_tree(&d2[3]).unwrap();
    fs::create_dir(
        env.tmp
            .path()
            .join(format!("store/layers/.tmp-{chain}-999999")),
    )
    .unwrap();
    assert_eq!(pull_layers(&env.store, &r2).unwrap(), d2);
    assert!(!layer_dirs(&env).iter().any(|n| n.starts_with(".tmp-")));

    // rm r1: every layer is r2's too and stays. Prune with r2's layers mounted keeps them.
    let rep = env.store.remove(&r1, &InUse::default()).unwrap();
    assert_eq!((rep.layers_removed, rep.layers_kept), (0, 3), "{rep:?}");
    let mounted = format!(
        "1 2 0:1 / /x rw - overlay overlay rw,lowerdir={},upperdir=/u\n",
        top_first
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join(":")
    );
    let in_use = InUse::from_mountinfo(&mounted, Path::new("/nowhere"), Path::new("/nowhere"));
    let rep = env
        .store
        .prune(&[], &Default::default(), &in_use, Duration::ZERO, false)
        .unwrap();
    assert_eq!(rep.layers_in_use.len(), 4, "{rep:?}");
    assert!(d2.iter().all(|d| d.is_dir()));
    // A layer in use as the lower of an unpack (its lock held shared) stays.
    let base = d2[0].file_name().unwrap().to_string_lossy().into_owned();
    let hold = super::lock::lock_shared(&env.tmp.path().join(format!("store/layers/.lock-{base}")))
        .unwrap();
    let rep = env
        .store
        .prune(
            &[],
            &Default::default(),
            &InUse::default(),
            Duration::ZERO,
            false,
        )
        .unwrap();
    assert_eq!(rep.layers_removed.len(), 3, "{rep:?}");
    assert!(d2[0].is_dir());
    drop(hold);
    // Unmounted, unrecorded, unused: all go, with their records.
    let rep = env
        .store
        .prune(
            &[],
            &Default::default(),
            &InUse::default(),
            Duration::ZERO,
            false,
        )
        .unwrap();
    assert_eq!(rep.layers_removed.len(), 1, "{rep:?}");
    assert!(rep.bytes_freed > 300_000, "{rep:?}");
    assert!(
        layer_dirs(&env)
            .iter()
            .all(|n| !n.starts_with(|c: char| c.is_ascii_hexdigit())),
        "{:?}",
        layer_dirs(&env)
    );
    assert_eq!(env.store.unpacked_layers(&m2), None);
}

fn walk(root: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(p) = stack.pop() {
        for e in fs::read_dir(&p).unwrap() {
            let e = e.unwrap();
            out.push(e.path().strip_prefix(root).unwrap().display().to_string());
            if e.file_type().unwrap().is_dir() {
                stack.push(e.path());
            }
        }
    }
    out
}

/// Unpacking follows the download: the first files of a layer are unpacked while the
/// registry still holds back the rest of its blob, and the result is whole and verified.
#[test]
fn a_layer_unpacks_while_it_downloads() {
    let env = Env::new("team/app");
    let mut t = TarBuilder::new();
    t.file("first", "1", 0o644)
        .file("big", &"z".repeat(2_000_000), 0o644);
    let (_, l, _) = env
        .reg
        .push_image(Some("s"), &[(t.build(), Compression::None)], "amd64");
    env.reg.with(|s| {
        s.stall
            .insert(l[0].to_string(), (100_000, Duration::from_millis(1500)))
    });
    let r = env.reference("team/app:s");
    let store = env.store.clone();
    let started = Instant::now();
    let pull = std::thread::spawn(move || pull_layers(&store, &r));
    let layers = env.tmp.path().join("store/layers");
    let mut seen = None;
    while started.elapsed() < Duration::from_millis(1300) && seen.is_none() {
        seen = fs::read_dir(&layers).ok().and_then(|rd| {
            rd.flatten()
                .filter(|e| e.file_name().to_string_lossy().starts_with(".tmp-"))
                .find(|e| fs::read_to_string(e.path().join("first")).is_ok_and(|c| c == "1"))
                .map(|_| started.elapsed())
        });
        std::thread::sleep(Duration::from_millis(5));
    }
    let dirs = pull.join().unwrap().unwrap();
    let total = started.elapsed();
    let at = seen.expect("nothing of the layer was unpacked while its download was held back");
    assert!(total >= Duration::from_millis(1500), "{total:?}");
    assert_eq!(fs::metadata(dirs[0].join("big")).unwrap().len(), 2_000_000);
    println!("first file unpacked after {at:?}, pull done after {total:?}");
}
