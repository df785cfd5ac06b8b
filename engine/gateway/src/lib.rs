//! # sluice: the gateway
//!
//! Start at [`proxy`]: it is the request lifecycle, top to bottom. [`config`] turns the TOML file
//! into the runtime types; [`routing`] picks targets (fallback chains, circuit breakers, endpoint
//! pools); [`providers`] knows how each vendor is reached; [`sse`] reads streams on the forwarding
//! path; [`server`] wires Pingora; [`health`] and [`metrics`] are what operators watch.

pub mod admin;
pub mod admin_cli;
pub mod alloc;
pub mod audit;
pub mod audit_export;
pub mod cli;
pub mod config;
pub mod db;
pub mod headers;
pub mod health;
pub mod http_client;
pub mod id;
pub mod keystore;
pub mod ledger;
pub mod logging;
pub mod metrics;
pub mod notify;
pub mod pg_tls;
pub mod providers;
pub mod proxy;
pub mod reload;
pub mod routing;
pub mod server;
pub mod sse;
pub mod stores;
pub mod tls;
pub mod translate;
pub mod vault;
