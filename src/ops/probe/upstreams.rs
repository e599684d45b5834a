//! The probe's part in the proxy: after its checks and kills, each proxied process's upstream
//! is pointed at its healthy instances (planned purely by `decide::plan_upstreams`), through
//! the host's proxy switch (`ops::proxy`), under the service lock the probe holds. Only the
//! processes whose pointer differs from what the proxy points at now are applied; a process
//! whose proxy cannot be taken over (an upstream file shim did not write) is noted once and
//! left out, the others still synced. The outcome goes to the journal.

use std::collections::BTreeMap;

use super::decide::{plan_upstreams, Action, Inputs};
use super::run::note_once;
use super::Memory;
use crate::config::HostSettings;
use crate::host::http_check::Check;
use crate::host::journal::{NOTICE, WARNING};
use crate::host::Host;

/// Points each proxied process's upstream at its healthy instances (those running whose
/// last check passed, or that have no health check): an instance that failed a check, was
/// killed (`kills`) or is down leaves the upstream until it passes again; a replacement
/// joins once healthy. If none is healthy, the running ones are listed (fail open, as load
/// balancers do); if none runs, the upstream is closed (502) rather than pointing at ports
/// another service may be given. Returns whether the proxy was changed (or tried to be).
pub fn sync_upstreams(
    host: &Host,
    settings: &HostSettings,
    inp: &Inputs<'_>,
    (checks, kills): (&BTreeMap<String, Check>, &[Action]),
    mem: &mut Memory,
) -> bool {
    let id = inp.service.id.as_str();
    let killed: Vec<&str> = kills
        .iter()
        .filter_map(|a| match a {
            Action::Kill { unit, .. } => Some(unit.as_str()),
            _ => None,
        })
        .collect();
    let proxy = crate::ops::proxy::for_host(host, settings);
    let now = proxy.pointed(inp.service);
    let mut changed = Vec::new();
    for t in plan_upstreams(inp, checks, &killed) {
        if now.get(&t.process).cloned().flatten().as_ref() == Some(&t.to) {
            continue;
        }
        match proxy.preflight(inp.service, &t.process) {
            Ok(()) => changed.push(t),
            Err(e) => note_once(
                host,
                mem,
                &format!("upstream:{}", t.process),
                id,
                &format!("cannot point the upstream of {}: {e:#}", t.process),
            ),
        }
    }
    if changed.is_empty() {
        return false;
    }
    let mut details = Vec::new();
    let (priority, message) = match proxy.apply(inp.service, &changed, &mut details) {
        Ok(()) => (NOTICE, details.join("; ")),
        Err(e) => (WARNING, format!("pointing the upstreams failed: {e:#}")),
    };
    host.journal.send(
        priority,
        &message,
        &[
            (crate::plan::fields::SERVICE, id.to_string()),
            (crate::plan::fields::ACTION, "upstream".into()),
        ],
    );
    true
}
