//! The app's crontab as systemd timers: `shim cron sync|list|exec`, and the cron steps of
//! upgrade (generate before anything changes, install after the switch), stop and reconcile.
//!
//! Flow of a sync: run the service's `cron` program (`bin/generate-cron`) in a one-off
//! container at the revision ([`run::run_capture`]) and parse its stdout ([`cron::parse_crontab`];
//! a bad line fails the sync, naming it, before anything changes). Each job gets a key, a hash
//! of everything that defines it except the revision (schedule, command, input, environment),
//! and one timer + service pair named after it (`shimcron-<service>-<key>`). The service runs
//! `shim cron exec`, which reads the revision from the cron state file
//! (`/var/lib/shim/cron/<service>.json`) at every run and then becomes the runtime. So:
//!
//! - a new revision with the same crontab is switched by one atomic rename of the state
//!   file: no instant where a job runs both revisions, or neither;
//! - a job added by the new crontab gets its timer after the rename; a job it dropped loses
//!   its timer after the rename, and if that timer fires in between, `cron exec` finds the
//!   job gone and does nothing;
//! - a job never overlaps itself: a timer does not start a service that is still running;
//! - after a reboot (transient timers are gone) reconcile re-creates the timers from the
//!   state file without running generate-cron again.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::crontab::CronEntry;
use crate::error::BadInput;
use crate::host::dirs::Dirs;
use crate::host::systemd::{ActiveState, Systemd};
use crate::host::Host;
use crate::plan::names;
use crate::plan::oneoff::{self, Attach, CronJobUnits, OneOff};
use crate::plan::Prepared;

/// One job as installed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CronJob {
    /// `<10 hex digits>` of the job's hash, `-2`, `-3`… for identical lines.
    pub key: String,
    /// Line in the crontab generate-cron printed.
    pub line: usize,
    /// The schedule as written.
    pub schedule: String,
    pub command: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stdin: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<(String, String)>,
    pub calendars: Vec<String>,
}

/// What is installed for one service (`/var/lib/shim/cron/<id>.json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CronState {
    /// The revision every job runs.
    pub revision: String,
    /// The program that printed the crontab.
    pub source: String,
    pub jobs: Vec<CronJob>,
}

/// Jobs with their keys, in crontab order. Pure.
pub fn jobs_from_entries(entries: &[CronEntry]) -> Vec<CronJob> {
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    entries
        .iter()
        .map(|e| {
            let mut h = Sha256::new();
            for c in &e.calendars {
                h.update(c.as_bytes());
                h.update([0]);
            }
            h.update([1]);
            h.update(e.command.as_bytes());
            h.update([1]);
            if let Some(s) = &e.stdin {
                h.update(s.as_bytes());
            }
            h.update([1]);
            for (k, v) in &e.env {
                h.update(k.as_bytes());
                h.update([b'=']);
                h.update(v.as_bytes());
                h.update([0]);
            }
            let base = hex::encode(h.finalize())[..10].to_string();
            let n = seen.entry(base.clone()).or_insert(0);
            *n += 1;
            let key = if *n == 1 { base } else { format!("{base}-{n}") };
            CronJob {
                key,
                line: e.line,
                schedule: e.schedule_text.clone(),
                command: e.command.clone(),
                stdin: e.stdin.clone(),
                env: e.env.clone(),
                calendars: e.calendars.clone(),
            }
        })
        .collect()
}

/// Whether `s` is a job key (so `shimcron-app-x-…` of service `app-x` is never read as a job
/// of service `app`).
pub fn is_key(s: &str) -> bool {
    let (hash, n) = match s.split_once('-') {
        Some((h, n)) => (h, Some(n)),
        None => (s, None),
    };
    hash.len() == 10
        && hash
            .chars()
            .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
        && n.is_none_or(|n| !n.is_empty() && n.chars().all(|c| c.is_ascii_digit()))
}

/// The job key of a unit of service `id`, if it is one.
pub fn key_of_unit<'a>(id: &str, unit: &'a str) -> Option<&'a str> {
    let key = names::cron_key_part(id, unit)?;
    is_key(key).then_some(key)
}

/// What a sync changes, given the keys before and after. Pure.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TimerDiff {
    /// Jobs whose timer must be created.
    pub add: Vec<String>,
    /// Jobs whose timer stays (they switch revision by the state file alone).
    pub keep: Vec<String>,
    /// Timers to remove.
    pub remove: Vec<String>,
}

pub fn diff_timers(active: &BTreeSet<String>, wanted: &[CronJob]) -> TimerDiff {
    let wanted_keys: BTreeSet<&str> = wanted.iter().map(|j| j.key.as_str()).collect();
    let mut d = TimerDiff::default();
    for j in wanted {
        if active.contains(&j.key) {
            d.keep.push(j.key.clone());
        } else {
            d.add.push(j.key.clone());
        }
    }
    d.remove = active
        .iter()
        .filter(|k| !wanted_keys.contains(k.as_str()))
        .cloned()
        .collect();
    d
}

pub fn state_path(dirs: &Dirs, id: &str) -> PathBuf {
    dirs.cron_state(id)
}

/// Where a job's last result is recorded (by its ExecStopPost).
pub fn last_path(dirs: &Dirs, id: &str, key: &str) -> PathBuf {
    dirs.cron_last(id, key)
}

/// A job's bundle directory.
pub fn job_dir(dirs: &Dirs, id: &str, key: &str) -> PathBuf {
    dirs.cron_job(id, key)
}

pub fn load_state(dirs: &Dirs, id: &str) -> Result<Option<CronState>> {
    let p = state_path(dirs, id);
    match std::fs::read(&p) {
        Ok(b) => Ok(Some(
            serde_json::from_slice(&b).with_context(|| format!("reading {}", p.display()))?,
        )),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("reading {}", p.display())),
    }
}

fn save_state(dirs: &Dirs, id: &str, st: &CronState) -> Result<()> {
    let p = state_path(dirs, id);
    if let Some(parent) = p.parent() {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating {}", parent.display()))?;
    }
    crate::host::fsutil::write_atomic(&p, &serde_json::to_vec_pretty(st)?, 0o600)
}

/// Runs the service's generate-cron at `prepared`'s revision and parses what it prints.
/// Any problem is an error naming the program, the revision and (for a bad line) the line.
pub fn generate(host: &Host, prepared: &Prepared) -> Result<Vec<CronJob>> {
    let svc = &prepared.service;
    let Some(program) = &svc.cron else {
        return Ok(Vec::new());
    };
    let what = format!(
        "{} of service {} at revision {} ({}:{}: services.{}.cron)",
        program,
        svc.id,
        prepared.revision,
        svc.source.display(),
        svc.line.unwrap_or(0),
        svc.id
    );
    let out = crate::ops::run::run_capture(host, prepared, std::slice::from_ref(program))
        .with_context(|| format!("running {what}"))?;
    if out.code != 0 {
        bail!(
            "{what} exited with status {}; see its output above or `shim logs --id {}`",
            out.code,
            svc.id
        );
    }
    let text = String::from_utf8(out.stdout).map_err(|_| {
        anyhow!(BadInput(format!(
            "{what} printed a crontab that is not UTF-8"
        )))
    })?;
    let entries = crate::crontab::parse_crontab(&text)
        .map_err(|e| anyhow!(BadInput(format!("{what}: {e}"))))?;
    Ok(jobs_from_entries(&entries))
}

/// The jobs to install at `prepared`'s revision: reused from the state file when it already
/// holds that revision from the same program (a re-run, a reboot), else generated.
pub fn jobs_for(host: &Host, prepared: &Prepared) -> Result<Option<Vec<CronJob>>> {
    let dirs = &host.dirs;
    let Some(program) = &prepared.service.cron else {
        return Ok(None);
    };
    if let Some(st) = load_state(dirs, prepared.service.id.as_str())? {
        if st.revision == prepared.revision && &st.source == program {
            return Ok(Some(st.jobs));
        }
    }
    generate(host, prepared).map(Some)
}

/// Installs `jobs` (None: the service has no crontab) at `prepared`'s revision: state file
/// first (the atomic switch), then missing timers, then timers of jobs no longer there.
/// Returns one line per change.
pub fn install(
    host: &Host,
    prepared: &Prepared,
    config: &Path,
    jobs: Option<&[CronJob]>,
) -> Result<Vec<String>> {
    let sd = host.systemd()?;
    let dirs = &host.dirs;
    let id = prepared.service.id.as_str();
    let mut out = Vec::new();
    let units = sd.list_units(&[names::cron_units_glob(id)])?;
    let active_timers: BTreeSet<String> = units
        .iter()
        .filter(|u| u.name.ends_with(".timer") && u.active_state == ActiveState::Active)
        .filter_map(|u| key_of_unit(id, &u.name).map(str::to_string))
        .collect();
    let loaded_services: BTreeSet<String> = units
        .iter()
        .filter(|u| u.name.ends_with(".service"))
        .filter_map(|u| key_of_unit(id, &u.name).map(str::to_string))
        .collect();
    let Some(jobs) = jobs else {
        // No crontab (any more): remove what there is.
        out.extend(remove_timers(sd, id, &active_timers)?);
        let _ = std::fs::remove_file(state_path(dirs, id));
        return Ok(out);
    };
    let program = prepared.service.cron.clone().unwrap_or_default();
    let new_state = CronState {
        revision: prepared.revision.clone(),
        source: program,
        jobs: jobs.to_vec(),
    };
    let old = load_state(dirs, id)?;
    if old.as_ref() != Some(&new_state) {
        save_state(dirs, id, &new_state)?;
        out.push(format!(
            "cron state: {} job(s) at revision {}",
            jobs.len(),
            prepared.revision
        ));
    }
    let diff = diff_timers(&active_timers, jobs);
    for key in &diff.add {
        let Some(job) = jobs.iter().find(|j| &j.key == key) else {
            continue;
        };
        out.push(add_timer(
            host,
            prepared,
            config,
            job,
            loaded_services.contains(key),
        )?);
    }
    let gone: BTreeSet<String> = diff.remove.iter().cloned().collect();
    out.extend(remove_timers(sd, id, &gone)?);
    if !diff.keep.is_empty() {
        out.push(format!(
            "kept     {} timer(s), now running revision {}",
            diff.keep.len(),
            prepared.revision
        ));
    }
    Ok(out)
}

/// Creates one job's timer (and its service, unless a run of it is still loaded: then the
/// new timer triggers that unit rather than creating it again). Returns the line to print.
fn add_timer(
    host: &Host,
    prepared: &Prepared,
    config: &Path,
    job: &CronJob,
    service_loaded: bool,
) -> Result<String> {
    let (sd, dirs) = (host.systemd()?, &host.dirs);
    let id = prepared.service.id.as_str();
    let key = &job.key;
    let dir = job_dir(dirs, id, key);
    let last = last_path(dirs, id, key);
    let (timer, service) = oneoff::plan_cron_job(&CronJobUnits {
        service: id,
        job: key,
        schedule_text: &job.schedule,
        command: &job.command,
        calendars: &job.calendars,
        stdin: job.stdin.as_deref(),
        shim_exe: &prepared.shim_exe,
        runtime_bin: &prepared.runtime_bin,
        config,
        dir: &dir,
        last_file: &last,
        stop_timeout: Duration::from_secs(30),
    });
    let aux: &[crate::plan::UnitSpec] = if service_loaded {
        &[]
    } else {
        std::slice::from_ref(&service)
    };
    let job_out = sd
        .start_transient_with_aux(&timer, aux, Duration::from_secs(30))
        .with_context(|| format!("creating {}", timer.name))?;
    if !job_out.ok() {
        bail!("creating {}: job {}", timer.name, job_out.result);
    }
    Ok(format!(
        "added    {} ({} {})",
        timer.name,
        job.schedule,
        oneoff::describe_argv(std::slice::from_ref(&job.command))
    ))
}

fn remove_timers(sd: &dyn Systemd, id: &str, keys: &BTreeSet<String>) -> Result<Vec<String>> {
    let names: Vec<String> = keys.iter().map(|k| names::cron_timer_name(id, k)).collect();
    if names.is_empty() {
        return Ok(Vec::new());
    }
    sd.stop_units(&names, Duration::from_secs(30))?;
    Ok(names.into_iter().map(|n| format!("removed  {n}")).collect())
}

/// Removes every cron timer of `id` (its jobs that are running finish). The state stays, so
/// that a later start at the same revision brings the timers back without generate-cron.
pub fn remove_all(sd: &dyn Systemd, id: &str) -> Result<Vec<String>> {
    let units = sd.list_units(&[names::cron_timers_glob(Some(id))])?;
    let keys: BTreeSet<String> = units
        .iter()
        .filter_map(|u| key_of_unit(id, &u.name).map(str::to_string))
        .collect();
    remove_timers(sd, id, &keys)
}

/// Services with cron timers on this host (for reconcile: those no longer defined go).
pub fn services_with_timers(sd: &dyn Systemd) -> Result<BTreeSet<String>> {
    let units = sd.list_units(&[names::cron_timers_glob(None)])?;
    Ok(units
        .iter()
        .filter_map(|u| {
            let stem = names::cron_timer_stem(&u.name)?;
            // `<id>-<key>`, and keys may hold one '-' themselves.
            let (head, tail) = stem.rsplit_once('-')?;
            if is_key(tail) {
                Some(head.to_string())
            } else {
                let (id, hash) = head.rsplit_once('-')?;
                is_key(&format!("{hash}-{tail}")).then(|| id.to_string())
            }
        })
        .collect())
}

/// What is wrong with a service's cron timers at `revision`, if anything (reconcile).
pub fn drift(
    sd: &dyn Systemd,
    svc: &crate::config::ServiceDef,
    dirs: &Dirs,
    revision: &str,
) -> Result<Option<String>> {
    let id = svc.id.as_str();
    let state = load_state(dirs, id)?;
    let units = sd.list_units(&[names::cron_timers_glob(Some(id))])?;
    let active: BTreeSet<String> = units
        .iter()
        .filter(|u| u.active_state == ActiveState::Active)
        .filter_map(|u| key_of_unit(id, &u.name).map(str::to_string))
        .collect();
    let Some(program) = &svc.cron else {
        return Ok((state.is_some() || !active.is_empty()).then(|| {
            format!(
                "no cron key any more: remove {} cron timer(s)",
                active.len()
            )
        }));
    };
    let Some(st) = state else {
        return Ok(Some(format!("crontab of {revision} not installed")));
    };
    if st.revision != revision || &st.source != program {
        return Ok(Some(format!(
            "cron jobs run {} from {}, not {revision} from {program}",
            st.revision, st.source
        )));
    }
    let d = diff_timers(&active, &st.jobs);
    Ok(match (d.add.len(), d.remove.len()) {
        (0, 0) => None,
        (a, r) => Some(format!("{a} cron timer(s) missing, {r} extra")),
    })
}

/// Brings a service's cron timers in line with its definition at `revision` (reconcile).
pub fn repair(
    host: &Host,
    defs: &crate::config::Definitions,
    config: &Path,
    id: &str,
    revision: &str,
) -> Result<Vec<String>> {
    let prepared = crate::ops::instances::prepare_for_run(host, defs, id, Some(revision))?;
    let jobs = jobs_for(host, &prepared)?;
    install(host, &prepared, config, jobs.as_deref())
}

/// `shim cron exec`: run by a job's service. Reads the state, plans the container at the
/// current revision, mounts its overlay, then becomes the runtime (never returns on success).
pub fn exec_job(host: &Host, defs: &crate::config::Definitions, id: &str, key: &str) -> Result<()> {
    let dirs = &host.dirs;
    let Some(st) = load_state(dirs, id)? else {
        println!("service {id} has no crontab installed any more; job {key} does nothing");
        return Ok(());
    };
    let Some(job) = st.jobs.iter().find(|j| j.key == key) else {
        println!(
            "job {key} is no longer in service {id}'s crontab (revision {}); nothing to run",
            st.revision
        );
        return Ok(());
    };
    let prepared = crate::ops::instances::prepare_for_run(host, defs, id, Some(&st.revision))?;
    crate::ops::instances::check_device_filter(&prepared)?;
    let shell = job
        .env
        .iter()
        .find(|(k, _)| k == "SHELL")
        .map(|(_, v)| v.clone())
        .unwrap_or_else(|| "/bin/sh".into());
    let stem = names::cron_stem(id, key);
    let dir = job_dir(dirs, id, key);
    let req = OneOff {
        stem: stem.clone(),
        process: None,
        argv: vec![shell, "-c".into(), job.command.clone()],
        env: job.env.clone(),
        fields: vec![(crate::plan::fields::CRON.into(), key.to_string())],
        attach: Attach::Detached,
        dir: dir.clone(),
    };
    let secrets = prepared.secrets.clone();
    let cx = prepared.context(&secrets);
    let config = oneoff::plan_oneoff_config(&cx, &req).map_err(|m| anyhow!(BadInput(m)))?;
    crate::ops::run::write_config(&dir, &config)?;
    let revision = crate::plan::InstanceDir(&dir).revision();
    std::fs::write(&revision, format!("{}\n", st.revision))
        .with_context(|| format!("writing {}", revision.display()))?;
    crate::host::runtime::prepare(&prepared.lowers, &dir)?;
    println!(
        "cron job {key} (crontab line {}, {}) at revision {}: {}",
        job.line, job.schedule, st.revision, job.command
    );
    crate::host::runtime::enter_cgroup_leaf("runtime")?;
    use std::os::unix::process::CommandExt;
    // This process already is in the leaf: it becomes the runtime itself.
    let argv = oneoff::runtime_run_argv(&prepared.runtime_bin, &dir, &stem);
    let err = std::process::Command::new(&argv[0]).args(&argv[1..]).exec();
    Err(anyhow!(err).context(format!("executing {}", argv[0])))
}

/// One job, as `shim cron list` and `shim status` show it. The JSON field names are a
/// stable interface.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct JobRow {
    pub service: String,
    pub job: String,
    pub revision: String,
    pub line: usize,
    pub schedule: String,
    pub calendars: Vec<String>,
    pub command: String,
    /// The timer's state ("active", or "missing" when it is not loaded).
    pub timer: String,
    /// Next run, µs since the epoch (0: none).
    pub next_usec: u64,
    /// How the last run ended ("success", "exit-code", ...), if it ran.
    pub last_result: Option<String>,
    pub last_exit: Option<String>,
    /// When the last run ended, seconds since the epoch.
    pub last_ended: Option<u64>,
}

/// Rows from the state files, the timers and the recorded results. Pure.
pub fn job_rows(
    states: &[(String, CronState)],
    timers: &[crate::host::systemd::TimerInfo],
    last: &dyn Fn(&str, &str) -> Option<crate::host::runtime::LastResult>,
) -> Vec<JobRow> {
    let mut out = Vec::new();
    for (id, st) in states {
        for j in &st.jobs {
            let name = names::cron_timer_name(id, &j.key);
            let t = timers.iter().find(|t| t.name == name);
            let l = last(id, &j.key);
            out.push(JobRow {
                service: id.clone(),
                job: j.key.clone(),
                revision: st.revision.clone(),
                line: j.line,
                schedule: j.schedule.clone(),
                calendars: j.calendars.clone(),
                command: j.command.clone(),
                timer: t
                    .map(|t| t.active_state.to_string())
                    .unwrap_or_else(|| "missing".into()),
                next_usec: t.map(|t| t.next_elapse_usec).unwrap_or(0),
                last_result: l.as_ref().map(|l| l.result.clone()),
                last_exit: l.as_ref().map(|l| {
                    if l.exit_code == "exited" {
                        format!("status {}", l.exit_status)
                    } else {
                        format!("{} {}", l.exit_code, l.exit_status)
                    }
                }),
                last_ended: l.as_ref().map(|l| l.ended),
            });
        }
    }
    out
}

/// `shim cron list`: the jobs of service `id` (or of every service with a cron state file,
/// by id), with their timers and last results. The caller has checked that `id` is an id.
pub fn list_jobs(host: &Host, id: Option<&str>) -> Result<Vec<JobRow>> {
    let dirs = &host.dirs;
    let mut states = Vec::new();
    let ids: Vec<String> = match id {
        Some(id) => vec![id.to_string()],
        None => {
            let mut ids: Vec<String> = std::fs::read_dir(dirs.cron_states())
                .map(|rd| {
                    rd.flatten()
                        .filter_map(|e| {
                            let n = e.file_name().to_string_lossy().to_string();
                            n.strip_suffix(".json").map(str::to_string)
                        })
                        .collect()
                })
                .unwrap_or_default();
            ids.sort();
            ids
        }
    };
    for id in ids {
        if let Some(st) = load_state(dirs, &id)? {
            states.push((id, st));
        }
    }
    let sd = host.systemd()?;
    let pattern = names::cron_timers_glob(id);
    let timers = sd.timers(&[pattern])?;
    let last = |id: &str, key: &str| {
        let b = std::fs::read(last_path(dirs, id, key)).ok()?;
        serde_json::from_slice(&b).ok()
    };
    Ok(job_rows(&states, &timers, &last))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(text: &str) -> Vec<CronEntry> {
        crate::crontab::parse_crontab(text).unwrap()
    }

    #[test]
    fn keys_depend_on_the_job_not_its_position() {
        let a = jobs_from_entries(&entries("0 * * * * a\n5 * * * * b\n"));
        let b = jobs_from_entries(&entries("# moved\n5 * * * * b\n0 * * * * a\n"));
        assert_eq!(a[0].key, b[1].key);
        assert_eq!(a[1].key, b[0].key);
        assert_ne!(a[0].key, a[1].key);
        assert!(a.iter().all(|j| is_key(&j.key)), "{a:?}");
    }

    #[test]
    fn identical_lines_get_distinct_keys() {
        let j = jobs_from_entries(&entries("* * * * * x\n* * * * * x\n"));
        assert_eq!(j[1].key, format!("{}-2", j[0].key));
        assert!(is_key(&j[1].key));
    }

    #[test]
    fn env_and_input_change_the_key() {
        let plain = jobs_from_entries(&entries("* * * * * x\n"));
        let env = jobs_from_entries(&entries("A=1\n* * * * * x\n"));
        let input = jobs_from_entries(&entries("* * * * * x%in\n"));
        assert_ne!(plain[0].key, env[0].key);
        assert_ne!(plain[0].key, input[0].key);
        // Equivalent schedules are the same job.
        let same = jobs_from_entries(&entries("0-59 * * * * x\n"));
        assert_eq!(plain[0].key, same[0].key);
    }

    #[test]
    fn unit_names_map_back_to_keys_of_their_service_only() {
        assert_eq!(
            key_of_unit("app", "shimcron-app-0123456789.timer"),
            Some("0123456789")
        );
        assert_eq!(
            key_of_unit("app", "shimcron-app-0123456789-2.service"),
            Some("0123456789-2")
        );
        assert_eq!(key_of_unit("app", "shimcron-app-x-0123456789.timer"), None);
        assert_eq!(
            key_of_unit("app-x", "shimcron-app-x-0123456789.timer"),
            Some("0123456789")
        );
        assert_eq!(key_of_unit("app", "shim-app-web-1.service"), None);
    }

    #[test]
    fn diff_keeps_adds_and_removes() {
        let jobs = jobs_from_entries(&entries("0 * * * * a\n5 * * * * b\n"));
        let active: BTreeSet<String> = [jobs[0].key.clone(), "ffffffffff".to_string()].into();
        let d = diff_timers(&active, &jobs);
        assert_eq!(d.keep, vec![jobs[0].key.clone()]);
        assert_eq!(d.add, vec![jobs[1].key.clone()]);
        assert_eq!(d.remove, vec!["ffffffffff".to_string()]);
        // Same crontab again: nothing to do but keep.
        let all: BTreeSet<String> = jobs.iter().map(|j| j.key.clone()).collect();
        let d = diff_timers(&all, &jobs);
        assert!(d.add.is_empty() && d.remove.is_empty());
    }
}
