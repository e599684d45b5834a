//! `shim status`: one listing of shim's units over D-Bus plus one batched property read, shown
//! as a table per service or as JSON. Building rows and rendering are pure.

use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Result;
use clap::Args;
use serde::Serialize;

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
}

pub fn rows(units: &[UnitInfo], id: Option<&str>, now_usec: u64) -> Vec<InstanceRow> {
    let mut rows: Vec<InstanceRow> = units
        .iter()
        .filter(|u| u.field("SHIM_SERVICE").is_some())
        .filter(|u| id.is_none() || u.field("SHIM_SERVICE") == id)
        .map(|u| InstanceRow {
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

/// A plain text table, one block per service.
pub fn render_table(rows: &[InstanceRow]) -> String {
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
                    format!("{}/{}", r.state, r.sub_state),
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
        out.push_str(&format!("{svc}\n"));
        out.push_str(&line(header.iter().map(|h| h.to_string()).collect()));
        for row in cells {
            out.push_str(&line(row));
        }
    }
    out
}

pub fn run(args: StatusArgs) -> Result<()> {
    let sd = DbusSystemd::connect()?;
    let pattern = match &args.id {
        Some(id) => crate::plan::service_unit_pattern(id),
        None => "shim-*".to_string(),
    };
    let units = sd.list_units(&[pattern])?;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0);
    let rows = rows(&units, args.id.as_deref(), now);
    if args.json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
    } else {
        print!("{}", render_table(&rows));
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
            fields,
        }
    }

    #[test]
    fn table_and_json_snapshot() {
        let units = vec![
            unit("billing_app", "web", 2, Some(20001), 4343),
            unit("billing_app", "web", 1, Some(20000), 4242),
            unit("billing_app", "worker", 1, None, 0),
            unit("other", "web", 1, Some(20002), 77),
        ];
        let r = rows(&units, None, 3_726_000_000);
        insta::assert_snapshot!("status_table", render_table(&r));
        insta::assert_json_snapshot!("status_json", rows(&units, Some("other"), 3_726_000_000));
    }

    #[test]
    fn ignores_units_without_shim_fields() {
        let mut u = unit("a", "web", 1, None, 1);
        u.fields.clear();
        assert!(rows(&[u], None, 0).is_empty());
    }
}
