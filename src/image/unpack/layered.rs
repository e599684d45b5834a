//! Layered mode: the unpacker builds one layer's own directory over the layers below it
//! (`lowers`, topmost first), as overlayfs will stack them: what the layer does to a lower
//! entry is recorded as overlayfs whiteouts, opaque markers and copy-ups instead of being
//! done to a shared tree. The whole-rootfs mode (`Unpacker::new`) and everything both modes
//! share is in `mod.rs`; the entry points there call in here when `lowers` is set.

use std::fs::{self, Metadata};
use std::io;
use std::path::{Path, PathBuf};

use super::*;

impl Unpacker {
    /// An unpacker of one layer into its own directory `root`, above `lowers` (the image's
    /// earlier layers, topmost first), in the form an overlay mount reads: a whiteout becomes
    /// a character device 0/0, an opaque marker (or a whiteout of a directory this layer
    /// writes) the directory's `trusted.overlay.opaque=y`; a parent directory the layer
    /// implies gets the metadata it has below; a hardlink to a lower layer's file copies that
    /// file up first. The merged view is then what [`Unpacker::new`] would build.
    pub(crate) fn layered(root: &Path, preserve_ownership: bool, lowers: Vec<PathBuf>) -> Self {
        Unpacker {
            lowers: Some(lowers),
            ..Unpacker::new(root, preserve_ownership)
        }
    }

    /// The layer being built over its lowers, topmost first (layered mode).
    pub(super) fn stack(&self) -> Vec<PathBuf> {
        let mut v = vec![self.root.clone()];
        v.extend(self.lowers.iter().flatten().cloned());
        v
    }

    /// Layered mode: the lower layers' directory at `rel` (which this layer's directory does
    /// not have), refusing a symlink or a non-directory there as a whole-rootfs unpack would.
    pub(super) fn lower_dir(
        &self,
        state: &LayerState,
        name: &str,
        rel: &Path,
    ) -> Result<Option<(PathBuf, Metadata)>, ImageError> {
        if self.lowers.is_none() {
            return Ok(None);
        }
        match overlay::lookup(&self.stack(), rel).map_err(|e| state.io(name, e))? {
            Found::Missing => Ok(None),
            Found::Entry(p, m) if m.is_dir() => Ok(Some((p, m))),
            Found::Entry(_, m) if !m.file_type().is_symlink() => Err(not_a_dir(state, name, rel)),
            Found::Entry(..) | Found::SymlinkParent(_) => Err(state.unsafe_entry(
                name,
                format!(
                    "parent {} is a symlink in the rootfs; following it could write outside the rootfs",
                    rel.display()
                ),
            )),
        }
    }

    /// This layer's copy of a lower layer's directory (owner, mode, xattrs, times), which
    /// overlayfs shows in its place; its times are restored when the layer is done.
    pub(super) fn dir_like_lower(
        &self,
        state: &mut LayerState,
        rel: &Path,
        lower: &Path,
        m: &Metadata,
    ) -> io::Result<()> {
        let full = self.root.join(rel);
        fs::DirBuilder::new().mode(0o700).create(&full)?;
        if self.preserve_ownership {
            std::os::unix::fs::lchown(&full, Some(m.uid()), Some(m.gid()))?;
        }
        copy_xattrs(lower, &full)?;
        fs::set_permissions(&full, fs::Permissions::from_mode(m.mode() & 0o7777))?;
        state
            .pending_dirs
            .entry(rel.to_path_buf())
            .or_insert(PendingDir {
                mode: None,
                atime: timespec(m.atime(), m.atime_nsec()),
                mtime: timespec(m.mtime(), m.mtime_nsec()),
            });
        Ok(())
    }

    /// [`Unpacker::whiteout`] in layered mode, with umoci's rule: what this layer wrote
    /// stays, what the lower layers have goes. A whiteout of a path the layer did not write
    /// becomes a character device 0/0; an opaque marker, or a whiteout of a directory the
    /// layer wrote, makes the directory opaque (its lower contents gone, the layer's kept).
    pub(super) fn whiteout_layered(
        &self,
        state: &mut LayerState,
        name: &str,
        dir: &Path,
        target: Option<&Path>,
    ) -> Result<(), ImageError> {
        match overlay::lookup(&self.stack(), dir).map_err(|e| state.io(name, e))? {
            Found::Entry(_, m) if m.is_dir() => {}
            Found::Entry(_, m) if m.file_type().is_symlink() => {
                return Err(symlink_parent(state, name, dir))
            }
            Found::SymlinkParent(link) => return Err(symlink_parent(state, name, &link)),
            // Nothing below a missing directory to remove.
            Found::Entry(..) | Found::Missing => return Ok(()),
        }
        self.ensure_parents(state, name, dir)?;
        self.remember_dir_times(state, dir)
            .map_err(|e| state.io(name, e))?;
        let Some(t) = target else {
            return self.make_opaque(state, name, dir);
        };
        let rel = dir.join(t);
        let full = self.root.join(&rel);
        let existing = lstat_opt(&full).map_err(|e| state.io(name, e))?;
        if state.upper.contains(&rel) {
            if existing.as_ref().is_some_and(|m| m.is_dir()) {
                return self.make_opaque(state, name, &rel);
            }
            return Ok(());
        }
        let io = |e| state.io(name, e);
        // Below a directory this layer made opaque, nothing of the lower layers shows.
        let hides = !overlay::is_opaque(&self.root.join(dir))
            && matches!(
                overlay::lookup(self.lowers.as_deref().unwrap_or_default(), &rel).map_err(io)?,
                Found::Entry(..)
            );
        let mut hides = hides;
        if let Some(m) = existing {
            if overlay::is_whiteout(&m) {
                return Ok(());
            }
            // A hardlink target this layer copied up: the lower file it stands for goes.
            self.remove(state, &rel, &m)
                .map_err(|e| state.io(name, e))?;
            hides = true;
        }
        if hides {
            mknod(&full, SFlag::S_IFCHR, Mode::empty(), 0).map_err(|e| state.io(name, errno(e)))?;
        }
        Ok(())
    }

    /// Layered mode: everything of `dir` that this layer did not write goes, as umoci's
    /// opaque rule has it. In the layer's own directory that is what it holds but did not
    /// write (hardlink targets copied up, directories made for whiteouts, whiteouts), and
    /// the lower layers' contents are hidden by the opaque mark; for the root, which
    /// overlayfs never treats as opaque, by a whiteout for each lower entry instead.
    pub(super) fn make_opaque(
        &self,
        state: &mut LayerState,
        name: &str,
        dir: &Path,
    ) -> Result<(), ImageError> {
        self.remove_lower(state, dir, true)
            .map_err(|e| state.io(name, e))?;
        let full = self.root.join(dir);
        if !dir.as_os_str().is_empty() {
            return set_opaque(&full).map_err(|e| state.io(name, e));
        }
        let mut names = BTreeSet::new();
        for lower in self.lowers.iter().flatten() {
            for e in fs::read_dir(lower).map_err(|e| state.io(name, e))? {
                names.insert(e.map_err(|e| state.io(name, e))?.file_name());
            }
        }
        for n in names {
            let rel = PathBuf::from(&n);
            if lstat_opt(&full.join(&n))
                .map_err(|e| state.io(name, e))?
                .is_some()
            {
                continue;
            }
            let visible = overlay::lookup(self.lowers.as_deref().unwrap_or_default(), &rel)
                .map_err(|e| state.io(name, e))?;
            if matches!(visible, Found::Entry(..)) {
                mknod(&full.join(&n), SFlag::S_IFCHR, Mode::empty(), 0)
                    .map_err(|e| state.io(name, errno(e)))?;
            }
        }
        Ok(())
    }

    /// Layered mode, before a hardlink to `rel`: if only a lower layer has the target,
    /// this layer gets a copy of it (content, owner, mode, xattrs, times), so that the link
    /// and its target are one inode in the merged view, as in a whole-rootfs unpack. The
    /// copy does not count as written by this layer: a later whiteout still removes it.
    pub(super) fn copy_up(
        &self,
        state: &mut LayerState,
        name: &str,
        rel: &Path,
    ) -> Result<(), ImageError> {
        let dest = self.root.join(rel);
        if lstat_opt(&dest).map_err(|e| state.io(name, e))?.is_some() {
            return Ok(());
        }
        let (lower, m) = match overlay::lookup(&self.stack(), rel).map_err(|e| state.io(name, e))? {
            Found::Entry(p, m) if !m.is_dir() => (p, m),
            // Missing, a directory or behind a symlink: the usual checks say which.
            _ => return Ok(()),
        };
        if let Some(parent) = rel.parent() {
            self.ensure_parents(state, name, parent)?;
            self.remember_dir_times(state, parent)
                .map_err(|e| state.io(name, e))?;
        }
        copy_node(&lower, &m, &dest, self.preserve_ownership).map_err(|e| state.io(name, e))?;
        if m.nlink() > 1 {
            self.copy_up_links(state, name, rel, &lower, &m)?;
        }
        Ok(())
    }

    /// The paths of lower layer `layer` by inode, walked once per unpack.
    pub(super) fn layer_inodes(&self, layer: &Path) -> io::Result<std::cell::Ref<'_, InodeIndex>> {
        if !self.inodes.borrow().contains_key(layer) {
            let mut index = InodeIndex::new();
            let mut stack = vec![layer.to_path_buf()];
            while let Some(p) = stack.pop() {
                let pm = fs::symlink_metadata(&p)?;
                if pm.is_dir() {
                    for e in fs::read_dir(&p)? {
                        stack.push(e?.path());
                    }
                } else if pm.nlink() > 1 {
                    if let Ok(r) = p.strip_prefix(layer) {
                        index
                            .entry((pm.dev(), pm.ino()))
                            .or_default()
                            .push(r.to_path_buf());
                    }
                }
            }
            self.inodes.borrow_mut().insert(layer.to_path_buf(), index);
        }
        // Present: inserted just above if it was not.
        Ok(std::cell::Ref::map(self.inodes.borrow(), |m| &m[layer]))
    }

    /// After [`Unpacker::copy_up`] of a file the lower layer has several names for: the
    /// other names still showing that inode in the merged view link to the copy too, so the
    /// whole group stays one inode (as a whole-rootfs unpack has it).
    pub(super) fn copy_up_links(
        &self,
        state: &mut LayerState,
        name: &str,
        rel: &Path,
        lower: &Path,
        m: &Metadata,
    ) -> Result<(), ImageError> {
        let Some(layer) = self.lowers.iter().flatten().find(|l| lower.starts_with(l)) else {
            return Ok(());
        };
        let others: Vec<PathBuf> = self
            .layer_inodes(layer)
            .map_err(|e| state.io(name, e))?
            .get(&(m.dev(), m.ino()))
            .into_iter()
            .flatten()
            .filter(|r| r.as_path() != rel)
            .cloned()
            .collect();
        let dest = self.root.join(rel);
        for other in others {
            let found = overlay::lookup(&self.stack(), &other).map_err(|e| state.io(name, e))?;
            let same = match found {
                Found::Entry(p, om) => p.starts_with(layer) && om.ino() == m.ino(),
                _ => false,
            };
            if !same {
                continue;
            }
            if let Some(parent) = other.parent() {
                self.ensure_parents(state, name, parent)?;
                self.remember_dir_times(state, parent)
                    .map_err(|e| state.io(name, e))?;
            }
            fs::hard_link(&dest, self.root.join(&other)).map_err(|e| state.io(name, e))?;
        }
        Ok(())
    }
}

/// Copies one non-directory node `from` (metadata `m`) to the new path `to`.
fn copy_node(from: &Path, m: &Metadata, to: &Path, ownership: bool) -> io::Result<()> {
    let ft = m.file_type();
    if ft.is_file() {
        let mut src = File::options()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(from)?;
        let mut dst = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(to)?;
        io::copy(&mut src, &mut dst)?;
    } else if ft.is_symlink() {
        std::os::unix::fs::symlink(fs::read_link(from)?, to)?;
    } else {
        use std::os::unix::fs::FileTypeExt;
        let kind = if ft.is_char_device() {
            SFlag::S_IFCHR
        } else if ft.is_block_device() {
            SFlag::S_IFBLK
        } else if ft.is_fifo() {
            SFlag::S_IFIFO
        } else {
            return Err(io::Error::other("a socket cannot be copied up"));
        };
        mknod(to, kind, Mode::from_bits_truncate(0o600), m.rdev()).map_err(errno)?;
    }
    if ownership {
        std::os::unix::fs::lchown(to, Some(m.uid()), Some(m.gid()))?;
    }
    if !ft.is_symlink() {
        // After chown, which clears setuid/setgid.
        fs::set_permissions(to, fs::Permissions::from_mode(m.mode() & 0o7777))?;
    }
    copy_xattrs(from, to)?;
    utimensat(
        AT_FDCWD,
        to,
        &timespec(m.atime(), m.atime_nsec()),
        &timespec(m.mtime(), m.mtime_nsec()),
        UtimensatFlags::NoFollowSymlink,
    )
    .map_err(errno)
}
