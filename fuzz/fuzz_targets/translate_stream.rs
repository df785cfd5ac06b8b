//! Arbitrary bytes as an Anthropic or Gemini SSE stream (translated to OpenAI chunks), or as an
//! OpenAI stream (translated to Anthropic events for `/v1/messages`), cut into chunks of a fuzzed
//! size: the translation never panics, and everything it emits is a well-formed SSE event whose
//! data is JSON (or `[DONE]`).
#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice::translate::{StreamTranslation, ToAnthropic};

fuzz_target!(|data: &[u8]| {
    let Some((&cuts, stream)) = data.split_first() else { return };
    let step = usize::from(cuts >> 2).max(1);
    let mut out = Vec::new();
    if cuts & 3 == 3 {
        let mut t = ToAnthropic::default();
        for chunk in stream.chunks(step) {
            out.extend_from_slice(&t.feed(chunk));
        }
    } else {
        let mut t =
            if cuts & 1 == 0 { StreamTranslation::anthropic(0) } else { StreamTranslation::gemini(0, "m") };
        for chunk in stream.chunks(step) {
            out.extend_from_slice(&t.feed(chunk));
        }
        out.extend_from_slice(&t.finish());
    }
    let text = std::str::from_utf8(&out).expect("translated output is UTF-8");
    for event in text.split("\n\n").filter(|e| !e.is_empty()) {
        let data = event
            .lines()
            .find_map(|l| l.strip_prefix("data: "))
            .expect("every event has a data line");
        assert!(data == "[DONE]" || serde_json::from_str::<serde_json::Value>(data).is_ok(), "{data}");
    }
});
