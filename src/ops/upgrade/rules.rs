//! The rules a command that drives the upgrade machine must satisfy before it changes a
//! service: a stopped service is not upgraded, rolled back or restarted; a rollback needs a
//! previous deployment; a restart needs a running deployment with the named processes.
//!
//! Flow: [`target`] reads the state once before the lock, refuses early (exit 2, not even a
//! lock file made) and resolves what the command deploys (revision and recorded deployment);
//! the machine then checks [`check`] again on the state it reads under the service lock, which
//! is the check that counts: a `shim stop` that lands while the command waits for the lock is
//! seen there, and the command refuses instead of undoing the stop.

use anyhow::Result;

use super::{Kind, Options};
use crate::error::BadInput;
use crate::host::state::ServiceState;
use crate::host::Host;

/// Whether `kind` may run on service `id` in state `st`; `restart` is the processes a restart
/// replaces. Pure: the same rule before the lock and under it.
pub fn check(kind: Kind, id: &str, st: &ServiceState, restart: &[String]) -> Result<(), BadInput> {
    match kind {
        Kind::Upgrade => refuse_stopped(id, st, "upgrade"),
        Kind::Rollback => {
            refuse_stopped(id, st, "roll back")?;
            if st.previous.is_none() {
                return Err(BadInput(format!(
                    "service {id} has no previous revision to roll back to (current: {})",
                    st.current.as_deref().unwrap_or("none")
                )));
            }
            Ok(())
        }
        Kind::Restart => check_restart(id, st, restart),
        // `shim start` is what clears a stop; reconcile decides under the lock itself.
        Kind::Start | Kind::Reconcile => Ok(()),
    }
}

/// A stopped service is not deployed to: it stays down until started, and an upgrade that
/// brought it up would undo the stop.
fn refuse_stopped(id: &str, st: &ServiceState, verb: &str) -> Result<(), BadInput> {
    if !st.stopped {
        return Ok(());
    }
    let unit = crate::plan::names::service_unit_name(id);
    Err(BadInput(format!(
        "service {id} is stopped (shim stop or systemctl stop {unit}); nothing was changed: \
         bring it back with `shim start --id {id}` (or `systemctl start '{unit}'`), then {verb} it"
    )))
}

fn check_restart(id: &str, st: &ServiceState, processes: &[String]) -> Result<(), BadInput> {
    let (Some(d), false) = (&st.deployment, st.stopped) else {
        return Err(BadInput(format!(
            "service {id} has no running deployment to restart{}",
            if st.stopped {
                " (it is stopped: `shim start`)"
            } else {
                " (deploy it with `shim upgrade`)"
            }
        )));
    };
    let names = || d.definition.processes.values().map(|x| x.name.as_str());
    if let Some(p) = processes.iter().find(|p| !names().any(|n| n == p.as_str())) {
        return Err(BadInput(format!(
            "--process {p}: service {id} has no such process in its deployment (it has {})",
            d.definition
                .processes
                .keys()
                .map(|k| k.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }
    Ok(())
}

/// What `opts.kind` deploys on service `id`: the revision, with `opts.deployed` set to the
/// recorded deployment it runs from (rollback, restart, start without a revision). `revision`
/// is the one the command line names, if any. Refuses by [`check`] on the state as it is now;
/// the machine checks again under the lock.
pub fn target(
    host: &Host,
    id: &str,
    opts: &mut Options,
    revision: Option<String>,
) -> Result<String> {
    let st = host.state().load(id)?;
    check(opts.kind, id, &st, &opts.restart)?;
    let none = |what: &str| -> anyhow::Error { BadInput(format!("service {id} {what}")).into() };
    match (opts.kind, revision) {
        (Kind::Rollback, _) => {
            // Checked above: a rollback has a previous revision.
            let previous = st
                .previous
                .ok_or_else(|| none("has no previous revision"))?;
            // The previous deployment exactly as it ran (a record from a shim that kept none:
            // its revision, read afresh).
            opts.deployed = st.previous_deployment.filter(|d| d.revision == previous);
            Ok(previous)
        }
        (Kind::Restart, _) => {
            // Checked above: a restart has a deployment.
            let d = st
                .deployment
                .ok_or_else(|| none("has no running deployment to restart"))?;
            opts.deployed = Some(d.restarted(&opts.restart));
            Ok(d.revision)
        }
        (_, Some(r)) => Ok(r),
        (Kind::Start, None) => {
            opts.deployed = st.deployment;
            st.current.ok_or_else(|| {
                none(&format!(
                    "has no recorded deployment to start: deploy it first with `shim upgrade --id {id} --revision REV`"
                ))
            })
        }
        (_, None) => st
            .current
            .ok_or_else(|| none("has no deployed revision: pass --revision")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stopped() -> ServiceState {
        ServiceState {
            current: Some("r1".into()),
            previous: Some("r0".into()),
            stopped: true,
            ..Default::default()
        }
    }

    #[test]
    fn a_stopped_service_refuses_upgrade_rollback_and_restart_but_not_start() {
        let st = stopped();
        for (kind, verb) in [
            (Kind::Upgrade, "upgrade it"),
            (Kind::Rollback, "roll back it"),
        ] {
            let e = check(kind, "app", &st, &[]).unwrap_err().0;
            assert!(
                e.contains("service app is stopped") && e.contains(verb),
                "{e}"
            );
        }
        let e = check(Kind::Restart, "app", &st, &[]).unwrap_err().0;
        assert!(
            e.contains("no running deployment to restart (it is stopped"),
            "{e}"
        );
        assert!(check(Kind::Start, "app", &st, &[]).is_ok());
        assert!(check(Kind::Reconcile, "app", &st, &[]).is_ok());
    }

    #[test]
    fn a_rollback_needs_a_previous_revision() {
        let st = ServiceState {
            current: Some("r1".into()),
            ..Default::default()
        };
        let e = check(Kind::Rollback, "app", &st, &[]).unwrap_err().0;
        assert_eq!(
            e,
            "service app has no previous revision to roll back to (current: r1)"
        );
        assert!(check(Kind::Upgrade, "app", &st, &[]).is_ok());
    }
}
