//! Arbitrary bytes as an Anthropic or Gemini SSE stream, cut into chunks of a fuzzed size: the
//! translation never panics, and everything it emits is an OpenAI SSE event whose data is JSON or
//! `[DONE]`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice::translate::StreamTranslation;

fuzz_target!(|data: &[u8]| {
    let Some((&cuts, stream)) = data.split_first() else { return };
    let step = usize::from(cuts >> 1).max(1);
    let mut t = if cuts & 1 == 0 {
        StreamTranslation::anthropic(0)
    } else {
        StreamTranslation::gemini(0, "m")
    };
    let mut out = Vec::new();
    for chunk in stream.chunks(step) {
        out.extend_from_slice(&t.feed(chunk));
    }
    out.extend_from_slice(&t.finish());
    let text = std::str::from_utf8(&out).expect("translated output is UTF-8");
    for event in text.split("\n\n").filter(|e| !e.is_empty()) {
        let data = event.strip_prefix("data: ").expect("every event is a data line");
        assert!(data == "[DONE]" || serde_json::from_str::<serde_json::Value>(data).is_ok(), "{data}");
    }
});
