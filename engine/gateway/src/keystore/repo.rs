//! The keys' SQL: what the cache loads, what the admin API changes, and the expiry reminders.
//! Every change to a key ends with `NOTIFY sluice_keys, '<id>'` in the same transaction.

use rand::Rng;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use sluice_core::budgets::{Notice, Notifier};
use sluice_core::keys::KeyRecord;
use sluice_core::{ErrorKind, GatewayError, Identity};
use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, GenericClient, Row};

/// Keys live 90 days unless told otherwise; a rotated key keeps working for 24 hours.
pub const DEFAULT_EXPIRY: &str = "90d";
pub const DEFAULT_GRACE: &str = "24h";
/// Reminders go out this many days before a key expires.
pub const REMINDERS: [i32; 3] = [14, 7, 1];

const RECORD_COLUMNS: &str = "k.id, k.hash, k.app_id, t.id, t.org_id, k.user_id, k.models, k.regions, k.tags, \
     (extract(epoch FROM k.expires_at) * 1000000)::bigint, k.revoked_at IS NOT NULL \
     FROM api_keys k JOIN apps a ON a.id = k.app_id JOIN teams t ON t.id = a.team_id";

fn record(row: &Row) -> ([u8; 32], KeyRecord) {
    let hash: Vec<u8> = row.get(1);
    let mut h = [0u8; 32];
    if hash.len() == 32 {
        h.copy_from_slice(&hash);
    }
    let record = KeyRecord {
        identity: Identity {
            key_id: row.get(0),
            app: row.get(2),
            team: row.get(3),
            org: row.get(4),
            user: row.get(5),
            allowed_models: row.get(6),
            allowed_regions: row.get(7),
            tags: row.get(8),
        },
        expires_at_us: row.get(9),
        revoked: row.get(10),
    };
    (h, record)
}

pub async fn active_keys(c: &Client) -> Result<Vec<([u8; 32], KeyRecord)>, tokio_postgres::Error> {
    let sql = format!(
        "SELECT {RECORD_COLUMNS} WHERE k.revoked_at IS NULL AND (k.expires_at IS NULL OR k.expires_at > now())"
    );
    Ok(c.query(&sql, &[]).await?.iter().map(record).collect())
}

pub async fn key_by_id(c: &Client, id: &str) -> Result<Option<([u8; 32], KeyRecord)>, tokio_postgres::Error> {
    let sql = format!("SELECT {RECORD_COLUMNS} WHERE k.id = $1");
    Ok(c.query_opt(&sql, &[&id]).await?.as_ref().map(record))
}

pub async fn key_by_hash(c: &Client, hash: &[u8; 32]) -> Result<Option<KeyRecord>, tokio_postgres::Error> {
    let sql = format!("SELECT {RECORD_COLUMNS} WHERE k.hash = $1");
    Ok(c.query_opt(&sql, &[&hash.as_slice()]).await?.as_ref().map(|r| record(r).1))
}

/// Sends each due reminder once: the instance whose UPDATE marks it sends it.
pub async fn send_reminders(c: &Client, notifier: &dyn Notifier) -> Result<(), tokio_postgres::Error> {
    let rows = c
        .query(
            "SELECT k.id, k.display, k.name, k.app_id, t.id, t.org_id, \
             to_char(k.expires_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'), \
             ceil(extract(epoch FROM (k.expires_at - now())) / 86400)::int, k.reminders_sent \
             FROM api_keys k JOIN apps a ON a.id = k.app_id JOIN teams t ON t.id = a.team_id \
             WHERE k.revoked_at IS NULL AND k.replaced_by IS NULL \
             AND k.expires_at > now() AND k.expires_at <= now() + interval '14 days'",
            &[],
        )
        .await?;
    for row in rows {
        let id: String = row.get(0);
        let days_left: i32 = row.get(7);
        let sent: Vec<i32> = row.get(8);
        let Some(due) = REMINDERS.iter().copied().filter(|d| days_left <= *d).min() else { continue };
        if sent.contains(&due) {
            continue;
        }
        // Mark this reminder and every earlier one (a key issued 5 days before expiry gets one).
        let marks: Vec<i32> = REMINDERS.iter().copied().filter(|d| *d >= due).collect();
        let won = c
            .query_opt(
                "UPDATE api_keys SET reminders_sent = ARRAY(SELECT DISTINCT unnest(reminders_sent || $2::int[])) \
                 WHERE id = $1 AND NOT ($3 = ANY(reminders_sent)) RETURNING id",
                &[&id, &marks, &due],
            )
            .await?
            .is_some();
        if !won {
            continue;
        }
        notifier.notify(reminder(Reminder {
            id,
            display: row.get(1),
            name: row.get(2),
            app: row.get(3),
            team: row.get(4),
            org: row.get(5),
            expires_at: row.get(6),
            days_left,
            due,
        }));
    }
    Ok(())
}

/// A due expiry reminder, whichever store found it.
pub struct Reminder {
    pub id: String,
    pub display: String,
    pub name: Option<String>,
    pub app: String,
    pub team: String,
    pub org: String,
    pub expires_at: String,
    pub days_left: i32,
    /// Which reminder (14, 7 or 1 days) this is.
    pub due: i32,
}

/// The webhook notice of a reminder (Slack-compatible text, details for machines).
pub fn reminder(r: Reminder) -> Notice {
    let Reminder { id, display, name, app, team, org, expires_at, days_left, due } = r;
    let label = name.as_deref().map_or(String::new(), |n| format!(" \"{n}\""));
    Notice {
        event: "key.expiring",
        text: format!(
            "Sluice: gateway key {id}{label} of app `{app}` (team `{team}`) expires in {days_left} day{} ({expires_at}). \
             Rotate it with `sluice admin keys rotate {id}`.",
            if days_left == 1 { "" } else { "s" }
        ),
        details: json!({"key_id": id, "display": display, "name": name, "app": app, "team": team, "org": org,
            "expires_at": expires_at, "days_left": days_left, "reminder": due}),
    }
}

// ---- The admin API's operations -------------------------------------------------------------

fn db_error(e: tokio_postgres::Error, what: &str) -> GatewayError {
    match e.code() {
        Some(c) if *c == SqlState::UNIQUE_VIOLATION => {
            GatewayError::new(ErrorKind::Conflict, format!("{what} already exists."))
        }
        Some(c) if *c == SqlState::FOREIGN_KEY_VIOLATION => {
            GatewayError::new(ErrorKind::NotFound, format!("The parent of {what} does not exist."))
        }
        _ => GatewayError::new(ErrorKind::Unavailable, format!("The database failed: {e}")),
    }
}

/// Ids of orgs, teams and apps: what limits and budgets are configured by.
pub fn check_id(id: &str, field: &str) -> Result<(), GatewayError> {
    let ok = !id.is_empty()
        && id.len() <= 64
        && id.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-_.".contains(&b))
        && id.as_bytes()[0].is_ascii_alphanumeric();
    if ok {
        Ok(())
    } else {
        Err(GatewayError::invalid_request(format!(
            "`{id}` is not a valid id: 1 to 64 lowercase letters, digits, `-`, `_` or `.`, starting with a letter or digit."
        ))
        .with_param(field))
    }
}

async fn exists(c: &Client, table: &str, id: &str) -> Result<bool, GatewayError> {
    c.query_opt(&format!("SELECT 1 FROM {table} WHERE id = $1"), &[&id])
        .await
        .map(|r| r.is_some())
        .map_err(|e| db_error(e, table))
}

pub fn not_found(what: &str, id: &str) -> GatewayError {
    GatewayError::new(ErrorKind::NotFound, format!("{what} `{id}` does not exist."))
}

pub async fn create_org(c: &Client, id: &str, name: &str) -> Result<Value, GatewayError> {
    check_id(id, "id")?;
    c.execute("INSERT INTO orgs (id, name) VALUES ($1, $2)", &[&id, &name])
        .await
        .map_err(|e| db_error(e, &format!("Org `{id}`")))?;
    Ok(json!({"object": "org", "id": id, "name": name}))
}

pub async fn create_team(c: &Client, id: &str, org: &str, name: &str) -> Result<Value, GatewayError> {
    check_id(id, "id")?;
    if !exists(c, "orgs", org).await? {
        return Err(not_found("Org", org).with_param("org"));
    }
    c.execute("INSERT INTO teams (id, org_id, name) VALUES ($1, $2, $3)", &[&id, &org, &name])
        .await
        .map_err(|e| db_error(e, &format!("Team `{id}`")))?;
    Ok(json!({"object": "team", "id": id, "org": org, "name": name}))
}

pub async fn create_app(c: &Client, id: &str, team: &str, name: &str) -> Result<Value, GatewayError> {
    check_id(id, "id")?;
    if !exists(c, "teams", team).await? {
        return Err(not_found("Team", team).with_param("team"));
    }
    c.execute("INSERT INTO apps (id, team_id, name) VALUES ($1, $2, $3)", &[&id, &team, &name])
        .await
        .map_err(|e| db_error(e, &format!("App `{id}`")))?;
    Ok(json!({"object": "app", "id": id, "team": team, "name": name}))
}

/// Orgs, teams or apps, optionally those of one parent.
pub async fn list(c: &Client, what: &str, parent: Option<&str>) -> Result<Value, GatewayError> {
    let (sql, object, parent_field) = match what {
        "orgs" => ("SELECT id, name, NULL::text FROM orgs", "org", ""),
        "teams" => ("SELECT id, name, org_id FROM teams", "team", "org"),
        _ => ("SELECT id, name, team_id FROM apps", "app", "team"),
    };
    let rows = match parent {
        Some(p) => {
            let column = if what == "teams" { "org_id" } else { "team_id" };
            c.query(&format!("{sql} WHERE {column} = $1 ORDER BY id"), &[&p]).await
        }
        None => c.query(&format!("{sql} ORDER BY id"), &[]).await,
    }
    .map_err(|e| db_error(e, what))?;
    let data: Vec<Value> = rows
        .iter()
        .map(|r| {
            let mut v = json!({"object": object, "id": r.get::<_, String>(0), "name": r.get::<_, String>(1)});
            if !parent_field.is_empty() {
                v[parent_field] = r.get::<_, Option<String>>(2).into();
            }
            v
        })
        .collect();
    Ok(json!({"object": "list", "data": data}))
}

/// What a new key carries.
#[derive(Debug, Default, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewKey {
    pub app: String,
    pub name: Option<String>,
    pub user: Option<String>,
    pub models: Option<Vec<String>>,
    pub regions: Option<Vec<String>>,
    #[serde(default)]
    pub tags: Vec<String>,
    /// `90d`, `12h`, ...; `never` for a key that does not expire.
    pub expires_in: Option<String>,
}

const KEY_VIEW: &str = "SELECT k.id, k.display, k.name, k.app_id, t.id, t.org_id, k.user_id, k.models, k.regions, k.tags, \
     to_char(k.created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'), \
     to_char(k.expires_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'), \
     to_char(k.revoked_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'), k.replaced_by, \
     CASE WHEN k.revoked_at IS NOT NULL THEN 'revoked' \
          WHEN k.expires_at IS NOT NULL AND k.expires_at <= now() THEN 'expired' \
          WHEN k.replaced_by IS NOT NULL THEN 'rotating' ELSE 'active' END \
     FROM api_keys k JOIN apps a ON a.id = k.app_id JOIN teams t ON t.id = a.team_id";

/// A key's metadata: never its secret, never its hash.
fn key_view(r: &Row) -> Value {
    json!({
        "object": "key",
        "id": r.get::<_, String>(0),
        "display": r.get::<_, String>(1),
        "name": r.get::<_, Option<String>>(2),
        "app": r.get::<_, String>(3),
        "team": r.get::<_, String>(4),
        "org": r.get::<_, String>(5),
        "user": r.get::<_, Option<String>>(6),
        "models": r.get::<_, Option<Vec<String>>>(7),
        "regions": r.get::<_, Option<Vec<String>>>(8),
        "tags": r.get::<_, Vec<String>>(9),
        "created_at": r.get::<_, String>(10),
        "expires_at": r.get::<_, Option<String>>(11),
        "revoked_at": r.get::<_, Option<String>>(12),
        "replaced_by": r.get::<_, Option<String>>(13),
        "status": r.get::<_, String>(14),
    })
}

pub async fn get_key(c: &impl GenericClient, id: &str) -> Result<Value, GatewayError> {
    let row = c
        .query_opt(&format!("{KEY_VIEW} WHERE k.id = $1"), &[&id])
        .await
        .map_err(|e| db_error(e, "key"))?
        .ok_or_else(|| not_found("Key", id))?;
    Ok(key_view(&row))
}

pub async fn list_keys(c: &Client, app: Option<&str>, team: Option<&str>) -> Result<Value, GatewayError> {
    let rows = match (app, team) {
        (Some(a), _) => {
            c.query(&format!("{KEY_VIEW} WHERE k.app_id = $1 ORDER BY k.created_at"), &[&a]).await
        }
        (None, Some(t)) => c.query(&format!("{KEY_VIEW} WHERE t.id = $1 ORDER BY k.created_at"), &[&t]).await,
        (None, None) => c.query(&format!("{KEY_VIEW} ORDER BY k.created_at"), &[]).await,
    }
    .map_err(|e| db_error(e, "keys"))?;
    Ok(json!({"object": "list", "data": rows.iter().map(key_view).collect::<Vec<_>>()}))
}

/// A fresh key: `sk-sluice-<12 hex id>-<32 base62 secret>`.
pub fn mint() -> (String, String) {
    const BASE62: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    let mut rng = rand::rng();
    let id = format!("{:012x}", rng.random::<u64>() & 0xffff_ffff_ffff);
    let secret: String = (0..32).map(|_| BASE62[rng.random_range(0..BASE62.len())] as char).collect();
    (id.clone(), format!("sk-sluice-{id}-{secret}"))
}

/// Seconds of a `90d` / `24h` / `30m` / `45s` duration.
pub fn seconds(text: &str, field: &str) -> Result<f64, GatewayError> {
    match sluice_core::duration::parse(text) {
        Ok(d) if !d.is_zero() => Ok(d.as_secs_f64()),
        Ok(_) => {
            Err(GatewayError::invalid_request(format!("`{text}` must be above zero.")).with_param(field))
        }
        Err(e) => Err(GatewayError::invalid_request(format!("{e}.")).with_param(field)),
    }
}

/// Issues a key; the answer is the only place its secret ever appears.
pub async fn issue_key(c: &mut Client, new: &NewKey) -> Result<Value, GatewayError> {
    let expires = match new.expires_in.as_deref().unwrap_or(DEFAULT_EXPIRY) {
        "never" => None,
        text => Some(seconds(text, "expires_in")?),
    };
    let tx = c.transaction().await.map_err(|e| db_error(e, "key"))?;
    if tx
        .query_opt("SELECT 1 FROM apps WHERE id = $1", &[&new.app])
        .await
        .map_err(|e| db_error(e, "key"))?
        .is_none()
    {
        return Err(not_found("App", &new.app).with_param("app"));
    }
    let (id, secret) = insert_key(&tx, new, expires).await?;
    let view = get_key(&tx, &id).await?;
    tx.commit().await.map_err(|e| db_error(e, "key"))?;
    let mut view = view;
    view["key"] = secret.into();
    Ok(view)
}

async fn insert_key(
    tx: &tokio_postgres::Transaction<'_>,
    new: &NewKey,
    expires_in_secs: Option<f64>,
) -> Result<(String, String), GatewayError> {
    let (id, secret) = mint();
    let hash: [u8; 32] = Sha256::digest(secret.as_bytes()).into();
    let display = format!("sk-sluice-{id}-…");
    tx.execute(
        "INSERT INTO api_keys (id, app_id, hash, display, name, user_id, models, regions, tags, expires_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, now() + make_interval(secs => $10))",
        &[
            &id,
            &new.app,
            &hash.as_slice(),
            &display,
            &new.name,
            &new.user,
            &new.models,
            &new.regions,
            &new.tags,
            &expires_in_secs,
        ],
    )
    .await
    .map_err(|e| db_error(e, "key"))?;
    tx.execute("SELECT pg_notify('sluice_keys', $1)", &[&id]).await.map_err(|e| db_error(e, "key"))?;
    Ok((id, secret))
}

pub async fn revoke_key(c: &mut Client, id: &str) -> Result<Value, GatewayError> {
    let tx = c.transaction().await.map_err(|e| db_error(e, "key"))?;
    let n = tx
        .execute("UPDATE api_keys SET revoked_at = now() WHERE id = $1 AND revoked_at IS NULL", &[&id])
        .await
        .map_err(|e| db_error(e, "key"))?;
    let view = get_key(&tx, id).await?;
    if n > 0 {
        tx.execute("SELECT pg_notify('sluice_keys', $1)", &[&id]).await.map_err(|e| db_error(e, "key"))?;
    }
    tx.commit().await.map_err(|e| db_error(e, "key"))?;
    Ok(view)
}

/// A new key for the same app with the same rights, now; the old one keeps working for `grace`.
pub async fn rotate_key(c: &mut Client, id: &str, grace: Option<&str>) -> Result<Value, GatewayError> {
    let grace = seconds(grace.unwrap_or(DEFAULT_GRACE), "grace")?;
    let tx = c.transaction().await.map_err(|e| db_error(e, "key"))?;
    let row = tx
        .query_opt(
            "SELECT app_id, name, user_id, models, regions, tags, revoked_at IS NOT NULL, \
             expires_at IS NOT NULL AND expires_at <= now(), replaced_by FROM api_keys WHERE id = $1 FOR UPDATE",
            &[&id],
        )
        .await
        .map_err(|e| db_error(e, "key"))?
        .ok_or_else(|| not_found("Key", id))?;
    let (revoked, expired, replaced): (bool, bool, Option<String>) = (row.get(6), row.get(7), row.get(8));
    if revoked || expired {
        return Err(GatewayError::invalid_request(format!(
            "Key `{id}` is {}; issue a new key instead.",
            if revoked { "revoked" } else { "expired" }
        )));
    }
    if let Some(next) = replaced {
        return Err(GatewayError::new(
            ErrorKind::Conflict,
            format!("Key `{id}` was already rotated to `{next}`."),
        ));
    }
    let new = NewKey {
        app: row.get(0),
        name: row.get(1),
        user: row.get(2),
        models: row.get(3),
        regions: row.get(4),
        tags: row.get(5),
        expires_in: None,
    };
    let (new_id, secret) = insert_key(&tx, &new, Some(seconds(DEFAULT_EXPIRY, "expires_in")?)).await?;
    tx.execute(
        "UPDATE api_keys SET replaced_by = $2, \
         expires_at = least(coalesce(expires_at, 'infinity'), now() + make_interval(secs => $3)) WHERE id = $1",
        &[&id, &new_id, &grace],
    )
    .await
    .map_err(|e| db_error(e, "key"))?;
    tx.execute("SELECT pg_notify('sluice_keys', $1)", &[&id]).await.map_err(|e| db_error(e, "key"))?;
    let mut view = get_key(&tx, &new_id).await?;
    let old = get_key(&tx, id).await?;
    tx.commit().await.map_err(|e| db_error(e, "key"))?;
    view["key"] = secret.into();
    view["replaces"] = old;
    Ok(view)
}
