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

/// Queues one access-log line for stdout: `{"ts":…` with the current time, then the fields `write`
/// adds, on one line.
pub fn access(write: impl FnOnce(&mut Line<'_>)) {
    let Ok(mut buf) = ACCESS.lock() else { return };
    buf.extend_from_slice(b"{\"ts\":\"");
    buf.extend_from_slice(&Timestamp::now().0);
    buf.push(b'"');
    write(&mut Line { out: &mut buf });
    buf.extend_from_slice(b"}\n");
    if buf.len() >= ACCESS_BATCH {
        let _ = std::io::stdout().lock().write_all(&buf);
        buf.clear();
    }
}

/// The `,"name":` that starts a field of a [`Line`], made at compile time: keys are never escaped
/// at run time, so they must be plain ASCII names.
macro_rules! key {
    ($name:literal) => {
        concat!(",\"", $name, "\":")
    };
}
pub(crate) use key;

/// An access-log line being written: JSON fields appended in place, with no map, no serializer and
/// no escaping of keys. Each method takes a key made by [`key!`]; `None` values are written `null`.
pub struct Line<'b> {
    out: &'b mut Vec<u8>,
}

impl Line<'_> {
    pub fn str(&mut self, key: &'static str, v: &str) -> &mut Self {
        self.out.extend_from_slice(key.as_bytes());
        // Quotes, backslashes and control characters escaped; cannot fail on a `Vec`.
        let _ = serde_json::to_writer(&mut *self.out, v);
        self
    }

    pub fn opt_str(&mut self, key: &'static str, v: Option<&str>) -> &mut Self {
        match v {
            Some(v) => self.str(key, v),
            None => self.null(key),
        }
    }

    pub fn num(&mut self, key: &'static str, v: u64) -> &mut Self {
        self.out.extend_from_slice(key.as_bytes());
        self.out.extend_from_slice(itoa::Buffer::new().format(v).as_bytes());
        self
    }

    pub fn opt_num(&mut self, key: &'static str, v: Option<u64>) -> &mut Self {
        match v {
            Some(v) => self.num(key, v),
            None => self.null(key),
        }
    }

    pub fn bool(&mut self, key: &'static str, v: bool) -> &mut Self {
        self.out.extend_from_slice(key.as_bytes());
        self.out.extend_from_slice(if v { b"true" } else { b"false" });
        self
    }

    pub fn opt_bool(&mut self, key: &'static str, v: Option<bool>) -> &mut Self {
        match v {
            Some(v) => self.bool(key, v),
            None => self.null(key),
        }
    }

    /// A duration as milliseconds with three decimals (a JSON number: `1.305`).
    pub fn millis(&mut self, key: &'static str, d: Duration) -> &mut Self {
        self.out.extend_from_slice(key.as_bytes());
        sluice_core::duration::push_millis(self.out, d);
        self
    }

    pub fn opt_millis(&mut self, key: &'static str, d: Option<Duration>) -> &mut Self {
        match d {
            Some(d) => self.millis(key, d),
            None => self.null(key),
        }
    }

    fn null(&mut self, key: &'static str) -> &mut Self {
        self.out.extend_from_slice(key.as_bytes());
        self.out.extend_from_slice(b"null");
        self
    }
}

/// Writes the queued access-log lines.
pub fn flush_access() {
    flush_access_with(&mut Vec::new());
}

/// Writes the queued access-log lines, swapping `spare` (emptied, its capacity kept) in for them:
/// the flusher's two buffers keep their size, so lines are never copied into a growing one.
fn flush_access_with(spare: &mut Vec<u8>) {
    match ACCESS.lock() {
        Ok(mut buf) if !buf.is_empty() => std::mem::swap(&mut *buf, spare),
        _ => return,
    }
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(spare);
    let _ = out.flush();
    spare.clear();
}

/// Starts the thread that flushes the access log every [`ACCESS_FLUSH_EVERY`].
pub fn start_access_flusher() {
    let spawned = std::thread::Builder::new().name("access-log".into()).spawn(|| {
        let mut spare = Vec::new();
        loop {
            std::thread::sleep(ACCESS_FLUSH_EVERY);
            flush_access_with(&mut spare);
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
    use std::time::Duration;

    #[test]
    fn an_access_line_is_one_json_object_with_its_values_escaped() {
        let mut out = Vec::new();
        let mut line = super::Line { out: &mut out };
        line.str(key!("path"), "/v1/\"x\"\\\n\u{1}é")
            .opt_str(key!("model"), None)
            .str(key!("id"), "req_1 é\u{7f}")
            .num(key!("status"), 429)
            .opt_num(key!("tokens"), Some(u64::MAX))
            .bool(key!("stream"), false)
            .opt_bool(key!("estimated"), Some(true))
            .millis(key!("duration_ms"), Duration::from_micros(1_305_007))
            .opt_millis(key!("ttfb_ms"), None);
        let text = format!("{{\"ts\":\"x\"{}}}", String::from_utf8(out).unwrap());
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(
            v,
            serde_json::json!({
                "ts": "x", "path": "/v1/\"x\"\\\n\u{1}é", "model": null, "id": "req_1 é\u{7f}", "status": 429,
                "tokens": u64::MAX, "stream": false, "estimated": true, "duration_ms": 1305.007,
                "ttfb_ms": null,
            })
        );
        assert!(!text.contains('\n'), "{text}");
    }

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
