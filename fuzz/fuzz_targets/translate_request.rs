//! Arbitrary bytes as an OpenAI chat body bound for Anthropic or Gemini: a translated body or a
//! clean 400, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice::translate::{anthropic, gemini, openai};
use sluice_core::ctx::Endpoint;
use sluice_core::wire::Request;

fuzz_target!(|data: &[u8]| {
    let mut buf = data.to_vec();
    let Ok(request) = Request::parse(Endpoint::ChatCompletions, &mut buf) else { return };
    match openai::chat_from_openai(&request.body, request.stream) {
        Ok(chat) => {
            let _ = gemini::request(&chat);
            if let Err(e) = anthropic::request(&chat, "m", 1024) {
                assert_eq!(e.status(), 400);
            }
        }
        Err(e) => assert_eq!(e.status(), 400),
    }
});
