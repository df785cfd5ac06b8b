//! Providers: the vendors behind targets, and how a request reaches each.
//!
//! `openai` and `openai_compatible` speak OpenAI's wire format over HTTP (see [`openai`]); `mock` is
//! built in and answers in-process (see [`mock`]), so a first run needs no provider key. Either way
//! an attempt yields an [`UpstreamReply`] that the proxy forwards the same way.

pub mod mock;
pub mod openai;

use std::time::Duration;

use bytes::Bytes;
use pingora::protocols::http::client::HttpSession;
use sluice_core::secret::LiveSecret;

use crate::config::file::ProviderKind;
use crate::routing::endpoints::EndpointPool;

pub struct Provider {
    pub name: String,
    pub kind: ProviderKind,
    pub region: Option<String>,
    pub transport: Transport,
}

pub enum Transport {
    Http(HttpUpstream),
    Mock(mock::Mock),
}

/// How an OpenAI-shaped provider spells URLs and authentication.
#[derive(Debug, Clone)]
pub enum Dialect {
    /// `{base}/chat/completions`, `Authorization: Bearer`.
    OpenAi,
    /// `{base}/openai/deployments/{deployment}/chat/completions?api-version=…`, `api-key`.
    Azure { api_version: String, deployments: std::collections::BTreeMap<String, String> },
    /// Anthropic's Messages API, `{base}/messages`, `x-api-key` and `anthropic-version`; requests
    /// and answers are translated (`crate::translate`).
    Anthropic { version: String, default_max_tokens: u64 },
    /// Google's Gemini API, `{base}/models/{model}:generateContent` (`:streamGenerateContent?alt=sse`
    /// for streams), `x-goog-api-key`; translated like Anthropic.
    Gemini,
}

impl Dialect {
    /// The header that carries the provider's key, and what precedes the key in it.
    pub fn key_header(&self) -> (&'static str, &'static str) {
        match self {
            Self::OpenAi => ("authorization", "Bearer "),
            Self::Azure { .. } => ("api-key", ""),
            Self::Anthropic { .. } => ("x-api-key", ""),
            Self::Gemini => ("x-goog-api-key", ""),
        }
    }

    /// Requests and answers go through `crate::translate` (the provider does not speak OpenAI).
    pub fn translated(&self) -> bool {
        matches!(self, Self::Anthropic { .. } | Self::Gemini)
    }
}

/// An OpenAI-shaped HTTP provider: its endpoint pool, auth and extra headers.
pub struct HttpUpstream {
    pub dialect: Dialect,
    pub pool: EndpointPool,
    /// Read per request: a key from Vault is refreshed while the gateway runs.
    pub api_key: Option<LiveSecret>,
    pub headers: Vec<(String, String)>,
    /// Ask for `stream_options.include_usage` on every stream.
    pub stream_usage: bool,
    /// Trusted roots for this provider's certificates, when not the system's.
    pub ca: Option<crate::routing::endpoints::CaRoots>,
}

impl Provider {
    pub fn mock(name: &str, pacing: Duration) -> Self {
        Self {
            name: name.to_owned(),
            kind: ProviderKind::Mock,
            region: None,
            transport: Transport::Mock(mock::Mock { pacing }),
        }
    }

    pub fn kind_label(&self) -> &'static str {
        match self.kind {
            ProviderKind::Openai => "openai",
            ProviderKind::OpenaiCompatible => "openai_compatible",
            ProviderKind::AzureOpenai => "azure_openai",
            ProviderKind::Anthropic => "anthropic",
            ProviderKind::Gemini => "gemini",
            ProviderKind::Mock => "mock",
        }
    }
}

/// A provider's answer whose status is final for this request (2xx, or a 4xx that is the client's
/// fault). Its body is read chunk by chunk.
pub struct UpstreamReply {
    pub status: u16,
    pub content_type: Option<String>,
    pub body: ReplyBody,
    /// Set when the provider's stream must be translated to OpenAI chunks on the way (boxed: the
    /// reply is moved along the attempt's path, and most replies need none).
    pub translate: Option<Box<crate::translate::StreamTranslation>>,
    /// The `usage` in the body is our estimate (the provider reported none).
    pub usage_estimated: bool,
}

pub enum ReplyBody {
    /// A live HTTP response; the session goes back to the pool when the body is fully read.
    Http {
        session: Box<HttpSession>,
        peer: Box<pingora::prelude::HttpPeer>,
        idle: Duration,
        /// The pool the session goes back to.
        connector: std::sync::Arc<pingora::connectors::http::Connector>,
    },
    /// Chunks produced in-process, released with a delay between them.
    Chunks { chunks: std::collections::VecDeque<Bytes>, pacing: Duration, first: bool },
}
