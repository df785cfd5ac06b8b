//! The SSE reader on the forwarding path: per stream and per event.

use std::hint::black_box;

use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use sluice::sse::SseTracker;
use sluice_benches::sse_stream;

fn sse(c: &mut Criterion) {
    let mut group = c.benchmark_group("sse");
    let stream = Bytes::from(sse_stream(200));
    // One event per upstream chunk, as providers usually send them.
    let mut events = Vec::new();
    let mut rest = stream.clone();
    while let Some(i) = rest.windows(2).position(|w| w == b"\n\n") {
        events.push(rest.split_to(i + 2));
    }
    group.throughput(Throughput::Elements(events.len() as u64));
    group.bench_function("pass_through_per_stream_203_events", |b| {
        b.iter(|| {
            let mut t = SseTracker::new(false);
            for e in &events {
                black_box(t.feed(e.clone(), |_| {}));
            }
            black_box(t.usage)
        })
    });
    group.bench_function("hide_usage_per_stream_203_events", |b| {
        b.iter(|| {
            let mut t = SseTracker::new(true);
            for e in &events {
                black_box(t.feed(e.clone(), |_| {}));
            }
            black_box(t.usage)
        })
    });
    // Chunks cut at arbitrary places (every 61 bytes): the carry-over path.
    let odd: Vec<Bytes> = stream.chunks(61).map(Bytes::copy_from_slice).collect();
    group.bench_function("split_chunks_per_stream", |b| {
        b.iter(|| {
            let mut t = SseTracker::new(false);
            for c in &odd {
                black_box(t.feed(c.clone(), |_| {}));
            }
            black_box(t.usage)
        })
    });
    group.throughput(Throughput::Elements(1));
    let one = events[5].clone();
    group.bench_function("one_content_event", |b| {
        let mut t = SseTracker::new(false);
        b.iter(|| black_box(t.feed(one.clone(), |_| {})))
    });
    group.finish();
}

criterion_group!(benches, sse);
criterion_main!(benches);
