//! UTC timestamp formatting without a calendar dependency (civil-from-days, H. Hinnant).

use std::time::{SystemTime, UNIX_EPOCH};

fn civil(now: SystemTime) -> (i64, u32, u32, u64, u32) {
    let d = now.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let days = (secs / 86_400) as i64;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day, secs % 86_400, d.subsec_millis())
}

/// `2026-11-28T16:31:02.123Z`
pub fn format_rfc3339_utc(now: SystemTime) -> String {
    let (y, mo, d, s, ms) = civil(now);
    format!("{y:04}-{mo:02}-{d:02}T{:02}:{:02}:{:02}.{ms:03}Z", s / 3600, s / 60 % 60, s % 60)
}

/// `20261128T163102.123` — sortable and valid as a [`crate::Name`].
pub fn format_compact_utc(now: SystemTime) -> String {
    let (y, mo, d, s, ms) = civil(now);
    format!("{y:04}{mo:02}{d:02}T{:02}{:02}{:02}.{ms:03}", s / 3600, s / 60 % 60, s % 60)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn formats_known_instants() {
        let t = UNIX_EPOCH + Duration::from_millis(1_764_347_462_123);
        assert_eq!(format_rfc3339_utc(t), "2025-11-28T16:31:02.123Z");
        assert_eq!(format_compact_utc(t), "20251128T163102.123");
        assert_eq!(format_rfc3339_utc(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400); // 2000-02-29
        assert_eq!(&format_rfc3339_utc(leap)[..10], "2000-02-29");
    }
}
