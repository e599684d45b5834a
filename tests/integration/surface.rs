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
