//! UTC timestamps as ateom writes them (through humantime).

use std::time::SystemTime;

/// `2026-11-28T16:31:02.123Z`
pub fn format_rfc3339_utc(now: SystemTime) -> String {
    humantime::format_rfc3339_millis(now).to_string()
}

/// `20261128T163102.123` — sortable and valid as a [`crate::Name`].
pub fn format_compact_utc(now: SystemTime) -> String {
    format_rfc3339_utc(now).chars().filter(|c| !matches!(c, '-' | ':' | 'Z')).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

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
