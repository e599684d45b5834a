#![no_main]
//! Any bytes as a layer's tar stream, unpacked into a fresh directory. The target drops
//! root first (to nobody), so that no device node can be made and no host file written even
//! if the unpacker had a hole; it then checks that nothing appeared outside the directory.
use libfuzzer_sys::fuzz_target;

static DROP: std::sync::Once = std::sync::Once::new();

fuzz_target!(|data: &[u8]| {
    DROP.call_once(|| {
        if nix::unistd::geteuid().is_root() {
            let nobody = nix::unistd::Uid::from_raw(65534);
            nix::unistd::setgroups(&[]).expect("setgroups");
            nix::unistd::setgid(nix::unistd::Gid::from_raw(65534)).expect("setgid");
            nix::unistd::setuid(nobody).expect("setuid");
        }
    });
    let parent = tempfile::tempdir().expect("tempdir");
    let root = parent.path().join("rootfs");
    std::fs::create_dir(&root).expect("rootfs dir");
    shim_fuzz::unpack_layer(data, &root);
    // Only the rootfs may exist beside nothing else in the parent.
    let names: Vec<_> = std::fs::read_dir(parent.path())
        .expect("read parent")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert_eq!(
        names,
        vec![std::ffi::OsString::from("rootfs")],
        "an entry escaped the rootfs"
    );
});
