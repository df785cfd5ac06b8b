//! The plugin contract: the phases a gateway feature may act in.
//!
//! Plugins run in one fixed order, defined in code by `sluice_plugins::chain` (order is policy). Every
//! phase has a no-op default, so a plugin implements only what it needs.

use async_trait::async_trait;
use bytes::Bytes;

use crate::ctx::RequestCtx;
use crate::error::GatewayError;
use crate::wire::{Body, Request};

/// What a plugin decided in [`Plugin::on_request`].
#[derive(Debug)]
pub enum Flow {
    /// Go on with the next plugin, then upstream.
    Continue,
    /// Answer the client now with this reply; no upstream call is made (e.g. a cache hit).
    Respond(Reply),
}

/// A complete answer produced by a plugin instead of an upstream.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
}

/// The async phases a plugin acts in ([`Plugin::phases`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Phases {
    pub headers: bool,
    pub request: bool,
    pub complete: bool,
}

impl Phases {
    pub const ALL: Phases = Phases { headers: true, request: true, complete: true };
}

#[async_trait]
pub trait Plugin: Send + Sync {
    /// The plugin's name: also its config table, metric label, log field and error-code prefix.
    fn name(&self) -> &'static str;

    /// The async phases this plugin implements; the engine calls [`Plugin::on_headers`],
    /// [`Plugin::on_request`] and [`Plugin::on_complete`] only on the plugins that declare them
    /// (each call allocates its future). The default declares all three.
    fn phases(&self) -> Phases {
        Phases::ALL
    }

    /// Runs once per request on the headers alone, before the body is read: who is calling, and may
    /// they send a body at all. `Err` rejects the request without reading its body.
    async fn on_headers(&self, _ctx: &mut RequestCtx) -> Result<(), GatewayError> {
        Ok(())
    }

    /// Runs once per request after the body was parsed, before routing. `Err` rejects the request
    /// with that error; `Flow::Respond` answers it without going upstream.
    async fn on_request(&self, _ctx: &mut RequestCtx, _request: &mut Request) -> Result<Flow, GatewayError> {
        Ok(Flow::Continue)
    }

    /// Runs before each upstream attempt, on the OpenAI-shaped body about to be sent (e.g. redaction).
    /// Reading it is free; changing it (`DerefMut`) makes the engine serialize it again instead of
    /// forwarding the client's bytes.
    fn on_upstream_request(&self, _ctx: &mut RequestCtx, _body: &mut Body) -> Result<(), GatewayError> {
        Ok(())
    }

    /// Runs for each complete response event (one SSE event, or the whole non-streamed body) as it
    /// goes to the client. Synchronous and O(event): it sits on the streaming path.
    fn on_response_event(&self, _ctx: &mut RequestCtx, _event: &[u8]) {}

    /// Whether this plugin checks answer text ([`Plugin::on_answer_text`]). When none does, answers
    /// pass untouched and streams unbuffered.
    fn checks_answers(&self) -> bool {
        false
    }

    /// Answer text on its way to the client (a choice's `content` or `text`, tool-call
    /// `arguments`). `text` holds what has not gone out yet; the plugin may rewrite it, and returns
    /// how many of its bytes may go out now (a char boundary) — on a stream it can hold back a tail
    /// in which a value may still be arriving. `done`: no more text comes for this choice (a whole
    /// answer, or the end of a stream): all of it goes out. `Err`: the text could not be checked,
    /// so the engine withholds it (fail closed).
    fn on_answer_text(
        &self,
        _ctx: &mut RequestCtx,
        text: &mut String,
        _done: bool,
    ) -> Result<usize, GatewayError> {
        Ok(text.len())
    }

    /// Runs once when the request is over, whatever its outcome (records, reconciliation).
    async fn on_complete(&self, _ctx: &RequestCtx) {}
}
