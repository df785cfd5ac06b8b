use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

use sluice_core::limits::StoreError;

use super::*;
use crate::test_support::block_on;

#[derive(Default)]
struct TestStore {
    counters: Mutex<HashMap<String, u64>>,
    marks: Mutex<HashSet<String>>,
}

#[async_trait]
impl SpendStore for TestStore {
    async fn spent(&self, counters: &[Counter]) -> Result<Vec<Micros>, StoreError> {
        let map = self.counters.lock().unwrap();
        Ok(counters.iter().map(|c| Micros(map.get(&c.key).copied().unwrap_or(0))).collect())
    }

    async fn add(&self, counters: &[Counter], amount: Micros) -> Result<Vec<Micros>, StoreError> {
        let mut map = self.counters.lock().unwrap();
        Ok(counters
            .iter()
            .map(|c| {
                let v = map.entry(c.key.clone()).or_default();
                *v += amount.0;
                Micros(*v)
            })
            .collect())
    }

    async fn first_time(&self, key: &str, _: Duration) -> Result<bool, StoreError> {
        Ok(self.marks.lock().unwrap().insert(key.to_owned()))
    }

    fn name(&self) -> &'static str {
        "test"
    }
}

#[derive(Default)]
struct Recorder(Mutex<Vec<Notice>>);

impl Notifier for Recorder {
    fn notify(&self, notice: Notice) {
        self.0.lock().unwrap().push(notice);
    }
}

/// 2026-11-30T12:00:00Z.
fn noon() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(20_787 * 86_400 + 12 * 3600)
}

fn ctx() -> RequestCtx {
    crate::test_support::ctx("pay")
}

fn request() -> Request {
    let body = r#"{"model":"m","messages":[{"role":"user","content":"hello"}]}"#;
    Request::parse(Endpoint::ChatCompletions, &mut body.as_bytes().to_vec()).unwrap()
}

fn plugin(config: BudgetsConfig) -> (Budgets, Arc<Recorder>) {
    let recorder = Arc::new(Recorder::default());
    let b = Budgets::new(&config, Arc::new(TestStore::default()), recorder.clone()).unwrap().with_clock(noon);
    (b, recorder)
}

/// Runs one request costing `cost` through the plugin; the refusal if there was one.
fn spend(b: &Budgets, cost: u64) -> (RequestCtx, Option<GatewayError>) {
    let mut c = ctx();
    let refused = block_on(b.on_request(&mut c, &mut request())).err();
    if refused.is_none() {
        c.cost = Some(Micros(cost));
        block_on(b.on_complete(&c));
    }
    (c, refused)
}

fn header<'a>(c: &'a RequestCtx, name: &str) -> Option<&'a str> {
    c.response_headers.iter().find(|(k, _)| *k == name).map(|(_, v)| v.as_str())
}

#[test]
fn a_spent_team_budget_refuses_with_insufficient_quota_until_midnight_utc() {
    let config = BudgetsConfig {
        team: Some(Budget { daily: Some("0.000100".into()), monthly: None }),
        warn_at: 80,
        ..Default::default()
    };
    let (b, notices) = plugin(config);
    let (c, refused) = spend(&b, 60);
    assert!(refused.is_none());
    assert_eq!(header(&c, "x-sluice-budget-remaining-usd"), Some("0.000100"));
    let (c, refused) = spend(&b, 30);
    assert!(refused.is_none());
    assert_eq!(header(&c, "x-sluice-budget-remaining-usd"), Some("0.000040"));
    assert_eq!(notices.0.lock().unwrap().len(), 1, "crossing 80 % sends one warning");
    assert_eq!(notices.0.lock().unwrap()[0].event, "budget.warning");
    let (c, refused) = spend(&b, 30);
    assert!(refused.is_none(), "90 % spent: still allowed");
    assert!(header(&c, "x-sluice-budget-warning").unwrap().contains("team `pay` daily budget 90% used"));
    let (_, refused) = spend(&b, 0);
    let e = refused.expect("120 % spent: refused");
    assert_eq!(
        (e.status(), e.kind.openai_type(), e.code),
        (429, "insufficient_quota", Some("insufficient_quota"))
    );
    assert!(e.message.contains("2026-12-01T00:00:00Z"), "{}", e.message);
    assert_eq!(e.retry_after, Some(12 * 3600), "until UTC midnight");
    let events: Vec<&str> = notices.0.lock().unwrap().iter().map(|n| n.event).collect();
    assert_eq!(events, ["budget.warning", "budget.exhausted"], "each notice once per period");
}

#[test]
fn key_budgets_and_monthly_budgets_apply_beside_the_team_ones() {
    let mut config = BudgetsConfig {
        team: Some(Budget { daily: Some("1.00".into()), monthly: None }),
        ..Default::default()
    };
    config.keys.insert("k".into(), Budget { daily: None, monthly: Some("0.000050".into()) });
    let (b, _) = plugin(config);
    assert!(spend(&b, 50).1.is_none());
    let e = spend(&b, 1).1.expect("the key's monthly budget is spent");
    assert!(
        e.message.contains("key `k` monthly budget") && e.message.contains("2026-12-01"),
        "{}",
        e.message
    );
}

#[test]
fn observe_mode_reports_but_never_refuses() {
    let config = BudgetsConfig {
        team: Some(Budget { daily: Some("0.000010".into()), monthly: None }),
        observe: vec!["pay".into()],
        ..Default::default()
    };
    let (b, _) = plugin(config);
    assert!(spend(&b, 50).1.is_none());
    let (c, refused) = spend(&b, 50);
    assert!(refused.is_none());
    assert_eq!(header(&c, "x-sluice-budget-observe"), Some("would refuse: team `pay` daily budget spent"));
}

#[test]
fn bad_amounts_name_the_key() {
    let mut config = BudgetsConfig::default();
    config.teams.insert("pay".into(), Budget { daily: Some("lots".into()), monthly: None });
    let e =
        Budgets::new(&config, Arc::new(TestStore::default()), Arc::new(Recorder::default())).err().unwrap();
    assert!(e.starts_with("teams.pay.daily"), "{e}");
}
