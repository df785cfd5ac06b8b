//! The limits check: one reservation of three levels (requests and tokens each), in memory and in
//! Redis (each request, or with leases); and the budgets check: reading the four spend counters of a request (team and key, day
//! and month) and adding a cost to them, in memory and in Redis (Redis benches are skipped when no
//! Redis answers on 127.0.0.1:6379).

#![allow(clippy::unwrap_used, reason = "bench set-up: a broken sample must stop the bench")]

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use sluice::stores::memory::MemoryLimits;
use sluice::stores::redis::{HoldOff, RedisLimits};
use sluice::stores::spend::{MemorySpend, RedisSpend};
use sluice_core::budgets::{Counter, Dimension, SpendScope, SpendStore};
use sluice_core::limits::{Charge, LimitStore};
use sluice_core::money::Micros;

/// One runtime for every bench: a Redis connection lives on the runtime that made it (one per
/// thread, as in the gateway's workers), so it must outlive the bench that made it.
fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: std::sync::OnceLock<tokio::runtime::Runtime> = std::sync::OnceLock::new();
    RT.get_or_init(|| tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap())
}

/// The four counters of one request: team and key, daily and monthly.
fn counters(i: u64) -> Vec<Counter> {
    let org = i % 64;
    ["team:t:daily", "team:t:monthly", "key:k:daily", "key:k:monthly"]
        .iter()
        .map(|what| Counter {
            key: format!("{{org:{org}}}:spend:{what}"),
            ttl: Duration::from_secs(86_400),
            scope: SpendScope { dimension: Dimension::Team, owner: "t".into(), from_us: 0, to_us: 1 },
        })
        .collect()
}

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
    let rt = runtime();
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
        let redis = RedisLimits::new("redis://127.0.0.1:6379", "sluice-bench:", true, None).unwrap();
        rt.block_on(redis.reserve(&charges(0))).unwrap();
        group.bench_function("reserve_3_levels_redis", |b| {
            b.iter(|| {
                i += 1;
                black_box(rt.block_on(redis.reserve(&charges(i))).unwrap())
            })
        });
        // With leases (the gateway's default: 1 % of each limit, for 1 s): 64 callers in turn,
        // each admitted from its lease but for the reservation that takes the next one.
        let leased = RedisLimits::new("redis://127.0.0.1:6379", "sluice-bench:", true, None)
            .unwrap()
            .with_leases(1.0, Duration::from_secs(1));
        group.bench_function("reserve_3_levels_redis_leased", |b| {
            b.iter(|| {
                i += 1;
                black_box(rt.block_on(leased.reserve(&charges(i))).unwrap())
            })
        });
    } else {
        eprintln!("limits/reserve_3_levels_redis skipped: no Redis on 127.0.0.1:6379");
    }
    group.finish();
}

fn budgets(c: &mut Criterion) {
    let rt = runtime();
    let mut group = c.benchmark_group("budgets");
    let memory = MemorySpend::new(None);
    let mut i = 0;
    group.bench_function("check_and_add_memory", |b| {
        b.iter(|| {
            i += 1;
            let cs = counters(i);
            black_box(rt.block_on(memory.spent(&cs)).unwrap());
            black_box(rt.block_on(memory.add(&cs, Micros(98))).unwrap())
        })
    });
    let redis_up =
        std::net::TcpStream::connect_timeout(&"127.0.0.1:6379".parse().unwrap(), Duration::from_millis(200))
            .is_ok();
    if redis_up {
        let healthy = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
        let hold_off = std::sync::Arc::new(HoldOff::new());
        // refresh 0: every read and every add goes to Redis (the worst case, and what one instance
        // with budgets.refresh = "0ms" does on every request).
        let direct = RedisSpend::new(
            "redis://127.0.0.1:6379",
            "sluice-bench:",
            None,
            healthy.clone(),
            hold_off.clone(),
            Duration::ZERO,
            None,
        )
        .unwrap();
        rt.block_on(direct.spent(&counters(0))).unwrap();
        group.bench_function("check_and_add_redis_uncached", |b| {
            b.iter(|| {
                i += 1;
                let cs = counters(i);
                black_box(rt.block_on(direct.spent(&cs)).unwrap());
                black_box(rt.block_on(direct.add(&cs, Micros(98))).unwrap())
            })
        });
        // The default refresh: reads from the last reading, adds sent by one flush per window.
        let cached = RedisSpend::new(
            "redis://127.0.0.1:6379",
            "sluice-bench:",
            None,
            healthy,
            hold_off,
            Duration::from_millis(250),
            None,
        )
        .unwrap();
        let cs = counters(7);
        rt.block_on(cached.spent(&cs)).unwrap();
        group.bench_function("check_and_add_redis_refresh_250ms", |b| {
            b.iter(|| {
                black_box(rt.block_on(cached.spent(&cs)).unwrap());
                black_box(rt.block_on(cached.add(&cs, Micros(98))).unwrap())
            })
        });
    } else {
        eprintln!("budgets/*_redis skipped: no Redis on 127.0.0.1:6379");
    }
    group.finish();
}

criterion_group!(benches, limits, budgets);
criterion_main!(benches);
