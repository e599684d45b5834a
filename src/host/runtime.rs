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
    use crate::plan::runtime_args::{Args, Delete};
    Delete { force: true, id }.args()
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

/// Mounts the instance's overlay: `lowers` (the image's shared layer directories, lowest
/// first; or one whole rootfs) read-only below a fresh, empty writable layer.
pub fn prepare(lowers: &[PathBuf], dir: &Path) -> Result<()> {
    let d = InstanceDir(dir);
    if !d.config().is_file() {
        bail!(
            "{} is missing: the instance was not planned (run shim start)",
            d.config().display()
        );
    }
    // Only `shim status` reads the count: never fail a start over it.
    if let Err(e) = count_start(&d.starts()) {
        eprintln!("counting the start: {e:#}");
    }
    if lowers.is_empty() {
        bail!("no image layer given (--lower)");
    }
    for lower in lowers {
        if !lower.is_dir() {
            bail!(
                "image layer {} is missing (was the image store removed?): `shim reconcile` unpacks it again",
                lower.display()
            );
        }
    }
    let rootfs = d.rootfs();
    unmount_all(&rootfs)?;
    let layer = d.layer();
    if layer.exists() {
        std::fs::remove_dir_all(&layer).with_context(|| format!("removing {}", layer.display()))?;
    }
    let (upper, work) = d.upper_work();
    for p in [&upper, &work, &rootfs] {
        std::fs::create_dir_all(p).with_context(|| format!("creating {}", p.display()))?;
    }
    let _ = std::fs::remove_file(d.pid_file());
    // The merged root is the upper directory's: give it the image's root owner and mode.
    if let Some(top) = lowers.last() {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let m = std::fs::metadata(top).with_context(|| format!("reading {}", top.display()))?;
        std::os::unix::fs::chown(&upper, Some(m.uid()), Some(m.gid()))
            .with_context(|| format!("chown {}", upper.display()))?;
        std::fs::set_permissions(&upper, std::fs::Permissions::from_mode(m.mode() & 0o7777))
            .with_context(|| format!("chmod {}", upper.display()))?;
    }
    // The rest of the options: upperdir, workdir and their paths.
    let rest = 40 + upper.as_os_str().len() + work.as_os_str().len();
    let (cwd, lowerdir) = lowerdir_option(lowers, 4095usize.saturating_sub(rest));
    let opts = format!(
        "lowerdir={lowerdir},upperdir={},workdir={}",
        upper.display(),
        work.display()
    );
    // mount(2) takes at most a page of options.
    if opts.len() >= 4096 {
        bail!(
            "the image has {} layers, too many for one overlay mount here ({} bytes of mount options, at most 4095): squash some of its layers",
            lowers.len(),
            opts.len()
        );
    }
    let previous = std::env::current_dir().ok();
    if let Some(c) = &cwd {
        std::env::set_current_dir(c).with_context(|| format!("entering {}", c.display()))?;
    }
    let mounted = mount(
        Some("overlay"),
        &rootfs,
        Some("overlay"),
        MsFlags::empty(),
        Some(opts.as_str()),
    );
    if cwd.is_some() {
        let back = previous.unwrap_or_else(|| PathBuf::from("/"));
        std::env::set_current_dir(&back)
            .with_context(|| format!("returning to {}", back.display()))?;
    }
    mounted.with_context(|| format!("mounting overlay at {} ({opts})", rootfs.display()))?;
    Ok(())
}

/// The `lowerdir=` value for `lowers` (lowest first; overlayfs wants the topmost first), and
/// the directory to mount from. Absolute paths, so that the mount table names each layer
/// directory exactly (what `shim image prune` reads); when those would not fit in `budget`
/// bytes and every layer is in one directory (the layer store), names relative to it, which
/// keeps images of up to ~60 layers within the one page mount(2) takes (absolute paths allow
/// ~40).
pub fn lowerdir_option(lowers: &[PathBuf], budget: usize) -> (Option<PathBuf>, String) {
    let absolute: Vec<String> = lowers
        .iter()
        .rev()
        .map(|l| l.display().to_string())
        .collect();
    let absolute = absolute.join(":");
    if absolute.len() <= budget {
        return (None, absolute);
    }
    let parent = lowers.first().and_then(|l| l.parent());
    let shared = parent.filter(|p| {
        lowers.iter().all(|l| {
            l.parent() == Some(*p)
                && l.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| !n.contains([':', ',', '\\']))
        })
    });
    match shared {
        Some(p) => {
            let names: Vec<String> = lowers
                .iter()
                .rev()
                .filter_map(|l| l.file_name())
                .map(|n| n.to_string_lossy().into_owned())
                .collect();
            (Some(p.to_path_buf()), names.join(":"))
        }
        None => (None, absolute),
    }
}

/// Adds one to the start count in `file` (missing: 0). systemd runs ExecStartPre before
/// every start of the unit, the first one and each restart, whatever stopped the previous
/// process (an exit, a SIGKILL, the probe, `systemctl restart`), so `shim status` shows
/// starts − 1 as the instance's restarts. Unlike systemd's `NRestarts`, this count is not
/// reset when the probe resets a failed unit to start it again.
pub fn count_start(file: &Path) -> Result<u32> {
    let n = parse_starts(&std::fs::read_to_string(file).unwrap_or_default()).saturating_add(1);
    crate::host::fsutil::write_atomic(file, format!("{n}\n").as_bytes(), 0o600)?;
    Ok(n)
}

/// The start count as `count_start` writes it; anything unreadable counts as 0.
pub fn parse_starts(text: &str) -> u32 {
    text.trim().parse().unwrap_or(0)
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

/// Removes a one-off's bundle directory once cleaned up (nothing in it is needed again).
pub fn remove_dir(dir: &Path) -> Result<()> {
    match std::fs::remove_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("removing {}", dir.display())),
    }
}

/// The cgroup v2 path of this process (`0::/shim.slice/x.service` → `/shim.slice/x.service`).
pub fn own_cgroup(proc_self_cgroup: &str) -> Option<&str> {
    proc_self_cgroup
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .map(str::trim)
        .filter(|p| p.starts_with('/'))
}

/// Moves this process into a `leaf` child of its own (delegated) cgroup, so that the
/// container's cgroup, a sibling, is never below a cgroup that holds processes (cgroup v2's
/// "no internal processes" rule, which bites once controllers are enabled). Best effort: on a
/// host without a unified hierarchy it does nothing.
pub fn enter_cgroup_leaf(leaf: &str) -> Result<()> {
    let text = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
    let Some(path) = own_cgroup(&text) else {
        return Ok(());
    };
    let dir = Path::new("/sys/fs/cgroup")
        .join(path.trim_start_matches('/'))
        .join(leaf);
    if !dir
        .parent()
        .is_some_and(|p| p.join("cgroup.procs").is_file())
    {
        return Ok(());
    }
    match std::fs::create_dir(&dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e).with_context(|| format!("creating cgroup {}", dir.display())),
    }
    std::fs::write(dir.join("cgroup.procs"), b"0\n")
        .with_context(|| format!("moving into cgroup {}", dir.display()))
}

/// What systemd says of a unit's end in ExecStopPost's environment, recorded for
/// `shim cron list` (the unit itself may be unloaded by then).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LastResult {
    /// When it ended, seconds since the epoch.
    pub ended: u64,
    /// `$SERVICE_RESULT`: "success", "exit-code", "signal", "timeout", ...
    pub result: String,
    /// `$EXIT_CODE`/`$EXIT_STATUS`: "exited" + "3", "killed" + "TERM", ...
    pub exit_code: String,
    pub exit_status: String,
    /// The revision that ran, if the run said (the `revision` file in its directory).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<String>,
}

/// Writes `file` atomically from ExecStopPost's environment.
pub fn record_last_result(file: &Path, dir: &Path) -> Result<()> {
    let env = |k: &str| std::env::var(k).unwrap_or_default();
    let last = LastResult {
        ended: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
        result: env("SERVICE_RESULT"),
        exit_code: env("EXIT_CODE"),
        exit_status: env("EXIT_STATUS"),
        revision: std::fs::read_to_string(InstanceDir(dir).revision())
            .ok()
            .map(|s| s.trim().to_string()),
    };
    if let Some(parent) = file.parent() {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating {}", parent.display()))?;
    }
    let tmp = file.with_extension("tmp");
    std::fs::write(&tmp, serde_json::to_vec(&last)?)
        .with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, file).with_context(|| format!("renaming to {}", file.display()))
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
    fn own_cgroup_is_the_unified_line() {
        assert_eq!(
            own_cgroup("0::/shim.slice/shimrun-a-1.service\n"),
            Some("/shim.slice/shimrun-a-1.service")
        );
        assert_eq!(own_cgroup("1:name=systemd:/x\n"), None);
    }

    #[test]
    fn starts_are_counted() {
        let t = tempfile::tempdir().unwrap();
        let f = t.path().join("starts");
        assert_eq!(count_start(&f).unwrap(), 1);
        assert_eq!(count_start(&f).unwrap(), 2);
        assert_eq!(parse_starts(&std::fs::read_to_string(&f).unwrap()), 2);
        assert_eq!(parse_starts("garbage"), 0);
    }

    #[test]
    fn prepare_refuses_unplanned_instance() {
        let t = tempfile::tempdir().unwrap();
        let err = prepare(&[t.path().to_path_buf()], &t.path().join("x")).unwrap_err();
        assert!(err.to_string().contains("config.json is missing"), "{err}");
    }

    /// An image of more layers than one overlay mount takes is refused before anything is
    /// mounted, saying how many and what to do; a missing layer names itself.
    #[test]
    fn prepare_refuses_too_many_layers_and_a_missing_one() {
        let t = tempfile::tempdir().unwrap();
        let dir = t.path().join("inst");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(InstanceDir(&dir).config(), "{}").unwrap();
        let store = t.path().join("layers");
        let lowers: Vec<PathBuf> = (0..80).map(|i| store.join(format!("{i:064x}"))).collect();
        for l in &lowers {
            std::fs::create_dir_all(l).unwrap();
        }
        let err = prepare(&lowers, &dir).unwrap_err().to_string();
        assert!(
            err.contains("the image has 80 layers, too many for one overlay mount")
                && err.contains("squash"),
            "{err}"
        );
        assert!(!is_mountpoint(&InstanceDir(&dir).rootfs()));
        std::fs::remove_dir(&lowers[3]).unwrap();
        let err = prepare(&lowers[..5], &dir).unwrap_err().to_string();
        assert!(
            err.contains(&format!("image layer {} is missing", lowers[3].display())),
            "{err}"
        );
    }

    #[test]
    fn lowerdir_is_topmost_first_and_relative_only_when_absolute_does_not_fit() {
        let l = |p: &str| PathBuf::from(p);
        let three = [l("/s/layers/aa"), l("/s/layers/bb"), l("/s/layers/cc")];
        let (cwd, opt) = lowerdir_option(&three, 4000);
        assert_eq!(
            (cwd, opt.as_str()),
            (None, "/s/layers/cc:/s/layers/bb:/s/layers/aa")
        );
        let (cwd, opt) = lowerdir_option(&three, 20);
        assert_eq!(cwd, Some(l("/s/layers")));
        assert_eq!(opt, "cc:bb:aa");
        // Directories not side by side, or a name overlayfs would split: absolute anyway
        // (and the mount then says it is too long).
        let (cwd, opt) = lowerdir_option(&[l("/a/x"), l("/b/y")], 5);
        assert_eq!((cwd, opt.as_str()), (None, "/b/y:/a/x"));
        let (cwd, _) = lowerdir_option(&[l("/a/x:1"), l("/a/y")], 5);
        assert_eq!(cwd, None);
    }
}
