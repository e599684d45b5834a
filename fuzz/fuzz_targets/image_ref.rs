#![no_main]
//! Any string as an image reference (the definitions' `image` with the revision filled in).
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(r) = shim_fuzz::image::ImageRef::parse(text) {
            let _ = r.to_string();
        }
    }
});
