//! Tollgate's configuration: one YAML file plus `TOLLGATE_*` environment overrides, parsed
//! once at start into [`Config`] and checked by [`Config::validate`].
//!
//! Every key has a default, so a file holding only `services:` and `tenants:` is a whole
//! config. Unknown keys are refused (`deny_unknown_fields`) and every validation error names
//! the key at fault, so a typo fails loudly at start instead of silently at 3 a.m.

mod env;
mod service;

use crate::vocab::TenantStatus;
pub use service::{
    Credits, EndpointConfig, OnLedgerError, Overage, ServiceConfig, SettleConfig, TimeoutsConfig,
};

use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// The demo secret shipped in `conf/tollgate.yaml`. Accepted in embedded mode with a warning;
/// refused in distributed mode, where tokens cross machines.
pub const DEMO_JWT_SECRET: &str = "tollgate-demo-secret-do-not-use-in-production";

/// HMAC secrets shorter than this are refused in distributed mode (RFC 7518 §3.2 asks for a
/// key at least as long as the hash output, 256 bits for HS256).
pub const MIN_JWT_SECRET_BYTES: usize = 32;

/// The longest life `admin.token_ttl_secs` may give a token: a user's change must reach
/// every token they hold, and the gateway keeps revocations only this long (see
/// [`crate::catalog`]).
pub const MAX_TOKEN_TTL_SECS: u64 = 7 * 24 * 3600;

/// The most clock skew `auth.leeway_secs` may forgive: minutes, not the hours that would
/// stretch every token's life past its revocation window.
pub const MAX_LEEWAY_SECS: u64 = 300;

/// A configuration problem, always naming the key at fault.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("config key `{key}`: {message}")]
    Invalid { key: String, message: String },
}

impl ConfigError {
    pub fn invalid(key: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError::Invalid {
            key: key.into(),
            message: message.into(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Where the gateway accepts API traffic (`TOLLGATE_LISTEN`).
    pub listen: String,
    /// Where the admin API listens (`TOLLGATE_ADMIN_LISTEN`); used once the admin API lands.
    pub admin_listen: String,
    /// Where Prometheus metrics are served (`TOLLGATE_METRICS_LISTEN`).
    pub metrics_listen: String,
    /// Embedded ledger and store files live here (`TOLLGATE_DATA_DIR`).
    pub data_dir: PathBuf,
    /// Gateway worker threads; 0 means one per CPU core.
    pub threads: usize,
    /// Seconds SIGTERM waits for in-flight requests before the process exits.
    pub grace_period_secs: u64,
    /// Longest wait for the next bytes of a client's request body: a client that stalls
    /// longer gets `408` (its charge refunded) and loses the connection (nginx's
    /// `client_body_timeout`, same default).
    pub client_read_timeout_ms: u64,
    /// Largest JSON body (or server-sent event) a settled endpoint's cost is read from: a
    /// larger one settles at the reserve (docs/DESIGN.md §Settled prices). Copied aside as
    /// it streams to the client, never held back.
    pub settle_body_max_bytes: usize,
    /// The socket a graceful upgrade hands the listeners over (`tollgate run --upgrade`);
    /// default `<data_dir>/upgrade.sock`. Old and new process must name the same one.
    pub upgrade_sock: Option<PathBuf>,
    pub auth: AuthConfig,
    pub ledger: LedgerConfig,
    pub store: StoreConfig,
    pub usage: UsageConfig,
    /// How often the gateway compares ledger and store balances (0: never; the
    /// `tollgate reconcile` command runs the same check on demand).
    pub reconcile_interval_secs: u64,
    pub alerts: AlertsConfig,
    pub admin: AdminConfig,
    pub scheduler: SchedulerConfig,
    /// An in-process echo upstream for the quickstart; off unless configured.
    pub demo_upstream: Option<DemoUpstreamConfig>,
    pub services: Vec<ServiceConfig>,
    pub tenants: Vec<TenantConfig>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: "0.0.0.0:8080".into(),
            admin_listen: "127.0.0.1:8081".into(),
            metrics_listen: "127.0.0.1:9091".into(),
            data_dir: PathBuf::from("./data"),
            threads: 0,
            grace_period_secs: 10,
            client_read_timeout_ms: 60_000,
            settle_body_max_bytes: crate::vocab::DEFAULT_SETTLE_BODY_MAX,
            upgrade_sock: None,
            auth: AuthConfig::default(),
            ledger: LedgerConfig::default(),
            store: StoreConfig::default(),
            usage: UsageConfig::default(),
            reconcile_interval_secs: 300,
            alerts: AlertsConfig::default(),
            admin: AdminConfig::default(),
            scheduler: SchedulerConfig::default(),
            demo_upstream: None,
            services: Vec::new(),
            tenants: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum JwtAlgorithm {
    HS256,
    RS256,
    ES256,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// The one accepted algorithm: tokens signed with any other are refused.
    pub algorithm: JwtAlgorithm,
    /// Shared secret for HS256 (`TOLLGATE_JWT_SECRET`).
    pub secret: String,
    /// PEM public key for RS256/ES256.
    pub public_key_file: Option<PathBuf>,
    /// PEM private key, only for `tollgate token` with RS256/ES256.
    pub private_key_file: Option<PathBuf>,
    /// When set, tokens must carry this `iss`.
    pub issuer: Option<String>,
    /// When set, tokens must carry this `aud`.
    pub audience: Option<String>,
    /// Clock skew tolerated on `exp`/`nbf`, in seconds.
    pub leeway_secs: u64,
    /// An identity provider's JWKS document (`https://.../.well-known/jwks.json`): tokens
    /// whose header names a `kid` are verified with its keys (docs/DESIGN.md §Identity
    /// providers); tokens without one with the key above (those `/auth/login` issues).
    pub jwks_url: Option<String>,
    /// How the JWKS document is kept.
    pub jwks: JwksConfig,
    /// Which claims of a token carry its identity.
    pub claims: ClaimsConfig,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct JwksConfig {
    /// The set is fetched again once this old.
    pub refresh_secs: u64,
    /// Fetches for unknown `kid`s (and retries after a failure) at most this often.
    pub min_refetch_secs: u64,
    /// Stale-if-error: while the provider fails, the last good set serves this long after
    /// its fetch; then tokens with a `kid` are refused until a fetch works.
    pub max_stale_secs: u64,
}

impl Default for JwksConfig {
    fn default() -> Self {
        JwksConfig {
            refresh_secs: 300,
            min_refetch_secs: 10,
            max_stale_secs: 24 * 3600,
        }
    }
}

/// The names of the claims a token's identity is read from (identity providers rarely
/// call the tenant `tenant_id`: `org_id`, `https://example.com/tenant`, ...).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClaimsConfig {
    pub tenant_id: String,
    /// `user` or `admin`; a token without it is a `user`'s.
    pub role: String,
    pub sub: String,
}

impl Default for ClaimsConfig {
    fn default() -> Self {
        ClaimsConfig {
            tenant_id: "tenant_id".into(),
            role: "role".into(),
            sub: "sub".into(),
        }
    }
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            algorithm: JwtAlgorithm::HS256,
            secret: DEMO_JWT_SECRET.into(),
            public_key_file: None,
            private_key_file: None,
            issuer: None,
            audience: None,
            leeway_secs: 30,
            jwks_url: None,
            jwks: JwksConfig::default(),
            claims: ClaimsConfig::default(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LedgerConfig {
    /// `redis://host:port/db`: one Redis (`TOLLGATE_REDIS_URL`). Unset, with no
    /// `redis_cluster_nodes` either, means the embedded ledger.
    pub redis_url: Option<String>,
    /// Seed nodes of a Redis Cluster (`redis://host:port`, any few of its nodes;
    /// `TOLLGATE_REDIS_CLUSTER_NODES`, comma-separated): selects the cluster-aware client,
    /// which follows redirections and topology changes. Exclusive with `redis_url`.
    pub redis_cluster_nodes: Vec<String>,
    /// A charge that takes longer than this fails closed (503): the proxy must never hang
    /// on its ledger.
    pub timeout_ms: u64,
    /// How long an `Idempotency-Key` binds its request and keeps its response (24 h, as
    /// Stripe). Costs ledger memory: see `idempotency_max_response_bytes`.
    pub idempotency_ttl_secs: u64,
    /// Largest response (headers and body) kept with a key for replays; a larger one is
    /// recorded as executed without its response, and a retry gets `409` (never a second
    /// execution). Kept responses live in the ledger (Redis, or the embedded ledger's
    /// memory and journal) for `idempotency_ttl_secs`.
    pub idempotency_max_response_bytes: usize,
    /// How long the ledger keeps a charge's record and a void's tombstone: the longest a
    /// ledger outage may last with every void, refund and deferred charge still settled
    /// exactly once. Work still owed a margin before its record expires is given up and
    /// reported (see `ledger::retry::deadline`). Costs Redis memory: ~165 bytes × charges
    /// per second × this (measured; ~50 MB per 1,000 calls/s at the default).
    pub charge_ttl_secs: u64,
    /// Leased credits (Redis only; docs/DESIGN.md §Leased credits).
    pub lease: LeaseConfig,
}

/// `ledger.lease`: each replica charges busy tenants from slices of their balance held in
/// memory, reporting to Redis every 100 ms instead of once per call.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LeaseConfig {
    pub enabled: bool,
    /// The largest slice a replica takes of one tenant's balance (it aims at a second of
    /// the tenant's spending there).
    pub max_slice: i64,
    /// A lease not reported for this long expires: Redis takes back the slice but its
    /// margin, and a dead replica's credits are stranded no longer than this.
    pub ttl_ms: u64,
    /// A slice unused for this long goes back.
    pub idle_ms: u64,
}

impl Default for LeaseConfig {
    fn default() -> Self {
        LeaseConfig {
            enabled: false,
            max_slice: 10_000,
            ttl_ms: 3_000,
            idle_ms: 1_000,
        }
    }
}

impl LedgerConfig {
    /// True when the ledger is Redis, one node or a cluster.
    pub fn uses_redis(&self) -> bool {
        self.redis_url.is_some() || !self.redis_cluster_nodes.is_empty()
    }
}

impl Default for LedgerConfig {
    fn default() -> Self {
        LedgerConfig {
            redis_url: None,
            redis_cluster_nodes: Vec::new(),
            timeout_ms: 250,
            idempotency_ttl_secs: 24 * 3600,
            idempotency_max_response_bytes: crate::idempotency::DEFAULT_MAX_KEPT_BYTES,
            charge_ttl_secs: 300,
            lease: LeaseConfig::default(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StoreConfig {
    /// MongoDB URI (`TOLLGATE_MONGODB_URI`); unset means the embedded SQLite store.
    pub mongodb_uri: Option<String>,
    /// Database name (`TOLLGATE_MONGODB_DB`).
    pub mongodb_db: String,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            mongodb_uri: None,
            mongodb_db: "tollgate".into(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct UsageConfig {
    /// Events per `insert_many`.
    pub batch_size: usize,
    /// Longest an event waits in memory before its batch is written.
    pub flush_interval_ms: u64,
    /// Events held in memory; past it, events go straight to the disk journal.
    pub queue_capacity: usize,
    /// The disk journal's bound; past it events are dropped, counted and logged.
    pub journal_max_mb: u64,
}

impl Default for UsageConfig {
    fn default() -> Self {
        UsageConfig {
            batch_size: 500,
            flush_interval_ms: 200,
            queue_capacity: 100_000,
            journal_max_mb: 1024,
        }
    }
}

/// MQTT alerts (docs/DESIGN.md §Alerts).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AlertsConfig {
    /// `mqtt[s]://[user[:password]@]host[:port]` (`TOLLGATE_MQTT_URL`); unset: the
    /// in-process broker.
    pub mqtt_url: Option<String>,
    /// Where the in-process broker listens (`TOLLGATE_MQTT_EMBEDDED_LISTEN`).
    pub embedded_listen: String,
    /// Publish `tenant/{id}/credit-success` for charges.
    pub credit_success: bool,
    /// The fraction of charges that get a credit-success notice (1 = every one).
    pub credit_success_sample: f64,
    /// Alerts waiting for the broker, per kind; past it they are counted and dropped.
    pub queue_capacity: usize,
}

impl Default for AlertsConfig {
    fn default() -> Self {
        AlertsConfig {
            mqtt_url: None,
            embedded_listen: "127.0.0.1:11883".into(),
            credit_success: true,
            credit_success_sample: 1.0,
            queue_capacity: 10_000,
        }
    }
}

/// The control plane's periodic work (docs/DESIGN.md §Scheduler).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SchedulerConfig {
    /// Run the scheduler in this process (`tollgate run`, `tollgate admin`).
    pub enabled: bool,
    /// Length of a usage-summary window and the run interval
    /// (`TOLLGATE_SUMMARY_INTERVAL_SECS`).
    pub interval_secs: u64,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        SchedulerConfig {
            enabled: true,
            interval_secs: 300,
        }
    }
}

/// The admin API (control plane).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdminConfig {
    /// Whether `POST /auth/register` is open (self-service sign-up).
    pub registration: bool,
    /// Credits a self-registered tenant starts with (a free trial).
    pub signup_credits: i64,
    /// Lifetime of the tokens `POST /auth/login` issues.
    pub token_ttl_secs: u64,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            registration: true,
            signup_credits: 100,
            token_ttl_secs: 3600,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DemoUpstreamConfig {
    pub listen: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantConfig {
    pub id: String,
    #[serde(default)]
    pub name: String,
    /// Starting balance, applied only when the ledger has none for this tenant.
    #[serde(default)]
    pub credits: i64,
    #[serde(default = "active")]
    pub status: TenantStatus,
    /// The balance at or below which a `low` warning is announced (default 100), set when
    /// the tenant is first stored.
    #[serde(default)]
    pub low_credit_threshold: Option<i64>,
}

fn active() -> TenantStatus {
    TenantStatus::Active
}

impl Config {
    /// Reads `path` and applies the `TOLLGATE_*` environment; nothing is validated yet:
    /// `tollgate::app::load_config` reads and validates (the config's own rules here, the
    /// services' in [`crate::routing`], the alerts' in [`crate::alerts`]).
    pub fn read(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let mut config = Config::from_yaml(&text).map_err(|message| ConfigError::Parse {
            path: path.to_owned(),
            message,
        })?;
        config.apply_env(|name| std::env::var(name).ok())?;
        Ok(config)
    }

    /// Parses YAML without environment overrides or validation. An empty document is the
    /// default config.
    pub fn from_yaml(text: &str) -> Result<Config, String> {
        if text.trim().is_empty() {
            return Ok(Config::default());
        }
        serde_yaml::from_str(text).map_err(|e| e.to_string())
    }

    /// True when any part runs against an external server: tokens then cross machines and
    /// the demo secret is refused.
    pub fn is_distributed(&self) -> bool {
        self.ledger.uses_redis()
            || self.store.mongodb_uri.is_some()
            || self.alerts.mqtt_url.is_some()
    }

    /// Worker threads after resolving `0` to the number of cores.
    pub fn worker_threads(&self) -> usize {
        if self.threads > 0 {
            return self.threads;
        }
        std::thread::available_parallelism().map_or(1, |n| n.get())
    }

    /// The checks whose meaning lives here (addresses, limits, tenants, auth); the
    /// composition root adds the services' and the alerts' (`tollgate::app::validate`).
    pub fn validate(&self) -> Result<(), ConfigError> {
        parse_addr("listen", &self.listen)?;
        parse_addr("admin_listen", &self.admin_listen)?;
        parse_addr("metrics_listen", &self.metrics_listen)?;
        if let Some(demo) = &self.demo_upstream {
            parse_addr("demo_upstream.listen", &demo.listen)?;
        }
        self.validate_auth()?;
        if self.scheduler.interval_secs == 0 {
            return Err(ConfigError::invalid(
                "scheduler.interval_secs",
                "must be above 0",
            ));
        }
        if !(1024..=64 * 1024 * 1024).contains(&self.settle_body_max_bytes) {
            return Err(ConfigError::invalid(
                "settle_body_max_bytes",
                "1024 to 67108864 (64 MiB)",
            ));
        }
        if self.client_read_timeout_ms == 0 {
            return Err(ConfigError::invalid(
                "client_read_timeout_ms",
                "must be above 0",
            ));
        }
        if self.ledger.timeout_ms == 0 {
            return Err(ConfigError::invalid("ledger.timeout_ms", "must be above 0"));
        }
        for (key, value) in [
            ("usage.batch_size", self.usage.batch_size as u64),
            ("usage.flush_interval_ms", self.usage.flush_interval_ms),
            ("usage.queue_capacity", self.usage.queue_capacity as u64),
            ("usage.journal_max_mb", self.usage.journal_max_mb),
        ] {
            if value == 0 {
                return Err(ConfigError::invalid(key, "must be above 0"));
            }
        }
        if self.auth.leeway_secs > MAX_LEEWAY_SECS {
            return Err(ConfigError::invalid(
                "auth.leeway_secs",
                format!("at most {MAX_LEEWAY_SECS}"),
            ));
        }
        if !(1..=MAX_TOKEN_TTL_SECS).contains(&self.admin.token_ttl_secs) {
            return Err(ConfigError::invalid(
                "admin.token_ttl_secs",
                format!("1 to {MAX_TOKEN_TTL_SECS} (7 days)"),
            ));
        }
        let lease = &self.ledger.lease;
        if lease.enabled && !self.ledger.uses_redis() {
            return Err(ConfigError::invalid(
                "ledger.lease.enabled",
                "leasing is for a Redis ledger (the embedded one is in-process already)",
            ));
        }
        if lease.max_slice < 1 {
            return Err(ConfigError::invalid(
                "ledger.lease.max_slice",
                "must be above 0",
            ));
        }
        // A lease lives several reports, and a slice is idle well before its lease ends.
        if !(1_000..=60_000).contains(&lease.ttl_ms) {
            return Err(ConfigError::invalid(
                "ledger.lease.ttl_ms",
                "1000 to 60000 (ms)",
            ));
        }
        if lease.idle_ms < 100 || lease.idle_ms >= lease.ttl_ms {
            return Err(ConfigError::invalid(
                "ledger.lease.idle_ms",
                "at least 100 and below ledger.lease.ttl_ms",
            ));
        }
        if self.ledger.charge_ttl_secs == 0 {
            return Err(ConfigError::invalid(
                "ledger.charge_ttl_secs",
                "must be above 0",
            ));
        }
        if self.ledger.idempotency_ttl_secs == 0 {
            return Err(ConfigError::invalid(
                "ledger.idempotency_ttl_secs",
                "must be above 0",
            ));
        }
        if self.ledger.idempotency_max_response_bytes > crate::idempotency::MAX_KEPT_BYTES {
            return Err(ConfigError::invalid(
                "ledger.idempotency_max_response_bytes",
                format!("at most {} (16 MiB)", crate::idempotency::MAX_KEPT_BYTES),
            ));
        }
        if let Some(url) = &self.ledger.redis_url {
            redis::Client::open(url.as_str()).map_err(|e| {
                ConfigError::invalid("ledger.redis_url", format!("not a Redis URL: {e}"))
            })?;
            if !self.ledger.redis_cluster_nodes.is_empty() {
                return Err(ConfigError::invalid(
                    "ledger.redis_cluster_nodes",
                    "set either redis_url (one Redis) or redis_cluster_nodes (a cluster), not both",
                ));
            }
        }
        for (i, url) in self.ledger.redis_cluster_nodes.iter().enumerate() {
            redis::Client::open(url.as_str()).map_err(|e| {
                ConfigError::invalid(
                    format!("ledger.redis_cluster_nodes[{i}]"),
                    format!("not a Redis URL: {e}"),
                )
            })?;
        }
        let mut ids = std::collections::HashSet::new();
        for (i, tenant) in self.tenants.iter().enumerate() {
            if !crate::vocab::is_valid_tenant_id(&tenant.id) {
                return Err(ConfigError::invalid(
                    format!("tenants[{i}].id"),
                    "1 to 64 characters of A-Z a-z 0-9 _ . -",
                ));
            }
            if tenant.credits < 0 {
                return Err(ConfigError::invalid(
                    format!("tenants[{i}].credits"),
                    "must not be negative",
                ));
            }
            if !ids.insert(tenant.id.as_str()) {
                return Err(ConfigError::invalid(
                    format!("tenants[{i}].id"),
                    format!("duplicate tenant id `{}`", tenant.id),
                ));
            }
        }
        Ok(())
    }

    fn validate_auth(&self) -> Result<(), ConfigError> {
        if let Some(url) = &self.auth.jwks_url {
            let parsed = url.parse::<http::Uri>().ok();
            let web = parsed.as_ref().is_some_and(|u| {
                matches!(u.scheme_str(), Some("http" | "https")) && u.host().is_some()
            });
            if !web {
                return Err(ConfigError::invalid(
                    "auth.jwks_url",
                    "an http:// or https:// URL",
                ));
            }
        }
        if self.auth.jwks_url.is_some() && self.auth.audience.is_none() {
            // An identity provider signs tokens for every application it serves: without
            // an audience, one issued for another of them would pass here.
            return Err(ConfigError::invalid(
                "auth.audience",
                "required with auth.jwks_url: the audience the provider's tokens for this API carry",
            ));
        }
        let jwks = &self.auth.jwks;
        if jwks.refresh_secs == 0 {
            return Err(ConfigError::invalid(
                "auth.jwks.refresh_secs",
                "must be above 0",
            ));
        }
        if jwks.min_refetch_secs == 0 {
            return Err(ConfigError::invalid(
                "auth.jwks.min_refetch_secs",
                "must be above 0",
            ));
        }
        if jwks.max_stale_secs < jwks.refresh_secs {
            return Err(ConfigError::invalid(
                "auth.jwks.max_stale_secs",
                "at least auth.jwks.refresh_secs",
            ));
        }
        for (key, name) in [
            ("auth.claims.tenant_id", &self.auth.claims.tenant_id),
            ("auth.claims.role", &self.auth.claims.role),
            ("auth.claims.sub", &self.auth.claims.sub),
        ] {
            if name.is_empty() || name.len() > 256 {
                return Err(ConfigError::invalid(key, "a claim name of 1 to 256 bytes"));
            }
        }
        match self.auth.algorithm {
            JwtAlgorithm::HS256 => {
                if self.is_distributed() && self.auth.secret == DEMO_JWT_SECRET {
                    return Err(ConfigError::invalid(
                        "auth.secret",
                        "the shipped demo secret is refused in distributed mode; \
                         set TOLLGATE_JWT_SECRET to a random string of 32+ bytes",
                    ));
                }
                if self.is_distributed() && self.auth.secret.len() < MIN_JWT_SECRET_BYTES {
                    return Err(ConfigError::invalid(
                        "auth.secret",
                        format!(
                            "must be at least {MIN_JWT_SECRET_BYTES} bytes in distributed mode"
                        ),
                    ));
                }
                if self.auth.secret.is_empty() {
                    return Err(ConfigError::invalid("auth.secret", "must not be empty"));
                }
            }
            JwtAlgorithm::RS256 | JwtAlgorithm::ES256 => {
                if self.auth.public_key_file.is_none() {
                    return Err(ConfigError::invalid(
                        "auth.public_key_file",
                        "required for RS256 and ES256",
                    ));
                }
            }
        }
        Ok(())
    }
}

pub fn parse_addr(key: &str, value: &str) -> Result<SocketAddr, ConfigError> {
    value
        .parse()
        .map_err(|_| ConfigError::invalid(key, format!("`{value}` is not an IP:port address")))
}
