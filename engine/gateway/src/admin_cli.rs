//! `sluice admin ...`: the admin API from the command line, so operators need no curl.
//!
//! ```text
//! sluice admin [--url URL] [--token REF] orgs create ID [--name NAME] | orgs list
//! sluice admin ... teams create ID --org ORG [--name NAME] | teams list [--org ORG]
//! sluice admin ... apps create ID --team TEAM [--name NAME] | apps list [--team TEAM]
//! sluice admin ... keys create --app APP [--name N] [--user U] [--models a,b] [--regions eu]
//!                              [--tags phi] [--expires-in 90d|never]
//! sluice admin ... keys list [--app APP] [--team TEAM] | keys show ID | keys revoke ID
//! sluice admin ... keys rotate ID [--grace 24h]
//! sluice admin ... spend [--group-by team] [--period day|week|month] [--date YYYY-MM-DD] [--team T]
//! sluice admin ... reload
//! ```
//!
//! The URL defaults to `$SLUICE_ADMIN_URL`, else `http://127.0.0.1:9090`; the token is `--token`
//! (a reference, `env:NAME` or `file:PATH`) or `$SLUICE_ADMIN_TOKEN`.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{Value, json};
use sluice_core::secret::Secret;

use crate::routing::endpoints::EndpointInfo;

pub const USAGE: &str = "  sluice admin [--url URL] [--token env:NAME|file:PATH] COMMAND
      orgs create ID [--name NAME] | orgs list
      teams create ID --org ORG [--name NAME] | teams list [--org ORG]
      apps create ID --team TEAM [--name NAME] | apps list [--team TEAM]
      keys create --app APP [--name N] [--user U] [--models a,b] [--regions eu] [--tags phi] [--expires-in 90d|never]
      keys list [--app APP] [--team TEAM] | keys show ID | keys revoke ID | keys rotate ID [--grace 24h]
      spend [--group-by team|app|user|model|org|key] [--period day|week|month] [--date YYYY-MM-DD] [--team T]
      reload                          (secrets from Vault and the TLS certificate, read again now)";

/// One admin call: method, path with query, optional JSON body.
#[derive(Debug, PartialEq)]
pub struct Call {
    pub method: &'static str,
    pub path: String,
    pub body: Option<Value>,
}

/// Splits `--flag value` / `--flag=value` options from positional words.
fn split(args: &[String]) -> Result<(Vec<String>, BTreeMap<String, String>), String> {
    let (mut words, mut flags) = (Vec::new(), BTreeMap::new());
    let mut it = args.iter();
    while let Some(a) = it.next() {
        if let Some(flag) = a.strip_prefix("--") {
            let (name, value) = match flag.split_once('=') {
                Some((n, v)) => (n.to_owned(), v.to_owned()),
                None => {
                    (flag.to_owned(), it.next().cloned().ok_or_else(|| format!("--{flag} needs a value"))?)
                }
            };
            flags.insert(name, value);
        } else {
            words.push(a.clone());
        }
    }
    Ok((words, flags))
}

fn list(v: &str) -> Value {
    v.split(',').map(str::trim).filter(|s| !s.is_empty()).collect::<Vec<_>>().into()
}

fn encode(v: &str) -> String {
    v.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn query(flags: &BTreeMap<String, String>, allowed: &[(&str, &str)]) -> Result<String, String> {
    let mut parts = Vec::new();
    for (flag, value) in flags {
        let Some((_, param)) = allowed.iter().find(|(f, _)| f == flag) else {
            return Err(format!("unknown option --{flag}"));
        };
        parts.push(format!("{param}={}", encode(value)));
    }
    Ok(if parts.is_empty() { String::new() } else { format!("?{}", parts.join("&")) })
}

fn only(flags: &BTreeMap<String, String>, allowed: &[&str]) -> Result<(), String> {
    match flags.keys().find(|k| !allowed.contains(&k.as_str())) {
        Some(k) => Err(format!("unknown option --{k}")),
        None => Ok(()),
    }
}

/// Turns the words after `sluice admin` (connection options removed) into one call.
pub fn parse(args: &[String]) -> Result<Call, String> {
    let (words, flags) = split(args)?;
    let words: Vec<&str> = words.iter().map(String::as_str).collect();
    let call = |method, path: String, body| Ok(Call { method, path, body });
    match words.as_slice() {
        [kind @ ("orgs" | "teams" | "apps"), "create", id] => {
            let parent = match *kind {
                "teams" => Some("org"),
                "apps" => Some("team"),
                _ => None,
            };
            let mut allowed = vec!["name"];
            allowed.extend(parent);
            only(&flags, &allowed)?;
            let mut body = json!({"id": id, "name": flags.get("name").map_or(*id, String::as_str)});
            if let Some(p) = parent {
                body[p] = flags.get(p).ok_or_else(|| format!("{kind} create needs --{p}"))?.as_str().into();
            }
            call("POST", format!("/admin/{kind}"), Some(body))
        }
        [kind @ ("orgs" | "teams" | "apps"), "list"] => {
            let allowed: &[(&str, &str)] = match *kind {
                "teams" => &[("org", "org")],
                "apps" => &[("team", "team")],
                _ => &[],
            };
            call("GET", format!("/admin/{kind}{}", query(&flags, allowed)?), None)
        }
        ["keys", "create"] => {
            only(&flags, &["app", "name", "user", "models", "regions", "tags", "expires-in"])?;
            let mut body = json!({"app": flags.get("app").ok_or("keys create needs --app")?});
            for (flag, field) in [("name", "name"), ("user", "user"), ("expires-in", "expires_in")] {
                if let Some(v) = flags.get(flag) {
                    body[field] = v.as_str().into();
                }
            }
            for field in ["models", "regions", "tags"] {
                if let Some(v) = flags.get(field) {
                    body[field] = list(v);
                }
            }
            call("POST", "/admin/keys".into(), Some(body))
        }
        ["keys", "list"] => {
            call("GET", format!("/admin/keys{}", query(&flags, &[("app", "app"), ("team", "team")])?), None)
        }
        ["keys", "show", id] => {
            only(&flags, &[])?;
            call("GET", format!("/admin/keys/{}", encode(id)), None)
        }
        ["keys", "revoke", id] => {
            only(&flags, &[])?;
            call("POST", format!("/admin/keys/{}/revoke", encode(id)), Some(json!({})))
        }
        ["keys", "rotate", id] => {
            only(&flags, &["grace"])?;
            let body = flags.get("grace").map_or_else(|| json!({}), |g| json!({"grace": g}));
            call("POST", format!("/admin/keys/{}/rotate", encode(id)), Some(body))
        }
        ["reload"] => call("POST", "/admin/reload".to_owned(), Some(json!({}))),
        ["spend"] => {
            let allowed = [
                ("group-by", "group_by"),
                ("period", "period"),
                ("date", "date"),
                ("org", "org"),
                ("team", "team"),
                ("app", "app"),
                ("user", "user"),
                ("model", "model"),
                ("key", "key"),
            ];
            call("GET", format!("/admin/spend{}", query(&flags, &allowed)?), None)
        }
        _ => Err("unknown admin command".into()),
    }
}

/// Runs `sluice admin ...`; returns the exit code.
pub fn main(args: &[String]) -> i32 {
    let (mut url, mut token_ref, mut rest) = (None, None, Vec::new());
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--url" => url = it.next().cloned(),
            "--token" => token_ref = it.next().cloned(),
            _ if a.starts_with("--url=") => url = a.strip_prefix("--url=").map(str::to_owned),
            _ if a.starts_with("--token=") => token_ref = a.strip_prefix("--token=").map(str::to_owned),
            _ => rest.push(a.clone()),
        }
    }
    let call = match parse(&rest) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("sluice admin: {e}\nusage:\n{USAGE}");
            return 2;
        }
    };
    let token = match token_ref {
        Some(r) => match Secret::resolve(&r) {
            Ok(s) => s.expose().to_owned(),
            Err(e) => {
                eprintln!("sluice admin: --token: {e}");
                return 2;
            }
        },
        None => match std::env::var("SLUICE_ADMIN_TOKEN") {
            Ok(t) if !t.is_empty() => t,
            _ => {
                eprintln!(
                    "sluice admin: no admin token: set SLUICE_ADMIN_TOKEN or pass --token env:NAME|file:PATH"
                );
                return 2;
            }
        },
    };
    let base = url
        .or_else(|| std::env::var("SLUICE_ADMIN_URL").ok())
        .unwrap_or_else(|| "http://127.0.0.1:9090".to_owned());
    let target = match EndpointInfo::parse(&format!("{}{}", base.trim_end_matches('/'), call.path)) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("sluice admin: --url: {e}");
            return 2;
        }
    };
    let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() else {
        eprintln!("sluice admin: cannot start a runtime");
        return 1;
    };
    let body = call.body.map(|b| bytes::Bytes::from(b.to_string()));
    let headers = [("authorization", format!("Bearer {token}"))];
    let answer = rt.block_on(crate::http_client::request(
        call.method,
        &target,
        &headers,
        body,
        Duration::from_secs(30),
    ));
    match answer {
        Ok((status, body)) => {
            let v: Value =
                serde_json::from_slice(&body).unwrap_or_else(|_| String::from_utf8_lossy(&body).into());
            if (200..300).contains(&status) {
                println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
                0
            } else {
                let message = v
                    .pointer("/error/message")
                    .and_then(Value::as_str)
                    .map_or_else(|| v.to_string(), str::to_owned);
                eprintln!("sluice admin: HTTP {status}: {message}");
                1
            }
        }
        Err(e) => {
            eprintln!("sluice admin: cannot reach the admin API at {base}: {e}");
            1
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(str::to_owned).collect()
    }

    #[test]
    fn commands_become_admin_calls() {
        let c = parse(&args("teams create payments --org acme")).unwrap();
        assert_eq!((c.method, c.path.as_str()), ("POST", "/admin/teams"));
        assert_eq!(c.body, Some(json!({"id": "payments", "name": "payments", "org": "acme"})));
        let c =
            parse(&args("keys create --app checkout --models gpt-4o,gpt-4o-mini --expires-in=30d")).unwrap();
        assert_eq!(
            c.body,
            Some(json!({"app": "checkout", "models": ["gpt-4o", "gpt-4o-mini"], "expires_in": "30d"}))
        );
        let c = parse(&args("keys rotate abc --grace 1h")).unwrap();
        assert_eq!((c.path.as_str(), c.body), ("/admin/keys/abc/rotate", Some(json!({"grace": "1h"}))));
        let c = parse(&args("spend --group-by model --period month --team pay ments")).unwrap_err();
        assert_eq!(c, "unknown admin command");
        let c = parse(&args("spend --group-by model --period month")).unwrap();
        assert_eq!(c.path, "/admin/spend?group_by=model&period=month");
        assert!(parse(&args("apps create x")).unwrap_err().contains("--team"));
        assert!(parse(&args("keys list --colour red")).unwrap_err().contains("--colour"));
    }
}
