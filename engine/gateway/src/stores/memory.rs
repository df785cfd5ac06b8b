//! In-process state: the embedded default, and the fallback when Redis is unreachable. Correct for
//! one instance only: counters are not shared.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

use async_trait::async_trait;
use sluice_core::limits::{Adjustment, BucketState, Charge, LimitStore, StoreError, gcra};

/// GCRA buckets in a map, all charges of one reservation under one lock.
pub struct MemoryLimits {
    epoch: Instant,
    tats: Mutex<HashMap<String, f64>>,
}

impl Default for MemoryLimits {
    fn default() -> Self {
        Self { epoch: Instant::now(), tats: Mutex::new(HashMap::new()) }
    }
}

impl MemoryLimits {
    fn now_ms(&self) -> f64 {
        self.epoch.elapsed().as_secs_f64() * 1000.0
    }
}

#[async_trait]
impl LimitStore for MemoryLimits {
    async fn reserve(&self, charges: &[Charge]) -> Result<Vec<BucketState>, StoreError> {
        let now = self.now_ms();
        let mut tats = self.tats.lock().map_err(|_| StoreError("limit state poisoned".into()))?;
        let decided: Vec<(f64, BucketState)> =
            charges.iter().map(|c| gcra(tats.get(&c.key).copied(), now, c)).collect();
        if decided.iter().all(|(_, s)| s.allowed) {
            for (c, (tat, _)) in charges.iter().zip(&decided) {
                tats.insert(c.key.clone(), *tat);
            }
            return Ok(decided.into_iter().map(|(_, s)| s).collect());
        }
        // All or nothing: a refused reservation takes from no bucket, so what is reported left is
        // what was there before.
        Ok(decided
            .into_iter()
            .zip(charges)
            .map(|((_, s), c)| {
                if s.allowed {
                    gcra(tats.get(&c.key).copied(), now, &Charge { cost: 0, ..c.clone() }).1
                } else {
                    s
                }
            })
            .collect())
    }

    async fn adjust(&self, adjustments: &[Adjustment]) -> Result<(), StoreError> {
        let now = self.now_ms();
        let mut tats = self.tats.lock().map_err(|_| StoreError("limit state poisoned".into()))?;
        for a in adjustments {
            let per_unit = a.period.as_secs_f64() * 1000.0 / a.limit.max(1) as f64;
            if let Some(tat) = tats.get_mut(&a.key) {
                *tat = (*tat + per_unit * a.delta as f64).max(now);
            }
        }
        Ok(())
    }

    fn name(&self) -> &'static str {
        "memory"
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn charge(key: &str, limit: u64, cost: u64) -> Charge {
        Charge { key: key.into(), limit, period: Duration::from_secs(60), cost }
    }

    #[tokio::test]
    async fn a_refusal_on_one_level_takes_nothing_from_the_others() {
        let store = MemoryLimits::default();
        let ok = store.reserve(&[charge("team", 10, 1), charge("app", 1, 1)]).await.unwrap();
        assert!(ok.iter().all(|s| s.allowed));
        let refused = store.reserve(&[charge("team", 10, 1), charge("app", 1, 1)]).await.unwrap();
        assert!(refused[0].allowed && !refused[1].allowed);
        assert_eq!(refused[0].remaining, 9, "the team bucket was not charged for the refused request");
    }

    #[tokio::test]
    async fn adjusting_gives_back_what_was_reserved_but_not_used() {
        let store = MemoryLimits::default();
        store.reserve(&[charge("tpm", 100, 100)]).await.unwrap();
        assert!(!store.reserve(&[charge("tpm", 100, 1)]).await.unwrap()[0].allowed);
        let refund = Adjustment {
            key: "tpm".into(),
            limit: 100,
            period: Duration::from_secs(60),
            delta: -60,
            fallback: false,
        };
        store.adjust(&[refund]).await.unwrap();
        let s = store.reserve(&[charge("tpm", 100, 50)]).await.unwrap();
        assert!(s[0].allowed);
    }
}
