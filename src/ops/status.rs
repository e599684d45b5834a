//! `shim status`, the gathering: which instances shim runs, what supervision says about each
//! service, and each service's cron jobs, as a [`StatusReport`] that the CLI renders as a
//! table or JSON ([`gather`]).
//!
//! Flow: one `ListUnitsByPatterns` (instances, probe timers, cron timers). A running
//! runc/crun instance needs nothing more from systemd: what it is comes from `meta.json` in
//! its directory (written when shim planned it), its main PID from the runtime's pid file
//! (systemd reads the same file: `PIDFile=`), its uptime from that file's mtime and its
//! restarts from the `starts` count kept by `shim instance prepare` (ExecStartPre). Every
//! other unit (not running, podman, no meta.json because an older shim started it, a dead
//! pid) is read from systemd, its properties with a few `Get`s each. Then, best effort, the
//! supervision facts of every service shown (its state file, the probe's memory, its probe
//! timer) and, if asked, its cron jobs (the cron state file, the timers' next runs). Building
//! units from the listing plus those files and building rows are pure; reading the files is
//! [`read_local`].

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::{Duration, UNIX_EPOCH};

use anyhow::Result;
use serde::Serialize;

use crate::config::Definitions;
use crate::host::systemd::{ActiveState, ListedUnit, SubState, Systemd, UnitInfo};
use crate::host::Host;
use crate::ops::cron::JobRow;
use crate::ops::probe::{Memory, Retry};
use crate::plan::names::{self, probe_timer_name, service_of_probe_timer, CRON_PREFIX};
use crate::plan::{InstanceDir, InstanceMeta};

/// What to gather.
#[derive(Debug, Clone, Copy, Default)]
pub struct Query<'a> {
    /// Only this service (not checked against the definitions: an unknown id shows nothing).
    pub id: Option<&'a str>,
    /// Also the cron jobs of the services shown (the table shows them, the JSON does not).
    pub cron: bool,
    /// Now, µs since the epoch (for uptimes and retry delays).
    pub now_usec: u64,
}

/// What `shim status` shows.
#[derive(Debug, Clone, Default)]
pub struct StatusReport {
    /// The instances, sorted by service, process, instance, revision.
    pub instances: Vec<InstanceRow>,
    /// What supervision knows about each service shown, by id.
    pub supervision: BTreeMap<String, Supervision>,
    /// The cron jobs of each service shown, by id (empty unless [`Query::cron`]).
    pub cron: BTreeMap<String, Vec<JobRow>>,
    /// What could not be read (a corrupt state file, say), one line each.
    pub warnings: Vec<String>,
    /// Each service's own unit `shim-<id>.service` (defined services and those seen), by id.
    pub units: BTreeMap<String, crate::ops::service_unit::UnitState>,
}

/// What an instance's directory says about it, as [`read_local`] found it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Local {
    pub meta: Option<InstanceMeta>,
    /// Starts counted by `shim instance prepare` (runc/crun only).
    pub starts: Option<u32>,
    /// The pid in the runtime's pid file if that process exists, and when the file was
    /// written (µs since the epoch).
    pub pid: Option<(u32, u64)>,
}

/// A listed unit as far as the listing and its directory tell, when that is all `shim
/// status` needs: a running instance whose meta.json names this unit, with a start count and
/// a live pid in its pid file. None: ask systemd.
///
/// The pid file is what systemd itself takes the main PID from (`PIDFile=`, runc/crun write it
/// at each start; prepare and cleanup remove it), so for a running unit it is the MainPID. Its
/// mtime is when the runtime wrote it: after the container's init started and before systemd
/// read it, i.e. within a few ms of `ExecMainStartTimestamp`. Exit codes and restart delays
/// only matter for units that are not running, which always go to systemd.
pub fn unit_from_local(u: &ListedUnit, l: &Local) -> Option<UnitInfo> {
    if !u.is_running() || !u.name.ends_with(".service") {
        return None;
    }
    let meta = l.meta.as_ref().filter(|m| m.unit == u.name)?;
    let starts = l.starts.filter(|n| *n > 0)?;
    let (pid, started_usec) = l.pid.filter(|(p, t)| *p != 0 && *t != 0)?;
    Some(UnitInfo {
        name: u.name.clone(),
        description: u.description.clone(),
        load_state: u.load_state.clone(),
        active_state: u.active_state.clone(),
        sub_state: u.sub_state.clone(),
        main_pid: pid,
        n_restarts: starts - 1,
        main_start_usec: started_usec,
        exec_main_code: 0,
        exec_main_status: 0,
        exec_main_exit_usec: 0,
        failed_since_usec: 0,
        restart_usec_next: 0,
        result: String::new(),
        fields: meta.fields(),
    })
}

/// For a unit read from systemd: restarts are starts − 1 where shim counts starts, so that
/// an instance shows the same count whichever way it was read (systemd's `NRestarts` is
/// reset when the probe restarts a failed unit; the count in the instance directory is not).
pub fn with_local_restarts(mut u: UnitInfo, l: Option<&Local>) -> UnitInfo {
    if let Some(n) = l
        .filter(|l| l.meta.as_ref().is_some_and(|m| m.unit == u.name))
        .and_then(|l| l.starts)
        .filter(|n| *n > 0)
    {
        u.n_restarts = n - 1;
    }
    u
}

/// One instance, as shown. The JSON field names are a stable interface.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct InstanceRow {
    pub service: String,
    pub process: String,
    pub instance: u32,
    pub revision: String,
    pub unit: String,
    pub state: String,
    pub sub_state: String,
    pub main_pid: Option<u32>,
    pub port: Option<u16>,
    pub restarts: u32,
    pub uptime_secs: Option<u64>,
    /// The probe leaves this instance alone (`shim supervise pause`).
    pub paused: bool,
    /// Waiting to be restarted (a crash loop): which retry comes next and in how long.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_retry: Option<Retry>,
    /// How the last process ended, for an instance waiting to be restarted.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_exit: Option<String>,
    /// The id of the recorded deployment it is an instance of (None: not one the state
    /// records, e.g. started by an older shim).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deployment: Option<String>,
    /// The image manifest digest it runs (from its deployment's record).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image_digest: Option<String>,
}

/// What supervision knows about one service.
#[derive(Debug, Clone, Default)]
pub struct Supervision {
    pub paused: bool,
    pub paused_processes: BTreeSet<String>,
    /// What the probe remembers (retries of crash-looping units).
    pub memory: Memory,
    /// The probe timer's state ("active"), None without one.
    pub probe: Option<String>,
    /// The current deployment's id, revision, image and digest.
    pub current: Option<(String, String, String, String)>,
    /// The recorded deployments: current, being rolled out, previous.
    pub deployments: Vec<crate::plan::Deployment>,
    /// What of the current deployment the definitions and env_files on disk would change
    /// ("definition", "secrets"); empty when they match or cannot be read.
    pub changed: Vec<&'static str>,
}

impl Supervision {
    /// The recorded deployment `u` is an instance of.
    pub fn deployment_of(&self, u: &UnitInfo) -> Option<&crate::plan::Deployment> {
        self.deployments
            .iter()
            .find(|d| crate::ops::view::of_deployment(u, d))
    }
}

pub fn rows(
    units: &[UnitInfo],
    id: Option<&str>,
    now_usec: u64,
    sup: &BTreeMap<String, Supervision>,
    max_delay: Duration,
) -> Vec<InstanceRow> {
    let none = Supervision::default();
    let mut rows: Vec<InstanceRow> = units
        .iter()
        .filter(|u| u.field(crate::plan::fields::SERVICE).is_some())
        .filter(|u| id.is_none_or(|id| crate::ops::view::of_service(u, id)))
        .map(|u| {
            (
                u,
                sup.get(u.field(crate::plan::fields::SERVICE).unwrap_or_default())
                    .unwrap_or(&none),
            )
        })
        .map(|(u, s)| InstanceRow {
            service: u
                .field(crate::plan::fields::SERVICE)
                .unwrap_or_default()
                .to_string(),
            process: u.process().unwrap_or_default().to_string(),
            instance: u.index(),
            revision: u.revision().to_string(),
            unit: u.name.clone(),
            state: u.active_state.to_string(),
            sub_state: u.sub_state.to_string(),
            main_pid: (u.main_pid != 0).then_some(u.main_pid),
            port: u.port(),
            restarts: u.n_restarts,
            uptime_secs: (u.main_pid != 0
                && u.main_start_usec != 0
                && now_usec >= u.main_start_usec)
                .then(|| (now_usec - u.main_start_usec) / 1_000_000),
            paused: s.paused || u.process().is_some_and(|p| s.paused_processes.contains(p)),
            next_retry: crate::ops::probe::pending_retry(
                u,
                &s.memory.units.get(&u.name).cloned().unwrap_or_default(),
                max_delay,
                now_usec,
            ),
            // (systemd resets Result when it starts the unit again: an OOM kill shows while
            // the instance waits for its restart, or failed.)
            last_exit: (u.active_state == ActiveState::Failed
                || u.sub_state == SubState::AutoRestart)
                .then(|| u.last_exit())
                .flatten(),
            deployment: s.deployment_of(u).map(|d| d.id()),
            image_digest: s.deployment_of(u).map(|d| d.manifest_digest.clone()),
        })
        .collect();
    rows.sort_by(|a, b| {
        (&a.service, &a.process, a.instance, &a.revision).cmp(&(
            &b.service,
            &b.process,
            b.instance,
            &b.revision,
        ))
    });
    rows
}

/// The instance directories under `instances` (`<service>/<unit stem>`) of the listed
/// service units, found by name: service ids may contain '-', so every service directory
/// whose name fits the unit's is a candidate; the one whose meta.json names the unit wins.
fn read_locals(instances: &Path, listed: &[ListedUnit]) -> BTreeMap<String, Local> {
    let services: Vec<String> = std::fs::read_dir(instances)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().to_string())
                .collect()
        })
        .unwrap_or_default();
    let mut out = BTreeMap::new();
    for u in listed {
        let Some(stem) = names::stem_of_service(&u.name) else {
            continue;
        };
        for svc in &services {
            if !stem.starts_with(&names::instance_prefix(svc)) {
                continue;
            }
            let l = read_local(&instances.join(svc).join(stem));
            if l.meta.as_ref().is_some_and(|m| m.unit == u.name) {
                out.insert(u.name.clone(), l);
                break;
            }
        }
    }
    out
}

/// Reads an instance directory: meta.json, the start count, the pid file (its pid only if
/// that process exists, with the file's mtime). Anything missing or unreadable is None (e.g.
/// when not run as root: the directories are root-only), and systemd is asked instead.
pub fn read_local(dir: &Path) -> Local {
    let d = InstanceDir(dir);
    let Some(meta) = std::fs::read(d.meta())
        .ok()
        .and_then(|b| serde_json::from_slice::<InstanceMeta>(&b).ok())
    else {
        return Local::default();
    };
    let starts = std::fs::read_to_string(d.starts())
        .ok()
        .map(|t| crate::host::runtime::parse_starts(&t));
    let pid = (|| {
        use std::io::Read;
        let mut f = std::fs::File::open(d.pid_file()).ok()?;
        let mut text = String::new();
        f.read_to_string(&mut text).ok()?;
        let pid: u32 = text.trim().parse().ok()?;
        let written = f.metadata().ok()?.modified().ok()?;
        let usec = written.duration_since(UNIX_EPOCH).ok()?.as_micros() as u64;
        Path::new(&format!("/proc/{pid}"))
            .exists()
            .then_some((pid, usec))
    })();
    Local {
        meta: Some(meta),
        starts,
        pid,
    }
}

/// The service a cron timer belongs to, if it is one of `services` (`shimcron-<id>-<key>`).
fn service_of_cron_timer<'a>(name: &str, services: &BTreeSet<&'a str>) -> Option<&'a str> {
    services
        .iter()
        .copied()
        .find(|id| crate::ops::cron::key_of_unit(id, name).is_some())
}

/// `shim status`: the instances (of service `q.id`, or all), their services' supervision and
/// (if `q.cron`) cron jobs. `defs` gives the restart backoff's maximum delay; without
/// readable definitions the default applies (status must work regardless).
pub fn gather(host: &Host, defs: Option<&Definitions>, q: &Query<'_>) -> Result<StatusReport> {
    let sd = host.systemd()?;
    // One listing: instances, probe timers and cron timers.
    let patterns = match q.id {
        Some(id) => vec![
            crate::plan::names::service_units_glob(id),
            probe_timer_name(id),
            names::cron_timers_glob(Some(id)),
        ],
        None => vec![
            names::ALL_UNITS_GLOB.to_string(),
            names::cron_timers_glob(None),
        ],
    };
    let (instances, timers): (Vec<ListedUnit>, Vec<ListedUnit>) = sd
        .list(&patterns)?
        .into_iter()
        .partition(|u| !u.name.starts_with(CRON_PREFIX));
    let units = read_instances(host, sd, instances)?;
    let services: BTreeSet<&str> = units
        .iter()
        .filter_map(|u| u.field(crate::plan::fields::SERVICE))
        .filter(|s| q.id.is_none() || q.id == Some(*s))
        .collect();
    let supervision = supervision(host, defs, &units, &services);
    let max_delay = defs
        .map(|d| d.settings.restart_max_delay)
        .unwrap_or_else(|| crate::config::HostSettings::default().restart_max_delay);
    let cron = if q.cron {
        cron_jobs(host, sd, &services, timers)
    } else {
        BTreeMap::new()
    };
    let mut ids: BTreeSet<&str> = defs
        .map(|d| d.services.keys().map(|k| k.as_str()).collect())
        .unwrap_or_default();
    ids.extend(services.iter().copied());
    if let Some(id) = q.id {
        ids.retain(|i| *i == id);
    }
    let warnings = ids
        .iter()
        .filter_map(|id| host.state().load(id).err().map(|e| (id, e)))
        .map(|(id, e)| {
            format!("service {id}: {e:#}; reconcile leaves it alone until the file is repaired or removed")
        })
        .collect();
    let service_units = ids
        .iter()
        .filter_map(|id| {
            let mut u = crate::ops::service_unit::state(host, id).ok()?;
            u.stopped = host.state().load(id).is_ok_and(|st| st.stopped);
            Some((id.to_string(), u))
        })
        .collect();
    Ok(StatusReport {
        instances: rows(&units, q.id, q.now_usec, &supervision, max_delay),
        supervision,
        cron,
        warnings,
        units: service_units,
    })
}

/// The listed instance units (and probe timers) as [`UnitInfo`]s, sorted by name: from their
/// directories where that says enough ([`unit_from_local`]), from systemd otherwise.
fn read_instances(host: &Host, sd: &dyn Systemd, listed: Vec<ListedUnit>) -> Result<Vec<UnitInfo>> {
    let locals = read_locals(&host.dirs.instances_root(), &listed);
    let mut units = Vec::with_capacity(listed.len());
    let mut ask = Vec::new();
    for u in listed {
        match locals.get(&u.name).and_then(|l| unit_from_local(&u, l)) {
            Some(info) => units.push(info),
            None => ask.push(u),
        }
    }
    units.extend(sd.read_units(&ask)?.into_iter().map(|u| {
        let l = locals.get(&u.name);
        with_local_restarts(u, l)
    }));
    units.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(units)
}

/// Supervision facts of every service shown; best effort (an unreadable state is the default).
fn supervision(
    host: &Host,
    defs: Option<&Definitions>,
    units: &[UnitInfo],
    services: &BTreeSet<&str>,
) -> BTreeMap<String, Supervision> {
    let store = host.state();
    services
        .iter()
        .map(|&id| {
            let st = store.load(id).unwrap_or_default();
            let probe = units
                .iter()
                .find(|u| service_of_probe_timer(&u.name) == Some(id))
                .map(|u| u.active_state.to_string());
            let changed = match (defs.and_then(|d| d.service(id).ok()), &st.deployment) {
                (Some(svc), Some(d)) => crate::host::images::changes_on_disk(svc, d),
                _ => Vec::new(),
            };
            let attempt = st.upgrading.and_then(|a| a.deployment);
            let current = st.deployment.as_ref().map(|d| {
                (
                    d.id(),
                    d.revision.clone(),
                    d.image.clone(),
                    d.manifest_digest.clone(),
                )
            });
            let s = Supervision {
                current,
                paused: st.paused,
                paused_processes: st.paused_processes,
                memory: crate::ops::probe::load_memory(&host.dirs, id),
                probe,
                deployments: [st.deployment, attempt, st.previous_deployment]
                    .into_iter()
                    .flatten()
                    .collect(),
                changed,
            };
            (id.to_string(), s)
        })
        .collect()
}

/// Cron jobs of the services shown (best effort): the state file says what each job is, its
/// timer when it runs next. Timers are read only for services with a state file.
fn cron_jobs(
    host: &Host,
    sd: &dyn Systemd,
    services: &BTreeSet<&str>,
    timers: Vec<ListedUnit>,
) -> BTreeMap<String, Vec<JobRow>> {
    let states: Vec<(String, crate::ops::cron::CronState)> = services
        .iter()
        .filter(|id| {
            timers
                .iter()
                .any(|t| service_of_cron_timer(&t.name, services) == Some(**id))
        })
        .filter_map(|id| {
            crate::ops::cron::load_state(&host.dirs, id)
                .ok()
                .flatten()
                .map(|st| (id.to_string(), st))
        })
        .collect();
    let timers = if states.is_empty() {
        Vec::new()
    } else {
        let shown: Vec<ListedUnit> = timers
            .into_iter()
            .filter(|t| service_of_cron_timer(&t.name, services).is_some())
            .collect();
        sd.read_timers(&shown).unwrap_or_default()
    };
    let mut cron: BTreeMap<String, Vec<JobRow>> = BTreeMap::new();
    for r in crate::ops::cron::job_rows(&states, &timers, &|_: &str, _: &str| None) {
        cron.entry(r.service.clone()).or_default().push(r);
    }
    cron
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn unit(svc: &str, proc_: &str, i: u32, port: Option<u16>, pid: u32) -> UnitInfo {
        let mut fields = BTreeMap::new();
        fields.insert(crate::plan::fields::SERVICE.into(), svc.into());
        fields.insert(crate::plan::fields::PROCESS.into(), proc_.into());
        fields.insert(
            crate::plan::fields::REVISION.into(),
            "279d9035886d4c0427549863c4c2101e4a63e041".into(),
        );
        fields.insert(crate::plan::fields::INSTANCE.into(), i.to_string());
        if let Some(p) = port {
            fields.insert(crate::plan::fields::PORT.into(), p.to_string());
        }
        UnitInfo {
            name: format!("shim-{svc}-{proc_}-279d9035886d-{i}.service"),
            load_state: "loaded".into(),
            active_state: if pid > 0 { "active" } else { "activating" }.into(),
            sub_state: if pid > 0 { "running" } else { "auto-restart" }.into(),
            main_pid: pid,
            n_restarts: if pid > 0 { 0 } else { 3 },
            main_start_usec: 1_000_000,
            fields,
            ..Default::default()
        }
    }

    fn listed(name: &str, active: &str, sub: &str) -> ListedUnit {
        ListedUnit {
            name: name.into(),
            description: String::new(),
            load_state: "loaded".into(),
            active_state: active.into(),
            sub_state: sub.into(),
            path: "/org/freedesktop/systemd1/unit/x".into(),
        }
    }

    fn local(unit: &str, starts: Option<u32>, pid: Option<(u32, u64)>) -> Local {
        Local {
            meta: Some(InstanceMeta {
                unit: unit.into(),
                service: "billing_app".into(),
                process: "web".into(),
                revision: "279d9035886d4c0427549863c4c2101e4a63e041".into(),
                deployment: String::new(),
                instance: 2,
                port: Some(20001),
            }),
            starts,
            pid,
        }
    }

    #[test]
    fn a_running_instance_is_read_from_its_directory_like_from_systemd() {
        let name = "shim-billing_app-web-279d9035886d-2.service";
        let l = local(name, Some(3), Some((4343, 1_000_000)));
        let u = unit_from_local(&listed(name, "active", "running"), &l).unwrap();
        // What systemd says of the same instance after two restarts.
        let mut from_systemd = unit("billing_app", "web", 2, Some(20001), 4343);
        from_systemd.n_restarts = 2;
        let sup = BTreeMap::new();
        let max = Duration::from_secs(300);
        assert_eq!(
            rows(&[u], None, 3_726_000_000, &sup, max),
            rows(&[from_systemd], None, 3_726_000_000, &sup, max)
        );
    }

    #[test]
    fn systemd_is_asked_unless_running_with_meta_starts_and_a_live_pid() {
        let name = "shim-billing_app-web-279d9035886d-2.service";
        let ok = local(name, Some(1), Some((7, 5)));
        let running = listed(name, "active", "running");
        assert!(unit_from_local(&running, &ok).is_some());
        for (u, l) in [
            (listed(name, "activating", "auto-restart"), ok.clone()),
            (listed(name, "failed", "failed"), ok.clone()),
            (listed(name, "active", "reloading"), ok.clone()),
            // Another unit's meta (a stale directory), no start count (podman, an older
            // shim), no live pid (it just died).
            (
                running.clone(),
                local("shim-other.service", Some(1), Some((7, 5))),
            ),
            (running.clone(), local(name, None, Some((7, 5)))),
            (running.clone(), local(name, Some(1), None)),
            (running.clone(), Local::default()),
        ] {
            assert_eq!(unit_from_local(&u, &l), None, "{u:?} {l:?}");
        }
    }

    #[test]
    fn restarts_from_systemd_become_the_counted_ones() {
        let name = "shim-billing_app-web-279d9035886d-2.service";
        let u = unit("billing_app", "web", 2, None, 0); // NRestarts 3
        assert_eq!(with_local_restarts(u.clone(), None).n_restarts, 3);
        let l = local(name, Some(6), None);
        assert_eq!(with_local_restarts(u.clone(), Some(&l)).n_restarts, 5);
        let other = local("shim-x.service", Some(6), None);
        assert_eq!(with_local_restarts(u, Some(&other)).n_restarts, 3);
    }

    #[test]
    fn cron_timers_belong_to_the_service_not_its_prefix() {
        let services: BTreeSet<&str> = ["app", "app-x"].into();
        assert_eq!(
            service_of_cron_timer("shimcron-app-x-0123456789.timer", &services),
            Some("app-x")
        );
        assert_eq!(
            service_of_cron_timer("shimcron-app-0123456789-2.timer", &services),
            Some("app")
        );
        assert_eq!(
            service_of_cron_timer("shimcron-b-0123456789.timer", &services),
            None
        );
    }

    #[test]
    fn ignores_units_without_shim_fields() {
        let mut u = unit("a", "web", 1, None, 1);
        u.fields.clear();
        assert!(rows(&[u], None, 0, &BTreeMap::new(), Duration::from_secs(300)).is_empty());
    }

    /// A unit as the fake systemd holds it: service `svc`, process web, revision r1.
    fn fake_unit(svc: &str, i: u32, active: &str, sub: &str) -> UnitInfo {
        let mut u = unit(svc, "web", i, None, 1);
        u.name = format!("shim-{svc}-web-r1-{i}.service");
        u.fields
            .insert(crate::plan::fields::REVISION.into(), "r1".into());
        u.active_state = active.into();
        u.sub_state = sub.into();
        u
    }

    /// An instance directory as `shim instance prepare` leaves it, its pid file naming this
    /// test's own process (so that it exists).
    fn write_instance_dir(host: &Host, u: &UnitInfo, starts: u32) {
        let stem = u.name.trim_end_matches(".service");
        let svc = u.field(crate::plan::fields::SERVICE).unwrap();
        let dir = host.dirs.instances(svc).join(stem);
        std::fs::create_dir_all(&dir).unwrap();
        let d = InstanceDir(&dir);
        let meta = InstanceMeta {
            unit: u.name.clone(),
            service: svc.into(),
            process: "web".into(),
            revision: "r1".into(),
            deployment: String::new(),
            instance: 1,
            port: None,
        };
        std::fs::write(d.meta(), serde_json::to_vec(&meta).unwrap()).unwrap();
        std::fs::write(d.starts(), format!("{starts}\n")).unwrap();
        std::fs::write(d.pid_file(), std::process::id().to_string()).unwrap();
    }

    fn timer(name: &str, active: &str) -> UnitInfo {
        UnitInfo {
            name: name.into(),
            active_state: active.into(),
            ..Default::default()
        }
    }

    #[test]
    fn instances_of_look_alike_services_are_told_apart() {
        let fh = crate::ops::testkit::host();
        let h = &fh.host;
        let a = fake_unit("a", 1, "active", "running");
        let ab = fake_unit("a-b", 1, "active", "running");
        for (u, starts) in [(&a, 1), (&ab, 4)] {
            fh.systemd.insert(u.clone());
            write_instance_dir(h, u, starts);
        }
        fh.systemd.insert(timer("shim-probe-a.timer", "active"));
        fh.systemd.insert(timer("shim-probe-a-b.timer", "failed"));
        let q = Query {
            id: Some("a"),
            cron: true,
            now_usec: 3_726_000_000,
        };
        let r = gather(h, None, &q).unwrap();
        let units: Vec<&str> = r.instances.iter().map(|r| r.unit.as_str()).collect();
        assert_eq!(units, vec!["shim-a-web-r1-1.service"]);
        // Read from its own directory (pid file, start count), not a-b's and not systemd's.
        assert_eq!(r.instances[0].main_pid, Some(std::process::id()));
        assert_eq!(r.instances[0].restarts, 0);
        assert_eq!(r.supervision.keys().collect::<Vec<_>>(), vec!["a"]);
        assert_eq!(r.supervision["a"].probe.as_deref(), Some("active"));

        let all = gather(h, None, &Query { id: None, ..q }).unwrap();
        let svcs: Vec<(&str, u32)> = all
            .instances
            .iter()
            .map(|r| (r.service.as_str(), r.restarts))
            .collect();
        assert_eq!(svcs, vec![("a", 0), ("a-b", 3)]);
        assert_eq!(all.supervision["a-b"].probe.as_deref(), Some("failed"));
        assert_eq!(all.supervision["a"].probe.as_deref(), Some("active"));
    }

    #[test]
    fn an_oom_killed_instance_says_so_while_it_waits_for_its_restart() {
        let fh = crate::ops::testkit::host();
        let mut u = fake_unit("app", 1, "activating", "auto-restart");
        u.n_restarts = 1;
        u.exec_main_code = 2;
        u.exec_main_status = 9;
        u.result = "oom-kill".into();
        fh.systemd.insert(u);
        let q = Query {
            id: Some("app"),
            cron: false,
            now_usec: 3_726_000_000,
        };
        let r = gather(&fh.host, None, &q).unwrap();
        let last = r.instances[0].last_exit.clone().unwrap_or_default();
        assert!(last.contains("oom-kill"), "{last}");
    }

    #[test]
    fn a_failed_unit_shows_its_pending_retry_and_last_exit() {
        let fh = crate::ops::testkit::host();
        let h = &fh.host;
        let mut u = fake_unit("app", 1, "failed", "failed");
        u.main_pid = 0;
        u.exec_main_exit_usec = 3_720_000_000;
        u.exec_main_code = 1;
        u.exec_main_status = 3;
        fh.systemd.insert(u.clone());
        let mut m = Memory::default();
        m.units.insert(
            u.name.clone(),
            crate::ops::probe::UnitMemory {
                retries: 2,
                last_start_usec: 3_700_000_000,
                ..Default::default()
            },
        );
        crate::ops::probe::save_memory(&h.dirs, "app", &m).unwrap();
        let q = Query {
            id: Some("app"),
            cron: false,
            now_usec: 3_726_000_000,
        };
        let r = gather(h, None, &q).unwrap();
        assert_eq!(r.instances.len(), 1);
        let row = &r.instances[0];
        assert_eq!(
            row.next_retry,
            Some(Retry {
                by: "probe",
                retry: 3,
                in_secs: 10
            })
        );
        assert!(row.last_exit.is_some(), "{row:?}");
        assert_eq!((row.state.as_str(), row.main_pid), ("failed", None));
        // No probe timer: the supervision says so (the table shows "no probe timer").
        assert_eq!(r.supervision["app"].probe, None);
    }

    #[test]
    fn an_unknown_service_id_shows_nothing_and_is_no_error() {
        let fh = crate::ops::testkit::host();
        fh.systemd.insert(fake_unit("app", 1, "active", "running"));
        let q = Query {
            id: Some("nope"),
            cron: true,
            now_usec: 1,
        };
        let r = gather(&fh.host, None, &q).unwrap();
        assert!(r.instances.is_empty());
        assert!(r.supervision.is_empty());
        assert!(r.cron.is_empty());
    }

    #[test]
    fn a_corrupt_state_file_is_reported_and_the_rest_shown() {
        let fh = crate::ops::testkit::host();
        fh.systemd.insert(fake_unit("app", 1, "active", "running"));
        let defs = crate::ops::testkit::defs(
            "[services.app]\nimage = \"oci:/i:{revision}\"\n[services.app.processes.web]\n\
             [services.brk]\nimage = \"oci:/i:{revision}\"\n[services.brk.processes.web]\n",
        );
        std::fs::create_dir_all(fh.host.dirs.state.join("state")).unwrap();
        std::fs::write(fh.host.state().path("brk"), "{\"current\": 7").unwrap();
        let q = Query {
            id: None,
            cron: false,
            now_usec: 1,
        };
        let r = gather(&fh.host, Some(&defs), &q).unwrap();
        assert_eq!(r.instances.len(), 1);
        assert_eq!(r.warnings.len(), 1, "{:?}", r.warnings);
        assert!(
            r.warnings[0].starts_with("service brk: ") && r.warnings[0].contains("brk.json"),
            "{:?}",
            r.warnings
        );
    }

    #[test]
    fn supervision_and_cron_jobs_come_from_the_state_files() {
        let fh = crate::ops::testkit::host();
        let h = &fh.host;
        fh.systemd.insert(fake_unit("app", 1, "active", "running"));
        fh.systemd
            .insert(timer("shimcron-app-0123456789.timer", "active"));
        let st = crate::host::state::ServiceState {
            current: Some("r1".into()),
            paused_processes: ["web".to_string()].into(),
            ..Default::default()
        };
        h.state().save("app", &st).unwrap();
        let cron = crate::ops::cron::CronState {
            revision: "r1".into(),
            source: "bin/generate-cron".into(),
            jobs: vec![crate::ops::cron::CronJob {
                key: "0123456789".into(),
                line: 1,
                schedule: "@daily".into(),
                command: "bin/report".into(),
                stdin: None,
                env: vec![],
                calendars: vec!["daily".into()],
            }],
        };
        let path = crate::ops::cron::state_path(&h.dirs, "app");
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, serde_json::to_vec(&cron).unwrap()).unwrap();
        let q = Query {
            id: None,
            cron: true,
            now_usec: 1,
        };
        let r = gather(h, None, &q).unwrap();
        assert!(r.instances[0].paused);
        assert!(!r.supervision["app"].paused);
        let jobs = &r.cron["app"];
        assert_eq!(jobs.len(), 1);
        assert_eq!(
            (jobs[0].job.as_str(), jobs[0].timer.as_str()),
            ("0123456789", "active")
        );
        // The JSON output leaves cron out: nothing is gathered for it.
        let r = gather(h, None, &Query { cron: false, ..q }).unwrap();
        assert!(r.cron.is_empty());
    }
}
