//! Structured logs: one JSON object per line on stderr (diagnostics) and stdout (access log, written
//! in batches at least every 100 ms).
//!
//! `SLUICE_LOG` sets the level (`error`, `warn`, `info`, `debug`, `trace`; default `info`).

use std::io::Write;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use log::{Level, LevelFilter, Log, Metadata, Record};

struct JsonLogger {
    level: LevelFilter,
}

impl Log for JsonLogger {
    fn enabled(&self, metadata: &Metadata) -> bool {
        // Pingora's own info lines are startup chatter; keep its warnings and errors.
        metadata.level() <= self.level
            && (metadata.level() <= Level::Warn || !metadata.target().starts_with("pingora"))
    }

    fn log(&self, record: &Record) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let line = serde_json::json!({
            "ts": now_rfc3339(),
            "level": record.level().as_str().to_ascii_lowercase(),
            "target": record.target(),
            "msg": record.args().to_string(),
        });
        // Standard error is unbuffered: the line goes out in one `write`, not one per JSON token.
        let mut line = line.to_string();
        line.push('\n');
        let _ = std::io::stderr().lock().write_all(line.as_bytes());
    }

    fn flush(&self) {}
}

/// Installs the JSON logger once.
pub fn init() {
    let level = std::env::var("SLUICE_LOG")
        .ok()
        .and_then(|v| v.parse::<LevelFilter>().ok())
        .unwrap_or(LevelFilter::Info);
    if log::set_boxed_logger(Box::new(JsonLogger { level })).is_ok() {
        log::set_max_level(level);
    }
}

/// Access-log lines waiting for the flusher: one `write` per batch instead of one per request.
static ACCESS: Mutex<Vec<u8>> = Mutex::new(Vec::new());
/// A batch this large is written at once, without waiting for the flusher.
const ACCESS_BATCH: usize = 64 * 1024;
/// How long a line may wait before it is written.
pub const ACCESS_FLUSH_EVERY: Duration = Duration::from_millis(100);

/// Queues one access-log line for stdout.
pub fn access(line: &impl serde::Serialize) {
    let Ok(mut buf) = ACCESS.lock() else { return };
    let _ = serde_json::to_writer(&mut *buf, line);
    buf.push(b'\n');
    if buf.len() >= ACCESS_BATCH {
        let _ = std::io::stdout().lock().write_all(&buf);
        buf.clear();
    }
}

/// Writes the queued access-log lines.
pub fn flush_access() {
    let batch = match ACCESS.lock() {
        Ok(mut buf) if !buf.is_empty() => std::mem::take(&mut *buf),
        _ => return,
    };
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(&batch);
    let _ = out.flush();
}

/// Starts the thread that flushes the access log every [`ACCESS_FLUSH_EVERY`].
pub fn start_access_flusher() {
    let spawned = std::thread::Builder::new().name("access-log".into()).spawn(|| {
        loop {
            std::thread::sleep(ACCESS_FLUSH_EVERY);
            flush_access();
        }
    });
    if let Err(e) = spawned {
        log::error!("cannot start the access-log flusher: {e}");
    }
}

/// The current UTC time as `YYYY-MM-DDTHH:MM:SS.mmmZ`.
pub fn now_rfc3339() -> String {
    Timestamp::now().as_str().to_owned()
}

/// A time as `2026-12-01T01:02:03.456Z`, kept in place: the access line's needs no allocation.
#[derive(Clone, Copy)]
pub struct Timestamp([u8; 24]);

impl Timestamp {
    pub fn now() -> Self {
        rfc3339(SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default())
    }

    pub fn as_str(&self) -> &str {
        // Digits and ASCII punctuation only.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }
}

impl serde::Serialize for Timestamp {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

/// `d` after the Unix epoch.
fn rfc3339(d: std::time::Duration) -> Timestamp {
    let secs = d.as_secs() as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    use sluice_core::calendar::put_digits;
    let (year, month, day) = sluice_core::calendar::civil_from_days(days);
    // Digit by digit into a fixed buffer: one line per request, and `format!` costs several times this.
    let mut out = *b"0000-00-00T00:00:00.000Z";
    let mut put = |at: usize, width: usize, n: u64| put_digits(&mut out[at..at + width], n);
    put(0, 4, year.clamp(0, 9999) as u64);
    put(5, 2, month as u64);
    put(8, 2, day as u64);
    put(11, 2, (rem / 3600) as u64);
    put(14, 2, ((rem % 3600) / 60) as u64);
    put(17, 2, (rem % 60) as u64);
    put(20, 3, u64::from(d.subsec_millis()));
    Timestamp(out)
}

#[cfg(test)]
mod tests {
    #[test]
    fn timestamps_look_like_rfc3339() {
        let t = super::now_rfc3339();
        assert_eq!(t.len(), 24, "{t}");
        assert!(t.starts_with("20") && t.ends_with('Z') && &t[10..11] == "T");
        let d = std::time::Duration::from_millis(1_764_550_923_456);
        assert_eq!(super::rfc3339(d).as_str(), "2025-12-01T01:02:03.456Z");
        assert_eq!(super::rfc3339(std::time::Duration::ZERO).as_str(), "1970-01-01T00:00:00.000Z");
    }
}
