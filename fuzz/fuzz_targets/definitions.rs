#![no_main]
//! Any text as /etc/shim/services.toml: an error naming the file, or definitions; no panic.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = shim_fuzz::config::parse_sources(&[(
            std::path::PathBuf::from("/etc/shim/services.toml"),
            text.to_string(),
        )]);
    }
});
