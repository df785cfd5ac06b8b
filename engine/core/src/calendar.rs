//! UTC calendar arithmetic on day numbers (days since 1970-01-01), for periods that reset at UTC
//! midnight or on the first of the month: ledger partitions, budgets, spend reports.

use std::time::{SystemTime, UNIX_EPOCH};

pub const DAY_US: i64 = 86_400_000_000;

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
pub fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (m + if m > 2 { -3 } else { 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The date `(year, month, day)` of a day number: the inverse of [`days_from_civil`].
pub fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// `YYYY-MM-DD` of a day number (years outside 0–9999 clamped).
pub fn date(day: i64) -> String {
    let (y, m, d) = civil_from_days(day);
    // Digit by digit: budgets spell a few dates per request, and `format!` costs several times this.
    let mut out = *b"0000-00-00";
    put_digits(&mut out[0..4], y.clamp(0, 9999) as u64);
    put_digits(&mut out[5..7], m as u64);
    put_digits(&mut out[8..10], d as u64);
    out.iter().map(|&b| char::from(b)).collect()
}

/// Writes `n` into `out` as decimal digits, zero-padded to its width (higher digits cut).
pub fn put_digits(out: &mut [u8], mut n: u64) {
    for b in out.iter_mut().rev() {
        *b = b'0' + (n % 10) as u8;
        n /= 10;
    }
}

/// The day number of a `YYYY-MM-DD` date; `None` for anything else, impossible dates included.
pub fn parse_date(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() != 10 || b[4] != b'-' || b[7] != b'-' {
        return None;
    }
    let n = |r: std::ops::Range<usize>| s.get(r)?.parse::<i64>().ok();
    let (y, m, d) = (n(0..4)?, n(5..7)?, n(8..10)?);
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) {
        return None;
    }
    let day = days_from_civil(y, m, d);
    (civil_from_days(day) == (y, m, d)).then_some(day)
}

/// The day numbers of the first day of `day`'s month and of the next month.
pub fn month_of(day: i64) -> (i64, i64) {
    let (y, m, _) = civil_from_days(day);
    let next = if m == 12 { days_from_civil(y + 1, 1, 1) } else { days_from_civil(y, m + 1, 1) };
    (days_from_civil(y, m, 1), next)
}

/// `YYYY-MM-DDTHH:MM:SSZ` of microseconds since the Unix epoch.
pub fn iso(us: i64) -> String {
    let secs = us.div_euclid(1_000_000);
    let s = secs.rem_euclid(86_400);
    format!("{}T{:02}:{:02}:{:02}Z", date(secs.div_euclid(86_400)), s / 3600, s % 3600 / 60, s % 60)
}

/// Microseconds since the Unix epoch of a time (0 before it).
pub fn unix_us(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iso_times_read_as_utc() {
        assert_eq!(iso(0), "1970-01-01T00:00:00Z");
        assert_eq!(iso(1_764_547_199_999_999), "2025-11-30T23:59:59Z");
    }

    #[test]
    fn day_numbers_and_dates_agree() {
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(days_from_civil(2026, 11, 30), 20_787);
        assert_eq!(date(11_016), "2000-02-29");
        assert_eq!((date(0), date(-1)), ("1970-01-01".into(), "1969-12-31".into()));
        for day in [-1, 0, 59, 60, 11_016, 20_787, 30_000] {
            let (y, m, d) = civil_from_days(day);
            assert_eq!(days_from_civil(y, m, d), day);
        }
        let (first, next) = month_of(20_787);
        assert_eq!((date(first), date(next)), ("2026-11-01".into(), "2026-12-01".into()));
        assert_eq!(date(month_of(days_from_civil(2026, 12, 31)).1), "2027-01-01");
        assert_eq!(parse_date("2026-11-30"), Some(20_787));
        for bad in ["2026-02-30", "2026-13-01", "26-11-30", "2026/11/30", "2é2-11-30", "é026-11-3"] {
            assert_eq!(parse_date(bad), None, "{bad}");
        }
    }
}
