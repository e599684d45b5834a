//! `shim logs`: an instance's output from journald. Every line an instance writes is tagged
//! with `SHIM_SERVICE`, `SHIM_PROCESS`, `SHIM_REVISION` and `SHIM_INSTANCE` (the unit's
//! `LogExtraFields`), so the filters are journal field matches handed to `journalctl`
//! (different fields are ANDed, which is what the filters mean). journalctl merges the
//! instances' streams by time; it prints JSON (`-o json`), and shim formats each entry itself
//! ([`LogFormatter`], pure) with a `web-2 | ` prefix unless the filters select one instance.
//! `-f` streams: entries are printed as journalctl emits them.

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};

use anyhow::{Context, Result};
use clap::Args;
use serde_json::Value;

use crate::config::Ident;
use crate::error::BadInput;
use crate::timefmt::{local_offset, render_time};

/// Show the output of a service's instances, merged by time, from the journal.
///
/// Lines are prefixed with the process and instance (`web-2 | …`) unless --process and
/// --instance select a single instance. Works for instances that are gone (the journal
/// keeps their output) and for services no longer defined.
///
/// Example: shim logs --id billing_app --process web -n 50 -f
#[derive(Args, Debug)]
pub struct LogsArgs {
    /// Service id.
    #[arg(long)]
    pub id: String,
    /// Only this process (e.g. web).
    #[arg(long)]
    pub process: Option<String>,
    /// Only this revision: the full revision, or a prefix of the current or previous one.
    #[arg(long)]
    pub revision: Option<String>,
    /// Only instances with this number (of every process, unless --process is given).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    pub instance: Option<u32>,
    /// Keep printing new lines as they are written (until interrupted).
    #[arg(short, long)]
    pub follow: bool,
    /// Only the last N lines (with -f: default 10).
    #[arg(short = 'n', long = "lines", value_name = "N")]
    pub lines: Option<u64>,
    /// Only lines written since then: a duration ago ("10m", "1h30m") or anything
    /// journalctl --since accepts ("2024-05-01 12:00", "today", "-2h").
    #[arg(long, value_name = "WHEN")]
    pub since: Option<String>,
    /// Only lines written until then (same forms as --since).
    #[arg(long, value_name = "WHEN")]
    pub until: Option<String>,
    /// Leave out the timestamps.
    #[arg(long)]
    pub no_time: bool,
}

/// One journal entry as shim shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Microseconds since the epoch (`__REALTIME_TIMESTAMP`).
    pub usec: u64,
    pub process: String,
    pub instance: String,
    pub revision: String,
    pub message: String,
}

/// A journal field from `journalctl -o json`: a string, an array of bytes (non-UTF-8 or
/// non-printable data), an array of values (a field present several times: the first is
/// taken), or null (larger than journalctl prints).
fn field_text(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::String(s) => Some(s.clone()),
        Value::Array(a) if a.iter().all(Value::is_u64) => {
            let bytes: Vec<u8> = a
                .iter()
                .filter_map(|b| b.as_u64())
                .map(|b| b as u8)
                .collect();
            Some(String::from_utf8_lossy(&bytes).into_owned())
        }
        Value::Array(a) => field_text(a.first()),
        Value::Null => Some("[data too large to show]".into()),
        other => Some(other.to_string()),
    }
}

/// Parses one line of `journalctl -o json`; None for anything that is not an entry.
pub fn parse_entry(line: &str) -> Option<Entry> {
    let v: Value = serde_json::from_str(line).ok()?;
    let get = |k: &str| field_text(v.get(k));
    Some(Entry {
        usec: get("__REALTIME_TIMESTAMP")?.parse().ok()?,
        process: get(crate::plan::fields::PROCESS).unwrap_or_else(|| "?".into()),
        // One-offs have no instance number: a run shows its tag (the end of its unit name),
        // a cron job its key.
        instance: get(crate::plan::fields::INSTANCE)
            .or_else(|| get(crate::plan::fields::CRON))
            .or_else(|| {
                get(crate::plan::fields::RUN).and_then(|r| r.rsplit('-').next().map(str::to_string))
            })
            .unwrap_or_else(|| "?".into()),
        revision: get(crate::plan::fields::REVISION).unwrap_or_default(),
        message: get("MESSAGE").unwrap_or_default(),
    })
}

/// The width of the `process-instance` column for a service's processes and counts, so that
/// the prefixes line up from the first line.
pub fn prefix_width<'a>(processes: impl IntoIterator<Item = (&'a str, u32)>) -> usize {
    processes
        .into_iter()
        .map(|(p, count)| p.chars().count() + 1 + count.max(1).to_string().len())
        .max()
        .unwrap_or(0)
}

/// Turns entries into lines: `TIME PREFIX | MESSAGE`. The prefix column only widens, so
/// that a streamed output stays aligned as far as it can.
#[derive(Debug, Clone)]
pub struct LogFormatter {
    /// Prefix each line with `process-instance | `.
    pub prefix: bool,
    /// Show timestamps.
    pub time: bool,
    /// Width of the prefix column so far.
    pub width: usize,
}

impl LogFormatter {
    /// Formats one entry (one or more lines, each ending in '\n'); `offset_secs` is the local
    /// UTC offset at the entry's time.
    pub fn render(&mut self, e: &Entry, offset_secs: i64) -> String {
        let mut head = String::new();
        if self.time {
            head.push_str(&render_time(e.usec, offset_secs));
            head.push(' ');
        }
        if self.prefix {
            let tag = format!("{}-{}", e.process, e.instance);
            self.width = self.width.max(tag.chars().count());
            head.push_str(&format!("{tag:<w$} | ", w = self.width));
        }
        let msg = e.message.strip_suffix('\n').unwrap_or(&e.message);
        let mut out = String::new();
        for line in msg.split('\n') {
            out.push_str(&head);
            out.push_str(line.strip_suffix('\r').unwrap_or(line));
            out.push('\n');
        }
        out
    }
}

/// The journalctl command line for these filters (`revision` already resolved). Pure.
pub fn journalctl_args(a: &LogsArgs, revision: Option<&str>) -> Vec<String> {
    let mut v: Vec<String> = ["--no-pager", "--quiet", "--all", "-o", "json"]
        .map(String::from)
        .to_vec();
    v.push(
        "--output-fields=MESSAGE,SHIM_PROCESS,SHIM_INSTANCE,SHIM_REVISION,SHIM_RUN,SHIM_CRON"
            .into(),
    );
    if a.follow {
        v.push("--follow".into());
    }
    if let Some(n) = a.lines {
        v.push(format!("--lines={n}"));
    }
    if let Some(s) = &a.since {
        v.push(format!("--since={}", time_arg(s)));
    }
    if let Some(s) = &a.until {
        v.push(format!("--until={}", time_arg(s)));
    }
    // Matches last: journalctl ANDs matches on different fields.
    v.push(format!("SHIM_SERVICE={}", a.id));
    if let Some(p) = &a.process {
        v.push(format!("SHIM_PROCESS={p}"));
    }
    if let Some(r) = revision {
        v.push(format!("SHIM_REVISION={r}"));
    }
    if let Some(i) = a.instance {
        v.push(format!("SHIM_INSTANCE={i}"));
    }
    v
}

/// `10m` (shim's duration syntax) means 10 minutes ago; anything else is journalctl's.
fn time_arg(s: &str) -> String {
    match crate::config::parse_duration(s) {
        Ok(d) => format!("-{}s", d.as_secs()),
        Err(_) => s.to_string(),
    }
}

/// A revision prefix (as `shim status` shows 12 characters) → the one known revision it
/// starts, from the service's recorded current/previous revision and its running units.
fn resolve_revision(host: &crate::host::Host, id: &str, rev: &str) -> String {
    let mut known: Vec<String> = Vec::new();
    let dirs = host.dirs.clone();
    if let Ok(st) = crate::host::state::StateStore::new(&dirs.state).load(id) {
        known.extend(st.current);
        known.extend(st.previous);
    }
    if let Ok(sd) = host.systemd() {
        if let Ok(units) = crate::ops::view::ServiceView::observe(sd, id) {
            known.extend(
                units
                    .units()
                    .iter()
                    .filter_map(|u| u.field(crate::plan::fields::REVISION).map(String::from)),
            );
        }
    }
    known.sort();
    known.dedup();
    if known.iter().any(|k| k == rev) {
        return rev.to_string();
    }
    let matching: Vec<&String> = known.iter().filter(|k| k.starts_with(rev)).collect();
    match matching.as_slice() {
        [one] => (*one).clone(),
        _ => rev.to_string(),
    }
}

fn validate(a: &LogsArgs) -> Result<()> {
    Ident::parse(&a.id).map_err(|m| BadInput(format!("--id: service id {m}")))?;
    if let Some(p) = &a.process {
        Ident::parse(p).map_err(|m| BadInput(format!("--process: process name {m}")))?;
    }
    if let Some(r) = &a.revision {
        crate::plan::validate_revision(r).map_err(|m| BadInput(format!("--revision: {m}")))?;
    }
    for (flag, v) in [("--since", &a.since), ("--until", &a.until)] {
        if v.as_deref().is_some_and(|s| s.trim().is_empty()) {
            return Err(BadInput(format!("{flag}: empty time")).into());
        }
    }
    Ok(())
}

/// The formatter for `a`; the prefix width from the definitions when the service is still
/// defined.
fn formatter(config: &std::path::Path, a: &LogsArgs) -> LogFormatter {
    LogFormatter {
        prefix: !(a.process.is_some() && a.instance.is_some()),
        time: !a.no_time,
        // From the definitions when the service is still defined; else it grows as needed.
        width: crate::config::load(config)
            .ok()
            .and_then(|d| d.service(&a.id).ok().cloned())
            .map(|s| {
                prefix_width(
                    s.processes
                        .values()
                        .filter(|p| a.process.as_deref().is_none_or(|w| w == p.name.as_str()))
                        .map(|p| (p.name.as_str(), p.count)),
                )
            })
            .unwrap_or(0),
    }
}

/// journalctl's exit status as shim's: its errors, or a note that nothing matched.
fn finish(args: &[String], status: std::process::ExitStatus, err: &str, shown: u64) -> Result<()> {
    if !status.success() {
        let err = err.trim();
        // journalctl refuses a --since/--until it cannot parse: that is bad input.
        if err.contains("Failed to parse") {
            return Err(BadInput(format!("journalctl: {err}")).into());
        }
        anyhow::bail!("journalctl {} failed ({status}): {err}", args.join(" "));
    }
    if shown == 0 {
        eprintln!(
            "shim: no journal entries match {}",
            args.iter()
                .filter(|s| s.starts_with("SHIM_"))
                .cloned()
                .collect::<Vec<_>>()
                .join(" ")
        );
    }
    Ok(())
}

pub fn run(host: &crate::host::Host, config: &std::path::Path, a: LogsArgs) -> Result<()> {
    validate(&a)?;
    let revision = a
        .revision
        .as_deref()
        .map(|r| resolve_revision(host, &a.id, r));
    let args = journalctl_args(&a, revision.as_deref());
    let mut child = Command::new("journalctl")
        .args(&args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("running journalctl (is systemd's journal installed?)")?;
    let stderr = child.stderr.take();
    // Read journalctl's errors beside its output, so that neither pipe can fill up.
    let errs = std::thread::spawn(move || {
        let mut s = String::new();
        if let Some(mut e) = stderr {
            let _ = std::io::Read::read_to_string(&mut e, &mut s);
        }
        s
    });
    let mut fmt = formatter(config, &a);
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let mut shown = 0u64;
    let stdout_pipe = child
        .stdout
        .take()
        .context("journalctl's stdout was not captured")?;
    let reader = BufReader::new(stdout_pipe);
    for line in reader.lines() {
        let line = line.context("reading journalctl's output")?;
        let Some(e) = parse_entry(&line) else {
            continue;
        };
        let text = fmt.render(&e, local_offset(e.usec));
        let mut written = out.write_all(text.as_bytes());
        if a.follow {
            written = written.and_then(|_| out.flush());
        }
        if written.is_err() {
            // The reader went away (`| head`): stop journalctl and end quietly.
            let _ = child.kill();
            let _ = child.wait();
            return Ok(());
        }
        shown += 1;
    }
    let _ = out.flush();
    let status = child.wait().context("waiting for journalctl")?;
    let err = errs.join().unwrap_or_default();
    finish(&args, status, &err, shown)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn entry(usec: u64, process: &str, instance: u32, message: &str) -> Entry {
        Entry {
            usec,
            process: process.into(),
            instance: instance.to_string(),
            revision: "279d9035886d4c0427549863c4c2101e4a63e041".into(),
            message: message.into(),
        }
    }

    #[test]
    fn parses_journalctl_json() {
        let line = r#"{"__CURSOR":"s=1","__REALTIME_TIMESTAMP":"1714564800123456","__MONOTONIC_TIMESTAMP":"1","_BOOT_ID":"x","MESSAGE":"GET /health 200","SHIM_PROCESS":"web","SHIM_INSTANCE":"2","SHIM_REVISION":"rev1"}"#;
        assert_eq!(
            parse_entry(line),
            Some(Entry {
                usec: 1_714_564_800_123_456,
                process: "web".into(),
                instance: "2".into(),
                revision: "rev1".into(),
                message: "GET /health 200".into(),
            })
        );
        // Non-UTF-8 or non-printable data comes as an array of bytes.
        let bin = r#"{"__REALTIME_TIMESTAMP":"1","MESSAGE":[104,105,27,255],"SHIM_PROCESS":"w","SHIM_INSTANCE":"1"}"#;
        assert_eq!(parse_entry(bin).unwrap().message, "hi\u{1b}\u{fffd}");
        // Too large: null. A field given twice: an array of strings.
        let big = r#"{"__REALTIME_TIMESTAMP":"1","MESSAGE":null,"SHIM_PROCESS":["a","b"]}"#;
        let e = parse_entry(big).unwrap();
        assert_eq!(e.message, "[data too large to show]");
        assert_eq!((e.process.as_str(), e.instance.as_str()), ("a", "?"));
        assert_eq!(parse_entry("-- No entries --"), None);
        assert_eq!(parse_entry(r#"{"MESSAGE":"no time"}"#), None);
    }

    #[test]
    fn merged_output_snapshot() {
        let t = 1_714_564_800_000_000;
        let entries = [
            entry(t, "web", 1, "testapp listening on :20000"),
            entry(t + 1_500, "web", 2, "testapp listening on :20001"),
            entry(t + 2_000_000, "worker", 1, "tick\n"),
            entry(t + 2_500_000, "web", 10, "first line\nsecond line\r\n"),
            entry(t + 3_000_000, "web", 2, "GET /health 200"),
        ];
        let mut f = LogFormatter {
            prefix: true,
            time: true,
            width: prefix_width([("web", 10), ("worker", 1)]),
        };
        assert_eq!(f.width, 8);
        let merged: String = entries.iter().map(|e| f.render(e, 0)).collect();
        insta::assert_snapshot!("logs_merged", merged);
        // A service no longer defined: the column widens when it must.
        let mut grow = LogFormatter {
            prefix: true,
            time: false,
            width: 0,
        };
        let grown: String = entries[1..4].iter().map(|e| grow.render(e, 0)).collect();
        assert_eq!(
            grown,
            "web-2 | testapp listening on :20001\n\
             worker-1 | tick\n\
             web-10   | first line\n\
             web-10   | second line\n"
        );

        let mut single = LogFormatter {
            prefix: false,
            time: false,
            width: 0,
        };
        let one: String = entries[..2].iter().map(|e| single.render(e, 0)).collect();
        assert_eq!(
            one,
            "testapp listening on :20000\ntestapp listening on :20001\n"
        );
    }

    #[derive(clap::Parser)]
    struct T {
        #[command(flatten)]
        a: LogsArgs,
    }

    fn parse(args: &[&str]) -> LogsArgs {
        T::try_parse_from(std::iter::once("logs").chain(args.iter().copied()))
            .unwrap()
            .a
    }

    #[test]
    fn journalctl_command_line() {
        let a = parse(&[
            "--id",
            "billing_app",
            "--process",
            "web",
            "--instance",
            "2",
            "-n",
            "50",
            "-f",
            "--since",
            "10m",
        ]);
        assert_eq!(
            journalctl_args(&a, Some("rev1")).join(" "),
            "--no-pager --quiet --all -o json \
             --output-fields=MESSAGE,SHIM_PROCESS,SHIM_INSTANCE,SHIM_REVISION,SHIM_RUN,SHIM_CRON \
             --follow --lines=50 --since=-600s \
             SHIM_SERVICE=billing_app SHIM_PROCESS=web SHIM_REVISION=rev1 SHIM_INSTANCE=2"
        );
        let a = parse(&[
            "--id",
            "x",
            "--since",
            "2024-05-01 12:00",
            "--until",
            "today",
        ]);
        let v = journalctl_args(&a, None);
        assert!(v.contains(&"--since=2024-05-01 12:00".to_string()), "{v:?}");
        assert!(v.contains(&"--until=today".to_string()), "{v:?}");
        assert_eq!(v.last().unwrap(), "SHIM_SERVICE=x");
    }

    #[test]
    fn bad_flags() {
        assert!(T::try_parse_from(["logs", "--id", "x", "--instance", "0"]).is_err());
        assert!(T::try_parse_from(["logs", "--id", "x", "-n", "many"]).is_err());
        assert!(T::try_parse_from(["logs"]).is_err());
        for bad in [
            vec!["--id", "Bad Id"],
            vec!["--id", "x", "--process", "we/b"],
            vec!["--id", "x", "--revision", "a/b"],
            vec!["--id", "x", "--since", " "],
        ] {
            let e = validate(&parse(&bad)).unwrap_err();
            assert_eq!(crate::error::exit_code(&e), 2, "{bad:?}: {e:#}");
        }
    }
}
