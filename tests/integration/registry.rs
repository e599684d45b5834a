//! Registry pulls against a real registry: Debian's `docker-registry` (the distribution
//! project's registry) on the sandbox's loopback, one instance without authentication
//! (127.0.0.1:5000) and one with htpasswd basic auth (127.0.0.1:5001), each started by the
//! tests as a transient unit with a config file they write. Images are multi-layer
//! (whiteouts, hardlinks; tests/sandbox/build-registry-image.sh) and pushed with
//! `skopeo copy`. Covered: pull, unpack identical to `umoci unpack`, start and answer, basic
//! auth and the auth file's mode, OCI archives, resumed and failed downloads (through a
//! truncating proxy in the test), the fallback to the store when the registry is gone,
//! prune, and bad inputs each failing clearly with nothing started. Path traversal in layers
//! is also covered without a registry by the unit tests `image::unpack_tests::refuses_*` and
//! `image::store_tests::traversal_in_image_fails_without_publishing`.
//!
//! Not covered here: token (Bearer) authentication against the real registry, which needs a
//! token server with signing certificates; the unit tests `image::pull_tests` cover the
//! token flow against a fake registry.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use sha2::{Digest as _, Sha256};

use crate::common::*;

const PLAIN: &str = "127.0.0.1:5000";
const BASIC: &str = "127.0.0.1:5001";
const USER: &str = "shim-ci";
const PASSWORD: &str = "s3cret-pass";
pub(crate) const WORK: &str = "/var/lib/shim-test/registry";

/// Built and pushed once per test binary run.
struct Fixture {
    /// OCI layout with tags rev1, rev2 (multi-layer) and corrupt (same, but a layer of its
    /// own, corrupted in the registry's storage).
    layout: PathBuf,
}

pub(crate) fn sh_ok(script: &str) -> String {
    let o = sh(script);
    assert!(
        o.status.success(),
        "{script}\nfailed ({:?}):\n{}\n{}",
        o.status.code(),
        stdout(&o),
        stderr(&o)
    );
    stdout(&o)
}

fn registry_config(name: &str, addr: &str, auth: bool) -> String {
    let mut c = format!(
        "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {WORK}/{name}-data\n  delete:\n    enabled: true\nhttp:\n  addr: {addr}\n"
    );
    if name == "tls" {
        c.push_str(&format!(
            "  tls:\n    certificate: {WORK}/tls/server.crt\n    key: {WORK}/tls/server.key\n"
        ));
    }
    if auth {
        c.push_str(&format!(
            "auth:\n  htpasswd:\n    realm: shim-test\n    path: {WORK}/htpasswd\n"
        ));
    }
    c
}

/// Starts (or restarts, empty) a registry as a transient unit and waits until it answers.
pub(crate) fn start_registry(name: &str, addr: &str, auth: bool) {
    let unit = format!("shim-test-registry-{name}");
    let _ = sh(&format!(
        "systemctl stop {unit} 2>/dev/null; systemctl reset-failed {unit} 2>/dev/null"
    ));
    let _ = std::fs::remove_dir_all(format!("{WORK}/{name}-data"));
    let config = format!("{WORK}/{name}.yml");
    std::fs::write(&config, registry_config(name, addr, auth)).unwrap();
    sh_ok(&format!(
        "systemd-run --quiet --unit {unit} --collect /usr/bin/docker-registry serve {config}"
    ));
    // Our unit must be the one answering (not some other registry on the same port).
    wait_for(Duration::from_secs(20), &format!("registry {addr}"), || {
        let o = sh(&format!(
            "systemctl is-active --quiet {unit} && curl -sk -o /dev/null -w '%{{http_code}}' {}://{addr}/v2/",
            if name == "tls" { "https" } else { "http" }
        ));
        matches!(stdout(&o).trim(), "200" | "401").then_some(())
    });
}

pub(crate) fn push(layout: &Path, tag: &str, dest: &str, creds: bool) {
    let creds = if creds {
        format!("--dest-creds {USER}:{PASSWORD}")
    } else {
        String::new()
    };
    sh_ok(&format!(
        "skopeo copy --quiet --all --dest-tls-verify=false {creds} oci:{}:{tag} docker://{dest}",
        layout.display()
    ));
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let testapp = image_layout();
        std::fs::create_dir_all(WORK).unwrap();
        let layout = PathBuf::from(WORK).join("layout");
        let _ = std::fs::remove_dir_all(&layout);
        let script = repo_root().join("tests/sandbox/build-registry-image.sh");
        let unique = format!("corrupt-{}", std::process::id());
        for (src, dst, marker) in [
            ("rev1", "rev1", "rev1"),
            ("rev2", "rev2", "rev2"),
            ("rev1", "corrupt", unique.as_str()),
            ("rev1", "rev3", "rev3"),
        ] {
            sh_ok(&format!(
                "bash {} {} {src} {} {dst} {marker}",
                script.display(),
                testapp.display(),
                layout.display()
            ));
        }
        // The packaged registry unit listens on :5000 with its own config.
        let _ = sh("systemctl stop docker-registry.service 2>/dev/null");
        sh_ok(&format!(
            "htpasswd -Bbn {USER} {PASSWORD} > {WORK}/htpasswd"
        ));
        start_registry("plain", PLAIN, false);
        start_registry("basic", BASIC, true);
        push(&layout, "rev1", &format!("{PLAIN}/team/app:rev1"), false);
        push(&layout, "rev2", &format!("{PLAIN}/team/app:rev2"), false);
        push(&layout, "rev3", &format!("{PLAIN}/team/app:rev3"), false);
        push(
            &layout,
            "corrupt",
            &format!("{PLAIN}/team/corrupt:v1"),
            false,
        );
        push(&layout, "rev1", &format!("{BASIC}/team/app:rev1"), true);
        Fixture { layout }
    })
}

/// A state directory of its own for each test: its own content store and records.
fn state_dir(name: &str) -> PathBuf {
    let p = PathBuf::from(format!("/var/lib/shim/regtest-{name}"));
    let _ = std::fs::remove_dir_all(&p);
    p
}

fn shim_at(state: &Path, config: &Path, args: &[&str]) -> Output {
    run(Command::new(SHIM)
        .env("SHIM_STATE_DIR", state)
        .arg("--config")
        .arg(config)
        .args(args))
}

fn shim_at_ok(state: &Path, config: &Path, args: &[&str]) -> String {
    let o = shim_at(state, config, args);
    assert!(
        o.status.success(),
        "shim {args:?} failed ({:?}):\n{}\n{}",
        o.status.code(),
        stdout(&o),
        stderr(&o)
    );
    stdout(&o)
}

/// A definitions dir: `[shim]` with the given insecure registries and auth file, and one
/// service `id` running `image`.
fn config(id: &str, image: &str, insecure: &[&str], auth_file: &Path) -> TestConfig {
    let list: Vec<String> = insecure.iter().map(|h| format!("{h:?}")).collect();
    TestConfig::new(&format!(
        r#"
[shim]
port_range = [23000, 23999]
insecure_registries = [{}]
auth_file = "{}"

[services.{id}]
image = "{image}"

[services.{id}.processes.web]
health = {{ path = "/health" }}
stop_timeout = "5s"
"#,
        list.join(", "),
        auth_file.display()
    ))
}

// --- tree comparison ------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq, Eq)]
struct Node {
    kind: &'static str,
    mode: u32,
    uid: u32,
    gid: u32,
    /// Symlink target, content digest, or device numbers.
    detail: String,
    /// Not for directories (umoci sets some to the time it ran).
    mtime: Option<(i64, i64)>,
}

fn snapshot(root: &Path) -> (BTreeMap<String, Node>, BTreeSet<Vec<String>>) {
    let mut nodes = BTreeMap::new();
    let mut inodes: BTreeMap<u64, Vec<String>> = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(path) = stack.pop() {
        let m = std::fs::symlink_metadata(&path).unwrap();
        let rel = path.strip_prefix(root).unwrap().display().to_string();
        let ft = m.file_type();
        let (kind, detail) = if ft.is_dir() {
            for e in std::fs::read_dir(&path).unwrap() {
                stack.push(e.unwrap().path());
            }
            ("dir", String::new())
        } else if ft.is_symlink() {
            (
                "symlink",
                std::fs::read_link(&path).unwrap().display().to_string(),
            )
        } else if ft.is_file() {
            (
                "file",
                hex::encode(Sha256::digest(std::fs::read(&path).unwrap())),
            )
        } else if ft.is_fifo() {
            ("fifo", String::new())
        } else {
            ("other", format!("{:x}", m.rdev()))
        };
        if !ft.is_dir() {
            inodes.entry(m.ino()).or_default().push(rel.clone());
        }
        nodes.insert(
            rel,
            Node {
                kind,
                mode: m.mode() & 0o7777,
                uid: m.uid(),
                gid: m.gid(),
                detail,
                mtime: (!ft.is_dir()).then(|| (m.mtime(), m.mtime_nsec())),
            },
        );
    }
    let links = inodes
        .into_values()
        .filter(|g| g.len() > 1)
        .map(|mut g| {
            g.sort();
            g
        })
        .collect();
    (nodes, links)
}

/// Differences between two trees, as lines.
fn compare_trees(umoci: &Path, shim: &Path) -> (usize, usize, Vec<String>) {
    let (a, al) = snapshot(umoci);
    let (b, bl) = snapshot(shim);
    let mut diffs = Vec::new();
    let paths: BTreeSet<&String> = a.keys().chain(b.keys()).collect();
    for p in &paths {
        if a.get(*p) != b.get(*p) {
            diffs.push(format!(
                "{p}:\n  umoci: {:?}\n  shim:  {:?}",
                a.get(*p),
                b.get(*p)
            ));
        }
    }
    if al != bl {
        diffs.push(format!("hardlinks:\n  umoci: {al:?}\n  shim:  {bl:?}"));
    }
    (paths.len(), al.len(), diffs)
}

/// An image as its instances see it: its layer directories (lowest first, from `shim image
/// ls --json`) under a read-only overlay mount, unmounted on drop.
struct View {
    mnt: PathBuf,
    dirs: Vec<PathBuf>,
}

impl Drop for View {
    fn drop(&mut self) {
        let _ = sh(&format!("umount {}", self.mnt.display()));
    }
}

fn layer_dirs(state: &Path, config: &Path, reference: &str) -> Vec<PathBuf> {
    let json: serde_json::Value =
        serde_json::from_str(&shim_at_ok(state, config, &["image", "ls", "--json"])).unwrap();
    let row = json
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["reference"] == reference)
        .unwrap_or_else(|| panic!("{reference} not listed: {json}"));
    row["layer_dirs"]
        .as_array()
        .unwrap_or_else(|| panic!("no layer_dirs for {reference}: {row}"))
        .iter()
        .map(|d| PathBuf::from(d.as_str().unwrap()))
        .collect()
}

fn merged_view(state: &Path, config: &Path, reference: &str, name: &str) -> View {
    let dirs = layer_dirs(state, config, reference);
    let mnt = PathBuf::from(WORK).join(format!("view-{name}"));
    let _ = sh(&format!("umount {} 2>/dev/null", mnt.display()));
    std::fs::create_dir_all(&mnt).unwrap();
    let lower: Vec<String> = dirs.iter().rev().map(|d| d.display().to_string()).collect();
    sh_ok(&format!(
        "mount -t overlay overlay -o ro,lowerdir={} {}",
        lower.join(":"),
        mnt.display()
    ));
    View { mnt, dirs }
}

// --- tests ------------------------------------------------------------------------------

/// Pull from the registry; the rootfs equals `umoci unpack` of the same image; `shim image
/// ls` lists it; a service on that image starts and answers; a second pull downloads nothing.
#[test]
fn registry_pull_matches_umoci_and_starts() {
    require_sandbox!();
    let f = fixture();
    let state = state_dir("pull");
    let cfg = config(
        "regapp",
        &format!("{PLAIN}/team/app:{{revision}}"),
        &[PLAIN],
        Path::new("/nonexistent/auth.json"),
    );
    let reference = format!("{PLAIN}/team/app:rev1");
    let out = shim_at_ok(&state, cfg.path(), &["image", "pull", &reference]);
    assert!(
        out.starts_with(&format!("pulled {reference} sha256:")),
        "{out}"
    );
    assert!(out.contains("layers unpacked now, 0 already here"), "{out}");
    let view = merged_view(&state, cfg.path(), &reference, "pull");
    let rootfs = view.mnt.clone();

    let bundle = PathBuf::from(WORK).join("umoci-bundle");
    let _ = std::fs::remove_dir_all(&bundle);
    sh_ok(&format!(
        "umoci unpack --image {}:rev1 {}",
        f.layout.display(),
        bundle.display()
    ));
    let (paths, links, diffs) = compare_trees(&bundle.join("rootfs"), &rootfs);
    assert!(diffs.is_empty(), "trees differ:\n{}", diffs.join("\n"));
    assert!(paths > 100, "only {paths} paths compared");
    assert!(links >= 2, "expected hardlink groups, got {links}");
    // The layers really had whiteouts: the deleted paths are gone in both.
    assert!(!rootfs.join("etc/hostname").exists() && !rootfs.join("data/dir").exists());
    assert_eq!(
        std::fs::read_to_string(rootfs.join("data/a-link")).unwrap(),
        "second version\n"
    );
    println!("compared {paths} paths and {links} hardlink groups with umoci: identical");

    let ls = shim_at_ok(&state, cfg.path(), &["image", "ls"]);
    let line = ls
        .lines()
        .find(|l| l.starts_with(&reference))
        .unwrap_or_else(|| panic!("{reference} not listed:\n{ls}"));
    let n = view.dirs.len();
    assert!(n >= 3, "{n} layers");
    assert!(
        line.contains("complete") && line.contains(&format!(" {n} layers ")),
        "{ls}"
    );
    let json: serde_json::Value =
        serde_json::from_str(&shim_at_ok(&state, cfg.path(), &["image", "ls", "--json"])).unwrap();
    assert_eq!(json[0]["reference"], reference.as_str());
    assert_eq!(json[0]["unpacked"], true);

    // Pulling again: the manifest is asked for, no blob.
    let blobs_before = std::fs::read_dir(state.join("images/blobs/sha256"))
        .unwrap()
        .count();
    let again = shim_at_ok(&state, cfg.path(), &["image", "pull", &reference]);
    assert!(
        again.contains(&format!("0 layers unpacked now, {n} already here")),
        "{again}"
    );
    assert_eq!(
        std::fs::read_dir(state.join("images/blobs/sha256"))
            .unwrap()
            .count(),
        blobs_before
    );

    // start pulls rev2 itself, before touching any unit, and the instance answers.
    let out = shim_at_ok(
        &state,
        cfg.path(),
        &["start", "--id", "regapp", "--revision", "rev2"],
    );
    let rows = status(cfg.path(), "regapp");
    assert_eq!(rows.len(), 1, "{out}\n{rows:?}");
    let body = wait_answer(rows[0]["port"].as_u64().unwrap() as u16);
    assert!(body.contains("revision=rev2"), "{body}");
    shim_at_ok(&state, cfg.path(), &["stop", "--id", "regapp"]);
}

#[test]
fn registry_basic_auth_and_auth_file_mode() {
    require_sandbox!();
    fixture();
    let state = state_dir("auth");
    let auth = PathBuf::from(WORK).join("auth.json");
    let _ = std::fs::remove_file(&auth);
    let cfg = config(
        "authapp",
        &format!("{BASIC}/team/app:{{revision}}"),
        &[BASIC],
        &auth,
    );
    let reference = format!("{BASIC}/team/app:rev1");

    // No credentials: refused, exit 1, the registry named.
    let o = shim_at(&state, cfg.path(), &["image", "pull", &reference]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(
        stderr(&o).contains(&format!("registry {BASIC} refused access"))
            && stderr(&o).contains("no credentials"),
        "{}",
        stderr(&o)
    );

    // Credentials in a file others can read: refused before any request, exit 2.
    let entry = sh_ok(&format!("printf %s '{USER}:{PASSWORD}' | base64 -w0"));
    std::fs::write(
        &auth,
        format!(r#"{{"auths": {{"{BASIC}": {{"auth": "{entry}"}}}}}}"#),
    )
    .unwrap();
    std::fs::set_permissions(&auth, std::fs::Permissions::from_mode(0o644)).unwrap();
    let o = shim_at(
        &state,
        cfg.path(),
        &["start", "--id", "authapp", "--revision", "rev1"],
    );
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        stderr(&o).contains(&auth.display().to_string()) && stderr(&o).contains("mode 0644"),
        "{}",
        stderr(&o)
    );
    assert!(units_matching("shim-authapp-*").is_empty());

    std::fs::set_permissions(&auth, std::fs::Permissions::from_mode(0o600)).unwrap();
    let out = shim_at_ok(&state, cfg.path(), &["image", "pull", &reference]);
    assert!(out.starts_with("pulled"), "{out}");
}

/// Each a clear error, the right exit code, and no unit started.
#[test]
fn registry_bad_inputs_start_nothing() {
    require_sandbox!();
    let f = fixture();
    let state = state_dir("bad");
    let nowhere = Path::new("/nonexistent/auth.json");

    // A manifest list with an arm64 image only.
    let arm = PathBuf::from(WORK).join("arm-layout");
    let _ = std::fs::remove_dir_all(&arm);
    sh_ok(&format!(
        "skopeo copy --quiet oci:{}:rev1 oci:{}:base",
        f.layout.display(),
        arm.display()
    ));
    write_arm_only_index(&arm);
    push(&arm, "v1", &format!("{PLAIN}/team/arm:v1"), false);

    // A layer that writes outside the rootfs.
    let evil = PathBuf::from(WORK).join("evil-layout");
    let escape = format!("/tmp/shim-evil-{}", std::process::id());
    write_evil_layout(&evil, &escape);
    push(&evil, "v1", &format!("{PLAIN}/team/evil:v1"), false);

    // The corrupt tag's own last layer, corrupted in the registry's storage.
    let corrupt_layer = corrupt_last_layer(f);

    // Not OCI archives.
    let docker_like = PathBuf::from(WORK).join("docker-save.tar");
    sh_ok(&format!(
        "d=$(mktemp -d) && echo '[]' > $d/manifest.json && tar -C $d -cf {} manifest.json && rm -r $d",
        docker_like.display()
    ));

    struct Case {
        name: &'static str,
        image: String,
        revision: &'static str,
        code: i32,
        needles: Vec<String>,
        within: Duration,
    }
    let case = |name, image: String, revision, code, needles: &[&str]| Case {
        name,
        image,
        revision,
        code,
        needles: needles.iter().map(|s| s.to_string()).collect(),
        within: Duration::from_secs(60),
    };
    let mut cases = vec![
        case(
            "unknown tag",
            format!("{PLAIN}/team/app:{{revision}}"),
            "nope",
            2,
            &["manifest \"nope\" not found", "available tags: rev1, rev2"],
        ),
        case(
            "unknown repository",
            format!("{PLAIN}/team/missing:{{revision}}"),
            "v1",
            2,
            &["repository \"team/missing\" not found"],
        ),
        case(
            "another platform only",
            format!("{PLAIN}/team/arm:{{revision}}"),
            "v1",
            2,
            &[
                "no manifest for platform linux/amd64",
                "available: linux/arm64",
            ],
        ),
        case(
            "corrupted blob",
            format!("{PLAIN}/team/corrupt:{{revision}}"),
            "v1",
            1,
            &["digest mismatch", &corrupt_layer],
        ),
        case(
            "path traversal in a layer",
            format!("{PLAIN}/team/evil:{{revision}}"),
            "v1",
            1,
            &["refusing tar entry", "escapes the rootfs"],
        ),
        case(
            "archive that is not an OCI archive",
            format!("oci-archive:{WORK}/{{revision}}.tar"),
            "docker-save",
            2,
            &["not an OCI archive", "docker save"],
        ),
    ];
    let mut down = case(
        "registry down",
        "127.0.0.1:5009/team/app:{revision}".to_string(),
        "rev1",
        1,
        &["cannot reach registry 127.0.0.1:5009", "Connection refused"],
    );
    down.within = Duration::from_secs(10);
    cases.push(down);

    for c in cases {
        let id = "badreg";
        let cfg = config(id, &c.image, &[PLAIN, "127.0.0.1:5009"], nowhere);
        let started = Instant::now();
        let o = shim_at(
            &state,
            cfg.path(),
            &["start", "--id", id, "--revision", c.revision],
        );
        let took = started.elapsed();
        let err = stderr(&o);
        println!(
            "{}: exit {:?} in {took:?}: {}",
            c.name,
            o.status.code(),
            err.trim()
        );
        assert_eq!(o.status.code(), Some(c.code), "{}: {err}", c.name);
        for n in &c.needles {
            assert!(err.contains(n.as_str()), "{}: {err:?} lacks {n:?}", c.name);
        }
        assert!(took < c.within, "{}: took {took:?}", c.name);
        assert!(
            units_matching(&format!("shim-{id}-*")).is_empty(),
            "{}: units started",
            c.name
        );
    }
    assert!(
        !Path::new(&escape).exists(),
        "the evil layer wrote {escape}"
    );
    // The corrupt blob left no partial download and no rootfs.
    let hex = corrupt_layer.trim_start_matches("sha256:");
    let leftovers: Vec<String> = std::fs::read_dir(state.join("images/blobs/sha256"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.contains(hex))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

/// Downloads cut short resume with Range requests; a server that keeps cutting them (and
/// ignores ranges) fails the pull clearly; a registry that went away is replaced by what the
/// store holds.
#[test]
fn registry_truncated_downloads_and_registry_gone() {
    require_sandbox!();
    fixture();
    let nowhere = Path::new("/nonexistent/auth.json");

    let proxy = Proxy::start(PLAIN, ProxyMode::CutFirstBlobs(2, 4096));
    let host = proxy.host();
    let state = state_dir("trunc");
    let cfg = config(
        "truncapp",
        &format!("{host}/team/app:{{revision}}"),
        &[&host],
        nowhere,
    );
    let reference = format!("{host}/team/app:rev1");
    shim_at_ok(&state, cfg.path(), &["image", "pull", &reference]);
    let log = proxy.log();
    assert!(
        log.iter()
            .any(|l| l.contains("/blobs/") && l.contains("range=4096")),
        "no resumed request in {log:#?}"
    );

    // The registry is gone: the recorded pull serves, with a warning, and a service starts.
    drop(proxy);
    let o = shim_at(&state, cfg.path(), &["image", "pull", &reference]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("using the manifest pulled earlier"),
        "{}",
        stderr(&o)
    );
    shim_at_ok(
        &state,
        cfg.path(),
        &["start", "--id", "truncapp", "--revision", "rev1"],
    );
    let rows = status(cfg.path(), "truncapp");
    wait_answer(rows[0]["port"].as_u64().unwrap() as u16);
    shim_at_ok(&state, cfg.path(), &["stop", "--id", "truncapp"]);

    let proxy = Proxy::start(PLAIN, ProxyMode::CutAllIgnoreRange(4096));
    let host = proxy.host();
    let state = state_dir("trunc2");
    let cfg = config(
        "truncapp",
        &format!("{host}/team/app:{{revision}}"),
        &[&host],
        nowhere,
    );
    let o = shim_at(
        &state,
        cfg.path(),
        &["start", "--id", "truncapp", "--revision", "rev2"],
    );
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("download failed after") && stderr(&o).contains("4096 of"),
        "{}",
        stderr(&o)
    );
    assert!(units_matching("shim-truncapp-*").is_empty());
}

#[test]
fn oci_archive_pull() {
    require_sandbox!();
    let f = fixture();
    let state = state_dir("archive");
    let archive = PathBuf::from(WORK).join("app-rev1.tar");
    let _ = std::fs::remove_file(&archive);
    sh_ok(&format!(
        "skopeo copy --quiet oci:{}:rev1 oci-archive:{}:rev1",
        f.layout.display(),
        archive.display()
    ));
    let cfg = config(
        "archapp",
        &format!("oci-archive:{WORK}/app-{{revision}}.tar:{{revision}}"),
        &[],
        Path::new("/nonexistent/auth.json"),
    );
    let out = shim_at_ok(
        &state,
        cfg.path(),
        &[
            "image",
            "pull",
            &format!("oci-archive:{}:rev1", archive.display()),
        ],
    );
    let reference = format!("oci-archive:{}:rev1", archive.display());
    assert!(out.contains("layers unpacked now"), "{out}");
    let view = merged_view(&state, cfg.path(), &reference, "archive");
    assert!(view.mnt.join("data/new-link").is_file());
    drop(view);
    shim_at_ok(
        &state,
        cfg.path(),
        &["start", "--id", "archapp", "--revision", "rev1"],
    );
    let rows = status(cfg.path(), "archapp");
    assert!(wait_answer(rows[0]["port"].as_u64().unwrap() as u16).contains("revision=rev1"));
    shim_at_ok(&state, cfg.path(), &["stop", "--id", "archapp"]);
}

/// prune keeps the deployed revision and whatever a running instance has mounted, and
/// removes the rest; rm forgets one image.
#[test]
fn image_prune_and_rm() {
    require_sandbox!();
    fixture();
    let state = state_dir("prune");
    let cfg = config(
        "pruneapp",
        &format!("{PLAIN}/team/app:{{revision}}"),
        &[PLAIN],
        Path::new("/nonexistent/auth.json"),
    );
    let r1 = format!("{PLAIN}/team/app:rev1");
    let r2 = format!("{PLAIN}/team/app:rev3");
    shim_at_ok(
        &state,
        cfg.path(),
        &["start", "--id", "pruneapp", "--revision", "rev1"],
    );
    shim_at_ok(&state, cfg.path(), &["image", "pull", &r2]);
    let dirs1 = layer_dirs(&state, cfg.path(), &r1);
    let dirs2 = layer_dirs(&state, cfg.path(), &r2);
    // rev1 and rev3 share their base layer: one directory.
    let only2: Vec<&PathBuf> = dirs2.iter().filter(|d| !dirs1.contains(d)).collect();
    assert!(
        !only2.is_empty() && only2.len() < dirs2.len(),
        "{dirs1:?} {dirs2:?}"
    );
    let rootfs2 = only2[0].clone();
    let rows = status(cfg.path(), "pruneapp");
    let port = rows[0]["port"].as_u64().unwrap() as u16;

    let dry = shim_at_ok(
        &state,
        cfg.path(),
        &["image", "prune", "--grace", "0s", "--dry-run"],
    );
    assert!(dry.contains(&format!("would remove image {r2}")), "{dry}");
    assert!(rootfs2.is_dir());
    let out = shim_at_ok(&state, cfg.path(), &["image", "prune", "--grace", "0s"]);
    assert!(out.contains(&format!("removed image {r2}")), "{out}");
    assert!(!out.contains(&format!("removed image {r1}")), "{out}");
    assert!(only2.iter().all(|d| !d.exists()), "{out}");
    assert!(
        dirs1.iter().all(|d| d.is_dir()),
        "rev1's layers, shared or not, stay: {out}"
    );
    let ls = shim_at_ok(&state, cfg.path(), &["image", "ls"]);
    assert!(ls.contains(&r1) && !ls.contains(&r2), "{ls}");
    assert!(wait_answer(port).contains("revision=rev1"));

    // rm of the running image keeps its rootfs (mounted) and says so.
    let out = shim_at_ok(&state, cfg.path(), &["image", "rm", &r1]);
    assert!(
        out.contains(&format!("0 layers removed, {} kept", dirs1.len())),
        "{out}"
    );
    assert!(dirs1.iter().all(|d| d.is_dir()));
    let o = shim_at(&state, cfg.path(), &["image", "rm", &r1]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("is not a pulled image"),
        "{}",
        stderr(&o)
    );
    assert!(wait_answer(port).contains("revision=rev1"));
    shim_at_ok(&state, cfg.path(), &["stop", "--id", "pruneapp"]);
}

/// HTTPS is the default, verified against the host's trust store: a registry with a
/// certificate from a CA the host trusts works without any setting; plain HTTP to it (by
/// listing it as insecure) fails clearly.
#[test]
fn registry_https_with_the_host_trust_store() {
    require_sandbox!();
    let f = fixture();
    const TLS: &str = "127.0.0.1:5443";
    let dir = PathBuf::from(WORK).join("tls");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    // A CA, installed in the (sandbox's) trust store, and a server certificate for the IP.
    sh_ok(&format!(
        "cd {d} && openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj '/CN=shim test CA' \
           -keyout ca.key -out ca.crt 2>/dev/null \
         && openssl req -newkey rsa:2048 -nodes -subj '/CN=127.0.0.1' -keyout server.key -out server.csr 2>/dev/null \
         && printf 'subjectAltName=IP:127.0.0.1\\nbasicConstraints=CA:FALSE\\n' > ext \
         && openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 2 \
              -extfile ext -out server.crt 2>/dev/null \
         && cp ca.crt /usr/local/share/ca-certificates/shim-test-ca.crt && update-ca-certificates >/dev/null 2>&1",
        d = dir.display()
    ));
    start_registry("tls", TLS, false);
    push(&f.layout, "rev1", &format!("{TLS}/team/app:rev1"), false);
    let state = state_dir("tls");
    let reference = format!("{TLS}/team/app:rev1");
    let nowhere = Path::new("/nonexistent/auth.json");
    let cfg = config(
        "tlsapp",
        &format!("{TLS}/team/app:{{revision}}"),
        &[],
        nowhere,
    );
    let out = shim_at_ok(&state, cfg.path(), &["image", "pull", &reference]);
    assert!(out.starts_with("pulled"), "{out}");

    let cfg = config(
        "tlsapp",
        &format!("{TLS}/team/app:{{revision}}"),
        &[TLS],
        nowhere,
    );
    let o = shim_at(
        &state_dir("tls2"),
        cfg.path(),
        &["image", "pull", &reference],
    );
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("registry answered 400"),
        "{}",
        stderr(&o)
    );

    let _ = sh("rm -f /usr/local/share/ca-certificates/shim-test-ca.crt && update-ca-certificates --fresh >/dev/null 2>&1; systemctl stop shim-test-registry-tls");
}

// --- images written by hand ---------------------------------------------------------------

fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

fn write_blob(layout: &Path, data: &[u8]) -> String {
    let hex = sha256_hex(data);
    std::fs::create_dir_all(layout.join("blobs/sha256")).unwrap();
    std::fs::write(layout.join("blobs/sha256").join(&hex), data).unwrap();
    format!("sha256:{hex}")
}

fn set_index(layout: &Path, manifests: Vec<serde_json::Value>) {
    let index = serde_json::json!({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": manifests});
    std::fs::write(layout.join("index.json"), index.to_string()).unwrap();
}

/// Tags `v1` in `layout` as an index listing its `base` manifest as linux/arm64 only.
fn write_arm_only_index(layout: &Path) {
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
    let mut base = index["manifests"][0].clone();
    base.as_object_mut().unwrap().remove("annotations");
    base["platform"] = serde_json::json!({"os": "linux", "architecture": "arm64"});
    let list = serde_json::json!({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": [base]});
    let bytes = list.to_string().into_bytes();
    let d = write_blob(layout, &bytes);
    set_index(
        layout,
        vec![serde_json::json!({
            "mediaType": "application/vnd.oci.image.index.v1+json", "digest": d, "size": bytes.len(),
            "annotations": {"org.opencontainers.image.ref.name": "v1"},
        })],
    );
}

/// A one-layer image whose layer holds `../../…/<escape>`.
fn write_evil_layout(layout: &Path, escape: &str) {
    let _ = std::fs::remove_dir_all(layout);
    std::fs::create_dir_all(layout.join("blobs/sha256")).unwrap();
    std::fs::write(
        layout.join("oci-layout"),
        r#"{"imageLayoutVersion":"1.0.0"}"#,
    )
    .unwrap();
    let name = format!("../../../../../../../..{escape}");
    let mut h = tar::Header::new_gnu();
    {
        let gnu = h.as_gnu_mut().unwrap();
        gnu.name[..name.len()].copy_from_slice(name.as_bytes());
    }
    h.set_entry_type(tar::EntryType::Regular);
    h.set_mode(0o644);
    h.set_size(4);
    h.set_mtime(1_600_000_000);
    h.set_cksum();
    let mut b = tar::Builder::new(Vec::new());
    b.append(&h, &b"evil"[..]).unwrap();
    let tar_bytes = b.into_inner().unwrap();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&tar_bytes).unwrap();
    let layer = gz.finish().unwrap();
    let layer_d = write_blob(layout, &layer);
    let config = serde_json::json!({
        "architecture": "amd64", "os": "linux", "config": {"Entrypoint": ["/bin/sh"]},
        "rootfs": {"type": "layers", "diff_ids": [format!("sha256:{}", sha256_hex(&tar_bytes))]},
    })
    .to_string()
    .into_bytes();
    let config_d = write_blob(layout, &config);
    let manifest = serde_json::json!({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_d, "size": config.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": layer_d, "size": layer.len()}],
    })
    .to_string()
    .into_bytes();
    let m = write_blob(layout, &manifest);
    set_index(
        layout,
        vec![serde_json::json!({
            "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": m, "size": manifest.len(),
            "annotations": {"org.opencontainers.image.ref.name": "v1"},
        })],
    );
}

/// Flips a byte in the middle of the `corrupt` tag's last layer as the registry stores it;
/// returns its digest.
fn corrupt_last_layer(f: &Fixture) -> String {
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(f.layout.join("index.json")).unwrap()).unwrap();
    let desc = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["annotations"]["org.opencontainers.image.ref.name"] == "corrupt")
        .expect("corrupt tag")
        .clone();
    let blob = |d: &str| {
        f.layout
            .join("blobs/sha256")
            .join(d.trim_start_matches("sha256:"))
    };
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(blob(desc["digest"].as_str().unwrap())).unwrap())
            .unwrap();
    let layer = manifest["layers"].as_array().unwrap().last().unwrap()["digest"]
        .as_str()
        .unwrap()
        .to_string();
    let hex = layer.trim_start_matches("sha256:");
    let data = PathBuf::from(format!(
        "{WORK}/plain-data/docker/registry/v2/blobs/sha256/{}/{hex}/data",
        &hex[..2]
    ));
    let mut bytes = std::fs::read(&data).unwrap_or_else(|e| panic!("{}: {e}", data.display()));
    let i = bytes.len() / 2;
    bytes[i] ^= 0x5a;
    std::fs::write(&data, bytes).unwrap();
    layer
}

// --- a proxy that cuts downloads short ----------------------------------------------------

#[derive(Clone, Copy)]
enum ProxyMode {
    /// Cut the first N blob responses after this many body bytes.
    CutFirstBlobs(u32, usize),
    /// Cut every blob response, and drop Range headers so each attempt starts over.
    CutAllIgnoreRange(usize),
}

struct Proxy {
    port: u16,
    stop: Arc<AtomicBool>,
    log: Arc<Mutex<Vec<String>>>,
}

impl Proxy {
    fn start(upstream: &'static str, mode: ProxyMode) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let stop = Arc::new(AtomicBool::new(false));
        let log = Arc::new(Mutex::new(Vec::new()));
        let cuts_left = Arc::new(Mutex::new(match mode {
            ProxyMode::CutFirstBlobs(n, _) => n,
            ProxyMode::CutAllIgnoreRange(_) => u32::MAX,
        }));
        let (st, lg) = (stop.clone(), log.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if st.load(Ordering::Relaxed) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                let (lg, cuts_left) = (lg.clone(), cuts_left.clone());
                std::thread::spawn(move || {
                    let _ = relay(conn, upstream, mode, &lg, &cuts_left);
                });
            }
        });
        Proxy { port, stop, log }
    }

    fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn log(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Reads an HTTP head (up to the blank line).
fn read_head(s: &mut TcpStream) -> std::io::Result<String> {
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if s.read(&mut b)? == 0 {
            break;
        }
        head.push(b[0]);
    }
    Ok(String::from_utf8_lossy(&head).into_owned())
}

/// One request per connection: forwards it (with `Connection: close`, without `Range` in
/// the ignoring mode), and the answer, cut short if the mode says so.
fn relay(
    mut client: TcpStream,
    upstream: &str,
    mode: ProxyMode,
    log: &Mutex<Vec<String>>,
    cuts_left: &Mutex<u32>,
) -> std::io::Result<()> {
    let head = read_head(&mut client)?;
    let mut lines = head.split("\r\n").filter(|l| !l.is_empty());
    let request_line = lines.next().unwrap_or("").to_string();
    let mut out = format!("{request_line}\r\n");
    let mut range = String::new();
    for l in lines {
        let lower = l.to_ascii_lowercase();
        if lower.starts_with("connection:") {
            continue;
        }
        if let Some(r) = lower.strip_prefix("range: bytes=") {
            range = format!(" range={}", r.trim_end_matches('-'));
            if matches!(mode, ProxyMode::CutAllIgnoreRange(_)) {
                continue;
            }
        }
        out.push_str(l);
        out.push_str("\r\n");
    }
    out.push_str("Connection: close\r\n\r\n");
    log.lock().unwrap().push(format!("{request_line}{range}"));
    let mut up = TcpStream::connect(upstream)?;
    up.write_all(out.as_bytes())?;
    let resp_head = read_head(&mut up)?;
    let length: usize = resp_head
        .split("\r\n")
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())?
        })
        .unwrap_or(0);
    // Only blobs longer than the cut are cut (configs and small layers pass).
    let is_blob = request_line.contains("/blobs/sha256:")
        && length
            > match mode {
                ProxyMode::CutFirstBlobs(_, n) | ProxyMode::CutAllIgnoreRange(n) => n,
            };
    let cut = match mode {
        ProxyMode::CutFirstBlobs(_, n) | ProxyMode::CutAllIgnoreRange(n) if is_blob => {
            let mut left = cuts_left.lock().unwrap();
            if *left > 0 {
                *left -= 1;
                Some(n)
            } else {
                None
            }
        }
        _ => None,
    };
    client.write_all(resp_head.as_bytes())?;
    let mut buf = vec![0u8; 64 * 1024];
    let mut sent = 0usize;
    loop {
        let want = match cut {
            Some(n) if sent >= n => break,
            Some(n) => (n - sent).min(buf.len()),
            None => buf.len(),
        };
        let k = up.read(&mut buf[..want])?;
        if k == 0 {
            break;
        }
        client.write_all(&buf[..k])?;
        sent += k;
    }
    let _ = client.shutdown(std::net::Shutdown::Both);
    Ok(())
}

fn manifest_of(state: &Path, config: &Path, reference: &str) -> String {
    let json: serde_json::Value =
        serde_json::from_str(&shim_at_ok(state, config, &["image", "ls", "--json"])).unwrap();
    json.as_array()
        .unwrap()
        .iter()
        .find(|r| r["reference"] == reference)
        .and_then(|r| r["manifest"].as_str())
        .unwrap_or_else(|| panic!("{reference} not listed: {json}"))
        .to_string()
}

fn inode(p: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(p).unwrap().ino()
}

/// A host coming from the whole-rootfs cache of earlier versions keeps running from it; the
/// upgrades after it use the layer store, where a revision sharing layers with one already
/// here unpacks only its own; prune removes the old cache once no deployment pins it.
#[test]
fn an_old_rootfs_cache_keeps_working_and_new_revisions_share_layers() {
    require_sandbox!();
    fixture();
    let state = state_dir("layers");
    let cfg = config(
        "layapp",
        &format!("{PLAIN}/team/app:{{revision}}"),
        &[PLAIN],
        Path::new("/nonexistent/auth.json"),
    );
    let (r1, r2, r3) = (
        format!("{PLAIN}/team/app:rev1"),
        format!("{PLAIN}/team/app:rev2"),
        format!("{PLAIN}/team/app:rev3"),
    );
    // The host as an earlier shim left it: rev1 deployed and cached whole in
    // images/rootfs/<manifest>, no layer store.
    shim_at_ok(
        &state,
        cfg.path(),
        &["upgrade", "--id", "layapp", "--revision", "rev1"],
    );
    shim_at_ok(&state, cfg.path(), &["stop", "--id", "layapp"]);
    let m1 = manifest_of(&state, cfg.path(), &r1);
    let old = state
        .join("images/rootfs")
        .join(m1.trim_start_matches("sha256:"));
    {
        let view = merged_view(&state, cfg.path(), &r1, "old-cache");
        std::fs::create_dir_all(old.parent().unwrap()).unwrap();
        sh_ok(&format!("cp -a {} {}", view.mnt.display(), old.display()));
    }
    sh_ok(&format!(
        "rm -rf {0}/images/layers {0}/images/manifests",
        state.display()
    ));

    // Its recorded deployment starts from the old cache.
    shim_at_ok(&state, cfg.path(), &["start", "--id", "layapp"]);
    let unit = instance_unit(cfg.path(), "layapp", "web", 1);
    let pre = unit_prop(&unit, "ExecStartPre");
    assert!(pre.contains(&format!("--lower {}", old.display())), "{pre}");
    let port = status(cfg.path(), "layapp")[0]["port"].as_u64().unwrap() as u16;
    assert!(wait_answer(port).contains("revision=rev1"));
    assert!(
        !state.join("images/layers").exists(),
        "a start from the old cache unpacks nothing"
    );

    // rev3: the layer store; the instance stacks its layer directories.
    shim_at_ok(
        &state,
        cfg.path(),
        &["upgrade", "--id", "layapp", "--revision", "rev3"],
    );
    let dirs3 = layer_dirs(&state, cfg.path(), &r3);
    let unit = instance_unit(cfg.path(), "layapp", "web", 1);
    let pre = unit_prop(&unit, "ExecStartPre");
    for d in &dirs3 {
        assert!(
            pre.contains(&format!("--lower {}", d.display())),
            "{d:?} not in {pre}"
        );
    }
    let mounts: Vec<String> = std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter(|l| l.contains(&format!("{}/rootfs ", unit.trim_end_matches(".service"))))
        .map(str::to_string)
        .collect();
    assert_eq!(mounts.len(), 1, "{mounts:?}");
    let names: Vec<String> = dirs3
        .iter()
        .rev()
        .map(|d| d.display().to_string())
        .collect();
    assert!(
        mounts[0].contains(&format!("lowerdir={}", names.join(":"))),
        "{mounts:?}"
    );
    // rev3 is built from the test app's rev1 (it differs in /data/marker).
    let rows = status(cfg.path(), "layapp");
    assert_eq!(rows[0]["revision"], "rev3", "{rows:?}");
    assert!(wait_answer(rows[0]["port"].as_u64().unwrap() as u16).contains("revision=rev1"));
    shim_at_ok(
        &state,
        cfg.path(),
        &["upgrade", "--id", "layapp", "--revision", "rev2"],
    );
    let dirs2 = layer_dirs(&state, cfg.path(), &r2);
    let port = status(cfg.path(), "layapp")[0]["port"].as_u64().unwrap() as u16;
    assert!(wait_answer(port).contains("revision=rev2"));

    // Nothing pins rev1 any more (rev2 serves, rev3 is the previous): prune removes the old
    // cache, and keeps every layer of rev2 and rev3.
    assert!(old.is_dir());
    let out = shim_at_ok(&state, cfg.path(), &["image", "prune", "--grace", "0s"]);
    assert!(!old.exists(), "{out}");
    assert!(out.contains(&format!("removed rootfs {m1}")), "{out}");
    assert!(dirs2.iter().chain(&dirs3).all(|d| d.is_dir()), "{out}");
    assert!(wait_answer(port).contains("revision=rev2"));

    // rev1 again shares its base layer with rev3: that directory is reused as it is.
    let base = (dirs3[0].clone(), inode(&dirs3[0]));
    let out = shim_at_ok(&state, cfg.path(), &["image", "pull", &r1]);
    let dirs1 = layer_dirs(&state, cfg.path(), &r1);
    assert_eq!(dirs1[0], base.0, "{out}");
    assert_eq!(
        inode(&base.0),
        base.1,
        "the shared layer was unpacked again"
    );
    assert!(
        out.contains(&format!(
            "{} layers unpacked now, 1 already here",
            dirs1.len() - 1
        )),
        "{out}"
    );
    let ls = shim_at_ok(&state, cfg.path(), &["image", "ls"]);
    println!("{ls}");
    shim_at_ok(&state, cfg.path(), &["stop", "--id", "layapp"]);
}

/// `shim image pull` SIGKILLed at many points of its download and unpack: no layer
/// directory is ever visible half unpacked (each one has its record, and the image's merged
/// view after a final pull is what umoci unpacks), and no leftover survives the next pull.
#[test]
fn a_pull_killed_at_any_point_leaves_no_partial_layer() {
    require_sandbox!();
    let f = fixture();
    let state = state_dir("killed-pull");
    let cfg = config(
        "killapp",
        &format!("{PLAIN}/team/app:{{revision}}"),
        &[PLAIN],
        Path::new("/nonexistent/auth.json"),
    );
    let reference = format!("{PLAIN}/team/app:rev2");
    let layers = state.join("images/layers");
    let mut kills = 0;
    for delay_ms in [5u64, 15, 30, 50, 80, 120, 200, 300] {
        let mut child = Command::new(SHIM)
            .env("SHIM_STATE_DIR", &state)
            .args(["--config"])
            .arg(cfg.path())
            .args(["image", "pull", &reference])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(delay_ms));
        if child.try_wait().unwrap().is_none() {
            kills += 1;
        }
        let _ = child.kill();
        let _ = child.wait();
        for e in std::fs::read_dir(&layers).into_iter().flatten().flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.len() == 64 && e.file_type().unwrap().is_dir() {
                assert!(
                    layers.join(format!("{name}.json")).is_file(),
                    "layer {name} visible without its record after a kill at {delay_ms} ms"
                );
            }
        }
        // Start over from an empty layer store now and then, so later kills land early.
        if delay_ms == 50 {
            sh_ok(&format!("rm -rf {}", layers.display()));
        }
    }
    assert!(
        kills >= 3,
        "only {kills} pulls were still running when killed"
    );
    shim_at_ok(&state, cfg.path(), &["image", "pull", &reference]);
    let left: Vec<String> = std::fs::read_dir(&layers)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".tmp-"))
        .collect();
    let view = merged_view(&state, cfg.path(), &reference, "killed");
    let bundle = PathBuf::from(WORK).join("umoci-bundle-killed");
    let _ = std::fs::remove_dir_all(&bundle);
    sh_ok(&format!(
        "umoci unpack --image {}:rev2 {}",
        f.layout.display(),
        bundle.display()
    ));
    let (paths, _, diffs) = compare_trees(&bundle.join("rootfs"), &view.mnt);
    assert!(diffs.is_empty(), "trees differ:\n{}", diffs.join("\n"));
    assert!(paths > 100);
    // Leftovers of other layers than the ones this pull needed are for prune to sweep.
    drop(view);
    shim_at_ok(
        &state,
        cfg.path(),
        &["image", "prune", "--grace", "0s", "--dry-run"],
    );
    println!("{kills} pulls killed mid-way; leftovers after the final pull: {left:?}");
}
