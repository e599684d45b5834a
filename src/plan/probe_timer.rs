//! The probe of a service as transient units, planned purely: a timer
//! `shim-probe-<id>.timer` that starts `shim-probe-<id>.service` (oneshot, `shim probe --id
//! <id>`) every probe interval. Created by a successful start/upgrade/reconcile, removed by
//! `shim stop`, gone at reboot like the instances (reconcile creates it again).
//!
//! Quiet and cheap by construction: `LogLevelMax=notice` drops systemd's info lines about each
//! run ("Starting…", "Deactivated successfully", "Finished…", CPU time), so a healthy run
//! leaves nothing in the journal while the probe's own notices and warnings still get
//! through; no start limit, so a probe that fails now and then is never locked out; a small
//! `AccuracySec=` so runs are on time rather than coalesced up to a minute late (systemd's
//! default accuracy).

use std::path::Path;
use std::time::Duration;

use sha2::{Digest, Sha256};

use super::names::{probe_service_name, probe_timer_name, SLICE};
use super::unit::{Exec, Prop, UnitSpec};
use crate::config::{format_duration, ServiceDef};

/// Every service is probed (instance counts, crash loops) even without a health check.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(5);
/// Never more often than this.
pub const MIN_INTERVAL: Duration = Duration::from_secs(1);
/// How exact the timer is; systemd's default (1 min) would make a 5 s probe meaningless.
pub const ACCURACY: Duration = Duration::from_millis(1);
/// A probe run that takes longer than this is killed (it may start instances, whose start
/// jobs have their own 90 s timeout).
pub const RUN_TIMEOUT: Duration = Duration::from_secs(120);

/// The probe interval of a service: the shortest `health.interval` of its processes, else
/// [`DEFAULT_INTERVAL`]; never below [`MIN_INTERVAL`].
pub fn probe_interval(svc: &ServiceDef) -> Duration {
    svc.processes
        .values()
        .filter_map(|p| p.health.as_ref().map(|h| h.interval))
        .min()
        .unwrap_or(DEFAULT_INTERVAL)
        .max(MIN_INTERVAL)
}

/// What the probe units depend on besides the definition.
#[derive(Debug, Clone)]
pub struct ProbeContext<'a> {
    pub service: &'a ServiceDef,
    /// The shim binary the probe runs.
    pub shim_exe: &'a Path,
    /// The definitions (absolute), passed as `--config` so the probe reads what deployed.
    pub config: &'a Path,
    /// Extra environment for the probe (shim's state/run dir overrides, tests only).
    pub env: &'a [(String, String)],
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeUnits {
    pub timer: UnitSpec,
    pub service: UnitSpec,
}

fn usec(d: Duration) -> Prop {
    Prop::USec(u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

/// The timer and the service it triggers.
pub fn plan_probe(cx: &ProbeContext<'_>) -> ProbeUnits {
    let service = probe_service_spec(cx);
    let timer = probe_timer_spec(cx.service.id.as_str(), probe_interval(cx.service), &service);
    ProbeUnits { timer, service }
}

/// The oneshot service that runs `shim probe --id ID`.
fn probe_service_spec(cx: &ProbeContext<'_>) -> UnitSpec {
    let id = cx.service.id.as_str();
    let shim = cx.shim_exe.display().to_string();
    let argv = vec![
        shim.clone(),
        "--config".to_string(),
        cx.config.display().to_string(),
        "probe".to_string(),
        "--id".to_string(),
        id.to_string(),
    ];
    let mut props: Vec<(&str, Prop)> = vec![
        ("Description", Prop::Str(format!("shim probe of {id}"))),
        ("Slice", Prop::Str(SLICE.into())),
        ("Type", Prop::Str("oneshot".into())),
        (
            "ExecStart",
            Prop::Exec(vec![Exec {
                path: shim,
                argv,
                ignore_failure: false,
            }]),
        ),
    ];
    if !cx.env.is_empty() {
        props.push((
            "Environment",
            Prop::Strs(cx.env.iter().map(|(k, v)| format!("{k}={v}")).collect()),
        ));
    }
    props.extend([
        ("TimeoutStartUSec", usec(RUN_TIMEOUT)),
        // A probe that failed a few times in a row must still run next time.
        ("StartLimitIntervalUSec", Prop::USec(0)),
        // 5 = notice: systemd's info-level lines about every run are dropped. What the probe
        // writes to stderr is an error (it says nothing when all is well): at warning level
        // (4) it passes that filter.
        ("LogLevelMax", Prop::I32(5)),
        ("SyslogLevel", Prop::I32(4)),
        ("SyslogIdentifier", Prop::Str("shim-probe".into())),
        // systemd's CPU accounting of the probe unit (CPUUsageNSec), for the benchmark.
        ("CPUAccounting", Prop::Bool(true)),
        ("CollectMode", Prop::Str("inactive-or-failed".into())),
    ]);
    UnitSpec {
        name: probe_service_name(id),
        properties: props.into_iter().map(|(k, v)| (k.to_string(), v)).collect(),
    }
}

/// The timer that runs `service` every `interval`.
fn probe_timer_spec(id: &str, interval: Duration, service: &UnitSpec) -> UnitSpec {
    // The description carries a digest of everything planned, so that reconcile can tell
    // whether a running timer is the one the definitions ask for without reading it back.
    let mut h = Sha256::new();
    h.update(service.render().as_bytes());
    h.update(format_duration(interval).as_bytes());
    let digest = hex::encode(h.finalize());
    UnitSpec {
        name: probe_timer_name(id),
        properties: vec![
            (
                "Description".to_string(),
                Prop::Str(format!(
                    "shim probe of {id} every {} [{}]",
                    format_duration(interval),
                    &digest[..12]
                )),
            ),
            (
                "TimersMonotonic".to_string(),
                Prop::Timers(vec![
                    ("OnActiveSec".to_string(), micros(interval)),
                    ("OnUnitActiveSec".to_string(), micros(interval)),
                ]),
            ),
            ("AccuracyUSec".to_string(), usec(ACCURACY)),
            (
                "CollectMode".to_string(),
                Prop::Str("inactive-or-failed".into()),
            ),
            (
                // Stopped with the service's unit (`systemctl stop shim-<id>.service`).
                "PartOf".to_string(),
                Prop::Strs(vec![super::names::service_unit_name(id)]),
            ),
        ],
    }
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{parse_sources, Definitions};
    use crate::plan::names::service_of_probe_timer;
    use std::path::PathBuf;

    fn defs(text: &str) -> Definitions {
        parse_sources(&[(PathBuf::from("/etc/shim/services.toml"), text.into())]).unwrap()
    }

    const DEF: &str = r#"
[services.billing_app]
image = "oci:/var/lib/images/billing:{revision}"

[services.billing_app.processes.web]
count = 4
health = { path = "/health", interval = "2s", timeout = "1s" }

[services.billing_app.processes.admin]
health = { path = "/up", interval = "10s" }

[services.billing_app.processes.worker]
command = ["/w"]
"#;

    #[test]
    fn probe_units_snapshot() {
        let d = defs(DEF);
        let svc = d.service("billing_app").unwrap();
        let u = plan_probe(&ProbeContext {
            service: svc,
            shim_exe: Path::new("/usr/bin/shim"),
            config: Path::new("/etc/shim/services.toml"),
            env: &[],
        });
        insta::assert_snapshot!(
            "probe_units",
            format!("{}\n{}", u.timer.render(), u.service.render())
        );
    }

    #[test]
    fn interval_is_the_shortest_health_interval_else_default() {
        let d = defs(DEF);
        assert_eq!(
            probe_interval(d.service("billing_app").unwrap()),
            Duration::from_secs(2)
        );
        let d = defs(
            "[services.w]\nimage = \"oci:/i:{revision}\"\n[services.w.processes.worker]\ncommand = [\"/w\"]\n",
        );
        assert_eq!(probe_interval(d.service("w").unwrap()), DEFAULT_INTERVAL);
    }

    #[test]
    fn timer_description_changes_with_what_it_runs() {
        let d = defs(DEF);
        let svc = d.service("billing_app").unwrap();
        let plan = |config: &str, env: &[(String, String)]| {
            plan_probe(&ProbeContext {
                service: svc,
                shim_exe: Path::new("/usr/bin/shim"),
                config: Path::new(config),
                env,
            })
            .timer
            .properties[0]
                .1
                .clone()
        };
        let a = plan("/etc/shim", &[]);
        assert_eq!(a, plan("/etc/shim", &[]));
        assert_ne!(a, plan("/srv/shim", &[]));
        assert_ne!(
            a,
            plan(
                "/etc/shim",
                &[(crate::plan::fields::env::RUN_DIR.into(), "/tmp/r".into())]
            )
        );
    }

    #[test]
    fn timer_names_round_trip() {
        assert_eq!(probe_timer_name("a-b"), "shim-probe-a-b.timer");
        assert_eq!(service_of_probe_timer("shim-probe-a-b.timer"), Some("a-b"));
        assert_eq!(service_of_probe_timer("shim-probe-.timer"), None);
        assert_eq!(service_of_probe_timer("shim-a-web-r-1.service"), None);
    }
}
