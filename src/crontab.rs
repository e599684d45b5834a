//! Crontab parsing and translation to systemd calendar specs. Pure: no I/O.
//!
//! Flow: [`parse_crontab`] walks the text line by line. Blank lines and `#` comments are
//! skipped; `NAME=value` lines set the environment of the lines after them; every other
//! line is a job: five time fields (or an `@keyword`) and a command. Each schedule is
//! parsed into a [`Schedule`] (one set of allowed values per field, as cron keeps them) and
//! [`to_calendar_specs`] turns that into one or more systemd `OnCalendar=` specs whose union
//! fires on exactly the minutes cron would run the job. The first bad line stops the parse
//! with a [`CronError`] naming it, so a bad crontab changes nothing.
//!
//! The semantics follow cronie (the Vixie cron of Fedora and RHEL), read from its
//! `src/entry.c`, `src/env.c` and `src/do_command.c` (<https://github.com/cronie-crond/cronie>),
//! and crontab(5):
//!
//! - **Day-of-month OR day-of-week.** cron sets `DOM_STAR`/`DOW_STAR` when a field's *first
//!   character* is `*`, and matches a day when `(DOM_STAR || DOW_STAR) ? dom && dow : dom ||
//!   dow`. So `0 0 1,15 * 1` runs on the 1st, the 15th and every Monday (two specs), but
//!   `0 0 */2 * 1` runs on odd days that are Mondays (one spec, both restrictions), because
//!   `*/2` counts as a star. We keep exactly that rule. `@weekly`, `@monthly` and `@yearly`
//!   set `DOW_STAR` in cron, which gives them their obvious meaning.
//! - **Steps** are expanded into the set of values, as cron does (`1-30/5` is 1,6,..,26;
//!   `*/7` on minutes is 0,7,..,56, so :56 is followed by :00), and the set is rendered in
//!   systemd syntax: `*`, `a..b`, `a..b/c` with `b` the last value, or a list. Never the
//!   open-ended `a/c`, which systemd mis-schedules when it wraps (see [`render_values`]).
//!   The tests check every rendered spec with `systemd-analyze calendar` (systemd 252 here).
//! - **`N/step`** (no range) is read as `N-last/step`, the meaning systemd's own `N/step`
//!   has. cronie rejects it ("bad minute"), so no crontab written for cronie changes meaning.
//! - **Sunday** is 0 or 7 (`sun`), and a day-of-week `*` is 0-7 as in cron; a range ending
//!   in Sunday written `fri-sun` or `5-0` is read as `5-7`, as cronie 1.6 does.
//! - **`%`** in the command, per crontab(5) and cronie's `do_command.c`: the first unescaped
//!   `%` ends the command, the rest is the job's standard input with every further unescaped
//!   `%` turned into a newline and a final newline added; `\%` is a literal `%` (the
//!   backslash is dropped), any other backslash is kept.
//! - Times are in the host's local time zone, as cron's: specs carry no zone.
//!
//! Refused with an error naming the line: `@reboot` (a timer cannot express it), `CRON_TZ`
//! (timers use the host's time zone), cronie's random `~` ranges, and schedules that can
//! never fire (`0 0 30 2 *`), which cron accepts silently but which are surely mistakes.
//! Not reproduced: cron's special handling of jobs in the hour skipped or repeated by a
//! daylight-saving change (systemd has its own), cron's refusal to run a last line that
//! lacks its newline (we run it), cronie's `-n` job option (it stays in the command), and
//! cronie's refusal of `NAME=` with no value (we read it as empty).

use std::fmt::Write as _;

/// One job of a crontab, ready to become a timer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CronEntry {
    /// 1-based line number in the crontab.
    pub line: usize,
    /// The schedule as written: the five fields (original spacing) or the `@keyword`.
    pub schedule_text: String,
    /// Variables set by the `NAME=value` lines above this one, in first-set order, each with
    /// its latest value (cron replaces a variable in place).
    pub env: Vec<(String, String)>,
    /// The command for `/bin/sh -c`, cut at the first unescaped `%`, `\%` unescaped.
    pub command: String,
    /// What cron would write to the job's standard input (text after the first `%`).
    pub stdin: Option<String>,
    /// systemd `OnCalendar=` specs; the job runs when any of them elapses.
    pub calendars: Vec<String>,
}

/// A line of the crontab that cannot be run as a timer, with why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("crontab line {line}: {text:?}: {reason}")]
pub struct CronError {
    pub line: usize,
    pub text: String,
    pub reason: String,
}

/// A set of small integers (0..=63), one bit each.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct Values(u64);

impl Values {
    fn range(lo: u32, hi: u32) -> Values {
        Values((lo..=hi).fold(0, |bits, v| bits | 1 << v))
    }
    fn insert(&mut self, v: u32) {
        self.0 |= 1 << v;
    }
    fn contains(self, v: u32) -> bool {
        self.0 & (1 << v) != 0
    }
    fn iter(self) -> impl Iterator<Item = u32> {
        (0..64).filter(move |&v| self.contains(v))
    }
}

/// A parsed schedule: the values each field allows, as cron's bit sets, and cron's star flags.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schedule {
    minutes: Values,
    hours: Values,
    /// 1..=31
    days_of_month: Values,
    /// 1..=12
    months: Values,
    /// 0..=6, 0 is Sunday (a 7 is folded into 0 when parsing).
    days_of_week: Values,
    /// The day-of-month field started with `*` (cron's `DOM_STAR`).
    dom_star: bool,
    /// The day-of-week field started with `*` (cron's `DOW_STAR`).
    dow_star: bool,
}

const MONTH_NAMES: [&str; 12] = [
    "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
];
const DAY_NAMES: [&str; 7] = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"];

/// One of the five time fields: its name in messages, its bounds, its value names.
struct Field {
    name: &'static str,
    low: u32,
    high: u32,
    names: &'static [&'static str],
}

const MINUTE: Field = Field {
    name: "minute",
    low: 0,
    high: 59,
    names: &[],
};
const HOUR: Field = Field {
    name: "hour",
    low: 0,
    high: 23,
    names: &[],
};
const DAY_OF_MONTH: Field = Field {
    name: "day-of-month",
    low: 1,
    high: 31,
    names: &[],
};
const MONTH: Field = Field {
    name: "month",
    low: 1,
    high: 12,
    names: &MONTH_NAMES,
};
// 7 is Sunday too, as in cron's LAST_DOW.
const DAY_OF_WEEK: Field = Field {
    name: "day-of-week",
    low: 0,
    high: 7,
    names: &DAY_NAMES,
};

const NEVER_RUNS: &str = "never runs: no month in the month field has a day of the \
                          day-of-month field (cron accepts this line and never runs it)";

const REBOOT: &str =
    "@reboot is not supported (shim runs jobs as systemd timers; use a process instead)";

const KEYWORDS: &str = "@hourly, @daily, @midnight, @weekly, @monthly, @yearly or @annually";

/// Parses a whole crontab. Stops at the first line that cannot become a timer.
pub fn parse_crontab(text: &str) -> Result<Vec<CronEntry>, CronError> {
    let mut env: Vec<(String, String)> = Vec::new();
    let mut entries = Vec::new();
    for (index, raw) in text.lines().enumerate() {
        let line = index + 1;
        let err = |reason: String| CronError {
            line,
            text: raw.to_string(),
            reason,
        };
        let body = raw.trim_start_matches([' ', '\t']);
        if body.is_empty() || body.starts_with('#') {
            continue;
        }
        if let Some(assignment) = parse_env_line(body) {
            let (name, value) = assignment.map_err(err)?;
            match env.iter_mut().find(|(n, _)| *n == name) {
                Some(slot) => slot.1 = value,
                None => env.push((name, value)),
            }
            continue;
        }
        let (schedule_text, schedule, rest) = split_schedule(body).map_err(err)?;
        let calendars = to_calendar_specs(&schedule);
        if calendars.is_empty() {
            return Err(err(NEVER_RUNS.to_string()));
        }
        if rest.is_empty() {
            return Err(err("missing command after the schedule".to_string()));
        }
        if rest.starts_with('*') {
            // cron's own check: "catch a common typo".
            return Err(err(
                "the command starts with '*': is there a sixth time field?".to_string(),
            ));
        }
        let (command, stdin) = split_percent(rest);
        if command.trim().is_empty() {
            return Err(err("empty command before '%'".to_string()));
        }
        entries.push(CronEntry {
            line,
            schedule_text: schedule_text.to_string(),
            env: env.clone(),
            command,
            stdin,
            calendars,
        });
    }
    Ok(entries)
}

/// Parses a schedule alone: five fields or an `@keyword`, nothing after it.
#[cfg(test)]
pub fn parse_schedule(text: &str) -> Result<Schedule, String> {
    let (_, schedule, rest) = split_schedule(text.trim())?;
    if !rest.is_empty() {
        return Err(format!("unexpected {rest:?} after the schedule"));
    }
    Ok(schedule)
}

/// systemd `OnCalendar=` specs whose union elapses exactly when cron runs `schedule`, in
/// the local time zone. Empty when the schedule can never fire (`0 0 31 2 *`).
pub fn to_calendar_specs(schedule: &Schedule) -> Vec<String> {
    let s = schedule;
    let time = format!(
        "{}:{}:00",
        render_values(s.hours, &HOUR),
        render_values(s.minutes, &MINUTE)
    );
    let all_days = Values::range(1, 31);
    let all_weekdays = Values::range(0, 6);
    let spec = |days: Values, weekdays: Values| -> Option<String> {
        if !day_occurs(days, s.months) {
            return None;
        }
        let mut out = String::new();
        if weekdays != all_weekdays {
            out.push_str(&render_weekdays(weekdays));
            out.push(' ');
        }
        let _ = write!(
            out,
            "*-{}-{} {time}",
            render_values(s.months, &MONTH),
            render_values(days, &DAY_OF_MONTH)
        );
        Some(out)
    };
    let specs = if s.dom_star || s.dow_star {
        // cron: both restrictions must hold (one of them may be "every day").
        vec![spec(s.days_of_month, s.days_of_week)]
    } else if s.days_of_month == all_days || s.days_of_week == all_weekdays {
        // cron: either may hold, and one of them holds every day.
        vec![spec(all_days, all_weekdays)]
    } else {
        // cron: either may hold. systemd ANDs the weekday with the date, so one spec each.
        vec![
            spec(s.days_of_month, all_weekdays),
            spec(all_days, s.days_of_week),
        ]
    };
    specs.into_iter().flatten().collect()
}

/// Whether some month of `months` has one of `days` (February counts its 29th).
fn day_occurs(days: Values, months: Values) -> bool {
    months.iter().any(|month| {
        let last = match month {
            2 => 29,
            4 | 6 | 9 | 11 => 30,
            _ => 31,
        };
        days.iter().any(|day| day <= last)
    })
}

/// Splits `@keyword rest` or `f1 f2 f3 f4 f5 rest` into the schedule as written, the parsed
/// schedule and the rest of the line (leading blanks skipped).
fn split_schedule(body: &str) -> Result<(&str, Schedule, &str), String> {
    if body.starts_with('@') {
        let (keyword, rest) = take_word(body);
        let schedule = keyword_schedule(keyword)?;
        return Ok((keyword, schedule, rest));
    }
    let mut rest = body;
    let mut fields = [""; 5];
    for (i, field) in fields.iter_mut().enumerate() {
        let (word, after) = take_word(rest);
        if word.is_empty() {
            return Err(format!(
                "expected five time fields (minute hour day-of-month month day-of-week) and a \
                 command, found {i} field{}",
                if i == 1 { "" } else { "s" }
            ));
        }
        *field = word;
        rest = after;
    }
    let end = body.len() - rest.len();
    let schedule_text = body[..end].trim_end_matches([' ', '\t']);
    let [minute, hour, dom, month, dow] = fields;
    let schedule = Schedule {
        minutes: parse_field(minute, &MINUTE)?,
        hours: parse_field(hour, &HOUR)?,
        days_of_month: parse_field(dom, &DAY_OF_MONTH)?,
        months: parse_field(month, &MONTH)?,
        days_of_week: fold_sunday(parse_field(dow, &DAY_OF_WEEK)?),
        dom_star: dom.starts_with('*'),
        dow_star: dow.starts_with('*'),
    };
    Ok((schedule_text, schedule, rest))
}

/// The first blank-separated word and the rest with its leading blanks skipped.
fn take_word(s: &str) -> (&str, &str) {
    let end = s.find([' ', '\t']).unwrap_or(s.len());
    (&s[..end], s[end..].trim_start_matches([' ', '\t']))
}

/// The `@keyword` schedules, with the star flags cronie's entry.c gives them.
fn keyword_schedule(keyword: &str) -> Result<Schedule, String> {
    let zero = Values::range(0, 0);
    let every = Schedule {
        minutes: zero,
        hours: Values::range(0, 23),
        days_of_month: Values::range(1, 31),
        months: Values::range(1, 12),
        days_of_week: Values::range(0, 6),
        dom_star: false,
        dow_star: false,
    };
    let daily = Schedule {
        hours: zero,
        ..every.clone()
    };
    Ok(match keyword {
        "@hourly" => every,
        "@daily" | "@midnight" => daily,
        "@weekly" => Schedule {
            days_of_week: zero,
            dow_star: true,
            ..daily
        },
        "@monthly" => Schedule {
            days_of_month: Values::range(1, 1),
            dow_star: true,
            ..daily
        },
        "@yearly" | "@annually" => Schedule {
            days_of_month: Values::range(1, 1),
            months: Values::range(1, 1),
            dow_star: true,
            ..daily
        },
        "@reboot" => return Err(REBOOT.to_string()),
        _ => {
            return Err(format!(
                "unknown schedule {keyword:?} (expected {KEYWORDS})"
            ))
        }
    })
}

/// Sunday is both 0 and 7 in cron; keep 0 only.
fn fold_sunday(days: Values) -> Values {
    let mut out = Values(days.0 & !(1 << 7));
    if days.contains(7) {
        out.insert(0);
    }
    out
}

/// `list = range {"," range}`, `range = "*" ["/" step] | value ["-" value] ["/" step]`.
fn parse_field(text: &str, field: &Field) -> Result<Values, String> {
    let bad = |why: String| format!("{} field {text:?}: {why}", field.name);
    let mut values = Values::default();
    for part in text.split(',') {
        if part.is_empty() {
            return Err(bad("empty list element".to_string()));
        }
        if part.contains('~') {
            return Err(bad("random ranges (~) are not supported".to_string()));
        }
        let (base, step) = match part.split_once('/') {
            Some((base, step)) => {
                let step = parse_number(step)
                    .ok_or_else(|| bad(format!("step {step:?} is not a number")))?;
                if step == 0 {
                    return Err(bad("step must be at least 1".to_string()));
                }
                (base, Some(step))
            }
            None => (part, None),
        };
        let (lo, hi) = if base == "*" {
            (field.low, field.high)
        } else if let Some((a, b)) = base.split_once('-') {
            let lo = parse_value(a, field).map_err(&bad)?;
            let mut hi = parse_value(b, field).map_err(&bad)?;
            if field.name == DAY_OF_WEEK.name && hi == 0 && lo > 0 {
                hi = 7; // `fri-sun`: cronie 1.6 reads a range ending in Sunday as ending in 7.
            }
            if lo > hi {
                return Err(bad(format!("range {a}-{b} is reversed")));
            }
            (lo, hi)
        } else {
            let v = parse_value(base, field).map_err(&bad)?;
            // `N/step` runs to the end of the field; a plain `N` is just N.
            (v, if step.is_some() { field.high } else { v })
        };
        let step = step.unwrap_or(1);
        let mut v = lo;
        while v <= hi {
            values.insert(v);
            v = v.saturating_add(step);
        }
    }
    Ok(values)
}

/// A number within the field's bounds, or one of its names (any case).
fn parse_value(text: &str, field: &Field) -> Result<u32, String> {
    let v = match parse_number(text) {
        Some(v) => v,
        None => {
            let index = field
                .names
                .iter()
                .position(|name| name.eq_ignore_ascii_case(text))
                .ok_or_else(|| {
                    if field.names.is_empty() {
                        format!("{text:?} is not a number")
                    } else {
                        format!(
                            "{text:?} is not a number or a {} name ({}..{})",
                            field.name,
                            field.names[0],
                            field.names[field.names.len() - 1]
                        )
                    }
                })?;
            return Ok(index as u32 + field.low);
        }
    };
    if v < field.low || v > field.high {
        return Err(format!("{v} is out of range {}-{}", field.low, field.high));
    }
    Ok(v)
}

fn parse_number(text: &str) -> Option<u32> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    // Long digit strings saturate and then fail the range check.
    Some(text.parse().unwrap_or(u32::MAX))
}

/// A value set in systemd's calendar syntax, two digits per value like systemd's normalized
/// form: `*`, `a..b`, `a..b/c`, or a list of values and `a..b` runs.
///
/// Never the open-ended `a/c`: systemd 252 (and still 258) skips values when such a
/// repetition runs past the end of its field and carries into the next hour, day or month:
/// `*:00/7` after 23:58 next fires at 00:07, not 00:00, and `*-*-01/7` skips January 1st
/// (<https://github.com/systemd/systemd/issues/40260>; #22665 was an earlier case). With the
/// range bounded by its last value the search never runs past the field's end.
fn render_values(values: Values, field: &Field) -> String {
    let list: Vec<u32> = values.iter().collect();
    if values == Values::range(field.low, field.high) {
        return "*".to_string();
    }
    if list.len() >= 3 {
        let step = list[1] - list[0];
        if list.windows(2).all(|w| w[1] - w[0] == step) {
            let (first, last) = (list[0], list[list.len() - 1]);
            return match step {
                1 => format!("{first:02}..{last:02}"),
                _ => format!("{first:02}..{last:02}/{step}"),
            };
        }
    }
    runs(&list)
        .into_iter()
        .map(|(a, b)| match b - a {
            0 => format!("{a:02}"),
            1 => format!("{a:02},{b:02}"),
            _ => format!("{a:02}..{b:02}"),
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// Maximal runs of consecutive values in a sorted list.
fn runs(list: &[u32]) -> Vec<(u32, u32)> {
    let mut out: Vec<(u32, u32)> = Vec::new();
    for &v in list {
        match out.last_mut() {
            Some((_, end)) if *end + 1 == v => *end = v,
            _ => out.push((v, v)),
        }
    }
    out
}

/// Weekdays in systemd's syntax. systemd's week starts on Monday and its ranges do not wrap,
/// so cron's 0 (Sunday) goes last: {5,6,0} is `Fri..Sun`.
fn render_weekdays(days: Values) -> String {
    const NAMES: [&str; 7] = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"];
    let list: Vec<u32> = (0..7).filter(|&i| days.contains((i + 1) % 7)).collect();
    runs(&list)
        .into_iter()
        .map(|(a, b)| {
            let (first, last) = (NAMES[a as usize], NAMES[b as usize]);
            match b - a {
                0 => first.to_string(),
                1 => format!("{first},{last}"),
                _ => format!("{first}..{last}"),
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// `NAME=value` per cronie's env.c: optional blanks around `=`, name and value optionally in
/// matching quotes (removed), an unquoted value loses its trailing blanks. `None` when the
/// line is not an assignment (then it is a job line).
fn parse_env_line(line: &str) -> Option<Result<(String, String), String>> {
    let (name, rest) = match line.chars().next()? {
        q @ ('"' | '\'') => {
            let close = line[1..].find(q)? + 1;
            let name = &line[1..close];
            if name.contains('=') {
                return None;
            }
            (name, &line[close + 1..])
        }
        _ => {
            let end = line
                .find(|c: char| c == '=' || c.is_ascii_whitespace())
                .unwrap_or(line.len());
            (&line[..end], &line[end..])
        }
    };
    let rest = rest.trim_start().strip_prefix('=')?.trim_start();
    let value = match rest.chars().next() {
        Some(q @ ('"' | '\'')) => {
            let close = rest[1..].find(q)? + 1;
            if !rest[close + 1..].trim().is_empty() {
                return None;
            }
            &rest[1..close]
        }
        // cronie does not take `NAME=` with nothing after it as an assignment (and then
        // fails it as a job); an empty value is what anyone writing it means.
        _ => rest.trim_end(),
    };
    let valid = name.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    Some(if !valid {
        Err(format!(
            "invalid variable name {name:?} (use letters, digits and '_')"
        ))
    } else if name == "CRON_TZ" {
        Err("CRON_TZ is not supported (jobs run on the host's time zone)".to_string())
    } else {
        Ok((name.to_string(), value.to_string()))
    })
}

/// The command and its standard input, per crontab(5) and cronie's do_command.c: the first
/// unescaped `%` ends the command; in the command `\%` becomes `%` and other backslashes
/// stay. In the input, `%` becomes a newline, `\%` a `%`, and a newline is added at the end
/// if the input does not end with one. No input when nothing follows the `%`.
fn split_percent(raw: &str) -> (String, Option<String>) {
    let mut command = String::new();
    let mut input = None;
    let mut escaped = false;
    for (i, ch) in raw.char_indices() {
        if escaped {
            if ch == '%' {
                command.pop();
            }
            command.push(ch);
            escaped = false;
        } else if ch == '\\' {
            command.push(ch);
            escaped = true;
        } else if ch == '%' {
            input = Some(&raw[i + 1..]);
            break;
        } else {
            command.push(ch);
        }
    }
    let stdin = input.filter(|s| !s.is_empty()).map(|input| {
        let mut out = String::new();
        let mut need_newline = false;
        let mut escaped = false;
        for mut ch in input.chars() {
            if escaped {
                if ch != '%' {
                    out.push('\\');
                }
            } else if ch == '%' {
                ch = '\n';
            }
            // As cronie does: a backslash is held back until the next character is known.
            escaped = ch == '\\';
            if !escaped {
                out.push(ch);
                need_newline = ch != '\n';
            }
        }
        if escaped {
            out.push('\\');
        }
        if need_newline {
            out.push('\n');
        }
        out
    });
    (command, stdin)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The calendar specs of one schedule, given as a crontab line without its command.
    fn specs(schedule: &str) -> Vec<String> {
        let entries = parse_crontab(&format!("{schedule} true\n"))
            .unwrap_or_else(|e| panic!("{schedule}: {e}"));
        assert_eq!(entries.len(), 1);
        entries[0].calendars.clone()
    }

    fn error(text: &str) -> String {
        parse_crontab(text).unwrap_err().to_string()
    }

    #[test]
    fn translates_fields() {
        let cases: &[(&str, &[&str])] = &[
            ("* * * * *", &["*-*-* *:*:00"]),
            ("*/15 * * * *", &["*-*-* *:00..45/15:00"]),
            ("*/7 * * * *", &["*-*-* *:00..56/7:00"]),
            ("5/10 * * * *", &["*-*-* *:05..55/10:00"]),
            ("1-30/5 * * * *", &["*-*-* *:01..26/5:00"]),
            ("0,30 * * * *", &["*-*-* *:00,30:00"]),
            ("0-4,10,20-22 * * * *", &["*-*-* *:00..04,10,20..22:00"]),
            ("0-59 0-23 1-31 1-12 0-7", &["*-*-* *:*:00"]),
            ("59 23 31 12 *", &["*-12-31 23:59:00"]),
            // Steps beyond the field (cron warns, and runs the first value only).
            ("5/99999999999 * * * *", &["*-*-* *:05:00"]),
            ("0-10/20 * * * *", &["*-*-* *:00:00"]),
            ("0 */2 * * *", &["*-*-* 00..22/2:00:00"]),
            ("0 9-17/2 * * mon-fri", &["Mon..Fri *-*-* 09..17/2:00:00"]),
            ("0 0 29 2 *", &["*-02-29 00:00:00"]),
            ("0 12 * jan,jul *", &["*-01,07-* 12:00:00"]),
            ("0 12 * JAN-MAR/2 *", &["*-01,03-* 12:00:00"]),
            ("0 0 1 */3 *", &["*-01..10/3-01 00:00:00"]),
            ("0 0 31 * *", &["*-*-31 00:00:00"]),
            ("0 0 5/10 * *", &["*-*-05..25/10 00:00:00"]),
            ("0 0 * * 1,3,5", &["Mon,Wed,Fri *-*-* 00:00:00"]),
            ("0 0 * * sat,sun", &["Sat,Sun *-*-* 00:00:00"]),
            ("0 0 * * 6,0,1", &["Mon,Sat,Sun *-*-* 00:00:00"]),
        ];
        for (schedule, want) in cases {
            assert_eq!(specs(schedule), *want, "{schedule}");
        }
    }

    #[test]
    fn sunday_is_0_or_7_and_ends_ranges() {
        for schedule in [
            "0 0 * * 7",
            "0 0 * * 0",
            "0 0 * * 0,7",
            "0 0 * * SUN",
            "0 0 * * */7",
        ] {
            assert_eq!(specs(schedule), ["Sun *-*-* 00:00:00"], "{schedule}");
        }
        for schedule in [
            "0 0 * * 5-7",
            "0 0 * * fri-sun",
            "0 0 * * 5-0",
            "0 0 * * Fri-Sun",
        ] {
            assert_eq!(specs(schedule), ["Fri..Sun *-*-* 00:00:00"], "{schedule}");
        }
        // `*` is 0-7 in cron; with a step that changes nothing since 7 is Sunday again.
        assert_eq!(specs("0 0 * * */3"), ["Wed,Sat,Sun *-*-* 00:00:00"]);
        assert_eq!(specs("0 0 * * 1/2"), ["Mon,Wed,Fri,Sun *-*-* 00:00:00"]);
    }

    #[test]
    fn day_of_month_or_day_of_week() {
        // Both restricted: either matches, so two specs.
        assert_eq!(
            specs("0 0 1,15 * 1"),
            ["*-*-01,15 00:00:00", "Mon *-*-* 00:00:00"]
        );
        assert_eq!(
            specs("30 4 1-7 * sun"),
            ["*-*-01..07 04:30:00", "Sun *-*-* 04:30:00"]
        );
        // The month restriction applies to both.
        assert_eq!(
            specs("0 0 13 1-6 fri"),
            ["*-01..06-13 00:00:00", "Fri *-01..06-* 00:00:00"]
        );
        // A field starting with `*` counts as unrestricted (cron's DOM_STAR/DOW_STAR):
        // both must match.
        assert_eq!(specs("0 0 */2 * 1"), ["Mon *-*-01..31/2 00:00:00"]);
        assert_eq!(specs("*/2 0 * * */3"), ["Wed,Sat,Sun *-*-* 00:00..58/2:00"]);
        assert_eq!(specs("0 0 1 * */2"), ["Tue,Thu,Sat,Sun *-*-01 00:00:00"]);
        // One side matches every day: so does the union.
        assert_eq!(specs("0 0 1-31 * mon"), ["*-*-* 00:00:00"]);
        assert_eq!(specs("0 0 1 * 0-6"), ["*-*-* 00:00:00"]);
        assert_eq!(specs("0 0 1 * mon-sun"), ["*-*-* 00:00:00"]);
        // A day that never occurs drops out of the union.
        assert_eq!(specs("0 0 30 2 mon"), ["Mon *-02-* 00:00:00"]);
    }

    #[test]
    fn keywords() {
        let cases = [
            ("@hourly", "*-*-* *:00:00"),
            ("@daily", "*-*-* 00:00:00"),
            ("@midnight", "*-*-* 00:00:00"),
            ("@weekly", "Sun *-*-* 00:00:00"),
            ("@monthly", "*-*-01 00:00:00"),
            ("@yearly", "*-01-01 00:00:00"),
            ("@annually", "*-01-01 00:00:00"),
        ];
        for (schedule, want) in cases {
            assert_eq!(specs(schedule), [want], "{schedule}");
        }
    }

    #[test]
    fn parses_env_comments_and_commands() {
        let text = "# generated by bin/generate-cron\n\
                    \n\
                    SHELL=/bin/bash\n\
                    MAILTO = \"ops@example.com\"  \n\
                    \t# indented comment\n\
                    0 5\t* * *   bin/report --daily  # not a comment\n\
                    SHELL='/bin/sh'\n\
                    A=b c  \n\
                    EMPTY=\n\
                    \"QUOTED\" = ' spaced '\n\
                    @hourly bin/tick\n";
        let entries = parse_crontab(text).unwrap();
        let env = |pairs: &[(&str, &str)]| -> Vec<(String, String)> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        assert_eq!(
            entries,
            [
                CronEntry {
                    line: 6,
                    schedule_text: "0 5\t* * *".to_string(),
                    env: env(&[("SHELL", "/bin/bash"), ("MAILTO", "ops@example.com")]),
                    command: "bin/report --daily  # not a comment".to_string(),
                    stdin: None,
                    calendars: vec!["*-*-* 05:00:00".to_string()],
                },
                CronEntry {
                    line: 11,
                    schedule_text: "@hourly".to_string(),
                    env: env(&[
                        ("SHELL", "/bin/sh"),
                        ("MAILTO", "ops@example.com"),
                        ("A", "b c"),
                        ("EMPTY", ""),
                        ("QUOTED", " spaced "),
                    ]),
                    command: "bin/tick".to_string(),
                    stdin: None,
                    calendars: vec!["*-*-* *:00:00".to_string()],
                },
            ]
        );
        // CRLF line ends and a missing final newline are fine.
        let entries = parse_crontab("X=1\r\n* * * * * a\r\n@daily b").unwrap();
        assert_eq!(entries[0].command, "a");
        assert_eq!(entries[1].command, "b");
        assert_eq!(entries[1].line, 3);
        assert_eq!(parse_crontab("# nothing\n\n").unwrap(), []);
    }

    #[test]
    fn percent_is_stdin() {
        let split = |cmd: &str| {
            let entry = parse_crontab(&format!("* * * * * {cmd}\n"))
                .unwrap()
                .remove(0);
            (entry.command, entry.stdin)
        };
        let some = |s: &str| Some(s.to_string());
        assert_eq!(
            split("date +\\%Y-\\%m-\\%d"),
            ("date +%Y-%m-%d".into(), None)
        );
        assert_eq!(
            split("mail -s hi root%line one%line two"),
            ("mail -s hi root".into(), some("line one\nline two\n"))
        );
        assert_eq!(split("cat%"), ("cat".into(), None));
        assert_eq!(split("cat%a%"), ("cat".into(), some("a\n")));
        assert_eq!(
            split("cat%100\\% sure"),
            ("cat".into(), some("100% sure\n"))
        );
        assert_eq!(split("cat%a\\b"), ("cat".into(), some("a\\b\n")));
        assert_eq!(split("cat%a\\"), ("cat".into(), some("a\\\n")));
        // Backslashes not before a `%` stay, in the command too.
        assert_eq!(
            split("printf 'a\\n' | wc"),
            ("printf 'a\\n' | wc".into(), None)
        );
        assert_eq!(split("echo \\\\%in"), ("echo \\\\".into(), some("in\n")));
    }

    #[test]
    fn errors_name_the_line() {
        assert_eq!(
            error("# jobs\nA=1\n\n@reboot bin/x\n"),
            "crontab line 4: \"@reboot bin/x\": @reboot is not supported (shim runs jobs as \
             systemd timers; use a process instead)"
        );
        let cases = [
            ("61 * * * * x", "minute field \"61\": 61 is out of range 0-59"),
            ("0 24 * * * x", "hour field \"24\": 24 is out of range 0-23"),
            ("0 0 0 * * x", "day-of-month field \"0\": 0 is out of range 1-31"),
            ("0 0 32 * * x", "day-of-month field \"32\": 32 is out of range 1-31"),
            ("0 0 * 13 * x", "month field \"13\": 13 is out of range 1-12"),
            ("0 0 * * 8 x", "day-of-week field \"8\": 8 is out of range 0-7"),
            ("0 5-2 * * * x", "hour field \"5-2\": range 5-2 is reversed"),
            ("0 0 * * sat-mon x", "day-of-week field \"sat-mon\": range sat-mon is reversed"),
            ("*/0 * * * * x", "minute field \"*/0\": step must be at least 1"),
            ("*/x * * * * x", "minute field \"*/x\": step \"x\" is not a number"),
            ("1-2/ * * * * x", "minute field \"1-2/\": step \"\" is not a number"),
            ("1,,2 * * * * x", "minute field \"1,,2\": empty list element"),
            ("1, * * * * x", "minute field \"1,\": empty list element"),
            ("mon * * * * x", "minute field \"mon\": \"mon\" is not a number"),
            ("-1 * * * * x", "minute field \"-1\": \"\" is not a number"),
            ("0-1234567890123 * * * * x", "minute field \"0-1234567890123\": 4294967295 is out of range 0-59"),
            (
                "0 0 * foo * x",
                "month field \"foo\": \"foo\" is not a number or a month name (jan..dec)",
            ),
            (
                "0 0 * * monday x",
                "day-of-week field \"monday\": \"monday\" is not a number or a day-of-week \
                 name (sun..sat)",
            ),
            ("0~30 * * * * x", "minute field \"0~30\": random ranges (~) are not supported"),
            ("* * * * *", "missing command after the schedule"),
            ("@daily", "missing command after the schedule"),
            ("@daily   ", "missing command after the schedule"),
            (
                "* * * *",
                "expected five time fields (minute hour day-of-month month day-of-week) and a \
                 command, found 4 fields",
            ),
            (
                "* * * * * * x",
                "the command starts with '*': is there a sixth time field?",
            ),
            (
                "@every 5m x",
                "unknown schedule \"@every\" (expected @hourly, @daily, @midnight, @weekly, \
                 @monthly, @yearly or @annually)",
            ),
            ("@Daily x", "unknown schedule \"@Daily\" (expected @hourly, @daily, @midnight, @weekly, @monthly, @yearly or @annually)"),
            ("* * * * * %in", "empty command before '%'"),
            (
                "0 0 30 2 * x",
                "never runs: no month in the month field has a day of the day-of-month field \
                 (cron accepts this line and never runs it)",
            ),
            (
                "0 0 31 4,6,9,11 * x",
                "never runs: no month in the month field has a day of the day-of-month field \
                 (cron accepts this line and never runs it)",
            ),
            ("CRON_TZ=UTC", "CRON_TZ is not supported (jobs run on the host's time zone)"),
            ("1A=x", "invalid variable name \"1A\" (use letters, digits and '_')"),
            ("=x", "invalid variable name \"\" (use letters, digits and '_')"),
            // Not an assignment (text after the closing quote), so a job line, and a bad one.
            (
                "A=\"x\" y",
                "expected five time fields (minute hour day-of-month month day-of-week) and a \
                 command, found 2 fields",
            ),
        ];
        for (line, reason) in cases {
            let text = format!("# header\n{line}\n");
            assert_eq!(
                error(&text),
                format!("crontab line 2: {line:?}: {reason}"),
                "{line}"
            );
        }
    }

    #[test]
    fn the_first_bad_line_and_field_stop_the_parse() {
        let text = "* * * * * ok\n61 * * * 8 bad\n@reboot also bad\n";
        let err = parse_crontab(text).unwrap_err();
        assert_eq!(err.line, 2);
        assert_eq!(err.reason, "minute field \"61\": 61 is out of range 0-59");
    }

    #[test]
    fn parse_schedule_alone() {
        let schedule = parse_schedule("  0 0 1,15 * 1 ").unwrap();
        assert_eq!(
            to_calendar_specs(&schedule),
            ["*-*-01,15 00:00:00", "Mon *-*-* 00:00:00"]
        );
        assert_eq!(
            to_calendar_specs(&parse_schedule("0 0 31 2 *").unwrap()),
            Vec::<String>::new()
        );
        assert_eq!(
            parse_schedule("* * * * * x").unwrap_err(),
            "unexpected \"x\" after the schedule"
        );
    }

    /// An independent cron, written from crontab(5) without any of the code above: each
    /// field becomes a table of booleans, and a minute runs the job when the tables say so.
    mod reference {
        pub struct Job {
            minute: Vec<bool>,
            hour: Vec<bool>,
            dom: Vec<bool>,
            month: Vec<bool>,
            dow: Vec<bool>,
            dom_any: bool,
            dow_any: bool,
        }

        const MONTHS: &str = "jan feb mar apr may jun jul aug sep oct nov dec";
        const DAYS: &str = "sun mon tue wed thu fri sat";

        fn number(text: &str, names: &str, first: usize) -> usize {
            let lower = text.to_lowercase();
            match names.split(' ').position(|n| n == lower) {
                Some(i) => i + first,
                None => text.parse().unwrap(),
            }
        }

        fn table(text: &str, first: usize, last: usize, names: &str) -> Vec<bool> {
            let mut on = vec![false; last + 1];
            for item in text.split(',') {
                let (range, step) = match item.find('/') {
                    Some(i) => (&item[..i], item[i + 1..].parse().unwrap()),
                    None => (item, 1),
                };
                let (from, mut to) = if range == "*" {
                    (first, last)
                } else if let Some(i) = range.find('-') {
                    (
                        number(&range[..i], names, first),
                        number(&range[i + 1..], names, first),
                    )
                } else {
                    let n = number(range, names, first);
                    (n, if item.contains('/') { last } else { n })
                };
                if names == DAYS && to == 0 && from > 0 {
                    to = 7; // `fri-sun`
                }
                for v in (from..=to).step_by(step) {
                    on[v] = true;
                }
            }
            on
        }

        pub fn job(schedule: &str) -> Job {
            let fields = match schedule {
                "@hourly" => "0 * * * *",
                "@daily" | "@midnight" => "0 0 * * *",
                "@weekly" => "0 0 * * 0",
                "@monthly" => "0 0 1 * *",
                "@yearly" | "@annually" => "0 0 1 1 *",
                other => other,
            };
            let f: Vec<&str> = fields.split_whitespace().collect();
            Job {
                minute: table(f[0], 0, 59, ""),
                hour: table(f[1], 0, 23, ""),
                dom: table(f[2], 1, 31, ""),
                month: table(f[3], 1, 12, MONTHS),
                dow: table(f[4], 0, 7, DAYS),
                dom_any: f[2].starts_with('*'),
                dow_any: f[4].starts_with('*'),
            }
        }

        /// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm).
        pub fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
            let y = if m <= 2 { y - 1 } else { y };
            let era = y.div_euclid(400);
            let yoe = y - era * 400;
            let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d - 1;
            let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
            era * 146097 + doe - 719468
        }

        pub fn civil_from_days(z: i64) -> (i64, i64, i64) {
            let z = z + 719468;
            let era = z.div_euclid(146097);
            let doe = z - era * 146097;
            let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
            let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
            let mp = (5 * doy + 2) / 153;
            let d = doy - (153 * mp + 2) / 5 + 1;
            let m = if mp < 10 { mp + 3 } else { mp - 9 };
            (
                if m <= 2 {
                    yoe + era * 400 + 1
                } else {
                    yoe + era * 400
                },
                m,
                d,
            )
        }

        /// The first `n` run times (seconds since the epoch, UTC) strictly after `after`.
        pub fn next_runs(job: &Job, after: i64, n: usize) -> Vec<i64> {
            let first_minute = after.div_euclid(60) + 1;
            let mut runs = Vec::new();
            let mut day = first_minute.div_euclid(1440);
            while runs.len() < n && day < first_minute / 1440 + 366 * 400 {
                let (_, m, d) = civil_from_days(day);
                let weekday = (day + 4).rem_euclid(7) as usize; // 1970-01-01 was a Thursday
                let dom_ok = job.dom[d as usize];
                let dow_ok = job.dow[weekday] || (weekday == 0 && job.dow[7]);
                let day_ok = if job.dom_any || job.dow_any {
                    dom_ok && dow_ok
                } else {
                    dom_ok || dow_ok
                };
                if job.month[m as usize] && day_ok {
                    for minute_of_day in 0..1440 {
                        let minute = day * 1440 + minute_of_day;
                        if minute >= first_minute
                            && job.hour[(minute_of_day / 60) as usize]
                            && job.minute[(minute_of_day % 60) as usize]
                            && runs.len() < n
                        {
                            runs.push(minute * 60);
                        }
                    }
                }
                day += 1;
            }
            runs
        }
    }

    /// Lines whose translation is checked against systemd itself.
    const CORPUS: &[&str] = &[
        "* * * * *",
        "*/15 * * * *",
        "*/7 * * * *",
        "5/10 * * * *",
        "1-30/5 * * * *",
        "0,30 * * * *",
        "0-4,10,20-22 * * * *",
        "1,2,3,5,8,13,21,34,55 * * * *",
        "59 23 * * *",
        "0 */2 * * *",
        "0 0-23/5 * * *",
        "10 */6 * * sat,sun",
        "15 9-17/2 * * mon-fri",
        "0 9-17/2 * * mon-fri",
        "0 22 * * 1-5",
        "0 0 1,15 * 1",
        "30 4 1-7 * sun",
        "0 0 13 * fri",
        "0 12 15 * Wed,Fri",
        "0 0 1,2 * 6,0",
        "0 0 1-7 * 1",
        "0 0 29 2 *",
        "0 0 29 2 1",
        "0 0 30 2 mon",
        "0 12 * jan,jul *",
        "0 6 * JAN-MAR/2 *",
        "0 0 1 */3 *",
        "0 0 1 1/4 *",
        "0 0 31 * *",
        "0 0 31 4,6,9,11,12 *",
        "45 23 28-31 * *",
        "0 0 */10 * *",
        "0 4 */2 * *",
        "0 4 */7 * *",
        "0 4 2/3 * *",
        "*/8 */5 * * *",
        "0 0 5/10 * *",
        "0 0 */31 * *",
        "0 4 8-14 * *",
        "0 0 * * 7",
        "0 0 * * 0,7",
        "30 2 * * SUN",
        "0 0 * * 1,3,5",
        "0 0 * * */7",
        "0 0 * * fri-sun",
        "0 0 * * 5-7",
        "0 0 * * 5-0",
        "0 0 * * 1/2",
        "*/2 0 * * */3",
        "0 0 */2 * 1",
        "0 0 1 * */2",
        "0 0 * 2 */2",
        "0 0 1-31 * mon",
        "0 0 1 * 0-6",
        "@hourly",
        "@daily",
        "@midnight",
        "@weekly",
        "@monthly",
        "@yearly",
        "@annually",
    ];

    /// Start times: around a leap day, a year end (not on a minute boundary), a month start,
    /// the end of a 30-day month and of a short February.
    const BASES: &[(i64, i64, i64, i64, i64, i64)] = &[
        (2024, 2, 27, 23, 58, 0),
        (2025, 12, 30, 12, 34, 56),
        (2027, 6, 1, 0, 0, 0),
        (2026, 4, 29, 23, 59, 0),
        (2025, 2, 27, 12, 0, 0),
    ];

    const ITERATIONS: usize = 30;

    fn epoch(y: i64, mo: i64, d: i64, h: i64, mi: i64, s: i64) -> i64 {
        reference::days_from_civil(y, mo, d) * 86400 + h * 3600 + mi * 60 + s
    }

    fn show(t: i64) -> String {
        let (y, m, d) = reference::civil_from_days(t.div_euclid(86400));
        let s = t.rem_euclid(86400);
        format!("{y}-{m:02}-{d:02} {:02}:{:02}", s / 3600, s / 60 % 60)
    }

    /// `systemd-analyze calendar` in UTC: its normalized form of `spec` and the next elapses.
    fn systemd_elapses(spec: &str, after: i64) -> (String, Vec<i64>) {
        let out = std::process::Command::new("systemd-analyze")
            .env("TZ", "UTC")
            .env("LC_ALL", "C")
            .arg("calendar")
            .arg(format!("--iterations={ITERATIONS}"))
            .arg(format!("--base-time=@{after}"))
            .arg(spec)
            .output()
            .expect("running systemd-analyze");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "systemd-analyze calendar {spec:?} failed: {}{}",
            stdout,
            String::from_utf8_lossy(&out.stderr)
        );
        let mut normalized = String::new();
        let mut times = Vec::new();
        for line in stdout.lines() {
            let Some((key, value)) = line.trim().split_once(": ") else {
                continue;
            };
            if key == "Normalized form" {
                normalized = value.to_string();
            } else if key == "Next elapse" || key.starts_with("Iter. #") {
                if value == "never" {
                    continue;
                }
                // "Mon 2024-01-01 00:05:00 UTC"
                let parts: Vec<&str> = value.split(' ').collect();
                assert_eq!(parts.get(3), Some(&"UTC"), "{line}");
                let date: Vec<i64> = parts[1].split('-').map(|p| p.parse().unwrap()).collect();
                let time: Vec<i64> = parts[2].split(':').map(|p| p.parse().unwrap()).collect();
                times.push(epoch(date[0], date[1], date[2], time[0], time[1], time[2]));
            }
        }
        (normalized, times)
    }

    /// For every corpus line and start time, the next runs of the union of the line's specs
    /// as systemd computes them equal the next runs the reference cron computes.
    #[test]
    fn specs_fire_when_cron_would_according_to_systemd() {
        use std::io::Write as _;
        // Written to stderr directly so the line shows even when the test passes.
        let say = |msg: String| {
            let _ = writeln!(std::io::stderr(), "{msg}");
        };
        match std::process::Command::new("systemd-analyze")
            .arg("--version")
            .output()
        {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                say("SKIP: systemd-analyze not found".to_string());
                return;
            }
            other => {
                other.expect("running systemd-analyze --version");
            }
        }
        assert!(CORPUS.len() >= 40);
        let mut failures = Vec::new();
        let mut compared = 0;
        for line in CORPUS {
            let specs = specs(line);
            let job = reference::job(line);
            for &(y, mo, d, h, mi, s) in BASES {
                let after = epoch(y, mo, d, h, mi, s);
                let mut union = Vec::new();
                for spec in &specs {
                    let (normalized, times) = systemd_elapses(spec, after);
                    if normalized != *spec {
                        failures.push(format!(
                            "{line}: spec {spec:?} is normalized by systemd to {normalized:?}"
                        ));
                    }
                    union.extend(times);
                }
                union.sort();
                union.dedup();
                union.truncate(ITERATIONS);
                let want = reference::next_runs(&job, after, ITERATIONS);
                assert_eq!(
                    want.len(),
                    ITERATIONS,
                    "{line}: the reference found too few runs"
                );
                if union == want {
                    compared += ITERATIONS;
                } else {
                    let first_difference = union.iter().zip(&want).position(|(a, b)| a != b);
                    failures.push(format!(
                        "{line} {specs:?} after {}: systemd gives {} runs, cron {}; first \
                         difference at #{first_difference:?}: systemd {:?} cron {:?}",
                        show(after),
                        union.len(),
                        want.len(),
                        first_difference.map(|i| show(union[i])),
                        first_difference.map(|i| show(want[i])),
                    ));
                }
            }
        }
        assert!(failures.is_empty(), "{}", failures.join("\n"));
        say(format!(
            "cron calendar check: {} lines x {} start times x {ITERATIONS} runs = {compared} run \
             times equal between systemd-analyze and the reference cron",
            CORPUS.len(),
            BASES.len(),
        ));
    }
}
