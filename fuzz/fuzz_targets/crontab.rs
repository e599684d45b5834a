#![no_main]
//! Any text as the app's crontab (what generate-cron prints): entries with their calendar
//! specs, or an error naming the line; no panic. Every entry accepted has a calendar spec.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(entries) = shim_fuzz::crontab::parse_crontab(text) {
            for e in &entries {
                assert!(!e.calendars.is_empty(), "line {}: no calendar spec", e.line);
            }
        }
    }
});
