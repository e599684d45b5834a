//! `shim status`: the arguments and the rendering. [`crate::ops::status::gather`] finds the
//! instances, what supervision says about each service (paused, the next retry of a
//! crash-looping instance, the probe timer) and, for the table, the service's cron jobs with
//! their next run; this module prints them as a table per service or as a JSON array of
//! instances. Rendering is pure ([`render_table`]).

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Result;
use clap::Args;

use crate::ops::cron::JobRow;
use crate::ops::status::{InstanceRow, Query, Supervision};

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
    let mut out = if notes.is_empty() {
        format!("{svc}\n")
    } else {
        format!("{svc} ({})\n", notes.join("; "))
    };
    if let Some((id, revision, image, digest)) = s.and_then(|s| s.current.as_ref()) {
        out.push_str(&format!(
            "  deployment {id} of revision {revision}: image {image} at {digest}\n"
        ));
    }
    if let Some(s) = s.filter(|s| !s.changed.is_empty()) {
        out.push_str(&format!(
            "  {} changed since deploy: run `shim upgrade --id {svc}` to roll it out\n",
            s.changed.join(" and ")
        ));
    }
    out
}

/// A service's cron jobs, one line each: schedule as written, next run (local time), command.
fn cron_lines(jobs: &[JobRow], offset_secs: i64) -> String {
    let next = |j: &JobRow| match (j.timer.as_str(), j.next_usec) {
        ("active", 0) => "next -".to_string(),
        ("active", t) => format!(
            "next {}",
            &crate::timefmt::render_time(t, offset_secs)[..19]
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

/// The STATE column: `active/running`, or for an instance waiting to be restarted how it
/// ended and when it is retried.
fn state_cell(r: &InstanceRow) -> String {
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
}

/// Each service's own unit, one line each: its state, enablement, and whether it is stopped.
pub fn render_units(units: &BTreeMap<String, crate::ops::service_unit::UnitState>) -> String {
    if units.is_empty() {
        return String::new();
    }
    let w = units.keys().map(|k| k.len()).max().unwrap_or(0);
    let mut out = String::from("SERVICE UNITS\n");
    for (id, u) in units {
        out.push_str(&format!("  {id:<w$}  {}\n", u.line()));
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
                    state_cell(r),
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

pub fn run(host: &crate::host::Host, config: &Path, args: StatusArgs) -> Result<()> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0);
    // The definitions only give the restart backoff's maximum: status works without them.
    let defs = crate::config::load(config).ok();
    let q = Query {
        id: args.id.as_deref(),
        cron: !args.json,
        now_usec: now,
    };
    if let Some(id) = &args.id {
        crate::config::Ident::parse(id)
            .map_err(|m| crate::error::BadInput(format!("--id: service id {m}")))?;
    }
    let report = crate::ops::status::gather(host, defs.as_ref(), &q)?;
    if let (Some(id), Some(d)) = (&args.id, &defs) {
        // A typo must not look like a service with nothing running: an id that is neither
        // defined nor known on this host (no state, no instance) is an error.
        if let Err(e) = d.service(id) {
            if report.instances.is_empty() && !host.state().path(id).exists() {
                return Err(crate::error::BadInput(format!("{e}")).into());
            }
        }
    }
    for w in &report.warnings {
        eprintln!("shim: warning: {w}");
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report.instances)?);
        return Ok(());
    }
    print!(
        "{}",
        render_table(
            &report.instances,
            &report.supervision,
            &report.cron,
            crate::timefmt::local_offset(now)
        )
    );
    print!("{}", render_units(&report.units));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::systemd::UnitInfo;
    use crate::ops::probe::Retry;
    use crate::ops::status::rows;
    use std::time::Duration;

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

    #[test]
    fn no_instances_is_one_line() {
        let (sup, cron) = (BTreeMap::new(), BTreeMap::new());
        assert_eq!(
            render_table(&[], &sup, &cron, 0),
            "no shim instances are running\n"
        );
    }
}
