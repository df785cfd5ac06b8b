//! The facts of one request that plugins share.
//!
//! The engine creates one [`RequestCtx`] per downstream request and fills what it learns in lifecycle
//! order: the request id and the presented credential first, the identity after the `keys` plugin, the
//! target after routing, usage and status at the end. A plugin reads only the facts it needs and keeps
//! its private state in [`RequestCtx::extensions`].

use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::time::{Instant, SystemTime};

use crate::money::Micros;
use crate::usage::Usage;

/// The inbound API a request was sent to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    ChatCompletions,
    /// Anthropic's Messages API (`POST /v1/messages`), for clients on Anthropic's SDK.
    Messages,
    Completions,
    Embeddings,
    Models,
}

impl Endpoint {
    /// The path suffix after `/v1`, also the endpoint's label in metrics and logs.
    pub fn path(self) -> &'static str {
        match self {
            Self::ChatCompletions => "/chat/completions",
            Self::Messages => "/messages",
            Self::Completions => "/completions",
            Self::Embeddings => "/embeddings",
            Self::Models => "/models",
        }
    }
}

/// Who is calling: the owner chain of the gateway key, and what the key allows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The key's public id (never its secret).
    pub key_id: String,
    pub org: String,
    pub team: String,
    pub app: String,
    pub user: Option<String>,
    /// Model aliases this key may use; `None` means every alias.
    pub allowed_models: Option<Vec<String>>,
    /// Regions this key's traffic may go to; `None` means any.
    pub allowed_regions: Option<Vec<String>>,
    /// Tags of the key's traffic (e.g. `phi`), for residency rules.
    pub tags: Vec<String>,
}

impl Identity {
    pub fn may_use(&self, model: &str) -> bool {
        self.allowed_models.as_ref().is_none_or(|allowed| allowed.iter().any(|m| m == model))
    }
}

/// Where a request may be served: set by the `residency` plugin, obeyed by routing. A target is
/// allowed when its region is one of `regions` (when set) and it carries every tag of
/// `required_tags`. When no target of the model is allowed, the request is refused, never sent
/// elsewhere.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Residency {
    pub regions: Option<Vec<String>>,
    pub required_tags: Vec<String>,
}

impl Residency {
    pub fn admits(&self, region: Option<&str>, tags: &[String]) -> bool {
        let region_ok = self
            .regions
            .as_ref()
            .is_none_or(|allowed| region.is_some_and(|r| allowed.iter().any(|a| a == r)));
        region_ok && self.required_tags.iter().all(|t| tags.contains(t))
    }

    /// For error messages: `regions eu, eu-west; tags baa`.
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        if let Some(r) = &self.regions {
            parts.push(format!("regions {}", r.join(", ")));
        }
        if !self.required_tags.is_empty() {
            parts.push(format!("target tags {}", self.required_tags.join(", ")));
        }
        parts.join("; ")
    }
}

/// The concrete choice that served (or last tried to serve) the request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetFacts {
    /// The target's name in config, e.g. `openai-eu/gpt-4o-mini`.
    pub name: String,
    pub provider: String,
    pub upstream_model: String,
    pub region: Option<String>,
}

/// Per-request facts, shared by the engine and the plugins.
#[derive(Debug)]
pub struct RequestCtx {
    pub request_id: String,
    pub received_at: SystemTime,
    pub started: Instant,
    pub endpoint: Option<Endpoint>,
    /// The gateway key as presented (`Authorization: Bearer`, `x-api-key` or `api-key`).
    pub credential: Option<String>,
    /// Who is calling; shared with the key cache it came from (not copied per request).
    pub identity: Option<std::sync::Arc<Identity>>,
    /// The model alias the client asked for.
    pub model: Option<String>,
    pub stream: bool,
    pub target: Option<std::sync::Arc<TargetFacts>>,
    /// Upstream attempts made, fallbacks included.
    pub attempts: u32,
    pub usage: Option<Usage>,
    /// What the request cost, from `usage` and the serving target's price (set when it ends).
    pub cost: Option<Micros>,
    /// The error code the client received, if any (`rate_limit_exceeded`, ...).
    pub error_code: Option<String>,
    /// The HTTP status the client received.
    pub status: u16,
    /// The region the client asked for (`X-Gateway-Region`).
    pub region_hint: Option<String>,
    /// Where the request may be served (residency plugin); `None`: anywhere.
    pub residency: Option<Residency>,
    /// Headers plugins add to the response, whatever it is (answers and errors alike).
    pub response_headers: Vec<(&'static str, String)>,
    /// Private per-plugin state, keyed by type.
    pub extensions: Extensions,
}

impl RequestCtx {
    pub fn new(request_id: String) -> Self {
        Self {
            request_id,
            received_at: SystemTime::now(),
            started: Instant::now(),
            endpoint: None,
            credential: None,
            identity: None,
            model: None,
            stream: false,
            target: None,
            attempts: 0,
            usage: None,
            cost: None,
            error_code: None,
            status: 0,
            region_hint: None,
            residency: None,
            response_headers: Vec::new(),
            extensions: Extensions::default(),
        }
    }
}

/// A type map for plugin-private state.
#[derive(Default)]
pub struct Extensions(HashMap<TypeId, Box<dyn Any + Send + Sync>>);

impl Extensions {
    pub fn insert<T: Any + Send + Sync>(&mut self, value: T) {
        self.0.insert(TypeId::of::<T>(), Box::new(value));
    }

    pub fn get<T: Any + Send + Sync>(&self) -> Option<&T> {
        self.0.get(&TypeId::of::<T>()).and_then(|b| b.downcast_ref())
    }

    pub fn get_mut<T: Any + Send + Sync>(&mut self) -> Option<&mut T> {
        self.0.get_mut(&TypeId::of::<T>()).and_then(|b| b.downcast_mut())
    }
}

impl std::fmt::Debug for Extensions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Extensions({} entries)", self.0.len())
    }
}
