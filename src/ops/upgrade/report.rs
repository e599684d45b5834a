//! How an upgrade reports itself while it runs: one line per step with its duration and
//! details (`--json`: one JSON object per step, for CI logs), then a closing line. The step
//! lines stream as the steps finish (a deploy hook's log shows where a slow deploy is); the
//! closing line is rendered from the [`super::Outcome`] the operation returns.

use std::time::Instant;

use anyhow::Result;
use serde::Serialize;

/// Prints the step lines.
pub struct Reporter {
    pub json: bool,
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
    /// Runs one step, timing it and printing its line.
    pub fn step<T>(&self, name: &str, f: impl FnOnce(&mut Vec<String>) -> Result<T>) -> Result<T> {
        let t = Instant::now();
        let mut details = Vec::new();
        let r = f(&mut details);
        let err = r.as_ref().err().map(|e| format!("{e:#}"));
        println!(
            "{}",
            render_step(self.json, name, t.elapsed().as_millis(), &details, err)
        );
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
