use super::*;

const GOOD: &str = r#"
[shim]
port_range = [20000, 20099]

[services.billing_app]
image = "oci:/var/lib/images/billing:{revision}"
runtime = "crun"
env = { RAILS_ENV = "production" }
env_files = ["/etc/shim/secrets/billing.env"]
user = "1000:1000"

[services.billing_app.processes.web]
command = ["/app/bin/server"]
count = 4
health = { path = "/health", interval = "5s", timeout = "2s", unhealthy_after = 3, start_period = "30s" }
stop_timeout = "30s"
stop_signal = "SIGTERM"

[services.billing_app.processes.worker]
command = ["/app/bin/worker"]
count = 2
stop_signal = "quit"
"#;

fn parse(text: &str) -> Result<Definitions, ConfigError> {
    parse_sources(&[(PathBuf::from("/etc/shim/services.toml"), text.to_string())])
}

#[test]
fn parses_the_documented_example() {
    let d = parse(GOOD).unwrap();
    assert_eq!(d.settings.port_range, (20000, 20099));
    let s = d.service("billing_app").unwrap();
    assert_eq!(s.runtime, Runtime::Crun);
    assert_eq!(s.line, Some(5));
    let web = &s.processes[&Ident::parse("web").unwrap()];
    assert_eq!(web.count, 4);
    assert!(web.port, "health implies a port");
    assert_eq!(
        web.health.as_ref().unwrap().interval,
        Duration::from_secs(5)
    );
    let worker = &s.processes[&Ident::parse("worker").unwrap()];
    assert!(!worker.port);
    assert_eq!(worker.stop_signal.as_deref(), Some("SIGQUIT"));
    assert_eq!(
        s.image_for("abc").unwrap(),
        "oci:/var/lib/images/billing:abc"
    );
}

#[test]
fn defaults() {
    let d =
        parse("[services.a]\nimage = \"oci:/i:{revision}\"\n[services.a.processes.w]\n").unwrap();
    let s = d.service("a").unwrap();
    assert_eq!(s.runtime, Runtime::Runc);
    let w = s.processes.values().next().unwrap();
    assert_eq!(w.count, 1);
    assert_eq!(w.stop_timeout, Duration::from_secs(30));
    assert_eq!(w.stop_signal, None);
    assert_eq!(d.settings, HostSettings::default());
}

const BASE: &str = "[services.a]\nimage = \"oci:/i:{revision}\"\n[services.a.processes.web]\n";

/// (name, file text, expected line, substrings the message must contain)
fn bad_cases() -> Vec<(&'static str, String, usize, Vec<&'static str>)> {
    let with = |extra: &str| format!("{BASE}{extra}\n");
    vec![
        ("toml syntax", "[services.a\n".into(), 1, vec!["services.toml:1"]),
        ("unknown top-level key", "colour = 1\n".into(), 1, vec!["colour"]),
        ("unknown shim key", "[shim]\nport_rang = [1,2]\n".into(), 2, vec!["port_rang"]),
        ("unknown service key", "[services.a]\nimage = \"oci:/i:{revision}\"\nimg = 1\n".into(), 3, vec!["img"]),
        ("unknown process key", with("cont = 1"), 4, vec!["cont"]),
        ("unknown health key", with("health = { path = \"/h\", intervall = \"5s\" }"), 4, vec!["intervall"]),
        ("bad id chars", "[services.Billing]\nimage = \"oci:/i:{revision}\"\n[services.Billing.processes.w]\n".into(), 1, vec!["services.Billing", "'B'"]),
        ("id too long", format!("[services.{0}]\nimage = \"oci:/i:{{revision}}\"\n[services.{0}.processes.w]\n", "a".repeat(65)), 1, vec!["1 to 64"]),
        ("bad process name", "[services.a]\nimage = \"oci:/i:{revision}\"\n[services.a.processes.\"web app\"]\n".into(), 3, vec!["processes.web app", "' '"]),
        ("bad duration", with("stop_timeout = \"5 parsecs\""), 4, vec!["services.a.processes.web.stop_timeout", "unknown unit"]),
        ("duration without unit", with("health = { path = \"/h\", interval = \"30\" }"), 4, vec!["health.interval", "no unit"]),
        ("interval below 1s", with("health = { path = \"/h\", interval = \"500ms\", timeout = \"100ms\" }"), 4, vec!["health.interval", "at least 1s"]),
        ("timeout above interval", with("health = { path = \"/h\", interval = \"2s\", timeout = \"3s\" }"), 4, vec!["health.timeout"]),
        ("health path relative", with("health = { path = \"health\" }"), 4, vec!["health.path"]),
        ("unhealthy_after zero", with("health = { path = \"/h\", unhealthy_after = 0 }"), 4, vec!["unhealthy_after"]),
        ("negative count", with("count = -1"), 4, vec!["count", "out of range"]),
        ("huge count", with("count = 100000"), 4, vec!["count"]),
        ("count wrong type", with("count = \"four\""), 4, vec!["count"]),
        ("unknown runtime", "[services.a]\nimage = \"oci:/i:{revision}\"\nruntime = \"docker\"\n[services.a.processes.w]\n".into(), 3, vec!["docker"]),
        ("missing image", "[services.a]\n[services.a.processes.w]\n".into(), 1, vec!["services.a.image", "missing"]),
        ("image bad scheme", "[services.a]\nimage = \"http://x/{revision}\"\n[services.a.processes.w]\n".into(), 2, vec!["services.a.image"]),
        ("bad stop signal", with("stop_signal = \"SIGFOO\""), 4, vec!["stop_signal", "SIGFOO"]),
        ("bad env name", "[services.a]\nimage = \"oci:/i:{revision}\"\nenv = { \"1X\" = \"y\" }\n[services.a.processes.w]\n".into(), 3, vec!["services.a.env.1X"]),
        ("relative env file", "[services.a]\nimage = \"oci:/i:{revision}\"\nenv_files = [\"secrets.env\"]\n[services.a.processes.w]\n".into(), 3, vec!["env_files", "absolute"]),
        ("bad user", "[services.a]\nimage = \"oci:/i:{revision}\"\nuser = \"a:b:c\"\n[services.a.processes.w]\n".into(), 3, vec!["services.a.user"]),
        ("no processes", "[services.a]\nimage = \"oci:/i:{revision}\"\n".into(), 1, vec!["services.a.processes", "at least one"]),
        ("empty command", with("command = []"), 4, vec!["command"]),
        ("port range reversed", format!("[shim]\nport_range = [30000, 20000]\n{BASE}"), 2, vec!["shim.port_range"]),
        ("port range privileged", format!("[shim]\nport_range = [80, 90]\n{BASE}"), 2, vec!["shim.port_range"]),
        ("bad switch", format!("[shim]\nswitch = \"iptables\"\n{BASE}"), 2, vec!["shim.switch", "iptables", "nftables"]),
        ("port=false with health", with("port = false\nhealth = { path = \"/h\" }"), 3, vec!["port", "a command check does not"]),
        ("memory without unit sense", with("memory = \"lots\""), 4, vec!["services.a.processes.web.memory", "512M"]),
        ("memory too small", with("memory = \"512K\""), 4, vec!["memory", "at least 1M"]),
        ("memory as a number", with("memory = 512"), 4, vec!["memory"]),
        ("cpus zero", with("cpus = 0"), 4, vec!["processes.web.cpus", "0.01 to 1024"]),
        ("cpus as text", with("cpus = \"2\""), 4, vec!["cpus"]),
        ("pids zero", with("pids = 0"), 4, vec!["processes.web.pids", "from 1"]),
        ("nofile above nr_open", with("nofile = 2000000"), 4, vec!["processes.web.nofile", "1048576"]),
        ("mount type unknown", with("mounts = [{ type = \"nfs\", target = \"/x\" }]"), 4, vec!["processes.web.mounts[0].type", "nfs"]),
        ("mount target relative", with("mounts = [{ type = \"tmpfs\", target = \"tmp\" }]"), 4, vec!["mounts[0].target"]),
        ("mount target root", with("mounts = [{ type = \"tmpfs\", target = \"/\" }]"), 4, vec!["mounts[0].target"]),
        ("mount target dotdot", with("mounts = [{ type = \"tmpfs\", target = \"/a/../etc\" }]"), 4, vec!["mounts[0].target"]),
        ("bind without source", with("mounts = [{ type = \"bind\", target = \"/x\" }]"), 4, vec!["mounts[0].source", "missing"]),
        ("bind of /", with("mounts = [{ type = \"bind\", source = \"/\", target = \"/host\" }]"), 4, vec!["mounts[0].source"]),
        ("bind of shim state", with("mounts = [{ type = \"bind\", source = \"/var/lib/shim/state\", target = \"/s\" }]"), 4, vec!["mounts[0].source", "/var/lib/shim"]),
        ("bind relative", with("mounts = [{ type = \"bind\", source = \"srv\", target = \"/s\" }]"), 4, vec!["mounts[0].source"]),
        ("volume bad name", with("mounts = [{ type = \"volume\", source = \"../x\", target = \"/c\" }]"), 4, vec!["mounts[0].source", "volume name"]),
        ("tmpfs with source", with("mounts = [{ type = \"tmpfs\", source = \"x\", target = \"/t\" }]"), 4, vec!["mounts[0].source"]),
        ("tmpfs bad size", with("mounts = [{ type = \"tmpfs\", target = \"/t\", size = \"1\" }]"), 4, vec!["mounts[0].size"]),
        ("tmpfs bad mode", with("mounts = [{ type = \"tmpfs\", target = \"/t\", mode = \"999\" }]"), 4, vec!["mounts[0].mode"]),
        ("size on a bind", with("mounts = [{ type = \"bind\", source = \"/srv\", target = \"/t\", size = \"1M\" }]"), 4, vec!["mounts[0].size", "only for a tmpfs"]),
        ("same target twice", with("mounts = [{ type = \"tmpfs\", target = \"/t\" }, { type = \"volume\", source = \"v\", target = \"/t\" }]"), 4, vec!["mounts[1]", "twice"]),
        ("unknown mount key", with("mounts = [{ type = \"tmpfs\", target = \"/t\", options = \"x\" }]"), 4, vec!["options"]),
        ("secret relative source", with("secrets = [{ source = \"db.pem\", target = \"/run/s\" }]"), 4, vec!["processes.web.secrets[0].source", "absolute"]),
        ("secret target dir", with("secrets = [{ source = \"/etc/db.pem\", target = \"/run/\" }]"), 4, vec!["secrets[0].target"]),
        ("secret bad mode", with("secrets = [{ source = \"/etc/db.pem\", target = \"/run/s\", mode = \"4755\" }]"), 4, vec!["secrets[0].mode", "0400"]),
        ("secret twice", with("secrets = [{ source = \"/etc/a\", target = \"/run/s\" }, { source = \"/etc/b\", target = \"/run/s\" }]"), 4, vec!["secrets[1]", "twice"]),
        ("secret unknown key", with("secrets = [{ source = \"/etc/a\", target = \"/run/s\", owner = \"me\" }]"), 4, vec!["owner"]),
        ("secret on a mount", with("secrets = [{ source = \"/etc/a\", target = \"/t\" }]\nmounts = [{ type = \"tmpfs\", target = \"/t\" }]"), 3, vec!["processes.web.secrets", "both a secret and a mount"]),
        ("unknown capability", with("cap_add = [\"NET_RAWR\"]"), 4, vec!["processes.web.cap_add", "NET_RAWR"]),
        ("podman with mounts", "[services.a]\nimage = \"oci:/i:{revision}\"\nruntime = \"podman\"\n[services.a.processes.w]\nmounts = [{ type = \"tmpfs\", target = \"/t\" }]\n".into(), 3, vec!["podman"]),
        ("health path and tcp", with("health = { path = \"/h\", tcp = true }"), 4, vec!["health.path", "exactly one"]),
        ("health tcp and command", with("health = { tcp = true, command = [\"x\"] }"), 4, vec!["health.path", "exactly one"]),
        ("podman with secrets", "[services.a]\nimage = \"oci:/i:{revision}\"\nruntime = \"podman\"\n[services.a.processes.w]\nsecrets = [{ source = \"/etc/a\", target = \"/s\" }]\n".into(), 3, vec!["podman", "secrets"]),
        ("podman with own seccomp", "[services.a]\nimage = \"oci:/i:{revision}\"\nruntime = \"podman\"\n[services.a.processes.w]\nseccomp = \"unconfined\"\n".into(), 3, vec!["podman", "seccomp"]),
        ("proxy without a port", with("port = false\nhealth = { command = [\"true\"] }\nproxy = { upstream = \"u\", file = \"/etc/nginx/shim/a.conf\" }"), 3, vec!["port", "proxied"]),
        ("command check timeout too long", with("health = { command = [\"x\"], interval = \"10m\", timeout = \"5m\" }"), 4, vec!["health.timeout", "60s"]),
        ("health empty command", with("health = { command = [] }"), 4, vec!["health.command", "non-empty"]),
        ("health command empty arg", with("health = { command = [\"bin/x\", \"\"] }"), 4, vec!["health.command", "non-empty arguments"]),
        ("podman with a command check", "[services.a]\nimage = \"oci:/i:{revision}\"\nruntime = \"podman\"\n[services.a.processes.w]\nhealth = { command = [\"x\"] }\n".into(), 3, vec!["podman", "command health checks"]),
        ("health neither", with("health = { interval = \"5s\" }"), 4, vec!["health.path", "tcp = true"]),
        ("reserved id", "[services.reconcile]\nimage = \"oci:/i:{revision}\"\n[services.reconcile.processes.w]\n".into(), 1, vec!["services.reconcile", "reserved", "shim-reconcile.service"]),
        ("service memory bad", "[services.a]\nimage = \"oci:/i:{revision}\"\nmemory = \"1.5G\"\n[services.a.processes.w]\n".into(), 3, vec!["services.a.memory"]),
    ]
}

#[test]
fn bad_definitions_name_file_line_and_key() {
    let cases = bad_cases();
    assert!(cases.len() >= 20);
    for (name, text, line, needles) in cases {
        let err = match parse(&text) {
            Ok(_) => panic!("{name}: accepted:\n{text}"),
            Err(e) => e,
        };
        assert_eq!(err.line, Some(line), "{name}: wrong line in {err}");
        let msg = err.to_string();
        assert!(
            msg.starts_with(&format!("/etc/shim/services.toml:{line}")),
            "{name}: {msg}"
        );
        for n in needles {
            assert!(msg.contains(n), "{name}: {msg:?} lacks {n:?}");
        }
    }
}

#[test]
fn duplicate_ids_across_files_name_both() {
    let a = (PathBuf::from("/etc/shim/services.toml"), BASE.to_string());
    let b = (
        PathBuf::from("/etc/shim/services.d/b.toml"),
        format!("\n{BASE}"),
    );
    let err = parse_sources(&[a, b]).unwrap_err();
    assert_eq!(err.file, PathBuf::from("/etc/shim/services.d/b.toml"));
    assert_eq!(err.line, Some(2));
    assert!(
        err.to_string()
            .contains("already defined in /etc/shim/services.toml:1"),
        "{err}"
    );
}

#[test]
fn image_without_revision_is_refused_when_a_revision_is_given() {
    let d = parse("[services.a]\nimage = \"oci:/i:latest\"\n[services.a.processes.w]\n").unwrap();
    let err = d.service("a").unwrap().image_for("abc").unwrap_err();
    assert_eq!(err.line, Some(2));
    assert!(err.to_string().contains("services.a.image"), "{err}");
    assert!(err.to_string().contains("{revision}"), "{err}");
}

#[test]
fn unknown_service_lists_known_ones() {
    let d = parse(GOOD).unwrap();
    let err = d.service("nope").unwrap_err().to_string();
    assert!(err.contains("billing_app"), "{err}");
}

#[test]
fn files_are_found_in_order() {
    let t = tempfile::tempdir().unwrap();
    std::fs::write(t.path().join("services.toml"), BASE).unwrap();
    std::fs::create_dir(t.path().join("services.d")).unwrap();
    std::fs::write(t.path().join("services.d/b.toml"), "").unwrap();
    std::fs::write(t.path().join("services.d/a.toml"), "").unwrap();
    std::fs::write(t.path().join("services.d/c.txt"), "").unwrap();
    let files = config_files(t.path()).unwrap();
    let names: Vec<_> = files
        .iter()
        .map(|f| f.strip_prefix(t.path()).unwrap().display().to_string())
        .collect();
    assert_eq!(
        names,
        ["services.toml", "services.d/a.toml", "services.d/b.toml"]
    );
    assert_eq!(
        config_files(&t.path().join("services.toml")).unwrap(),
        files
    );
    let empty = tempfile::tempdir().unwrap();
    let e = load(&empty.path().join("missing.toml"))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("missing.toml") && e.contains("services.d"),
        "{e}"
    );
}

#[test]
fn definitions_only_in_services_d_are_enough() {
    let t = tempfile::tempdir().unwrap();
    std::fs::create_dir(t.path().join("services.d")).unwrap();
    std::fs::write(t.path().join("services.d/app.toml"), BASE).unwrap();
    // As the default path names it (/etc/shim/services.toml, absent) and as a directory.
    for p in [t.path().join("services.toml"), t.path().to_path_buf()] {
        let d = load(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        assert!(!d.services.is_empty());
    }
}

#[test]
fn registry_settings() {
    let d = parse(&format!(
        "[shim]\ninsecure_registries = [\"127.0.0.1:5000\", \"Reg.Local\"]\nauth_file = \"/etc/shim/creds.json\"\n{BASE}"
    ))
    .unwrap();
    assert_eq!(
        d.settings.insecure_registries,
        vec!["127.0.0.1:5000", "reg.local"]
    );
    assert_eq!(d.settings.auth_file, PathBuf::from("/etc/shim/creds.json"));
    let r = d.settings.registry();
    assert_eq!(r.insecure_registries.len(), 2);
    assert_eq!(
        HostSettings::default().auth_file,
        PathBuf::from("/etc/shim/auth.json")
    );
    // Registry references are accepted as service images.
    let d = parse("[services.a]\nimage = \"registry.example.com:5000/team/app:{revision}\"\n[services.a.processes.w]\n").unwrap();
    assert_eq!(
        d.service("a").unwrap().image_for("abc").unwrap(),
        "registry.example.com:5000/team/app:abc"
    );

    for (text, line, needles) in [
        (
            "[shim]\ninsecure_registries = [\"http://h:5000\"]\n",
            2,
            vec!["shim.insecure_registries", "without a scheme"],
        ),
        (
            "[shim]\ninsecure_registries = [\n  \"ok:1\",\n  \"h:x\"]\n",
            4,
            vec!["shim.insecure_registries", "invalid port"],
        ),
        (
            "[shim]\nauth_file = \"auth.json\"\n",
            2,
            vec!["shim.auth_file", "absolute"],
        ),
        (
            "[services.a]\nimage = \"team/app:{revision}\"\n[services.a.processes.w]\n",
            2,
            vec!["services.a.image", "not a registry host"],
        ),
    ] {
        let err = parse(text).unwrap_err();
        assert_eq!(err.line, Some(line), "{text}: {err}");
        for n in needles {
            assert!(err.to_string().contains(n), "{text}: {err}");
        }
    }
}

#[test]
fn proxies_need_their_own_file_and_upstream_name_and_instances() {
    let svc = |id: &str, file: &str, up: &str| {
        format!(
            "[services.{id}]\nimage = \"oci:/i:{{revision}}\"\n[services.{id}.processes.web]\n\
             health = {{ path = \"/h\" }}\nproxy = {{ upstream = \"{up}\", file = \"{file}\" }}\n"
        )
    };
    let two = |a: String, b: String| {
        parse_sources(&[
            (PathBuf::from("/etc/shim/services.d/a.toml"), a),
            (PathBuf::from("/etc/shim/services.d/b.toml"), b),
        ])
    };
    let e = two(
        svc("a", "/etc/nginx/shim/x.conf", "a_web"),
        svc("b", "/etc/nginx/shim/x.conf", "b_web"),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("services.b.processes.web.proxy.file"), "{e}");
    assert!(
        e.contains("services.a.processes.web") && e.contains("a.toml"),
        "{e}"
    );
    let e = two(
        svc("a", "/etc/nginx/shim/a.conf", "web"),
        svc("b", "/etc/nginx/shim/b.conf", "web"),
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("proxy.upstream") && e.contains("upstream \"web\""),
        "{e}"
    );
    two(
        svc("a", "/etc/nginx/shim/a.conf", "a_web"),
        svc("b", "/etc/nginx/shim/b.conf", "b_web"),
    )
    .unwrap();
    let e =
        parse(&svc("a", "/etc/nginx/shim/a.conf", "a_web").replace("health", "count = 0\nhealth"))
            .unwrap_err()
            .to_string();
    assert!(e.contains("count = 0 with a proxy"), "{e}");
}

#[test]
fn look_alike_service_and_process_names_are_refused() {
    let e = parse(
        "[services.a]\nimage = \"oci:/i:{revision}\"\n[services.a.processes.b-web]\n\
         [services.a-b]\nimage = \"oci:/i:{revision}\"\n[services.a-b.processes.web]\n",
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("services.a-b.processes.web") || e.contains("services.a.processes.b-web"),
        "{e}"
    );
    assert!(e.contains("shim-a-b-web-"), "{e}");
    parse(
        "[services.a]\nimage = \"oci:/i:{revision}\"\n[services.a.processes.web]\n\
         [services.a-b]\nimage = \"oci:/i:{revision}\"\n[services.a-b.processes.web]\n",
    )
    .unwrap();
}

#[test]
fn limits_default_to_the_services_and_a_process_overrides_each() {
    let d = parse(
        "[services.a]\nimage = \"oci:/i:{revision}\"\nmemory = \"1G\"\ncpus = 2\nnofile = 4096\n\
         [services.a.processes.web]\nmemory = \"512M\"\ncpus = 1.5\npids = 256\n\
         [services.a.processes.worker]\n",
    )
    .unwrap();
    let s = d.service("a").unwrap();
    let web = &s.processes[&Ident::parse("web").unwrap()].limits;
    let worker = &s.processes[&Ident::parse("worker").unwrap()].limits;
    assert_eq!(
        *web,
        Limits {
            memory: Some(512 << 20),
            cpus_milli: Some(1500),
            pids: Some(256),
            nofile: Some(4096)
        }
    );
    assert_eq!(
        *worker,
        Limits {
            memory: Some(1 << 30),
            cpus_milli: Some(2000),
            pids: None,
            nofile: Some(4096)
        }
    );
    let none = parse(BASE).unwrap();
    let p = &none.service("a").unwrap().processes[&Ident::parse("web").unwrap()];
    assert_eq!(p.limits, Limits::default());
}

#[test]
fn mounts_and_capabilities_parse_and_default_to_the_services() {
    let d = parse(
        "[services.a]\nimage = \"oci:/i:{revision}\"\ncap_drop = [\"net_bind_service\"]\n\
         mounts = [{ type = \"volume\", source = \"cache\", target = \"/app/cache\" }]\n\
         [services.a.processes.web]\ncap_add = [\"CAP_NET_RAW\", \"net_raw\"]\n\
         mounts = [\n  { type = \"bind\", source = \"/srv/up\", target = \"/app/up\" },\n\
           { type = \"bind\", source = \"/etc/ssl/certs\", target = \"/etc/ssl/certs\", read_only = true },\n\
           { type = \"tmpfs\", target = \"/app/tmp\", size = \"64M\" },\n]\n\
         [services.a.processes.worker]\n",
    )
    .unwrap();
    let s = d.service("a").unwrap();
    let web = &s.processes[&Ident::parse("web").unwrap()];
    let worker = &s.processes[&Ident::parse("worker").unwrap()];
    assert_eq!(
        web.cap_add,
        vec!["CAP_NET_RAW".to_string()],
        "normalised, once"
    );
    assert_eq!(
        web.cap_drop,
        vec!["CAP_NET_BIND_SERVICE".to_string()],
        "the service's"
    );
    assert_eq!(
        web.mounts,
        vec![
            MountDef::Bind {
                source: "/srv/up".into(),
                target: "/app/up".into(),
                read_only: false
            },
            MountDef::Bind {
                source: "/etc/ssl/certs".into(),
                target: "/etc/ssl/certs".into(),
                read_only: true
            },
            MountDef::Tmpfs {
                target: "/app/tmp".into(),
                size: Some(64 << 20),
                mode: 0o1777
            },
        ]
    );
    assert_eq!(
        worker.mounts,
        vec![MountDef::Volume {
            source: "cache".into(),
            target: "/app/cache".into(),
            read_only: false
        }]
    );
    assert!(worker.cap_add.is_empty());
}

#[test]
fn switch_defaults_to_reload_and_takes_nftables() {
    let d = parse(BASE).unwrap();
    assert_eq!(d.settings.switch, crate::config::SwitchMode::Reload);
    let d = parse(&format!("[shim]\nswitch = \"nftables\"\n{BASE}")).unwrap();
    assert_eq!(d.settings.switch, crate::config::SwitchMode::Nftables);
}

#[test]
fn stable_addresses_are_loopback_and_stay_out_of_127_0() {
    for (s, p) in [
        ("app", "web"),
        ("billing", "api"),
        ("a", "b"),
        ("x-y", "z_1"),
    ] {
        let a = crate::config::stable_address(s, p);
        let o = a.octets();
        assert_eq!(o[0], 127, "{a}");
        assert!(o[1] != 0 && o[1] != 255 && o[3] != 0 && o[3] != 255, "{a}");
        assert_eq!(a, crate::config::stable_address(s, p), "deterministic");
    }
    assert_ne!(
        crate::config::stable_address("app", "web"),
        crate::config::stable_address("app", "api")
    );
}

#[test]
fn a_tcp_health_check_has_no_path() {
    let d = parse(&format!(
        "{BASE}health = {{ tcp = true, interval = \"2s\", timeout = \"1s\" }}\n"
    ))
    .unwrap();
    let h = d.service("a").unwrap().processes[&Ident::parse("web").unwrap()]
        .health
        .clone()
        .unwrap();
    assert_eq!(h.path, "");
    assert_eq!(h.what(), "TCP connect");
    assert_eq!(h.interval, Duration::from_secs(2));
    let d = parse(&format!(
        "{BASE}health = {{ path = \"/up\", tcp = false }}\n"
    ))
    .unwrap();
    let h = d.service("a").unwrap().processes[&Ident::parse("web").unwrap()]
        .health
        .clone()
        .unwrap();
    assert_eq!(h.what(), "GET /up");
}

#[test]
fn a_command_health_check_needs_no_port() {
    let d = parse(&format!(
        "{BASE}health = {{ command = [\"bin/check\", \"--quick\"], timeout = \"3s\" }}\n"
    ))
    .unwrap();
    let p = &d.service("a").unwrap().processes[&Ident::parse("web").unwrap()];
    let h = p.health.clone().unwrap();
    assert_eq!(h.command, ["bin/check", "--quick"]);
    assert_eq!((h.path.as_str(), h.needs_port()), ("", false));
    assert_eq!(h.what(), "command bin/check --quick");
    assert!(!p.port, "a worker with a command check gets no port");
    let d = parse(&format!(
        "{BASE}port = false\nhealth = {{ command = [\"true\"] }}\n"
    ))
    .unwrap();
    assert!(!d.service("a").unwrap().processes[&Ident::parse("web").unwrap()].port);
    // An HTTP check serialises as before command checks existed (deployment ids unchanged).
    let http = parse(&format!("{BASE}health = {{ path = \"/h\" }}\n")).unwrap();
    let h = http.service("a").unwrap().processes[&Ident::parse("web").unwrap()]
        .health
        .clone()
        .unwrap();
    let record = crate::plan::record::HealthRecord::from(&h);
    assert!(!serde_json::to_string(&record).unwrap().contains("command"));
}
