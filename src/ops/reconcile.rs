//! `shim reconcile`: make the host match the definitions and the recorded state, e.g. at boot
//! (units/shim-reconcile.service) when every transient unit is gone, or after editing the
//! definitions (`count` 2 → 4 scales without a deploy).
//!
//! Per defined service with a recorded current revision and not stopped, under its lock:
//! [`drift`] says what differs (missing or extra instances, leftovers of other revisions or
//! of an interrupted upgrade, an nginx upstream not pointing at the instances); if anything
//! does, `upgrade::converge` to the current revision repairs it (its `recover` step removes
//! what an interrupted upgrade left) and refreshes the probe timer; otherwise only the probe
//! timer is checked. Units and probe timers of services no longer defined are stopped.
//! Nothing that matches is touched, so a second run does nothing; `--dry-run` prints the plan.
//!
//! A paused service is still brought back (reconcile is asked for explicitly, or runs at
//! boot); pausing stops the probe from acting, not the operator.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{anyhow, Result};

use crate::config::{Definitions, ServiceDef};
use crate::host::lock::ServiceLock;
use crate::host::state::{ServiceState, StateStore};
use crate::host::systemd::UnitInfo;
use crate::host::Host;
use crate::ops::instances;
use crate::ops::upgrade;
use crate::plan::probe_timer::service_of_probe_timer;

#[derive(Debug, Clone)]
pub struct Options {
    pub dry_run: bool,
    pub lock_timeout: Duration,
    /// The definitions' path, for the probe timers.
    pub config: PathBuf,
}

fn rev_of(u: &UnitInfo) -> &str {
    u.field("SHIM_REVISION").unwrap_or_default()
}

/// Why a deployed service differs from its definition at `revision`; empty when it matches.
/// `files` holds the current content of each proxied process's upstream file (None: absent).
/// Failed (crash-looping) instances count as present: they are the probe's to retry.
pub fn drift(
    svc: &ServiceDef,
    st: &ServiceState,
    revision: &str,
    units: &[UnitInfo],
    files: &BTreeMap<PathBuf, Option<String>>,
) -> Vec<String> {
    let mut why = Vec::new();
    if let Some(a) = &st.upgrading {
        why.push(format!(
            "an upgrade to {} was interrupted ({:?})",
            a.revision, a.phase
        ));
    }
    let others: BTreeSet<&str> = units
        .iter()
        .map(rev_of)
        .filter(|r| *r != revision)
        .collect();
    if !others.is_empty() {
        why.push(format!(
            "instances of other revisions are left: {}",
            others.into_iter().collect::<Vec<_>>().join(", ")
        ));
    }
    let current: Vec<&UnitInfo> = units.iter().filter(|u| rev_of(u) == revision).collect();
    let index = |u: &UnitInfo| -> u32 {
        u.field("SHIM_INSTANCE")
            .and_then(|s| s.parse().ok())
            .unwrap_or(0)
    };
    let defined: BTreeSet<&str> = svc.processes.values().map(|p| p.name.as_str()).collect();
    let undefined: BTreeSet<&str> = current
        .iter()
        .filter_map(|u| u.field("SHIM_PROCESS"))
        .filter(|p| !defined.contains(p))
        .collect();
    for p in undefined {
        why.push(format!("process {p} is no longer defined"));
    }
    for d in svc.processes.values() {
        let mine: Vec<&&UnitInfo> = current
            .iter()
            .filter(|u| u.field("SHIM_PROCESS") == Some(d.name.as_str()))
            .collect();
        let have: BTreeSet<u32> = mine.iter().map(|u| index(u)).collect();
        let missing = (1..=d.count).filter(|i| !have.contains(i)).count();
        let extra = have.iter().filter(|i| **i > d.count || **i == 0).count();
        if missing > 0 {
            why.push(format!(
                "{}: {missing} of {} instance(s) missing",
                d.name, d.count
            ));
        }
        if extra > 0 {
            why.push(format!(
                "{}: {extra} instance(s) beyond count {}",
                d.name, d.count
            ));
        }
        if let Some(px) = &d.proxy {
            let mut ports: Vec<(u32, u16)> = mine
                .iter()
                .filter(|u| index(u) <= d.count)
                .filter_map(|u| Some((index(u), u.field("SHIM_PORT")?.parse().ok()?)))
                .collect();
            ports.sort();
            let ports: Vec<u16> = ports.into_iter().map(|(_, p)| p).collect();
            let want = crate::plan::upstream::render_upstream(
                &px.upstream,
                svc.id.as_str(),
                d.name.as_str(),
                revision,
                &ports,
            );
            if files.get(&px.file).cloned().flatten().as_deref() != Some(want.as_str()) {
                why.push(format!(
                    "{}: nginx upstream {} does not point at its instances",
                    d.name,
                    px.file.display()
                ));
            }
        }
    }
    why
}

fn upstream_files(svc: &ServiceDef) -> BTreeMap<PathBuf, Option<String>> {
    svc.processes
        .values()
        .filter_map(|d| d.proxy.as_ref())
        .map(|px| (px.file.clone(), std::fs::read_to_string(&px.file).ok()))
        .collect()
}

pub fn run(host: &Host, defs: &Definitions, opts: &Options) -> Result<()> {
    let (sd, dirs) = (host.systemd()?, &host.dirs);
    let store = StateStore::new(&dirs.state);
    let shim_exe = crate::host::images::shim_binary()?;
    let mut failed: Vec<String> = Vec::new();
    let mut acted = false;
    // One line per service: what reconcile found and does.
    let say = |id: &str, what: String| println!("  {id:<20} {what}");
    println!(
        "reconcile{}: {} service(s) defined",
        if opts.dry_run { " (dry run)" } else { "" },
        defs.services.len()
    );

    for svc in defs.services.values() {
        let id = svc.id.as_str();
        let st = store.load(id)?;
        let timer_loaded = !sd
            .list_units(&[crate::plan::probe_timer::probe_timer_name(id)])?
            .is_empty();
        let revision = match (&st.current, st.stopped) {
            (None, _) | (Some(_), true) => {
                let why = if st.stopped {
                    "stopped"
                } else {
                    "not deployed"
                };
                let cron_timers = !sd
                    .list_units(&[format!("{}{id}-*.timer", crate::plan::oneoff::CRON_PREFIX)])?
                    .is_empty();
                if timer_loaded || cron_timers {
                    say(id, format!("{why}: remove its probe and cron timers"));
                    acted = true;
                    if !opts.dry_run {
                        crate::ops::probe_timer::remove_probe_timer(sd, id)?;
                        crate::ops::cron::remove_all(sd, id)?;
                    }
                } else {
                    say(id, format!("{why}: nothing to do"));
                }
                continue;
            }
            (Some(r), false) => r.clone(),
        };
        // Look and act under the service's lock, so an upgrade running meanwhile is not
        // undone with what reconcile saw before it finished.
        let lock = if opts.dry_run {
            None
        } else {
            Some(ServiceLock::acquire(&dirs.run, id, opts.lock_timeout)?)
        };
        let st = store.load(id)?;
        let revision = st.current.clone().unwrap_or(revision);
        let units = instances::service_units(sd, id)?;
        let why = drift(svc, &st, &revision, &units, &upstream_files(svc));
        let paused = if st.paused {
            " (supervision paused)".to_string()
        } else if !st.paused_processes.is_empty() {
            format!(
                " (supervision paused for {})",
                st.paused_processes
                    .iter()
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        } else {
            String::new()
        };
        if !why.is_empty() {
            acted = true;
            say(
                id,
                format!("converge to {revision}: {}{paused}", why.join("; ")),
            );
            if opts.dry_run {
                continue;
            }
            let uopts = upgrade::Options {
                kind: upgrade::Kind::Reconcile,
                dry_run: false,
                timeout: None,
                lock_timeout: opts.lock_timeout,
                json: false,
                config: opts.config.clone(),
            };
            if let Err(e) = upgrade::converge_locked(host, defs, id, &revision, &uopts, lock) {
                eprintln!("shim: reconcile of {id}: {e:#}");
                failed.push(id.to_string());
            }
            continue;
        }
        if let Some(why) = crate::ops::cron::drift(sd, svc, dirs, &revision)? {
            acted = true;
            say(id, format!("{revision}: {why}: sync it"));
            if !opts.dry_run {
                match crate::ops::cron::repair(host, defs, &opts.config, id, &revision) {
                    Ok(lines) => lines.iter().for_each(|l| say(id, l.clone())),
                    Err(e) => {
                        eprintln!("shim: reconcile of {id}: cron: {e:#}");
                        failed.push(id.to_string());
                    }
                }
            }
        }
        match crate::ops::probe_timer::probe_timer_drift(host, svc, &shim_exe, &opts.config)? {
            None => say(id, format!("{revision}: ok{paused}")),
            Some(t) => {
                acted = true;
                say(id, format!("{revision}: {t}: create it{paused}"));
                if !opts.dry_run {
                    if let Err(e) = crate::ops::probe_timer::ensure_probe_timer(
                        host,
                        svc,
                        &shim_exe,
                        &opts.config,
                    ) {
                        eprintln!("shim: reconcile of {id}: {e:#}");
                        failed.push(id.to_string());
                    }
                }
            }
        }
    }

    // Services no longer defined: their instances and probe timers go.
    let defined: BTreeSet<&str> = defs.services.keys().map(|k| k.as_str()).collect();
    let all = sd.list_units(&["shim-*".to_string()])?;
    let mut orphans: BTreeMap<String, Vec<UnitInfo>> = BTreeMap::new();
    for u in &all {
        if let Some(s) = u.field("SHIM_SERVICE").filter(|s| !defined.contains(s)) {
            orphans.entry(s.to_string()).or_default().push(u.clone());
        }
    }
    for u in &all {
        if let Some(s) = service_of_probe_timer(&u.name).filter(|s| !defined.contains(s)) {
            orphans.entry(s.to_string()).or_default();
        }
    }
    for id in crate::ops::cron::services_with_timers(sd)? {
        if !defined.contains(id.as_str()) {
            orphans.entry(id).or_default();
        }
    }
    for (id, units) in &orphans {
        acted = true;
        say(
            id,
            format!(
                "not defined: stop {} instance(s) and its probe and cron timers",
                units.len()
            ),
        );
        if opts.dry_run {
            continue;
        }
        let r = (|| -> Result<()> {
            let _lock = ServiceLock::acquire(&dirs.run, id, opts.lock_timeout)?;
            crate::ops::probe_timer::remove_probe_timer(sd, id)?;
            crate::ops::cron::remove_all(sd, id)?;
            instances::stop_units(sd, units, Duration::from_secs(300))?;
            let inst = dirs.instances(id);
            instances::remove_stale_dirs(&inst, &Default::default())?;
            let _ = std::fs::remove_dir(&inst);
            crate::ops::probe::forget(dirs, id)
        })();
        if let Err(e) = r {
            eprintln!("shim: reconcile of {id}: {e:#}");
            failed.push(id.clone());
        }
    }

    if !acted {
        println!("nothing to do");
    } else if opts.dry_run {
        println!("dry run: nothing changed");
    }
    if failed.is_empty() {
        Ok(())
    } else {
        Err(anyhow!("reconcile failed for: {}", failed.join(", ")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse_sources;
    use crate::host::state::{Attempt, Phase};

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
        fields.insert("SHIM_SERVICE".to_string(), "app".to_string());
        fields.insert("SHIM_PROCESS".to_string(), process.to_string());
        fields.insert("SHIM_REVISION".to_string(), rev.to_string());
        fields.insert("SHIM_INSTANCE".to_string(), index.to_string());
        if let Some(p) = port {
            fields.insert("SHIM_PORT".to_string(), p.to_string());
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

    fn upstream(ports: &[u16]) -> BTreeMap<PathBuf, Option<String>> {
        [(
            PathBuf::from("/etc/nginx/shim/app.conf"),
            Some(crate::plan::upstream::render_upstream(
                "app_web", "app", "web", "r1", ports,
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
        assert_eq!(
            drift(svc, &st, "r1", &ok, &upstream(&[20000, 20001])),
            Vec::<String>::new()
        );

        // A missing worker, an extra web, a leftover of r0, a stale upstream file.
        let units = vec![
            unit("web", "r1", 1, Some(20000)),
            unit("web", "r1", 2, Some(20001)),
            unit("web", "r1", 3, Some(20002)),
            unit("web", "r0", 1, Some(20005)),
        ];
        let why = drift(svc, &st, "r1", &units, &upstream(&[20005]));
        assert_eq!(
            why,
            vec![
                "instances of other revisions are left: r0",
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
            }),
            ..Default::default()
        };
        let why = drift(svc, &st, "r1", &ok, &upstream(&[20000, 20001]));
        assert_eq!(why.len(), 1);
        assert!(why[0].contains("interrupted"), "{why:?}");
    }
}
