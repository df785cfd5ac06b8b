//! Configuration: one TOML file in, runtime types out.
//!
//! [`parse`] reads the file into [`file::ConfigFile`] (unknown keys are errors, with line and
//! column); [`build`] checks what types cannot (references between tables, URLs, durations, secrets)
//! and produces the [`Gateway`]. Every error names the key path at fault. Without `--config`, the
//! embedded `conf/default.toml` is used: in-memory state and the built-in mock provider.

pub mod file;
pub mod pricing;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use sluice_core::secret::{LiveSecret, Secret};
use sluice_plugins::{PluginsConfig, Stores};

use crate::db::Db;
use crate::keystore::memory::MemoryKeys;
use crate::keystore::{Directory, KeySettings, ManagedKeys, PgDirectory};
use crate::ledger::{Ledger, LedgerSettings};
use crate::metrics::Metrics;
use crate::notify::Webhook;
use crate::providers::{Dialect, HttpUpstream, Provider, Transport, mock::Mock};
use crate::proxy::Gateway;
use crate::routing::circuit::Circuit;
use crate::routing::endpoints::{EndpointInfo, EndpointPool, PeerSettings, ProbeSpec, load_ca};
use crate::routing::{Route, Router, Target};
use crate::stores::memory::MemoryLimits;
use crate::stores::redis::RedisLimits;
use crate::stores::spend::{MemorySpend, RedisSpend, Seeder};
use crate::vault::{self, Vault, VaultRef};
use file::{ConfigFile, ProviderKind, RankFile};
use sluice_core::budgets::{NoNotifier, Notifier, SpendStore};
use sluice_core::limits::LimitStore;
use sluice_plugins::limits::FailMode;

/// The embedded default configuration.
pub const DEFAULT_TOML: &str = include_str!("../../../../conf/default.toml");

/// Server-level settings, parsed.
#[derive(Debug, Clone)]
pub struct Settings {
    pub listen: String,
    pub threads: usize,
    pub max_body_bytes: usize,
    pub shutdown_grace: Duration,
    pub tls: Option<file::TlsFile>,
    pub max_attempts: u32,
    pub cooldown: Duration,
    /// The admin API: its listen address and token.
    pub admin: Option<(String, LiveSecret)>,
    /// The admin token is a literal demo token (so the admin API must stay on loopback).
    pub admin_demo_token: bool,
    /// Requests are audited (PostgreSQL): each record carries the body's SHA-256.
    pub audit: bool,
    /// The region this instance serves (`[regions]`).
    pub region: Option<String>,
    /// `[audit] export_dir` and `export_delay`: finished days are sealed there.
    pub audit_export: Option<(std::path::PathBuf, Duration)>,
}

/// Parses a TOML document; `origin` names it in errors.
pub fn parse(text: &str, origin: &str) -> Result<ConfigFile, String> {
    toml::from_str(text).map_err(|e| format!("{origin}: {e}"))
}

/// Checks the parsed file and builds the gateway.
pub fn build(file: ConfigFile) -> Result<Gateway, String> {
    let (file, elsewhere) = for_region(file)?;
    // Vault first: other sections' references may point into it.
    let vault = match &file.vault {
        Some(v) => Some(Arc::new(Vault::new(v).map_err(|e| format!("vault.{e}"))?)),
        None => None,
    };
    let vault_ref = vault.as_deref();
    let mut settings = Settings {
        listen: file.server.listen.clone(),
        threads: file.server.threads,
        max_body_bytes: file.server.max_body_bytes,
        shutdown_grace: duration(&file.server.shutdown_grace, "server.shutdown_grace")?,
        tls: file.server.tls.clone(),
        max_attempts: file.routing.max_attempts.max(1),
        cooldown: duration(&file.routing.cooldown, "routing.cooldown")?,
        admin: match &file.admin {
            Some(a) => Some((a.listen.clone(), admin_token(a, vault_ref)?)),
            None => None,
        },
        admin_demo_token: file.admin.as_ref().is_some_and(|a| a.demo_token.is_some()),
        audit: false,
        audit_export: None,
        region: file.server.region.clone(),
    };
    if settings.max_body_bytes == 0 {
        return Err("server.max_body_bytes: must be above 0".into());
    }
    let mut providers = BTreeMap::new();
    for (name, p) in &file.providers {
        let provider = provider(name, p, vault_ref).map_err(|e| format!("providers.{name}.{e}"))?;
        providers.insert(name.clone(), Arc::new(provider));
    }
    let prices = pricing::load(&file.pricing)?;
    if let Some(age) = pricing::age_days(&prices.as_of).filter(|days| *days > 180) {
        log::warn!(
            "the price table ({}) is {age} days old (as of {}): check it against the providers' prices",
            prices.origin,
            prices.as_of
        );
    }
    let mut routes = BTreeMap::new();
    for (alias, model) in &file.models {
        if model.targets.is_empty() {
            return Err(format!("models.{alias}.targets: a model needs at least one target"));
        }
        let mut ranks = Vec::new();
        for (i, rank) in model.targets.iter().enumerate() {
            let entries = match rank {
                RankFile::One(t) => std::slice::from_ref(t),
                RankFile::Many(ts) => ts.as_slice(),
            };
            if entries.is_empty() {
                return Err(format!("models.{alias}.targets[{i}]: an empty list of targets"));
            }
            let mut targets = Vec::new();
            for t in entries {
                let Some(provider) = providers.get(&t.provider) else {
                    return Err(format!(
                        "models.{alias}.targets[{i}].provider: unknown provider `{}` (declared: {})",
                        t.provider,
                        file.providers.keys().cloned().collect::<Vec<_>>().join(", ")
                    ));
                };
                if t.model.is_empty() {
                    return Err(format!("models.{alias}.targets[{i}].model: must not be empty"));
                }
                if t.weight == 0 {
                    return Err(format!("models.{alias}.targets[{i}].weight: must be at least 1"));
                }
                // The mock provider is free unless priced; every real model needs a price.
                if provider.kind != ProviderKind::Mock && prices.pricing.price(&t.model).is_none() {
                    return Err(format!(
                        "models.{alias}.targets[{i}].model: `{}` has no price in {} (as of {}); add \
                         [pricing.models.\"{}\"] or a conservative [pricing.default] — nothing is free by accident",
                        t.model, prices.origin, prices.as_of, t.model
                    ));
                }
                targets.push(Arc::new(
                    Target::new(
                        provider.clone(),
                        t.model.clone(),
                        t.weight,
                        t.region.clone().or_else(|| provider.region.clone()),
                        Circuit::new(file.routing.failure_threshold, settings.cooldown),
                    )
                    .with_tags({
                        let mut tags =
                            file.providers.get(&t.provider).map(|p| p.tags.clone()).unwrap_or_default();
                        tags.extend(t.tags.iter().cloned());
                        tags
                    }),
                ));
            }
            ranks.push(targets);
        }
        routes.insert(alias.clone(), Route { ranks });
    }
    let metrics = Arc::new(Metrics::new().map_err(|e| format!("metrics: {e}"))?);
    let postgres = match &file.state.postgres {
        Some(reference) if is_reference(reference) => Some(
            vault::resolve(reference, vault_ref)
                .map_err(|e| format!("state.postgres: {e}"))?
                .expose()
                .to_owned(),
        ),
        Some(url) => Some(url.clone()),
        None => None,
    };
    if let Some(url) = &postgres {
        crate::pg_tls::config(url).map_err(|e| format!("state.postgres: {e}"))?;
    }
    settings.audit = postgres.is_some();
    if file.audit.content && postgres.is_none() {
        return Err("audit.content: the audit trail needs [state] postgres".into());
    }
    if let Some(dir) = &file.audit.export_dir {
        if postgres.is_none() {
            return Err("audit.export_dir: the audit trail needs [state] postgres".into());
        }
        settings.audit_export = Some((dir.into(), duration(&file.audit.export_delay, "audit.export_delay")?));
    }
    let records = &file.records;
    if records.queue == 0 || records.batch == 0 {
        return Err("records: queue and batch must be above 0".into());
    }
    let ledger = Arc::new(Ledger::new(
        LedgerSettings {
            postgres,
            spool_dir: records.spool_dir.clone().into(),
            queue: records.queue,
            batch: records.batch,
            flush_interval: duration(&records.flush_interval, "records.flush_interval")?,
            retry_interval: duration(&records.retry_interval, "records.retry_interval")?,
            memory_records: records.memory_records.max(1),
        },
        metrics.records.clone(),
    ));
    // Budget counters are rebuilt from the ledger when they are missing (PostgreSQL only).
    let reader = match ledger.postgres_url() {
        Some(url) => Some(Arc::new(Db::new(url.to_owned()).map_err(|e| format!("state.postgres: {e}"))?)),
        None => None,
    };
    let seeder = reader.clone().map(|r| Arc::new(Seeder::new(r)));
    // Limit and spend counters live in Redis when configured (shared by instances), else in memory.
    let (limits_store, spend_store, redis): (Arc<dyn LimitStore>, Arc<dyn SpendStore>, _) =
        match &file.state.redis {
            Some(reference) => {
                let url = if is_reference(reference) {
                    vault::resolve(reference, vault_ref)
                        .map_err(|e| format!("state.redis: {e}"))?
                        .expose()
                        .to_owned()
                } else {
                    reference.clone()
                };
                let prefix = &file.state.key_prefix;
                let local = file.limits.as_ref().is_none_or(|l| l.on_store_failure == FailMode::Local);
                let mut limits = RedisLimits::new(&url, prefix, local, file.state.redis_ca_file.as_deref())
                    .map_err(|e| format!("state.redis: {e}"))?;
                if let Some(l) = &file.limits {
                    if !(0.0..=50.0).contains(&l.lease_percent) {
                        return Err(format!(
                            "limits.lease_percent: {} is not a share from 0 to 50 (percent)",
                            l.lease_percent
                        ));
                    }
                    limits = limits.with_leases(l.lease_percent, duration(&l.lease_ttl, "limits.lease_ttl")?);
                }
                let healthy = limits.healthy();
                let refresh = match &file.budgets {
                    Some(b) => duration(&b.refresh, "budgets.refresh")?,
                    None => Duration::ZERO,
                };
                let spend = RedisSpend::new(
                    &url,
                    prefix,
                    seeder,
                    healthy.clone(),
                    limits.hold_off(),
                    refresh,
                    file.state.redis_ca_file.as_deref(),
                )
                .map_err(|e| format!("state.redis: {e}"))?;
                let warmup = limits.warmup();
                (Arc::new(limits), Arc::new(spend), Some((healthy, warmup)))
            }
            None => (Arc::new(MemoryLimits::default()), Arc::new(MemorySpend::new(seeder)), None),
        };
    let webhook = match &file.notifications.webhook {
        Some(target) => {
            let target = match VaultRef::parse(target) {
                Ok(Some(_)) => vault::resolve(target, vault_ref)
                    .map_err(|e| format!("notifications.webhook: {e}"))?
                    .expose()
                    .to_owned(),
                _ => target.clone(),
            };
            Some(Arc::new(Webhook::new(&target).map_err(|e| format!("notifications.webhook: {e}"))?))
        }
        None => None,
    };
    let notifier: Arc<dyn Notifier> = match &webhook {
        Some(w) => w.clone(),
        None => Arc::new(NoNotifier),
    };
    // Managed keys live in PostgreSQL, beside the ledger; without it, in this process (when the
    // admin API is on to issue them).
    let key_settings = KeySettings {
        refresh: duration(&file.keys.refresh, "keys.refresh")?,
        reminder_interval: duration(&file.keys.reminder_interval, "keys.reminder_interval")?,
    };
    let (managed, memory_keys, directory): (_, _, Option<Arc<dyn Directory>>) =
        match (&ledger.postgres_url(), &reader) {
            (Some(url), Some(db)) => (
                Some(Arc::new(ManagedKeys::new(
                    (*url).to_owned(),
                    db.clone(),
                    key_settings,
                    notifier.clone(),
                ))),
                None,
                Some(Arc::new(PgDirectory(db.clone()))),
            ),
            _ if file.admin.is_some() => {
                let keys = Arc::new(MemoryKeys::new(notifier.clone(), key_settings.reminder_interval));
                (None, Some(keys.clone()), Some(keys))
            }
            _ => (None, None, None),
        };
    let key_store: Option<Arc<dyn sluice_core::keys::KeyStore>> = match (&managed, &memory_keys) {
        (Some(m), _) => Some(m.clone()),
        (None, Some(m)) => Some(m.clone()),
        (None, None) => None,
    };
    let stores = Stores {
        limits: limits_store,
        spend: spend_store,
        notifier,
        keys: key_store,
        timer: Arc::new(crate::stores::TokioTimer),
    };
    let plugins = sluice_plugins::chain(
        &PluginsConfig {
            keys: file.keys.clone(),
            limits: file.limits.clone(),
            budgets: file.budgets.clone(),
            residency: file.residency.clone(),
            pii: file.pii.clone(),
            audit: file.audit.clone(),
        },
        &stores,
    )?;
    // The listener's certificate loads now, so check-config catches a bad pair.
    let certs = match &settings.tls {
        Some(tls) => {
            crate::tls::min_version(&tls.min_version)?;
            if duration(&tls.reload_interval, "server.tls.reload_interval")?.is_zero() {
                return Err("server.tls.reload_interval: must be above zero".into());
            }
            Some(crate::tls::CertStore::open(&tls.cert, &tls.key).map_err(|e| format!("server.tls: {e}"))?)
        }
        None => None,
    };
    Ok(Gateway {
        vault,
        certs,
        settings,
        router: Router { routes, elsewhere },
        pricing: Arc::new(prices.pricing),
        ledger,
        reader,
        webhook,
        managed,
        memory_keys,
        directory,
        plugins,
        metrics,
        lifecycle: Default::default(),
        redis_healthy: redis.as_ref().map(|(healthy, _)| healthy.clone()),
        redis_warmup: redis.map(|(_, warmup)| warmup),
    })
}

/// The configuration as this instance's region sees it. Without `[regions]`, all of it. With them,
/// the instance must say its region; it keeps only that region's providers (those without a region
/// of their own take the region's), the targets on them, and the models left with a target; the
/// region's state replaces `[state]`'s. Every region's provider list is checked, whichever is
/// chosen. Returns the models served only in other regions (for a clear 404).
fn for_region(mut file: ConfigFile) -> Result<(ConfigFile, std::collections::BTreeSet<String>), String> {
    let mut elsewhere = std::collections::BTreeSet::new();
    if file.regions.is_empty() {
        if let Some(r) = &file.server.region {
            return Err(format!("server.region: `{r}` is set but there is no [regions.{r}]"));
        }
        return Ok((file, elsewhere));
    }
    for (name, region) in &file.regions {
        for p in &region.providers {
            if !file.providers.contains_key(p) {
                return Err(format!("regions.{name}.providers: unknown provider `{p}`"));
            }
        }
    }
    let names = file.regions.keys().cloned().collect::<Vec<_>>().join(", ");
    let Some(name) = file.server.region.clone() else {
        return Err(format!(
            "server.region: [regions] is set, so each instance says which region it serves \
             (server.region or --region; one of {names})"
        ));
    };
    let Some(region) = file.regions.get(&name).cloned() else {
        return Err(format!("server.region: `{name}` is not a region (one of {names})"));
    };
    file.providers.retain(|p, _| region.providers.contains(p));
    for p in file.providers.values_mut() {
        p.region.get_or_insert_with(|| name.clone());
    }
    let kept = |t: &file::TargetFile| region.providers.contains(&t.provider);
    file.models.retain(|alias, model| {
        model.targets.retain_mut(|rank| match rank {
            RankFile::One(t) => kept(t),
            RankFile::Many(ts) => {
                ts.retain(|t| kept(t));
                !ts.is_empty()
            }
        });
        let served = !model.targets.is_empty();
        if !served {
            elsewhere.insert(alias.clone());
        }
        served
    });
    let state = &mut file.state;
    for (slot, value) in [
        (&mut state.redis, region.redis),
        (&mut state.redis_ca_file, region.redis_ca_file),
        (&mut state.postgres, region.postgres),
    ] {
        if value.is_some() {
            *slot = value;
        }
    }
    if let Some(prefix) = region.key_prefix {
        state.key_prefix = prefix;
    }
    log::info!("serving region `{name}`: providers {}", region.providers.join(", "));
    Ok((file, elsewhere))
}

/// `env:`, `file:` or `vault:`: a reference to a secret rather than the value.
fn is_reference(text: &str) -> bool {
    text.starts_with("env:") || text.starts_with("file:") || text.starts_with("vault:")
}

/// The admin token: a reference, or a literal demo token on a loopback listener only.
/// From Vault, it is kept current like provider keys (a rotated admin token is taken up).
fn admin_token(a: &file::AdminFile, vault: Option<&Vault>) -> Result<LiveSecret, String> {
    match (&a.token, &a.demo_token) {
        (Some(reference), None) => {
            vault::resolve_live(reference, "admin.token", vault).map_err(|e| format!("admin.token: {e}"))
        }
        (None, Some(literal)) if is_loopback(&a.listen) && !literal.is_empty() => {
            Ok(LiveSecret::new(Secret::demo(literal)))
        }
        (None, Some(_)) => Err(format!(
            "admin.demo_token: a literal token is only accepted on a loopback listener (127.0.0.1, [::1] \
             or localhost), not `{}`; use token = \"env:NAME\" or \"file:PATH\"",
            a.listen
        )),
        _ => Err("admin: set exactly one of `token` (env:NAME or file:PATH) or `demo_token`".into()),
    }
}

/// Whether a listen address only accepts connections from this machine.
pub fn is_loopback(listen: &str) -> bool {
    match listen.parse::<std::net::SocketAddr>() {
        Ok(addr) => addr.ip().is_loopback(),
        Err(_) => listen.strip_prefix("localhost:").is_some_and(|port| port.parse::<u16>().is_ok()),
    }
}

fn provider(name: &str, p: &file::ProviderFile, vault: Option<&Vault>) -> Result<Provider, String> {
    let transport = match p.kind {
        ProviderKind::Mock => {
            if p.base_url.is_some()
                || !p.endpoints.is_empty()
                || p.api_key.is_some()
                || p.ca_file.is_some()
                || p.api_version.is_some()
            {
                return Err("kind: a `mock` provider takes no base_url, endpoints, api_key or ca_file".into());
            }
            Transport::Mock(Mock { pacing: duration(&p.pacing, "pacing")? })
        }
        ProviderKind::Openai
        | ProviderKind::OpenaiCompatible
        | ProviderKind::AzureOpenai
        | ProviderKind::Anthropic
        | ProviderKind::Gemini => {
            let Some(base) = &p.base_url else {
                return Err("base_url: required for this kind of provider".into());
            };
            let mut endpoints = vec![EndpointInfo::parse(base).map_err(|e| format!("base_url: {e}"))?];
            for (i, url) in p.endpoints.iter().enumerate() {
                endpoints.push(EndpointInfo::parse(url).map_err(|e| format!("endpoints[{i}]: {e}"))?);
            }
            let api_key = match &p.api_key {
                Some(r) => Some(
                    vault::resolve_live(r, &format!("providers.{name}.api_key"), vault)
                        .map_err(|e| format!("api_key: {e}"))?,
                ),
                None if p.kind != ProviderKind::OpenaiCompatible => {
                    return Err(
                        "api_key: required for this kind of provider (e.g. \"env:OPENAI_API_KEY\")".into()
                    );
                }
                None => None,
            };
            let mut headers = Vec::new();
            for (k, v) in &p.headers {
                let lower = k.to_ascii_lowercase();
                if ["host", "content-length", "authorization", "transfer-encoding"].contains(&lower.as_str())
                {
                    return Err(format!("headers.{k}: set by the gateway, cannot be configured"));
                }
                http::HeaderName::from_bytes(k.as_bytes())
                    .map_err(|_| format!("headers.{k}: not a header name"))?;
                http::HeaderValue::from_str(v)
                    .map_err(|_| format!("headers.{k}: not a valid header value"))?;
                headers.push((lower, v.clone()));
            }
            let settings = PeerSettings {
                connect_timeout: duration(&p.connect_timeout, "connect_timeout")?,
                first_byte_timeout: duration(&p.first_byte_timeout, "first_byte_timeout")?,
                idle_timeout: duration(&p.idle_timeout, "idle_timeout")?,
            };
            if p.kind != ProviderKind::AzureOpenai && (p.api_version.is_some() || !p.deployments.is_empty()) {
                return Err("api_version: only `azure_openai` takes api_version and deployments".into());
            }
            if p.kind != ProviderKind::Anthropic
                && (p.anthropic_version.is_some() || p.default_max_tokens.is_some())
            {
                return Err(
                    "anthropic_version: only `anthropic` takes anthropic_version and default_max_tokens"
                        .into(),
                );
            }
            let dialect = match p.kind {
                ProviderKind::AzureOpenai => {
                    let Some(api_version) = p.api_version.clone() else {
                        return Err("api_version: required for `azure_openai` (e.g. \"2024-10-21\")".into());
                    };
                    Dialect::Azure { api_version, deployments: p.deployments.clone() }
                }
                ProviderKind::Anthropic => Dialect::Anthropic {
                    version: p.anthropic_version.clone().unwrap_or_else(|| "2023-06-01".to_owned()),
                    default_max_tokens: p.default_max_tokens.unwrap_or(4096).max(1),
                },
                ProviderKind::Gemini => Dialect::Gemini,
                _ => Dialect::OpenAi,
            };
            let probe = if p.health_check.enabled {
                let mut probe_headers = headers.clone();
                if let Dialect::Anthropic { version, .. } = &dialect {
                    probe_headers.push(("anthropic-version".into(), version.clone()));
                }
                let key = api_key.as_ref().map(|k| {
                    let (name, prefix) = dialect.key_header();
                    (name, prefix, k.clone())
                });
                let every = duration(&p.health_check.interval, "health_check.interval")?;
                let path = match (&p.health_check.path, &dialect) {
                    (Some(path), _) => path.clone(),
                    (None, Dialect::OpenAi | Dialect::Anthropic { .. } | Dialect::Gemini) => {
                        "/models".to_owned()
                    }
                    (None, Dialect::Azure { api_version, .. }) => {
                        format!("/openai/models?api-version={api_version}")
                    }
                };
                if !path.starts_with('/') {
                    return Err("health_check.path: must start with `/`".into());
                }
                Some(ProbeSpec { path, interval: every, headers: probe_headers, key })
            } else {
                None
            };
            let ca = match &p.ca_file {
                Some(path) => Some(load_ca(path).map_err(|e| format!("ca_file: {e}"))?),
                None => None,
            };
            Transport::Http(HttpUpstream {
                dialect,
                pool: EndpointPool::new(endpoints, settings, probe, ca.clone()),
                api_key,
                headers,
                stream_usage: p.stream_usage,
                ca,
            })
        }
    };
    Ok(Provider { name: name.to_owned(), kind: p.kind, region: p.region.clone(), transport })
}

/// Parses `250ms`, `30s`, `5m`, `1h`.
pub fn duration(text: &str, key: &str) -> Result<Duration, String> {
    sluice_core::duration::parse(text).map_err(|e| format!("{key}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(duration("250ms", "k").unwrap(), Duration::from_millis(250));
        assert_eq!(duration("30s", "k").unwrap(), Duration::from_secs(30));
        assert_eq!(duration("2m", "k").unwrap(), Duration::from_secs(120));
        assert!(duration("30", "k").unwrap_err().contains("unit"));
        assert!(duration("soon", "k").unwrap_err().starts_with("k:"));
    }

    #[test]
    fn the_embedded_default_builds() {
        let gw = build(parse(DEFAULT_TOML, "default.toml").unwrap()).unwrap();
        assert!(!gw.router.routes.is_empty());
        assert!(gw.directory.is_some() && gw.memory_keys.is_some(), "the default manages keys in memory");
        assert!(gw.settings.admin_demo_token);
    }

    #[test]
    fn regions_are_chosen_named_and_checked() {
        let base = "[providers.a]\nkind = \"mock\"\n[providers.b]\nkind = \"mock\"\n\
                    [models.m]\ntargets = [{ provider = \"a\", model = \"x\" }]\n";
        let err = |extra: &str| build(parse(&format!("{base}{extra}"), "t").unwrap()).err();
        let regions = "[regions.eu]\nproviders = [\"a\"]\n[regions.us]\nproviders = [\"b\"]\n";
        assert!(err(regions).unwrap().contains("each instance says which region it serves"));
        assert!(
            err(&format!("{regions}[server]\nregion = \"ap\"\n")).unwrap().contains("`ap` is not a region")
        );
        assert!(err("[server]\nregion = \"eu\"\n").unwrap().contains("there is no [regions.eu]"));
        let e = err("[server]\nregion = \"eu\"\n[regions.eu]\nproviders = [\"zz\"]\n").unwrap();
        assert!(e.contains("regions.eu.providers: unknown provider `zz`"), "{e}");
        let gw = build(parse(&format!("{base}{regions}[server]\nregion = \"us\"\n"), "t").unwrap()).unwrap();
        assert!(gw.router.routes.is_empty() && gw.router.elsewhere.contains("m"));
    }

    #[test]
    fn a_literal_admin_token_stays_on_loopback() {
        let admin = |listen: &str, rest: &str| {
            let text = format!("[providers.m]\nkind = \"mock\"\n[admin]\nlisten = \"{listen}\"\n{rest}");
            build(parse(&text, "t").unwrap()).err()
        };
        assert!(admin("127.0.0.1:9090", "demo_token = \"t\"").is_none());
        assert!(admin("[::1]:9090", "demo_token = \"t\"").is_none());
        assert!(admin("localhost:9090", "demo_token = \"t\"").is_none());
        let e = admin("0.0.0.0:9090", "demo_token = \"t\"").unwrap();
        assert!(e.contains("only accepted on a loopback listener"), "{e}");
        let e = admin("127.0.0.1:9090", "").unwrap();
        assert!(e.contains("exactly one of `token`"), "{e}");
        let e = admin("127.0.0.1:9090", "token = \"literal\"").unwrap();
        assert!(e.starts_with("admin.token"), "{e}");
    }

    #[test]
    fn errors_name_the_key_path() {
        let e = parse("[server]\nlisten = \"x\"\nbogus = 1\n", "t.toml").unwrap_err();
        assert!(e.contains("bogus"), "{e}");
        let text = "[providers.m]\nkind = \"mock\"\n[models.a]\ntargets = [{ provider = \"nope\", model = \"x\" }]\n";
        let e = build(parse(text, "t").unwrap()).err().unwrap();
        assert!(e.starts_with("models.a.targets[0].provider"), "{e}");
        let text = "[providers.o]\nkind = \"openai\"\nbase_url = \"https://api.openai.com/v1\"\n";
        let e = build(parse(text, "t").unwrap()).err().unwrap();
        assert!(e.starts_with("providers.o.api_key"), "{e}");
    }
}
