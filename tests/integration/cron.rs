//! Cron against real systemd timers in the sandbox: the app's generate-cron (in the image)
//! prints a crontab; `* * * * *` fires and its output is in the journal; an upgrade switches the
//! job to the new revision without replacing its timer; a bad crontab fails the upgrade and
//! `shim cron sync` and keeps the old timers; stop removes the timers, start brings them back.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use crate::common::*;

const CRONTAB: &str = "# the app's crontab\n\
MSG=tick\n\
* * * * * echo \"$MSG from $SHIM_REVISION\"\n\
0 3 1,15 * mon echo twice-a-month-and-mondays\n\
30 2 * * * cat%stdin line%second\n";

/// A layout with `crona`/`cronb` (same crontab) and `cronbad` (an `@reboot` line).
pub(crate) fn cron_layout() -> &'static Path {
    static LAYOUT: OnceLock<PathBuf> = OnceLock::new();
    LAYOUT.get_or_init(|| {
        let dir = PathBuf::from("/var/lib/shim-test/images/crontest");
        let script = repo_root().join("tests/sandbox/build-test-image.sh");
        for (tag, crontab) in [
            ("crona", CRONTAB),
            ("cronb", CRONTAB),
            ("cronbad", "@reboot echo never\n"),
        ] {
            let o = run(Command::new("bash")
                .arg(&script)
                .arg(&dir)
                .arg(tag)
                .arg(tag)
                .arg(TESTAPP)
                .env("IMAGE_CRONTAB", crontab));
            assert!(o.status.success(), "building {tag}: {}", stderr(&o));
        }
        dir
    })
}

fn cron_toml(id: &str) -> String {
    format!(
        r#"
[shim]
port_range = [27000, 27999]

[services.{id}]
image = "oci:{}:{{revision}}"
cron = "bin/generate-cron"

[services.{id}.processes.web]
count = 1
health = {{ path = "/health" }}
drain = "0s"
stop_timeout = "3s"
"#,
        cron_layout().display()
    )
}

fn jobs(config: &Path, id: &str) -> Vec<serde_json::Value> {
    let out = shim_ok(config, &["cron", "list", "--id", id, "--json"]);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("cron list --json ({e}): {out}"))
}

fn timers(id: &str) -> Vec<String> {
    let mut t = units_matching(&format!("shimcron-{id}-*.timer"));
    t.sort();
    t
}

/// Journal lines (MESSAGE) of a service's cron jobs.
fn cron_output(id: &str) -> Vec<String> {
    let _ = run(Command::new("journalctl").arg("--sync"));
    let o = run(Command::new("journalctl").args([
        "--no-pager",
        "-o",
        "cat",
        &format!("SHIM_SERVICE={id}"),
        "SHIM_PROCESS=cron",
    ]));
    stdout(&o).lines().map(str::to_string).collect()
}

#[test]
fn cron_fires_switches_on_upgrade_and_survives_a_bad_crontab() {
    if !in_sandbox() {
        return;
    }
    let id = "crontest";
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("services.toml"), cron_toml(id)).expect("write");
    let c = dir.path();

    let out = shim_ok(c, &["start", "--id", id, "--revision", "crona"]);
    assert!(out.contains("crontab"), "{out}");
    let list = jobs(c, id);
    assert_eq!(list.len(), 3, "{list:?}");
    let every = &list[0];
    assert_eq!(every["schedule"], "* * * * *");
    assert_eq!(every["revision"], "crona");
    assert_eq!(every["timer"], "active");
    assert!(every["next_usec"].as_u64().unwrap_or(0) > 0);
    // Day-of-month OR day-of-week, as cron: two calendar specs for one line.
    assert_eq!(list[1]["calendars"].as_array().map(|a| a.len()), Some(2));
    let before = timers(id);
    assert_eq!(before.len(), 3, "{before:?}");
    let table = shim_ok(c, &["cron", "list", "--id", id]);
    assert!(table.contains("OnCalendar=*-*-* *:*:00"), "{table}");
    // shim status shows the jobs under the service, with their next run.
    let table = shim_ok(c, &["status", "--id", id]);
    let cron_lines: Vec<&str> = table
        .lines()
        .filter(|l| l.trim_start().starts_with("cron "))
        .collect();
    assert_eq!(cron_lines.len(), 3, "{table}");
    assert!(
        cron_lines[0].contains("* * * * *") && cron_lines[0].contains(" next 20"),
        "{table}"
    );

    // The every-minute job fires within a minute, output in the journal.
    wait_for(Duration::from_secs(75), "tick from crona", || {
        cron_output(id)
            .iter()
            .any(|l| l == "tick from crona")
            .then_some(())
    });
    let ran = wait_for(Duration::from_secs(20), "the recorded result", || {
        let j = jobs(c, id);
        (j[0]["last_result"] == "success").then_some(j)
    });
    assert_eq!(ran[0]["last_exit"], "status 0");

    // Upgrade: same crontab, new revision. Same timers (nothing re-created), and the next
    // firing runs the new revision.
    let out = shim_ok(c, &["upgrade", "--id", id, "--revision", "cronb"]);
    assert!(
        out.contains("kept     3 timer(s), now running revision cronb"),
        "{out}"
    );
    assert_eq!(timers(id), before);
    assert!(jobs(c, id).iter().all(|j| j["revision"] == "cronb"));
    wait_for(Duration::from_secs(75), "tick from cronb", || {
        cron_output(id)
            .iter()
            .any(|l| l == "tick from cronb")
            .then_some(())
    });

    // A bad crontab from the app: the upgrade fails before anything changes (exit 2, the
    // line named), and so does a sync; the old timers and revision stay.
    let o = shim(c, &["upgrade", "--id", id, "--revision", "cronbad"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("crontab line 1"), "{}", stderr(&o));
    assert!(stderr(&o).contains("@reboot"), "{}", stderr(&o));
    let rows = status(c, id);
    assert!(rows.iter().all(|r| r["revision"] == "cronb"), "{rows:?}");
    let o = shim(c, &["cron", "sync", "--id", id, "--revision", "cronbad"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert_eq!(timers(id), before);
    assert!(jobs(c, id).iter().all(|j| j["revision"] == "cronb"));

    // Stop removes the timers; start at the same revision brings them back (from the
    // state, without running generate-cron again).
    shim_ok(c, &["stop", "--id", id]);
    assert!(timers(id).is_empty());
    let out = shim_ok(c, &["start", "--id", id, "--revision", "cronb"]);
    assert!(out.contains("added"), "{out}");
    assert_eq!(timers(id), before);
    shim_ok(c, &["stop", "--id", id]);
    assert!(timers(id).is_empty());
}

#[test]
fn cron_job_stdin_and_reconcile_restore_timers() {
    if !in_sandbox() {
        return;
    }
    let id = "cronrec";
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("services.toml"), cron_toml(id)).expect("write");
    let c = dir.path();
    shim_ok(c, &["start", "--id", id, "--revision", "crona"]);
    let before = timers(id);
    assert_eq!(before.len(), 3);

    // The `%` job: its input reaches the command's stdin (started by hand, not waiting for
    // 02:30).
    let list = jobs(c, id);
    let stdin_job = list
        .iter()
        .find(|j| j["command"] == "cat")
        .unwrap_or_else(|| panic!("{list:?}"));
    let svc = format!(
        "shimcron-{id}-{}.service",
        stdin_job["job"].as_str().unwrap_or("")
    );
    let o = run(Command::new("systemctl").args(["start", "--wait", &svc]));
    assert!(o.status.success(), "{}", stderr(&o));
    let out = cron_output(id);
    assert!(out.iter().any(|l| l == "stdin line"), "{out:?}");
    assert!(out.iter().any(|l| l == "second"), "{out:?}");

    // Timers lost (as after a reboot): reconcile re-creates them.
    let o = run(Command::new("systemctl").arg("stop").args(&before));
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(timers(id).is_empty());
    let out = shim_ok(c, &["reconcile"]);
    assert!(out.contains("cron timer(s) missing"), "{out}");
    assert_eq!(timers(id), before);
    // A second reconcile has nothing to do for cron.
    let out = shim_ok(c, &["reconcile"]);
    assert!(
        !out.contains("cron timer") && !out.contains("sync it"),
        "{out}"
    );

    // The service disappears from the definitions: reconcile removes its timers.
    std::fs::write(
        c.join("services.toml"),
        "[shim]\nport_range = [27000, 27999]\n",
    )
    .expect("write");
    shim_ok(c, &["reconcile"]);
    assert!(timers(id).is_empty());
}
