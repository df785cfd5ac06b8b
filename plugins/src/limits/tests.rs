use std::collections::HashMap;
use std::sync::Mutex;

use sluice_core::limits::{StoreError, gcra};

use super::*;
use crate::test_support::block_on;

/// A store with the memory store's semantics on a clock the test timer moves, kept here so the
/// plugin is tested on its own.
#[derive(Default)]
struct TestStore {
    tats: Mutex<HashMap<String, f64>>,
    now_ms: Mutex<f64>,
    broken: bool,
}

#[async_trait]
impl LimitStore for TestStore {
    async fn reserve(&self, charges: &[Charge]) -> Result<Vec<BucketState>, StoreError> {
        if self.broken {
            return Err(StoreError("down".into()));
        }
        let now = *self.now_ms.lock().unwrap();
        let mut tats = self.tats.lock().unwrap();
        let decided: Vec<(f64, BucketState)> =
            charges.iter().map(|c| gcra(tats.get(&c.key).copied(), now, c)).collect();
        if decided.iter().all(|(_, s)| s.allowed) {
            for (c, (t, _)) in charges.iter().zip(&decided) {
                tats.insert(c.key.clone(), *t);
            }
        }
        Ok(decided.into_iter().map(|(_, s)| s).collect())
    }

    async fn adjust(&self, _: &[Adjustment]) -> Result<(), StoreError> {
        Ok(())
    }

    fn name(&self) -> &'static str {
        "test"
    }
}

/// Sleeping moves the store's clock.
struct TestTimer(Arc<TestStore>, Mutex<Duration>);

#[async_trait]
impl Timer for TestTimer {
    async fn sleep(&self, d: Duration) {
        *self.0.now_ms.lock().unwrap() += d.as_secs_f64() * 1000.0;
        *self.1.lock().unwrap() += d;
    }
}

fn limits(config: LimitsConfig) -> (Limits, Arc<TestTimer>) {
    let store = Arc::new(TestStore::default());
    let timer = Arc::new(TestTimer(store.clone(), Mutex::new(Duration::ZERO)));
    let wait = sluice_core::duration::parse(&config.queue_max_wait).unwrap();
    (Limits::new(config, store, timer.clone(), wait), timer)
}

fn ctx() -> RequestCtx {
    crate::test_support::ctx("pay")
}

fn request(max_tokens: u64) -> Request {
    let body = format!(
        r#"{{"model":"m","max_tokens":{max_tokens},"messages":[{{"role":"user","content":"hello"}}]}}"#
    );
    Request::parse(Endpoint::ChatCompletions, &mut body.into_bytes()).unwrap()
}

#[test]
fn the_team_limit_refuses_with_a_429_naming_level_and_limit() {
    let config = LimitsConfig { team: Some(Rate { rpm: Some(2), tpm: None }), ..LimitsConfig::default() };
    let (limits, _) = limits(config);
    for _ in 0..2 {
        assert!(block_on(limits.on_request(&mut ctx(), &mut request(10))).is_ok());
    }
    let mut c = ctx();
    let e = block_on(limits.on_request(&mut c, &mut request(10))).unwrap_err();
    assert_eq!(e.status(), 429);
    assert!(
        e.message.contains("team `pay`") && e.message.contains("RPM") && e.message.contains("limit 2"),
        "{}",
        e.message
    );
    assert_eq!(e.retry_after, Some(30));
    assert!(c.response_headers.contains(&("x-ratelimit-remaining-requests", "0".into())));
    assert!(c.response_headers.contains(&("x-ratelimit-limit-requests", "2".into())));
    let header = |name| c.response_headers.iter().find(|(n, _)| *n == name).map(|(_, v)| v.as_str());
    // Seconds with three decimals, then whole seconds rounded up: the bucket is full again in a
    // minute, less the moments the test took.
    let reset = header("x-ratelimit-reset-requests").unwrap_or_default();
    let (whole, fraction) = reset.strip_suffix('s').and_then(|r| r.split_once('.')).unwrap_or_default();
    assert!(["59", "60"].contains(&whole) && fraction.len() == 3, "{reset}");
    assert_eq!(header("x-ratelimit-reset"), Some("60"));
}

#[test]
fn tokens_reserve_the_prompt_estimate_plus_max_tokens() {
    let config = LimitsConfig { app: Some(Rate { rpm: None, tpm: Some(100) }), ..LimitsConfig::default() };
    let (limits, _) = limits(config);
    let mut c = ctx();
    assert!(block_on(limits.on_request(&mut c, &mut request(90))).is_ok());
    assert!(
        c.response_headers.contains(&("x-ratelimit-remaining-tokens", "8".into())),
        "{:?}",
        c.response_headers
    );
    let e = block_on(limits.on_request(&mut ctx(), &mut request(90))).unwrap_err();
    assert!(e.message.contains("TPM") && e.message.contains("requested 92"), "{}", e.message);
}

#[test]
fn overrides_replace_the_level_default() {
    let mut config = LimitsConfig { team: Some(Rate { rpm: Some(1), tpm: None }), ..LimitsConfig::default() };
    config.overrides.insert("team:pay".into(), Rate { rpm: Some(5), tpm: None });
    let (limits, _) = limits(config);
    for _ in 0..5 {
        assert!(block_on(limits.on_request(&mut ctx(), &mut request(1))).is_ok());
    }
    assert!(block_on(limits.on_request(&mut ctx(), &mut request(1))).is_err());
}

#[test]
fn queue_waits_for_capacity_within_its_bound() {
    let mut config = LimitsConfig { team: Some(Rate { rpm: Some(2), tpm: None }), ..LimitsConfig::default() };
    config.burst.team = Burst::Queue;
    config.queue_max_wait = "45s".into();
    let (limits, timer) = limits(config);
    for _ in 0..2 {
        assert!(block_on(limits.on_request(&mut ctx(), &mut request(1))).is_ok());
    }
    assert!(block_on(limits.on_request(&mut ctx(), &mut request(1))).is_ok(), "the third waits and goes");
    assert_eq!(*timer.1.lock().unwrap(), Duration::from_secs(30), "one request refills every 30 s");
}

#[test]
fn a_queue_wait_beyond_the_bound_is_refused_without_waiting() {
    let mut config = LimitsConfig { app: Some(Rate { rpm: Some(1), tpm: None }), ..LimitsConfig::default() };
    config.burst.app = Burst::Queue;
    config.queue_max_wait = "10s".into();
    let (limits, timer) = limits(config);
    assert!(block_on(limits.on_request(&mut ctx(), &mut request(1))).is_ok());
    let e = block_on(limits.on_request(&mut ctx(), &mut request(1))).unwrap_err();
    assert_eq!(e.status(), 429);
    assert_eq!(*timer.1.lock().unwrap(), Duration::ZERO, "a wait of 60 s does not fit 10 s: no waiting");
}

#[test]
fn borrow_goes_over_the_apps_limit_while_the_team_has_room() {
    let mut config = LimitsConfig {
        team: Some(Rate { rpm: Some(3), tpm: None }),
        app: Some(Rate { rpm: Some(1), tpm: None }),
        ..LimitsConfig::default()
    };
    config.burst.app = Burst::Borrow;
    let (limits, _) = limits(config);
    for i in 0..3 {
        assert!(block_on(limits.on_request(&mut ctx(), &mut request(1))).is_ok(), "request {i}");
    }
    let e = block_on(limits.on_request(&mut ctx(), &mut request(1))).unwrap_err();
    assert!(e.message.contains("team `pay`"), "the parent is full now: {}", e.message);
}

#[test]
fn borrow_without_a_limited_parent_is_a_reject() {
    let mut config = LimitsConfig { app: Some(Rate { rpm: Some(1), tpm: None }), ..LimitsConfig::default() };
    config.burst.app = Burst::Borrow;
    let (limits, _) = limits(config);
    assert!(block_on(limits.on_request(&mut ctx(), &mut request(1))).is_ok());
    assert_eq!(block_on(limits.on_request(&mut ctx(), &mut request(1))).unwrap_err().status(), 429);
}

#[test]
fn a_store_failure_refuses_when_fail_closed_and_passes_when_open() {
    for (mode, refused) in [(FailMode::Closed, true), (FailMode::Open, false)] {
        let config = LimitsConfig {
            team: Some(Rate { rpm: Some(1), tpm: None }),
            on_store_failure: mode,
            ..LimitsConfig::default()
        };
        let store = Arc::new(TestStore { broken: true, ..TestStore::default() });
        let timer = Arc::new(TestTimer(store.clone(), Mutex::new(Duration::ZERO)));
        let limits = Limits::new(config, store, timer, Duration::from_secs(1));
        let r = block_on(limits.on_request(&mut ctx(), &mut request(1)));
        assert_eq!(r.as_ref().err().map(|e| e.status()), refused.then_some(503), "{mode:?}");
    }
}

#[test]
fn observe_mode_reports_a_refusal_but_lets_the_request_through() {
    let config = LimitsConfig {
        team: Some(Rate { rpm: Some(1), tpm: None }),
        observe: vec!["pay".into()],
        ..LimitsConfig::default()
    };
    let (limits, _) = limits(config);
    assert!(block_on(limits.on_request(&mut ctx(), &mut request(1))).is_ok());
    let mut c = ctx();
    assert!(block_on(limits.on_request(&mut c, &mut request(1))).is_ok());
    let observed = c.response_headers.iter().find(|(k, _)| *k == "x-sluice-ratelimit-observe");
    assert_eq!(observed.map(|(_, v)| v.as_str()), Some("would refuse: team `pay` RPM limit 1"));
}
