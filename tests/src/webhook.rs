//! A webhook receiver: records every JSON body POSTed to it and answers 200.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::server::{MockServer, Recorded, full};

#[derive(Default)]
struct Received(Mutex<Vec<Value>>);

pub struct WebhookReceiver {
    server: MockServer,
    received: Arc<Received>,
}

impl WebhookReceiver {
    pub async fn start() -> Self {
        let received = Arc::new(Received::default());
        let server = MockServer::start(received.clone(), |state: Arc<Received>, req| async move {
            let r = Recorded::read(req).await;
            state.0.lock().expect("webhook state").push(r.json());
            full(200, "text/plain", "ok")
        })
        .await;
        Self { server, received }
    }

    pub fn url(&self) -> String {
        format!("http://{}/hooks/sluice", self.server.addr)
    }

    pub fn received(&self) -> Vec<Value> {
        self.received.0.lock().expect("webhook state").clone()
    }

    /// Waits (up to `limit`) until `n` notices arrived; returns what arrived.
    pub async fn wait_for(&self, n: usize, limit: Duration) -> Vec<Value> {
        let deadline = Instant::now() + limit;
        loop {
            let got = self.received();
            if got.len() >= n || Instant::now() > deadline {
                return got;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}
