//! # sluice-core: the contract between the engine and its plugins
//!
//! Sluice is an OpenAI-compatible gateway. The engine (crate `sluice`) owns the network: it reads a
//! request once, parses it once into the typed [`wire`] model, and runs the plugin chain (crate
//! `sluice-plugins`) over it. This crate is everything the two sides agree on, and nothing else:
//!
//! - [`plugin::Plugin`]: the phases a feature may act in, and [`plugin::Flow`], what it decides.
//! - [`ctx::RequestCtx`]: the typed facts of one request that plugins share (identity, target, usage,
//!   timings), plus private per-plugin state in its extensions.
//! - [`wire`]: the OpenAI request shapes, parsed with simd-json, unknown fields kept verbatim.
//! - [`json`]: a parsed document read in place, and one reading API for it and `serde_json`.
//! - [`error::GatewayError`]: every failure, with its HTTP status, OpenAI `type`/`code` and the
//!   metric label; rendered in exactly one place by the engine.
//! - [`usage::Usage`]: token counts, estimated or reported.
//! - [`money`]: integer micro-dollars, prices, and the price table; [`record::CostRecord`]: the
//!   ledger's line per request.
//!
//! There are no Pingora types here, so a plugin can be read, tested and fuzzed without a server.

pub mod budgets;
pub mod calendar;
pub mod ctx;
pub mod duration;
pub mod error;
pub mod json;
pub mod keys;
pub mod limits;
pub mod money;
pub mod plugin;
pub mod record;
pub mod secret;
pub mod usage;
pub mod wire;

pub use ctx::{Endpoint, Identity, RequestCtx, Residency};
pub use error::{ErrorKind, GatewayError};
pub use plugin::{Flow, Phases, Plugin, Reply};
pub use usage::Usage;
