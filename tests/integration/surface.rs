//! The container surface an app needs in production (issue "production containers"): here,
//! resource limits, with runc and crun, as systemd and the container see them.

use crate::common::*;

/// The sandbox's hard limit of open files (its systemd's, which units inherit without
/// CAP_SYS_RESOURCE), and whether it may be raised here.
fn nofile_room() -> (u64, bool) {
    let hard = nofile_of("1").1.parse().unwrap_or(u64::MAX);
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let bnd = status
        .lines()
        .find_map(|l| l.strip_prefix("CapBnd:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .unwrap_or(0);
    (hard, bnd & (1 << 24) != 0)
}

fn limits_toml(id: &str, runtime: &str, nofile: u64) -> String {
    format!(
        r#"
[shim]
port_range = [29100, 29199]

[services.{id}]
image = "oci:{{layout}}:{{revision}}"
runtime = "{runtime}"
memory = "1G"
nofile = 4096

[services.{id}.processes.web]
health = {{ path = "/health" }}
memory = "256M"
cpus = 1.5
pids = 128
nofile = {nofile}
stop_timeout = "5s"

[services.{id}.processes.worker]
command = ["/bin/sh", "-c", "trap 'exit 0' TERM; while true; do sleep 1 & wait; done"]

[services.{id}.processes.hog]
memory = "32M"
command = ["/bin/sh", "-c", "trap 'exit 0' TERM; head -c 300000000 /dev/zero | tail >/dev/null; while true; do sleep 1 & wait; done"]
"#
    )
}

/// The `Max open files` line of /proc/PID/limits: (soft, hard).
fn nofile_of(pid: &str) -> (String, String) {
    let text = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = text
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap_or_else(|| panic!("no nofile line in {text}"))
        .to_string();
    let f: Vec<&str> = line.split_whitespace().collect();
    (f[3].to_string(), f[4].to_string())
}

fn limits_for(runtime: &str) {
    let id = format!("lim_{runtime}");
    let (hard, can_raise) = nofile_room();
    let nofile = if can_raise { 65536 } else { hard.min(65536) };
    if runtime == "crun" && !crun_can_filter_devices() {
        let cfg = TestConfig::new(&limits_toml(&id, runtime, nofile));
        assert_crun_refused(
            cfg.path(),
            &["start", "--id", &id, "--revision", "rev1"],
            &format!("shim-{id}-*"),
        );
        return;
    }
    if !can_raise {
        // Above what this host lets shim give: refused before anything starts, naming it.
        let cfg = TestConfig::new(&limits_toml(&id, runtime, hard + 1));
        let o = shim(cfg.path(), &["start", "--id", &id, "--revision", "rev1"]);
        assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
        assert!(
            stderr(&o).contains(&format!(
                "services.{id}.processes.web.nofile = {}",
                hard + 1
            )),
            "{}",
            stderr(&o)
        );
        assert!(units_matching(&format!("shim-{id}-*")).is_empty());
    }
    let cfg = TestConfig::new(&limits_toml(&id, runtime, nofile));
    shim_ok(cfg.path(), &["start", "--id", &id, "--revision", "rev1"]);
    let web = instance_unit(cfg.path(), &id, "web", 1);
    let worker = instance_unit(cfg.path(), &id, "worker", 1);
    // What systemd enforces on the units (the containers' cgroups are below them).
    assert_eq!(unit_prop(&web, "MemoryMax"), (256u64 << 20).to_string());
    assert_eq!(unit_prop(&web, "CPUQuotaPerSecUSec"), "1.500000s");
    assert_eq!(unit_prop(&web, "TasksMax"), "128");
    assert_eq!(unit_prop(&web, "LimitNOFILE"), nofile.to_string());
    // The worker has the service's defaults, and no cpu or pids limit of shim's.
    assert_eq!(unit_prop(&worker, "MemoryMax"), (1u64 << 30).to_string());
    assert_eq!(unit_prop(&worker, "CPUQuotaPerSecUSec"), "infinity");
    assert_eq!(unit_prop(&worker, "LimitNOFILE"), "4096");
    // What the container's processes get.
    let pid = unit_prop(&web, "MainPID");
    assert_eq!(
        nofile_of(&pid),
        (nofile.to_string(), nofile.to_string()),
        "web"
    );
    let wpid = unit_prop(&worker, "MainPID");
    assert_eq!(nofile_of(&wpid), ("4096".into(), "4096".into()), "worker");
    // Enforcement needs the memory controller, which this sandbox may not have.
    let controllers =
        std::fs::read_to_string("/sys/fs/cgroup/cgroup.controllers").unwrap_or_default();
    if controllers.split_whitespace().any(|c| c == "memory") {
        // Allocating past `memory`: the kernel's OOM killer, then systemd restarts the instance.
        let hog = instance_unit(cfg.path(), &id, "hog", 1);
        wait_for(
            std::time::Duration::from_secs(20),
            "the hog OOM-killed",
            || {
                let o = run(std::process::Command::new("journalctl").args([
                    "--no-pager",
                    "-o",
                    "cat",
                    "-u",
                    &hog,
                ]));
                stdout(&o).contains("OOM killer").then_some(())
            },
        );
    } else {
        eprintln!("limits_{runtime}: no memory controller here: enforcement not checked, only the unit properties");
    }
    // `shim show` prints them.
    let shown = shim_ok(cfg.path(), &["show", "--id", &id]);
    assert!(shown.contains("MemoryMax=268435456"), "{shown}");
    assert!(shown.contains("TasksMax=128"), "{shown}");
    shim_ok(cfg.path(), &["stop", "--id", &id]);
}

#[test]
fn limits_runc() {
    require_sandbox!();
    limits_for("runc");
}

#[test]
fn limits_crun() {
    require_sandbox!();
    limits_for("crun");
}

fn mounts_toml(id: &str) -> String {
    format!(
        r#"
[shim]
port_range = [29100, 29199]

[services.{id}]
image = "oci:{{layout}}:{{revision}}"

[services.{id}.processes.web]
health = {{ path = "/health" }}
stop_timeout = "5s"
drain = "0s"
cap_add = ["NET_RAW"]
cap_drop = ["net_bind_service"]
mounts = [
  {{ type = "bind", source = "/srv/shim-it/up", target = "/data/up" }},
  {{ type = "bind", source = "/srv/shim-it/ro", target = "/data/ro", read_only = true }},
  {{ type = "volume", source = "cache", target = "/data/cache" }},
  {{ type = "tmpfs", target = "/data/tmp", size = "8M", mode = "0700" }},
]
"#
    )
}

/// The capability bits of a process (`CapEff` in /proc/PID/status).
fn cap_eff(pid: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .unwrap()
}

/// Bind mounts (read-write and read-only), a volume that outlives an upgrade, a sized tmpfs,
/// capabilities added and dropped: as the container sees them (through /proc/PID/root).
#[test]
fn mounts_and_capabilities_runc() {
    require_sandbox!();
    let id = "mnt";
    std::fs::create_dir_all("/srv/shim-it/up").unwrap();
    std::fs::create_dir_all("/srv/shim-it/ro").unwrap();
    std::fs::write("/srv/shim-it/ro/cert.pem", "CERT").unwrap();
    let _ = std::fs::remove_dir_all(format!("/var/lib/shim/volumes/{id}"));
    // A bind source that does not exist: refused before anything starts, naming it.
    let bad = TestConfig::new(&mounts_toml(id).replace("/srv/shim-it/up", "/srv/shim-it/nope"));
    let o = shim(bad.path(), &["start", "--id", id, "--revision", "rev1"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("bind source /srv/shim-it/nope does not exist"),
        "{}",
        stderr(&o)
    );
    assert!(units_matching(&format!("shim-{id}-*")).is_empty());

    let cfg = TestConfig::new(&mounts_toml(id));
    shim_ok(cfg.path(), &["start", "--id", id, "--revision", "rev1"]);
    let unit = instance_unit(cfg.path(), id, "web", 1);
    let pid = unit_prop(&unit, "MainPID");
    let root = format!("/proc/{pid}/root");
    // Read-write bind: what the container writes is on the host.
    std::fs::write(format!("{root}/data/up/from-container"), "x").unwrap();
    assert!(std::path::Path::new("/srv/shim-it/up/from-container").exists());
    // Read-only bind: readable, not writable.
    assert_eq!(
        std::fs::read_to_string(format!("{root}/data/ro/cert.pem")).unwrap(),
        "CERT"
    );
    let e = std::fs::write(format!("{root}/data/ro/x"), "x").unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EROFS), "{e}");
    // The tmpfs: its size and mode.
    let mountinfo = std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).unwrap();
    let tmp = mountinfo
        .lines()
        .find(|l| l.split_whitespace().nth(4) == Some("/data/tmp"))
        .unwrap_or_else(|| panic!("no /data/tmp in {mountinfo}"));
    assert!(
        tmp.contains("tmpfs") && tmp.contains("size=8192k") && tmp.contains("mode=700"),
        "{tmp}"
    );
    // Capabilities: NET_RAW (13) added, NET_BIND_SERVICE (10) dropped.
    let caps = cap_eff(&pid);
    assert!(caps & (1 << 13) != 0, "CapEff {caps:x}");
    assert!(caps & (1 << 10) == 0, "CapEff {caps:x}");
    // The volume: kept by shim under /var/lib/shim/volumes, across an upgrade.
    std::fs::write(format!("{root}/data/cache/kept"), "v1").unwrap();
    assert!(std::path::Path::new(&format!("/var/lib/shim/volumes/{id}/cache/kept")).exists());
    shim_ok(cfg.path(), &["upgrade", "--id", id, "--revision", "rev2"]);
    let unit2 = instance_unit(cfg.path(), id, "web", 1);
    assert_ne!(unit2, unit);
    let pid2 = unit_prop(&unit2, "MainPID");
    assert_eq!(
        std::fs::read_to_string(format!("/proc/{pid2}/root/data/cache/kept")).unwrap(),
        "v1"
    );
    // `shim volume ls` names the instance using it; `rm` refuses while it runs.
    let ls = shim_ok(cfg.path(), &["volume", "ls", "--id", id, "--json"]);
    let vols: serde_json::Value = serde_json::from_str(&ls).unwrap();
    assert_eq!(vols[0]["name"], "cache", "{ls}");
    assert_eq!(vols[0]["bytes"], 2, "{ls}");
    assert!(
        vols[0]["used_by"]
            .as_array()
            .unwrap()
            .iter()
            .any(|u| u == &unit2),
        "{ls}"
    );
    let o = shim(cfg.path(), &["volume", "rm", "--id", id, "cache"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("in use by") && stderr(&o).contains(&unit2),
        "{}",
        stderr(&o)
    );
    assert!(std::path::Path::new(&format!("/var/lib/shim/volumes/{id}/cache/kept")).exists());
    let o = shim(cfg.path(), &["volume", "rm", "--id", id, "nope"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("volumes: cache"), "{}", stderr(&o));
    shim_ok(cfg.path(), &["stop", "--id", id]);
    assert!(
        std::path::Path::new(&format!("/var/lib/shim/volumes/{id}/cache/kept")).exists(),
        "stop keeps the volume"
    );
    let ls = shim_ok(cfg.path(), &["volume", "ls"]);
    assert!(
        ls.lines()
            .any(|l| l.starts_with(id) && l.contains("cache") && l.trim_end().ends_with('-')),
        "{ls}"
    );
    let out = shim_ok(cfg.path(), &["volume", "rm", "--id", id, "cache"]);
    assert!(out.contains("removed volume cache"), "{out}");
    assert!(!std::path::Path::new(&format!("/var/lib/shim/volumes/{id}/cache")).exists());
}

/// `init = true`: a shell as the command ignores SIGTERM as PID 1, so without an init a stop
/// waits the whole stop_timeout for SIGKILL; with tini in front it stops at once.
#[test]
fn init_makes_a_shell_stop_on_sigterm() {
    require_sandbox!();
    let id = "initd";
    let cmd = r#"command = ["/bin/sh", "-c", "while true; do sleep 1; done"]
stop_timeout = "8s""#;
    let cfg = TestConfig::new(&format!(
        "[shim]\nport_range = [29100, 29199]\n[services.{id}]\nimage = \"oci:{{layout}}:{{revision}}\"\n\
         [services.{id}.processes.plain]\n{cmd}\n[services.{id}.processes.inited]\ninit = true\n{cmd}\n"
    ));
    shim_ok(cfg.path(), &["start", "--id", id, "--revision", "rev1"]);
    let stop_secs = |process: &str| {
        let unit = instance_unit(cfg.path(), id, process, 1);
        let t = std::time::Instant::now();
        let o = run(std::process::Command::new("systemctl").args(["stop", &unit]));
        assert!(o.status.success(), "{}", stderr(&o));
        t.elapsed().as_secs_f64()
    };
    // Paused, so that the probe does not start them again while this measures.
    shim_ok(cfg.path(), &["supervise", "pause", "--id", id]);
    let with_init = stop_secs("inited");
    let without = stop_secs("plain");
    eprintln!("stop with init {with_init:.2} s, without {without:.2} s");
    assert!(with_init < 3.0, "with init: {with_init:.2} s");
    assert!(
        without >= 7.0,
        "without init the shell waited for SIGKILL: {without:.2} s"
    );
    shim_ok(cfg.path(), &["stop", "--id", id]);
}

/// `health = { tcp = true }`: the upgrade waits for a connect to `$PORT`; a process that
/// never listens fails the start, which leaves nothing running.
#[test]
fn tcp_health_checks_gate_the_start() {
    require_sandbox!();
    let id = "tcph";
    let def = |extra: &str| {
        format!(
            "[shim]\nport_range = [29100, 29199]\n[services.{id}]\nimage = \"oci:{{layout}}:{{revision}}\"\n\
             [services.{id}.processes.web]\nhealth = {{ tcp = true, interval = \"1s\", timeout = \"1s\", start_period = \"3s\" }}\n{extra}"
        )
    };
    let cfg = TestConfig::new(&def(""));
    let out = shim_ok(cfg.path(), &["start", "--id", id, "--revision", "rev1"]);
    assert!(out.contains("TCP connected"), "{out}");
    shim_ok(cfg.path(), &["stop", "--id", id]);
    // A process with a port that it never listens on.
    let deaf = TestConfig::new(&def(
        "command = [\"/bin/sh\", \"-c\", \"trap 'exit 0' TERM; while true; do sleep 1 & wait; done\"]\n",
    ));
    let o = shim(deaf.path(), &["start", "--id", id, "--revision", "rev1"]);
    assert_eq!(o.status.code(), Some(1), "{}", stdout(&o));
    assert!(
        stderr(&o).contains("did not become healthy"),
        "{}",
        stderr(&o)
    );
    assert!(
        units_matching(&format!("shim-{id}-*")).is_empty(),
        "bailed out: nothing left"
    );
}

/// Command health checks (`health = { command = [...] }`) with runc: the command runs inside
/// the instance's container, with its environment (a check that needs the service's env
/// passes only there), on a worker that has no port; it gates the start, an upgrade to a
/// definition whose check fails bails out leaving the old instances serving, and the probe
/// replaces an instance whose check starts failing.
#[test]
fn command_health_checks_run_in_the_container() {
    require_sandbox!();
    let id = "cmdh";
    let def = |check: &str| {
        format!(
            "[shim]\nport_range = [29100, 29199]\n[services.{id}]\nimage = \"oci:{{layout}}:{{revision}}\"\n\
             env = {{ CHECK_ME = \"in-the-container\" }}\n\
             [services.{id}.processes.worker]\n\
             command = [\"/bin/sh\", \"-c\", \"trap 'exit 0' TERM; while true; do sleep 1 & wait; done\"]\n\
             health = {{ command = {check}, interval = \"1s\", timeout = \"1s\", start_period = \"4s\", unhealthy_after = 2 }}\n"
        )
    };
    let good =
        r#"["/bin/sh", "-c", "test \"$CHECK_ME\" = in-the-container && test ! -e /tmp/sick"]"#;
    let cfg = TestConfig::new(&def(good));
    let show = shim_ok(cfg.path(), &["show", "--id", id, "--revision", "rev1"]);
    assert!(show.contains("command /bin/sh -c"), "{show}");
    let out = shim_ok(cfg.path(), &["upgrade", "--id", id, "--revision", "rev1"]);
    assert!(out.contains("command exited 0"), "{out}");
    let unit = instance_unit(cfg.path(), id, "worker", 1);
    assert_eq!(unit_prop(&unit, "ActiveState"), "active");

    // The check's process files are gone after each check.
    let left = stdout(&sh(&format!(
        "ls /run/shim/instances/{id}/{} | grep -c '^health-' || true",
        unit.trim_end_matches(".service")
    )));
    assert_eq!(
        left.trim(),
        "0",
        "check files left in the instance directory"
    );
    // The same check outside the container (no CHECK_ME there) fails: it did run inside.
    let outside = sh(&format!(
        "/bin/sh -c {}",
        shell_quote("test \"$CHECK_ME\" = in-the-container")
    ));
    assert!(!outside.status.success());

    // A definition whose check fails: the upgrade bails out, the old instance stays.
    let bad = TestConfig::new(&def(r#"["/bin/sh", "-c", "exit 3"]"#));
    let o = shim(
        bad.path(),
        &[
            "upgrade",
            "--id",
            id,
            "--revision",
            "rev1",
            "--timeout",
            "6s",
        ],
    );
    assert_eq!(o.status.code(), Some(1), "{}{}", stdout(&o), stderr(&o));
    let all = format!("{}{}", stdout(&o), stderr(&o));
    assert!(all.contains("command exited 3"), "{all}");
    assert_eq!(
        unit_prop(&unit, "ActiveState"),
        "active",
        "the old instance keeps running"
    );
    assert_eq!(
        units_matching(&format!("shim-{id}-*")),
        vec![unit.clone()],
        "nothing left of the new one"
    );

    // The instance falls sick: the probe replaces it (a new main process).
    let pid = unit_prop(&unit, "MainPID");
    let container = unit.trim_end_matches(".service");
    let o = sh(&format!("runc exec {container} touch /tmp/sick"));
    assert!(o.status.success(), "{}", stderr(&o));
    let took = std::time::Instant::now();
    wait_for(
        std::time::Duration::from_secs(30),
        "the probe replaces the sick instance",
        || {
            let now = unit_prop(&unit, "MainPID");
            (now != pid && now != "0").then_some(())
        },
    );
    println!("sick instance replaced after {:?}", took.elapsed());
    shim_ok(cfg.path(), &["stop", "--id", id]);
}

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// Secret files (`secrets = [...]`) with runc: copied when deployed into root-only storage,
/// bind-mounted read-only at the target, owned by the container's user with the mode asked
/// for; readable by the app, not writable; nowhere in `systemctl show`, `shim show` or the
/// journal; editing the source changes nothing until the next upgrade, a restart of the
/// instance sees the deployed content, an upgrade rolls the new content out.
#[test]
fn secret_files_are_deployed_copies_mounted_read_only() {
    require_sandbox!();
    let id = "sfile";
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("db.pem");
    std::fs::write(&src, "s3cr3t-one\n").unwrap();
    let cfg = TestConfig::new(&format!(
        "[shim]\nport_range = [29100, 29199]\n[services.{id}]\nimage = \"oci:{{layout}}:{{revision}}\"\nuser = \"1234:1234\"\n\
         [services.{id}.processes.worker]\n\
         command = [\"/bin/sh\", \"-c\", \"trap 'exit 0' TERM; while true; do sleep 1 & wait; done\"]\n\
         secrets = [{{ source = \"{}\", target = \"/run/secrets/db.pem\", mode = \"0440\" }}]\n",
        src.display()
    ));
    let show = shim_ok(cfg.path(), &["show", "--id", id, "--revision", "rev1"]);
    assert!(!show.contains("s3cr3t"), "{show}");
    shim_ok(cfg.path(), &["upgrade", "--id", id, "--revision", "rev1"]);
    let unit = instance_unit(cfg.path(), id, "worker", 1);
    let container = unit.trim_end_matches(".service").to_string();
    let exec = |cmd: &str| sh(&format!("runc exec {container} /bin/sh -c '{cmd}'"));
    let o = exec("id -u; cat /run/secrets/db.pem; stat -c \"%u %g %a\" /run/secrets/db.pem");
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o), "1234\ns3cr3t-one\n1234 1234 440\n");
    let o = exec("echo x >> /run/secrets/db.pem");
    assert!(
        !o.status.success(),
        "the secret is writable in the container"
    );
    let o = exec("grep \" /run/secrets/db.pem \" /proc/self/mounts");
    assert!(stdout(&o).contains(" ro,"), "{}", stdout(&o));
    let props = stdout(&sh(&format!("systemctl show {unit}")));
    assert!(
        !props.contains("s3cr3t"),
        "the secret is in the unit's properties"
    );
    // The copy is below root-only directories.
    let o = sh("stat -c %a /var/lib/shim/secrets /var/lib/shim/secrets/sfile /var/lib/shim/secrets/sfile/files");
    assert_eq!(stdout(&o), "700\n700\n700\n", "{}", stderr(&o));

    // Editing the source changes nothing deployed, also across a restart of the instance.
    std::fs::write(&src, "s3cr3t-two\n").unwrap();
    let pid = unit_prop(&unit, "MainPID");
    assert!(sh(&format!("kill -9 {pid}")).status.success());
    wait_for(
        std::time::Duration::from_secs(20),
        "systemd restarts it",
        || {
            let now = unit_prop(&unit, "MainPID");
            (now != pid && now != "0" && unit_prop(&unit, "ActiveState") == "active").then_some(())
        },
    );
    let o = exec("cat /run/secrets/db.pem");
    assert_eq!(stdout(&o), "s3cr3t-one\n", "{}", stderr(&o));
    let st = shim_ok(cfg.path(), &["status", "--id", id]);
    assert!(
        st.contains("changed since deploy") || st.contains("secrets"),
        "{st}"
    );

    // An upgrade rolls the new content out (a new deployment: new instance names).
    shim_ok(cfg.path(), &["upgrade", "--id", id]);
    let unit2 = instance_unit(cfg.path(), id, "worker", 1);
    assert_ne!(unit2, unit);
    let o = sh(&format!(
        "runc exec {} cat /run/secrets/db.pem",
        unit2.trim_end_matches(".service")
    ));
    assert_eq!(stdout(&o), "s3cr3t-two\n", "{}", stderr(&o));
    let journal = stdout(&sh(&format!(
        "journalctl --no-pager -o cat -t {id}-worker-1; journalctl --no-pager -u '{}' -u '{}'",
        unit, unit2
    )));
    assert!(!journal.contains("s3cr3t"), "a secret reached the journal");
    shim_ok(cfg.path(), &["stop", "--id", id]);
}
