//! Arbitrary text through the PII scanner and redactor: match offsets stay inside the text, the
//! redacted request is valid UTF-8 JSON, and a block or a pass, never a panic. The same text as a
//! streamed answer, cut into chunks of a size the input chooses, goes through the answer scan the
//! way the engine drives it: every release is inside the held text on a char boundary, and the end
//! releases everything.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use sluice_core::ctx::Endpoint;
use sluice_core::wire::Request;
use sluice_core::{Plugin, RequestCtx};
use sluice_plugins::pii::{Pii, PiiConfig};

fn pii() -> &'static Pii {
    static PII: OnceLock<Pii> = OnceLock::new();
    PII.get_or_init(|| {
        let config = PiiConfig { responses: true, response_holdback: 24, ..PiiConfig::default() };
        Pii::new(&config).expect("the default patterns compile")
    })
}

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    let mut f = std::pin::pin!(f);
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    loop {
        if let std::task::Poll::Ready(v) = f.as_mut().poll(&mut cx) {
            return v;
        }
    }
}

fuzz_target!(|data: &[u8]| {
    for f in pii().scanner().scan(data).expect("the scanner never fails on input") {
        assert!(f.from <= f.to && f.to <= data.len());
    }
    let Ok(text) = std::str::from_utf8(data) else { return };
    let body = serde_json::json!({"model": "m", "messages": [{"role": "user", "content": text}]});
    let mut bytes = serde_json::to_vec(&body).expect("json");
    let mut request = Request::parse(Endpoint::ChatCompletions, &mut bytes).expect("a valid body");
    match block_on(pii().on_request(&mut RequestCtx::new("fuzz".into()), &mut request)) {
        Ok(_) => {
            let out = serde_json::to_vec(&request.body).expect("the redacted body serializes");
            assert!(std::str::from_utf8(&out).is_ok());
        }
        Err(e) => assert_eq!(e.status(), 400, "{}", e.message),
    }
    let chunk = usize::from(data.first().copied().unwrap_or(1) % 16) + 1;
    let mut ctx = RequestCtx::new("fuzz".into());
    let mut held = String::new();
    let mut out = String::new();
    let mut rest = text;
    while !rest.is_empty() {
        let mut cut = chunk.min(rest.len());
        while !rest.is_char_boundary(cut) {
            cut += 1;
        }
        held.push_str(&rest[..cut]);
        rest = &rest[cut..];
        let n = pii().on_answer_text(&mut ctx, &mut held, false).expect("the scanner never fails");
        assert!(n <= held.len() && held.is_char_boundary(n));
        let tail = held.split_off(n);
        out.push_str(&held);
        held = tail;
    }
    let n = pii().on_answer_text(&mut ctx, &mut held, true).expect("the scanner never fails");
    assert_eq!(n, held.len(), "the end of an answer releases all of it");
    out.push_str(&held);
    assert!(text.is_empty() || !out.is_empty());
});
