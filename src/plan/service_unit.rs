//! The unit that *is* a service, `shim-<id>.service`, and its slice `shim-<id>.slice`, as
//! plain text: pure, snapshot-tested; `ops::service_unit` writes the file.
//!
//! Why unit files shim writes to `/etc/systemd/system` rather than a systemd generator (the
//! Quadlet way): `systemctl enable` and `disable` refuse generated units ("Unit ... is
//! transient or generated"), and the issue asks for both; Quadlet only fakes `[Install]` by
//! making the `.wants` links itself. A file in `/etc/systemd/system` with an `[Install]`
//! section is an ordinary unit: `systemctl enable/disable/status/start/stop` all work on it
//! as on any other, and the enablement lives where systemd keeps it (the `.wants` link), not
//! in a state file of shim's. The file depends only on the service id, the shim binary and
//! the definitions' path, never on the definition's content, so a bad definition cannot
//! make a bad unit.
//!
//! The unit is `Type=oneshot` + `RemainAfterExit=yes`: `ExecStart` is `shim start --id ID
//! --from-unit` (the recorded deployment, like reconcile), `ExecStop` is `shim stop --id ID
//! --from-unit`: nginx first, the drain, the timers, the service marked stopped. The
//! instances are `PartOf=` and `Before=` it (see [`instance_deps`]): systemd stops them
//! *after* `ExecStop` returned, i.e. after the drain, and `ExecStop` must therefore not wait
//! for their stop jobs (they wait for its own).
//!
//! Names: the id is escaped as `systemd-escape` does (`-` becomes `\x2d`), so that `a-b`'s
//! slice is `shim-a\x2db.slice`, a child of `shim.slice`, and not `shim-a-b.slice`, which
//! systemd would nest under `shim-a.slice` (service `a`'s). Ids are lowercase letters,
//! digits, `_` and `-` (`config::Ident`), so `-` is the only character to escape.

use std::path::Path;
use std::time::Duration;

use super::names::{service_unit_name, slice_name};
use super::unit::Prop;

/// The dependency of a timer (probe, cron) on its service unit: stopped with it, at once.
pub fn timer_deps(id: &str) -> Vec<(&'static str, Prop)> {
    vec![("PartOf", Prop::Strs(vec![service_unit_name(id)]))]
}

/// The first line of every unit file shim writes: what says the file is shim's (an
/// administrator's own `shim-*.service` is never overwritten or removed).
pub const MARKER: &str = "# Written by shim: the unit of service";

/// How long `ExecStart` (a start may pull the recorded image again) and `ExecStop` may take.
pub const START_TIMEOUT: Duration = Duration::from_secs(30 * 60);
pub const STOP_TIMEOUT: Duration = Duration::from_secs(15 * 60);

/// The text of `shim-<id>.service`. `shim_exe` and `config` are absolute paths; `env` is
/// extra environment for its commands (other state/run/unit directories: tests only).
pub fn render_service_unit(
    id: &str,
    shim_exe: &Path,
    config: &Path,
    env: &[(String, String)],
) -> String {
    let env: String = env
        .iter()
        .map(|(k, v)| format!("Environment={k}={v}\n"))
        .collect();
    let shim = shim_exe.display();
    let config = config.display();
    let slice = slice_name(id);
    let start = crate::config::format_duration(START_TIMEOUT);
    let stop = crate::config::format_duration(STOP_TIMEOUT);
    format!(
        "{MARKER} {id}; rewritten by shim upgrade/start/reconcile, do not edit
# (use `systemctl edit {unit}` for a drop-in). Its instances, probe and cron timers are
# PartOf= this unit; `systemctl enable/disable` decide whether it comes up at boot.
# Instances, one-off runs and cron jobs run in {slice} (`systemctl status {slice}`).
[Unit]
Description=shim service {id}
Documentation=man:shim(1)
Wants=network-online.target
# Not After=nginx.service: ExecStop reloads nginx, and a reload job of a unit this one is
# ordered after waits for this unit's stop job, i.e. for ExecStop itself. At boot it comes
# after nginx all the same, through shim-reconcile.service (After=nginx.service).
After=network-online.target shim-reconcile.service

[Service]
Type=oneshot
RemainAfterExit=yes
{env}# A service stopped before a reboot stays down at boot, enabled or not.
ExecCondition={shim} --config {config} start --id {id} --from-unit --condition
ExecStart={shim} --config {config} start --id {id} --from-unit
ExecStop={shim} --config {config} stop --id {id} --from-unit
TimeoutStartSec={start}
TimeoutStopSec={stop}
# What a start or stop says goes to the journal: `systemctl status {unit}` shows it.
SyslogIdentifier=shim-{id}

[Install]
WantedBy=multi-user.target
",
        unit = service_unit_name(id),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::names::slice_cgroup;

    #[test]
    fn names_escape_dashes_so_look_alikes_do_not_nest_or_collide() {
        assert_eq!(service_unit_name("billing_app"), "shim-billing_app.service");
        assert_eq!(service_unit_name("a-b"), "shim-a\\x2db.service");
        assert_eq!(slice_name("a"), "shim-a.slice");
        assert_eq!(slice_name("a-b"), "shim-a\\x2db.slice");
        assert_eq!(slice_cgroup("a-b"), "/shim.slice/shim-a\\x2db.slice");
        // `a-b` is not nested under `a` (systemd nests slices on unescaped '-'), and neither
        // collides with `web` vs `web2` (distinct names, no prefix relation in the unit name).
        let names: std::collections::BTreeSet<String> = ["a", "a-b", "a_b", "web", "web2"]
            .iter()
            .map(|i| slice_name(i))
            .collect();
        assert_eq!(names.len(), 5);
        for n in &names {
            let stem = n.trim_end_matches(".slice");
            assert_eq!(
                stem.matches('-').count(),
                1,
                "{n} must be a direct child of shim.slice"
            );
        }
        // The instance pattern `shim-<id>-*` of service `a` never matches `a-b`'s service unit.
        assert!(!service_unit_name("a-b").starts_with("shim-a-"));
    }

    #[test]
    fn service_unit_snapshot() {
        insta::assert_snapshot!(render_service_unit(
            "billing-app",
            Path::new("/usr/bin/shim"),
            Path::new("/etc/shim/services.toml"),
            &[]
        ));
    }
}
