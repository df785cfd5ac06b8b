//! Prometheus metrics, served as text on `GET /metrics`.
//!
//! Every request ends in exactly one observation in `logging`; labels are the endpoint, the model
//! alias, the target that served (or `none`) and the status.

use std::time::Duration;

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder,
};

pub struct Metrics {
    registry: Registry,
    pub requests: IntCounterVec,
    pub latency: HistogramVec,
    pub ttfb: HistogramVec,
    pub overhead: Histogram,
    pub tokens: IntCounterVec,
    pub cost: IntCounterVec,
    pub records: IntCounterVec,
    pub attempts: IntCounterVec,
    pub retries: IntCounterVec,
    pub circuit: IntGaugeVec,
}

impl Metrics {
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new("sluice_requests_total", "Requests by endpoint, model, serving target and status"),
            &["endpoint", "model", "target", "status"],
        )?;
        let latency = HistogramVec::new(
            HistogramOpts::new("sluice_request_duration_seconds", "End-to-end request latency")
                .buckets(vec![0.001, 0.005, 0.025, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0]),
            &["endpoint", "model"],
        )?;
        let ttfb = HistogramVec::new(
            HistogramOpts::new(
                "sluice_upstream_ttfb_seconds",
                "Upstream time to first byte (response header)",
            )
            .buckets(vec![0.005, 0.025, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0]),
            &["target"],
        )?;
        let overhead = Histogram::with_opts(
            HistogramOpts::new(
                "sluice_gateway_overhead_seconds",
                "Time spent in Sluice itself: total minus waiting on upstreams and on the client",
            )
            .buckets(vec![0.00005, 0.0001, 0.00025, 0.0005, 0.00075, 0.001, 0.0025, 0.005, 0.01, 0.05]),
        )?;
        let tokens = IntCounterVec::new(
            Opts::new("sluice_tokens_total", "Tokens by model, target and kind (prompt, completion)"),
            &["model", "target", "kind"],
        )?;
        let cost = IntCounterVec::new(
            Opts::new("sluice_cost_microdollars_total", "Cost in micro-dollars (1e-6 USD) by team and model"),
            &["team", "model"],
        )?;
        let records = IntCounterVec::new(
            Opts::new(
                "sluice_records_total",
                "Cost records by outcome: written (PostgreSQL), spooled (to disk, replayed later), \
                 replayed, memory (no PostgreSQL configured), lost (could not even be spooled)",
            ),
            &["outcome"],
        )?;
        let attempts = IntCounterVec::new(
            Opts::new("sluice_upstream_attempts_total", "Upstream attempts by target and outcome"),
            &["target", "outcome"],
        )?;
        let retries = IntCounterVec::new(
            Opts::new("sluice_retries_total", "Attempts beyond the first, by model"),
            &["model"],
        )?;
        let circuit = IntGaugeVec::new(
            Opts::new("sluice_circuit_state", "Circuit state per target: 0 closed, 1 half-open, 2 open"),
            &["target"],
        )?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(latency.clone()))?;
        registry.register(Box::new(ttfb.clone()))?;
        registry.register(Box::new(overhead.clone()))?;
        registry.register(Box::new(tokens.clone()))?;
        registry.register(Box::new(cost.clone()))?;
        registry.register(Box::new(records.clone()))?;
        registry.register(Box::new(attempts.clone()))?;
        registry.register(Box::new(retries.clone()))?;
        registry.register(Box::new(circuit.clone()))?;
        Ok(Self {
            registry,
            requests,
            latency,
            ttfb,
            overhead,
            tokens,
            cost,
            records,
            attempts,
            retries,
            circuit,
        })
    }

    pub fn observe_ttfb(&self, target: &str, d: Duration) {
        self.ttfb.with_label_values(&[target]).observe(d.as_secs_f64());
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> Vec<u8> {
        let mut out = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            log::error!("cannot encode metrics: {e}");
        }
        out
    }
}
