//! The upgrade through the fakes: every step's failure, the bail-outs, and the recovery from
//! each persisted phase. systemd, nginx, the health checks, /proc and the clock are fakes
//! (the clock moves only when the upgrade sleeps, so a 30 s health deadline takes no time);
//! the state store, locks, instance bundles and upstream files are real files in a temporary
//! directory.

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use super::*;
use crate::host::clock::FakeClock;
use crate::host::health::{Check, FakeHealthChecker};
use crate::host::nft::Nft;
use crate::host::nginx::FakeNginx;
use crate::host::procfs::FakeProcfs;
use crate::host::systemd::fake::lock;
use crate::host::FakeHost;
use crate::ops::testkit::{self, FakePreparer};

struct T {
    fh: FakeHost,
    defs: Definitions,
    http: Arc<FakeHealthChecker>,
    nginx: Arc<FakeNginx>,
    procfs: Arc<FakeProcfs>,
    clock: Arc<FakeClock>,
    images: Arc<FakePreparer>,
    file: PathBuf,
}

const DEF: &str = r#"
[shim]
port_range = [30000, 30100]

[services.app]
image = "oci:/i:{revision}"

[services.app.processes.web]
count = 2
command = ["/app"]
health = { path = "/health", start_period = "2s" }
proxy = { upstream = "app_web", file = "@FILE@" }
drain = "3s"

[services.app.processes.worker]
command = ["/w"]
"#;

fn setup_with(def: &str) -> T {
    setup_as(def, false)
}

/// With `tagged`, the fake preparer gathers tagged deployments, as the real one does.
fn setup_as(def: &str, tagged: bool) -> T {
    let http = Arc::new(FakeHealthChecker::default());
    *lock(&http.default) = Some(Check::Healthy(200));
    let nginx = Arc::new(FakeNginx::default());
    let procfs = Arc::new(FakeProcfs::default());
    let clock = Arc::new(FakeClock::default());
    let images = Arc::new(FakePreparer {
        tagged,
        ..Default::default()
    });
    let (h2, n2, p2, c2, i2) = (
        http.clone(),
        nginx.clone(),
        procfs.clone(),
        clock.clone(),
        images.clone(),
    );
    let fh = FakeHost::with(move |h| {
        h.health = Box::new(h2);
        h.nginx = Box::new(n2);
        h.procfs = Box::new(p2);
        h.clock = Box::new(c2);
        h.images = Box::new(i2);
    });
    let file = fh.tmp.path().join("nginx/app.conf");
    let defs = testkit::defs(&def.replace("@FILE@", &file.display().to_string()));
    fh.systemd.insert(crate::host::systemd::UnitInfo {
        name: "nginx.service".into(),
        active_state: "active".into(),
        sub_state: "running".into(),
        main_pid: 100,
        ..Default::default()
    });
    T {
        fh,
        defs,
        http,
        nginx,
        procfs,
        clock,
        images,
        file,
    }
}

fn setup() -> T {
    setup_with(DEF)
}

fn opts(kind: Kind) -> Options {
    Options {
        deployed: None,
        restart: Vec::new(),
        kind,
        dry_run: false,
        timeout: None,
        lock_timeout: Duration::ZERO,
        config: PathBuf::from("/etc/shim/services.toml"),
        progress: report::Sink::new(report::Printer { json: false }),
    }
}

impl T {
    fn up(&self, rev: &str) -> Result<Outcome> {
        converge(&self.fh.host, &self.defs, "app", rev, &opts(Kind::Upgrade))
    }
    fn state(&self) -> ServiceState {
        self.fh.host.state().load("app").unwrap()
    }
    fn instances(&self) -> Vec<String> {
        self.fh
            .systemd
            .unit_names()
            .into_iter()
            .filter(|n| n.starts_with("shim-app-"))
            .collect()
    }
    fn of(&self, rev: &str) -> Vec<String> {
        self.instances()
            .into_iter()
            .filter(|n| n.contains(&format!("-{rev}-")))
            .collect()
    }
    fn upstream(&self) -> String {
        std::fs::read_to_string(&self.file).unwrap_or_default()
    }
    fn reloads(&self) -> usize {
        self.fh
            .systemd
            .calls()
            .iter()
            .filter(|c| *c == "reload nginx.service")
            .count()
    }
    /// Makes the new instances of `rev` answer `c` (the old ones keep answering 200).
    fn answer(&self, ports: &[u16], c: Check) {
        for p in ports {
            lock(&self.http.answers).insert(*p, c.clone());
        }
    }
    fn ports_of(&self, rev: &str) -> Vec<u16> {
        let units = lock(&self.fh.systemd.units);
        let mut v: Vec<u16> = units
            .values()
            .filter(|u| u.field(crate::plan::fields::REVISION) == Some(rev))
            .filter_map(|u| u.port())
            .collect();
        v.sort();
        v
    }
}

#[test]
fn a_first_deploy_starts_checks_switches_and_records() {
    let t = setup();
    let out = t.up("r1").unwrap();
    assert_eq!(t.of("r1").len(), 3, "{:?}", t.instances());
    let st = t.state();
    assert_eq!(st.current.as_deref(), Some("r1"));
    assert!(st.upgrading.is_none() && !st.stopped);
    assert!(t.upstream().contains("revision r1"), "{}", t.upstream());
    assert!(t.upstream().contains("server 127.0.0.1:30000"));
    assert!(t.upstream().contains("server 127.0.0.1:30001"));
    assert_eq!(t.reloads(), 1);
    assert_eq!(t.nginx.tests.load(Ordering::SeqCst), 1);
    use machine::Step::*;
    assert_eq!(
        out.steps,
        vec![Init, Fetch, Lock, Recover, Plan, Start, Health, Switch, Record, Probe, Done]
    );
    // Only the web instances have a health check.
    let asked: BTreeSet<u16> = lock(&t.http.asked).iter().map(|(p, _)| *p).collect();
    assert_eq!(asked, [30000, 30001].into());
    // The probe timer exists.
    assert!(t
        .fh
        .systemd
        .unit_names()
        .contains(&"shim-probe-app.timer".to_string()));
}

#[test]
fn an_upgrade_drains_then_stops_the_old_revision() {
    let t = setup();
    t.up("r1").unwrap();
    let old_ports = t.ports_of("r1");
    // The old instances still have connections at the first two looks, none at the third.
    *lock(&t.procfs.open) = [2, 1].into();
    let out = t.up("r2").unwrap();
    assert!(t.of("r1").is_empty(), "{:?}", t.instances());
    assert_eq!(t.of("r2").len(), 3);
    let new_ports = t.ports_of("r2");
    assert!(
        new_ports.iter().all(|p| !old_ports.contains(p)),
        "ports of running instances are never reused"
    );
    assert!(t.upstream().contains("revision r2"));
    let st = t.state();
    assert_eq!(
        (st.current.as_deref(), st.previous.as_deref()),
        (Some("r2"), Some("r1"))
    );
    assert!(out.steps.contains(&machine::Step::Drain));
    // The drain watched the old instances' ports and ended once their connections were
    // gone: the grace, then two polls, well before the longest drain (the worker's 5 s).
    let asked = lock(&t.procfs.asked).clone();
    let old: BTreeSet<u16> = old_ports.iter().copied().collect();
    assert_eq!(asked, vec![old.clone(), old.clone(), old], "{asked:?}");
    let slept: Duration = lock(&t.clock.slept).iter().sum();
    assert_eq!(
        slept,
        Duration::from_millis(350),
        "{:?}",
        lock(&t.clock.slept)
    );
    // nginx was switched before the old instances were stopped.
    let calls = t.fh.systemd.calls();
    let reload = calls
        .iter()
        .rposition(|c| c == "reload nginx.service")
        .unwrap();
    let stop = calls
        .iter()
        .position(|c| c.starts_with("stop shim-app-web-r1-"))
        .unwrap();
    assert!(reload < stop, "{calls:?}");
}

#[test]
fn the_same_revision_again_starts_nothing_and_does_not_reload() {
    let t = setup();
    t.up("r1").unwrap();
    let before = t.instances();
    let out = t.up("r1").unwrap();
    assert_eq!(t.instances(), before);
    assert_eq!(t.reloads(), 1, "the upstream file is unchanged: no reload");
    assert!(!out.steps.contains(&machine::Step::StopOld));
}

/// A new deployment of the same revision (here: an env key added) waits for and points nginx
/// at its own instances only: not at the old deployment's, which run beside them until they
/// are stopped, and whose restarts before the upgrade must not fail it.
#[test]
fn a_new_deployment_of_the_same_revision_switches_to_its_own_instances_only() {
    let t = setup_as(DEF, true);
    t.up("r1").unwrap();
    let old = t.ports_of("r1");
    let old_units = t.of("r1");
    // An old instance restarted by systemd before the upgrade (a crash, a rotated secret's
    // `systemctl kill`).
    {
        let mut units = lock(&t.fh.systemd.units);
        let web = units
            .values_mut()
            .find(|u| u.name.contains("-web-"))
            .unwrap();
        web.n_restarts = 1;
    }
    let file = t.file.display().to_string();
    let changed = testkit::defs(&DEF.replace("@FILE@", &file).replace(
        "command = [\"/app\"]",
        "command = [\"/app\"]\nenv = { NEW = \"1\" }",
    ));
    let out = converge(&t.fh.host, &changed, "app", "r1", &opts(Kind::Upgrade)).unwrap();
    assert!(out.changed);
    let now = t.of("r1");
    assert_eq!(now.len(), 3, "{now:?}");
    assert!(
        now.iter().all(|u| !old_units.contains(u)),
        "{now:?} vs {old_units:?}"
    );
    let upstream = t.upstream();
    assert_eq!(
        upstream.matches("server 127.0.0.1:").count(),
        2,
        "{upstream}"
    );
    for p in &old {
        assert!(!upstream.contains(&format!(":{p} ")), "{upstream}");
    }
}

#[test]
fn an_unhealthy_revision_bails_out_and_the_old_one_keeps_serving() {
    let t = setup();
    t.up("r1").unwrap();
    let before = t.upstream();
    // r2's instances will get the next ports; they answer 503.
    t.answer(&[30003, 30004], Check::Status(503));
    let e = format!("{:#}", t.up("r2").unwrap_err());
    assert!(e.contains("bailed out; r1 is still serving"), "{e}");
    assert!(
        e.contains("not healthy within 2s: last check HTTP 503"),
        "{e}"
    );
    assert!(e.contains("last journal lines of shim-app-web-r2-"), "{e}");
    assert!(t.of("r2").is_empty(), "{:?}", t.instances());
    assert_eq!(t.of("r1").len(), 3);
    assert_eq!(t.upstream(), before);
    let st = t.state();
    assert_eq!(st.current.as_deref(), Some("r1"));
    assert!(st.upgrading.is_none());
    // The deadline passed on the fake clock, polling every 25 ms, observing every 10th poll.
    let polls = lock(&t.clock.slept)
        .iter()
        .filter(|d| **d == health::POLL)
        .count();
    assert_eq!(polls, 80, "2 s of 25 ms polls");
    let lists =
        t.fh.systemd
            .calls()
            .iter()
            .filter(|c| c.starts_with("list shim-app-*"))
            .count();
    assert!(lists < 25, "units observed {lists} times in one upgrade");
    // No stale bundle directory is left for the failed instances.
    let dirs: Vec<_> = std::fs::read_dir(t.fh.host.dirs.instances("app"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .collect();
    assert!(dirs.iter().all(|d| d.contains("-r1-")), "{dirs:?}");
}

#[test]
fn an_instance_that_crashes_fails_the_health_step_at_once() {
    let t = setup();
    t.up("r1").unwrap();
    *lock(&t.fh.systemd.on_start) = Some(Box::new(|u| {
        if u.name.contains("-web-r2-1") {
            u.active_state = "activating".into();
            u.sub_state = "auto-restart".into();
            u.exec_main_code = 1;
            u.exec_main_status = 3;
        }
    }));
    let e = format!("{:#}", t.up("r2").unwrap_err());
    assert!(
        e.contains("shim-app-web-r2-1.service: its process exited with status 3"),
        "{e}"
    );
    assert!(
        t.clock.elapsed() < Duration::from_secs(1),
        "failed fast, not at the deadline"
    );
    assert!(t.of("r2").is_empty());
}

#[test]
fn nginx_refusing_the_file_restores_it_and_stops_the_new_instances() {
    let t = setup();
    t.up("r1").unwrap();
    let before = t.upstream();
    t.nginx.refuse.store(true, Ordering::SeqCst);
    let e = format!("{:#}", t.up("r2").unwrap_err());
    assert!(e.contains("nginx was left as it was"), "{e}");
    assert!(
        e.contains("the new upstream was refused; previous file restored"),
        "{e}"
    );
    assert_eq!(t.upstream(), before);
    assert!(t.of("r2").is_empty());
    assert_eq!(t.of("r1").len(), 3);
    assert!(t.state().upgrading.is_none());
}

#[test]
fn a_reload_without_new_workers_restores_the_file_and_bails_out() {
    let t = setup();
    t.up("r1").unwrap();
    let before = t.upstream();
    t.procfs.stuck.store(true, Ordering::SeqCst);
    let e = format!("{:#}", t.up("r2").unwrap_err());
    assert!(
        e.contains("reloading nginx failed; previous upstream restored"),
        "{e}"
    );
    assert!(e.contains("no new nginx worker appeared"), "{e}");
    assert_eq!(t.upstream(), before);
    assert!(t.of("r2").is_empty());
}

#[test]
fn a_failed_start_job_leaves_nothing_and_no_attempt() {
    let t = setup();
    t.up("r1").unwrap();
    lock(&t.fh.systemd.fail_start).push("shim-app-worker-r2-1.service".into());
    let e = format!("{:#}", t.up("r2").unwrap_err());
    assert!(e.contains("shim-app-worker-r2-1.service (failed)"), "{e}");
    assert!(t.of("r2").is_empty());
    assert!(t.state().upgrading.is_none());
    assert_eq!(t.state().current.as_deref(), Some("r1"));
}

#[test]
fn an_image_that_cannot_be_fetched_changes_nothing() {
    let t = setup();
    t.up("r1").unwrap();
    lock(&t.images.bad).push("r2".into());
    let calls_before = t.fh.systemd.calls().len();
    let e = format!("{:#}", t.up("r2").unwrap_err());
    assert!(e.contains("no such tag"), "{e}");
    assert_eq!(
        t.fh.systemd.calls().len(),
        calls_before,
        "systemd was not asked anything"
    );
    assert_eq!(t.state().current.as_deref(), Some("r1"));
}

#[test]
fn killed_after_starting_the_next_upgrade_removes_the_attempts_instances() {
    let t = setup();
    t.up("r1").unwrap();
    // As if shim had been SIGKILLed during r2's health step: r2 runs, nginx still on r1.
    t.answer(&[30003, 30004], Check::NoAnswer("hung".into()));
    let _ = converge(
        &t.fh.host,
        &t.defs,
        "app",
        "r2",
        &Options {
            timeout: Some(Duration::from_millis(50)),
            ..opts(Kind::Reconcile)
        },
    );
    // (reconcile keeps unhealthy instances; undo its record to simulate the kill.)
    let mut st = t.state();
    st.current = Some("r1".into());
    st.previous = None;
    st.upgrading = Some(Attempt {
        revision: "r2".into(),
        phase: Phase::Starting,
        deployment: None,
    });
    t.fh.host.state().save("app", &st).unwrap();
    std::fs::write(
        &t.file,
        crate::plan::upstream::render_upstream(
            "app_web",
            "app",
            "web",
            "r1",
            "",
            &crate::plan::proxy::at_ports(&[30000, 30001]),
        ),
    )
    .unwrap();
    lock(&t.http.answers).clear();
    t.up("r3").unwrap();
    assert!(t.of("r2").is_empty(), "{:?}", t.instances());
    assert!(t.of("r1").is_empty());
    assert_eq!(t.of("r3").len(), 3);
    let st = t.state();
    assert_eq!(
        (st.current.as_deref(), st.previous.as_deref()),
        (Some("r3"), Some("r1"))
    );
}

#[test]
fn killed_after_the_switch_the_next_run_treats_the_attempt_as_current() {
    let t = setup();
    t.up("r1").unwrap();
    t.up("r2").unwrap();
    // Put r1 back beside r2 and record "switched to r2, r1 not yet stopped", as a kill
    // during drain leaves it.
    let mut st = t.state();
    st.current = Some("r1".into());
    st.previous = None;
    st.upgrading = Some(Attempt {
        revision: "r2".into(),
        phase: Phase::Switched,
        deployment: None,
    });
    t.fh.host.state().save("app", &st).unwrap();
    t.fh.systemd.insert(crate::host::systemd::UnitInfo {
        name: "shim-app-web-r1-1.service".into(),
        active_state: "active".into(),
        fields: [
            (crate::plan::fields::SERVICE.to_string(), "app".to_string()),
            (crate::plan::fields::PROCESS.to_string(), "web".to_string()),
            (crate::plan::fields::REVISION.to_string(), "r1".to_string()),
            (crate::plan::fields::INSTANCE.to_string(), "1".to_string()),
        ]
        .into(),
        ..Default::default()
    });
    let reloads = t.reloads();
    t.up("r2").unwrap();
    let st = t.state();
    assert_eq!(
        (st.current.as_deref(), st.previous.as_deref()),
        (Some("r2"), Some("r1"))
    );
    assert!(t.of("r1").is_empty());
    assert_eq!(
        t.reloads(),
        reloads + 1,
        "nginx reloaded before the old instance went"
    );
}

#[test]
fn killed_during_the_switch_counts_as_switched_when_the_file_names_the_attempt() {
    let t = setup();
    t.up("r1").unwrap();
    t.up("r2").unwrap();
    let mut st = t.state();
    st.current = Some("r1".into());
    st.upgrading = Some(Attempt {
        revision: "r2".into(),
        phase: Phase::Starting,
        deployment: None,
    });
    t.fh.host.state().save("app", &st).unwrap();
    // The file already says r2 (written before the kill): the retry must not remove r2.
    assert!(t.upstream().contains("revision r2"));
    t.up("r2").unwrap();
    assert_eq!(t.of("r2").len(), 3);
    assert_eq!(t.state().current.as_deref(), Some("r2"));
}

#[test]
fn start_refuses_to_replace_another_revision_and_changes_nothing() {
    let t = setup();
    t.up("r1").unwrap();
    let before = t.instances();
    let e = converge(&t.fh.host, &t.defs, "app", "r2", &opts(Kind::Start)).unwrap_err();
    assert_eq!(crate::error::exit_code(&e), 2);
    assert!(format!("{e:#}").contains("`shim start` does not replace a revision"));
    assert_eq!(t.instances(), before);
    assert!(t.state().upgrading.is_none());
}

#[test]
fn reconcile_keeps_unhealthy_instances_serving_and_fails_at_the_end() {
    let t = setup();
    t.answer(&[30000, 30001], Check::Status(500));
    let e = converge(&t.fh.host, &t.defs, "app", "r1", &opts(Kind::Reconcile)).unwrap_err();
    let e = format!("{e:#}");
    assert!(
        e.contains("instances kept running although not healthy yet"),
        "{e}"
    );
    assert_eq!(t.of("r1").len(), 3);
    assert!(t.upstream().contains("revision r1"));
    assert_eq!(t.state().current.as_deref(), Some("r1"));
}

#[test]
fn a_dry_run_changes_nothing() {
    let t = setup();
    let o = Options {
        dry_run: true,
        ..opts(Kind::Upgrade)
    };
    let out = converge(&t.fh.host, &t.defs, "app", "r1", &o).unwrap();
    assert!(out.dry_run);
    assert!(t.instances().is_empty());
    assert!(!t.file.exists());
    assert!(!t.fh.host.dirs.state.join("state/app.json").exists());
    assert!(
        t.fh.systemd.calls().iter().all(|c| c.starts_with("list ")),
        "{:?}",
        t.fh.systemd.calls()
    );
    assert_eq!(out.render(false), "dry run: nothing changed\n");
}

#[test]
fn a_singleton_is_stopped_before_its_successor_starts() {
    let t = setup_with(&DEF.replace("command = [\"/w\"]", "command = [\"/w\"]\nsingleton = true"));
    t.up("r1").unwrap();
    t.up("r2").unwrap();
    let calls = t.fh.systemd.calls();
    let stop_old = calls
        .iter()
        .position(|c| c == "stop shim-app-worker-r1-1.service")
        .unwrap();
    let start_new = calls
        .iter()
        .position(|c| c == "start shim-app-worker-r2-1.service")
        .unwrap();
    assert!(stop_old < start_new, "{calls:?}");
}

#[test]
fn lowering_count_stops_the_extra_instances_after_the_switch() {
    let t = setup();
    t.up("r1").unwrap();
    let t2 = T {
        defs: testkit::defs(
            &DEF.replace("count = 2", "count = 1")
                .replace("@FILE@", &t.file.display().to_string()),
        ),
        ..t
    };
    t2.up("r1").unwrap();
    assert_eq!(t2.of("r1").len(), 2, "{:?}", t2.instances());
    assert!(!t2.upstream().contains("30001"), "{}", t2.upstream());
}

#[test]
fn nginx_not_running_fails_the_plan_before_anything_changes() {
    let t = setup();
    t.fh.systemd
        .edit("nginx.service", |u| u.active_state = "inactive".into());
    let e = format!("{:#}", t.up("r1").unwrap_err());
    assert!(e.contains("nginx.service is inactive"), "{e}");
    assert!(t.instances().is_empty());
    assert!(t.state().upgrading.is_none());
}

#[test]
fn a_second_upgrade_waits_for_the_lock_and_names_the_holder() {
    let t = setup();
    let _held = ServiceLock::acquire(&t.fh.host.dirs.run, "app", Duration::ZERO).unwrap();
    let e = format!("{:#}", t.up("r1").unwrap_err());
    assert!(e.contains("locked by another shim command"), "{e}");
    assert!(t.instances().is_empty());
}

#[test]
fn json_outcome_is_one_object() {
    let o = Outcome {
        service: "app".into(),
        deployment: "0123456789ab".into(),
        changed: true,
        revision: "r1".into(),
        dry_run: false,
        ms: 12,
        steps: vec![],
    };
    let v: serde_json::Value = serde_json::from_str(o.render(true).trim()).unwrap();
    assert_eq!(v["result"], "ok");
    assert_eq!(v["revision"], "r1");
    assert_eq!(o.render(false), "done in 12 ms\n");
}

/// The machine-readable contract of `shim upgrade|rollback --json` and the exit codes, as
/// docs/fleet.md states it and the Ansible modules (ansible/…/shim/fleet) read it. A change
/// here breaks every deploy tool parsing the output: change the modules and the document too.
#[test]
fn json_and_exit_code_contract_is_stable() {
    let keys = |v: &serde_json::Value| -> Vec<String> {
        let mut k: Vec<String> = v.as_object().unwrap().keys().cloned().collect();
        k.sort();
        k
    };
    let mut o = Outcome {
        service: "app".into(),
        deployment: "0123456789ab".into(),
        changed: false,
        revision: "r1".into(),
        dry_run: false,
        ms: 12,
        steps: vec![],
    };
    let closing = [
        "changed",
        "deployment",
        "ms",
        "result",
        "revision",
        "service",
    ];
    let v: serde_json::Value = serde_json::from_str(o.render(true).trim()).unwrap();
    assert_eq!(keys(&v), closing);
    assert_eq!(
        (v["result"].as_str(), v["changed"].as_bool()),
        (Some("ok"), Some(false))
    );
    o.dry_run = true;
    o.changed = true;
    let v: serde_json::Value = serde_json::from_str(o.render(true).trim()).unwrap();
    assert_eq!(keys(&v), closing);
    assert_eq!(
        (v["result"].as_str(), v["changed"].as_bool()),
        (Some("dry-run"), Some(true))
    );
    assert_eq!(o.render(false), "dry run: nothing changed\n");
    let step = |err: Option<String>| -> serde_json::Value {
        let line = report::render_step(true, "health", 9, &["d".into()], err);
        serde_json::from_str(&line).unwrap()
    };
    assert_eq!(keys(&step(None)), ["details", "ms", "ok", "step"]);
    assert_eq!(
        keys(&step(Some("x".into()))),
        ["details", "error", "ms", "ok", "step"]
    );
    let codes: Vec<i32> = crate::error::EXIT_CODES.iter().map(|c| c.0).collect();
    assert_eq!(codes, [0, 1, 2]);
    assert_eq!(
        (
            crate::error::EXIT_OK,
            crate::error::EXIT_FAILED,
            crate::error::EXIT_BAD_INPUT
        ),
        (0, 1, 2)
    );
}

#[test]
fn a_failed_stop_after_the_switch_keeps_the_new_revision_and_the_next_run_finishes() {
    let t = setup();
    t.up("r1").unwrap();
    lock(&t.fh.systemd.fail_stop).push("shim-app-worker-r1-1.service".into());
    let e = format!("{:#}", t.up("r2").unwrap_err());
    assert!(
        e.contains("stopping failed for: shim-app-worker-r1-1.service"),
        "{e}"
    );
    // nginx serves r2 already; the attempt stays recorded as switched.
    assert!(t.upstream().contains("revision r2"));
    let st = t.state();
    assert_eq!(
        st.upgrading.as_ref().map(|a| a.phase),
        Some(Phase::Switched)
    );
    assert_eq!(
        st.upgrading.as_ref().map(|a| a.revision.as_str()),
        Some("r2")
    );
    // The next run (reconcile, or the same upgrade again) recovers: r2 current, r1 gone.
    lock(&t.fh.systemd.fail_stop).clear();
    t.up("r2").unwrap();
    let st = t.state();
    assert_eq!(
        (st.current.as_deref(), st.previous.as_deref()),
        (Some("r2"), Some("r1"))
    );
    assert!(st.upgrading.is_none());
    assert!(t.of("r1").is_empty(), "{:?}", t.instances());
    assert_eq!(t.of("r2").len(), 3);
}

#[test]
fn a_crontab_that_cannot_be_read_stops_the_upgrade_before_anything_changes() {
    // generate-cron runs as a one-off container. Here it cannot even start (the test's shim
    // binary, /usr/bin/shim, does not exist to be the run's anchor): the upgrade must stop at
    // `crontab`, before any instance starts. (Bad crontab lines: the sandbox's cron test.)
    let t = setup_with(&DEF.replace(
        "image = \"oci:/i:{revision}\"",
        "image = \"oci:/i:{revision}\"\ncron = \"bin/generate-cron\"",
    ));
    let e = format!("{:#}", t.up("r1").unwrap_err());
    assert!(
        e.contains("running bin/generate-cron of service app at revision r1"),
        "{e}"
    );
    assert!(t.instances().is_empty(), "{:?}", t.instances());
    assert!(t.state().upgrading.is_none());
    assert!(!t.file.exists());
}

#[test]
fn a_proxy_file_shim_did_not_write_is_refused_before_anything_changes() {
    let t = setup();
    std::fs::create_dir_all(t.file.parent().unwrap()).unwrap();
    std::fs::write(&t.file, "worker_processes 4;\n").unwrap();
    let e = t.up("r1").unwrap_err();
    assert_eq!(crate::error::exit_code(&e), 2, "{e:#}");
    assert!(
        format!("{e:#}").contains("was not written by shim"),
        "{e:#}"
    );
    assert_eq!(
        std::fs::read_to_string(&t.file).unwrap(),
        "worker_processes 4;\n"
    );
    assert!(t.instances().is_empty());
    assert!(t.state().upgrading.is_none());
}

/// The definitions of a tagged test host, edited by `f` (as an operator edits the file).
fn edit_defs(t: &mut T, f: impl Fn(&str) -> String) {
    let text = f(&DEF.replace("@FILE@", &t.file.display().to_string()));
    t.defs = testkit::defs(&text);
}

/// (unit name, main pid) of every instance.
fn pids(t: &T) -> Vec<(String, u32)> {
    lock(&t.fh.systemd.units)
        .values()
        .filter(|u| u.name.starts_with("shim-app-"))
        .map(|u| (u.name.clone(), u.main_pid))
        .collect()
}

#[test]
fn a_definition_change_of_the_same_revision_rolls_out_then_there_is_nothing_to_do() {
    let mut t = setup_as(DEF, true);
    t.up("r1").unwrap();
    let first = t.state().deployment.unwrap();
    let old = t.instances();
    assert_eq!(old.len(), 3);
    assert!(
        old.iter()
            .all(|n| n.contains(&format!("-r1-{}-", first.tag("web")))
                || n.contains(&format!("-r1-{}-", first.tag("worker")))),
        "{old:?}"
    );
    assert!(
        t.upstream()
            .contains(&format!("deployment {}.", first.tag("web"))),
        "{}",
        t.upstream()
    );

    // The same definitions again: nothing is started, stopped or reloaded.
    let before = pids(&t);
    let calls = t.fh.systemd.calls().len();
    let out = t.up("r1").unwrap();
    assert!(!out.changed);
    assert_eq!(pids(&t), before);
    let changes: Vec<String> = t.fh.systemd.calls()[calls..]
        .iter()
        .filter(|c| !c.starts_with("list ") && !c.starts_with("version"))
        .cloned()
        .collect();
    assert!(changes.is_empty(), "{changes:?}");
    assert!(
        out.render(true).contains("\"changed\":false"),
        "{}",
        out.render(true)
    );

    // An env key added: new instances beside the old ones, switch, the old ones stop.
    edit_defs(&mut t, |d| {
        d.replace(
            "command = [\"/app\"]",
            "command = [\"/app\"]\nenv = { NEW = \"1\" }",
        )
    });
    let out = t.up("r1").unwrap();
    assert!(out.changed);
    let st = t.state();
    let second = st.deployment.clone().unwrap();
    assert_ne!(first.id(), second.id());
    assert_eq!(second.revision, "r1");
    assert_eq!(
        st.previous_deployment.as_ref().map(|d| d.id()),
        Some(first.id())
    );
    assert_eq!(st.previous.as_deref(), Some("r1"));
    let now = t.instances();
    assert_eq!(now.len(), 3);
    assert!(
        now.iter().all(|n| !old.contains(n)),
        "every instance replaced: {now:?}"
    );
    assert!(t
        .upstream()
        .contains(&format!("deployment {}.", second.tag("web"))));
    let web = second
        .definition
        .processes
        .values()
        .find(|p| p.name.as_str() == "web")
        .unwrap();
    assert_eq!(web.env.get("NEW").map(String::as_str), Some("1"));
    // Its ports are recorded, and differ from the old instances' (both ran at once).
    let old_ports: BTreeSet<u16> = first.ports.values().copied().collect();
    let new_ports: BTreeSet<u16> = second.ports.values().copied().collect();
    assert_eq!(new_ports.len(), 2);
    assert!(
        old_ports.is_disjoint(&new_ports),
        "{old_ports:?} {new_ports:?}"
    );
}

#[test]
fn a_count_change_scales_in_place() {
    let mut t = setup_as(DEF, true);
    t.up("r1").unwrap();
    let before = pids(&t);
    let id = t.state().deployment.unwrap().id();
    edit_defs(&mut t, |d| d.replace("count = 2", "count = 3"));
    t.up("r1").unwrap();
    let after = pids(&t);
    assert_eq!(after.len(), 4);
    assert!(before.iter().all(|b| after.contains(b)), "nothing replaced");
    let st = t.state();
    assert_eq!(
        st.deployment.as_ref().unwrap().id(),
        id,
        "the same deployment"
    );
    assert_eq!(st.deployment.unwrap().ports.len(), 3);
    assert!(st.previous_deployment.is_none());
}

#[test]
fn a_restart_replaces_the_named_process_only_and_keeps_the_deployment() {
    let t = setup_as(DEF, true);
    t.up("r1").unwrap();
    let d = t.state().deployment.unwrap();
    let worker_before: Vec<String> = t
        .instances()
        .into_iter()
        .filter(|n| n.contains("-worker-"))
        .collect();
    let web_before: Vec<String> = t
        .instances()
        .into_iter()
        .filter(|n| n.contains("-web-"))
        .collect();
    let mut o = opts(Kind::Restart);
    o.deployed = Some(d.restarted(&["web".to_string()]));
    o.restart = vec!["web".to_string()];
    let out = converge(&t.fh.host, &t.defs, "app", "r1", &o).unwrap();
    assert!(out.changed);
    let web_after: Vec<String> = t
        .instances()
        .into_iter()
        .filter(|n| n.contains("-web-"))
        .collect();
    let worker_after: Vec<String> = t
        .instances()
        .into_iter()
        .filter(|n| n.contains("-worker-"))
        .collect();
    assert_eq!(worker_after, worker_before);
    assert_eq!(web_after.len(), 2);
    assert!(
        web_after.iter().all(|n| !web_before.contains(n)),
        "{web_after:?}"
    );
    let st = t.state();
    let now = st.deployment.unwrap();
    assert_eq!(now.id(), d.id());
    assert_eq!(now.generations.get("web"), Some(&1));
    assert!(
        st.previous_deployment.is_none(),
        "a restart is not a new deployment"
    );
    assert!(t
        .upstream()
        .contains(&format!("deployment {}.", now.tag("web"))));
    // A second restart read the state before the first one ran: it counts from what runs
    // now, so every web instance is replaced again (none is taken for its own).
    let mut o = opts(Kind::Restart);
    o.deployed = Some(d.restarted(&[]));
    converge(&t.fh.host, &t.defs, "app", "r1", &o).unwrap();
    let again = t.state().deployment.unwrap();
    assert_eq!(again.generations.get("web"), Some(&2));
    assert!(t
        .instances()
        .iter()
        .all(|n| !web_after.contains(n) && !worker_after.contains(n)));
    // A restart that lost the race with an upgrade refuses, changing nothing.
    t.up("r2").unwrap();
    let before = pids(&t);
    let e = converge(&t.fh.host, &t.defs, "app", "r1", &o)
        .unwrap_err()
        .to_string();
    assert!(e.contains("changed while this restart waited"), "{e}");
    assert_eq!(pids(&t), before);
}

#[test]
fn reconcile_restarts_what_was_deployed_not_the_edited_definitions() {
    let mut t = setup_as(DEF, true);
    t.up("r1").unwrap();
    let st = t.state();
    let d = st.deployment.clone().unwrap();
    // The definitions change on disk; every instance is gone (a reboot).
    edit_defs(&mut t, |x| {
        x.replace("command = [\"/app\"]", "command = [\"/other\"]")
    });
    lock(&t.fh.systemd.units).retain(|n, _| !n.starts_with("shim-app-"));
    let mut o = opts(Kind::Reconcile);
    o.deployed = Some(d.clone());
    converge(&t.fh.host, &t.defs, "app", "r1", &o).unwrap();
    let st = t.state();
    assert_eq!(st.deployment.as_ref().map(|x| x.id()), Some(d.id()));
    // The same names and ports as before: instances keep their ports.
    let ports: BTreeSet<u16> = lock(&t.fh.systemd.units)
        .values()
        .filter_map(|u| u.port())
        .collect();
    assert_eq!(ports, d.ports.values().copied().collect());
    let web = st.deployment.unwrap().definition;
    let cmd = &web
        .processes
        .values()
        .find(|p| p.name.as_str() == "web")
        .unwrap()
        .command;
    assert_eq!(cmd.as_deref(), Some(&["/app".to_string()][..]));
}

#[test]
fn a_drain_whose_connections_never_go_ends_at_drain_and_says_so() {
    let t = setup();
    t.up("r1").unwrap();
    *lock(&t.procfs.open) = std::iter::repeat_n(4, 1000).collect();
    let mut o = opts(Kind::Upgrade);
    let lines = Arc::new(report::Collect::default());
    o.progress = report::Sink::new(lines.clone());
    converge(&t.fh.host, &t.defs, "app", "r2", &o).unwrap();
    // The longest drain of the old instances' processes: the worker's default 5 s.
    let slept: Duration = lock(&t.clock.slept).iter().sum();
    assert_eq!(slept, Duration::from_secs(5), "{:?}", lock(&t.clock.slept));
    assert!(t.of("r1").is_empty(), "stopped anyway");
    let lines = lock(&lines.0).clone();
    assert!(
        lines.iter().any(|l| l.starts_with("  drain ")
            && l.contains("4 connection(s) to the old instances still open after drain 5s")),
        "{lines:?}"
    );
}

/// The operation prints nothing itself: the step lines, the begin and closing lines go to the
/// sink its caller gives, in order, as the CLI renders them.
#[test]
fn progress_goes_to_the_callers_sink_in_order() {
    let t = setup();
    let mut o = opts(Kind::Upgrade);
    let lines = Arc::new(report::Collect::default());
    o.progress = report::Sink::new(lines.clone());
    let out = converge(&t.fh.host, &t.defs, "app", "r1", &o).unwrap();
    let lines = lock(&lines.0).clone();
    let names: Vec<&str> = lines
        .iter()
        .map(|l| l.split_whitespace().next().unwrap_or(""))
        .collect();
    assert_eq!(
        names,
        [
            "upgrade", "fetch", "lock", "recover", "plan", "start", "health", "switch", "record",
            "probe", "done"
        ]
    );
    assert_eq!(lines[0], "upgrade app to r1\n");
    assert_eq!(lines.last(), Some(&out.render(false)));
}

// ---- switch = "nftables": the kernel's rule is replaced, nginx is not reloaded.

fn setup_nft() -> T {
    setup_with(&DEF.replace("[shim]\n", "[shim]\nswitch = \"nftables\"\n"))
}

impl T {
    /// The rules of web's chain in the fake nftables.
    fn rule(&self) -> Vec<String> {
        self.fh.nft.rules("svc_app/web").unwrap_or_default()
    }
    /// The ports web's rule leads to.
    fn rule_ports(&self) -> Vec<u16> {
        let rule = self.fh.nft.list_chain("shim", "svc_app/web").unwrap();
        rule.flatten()
            .map(|r| r.endpoints.iter().map(|e| e.port).collect())
            .unwrap_or_default()
    }
}

#[test]
fn nftables_switches_in_the_kernel_and_reloads_nginx_only_for_the_first_file() {
    let t = setup_nft();
    t.up("r1").unwrap();
    let endpoint = crate::plan::nft::stable_endpoint("app", "web");
    assert!(
        t.upstream()
            .contains(&format!("server {endpoint} max_fails=1 fail_timeout=2s;")),
        "{}",
        t.upstream()
    );
    let slot2 = endpoint.replace(":1", ":2");
    assert!(
        t.upstream().contains(&slot2),
        "one slot per instance: {}",
        t.upstream()
    );
    assert_eq!(t.reloads(), 1, "the stable file is new: one reload");
    assert_eq!(t.rule_ports(), t.ports_of("r1")[..2].to_vec());
    assert!(t.rule()[0].contains("revision r1"), "{:?}", t.rule());
    let file = t.upstream();
    t.up("r2").unwrap();
    let web_r2: Vec<u16> = t.ports_of("r2");
    assert_eq!(t.rule_ports().len(), 2);
    assert!(t.rule_ports().iter().all(|p| web_r2.contains(p)));
    assert!(t.rule()[0].contains("revision r2"), "{:?}", t.rule());
    assert_eq!(t.upstream(), file, "the upstream file is not touched");
    assert_eq!(t.reloads(), 1, "no reload for the switch");
    assert!(t.of("r1").is_empty());
}

#[test]
fn nftables_refusing_the_rule_bails_out_and_keeps_the_old_rule() {
    let t = setup_nft();
    t.up("r1").unwrap();
    let before = t.rule();
    t.fh.nft.refuse.store(true, Ordering::SeqCst);
    let e = format!("{:#}", t.up("r2").unwrap_err());
    assert!(e.contains("bailed out") && e.contains("refused"), "{e}");
    assert_eq!(t.rule(), before);
    assert!(t.of("r2").is_empty(), "{:?}", t.instances());
    assert_eq!(t.state().current.as_deref(), Some("r1"));
    assert_eq!(t.of("r1").len(), 3);
}

#[test]
fn nftables_nginx_refusing_the_first_file_puts_the_rule_back() {
    let t = setup_nft();
    t.nginx.refuse.store(true, Ordering::SeqCst);
    assert!(t.up("r1").is_err());
    assert!(t.rule().is_empty(), "closed again: {:?}", t.rule());
    assert!(t.upstream().is_empty(), "the file is removed again");
}

#[test]
fn nftables_killed_during_the_switch_is_read_back_from_the_kernel() {
    let t = setup_nft();
    t.up("r1").unwrap();
    t.up("r2").unwrap();
    let mut st = t.state();
    st.current = Some("r1".into());
    st.upgrading = Some(Attempt {
        revision: "r2".into(),
        phase: Phase::Starting,
        deployment: None,
    });
    t.fh.host.state().save("app", &st).unwrap();
    t.up("r2").unwrap();
    assert_eq!(t.of("r2").len(), 3);
    assert_eq!(t.state().current.as_deref(), Some("r2"));
    assert_eq!(t.reloads(), 1, "recovery reloads nothing under nftables");
}

#[test]
fn nftables_stop_flushes_the_chain_and_leaves_the_file() {
    let t = setup_nft();
    t.up("r1").unwrap();
    let file = t.upstream();
    let d = crate::ops::stop::stop(
        &t.fh.host,
        Some(&t.defs),
        "app",
        Duration::from_secs(5),
        Duration::ZERO,
        crate::ops::stop::StopBy::Command,
    )
    .unwrap();
    assert!(t.rule().is_empty(), "{:?}", t.rule());
    assert!(!d.closed.is_empty(), "{:?}", d.closed);
    assert_eq!(t.upstream(), file);
    assert_eq!(t.reloads(), 1);
    // Twice is fine.
    crate::ops::stop::stop(
        &t.fh.host,
        Some(&t.defs),
        "app",
        Duration::from_secs(5),
        Duration::ZERO,
        crate::ops::stop::StopBy::Command,
    )
    .unwrap();
}

#[test]
fn nftables_reconcile_recreates_the_rule_after_it_vanished() {
    let t = setup_nft();
    t.up("r1").unwrap();
    let ports = t.rule_ports();
    t.fh.nft.wipe();
    let opts = crate::ops::reconcile::Options {
        dry_run: false,
        lock_timeout: Duration::ZERO,
        config: PathBuf::from("/etc/shim/services.toml"),
        boot: false,
    };
    crate::ops::reconcile::reconcile(&t.fh.host, &t.defs, &opts, true).unwrap();
    assert_eq!(t.rule_ports().len(), 2, "{:?}", t.rule());
    assert!(t.rule()[0].contains("revision r1"));
    let _ = ports;
}

/// A `shim stop` that lands while an upgrade waits for the service lock: the upgrade read
/// "not stopped" before the lock (to fetch), the stop marks the service stopped and releases
/// the lock, and the upgrade, once it holds the lock, must refuse (exit 2, nothing changed)
/// instead of starting the new revision and clearing `stopped` when it records.
#[test]
fn a_stop_that_lands_while_an_upgrade_waits_for_the_lock_is_not_undone() {
    let t = setup();
    t.up("r1").unwrap();
    let before = t.instances();
    let mut o = opts(Kind::Upgrade);
    o.lock_timeout = Duration::from_secs(30);
    // What the CLI does first: resolve and check, before the lock.
    let rev = rules::target(&t.fh.host, "app", &mut o, Some("r2".into())).unwrap();
    let held = ServiceLock::acquire(&t.fh.host.dirs.run, "app", Duration::ZERO).unwrap();
    let store = t.fh.host.state();
    let stopper = std::thread::spawn(move || {
        // The upgrade is waiting on the lock by now (it polls every 50 ms).
        std::thread::sleep(Duration::from_millis(200));
        let mut st = store.load("app").unwrap();
        st.stopped = true;
        store.save("app", &st).unwrap();
        drop(held);
    });
    let e = converge(&t.fh.host, &t.defs, "app", &rev, &o).unwrap_err();
    stopper.join().unwrap();
    assert_eq!(crate::error::exit_code(&e), 2, "{e:#}");
    assert!(format!("{e:#}").contains("service app is stopped"), "{e:#}");
    let st = t.state();
    assert!(st.stopped, "the stop is kept");
    assert_eq!(st.current.as_deref(), Some("r1"));
    assert!(st.upgrading.is_none());
    assert_eq!(t.instances(), before, "nothing started or stopped");
    assert!(t.of("r2").is_empty());
}

#[test]
fn a_restart_refuses_a_process_the_deployment_does_not_have() {
    let t = setup();
    t.up("r1").unwrap();
    let mut o = opts(Kind::Restart);
    o.restart = vec!["nope".into()];
    let e = rules::target(&t.fh.host, "app", &mut o, None).unwrap_err();
    assert_eq!(crate::error::exit_code(&e), 2);
    assert_eq!(
        e.to_string(),
        "--process nope: service app has no such process in its deployment (it has web, worker)"
    );
    o.restart = vec!["web".into()];
    assert_eq!(
        rules::target(&t.fh.host, "app", &mut o, None).unwrap(),
        "r1"
    );
    assert!(o.deployed.is_some());
}

/// `systemctl stop shim-app.service` (ExecStop: `shim stop --from-unit`, the instances'
/// stops queued) where the processes end as `how` says, then `systemctl start` (ExecStart:
/// `shim start --from-unit`, the recorded deployment).
fn systemctl_stop_then_start(how: fn(&mut crate::host::systemd::UnitInfo)) {
    use crate::host::systemd::ActiveState;
    use crate::ops::stop::{stop, StopBy};
    let t = setup();
    t.up("r1").unwrap();
    let before = t.instances();
    assert_eq!(before.len(), 3);
    *lock(&t.fh.systemd.on_stop) = Some(Box::new(move |u| {
        if u.name.starts_with("shim-app-") {
            how(u)
        }
    }));
    let by = StopBy::Unit { shutdown: false };
    stop(
        &t.fh.host,
        Some(&t.defs),
        "app",
        Duration::from_secs(5),
        Duration::ZERO,
        by,
    )
    .unwrap();
    *lock(&t.fh.systemd.on_stop) = None;
    // Left behind, failed (CollectMode=inactive keeps them).
    let failed = |n: &String| {
        lock(&t.fh.systemd.units)
            .get(n)
            .is_some_and(|u| u.active_state == ActiveState::Failed)
    };
    assert!(before.iter().all(failed), "{:?}", lock(&t.fh.systemd.units));
    let mut o = opts(Kind::Start);
    o.deployed = t.state().deployment.clone();
    let calls_before = t.fh.systemd.calls().len();
    converge(&t.fh.host, &t.defs, "app", "r1", &o).unwrap();
    // Each failed unit was stopped and reset (unloaded), then a fresh instance started
    // under its name.
    let calls = t.fh.systemd.calls()[calls_before..].to_vec();
    for n in &before {
        let at = |c: String| calls.iter().position(|x| *x == c);
        let (stop, start) = (at(format!("stop {n}")), at(format!("start {n}")));
        assert!(stop.is_some() && stop < start, "{calls:?}");
    }
    let units = lock(&t.fh.systemd.units);
    for n in &before {
        assert!(units[n].is_running(), "{n}: {:?}", units[n]);
    }
    assert!(!t.state().stopped);
}

#[test]
fn systemctl_stop_and_start_replaces_instances_that_exited_143() {
    systemctl_stop_then_start(|u| {
        // SIGTERM handled by exiting 143: not a clean exit for systemd.
        u.active_state = "failed".into();
        u.sub_state = "failed".into();
        u.result = "exit-code".into();
        u.exec_main_code = 1;
        u.exec_main_status = 143;
    });
}

#[test]
fn systemctl_stop_and_start_replaces_instances_sigkilled_at_their_stop_timeout() {
    systemctl_stop_then_start(|u| {
        u.active_state = "failed".into();
        u.sub_state = "failed".into();
        u.result = "timeout".into();
        u.exec_main_code = 2;
        u.exec_main_status = 9;
    });
}
