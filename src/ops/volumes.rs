//! `shim volume ls|rm`: the named volumes shim keeps per service under
//! `/var/lib/shim/volumes/<service>/<name>` (created on first start, never deleted
//! implicitly). `rm` is the only way one goes, and it refuses while a running instance of the
//! service may have it mounted: a running unit whose deployment (current, previous, or the
//! attempt under way) mounts the volume, or whose deployment is not recorded at all, and any
//! running one-off (`shim run`) of the service. It holds the service's lock, so no upgrade or
//! start of the service runs meanwhile.
//!
//! "Running" here is "may have processes" (`Phase::may_have_processes`: present, or on its
//! way down, whose processes still hold their mounts). A volume is a bind mount inside the
//! container's own mount namespace (the bundle's `config.json`), never on the host, and
//! goes with the container's last process: a unit that failed or is inactive holds none.
//! Such a unit left behind that would mount the volume is reset (unloaded) by `rm`, so that
//! no retry of the probe starts it again on a volume that is gone; the next start starts a
//! fresh instance, which creates the volume again, empty.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use serde::Serialize;

use crate::config::MountDef;
use crate::error::BadInput;
use crate::host::lock::ServiceLock;
use crate::host::systemd::UnitInfo;
use crate::host::Host;
use crate::plan::Deployment;

/// One volume as `shim volume ls` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Volume {
    pub service: String,
    pub name: String,
    pub path: PathBuf,
    /// Bytes of the files in it (apparent sizes).
    pub bytes: u64,
    /// Running instances that have it mounted (or may: see the module doc).
    pub used_by: Vec<String>,
}

/// Whether deployment `d` mounts volume `name`.
fn mounts(d: &Deployment, name: &str) -> bool {
    d.definition
        .processes
        .values()
        .flat_map(|p| &p.mounts)
        .any(|m| matches!(m, MountDef::Volume { source, .. } if source == name))
}

/// Whether unit `u` would mount volume `name`: its deployment is one of `records` and mounts
/// it, or its deployment is none of them.
fn would_mount(name: &str, u: &UnitInfo, records: &[&Deployment]) -> bool {
    let owner = records
        .iter()
        .find(|d| crate::ops::view::of_deployment(u, d));
    owner.is_none_or(|d| mounts(d, name))
}

/// The units of a service that may have volume `name` mounted now (pure): those that may have
/// processes (see the module docs) and would mount it.
pub fn users_of(name: &str, units: &[UnitInfo], records: &[&Deployment]) -> Vec<String> {
    units
        .iter()
        .filter(|u| u.phase().may_have_processes())
        .filter(|u| would_mount(name, u, records))
        .map(|u| u.name.clone())
        .collect()
}

/// The units left behind (failed, inactive) that would mount volume `name` if started again
/// (pure): `rm` resets them.
pub fn left_users_of(name: &str, units: &[UnitInfo], records: &[&Deployment]) -> Vec<String> {
    units
        .iter()
        .filter(|u| u.is_left())
        .filter(|u| would_mount(name, u, records))
        .map(|u| u.name.clone())
        .collect()
}

/// The units of service `id` that may mount its volumes: its instances, and its one-off
/// runs (`shimrun-<id>-*`, which borrow a process's mounts; counted as users while active,
/// whatever they mount).
fn units_of(host: &Host, id: &str) -> Result<Vec<UnitInfo>> {
    let sd = host.systemd()?;
    let mut units = crate::ops::view::ServiceView::observe(sd, id)?.into_units();
    let runs = sd.list_units(&[crate::plan::names::run_units_glob(id)])?;
    units.extend(
        runs.into_iter()
            .filter(|u| crate::ops::view::of_service(u, id))
            .map(|mut u| {
                // No deployment of the records owns a run: it counts as a user.
                u.fields.insert(
                    crate::plan::fields::DEPLOYMENT.into(),
                    "(one-off run)".into(),
                );
                u
            }),
    );
    Ok(units)
}

/// Apparent size of the files below `dir` (symlinks not followed).
fn size_of(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => size_of(&e.path()),
            Ok(_) => e.metadata().map(|m| m.len()).unwrap_or(0),
            Err(_) => 0,
        })
        .sum()
}

/// The recorded deployments of `id` (current, previous, under way).
fn records(host: &Host, id: &str) -> Result<Vec<Deployment>> {
    let st = host.state().load(id)?;
    Ok([
        st.deployment,
        st.previous_deployment,
        st.upgrading.and_then(|a| a.deployment),
    ]
    .into_iter()
    .flatten()
    .collect())
}

fn names_in(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|es| {
            es.flatten()
                .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                .filter_map(|e| e.file_name().to_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// Every volume (of service `only`, if given).
pub fn list(host: &Host, only: Option<&str>) -> Result<Vec<Volume>> {
    let root = host.dirs.volumes_root();
    let services: Vec<String> = match only {
        Some(id) => vec![id.to_string()],
        None => names_in(&root),
    };
    let mut out = Vec::new();
    for id in services {
        let names = names_in(&host.dirs.volumes(&id));
        if names.is_empty() {
            continue;
        }
        let units = units_of(host, &id)?;
        let recs = records(host, &id)?;
        let recs: Vec<&Deployment> = recs.iter().collect();
        for name in names {
            let path = host.dirs.volumes(&id).join(&name);
            out.push(Volume {
                bytes: size_of(&path),
                used_by: users_of(&name, &units, &recs),
                service: id.clone(),
                name,
                path,
            });
        }
    }
    Ok(out)
}

/// Removes volume `name` of service `id`, with everything in it. Refuses (bad input, nothing
/// removed) while an instance may use it, and when there is no such volume.
pub fn remove(host: &Host, id: &str, name: &str, lock_timeout: Duration) -> Result<PathBuf> {
    crate::config::Ident::parse(name)
        .map_err(|m| BadInput(format!("volume name {name:?}: {m}")))?;
    let _lock = ServiceLock::acquire(&host.dirs.run, id, lock_timeout)?;
    let path = host.dirs.volumes(id).join(name);
    if !path.is_dir() {
        let have = names_in(&host.dirs.volumes(id));
        return Err(BadInput(format!(
            "service {id} has no volume {name:?} (volumes: {})",
            if have.is_empty() {
                "none".into()
            } else {
                have.join(", ")
            }
        ))
        .into());
    }
    let units = units_of(host, id)?;
    let recs = records(host, id)?;
    let recs: Vec<&Deployment> = recs.iter().collect();
    let users = users_of(name, &units, &recs);
    if !users.is_empty() {
        return Err(BadInput(format!(
            "volume {name:?} of service {id} is in use by {}: stop the service first (`shim stop --id {id}`), or deploy a definition without it",
            users.join(", ")
        ))
        .into());
    }
    let left = left_users_of(name, &units, &recs);
    if !left.is_empty() {
        host.systemd()?.reset_failed(&left).with_context(|| {
            format!(
                "resetting {} before removing volume {name:?}",
                left.join(", ")
            )
        })?;
    }
    std::fs::remove_dir_all(&path).with_context(|| format!("removing {}", path.display()))?;
    let _ = std::fs::remove_dir(host.dirs.volumes(id));
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::testkit;

    fn unit(name: &str, revision: &str, tag: &str, state: &str) -> UnitInfo {
        use crate::plan::fields;
        UnitInfo {
            name: name.into(),
            active_state: state.into(),
            fields: [
                (fields::SERVICE, "app"),
                (fields::PROCESS, "web"),
                (fields::REVISION, revision),
                (fields::DEPLOYMENT, tag),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn a_volume_is_in_use_by_running_instances_of_deployments_that_mount_it() {
        let toml = "[services.app]\nimage = \"oci:/i:{revision}\"\n[services.app.processes.web]\nmounts = [{ type = \"volume\", source = \"cache\", target = \"/c\" }]\n";
        let defs = crate::config::parse_sources(&[("/etc/shim/services.toml".into(), toml.into())])
            .unwrap();
        let mut with = testkit::deployment(&defs, "app", "r1");
        with.untagged = false;
        let plain = "[services.app]\nimage = \"oci:/i:{revision}\"\n[services.app.processes.web]\n";
        let defs2 =
            crate::config::parse_sources(&[("/etc/shim/services.toml".into(), plain.into())])
                .unwrap();
        let mut without = testkit::deployment(&defs2, "app", "r2");
        without.untagged = false;
        let (t1, t2) = (with.tag("web"), without.tag("web"));
        let units = vec![
            unit("shim-app-web-r1-a-1.service", "r1", &t1, "active"),
            unit("shim-app-web-r2-b-1.service", "r2", &t2, "active"),
            unit("shim-app-web-r1-c-2.service", "r1", &t1, "inactive"),
            unit(
                "shim-app-web-r9-d-1.service",
                "r9",
                "deadbeef",
                "activating",
            ),
        ];
        let users = users_of("cache", &units, &[&with, &without]);
        assert_eq!(
            users,
            ["shim-app-web-r1-a-1.service", "shim-app-web-r9-d-1.service"],
            "the one that mounts it, and the one of an unknown deployment"
        );
        assert!(users_of("cache", &units[1..3], &[&with, &without]).is_empty());
    }

    #[test]
    fn rm_refuses_while_an_instance_stops_and_resets_a_failed_one_that_would_mount_it() {
        let toml = "[services.app]\nimage = \"oci:/i:{revision}\"\n[services.app.processes.web]\nmounts = [{ type = \"volume\", source = \"cache\", target = \"/c\" }]\n";
        let defs = testkit::defs(toml);
        let mut d = testkit::deployment(&defs, "app", "r1");
        d.untagged = false;
        let fh = testkit::host();
        let h = &fh.host;
        let st = crate::host::state::ServiceState {
            current: Some("r1".into()),
            deployment: Some(d.clone()),
            ..Default::default()
        };
        h.state().save("app", &st).unwrap();
        let dir = h.dirs.volumes("app").join("cache");
        std::fs::create_dir_all(&dir).unwrap();
        let name = "shim-app-web-r1-1.service";
        // On its way down (stop-sigterm): its process may still have the volume mounted.
        let mut u = unit(name, "r1", &d.tag("web"), "deactivating");
        u.sub_state = "stop-sigterm".into();
        fh.systemd.insert(u.clone());
        let e = remove(h, "app", "cache", Duration::ZERO).unwrap_err();
        assert!(
            format!("{e:#}").contains("in use by shim-app-web-r1-1.service"),
            "{e:#}"
        );
        assert!(dir.is_dir());
        // Failed (its process exited 143 at a stop): no mount is left, the volume goes, and
        // the unit is reset so that no retry starts it again on a volume that is gone.
        u.active_state = "failed".into();
        u.sub_state = "failed".into();
        fh.systemd.insert(u);
        remove(h, "app", "cache", Duration::ZERO).unwrap();
        assert!(!dir.exists());
        assert!(fh.systemd.calls().contains(&format!("reset-failed {name}")));
        assert!(!fh.systemd.unit_names().contains(&name.to_string()));
    }
}
