//! Notices to people (budget warnings, later key-expiry reminders), posted to a webhook as
//! Slack-compatible JSON: `{"text": "...", "event": "...", "details": {...}}`.
//!
//! `notify` never blocks: notices go through a bounded queue to a sender thread (its own runtime),
//! which posts each one with Pingora's connector (TLS verified against the system roots), a timeout
//! and a few retries. A notice that cannot be delivered is logged with its text, so nobody's
//! warning vanishes silently.

use std::sync::Mutex;
use std::time::Duration;

use bytes::Bytes;
use serde_json::json;
use sluice_core::budgets::{Notice, Notifier};
use sluice_core::secret::Secret;
use tokio::sync::mpsc;

use crate::routing::endpoints::EndpointInfo;

pub struct Webhook {
    target: EndpointInfo,
    tx: mpsc::Sender<Notice>,
    rx: Mutex<Option<mpsc::Receiver<Notice>>>,
}

impl Webhook {
    /// `target`: an `https://` / `http://` URL, or a reference (`env:NAME`, `file:PATH`) to one,
    /// since a Slack webhook URL is a secret.
    pub fn new(target: &str) -> Result<Self, String> {
        let url = if target.starts_with("env:") || target.starts_with("file:") {
            Secret::resolve(target)?.expose().to_owned()
        } else {
            target.to_owned()
        };
        // Parsed here so that the URL (a secret) never appears in an error message.
        let target =
            EndpointInfo::parse(&url).map_err(|_| "an http:// or https:// URL is needed".to_owned())?;
        let (tx, rx) = mpsc::channel(1024);
        Ok(Self { target, tx, rx: Mutex::new(Some(rx)) })
    }

    /// Starts the sender thread (not done by `check-config`).
    pub fn start(&self) -> Result<(), String> {
        let Some(mut rx) = self.rx.lock().unwrap_or_else(|p| p.into_inner()).take() else {
            return Ok(());
        };
        let target = self.target.clone();
        std::thread::Builder::new()
            .name("sluice-webhook".into())
            .spawn(move || {
                let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() else {
                    log::error!("the webhook sender cannot start a runtime; notices are only logged");
                    return;
                };
                rt.block_on(async move {
                    while let Some(notice) = rx.recv().await {
                        deliver(&target, &notice).await;
                    }
                });
            })
            .map_err(|e| format!("cannot start the webhook sender: {e}"))?;
        Ok(())
    }
}

async fn deliver(target: &EndpointInfo, notice: &Notice) {
    let body = Bytes::from(
        json!({"text": notice.text, "event": notice.event, "details": notice.details}).to_string(),
    );
    let mut last = String::new();
    for attempt in 0..3u32 {
        if attempt > 0 {
            tokio::time::sleep(Duration::from_millis(500 * u64::from(attempt))).await;
        }
        match post(target, body.clone()).await {
            Ok(status) if (200..300).contains(&status) => return,
            Ok(status) => last = format!("HTTP {status}"),
            Err(e) => last = e,
        }
    }
    log::error!("webhook: cannot deliver the {} notice ({last}): {}", notice.event, notice.text);
}

/// One POST; the answer's status.
async fn post(target: &EndpointInfo, body: Bytes) -> Result<u16, String> {
    crate::http_client::request("POST", target, &[], Some(body), Duration::from_secs(5))
        .await
        .map(|(status, _)| status)
}

impl Notifier for Webhook {
    fn notify(&self, notice: Notice) {
        log::info!("notice {}: {}", notice.event, notice.text);
        if let Err(e) = self.tx.try_send(notice) {
            let notice = match e {
                mpsc::error::TrySendError::Full(n) | mpsc::error::TrySendError::Closed(n) => n,
            };
            log::error!("webhook: queue full, notice not sent: {}", notice.text);
        }
    }
}
