//! Arbitrary bytes as an OpenAI chat body bound for Anthropic or Gemini, and as an Anthropic
//! Messages body bound for an OpenAI-shaped provider: a translated body or a clean 400, never a
//! panic; what translates to OpenAI's form parses as an OpenAI request again.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice::translate::{anthropic, gemini, openai};
use sluice_core::ctx::Endpoint;
use sluice_core::wire::Request;

fuzz_target!(|data: &[u8]| {
    let mut buf = data.to_vec();
    if let Ok(request) = Request::parse(Endpoint::Messages, &mut buf) {
        match anthropic::chat_from_anthropic(&request.body) {
            Ok(chat) => {
                let body = openai::request_from_chat(&chat, &request.model);
                let mut bytes = serde_json::to_vec(&body).expect("serializes");
                if let Err(e) = Request::parse(Endpoint::ChatCompletions, &mut bytes) {
                    assert_eq!(e.status(), 400);
                }
            }
            Err(e) => assert_eq!(e.status(), 400),
        }
    }
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
