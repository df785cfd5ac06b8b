//! Translation cost: per request (OpenAI body → Anthropic / Gemini body) and per stream event
//! (provider SSE → OpenAI chunks), on the recorded-shape fixtures of the golden tests.

#![allow(clippy::unwrap_used, reason = "bench set-up: a broken sample must stop the bench")]

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use sluice::translate::{StreamTranslation, anthropic, gemini, openai};
use sluice_benches::chat_body;
use sluice_core::ctx::Endpoint;
use sluice_core::wire::Request;

const ANTHROPIC: &[u8] = include_bytes!("../../engine/gateway/tests/fixtures/anthropic_tools.sse");
const GEMINI: &[u8] = include_bytes!("../../engine/gateway/tests/fixtures/gemini_text_and_call.sse");

/// A fixture cut into its events, one per chunk, as providers send them.
fn events(stream: &[u8]) -> Vec<Vec<u8>> {
    let text = std::str::from_utf8(stream).unwrap();
    let sep = if text.contains("\r\n\r\n") { "\r\n\r\n" } else { "\n\n" };
    text.split_inclusive(sep).map(|e| e.as_bytes().to_vec()).collect()
}

fn translate(c: &mut Criterion) {
    let mut group = c.benchmark_group("translate");
    let request = Request::parse(Endpoint::ChatCompletions, &mut chat_body(1024, true)).unwrap();
    group.bench_function("request_to_anthropic_1024", |b| {
        b.iter(|| {
            let chat = openai::chat_from_openai(&request.body, true).unwrap();
            black_box(serde_json::to_vec(&anthropic::request(&chat, "claude", 1024).unwrap()))
        })
    });
    group.bench_function("request_to_gemini_1024", |b| {
        b.iter(|| {
            let chat = openai::chat_from_openai(&request.body, true).unwrap();
            black_box(serde_json::to_vec(&gemini::request(&chat)))
        })
    });
    for (name, fixture) in [("anthropic", ANTHROPIC), ("gemini", GEMINI)] {
        let evs = events(fixture);
        group.throughput(Throughput::Elements(evs.len() as u64));
        group.bench_function(format!("stream_{name}_per_stream"), |b| {
            b.iter(|| {
                let mut t = if name == "anthropic" {
                    StreamTranslation::anthropic(0)
                } else {
                    StreamTranslation::gemini(0, "m")
                };
                for e in &evs {
                    black_box(t.feed(e));
                }
                black_box(t.finish())
            })
        });
    }
    group.finish();
}

criterion_group!(benches, translate);
criterion_main!(benches);
