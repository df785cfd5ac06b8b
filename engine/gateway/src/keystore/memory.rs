//! Managed keys without PostgreSQL: the embedded default's orgs, teams, apps and keys, held by this
//! one process. The admin API and `sluice admin` work the same as over PostgreSQL — issue, list,
//! revoke, rotate with grace, expiry, reminders — and the request path reads the same map the admin
//! API writes, so a revocation takes effect on the next request. Everything is gone when the
//! process stops: this is for a single instance trying Sluice out, not for production.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use sluice_core::budgets::Notifier;
use sluice_core::calendar::{DAY_US, iso, unix_us};
use sluice_core::keys::{KeyRecord, KeyStore};
use sluice_core::limits::StoreError;
use sluice_core::{ErrorKind, GatewayError, Identity};

use super::Directory;
use super::repo::{self, DEFAULT_EXPIRY, DEFAULT_GRACE, NewKey, REMINDERS};

struct Node {
    name: String,
    parent: Option<String>,
}

struct Key {
    id: String,
    hash: [u8; 32],
    new: NewKey,
    created_us: i64,
    expires_us: Option<i64>,
    revoked_us: Option<i64>,
    replaced_by: Option<String>,
    reminders_sent: Vec<i32>,
}

#[derive(Default)]
struct State {
    orgs: BTreeMap<String, Node>,
    teams: BTreeMap<String, Node>,
    apps: BTreeMap<String, Node>,
    /// In the order they were issued.
    keys: Vec<Key>,
    by_hash: HashMap<[u8; 32], usize>,
    by_id: HashMap<String, usize>,
}

pub struct MemoryKeys {
    state: Mutex<State>,
    notifier: Arc<dyn Notifier>,
    reminder_interval: Duration,
    now: fn() -> SystemTime,
}

impl MemoryKeys {
    pub fn new(notifier: Arc<dyn Notifier>, reminder_interval: Duration) -> Self {
        Self { state: Mutex::default(), notifier, reminder_interval, now: SystemTime::now }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn now_us(&self) -> i64 {
        unix_us((self.now)())
    }

    /// Starts the reminder thread (not done by `check-config`).
    pub fn start(self: &Arc<Self>) -> Result<(), String> {
        let me = Arc::downgrade(self);
        let interval = self.reminder_interval;
        std::thread::Builder::new()
            .name("sluice-keys".into())
            .spawn(move || {
                while let Some(keys) = me.upgrade() {
                    keys.send_reminders();
                    drop(keys);
                    std::thread::sleep(interval);
                }
            })
            .map(drop)
            .map_err(|e| format!("cannot start the key reminders: {e}"))
    }

    /// Sends each due reminder once (14, 7 and 1 days before a key expires).
    pub fn send_reminders(&self) {
        let now = self.now_us();
        let mut due_notices = Vec::new();
        {
            let mut state = self.state();
            let State { keys, apps, teams, .. } = &mut *state;
            for key in keys.iter_mut() {
                let Some(expires) = key.expires_us else { continue };
                if key.revoked_us.is_some() || key.replaced_by.is_some() || expires <= now {
                    continue;
                }
                let days_left = ((expires - now + DAY_US - 1) / DAY_US) as i32;
                let Some(due) = REMINDERS.iter().copied().filter(|d| days_left <= *d).min() else { continue };
                if key.reminders_sent.contains(&due) {
                    continue;
                }
                key.reminders_sent.extend(REMINDERS.iter().copied().filter(|d| *d >= due));
                let team = apps.get(&key.new.app).and_then(|a| a.parent.clone()).unwrap_or_default();
                let org = teams.get(&team).and_then(|t| t.parent.clone()).unwrap_or_default();
                due_notices.push(repo::reminder(repo::Reminder {
                    id: key.id.clone(),
                    display: display(&key.id),
                    name: key.new.name.clone(),
                    app: key.new.app.clone(),
                    team,
                    org,
                    expires_at: iso(expires),
                    days_left,
                    due,
                }));
            }
        }
        for notice in due_notices {
            self.notifier.notify(notice);
        }
    }

    fn issue(&self, state: &mut State, new: NewKey, expires_in_secs: Option<f64>) -> (usize, String) {
        let (id, secret) = repo::mint();
        let now = self.now_us();
        let key = Key {
            id: id.clone(),
            hash: Sha256::digest(secret.as_bytes()).into(),
            new,
            created_us: now,
            expires_us: expires_in_secs.map(|s| now.saturating_add((s * 1e6) as i64)),
            revoked_us: None,
            replaced_by: None,
            reminders_sent: Vec::new(),
        };
        let at = state.keys.len();
        state.by_hash.insert(key.hash, at);
        state.by_id.insert(id, at);
        state.keys.push(key);
        (at, secret)
    }

    /// What the admin API shows of a key: the same fields as over PostgreSQL, never secret or hash.
    fn view(&self, state: &State, key: &Key) -> Value {
        let now = self.now_us();
        let team = state.apps.get(&key.new.app).and_then(|a| a.parent.clone()).unwrap_or_default();
        let org = state.teams.get(&team).and_then(|t| t.parent.clone()).unwrap_or_default();
        let status = if key.revoked_us.is_some() {
            "revoked"
        } else if key.expires_us.is_some_and(|e| e <= now) {
            "expired"
        } else if key.replaced_by.is_some() {
            "rotating"
        } else {
            "active"
        };
        json!({
            "object": "key",
            "id": key.id,
            "display": display(&key.id),
            "name": key.new.name,
            "app": key.new.app,
            "team": team,
            "org": org,
            "user": key.new.user,
            "models": key.new.models,
            "regions": key.new.regions,
            "tags": key.new.tags,
            "created_at": iso(key.created_us),
            "expires_at": key.expires_us.map(iso),
            "revoked_at": key.revoked_us.map(iso),
            "replaced_by": key.replaced_by,
            "status": status,
        })
    }

    fn find<'a>(state: &'a State, id: &str) -> Result<(usize, &'a Key), GatewayError> {
        let at = *state.by_id.get(id).ok_or_else(|| repo::not_found("Key", id))?;
        Ok((at, &state.keys[at]))
    }
}

fn display(id: &str) -> String {
    format!("sk-sluice-{id}-…")
}

#[async_trait]
impl KeyStore for MemoryKeys {
    async fn lookup(&self, hash: &[u8; 32]) -> Result<Option<KeyRecord>, StoreError> {
        let state = self.state();
        let Some(key) = state.by_hash.get(hash).map(|at| &state.keys[*at]) else { return Ok(None) };
        let team = state.apps.get(&key.new.app).and_then(|a| a.parent.clone()).unwrap_or_default();
        let org = state.teams.get(&team).and_then(|t| t.parent.clone()).unwrap_or_default();
        Ok(Some(KeyRecord {
            identity: Identity {
                key_id: key.id.clone(),
                org,
                team,
                app: key.new.app.clone(),
                user: key.new.user.clone(),
                allowed_models: key.new.models.clone(),
                allowed_regions: key.new.regions.clone(),
                tags: key.new.tags.clone(),
            },
            expires_at_us: key.expires_us,
            revoked: key.revoked_us.is_some(),
        }))
    }
}

#[async_trait]
impl Directory for MemoryKeys {
    async fn create(
        &self,
        kind: &str,
        id: &str,
        name: &str,
        parent: Option<&str>,
    ) -> Result<Value, GatewayError> {
        repo::check_id(id, "id")?;
        let mut state = self.state();
        let State { orgs, teams, apps, .. } = &mut *state;
        let (map, parents, object, what, parent_kind, parent_field) = match kind {
            "orgs" => (orgs, None, "org", "Org", "", ""),
            "teams" => (teams, Some(&*orgs), "team", "Team", "Org", "org"),
            _ => (apps, Some(&*teams), "app", "App", "Team", "team"),
        };
        if let Some(parents) = parents {
            let p = parent.unwrap_or_default();
            if !parents.contains_key(p) {
                return Err(repo::not_found(parent_kind, p).with_param(parent_field));
            }
        }
        if map.contains_key(id) {
            return Err(GatewayError::new(ErrorKind::Conflict, format!("{what} `{id}` already exists.")));
        }
        map.insert(id.to_owned(), Node { name: name.to_owned(), parent: parent.map(str::to_owned) });
        let mut v = json!({"object": object, "id": id, "name": name});
        if !parent_field.is_empty() {
            v[parent_field] = parent.into();
        }
        Ok(v)
    }

    async fn list(&self, kind: &str, parent: Option<&str>) -> Result<Value, GatewayError> {
        let state = self.state();
        let (map, object, parent_field) = match kind {
            "orgs" => (&state.orgs, "org", ""),
            "teams" => (&state.teams, "team", "org"),
            _ => (&state.apps, "app", "team"),
        };
        let data: Vec<Value> = map
            .iter()
            .filter(|(_, n)| parent.is_none_or(|p| n.parent.as_deref() == Some(p)))
            .map(|(id, n)| {
                let mut v = json!({"object": object, "id": id, "name": n.name});
                if !parent_field.is_empty() {
                    v[parent_field] = n.parent.clone().into();
                }
                v
            })
            .collect();
        Ok(json!({"object": "list", "data": data}))
    }

    async fn issue_key(&self, new: &NewKey) -> Result<Value, GatewayError> {
        let expires = match new.expires_in.as_deref().unwrap_or(DEFAULT_EXPIRY) {
            "never" => None,
            text => Some(repo::seconds(text, "expires_in")?),
        };
        let mut state = self.state();
        if !state.apps.contains_key(&new.app) {
            return Err(repo::not_found("App", &new.app).with_param("app"));
        }
        let (at, secret) = self.issue(&mut state, new.clone(), expires);
        let mut view = self.view(&state, &state.keys[at]);
        view["key"] = secret.into();
        Ok(view)
    }

    async fn list_keys(&self, app: Option<&str>, team: Option<&str>) -> Result<Value, GatewayError> {
        let state = self.state();
        let data: Vec<Value> = state
            .keys
            .iter()
            .map(|k| self.view(&state, k))
            .filter(|v| match (app, team) {
                (Some(a), _) => v["app"] == a,
                (None, Some(t)) => v["team"] == t,
                (None, None) => true,
            })
            .collect();
        Ok(json!({"object": "list", "data": data}))
    }

    async fn get_key(&self, id: &str) -> Result<Value, GatewayError> {
        let state = self.state();
        let (_, key) = Self::find(&state, id)?;
        Ok(self.view(&state, key))
    }

    async fn revoke_key(&self, id: &str) -> Result<Value, GatewayError> {
        let now = self.now_us();
        let mut state = self.state();
        let (at, _) = Self::find(&state, id)?;
        let key = &mut state.keys[at];
        key.revoked_us.get_or_insert(now);
        Ok(self.view(&state, &state.keys[at]))
    }

    async fn rotate_key(&self, id: &str, grace: Option<&str>) -> Result<Value, GatewayError> {
        let grace = repo::seconds(grace.unwrap_or(DEFAULT_GRACE), "grace")?;
        let now = self.now_us();
        let mut state = self.state();
        let (at, key) = Self::find(&state, id)?;
        let expired = key.expires_us.is_some_and(|e| e <= now);
        if key.revoked_us.is_some() || expired {
            return Err(GatewayError::invalid_request(format!(
                "Key `{id}` is {}; issue a new key instead.",
                if expired { "expired" } else { "revoked" }
            )));
        }
        if let Some(next) = &key.replaced_by {
            return Err(GatewayError::new(
                ErrorKind::Conflict,
                format!("Key `{id}` was already rotated to `{next}`."),
            ));
        }
        let new = NewKey { expires_in: None, ..key.new.clone() };
        let (new_at, secret) =
            self.issue(&mut state, new, Some(repo::seconds(DEFAULT_EXPIRY, "expires_in")?));
        let new_id = state.keys[new_at].id.clone();
        let old = &mut state.keys[at];
        old.replaced_by = Some(new_id);
        let until = now.saturating_add((grace * 1e6) as i64);
        old.expires_us = Some(old.expires_us.map_or(until, |e| e.min(until)));
        let mut view = self.view(&state, &state.keys[new_at]);
        view["key"] = secret.into();
        view["replaces"] = self.view(&state, &state.keys[at]);
        Ok(view)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_core::budgets::{NoNotifier, Notice};

    fn keys() -> MemoryKeys {
        MemoryKeys::new(Arc::new(NoNotifier), Duration::from_secs(3600))
    }

    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(f)
    }

    fn setup(k: &MemoryKeys) {
        block_on(async {
            k.create("orgs", "acme", "Acme", None).await.unwrap();
            k.create("teams", "pay", "pay", Some("acme")).await.unwrap();
            k.create("apps", "checkout", "checkout", Some("pay")).await.unwrap();
        });
    }

    fn new_key(expires_in: &str) -> NewKey {
        NewKey { app: "checkout".into(), expires_in: Some(expires_in.into()), ..Default::default() }
    }

    #[test]
    fn parents_must_exist_and_ids_are_unique() {
        let k = keys();
        block_on(async {
            let e = k.create("teams", "pay", "pay", Some("nope")).await.unwrap_err();
            assert_eq!((e.status(), e.param.as_deref()), (404, Some("org")));
            k.create("orgs", "acme", "Acme", None).await.unwrap();
            assert_eq!(k.create("orgs", "acme", "Acme", None).await.unwrap_err().status(), 409);
            let e = k.issue_key(&new_key("1d")).await.unwrap_err();
            assert_eq!(e.status(), 404);
        });
    }

    #[test]
    fn a_revoked_key_is_looked_up_as_revoked_and_a_rotated_one_gets_the_grace() {
        let k = keys();
        setup(&k);
        block_on(async {
            let issued = k.issue_key(&new_key("10d")).await.unwrap();
            let secret = issued["key"].as_str().unwrap();
            let hash: [u8; 32] = Sha256::digest(secret.as_bytes()).into();
            let found = k.lookup(&hash).await.unwrap().unwrap();
            assert_eq!((found.identity.team.as_str(), found.identity.org.as_str()), ("pay", "acme"));
            let id = issued["id"].as_str().unwrap();
            let rotated = k.rotate_key(id, Some("1h")).await.unwrap();
            assert_eq!(rotated["replaces"]["status"], "rotating");
            let old = k.lookup(&hash).await.unwrap().unwrap();
            let left = old.expires_at_us.unwrap() - k.now_us();
            assert!(left <= 3_600_000_000 && left > 3_500_000_000, "{left}");
            assert_eq!(k.rotate_key(id, None).await.unwrap_err().status(), 409);
            k.revoke_key(id).await.unwrap();
            assert!(k.lookup(&hash).await.unwrap().unwrap().revoked);
            assert_eq!(k.get_key(id).await.unwrap()["status"], "revoked");
        });
    }

    struct Collect(Mutex<Vec<Notice>>);
    impl Notifier for Collect {
        fn notify(&self, notice: Notice) {
            self.0.lock().unwrap().push(notice);
        }
    }

    #[test]
    fn each_reminder_is_sent_once() {
        let sink = Arc::new(Collect(Mutex::default()));
        let k = MemoryKeys::new(sink.clone(), Duration::from_secs(3600));
        setup(&k);
        block_on(async {
            k.issue_key(&new_key("10d")).await.unwrap();
            k.issue_key(&new_key("30d")).await.unwrap();
        });
        k.send_reminders();
        k.send_reminders();
        let sent = sink.0.lock().unwrap();
        assert_eq!(sent.len(), 1);
        assert_eq!(
            (sent[0].details["reminder"].as_i64(), sent[0].details["days_left"].as_i64()),
            (Some(14), Some(10))
        );
    }
}
