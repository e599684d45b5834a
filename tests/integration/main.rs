//! Integration tests of the spine, against real systemd (over D-Bus), real runc and crun,
//! real journald, and an OCI image built by umoci. They run inside the systemd sandbox; see
//! `common::in_sandbox`.

mod common;
mod cron;
mod deploy;
mod hardening;
mod logs;
mod registry;
mod run;
mod supervise;
mod surface;
mod systemctl;
mod traffic;
mod upgrade;

use std::process::Command;
use std::time::Duration;

use common::*;

fn service_toml(id: &str, runtime: &str, count: u32) -> String {
    format!(
        r#"
[shim]
port_range = [21000, 21999]

[services.{id}]
image = "oci:{{layout}}:{{revision}}"
runtime = "{runtime}"
env = {{ FROM_DEFINITION = "yes" }}

[services.{id}.processes.web]
count = {count}
health = {{ path = "/health" }}
stop_timeout = "5s"
"#
    )
}

fn ports_of(rows: &[serde_json::Value]) -> Vec<u16> {
    rows.iter()
        .map(|r| r["port"].as_u64().expect("port in status --json") as u16)
        .collect()
}

/// Done-when 1–4 for one runtime: three instances answer on their own ports; `systemctl stop`
/// of one leaves nothing; SIGKILL of a unit's main process is repaired by systemd; the journal
/// has the app's output; SIGKILL of everything plus `shim stop` leaves nothing.
///
/// The main process is the container's init for runc/crun and conmon for podman (Quadlet's
/// model, docs/podman.md); for podman, SIGKILL of the container's init is checked as well.
fn lifecycle(runtime: &str) {
    let podman = runtime == "podman";
    if podman {
        configure_podman_host();
    }
    let id = format!("life_{runtime}");
    let cfg = TestConfig::new(&service_toml(&id, runtime, 3));
    let out = shim_ok(cfg.path(), &["start", "--id", &id, "--revision", "rev1"]);
    assert_eq!(out.matches("started").count(), 3, "{out}");

    // 1. Three instances, each on its own port, shown by status --json, each answering.
    let rows = status(cfg.path(), &id);
    assert_eq!(rows.len(), 3, "{rows:?}");
    let mut ports = ports_of(&rows);
    ports.sort();
    ports.dedup();
    assert_eq!(ports.len(), 3, "ports must differ: {rows:?}");
    for r in &rows {
        assert_eq!(r["state"], "active", "{r}");
        assert_eq!(r["revision"], "rev1");
        // What status shows (for runc/crun from the instance's directory, see
        // src/cli/status.rs) is what systemd says.
        let unit = r["unit"].as_str().unwrap();
        assert_eq!(r["main_pid"].to_string(), unit_prop(unit, "MainPID"), "{r}");
        assert_eq!(r["restarts"], 0, "{r}");
        // Uptime (runc/crun: from the pid file's mtime) within a second of what systemd's
        // ExecMainStartTimestampMonotonic gives (/proc/uptime: the same clock, no suspend).
        let up_now: f64 = std::fs::read_to_string("/proc/uptime")
            .unwrap()
            .split_whitespace()
            .next()
            .unwrap()
            .parse()
            .unwrap();
        let started: f64 = unit_prop(unit, "ExecMainStartTimestampMonotonic")
            .parse()
            .unwrap();
        let by_systemd = up_now - started / 1e6;
        let shown = r["uptime_secs"].as_u64().unwrap() as f64;
        assert!(
            (shown - by_systemd).abs() < 2.0,
            "{r}: systemd says {by_systemd:.2} s"
        );
        let body = wait_answer(r["port"].as_u64().unwrap() as u16);
        assert!(body.contains("revision=rev1"), "{body}");
        assert!(
            body.contains(&format!("instance={}", r["instance"])),
            "{body}"
        );
    }
    let table = shim_ok(cfg.path(), &["status", "--id", &id]);
    for p in &ports {
        assert!(
            table.contains(&p.to_string()),
            "table lacks port {p}:\n{table}"
        );
    }

    // Running start again changes nothing: same units, same main PIDs.
    let pids_before: Vec<_> = rows.iter().map(|r| r["main_pid"].clone()).collect();
    let again = shim_ok(cfg.path(), &["start", "--id", &id, "--revision", "rev1"]);
    assert!(again.contains("nothing to do"), "{again}");
    assert!(!again.contains("started"), "{again}");
    let pids_after: Vec<_> = status(cfg.path(), &id)
        .iter()
        .map(|r| r["main_pid"].clone())
        .collect();
    assert_eq!(pids_before, pids_after);

    // 4. The app's stdout is in the journal under SHIM_SERVICE.
    let journal = wait_for(Duration::from_secs(10), "app output in the journal", || {
        let o = run(Command::new("journalctl").args([
            "--no-pager",
            "-o",
            "cat",
            &format!("SHIM_SERVICE={id}"),
        ]));
        let s = stdout(&o);
        s.contains("testapp listening").then_some(s)
    });
    assert!(journal.contains("revision=rev1"), "{journal}");

    let unit0 = rows[0]["unit"].as_str().unwrap().to_string();
    let stem0 = unit0.trim_end_matches(".service").to_string();
    if podman {
        // The main PID is conmon; the container's init is in the payload cgroup below.
        let main: u32 = unit_prop(&unit0, "MainPID").parse().unwrap();
        let comm = std::fs::read_to_string(format!("/proc/{main}/comm")).unwrap_or_default();
        assert_eq!(comm.trim(), "conmon", "main process of {unit0}");
        // SIGKILL of the container's init: conmon exits with it, systemd restarts the unit.
        let init = podman_init_pid(&unit0);
        nix_kill(init);
        wait_for(Duration::from_secs(20), "the restarted instance", || {
            let p: u32 = unit_prop(&unit0, "MainPID").parse().ok()?;
            (p != 0 && p != main && unit_prop(&unit0, "ActiveState") == "active").then_some(p)
        });
        assert!(!pid_alive(init), "killed init {init} still there");
        let port0 = rows[0]["port"].as_u64().unwrap() as u16;
        assert!(wait_answer(port0).contains("revision=rev1"));
    }

    // 2a. systemctl stop of one unit: its container is gone, no process, no runtime state.
    let pid0: u32 = unit_prop(&unit0, "MainPID").parse().unwrap();
    assert!(
        runtime_containers(runtime).contains(&stem0),
        "runtime knows the container while it runs"
    );
    // podman mounts the container's root under its own store, named by the container's id.
    let mount_key0 = if podman {
        podman_container_id(&stem0)
    } else {
        stem0.clone()
    };
    assert!(
        !mounts_containing(&mount_key0).is_empty(),
        "no mount of {stem0} ({mount_key0}) while it runs"
    );
    let inner0 = if podman {
        podman_init_pid(&unit0)
    } else {
        pid0
    };
    let o = run(Command::new("systemctl").args(["stop", &unit0]));
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        !pid_alive(pid0),
        "main process {pid0} survived systemctl stop"
    );
    assert!(
        !pid_alive(inner0),
        "container init {inner0} survived systemctl stop"
    );
    assert!(
        !runtime_containers(runtime).contains(&stem0),
        "runtime state of {stem0} left behind"
    );
    assert!(
        mounts_containing(&mount_key0).is_empty(),
        "overlay of {stem0} still mounted: {:?}",
        mounts_containing(&mount_key0)
    );
    assert!(
        !unit_cgroup(&unit0).exists(),
        "cgroup of {unit0} left behind"
    );

    // 2b. SIGKILL of a container's init: systemd restarts the unit and it answers again.
    let unit1 = rows[1]["unit"].as_str().unwrap().to_string();
    let pid1 = rows[1]["main_pid"].as_u64().unwrap() as u32;
    let port1 = rows[1]["port"].as_u64().unwrap() as u16;
    nix_kill(pid1);
    let new_pid = wait_for(Duration::from_secs(20), "the restarted instance", || {
        let p: u32 = unit_prop(&unit1, "MainPID").parse().ok()?;
        (p != 0 && p != pid1 && unit_prop(&unit1, "ActiveState") == "active").then_some(p)
    });
    assert_ne!(new_pid, pid1);
    assert!(unit_prop(&unit1, "NRestarts").parse::<u32>().unwrap() >= 1);
    // status counts the restart and shows the new main process (podman's MainPID can still
    // change while conmon settles: compare with what systemd says at the same time).
    let row = wait_for(
        Duration::from_secs(10),
        "status of the restarted instance",
        || {
            let r = status(cfg.path(), &id)
                .into_iter()
                .find(|r| r["unit"] == unit1.as_str() && r["state"] == "active")?;
            let main = unit_prop(&unit1, "MainPID");
            (r["main_pid"].as_u64().map(|p| p.to_string()) == Some(main) && r["main_pid"] != pid1)
                .then_some(r)
        },
    );
    assert_eq!(row["restarts"], 1, "{row}");
    assert!(wait_answer(port1).contains("revision=rev1"));

    // 3. SIGKILL of every process in a unit's cgroup, then shim stop: nothing is left.
    let unit2 = rows[2]["unit"].as_str().unwrap().to_string();
    for pid in cgroup_pids(&unit_cgroup(&unit2)) {
        nix_kill(pid);
    }
    let stopped = shim_ok(cfg.path(), &["stop", "--id", &id]);
    assert!(stopped.contains("stopped"), "{stopped}");
    assert!(
        units_matching(&format!("shim-{id}-*")).is_empty(),
        "units left: {:?}",
        units_matching(&format!("shim-{id}-*"))
    );
    let leftovers: Vec<_> = runtime_containers(runtime)
        .into_iter()
        .filter(|c| c.contains(&id))
        .collect();
    assert!(leftovers.is_empty(), "runtime state left: {leftovers:?}");
    assert!(
        mounts_containing(&id).is_empty(),
        "mounts left: {:?}",
        mounts_containing(&id)
    );
    assert!(
        !std::path::Path::new(&format!("/run/shim/instances/{id}")).exists(),
        "instance dirs left"
    );
    let procs = sh(&format!(
        "ps -eo args | grep -v grep | grep -c 'shim-{id}-' || true"
    ));
    assert_eq!(stdout(&procs).trim(), "0", "processes left");
    // Stop is idempotent.
    let again = shim_ok(cfg.path(), &["stop", "--id", &id]);
    assert!(again.contains("no running instances"), "{again}");
    if podman {
        let left = sh(&format!(
            "ls {PODMAN_RUNROOT}/overlay-containers/ 2>/dev/null"
        ));
        assert_eq!(stdout(&left).trim(), "", "podman container state left");
    }
    for p in ports {
        assert!(
            http_get(p, "/").is_none(),
            "port {p} still answers after stop"
        );
    }
}

/// The container's init of a podman unit: the process in its `libpod-payload-*` cgroup.
fn podman_init_pid(unit: &str) -> u32 {
    let dir = unit_cgroup(unit);
    let payload = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .flatten()
        .find(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("libpod-payload-")
        })
        .unwrap_or_else(|| panic!("no libpod-payload cgroup below {}", dir.display()));
    let pids = cgroup_pids(&payload.path());
    *pids.first().expect("no process in the payload cgroup")
}

fn podman_container_id(name: &str) -> String {
    let o = podman(&["inspect", "--format", "{{.Id}}", name]);
    assert!(o.status.success(), "podman inspect {name}: {}", stderr(&o));
    stdout(&o).trim().to_string()
}

fn nix_kill(pid: u32) {
    let o = run(Command::new("kill").args(["-9", &pid.to_string()]));
    assert!(o.status.success(), "kill -9 {pid}: {}", stderr(&o));
}

#[test]
fn lifecycle_runc() {
    require_sandbox!();
    lifecycle("runc");
}

#[test]
fn lifecycle_crun() {
    require_sandbox!();
    if !crun_can_filter_devices() {
        let cfg = TestConfig::new(&service_toml("life_crun", "crun", 3));
        assert_crun_refused(
            cfg.path(),
            &["start", "--id", "life_crun", "--revision", "rev1"],
            "shim-life_crun-*",
        );
        return;
    }
    lifecycle("crun");
}

#[test]
fn lifecycle_podman() {
    require_sandbox!();
    lifecycle("podman");
}

/// runtime = "podman": `shim show` prints the podman unit and the env file (secrets redacted);
/// secrets reach the container only through the root-only env file, never the unit; `user`,
/// image env and `read_only` (root read-only, /tmp writable) apply as with runc/crun.
#[test]
fn podman_env_secrets_user_and_read_only() {
    require_sandbox!();
    configure_podman_host();
    let id = "psecrets";
    let secrets = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(secrets.path(), "DB_PASSWORD='hunter2-very-secret'\n").unwrap();
    let toml = format!(
        r#"
[services.psecrets]
image = "oci:{{layout}}:{{revision}}"
runtime = "podman"
env = {{ FROM_DEFINITION = "yes" }}
env_files = ["{}"]
user = "app"

[services.psecrets.processes.web]
health = {{ path = "/health" }}

[services.psecrets.processes.ro]
port = true
read_only = true
"#,
        secrets.path().display()
    );
    let cfg = TestConfig::new(&toml);
    let show = shim_ok(cfg.path(), &["show", "--id", id, "--revision", "rev1"]);
    assert!(show.contains("Type=notify"), "{show}");
    assert!(show.contains("--sdnotify=conmon"), "{show}");
    assert!(show.contains("DB_PASSWORD=<secret from"), "{show}");
    assert!(!show.contains("hunter2"), "{show}");

    shim_ok(cfg.path(), &["start", "--id", id, "--revision", "rev1"]);
    let rows = status(cfg.path(), id);
    let row = |p: &str| rows.iter().find(|r| r["process"] == p).unwrap().clone();
    let (web, ro) = (row("web"), row("ro"));
    let port = web["port"].as_u64().unwrap() as u16;
    let ro_port = ro["port"].as_u64().unwrap() as u16;
    wait_answer(port);
    wait_answer(ro_port);
    let (_, env) = http_get(port, "/env").unwrap();
    assert!(env.contains("DB_PASSWORD=hunter2-very-secret"), "{env}");
    assert!(env.contains("FROM_DEFINITION=yes"), "{env}");
    assert!(env.contains("APP_REVISION=rev1"), "image env: {env}");
    assert!(env.contains(&format!("PORT={port}")), "{env}");
    let (_, who) = http_get(port, "/whoami").unwrap();
    assert!(who.contains("uid=1000"), "{who}");
    let unit = web["unit"].as_str().unwrap().to_string();
    let shown = stdout(&run(Command::new("systemctl").args(["show", &unit])));
    assert!(
        !shown.contains("hunter2"),
        "secret visible in systemctl show"
    );
    let dir = format!(
        "/run/shim/instances/{id}/{}",
        unit.trim_end_matches(".service")
    );
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(format!("{dir}/env")).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    assert_eq!(
        std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777,
        0o700
    );
    // A writable root for web; for ro a read-only root (the app runs as uid 1000, so its own
    // writes cannot tell: the mount table does) with a writable tmpfs on /tmp.
    let root_opts = |port: u16| {
        let (code, mounts) = http_get(port, "/read?path=/proc/self/mounts").unwrap();
        assert_eq!(code, 200, "{mounts}");
        mounts
            .lines()
            .map(|l| l.split_whitespace().collect::<Vec<_>>())
            .find(|f| f.get(1) == Some(&"/"))
            .and_then(|f| f.get(3).map(|o| o.to_string()))
            .unwrap_or_else(|| panic!("no root mount in {mounts}"))
    };
    assert!(root_opts(port).starts_with("rw"), "{}", root_opts(port));
    assert!(
        root_opts(ro_port).starts_with("ro"),
        "{}",
        root_opts(ro_port)
    );
    assert_eq!(
        http_get(ro_port, "/write?path=/tmp/note&data=x").unwrap().0,
        200
    );
    shim_ok(cfg.path(), &["stop", "--id", id]);
    assert!(runtime_containers("podman").iter().all(|c| !c.contains(id)));
}

/// Secrets reach the container through config.json and never appear in unit properties;
/// definition env and image env reach it too; `user` is applied.
#[test]
fn env_secrets_and_user() {
    require_sandbox!();
    let id = "secrets";
    let secrets = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(
        secrets.path(),
        "# db\nDB_PASSWORD='hunter2-very-secret'\nexport API_KEY=k-123\n",
    )
    .unwrap();
    let toml = format!(
        r#"
[services.secrets]
image = "oci:{{layout}}:{{revision}}"
env = {{ FROM_DEFINITION = "yes" }}
env_files = ["{}"]
user = "app"

[services.secrets.processes.web]
health = {{ path = "/health" }}
"#,
        secrets.path().display()
    );
    let cfg = TestConfig::new(&toml);
    shim_ok(cfg.path(), &["start", "--id", id, "--revision", "rev1"]);
    let rows = status(cfg.path(), id);
    let port = rows[0]["port"].as_u64().unwrap() as u16;
    let unit = rows[0]["unit"].as_str().unwrap().to_string();
    wait_answer(port);
    let (_, env) = http_get(port, "/env").unwrap();
    assert!(env.contains("DB_PASSWORD=hunter2-very-secret"), "{env}");
    assert!(env.contains("API_KEY=k-123"), "{env}");
    assert!(env.contains("FROM_DEFINITION=yes"), "{env}");
    assert!(env.contains("APP_REVISION=rev1"), "image env: {env}");
    assert!(env.contains(&format!("PORT={port}")), "{env}");
    let (_, who) = http_get(port, "/whoami").unwrap();
    assert!(who.contains("uid=1000"), "{who}");
    let shown = stdout(&run(Command::new("systemctl").args(["show", &unit])));
    assert!(
        !shown.contains("hunter2"),
        "secret visible in systemctl show"
    );
    let dir = format!(
        "/run/shim/instances/{id}/{}",
        unit.trim_end_matches(".service")
    );
    let meta = std::fs::metadata(format!("{dir}/config.json")).unwrap();
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    assert_eq!(
        std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777,
        0o700
    );
    // shim show redacts.
    let show = shim_ok(cfg.path(), &["show", "--id", id, "--revision", "rev1"]);
    assert!(!show.contains("hunter2"), "{show}");
    assert!(show.contains("DB_PASSWORD=<secret from"), "{show}");
    shim_ok(cfg.path(), &["stop", "--id", id]);
}

/// Each instance has its own writable layer, discarded at restart; read_only has none.
#[test]
fn writable_layers_are_private_and_discarded() {
    require_sandbox!();
    let id = "layers";
    let toml = service_toml(id, "runc", 2)
        + "\n[services.layers.processes.ro]\ncount = 1\nport = true\nread_only = true\n";
    let cfg = TestConfig::new(&toml);
    shim_ok(cfg.path(), &["start", "--id", id, "--revision", "rev1"]);
    let rows = status(cfg.path(), id);
    let port = |proc_: &str, i: u64| {
        rows.iter()
            .find(|r| r["process"] == proc_ && r["instance"] == i)
            .map(|r| r["port"].as_u64().unwrap() as u16)
            .unwrap()
    };
    let (a, b, ro) = (port("web", 1), port("web", 2), port("ro", 1));
    for p in [a, b, ro] {
        wait_answer(p);
    }
    assert_eq!(
        http_get(a, "/write?path=/app/note&data=from-a").unwrap().0,
        200
    );
    assert_eq!(
        http_get(a, "/read?path=/app/note").unwrap(),
        (200, "from-a".into())
    );
    assert_eq!(
        http_get(b, "/read?path=/app/note").unwrap().0,
        404,
        "instance b sees a's write"
    );
    // read_only: the root is not writable, /tmp is.
    assert_ne!(http_get(ro, "/write?path=/app/note&data=x").unwrap().0, 200);
    assert_eq!(http_get(ro, "/write?path=/tmp/note&data=x").unwrap().0, 200);
    // A restart discards the layer.
    let unit_a = rows
        .iter()
        .find(|r| r["process"] == "web" && r["instance"] == 1)
        .unwrap()["unit"]
        .as_str()
        .unwrap()
        .to_string();
    let _ = http_get(a, "/admin/crash");
    wait_for(Duration::from_secs(20), "restart after crash", || {
        (unit_prop(&unit_a, "NRestarts").parse::<u32>().ok()? >= 1).then_some(())
    });
    wait_answer(a);
    assert_eq!(
        http_get(a, "/read?path=/app/note").unwrap().0,
        404,
        "layer survived a restart"
    );
    shim_ok(cfg.path(), &["stop", "--id", id]);
}

/// Done-when 6: bad definitions exit 2, name file:line and key, and start nothing.
#[test]
fn bad_definitions_exit_2_and_start_nothing() {
    require_sandbox!();
    let good = service_toml("bad", "runc", 1);
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "unknown key",
            good.replace("count = 1", "count = 1\ncolour = \"red\""),
            "colour",
        ),
        (
            "bad duration",
            good.replace("\"5s\"", "\"5 parsecs\""),
            "stop_timeout",
        ),
        (
            "bad id",
            good.replace("services.bad", "services.Bad"),
            "services.Bad",
        ),
        (
            "unknown runtime",
            good.replace("\"runc\"", "\"docker\""),
            "docker",
        ),
        (
            "negative count",
            good.replace("count = 1", "count = -2"),
            "count",
        ),
        (
            "bad signal",
            good.replace("count = 1", "count = 1\nstop_signal = \"SIGNOPE\""),
            "stop_signal",
        ),
        (
            "relative health path",
            good.replace("\"/health\"", "\"health\""),
            "health.path",
        ),
        (
            "interval too short",
            good.replace(
                "path = \"/health\"",
                "path = \"/health\", interval = \"10ms\"",
            ),
            "interval",
        ),
        (
            "no revision placeholder",
            good.replace(":{revision}", ":rev1"),
            "{revision}",
        ),
        (
            "bad image scheme",
            good.replace("oci:{layout}", "ftp:{layout}"),
            "image",
        ),
        (
            "syntax",
            good.replace("[services.bad]", "[services.bad"),
            "services.toml:",
        ),
        (
            "bad port range",
            good.replace("[21000, 21999]", "[21999, 21000]"),
            "port_range",
        ),
        (
            "bad env name",
            good.replace("FROM_DEFINITION", "\"FROM-DEF\""),
            "env",
        ),
        (
            "relative env file",
            good.replace("env = {", "env_files = [\"x.env\"]\nenv = {"),
            "env_files",
        ),
        (
            "missing env file",
            good.replace("env = {", "env_files = [\"/nonexistent/x.env\"]\nenv = {"),
            "/nonexistent/x.env",
        ),
        (
            "bad user",
            good.replace("env = {", "user = \"a:b:c\"\nenv = {"),
            "user",
        ),
        (
            "unknown user",
            good.replace("env = {", "user = \"nobody-here\"\nenv = {"),
            "nobody-here",
        ),
        (
            "no processes",
            good.split("[services.bad.processes.web]")
                .next()
                .unwrap()
                .to_string(),
            "processes",
        ),
        (
            "empty command",
            good.replace("count = 1", "count = 1\ncommand = []"),
            "command",
        ),
        (
            "timeout over interval",
            good.replace("path = \"/health\"", "path = \"/health\", timeout = \"9s\""),
            "timeout",
        ),
        (
            "port false with health",
            good.replace("count = 1", "count = 1\nport = false"),
            "port",
        ),
        (
            "unknown process key",
            good.replace("count = 1", "count = 1\nreplicas = 2"),
            "replicas",
        ),
    ];
    assert!(cases.len() >= 20);
    for (name, text, needle) in &cases {
        let cfg = TestConfig::new(text);
        let o = shim(cfg.path(), &["start", "--id", "bad", "--revision", "rev1"]);
        let err = stderr(&o);
        assert_eq!(
            o.status.code(),
            Some(2),
            "{name}: exit {:?}, stderr: {err}",
            o.status.code()
        );
        assert!(err.contains(needle), "{name}: {err:?} lacks {needle:?}");
        assert!(
            err.contains("services.toml") || err.contains(".env"),
            "{name}: no file named: {err}"
        );
        assert!(
            units_matching("shim-bad-*").is_empty(),
            "{name}: units were started"
        );
    }
    // Bad flags too: a revision with a slash, an unknown service, an unknown tag.
    let cfg = TestConfig::new(&good);
    for (args, needle) in [
        (
            vec!["start", "--id", "bad", "--revision", "a/b"],
            "--revision",
        ),
        (vec!["start", "--id", "nope", "--revision", "rev1"], "nope"),
        (vec!["start", "--id", "bad", "--revision", "rev9"], "rev9"),
    ] {
        let o = shim(cfg.path(), &args);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", stderr(&o));
        assert!(stderr(&o).contains(needle), "{args:?}: {}", stderr(&o));
    }
    assert!(units_matching("shim-bad-*").is_empty());
}

/// `shim show` is a dry run: it prints the unit and config.json and changes nothing.
#[test]
fn show_is_a_dry_run() {
    require_sandbox!();
    let cfg = TestConfig::new(&service_toml("showme", "crun", 2));
    let out = shim_ok(
        cfg.path(),
        &["show", "--id", "showme", "--revision", "rev1"],
    );
    assert!(shows_instance(&out, "showme", "web", "rev1", 1), "{out}");
    assert!(out.contains("Type=forking"), "{out}");
    assert!(out.contains("\"ociVersion\""), "{out}");
    assert!(
        out.contains("/usr/bin/crun run --detach") || out.contains("crun run --detach"),
        "{out}"
    );
    assert!(units_matching("shim-showme-*").is_empty());
    assert!(!std::path::Path::new("/run/shim/instances/showme").exists());
}

/// Definitions changed from count 2 to 1: start scales down; a different revision is refused.
#[test]
fn start_scales_and_refuses_other_revision() {
    require_sandbox!();
    let id = "scale";
    let cfg = TestConfig::new(&service_toml(id, "runc", 2));
    shim_ok(cfg.path(), &["start", "--id", id, "--revision", "rev1"]);
    assert_eq!(status(cfg.path(), id).len(), 2);
    std::fs::write(
        cfg.path().join("services.toml"),
        service_toml(id, "runc", 1).replace("{layout}", &image_layout().display().to_string()),
    )
    .unwrap();
    let out = shim_ok(cfg.path(), &["start", "--id", id, "--revision", "rev1"]);
    assert!(out.contains("scaled down"), "{out}");
    assert_eq!(status(cfg.path(), id).len(), 1);
    let o = shim(cfg.path(), &["start", "--id", id, "--revision", "rev2"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("shim upgrade"), "{}", stderr(&o));
    assert_eq!(status(cfg.path(), id)[0]["revision"], "rev1");
    shim_ok(cfg.path(), &["stop", "--id", id]);
}
