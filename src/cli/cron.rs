//! `shim cron sync|list` (and `exec`, run by the jobs' units): arguments and the job table; the
//! operations are in `ops::cron`.

use std::path::Path;

use anyhow::{anyhow, Result};
use clap::{Args, Subcommand};

use crate::config::Ident;
use crate::error::BadInput;
use crate::host::lock::ServiceLock;
use crate::ops::cron::JobRow;
use crate::plan::oneoff;

/// The app's crontab as systemd timers: sync it at a revision, list the jobs.
///
/// Example: shim cron list --id billing_app
#[derive(Args, Debug)]
pub struct CronArgs {
    #[command(subcommand)]
    step: Step,
}

#[derive(Subcommand, Debug)]
enum Step {
    Sync(SyncArgs),
    List(ListArgs),
    #[command(hide = true)]
    Exec(ExecArgs),
}

/// Run the service's generate-cron at a revision and install its crontab as timers.
///
/// Replaces the previous revision's jobs atomically; a bad crontab changes nothing. Also done
/// by `shim upgrade`/`start` (after the switch) and `shim reconcile`.
///
/// Example: shim cron sync --id billing_app --revision 279d9035886d
#[derive(Args, Debug)]
pub struct SyncArgs {
    /// Service id, as in [services.ID].
    #[arg(long)]
    pub id: String,
    /// Revision (default: the service's current revision).
    #[arg(long)]
    pub revision: Option<String>,
}

/// List cron jobs: schedule as written, calendar specs, next run, last result.
///
/// Example: shim cron list --id billing_app
#[derive(Args, Debug)]
pub struct ListArgs {
    /// Only this service.
    #[arg(long)]
    pub id: Option<String>,
    /// Machine-readable output: a JSON array of jobs.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct ExecArgs {
    #[arg(long)]
    pub id: String,
    #[arg(long)]
    pub job: String,
}

pub fn run(host: &crate::host::Host, config: &Path, args: CronArgs) -> Result<()> {
    match args.step {
        Step::Sync(a) => sync(host, config, a),
        Step::List(a) => list(host, a),
        Step::Exec(a) => {
            let defs = crate::config::load(config)?;
            crate::ops::cron::exec_job(host, &defs, &a.id, &a.job)
        }
    }
}

fn sync(host: &crate::host::Host, config: &Path, a: SyncArgs) -> Result<()> {
    let defs = crate::config::load(config)?;
    let dirs = host.dirs.clone();
    let svc = defs.service(&a.id)?;
    if svc.cron.is_none() {
        return Err(anyhow!(BadInput(format!(
            "{}:{}: services.{}: no `cron` key (e.g. cron = \"bin/generate-cron\"), so there is no crontab to sync",
            svc.source.display(),
            svc.line.unwrap_or(0),
            a.id
        ))));
    }
    let revision = crate::ops::run::revision_to_run(&dirs, &a.id, a.revision.as_deref())?;
    let _lock = ServiceLock::acquire(&dirs.run, &a.id, std::time::Duration::from_secs(600))?;
    let prepared = crate::ops::instances::prepare_for_run(host, &defs, &a.id, Some(&revision))?;
    let jobs = crate::ops::cron::generate(host, &prepared)?;
    for line in crate::ops::cron::install(host, &prepared, config, Some(&jobs))? {
        println!("{line}");
    }
    println!(
        "{} cron job(s) of {} at revision {revision}",
        jobs.len(),
        a.id
    );
    Ok(())
}

/// The table. Pure.
pub fn render(rows: &[JobRow], offset_secs: i64) -> String {
    if rows.is_empty() {
        return "no cron jobs installed\n".into();
    }
    let time = |usec: u64| {
        if usec == 0 {
            "-".to_string()
        } else {
            crate::timefmt::render_time(usec, offset_secs)[..19].to_string()
        }
    };
    let mut table = vec![[
        "SERVICE".to_string(),
        "JOB".into(),
        "SCHEDULE".into(),
        "NEXT".into(),
        "LAST".into(),
        "COMMAND".into(),
    ]];
    for r in rows {
        let last = match (&r.last_result, &r.last_exit, r.last_ended) {
            (Some(res), Some(exit), Some(t)) => {
                format!("{res} ({exit}) {}", time(t * 1_000_000))
            }
            _ => "never ran".into(),
        };
        let next = if r.timer == "active" {
            time(r.next_usec)
        } else {
            format!("timer {}", r.timer)
        };
        table.push([
            r.service.clone(),
            r.job.clone(),
            r.schedule.clone(),
            next,
            last,
            oneoff::describe_argv(std::slice::from_ref(&r.command)),
        ]);
    }
    let mut widths = [0usize; 6];
    for row in &table {
        for (i, c) in row.iter().enumerate() {
            widths[i] = widths[i].max(c.chars().count());
        }
    }
    let mut s = String::new();
    for (n, row) in table.iter().enumerate() {
        let mut line = String::new();
        for (i, c) in row.iter().enumerate() {
            if i == row.len() - 1 {
                line.push_str(c);
            } else {
                line.push_str(&format!("{c:<w$}  ", w = widths[i]));
            }
        }
        s.push_str(line.trim_end());
        s.push('\n');
        if n > 0 {
            let r = &rows[n - 1];
            s.push_str(&format!(
                "    line {} of the crontab at revision {}; OnCalendar={}\n",
                r.line,
                r.revision,
                r.calendars.join(" | ")
            ));
        }
    }
    s
}

fn list(host: &crate::host::Host, a: ListArgs) -> Result<()> {
    if let Some(id) = &a.id {
        Ident::parse(id).map_err(|m| BadInput(format!("--id: service id {m}")))?;
    }
    let rows = crate::ops::cron::list_jobs(host, a.id.as_deref())?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
    } else {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_micros() as u64)
            .unwrap_or(0);
        print!("{}", render(&rows, crate::timefmt::local_offset(now)));
    }
    Ok(())
}
