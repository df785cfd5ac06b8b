//! # sluice-tests: the harness of Sluice's integration tests
//!
//! - [`gateway::TestGateway`] starts the real gateway binary on an ephemeral port with a config
//!   written for the test, and stops it when dropped.
//! - [`openai::MockOpenAi`] is an upstream that speaks OpenAI's wire format (JSON and SSE) on its
//!   own ephemeral port, counts its hits and records what it received. Its behaviour is chosen by
//!   the upstream model name (`fail-500`, `rate-429`, `slow`, `cut`, ...), so one config can route
//!   a model alias through targets that fail in known ways.
//!
//! Every test owns its gateway and its mocks, so tests run in parallel.

#![allow(
    clippy::expect_used,
    clippy::panic,
    reason = "test harness: a failed set-up must stop the test loudly"
)]

pub mod anthropic;
pub mod gateway;
pub mod gemini;
pub mod openai;
pub mod postgres;
pub mod redis_cluster;
pub mod redis_server;
pub mod server;
pub mod tls;
pub mod vault;
pub mod webhook;

pub use gateway::{free_port, unique};
