//! `GET /health`: what a platform engineer's probe and dashboard need to know.
//!
//! `ok` when every target's circuit is closed and every endpoint passes its probe; `degraded` when
//! some target is impaired but every model still has one usable; `down` (HTTP 503) when some model
//! has no usable target left.

use serde_json::{Value, json};

use crate::providers::Transport;
use crate::routing::circuit::CircuitState;
use crate::routing::{Router, Target};

pub fn report(router: &Router) -> (u16, Value) {
    let mut impaired = false;
    let targets: Vec<Value> = router
        .targets()
        .into_iter()
        .map(|t| {
            let (usable, endpoints) = target_report(t);
            impaired |= !usable || t.circuit.state() != CircuitState::Closed;
            endpoints
        })
        .collect();
    let any_model_down = router
        .routes
        .values()
        .any(|route| !route.targets().any(|t| target_report(t).0 && t.circuit.state() != CircuitState::Open));
    let status = if any_model_down {
        "down"
    } else if impaired {
        "degraded"
    } else {
        "ok"
    };
    let code = if any_model_down { 503 } else { 200 };
    (code, json!({"status": status, "targets": targets}))
}

/// Whether the target has a usable endpoint, and its JSON.
fn target_report(t: &Target) -> (bool, Value) {
    let mut v = json!({
        "name": t.name,
        "provider": t.provider.name,
        "kind": t.provider.kind_label(),
        "region": t.region,
        "circuit": t.circuit.state().as_str(),
        "cooling_down_seconds": t.cooling().map(|d| d.as_secs_f64().ceil() as u64),
    });
    let usable = match &t.provider.transport {
        Transport::Mock(_) => true,
        Transport::Http(up) => {
            let endpoints: Vec<Value> = up
                .pool
                .report()
                .into_iter()
                .map(|(addr, healthy, probe)| {
                    json!({
                        "address": addr,
                        "healthy": healthy,
                        "last_probe": probe.map(|p| json!({
                            "ok": p.ok,
                            "latency_ms": (p.latency.as_secs_f64() * 1000.0 * 10.0).round() / 10.0,
                            "detail": p.detail,
                            "at_unix": p.at.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs()),
                        })),
                    })
                })
                .collect();
            let usable = endpoints.iter().any(|e| e["healthy"] == true);
            v["endpoints"] = Value::Array(endpoints);
            usable
        }
    };
    (usable, v)
}
