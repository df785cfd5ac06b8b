//! An incremental reader of OpenAI-shaped SSE streams, on the forwarding path.
//!
//! [`SseTracker::feed`] takes each upstream chunk as it arrives and returns what to send downstream
//! now: every complete event, in the same `Bytes` (no copy) when the chunk ends on an event boundary,
//! which is the usual case. A trailing partial event is held until its end arrives, so what goes out
//! is always whole events. On the way it reads the usage chunk, counts answer characters (the
//! estimate when no usage comes), notices `[DONE]`, and can cut out the usage-only chunk that the
//! gateway asked for on the client's behalf.

use bytes::{Bytes, BytesMut};
use memchr::memmem;
use sluice_core::Usage;
use sluice_core::json::Json;

#[derive(Debug, Default)]
pub struct SseTracker {
    carry: BytesMut,
    hide_usage: bool,
    pub usage: Option<Usage>,
    /// Characters of streamed `content`/`text` strings.
    pub content_chars: usize,
    pub saw_done: bool,
    /// The upstream sent an error event (`data: {"error": ...}`): the stream ends there.
    pub saw_error: bool,
    pub events: u64,
}

impl SseTracker {
    /// `hide_usage`: drop the usage-only chunk (the client did not ask for it).
    pub fn new(hide_usage: bool) -> Self {
        Self { hide_usage, ..Self::default() }
    }

    /// Feeds one upstream chunk; calls `on_event` with each complete event's bytes, and returns the
    /// bytes to forward now (possibly empty).
    pub fn feed(&mut self, chunk: Bytes, mut on_event: impl FnMut(&[u8])) -> Bytes {
        let buf = if self.carry.is_empty() {
            chunk
        } else {
            self.carry.extend_from_slice(&chunk);
            self.carry.split().freeze()
        };
        let mut start = 0;
        let mut cut: Option<(usize, usize)> = None;
        let mut complete_end = 0;
        while let Some(end) = event_end(&buf[start..]) {
            let event = &buf[start..start + end];
            self.events += 1;
            if self.inspect(event) && cut.is_none() {
                cut = Some((start, start + end));
            } else {
                on_event(event);
            }
            start += end;
            complete_end = start;
        }
        if complete_end < buf.len() {
            self.carry.extend_from_slice(&buf[complete_end..]);
        }
        match cut {
            None => buf.slice(..complete_end),
            Some((a, b)) => {
                let mut out = BytesMut::with_capacity(complete_end - (b - a));
                out.extend_from_slice(&buf[..a]);
                out.extend_from_slice(&buf[b..complete_end]);
                out.freeze()
            }
        }
    }

    /// The rest at the end of the stream: a last event without its blank line, forwarded as is.
    pub fn finish(&mut self) -> Bytes {
        self.carry.split().freeze()
    }

    /// Reads one event; returns true when it must be hidden from the client.
    fn inspect(&mut self, event: &[u8]) -> bool {
        let Some(data) = data_of(event) else { return false };
        if data == b"[DONE]" {
            self.saw_done = true;
            return false;
        }
        if data.starts_with(b"{\"error\"") || data.starts_with(b"{\"type\":\"error\"") {
            self.saw_error = true;
            return false;
        }
        // Anthropic's stream (passed through on /v1/messages) ends with message_stop.
        if data.starts_with(b"{\"type\":\"message_stop\"") {
            self.saw_done = true;
            return false;
        }
        self.content_chars += string_chars_after(data, b"\"content\":\"");
        self.content_chars += string_chars_after(data, b"\"text\":\"");
        if memmem::find(data, b"\"usage\":{").is_none() {
            return false;
        }
        let Ok(v) = serde_json::from_slice::<serde_json::Value>(data) else { return false };
        let usage = v.get("usage").or_else(|| v.get("message").and_then(|m| m.get("usage")));
        if let Some(u) = usage.map(Json::from).and_then(Usage::from_openai) {
            self.usage = Some(u);
        } else if let Some(u) = usage {
            // Anthropic: input in message_start, output in message_delta.
            let (input, output, cached) = Usage::from_anthropic(Json::from(u));
            let acc = self.usage.get_or_insert_with(Usage::default);
            if let Some(i) = input {
                acc.prompt_tokens = i;
                acc.cached_tokens = cached;
            }
            if let Some(o) = output {
                acc.completion_tokens = o;
            }
        }
        let usage_only = v.get("choices").and_then(|c| c.as_array()).is_some_and(Vec::is_empty);
        self.hide_usage && usage_only
    }
}

/// Splits a stream of bytes into complete SSE events, for streams that are translated rather than
/// forwarded.
#[derive(Debug, Default)]
pub struct SseSplitter {
    carry: BytesMut,
}

impl SseSplitter {
    /// Calls `on_event` with each complete event (blank line included) now available.
    pub fn feed(&mut self, chunk: &[u8], mut on_event: impl FnMut(&[u8])) {
        self.carry.extend_from_slice(chunk);
        let mut start = 0;
        while let Some(end) = event_end(&self.carry[start..]) {
            on_event(&self.carry[start..start + end]);
            start += end;
        }
        let _ = self.carry.split_to(start);
    }

    /// What is left at the end of the stream (an event without its blank line).
    pub fn rest(&mut self) -> Bytes {
        self.carry.split().freeze()
    }
}

/// Length of the first complete event in `buf`, its terminating blank line included.
fn event_end(buf: &[u8]) -> Option<usize> {
    let mut from = 0;
    while let Some(i) = memchr::memchr(b'\n', &buf[from..]) {
        let nl = from + i;
        match buf.get(nl + 1) {
            Some(b'\n') => return Some(nl + 2),
            Some(b'\r') if buf.get(nl + 2) == Some(&b'\n') => return Some(nl + 3),
            _ => from = nl + 1,
        }
    }
    None
}

/// The payload of the event's first `data:` line, trimmed.
pub fn data_of(event: &[u8]) -> Option<&[u8]> {
    for line in event.split(|b| *b == b'\n') {
        if let Some(rest) = line.strip_prefix(b"data:") {
            let rest = rest.strip_prefix(b" ").unwrap_or(rest);
            return Some(rest.strip_suffix(b"\r").unwrap_or(rest));
        }
    }
    None
}

/// Characters of every JSON string value that follows `key` in `data` (escapes count as one).
fn string_chars_after(data: &[u8], key: &[u8]) -> usize {
    let mut total = 0;
    for pos in memmem::find_iter(data, key) {
        let mut i = pos + key.len();
        while let Some(&b) = data.get(i) {
            match b {
                b'"' => break,
                b'\\' => {
                    total += 1;
                    i += if data.get(i + 1) == Some(&b'u') { 6 } else { 2 };
                }
                // Count UTF-8 leading bytes only, so a character counts once.
                _ => {
                    if b & 0xC0 != 0x80 {
                        total += 1;
                    }
                    i += 1;
                }
            }
        }
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    const STREAM: &str = concat!(
        "data: {\"id\":\"c\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"}}],\"usage\":null}\n\n",
        "data: {\"id\":\"c\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hé\\\"llo\"}}],\"usage\":null}\n\n",
        "data: {\"id\":\"c\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}],\"usage\":null}\n\n",
        "data: {\"id\":\"c\",\"choices\":[],\"usage\":{\"prompt_tokens\":9,\"completion_tokens\":3,\"total_tokens\":12}}\n\n",
        "data: [DONE]\n\n",
    );

    fn run(hide: bool, split: &[usize]) -> (String, SseTracker) {
        let mut t = SseTracker::new(hide);
        let bytes = Bytes::from_static(STREAM.as_bytes());
        let mut out = Vec::new();
        let mut last = 0;
        for &s in split.iter().chain(std::iter::once(&STREAM.len())) {
            out.extend_from_slice(&t.feed(bytes.slice(last..s), |_| {}));
            last = s;
        }
        out.extend_from_slice(&t.finish());
        (String::from_utf8(out).unwrap(), t)
    }

    #[test]
    fn whole_chunks_pass_unchanged_and_usage_is_read() {
        let (out, t) = run(false, &[]);
        assert_eq!(out, STREAM);
        let u = t.usage.unwrap();
        assert_eq!((u.prompt_tokens, u.completion_tokens), (9, 3));
        assert!(t.saw_done);
        assert_eq!(t.content_chars, 6);
        assert_eq!(t.events, 5);
    }

    #[test]
    fn the_hidden_usage_chunk_is_cut_out_at_every_split() {
        let expected = STREAM.replace(
            "data: {\"id\":\"c\",\"choices\":[],\"usage\":{\"prompt_tokens\":9,\"completion_tokens\":3,\"total_tokens\":12}}\n\n",
            "",
        );
        for s in 1..STREAM.len() {
            let (out, t) = run(true, &[s]);
            assert_eq!(out, expected, "split at {s}");
            assert_eq!(t.usage.unwrap().total(), 12);
            assert!(t.saw_done);
        }
    }

    #[test]
    fn an_upstream_error_event_is_noticed() {
        let mut t = SseTracker::new(false);
        t.feed(Bytes::from_static(b"data: {\"error\":{\"message\":\"boom\"}}\n\n"), |_| {});
        assert!(t.saw_error && !t.saw_done);
    }

    #[test]
    fn forwarding_holds_partial_events_without_copying_whole_ones() {
        let mut t = SseTracker::new(false);
        let first = t.feed(Bytes::from_static(b"data: {\"a\":1}\n\ndata: {\"b"), |_| {});
        assert_eq!(&first[..], b"data: {\"a\":1}\n\n");
        let second = t.feed(Bytes::from_static(b"\":2}\r\n\r\n"), |_| {});
        assert_eq!(&second[..], b"data: {\"b\":2}\r\n\r\n");
        assert!(t.finish().is_empty());
    }
}
