//! The OCI runtime side of an instance, run by systemd as `ExecStartPre`/`ExecStopPost` of the
//! instance's unit (`shim instance prepare|cleanup`), and the lookup of the runtime binary.
//!
//! prepare: mount a fresh overlay (the shared read-only image below, the instance's own
//! upper/work above) at the bundle's `rootfs/`. cleanup: `RUNTIME delete --force`, unmount,
//! throw the writable layer away. Both are idempotent, since systemd runs them around every
//! restart and a crash can leave either half done.
//!
//! podman instances use neither: podman mounts the instance's overlay itself (`--rootfs
//! <rootfs>:O`) and the unit's `ExecStopPost` is `podman rm --force --ignore` (see
//! `plan::podman`).

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use nix::mount::{mount, umount2, MntFlags, MsFlags};

use crate::config::Runtime;
use crate::plan::InstanceDir;

/// Finds the runtime's binary in PATH (and the sbin directories, which a non-login PATH can lack).
pub fn runtime_binary(rt: Runtime) -> Result<PathBuf> {
    let name = rt.name();
    let path = std::env::var("PATH").unwrap_or_default();
    let dirs = path
        .split(':')
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .chain(
            [
                "/usr/local/sbin",
                "/usr/local/bin",
                "/usr/sbin",
                "/usr/bin",
                "/sbin",
                "/bin",
            ]
            .map(PathBuf::from),
        );
    for d in dirs {
        let p = d.join(name);
        if p.is_file() {
            return Ok(p);
        }
    }
    bail!("runtime {name:?} is not installed (not found in PATH or the sbin directories); install the {name} package")
}

/// The container id of an instance: its directory's name (the unit name without `.service`).
pub fn container_id(dir: &Path) -> Result<String> {
    dir.file_name()
        .and_then(|n| n.to_str())
        .map(str::to_string)
        .with_context(|| format!("{} has no usable directory name", dir.display()))
}

/// Arguments to remove the runtime's state of a container, stopped or not.
pub fn delete_args(id: &str) -> Vec<String> {
    vec!["delete".into(), "--force".into(), id.into()]
}

fn is_mountpoint(p: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (std::fs::metadata(p), p.parent().map(std::fs::metadata)) {
        (Ok(m), Some(Ok(parent))) => m.dev() != parent.dev(),
        _ => false,
    }
}

fn unmount_all(p: &Path) -> Result<()> {
    // A crash can leave the overlay mounted twice (prepare ran twice): unmount until clear.
    for _ in 0..8 {
        if !is_mountpoint(p) {
            return Ok(());
        }
        umount2(p, MntFlags::MNT_DETACH).with_context(|| format!("unmounting {}", p.display()))?;
    }
    Ok(())
}

/// Mounts the instance's overlay: `lower` (the shared image) read-only below a fresh, empty
/// writable layer.
pub fn prepare(lower: &Path, dir: &Path) -> Result<()> {
    let d = InstanceDir(dir);
    if !d.config().is_file() {
        bail!(
            "{} is missing: the instance was not planned (run shim start)",
            d.config().display()
        );
    }
    if !lower.is_dir() {
        bail!(
            "image rootfs {} is missing (was the image cache removed?)",
            lower.display()
        );
    }
    let rootfs = d.rootfs();
    unmount_all(&rootfs)?;
    let layer = d.layer();
    if layer.exists() {
        std::fs::remove_dir_all(&layer).with_context(|| format!("removing {}", layer.display()))?;
    }
    let (upper, work) = (layer.join("upper"), layer.join("work"));
    for p in [&upper, &work, &rootfs] {
        std::fs::create_dir_all(p).with_context(|| format!("creating {}", p.display()))?;
    }
    let _ = std::fs::remove_file(d.pid_file());
    let opts = format!(
        "lowerdir={},upperdir={},workdir={}",
        lower.display(),
        upper.display(),
        work.display()
    );
    mount(
        Some("overlay"),
        &rootfs,
        Some("overlay"),
        MsFlags::empty(),
        Some(opts.as_str()),
    )
    .with_context(|| format!("mounting overlay at {} ({opts})", rootfs.display()))?;
    Ok(())
}

/// Removes the runtime's state, the overlay and the writable layer. Keeps config.json, so a
/// restart by systemd can prepare again.
pub fn cleanup(runtime: &Path, dir: &Path) -> Result<()> {
    let d = InstanceDir(dir);
    let id = container_id(dir)?;
    let out = std::process::Command::new(runtime)
        .args(delete_args(&id))
        .output()
        .with_context(|| format!("running {} delete", runtime.display()))?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    // "does not exist" is the normal case after a clean exit; anything else is worth a line.
    if !out.status.success() && !stderr.contains("not exist") && !stderr.contains("not found") {
        eprintln!(
            "{} delete --force {id}: {}",
            runtime.display(),
            stderr.trim()
        );
    }
    unmount_all(&d.rootfs())?;
    for p in [d.layer()] {
        if p.exists() {
            std::fs::remove_dir_all(&p).with_context(|| format!("removing {}", p.display()))?;
        }
    }
    let _ = std::fs::remove_file(d.pid_file());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delete_is_forced_by_id() {
        assert_eq!(
            delete_args("shim-a-web-abc-1"),
            ["delete", "--force", "shim-a-web-abc-1"]
        );
    }

    #[test]
    fn container_id_is_dir_name() {
        assert_eq!(
            container_id(Path::new("/run/shim/instances/a/shim-a-web-abc-1")).unwrap(),
            "shim-a-web-abc-1"
        );
    }

    #[test]
    fn prepare_refuses_unplanned_instance() {
        let t = tempfile::tempdir().unwrap();
        let err = prepare(t.path(), &t.path().join("x")).unwrap_err();
        assert!(err.to_string().contains("config.json is missing"), "{err}");
    }
}
