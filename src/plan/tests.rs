use super::names::rev_in_name;
use super::*;
use crate::config::{parse_sources, Definitions};

const DEF: &str = r#"
[services.billing_app]
image = "oci:/var/lib/images/billing:{revision}"
env = { RAILS_ENV = "production", SHARED = "service" }
user = "1000:1000"

[services.billing_app.processes.web]
command = ["/app/bin/server", "--listen", "0.0.0.0"]
count = 2
health = { path = "/health" }
stop_timeout = "20s"
env = { SHARED = "process" }

[services.billing_app.processes.worker]
count = 1
read_only = true
"#;

fn defs() -> Definitions {
    parse_sources(&[(PathBuf::from("/etc/shim/services.toml"), DEF.into())]).unwrap()
}

fn image() -> ImageConfig {
    ImageConfig {
        entrypoint: vec!["/app/entry".into()],
        cmd: vec!["worker".into()],
        env: vec!["PATH=/app/bin:/bin".into(), "RAILS_ENV=development".into()],
        working_dir: Some("/app".into()),
        user: Some("app".into()),
        stop_signal: Some("SIGQUIT".into()),
    }
}

fn with_cx<T>(f: impl FnOnce(&PlanContext<'_>) -> T) -> T {
    let d = defs();
    let img = image();
    let secrets = vec![(
        "DB_PASSWORD".to_string(),
        "<secret from /etc/shim/secrets/billing.env>".to_string(),
    )];
    let host_files = vec![PathBuf::from("/etc/resolv.conf")];
    let podman = podman_storage();
    let lowers = vec![PathBuf::from("/var/lib/shim/images/rootfs/abc123")];
    let cx = PlanContext {
        service: d.service("billing_app").unwrap(),
        revision: "279d9035886d4c0427549863c4c2101e4a63e041",
        image: &img,
        lowers: &lowers,
        deployment: None,
        volumes_dir: Path::new("/var/lib/shim/volumes/billing_app"),
        init_bin: Path::new("/usr/bin/tini-static"),
        secret_files_dir: Path::new("/var/lib/shim/state/secrets/billing_app/files"),
        secrets: &secrets,
        user: ResolvedUser {
            uid: 1000,
            gid: 1000,
        },
        runtime_bin: Path::new("/usr/sbin/runc"),
        shim_exe: Path::new("/usr/bin/shim"),
        instances_dir: Path::new("/run/shim/instances/billing_app"),
        host_files: &host_files,
        restrict_devices: true,
        restart: RestartPolicy::StartLimit,
        podman: &podman,
        seccomp: None,
        kernel: (6, 1),
    };
    f(&cx)
}

fn podman_storage() -> PodmanStorage {
    PodmanStorage {
        root: PathBuf::from("/var/lib/shim/podman"),
        runroot: PathBuf::from("/run/shim/podman"),
    }
}

/// Like `with_cx`, for the same service with `runtime = "podman"`.
fn with_podman_cx<T>(f: impl FnOnce(&PlanContext<'_>) -> T) -> T {
    with_cx(|cx| {
        let mut svc = cx.service.clone();
        svc.runtime = crate::config::Runtime::Podman;
        let cx = PlanContext {
            service: &svc,
            runtime_bin: Path::new("/usr/bin/podman"),
            ..cx.clone()
        };
        f(&cx)
    })
}

#[test]
fn podman_web_snapshot() {
    with_podman_cx(|cx| {
        let p = plan_instance(cx, process(cx, "web"), 1, Some(20000)).unwrap();
        assert_eq!(
            p.unit.name,
            "shim-billing_app-web-279d9035886d-a6522c65-1.service"
        );
        assert!(p.oci_config().is_none());
        insta::assert_snapshot!("podman_web_unit", p.unit.render());
        let (path, env) = p.render_files().unwrap();
        assert_eq!(
            path,
            Path::new(
                "/run/shim/instances/billing_app/shim-billing_app-web-279d9035886d-a6522c65-1/env"
            )
        );
        insta::assert_snapshot!("podman_web_env", env);
    });
}

#[test]
fn podman_read_only_worker_snapshot() {
    with_podman_cx(|cx| {
        let p = plan_instance(cx, process(cx, "worker"), 1, None).unwrap();
        insta::assert_snapshot!("podman_worker_unit", p.unit.render());
    });
}

#[test]
fn podman_secrets_only_in_the_env_file() {
    with_podman_cx(|cx| {
        let p = plan_instance(cx, process(cx, "web"), 1, Some(1)).unwrap();
        let rendered = p.unit.render();
        assert!(!rendered.contains("DB_PASSWORD"), "{rendered}");
        assert!(!rendered.contains("RAILS_ENV"), "{rendered}");
        assert!(!p.unit.properties.iter().any(|(k, _)| k == "Environment"));
        assert!(rendered.contains("--env-file /run/shim/instances/billing_app/"));
        let (_, env) = p.render_files().unwrap();
        assert!(env.contains("DB_PASSWORD=<secret from"), "{env}");
        assert!(env.contains("SHIM_INSTANCE=1\n"), "{env}");
    });
}

#[test]
fn podman_unit_follows_quadlet() {
    with_podman_cx(|cx| {
        let p = plan_instance(cx, process(cx, "web"), 1, Some(1)).unwrap();
        let prop = |k: &str| {
            p.unit
                .properties
                .iter()
                .find(|(n, _)| n == k)
                .map(|(_, v)| v.clone())
        };
        assert_eq!(prop("Type"), Some(Prop::Str("notify".into())));
        assert_eq!(prop("NotifyAccess"), Some(Prop::Str("all".into())));
        assert_eq!(prop("KillMode"), Some(Prop::Str("mixed".into())));
        assert_eq!(prop("Delegate"), Some(Prop::Bool(true)));
        assert_eq!(prop("PIDFile"), None);
        assert_eq!(prop("ExecStartPre"), None);
        let Some(Prop::Exec(start)) = prop("ExecStart") else {
            panic!("no ExecStart")
        };
        let argv = &start[0].argv;
        for flag in [
            "--rm",
            "--replace",
            "--cgroups=split",
            "--sdnotify=conmon",
            "--detach",
        ] {
            assert!(argv.iter().any(|a| a == flag), "{flag} missing: {argv:?}");
        }
        let after = |flag: &str| {
            argv.iter()
                .position(|a| a == flag)
                .map(|i| argv[i + 1].as_str())
        };
        assert_eq!(
            after("--name"),
            Some("shim-billing_app-web-279d9035886d-a6522c65-1")
        );
        assert_eq!(after("--log-driver"), Some("passthrough"));
        assert_eq!(after("--network"), Some("host"));
        assert_eq!(after("--user"), Some("1000:1000"));
        assert_eq!(after("--stop-signal"), Some("SIGQUIT"));
        assert_eq!(after("--stop-timeout"), Some("20"));
        assert_eq!(after("--root"), Some("/var/lib/shim/podman"));
        assert_eq!(
            after("--rootfs"),
            Some("/var/lib/shim/images/rootfs/abc123:O")
        );
        // The container's argv comes last, after the rootfs.
        assert_eq!(
            argv[argv.len() - 3..],
            ["/app/bin/server", "--listen", "0.0.0.0"]
        );
        let Some(Prop::Exec(post)) = prop("ExecStopPost") else {
            panic!("no ExecStopPost")
        };
        assert!(post[0].ignore_failure);
        assert!(post[0].argv.ends_with(&[
            "rm".into(),
            "--force".into(),
            "--ignore".into(),
            "--time".into(),
            "0".into(),
            "shim-billing_app-web-279d9035886d-a6522c65-1".into()
        ]));
    });
}

#[test]
fn podman_refuses_env_values_with_line_breaks() {
    with_podman_cx(|cx| {
        let secrets = vec![("PEM".to_string(), "a\nb".to_string())];
        let cx = PlanContext {
            secrets: &secrets,
            ..cx.clone()
        };
        let err = plan_instance(&cx, process(&cx, "web"), 1, Some(1)).unwrap_err();
        assert!(err.contains("env PEM"), "{err}");
    });
}

fn process<'a>(cx: &'a PlanContext<'_>, name: &str) -> &'a crate::config::ProcessDef {
    cx.service
        .processes
        .values()
        .find(|p| p.name.as_str() == name)
        .unwrap()
}

#[test]
fn web_instance_snapshot() {
    with_cx(|cx| {
        let p = plan_instance(cx, process(cx, "web"), 1, Some(20000)).unwrap();
        assert_eq!(
            p.unit.name,
            "shim-billing_app-web-279d9035886d-a6522c65-1.service"
        );
        insta::assert_snapshot!("web_unit", p.unit.render());
        insta::assert_snapshot!("web_config", render_config(p.oci_config().unwrap()));
    });
}

#[test]
fn read_only_worker_snapshot() {
    with_cx(|cx| {
        let p = plan_instance(cx, process(cx, "worker"), 1, None).unwrap();
        insta::assert_snapshot!("worker_unit", p.unit.render());
        insta::assert_snapshot!("worker_config", render_config(p.oci_config().unwrap()));
    });
}

#[test]
fn show_output_snapshot() {
    with_cx(|cx| {
        let plans = vec![plan_instance(cx, process(cx, "web"), 2, Some(20001)).unwrap()];
        insta::assert_snapshot!("show_output", render_show(&plans, &["a note".to_string()]));
    });
}

#[test]
fn env_precedence_and_shim_vars() {
    with_cx(|cx| {
        let p = process(cx, "web");
        let key = InstanceKey {
            service: cx.service.id.clone(),
            process: p.name.clone(),
            revision: "r1".into(),
            deployment: String::new(),
            index: 3,
        };
        let env = merge_env(cx, p, &key, Some(20005));
        let get = |k: &str| {
            env.iter()
                .find_map(|e| e.strip_prefix(&format!("{k}=")).map(str::to_string))
        };
        assert_eq!(
            get("PATH").as_deref(),
            Some("/app/bin:/bin"),
            "image PATH wins over default"
        );
        assert_eq!(
            get("RAILS_ENV").as_deref(),
            Some("production"),
            "service env over image env"
        );
        assert_eq!(
            get("SHARED").as_deref(),
            Some("process"),
            "process env over service env"
        );
        assert!(get("DB_PASSWORD").is_some());
        assert_eq!(get("PORT").as_deref(), Some("20005"));
        assert_eq!(get(crate::plan::fields::INSTANCE).as_deref(), Some("3"));
        assert_eq!(env.iter().filter(|e| e.starts_with("PATH=")).count(), 1);
    });
}

#[test]
fn secrets_never_reach_unit_properties() {
    with_cx(|cx| {
        let p = plan_instance(cx, process(cx, "web"), 1, Some(1)).unwrap();
        let rendered = p.unit.render();
        assert!(!rendered.contains("DB_PASSWORD"));
        assert!(!p.unit.properties.iter().any(|(k, _)| k == "Environment"));
        assert!(render_config(p.oci_config().unwrap()).contains("DB_PASSWORD"));
    });
}

#[test]
fn args_fall_back_to_image() {
    with_cx(|cx| {
        assert_eq!(
            plan_args(cx, process(cx, "worker")).unwrap(),
            ["/app/entry", "worker"]
        );
        assert_eq!(
            plan_args(cx, process(cx, "web")).unwrap()[0],
            "/app/bin/server"
        );
    });
}

#[test]
fn stop_signal_falls_back_to_image_then_sigterm() {
    with_cx(|cx| {
        assert_eq!(unit::stop_signal(cx, process(cx, "web")), "SIGQUIT");
    });
}

#[test]
fn ports_skip_taken_and_busy() {
    let taken: BTreeSet<u16> = [20000, 20002].into();
    let got = allocate_ports((20000, 20010), 3, &taken, |p| p == 20003).unwrap();
    assert_eq!(got, [20001, 20004, 20005]);
    let err = allocate_ports((20000, 20001), 3, &taken, |_| false).unwrap_err();
    assert!(err.contains("only 1 free"), "{err}");
    assert_eq!(
        allocate_ports((1, 2), 0, &taken, |_| true).unwrap(),
        Vec::<u16>::new()
    );
}

#[test]
fn revisions_are_checked() {
    assert!(validate_revision("279d9035886d4c0427549863c4c2101e4a63e041").is_ok());
    assert!(validate_revision("v1.2.3_rc-1").is_ok());
    assert!(validate_revision("").is_err());
    assert!(validate_revision("a/b").is_err());
    assert!(validate_revision("-x").is_err());
    assert!(validate_revision(&"a".repeat(129)).is_err());
}

#[test]
fn unit_names_are_short_and_readable() {
    let key = InstanceKey {
        service: crate::config::Ident::parse("billing_app").unwrap(),
        process: crate::config::Ident::parse("web").unwrap(),
        revision: "279d9035886d4c0427549863c4c2101e4a63e041".into(),
        deployment: String::new(),
        index: 4,
    };
    assert_eq!(
        key.unit_name(),
        "shim-billing_app-web-279d9035886d-a6522c65-4.service"
    );
    assert_eq!(
        names::service_units_glob("billing_app"),
        "shim-billing_app-*"
    );
}

fn run_request<'a>(
    process: Option<&'a crate::config::ProcessDef>,
    attach: oneoff::Attach,
) -> oneoff::OneOff<'a> {
    let stem = names::run_stem(
        "billing_app",
        "279d9035886d4c0427549863c4c2101e4a63e041",
        "a1b2c3",
    );
    oneoff::OneOff {
        dir: PathBuf::from(format!("/run/shim/runs/billing_app/{stem}")),
        fields: vec![(crate::plan::fields::RUN.into(), stem.clone())],
        stem,
        process,
        argv: vec!["bin/rails".into(), "console".into()],
        env: vec![("TERM".into(), "xterm-256color".into())],
        attach,
    }
}

#[test]
fn oneoff_attached_snapshot() {
    with_cx(|cx| {
        let req = run_request(None, oneoff::Attach::Pipes);
        let p = oneoff::plan_oneoff(cx, &req).unwrap();
        assert_eq!(
            p.unit.name,
            "shimrun-billing_app-279d9035886d-a6522c65-a1b2c3.service"
        );
        insta::assert_snapshot!("oneoff_attached_unit", p.unit.render());
        // The anchor scope the unit is bound to.
        let anchor = oneoff::plan_anchor(&req.stem, 4242);
        insta::assert_snapshot!("oneoff_anchor_scope", anchor.render());
    });
}

#[test]
fn oneoff_config_has_the_command_a_terminal_and_no_instance_vars() {
    with_cx(|cx| {
        let web = process(cx, "web");
        let req = run_request(Some(web), oneoff::Attach::Tty);
        let spec = oneoff::plan_oneoff_config(cx, &req).unwrap();
        let p = spec.process().as_ref().unwrap();
        assert_eq!(p.args().as_ref().unwrap(), &["bin/rails", "console"]);
        assert_eq!(p.terminal(), Some(true));
        let env = p.env().as_ref().unwrap();
        // The borrowed process's env, secrets, TERM and SHIM_RUN; no port, no instance.
        assert!(env.contains(&"SHARED=process".to_string()), "{env:?}");
        assert!(env.iter().any(|e| e.starts_with("DB_PASSWORD=")));
        assert!(env.contains(&"TERM=xterm-256color".to_string()));
        assert!(
            env.contains(&"SHIM_RUN=shimrun-billing_app-279d9035886d-a6522c65-a1b2c3".to_string())
        );
        assert!(!env
            .iter()
            .any(|e| e.starts_with("PORT=") || e.starts_with("SHIM_INSTANCE=")));
        assert_eq!(
            spec.linux().as_ref().unwrap().cgroups_path().as_deref(),
            Some(Path::new(
                "/shim.slice/shim-billing_app.slice/shimrun-billing_app-279d9035886d-a6522c65-a1b2c3.service/container"
            ))
        );
        // Detached: no terminal, no anchor, no reference held.
        let req = run_request(None, oneoff::Attach::Detached);
        let p = oneoff::plan_oneoff(cx, &req).unwrap();
        assert_eq!(p.config.process().as_ref().unwrap().terminal(), Some(false));
        let names: Vec<&str> = p.unit.properties.iter().map(|(k, _)| k.as_str()).collect();
        assert!(!names.contains(&"BindsTo") && !names.contains(&"AddRef"));
        // Secrets never reach unit properties.
        assert!(!p.unit.render().contains("DB_PASSWORD"));
        // No command: refused.
        let mut empty = run_request(None, oneoff::Attach::Pipes);
        empty.argv.clear();
        assert!(oneoff::plan_oneoff(cx, &empty).is_err());
    });
}

#[test]
fn cron_job_units_snapshot() {
    let calendars = vec![
        "*-*-01,15 03:00:00".to_string(),
        "Mon *-*-* 03:00:00".to_string(),
    ];
    let (timer, service) = oneoff::plan_cron_job(&oneoff::CronJobUnits {
        service: "billing_app",
        job: "0a1b2c3d4e",
        schedule_text: "0 3 1,15 * mon",
        command: "bin/rake invoices:send",
        calendars: &calendars,
        stdin: Some("yes\n"),
        shim_exe: Path::new("/usr/bin/shim"),
        runtime_bin: Path::new("/usr/sbin/runc"),
        config: Path::new("/etc/shim/services.toml"),
        dir: Path::new("/run/shim/cron/billing_app/0a1b2c3d4e"),
        last_file: Path::new("/var/lib/shim/cron/billing_app/0a1b2c3d4e.last.json"),
        stop_timeout: std::time::Duration::from_secs(30),
    });
    assert_eq!(timer.name, "shimcron-billing_app-0a1b2c3d4e.timer");
    assert_eq!(service.name, "shimcron-billing_app-0a1b2c3d4e.service");
    insta::assert_snapshot!("cron_timer", timer.render());
    insta::assert_snapshot!("cron_service", service.render());
}

#[test]
fn meta_says_what_the_log_fields_say() {
    for runtime in ["runc", "podman"] {
        let check = |cx: &PlanContext<'_>| {
            for (p, port) in [("web", Some(20000)), ("worker", None)] {
                let plan = plan_instance(cx, process(cx, p), 2, port).unwrap();
                let m = plan.meta();
                assert_eq!(m.unit, plan.unit.name);
                let fields: Vec<String> =
                    m.fields().iter().map(|(k, v)| format!("{k}={v}")).collect();
                let mut want = unit::log_fields(&plan.key, port);
                want.sort();
                assert_eq!(fields, want, "{runtime} {p}");
                let back: InstanceMeta =
                    serde_json::from_str(&serde_json::to_string(&m).unwrap()).unwrap();
                assert_eq!(back, m);
            }
        };
        if runtime == "runc" {
            with_cx(check)
        } else {
            with_podman_cx(check)
        }
    }
}

#[test]
fn revisions_in_unit_names_never_collide() {
    assert_eq!(rev_in_name("rev1"), "rev1");
    assert_eq!(rev_in_name("279d9035886d"), "279d9035886d");
    let a = rev_in_name("release-2024-01");
    let b = rev_in_name("release-2024-02");
    assert_ne!(a, b);
    assert!(
        a.starts_with("release-2024-") && a.len() == 12 + 1 + 8,
        "{a}"
    );
    // A short revision cannot equal a long one's name, nor one's 12-character prefix.
    assert_ne!(rev_in_name("release-2024"), a);
    let sha1 = "279d9035886d4c0427549863c4c2101e4a63e041";
    let sha2 = "279d9035886d00000000000000000000000000ff";
    assert_ne!(rev_in_name(sha1), rev_in_name(sha2));
    assert_eq!(rev_in_name(sha1), rev_in_name(sha1), "stable");
}

#[test]
fn config_carries_the_seccomp_filter_and_non_root_has_no_ambient_caps() {
    with_cx(|cx| {
        let profile = r#"{"defaultAction": "SCMP_ACT_ERRNO", "defaultErrnoRet": 38,
          "archMap": [{"architecture": "SCMP_ARCH_X86_64", "subArchitectures": []},
                      {"architecture": "SCMP_ARCH_AARCH64", "subArchitectures": []}],
          "syscalls": [{"names": ["read"], "action": "SCMP_ACT_ALLOW"},
                       {"names": ["kill"], "action": "SCMP_ACT_ALLOW", "includes": {"caps": ["CAP_KILL"]}},
                       {"names": ["chroot"], "action": "SCMP_ACT_ALLOW", "includes": {"caps": ["CAP_SYS_CHROOT"]}}]}"#;
        let cx2 = PlanContext {
            seccomp: Some(profile),
            ..cx.clone()
        };
        let p = plan_instance(&cx2, process(&cx2, "web"), 1, Some(20000)).unwrap();
        let v = serde_json::to_value(p.oci_config().unwrap()).unwrap();
        let sc = &v["linux"]["seccomp"];
        assert_eq!(sc["defaultAction"], "SCMP_ACT_ERRNO");
        let names: Vec<&str> = sc["syscalls"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|r| {
                r["names"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|n| n.as_str().unwrap())
            })
            .collect();
        // runc spec's capabilities include CAP_KILL, not CAP_SYS_CHROOT.
        assert_eq!(names, ["read", "kill"]);
        assert!(
            v["process"]["capabilities"]["ambient"].is_null(),
            "user 1000 gets no ambient caps"
        );
        // Without a profile (seccomp = "unconfined"), no filter.
        let p = plan_instance(cx, process(cx, "web"), 1, Some(20000)).unwrap();
        let v = serde_json::to_value(p.oci_config().unwrap()).unwrap();
        assert!(v["linux"]["seccomp"].is_null());
        // Root keeps runc spec's ambient set.
        let root = PlanContext {
            user: ResolvedUser { uid: 0, gid: 0 },
            ..cx.clone()
        };
        let p = plan_instance(&root, process(&root, "web"), 1, Some(20000)).unwrap();
        let v = serde_json::to_value(p.oci_config().unwrap()).unwrap();
        assert_eq!(
            v["process"]["capabilities"]["ambient"]
                .as_array()
                .map(|a| a.len()),
            Some(3)
        );
    });
}

#[test]
fn limits_reach_the_unit_and_the_containers_rlimit() {
    with_cx(|cx| {
        let mut p = process(cx, "web").clone();
        p.limits = crate::config::Limits {
            memory: Some(512 << 20),
            cpus_milli: Some(1500),
            pids: Some(256),
            nofile: Some(65536),
        };
        let plan = plan_instance(cx, &p, 1, Some(20001)).unwrap();
        let prop = |k: &str| {
            plan.unit
                .properties
                .iter()
                .find(|(n, _)| n == k)
                .map(|(_, v)| v.clone())
        };
        assert_eq!(prop("MemoryMax"), Some(Prop::U64(512 << 20)));
        assert_eq!(prop("CPUQuotaPerSecUSec"), Some(Prop::USec(1_500_000)));
        assert_eq!(prop("TasksMax"), Some(Prop::U64(256)));
        assert_eq!(prop("LimitNOFILE"), Some(Prop::U64(65536)));
        assert_eq!(prop("LimitNOFILESoft"), Some(Prop::U64(65536)));
        let InstanceFiles::Oci(spec) = &plan.files else {
            panic!("runc plans a bundle")
        };
        let rl = spec.process().as_ref().unwrap().rlimits().clone().unwrap();
        let nofile: Vec<_> = rl
            .iter()
            .filter(|r| r.typ() == oci_spec::runtime::PosixRlimitType::RlimitNofile)
            .collect();
        assert_eq!(nofile.len(), 1, "{rl:?}");
        assert_eq!((nofile[0].soft(), nofile[0].hard()), (65536, 65536));
        assert!(plan.unit.render().contains("MemoryMax=536870912\n"));
        // Without limits: none of these properties, runc's default rlimit.
        let plain = plan_instance(cx, process(cx, "web"), 1, Some(20001)).unwrap();
        for k in ["MemoryMax", "CPUQuotaPerSecUSec", "TasksMax", "LimitNOFILE"] {
            assert!(!plain.unit.properties.iter().any(|(n, _)| n == k), "{k}");
        }
    });
}

#[test]
fn mounts_and_capabilities_reach_config_json() {
    use crate::config::MountDef;
    with_cx(|cx| {
        let mut p = process(cx, "web").clone();
        p.mounts = vec![
            MountDef::Bind {
                source: "/srv/up".into(),
                target: "/app/up".into(),
                read_only: false,
            },
            MountDef::Bind {
                source: "/etc/ssl/certs".into(),
                target: "/etc/ssl/certs".into(),
                read_only: true,
            },
            MountDef::Volume {
                source: "cache".into(),
                target: "/app/cache".into(),
                read_only: false,
            },
            MountDef::Tmpfs {
                target: "/app/tmp".into(),
                size: Some(64 << 20),
                mode: 0o700,
            },
        ];
        p.cap_add = vec!["CAP_NET_RAW".into()];
        p.cap_drop = vec!["CAP_NET_BIND_SERVICE".into(), "CAP_KILL".into()];
        let plan = plan_instance(cx, &p, 1, Some(20001)).unwrap();
        let InstanceFiles::Oci(spec) = &plan.files else {
            panic!("runc plans a bundle")
        };
        let json: serde_json::Value =
            serde_json::from_str(&crate::plan::render_config(spec)).unwrap();
        let mount = |dest: &str| {
            json["mounts"]
                .as_array()
                .unwrap()
                .iter()
                .find(|m| m["destination"] == dest)
                .cloned()
                .unwrap_or_else(|| panic!("no mount at {dest}"))
        };
        let up = mount("/app/up");
        assert_eq!(
            (up["type"].as_str(), up["source"].as_str()),
            (Some("bind"), Some("/srv/up"))
        );
        assert!(up["options"].as_array().unwrap().contains(&"rw".into()));
        let certs = mount("/etc/ssl/certs");
        assert!(certs["options"].as_array().unwrap().contains(&"ro".into()));
        assert_eq!(
            mount("/app/cache")["source"],
            "/var/lib/shim/volumes/billing_app/cache"
        );
        let tmp = mount("/app/tmp");
        assert_eq!(tmp["type"], "tmpfs");
        let opts = tmp["options"].as_array().unwrap();
        assert!(
            opts.contains(&"mode=700".into()) && opts.contains(&"size=65536k".into()),
            "{opts:?}"
        );
        for set in ["bounding", "effective", "permitted"] {
            let caps = json["process"]["capabilities"][set].as_array().unwrap();
            assert!(caps.contains(&"CAP_NET_RAW".into()), "{set}: {caps:?}");
            assert!(
                !caps.contains(&"CAP_NET_BIND_SERVICE".into()),
                "{set}: {caps:?}"
            );
            assert!(!caps.contains(&"CAP_KILL".into()), "{set}: {caps:?}");
            assert!(
                caps.contains(&"CAP_AUDIT_WRITE".into()),
                "the rest stays: {set}"
            );
        }
    });
}

#[test]
fn init_runs_tini_in_front_of_the_command() {
    with_cx(|cx| {
        let mut p = process(cx, "web").clone();
        p.init = true;
        let plan = plan_instance(cx, &p, 1, Some(20001)).unwrap();
        let InstanceFiles::Oci(spec) = &plan.files else {
            panic!("runc plans a bundle")
        };
        let args = spec.process().as_ref().unwrap().args().clone().unwrap();
        assert_eq!(&args[..2], ["/.shim-init", "--"]);
        assert_eq!(&args[2..], plan_args(cx, process(cx, "web")).unwrap());
        let m = spec
            .mounts()
            .as_ref()
            .unwrap()
            .iter()
            .find(|m| m.destination() == std::path::Path::new("/.shim-init"))
            .expect("the init is bound");
        assert_eq!(
            m.source().as_deref(),
            Some(std::path::Path::new("/usr/bin/tini-static"))
        );
        assert!(m.options().as_ref().unwrap().contains(&"ro".to_string()));
    });
}
