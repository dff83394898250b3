//! Timestamps without a date crate: RFC 3339 UTC for JSON lines, the time
//! of day for pretty ones.

use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch (0 for a clock set before it).
fn epoch_ms(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// `2026-11-26T07:45:01.123Z`.
pub fn rfc3339(at: SystemTime) -> String {
    let ms = epoch_ms(at);
    let (year, month, day) = civil_from_days(ms / 86_400_000);
    format!("{year:04}-{month:02}-{day:02}T{}Z", clock_ms(ms))
}

/// `07:45:01.123` (UTC, so pretty and JSON lines of one event agree).
pub fn clock(at: SystemTime) -> String {
    clock_ms(epoch_ms(at))
}

/// `07:45:01.123` (UTC) of a Unix time in milliseconds.
pub fn clock_ms(ms: u64) -> String {
    let day = ms % 86_400_000;
    format!(
        "{:02}:{:02}:{:02}.{:03}",
        day / 3_600_000,
        day / 60_000 % 60,
        day / 1000 % 60,
        day % 1000
    )
}

/// Year, month (1..=12), day (1..=31) of a day count since 1970-01-01
/// (H. Hinnant's `civil_from_days`, for days on or after the epoch): for
/// log timestamps and the `date` header.
pub(crate) fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn at(ms: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(ms)
    }

    #[test]
    fn rfc3339_dates_are_right_across_leap_days_and_centuries() {
        assert_eq!(rfc3339(at(0)), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(at(951_782_400_000)), "2000-02-29T00:00:00.000Z");
        assert_eq!(rfc3339(at(1_700_000_000_123)), "2023-11-14T22:13:20.123Z");
        assert_eq!(rfc3339(at(4_107_542_399_999)), "2100-02-28T23:59:59.999Z");
        assert_eq!(rfc3339(at(4_107_542_400_000)), "2100-03-01T00:00:00.000Z");
        assert_eq!(
            rfc3339(UNIX_EPOCH - Duration::from_secs(5)),
            "1970-01-01T00:00:00.000Z"
        );
    }

    #[test]
    fn clock_is_the_time_of_day() {
        assert_eq!(clock(at(86_400_000 + 3_723_004)), "01:02:03.004");
    }
}
