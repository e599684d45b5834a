//! What an audit broke, kept broken-proof (issue 13), against the real binary in the sandbox:
//! hostile ids and files get exit 2 and change nothing; one service's corrupt state does not
//! stop the others from coming back.

use std::path::Path;
use std::process::Command;

use crate::common::*;

fn toml(id: &str) -> String {
    format!(
        r#"
[shim]
port_range = [24000, 24999]

[services.{id}]
image = "oci:{{layout}}:{{revision}}"

[services.{id}.processes.web]
health = {{ path = "/health" }}
stop_timeout = "3s"
"#
    )
}

/// Files under the roots shim writes to, to check that a refused command wrote nothing.
fn tree(roots: &[&str]) -> Vec<String> {
    let mut out = Vec::new();
    for r in roots {
        let o = run(Command::new("find").arg(r).arg("-xdev"));
        out.extend(stdout(&o).lines().map(str::to_string));
    }
    out.sort();
    out
}

fn refused(cfg: &Path, args: &[&str], needle: &str) {
    let roots = ["/run/shim", "/var/lib/shim/state", "/etc/nginx"];
    let before = tree(&roots);
    let o = shim(cfg, args);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "{args:?}: {err}");
    assert!(err.contains(needle), "{args:?}: {err:?} lacks {needle:?}");
    assert_eq!(tree(&roots), before, "{args:?} changed files");
}

#[test]
fn hostile_ids_files_and_values_exit_2_and_change_nothing() {
    require_sandbox!();
    let _ = std::fs::remove_file("/run/x.lock");
    let cfg = TestConfig::new(&toml("hard"));
    // An id that is a path: no lock file anywhere.
    refused(
        cfg.path(),
        &["upgrade", "--id", "../../x", "--revision", "rev1"],
        "--id",
    );
    assert!(!Path::new("/run/x.lock").exists() && !Path::new("/x.lock").exists());
    refused(cfg.path(), &["stop", "--id", "../../x"], "--id");
    // Unknown services: status and stop say so instead of reporting nothing.
    refused(cfg.path(), &["status", "--id", "nope"], "nope");
    refused(cfg.path(), &["stop", "--id", "nope"], "nope");
    // A drain of eleven thousand years.
    let c = TestConfig::new(
        &toml("hard").replace("stop_timeout", "drain = \"99999999h\"\nstop_timeout"),
    );
    refused(
        c.path(),
        &["upgrade", "--id", "hard", "--revision", "rev1"],
        "longer than 24h",
    );
    // Two services writing one upstream file; one process pointed at nginx.conf.
    let proxy = |id: &str, file: &str| {
        toml(id)
            .replace(
                "stop_timeout",
                &format!("proxy = {{ upstream = \"{id}_web\", file = \"{file}\" }}\nstop_timeout"),
            )
            .replace("[shim]\nport_range = [24000, 24999]\n", "")
    };
    let c = TestConfig::new(&format!(
        "{}{}",
        proxy("hard", "/etc/nginx/shim/shared.conf"),
        proxy("hard2", "/etc/nginx/shim/shared.conf")
    ));
    refused(
        c.path(),
        &["upgrade", "--id", "hard", "--revision", "rev1"],
        "proxy.file",
    );
    let nginx_conf = std::fs::read("/etc/nginx/nginx.conf").unwrap();
    let c = TestConfig::new(&proxy("hard", "/etc/nginx/nginx.conf"));
    refused(
        c.path(),
        &["upgrade", "--id", "hard", "--revision", "rev1"],
        "was not written by shim",
    );
    assert_eq!(std::fs::read("/etc/nginx/nginx.conf").unwrap(), nginx_conf);
    assert!(units_matching("shim-hard*").is_empty());
}

#[test]
fn definitions_only_in_services_d_are_read() {
    require_sandbox!();
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("services.d")).unwrap();
    std::fs::write(
        dir.path().join("services.d/hard.toml"),
        toml("hard").replace("{layout}", &image_layout().display().to_string()),
    )
    .unwrap();
    let out = shim_ok(
        &dir.path().join("services.toml"),
        &["show", "--id", "hard", "--revision", "rev1"],
    );
    assert!(out.contains("shim-hard-web-rev1-1.service"), "{out}");
}

/// One service's state file corrupt: reconcile (as at boot) brings the others back, reports
/// the broken one by name, exits 1, and leaves its file as it was.
#[test]
fn a_corrupt_state_file_does_not_stop_the_other_services() {
    require_sandbox!();
    let cfg = TestConfig::new(&format!(
        "{}{}",
        toml("good1"),
        toml("bad1").replace("[shim]\nport_range = [24000, 24999]\n", "")
    ));
    shim_ok(
        cfg.path(),
        &["upgrade", "--id", "good1", "--revision", "rev1"],
    );
    shim_ok(
        cfg.path(),
        &["upgrade", "--id", "bad1", "--revision", "rev1"],
    );
    shim_ok(cfg.path(), &["stop", "--id", "bad1"]);
    std::fs::write("/var/lib/shim/state/bad1.json", "{\"current\": 7").unwrap();
    // What a reboot does to the units: gone.
    let units = units_matching("shim-good1-*");
    let o = run(Command::new("systemctl").arg("stop").args(&units));
    assert!(o.status.success(), "{}", stderr(&o));
    let o = shim(cfg.path(), &["reconcile"]);
    assert_eq!(o.status.code(), Some(1), "{}\n{}", stdout(&o), stderr(&o));
    assert!(
        stderr(&o).contains("/var/lib/shim/state/bad1.json"),
        "{}",
        stderr(&o)
    );
    assert!(
        stderr(&o).contains("reconcile failed for: bad1"),
        "{}",
        stderr(&o)
    );
    let rows = status(cfg.path(), "good1");
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0]["state"], "active", "{rows:?}");
    assert_eq!(
        std::fs::read_to_string("/var/lib/shim/state/bad1.json").unwrap(),
        "{\"current\": 7"
    );
    assert!(units_matching("shim-bad1-*").is_empty());
    shim_ok(cfg.path(), &["stop", "--id", "good1"]);
    std::fs::remove_file("/var/lib/shim/state/bad1.json").unwrap();
}

fn seccomp_of_main_pid(unit: &str) -> String {
    let pid = unit_prop(unit, "MainPID");
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("Seccomp:"))
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// Containers run under containers-common's seccomp profile by default (`Seccomp: 2`, a
/// filter, in the status of the container's init), and without one only when asked.
#[test]
fn containers_run_under_the_default_seccomp_profile() {
    require_sandbox!();
    for (id, extra, want) in [
        ("secd", "", "2"),
        ("secu", "seccomp = \"unconfined\"\n", "0"),
    ] {
        let text = toml(id).replace(
            &format!("[services.{id}]\n"),
            &format!("[services.{id}]\n{extra}"),
        );
        let cfg = TestConfig::new(&text);
        shim_ok(cfg.path(), &["start", "--id", id, "--revision", "rev1"]);
        let unit = format!("shim-{id}-web-rev1-1.service");
        assert_eq!(seccomp_of_main_pid(&unit), want, "{id}");
        shim_ok(cfg.path(), &["stop", "--id", id]);
    }
}
