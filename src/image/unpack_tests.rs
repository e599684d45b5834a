//! Behaviour of layer application on real directories: entry types and metadata,
//! whiteouts and opaque directories, type changes across layers, and the refusal of every
//! way a layer could reach outside the rootfs. Ownership assertions need root and are
//! skipped (with a message) otherwise.

use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use tempfile::TempDir;

use super::testutil::{is_root, TarBuilder, MTIME};
use super::umoci_compare_tests::{snapshot, OverlayView};
use super::unpack::Unpacker;
use super::ImageError;

/// Equal, but for directory mtimes both set by this run (implied directories get the time
/// they were made, which no two unpacks share).
fn same_node(
    a: Option<&super::umoci_compare_tests::Node>,
    b: Option<&super::umoci_compare_tests::Node>,
) -> bool {
    match (a, b) {
        (Some(a), Some(b))
            if a.kind == "dir" && a.mtime.0 > 1_700_000_000 && b.mtime.0 > 1_700_000_000 =>
        {
            a.mode == b.mode && a.uid == b.uid && a.gid == b.gid
        }
        (a, b) => a == b,
    }
}

/// A scratch area: `rootfs/` to unpack into, and `host/` standing for everything outside
/// it, holding a file that must survive.
struct Scratch {
    _tmp: TempDir,
    base: PathBuf,
    root: PathBuf,
    host: PathBuf,
}

impl Scratch {
    fn new() -> Scratch {
        let tmp = TempDir::new().unwrap();
        let base = tmp.path().to_path_buf();
        let root = base.join("rootfs");
        let host = base.join("host");
        fs::create_dir(&root).unwrap();
        fs::create_dir(&host).unwrap();
        fs::write(host.join("secret"), "host data").unwrap();
        Scratch {
            _tmp: tmp,
            base,
            root,
            host,
        }
    }

    fn unpacker(&self) -> Unpacker {
        let u = Unpacker::new(&self.root, is_root());
        u.init_root().unwrap();
        u
    }

    /// Applies `layers` to `rootfs/`; as root, also unpacks them the layered way (one
    /// directory per layer) and checks that the overlay view of those is the same tree, or
    /// that the layered way refuses the layers too.
    fn apply(&self, layers: &[Vec<u8>]) -> Result<(), ImageError> {
        let flat = (|| {
            let mut u = self.unpacker();
            for (i, l) in layers.iter().enumerate() {
                u.apply_layer(&format!("layer{i}"), &l[..])?;
            }
            Ok(())
        })();
        if is_root() {
            self.check_layered(layers, &flat);
        }
        flat
    }

    fn check_layered(&self, layers: &[Vec<u8>], flat: &Result<(), ImageError>) {
        let scratch = TempDir::new().unwrap();
        let mut dirs: Vec<PathBuf> = Vec::new();
        let mut layered = Ok(());
        for (i, l) in layers.iter().enumerate() {
            let dir = scratch.path().join(format!("layer-dirs/{i}"));
            fs::create_dir_all(&dir).unwrap();
            let lowers = dirs.iter().rev().cloned().collect();
            let mut u = Unpacker::layered(&dir, true, lowers);
            u.init_root().unwrap();
            dirs.push(dir);
            if let Err(e) = u.apply_layer(&format!("layer{i}"), &l[..]) {
                layered = Err(e);
                break;
            }
        }
        match (flat, &layered) {
            (Ok(()), Ok(())) => {}
            (Err(_), Err(_)) => return,
            (a, b) => panic!("whole rootfs: {a:?}, layered: {b:?}"),
        }
        let mnt = scratch.path().join("layer-view");
        let _view;
        let view = if dirs.len() == 1 {
            dirs[0].clone()
        } else {
            _view = OverlayView::mount(&dirs, &mnt);
            mnt
        };
        let (flat_nodes, flat_links) = snapshot(&self.root);
        let (view_nodes, view_links) = snapshot(&view);
        let keys: std::collections::BTreeSet<_> =
            flat_nodes.keys().chain(view_nodes.keys()).collect();
        let diffs: Vec<String> = keys
            .into_iter()
            .filter(|k| !same_node(flat_nodes.get(*k), view_nodes.get(*k)))
            .map(|k| {
                format!(
                    "{k}:\n  whole: {:?}\n  layered: {:?}",
                    flat_nodes.get(k),
                    view_nodes.get(k)
                )
            })
            .collect();
        assert!(
            diffs.is_empty(),
            "layered view differs:\n{}",
            diffs.join("\n")
        );
        assert_eq!(flat_links, view_links, "hardlink groups");
    }

    fn p(&self, rel: &str) -> PathBuf {
        self.root.join(rel)
    }

    fn exists(&self, rel: &str) -> bool {
        fs::symlink_metadata(self.p(rel)).is_ok()
    }

    fn read(&self, rel: &str) -> String {
        fs::read_to_string(self.p(rel)).unwrap()
    }

    fn mode(&self, rel: &str) -> u32 {
        fs::symlink_metadata(self.p(rel)).unwrap().mode() & 0o7777
    }

    /// The host side is exactly as created: one file with its content, nothing else, and
    /// nothing new next to the rootfs either.
    fn assert_host_untouched(&self) {
        let names: Vec<_> = fs::read_dir(&self.host)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec!["secret"], "host dir changed");
        assert_eq!(
            fs::read_to_string(self.host.join("secret")).unwrap(),
            "host data"
        );
        let mut base: Vec<_> = fs::read_dir(&self.base)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        base.sort();
        assert_eq!(
            base,
            vec!["host", "rootfs"],
            "something was written next to the rootfs"
        );
    }
}

fn list(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

fn unsafe_reason(r: Result<(), ImageError>) -> (String, String) {
    match r {
        Err(ImageError::UnsafeEntry { entry, reason, .. }) => (entry, reason),
        other => panic!("expected UnsafeEntry, got {other:?}"),
    }
}

#[test]
fn entry_types_and_metadata() {
    let s = Scratch::new();
    let mut t = TarBuilder::new();
    t.dir("bin", 0o755)
        .file("bin/su", "setuid", 0o4755)
        .file("bin/sg", "setgid", 0o2711)
        .dir("tmp", 0o1777)
        .dir("private", 0o700)
        .symlink("bin/sh", "busybox")
        .symlink("abs", "/does/not/matter")
        .file("bin/busybox", "bb", 0o755)
        .hardlink("bin/ls", "bin/busybox")
        .fifo("run.fifo", 0o600);
    t.owner(1000, 1000)
        .dir("home", 0o750)
        .file("home/notes", "n", 0o640);
    t.owner(0, 0)
        .raw("dev-null", tar::EntryType::Char, 0o666, None, b"");
    s.apply(&[t.build()]).unwrap();

    assert_eq!(s.read("bin/su"), "setuid");
    assert_eq!(s.mode("bin/su"), 0o4755);
    assert_eq!(s.mode("bin/sg"), 0o2711);
    assert_eq!(s.mode("tmp"), 0o1777);
    assert_eq!(s.mode("private"), 0o700);
    assert_eq!(s.mode(""), 0o755);
    assert_eq!(fs::read_link(s.p("bin/sh")).unwrap(), Path::new("busybox"));
    assert_eq!(
        fs::read_link(s.p("abs")).unwrap(),
        Path::new("/does/not/matter")
    );
    let bb = fs::metadata(s.p("bin/busybox")).unwrap();
    let ls = fs::metadata(s.p("bin/ls")).unwrap();
    assert_eq!((bb.ino(), bb.nlink()), (ls.ino(), 2));
    assert!(fs::symlink_metadata(s.p("run.fifo"))
        .unwrap()
        .file_type()
        .is_fifo());
    assert_eq!(s.mode("run.fifo"), 0o600);
    // Directory times are applied after their contents were written.
    for rel in ["bin", "bin/su", "tmp", "home", "home/notes", "run.fifo"] {
        assert_eq!(
            fs::symlink_metadata(s.p(rel)).unwrap().mtime(),
            MTIME as i64,
            "{rel}"
        );
    }
    assert_eq!(
        fs::symlink_metadata(s.p("bin/sh")).unwrap().mtime(),
        MTIME as i64
    );
    // Entries at the root changed its contents, but it keeps umoci's initial epoch mtime.
    assert_eq!(fs::symlink_metadata(&s.root).unwrap().mtime(), 0);

    if !is_root() {
        println!("SKIP ownership and device checks: not running as root");
        return;
    }
    let home = fs::metadata(s.p("home/notes")).unwrap();
    assert_eq!((home.uid(), home.gid()), (1000, 1000));
    assert_eq!(fs::metadata(s.p("bin/su")).unwrap().uid(), 0);
    let dev = fs::symlink_metadata(s.p("dev-null")).unwrap();
    assert!(dev.file_type().is_char_device());
    assert_eq!(dev.rdev(), nix::sys::stat::makedev(1, 3));
}

#[test]
fn implicit_parents_and_root_entry() {
    let s = Scratch::new();
    let mut t = TarBuilder::new();
    t.mtime = 1234;
    t.dir("./", 0o711).file("/abs/deep/file", "x", 0o600);
    s.apply(&[t.build()]).unwrap();
    // Absolute names land inside the rootfs, like umoci; implied parents are 0755.
    assert_eq!(s.read("abs/deep/file"), "x");
    assert_eq!(s.mode("abs"), 0o755);
    assert_eq!(s.mode("abs/deep"), 0o755);
    assert_eq!(s.mode(""), 0o711);
    assert_eq!(fs::symlink_metadata(&s.root).unwrap().mtime(), 1234);
    s.assert_host_untouched();
}

#[test]
fn whiteouts_remove_lower_entries_only() {
    let s = Scratch::new();
    let mut l1 = TarBuilder::new();
    l1.dir("etc", 0o755)
        .file("etc/a", "a", 0o644)
        .file("etc/b", "b", 0o644)
        .dir("etc/d", 0o755)
        .file("etc/d/x", "x", 0o644)
        .symlink("etc/link", "/etc/a")
        .file("keep", "k", 0o644);
    let mut l2 = TarBuilder::new();
    l2.whiteout("etc/a")
        .whiteout("etc/d")
        .whiteout("etc/link")
        .whiteout("etc/never-existed")
        .whiteout("nodir/x")
        // Written by this layer before its whiteout: the whiteout only targets lower layers.
        .file("etc/new", "new", 0o644)
        .whiteout("etc/new")
        // And after it: also survives.
        .whiteout("etc/later")
        .file("etc/later", "later", 0o644);
    s.apply(&[l1.build(), l2.build()]).unwrap();
    assert_eq!(list(&s.p("etc")), vec!["b", "later", "new"]);
    assert!(s.exists("keep"));
    assert!(!s.exists(".wh.etc"));
    // The whiteouts changed etc's contents; it keeps the mtime the lower layer gave it.
    assert_eq!(fs::metadata(s.p("etc")).unwrap().mtime(), MTIME as i64);
}

#[test]
fn opaque_dirs_keep_same_layer_entries_in_any_order() {
    let s = Scratch::new();
    let mut l1 = TarBuilder::new();
    l1.dir("a", 0o755)
        .file("a/old", "old", 0o644)
        .dir("a/sub", 0o755)
        .file("a/sub/old", "old", 0o644)
        .dir("b", 0o755)
        .file("b/old", "old", 0o644)
        .dir("b/sub", 0o755)
        .file("b/sub/old", "old", 0o644)
        .dir("c", 0o755)
        .file("c/old", "old", 0o644);
    let mut l2 = TarBuilder::new();
    // Marker first (the usual order): everything below `a` goes, including a/sub, which the
    // layer then recreates.
    l2.dir("a", 0o700).opaque("a").file("a/new", "new", 0o644);
    // Marker after the layer's own entries: they survive, and a subdirectory the layer
    // shares with the lower one survives but loses its lower children (umoci's rule).
    l2.dir("b", 0o755)
        .file("b/new", "new", 0o644)
        .dir("b/sub", 0o755)
        .opaque("b");
    l2.dir("a/sub", 0o755).file("a/sub/new", "n", 0o644);
    l2.opaque("c");
    s.apply(&[l1.build(), l2.build()]).unwrap();
    assert_eq!(list(&s.p("a")), vec!["new", "sub"]);
    assert_eq!(list(&s.p("a/sub")), vec!["new"]);
    assert_eq!(list(&s.p("b")), vec!["new", "sub"]);
    assert_eq!(list(&s.p("b/sub")), Vec::<String>::new());
    assert_eq!(list(&s.p("c")), Vec::<String>::new());
    assert_eq!(s.mode("a"), 0o700);

    // An opaque marker whose directory the layer wrote after it: lower contents still go.
    let s = Scratch::new();
    let mut l1 = TarBuilder::new();
    l1.dir("d", 0o755)
        .dir("d/e", 0o755)
        .file("d/e/old", "o", 0o644);
    let mut l2 = TarBuilder::new();
    l2.opaque("d").dir("d/e", 0o755).file("d/e/new", "n", 0o644);
    s.apply(&[l1.build(), l2.build()]).unwrap();
    assert_eq!(list(&s.p("d")), vec!["e"]);
    assert_eq!(list(&s.p("d/e")), vec!["new"]);
}

#[test]
fn type_changes_across_layers() {
    let s = Scratch::new();
    let mut l1 = TarBuilder::new();
    l1.dir("d2f", 0o755)
        .file("d2f/child", "c", 0o644)
        .file("f2d", "f", 0o644)
        .symlink("l2d", "/somewhere")
        .dir("d2l", 0o755)
        .file("d2l/x", "x", 0o644)
        .dir("dd", 0o755)
        .file("dd/lower", "l", 0o644);
    let mut l2 = TarBuilder::new();
    l2.file("d2f", "now a file", 0o600)
        .dir("f2d", 0o711)
        .file("f2d/inner", "i", 0o644)
        .dir("l2d", 0o755)
        .symlink("d2l", "dd")
        // dir over dir: merged, new metadata.
        .dir("dd", 0o700)
        .file("dd/upper", "u", 0o644);
    s.apply(&[l1.build(), l2.build()]).unwrap();
    assert_eq!(s.read("d2f"), "now a file");
    assert_eq!(s.mode("d2f"), 0o600);
    assert_eq!(s.mode("f2d"), 0o711);
    assert_eq!(s.read("f2d/inner"), "i");
    assert!(fs::symlink_metadata(s.p("l2d")).unwrap().is_dir());
    assert_eq!(fs::read_link(s.p("d2l")).unwrap(), Path::new("dd"));
    assert_eq!(list(&s.p("dd")), vec!["lower", "upper"]);
    assert_eq!(s.mode("dd"), 0o700);
}

#[test]
fn hardlinks_across_layers() {
    let s = Scratch::new();
    let mut l1 = TarBuilder::new();
    l1.dir("usr", 0o755)
        .file("usr/orig", "data", 0o755)
        .symlink("usr/sym", "orig");
    let mut l2 = TarBuilder::new();
    l2.hardlink("usr/link", "usr/orig")
        .hardlink("/abs-link", "/usr/orig")
        .hardlink("usr/symlink-hard", "usr/sym");
    s.apply(&[l1.build(), l2.build()]).unwrap();
    let ino = fs::metadata(s.p("usr/orig")).unwrap().ino();
    assert_eq!(fs::metadata(s.p("usr/link")).unwrap().ino(), ino);
    assert_eq!(fs::metadata(s.p("abs-link")).unwrap().ino(), ino);
    assert_eq!(fs::metadata(s.p("usr/orig")).unwrap().nlink(), 3);
    // A hardlink to a symlink links the symlink, it does not follow it.
    let sym = fs::symlink_metadata(s.p("usr/sym")).unwrap();
    let hard = fs::symlink_metadata(s.p("usr/symlink-hard")).unwrap();
    assert!(hard.file_type().is_symlink());
    assert_eq!(sym.ino(), hard.ino());

    let s = Scratch::new();
    let mut l = TarBuilder::new();
    l.hardlink("dangling", "nothing");
    let err = s.apply(&[l.build()]).unwrap_err().to_string();
    assert!(
        err.contains("does not exist") && err.contains("\"dangling\""),
        "{err}"
    );
}

#[test]
fn pax_xattrs_and_subsecond_times() {
    let s = Scratch::new();
    let mut t = TarBuilder::new();
    t.file_with_pax(
        "f",
        "x",
        &[
            ("SCHILY.xattr.user.test", b"value"),
            ("mtime", b"1600000000.25"),
            ("atime", b"1500000000.5"),
        ],
    );
    s.apply(&[t.build()]).unwrap();
    let m = fs::symlink_metadata(s.p("f")).unwrap();
    assert_eq!((m.mtime(), m.mtime_nsec()), (1_600_000_000, 250_000_000));
    assert_eq!((m.atime(), m.atime_nsec()), (1_500_000_000, 500_000_000));
    let mut buf = [0u8; 16];
    let path = std::ffi::CString::new(s.p("f").as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: valid NUL-terminated strings and a buffer of the given length.
    let n = unsafe {
        libc::lgetxattr(
            path.as_ptr(),
            c"user.test".as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    if n < 0 {
        println!("SKIP xattr check: {}", std::io::Error::last_os_error());
    } else {
        assert_eq!(&buf[..n as usize], b"value");
    }
}

#[test]
fn refuses_dotdot_escape() {
    for path in ["../escaped", "a/../../escaped", "/../escaped", "./.."] {
        let s = Scratch::new();
        let mut t = TarBuilder::new();
        t.file("ok", "fine", 0o644).file(path, "evil", 0o644);
        let (entry, reason) = unsafe_reason(s.apply(&[t.build()]));
        assert_eq!(entry, path);
        assert!(reason.contains("escapes the rootfs"), "{reason}");
        s.assert_host_untouched();
    }
    // Inside the root, `..` is harmless and resolved lexically.
    let s = Scratch::new();
    let mut t = TarBuilder::new();
    t.file("a/../b", "b", 0o644);
    s.apply(&[t.build()]).unwrap();
    assert_eq!(s.read("b"), "b");
}

#[test]
fn refuses_to_write_through_symlinks() {
    // Where the planted symlink points, given the scratch area.
    type Target = fn(&Scratch) -> String;
    let cases: [(&str, Target); 3] = [
        ("absolute", |s| s.host.display().to_string()),
        ("relative", |_| "../host".to_string()),
        ("dotdots", |_| "../../../../../../../../..".to_string()),
    ];
    for (what, target) in &cases {
        for same_layer in [false, true] {
            let s = Scratch::new();
            let mut l1 = TarBuilder::new();
            l1.symlink("etc", &target(&s));
            let mut l2 = if same_layer {
                std::mem::replace(&mut l1, TarBuilder::new())
            } else {
                TarBuilder::new()
            };
            l2.file("etc/secret", "evil", 0o644);
            let (entry, reason) = unsafe_reason(s.apply(&[l1.build(), l2.build()]));
            assert_eq!(entry, "etc/secret", "{what}");
            assert!(
                reason.contains("parent etc is a symlink"),
                "{what}: {reason}"
            );
            s.assert_host_untouched();
            assert!(!Path::new("/secret").exists());

            // Nor create directories or nodes through them.
            for (path, kind) in [
                ("etc/sub/f", tar::EntryType::Regular),
                ("etc/newdir", tar::EntryType::Directory),
                ("etc/fifo", tar::EntryType::Fifo),
            ] {
                let s = Scratch::new();
                let mut l = TarBuilder::new();
                l.symlink("etc", &target(&s))
                    .raw(path, kind, 0o755, None, b"");
                unsafe_reason(s.apply(&[l.build()]));
                s.assert_host_untouched();
            }
        }
    }
}

#[test]
fn replaces_symlink_leaf_without_following() {
    let s = Scratch::new();
    let secret = s.host.join("secret").display().to_string();
    let mut l1 = TarBuilder::new();
    l1.symlink("passwd", &secret)
        .symlink("dir", &s.host.display().to_string());
    let mut l2 = TarBuilder::new();
    l2.file("passwd", "container's own", 0o644)
        .dir("dir", 0o755);
    s.apply(&[l1.build(), l2.build()]).unwrap();
    assert_eq!(s.read("passwd"), "container's own");
    assert!(fs::symlink_metadata(s.p("dir")).unwrap().is_dir());
    s.assert_host_untouched();
}

#[test]
fn refuses_hardlink_escapes() {
    let cases: Vec<(&str, &str)> = vec![
        ("../host/secret", "escapes the rootfs"),
        ("x/secret", "goes through symlink x"),
    ];
    for (target, why) in cases {
        let s = Scratch::new();
        let mut l = TarBuilder::new();
        l.symlink("x", &s.host.display().to_string())
            .hardlink("stolen", target);
        let (entry, reason) = unsafe_reason(s.apply(&[l.build()]));
        assert_eq!(entry, "stolen");
        assert!(reason.contains(why), "{target}: {reason}");
        assert!(!s.exists("stolen"));
        assert_eq!(fs::metadata(s.host.join("secret")).unwrap().nlink(), 1);
        s.assert_host_untouched();
    }
}

#[test]
fn refuses_whiteouts_through_symlinks() {
    for opaque in [false, true] {
        let s = Scratch::new();
        let mut l1 = TarBuilder::new();
        l1.symlink("x", &s.host.display().to_string());
        let mut l2 = TarBuilder::new();
        if opaque {
            l2.opaque("x");
        } else {
            l2.whiteout("x/secret");
        }
        let (_, reason) = unsafe_reason(s.apply(&[l1.build(), l2.build()]));
        assert!(reason.contains("symlink"), "{reason}");
        s.assert_host_untouched();
    }
    // Whiting out the symlink itself removes the link, not its target.
    let s = Scratch::new();
    let mut l1 = TarBuilder::new();
    l1.symlink("x", &s.host.display().to_string());
    let mut l2 = TarBuilder::new();
    l2.whiteout("x");
    s.apply(&[l1.build(), l2.build()]).unwrap();
    assert!(!s.exists("x"));
    s.assert_host_untouched();
}

#[test]
fn refuses_replacing_root_and_bad_whiteouts() {
    let s = Scratch::new();
    let mut l = TarBuilder::new();
    l.symlink("./", &s.host.display().to_string());
    let (_, reason) = unsafe_reason(s.apply(&[l.build()]));
    assert!(reason.contains("root"), "{reason}");

    let s = Scratch::new();
    let mut l = TarBuilder::new();
    l.dir("a", 0o755).file("a/.wh...", "", 0o644);
    let (entry, reason) = unsafe_reason(s.apply(&[l.build()]));
    assert_eq!(entry, "a/.wh...");
    assert!(reason.contains("does not name a file"), "{reason}");
    assert!(s.exists("a"));
}

#[test]
fn truncated_layer_fails() {
    let s = Scratch::new();
    let mut t = TarBuilder::new();
    t.file("big", &"x".repeat(5000), 0o644);
    let tar = t.build();
    let err = s.apply(&[tar[..2048].to_vec()]).unwrap_err();
    assert!(
        matches!(err, ImageError::Unpack { ref entry, .. } if entry == "big"),
        "{err}"
    );
}

/// Debian's umoci 0.4.7 `insert` writes layers that end right after the last entry's data:
/// no padding to 512 bytes, no end-of-archive blocks. Read as GNU tar and Go read it; a
/// stream cut inside an entry is still refused.
#[test]
fn a_layer_without_padding_or_trailer_is_read_a_truncated_one_refused() {
    let mut t = TarBuilder::new();
    t.dir("etc", 0o755)
        .file("etc/motd", "hello from umoci insert\n", 0o644);
    let full = t.build();
    // dir header (512) + file header (512) + 24 data bytes, then padding and trailer.
    let data_end = 512 * 2 + "hello from umoci insert\n".len();
    for (what, cut) in [
        ("no padding, no trailer", data_end),
        ("padding, no trailer", 512 * 3),
        ("padding and half a trailer", 512 * 4),
    ] {
        let s = Scratch::new();
        s.apply(&[full[..cut].to_vec()])
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_eq!(s.read("etc/motd"), "hello from umoci insert\n", "{what}");
    }
    for cut in [data_end - 1, 512 * 2 + 3, 512 + 100] {
        let s = Scratch::new();
        let e = s.apply(&[full[..cut].to_vec()]);
        assert!(e.is_err(), "a layer cut at {cut} was accepted");
    }
    // Padding of a 2nd layer after a first unpadded one: each layer is its own stream.
    let s = Scratch::new();
    let mut t2 = TarBuilder::new();
    t2.file("etc/issue", "two", 0o644);
    s.apply(&[full[..data_end].to_vec(), t2.build()]).unwrap();
    assert_eq!(s.read("etc/issue"), "two");
}

/// Opaque markers remove what this layer holds but did not write (a hardlink target it
/// copied up), also at the root, where overlayfs never treats a lower layer as opaque; both
/// ways of unpacking agree (checked by `Scratch::apply` as root).
#[test]
fn opaque_markers_after_copy_ups_and_at_the_root() {
    let s = Scratch::new();
    let mut l1 = TarBuilder::new();
    l1.dir("d", 0o755)
        .file("d/f", "f", 0o644)
        .file("a", "a", 0o644);
    let mut l2 = TarBuilder::new();
    l2.dir("d", 0o755).hardlink("d/l", "d/f").opaque("d");
    s.apply(&[l1.build(), l2.build()]).unwrap();
    assert!(!s.exists("d/f") && s.exists("d/l") && s.exists("a"));
    assert_eq!(s.read("d/l"), "f");

    let s = Scratch::new();
    let mut l3 = TarBuilder::new();
    l3.opaque("").file("b", "b", 0o644).dir("d", 0o700);
    s.apply(&[l1.build(), l3.build()]).unwrap();
    assert!(!s.exists("a") && !s.exists("d/f") && s.exists("b") && s.exists("d"));
}

/// A hardlink to a path its own layer whited out has no target; a character device 0/0 (an
/// overlayfs whiteout, no real device) is refused; both ways alike.
#[test]
fn hardlinks_to_whited_out_paths_and_device_zero_are_refused() {
    let s = Scratch::new();
    let mut l1 = TarBuilder::new();
    l1.file("f", "f", 0o644);
    let mut l2 = TarBuilder::new();
    l2.whiteout("f").hardlink("link", "f");
    let err = s.apply(&[l1.build(), l2.build()]).unwrap_err().to_string();
    assert!(err.contains("does not exist"), "{err}");

    let s = Scratch::new();
    let mut l = TarBuilder::new();
    l.char_device("dev0", 0, 0);
    let err = s.apply(&[l.build()]).unwrap_err().to_string();
    assert!(err.contains("0/0 is an overlayfs whiteout"), "{err}");
    s.assert_host_untouched();
}
