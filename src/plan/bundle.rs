//! The OCI runtime config (`config.json`) of one instance, built with oci-spec from its
//! defaults, which are what `runc spec` gives: no-new-privileges, the runtime's default
//! capability set, the masked and read-only paths. On top: the instance's argv, env, user and
//! cwd; the host's network (instances serve on host ports handed out as `$PORT`); the cgroup
//! below the unit's own; the overlay mount point as root.

use std::path::{Path, PathBuf};

use oci_spec::runtime::{
    Capabilities, Capability, LinuxDeviceCgroupBuilder, LinuxNamespaceType, Mount, MountBuilder,
    PosixRlimit, PosixRlimitBuilder, PosixRlimitType, Spec,
};

use super::{merge_env, plan_args, InstanceDir, InstanceKey, PlanContext};
use crate::config::ProcessDef;

/// Where the init of `init = true` is bound in the container.
pub const INIT_PATH: &str = "/.shim-init";

fn mount(dest: &str, typ: &str, source: &str, options: &[&str]) -> Result<Mount, String> {
    MountBuilder::default()
        .destination(PathBuf::from(dest))
        .typ(typ)
        .source(PathBuf::from(source))
        .options(options.iter().map(|s| s.to_string()).collect::<Vec<_>>())
        .build()
        .map_err(|e| format!("building mount {dest}: {e}"))
}

pub(super) fn plan_config(
    cx: &PlanContext<'_>,
    process: &ProcessDef,
    key: &InstanceKey,
    dir: &Path,
    port: Option<u16>,
) -> Result<Spec, String> {
    let mut spec = Spec::default();
    let d = InstanceDir(dir);

    // Root: the instance's overlay. With read_only it is mounted read-only by the runtime, so
    // the instance has no writable layer except a tmpfs on /tmp.
    if let Some(root) = spec.root_mut() {
        root.set_path(d.rootfs());
        root.set_readonly(Some(process.read_only));
    }
    spec.set_hostname(None);

    set_process(&mut spec, cx, process, key, port)?;
    set_caps(&mut spec, process)?;
    set_linux(&mut spec, cx, key)?;
    set_seccomp(&mut spec, cx, process)?;
    let mounts = plan_mounts(&spec, cx, process)?;
    spec.set_mounts(Some(mounts));
    Ok(spec)
}

/// argv, env, cwd and user of the container's process.
fn set_process(
    spec: &mut Spec,
    cx: &PlanContext<'_>,
    process: &ProcessDef,
    key: &InstanceKey,
    port: Option<u16>,
) -> Result<(), String> {
    if let Some(p) = spec.process_mut() {
        let mut args = plan_args(cx, process)?;
        if process.init {
            // tini as PID 1: it forwards the stop signal to the command and reaps zombies.
            args.splice(0..0, [INIT_PATH.to_string(), "--".to_string()]);
        }
        p.set_args(Some(args));
        p.set_env(Some(merge_env(cx, process, key, port)));
        p.set_cwd(PathBuf::from(
            cx.image
                .working_dir
                .as_deref()
                .filter(|w| !w.is_empty())
                .unwrap_or("/"),
        ));
        p.user_mut().set_uid(cx.user.uid);
        p.user_mut().set_gid(cx.user.gid);
        // Ambient capabilities would hand a non-root process the capabilities root gets:
        // only root keeps them (as docker and podman do).
        if cx.user.uid != 0 {
            let mut caps = p.capabilities().clone();
            if let Some(c) = caps.as_mut() {
                c.set_ambient(None);
            }
            p.set_capabilities(caps);
        }
        p.set_terminal(Some(false));
        // rlimits stay as `runc spec` writes them (RLIMIT_NOFILE 1024) unless `nofile` is
        // set: raising above the unit's hard limit needs CAP_SYS_RESOURCE, which some hosts
        // (this project's CI machines) do not have, so `nofile` also sets the unit's
        // LimitNOFILE= (`unit::limit_props`) and the container's equal limit is no raise.
        // Without any rlimits crun sets RLIMIT_MEMLOCK itself and fails the same way.
        if let Some(n) = process.limits.nofile {
            let mut limits: Vec<PosixRlimit> = p
                .rlimits()
                .clone()
                .unwrap_or_default()
                .into_iter()
                .filter(|r| r.typ() != PosixRlimitType::RlimitNofile)
                .collect();
            limits.push(
                PosixRlimitBuilder::default()
                    .typ(PosixRlimitType::RlimitNofile)
                    .soft(n)
                    .hard(n)
                    .build()
                    .map_err(|e| format!("building the nofile limit: {e}"))?,
            );
            p.set_rlimits(Some(limits));
        }
    }
    Ok(())
}

/// Namespaces, devices and the cgroup.
fn set_linux(spec: &mut Spec, cx: &PlanContext<'_>, key: &InstanceKey) -> Result<(), String> {
    if let Some(linux) = spec.linux_mut() {
        // The host's network (ports are host ports) and hostname, like `--network host`.
        if let Some(ns) = linux.namespaces_mut() {
            ns.retain(|n| {
                !matches!(
                    n.typ(),
                    LinuxNamespaceType::Network | LinuxNamespaceType::Uts
                )
            });
        }
        // Below the unit's own cgroup (Delegate=yes): stopping the unit, or killing its
        // cgroup, takes the container with it.
        // Deny every device, then the runtime adds its default allowed ones (null, zero, tty,
        // random, ...): what `runc spec` writes.
        let deny_all = LinuxDeviceCgroupBuilder::default()
            .allow(false)
            .access("rwm")
            .build()
            .map_err(|e| format!("building device rule: {e}"))?;
        if let Some(res) = linux.resources_mut() {
            if cx.restrict_devices {
                res.set_devices(Some(vec![deny_all]));
            }
        }
        linux.set_cgroups_path(Some(PathBuf::from(format!(
            "{}/{}/container",
            super::names::slice_cgroup(key.service.as_str()),
            key.unit_name()
        ))));
    }
    Ok(())
}

/// The system-call filter (`seccomp` of the definitions), chosen for the container's
/// architecture and bounding capabilities (see `plan::seccomp`).
fn set_seccomp(spec: &mut Spec, cx: &PlanContext<'_>, process: &ProcessDef) -> Result<(), String> {
    // A process's own profile (recorded in the deployment; never unconfined by omission)
    // or the service's.
    let profile = match &process.seccomp {
        None => cx.seccomp,
        Some(_) => cx
            .deployment
            .and_then(|d| d.process_seccomp.get(process.name.as_str()))
            .ok_or_else(|| {
                format!(
                    "services.{}.processes.{}.seccomp: the deployment has no profile recorded for it",
                    cx.service.id, process.name
                )
            })?
            .as_deref(),
    };
    let Some(profile) = profile else {
        return Ok(());
    };
    let caps: Vec<String> = spec
        .process()
        .as_ref()
        .and_then(|p| p.capabilities().as_ref())
        .and_then(|c| c.bounding().as_ref())
        .map(|b| {
            b.iter()
                .filter_map(|c| serde_json::to_value(c).ok()?.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    let filter = super::seccomp::plan_seccomp(
        profile,
        &super::seccomp::Target {
            arch: std::env::consts::ARCH,
            caps: &caps,
            kernel: cx.kernel,
        },
    )
    .map_err(|e| format!("services.{}.seccomp: {e}", cx.service.id))?;
    if let Some(linux) = spec.linux_mut() {
        linux.set_seccomp(Some(filter));
    }
    Ok(())
}

/// The default mounts with /sys bound from the host, plus the host files and /tmp.
fn plan_mounts(
    spec: &Spec,
    cx: &PlanContext<'_>,
    process: &ProcessDef,
) -> Result<Vec<Mount>, String> {
    let mut mounts: Vec<Mount> = spec.mounts().clone().unwrap_or_default();
    // sysfs cannot be mounted fresh without a network namespace of the container's own; bind
    // the host's read-only instead, as podman does for --network=host.
    for m in mounts.iter_mut() {
        if m.destination() == Path::new("/sys") {
            *m = mount(
                "/sys",
                "bind",
                "/sys",
                &["rbind", "nosuid", "noexec", "nodev", "ro"],
            )?;
        }
    }
    for f in cx.host_files {
        let p = f.display().to_string();
        mounts.push(mount(
            &p,
            "bind",
            &p,
            &["bind", "ro", "nosuid", "nodev", "noexec"],
        )?);
    }
    if process.read_only && !process.mounts.iter().any(|m| m.target() == "/tmp") {
        mounts.push(mount(
            "/tmp",
            "tmpfs",
            "tmpfs",
            &["nosuid", "nodev", "mode=1777", "size=65536k"],
        )?);
    }
    for m in &process.mounts {
        mounts.push(user_mount(cx, m)?);
    }
    for f in &process.secrets {
        mounts.push(secret_mount(cx, f)?);
    }
    if process.init {
        mounts.push(mount(
            INIT_PATH,
            "bind",
            &cx.init_bin.display().to_string(),
            &["bind", "ro", "nosuid", "nodev"],
        )?);
    }
    Ok(mounts)
}

/// One of the process's secret files: its stored copy (owned by the container's user, with
/// its mode), bound read-only at its target.
fn secret_mount(cx: &PlanContext<'_>, f: &crate::config::SecretFile) -> Result<Mount, String> {
    let source = f.source.display().to_string();
    let digest = cx
        .deployment
        .and_then(|d| d.secret_files.get(&source))
        .ok_or_else(|| format!("no deployed copy of secret file {source}"))?;
    let name = crate::plan::deployment::secret_file_name(digest, cx.user.uid, cx.user.gid, f.mode);
    mount(
        &f.target,
        "bind",
        &cx.secret_files_dir.join(name).display().to_string(),
        &["bind", "ro", "nosuid", "nodev", "noexec"],
    )
}

/// One of the process's `mounts` (volumes live under the service's volumes directory).
fn user_mount(cx: &PlanContext<'_>, m: &crate::config::MountDef) -> Result<Mount, String> {
    use crate::config::MountDef;
    let rw = |ro: bool| if ro { "ro" } else { "rw" };
    match m {
        MountDef::Bind {
            source,
            target,
            read_only,
        } => mount(
            target,
            "bind",
            &source.display().to_string(),
            &["rbind", rw(*read_only), "nosuid", "nodev"],
        ),
        MountDef::Volume {
            source,
            target,
            read_only,
        } => mount(
            target,
            "bind",
            &cx.volumes_dir.join(source).display().to_string(),
            &["rbind", rw(*read_only), "nosuid", "nodev"],
        ),
        MountDef::Tmpfs { target, size, mode } => {
            let mode = format!("mode={mode:o}");
            let size = size.map(|s| format!("size={}k", s.div_ceil(1024)));
            let mut opts = vec!["nosuid", "nodev", mode.as_str()];
            if let Some(s) = &size {
                opts.push(s);
            }
            mount(target, "tmpfs", "tmpfs", &opts)
        }
    }
}

/// `cap_add`/`cap_drop` on every capability set the runtime's default has (ambient only
/// for root, see `set_process`).
fn set_caps(spec: &mut Spec, process: &ProcessDef) -> Result<(), String> {
    if process.cap_add.is_empty() && process.cap_drop.is_empty() {
        return Ok(());
    }
    let parse = |names: &[String]| -> Result<Vec<Capability>, String> {
        names
            .iter()
            .map(|n| {
                crate::config::parse_capability(n).ok_or_else(|| format!("unknown capability {n}"))
            })
            .collect()
    };
    let (add, drop) = (parse(&process.cap_add)?, parse(&process.cap_drop)?);
    let Some(p) = spec.process_mut() else {
        return Ok(());
    };
    let mut caps = p.capabilities().clone().unwrap_or_default();
    let edit = |set: &Option<Capabilities>| -> Option<Capabilities> {
        let mut s = set.clone()?;
        s.extend(add.iter().copied());
        s.retain(|c| !drop.contains(c));
        Some(s)
    };
    caps.set_bounding(edit(caps.bounding()));
    caps.set_effective(edit(caps.effective()));
    caps.set_permitted(edit(caps.permitted()));
    caps.set_inheritable(edit(caps.inheritable()));
    caps.set_ambient(edit(caps.ambient()));
    p.set_capabilities(Some(caps));
    Ok(())
}

/// `config.json` text, pretty and stable: oci-spec keeps capabilities in hash sets, so
/// their order is sorted here to keep output (and snapshots) deterministic.
pub fn render_config(spec: &Spec) -> String {
    let mut value = match serde_json::to_value(spec) {
        Ok(v) => v,
        // A Spec is plain data with string keys; serializing it cannot fail.
        Err(e) => return format!("{{\"error\": \"{e}\"}}"),
    };
    if let Some(caps) = value
        .pointer_mut("/process/capabilities")
        .and_then(|c| c.as_object_mut())
    {
        for set in caps.values_mut() {
            if let Some(list) = set.as_array_mut() {
                list.sort_by(|a, b| a.as_str().cmp(&b.as_str()));
            }
        }
    }
    serde_json::to_string_pretty(&value).unwrap_or_default()
}
