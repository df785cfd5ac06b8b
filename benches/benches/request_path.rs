//! The in-process request path: parse the body once, plan the route, serialize the upstream body.

#![allow(clippy::unwrap_used, reason = "bench set-up: a broken sample must stop the bench")]

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use sluice::providers::Provider;
use sluice::routing::circuit::Circuit;
use sluice::routing::{Route, Target};
use sluice_benches::chat_body;
use sluice_core::GatewayError;
use sluice_core::ctx::Endpoint;
use sluice_core::wire::Request;

fn route() -> Route {
    let target = |name: &str, weight| {
        let provider = Arc::new(Provider::mock(name, Duration::ZERO));
        Arc::new(Target::new(provider, "m".into(), weight, None, Circuit::new(3, Duration::from_secs(30))))
    };
    Route { ranks: vec![vec![target("a", 3), target("b", 1)], vec![target("c", 1)]] }
}

/// An OpenAI chat answer of about `size` bytes (its content padded), usage last.
fn chat_answer(size: usize) -> Vec<u8> {
    let shell = |content: &str| {
        format!(
            "{{\"id\":\"chatcmpl-AbC123\",\"object\":\"chat.completion\",\"created\":1732400000,\
             \"model\":\"gpt-4o-mini-2024-07-18\",\"choices\":[{{\"index\":0,\"message\":{{\"role\":\
             \"assistant\",\"content\":\"{content}\",\"refusal\":null}},\"logprobs\":null,\
             \"finish_reason\":\"stop\"}}],\"usage\":{{\"prompt_tokens\":120,\"completion_tokens\":50,\
             \"total_tokens\":170}},\"system_fingerprint\":\"fp_0ba0d124f1\"}}"
        )
    };
    let pad = size.saturating_sub(shell("").len());
    shell(&"Sure, here is the answer. ".chars().cycle().take(pad).collect::<String>()).into_bytes()
}

fn request_path(c: &mut Criterion) {
    let mut group = c.benchmark_group("request_path");
    for size in [1024, 10 * 1024, 100 * 1024] {
        let body = chat_body(size, false);
        group.throughput(Throughput::Bytes(body.len() as u64));
        group.bench_with_input(BenchmarkId::new("parse", size), &body, |b, body| {
            b.iter_batched_ref(
                || body.clone(),
                |buf| black_box(Request::parse(Endpoint::ChatCompletions, buf)),
                criterion::BatchSize::SmallInput,
            )
        });
        let parsed = Request::parse(Endpoint::ChatCompletions, &mut body.clone()).unwrap();
        group.bench_with_input(BenchmarkId::new("serialize_upstream", size), &parsed, |b, r| {
            // What a changed body costs (an untouched one goes out as the client's bytes).
            b.iter(|| black_box(serde_json::to_vec(&*r.body)))
        });
        group.bench_with_input(BenchmarkId::new("parse_plan_serialize", size), &body, |b, body| {
            let route = route();
            b.iter_batched_ref(
                || body.clone(),
                |buf| {
                    let r = Request::parse(Endpoint::ChatCompletions, buf)?;
                    let plan = route.plan();
                    black_box(&plan);
                    Ok::<_, GatewayError>(r.body.to_bytes())
                },
                criterion::BatchSize::SmallInput,
            )
        });
    }
    // The answer's `usage`, read from a non-streamed chat answer (the rest stepped over).
    for size in [256, 2048, 16 * 1024] {
        let answer = chat_answer(size);
        group.throughput(Throughput::Bytes(answer.len() as u64));
        group.bench_with_input(BenchmarkId::new("answer_usage", size), &answer, |b, answer| {
            b.iter(|| {
                black_box(sluice_core::wire::top_level_field(
                    answer,
                    "usage",
                    sluice_core::usage::Usage::from_openai,
                ))
            })
        });
    }
    let route = route();
    group.throughput(Throughput::Elements(1));
    group.bench_function("plan", |b| b.iter(|| black_box(route.plan())));
    let err = GatewayError::invalid_request("Missing required parameter: 'messages'.").with_param("messages");
    group.bench_function("render_error", |b| b.iter(|| black_box(err.to_json())));
    group.finish();
}

criterion_group!(benches, request_path);
criterion_main!(benches);
