//! `shim status`: one listing of shim's units over D-Bus plus one batched property read, shown
//! as a table per service or as JSON, with what supervision says about them (paused, the
//! next retry of a crash-looping instance, the probe timer). Building rows and rendering are
//! pure.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Result;
use clap::Args;
use serde::Serialize;

use crate::deploy::Dirs;
use crate::plan::probe::{probe_timer_name, service_of_probe_timer};
use crate::state::StateStore;
use crate::supervise::{self, Memory, Retry};
use crate::systemd::{DbusSystemd, Systemd, UnitInfo};

/// Show the instances shim runs on this host.
///
/// Example: shim status --id billing_app --json
#[derive(Args, Debug)]
pub struct StatusArgs {
    /// Only this service.
    #[arg(long)]
    pub id: Option<String>,
    /// Machine-readable output: a JSON array of instances.
    #[arg(long)]
    pub json: bool,
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
            next_retry: supervise::pending_retry(
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

/// A plain text table, one block per service.
pub fn render_table(rows: &[InstanceRow], sup: &BTreeMap<String, Supervision>) -> String {
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
    }
    out
}

pub fn run(config: &Path, args: StatusArgs) -> Result<()> {
    let sd = DbusSystemd::connect()?;
    let patterns = match &args.id {
        Some(id) => vec![crate::plan::service_unit_pattern(id), probe_timer_name(id)],
        None => vec!["shim-*".to_string()],
    };
    let units = sd.list_units(&patterns)?;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0);
    // Supervision facts of every service shown; best effort, status must work regardless.
    let dirs = Dirs::from_env();
    let store = StateStore::new(&dirs.state);
    let max_delay = crate::config::load(config)
        .map(|d| d.settings.restart_max_delay)
        .unwrap_or_else(|_| crate::config::HostSettings::default().restart_max_delay);
    let services: BTreeSet<&str> = units
        .iter()
        .filter_map(|u| u.field("SHIM_SERVICE"))
        .collect();
    let sup: BTreeMap<String, Supervision> = services
        .into_iter()
        .map(|id| {
            let st = store.load(id).unwrap_or_default();
            let probe = units
                .iter()
                .find(|u| service_of_probe_timer(&u.name) == Some(id))
                .map(|u| u.active_state.clone());
            let s = Supervision {
                paused: st.paused,
                paused_processes: st.paused_processes,
                memory: supervise::load_memory(&dirs, id),
                probe,
            };
            (id.to_string(), s)
        })
        .collect();
    let rows = rows(&units, args.id.as_deref(), now, &sup, max_delay);
    if args.json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
    } else {
        print!("{}", render_table(&rows, &sup));
    }
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
            description: String::new(),
            load_state: "loaded".into(),
            active_state: if pid > 0 { "active" } else { "activating" }.into(),
            sub_state: if pid > 0 { "running" } else { "auto-restart" }.into(),
            main_pid: pid,
            n_restarts: if pid > 0 { 0 } else { 3 },
            main_start_usec: 1_000_000,
            exec_main_code: 0,
            exec_main_status: 0,
            exec_main_exit_usec: 0,
            failed_since_usec: 0,
            restart_usec_next: 0,
            fields,
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
            supervise::UnitMemory {
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
        insta::assert_snapshot!("status_table", render_table(&r, &sup));
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

    #[test]
    fn ignores_units_without_shim_fields() {
        let mut u = unit("a", "web", 1, None, 1);
        u.fields.clear();
        assert!(rows(&[u], None, 0, &BTreeMap::new(), Duration::from_secs(300)).is_empty());
    }
}
