//! How an upgrade reports itself while it runs: one line per step with its duration and
//! details (`--json`: one JSON object per step, for CI logs), then a closing line. The step
//! lines stream as the steps finish (a deploy hook's log shows where a slow deploy is).
//!
//! Flow: the operation never prints. It sends [`Event`]s (begin, each step, a warning, the
//! closing [`super::Outcome`]) to the [`Progress`] sink its caller put in
//! [`super::Options::progress`]; the CLI gives a [`Printer`] (text or JSON on stdout, warnings
//! on stderr, rendered by the pure `render_*` functions below), tests may collect them.

use std::sync::Arc;
use std::time::Instant;

use anyhow::Result;
use serde::Serialize;

/// What an upgrade reports as it runs.
#[derive(Debug)]
pub enum Event<'a> {
    /// Before the first step: `upgrade app to r2`.
    Begin {
        verb: &'a str,
        service: &'a str,
        revision: &'a str,
    },
    /// A step ended.
    Step {
        name: &'a str,
        ms: u128,
        details: &'a [String],
        error: Option<&'a str>,
    },
    /// Something failed that does not change the outcome (what a bail-out could not stop).
    Warning(&'a str),
    /// The upgrade ended without failing.
    Done(&'a super::Outcome),
}

/// Where an upgrade's progress goes.
pub trait Progress: Send + Sync {
    fn event(&self, e: &Event<'_>);
}

/// The sink in [`super::Options`]: shared, so that options can be cloned.
#[derive(Clone)]
pub struct Sink(Arc<dyn Progress>);

impl Sink {
    pub fn new(p: impl Progress + 'static) -> Sink {
        Sink(Arc::new(p))
    }
    pub fn event(&self, e: &Event<'_>) {
        self.0.event(e)
    }
}

impl std::fmt::Debug for Sink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sink")
    }
}

/// The events as a terminal shows them (pure): the text, and whether it goes to stderr.
/// `None`: nothing to show (the begin line of `--json`).
pub fn render_event(json: bool, e: &Event<'_>) -> Option<(String, bool)> {
    match e {
        Event::Begin { .. } if json => None,
        Event::Begin {
            verb,
            service,
            revision,
        } => Some((format!("{verb} {service} to {revision}\n"), false)),
        Event::Step {
            name,
            ms,
            details,
            error,
        } => Some((
            format!(
                "{}\n",
                render_step(json, name, *ms, details, error.map(str::to_string))
            ),
            false,
        )),
        Event::Warning(w) => Some((format!("shim: {w}\n"), true)),
        Event::Done(out) => Some((out.render(json), false)),
    }
}

/// Prints the events as [`render_event`] renders them: what the CLI gives the operation.
pub struct Printer {
    pub json: bool,
}

impl Progress for Printer {
    fn event(&self, e: &Event<'_>) {
        match render_event(self.json, e) {
            Some((text, true)) => eprint!("{text}"),
            Some((text, false)) => print!("{text}"),
            None => {}
        }
    }
}

/// Keeps the rendered text lines, for tests.
#[cfg(test)]
#[derive(Default)]
pub struct Collect(pub std::sync::Mutex<Vec<String>>);

#[cfg(test)]
impl Progress for Arc<Collect> {
    fn event(&self, e: &Event<'_>) {
        if let Some((text, _)) = render_event(false, e) {
            crate::host::systemd::fake::lock(&self.0).push(text);
        }
    }
}

/// Runs the steps, timing each and sending its line to the sink.
pub struct Reporter {
    pub sink: Sink,
}

#[derive(Serialize)]
struct StepLine<'a> {
    step: &'a str,
    ok: bool,
    ms: u128,
    details: &'a [String],
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

/// One step's line: name, ok/FAILED, milliseconds, then its details.
pub fn render_step(
    json: bool,
    name: &str,
    ms: u128,
    details: &[String],
    err: Option<String>,
) -> String {
    if json {
        let line = StepLine {
            step: name,
            ok: err.is_none(),
            ms,
            details,
            error: err,
        };
        return serde_json::to_string(&line).unwrap_or_default();
    }
    let status = if err.is_none() { "ok" } else { "FAILED" };
    let mut out = format!("  {name:<9} {status:<6} {ms:>6} ms");
    for d in details {
        out.push_str(&format!("\n            {d}"));
    }
    out
}

impl Reporter {
    /// Runs one step, timing it and reporting its line.
    pub fn step<T>(&self, name: &str, f: impl FnOnce(&mut Vec<String>) -> Result<T>) -> Result<T> {
        let t = Instant::now();
        let mut details = Vec::new();
        let r = f(&mut details);
        let err = r.as_ref().err().map(|e| format!("{e:#}"));
        self.sink.event(&Event::Step {
            name,
            ms: t.elapsed().as_millis(),
            details: &details,
            error: err.as_deref(),
        });
        test_hook(name);
        r
    }
}

/// Test hook: `SHIM_TEST_KILL_AFTER=<step>` makes shim SIGKILL itself right after that step,
/// so tests can check what the next run repairs. Harmless when unset.
fn test_hook(step: &str) {
    if std::env::var(crate::plan::fields::env::TEST_KILL_AFTER).is_ok_and(|s| s == step) {
        let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGKILL);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn step_lines_as_text_and_json() {
        let d = vec!["started shim-a-web-r2-1.service".to_string()];
        assert_eq!(
            render_step(false, "start", 71, &d, None),
            "  start     ok         71 ms\n            started shim-a-web-r2-1.service"
        );
        assert_eq!(
            render_step(false, "stop-old", 5, &[], Some("boom".into())),
            "  stop-old  FAILED      5 ms"
        );
        let j: serde_json::Value =
            serde_json::from_str(&render_step(true, "health", 9, &d, Some("x".into()))).unwrap();
        assert_eq!(j["step"], "health");
        assert_eq!(j["ok"], false);
        assert_eq!(j["error"], "x");
        assert_eq!(j["details"][0], d[0]);
    }
}
