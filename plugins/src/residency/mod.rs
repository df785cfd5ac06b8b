//! Plugin `residency`: where a request may be served.
//!
//! A key may carry allowed regions and tags (`phi`); `[residency] teams.ID` adds a team's. Each tag
//! of the request requires target tags (`requires = { phi = ["baa"] }`, the default: PHI only to
//! targets under a business associate agreement). The client may narrow the region with
//! `X-Gateway-Region`, but never widen it: a region its key does not allow is a 403. The plugin
//! only states the constraint ([`Residency`] in the request's facts); routing obeys it, and when no
//! target of the model qualifies the request is refused with a 403 — never sent elsewhere.

#[cfg(test)]
mod tests;

use std::collections::BTreeMap;

use async_trait::async_trait;
use serde::Deserialize;
use sluice_core::wire::Request;
use sluice_core::{ErrorKind, Flow, GatewayError, Phases, Plugin, RequestCtx, Residency};

pub const NAME: &str = "residency";

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResidencyConfig {
    /// Request tag → target tags it requires.
    #[serde(default = "default_requires")]
    pub requires: BTreeMap<String, Vec<String>>,
    /// Per team: allowed regions and tags every request of the team carries.
    #[serde(default)]
    pub teams: BTreeMap<String, TeamResidency>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TeamResidency {
    pub regions: Option<Vec<String>>,
    #[serde(default)]
    pub tags: Vec<String>,
}

impl Default for ResidencyConfig {
    fn default() -> Self {
        Self { requires: default_requires(), teams: BTreeMap::new() }
    }
}

fn default_requires() -> BTreeMap<String, Vec<String>> {
    BTreeMap::from([("phi".to_owned(), vec!["baa".to_owned()])])
}

pub struct ResidencyPlugin {
    config: ResidencyConfig,
}

impl ResidencyPlugin {
    pub fn new(config: ResidencyConfig) -> Self {
        Self { config }
    }
}

/// Regions allowed by both `a` and `b` (`None` is "any").
fn intersect(a: Option<&Vec<String>>, b: Option<&Vec<String>>) -> Option<Vec<String>> {
    match (a, b) {
        (None, None) => None,
        (Some(x), None) | (None, Some(x)) => Some(x.clone()),
        (Some(x), Some(y)) => Some(x.iter().filter(|r| y.contains(r)).cloned().collect()),
    }
}

#[async_trait]
impl Plugin for ResidencyPlugin {
    fn name(&self) -> &'static str {
        NAME
    }

    fn phases(&self) -> Phases {
        Phases { headers: false, request: true, complete: false }
    }

    async fn on_request(&self, ctx: &mut RequestCtx, _request: &mut Request) -> Result<Flow, GatewayError> {
        let Some(who) = ctx.identity.as_ref() else { return Ok(Flow::Continue) };
        let team = self.config.teams.get(&who.team);
        let mut regions = intersect(who.allowed_regions.as_ref(), team.and_then(|t| t.regions.as_ref()));
        if let Some(hint) = ctx.region_hint.as_deref().map(str::trim).filter(|h| !h.is_empty()) {
            if regions.as_ref().is_some_and(|allowed| !allowed.iter().any(|r| r == hint)) {
                let allowed = regions.as_ref().map(|r| r.join(", ")).unwrap_or_default();
                return Err(GatewayError::new(
                    ErrorKind::PermissionDenied,
                    format!("X-Gateway-Region `{hint}` is not allowed for this key (allowed: {allowed})."),
                )
                .with_code("region_not_allowed"));
            }
            regions = Some(vec![hint.to_owned()]);
        }
        let mut required: Vec<String> = Vec::new();
        for tag in who.tags.iter().chain(team.map(|t| t.tags.iter()).into_iter().flatten()) {
            for needed in self.config.requires.get(tag).into_iter().flatten() {
                if !required.contains(needed) {
                    required.push(needed.clone());
                }
            }
        }
        if regions.is_some() || !required.is_empty() {
            ctx.residency = Some(Residency { regions, required_tags: required });
        }
        Ok(Flow::Continue)
    }
}
