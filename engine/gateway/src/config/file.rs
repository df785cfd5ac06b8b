//! The configuration file's shape: one TOML document, every table `deny_unknown_fields`.
//!
//! These types only describe the file. [`super::load`] checks them and turns them into runtime
//! types (resolved secrets, parsed durations, compiled routes); `conf/example.toml` documents every key.

use std::collections::BTreeMap;

use serde::Deserialize;
use sluice_plugins::budgets::BudgetsConfig;
use sluice_plugins::keys::KeysConfig;
use sluice_plugins::limits::LimitsConfig;
use sluice_plugins::pii::PiiConfig;
use sluice_plugins::residency::ResidencyConfig;

use super::pricing::PricingFile;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    #[serde(default)]
    pub server: ServerFile,
    #[serde(default)]
    pub routing: RoutingFile,
    /// Where shared state lives; without it, in this process only.
    #[serde(default)]
    pub state: StateFile,
    #[serde(default)]
    pub providers: BTreeMap<String, ProviderFile>,
    #[serde(default)]
    pub models: BTreeMap<String, ModelFile>,
    /// Plugin `keys`: gateway keys declared in this file.
    #[serde(default)]
    pub keys: KeysConfig,
    /// Plugin `limits`: requests and tokens per minute per org, team and app (off when absent).
    pub limits: Option<LimitsConfig>,
    /// The price table every request's cost is computed with.
    #[serde(default)]
    pub pricing: PricingFile,
    /// Plugin `pii`: personal data and secrets, blocked or redacted (always on).
    #[serde(default)]
    pub pii: PiiConfig,
    /// Plugin `residency`: which regions and target tags requests may be served by.
    #[serde(default)]
    pub residency: ResidencyConfig,
    /// Plugin `budgets`: daily and monthly spending budgets per team and key (off when absent).
    pub budgets: Option<BudgetsConfig>,
    /// Where notices (budget warnings) go.
    #[serde(default)]
    pub notifications: NotificationsFile,
    /// The admin API's own listener (off when absent).
    pub admin: Option<AdminFile>,
    /// The cost-record pipeline (queue, batches, spool).
    #[serde(default)]
    pub records: RecordsFile,
    /// The audit trail (with `[state] postgres`).
    #[serde(default)]
    pub audit: AuditFile,
    /// HashiCorp Vault, for `vault:MOUNT/PATH#FIELD` secret references.
    pub vault: Option<VaultFile>,
    /// Regions run instances of their own, each with its provider set and its state.
    #[serde(default)]
    pub regions: BTreeMap<String, RegionFile>,
}

/// One region: which providers its instances may use, and where their state lives (each field
/// replaces `[state]`'s for the region's instances).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegionFile {
    pub providers: Vec<String>,
    pub redis: Option<String>,
    pub redis_ca_file: Option<String>,
    pub postgres: Option<String>,
    pub key_prefix: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VaultFile {
    /// `https://vault.internal:8200`.
    pub address: String,
    /// Token auth: a reference (`env:VAULT_TOKEN`, `file:PATH`) to the token.
    pub token: Option<String>,
    /// AppRole auth instead of a token.
    pub approle: Option<AppRoleFile>,
    /// Vault Enterprise namespace (`X-Vault-Namespace`).
    pub namespace: Option<String>,
    /// PEM file of CA certificates for Vault's TLS certificate (default: the system's roots).
    pub ca_file: Option<String>,
    /// How often provider keys are read again.
    #[serde(default = "default_vault_refresh")]
    pub refresh: String,
    #[serde(default = "default_vault_timeout")]
    pub timeout: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppRoleFile {
    /// References (`env:NAME`, `file:PATH`) to the role id and the secret id.
    pub role_id: String,
    pub secret_id: String,
    /// Where the AppRole auth method is mounted.
    #[serde(default = "default_approle_mount")]
    pub mount: String,
}

fn default_vault_refresh() -> String {
    "5m".into()
}

fn default_vault_timeout() -> String {
    "5s".into()
}

fn default_approle_mount() -> String {
    "approle".into()
}

pub use sluice_plugins::audit::AuditConfig as AuditFile;

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NotificationsFile {
    /// A Slack-compatible incoming webhook (`https://hooks.slack.com/...`), or a reference to one
    /// (`env:NAME`, `file:PATH`). Without it, notices are only logged.
    pub webhook: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminFile {
    /// Keep it off the public interface, e.g. `127.0.0.1:9090`.
    pub listen: String,
    /// `env:NAME` or `file:PATH`: the bearer token every admin call must present.
    pub token: Option<String>,
    /// A literal token instead, for local demos such as the embedded default: accepted only when
    /// `listen` is a loopback address.
    pub demo_token: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecordsFile {
    /// Where records wait while PostgreSQL is down (created at start; must be writable).
    #[serde(default = "default_spool_dir")]
    pub spool_dir: String,
    /// Records the in-process queue holds before spilling to the spool.
    #[serde(default = "default_records_queue")]
    pub queue: usize,
    /// Records per INSERT.
    #[serde(default = "default_records_batch")]
    pub batch: usize,
    /// How long the writer waits to fill a batch (fewer, larger INSERTs under load).
    #[serde(default = "default_records_flush")]
    pub flush_interval: String,
    /// How often a lost PostgreSQL connection is retried.
    #[serde(default = "default_records_retry")]
    pub retry_interval: String,
    /// Without PostgreSQL: how many of the latest records are kept in memory.
    #[serde(default = "default_memory_records")]
    pub memory_records: usize,
}

impl Default for RecordsFile {
    fn default() -> Self {
        Self {
            spool_dir: default_spool_dir(),
            queue: default_records_queue(),
            batch: default_records_batch(),
            flush_interval: default_records_flush(),
            retry_interval: default_records_retry(),
            memory_records: default_memory_records(),
        }
    }
}

fn default_spool_dir() -> String {
    "sluice-spool".into()
}
fn default_records_queue() -> usize {
    10_000
}
fn default_records_batch() -> usize {
    500
}
fn default_records_flush() -> String {
    "100ms".into()
}
fn default_records_retry() -> String {
    "2s".into()
}
fn default_memory_records() -> usize {
    10_000
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerFile {
    #[serde(default = "default_listen")]
    pub listen: String,
    /// Worker threads (one single-threaded runtime each); 0 = one per core.
    #[serde(default)]
    pub threads: usize,
    #[serde(default = "default_max_body")]
    pub max_body_bytes: usize,
    /// How long SIGTERM lets in-flight requests and streams finish.
    #[serde(default = "default_drain")]
    pub shutdown_grace: String,
    pub tls: Option<TlsFile>,
    /// The region this instance serves (a key of `[regions]`; `sluice --region` overrides).
    pub region: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StateFile {
    /// `redis://host:port[/db]` (or `rediss://` for TLS), or a reference `env:NAME` / `file:PATH`
    /// when it carries a password. Limits are shared by every instance using the same Redis.
    pub redis: Option<String>,
    /// PEM file of the CA that signed the Redis server's certificate (`rediss://` only; default:
    /// the system's roots).
    pub redis_ca_file: Option<String>,
    /// `postgres://user@host:port/db` (or a reference `env:NAME` / `file:PATH`): the cost ledger.
    /// Without it, records are kept in memory only.
    pub postgres: Option<String>,
    /// Prefix of every Redis key Sluice writes.
    #[serde(default = "default_key_prefix")]
    pub key_prefix: String,
}

fn default_key_prefix() -> String {
    "sluice:".into()
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFile {
    pub listen: String,
    /// PEM certificate chain, leaf first.
    pub cert: String,
    pub key: String,
    /// The oldest protocol accepted: `"1.3"` (default) or `"1.2"`.
    #[serde(default = "default_tls_min_version")]
    pub min_version: String,
    /// How often the certificate and key files are checked for a renewal (reloaded without a
    /// restart when either changed).
    #[serde(default = "default_tls_reload")]
    pub reload_interval: String,
}

fn default_tls_min_version() -> String {
    "1.3".into()
}

fn default_tls_reload() -> String {
    "30s".into()
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoutingFile {
    /// Upstream attempts per request, fallbacks included.
    #[serde(default = "default_max_attempts")]
    pub max_attempts: u32,
    /// Consecutive failures that open a target's circuit.
    #[serde(default = "default_failure_threshold")]
    pub failure_threshold: u32,
    /// How long an open circuit stays open before one probe request is let through.
    #[serde(default = "default_cooldown")]
    pub cooldown: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProviderKind {
    Openai,
    OpenaiCompatible,
    AzureOpenai,
    Anthropic,
    Gemini,
    Mock,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderFile {
    pub kind: ProviderKind,
    /// Base URL up to and including the API version, e.g. `https://api.openai.com/v1`.
    pub base_url: Option<String>,
    /// More base URLs of the same provider, balanced with `base_url` and health-checked.
    #[serde(default)]
    pub endpoints: Vec<String>,
    /// `env:NAME` or `file:PATH`.
    pub api_key: Option<String>,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    pub region: Option<String>,
    /// Tags of every target of this provider, for residency rules (e.g. `baa`).
    #[serde(default)]
    pub tags: Vec<String>,
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout: String,
    #[serde(default = "default_first_byte_timeout")]
    pub first_byte_timeout: String,
    #[serde(default = "default_idle_timeout")]
    pub idle_timeout: String,
    /// Ask the upstream for a usage chunk on every stream (`stream_options.include_usage`).
    #[serde(default = "default_true")]
    pub stream_usage: bool,
    /// `azure_openai` only: the `api-version` query parameter, e.g. `2024-10-21`.
    pub api_version: Option<String>,
    /// `azure_openai` only: deployment name per upstream model name (default: the model name).
    #[serde(default)]
    pub deployments: BTreeMap<String, String>,
    /// `anthropic` only: the `anthropic-version` header (default `2023-06-01`).
    pub anthropic_version: Option<String>,
    /// `anthropic` only: `max_tokens` when the client sets none (Anthropic requires it).
    pub default_max_tokens: Option<u64>,
    /// PEM file of CA certificates to verify this provider's TLS certificate with (default: the
    /// system's roots).
    pub ca_file: Option<String>,
    #[serde(default)]
    pub health_check: HealthCheckFile,
    /// `mock` only: delay between streamed chunks.
    #[serde(default = "default_mock_pacing")]
    pub pacing: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthCheckFile {
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Path below `base_url` probed with GET (default: the provider's models endpoint, `/models`,
    /// or `/openai/models?api-version=...` for Azure).
    pub path: Option<String>,
    #[serde(default = "default_probe_interval")]
    pub interval: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelFile {
    /// The fallback chain: each entry is a target, or a list of targets sharing one rank (chosen
    /// by weight). Entries are tried in order.
    pub targets: Vec<RankFile>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum RankFile {
    One(TargetFile),
    Many(Vec<TargetFile>),
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TargetFile {
    pub provider: String,
    /// The model name the provider knows.
    pub model: String,
    #[serde(default = "default_weight")]
    pub weight: u32,
    /// Overrides the provider's region.
    pub region: Option<String>,
    /// Tags added to the provider's for this target.
    #[serde(default)]
    pub tags: Vec<String>,
}

impl Default for ServerFile {
    fn default() -> Self {
        Self {
            listen: default_listen(),
            threads: 0,
            max_body_bytes: default_max_body(),
            shutdown_grace: default_drain(),
            tls: None,
            region: None,
        }
    }
}

impl Default for RoutingFile {
    fn default() -> Self {
        Self {
            max_attempts: default_max_attempts(),
            failure_threshold: default_failure_threshold(),
            cooldown: default_cooldown(),
        }
    }
}

impl Default for HealthCheckFile {
    fn default() -> Self {
        Self { enabled: true, path: None, interval: default_probe_interval() }
    }
}

fn default_listen() -> String {
    "0.0.0.0:8080".into()
}
fn default_max_body() -> usize {
    32 * 1024 * 1024
}
fn default_drain() -> String {
    "10s".into()
}
fn default_max_attempts() -> u32 {
    3
}
fn default_failure_threshold() -> u32 {
    3
}
fn default_cooldown() -> String {
    "30s".into()
}
fn default_connect_timeout() -> String {
    "2s".into()
}
fn default_first_byte_timeout() -> String {
    "60s".into()
}
fn default_idle_timeout() -> String {
    "60s".into()
}
fn default_probe_interval() -> String {
    "15s".into()
}
fn default_mock_pacing() -> String {
    "20ms".into()
}
fn default_weight() -> u32 {
    1
}
fn default_true() -> bool {
    true
}
