//! `shim status`: one listing of shim's units over D-Bus, shown as a table per service or as
//! JSON, with what supervision says about them (paused, the next retry of a crash-looping
//! instance, the probe timer) and, in the table, the service's cron jobs with their next run.
//!
//! Flow: one `ListUnitsByPatterns` (instances, probe timers, cron timers). A running
//! runc/crun instance needs nothing more from systemd: what it is comes from `meta.json` in
//! its directory (written when shim planned it), its main PID from the runtime's pid file
//! (systemd reads the same file: `PIDFile=`), its uptime from that file's mtime and its
//! restarts from the `starts` count kept by `shim instance prepare` (ExecStartPre). Every
//! other unit (not running, podman, no meta.json because an older shim started it, a dead
//! pid) is read from systemd as before, its properties with a few `Get`s each. Building units
//! from the listing plus those files, building rows and rendering are pure; reading the files
//! is [`read_local`].

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Result;
use clap::Args;
use serde::Serialize;

use crate::cli::cron::JobRow;
use crate::host::state::StateStore;
use crate::host::systemd::{ListedUnit, UnitInfo};
use crate::ops::probe::{Memory, Retry};
use crate::plan::oneoff::CRON_PREFIX;
use crate::plan::probe_timer::{probe_timer_name, service_of_probe_timer};
use crate::plan::{InstanceDir, InstanceMeta};

/// Show the instances shim runs on this host, and each service's cron jobs.
///
/// Cron jobs are shown with their next run.
///
/// Example: shim status --id billing_app --json
#[derive(Args, Debug)]
pub struct StatusArgs {
    /// Only this service.
    #[arg(long)]
    pub id: Option<String>,
    /// Machine-readable output: a JSON array of instances (cron jobs: `shim cron list --json`).
    #[arg(long)]
    pub json: bool,
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
        .filter(|u| u.field("SHIM_SERVICE").is_some())
        .filter(|u| id.is_none() || u.field("SHIM_SERVICE") == id)
        .map(|u| {
            (
                u,
                sup.get(u.field("SHIM_SERVICE").unwrap_or_default())
                    .unwrap_or(&none),
            )
        })
        .map(|(u, s)| InstanceRow {
            service: u.field("SHIM_SERVICE").unwrap_or_default().to_string(),
            process: u.field("SHIM_PROCESS").unwrap_or_default().to_string(),
            instance: u
                .field("SHIM_INSTANCE")
                .and_then(|s| s.parse().ok())
                .unwrap_or(0),
            revision: u.field("SHIM_REVISION").unwrap_or_default().to_string(),
            unit: u.name.clone(),
            state: u.active_state.clone(),
            sub_state: u.sub_state.clone(),
            main_pid: (u.main_pid != 0).then_some(u.main_pid),
            port: u.field("SHIM_PORT").and_then(|s| s.parse().ok()),
            restarts: u.n_restarts,
            uptime_secs: (u.main_pid != 0
                && u.main_start_usec != 0
                && now_usec >= u.main_start_usec)
                .then(|| (now_usec - u.main_start_usec) / 1_000_000),
            paused: s.paused
                || u.field("SHIM_PROCESS")
                    .is_some_and(|p| s.paused_processes.contains(p)),
            next_retry: crate::ops::probe::pending_retry(
                u,
                &s.memory.units.get(&u.name).cloned().unwrap_or_default(),
                max_delay,
                now_usec,
            ),
            last_exit: (u.active_state == "failed" || u.sub_state == "auto-restart")
                .then(|| u.last_exit())
                .flatten(),
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

fn human_secs(s: u64) -> String {
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m{}s", s / 60, s % 60),
        3600..=86399 => format!("{}h{}m", s / 3600, (s % 3600) / 60),
        _ => format!("{}d{}h", s / 86400, (s % 86400) / 3600),
    }
}

/// The line above a service's table: its name and what supervision says.
fn service_header(svc: &str, s: Option<&Supervision>) -> String {
    let mut notes = Vec::new();
    if let Some(s) = s {
        match &s.probe {
            Some(state) => notes.push(format!("probe {state}")),
            None => notes.push("no probe timer".to_string()),
        }
        if s.paused {
            notes.push("supervision paused".to_string());
        } else if !s.paused_processes.is_empty() {
            notes.push(format!(
                "supervision paused for {}",
                s.paused_processes
                    .iter()
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
    }
    if notes.is_empty() {
        format!("{svc}\n")
    } else {
        format!("{svc} ({})\n", notes.join("; "))
    }
}

/// A service's cron jobs, one line each: schedule as written, next run (local time), command.
fn cron_lines(jobs: &[JobRow], offset_secs: i64) -> String {
    let next = |j: &JobRow| match (j.timer.as_str(), j.next_usec) {
        ("active", 0) => "next -".to_string(),
        ("active", t) => format!(
            "next {}",
            &crate::cli::logs::render_time(t, offset_secs)[..19]
        ),
        (state, _) => format!("timer {state}"),
    };
    let w = jobs.iter().map(|j| j.schedule.len()).max().unwrap_or(0);
    let mut out = String::new();
    for j in jobs {
        out.push_str(&format!(
            "  cron {:<w$}  {}  {}\n",
            j.schedule,
            next(j),
            crate::plan::oneoff::describe_argv(std::slice::from_ref(&j.command))
        ));
    }
    out
}

/// A plain text table, one block per service, then the service's cron jobs.
pub fn render_table(
    rows: &[InstanceRow],
    sup: &BTreeMap<String, Supervision>,
    cron: &BTreeMap<String, Vec<JobRow>>,
    offset_secs: i64,
) -> String {
    if rows.is_empty() {
        return "no shim instances are running\n".into();
    }
    let header = [
        "PROCESS", "#", "REVISION", "STATE", "PID", "PORT", "RESTARTS", "UPTIME", "UNIT",
    ];
    let mut out = String::new();
    let mut services: Vec<&str> = rows.iter().map(|r| r.service.as_str()).collect();
    services.dedup();
    for svc in services {
        let cells: Vec<Vec<String>> = rows
            .iter()
            .filter(|r| r.service == svc)
            .map(|r| {
                vec![
                    r.process.clone(),
                    r.instance.to_string(),
                    r.revision.chars().take(12).collect(),
                    {
                        let exit = r
                            .last_exit
                            .as_ref()
                            .map(|e| format!(" ({e})"))
                            .unwrap_or_default();
                        match &r.next_retry {
                            Some(n) if n.by == "probe" => format!(
                                "{}/{}{exit}, retry {} in {}",
                                r.state,
                                r.sub_state,
                                n.retry,
                                human_secs(n.in_secs)
                            ),
                            Some(n) => format!(
                                "{}/{}{exit}, restart in {}",
                                r.state,
                                r.sub_state,
                                human_secs(n.in_secs)
                            ),
                            None => format!("{}/{}", r.state, r.sub_state),
                        }
                    },
                    r.main_pid
                        .map(|p| p.to_string())
                        .unwrap_or_else(|| "-".into()),
                    r.port.map(|p| p.to_string()).unwrap_or_else(|| "-".into()),
                    r.restarts.to_string(),
                    r.uptime_secs.map(human_secs).unwrap_or_else(|| "-".into()),
                    r.unit.clone(),
                ]
            })
            .collect();
        let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
        for row in &cells {
            for (w, c) in widths.iter_mut().zip(row) {
                *w = (*w).max(c.len());
            }
        }
        let line = |row: Vec<String>| {
            let mut s = String::from("  ");
            for (i, (c, w)) in row.iter().zip(&widths).enumerate() {
                if i + 1 == row.len() {
                    s.push_str(c);
                } else {
                    s.push_str(&format!("{c:<w$}  "));
                }
            }
            s.push('\n');
            s
        };
        out.push_str(&service_header(svc, sup.get(svc)));
        out.push_str(&line(header.iter().map(|h| h.to_string()).collect()));
        for row in cells {
            out.push_str(&line(row));
        }
        if let Some(jobs) = cron.get(svc) {
            out.push_str(&cron_lines(jobs, offset_secs));
        }
    }
    out
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
        let Some(stem) = u.name.strip_suffix(".service") else {
            continue;
        };
        for svc in &services {
            if !stem.starts_with(&format!("shim-{svc}-")) {
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

pub fn run(host: &crate::host::Host, config: &Path, args: StatusArgs) -> Result<()> {
    let sd = host.systemd()?;
    // One listing: instances, probe timers and cron timers.
    let patterns = match &args.id {
        Some(id) => vec![
            crate::plan::service_unit_pattern(id),
            probe_timer_name(id),
            format!("{CRON_PREFIX}{id}-*.timer"),
        ],
        None => vec!["shim-*".to_string(), format!("{CRON_PREFIX}*.timer")],
    };
    let listed = sd.list(&patterns)?;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0);
    let dirs = host.dirs.clone();
    let (instances, timers): (Vec<ListedUnit>, Vec<ListedUnit>) = listed
        .into_iter()
        .partition(|u| !u.name.starts_with(CRON_PREFIX));
    let locals = read_locals(&dirs.run.join("instances"), &instances);
    let mut units = Vec::with_capacity(instances.len());
    let mut ask = Vec::new();
    for u in instances {
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

    // Supervision facts of every service shown; best effort, status must work regardless.
    let store = StateStore::new(&dirs.state);
    let max_delay = crate::config::load(config)
        .map(|d| d.settings.restart_max_delay)
        .unwrap_or_else(|_| crate::config::HostSettings::default().restart_max_delay);
    let services: BTreeSet<&str> = units
        .iter()
        .filter_map(|u| u.field("SHIM_SERVICE"))
        .filter(|s| args.id.is_none() || args.id.as_deref() == Some(*s))
        .collect();
    let sup: BTreeMap<String, Supervision> = services
        .iter()
        .map(|&id| {
            let st = store.load(id).unwrap_or_default();
            let probe = units
                .iter()
                .find(|u| service_of_probe_timer(&u.name) == Some(id))
                .map(|u| u.active_state.clone());
            let s = Supervision {
                paused: st.paused,
                paused_processes: st.paused_processes,
                memory: crate::ops::probe::load_memory(&dirs, id),
                probe,
            };
            (id.to_string(), s)
        })
        .collect();
    let rows = rows(&units, args.id.as_deref(), now, &sup, max_delay);
    if args.json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(());
    }
    // Cron jobs of the services shown (best effort): the state file says what each job is,
    // its timer when it runs next.
    let states: Vec<(String, crate::ops::cron::CronState)> = services
        .iter()
        .filter(|id| {
            timers
                .iter()
                .any(|t| service_of_cron_timer(&t.name, &services) == Some(**id))
        })
        .filter_map(|id| {
            crate::ops::cron::load_state(&dirs, id)
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
            .filter(|t| service_of_cron_timer(&t.name, &services).is_some())
            .collect();
        sd.read_timers(&shown).unwrap_or_default()
    };
    let mut cron: BTreeMap<String, Vec<JobRow>> = BTreeMap::new();
    for r in crate::cli::cron::rows(&states, &timers, &|_: &str, _: &str| None) {
        cron.entry(r.service.clone()).or_default().push(r);
    }
    print!(
        "{}",
        render_table(&rows, &sup, &cron, crate::cli::logs::local_offset(now))
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn unit(svc: &str, proc_: &str, i: u32, port: Option<u16>, pid: u32) -> UnitInfo {
        let mut fields = BTreeMap::new();
        fields.insert("SHIM_SERVICE".into(), svc.into());
        fields.insert("SHIM_PROCESS".into(), proc_.into());
        fields.insert(
            "SHIM_REVISION".into(),
            "279d9035886d4c0427549863c4c2101e4a63e041".into(),
        );
        fields.insert("SHIM_INSTANCE".into(), i.to_string());
        if let Some(p) = port {
            fields.insert("SHIM_PORT".into(), p.to_string());
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

    #[test]
    fn table_and_json_snapshot() {
        let mut crashing = unit("billing_app", "worker", 2, None, 0);
        crashing.active_state = "failed".into();
        crashing.sub_state = "failed".into();
        crashing.exec_main_exit_usec = 3_720_000_000;
        crashing.exec_main_code = 1;
        crashing.exec_main_status = 3;
        let units = vec![
            unit("billing_app", "web", 2, Some(20001), 4343),
            unit("billing_app", "web", 1, Some(20000), 4242),
            unit("billing_app", "worker", 1, None, 0),
            crashing,
            unit("other", "web", 1, Some(20002), 77),
        ];
        let mut sup = BTreeMap::new();
        let mut billing = Supervision {
            probe: Some("active".into()),
            paused_processes: ["worker".to_string()].into(),
            ..Default::default()
        };
        billing.memory.units.insert(
            "shim-billing_app-worker-279d9035886d-2.service".into(),
            crate::ops::probe::UnitMemory {
                retries: 2,
                last_start_usec: 3_700_000_000,
                ..Default::default()
            },
        );
        sup.insert("billing_app".to_string(), billing);
        sup.insert(
            "other".to_string(),
            Supervision {
                paused: true,
                probe: Some("active".into()),
                ..Default::default()
            },
        );
        let max = Duration::from_secs(300);
        let r = rows(&units, None, 3_726_000_000, &sup, max);
        let mut cron = BTreeMap::new();
        cron.insert(
            "billing_app".to_string(),
            vec![
                job("*/5 * * * *", 600_000_000, "bin/rake sweep"),
                job("@daily", 0, "bin/report"),
            ],
        );
        cron.get_mut("billing_app").unwrap()[1].timer = "missing".into();
        insta::assert_snapshot!("status_table", render_table(&r, &sup, &cron, 3600));
        insta::assert_json_snapshot!(
            "status_json",
            rows(&units, Some("other"), 3_726_000_000, &sup, max)
        );
        // The crash-looping worker waits for its 3rd retry: 16 s after it failed, 10 s from now.
        let w = r.iter().find(|r| r.state == "failed").unwrap();
        assert_eq!(
            w.next_retry,
            Some(Retry {
                by: "probe",
                retry: 3,
                in_secs: 10
            })
        );
    }

    fn job(schedule: &str, next_usec: u64, command: &str) -> JobRow {
        JobRow {
            service: "billing_app".into(),
            job: "0123456789".into(),
            revision: "r1".into(),
            line: 1,
            schedule: schedule.into(),
            calendars: vec![],
            command: command.into(),
            timer: "active".into(),
            next_usec,
            last_result: None,
            last_exit: None,
            last_ended: None,
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
}
