//! A fake HashiCorp Vault that follows its documented HTTP API for what Sluice uses:
//!
//! - KV v2 read: `GET /v1/{mount}/data/{path}` with `X-Vault-Token` → `200 {"data": {"data": {..},
//!   "metadata": {"version": N, ..}}, ..}`; no or an unknown token → `403 {"errors": ["permission
//!   denied"]}`; nothing at the path → `404 {"errors": []}`.
//! - AppRole login: `POST /v1/auth/approle/login {"role_id", "secret_id"}` → `200 {"auth":
//!   {"client_token", "lease_duration", "renewable", ..}}`; wrong credentials → `400 {"errors":
//!   ["invalid role or secret ID"]}`.
//!
//! Tokens issued by login can be revoked (as if their TTL ran out) to prove that Sluice logs in
//! again. Every request is recorded, so tests can check headers and count reads.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use serde_json::{Value, json};

use crate::server::{Body, MockServer, Recorded, json};

#[derive(Default)]
struct State {
    /// `mount/path` → (version, fields).
    secrets: Mutex<HashMap<String, (u64, Value)>>,
    tokens: Mutex<HashSet<String>>,
    approle: Mutex<Option<(String, String)>>,
    issued: Mutex<u64>,
    requests: Mutex<Vec<Recorded>>,
}

pub struct FakeVault {
    server: MockServer,
    state: Arc<State>,
}

impl FakeVault {
    pub async fn start() -> Self {
        let state = Arc::new(State::default());
        let server = MockServer::start(state.clone(), |state: Arc<State>, req| async move {
            let r = Recorded::read(req).await;
            let answer = answer(&state, &r);
            state.requests.lock().expect("vault state").push(r);
            answer
        })
        .await;
        Self { server, state }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.server.addr)
    }

    /// A token that may read every secret.
    pub fn add_token(&self, token: &str) {
        self.state.tokens.lock().expect("vault state").insert(token.to_owned());
    }

    /// Revokes every token (as when their TTL runs out).
    pub fn revoke_tokens(&self) {
        self.state.tokens.lock().expect("vault state").clear();
    }

    /// Enables AppRole login with these credentials.
    pub fn enable_approle(&self, role_id: &str, secret_id: &str) {
        *self.state.approle.lock().expect("vault state") = Some((role_id.to_owned(), secret_id.to_owned()));
    }

    /// Writes a new version of the secret at `mount/path` (KV v2 keeps versions; reads get the latest).
    pub fn put(&self, mount_and_path: &str, fields: Value) {
        let mut secrets = self.state.secrets.lock().expect("vault state");
        let version = secrets.get(mount_and_path).map_or(1, |(v, _)| v + 1);
        secrets.insert(mount_and_path.to_owned(), (version, fields));
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.state.requests.lock().expect("vault state").clone()
    }

    /// Successful logins so far.
    pub fn logins(&self) -> u64 {
        *self.state.issued.lock().expect("vault state")
    }
}

fn errors(status: u16, messages: &[&str]) -> hyper::Response<Body> {
    json(status, &json!({ "errors": messages }))
}

fn answer(state: &State, r: &Recorded) -> hyper::Response<Body> {
    if r.method == "POST" && r.path == "/v1/auth/approle/login" {
        let body = r.json();
        let expected = state.approle.lock().expect("vault state").clone();
        let given = (body["role_id"].as_str(), body["secret_id"].as_str());
        return match expected {
            Some((role, secret)) if given == (Some(role.as_str()), Some(secret.as_str())) => {
                let mut issued = state.issued.lock().expect("vault state");
                *issued += 1;
                let token = format!("hvs.fake-approle-token-{}", *issued);
                state.tokens.lock().expect("vault state").insert(token.clone());
                json(
                    200,
                    &json!({
                        "request_id": format!("req-{}", *issued), "lease_id": "", "renewable": false,
                        "lease_duration": 0, "data": null, "wrap_info": null, "warnings": null,
                        "auth": {
                            "client_token": token, "accessor": format!("acc-{}", *issued),
                            "policies": ["default", "sluice"], "token_policies": ["default", "sluice"],
                            "metadata": {"role_name": "sluice"}, "lease_duration": 3600,
                            "renewable": true, "entity_id": "", "token_type": "service", "orphan": true
                        }
                    }),
                )
            }
            Some(_) => errors(400, &["invalid role or secret ID"]),
            None => errors(404, &["no handler for route \"auth/approle/login\". route entry not found."]),
        };
    }
    let Some(rest) = r.path.strip_prefix("/v1/") else { return errors(404, &[]) };
    let token = r.header("x-vault-token").unwrap_or_default();
    if !state.tokens.lock().expect("vault state").contains(token) {
        return errors(403, &["permission denied"]);
    }
    if r.method != "GET" {
        return errors(405, &[]);
    }
    // `{mount}/data/{path}`
    let Some((mount, path)) = rest.split_once("/data/") else { return errors(404, &[]) };
    match state.secrets.lock().expect("vault state").get(&format!("{mount}/{path}")) {
        Some((version, fields)) => json(
            200,
            &json!({
                "request_id": "r", "lease_id": "", "renewable": false, "lease_duration": 0,
                "data": {
                    "data": fields,
                    "metadata": {"created_time": "2026-11-30T00:00:00Z", "custom_metadata": null,
                        "deletion_time": "", "destroyed": false, "version": version}
                },
                "wrap_info": null, "warnings": null, "auth": null
            }),
        ),
        None => errors(404, &[]),
    }
}
