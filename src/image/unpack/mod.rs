//! Applies layer tarballs to a rootfs directory, with the semantics `umoci unpack` has:
//! entries are applied in order; `.wh.NAME` removes NAME and `.wh..wh..opq` empties its
//! directory, but only of what lower layers left (entries this layer already wrote survive,
//! whatever their order in the tar); an entry replaces whatever was at its path unless both
//! are directories; metadata is applied as ownership, mode, xattrs, times; directories get
//! their mode and times at the end of the layer, after their contents were written.
//!
//! Safety: nothing outside the rootfs may be touched, whatever the tar says. Entry paths are
//! cleaned lexically (a `..` that would climb above the root is refused, a leading `/` is
//! dropped, as umoci does); then every existing parent component is checked with `lstat` and
//! the entry is refused if one is a symlink, since following it could lead anywhere. The
//! last component is never followed either: whatever exists there is removed first and
//! creation uses `O_EXCL`/`mkdir`/`symlink`/`link`/`mknod`, which do not follow symlinks.
//! The checks are race-free only because the rootfs being built is private to this process
//! (see the store's locking and temporary directory); do not point this at a shared tree.
//!
//! Pure path logic ([`sanitize_path`], [`classify`], [`parse_pax_time`]) is separate from
//! the I/O so it can be tested on its own.
//!
//! Two modes, one per file: this file is the whole-rootfs mode (`Unpacker::new`: every layer
//! applied to one directory) and what both modes share; `layered.rs` is the layered mode
//! (`Unpacker::layered`: one layer's own directory over its lowers, for overlayfs).

mod layered;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::ffi::{CString, OsStr};
use std::fs::{self, File, Metadata, OpenOptions};
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::fcntl::AT_FDCWD;
use nix::sys::stat::{futimens, makedev, mknod, utimensat, Mode, SFlag, UtimensatFlags};
use nix::sys::time::TimeSpec;
use tar::EntryType;

use super::overlay::{self, Found};
use super::ImageError;

const WHITEOUT_PREFIX: &str = ".wh.";
const OPAQUE_MARKER: &str = ".wh..wh..opq";

/// Mode of directories a layer implies without an entry for them (umoci creates them with
/// 0777 minus its umask, which is 0755 in practice; we do not depend on our umask).
const IMPLICIT_DIR_MODE: u32 = 0o755;

/// What a cleaned entry path means.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum EntryName {
    /// The rootfs root itself (`./`, `/`).
    Root,
    /// `dir/.wh.NAME`: remove `dir/NAME` as left by lower layers.
    Whiteout { dir: PathBuf, target: PathBuf },
    /// `dir/.wh..wh..opq`: remove the lower-layer contents of `dir`.
    Opaque { dir: PathBuf },
    /// Anything else: create or replace this path.
    Normal,
}

/// Cleans a tar entry path into a path relative to the rootfs with only normal components.
/// Leading `/` and `.` components are dropped and `..` pops a component (umoci and tar
/// treat absolute names as relative to the destination); a `..` that would climb above the
/// root is refused rather than clamped, since no legitimate layer contains one.
pub(crate) fn sanitize_path(raw: &[u8]) -> Result<PathBuf, String> {
    if raw.is_empty() {
        return Err("empty path".to_string());
    }
    let mut parts: Vec<&[u8]> = Vec::new();
    for part in raw.split(|&b| b == b'/') {
        match part {
            b"" | b"." => {}
            b".." => {
                if parts.pop().is_none() {
                    return Err("path escapes the rootfs with '..'".to_string());
                }
            }
            p => parts.push(p),
        }
    }
    let mut out = PathBuf::new();
    for p in parts {
        out.push(OsStr::from_bytes(p));
    }
    Ok(out)
}

/// Classifies a cleaned path (see [`sanitize_path`]) as root, whiteout or normal entry.
pub(crate) fn classify(rel: &Path) -> Result<EntryName, String> {
    let Some(name) = rel.file_name() else {
        return Ok(EntryName::Root);
    };
    let dir = rel.parent().unwrap_or(Path::new("")).to_path_buf();
    let name = name.as_bytes();
    if name == OPAQUE_MARKER.as_bytes() {
        return Ok(EntryName::Opaque { dir });
    }
    let Some(target) = name.strip_prefix(WHITEOUT_PREFIX.as_bytes()) else {
        return Ok(EntryName::Normal);
    };
    // sanitize_path already removed "." and ".." components, but the whiteout prefix can
    // hide them again: ".wh..." would white out the parent directory.
    if matches!(target, b"" | b"." | b"..") {
        return Err(format!(
            "whiteout {:?} does not name a file",
            String::from_utf8_lossy(name)
        ));
    }
    Ok(EntryName::Whiteout {
        dir,
        target: PathBuf::from(OsStr::from_bytes(target)),
    })
}

/// Parses a PAX time (`1700000000.123456789`, possibly negative) into seconds and
/// nanoseconds, the latter always in 0..1e9.
pub(crate) fn parse_pax_time(value: &[u8]) -> Option<(i64, i64)> {
    let s = std::str::from_utf8(value).ok()?;
    let (int, frac) = s.split_once('.').unwrap_or((s, ""));
    let negative = int.starts_with('-');
    let mut secs: i64 = int.parse().ok()?;
    if !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    // Nanosecond precision is all a timespec holds; further digits are dropped.
    let digits: String = frac.chars().chain(std::iter::repeat('0')).take(9).collect();
    let mut nanos: i64 = digits.parse().ok()?;
    if negative && nanos > 0 {
        secs -= 1;
        nanos = 1_000_000_000 - nanos;
    }
    Some((secs, nanos))
}

/// Metadata of one tar entry, as applied to the filesystem.
struct EntryMeta {
    mode: u32,
    uid: u32,
    gid: u32,
    atime: TimeSpec,
    mtime: TimeSpec,
    xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

/// Mode and times of a directory, applied when its layer is done. `mode` is `None` when
/// only the times are restored (a lower-layer directory this layer changed the contents of
/// without having an entry for it: umoci keeps such directories' times).
struct PendingDir {
    mode: Option<u32>,
    atime: TimeSpec,
    mtime: TimeSpec,
}

/// Per-layer bookkeeping.
struct LayerState<'a> {
    layer: &'a str,
    /// Paths this layer wrote, and their ancestors: whiteouts spare them.
    upper: HashSet<PathBuf>,
    pending_dirs: BTreeMap<PathBuf, PendingDir>,
}

impl LayerState<'_> {
    fn unsafe_entry(&self, entry: &str, reason: impl Into<String>) -> ImageError {
        ImageError::UnsafeEntry {
            layer: self.layer.to_string(),
            entry: entry.to_string(),
            reason: reason.into(),
        }
    }

    fn io(&self, entry: &str, cause: io::Error) -> ImageError {
        ImageError::Unpack {
            layer: self.layer.to_string(),
            entry: entry.to_string(),
            cause,
        }
    }

    fn mark_upper(&mut self, rel: &Path) {
        for p in rel.ancestors() {
            if p.as_os_str().is_empty() {
                break;
            }
            // Ancestors of a known path were inserted with it.
            if !self.upper.insert(p.to_path_buf()) {
                break;
            }
        }
    }
}

/// State of the chain of directories leading to a path.
enum Chain {
    /// Every component exists and is a real directory.
    Dirs,
    /// A component does not exist (or is not a directory): nothing below it exists.
    Missing,
    /// A component is a symlink (relative path of the symlink).
    Symlink(PathBuf),
}

fn lstat_opt(path: &Path) -> io::Result<Option<Metadata>> {
    match fs::symlink_metadata(path) {
        Ok(m) => Ok(Some(m)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

fn timespec(secs: i64, nanos: i64) -> TimeSpec {
    TimeSpec::new(secs, nanos)
}

fn errno(e: nix::errno::Errno) -> io::Error {
    io::Error::from_raw_os_error(e as i32)
}

/// Applies layers to one rootfs directory.
pub(crate) struct Unpacker {
    root: PathBuf,
    /// Whether to chown entries; off only in tests run without root, where chown fails.
    preserve_ownership: bool,
    /// Filesystems without xattr support would otherwise produce one warning per file.
    xattr_warned: bool,
    /// Layered mode: `root` is one layer's own directory and these are the layers below it,
    /// topmost first (see [`Unpacker::layered`]). None: `root` is a whole rootfs.
    lowers: Option<Vec<PathBuf>>,
    /// Per lower layer, its paths by inode (dev, ino), built the first time a hardlink
    /// group of that layer is copied up: one walk of a layer, however many groups.
    inodes: std::cell::RefCell<HashMap<PathBuf, InodeIndex>>,
}

type InodeIndex = HashMap<(u64, u64), Vec<PathBuf>>;

impl Unpacker {
    pub(crate) fn new(root: &Path, preserve_ownership: bool) -> Self {
        Unpacker {
            root: root.to_path_buf(),
            preserve_ownership,
            xattr_warned: false,
            lowers: None,
            inodes: Default::default(),
        }
    }

    /// Gives the (empty) root the state umoci gives it before the first layer: root-owned,
    /// 0755, mtime at the epoch. Layers may override it with a `./` entry.
    /// In layered mode the root starts as the lower layers' root is (overlayfs shows the
    /// topmost layer's root).
    pub(crate) fn init_root(&self) -> Result<(), ImageError> {
        let op = |op, e| ImageError::io(&self.root, op, e);
        let below = match self.lowers.as_ref().and_then(|l| l.first()) {
            Some(top) => Some(fs::symlink_metadata(top).map_err(|e| op("reading", e))?),
            None => None,
        };
        let (uid, gid, mode) = below
            .as_ref()
            .map_or((0, 0, 0o755), |m| (m.uid(), m.gid(), m.mode() & 0o7777));
        let (atime, mtime) = below
            .as_ref()
            .map_or((timespec(0, 0), timespec(0, 0)), |m| {
                (
                    timespec(m.atime(), m.atime_nsec()),
                    timespec(m.mtime(), m.mtime_nsec()),
                )
            });
        if self.preserve_ownership {
            std::os::unix::fs::lchown(&self.root, Some(uid), Some(gid))
                .map_err(|e| op("chown", e))?;
        }
        fs::set_permissions(&self.root, fs::Permissions::from_mode(mode))
            .map_err(|e| op("chmod", e))?;
        utimensat(
            AT_FDCWD,
            &self.root,
            &atime,
            &mtime,
            UtimensatFlags::NoFollowSymlink,
        )
        .map_err(|e| op("setting times", errno(e)))
    }

    /// Applies one layer's tar stream. Reads the archive up to its end marker and leaves any
    /// padding after it in `reader` (the caller drains it for hashing).
    ///
    /// A stream that ends right after its last entry's data, without the padding to a
    /// 512-byte block and the end-of-archive blocks (what Debian's umoci 0.4.7 `insert`
    /// writes; Go's archive/tar, GNU tar, containerd and podman read it), is read as if they
    /// were there; one that ends inside an entry is still refused as truncated. (The caller
    /// checks digest and diff_id of the bytes as they are.)
    pub(crate) fn apply_layer<R: Read>(
        &mut self,
        layer: &str,
        reader: R,
    ) -> Result<(), ImageError> {
        let mut state = LayerState {
            layer,
            upper: HashSet::new(),
            pending_dirs: BTreeMap::new(),
        };
        let padded_at = std::rc::Rc::new(std::cell::Cell::new(None));
        let mut archive = tar::Archive::new(PadToBlock {
            inner: reader,
            pos: 0,
            pad_left: 0,
            padded_at: padded_at.clone(),
        });
        let entries = archive
            .entries()
            .map_err(|e| state.io("(archive start)", e))?;
        let mut last_end = 0u64;
        for entry in entries {
            let mut entry = entry.map_err(|e| state.io("(reading next header)", e))?;
            last_end = entry.raw_file_position() + entry.header().entry_size().unwrap_or(0);
            self.apply_entry(&mut state, &mut entry)?;
        }
        if let Some(end) = padded_at.get() {
            if end < last_end {
                return Err(state.io(
                    "(last entry)",
                    std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        format!("the layer ends at byte {end}, inside its last entry (which ends at {last_end}): truncated"),
                    ),
                ));
            }
        }
        self.apply_pending_dirs(&state)
    }

    fn apply_entry<R: Read>(
        &mut self,
        state: &mut LayerState,
        entry: &mut tar::Entry<R>,
    ) -> Result<(), ImageError> {
        let kind = entry.header().entry_type();
        // Global PAX headers carry defaults for the archive, not a file.
        if kind == EntryType::XGlobalHeader {
            return Ok(());
        }
        let raw_path = entry.path_bytes().into_owned();
        let name = String::from_utf8_lossy(&raw_path).into_owned();
        let rel = sanitize_path(&raw_path).map_err(|r| state.unsafe_entry(&name, r))?;
        match classify(&rel).map_err(|r| state.unsafe_entry(&name, r))? {
            EntryName::Whiteout { dir, target } => {
                return self.whiteout(state, &name, &dir, Some(&target))
            }
            EntryName::Opaque { dir } => return self.whiteout(state, &name, &dir, None),
            EntryName::Root if kind != EntryType::Directory => {
                // Replacing the root with a symlink would redirect everything after it.
                return Err(state.unsafe_entry(&name, "the rootfs root can only be a directory"));
            }
            EntryName::Root | EntryName::Normal => {}
        }
        let meta = read_meta(entry).map_err(|e| state.io(&name, e))?;
        let full = self.root.join(&rel);

        if let Some(parent) = rel.parent() {
            self.ensure_parents(state, &name, parent)?;
            self.remember_dir_times(state, parent)
                .map_err(|e| state.io(&name, e))?;
        }
        let existing = lstat_opt(&full).map_err(|e| state.io(&name, e))?;

        if kind == EntryType::Directory {
            return self.apply_dir(state, &name, &rel, &full, existing.as_ref(), &meta);
        }

        if let Some(m) = &existing {
            self.remove(state, &rel, m)
                .map_err(|e| state.io(&name, e))?;
        }
        if self.create_node(state, entry, kind, &name, &full, &meta)? {
            state.mark_upper(&rel);
        }
        Ok(())
    }

    /// A directory entry: kept if one is there (a non-directory is replaced), its owner and
    /// xattrs set now, its mode and times when the layer is done.
    fn apply_dir(
        &mut self,
        state: &mut LayerState,
        name: &str,
        rel: &Path,
        full: &Path,
        existing: Option<&Metadata>,
        meta: &EntryMeta,
    ) -> Result<(), ImageError> {
        let keep = existing.is_some_and(|m| m.file_type().is_dir());
        if !keep {
            if let Some(m) = existing {
                self.remove(state, rel, m).map_err(|e| state.io(name, e))?;
            }
            // 0700 until the layer is done: the real mode may deny writes we still need.
            fs::DirBuilder::new()
                .mode(0o700)
                .create(full)
                .map_err(|e| state.io(name, e))?;
            // A directory where this layer whited out the path: nothing of the lower
            // layers' directory may show through it.
            if self.lowers.is_some() && existing.is_some_and(overlay::is_whiteout) {
                set_opaque(full).map_err(|e| state.io(name, e))?;
            }
        }
        self.chown(full, meta).map_err(|e| state.io(name, e))?;
        self.set_xattrs(full, meta).map_err(|e| state.io(name, e))?;
        state.pending_dirs.insert(
            rel.to_path_buf(),
            PendingDir {
                mode: Some(meta.mode),
                atime: meta.atime,
                mtime: meta.mtime,
            },
        );
        state.mark_upper(rel);
        Ok(())
    }

    /// Creates the non-directory node of an entry at `full` (nothing is there any more).
    /// `false` when it was skipped (a device without CAP_MKNOD).
    fn create_node<R: Read>(
        &mut self,
        state: &mut LayerState,
        entry: &mut tar::Entry<R>,
        kind: EntryType,
        name: &str,
        full: &Path,
        meta: &EntryMeta,
    ) -> Result<bool, ImageError> {
        match kind {
            EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse => {
                self.create_file(entry, kind, full, meta)
                    .map_err(|e| state.io(name, e))?;
            }
            EntryType::Symlink => {
                let target = entry
                    .link_name_bytes()
                    .ok_or_else(|| state.unsafe_entry(name, "symlink without a target"))?;
                std::os::unix::fs::symlink(OsStr::from_bytes(&target), full)
                    .map_err(|e| state.io(name, e))?;
                self.finish_node(full, meta, false)
                    .map_err(|e| state.io(name, e))?;
            }
            EntryType::Link => {
                let target = entry
                    .link_name_bytes()
                    .ok_or_else(|| state.unsafe_entry(name, "hardlink without a target"))?
                    .into_owned();
                self.hardlink(state, name, &target, full)?;
            }
            EntryType::Char | EntryType::Block | EntryType::Fifo => {
                return self.make_special(state, entry.header(), kind, name, full, meta);
            }
            other => {
                return Err(
                    state.unsafe_entry(name, format!("unsupported tar entry type {other:?}"))
                );
            }
        }
        Ok(true)
    }

    /// A device node or fifo; `false` when mknod is not permitted and the entry is skipped.
    fn make_special(
        &mut self,
        state: &LayerState,
        header: &tar::Header,
        kind: EntryType,
        name: &str,
        full: &Path,
        meta: &EntryMeta,
    ) -> Result<bool, ImageError> {
        let (sflag, what) = match kind {
            EntryType::Char => (SFlag::S_IFCHR, "character device"),
            EntryType::Block => (SFlag::S_IFBLK, "block device"),
            _ => (SFlag::S_IFIFO, "fifo"),
        };
        let major = header.device_major().ok().flatten().unwrap_or(0);
        let minor = header.device_minor().ok().flatten().unwrap_or(0);
        if kind == EntryType::Char && major == 0 && minor == 0 {
            // No device has that number; overlayfs reads it as a whiteout, so the two ways
            // of unpacking would disagree about it. Layers say `.wh.NAME` for that.
            return Err(state.unsafe_entry(
                name,
                "a character device 0/0 is an overlayfs whiteout, not a device; a layer removes a path with a .wh. entry",
            ));
        }
        let perm = Mode::from_bits_truncate(meta.mode & 0o777);
        match mknod(full, sflag, perm, makedev(major.into(), minor.into())) {
            Ok(()) => self
                .finish_node(full, meta, true)
                .map_err(|e| state.io(name, e))?,
            // Without CAP_MKNOD (e.g. in a user namespace) a device cannot be
            // created; a missing /dev node is rarely fatal, the runtime mounts /dev.
            Err(nix::errno::Errno::EPERM) => {
                tracing::warn!(layer = state.layer, entry = %name, "skipping {what}: mknod not permitted");
                return Ok(false);
            }
            Err(e) => return Err(state.io(name, errno(e))),
        }
        Ok(true)
    }

    /// Creates missing parent directories of an entry, refusing to go through a symlink or
    /// a non-directory.
    fn ensure_parents(
        &self,
        state: &mut LayerState,
        name: &str,
        parent: &Path,
    ) -> Result<(), ImageError> {
        let mut rel = PathBuf::new();
        for comp in parent.components() {
            rel.push(comp);
            let full = self.root.join(&rel);
            match lstat_opt(&full).map_err(|e| state.io(name, e))? {
                Some(m) if m.file_type().is_dir() => {}
                Some(m) if m.file_type().is_symlink() => {
                    return Err(state.unsafe_entry(
                        name,
                        format!(
                            "parent {} is a symlink in the rootfs; following it could write outside the rootfs",
                            rel.display()
                        ),
                    ));
                }
                Some(m) if self.lowers.is_some() && overlay::is_whiteout(&m) => {
                    // Whited out by this layer, which now writes below it: a new directory
                    // that hides the lower layers' one.
                    fs::remove_file(&full).map_err(|e| state.io(name, e))?;
                    self.implicit_dir(&full).map_err(|e| state.io(name, e))?;
                    set_opaque(&full).map_err(|e| state.io(name, e))?;
                }
                Some(_) => return Err(not_a_dir(state, name, &rel)),
                None if self.lowers.is_some() => {
                    // Creating it changes its parent, which keeps the times it had.
                    let up = rel.parent().unwrap_or(Path::new(""));
                    self.remember_dir_times(state, up)
                        .map_err(|e| state.io(name, e))?;
                    match self.lower_dir(state, name, &rel)? {
                        Some((lower, m)) => self
                            .dir_like_lower(state, &rel, &lower, &m)
                            .map_err(|e| state.io(name, e))?,
                        None => self.implicit_dir(&full).map_err(|e| state.io(name, e))?,
                    }
                }
                None => match self.lower_dir(state, name, &rel)? {
                    Some((lower, m)) => self
                        .dir_like_lower(state, &rel, &lower, &m)
                        .map_err(|e| state.io(name, e))?,
                    None => self.implicit_dir(&full).map_err(|e| state.io(name, e))?,
                },
            }
        }
        Ok(())
    }

    /// A directory the layer implies without an entry for it, as umoci makes one.
    fn implicit_dir(&self, full: &Path) -> io::Result<()> {
        fs::DirBuilder::new().mode(0o700).create(full)?;
        if self.preserve_ownership {
            std::os::unix::fs::lchown(full, Some(0), Some(0))?;
        }
        fs::set_permissions(full, fs::Permissions::from_mode(IMPLICIT_DIR_MODE))
    }

    /// Checks the chain of directories down to (and including) `rel`, without creating.
    fn chain(&self, rel: &Path) -> io::Result<Chain> {
        let mut cur = PathBuf::new();
        for comp in rel.components() {
            cur.push(comp);
            match lstat_opt(&self.root.join(&cur))? {
                Some(m) if m.file_type().is_dir() => {}
                Some(m) if m.file_type().is_symlink() => return Ok(Chain::Symlink(cur)),
                _ => return Ok(Chain::Missing),
            }
        }
        Ok(Chain::Dirs)
    }

    /// Records a directory's current times before this layer changes its contents, unless
    /// the layer already decided its final metadata.
    fn remember_dir_times(&self, state: &mut LayerState, rel: &Path) -> io::Result<()> {
        if state.pending_dirs.contains_key(rel) {
            return Ok(());
        }
        if let Some(m) = lstat_opt(&self.root.join(rel))? {
            state.pending_dirs.insert(
                rel.to_path_buf(),
                PendingDir {
                    mode: None,
                    atime: timespec(m.atime(), m.atime_nsec()),
                    mtime: timespec(m.mtime(), m.mtime_nsec()),
                },
            );
        }
        Ok(())
    }

    /// Removes whatever is at `rel` (never following it), forgetting pending directory
    /// metadata below it.
    fn remove(&self, state: &mut LayerState, rel: &Path, m: &Metadata) -> io::Result<()> {
        let full = self.root.join(rel);
        if m.file_type().is_dir() {
            // remove_dir_all does not follow symlinks inside the tree.
            fs::remove_dir_all(&full)?;
            state.pending_dirs.retain(|p, _| !p.starts_with(rel));
        } else {
            fs::remove_file(&full)?;
        }
        Ok(())
    }

    /// Applies a whiteout (`target` set) or an opaque marker (`target` None) found in `dir`.
    fn whiteout(
        &self,
        state: &mut LayerState,
        name: &str,
        dir: &Path,
        target: Option<&Path>,
    ) -> Result<(), ImageError> {
        if self.lowers.is_some() {
            return self.whiteout_layered(state, name, dir, target);
        }
        match self.chain(dir).map_err(|e| state.io(name, e))? {
            Chain::Dirs => {}
            // Nothing below a missing directory to remove.
            Chain::Missing => return Ok(()),
            Chain::Symlink(link) => {
                return Err(state.unsafe_entry(
                    name,
                    format!(
                        "parent {} is a symlink in the rootfs; following it could delete outside the rootfs",
                        link.display()
                    ),
                ))
            }
        }
        self.remember_dir_times(state, dir)
            .map_err(|e| state.io(name, e))?;
        let res = match target {
            Some(t) => self.remove_lower(state, &dir.join(t), false),
            None => self.remove_lower(state, dir, true),
        };
        res.map_err(|e| state.io(name, e))
    }

    /// Removes `rel` unless this layer wrote it; if it did (or `keep_self`), recurses into
    /// it so lower-layer children still go. This is umoci's rule, which makes whiteouts
    /// independent of where they sit in the tar relative to the layer's own entries.
    fn remove_lower(&self, state: &mut LayerState, rel: &Path, keep_self: bool) -> io::Result<()> {
        let full = self.root.join(rel);
        let Some(m) = lstat_opt(&full)? else {
            return Ok(());
        };
        if !keep_self && !state.upper.contains(rel) {
            return self.remove(state, rel, &m);
        }
        if m.file_type().is_dir() {
            for child in fs::read_dir(&full)? {
                let child = child?;
                self.remove_lower(state, &rel.join(child.file_name()), false)?;
            }
        }
        Ok(())
    }

    fn create_file<R: Read>(
        &mut self,
        entry: &mut tar::Entry<R>,
        kind: EntryType,
        full: &Path,
        meta: &EntryMeta,
    ) -> io::Result<()> {
        // create_new is O_CREAT|O_EXCL: never follows or reuses whatever is at the path.
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(full)?;
        let expected = entry.size();
        let written = io::copy(entry, &mut file)?;
        // A truncated archive ends the entry's data early without an error of its own.
        // Sparse entries expand to more than their stored size, so they are not checked.
        if kind != EntryType::GNUSparse && written != expected {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("archive truncated: got {written} of {expected} bytes"),
            ));
        }
        if self.preserve_ownership {
            std::os::unix::fs::fchown(&file, Some(meta.uid), Some(meta.gid))?;
        }
        // After chown, which clears setuid/setgid.
        file.set_permissions(fs::Permissions::from_mode(meta.mode))?;
        self.set_xattrs(full, meta)?;
        futimens(&file, &meta.atime, &meta.mtime).map_err(errno)
    }

    /// Ownership, mode (not for symlinks, which have none), xattrs and times of a node
    /// created by path.
    fn finish_node(&mut self, full: &Path, meta: &EntryMeta, chmod: bool) -> io::Result<()> {
        self.chown(full, meta)?;
        if chmod {
            // The node was just created by mknod, so it is not a symlink to follow.
            fs::set_permissions(full, fs::Permissions::from_mode(meta.mode))?;
        }
        self.set_xattrs(full, meta)?;
        utimensat(
            AT_FDCWD,
            full,
            &meta.atime,
            &meta.mtime,
            UtimensatFlags::NoFollowSymlink,
        )
        .map_err(errno)
    }

    fn chown(&self, full: &Path, meta: &EntryMeta) -> io::Result<()> {
        if self.preserve_ownership {
            std::os::unix::fs::lchown(full, Some(meta.uid), Some(meta.gid))?;
        }
        Ok(())
    }

    /// Creates a hardlink to an entry already in the rootfs (from this or a lower layer),
    /// resolving the target inside the rootfs under the same rules as entry paths.
    fn hardlink(
        &self,
        state: &mut LayerState,
        name: &str,
        target: &[u8],
        full: &Path,
    ) -> Result<(), ImageError> {
        let shown = String::from_utf8_lossy(target).into_owned();
        let rel = sanitize_path(target)
            .map_err(|r| state.unsafe_entry(name, format!("hardlink target {shown:?}: {r}")))?;
        if self.lowers.is_some() {
            self.copy_up(state, name, &rel)?;
        }
        let refuse = |reason: String| {
            state.unsafe_entry(name, format!("hardlink target {shown:?}: {reason}"))
        };
        let parent = rel
            .parent()
            .ok_or_else(|| refuse("is the rootfs root".to_string()))?;
        let missing = || {
            state.io(
                name,
                io::Error::new(
                    io::ErrorKind::NotFound,
                    format!("hardlink target {shown:?} does not exist"),
                ),
            )
        };
        match self.chain(parent).map_err(|e| state.io(name, e))? {
            Chain::Dirs => {}
            Chain::Missing => return Err(missing()),
            Chain::Symlink(link) => {
                return Err(refuse(format!(
                    "goes through symlink {} in the rootfs, which could lead outside it",
                    link.display()
                )))
            }
        }
        let target_full = self.root.join(&rel);
        match lstat_opt(&target_full).map_err(|e| state.io(name, e))? {
            None => return Err(missing()),
            // Whited out by this layer: gone, as in a whole rootfs.
            Some(m) if self.lowers.is_some() && overlay::is_whiteout(&m) => return Err(missing()),
            Some(m) if m.file_type().is_dir() => return Err(refuse("is a directory".to_string())),
            Some(_) => {}
        }
        // std's hard_link uses linkat without AT_SYMLINK_FOLLOW: a symlink target is linked
        // itself, not followed.
        fs::hard_link(&target_full, full).map_err(|e| state.io(name, e))
    }

    fn set_xattrs(&mut self, full: &Path, meta: &EntryMeta) -> io::Result<()> {
        if meta.xattrs.is_empty() {
            return Ok(());
        }
        let path = CString::new(full.as_os_str().as_bytes())?;
        for (key, value) in &meta.xattrs {
            // SELinux labels are the host's business, overlay attributes would confuse an
            // overlay mount of this tree; umoci skips them too.
            if key.as_slice() == b"security.selinux" || key.starts_with(b"trusted.overlay.") {
                continue;
            }
            if let Err(e) = lsetxattr(&path, key, value) {
                // Filesystems without xattrs, or attributes we may not set (user.* on
                // symlinks, trusted.* without CAP_SYS_ADMIN): umoci warns and goes on.
                let tolerable = matches!(e.raw_os_error(), Some(libc::ENOTSUP) | Some(libc::EPERM));
                if !tolerable {
                    return Err(io::Error::new(
                        e.kind(),
                        format!("setting xattr {}: {e}", String::from_utf8_lossy(key)),
                    ));
                }
                if !self.xattr_warned {
                    self.xattr_warned = true;
                    tracing::warn!(path = %full.display(), xattr = %String::from_utf8_lossy(key), "ignoring xattr: {e} (further xattr warnings suppressed)");
                }
            }
        }
        Ok(())
    }

    /// Applies directory modes and times once the layer's contents are in place (writing
    /// into a directory changes its mtime, and its final mode may forbid writing).
    fn apply_pending_dirs(&self, state: &LayerState) -> Result<(), ImageError> {
        for (rel, p) in &state.pending_dirs {
            let full = self.root.join(rel);
            let shown = if rel.as_os_str().is_empty() {
                ".".to_string()
            } else {
                rel.display().to_string()
            };
            let fail = |e| state.io(&shown, e);
            // Entries removed during the layer took their pending metadata with them, so
            // every remaining path is a real directory; O_NOFOLLOW|O_DIRECTORY make sure.
            if let Some(parent) = rel.parent() {
                if !matches!(self.chain(parent).map_err(fail)?, Chain::Dirs) {
                    return Err(
                        state.unsafe_entry(&shown, "directory's parents changed during the layer")
                    );
                }
            }
            let dir = File::options()
                .read(true)
                .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW)
                .open(&full)
                .map_err(fail)?;
            if let Some(mode) = p.mode {
                dir.set_permissions(fs::Permissions::from_mode(mode))
                    .map_err(fail)?;
            }
            futimens(&dir, &p.atime, &p.mtime).map_err(|e| fail(errno(e)))?;
        }
        Ok(())
    }
}

fn not_a_dir(state: &LayerState, name: &str, rel: &Path) -> ImageError {
    state.io(
        name,
        io::Error::new(
            io::ErrorKind::NotADirectory,
            format!("parent {} is not a directory", rel.display()),
        ),
    )
}

fn symlink_parent(state: &LayerState, name: &str, rel: &Path) -> ImageError {
    state.unsafe_entry(
        name,
        format!(
            "parent {} is a symlink in the rootfs; following it could delete outside the rootfs",
            rel.display()
        ),
    )
}

/// Marks a directory opaque for overlayfs: the lower layers' contents are not shown in it.
fn set_opaque(full: &Path) -> io::Result<()> {
    set_xattr(full, overlay::OPAQUE_XATTR.as_bytes(), b"y")
}

fn set_xattr(full: &Path, key: &[u8], value: &[u8]) -> io::Result<()> {
    let path = CString::new(full.as_os_str().as_bytes())?;
    lsetxattr(&path, key, value).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("setting xattr {}: {e}", String::from_utf8_lossy(key)),
        )
    })
}

/// lsetxattr(2) of `path` (not followed); the OS error as it is.
fn lsetxattr(path: &CString, key: &[u8], value: &[u8]) -> io::Result<()> {
    let key_c = CString::new(key)?;
    // SAFETY: both strings are NUL-terminated CStrings that outlive the call, and value's
    // pointer/length describe a live slice.
    let rc = unsafe {
        libc::lsetxattr(
            path.as_ptr(),
            key_c.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Copies the xattrs of `from` to `to` (neither followed), but overlayfs's own.
fn copy_xattrs(from: &Path, to: &Path) -> io::Result<()> {
    let path = CString::new(from.as_os_str().as_bytes())?;
    // SAFETY: a NUL-terminated path; a null buffer of length 0 asks for the size.
    let n = unsafe { libc::llistxattr(path.as_ptr(), std::ptr::null_mut(), 0) };
    if n <= 0 {
        return Ok(());
    }
    let mut names = vec![0u8; n as usize];
    // SAFETY: the buffer is live and writable for its length.
    let n = unsafe { libc::llistxattr(path.as_ptr(), names.as_mut_ptr().cast(), names.len()) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    names.truncate(n as usize);
    for key in names.split(|&b| b == 0).filter(|k| !k.is_empty()) {
        if key.starts_with(b"trusted.overlay.") {
            continue;
        }
        let Ok(k) = std::str::from_utf8(key) else {
            continue;
        };
        if let Some(v) = overlay::xattr_get(from, k)? {
            set_xattr(to, key, &v)?;
        }
    }
    Ok(())
}

fn read_meta<R: Read>(entry: &mut tar::Entry<R>) -> io::Result<EntryMeta> {
    let h = entry.header();
    let id = |v: u64| {
        u32::try_from(v).map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("uid/gid {v} out of range"),
            )
        })
    };
    let mode = h.mode()? & 0o7777;
    let uid = id(h.uid()?)?;
    let gid = id(h.gid()?)?;
    let header_mtime = i64::try_from(h.mtime()?).unwrap_or(i64::MAX);
    let mut mtime = timespec(header_mtime, 0);
    let mut atime = None;
    let mut xattrs = Vec::new();
    if let Some(exts) = entry.pax_extensions()? {
        for ext in exts {
            let ext = ext?;
            let key = ext.key_bytes();
            let time = || {
                parse_pax_time(ext.value_bytes())
                    .map(|(s, n)| timespec(s, n))
                    .ok_or_else(|| {
                        io::Error::new(
                            io::ErrorKind::InvalidData,
                            format!(
                                "bad PAX time {:?}",
                                String::from_utf8_lossy(ext.value_bytes())
                            ),
                        )
                    })
            };
            match key {
                b"mtime" => mtime = time()?,
                b"atime" => atime = Some(time()?),
                _ => {
                    if let Some(name) = key.strip_prefix(b"SCHILY.xattr.") {
                        xattrs.push((name.to_vec(), ext.value_bytes().to_vec()));
                    }
                }
            }
        }
    }
    Ok(EntryMeta {
        mode,
        uid,
        gid,
        // Like umoci (Go's archive/tar): atime defaults to mtime.
        atime: atime.unwrap_or(mtime),
        mtime,
        xattrs,
    })
}

/// A tar stream's reader that, when the stream ends off a 512-byte block boundary, supplies
/// the zeros up to it once and records where the real bytes ended (see
/// [`Unpacker::apply_layer`]).
struct PadToBlock<R> {
    inner: R,
    pos: u64,
    pad_left: u64,
    padded_at: std::rc::Rc<std::cell::Cell<Option<u64>>>,
}

impl<R: Read> Read for PadToBlock<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.pad_left > 0 {
            let n = buf.len().min(self.pad_left as usize);
            buf[..n].fill(0);
            self.pad_left -= n as u64;
            return Ok(n);
        }
        let n = self.inner.read(buf)?;
        if n == 0
            && !buf.is_empty()
            && !self.pos.is_multiple_of(512)
            && self.padded_at.get().is_none()
        {
            self.padded_at.set(Some(self.pos));
            self.pad_left = 512 - self.pos % 512;
            return self.read(buf);
        }
        self.pos += n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> PathBuf {
        PathBuf::from(s)
    }

    #[test]
    fn sanitize_paths() {
        let ok = [
            ("etc/passwd", "etc/passwd"),
            ("./etc/passwd", "etc/passwd"),
            ("/etc/passwd", "etc/passwd"),
            ("//etc//./passwd/", "etc/passwd"),
            ("a/b/../c", "a/c"),
            ("a/..", ""),
            ("./", ""),
            ("/", ""),
            (".", ""),
            ("a/.../b", "a/.../b"),
            ("..a/b..", "..a/b.."),
        ];
        for (raw, want) in ok {
            assert_eq!(sanitize_path(raw.as_bytes()), Ok(p(want)), "{raw}");
        }
        for bad in [
            "../x",
            "..",
            "/../etc/passwd",
            "a/../../x",
            "./a/b/../../../x",
            "",
        ] {
            assert!(sanitize_path(bad.as_bytes()).is_err(), "{bad:?} accepted");
        }
        // Non-UTF-8 names are kept byte for byte.
        assert_eq!(
            sanitize_path(b"a/\xff").unwrap().as_os_str().as_bytes(),
            b"a/\xff"
        );
    }

    #[test]
    fn classify_names() {
        assert_eq!(classify(&p("")), Ok(EntryName::Root));
        assert_eq!(classify(&p("etc/passwd")), Ok(EntryName::Normal));
        assert_eq!(classify(&p("etc/.whatever")), Ok(EntryName::Normal));
        assert_eq!(
            classify(&p("etc/.wh.passwd")),
            Ok(EntryName::Whiteout {
                dir: p("etc"),
                target: p("passwd")
            })
        );
        assert_eq!(
            classify(&p(".wh.etc")),
            Ok(EntryName::Whiteout {
                dir: p(""),
                target: p("etc")
            })
        );
        assert_eq!(
            classify(&p("a/b/.wh..wh..opq")),
            Ok(EntryName::Opaque { dir: p("a/b") })
        );
        assert_eq!(
            classify(&p(".wh..wh..opq")),
            Ok(EntryName::Opaque { dir: p("") })
        );
        // Other .wh..wh. names (aufs metadata) are plain whiteouts of a dotted name, as in umoci.
        assert_eq!(
            classify(&p("a/.wh..wh.plnk")),
            Ok(EntryName::Whiteout {
                dir: p("a"),
                target: p(".wh.plnk")
            })
        );
        for bad in ["a/.wh.", "a/.wh..", "a/.wh..."] {
            assert!(classify(&p(bad)).is_err(), "{bad}");
        }
    }

    #[test]
    fn pax_times() {
        assert_eq!(parse_pax_time(b"1700000000"), Some((1_700_000_000, 0)));
        assert_eq!(
            parse_pax_time(b"1700000000.5"),
            Some((1_700_000_000, 500_000_000))
        );
        assert_eq!(
            parse_pax_time(b"1700000000.123456789123"),
            Some((1_700_000_000, 123_456_789))
        );
        assert_eq!(parse_pax_time(b"-1.25"), Some((-2, 750_000_000)));
        assert_eq!(parse_pax_time(b"-3"), Some((-3, 0)));
        assert_eq!(parse_pax_time(b"12.x"), None);
        assert_eq!(parse_pax_time(b"abc"), None);
    }
}
