//! # sluice-benches
//!
//! - `benches/request_path.rs`, `benches/sse.rs`: criterion benches of the in-process hot paths.
//! - `src/bin/load.rs`: the end-to-end load benchmark (gateway vs. direct vs. nginx).
//! - `src/bin/bench_gate.rs`: fails when a criterion bench's p95 exceeds its budget in
//!   `docs/benchmarks.md`.
//!
//! This library holds the sample inputs the benches share.

use serde_json::json;

/// A chat request of about `size` bytes: a system prompt, a few turns, tools, and the last user turn
/// padded to the size.
pub fn chat_body(size: usize, stream: bool) -> Vec<u8> {
    let mut v = json!({
        "model": "gpt-4o-mini",
        "stream": stream,
        "temperature": 0.2,
        "max_tokens": 256,
        "messages": [
            {"role": "system", "content": "You are a helpful assistant for an online shop."},
            {"role": "user", "content": "Where is my order 4411?"},
            {"role": "assistant", "content": null, "tool_calls": [{"id": "call_1", "type": "function",
                "function": {"name": "lookup_order", "arguments": "{\"order_id\":\"4411\"}"}}]},
            {"role": "tool", "tool_call_id": "call_1", "content": "{\"status\":\"shipped\"}"},
            {"role": "user", "content": ""}
        ],
        "tools": [{"type": "function", "function": {"name": "lookup_order", "description": "Find an order",
            "parameters": {"type": "object", "properties": {"order_id": {"type": "string"}}}}}]
    });
    let base = serde_json::to_vec(&v).map_or(0, |b| b.len());
    let pad = size.saturating_sub(base);
    let words = "the quick brown fox jumps over the lazy dog ";
    let text: String = words.chars().cycle().take(pad).collect();
    v["messages"][4]["content"] = json!(text);
    serde_json::to_vec(&v).unwrap_or_default()
}

/// An OpenAI SSE stream of `events` content chunks, plus finish, usage and `[DONE]`.
pub fn sse_stream(events: usize) -> Vec<u8> {
    let mut out = String::new();
    let chunk = |delta: &str, finish: &str, usage: &str| {
        format!(
            "data: {{\"id\":\"chatcmpl-AbC123\",\"object\":\"chat.completion.chunk\",\"created\":1732400000,\
             \"model\":\"gpt-4o-mini-2024-07-18\",\"system_fingerprint\":\"fp_0ba0d124f1\",\"choices\":[{{\"index\":0,\
             \"delta\":{delta},\"logprobs\":null,\"finish_reason\":{finish}}}],\"usage\":{usage}}}\n\n"
        )
    };
    out.push_str(&chunk("{\"role\":\"assistant\",\"content\":\"\"}", "null", "null"));
    for i in 0..events {
        out.push_str(&chunk(&format!("{{\"content\":\" token{i}\"}}"), "null", "null"));
    }
    out.push_str(&chunk("{}", "\"stop\"", "null"));
    out.push_str(
        "data: {\"id\":\"chatcmpl-AbC123\",\"object\":\"chat.completion.chunk\",\"created\":1732400000,\
         \"model\":\"gpt-4o-mini-2024-07-18\",\"choices\":[],\"usage\":{\"prompt_tokens\":120,\
         \"completion_tokens\":50,\"total_tokens\":170}}\n\n",
    );
    out.push_str("data: [DONE]\n\n");
    out.into_bytes()
}
