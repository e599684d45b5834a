//! Bringing a service's instances up and down, the building block of start, upgrade, stop and
//! reconcile. Flow of a start: [`prepare`] gathers every host fact the plan needs (through the
//! host's `images` adapter: image resolved and unpacked, secrets read, user resolved, runtime
//! found) and fails before anything changes; [`start_instances`] takes the host lock, plans the missing instances,
//! writes their bundles and starts their units in one batch; if any start fails, everything this
//! call started is stopped again and its directories removed.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

use anyhow::{anyhow, Context, Result};

use crate::config::Definitions;
use crate::error::BadInput;
use crate::host::images::PrepareRequest;
use crate::host::systemd::{Systemd, UnitInfo};
use crate::host::Host;
use crate::plan::{self, InstancePlan, Prepared};

/// How systemd should space out restarts here, from its version. Where there is no systemd
/// to ask (`shim show` on a build machine), the policy that works everywhere.
pub fn restart_policy(host: &Host, max_delay: Duration) -> plan::RestartPolicy {
    let major = host
        .systemd()
        .and_then(|sd| sd.version())
        .ok()
        .and_then(|v| crate::host::systemd::parse_major_version(&v));
    plan::RestartPolicy::for_version(major, max_delay)
}

/// Gathers the host facts for `id` at `revision` (see `host::images`). With `unpack` false
/// (dry run) nothing is written.
pub fn prepare(
    host: &Host,
    defs: &Definitions,
    id: &str,
    revision: &str,
    unpack: bool,
) -> Result<Prepared> {
    let req = PrepareRequest {
        defs,
        id,
        revision,
        unpack,
        restart: restart_policy(host, defs.settings.restart_max_delay),
        cap_sys_resource: host.procfs.has_cap_sys_resource(),
        deployed: None,
    };
    host.images.prepare(&host.dirs, &req)
}

/// Gathers the host facts to start instances of a recorded deployment: its image digest,
/// definition and secrets snapshot, nothing read afresh (`defs` gives the host settings).
pub fn prepare_deployed(
    host: &Host,
    defs: &Definitions,
    d: &plan::Deployment,
    unpack: bool,
) -> Result<Prepared> {
    let req = PrepareRequest {
        defs,
        id: d.definition.id.as_str(),
        revision: &d.revision,
        unpack,
        restart: restart_policy(host, defs.settings.restart_max_delay),
        cap_sys_resource: host.procfs.has_cap_sys_resource(),
        deployed: Some(d),
    };
    host.images.prepare(&host.dirs, &req)
}

/// "definition changed since deploy…" when the definitions or env_files on disk differ from
/// what `deployed` runs (None when they match, or nothing is deployed).
pub fn definition_change_note(
    svc: &crate::config::ServiceDef,
    deployed: Option<&plan::Deployment>,
) -> Option<String> {
    let d = deployed?;
    let changes = crate::host::images::changes_on_disk(svc, d);
    (!changes.is_empty()).then(|| {
        format!(
            "{} changed since deploy: run `shim upgrade --id {}` to roll it out",
            changes.join(" and "),
            svc.id
        )
    })
}

/// Gathers the host facts to run something of `id` at `revision` (default: the current one)
/// outside its instances (`shim run`, cron): from the recorded deployment of that revision
/// (the current or the previous one: the same image digest, definition and secrets as its
/// instances), else afresh (a revision never deployed here, or one deployed by a shim that
/// recorded none). Returns the revision too.
pub fn prepare_for_run(
    host: &Host,
    defs: &Definitions,
    id: &str,
    revision: Option<&str>,
) -> Result<Prepared> {
    let st = host.state().load(id)?;
    let revision = match revision {
        Some(r) => r.to_string(),
        None => st.current.clone().ok_or_else(|| {
            anyhow!(BadInput(format!(
                "service {id:?} has no current revision on this host (never started); pass --revision"
            )))
        })?,
    };
    let recorded = [&st.deployment, &st.previous_deployment]
        .into_iter()
        .flatten()
        .find(|d| d.revision == revision);
    match recorded {
        Some(d) => prepare_deployed(host, defs, d, true),
        None => {
            // A revision never deployed here: its secret files are stored now (by content,
            // beside the deployments'; pruned after the next upgrade) so the run can mount
            // them.
            let p = prepare(host, defs, id, &revision, true)?;
            crate::host::secrets::save_files(&host.dirs, &p.deployment, &p.secret_file_contents)?;
            Ok(p)
        }
    }
}

/// The ports recorded by the deployments of every service (current and being rolled out):
/// an instance that is down keeps its port, which no other instance is given.
pub fn recorded_ports(host: &Host) -> BTreeSet<u16> {
    host.state()
        .load_all()
        .into_iter()
        .map(|(_, st)| st)
        .filter(|st| !st.stopped)
        .flat_map(|st| {
            let a = st.upgrading.and_then(|a| a.deployment);
            [st.deployment, a].into_iter().flatten()
        })
        .flat_map(|d| d.ports.into_values())
        .filter(|p| *p != 0)
        .collect()
}

fn write_bundle(p: &InstancePlan) -> Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    // Root-only: config.json holds the secrets from env_files.
    let parent = p.dir.parent().unwrap_or(Path::new("/"));
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(parent)
        .with_context(|| format!("creating {}", parent.display()))?;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&p.dir)
        .with_context(|| format!("creating {}", p.dir.display()))?;
    // config.json (runc/crun) or the env file (podman): both hold the secrets.
    let (path, text) = p.render_files().map_err(|m| anyhow!(BadInput(m)))?;
    crate::host::fsutil::write_atomic(&path, text.as_bytes(), 0o600)?;
    // What the instance is, for `shim status`; its start count begins again with this unit.
    let d = plan::InstanceDir(&p.dir);
    crate::host::fsutil::write_atomic(&d.meta(), &serde_json::to_vec(&p.meta())?, 0o600)?;
    match std::fs::remove_file(d.starts()) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(e).with_context(|| format!("removing {}", d.starts().display()))
        }
        _ => Ok(()),
    }
}

/// Creates the service's volumes that do not exist yet, owned by the container's user; an
/// existing one is left as it is (its content and owner are the app's).
fn ensure_volumes(prepared: &Prepared) -> Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    let names: BTreeSet<&str> = prepared
        .service
        .processes
        .values()
        .flat_map(|p| &p.mounts)
        .filter_map(|m| match m {
            crate::config::MountDef::Volume { source, .. } => Some(source.as_str()),
            _ => None,
        })
        .collect();
    for name in names {
        let dir = prepared.volumes_dir.join(name);
        if dir.is_dir() {
            continue;
        }
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(&dir)
            .with_context(|| format!("creating volume {}", dir.display()))?;
        let (uid, gid) = (prepared.user.uid, prepared.user.gid);
        nix::unistd::chown(
            &dir,
            Some(nix::unistd::Uid::from_raw(uid)),
            Some(nix::unistd::Gid::from_raw(gid)),
        )
        .with_context(|| format!("giving volume {} to {uid}:{gid}", dir.display()))?;
    }
    Ok(())
}

/// Removes instance directories of `prepared`'s service that no unit uses any more.
pub fn remove_stale_dirs(instances_dir: &Path, live_units: &BTreeSet<String>) -> Result<()> {
    let Ok(entries) = std::fs::read_dir(instances_dir) else {
        return Ok(());
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        if !live_units.contains(&format!("{name}.service")) {
            // Best effort unmount first: cleanup may not have run if the unit never started.
            let _ = nix::mount::umount2(
                &crate::plan::InstanceDir(&e.path()).rootfs(),
                nix::mount::MntFlags::MNT_DETACH,
            );
            std::fs::remove_dir_all(e.path())
                .with_context(|| format!("removing {}", e.path().display()))?;
        }
    }
    Ok(())
}

/// What a start did.
#[derive(Debug, Default)]
pub struct StartReport {
    pub started: Vec<String>,
    pub already_running: Vec<String>,
    /// Units of wanted instances that were left behind (failed, inactive) or on their way
    /// down, each with its state: stopped and reset first, then started afresh.
    pub reset: Vec<String>,
    /// The ports the started instances were given (a recorded one when it was free).
    pub ports: BTreeMap<(String, u32), u16>,
}

impl StartReport {
    /// Records the ports given in `d`; whether any differs from what `d` had.
    pub fn record_ports(&self, d: &mut plan::Deployment) -> bool {
        let mut changed = false;
        for ((p, i), port) in &self.ports {
            let old = d.ports.insert(plan::deployment::port_key(p, *i), *port);
            changed |= old != Some(*port);
        }
        changed
    }
}

/// How long a start job may take: runc returns once the container's init runs.
pub const START_TIMEOUT: Duration = Duration::from_secs(90);

/// shim runs no container without device filtering. crun filters devices with an eBPF
/// program, which it loads only after raising RLIMIT_MEMLOCK; on a host without
/// CAP_SYS_RESOURCE it cannot (and an image's device node would then reach the host's
/// device), so crun is refused there before anything starts. runc's rules work everywhere.
pub fn check_device_filter(prepared: &Prepared) -> Result<()> {
    if prepared.restrict_devices {
        return Ok(());
    }
    Err(anyhow!(
        "service {} uses runtime = \"crun\", which cannot filter devices on this host: shim has no CAP_SYS_RESOURCE to let crun raise RLIMIT_MEMLOCK for its eBPF device program, and runs no container without device filtering; use runtime = \"runc\" here",
        prepared.service.id
    ))
}

/// A `nofile` above shim's own hard limit needs CAP_SYS_RESOURCE (systemd raises the unit's
/// limit, the runtime the container's): without it the start would fail in the runtime with
/// EPERM, so it is refused first, naming the key and the limit.
pub fn check_nofile(host: &Host, prepared: &Prepared) -> Result<()> {
    let hard = host.procfs.nofile_hard();
    if host.procfs.has_cap_sys_resource() {
        return Ok(());
    }
    for p in prepared.service.processes.values() {
        if let Some(n) = p.limits.nofile.filter(|n| *n > hard) {
            return Err(anyhow!(BadInput(format!(
                "{}: services.{}.processes.{}.nofile = {n} is above this host's hard limit of {hard} open files, which shim cannot raise here (no CAP_SYS_RESOURCE): lower it to {hard} at most",
                prepared.service.source.display(),
                prepared.service.id,
                p.name
            ))));
        }
    }
    Ok(())
}

/// Starts the instances of `wanted` that are not already running. All or nothing: if one fails
/// to start, the ones this call started are stopped again.
pub fn start_instances(
    host: &Host,
    prepared: &Prepared,
    wanted: &[(String, u32)],
) -> Result<StartReport> {
    check_device_filter(prepared)?;
    check_nofile(host, prepared)?;
    let sd = host.systemd()?;
    let _lock = crate::host::lock::lock_host(&host.dirs)?;
    let mut all = sd.list_units(&[crate::plan::names::ALL_UNITS_GLOB.to_string()])?;
    let split = split_running(prepared, wanted, &all)?;
    // A unit left behind holds its name (and systemd refuses a new transient unit of that
    // name): it is stopped (waited for, if on its way down) and reset, which unloads it.
    let left: Vec<UnitInfo> = all
        .iter()
        .filter(|u| split.left.contains(&u.name))
        .cloned()
        .collect();
    stop_units(sd, &left, LEFT_STOP_TIMEOUT).map_err(|e| {
        e.context(format!(
            "clearing the units left behind by {}",
            prepared.service.id
        ))
    })?;
    all.retain(|u| !split.left.contains(&u.name));
    let mut report = StartReport {
        started: Vec::new(),
        already_running: split.running,
        reset: left
            .iter()
            .map(|u| format!("{} ({}/{})", u.name, u.active_state, u.sub_state))
            .collect(),
        ports: BTreeMap::new(),
    };
    let missing = split.missing;
    if missing.is_empty() {
        return Ok(report);
    }
    let mut taken: BTreeSet<u16> = all.iter().filter_map(|u| u.port()).collect();
    // Ports recorded for other instances, but this deployment's own (see `allocate`).
    let own: BTreeSet<u16> = prepared.deployment.ports.values().copied().collect();
    taken.extend(recorded_ports(host).difference(&own));
    let port_map = allocate(host, prepared, &missing, &taken)?;
    report.ports = port_map.clone();
    let plans = prepared.plan(&prepared.secrets, &missing, &port_map)?;
    ensure_volumes(prepared)?;
    for p in &plans {
        write_bundle(p)?;
    }
    let units: Vec<_> = plans.iter().map(|p| p.unit.clone()).collect();
    let failed: Vec<String> = match sd.start_transient(&units, START_TIMEOUT) {
        Ok(outcomes) => outcomes
            .iter()
            .filter(|o| !o.ok())
            .map(|o| format!("{} ({})", o.unit, o.result))
            .collect(),
        Err(e) => vec![e.to_string()],
    };
    if failed.is_empty() {
        report.started = units.into_iter().map(|u| u.name).collect();
        return Ok(report);
    }
    Err(roll_back(host, prepared, &plans, &failed))
}

/// (process, index) pairs.
type Wanted = Vec<(String, u32)>;

/// How long a start waits for a wanted instance's unit on its way down to stop.
const LEFT_STOP_TIMEOUT: Duration = Duration::from_secs(300);

/// The wanted instances as they are found.
#[derive(Debug, Default, PartialEq, Eq)]
struct Split {
    /// Not there, or only [`Split::left`] behind: to start.
    missing: Wanted,
    /// The names of those present (running or on their way up).
    running: Vec<String>,
    /// The names of their units that are not present (failed, inactive, stopping): to stop
    /// and reset before a fresh start.
    left: BTreeSet<String>,
}

/// The wanted (process, index) pairs to start, and the names of those present. A unit of
/// the wanted name is that instance only if its recorded identity (its `SHIM_*` fields) says
/// so: names of look-alike services can collide, and another service's unit must not be
/// taken for one of ours. One that is not present (see `ops::view`) is to be reset and
/// started afresh: a failed unit left by a stop or a crash is never counted as running.
fn split_running(prepared: &Prepared, wanted: &[(String, u32)], all: &[UnitInfo]) -> Result<Split> {
    let mut split = Split::default();
    for (p, i) in wanted {
        let key = plan::InstanceKey {
            service: prepared.service.id.clone(),
            process: crate::config::Ident::parse(p).map_err(|m| anyhow!("process {p:?}: {m}"))?,
            revision: prepared.revision.clone(),
            deployment: prepared.deployment.tag(p),
            index: *i,
        };
        let name = key.unit_name();
        match all.iter().find(|u| u.name == name) {
            None => split.missing.push((p.clone(), *i)),
            Some(u) if u.key().as_ref() == Some(&key) && u.is_present() => split.running.push(name),
            Some(u) if u.key().as_ref() == Some(&key) => {
                split.left.insert(name);
                split.missing.push((p.clone(), *i));
            }
            Some(u) => {
                return Err(anyhow!(
                    "unit {name} already exists for service {} process {} revision {}: instance {} of {p} of {} cannot be started under that name",
                    u.field(crate::plan::fields::SERVICE).unwrap_or("?"),
                    u.process().unwrap_or("?"),
                    u.revision(),
                    i,
                    prepared.service.id
                ))
            }
        }
    }
    Ok(split)
}

/// Ports for the instances of `missing` whose process takes one: the port the deployment
/// recorded for the instance if it is still free, else one free in the kernel and not
/// `taken` (by any of shim's units, or recorded by another service's deployment).
fn allocate(
    host: &Host,
    prepared: &Prepared,
    missing: &[(String, u32)],
    taken: &BTreeSet<u16>,
) -> Result<BTreeMap<(String, u32), u16>> {
    let needs_port = needing_ports(prepared, missing);
    let mut taken = taken.clone();
    let mut out = BTreeMap::new();
    let mut fresh = Vec::new();
    for (p, i) in needs_port {
        match prepared.deployment.port(&p, i) {
            Some(port) if !taken.contains(&port) && host.procfs.port_free(port) => {
                taken.insert(port);
                out.insert((p, i), port);
            }
            _ => fresh.push((p, i)),
        }
    }
    // Ports the deployment recorded for its other instances are theirs to come back to.
    taken.extend(prepared.deployment.ports.values().copied());
    let ports = plan::allocate_ports(prepared.port_range, fresh.len(), &taken, |p| {
        !host.procfs.port_free(p)
    })
    .map_err(|m| anyhow!(m))?;
    out.extend(fresh.into_iter().zip(ports));
    Ok(out)
}

/// The (process, index) pairs of `wanted` whose process takes a port.
pub fn needing_ports(prepared: &Prepared, wanted: &[(String, u32)]) -> Wanted {
    wanted
        .iter()
        .filter(|(p, _)| {
            prepared
                .service
                .processes
                .values()
                .any(|d| d.name.as_str() == p && d.port)
        })
        .cloned()
        .collect()
}

/// Stops what a failed start started, so the host is as it was; the error names each failed
/// unit with its last journal lines.
fn roll_back(
    host: &Host,
    prepared: &Prepared,
    plans: &[InstancePlan],
    failed: &[String],
) -> anyhow::Error {
    let mut msg = format!(
        "starting {} failed: {}",
        prepared.service.id,
        failed.join(", ")
    );
    for p in plans {
        let u = &p.unit.name;
        if failed.iter().any(|f| f.starts_with(u.as_str())) {
            msg.push_str(&format!(
                "\n--- last journal lines of {u} ---\n{}",
                host.journal.tail(u, 15)
            ));
        }
    }
    let names: Vec<String> = plans.iter().map(|p| p.unit.name.clone()).collect();
    let stopped = host
        .systemd()
        .map_err(anyhow::Error::from)
        .and_then(|sd| Ok(sd.stop_units(&names, Duration::from_secs(60))?));
    match stopped {
        Ok(_) => {
            for p in plans {
                let _ = std::fs::remove_dir_all(&p.dir);
            }
        }
        // Keep the directories: the units may still need them; `shim stop` cleans both.
        Err(e) => msg.push_str(&format!(
            "\nrolling back also failed ({e}); run `shim stop --id {}`",
            prepared.service.id
        )),
    }
    anyhow!(msg)
}

/// How long a drain waits at least (unless `drain` is shorter): nginx's old workers may have
/// read a request on a kept-alive client connection and not yet connected to the instance.
pub const DRAIN_GRACE: Duration = Duration::from_millis(250);

/// Waits until no connection to `ends` (the old instances', after nginx stopped sending them
/// requests) is open any more, polling the kernel's socket tables every 50 ms, for `drain` at
/// most; returns what happened, for the step's details.
pub fn drain(host: &Host, ends: &BTreeSet<crate::plan::Endpoint>, drain: Duration) -> String {
    let clock = &host.clock;
    let start = clock.now();
    clock.sleep(drain.min(DRAIN_GRACE));
    loop {
        let waited = clock.now().duration_since(start);
        let open = if ends.is_empty() {
            0
        } else {
            host.procfs.connections(ends)
        };
        if open == 0 {
            return format!(
                "no connection to the old instances left after {} ms (drain {})",
                waited.as_millis(),
                crate::config::format_duration(drain)
            );
        }
        if waited >= drain {
            return format!(
                "{open} connection(s) to the old instances still open after drain {}: stopping them anyway",
                crate::config::format_duration(drain)
            );
        }
        clock.sleep(Duration::from_millis(50).min(drain - waited));
    }
}

/// Stops units and removes their instance directories. Idempotent.
pub fn stop_units(sd: &dyn Systemd, units: &[UnitInfo], timeout: Duration) -> Result<Vec<String>> {
    let names: Vec<String> = units.iter().map(|u| u.name.clone()).collect();
    if names.is_empty() {
        return Ok(names);
    }
    let outcomes = sd.stop_units(&names, timeout)?;
    let bad: Vec<String> = outcomes
        .iter()
        .filter(|o| !o.ok())
        .map(|o| format!("{} ({})", o.unit, o.result))
        .collect();
    if !bad.is_empty() {
        return Err(anyhow!("stopping failed for: {}", bad.join(", ")));
    }
    Ok(names)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::systemd::fake::lock;
    use crate::ops::testkit;

    const DEF: &str =
        "[shim]\nport_range = [30000, 30010]\n[services.app]\nimage = \"oci:/i:{revision}\"\n\
             [services.app.processes.web]\ncount = 2\nport = true\ncommand = [\"/app\"]\n\
             [services.app.processes.worker]\ncommand = [\"/w\"]\n";

    #[test]
    fn starts_missing_instances_once_with_distinct_ports() {
        let fh = testkit::host();
        let d = fh.host.dirs.clone();
        let p = testkit::prepared(&testkit::defs(DEF), "app", "r1", &d);
        let sd = &fh.systemd;
        let r = start_instances(&fh.host, &p, &p.all_instances()).unwrap();
        assert_eq!(r.started.len(), 3);
        let ports: BTreeSet<String> = lock(&sd.units)
            .values()
            .filter_map(|u| u.field(crate::plan::fields::PORT).map(str::to_string))
            .collect();
        assert_eq!(ports, ["30000", "30001"].map(String::from).into());
        // Bundles are written, root-only.
        use std::os::unix::fs::PermissionsExt;
        let cfg = d.instances("app").join("shim-app-web-r1-1/config.json");
        assert_eq!(
            std::fs::metadata(&cfg).unwrap().permissions().mode() & 0o777,
            0o600
        );
        // And what each instance is, for `shim status`.
        let meta: plan::InstanceMeta = serde_json::from_slice(
            &std::fs::read(d.instances("app").join("shim-app-web-r1-2/meta.json")).unwrap(),
        )
        .unwrap();
        assert_eq!(meta.unit, "shim-app-web-r1-2.service");
        assert_eq!((meta.instance, meta.port), (2, Some(30001)));
        // Again: nothing new is started.
        let again = start_instances(&fh.host, &p, &p.all_instances()).unwrap();
        assert!(again.started.is_empty());
        assert_eq!(again.already_running.len(), 3);
    }

    #[test]
    fn a_failed_start_rolls_back_everything_it_started() {
        let fh = testkit::host();
        let d = fh.host.dirs.clone();
        let p = testkit::prepared(&testkit::defs(DEF), "app", "r1", &d);
        let sd = &fh.systemd;
        lock(&sd.fail_start).push("shim-app-web-r1-2.service".into());
        let err = start_instances(&fh.host, &p, &p.all_instances()).unwrap_err();
        assert!(
            err.to_string()
                .contains("shim-app-web-r1-2.service (failed)"),
            "{err}"
        );
        assert!(
            lock(&sd.units).is_empty(),
            "units left: {:?}",
            lock(&sd.units).keys()
        );
        let calls = lock(&sd.calls);
        assert_eq!(
            calls.iter().filter(|c| c.starts_with("stop ")).count(),
            3,
            "{calls:?}"
        );
        let left: Vec<_> = std::fs::read_dir(d.instances("app")).unwrap().collect();
        assert!(left.is_empty(), "instance dirs left: {left:?}");
    }

    #[test]
    fn a_look_alike_services_unit_is_not_taken_for_ours() {
        // Service `a` + process `b-web` and service `a-b` + process `web` map to the same unit
        // name; the second start must not report success with no instance of its own.
        // One set of definitions cannot hold both (config refuses it); the units of an older
        // set can still be there when the new one is deployed.
        let old = testkit::defs(
            "[services.a-b]\nimage = \"oci:/i:{revision}\"\n[services.a-b.processes.web]\ncommand = [\"/x\"]\n",
        );
        let defs = testkit::defs(
            "[services.a]\nimage = \"oci:/i:{revision}\"\n[services.a.processes.b-web]\ncommand = [\"/x\"]\n",
        );
        let fh = testkit::host();
        let d = fh.host.dirs.clone();
        let ab = testkit::prepared(&old, "a-b", "r1", &d);
        let r = start_instances(&fh.host, &ab, &ab.all_instances()).unwrap();
        assert_eq!(r.started, vec!["shim-a-b-web-r1-1.service".to_string()]);
        let a = testkit::prepared(&defs, "a", "r1", &d);
        let e = start_instances(&fh.host, &a, &a.all_instances())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("already exists for service a-b process web"),
            "{e}"
        );
        // Starting a-b again finds its own instance running.
        let again = start_instances(&fh.host, &ab, &ab.all_instances()).unwrap();
        assert_eq!(again.already_running.len(), 1);
    }

    #[test]
    fn crun_without_a_device_filter_is_refused_before_anything_starts() {
        let fh = testkit::host();
        let d = fh.host.dirs.clone();
        let mut p = testkit::prepared(&testkit::defs(DEF), "app", "r1", &d);
        p.restrict_devices = false;
        let e = start_instances(&fh.host, &p, &p.all_instances())
            .unwrap_err()
            .to_string();
        assert!(e.contains("cannot filter devices on this host"), "{e}");
        assert!(fh.systemd.calls().is_empty(), "{:?}", fh.systemd.calls());
        assert!(!d.instances("app").exists());
    }

    #[test]
    fn a_replacement_gets_its_recorded_port_unless_another_program_took_it() {
        let procfs = std::sync::Arc::new(crate::host::procfs::FakeProcfs::default());
        let p2 = procfs.clone();
        let fh = crate::host::FakeHost::with(move |h| {
            h.images = Box::new(testkit::FakePreparer::default());
            h.procfs = Box::new(p2);
        });
        let d = fh.host.dirs.clone();
        let mut p = testkit::prepared(&testkit::defs(DEF), "app", "r1", &d);
        p.deployment
            .ports
            .insert(plan::deployment::port_key("web", 1), 30007);
        p.deployment
            .ports
            .insert(plan::deployment::port_key("web", 2), 30003);
        // Another service's deployment records 30000 (its instance is down): never handed out.
        let other = crate::host::state::ServiceState {
            current: Some("r9".into()),
            deployment: Some({
                let mut o = testkit::deployment(&testkit::defs(DEF), "app", "r9");
                o.ports.insert(plan::deployment::port_key("web", 1), 30000);
                o
            }),
            ..Default::default()
        };
        fh.host.state().save("other", &other).unwrap();
        lock(&procfs.busy).insert(30003);
        let r = start_instances(&fh.host, &p, &p.all_instances()).unwrap();
        assert_eq!(r.ports.get(&("web".to_string(), 1)), Some(&30007), "kept");
        let moved = r.ports.get(&("web".to_string(), 2)).copied().unwrap();
        assert!(
            ![30000, 30003, 30007].contains(&moved),
            "busy, recorded elsewhere or this deployment's: {moved}"
        );
        let mut dep = p.deployment.clone();
        assert!(r.record_ports(&mut dep), "a port changed");
        assert_eq!(dep.port("web", 2), Some(moved));
        assert!(!r.record_ports(&mut dep), "recording again changes nothing");
    }

    #[test]
    fn a_drain_ends_when_the_connections_are_gone_or_at_drain() {
        let procfs = std::sync::Arc::new(crate::host::procfs::FakeProcfs::default());
        let p2 = procfs.clone();
        let fh = crate::host::FakeHost::with(move |h| h.procfs = Box::new(p2));
        let ports: BTreeSet<crate::plan::Endpoint> = [20001, 20002]
            .map(crate::plan::Endpoint::for_instance)
            .into();
        *lock(&procfs.open) = [3, 1].into();
        let said = drain(&fh.host, &ports, Duration::from_secs(5));
        assert_eq!(
            said,
            "no connection to the old instances left after 350 ms (drain 5s)"
        );
        *lock(&procfs.open) = std::iter::repeat_n(2, 500).collect();
        let said = drain(&fh.host, &ports, Duration::from_secs(1));
        assert_eq!(
            said,
            "2 connection(s) to the old instances still open after drain 1s: stopping them anyway"
        );
        // drain = "0s": nothing is waited for.
        let said = drain(&fh.host, &ports, Duration::ZERO);
        assert!(said.contains("still open after drain 0:"), "{said}");
        // The kernel was asked about the instances' ports.
        assert!(lock(&procfs.asked)
            .iter()
            .all(|a| *a == BTreeSet::from([20001, 20002])));
    }
}
