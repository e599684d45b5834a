//! shim's parsers of untrusted input, compiled in from ../src (shim is a binary crate): the
//! definitions (`config`, with the image references it checks), the crontab, and the layer
//! unpacker. Nothing here is shim's own code: only the entry points the fuzz targets call.
#![allow(dead_code, unused_imports)]

#[path = "../../src/config/mod.rs"]
pub mod config;
#[path = "../../src/crontab.rs"]
pub mod crontab;
#[path = "../../src/error.rs"]
pub mod error;
#[path = "../../src/image/mod.rs"]
pub mod image;

/// Applies `bytes` as one layer's tar stream to a fresh directory under `root`; errors are
/// fine (refused input), panics and escapes are not.
pub fn unpack_layer(bytes: &[u8], root: &std::path::Path) {
    let mut u = image::unpack::Unpacker::new(root, false);
    let _ = u.apply_layer("fuzz", bytes);
}

/// Applies `bytes` the layer store's way: into the fresh directory `dir`, over `lower` (what
/// [`unpack_layer`] made of the same bytes) as the layer below.
pub fn unpack_layer_over(bytes: &[u8], lower: &std::path::Path, dir: &std::path::Path) {
    let mut u = image::unpack::Unpacker::layered(dir, false, vec![lower.to_path_buf()]);
    let _ = u.init_root();
    let _ = u.apply_layer("fuzz", bytes);
}
