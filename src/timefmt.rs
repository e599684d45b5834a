//! Local time for people: timestamps rendered as `2024-05-01 12:00:00.123` with the host's
//! UTC offset, for the logs, status and cron tables. [`local_offset`] asks libc for the local
//! time zone's offset at an instant; [`render_time`] is pure (the calendar arithmetic), so a
//! table renders the same way in a test as on the host, given the offset.

/// Days since 1970-01-01 → (year, month, day), proleptic Gregorian (Howard Hinnant's
/// `civil_from_days`, http://howardhinnant.github.io/date_algorithms.html).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// `2024-05-01 12:00:00.123` for `usec` shifted by `offset_secs` (the local UTC offset).
pub fn render_time(usec: u64, offset_secs: i64) -> String {
    let total_ms = (usec / 1000) as i64 + offset_secs * 1000;
    let secs = total_ms.div_euclid(1000);
    let ms = total_ms.rem_euclid(1000);
    let (y, mo, d) = civil_from_days(secs.div_euclid(86_400));
    let s = secs.rem_euclid(86_400);
    format!(
        "{y:04}-{mo:02}-{d:02} {:02}:{:02}:{:02}.{ms:03}",
        s / 3600,
        (s % 3600) / 60,
        s % 60
    )
}

/// The local time zone's offset from UTC at `usec`, in seconds (0 if unknown).
pub fn local_offset(usec: u64) -> i64 {
    let t = (usec / 1_000_000) as libc::time_t;
    // SAFETY: localtime_r only writes the `tm` we own; a zeroed tm is a valid value.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    let ok = unsafe { !libc::localtime_r(&t, &mut tm).is_null() };
    if ok {
        tm.tm_gmtoff
    } else {
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times() {
        assert_eq!(render_time(0, 0), "1970-01-01 00:00:00.000");
        assert_eq!(
            render_time(1_714_564_800_123_456, 0),
            "2024-05-01 12:00:00.123"
        );
        assert_eq!(
            render_time(1_714_564_800_123_456, 2 * 3600),
            "2024-05-01 14:00:00.123"
        );
        assert_eq!(
            render_time(951_782_400_000_000, 0),
            "2000-02-29 00:00:00.000"
        );
        assert_eq!(render_time(0, -3600), "1969-12-31 23:00:00.000");
    }
}
