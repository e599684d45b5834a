#![no_main]
//! Any bytes as a layer's tar stream, unpacked into a fresh directory, then again the layer
//! store's way into a second one over the first. The target drops
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
    let layer = parent.path().join("layer");
    std::fs::create_dir(&layer).expect("layer dir");
    shim_fuzz::unpack_layer(data, &root);
    shim_fuzz::unpack_layer_over(data, &root, &layer);
    // Only the two directories may exist in the parent.
    let mut names: Vec<_> = std::fs::read_dir(parent.path())
        .expect("read parent")
        .map(|e| e.expect("entry").file_name())
        .collect();
    names.sort();
    assert_eq!(
        names,
        vec![
            std::ffi::OsString::from("layer"),
            std::ffi::OsString::from("rootfs")
        ],
        "an entry escaped its directory"
    );
});
