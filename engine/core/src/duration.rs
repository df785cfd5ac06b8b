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

#[cfg(test)]
mod tests {
    use super::*;

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
