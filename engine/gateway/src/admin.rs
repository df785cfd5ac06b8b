//! The admin API: its own listener, every call authenticated by the admin token.
//!
//! `GET /admin/spend` answers cost and tokens grouped by team, app, user, model, org or key over a
//! UTC day, ISO week or month (see [`crate::ledger::spend`]), from PostgreSQL when the ledger lives
//! there, else from the records kept in memory. Errors are OpenAI-shaped, like the gateway's own.

use std::sync::Arc;

use crate::ledger::Ledger;
use crate::ledger::reader::Reader;
use crate::ledger::spend::SpendQuery;
use async_trait::async_trait;
use http::Response;
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;
use sha2::{Digest, Sha256};
use sluice_core::secret::Secret;
use sluice_core::{ErrorKind, GatewayError};

pub struct AdminApi {
    /// SHA-256 of the admin token: compared in constant time, never kept in clear.
    token_hash: [u8; 32],
    ledger: Arc<Ledger>,
    reader: Option<Arc<Reader>>,
}

impl AdminApi {
    pub fn new(token: &Secret, ledger: Arc<Ledger>, reader: Option<Arc<Reader>>) -> Self {
        Self { token_hash: Sha256::digest(token.expose().as_bytes()).into(), ledger, reader }
    }

    fn authorized(&self, session: &ServerSession) -> bool {
        let presented = session
            .req_header()
            .headers
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim);
        let Some(presented) = presented else { return false };
        let hash: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        hash.iter().zip(self.token_hash.iter()).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
    }

    async fn spend(&self, query: &str) -> Result<serde_json::Value, GatewayError> {
        let today = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| (d.as_secs() / 86_400) as i64);
        let q = SpendQuery::parse(query, today).map_err(GatewayError::invalid_request)?;
        if let Some(rows) = self.ledger.with_memory(|records| q.aggregate(records.iter())) {
            return Ok(q.render(&rows, 0));
        }
        let pending = self.ledger.health().map_or(0, |(_, pending)| pending);
        let Some(reader) = &self.reader else {
            return Err(GatewayError::internal("the ledger has no reader"));
        };
        let rows = reader.spend(&q).await.map_err(|e| {
            GatewayError::new(ErrorKind::Unavailable, format!("The ledger is unavailable: {e}"))
        })?;
        Ok(q.render(&rows, pending))
    }
}

#[async_trait]
impl ServeHttp for AdminApi {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let method = session.req_header().method.as_str().to_owned();
        let path = session.req_header().uri.path().to_owned();
        let query = session.req_header().uri.query().unwrap_or("").to_owned();
        let result = if !self.authorized(session) {
            Err(GatewayError::new(
                ErrorKind::Authentication,
                "The admin API needs the admin token: Authorization: Bearer ADMIN_TOKEN.",
            )
            .with_code("invalid_admin_token"))
        } else {
            match (method.as_str(), path.as_str()) {
                ("GET", "/admin/spend") => self.spend(&query).await,
                (_, "/admin/spend") => Err(GatewayError::new(
                    ErrorKind::MethodNotAllowed,
                    format!("Method {method} is not allowed on {path}; use GET."),
                )),
                _ => Err(GatewayError::new(ErrorKind::NotFound, format!("Invalid URL ({method} {path})"))),
            }
        };
        let (status, body) = match result {
            Ok(v) => (200, v.to_string().into_bytes()),
            Err(e) => (e.status(), e.to_json()),
        };
        Response::builder()
            .status(status)
            .header("content-type", "application/json")
            .header("content-length", body.len())
            .body(body)
            .unwrap_or_else(|_| Response::new(Vec::new()))
    }
}
