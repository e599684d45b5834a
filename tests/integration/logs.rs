//! `shim logs` against real journald: a 2-instance web process and a worker, merged output
//! with `web-2 | ` prefixes in time order, the filters, `-n`, `-f`, and exit 2 for bad flags.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::*;

const ID: &str = "logs";

fn logs_toml() -> String {
    format!(
        r#"
[shim]
port_range = [22000, 22999]

[services.{ID}]
image = "oci:{{layout}}:{{revision}}"

[services.{ID}.processes.web]
count = 2
health = {{ path = "/health" }}
stop_timeout = "5s"

[services.{ID}.processes.worker]
command = ["/bin/sh", "-c", "i=0; while true; do i=$((i+1)); echo worker tick $i; sleep 0.2; done"]
stop_timeout = "2s"
"#
    )
}

fn logs(cfg: &TestConfig, args: &[&str]) -> (Option<i32>, String, String) {
    let mut all = vec!["logs", "--id", ID];
    all.extend_from_slice(args);
    let o = shim(cfg.path(), &all);
    (o.status.code(), stdout(&o), stderr(&o))
}

/// Lines as (timestamp, prefix or "", message).
fn parse_lines(out: &str) -> Vec<(String, String, String)> {
    out.lines()
        .map(|l| {
            // "2024-05-01 12:00:00.123 " is 24 characters.
            let (time, rest) = l.split_at(24.min(l.len()));
            match rest.split_once(" | ") {
                Some((p, m)) => (time.trim().to_string(), p.trim().to_string(), m.to_string()),
                None => (time.trim().to_string(), String::new(), rest.to_string()),
            }
        })
        .collect()
}

#[test]
fn logs_merge_filter_and_follow() {
    require_sandbox!();
    let cfg = TestConfig::new(&logs_toml());
    shim_ok(cfg.path(), &["start", "--id", ID, "--revision", "rev1"]);

    // Both web instances and the worker have written something.
    let merged = wait_for(Duration::from_secs(20), "output of all instances", || {
        let (code, out, _) = logs(&cfg, &[]);
        (code == Some(0)
            && out.contains("web-1    | testapp listening")
            && out.contains("web-2    | testapp listening")
            && out.contains("worker-1 | worker tick"))
        .then_some(out)
    });
    let lines = parse_lines(&merged);
    // Merged by time: the timestamps never go back.
    let times: Vec<&String> = lines.iter().map(|(t, _, _)| t).collect();
    assert!(
        times.windows(2).all(|w| w[0] <= w[1]),
        "not in time order:\n{merged}"
    );
    assert!(
        lines.iter().all(|(_, p, _)| !p.is_empty()),
        "every line has a prefix:\n{merged}"
    );
    // Aligned: the prefix column is as wide as the longest (worker-1).
    assert!(merged.contains("web-1    | "), "{merged}");

    // One instance: no prefix, only its lines.
    let (code, one, _) = logs(&cfg, &["--process", "web", "--instance", "2"]);
    assert_eq!(code, Some(0));
    assert!(one.contains("testapp listening"), "{one}");
    assert!(one.contains("instance=2"), "{one}");
    assert!(!one.contains(" | "), "prefix with one instance: {one}");
    assert!(
        !one.contains("instance=1") && !one.contains("worker tick"),
        "{one}"
    );

    // --instance alone: instance 1 of every process.
    let (_, first, _) = logs(&cfg, &["--instance", "1"]);
    assert!(first.contains("web-1    | testapp listening"), "{first}");
    assert!(first.contains("worker-1 | worker tick"), "{first}");
    assert!(!first.contains("web-2"), "{first}");

    // --process alone: both web instances, no worker.
    let (_, web, _) = logs(&cfg, &["--process", "web"]);
    assert!(
        web.contains("web-1 | ") && web.contains("web-2 | "),
        "{web}"
    );
    assert!(!web.contains("worker"), "{web}");

    // -n: the last N lines of the merged stream (once there are more than N).
    wait_for(Duration::from_secs(10), "four worker ticks", || {
        let (_, out, _) = logs(&cfg, &["--process", "worker"]);
        out.contains("worker tick 4").then_some(())
    });
    let (_, last3, _) = logs(&cfg, &["--process", "worker", "-n", "3", "--no-time"]);
    let l: Vec<&str> = last3.lines().collect();
    assert_eq!(l.len(), 3, "{last3}");
    assert!(
        l.iter().all(|s| s.starts_with("worker-1 | worker tick ")),
        "{last3}"
    );
    let ticks: Vec<u32> = l
        .iter()
        .map(|s| s.rsplit(' ').next().unwrap().parse().unwrap())
        .collect();
    assert!(ticks.windows(2).all(|w| w[0] < w[1]), "{last3}");

    // --revision, full and unknown; --since as a duration.
    let (_, rev, _) = logs(&cfg, &["--revision", "rev1", "--process", "web"]);
    assert!(rev.contains("revision=rev1"), "{rev}");
    let (code, none, err) = logs(&cfg, &["--revision", "rev9"]);
    assert_eq!(code, Some(0));
    assert!(none.is_empty(), "{none}");
    assert!(err.contains("no journal entries match"), "{err}");
    let (code, recent, _) = logs(&cfg, &["--since", "10m", "--process", "worker", "-n", "1"]);
    assert_eq!(code, Some(0));
    assert!(recent.contains("worker tick"), "{recent}");

    // -f streams lines written after it started.
    let mut child = Command::new(SHIM)
        .args(["--config"])
        .arg(cfg.path())
        .args(["logs", "--id", ID, "--process", "worker", "-f", "-n", "0"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    let mut reader = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    let got = reader.read_line(&mut line);
    let waited = started.elapsed();
    let _ = child.kill();
    let _ = child.wait();
    assert!(got.is_ok_and(|n| n > 0), "nothing streamed");
    assert!(line.contains("worker-1 | worker tick"), "{line}");
    assert!(
        waited < Duration::from_secs(10),
        "streamed after {waited:?}"
    );

    // Bad flags exit 2 and change nothing.
    for args in [
        vec!["--instance", "0"],
        vec!["-n", "lots"],
        vec!["--process", "No/Such"],
        vec!["--since", "the day before the big bang"],
    ] {
        let (code, _, err) = logs(&cfg, &args);
        assert_eq!(code, Some(2), "{args:?}: {err}");
    }
    let o = shim(cfg.path(), &["logs", "--id", "Bad Id"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));

    shim_ok(cfg.path(), &["stop", "--id", ID]);
    // The journal outlives the instances.
    let (code, after, _) = logs(&cfg, &["--process", "web", "-n", "50"]);
    assert_eq!(code, Some(0));
    assert!(after.contains("testapp listening"), "{after}");
}
