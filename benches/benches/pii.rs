//! The PII scan of message text: clean and dirty bodies of 1, 10 and 100 KB. A clean text costs
//! one detect pass; a dirty one also the offsets pass and the validators.

#![allow(clippy::unwrap_used, reason = "bench set-up: a broken sample must stop the bench")]

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use sluice_plugins::pii::{Pii, PiiConfig};

/// Prose of `size` bytes; `dirty` puts an email, a phone number and a card every ~1 KB.
fn text(size: usize, dirty: bool) -> String {
    let clean = "The quarterly report shows steady growth across all regions, with the team shipping \
                 three releases and closing most of the open incidents before the deadline. ";
    let mut out = String::with_capacity(size + 200);
    let mut n = 0;
    while out.len() < size {
        out.push_str(clean);
        n += 1;
        if dirty && n % 6 == 0 {
            out.push_str("Contact jane.doe@example.com or +14155552671, card 4111 1111 1111 1111. ");
        }
    }
    out.truncate(size);
    out
}

fn pii(c: &mut Criterion) {
    let p = Pii::new(&PiiConfig::default()).unwrap();
    let mut group = c.benchmark_group("pii");
    for size in [1024, 10 * 1024, 100 * 1024] {
        for dirty in [false, true] {
            let t = text(size, dirty);
            group.throughput(Throughput::Bytes(size as u64));
            let name = if dirty { "scan_dirty" } else { "scan_clean" };
            group.bench_with_input(BenchmarkId::new(name, size), &t, |b, t| {
                b.iter(|| black_box(p.scanner().scan(black_box(t.as_bytes())).unwrap()))
            });
        }
    }
    // As the gateway meets it: between two requests other processes and the kernel run on the
    // core, so the database and the scratch come back from L3 or memory. The set-up (not timed)
    // writes a buffer twice the size of this machine's L2 before every scan.
    let mut evict = vec![0u8; 2 << 20];
    for size in [1024, 10 * 1024] {
        let t = text(size, false);
        group.throughput(Throughput::Bytes(size as u64));
        group.bench_with_input(BenchmarkId::new("scan_clean_cold", size), &t, |b, t| {
            b.iter_batched(
                || {
                    for (i, byte) in evict.iter_mut().enumerate().step_by(64) {
                        *byte = byte.wrapping_add(i as u8);
                    }
                },
                |()| black_box(p.scanner().scan(black_box(t.as_bytes())).unwrap()),
                criterion::BatchSize::PerIteration,
            )
        });
    }
    group.finish();
}

criterion_group!(benches, pii);
criterion_main!(benches);
