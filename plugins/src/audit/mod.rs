//! Plugin `audit`: what the audit trail keeps of a request beyond its cost record.
//!
//! Every API request's audit row — who, what, when, PII findings by kind, status, tokens, cost, and
//! the SHA-256 of the body the client sent — is derived from its cost record and written by the
//! ledger's writer in the same transaction, so it shares the records' queue, spool and replay, and
//! is hash-chained per day (see the gateway's `audit` module). This plugin, last in the chain, adds
//! the request's content when `[audit] content = true`: the request as it goes to the provider,
//! after the `pii` plugin's redaction (a blocked request never gets this far, so its content is
//! never kept), cut at `content_max_bytes`.

use async_trait::async_trait;
use serde::Deserialize;
use sluice_core::ctx::Endpoint;
use sluice_core::wire::Request;
use sluice_core::{Flow, GatewayError, Phases, Plugin, RequestCtx};

pub const NAME: &str = "audit";

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditConfig {
    /// Keep the request as forwarded (after PII redaction) in its audit row. Off by default: the
    /// row then holds the body's SHA-256 only.
    #[serde(default)]
    pub content: bool,
    /// Content above this many bytes is cut (and marked so).
    #[serde(default = "default_content_max")]
    pub content_max_bytes: usize,
    /// Where each finished day is sealed (JSONL + seal file), for object-lock storage; off when
    /// absent (the gateway's sealer).
    pub export_dir: Option<String>,
    /// How long after UTC midnight a day is sealed (late records land first).
    #[serde(default = "default_export_delay")]
    pub export_delay: String,
}

impl Default for AuditConfig {
    fn default() -> Self {
        Self {
            content: false,
            content_max_bytes: default_content_max(),
            export_dir: None,
            export_delay: default_export_delay(),
        }
    }
}

fn default_content_max() -> usize {
    256 * 1024
}

fn default_export_delay() -> String {
    "1h".into()
}

/// The request as forwarded, for its audit row (in the request's extensions).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditContent(pub String);

pub struct Audit {
    /// `Some(max bytes)` when content is kept.
    content: Option<usize>,
}

impl Audit {
    pub fn new(config: &AuditConfig) -> Self {
        Self { content: config.content.then_some(config.content_max_bytes) }
    }
}

/// The body as JSON, cut at `max` bytes on a character boundary.
pub fn content(body: &serde_json::Map<String, serde_json::Value>, max: usize) -> String {
    let mut text = serde_json::to_string(body).unwrap_or_default();
    if text.len() > max {
        let total = text.len();
        let mut cut = max;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
        text.push_str(&format!("…[cut: {total} bytes in all]"));
    }
    text
}

#[async_trait]
impl Plugin for Audit {
    fn name(&self) -> &'static str {
        NAME
    }

    fn phases(&self) -> Phases {
        Phases { headers: false, request: true, complete: false }
    }

    async fn on_request(&self, ctx: &mut RequestCtx, request: &mut Request) -> Result<Flow, GatewayError> {
        if let Some(max) = self.content
            && request.endpoint != Endpoint::Models
        {
            ctx.extensions.insert(AuditContent(content(&request.body, max)));
        }
        Ok(Flow::Continue)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_is_cut_on_a_character_boundary() {
        let mut body = serde_json::Map::new();
        body.insert("t".into(), "ééééé".into());
        assert_eq!(content(&body, 1 << 20), r#"{"t":"ééééé"}"#);
        let cut = content(&body, 8);
        assert!(cut.starts_with(r#"{"t":"é"#) && cut.ends_with("[cut: 18 bytes in all]"), "{cut}");
    }

    #[test]
    fn content_is_kept_only_when_configured() {
        let mut request = Request::listing();
        request.endpoint = Endpoint::ChatCompletions;
        request.body.insert("model".into(), "m".into());
        let mut ctx = crate::test_support::ctx("t");
        crate::test_support::block_on(Audit::new(&AuditConfig::default()).on_request(&mut ctx, &mut request))
            .unwrap();
        assert!(ctx.extensions.get::<AuditContent>().is_none());
        let on = Audit::new(&AuditConfig { content: true, ..AuditConfig::default() });
        crate::test_support::block_on(on.on_request(&mut ctx, &mut request)).unwrap();
        assert_eq!(ctx.extensions.get::<AuditContent>().map(|c| c.0.as_str()), Some(r#"{"model":"m"}"#));
    }
}
