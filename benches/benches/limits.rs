//! The limits check: one reservation of three levels (requests and tokens each), in memory and in
//! Redis (skipped when no Redis answers on 127.0.0.1:6379).

#![allow(clippy::unwrap_used, reason = "bench set-up: a broken sample must stop the bench")]

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use sluice::stores::memory::MemoryLimits;
use sluice::stores::redis::RedisLimits;
use sluice_core::limits::{Charge, LimitStore};

fn charges(i: u64) -> Vec<Charge> {
    let org = i % 64;
    ["org", "team", "app"]
        .iter()
        .flat_map(|level| {
            [
                Charge {
                    key: format!("{{org:{org}}}:{level}:rpm"),
                    limit: 1_000_000,
                    period: Duration::from_secs(60),
                    cost: 1,
                },
                Charge {
                    key: format!("{{org:{org}}}:{level}:tpm"),
                    limit: 1_000_000_000,
                    period: Duration::from_secs(60),
                    cost: 900,
                },
            ]
        })
        .collect()
}

fn limits(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let mut group = c.benchmark_group("limits");
    let memory = MemoryLimits::default();
    let mut i = 0;
    group.bench_function("reserve_3_levels_memory", |b| {
        b.iter(|| {
            i += 1;
            black_box(rt.block_on(memory.reserve(&charges(i))).unwrap())
        })
    });
    let redis_up =
        std::net::TcpStream::connect_timeout(&"127.0.0.1:6379".parse().unwrap(), Duration::from_millis(200))
            .is_ok();
    if redis_up {
        let redis = RedisLimits::new("redis://127.0.0.1:6379", "sluice-bench:", true).unwrap();
        rt.block_on(redis.reserve(&charges(0))).unwrap();
        group.bench_function("reserve_3_levels_redis", |b| {
            b.iter(|| {
                i += 1;
                black_box(rt.block_on(redis.reserve(&charges(i))).unwrap())
            })
        });
    } else {
        eprintln!("limits/reserve_3_levels_redis skipped: no Redis on 127.0.0.1:6379");
    }
    group.finish();
}

criterion_group!(benches, limits);
criterion_main!(benches);
