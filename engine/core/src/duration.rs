//! Durations as configuration and the admin API write them: `250ms`, `30s`, `5m`, `24h`, `90d`.

use std::time::Duration;

/// Parses a number (decimals allowed) followed by a unit: `ms`, `s`, `m`, `h` or `d`. Errors are
/// sentences naming the text.
pub fn parse(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: f64 =
        num.parse().map_err(|_| format!("`{text}` is not a duration like \"500ms\", \"30s\" or \"5m\""))?;
    let secs = match unit.trim() {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        "d" => n * 86_400.0,
        _ => return Err(format!("`{text}` needs a unit: ms, s, m, h or d")),
    };
    Duration::try_from_secs_f64(secs).map_err(|_| format!("`{text}` is out of range"))
}

/// Appends `d` in milliseconds with three decimals (`1.234`), from integer microseconds, digit by
/// digit: float formatting with a precision, or even `write!`, is one of the dearer things a request
/// would do, and `Server-Timing` and the access line carry such numbers on every answer.
pub fn push_millis(out: &mut Vec<u8>, d: Duration) {
    push_thousandths(out, u64::try_from(d.as_micros()).unwrap_or(u64::MAX));
}

/// `d` in seconds with three decimals (`1.250`), rounded to the nearest millisecond, as OpenAI's
/// `x-ratelimit-reset-*` headers carry it (with an `s`).
pub fn seconds_text(d: Duration) -> String {
    let mut out = Vec::with_capacity(16);
    push_thousandths(&mut out, u64::try_from(d.as_micros().saturating_add(500) / 1000).unwrap_or(u64::MAX));
    // Digits and a point only.
    String::from_utf8(out).unwrap_or_default()
}

/// `n / 1000` with three decimals, digit by digit.
fn push_thousandths(out: &mut Vec<u8>, n: u64) {
    out.extend_from_slice(itoa::Buffer::new().format(n / 1000).as_bytes());
    let mut fraction = *b".000";
    crate::calendar::put_digits(&mut fraction[1..], n % 1000);
    out.extend_from_slice(&fraction);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seconds_with_three_decimals_as_float_formatting_writes_them() {
        for us in
            [0, 1, 499, 501, 999, 1_000, 59_999_400, 59_999_600, 60_000_000, 123_456_789, 86_400_000_000]
        {
            let d = Duration::from_micros(us);
            assert_eq!(seconds_text(d), format!("{:.3}", d.as_secs_f64()), "{us} µs");
        }
    }

    #[test]
    fn milliseconds_with_three_decimals() {
        let text = |d| {
            let mut out = b"x=".to_vec();
            push_millis(&mut out, d);
            String::from_utf8(out).unwrap()
        };
        assert_eq!(text(Duration::ZERO), "x=0.000");
        assert_eq!(text(Duration::from_nanos(1_999)), "x=0.001");
        assert_eq!(text(Duration::from_micros(42)), "x=0.042");
        assert_eq!(text(Duration::from_micros(1_305_007)), "x=1305.007");
        assert_eq!(text(Duration::MAX), format!("x={}.{:03}", u64::MAX / 1000, u64::MAX % 1000));
    }

    #[test]
    fn units() {
        assert_eq!(parse("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse("90d"), Ok(Duration::from_secs(90 * 86_400)));
        assert!(parse("30").unwrap_err().contains("unit"));
        assert!(parse("soon").is_err());
    }
}
