//! Helpers for the integration tests, which run inside the project's systemd sandbox
//! (tests/sandbox/sandbox.sh): real systemd as PID 1 over D-Bus, real runc/crun, real journald.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

pub const SHIM: &str = env!("CARGO_BIN_EXE_shim");
pub const TESTAPP: &str = env!("CARGO_BIN_EXE_shim-testapp");

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// True inside the sandbox (systemd is PID 1 and answers). Outside it, every test says it is
/// skipped and why, loudly, instead of passing silently.
pub fn in_sandbox() -> bool {
    let ok = Path::new("/run/systemd/system").is_dir()
        && std::fs::read_to_string("/proc/1/comm").is_ok_and(|c| c.trim() == "systemd");
    if !ok {
        eprintln!(
            "SKIP: not inside a systemd sandbox; run `tests/sandbox/sandbox.sh up` and the tests with `.ci/run` (or tests/run-integration.sh)"
        );
    }
    ok
}

macro_rules! require_sandbox {
    () => {
        if !crate::common::in_sandbox() {
            return;
        }
    };
}
pub(crate) use require_sandbox;

pub fn run(cmd: &mut Command) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    out
}

pub fn sh(script: &str) -> Output {
    run(Command::new("bash").args(["-c", script]))
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).to_string()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).to_string()
}

/// Runs shim with `--config`; returns the output.
pub fn shim(config: &Path, args: &[&str]) -> Output {
    run(Command::new(SHIM).arg("--config").arg(config).args(args))
}

/// Runs shim and asserts success.
pub fn shim_ok(config: &Path, args: &[&str]) -> String {
    let o = shim(config, args);
    assert!(
        o.status.success(),
        "shim {args:?} failed ({:?}):\nstdout:\n{}\nstderr:\n{}",
        o.status.code(),
        stdout(&o),
        stderr(&o)
    );
    stdout(&o)
}

/// The test app image: an OCI layout with tags `rev1`, `rev2`, `revbad`, `revcrash` (built once per test run with
/// umoci, by tests/sandbox/build-test-image.sh).
pub fn image_layout() -> &'static Path {
    static LAYOUT: OnceLock<PathBuf> = OnceLock::new();
    LAYOUT.get_or_init(|| {
        let dir = PathBuf::from("/var/lib/shim-test/images/testapp");
        let script = repo_root().join("tests/sandbox/build-test-image.sh");
        // revbad: health always fails; revcrash: exits 3 at boot, before listening.
        for (tag, env) in [
            ("rev1", ""),
            ("rev2", ""),
            ("revbad", "APP_HEALTH_FAIL=1"),
            ("revcrash", "APP_CRASH_AFTER_MS=50 APP_BOOT_DELAY_MS=500"),
        ] {
            let o = run(Command::new("bash")
                .arg(&script)
                .arg(&dir)
                .arg(tag)
                .arg(tag)
                .arg(TESTAPP)
                .env("IMAGE_ENV", env));
            assert!(
                o.status.success(),
                "building test image: {}\n{}",
                stdout(&o),
                stderr(&o)
            );
        }
        dir
    })
}

/// A definitions directory with `services.toml` = `text` ({layout} replaced).
pub struct TestConfig {
    pub dir: tempfile::TempDir,
}

impl TestConfig {
    pub fn new(text: &str) -> TestConfig {
        let dir = tempfile::tempdir().expect("tempdir");
        let text = text.replace("{layout}", &image_layout().display().to_string());
        std::fs::write(dir.path().join("services.toml"), text).expect("write config");
        TestConfig { dir }
    }
    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

/// `shim status --json` rows for one service.
pub fn status(config: &Path, id: &str) -> Vec<serde_json::Value> {
    let out = shim_ok(config, &["status", "--id", id, "--json"]);
    serde_json::from_str::<Vec<serde_json::Value>>(&out)
        .unwrap_or_else(|e| panic!("status --json is not JSON ({e}): {out}"))
}

/// HTTP GET on the sandbox's loopback; returns (status, body) or None if not answering.
/// The unit name of instance `index` of `process` of service `id`, as `shim status` shows it
/// (names carry the deployment's tag, which tests do not compute).
pub fn instance_unit(config: &Path, id: &str, process: &str, index: u64) -> String {
    wait_for(
        Duration::from_secs(10),
        "the instance in shim status",
        || {
            status(config, id)
                .into_iter()
                .find(|r| r["process"] == process && r["instance"] == index)
                .and_then(|r| r["unit"].as_str().map(str::to_string))
        },
    )
}

/// Whether `shim show` output plans instance `index` of `process` of `id` at `revision`.
pub fn shows_instance(out: &str, id: &str, process: &str, revision: &str, index: u32) -> bool {
    out.lines().any(|l| {
        l.strip_prefix(&format!("# shim-{id}-{process}-{revision}-"))
            .is_some_and(|rest| rest.ends_with(&format!("-{index}.service")))
    })
}

pub fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect_timeout(
        &([127, 0, 0, 1], port).into(),
        Duration::from_millis(500),
    )
    .ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).ok()?;
    let code = buf.split_whitespace().nth(1)?.parse().ok()?;
    let body = buf
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Some((code, body))
}

/// Polls `f` every 50 ms until it returns Some, or panics after `timeout` with `what`.
pub fn wait_for<T>(timeout: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        if start.elapsed() > timeout {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Waits until the instance on `port` answers `/` with 200 and returns the body.
pub fn wait_answer(port: u16) -> String {
    wait_for(
        Duration::from_secs(20),
        &format!("an answer on port {port}"),
        || {
            http_get(port, "/")
                .filter(|(c, _)| *c == 200)
                .map(|(_, b)| b)
        },
    )
}

/// `systemctl show -p PROP --value UNIT`.
pub fn unit_prop(unit: &str, prop: &str) -> String {
    stdout(&run(
        Command::new("systemctl").args(["show", "-p", prop, "--value", unit])
    ))
    .trim()
    .to_string()
}

/// Names of loaded units matching a pattern.
pub fn units_matching(pattern: &str) -> Vec<String> {
    let o = run(Command::new("systemctl").args([
        "list-units",
        "--all",
        "--plain",
        "--no-legend",
        "--no-pager",
        pattern,
    ]));
    stdout(&o)
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .collect()
}

/// Every pid in a cgroup and below it.
pub fn cgroup_pids(cgroup: &Path) -> Vec<u32> {
    let mut pids = Vec::new();
    let Ok(procs) = std::fs::read_to_string(cgroup.join("cgroup.procs")) else {
        return pids;
    };
    pids.extend(procs.lines().filter_map(|l| l.parse::<u32>().ok()));
    if let Ok(entries) = std::fs::read_dir(cgroup) {
        for e in entries.flatten() {
            if e.path().is_dir() {
                pids.extend(cgroup_pids(&e.path()));
            }
        }
    }
    pids
}

/// The cgroup of `unit`: in its service's slice (`shim.slice/shim-<id>.slice/`), or directly
/// in `shim.slice` (probe units); a path that does not exist when the unit has none.
pub fn unit_cgroup(unit: &str) -> PathBuf {
    let top = PathBuf::from("/sys/fs/cgroup/shim.slice");
    if let Ok(entries) = std::fs::read_dir(&top) {
        for e in entries.flatten() {
            let p = e.path().join(unit);
            if e.file_name().to_string_lossy().ends_with(".slice") && p.exists() {
                return p;
            }
        }
    }
    top.join(unit)
}

/// podman's store for shim's containers (shim's `Dirs::podman`, default dirs).
pub const PODMAN_ROOT: &str = "/var/lib/shim/podman";
pub const PODMAN_RUNROOT: &str = "/run/shim/podman";

/// `podman` on shim's store.
pub fn podman(args: &[&str]) -> Output {
    run(Command::new("podman")
        .args(["--root", PODMAN_ROOT, "--runroot", PODMAN_RUNROOT])
        .args(args))
}

/// Makes podman usable on this host the way docs/podman.md tells operators to: in the sandbox
/// the cgroup v2 tree has no pids controller (podman's default pids limit would fail every
/// start) and there is no CAP_SYS_RESOURCE (crun, podman's default runtime here, fails to
/// raise RLIMIT_MEMLOCK). Writes the sandbox's own /etc/containers/containers.conf (the
/// sandbox's /etc is a throw-away overlay) and says what it set.
pub fn configure_podman_host() {
    static DONE: OnceLock<()> = OnceLock::new();
    DONE.get_or_init(|| {
        let controllers =
            std::fs::read_to_string("/sys/fs/cgroup/cgroup.controllers").unwrap_or_default();
        let cap_sys_resource = std::fs::read_to_string("/proc/self/status")
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix("CapBnd:"))
            .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
            .is_some_and(|c| c & (1 << 24) != 0);
        let mut containers = String::new();
        let mut engine = String::new();
        if !controllers.split_whitespace().any(|c| c == "pids") {
            containers.push_str("pids_limit = 0\n");
        }
        if !cap_sys_resource {
            engine.push_str("runtime = \"runc\"\n");
        }
        let text = format!("[containers]\n{containers}[engine]\n{engine}");
        eprintln!("podman host configuration (/etc/containers/containers.conf):\n{text}");
        std::fs::create_dir_all("/etc/containers").expect("mkdir /etc/containers");
        std::fs::write("/etc/containers/containers.conf", text).expect("write containers.conf");
    });
}

/// Container ids the runtime still has state for (for podman: names in shim's store).
pub fn runtime_containers(runtime: &str) -> Vec<String> {
    let o = if runtime == "podman" {
        let o = podman(&["ps", "-a", "--format", "{{.Names}}"]);
        assert!(o.status.success(), "podman ps: {}", stderr(&o));
        o
    } else {
        run(Command::new(runtime).args(["list", "-q"]))
    };
    stdout(&o)
        .lines()
        .map(|l| l.trim().to_string())
        .filter(|l| !l.is_empty())
        .collect()
}

/// Mounts whose mount point contains `needle`.
pub fn mounts_containing(needle: &str) -> Vec<String> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_whitespace().nth(4))
        .filter(|m| m.contains(needle))
        .map(str::to_string)
        .collect()
}

pub fn pid_alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// Whether crun can load its eBPF device filter here: it needs CAP_SYS_RESOURCE (in the
/// bounding set) to raise RLIMIT_MEMLOCK. Without it shim refuses crun services.
pub fn crun_can_filter_devices() -> bool {
    const CAP_SYS_RESOURCE: u32 = 24;
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("CapBnd:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .is_some_and(|caps| caps & (1 << CAP_SYS_RESOURCE) != 0)
}

/// On a host where crun cannot filter devices: `args` (a start or a run of a crun service)
/// is refused with a message saying why, and nothing is left. Says that the crun test is
/// skipped, and why.
pub fn assert_crun_refused(config: &Path, args: &[&str], unit_glob: &str) {
    let o = shim(config, args);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{args:?}: {err}");
    assert!(err.contains("cannot filter devices on this host"), "{err}");
    assert!(units_matching(unit_glob).is_empty(), "{args:?} left units");
    eprintln!(
        "crun: refused as it must be on this host (no CAP_SYS_RESOURCE: no eBPF device filter); the crun run-through is skipped here"
    );
}
