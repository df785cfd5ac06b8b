//! The admin API: its own listener, every call authenticated by the admin token.
//!
//! `GET /admin/spend` answers cost and tokens grouped by team, app, user, model, org or key over a
//! UTC day, ISO week or month (see [`crate::ledger::spend`]), from PostgreSQL when the ledger lives
//! there, else from the records kept in memory. Errors are OpenAI-shaped, like the gateway's own.

use std::sync::Arc;

use serde_json::Value;

use crate::db::Db;
use crate::keystore::{Directory, repo};
use crate::ledger::Ledger;
use crate::ledger::spend::SpendQuery;
use async_trait::async_trait;
use http::Response;
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;
use sha2::{Digest, Sha256};
use sluice_core::secret::LiveSecret;
use sluice_core::{ErrorKind, GatewayError};

pub struct AdminApi {
    /// The admin token (refreshed from Vault when it comes from there); presented tokens are
    /// compared by SHA-256 in constant time.
    token: LiveSecret,
    ledger: Arc<Ledger>,
    reader: Option<Arc<Db>>,
    directory: Arc<dyn Directory>,
    reload: Arc<crate::reload::Reload>,
}

impl AdminApi {
    pub fn new(
        token: &LiveSecret,
        ledger: Arc<Ledger>,
        reader: Option<Arc<Db>>,
        directory: Arc<dyn Directory>,
        reload: Arc<crate::reload::Reload>,
    ) -> Self {
        Self { token: token.clone(), ledger, reader, directory, reload }
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
        let expected: [u8; 32] = Sha256::digest(self.token.get().as_bytes()).into();
        hash.iter().zip(expected.iter()).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
    }

    async fn route(
        &self,
        session: &mut ServerSession,
        method: &str,
        path: &str,
        query: &str,
    ) -> Result<(u16, Value), GatewayError> {
        let segments: Vec<&str> = path.trim_end_matches('/').split('/').skip(2).collect();
        let param = |name: &str| query_param(query, name);
        match (method, segments.as_slice()) {
            ("GET", ["spend"]) => Ok((200, self.spend(query).await?)),
            ("POST", ["reload"]) => {
                let v = self.reload.run().await;
                self.audit("reload", &v).await;
                Ok((200, v))
            }
            ("POST", [kind @ ("orgs" | "teams" | "apps")]) => {
                let body: Value = read_json(session).await?;
                let text = |field: &str| body.get(field).and_then(Value::as_str).map(str::to_owned);
                let id = text("id").ok_or_else(|| missing("id"))?;
                let name = text("name").unwrap_or_else(|| id.clone());
                let parent = match *kind {
                    "orgs" => None,
                    "teams" => Some(text("org").ok_or_else(|| missing("org"))?),
                    _ => Some(text("team").ok_or_else(|| missing("team"))?),
                };
                let v = self.directory.create(kind, &id, &name, parent.as_deref()).await?;
                self.audit("create", &v).await;
                Ok((201, v))
            }
            ("GET", [kind @ ("orgs" | "teams" | "apps")]) => {
                let parent = match *kind {
                    "teams" => param("org"),
                    "apps" => param("team"),
                    _ => None,
                };
                Ok((200, self.directory.list(kind, parent.as_deref()).await?))
            }
            ("POST", ["keys"]) => {
                let new: repo::NewKey = serde_json::from_value(read_json(session).await?)
                    .map_err(|e| GatewayError::invalid_request(format!("Invalid key request: {e}")))?;
                let v = self.directory.issue_key(&new).await?;
                self.audit("issue", &v).await;
                Ok((201, v))
            }
            ("GET", ["keys"]) => {
                let (app, team) = (param("app"), param("team"));
                Ok((200, self.directory.list_keys(app.as_deref(), team.as_deref()).await?))
            }
            ("GET", ["keys", id]) => Ok((200, self.directory.get_key(id).await?)),
            ("POST", ["keys", id, "revoke"]) => {
                let v = self.directory.revoke_key(id).await?;
                self.audit("revoke", &v).await;
                Ok((200, v))
            }
            ("POST", ["keys", id, "rotate"]) => {
                let body: Value = read_json(session).await?;
                let grace = body.get("grace").and_then(Value::as_str).map(str::to_owned);
                let v = self.directory.rotate_key(id, grace.as_deref()).await?;
                self.audit("rotate", &v).await;
                Ok((201, v))
            }
            (_, ["spend" | "orgs" | "teams" | "apps" | "keys" | "reload", ..]) => Err(GatewayError::new(
                ErrorKind::MethodNotAllowed,
                format!("Method {method} is not allowed on {path}."),
            )),
            _ => Err(GatewayError::new(ErrorKind::NotFound, format!("Invalid URL ({method} {path})"))),
        }
    }

    /// Admin actions go to the log and to the audit trail (never with a key's secret). The action
    /// itself is already committed: a failure to audit it is logged loudly, not undone.
    async fn audit(&self, action: &str, v: &Value) {
        let object = v.get("object").and_then(Value::as_str).unwrap_or("?");
        let id = v.get("id").and_then(Value::as_str).unwrap_or("?");
        log::info!("admin: {action} {object} {id}");
        let Some(db) = &self.reader else { return };
        let mut detail = v.clone();
        if let Some(map) = detail.as_object_mut() {
            map.remove("key");
        }
        let entry = crate::audit::Entry::of_admin(&format!("admin.{object}.{action}"), &detail);
        let done = db
            .with(std::time::Duration::from_secs(5), async |c| {
                // Prepared outside the transaction: parsing locks the tables until the transaction
                // ends, which must not come before the partition lock that `append` takes first.
                let statements = crate::audit::Statements::prepare(&*c).await?;
                let tx = c.transaction().await?;
                crate::audit::append(&tx, &statements, vec![entry], false).await?;
                tx.commit().await
            })
            .await;
        if let Err(e) = done {
            log::error!("admin: {action} {object} {id} was done but could not be audited: {e}");
        }
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
            self.route(session, &method, &path, &query).await
        };
        let (status, body) = match result {
            Ok((status, v)) => (status, v.to_string().into_bytes()),
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

fn missing(field: &str) -> GatewayError {
    GatewayError::invalid_request(format!("Missing required parameter: '{field}'."))
        .with_param(field)
        .with_code("missing_required_parameter")
}

/// Reads a JSON object body (at most 1 MiB); an empty body is `{}`.
async fn read_json(session: &mut ServerSession) -> Result<Value, GatewayError> {
    let mut body = Vec::new();
    loop {
        match session.read_request_body().await {
            Ok(Some(chunk)) => {
                body.extend_from_slice(&chunk);
                if body.len() > 1 << 20 {
                    return Err(GatewayError::new(ErrorKind::PayloadTooLarge, "The body is above 1 MiB."));
                }
            }
            Ok(None) => break,
            Err(e) => return Err(GatewayError::invalid_request(format!("Cannot read the body: {e}"))),
        }
    }
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Value::Object(Default::default()));
    }
    match serde_json::from_slice::<Value>(&body) {
        Ok(v @ Value::Object(_)) => Ok(v),
        Ok(_) => Err(GatewayError::invalid_request("The body must be a JSON object.")),
        Err(e) => Err(GatewayError::invalid_request(format!("The body is not valid JSON: {e}"))
            .with_code("invalid_json")),
    }
}

/// One query parameter, `+` and `%XX` decoded.
fn query_param(query: &str, name: &str) -> Option<String> {
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (k == name).then(|| crate::ledger::spend::percent_decode(v))
    })
}
