use super::*;
use std::collections::BTreeMap;

use crate::config::parse_sources;
use crate::host::state::{Attempt, Phase};
use crate::host::systemd::Systemd;
use crate::host::systemd::UnitInfo;
use crate::plan::proxy::{Pointed, Pointer};

const DEF: &str = r#"
[services.app]
image = "oci:/i:{revision}"

[services.app.processes.web]
count = 2
health = { path = "/health" }
proxy = { upstream = "app_web", file = "/etc/nginx/shim/app.conf" }

[services.app.processes.worker]
command = ["/w"]
"#;

fn unit(process: &str, rev: &str, index: u32, port: Option<u16>) -> UnitInfo {
    let mut fields = BTreeMap::new();
    fields.insert(crate::plan::fields::SERVICE.to_string(), "app".to_string());
    fields.insert(
        crate::plan::fields::PROCESS.to_string(),
        process.to_string(),
    );
    fields.insert(crate::plan::fields::REVISION.to_string(), rev.to_string());
    fields.insert(crate::plan::fields::INSTANCE.to_string(), index.to_string());
    if let Some(p) = port {
        fields.insert(crate::plan::fields::PORT.to_string(), p.to_string());
    }
    UnitInfo {
        name: format!("shim-app-{process}-{rev}-{index}.service"),
        load_state: "loaded".into(),
        active_state: "active".into(),
        sub_state: "running".into(),
        main_pid: 1,
        main_start_usec: 1,
        fields,
        ..Default::default()
    }
}

fn upstream(ports: &[u16]) -> Pointed {
    [(
        "web".to_string(),
        Some(Pointer::serving(
            "r1",
            "",
            crate::plan::proxy::at_ports(ports),
        )),
    )]
    .into()
}

#[test]
fn a_matching_service_has_no_drift_and_each_difference_is_named() {
    let d = parse_sources(&[(PathBuf::from("/etc/shim/services.toml"), DEF.into())]).unwrap();
    let svc = d.service("app").unwrap();
    let st = ServiceState {
        current: Some("r1".into()),
        ..Default::default()
    };
    let ok = vec![
        unit("web", "r1", 1, Some(20000)),
        unit("web", "r1", 2, Some(20001)),
        unit("worker", "r1", 1, None),
    ];
    let dep = crate::ops::testkit::deployment(&d, "app", "r1");
    assert_eq!(
        drift(
            svc,
            &st,
            (Some(&dep), "r1"),
            &ok,
            &upstream(&[20000, 20001])
        ),
        Vec::<String>::new()
    );
    // A service deployed by a shim that recorded no deployment gets one.
    assert_eq!(
        drift(svc, &st, (None, "r1"), &ok, &upstream(&[20000, 20001])),
        vec!["no deployment recorded (deployed by an older shim): record one"]
    );

    // A missing worker, an extra web, a leftover of r0, a stale upstream file.
    let units = vec![
        unit("web", "r1", 1, Some(20000)),
        unit("web", "r1", 2, Some(20001)),
        unit("web", "r1", 3, Some(20002)),
        unit("web", "r0", 1, Some(20005)),
    ];
    let why = drift(svc, &st, (Some(&dep), "r1"), &units, &upstream(&[20005]));
    assert_eq!(
        why,
        vec![
            "instances of other deployments are left: r0",
            "web: 1 instance(s) beyond count 2",
            "web: nginx upstream /etc/nginx/shim/app.conf does not point at its instances",
            "worker: 1 of 1 instance(s) missing",
        ],
    );

    // An interrupted upgrade is drift even when the units look right.
    let st = ServiceState {
        current: Some("r1".into()),
        upgrading: Some(Attempt {
            revision: "r2".into(),
            phase: Phase::Starting,
            deployment: None,
        }),
        ..Default::default()
    };
    let why = drift(
        svc,
        &st,
        (Some(&dep), "r1"),
        &ok,
        &upstream(&[20000, 20001]),
    );
    assert_eq!(why.len(), 1);
    assert!(why[0].contains("interrupted"), "{why:?}");
}

#[test]
fn a_failed_or_stopping_instance_is_missing_not_present() {
    let d = parse_sources(&[(PathBuf::from("/etc/shim/services.toml"), DEF.into())]).unwrap();
    let svc = d.service("app").unwrap();
    let st = ServiceState {
        current: Some("r1".into()),
        ..Default::default()
    };
    let dep = crate::ops::testkit::deployment(&d, "app", "r1");
    for (state, sub) in [("failed", "failed"), ("deactivating", "stop-sigterm")] {
        let mut worker = unit("worker", "r1", 1, None);
        worker.active_state = state.into();
        worker.sub_state = sub.into();
        let units = vec![
            unit("web", "r1", 1, Some(20000)),
            unit("web", "r1", 2, Some(20001)),
            worker,
        ];
        let why = drift(
            svc,
            &st,
            (Some(&dep), "r1"),
            &units,
            &upstream(&[20000, 20001]),
        );
        assert_eq!(why, vec!["worker: 1 of 1 instance(s) missing"], "{state}");
    }
}

/// One worker, no proxy and no health check: converge runs against the fakes.
const WORKER: &str = r#"
[services.app]
image = "oci:/i:{revision}"

[services.app.processes.worker]
command = ["/w"]
"#;

fn opts(dry_run: bool) -> Options {
    Options {
        dry_run,
        lock_timeout: Duration::ZERO,
        config: PathBuf::from("/etc/shim/services.toml"),
        boot: false,
    }
}

/// Records `id` as deployed at `rev` (the fake preparer's untagged deployment of WORKER).
fn deploy(h: &Host, id: &str, rev: &str) {
    let d = crate::ops::testkit::defs(WORKER);
    let st = ServiceState {
        current: Some(rev.into()),
        deployment: Some(crate::ops::testkit::deployment(&d, id, rev)),
        ..Default::default()
    };
    h.state().save(id, &st).unwrap();
}

fn loaded(name: &str, service: &str) -> UnitInfo {
    let mut fields = BTreeMap::new();
    if !service.is_empty() {
        fields.insert(
            crate::plan::fields::SERVICE.to_string(),
            service.to_string(),
        );
    }
    UnitInfo {
        name: name.into(),
        active_state: "active".into(),
        sub_state: "running".into(),
        fields,
        ..Default::default()
    }
}

/// The lines about services, without the column padding.
fn said(r: &Report) -> Vec<String> {
    r.lines
        .iter()
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect()
}

fn changes(calls: &[String]) -> Vec<&String> {
    calls.iter().filter(|c| !c.starts_with("list ")).collect()
}

#[test]
fn a_service_not_deployed_has_its_leftover_timers_removed() {
    let fh = crate::ops::testkit::host();
    let d = crate::ops::testkit::defs(WORKER);
    fh.systemd.insert(loaded("shim-probe-app.timer", ""));
    fh.systemd.insert(loaded("shim-probe-app.service", ""));
    fh.systemd
        .insert(loaded("shimcron-app-0123456789.timer", ""));
    let r = reconcile(&fh.host, &d, &opts(false), false).unwrap();
    assert_eq!(
        said(&r),
        vec![
            "reconcile: 1 service(s) defined",
            "app not deployed: remove its probe and cron timers",
        ]
    );
    assert!(r.acted && r.failed.is_empty());
    // Only the service's own unit is left: written, not enabled (nothing deployed).
    assert_eq!(fh.systemd.unit_names(), vec!["shim-app.service"]);
    assert_eq!(
        crate::ops::service_unit::state(&fh.host, "app")
            .unwrap()
            .enabled
            .as_deref(),
        Some("disabled")
    );
}

#[test]
fn a_stopped_service_is_left_alone() {
    let fh = crate::ops::testkit::host();
    let d = crate::ops::testkit::defs(WORKER);
    let st = ServiceState {
        current: Some("r1".into()),
        stopped: true,
        ..Default::default()
    };
    fh.host.state().save("app", &st).unwrap();
    let r = reconcile(&fh.host, &d, &opts(false), false).unwrap();
    assert_eq!(
        said(&r),
        vec![
            "reconcile: 1 service(s) defined",
            "app stopped: nothing to do",
            "nothing to do",
        ]
    );
    // Its unit is written (so that `systemctl start` can bring it back), not enabled,
    // not started.
    assert_eq!(changes(&fh.systemd.calls()), vec!["daemon-reload"]);
    assert_eq!(
        crate::ops::service_unit::state(&fh.host, "app")
            .unwrap()
            .enabled
            .as_deref(),
        Some("disabled")
    );
    assert!(fh.host.state().load("app").unwrap().stopped);
}

fn boot() -> Options {
    Options {
        boot: true,
        ..opts(false)
    }
}

#[test]
fn a_deployed_service_gets_its_unit_enabled_and_started_but_not_at_boot() {
    let fh = crate::ops::testkit::host();
    let h = &fh.host;
    let d = crate::ops::testkit::defs(WORKER);
    deploy(h, "app", "r1");
    let r = reconcile(h, &d, &boot(), false).unwrap();
    assert!(r.failed.is_empty(), "{:?}", r.errors);
    let st = crate::ops::service_unit::state(h, "app").unwrap();
    assert_eq!(st.enabled.as_deref(), Some("enabled"));
    // At boot systemd starts the enabled unit itself, after shim-reconcile.service.
    assert_eq!(st.active, "inactive");
    assert!(!fh
        .systemd
        .calls()
        .iter()
        .any(|c| c.starts_with("start-unit")));
    // Later (by hand): the unit is started, once.
    reconcile(h, &d, &opts(false), false).unwrap();
    reconcile(h, &d, &opts(false), false).unwrap();
    let starts: Vec<String> = fh
        .systemd
        .calls()
        .into_iter()
        .filter(|c| c.starts_with("start-unit"))
        .collect();
    assert_eq!(starts, vec!["start-unit shim-app.service"]);
}

#[test]
fn a_disabled_inactive_service_stays_down_at_boot_and_after_until_started() {
    let fh = crate::ops::testkit::host();
    let h = &fh.host;
    let d = crate::ops::testkit::defs(WORKER);
    deploy(h, "app", "r1");
    crate::ops::service_unit::ensure(h, "app", Path::new("/etc/shim/services.toml"), false)
        .unwrap();
    let r = reconcile(h, &d, &boot(), false).unwrap();
    assert!(r.failed.is_empty(), "{:?}", r.errors);
    let down = "shim-app.service is disabled and inactive: left down";
    assert!(said(&r)[1].contains(down), "{:?}", said(&r));
    // Not marked stopped: `systemctl enable` and a reboot bring it back.
    assert!(!h.state().load("app").unwrap().stopped);
    let none = || {
        crate::ops::view::ServiceView::observe(fh.systemd.as_ref(), "app")
            .unwrap()
            .is_empty()
    };
    assert!(none());
    // A later reconcile (not at boot) leaves it down too, and does not start its unit
    // (whose ExecStart would bring it up).
    let r = reconcile(h, &d, &opts(false), false).unwrap();
    assert!(said(&r)[1].contains(down), "{:?}", said(&r));
    assert!(none());
    assert!(!fh
        .systemd
        .calls()
        .iter()
        .any(|c| c.starts_with("start-unit")));
    // Enabled: the next boot brings it back.
    fh.systemd
        .enable_unit_files(&["shim-app.service".to_string()])
        .unwrap();
    let r = reconcile(h, &d, &boot(), false).unwrap();
    assert!(r.failed.is_empty(), "{:?}", r.errors);
    assert!(!none());
}

#[test]
fn the_unit_of_a_service_no_longer_defined_is_removed_not_a_look_alikes() {
    let fh = crate::ops::testkit::host();
    let h = &fh.host;
    let cfg = Path::new("/etc/shim/services.toml");
    for id in ["app", "app-web", "app2"] {
        crate::ops::service_unit::ensure(h, id, cfg, true).unwrap();
    }
    let d = crate::ops::testkit::defs(&WORKER.replace("services.app", "services.app-web"));
    let r = reconcile(h, &d, &opts(false), false).unwrap();
    assert!(r.failed.is_empty(), "{:?}", r.errors);
    assert_eq!(crate::ops::service_unit::installed(h), vec!["app-web"]);
    assert!(said(&r).contains(&"app not defined: removing its unit shim-app.service".to_string()));
}

#[test]
fn an_orphan_is_torn_down_and_a_look_alike_is_not_touched() {
    let fh = crate::ops::testkit::host();
    let h = &fh.host;
    // `app-web` is defined (not deployed); `app` is not defined any more.
    let d = crate::ops::testkit::defs(&WORKER.replace("services.app", "services.app-web"));
    fh.systemd
        .insert(loaded("shim-app-worker-r1-1.service", "app"));
    fh.systemd.insert(loaded("shim-probe-app.timer", ""));
    fh.systemd
        .insert(loaded("shim-app-web-worker-r1-1.service", "app-web"));
    let orphan_dir = h.dirs.instances("app").join("shim-app-worker-r1-1");
    let kept_dir = h.dirs.instances("app-web").join("shim-app-web-worker-r1-1");
    for dir in [&orphan_dir, &kept_dir] {
        std::fs::create_dir_all(dir).unwrap();
    }
    let r = reconcile(h, &d, &opts(false), false).unwrap();
    assert_eq!(
        said(&r),
        vec![
            "reconcile: 1 service(s) defined",
            "app-web not deployed: nothing to do",
            "app not defined: stop 1 instance(s) and its probe and cron timers",
        ]
    );
    assert!(r.failed.is_empty(), "{:?}", r.errors);
    assert_eq!(
        fh.systemd.unit_names(),
        vec![
            "shim-app-web-worker-r1-1.service",
            "shim-app\\x2dweb.service"
        ]
    );
    assert!(!h.dirs.instances("app").exists());
    assert!(kept_dir.exists());
}

#[test]
fn a_dry_run_changes_nothing() {
    let fh = crate::ops::testkit::host();
    let h = &fh.host;
    let d = crate::ops::testkit::defs(WORKER);
    deploy(h, "app", "r1");
    fh.systemd
        .insert(loaded("shim-gone-worker-r1-1.service", "gone"));
    let r = reconcile(h, &d, &opts(true), false).unwrap();
    assert_eq!(
        said(&r),
        vec![
            "reconcile (dry run): 1 service(s) defined",
            "app converge to r1: worker: 1 of 1 instance(s) missing",
            "gone not defined: stop 1 instance(s) and its probe and cron timers",
            "dry run: nothing changed",
        ]
    );
    assert!(
        changes(&fh.systemd.calls()).is_empty(),
        "{:?}",
        fh.systemd.calls()
    );
    assert_eq!(
        fh.systemd.unit_names(),
        vec!["shim-gone-worker-r1-1.service"]
    );
}

#[test]
fn converge_then_nothing_to_do_then_a_missing_probe_timer_is_created() {
    let fh = crate::ops::testkit::host();
    let h = &fh.host;
    let d = crate::ops::testkit::defs(WORKER);
    deploy(h, "app", "r1");
    let r = reconcile(h, &d, &opts(false), false).unwrap();
    assert!(r.failed.is_empty(), "{:?}", r.errors);
    assert_eq!(
        said(&r)[1],
        "app converge to r1: worker: 1 of 1 instance(s) missing"
    );
    assert!(fh
        .systemd
        .unit_names()
        .contains(&"shim-probe-app.timer".to_string()));

    // Converge made the probe timer run the prepared `shim_exe` (testkit: /usr/bin/shim),
    // reconcile wants the running binary (here the test's): on a host both are the same.
    let r = reconcile(h, &d, &opts(false), false).unwrap();
    assert_eq!(
        said(&r)[1..],
        ["app r1: probe timer differs from the definitions: create it".to_string()]
    );

    // A matching service: nothing to do, and a second run changes nothing.
    for _ in 0..2 {
        let before = fh.systemd.calls().len();
        let units = fh.systemd.unit_names();
        let r = reconcile(h, &d, &opts(false), false).unwrap();
        assert_eq!(
            said(&r),
            vec![
                "reconcile: 1 service(s) defined",
                "app r1: ok",
                "nothing to do"
            ]
        );
        assert!(changes(&fh.systemd.calls()[before..]).is_empty());
        assert_eq!(fh.systemd.unit_names(), units);
    }

    // The probe timer is gone (e.g. stopped by hand): it is created again.
    fh.systemd
        .stop_units(
            &[
                "shim-probe-app.timer".into(),
                "shim-probe-app.service".into(),
            ],
            Duration::from_secs(1),
        )
        .unwrap();
    let r = reconcile(h, &d, &opts(false), false).unwrap();
    assert_eq!(
        said(&r)[1..],
        ["app r1: probe timer missing: create it".to_string()]
    );
    assert!(r.acted && r.failed.is_empty(), "{:?}", r.errors);
    assert!(fh
        .systemd
        .unit_names()
        .contains(&"shim-probe-app.timer".to_string()));
}

#[test]
fn timers_are_checked_only_once_the_instances_match() {
    assert_eq!(
        plan_timers("r1", "", Some("crontab of r1 not installed".into()), None),
        vec![
            ServiceAction::SyncCron {
                revision: "r1".into(),
                why: "crontab of r1 not installed".into()
            },
            ServiceAction::InSync {
                revision: "r1".into(),
                paused: String::new()
            },
        ]
    );
    let st = ServiceState {
        paused_processes: ["web".to_string()].into(),
        ..Default::default()
    };
    assert_eq!(paused_note(&st), " (supervision paused for web)");
    assert_eq!(
        plan_idle(&st, false),
        Some(ServiceAction::Nothing {
            why: "not deployed"
        })
    );
}

#[test]
fn a_failed_converge_is_reported_and_fails_the_command() {
    let fh = crate::host::FakeHost::with(|h| {
        h.images = Box::new(crate::ops::testkit::FakePreparer {
            bad: std::sync::Mutex::new(vec!["r1".into()]),
            tagged: false,
        })
    });
    let d = crate::ops::testkit::defs(WORKER);
    deploy(&fh.host, "app", "r1");
    let r = reconcile(&fh.host, &d, &opts(false), false).unwrap();
    assert_eq!(r.failed, vec!["app"]);
    assert!(
        r.errors[0].starts_with("shim: reconcile of app: ") && r.errors[0].contains("no such tag"),
        "{:?}",
        r.errors
    );
    let e = run(&fh.host, &d, &opts(false)).unwrap_err();
    assert_eq!(e.to_string(), "reconcile failed for: app");
}

const TWO: &str = r#"
[services.app]
image = "oci:/i:{revision}"

[services.app.processes.worker]
command = ["/w"]

[services.broken]
image = "oci:/i:{revision}"

[services.broken.processes.worker]
command = ["/w"]
"#;

#[test]
fn a_corrupt_state_file_of_one_service_does_not_stop_the_others() {
    let fh = crate::ops::testkit::host();
    let h = &fh.host;
    let d = crate::ops::testkit::defs(TWO);
    deploy(h, "app", "r1");
    let bad = h.state().path("broken");
    std::fs::write(&bad, "{\"current\": 7").unwrap();
    let r = reconcile(h, &d, &opts(false), false).unwrap();
    assert_eq!(r.failed, vec!["broken".to_string()]);
    let e = r.errors.join("\n");
    assert!(e.contains(&bad.display().to_string()), "{e}");
    assert!(fh
        .systemd
        .unit_names()
        .contains(&"shim-app-worker-r1-1.service".to_string()));
    // The broken one is left alone: its file as it was, nothing of it started.
    assert_eq!(std::fs::read_to_string(&bad).unwrap(), "{\"current\": 7");
    assert!(fh
        .systemd
        .unit_names()
        .iter()
        .all(|n| !n.contains("broken")));
    // And `shim reconcile` fails naming it.
    let e = run(h, &d, &opts(false)).unwrap_err().to_string();
    assert_eq!(e, "reconcile failed for: broken");
}

#[test]
fn the_target_is_an_attempt_that_switched_not_the_recorded_current() {
    let files = |rev: Option<&str>| -> Pointed {
        [(
            "web".to_string(),
            rev.map(|r| Pointer::serving(r, "", crate::plan::proxy::at_ports(&[1]))),
        )]
        .into()
    };
    let st = |phase| ServiceState {
        current: Some("r1".into()),
        upgrading: Some(Attempt {
            revision: "r2".into(),
            phase,
            deployment: None,
        }),
        ..Default::default()
    };
    assert_eq!(
        st(Phase::Switched)
            .serving_revision(&files(Some("r1")))
            .as_deref(),
        Some("r2")
    );
    assert_eq!(
        st(Phase::Starting)
            .serving_revision(&files(Some("r2")))
            .as_deref(),
        Some("r2")
    );
    assert_eq!(
        st(Phase::Starting)
            .serving_revision(&files(Some("r1")))
            .as_deref(),
        Some("r1")
    );
    assert_eq!(
        st(Phase::Starting)
            .serving_revision(&files(None))
            .as_deref(),
        Some("r1")
    );
    let first = ServiceState {
        upgrading: Some(Attempt {
            revision: "r1".into(),
            phase: Phase::Switched,
            deployment: None,
        }),
        ..Default::default()
    };
    assert_eq!(first.serving_revision(&files(None)).as_deref(), Some("r1"));
    let stopped = ServiceState {
        stopped: true,
        ..st(Phase::Switched)
    };
    assert_eq!(stopped.serving_revision(&files(None)), None);
}

#[test]
fn reconcile_after_a_kill_past_the_switch_keeps_the_new_revision() {
    let fh = crate::ops::testkit::host();
    let h = &fh.host;
    let d = crate::ops::testkit::defs(WORKER);
    deploy(h, "app", "r1");
    reconcile(h, &d, &opts(false), false).unwrap();
    // As shim leaves it when killed during drain of an upgrade to r2: r2 runs beside r1,
    // the attempt is recorded as switched, current still says r1.
    let mut st = h.state().load("app").unwrap();
    st.upgrading = Some(Attempt {
        revision: "r2".into(),
        phase: Phase::Switched,
        deployment: None,
    });
    h.state().save("app", &st).unwrap();
    let mut u = loaded("shim-app-worker-r2-1.service", "app");
    for (k, v) in [
        (crate::plan::fields::PROCESS, "worker"),
        (crate::plan::fields::REVISION, "r2"),
        (crate::plan::fields::INSTANCE, "1"),
    ] {
        u.fields.insert(k.to_string(), v.to_string());
    }
    fh.systemd.insert(u);
    let r = reconcile(h, &d, &opts(false), false).unwrap();
    assert!(r.failed.is_empty(), "{:?}", r.errors);
    let st = h.state().load("app").unwrap();
    assert_eq!(
        (st.current.as_deref(), st.previous.as_deref()),
        (Some("r2"), Some("r1"))
    );
    assert!(st.upgrading.is_none());
    let names = fh.systemd.unit_names();
    assert!(
        names.contains(&"shim-app-worker-r2-1.service".to_string()),
        "{names:?}"
    );
    assert!(
        !names.contains(&"shim-app-worker-r1-1.service".to_string()),
        "{names:?}"
    );
}

#[test]
fn a_service_that_does_not_come_back_has_its_upstream_closed() {
    let fh = crate::host::FakeHost::with(|h| {
        h.images = Box::new(crate::ops::testkit::FakePreparer {
            bad: std::sync::Mutex::new(vec!["r1".into()]),
            tagged: false,
        })
    });
    let file = fh.tmp.path().join("app.conf");
    let d = crate::ops::testkit::defs(&format!(
        "[services.app]\nimage = \"oci:/i:{{revision}}\"\n[services.app.processes.web]\n\
         health = {{ path = \"/h\" }}\nproxy = {{ upstream = \"app_web\", file = \"{}\" }}\n",
        file.display()
    ));
    // Before the reboot, nginx pointed at port 20000; after it, the image is gone.
    std::fs::write(
        &file,
        crate::plan::upstream::render_upstream(
            "app_web",
            "app",
            "web",
            "r1",
            "",
            &crate::plan::proxy::at_ports(&[20000]),
        ),
    )
    .unwrap();
    deploy(&fh.host, "app", "r1");
    let r = reconcile(&fh.host, &d, &opts(false), false).unwrap();
    assert_eq!(r.failed, vec!["app"]);
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(!text.contains("20000") && text.contains("down;"), "{text}");
    assert!(
        said(&r).iter().any(|l| l.contains("closed")),
        "{:?}",
        said(&r)
    );
}
