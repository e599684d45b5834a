//! systemctl as the interface (issue 18), against real systemd in the sandbox: each service
//! has its unit `shim-<id>.service` (written by its first upgrade, enabled) and its slice
//! `shim-<id>.slice`; `systemctl stop` of the unit takes nginx off the service first, then the
//! drain, then the instances, probe and cron timers, and nothing brings them back;
//! `systemctl start` brings back exactly the recorded deployment; `shim stop`/`shim start`
//! are the same operation. Service ids contain '-' (escaped `\x2d` in unit names) and a
//! look-alike (`sc-a` and `sc-a-b`) must not be touched.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::common::*;

const A: &str = "sc-a";
const B: &str = "sc-a-b";
const UNIT_A: &str = "shim-sc\\x2da.service";
const UNIT_B: &str = "shim-sc\\x2da\\x2db.service";
const SLICE_A: &str = "shim-sc\\x2da.slice";

fn toml() -> String {
    let layout = crate::cron::cron_layout().display().to_string();
    format!(
        r#"
[shim]
port_range = [26000, 26999]

[services.{A}]
image = "oci:{layout}:{{revision}}"
cron = "bin/generate-cron"

[services.{A}.processes.web]
count = 2
health = {{ path = "/health", interval = "1s", timeout = "1s", start_period = "2s" }}
proxy = {{ upstream = "sc_a_web", file = "/etc/nginx/shim/sc-a.conf" }}
drain = "1s"
stop_timeout = "3s"

[services.{B}]
image = "oci:{layout}:{{revision}}"

[services.{B}.processes.web]
health = {{ path = "/health", interval = "1s", timeout = "1s" }}
stop_timeout = "3s"
"#
    )
}

fn systemctl(args: &[&str]) -> std::process::Output {
    run(Command::new("systemctl").args(args))
}

fn systemctl_out(args: &[&str]) -> String {
    let o = systemctl(args);
    format!("{}{}", stdout(&o), stderr(&o)).trim().to_string()
}

/// The instance units of a service (by their SHIM_SERVICE field, as `shim status` reads it).
fn instances(cfg: &Path, id: &str) -> BTreeSet<String> {
    status(cfg, id)
        .iter()
        .map(|r| r["unit"].as_str().unwrap_or_default().to_string())
        .collect()
}

/// Running instances that answer their health check.
fn healthy(cfg: &Path, id: &str) -> usize {
    status(cfg, id)
        .iter()
        .filter(|r| r["state"] == "active" && r["sub_state"] == "running")
        .filter_map(|r| r["port"].as_u64())
        .filter(|p| http_get(*p as u16, "/health").is_some_and(|(c, _)| c == 200))
        .count()
}

/// The ports the upstream file lists (empty when closed).
fn upstream_ports() -> BTreeSet<u16> {
    std::fs::read_to_string("/etc/nginx/shim/sc-a.conf")
        .unwrap_or_default()
        .lines()
        .filter(|l| !l.contains(" down"))
        .filter_map(|l| l.trim().strip_prefix("server 127.0.0.1:"))
        .filter_map(|r| r.split([' ', ';']).next()?.parse().ok())
        .collect()
}

fn timers(id: &str) -> Vec<String> {
    let mut t = units_matching(&format!("shimcron-{id}-*.timer"));
    t.extend(units_matching(&format!("shim-probe-{id}.timer")));
    t.retain(|u| !u.starts_with(&format!("shimcron-{B}-")));
    t
}

/// The journal of a unit as (realtime µs, message) pairs (the unit's own lines and systemd's
/// about it).
fn journal(unit: &str) -> Vec<(u64, String)> {
    let _ = run(Command::new("journalctl").arg("--sync"));
    let o = run(Command::new("journalctl").args(["--no-pager", "-o", "json", "-u", unit]));
    stdout(&o)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| {
            let t = v["__REALTIME_TIMESTAMP"].as_str()?.parse().ok()?;
            Some((t, v["MESSAGE"].as_str().unwrap_or_default().to_string()))
        })
        .collect()
}

fn deployment(cfg: &Path, id: &str) -> BTreeSet<String> {
    status(cfg, id)
        .iter()
        .map(|r| format!("{} {}", r["deployment"], r["image_digest"]))
        .collect()
}

#[test]
fn systemctl_stop_and_start_of_the_service_unit() {
    if !in_sandbox() {
        eprintln!("SKIPPED: needs the systemd sandbox");
        return;
    }
    let o = sh("systemctl start nginx && systemctl is-active nginx");
    assert!(o.status.success(), "nginx: {}", stderr(&o));
    let cfg = TestConfig::new(&toml());
    let cfg = cfg.path();
    shim_ok(cfg, &["upgrade", "--id", A, "--revision", "crona"]);
    shim_ok(cfg, &["upgrade", "--id", B, "--revision", "crona"]);
    for u in [UNIT_A, UNIT_B] {
        assert_eq!(systemctl_out(&["is-active", u]), "active", "{u}");
        assert_eq!(systemctl_out(&["is-enabled", u]), "enabled", "{u}");
    }
    let before = instances(cfg, A);
    assert_eq!(before.len(), 2);
    let deployed = deployment(cfg, A);
    assert_eq!(upstream_ports().len(), 2);
    assert_eq!(timers(A).len(), 4, "{:?}", timers(A)); // 3 cron jobs and the probe

    // systemctl status of the unit: the deployment and its instances; of the slice: the
    // instances, and only this service's (not the look-alike's).
    let st = systemctl_out(&["status", "--no-pager", "-n", "20", UNIT_A]);
    assert!(st.contains("revision crona"), "{st}");
    assert!(st.contains("sha256:"), "{st}");
    for u in &before {
        assert!(st.contains(u.as_str()), "{u} not in:\n{st}");
    }
    let sl = systemctl_out(&["status", "--no-pager", SLICE_A]);
    for u in &before {
        assert!(sl.contains(u.as_str()), "{u} not in:\n{sl}");
    }
    for u in instances(cfg, B) {
        assert!(!sl.contains(u.as_str()), "{u} of {B} in {SLICE_A}:\n{sl}");
        assert_eq!(unit_prop(&u, "Slice"), "shim-sc\\x2da\\x2db.slice");
    }
    // A one-off run and a cron job run in the service's slice.
    let out = shim_ok(cfg, &["run", "--id", A, "--detach", "--", "sleep", "5"]);
    let run_unit = out.trim().lines().last().unwrap_or_default().to_string();
    assert!(run_unit.starts_with("shimrun-"), "{out}");
    let cg = unit_prop(&run_unit, "ControlGroup");
    assert_eq!(cg, format!("/shim.slice/{SLICE_A}/{run_unit}"));
    let job = units_matching(&format!("shimcron-{A}-*.timer"))
        .first()
        .expect("a cron timer")
        .replace(".timer", ".service");
    let o = systemctl(&["start", &job]);
    assert!(o.status.success(), "{}", stderr(&o));
    wait_for(Duration::from_secs(10), "the cron job's journal", || {
        let _ = run(Command::new("journalctl").arg("--sync"));
        let o = run(Command::new("journalctl").args([
            "--no-pager",
            "-o",
            "json",
            &format!("_SYSTEMD_UNIT={job}"),
        ]));
        stdout(&o)
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .find(|v| v["_SYSTEMD_SLICE"] == SLICE_A)
            .map(|_| ())
    });

    // systemctl stop: everything of A goes, nginx first; B is untouched.
    let o = systemctl(&["stop", UNIT_A]);
    assert!(o.status.success(), "{}", stderr(&o));
    wait_for(Duration::from_secs(15), "A's instances gone", || {
        instances(cfg, A).is_empty().then_some(())
    });
    assert!(upstream_ports().is_empty(), "nginx still points at A");
    assert!(timers(A).is_empty(), "{:?}", timers(A));
    assert_eq!(systemctl_out(&["is-active", UNIT_A]), "inactive");
    assert_eq!(instances(cfg, B).len(), 1);
    assert_eq!(systemctl_out(&["is-active", UNIT_B]), "active");
    // The drain (ExecStop's "drained" line) came before systemd stopped any instance.
    let unit_log = journal(UNIT_A);
    let drained = unit_log
        .iter()
        .rev()
        .find(|(_, m)| m.starts_with("drained"))
        .unwrap_or_else(|| panic!("no drain in {unit_log:?}"))
        .0;
    for u in &before {
        let stopping = journal(u)
            .into_iter()
            .rev()
            .find(|(_, m)| m.starts_with("Stopping"))
            .unwrap_or_else(|| panic!("{u} was not stopped"))
            .0;
        assert!(drained <= stopping, "{u} stopped before the drain ended");
    }
    // Nothing brings it back: 3 probe intervals and a reconcile later, still nothing.
    std::thread::sleep(Duration::from_secs(4));
    let out = shim_ok(cfg, &["reconcile"]);
    assert!(
        out.lines().any(
            |l| l.trim().starts_with(&format!("{A} ")) && l.ends_with("stopped: nothing to do")
        ),
        "{out}"
    );
    assert!(instances(cfg, A).is_empty());
    // An upgrade says it is stopped and changes nothing.
    let o = shim(cfg, &["upgrade", "--id", A, "--revision", "cronb"]);
    assert_eq!(o.status.code(), Some(2), "{}", stdout(&o));
    assert!(stderr(&o).contains("is stopped"), "{}", stderr(&o));
    let table = shim_ok(cfg, &["status"]);
    assert!(
        table.contains(&format!("{UNIT_A}: inactive, enabled; stopped")),
        "{table}"
    );

    // systemctl start: the recorded deployment, healthy, timers and nginx back.
    let o = systemctl(&["start", UNIT_A]);
    assert!(o.status.success(), "{}", stderr(&o));
    wait_for(Duration::from_secs(20), "A healthy again", || {
        (healthy(cfg, A) == 2).then_some(())
    });
    assert_eq!(deployment(cfg, A), deployed);
    assert_eq!(upstream_ports().len(), 2);
    assert_eq!(timers(A).len(), 4, "{:?}", timers(A));

    // shim stop / shim start act on the unit too.
    shim_ok(cfg, &["stop", "--id", A]);
    assert_eq!(systemctl_out(&["is-active", UNIT_A]), "inactive");
    assert!(instances(cfg, A).is_empty());
    shim_ok(cfg, &["start", "--id", A]);
    assert_eq!(systemctl_out(&["is-active", UNIT_A]), "active");
    assert_eq!(deployment(cfg, A), deployed);

    // systemctl stop of one instance is a restart: the probe brings a new one back.
    let one = instances(cfg, A).into_iter().next().expect("an instance");
    let o = systemctl(&["stop", &one]);
    assert!(o.status.success(), "{}", stderr(&o));
    wait_for(Duration::from_secs(15), "the probe restarting it", || {
        (healthy(cfg, A) == 2).then_some(())
    });

    for id in [A, B] {
        shim_ok(cfg, &["stop", "--id", id]);
    }
    assert_eq!(systemctl_out(&["is-active", UNIT_B]), "inactive");
}

/// `systemctl stop` + `start` of a service whose process ends badly at the stop: one exits
/// 143 on SIGTERM (result exit-code, the unit failed), the other ignores SIGTERM and is
/// SIGKILLed at its stop_timeout (result timeout, failed). Their failed units stay loaded
/// (CollectMode=inactive); the start must reset them and bring up fresh instances, not count
/// them as running.
#[test]
fn systemctl_stop_and_start_replaces_instances_that_failed_at_the_stop() {
    if !in_sandbox() {
        eprintln!("SKIPPED: needs the systemd sandbox");
        return;
    }
    let toml = r#"
[shim]
port_range = [26500, 26599]

[services.sf-term]
image = "oci:{layout}:{revision}"
env = { APP_SIGTERM_EXIT = "143" }

[services.sf-term.processes.web]
count = 2
health = { path = "/health", interval = "1s", timeout = "1s", start_period = "2s" }
stop_timeout = "3s"

[services.sf-kill]
image = "oci:{layout}:{revision}"
env = { APP_IGNORE_SIGTERM = "1" }

[services.sf-kill.processes.web]
health = { path = "/health", interval = "1s", timeout = "1s", start_period = "2s" }
stop_timeout = "2s"
"#;
    let cfg = TestConfig::new(toml);
    let cfg = cfg.path();
    for (id, unit, result) in [
        ("sf-term", "shim-sf\\x2dterm.service", "exit-code"),
        ("sf-kill", "shim-sf\\x2dkill.service", "timeout"),
    ] {
        shim_ok(cfg, &["upgrade", "--id", id, "--revision", "rev1"]);
        let before = instances(cfg, id);
        assert!(!before.is_empty(), "{id}");
        let o = systemctl(&["stop", unit]);
        assert!(o.status.success(), "{id}: {}", stderr(&o));
        // What the stop left: each instance failed, with the result the process earned.
        wait_for(Duration::from_secs(20), "the instances failed", || {
            before
                .iter()
                .all(|u| unit_prop(u, "ActiveState") == "failed")
                .then_some(())
        });
        for u in &before {
            assert_eq!(unit_prop(u, "Result"), result, "{u}");
        }
        let o = systemctl(&["start", unit]);
        assert!(
            o.status.success(),
            "{id}: {}\n{}",
            stderr(&o),
            systemctl_out(&["status", "--no-pager", "-n", "30", unit])
        );
        wait_for(Duration::from_secs(20), "fresh instances running", || {
            before
                .iter()
                .all(|u| {
                    unit_prop(u, "ActiveState") == "active" && unit_prop(u, "SubState") == "running"
                })
                .then_some(())
        });
        assert_eq!(healthy(cfg, id), before.len(), "{id}");
        shim_ok(cfg, &["stop", "--id", id]);
    }
}
