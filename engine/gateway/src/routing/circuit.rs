//! A circuit breaker per target.
//!
//! closed ──N consecutive failures──► open ──cool-down──► half-open ──probe ok──► closed
//!                                     ▲                      │
//!                                     └──────probe failed────┘
//!
//! In half-open exactly one request (the probe) is let through; the others skip the target. A probe
//! whose outcome never arrives (its client went away) is replaced after another cool-down.

use std::sync::Mutex;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CircuitState {
    Closed,
    Open,
    HalfOpen,
}

impl CircuitState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Closed => "closed",
            Self::Open => "open",
            Self::HalfOpen => "half_open",
        }
    }

    /// The value of the `sluice_circuit_state` gauge.
    pub fn gauge(self) -> i64 {
        match self {
            Self::Closed => 0,
            Self::HalfOpen => 1,
            Self::Open => 2,
        }
    }
}

#[derive(Debug)]
enum State {
    Closed { failures: u32 },
    Open { until: Instant },
    HalfOpen { probe_since: Instant },
}

#[derive(Debug)]
pub struct Circuit {
    state: Mutex<State>,
    threshold: u32,
    cooldown: Duration,
}

impl Circuit {
    pub fn new(threshold: u32, cooldown: Duration) -> Self {
        Self { state: Mutex::new(State::Closed { failures: 0 }), threshold: threshold.max(1), cooldown }
    }

    /// May a request go to this target now? In half-open, only the first caller gets `true`.
    pub fn admit(&self) -> bool {
        let now = Instant::now();
        let Ok(mut state) = self.state.lock() else { return true };
        match *state {
            State::Closed { .. } => true,
            State::Open { until } if now < until => false,
            State::Open { .. } => {
                *state = State::HalfOpen { probe_since: now };
                true
            }
            State::HalfOpen { probe_since } if now.duration_since(probe_since) < self.cooldown => false,
            State::HalfOpen { .. } => {
                *state = State::HalfOpen { probe_since: now };
                true
            }
        }
    }

    pub fn record_success(&self) {
        if let Ok(mut state) = self.state.lock() {
            *state = State::Closed { failures: 0 };
        }
    }

    pub fn record_failure(&self) {
        let now = Instant::now();
        if let Ok(mut state) = self.state.lock() {
            *state = match *state {
                State::Closed { failures } if failures + 1 < self.threshold => {
                    State::Closed { failures: failures + 1 }
                }
                _ => State::Open { until: now + self.cooldown },
            };
        }
    }

    pub fn state(&self) -> CircuitState {
        match self.state.lock().as_deref() {
            Ok(State::Closed { .. }) | Err(_) => CircuitState::Closed,
            Ok(State::Open { until }) if Instant::now() < *until => CircuitState::Open,
            Ok(State::Open { .. }) | Ok(State::HalfOpen { .. }) => CircuitState::HalfOpen,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_threshold_and_lets_one_probe_through() {
        let c = Circuit::new(3, Duration::from_millis(30));
        c.record_failure();
        c.record_failure();
        assert!(c.admit());
        assert_eq!(c.state(), CircuitState::Closed);
        c.record_failure();
        assert_eq!(c.state(), CircuitState::Open);
        assert!(!c.admit());
        std::thread::sleep(Duration::from_millis(40));
        assert!(c.admit(), "the probe");
        assert!(!c.admit(), "only one probe in half-open");
        c.record_failure();
        assert_eq!(c.state(), CircuitState::Open);
        std::thread::sleep(Duration::from_millis(40));
        assert!(c.admit());
        c.record_success();
        assert_eq!(c.state(), CircuitState::Closed);
        assert!(c.admit() && c.admit());
    }

    #[test]
    fn a_success_resets_the_failure_count() {
        let c = Circuit::new(2, Duration::from_secs(30));
        c.record_failure();
        c.record_success();
        c.record_failure();
        assert_eq!(c.state(), CircuitState::Closed);
    }
}
