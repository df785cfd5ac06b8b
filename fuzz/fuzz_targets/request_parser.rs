//! Arbitrary bytes as a request body, for every endpoint: a typed request or a clean 400, never a
//! panic; and what parses must survive re-serialization (what the gateway sends upstream).
#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice_core::ctx::Endpoint;
use sluice_core::wire::Request;

fuzz_target!(|data: &[u8]| {
    for endpoint in [Endpoint::ChatCompletions, Endpoint::Completions, Endpoint::Embeddings] {
        let mut buf = data.to_vec();
        match Request::parse(endpoint, &mut buf) {
            Ok(r) => {
                assert!(!r.model.is_empty());
                let _ = r.prompt_chars();
                let again = serde_json::to_vec(&r.body).expect("a parsed body serializes");
                let mut again = again;
                let reparsed = Request::parse(endpoint, &mut again).expect("a serialized body parses");
                assert_eq!(reparsed.model, r.model);
                assert_eq!(reparsed.stream, r.stream);
            }
            Err(e) => {
                assert_eq!(e.status(), 400);
                assert!(!e.message.is_empty());
            }
        }
    }
});
