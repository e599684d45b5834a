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
    assert!(shows_instance(&out, "hard", "web", "rev1", 1), "{out}");
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
        let unit = instance_unit(cfg.path(), id, "web", 1);
        assert_eq!(seccomp_of_main_pid(&unit), want, "{id}");
        shim_ok(cfg.path(), &["stop", "--id", id]);
    }
}

/// A process's own `seccomp` wins over the service's, both ways: an unconfined worker in a
/// confined service, a confined worker in an unconfined one.
#[test]
fn a_process_seccomp_overrides_the_service_one() {
    require_sandbox!();
    let worker = "[services.{id}.processes.worker]\ncommand = [\"/bin/sh\", \"-c\", \"trap 'exit 0' TERM; while true; do sleep 1 & wait; done\"]\n";
    for (id, svc, own, web, wrk) in [
        ("secpd", "", "seccomp = \"unconfined\"\n", "2", "0"),
        (
            "secpu",
            "seccomp = \"unconfined\"\n",
            "seccomp = \"default\"\n",
            "0",
            "2",
        ),
    ] {
        let text = toml(id).replace(
            &format!("[services.{id}]\n"),
            &format!("[services.{id}]\n{svc}"),
        ) + &worker.replace("{id}", id)
            + own;
        let cfg = TestConfig::new(&text);
        shim_ok(cfg.path(), &["start", "--id", id, "--revision", "rev1"]);
        let u = instance_unit(cfg.path(), id, "web", 1);
        let w = instance_unit(cfg.path(), id, "worker", 1);
        assert_eq!(seccomp_of_main_pid(&u), web, "{id} web");
        assert_eq!(seccomp_of_main_pid(&w), wrk, "{id} worker");
        shim_ok(cfg.path(), &["stop", "--id", id]);
    }
}

/// The bad-input corpus: definitions, ids, revisions, image references, env files and flags
/// that an operator (or a typo) can give. Every one exits 2, says what is wrong (the needle)
/// and changes no file under /run/shim, /var/lib/shim/state or /etc/nginx and no unit.
#[test]
fn bad_input_corpus_exits_2_names_the_problem_and_changes_nothing() {
    require_sandbox!();
    let good = toml("corp");
    let with = |from: &str, to: &str| {
        assert!(
            good.contains(from),
            "corpus: {from:?} not in the base definition"
        );
        good.replacen(from, to, 1)
    };
    let svc_key = |kv: &str| with("image = ", &format!("{kv}\nimage = "));
    let proc_key = |kv: &str| with("health = ", &format!("{kv}\nhealth = "));
    let mut defs: Vec<(String, String, &str)> = vec![
        ("syntax".into(), with("[services.corp]", "[services.corp"), "services.toml:"),
        ("unclosed string".into(), with("\"/health\"", "\"/health"), "services.toml:"),
        ("top-level key".into(), format!("colour = 1\n{good}"), "colour"),
        ("shim key".into(), with("port_range", "port_rang"), "port_rang"),
        ("port range reversed".into(), with("[24000, 24999]", "[24999, 24000]"), "port_range"),
        ("port range low".into(), with("[24000, 24999]", "[80, 90]"), "port_range"),
        ("port range high".into(), with("[24000, 24999]", "[24000, 70000]"), "port_range"),
        ("port range type".into(), with("[24000, 24999]", "\"24000-24999\""), "port_range"),
        ("upper-case id".into(), good.replace("services.corp", "services.Corp"), "Corp"),
        ("id with dot".into(), good.replace("services.corp", "services.\"co.rp\""), "co.rp"),
        ("id too long".into(), good.replace("services.corp", &format!("services.{}", "c".repeat(65))), "64"),
        ("no image".into(), with("image = \"oci:{layout}:{revision}\"\n", ""), "image"),
        ("image type".into(), with("image = \"oci:{layout}:{revision}\"", "image = 5"), "image"),
        ("bad image scheme".into(), with("oci:{layout}", "ftp:{layout}"), "image"),
        ("image without placeholder".into(), with(":{revision}", ":rev1"), "{revision}"),
        ("unknown runtime".into(), svc_key("runtime = \"docker\""), "docker"),
        ("runtime type".into(), svc_key("runtime = 1"), "runtime"),
        ("env not a table".into(), svc_key("env = \"A=1\""), "env"),
        ("env bad name".into(), svc_key("env = { \"A-B\" = \"1\" }"), "env"),
        ("env value type".into(), svc_key("env = { A = 1 }"), "services.corp.A"),
        ("relative env file".into(), svc_key("env_files = [\"x.env\"]"), "env_files"),
        ("missing env file".into(), svc_key("env_files = [\"/nonexistent/corp.env\"]"), "/nonexistent/corp.env"),
        ("bad user".into(), svc_key("user = \"a:b:c\""), "user"),
        ("unknown user".into(), svc_key("user = \"nobody-here\""), "nobody-here"),
        ("user type".into(), svc_key("user = 1000"), "user"),
        ("bad seccomp".into(), svc_key("seccomp = \"strict\""), "seccomp"),
        ("missing seccomp profile".into(), svc_key("seccomp = \"/nonexistent/sec.json\""), "/nonexistent/sec.json"),
        ("cron relative".into(), svc_key("cron = \"\""), "cron"),
        ("unknown service key".into(), svc_key("replicas = 2"), "replicas"),
        ("no processes".into(), good.split("[services.corp.processes.web]").next().unwrap_or_default().to_string(), "processes"),
        ("bad process name".into(), good.replace("processes.web", "processes.Web"), "Web"),
        ("unknown process key".into(), proc_key("replicas = 2"), "replicas"),
        ("negative count".into(), proc_key("count = -1"), "count"),
        ("huge count".into(), proc_key("count = 100000"), "count"),
        ("count type".into(), proc_key("count = \"2\""), "count"),
        ("empty command".into(), proc_key("command = []"), "command"),
        ("command type".into(), proc_key("command = \"/bin/app\""), "command"),
        ("bad signal".into(), proc_key("stop_signal = \"SIGNOPE\""), "stop_signal"),
        ("signal number".into(), proc_key("stop_signal = 9"), "stop_signal"),
        ("stop timeout unit".into(), with("\"3s\"", "\"3 parsecs\""), "stop_timeout"),
        ("stop timeout bare".into(), with("\"3s\"", "\"3\""), "stop_timeout"),
        ("stop timeout huge".into(), with("\"3s\"", "\"25h\""), "24h"),
        ("stop timeout negative".into(), with("\"3s\"", "\"-3s\""), "stop_timeout"),
        ("drain huge".into(), proc_key("drain = \"99999999h\""), "24h"),
        ("drain bad".into(), proc_key("drain = \"soon\""), "drain"),
        ("health relative path".into(), with("\"/health\"", "\"health\""), "health.path"),
        ("health path type".into(), with("\"/health\"", "7"), "path"),
        ("health unknown key".into(), with("path = \"/health\"", "path = \"/health\", retries = 3"), "retries"),
        ("health interval short".into(), with("path = \"/health\"", "path = \"/health\", interval = \"10ms\""), "interval"),
        ("health interval huge".into(), with("path = \"/health\"", "path = \"/health\", interval = \"48h\""), "24h"),
        ("health timeout over interval".into(), with("path = \"/health\"", "path = \"/health\", timeout = \"9s\""), "timeout"),
        ("health start period bad".into(), with("path = \"/health\"", "path = \"/health\", start_period = \"x\""), "start_period"),
        ("unhealthy_after zero".into(), with("path = \"/health\"", "path = \"/health\", unhealthy_after = 0"), "unhealthy_after"),
        ("port false with health".into(), proc_key("port = false"), "port"),
        ("read_only type".into(), proc_key("read_only = \"yes\""), "read_only"),
        ("singleton type".into(), proc_key("singleton = 1"), "singleton"),
        ("proxy without health".into(), good.replace("health = { path = \"/health\" }", "proxy = { upstream = \"c\", file = \"/etc/nginx/shim/c.conf\" }"), "health"),
        ("proxy relative file".into(), proc_key("proxy = { upstream = \"c\", file = \"c.conf\" }"), "proxy.file"),
        ("proxy not .conf".into(), proc_key("proxy = { upstream = \"c\", file = \"/etc/nginx/shim/c.txt\" }"), "proxy.file"),
        ("proxy bad upstream".into(), proc_key("proxy = { upstream = \"a b\", file = \"/etc/nginx/shim/c.conf\" }"), "proxy.upstream"),
        ("proxy unknown key".into(), proc_key("proxy = { upstream = \"c\", file = \"/etc/nginx/shim/c.conf\", weight = 2 }"), "weight"),
        ("proxy with count 0".into(), proc_key("count = 0\nproxy = { upstream = \"c\", file = \"/etc/nginx/shim/c.conf\" }"), "count = 0"),
        ("restart delay low".into(), with("port_range = [24000, 24999]", "port_range = [24000, 24999]\nrestart_max_delay = \"1s\""), "restart_max_delay"),
        ("nginx unit bad".into(), with("port_range = [24000, 24999]", "port_range = [24000, 24999]\nnginx_unit = 5"), "nginx_unit"),
        ("duplicate key".into(), proc_key("count = 1\ncount = 2"), "duplicate key"),
        ("look-alike units".into(), format!("{good}\n[services.corp-web]\nimage = \"oci:{{layout}}:{{revision}}\"\n[services.corp-web.processes.x]\n").replace("processes.web]", "processes.web-x]"), "would be named like"),
        ("shared proxy file".into(), format!(
            "{}\n{}",
            proc_key("proxy = { upstream = \"c1\", file = \"/etc/nginx/shim/shared.conf\" }"),
            "[services.corp2]\nimage = \"oci:{layout}:{revision}\"\n[services.corp2.processes.web]\nhealth = { path = \"/h\" }\nproxy = { upstream = \"c2\", file = \"/etc/nginx/shim/shared.conf\" }\n"
        ), "proxy.file"),
        ("same upstream name".into(), format!(
            "{}\n{}",
            proc_key("proxy = { upstream = \"cx\", file = \"/etc/nginx/shim/c1.conf\" }"),
            "[services.corp2]\nimage = \"oci:{layout}:{revision}\"\n[services.corp2.processes.web]\nhealth = { path = \"/h\" }\nproxy = { upstream = \"cx\", file = \"/etc/nginx/shim/c2.conf\" }\n"
        ), "upstream"),
        ("two [shim] tables".into(), format!("{good}\n[shim]\nport_range = [1025, 2000]\n"), "shim"),
    ];
    // Env file contents.
    let envs = [
        ("no equals", "JUST_A_WORD\n", "expected KEY=VALUE"),
        ("digit first", "1A=x\n", "not a valid variable name"),
        ("dash in name", "A-B=x\n", "not a valid variable name"),
        ("space in name", "A B=x\n", "not a valid variable name"),
        ("empty name", "=x\n", "not a valid variable name"),
        ("second line bad", "A=1\nnonsense\n", ":2:"),
    ];
    let env_dir = tempfile::tempdir().unwrap();
    for (name, text, needle) in envs {
        let f = env_dir
            .path()
            .join(format!("{}.env", name.replace(' ', "_")));
        std::fs::write(&f, text).unwrap();
        defs.push((
            format!("env file: {name}"),
            svc_key(&format!("env_files = [\"{}\"]", f.display())),
            needle,
        ));
    }
    let mut wrong: Vec<String> = Vec::new();
    let mut check = |name: &str, cfg: &Path, args: &[&str], needle: &str| {
        let roots = ["/run/shim", "/var/lib/shim/state", "/etc/nginx"];
        let before = tree(&roots);
        let o = shim(cfg, args);
        let err = stderr(&o);
        if o.status.code() != Some(2) {
            wrong.push(format!(
                "{name}: {args:?}: exit {:?}: {err}",
                o.status.code()
            ));
        } else if !err.contains(needle) {
            wrong.push(format!("{name}: {args:?}: {err:?} lacks {needle:?}"));
        } else if tree(&roots) != before {
            wrong.push(format!("{name}: {args:?}: files changed"));
        }
    };
    for (name, text, needle) in &defs {
        let cfg = TestConfig::new(text);
        for verb in [
            &["start", "--id", "corp", "--revision", "rev1"][..],
            &["show", "--id", "corp", "--revision", "rev1"][..],
        ] {
            check(name, cfg.path(), verb, needle);
        }
    }
    // Ids, revisions, image tags and flags, against a good definition.
    let cfg = TestConfig::new(&good);
    let c = cfg.path();
    let long_rev = "r".repeat(200);
    let flags: Vec<(Vec<&str>, &str)> = vec![
        (vec!["start", "--id", "nope", "--revision", "rev1"], "nope"),
        (vec!["start", "--id", "Corp", "--revision", "rev1"], "Corp"),
        (vec!["start", "--id", "../x", "--revision", "rev1"], "../x"),
        (
            vec!["upgrade", "--id", "../../x", "--revision", "rev1"],
            "--id",
        ),
        (vec!["upgrade", "--id", "", "--revision", "rev1"], "--id"),
        (vec!["rollback", "--id", "corp"], "no previous revision"),
        (vec!["stop", "--id", "nope"], "nope"),
        (vec!["stop", "--id", "a/b"], "--id"),
        (vec!["status", "--id", "nope"], "nope"),
        (vec!["status", "--id", "a b"], "--id"),
        (vec!["logs", "--id", "a/b"], "--id"),
        (vec!["probe", "--id", "a/b"], "--id"),
        (vec!["supervise", "pause", "--id", "nope"], "nope"),
        (
            vec!["start", "--id", "corp", "--revision", "a/b"],
            "--revision",
        ),
        (
            vec!["start", "--id", "corp", "--revision", ""],
            "--revision",
        ),
        (vec!["start", "--id", "corp", "--revision", "-x"], "'-x'"),
        (
            vec!["start", "--id", "corp", "--revision", "a b"],
            "--revision",
        ),
        (
            vec!["start", "--id", "corp", "--revision", ".."],
            "--revision",
        ),
        (
            vec!["start", "--id", "corp", "--revision", &long_rev],
            "--revision",
        ),
        (vec!["start", "--id", "corp", "--revision", "rev9"], "rev9"),
        (
            vec!["show", "--id", "corp", "--revision", "nosuchtag"],
            "nosuchtag",
        ),
        (
            vec![
                "upgrade",
                "--id",
                "corp",
                "--revision",
                "rev1",
                "--timeout",
                "soon",
            ],
            "--timeout",
        ),
        (
            vec![
                "upgrade",
                "--id",
                "corp",
                "--revision",
                "rev1",
                "--lock-timeout",
                "48h",
            ],
            "24h",
        ),
        (vec!["upgrade", "--id", "corp"], "--revision"),
        (vec!["upgrade", "--revision", "rev1"], "--id"),
        (vec!["run", "--id", "corp", "--revision", "rev1"], "<CMD>"),
        (
            vec![
                "run",
                "--id",
                "corp",
                "--revision",
                "rev1",
                "-t",
                "--detach",
                "--",
                "true",
            ],
            "--detach",
        ),
        (
            vec![
                "run",
                "--id",
                "corp",
                "--revision",
                "rev1",
                "--process",
                "nope",
                "--",
                "true",
            ],
            "nope",
        ),
        (vec!["frobnicate"], "frobnicate"),
        (
            vec!["start", "--id", "corp", "--revision", "rev1", "--colour"],
            "--colour",
        ),
        (vec!["reconcile", "--lock-timeout", "x"], "--lock-timeout"),
    ];
    for (args, needle) in &flags {
        check("flags", c, args, needle);
    }
    assert!(
        wrong.is_empty(),
        "{} of the corpus did not hold:\n{}",
        wrong.len(),
        wrong.join("\n")
    );
    let n = defs.len() * 2 + flags.len();
    assert!(n >= 100, "the corpus has {n} cases");
    eprintln!("bad-input corpus: {n} cases, each exit 2, named, nothing changed");
    assert!(units_matching("shim-corp*").is_empty());
}

/// An image that ships a node of one of the host's block devices: the container cannot open
/// it (runc's device rule denies it; crun, which cannot enforce one here, is refused).
#[test]
fn a_device_node_shipped_in_an_image_gives_no_access_to_the_host_device() {
    require_sandbox!();
    // A block device of this host, e.g. its disk (major:minor from sysfs).
    let dev = std::fs::read_dir("/sys/dev/block")
        .ok()
        .and_then(|mut d| d.next())
        .and_then(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().to_string());
    let Some(dev) = dev else {
        eprintln!("skipped: this host has no block device to point a node at");
        return;
    };
    let (major, minor) = dev.split_once(':').unwrap();
    let layout = "/var/lib/shim-test/images/devnode";
    let o = run(Command::new("bash")
        .arg(repo_root().join("tests/sandbox/build-test-image.sh"))
        .args([layout, "revdev", "revdev", TESTAPP])
        .env("IMAGE_DEVICE", format!("b {major} {minor}")));
    assert!(o.status.success(), "{}", stderr(&o));
    let text = toml("devn").replace("oci:{layout}", &format!("oci:{layout}"));
    let cfg = TestConfig::new(&text);
    let o = shim(
        cfg.path(),
        &[
            "run",
            "--id",
            "devn",
            "--revision",
            "revdev",
            "--",
            "/bin/sh",
            "-c",
            "ls -l /app/hostdev; head -c 512 /app/hostdev > /dev/null && echo READ-THE-HOST-DEVICE",
        ],
    );
    let (out, err) = (stdout(&o), stderr(&o));
    assert!(
        out.contains("/app/hostdev"),
        "the node is in the image: {out}\n{err}"
    );
    assert!(
        !out.contains("READ-THE-HOST-DEVICE"),
        "the container read {dev}: {out}"
    );
    assert!(
        err.contains("Operation not permitted") || err.contains("Permission denied"),
        "opening the node must be refused, not fail otherwise: {err}"
    );
    assert_ne!(o.status.code(), Some(0));
}
