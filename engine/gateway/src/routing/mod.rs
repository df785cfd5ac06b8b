//! Routing: from the model alias a client asked for to the ordered list of targets to try.
//!
//! An alias names a fallback chain of ranks; a rank holds one or more targets, ordered per request by
//! weighted random choice. A target is skipped while its circuit is open or while a provider's
//! `Retry-After` cools it down. Which endpoint of the target's provider serves is the pool's choice
//! (see [`endpoints`]).

pub mod circuit;
pub mod endpoints;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::Rng;

use crate::providers::Provider;
use circuit::Circuit;
use sluice_core::ctx::TargetFacts;

/// One concrete choice: a provider, the model name it knows, a weight and a region.
///
/// Its name (`provider/model`, the name in headers, metrics and logs), upstream model and region
/// are its [`TargetFacts`], read through `Deref` (`target.name`): made once, and shared with each
/// request served here (`ctx.target`) instead of copied into it.
pub struct Target {
    pub provider: Arc<Provider>,
    pub weight: u32,
    /// Tags for residency rules (e.g. `baa`): the provider's and the target's own.
    pub tags: Vec<String>,
    pub circuit: Circuit,
    /// Set from a provider's 429 `Retry-After`: the target is out of rotation until then.
    cooled_until: Mutex<Option<Instant>>,
    facts: Arc<TargetFacts>,
}

impl std::ops::Deref for Target {
    type Target = TargetFacts;

    fn deref(&self) -> &TargetFacts {
        &self.facts
    }
}

impl Target {
    pub fn with_tags(mut self, tags: Vec<String>) -> Self {
        self.tags = tags;
        self
    }

    pub fn new(
        provider: Arc<Provider>,
        upstream_model: String,
        weight: u32,
        region: Option<String>,
        circuit: Circuit,
    ) -> Self {
        let facts = Arc::new(TargetFacts {
            name: format!("{}/{}", provider.name, upstream_model),
            provider: provider.name.clone(),
            upstream_model,
            region,
        });
        Self { provider, weight, tags: Vec::new(), circuit, cooled_until: Mutex::new(None), facts }
    }

    /// The target as a request records it (`ctx.target`).
    pub fn facts(&self) -> Arc<TargetFacts> {
        self.facts.clone()
    }

    pub fn cool_down(&self, d: Duration) {
        if let Ok(mut until) = self.cooled_until.lock() {
            *until = Some(Instant::now() + d);
        }
    }

    /// Time left of a `Retry-After` cool-down, if any.
    pub fn cooling(&self) -> Option<Duration> {
        let until = (*self.cooled_until.lock().ok()?)?;
        until.checked_duration_since(Instant::now()).filter(|d| !d.is_zero())
    }
}

/// The fallback chain of one alias.
pub struct Route {
    pub ranks: Vec<Vec<Arc<Target>>>,
}

impl Route {
    /// The targets in the order this request will try them: rank by rank, and inside a rank a
    /// weighted random order.
    pub fn plan(&self) -> Vec<Arc<Target>> {
        let mut rng = rand::rng();
        let mut out = Vec::with_capacity(self.ranks.iter().map(Vec::len).sum());
        for rank in &self.ranks {
            let mut pool: Vec<&Arc<Target>> = rank.iter().collect();
            while !pool.is_empty() {
                let total: u64 = pool.iter().map(|t| u64::from(t.weight.max(1))).sum();
                let mut pick = rng.random_range(0..total);
                let mut idx = 0;
                for (i, t) in pool.iter().enumerate() {
                    let w = u64::from(t.weight.max(1));
                    if pick < w {
                        idx = i;
                        break;
                    }
                    pick -= w;
                }
                out.push(pool.swap_remove(idx).clone());
            }
        }
        out
    }

    pub fn targets(&self) -> impl Iterator<Item = &Arc<Target>> {
        self.ranks.iter().flatten()
    }
}

/// All aliases.
pub struct Router {
    pub routes: BTreeMap<String, Route>,
    /// Models this instance's region does not serve (other regions do).
    pub elsewhere: std::collections::BTreeSet<String>,
}

impl Router {
    pub fn route(&self, model: &str) -> Option<&Route> {
        self.routes.get(model)
    }

    /// Every distinct target, for `/health` and `/metrics`.
    pub fn targets(&self) -> Vec<&Arc<Target>> {
        let mut seen: Vec<&Arc<Target>> = Vec::new();
        for t in self.routes.values().flat_map(Route::targets) {
            if !seen.iter().any(|s| Arc::ptr_eq(s, t)) {
                seen.push(t);
            }
        }
        seen
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::providers::Provider;

    fn target(name: &str, weight: u32) -> Arc<Target> {
        let p = Arc::new(Provider::mock(name, Duration::ZERO));
        Arc::new(Target::new(p, "m".into(), weight, None, Circuit::new(3, Duration::from_secs(1))))
    }

    #[test]
    fn ranks_are_tried_in_order_and_weights_shape_the_first_choice() {
        let route = Route { ranks: vec![vec![target("a", 9), target("b", 1)], vec![target("c", 1)]] };
        let mut first_a = 0;
        for _ in 0..1000 {
            let plan = route.plan();
            assert_eq!(plan.len(), 3);
            assert_eq!(plan[2].provider.name, "c");
            if plan[0].provider.name == "a" {
                first_a += 1;
            }
        }
        assert!((850..=950).contains(&first_a), "a first {first_a} times of 1000");
    }

    #[test]
    fn a_cooled_target_reports_time_left() {
        let t = target("a", 1);
        assert!(t.cooling().is_none());
        t.cool_down(Duration::from_secs(5));
        assert!(t.cooling().unwrap() > Duration::from_secs(4));
    }
}
