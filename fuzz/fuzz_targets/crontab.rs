#![no_main]
//! Any text as the app's crontab (what generate-cron prints): entries with their calendar
//! specs, or an error naming the line; no panic. Each schedule the parser accepts parses
//! again on its own.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(entries) = shim_fuzz::crontab::parse_crontab(text) {
            for e in &entries {
                if let Ok(s) = shim_fuzz::crontab::parse_schedule(&e.schedule_text) {
                    let _ = shim_fuzz::crontab::to_calendar_specs(&s);
                }
            }
        }
    }
});
