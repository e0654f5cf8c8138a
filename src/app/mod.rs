//! The composition root: the one place that turns a config file into the parts every
//! subcommand works with (docs/DESIGN.md §Layering). [`load_config`] reads and validates,
//! each rule checked by the module that owns its meaning; [`open`] opens the store, the
//! ledger and their seeds from the config. `tollgate run`, `tollgate admin`, `reconcile` and
//! `create-admin` all start here; [`crate::server`] then runs what needs running.
//!
//! One shutdown mechanism: every long-running part is a Pingora background service and
//! stops when its [`ShutdownWatch`] turns true (Pingora turns it on SIGTERM / SIGINT, or
//! when a graceful upgrade hands over).

use crate::config::{Config, ConfigError};
use crate::ledger::lease::LeaseSettings;
use crate::ledger::{Coordination, EmbeddedLedger, LeasedLedger, Ledger, RedisLedger};
use crate::store::{Documents, Kind, MongoStore, NewTenant, SqliteStore, Store, TenantPatch};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

pub use pingora::server::ShutdownWatch;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{0}")]
    Config(#[from] ConfigError),
    #[error("auth: {0}")]
    Auth(#[from] crate::auth::AuthError),
    #[error("ledger: {0}")]
    Ledger(#[from] crate::ledger::LedgerError),
    #[error("store: {0}")]
    Store(#[from] crate::store::StoreError),
    #[error("{what} in {path}: {source}")]
    DataDir {
        what: &'static str,
        path: String,
        source: std::io::Error,
    },
    #[error("cannot catch the shutdown signals: {0}")]
    Signals(std::io::Error),
    #[error("{what} cannot listen on {addr}: {source}")]
    Listen {
        what: &'static str,
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
}

impl StartError {
    /// Names a failure to use the data dir for `what`.
    pub fn data_dir(config: &Config, what: &'static str) -> impl FnOnce(std::io::Error) -> Self {
        let path = config.data_dir.display().to_string();
        move |source| StartError::DataDir { what, path, source }
    }
}

/// Reads `path`, applies the `TOLLGATE_*` environment and validates the result.
pub fn load_config(path: &Path) -> Result<Config, ConfigError> {
    let config = Config::read(path)?;
    validate(&config)?;
    Ok(config)
}

/// Checks every value once, so the request path can trust the config: the config's own
/// rules, then the services' ([`crate::routing`]) and the alerts' ([`crate::alerts`]).
pub fn validate(config: &Config) -> Result<(), ConfigError> {
    config.validate()?;
    crate::routing::check_services(&config.services)?;
    crate::alerts::check_config(&config.alerts)
}

/// How a subcommand uses the backends it opens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// The process serves (`run`, `admin`): it owns the embedded ledger.
    Serve,
    /// Beside, or instead of, a running gateway (`reconcile`, `create-admin`): the embedded
    /// ledger, owned by that gateway, is only read.
    Offline,
}

/// The backends, opened once: tenants, balances and usage ([`Store`]); the control plane's
/// documents ([`Documents`]); the balances ([`Ledger`]); what replicas agree on
/// ([`Coordination`]). Each pair is one connection seen through two traits.
#[derive(Clone)]
pub struct Parts {
    pub store: Arc<dyn Store>,
    pub docs: Arc<dyn Documents>,
    pub ledger: Arc<dyn Ledger>,
    pub coordination: Arc<dyn Coordination>,
    /// The leased slices in front of a Redis ledger (`ledger.lease.enabled`), which a
    /// gateway keeps reporting (the same object as `ledger`).
    pub leases: Option<Arc<LeasedLedger>>,
}

/// Opens the configured store and ledger, and seeds the store from the config.
pub async fn open(config: &Config, access: Access) -> Result<Parts, StartError> {
    let (store, docs) = open_store(config).await?;
    let mut leases = None;
    let (ledger, coordination): (Arc<dyn Ledger>, Arc<dyn Coordination>) =
        match (RedisLedger::from_config(&config.ledger)?, access) {
            (Some(redis), Access::Serve) if config.ledger.lease.enabled => {
                let redis = Arc::new(redis);
                let lease = &config.ledger.lease;
                let settings = LeaseSettings {
                    max_slice: lease.max_slice,
                    ttl: Duration::from_millis(lease.ttl_ms),
                    idle: Duration::from_millis(lease.idle_ms),
                };
                let leased = Arc::new(LeasedLedger::new(redis.clone(), settings));
                leases = Some(leased.clone());
                (leased, redis)
            }
            (Some(redis), _) => {
                let redis = Arc::new(redis);
                (redis.clone(), redis)
            }
            (None, Access::Serve) => {
                let embedded = Arc::new(
                    EmbeddedLedger::open(&config.data_dir, &config.ledger)
                        .map_err(StartError::data_dir(config, "embedded ledger"))?,
                );
                (embedded.clone(), embedded)
            }
            (None, Access::Offline) => {
                let embedded = Arc::new(
                    EmbeddedLedger::read_only(&config.data_dir, &config.ledger)
                        .map_err(StartError::data_dir(config, "embedded ledger"))?,
                );
                (embedded.clone(), embedded)
            }
        };
    Ok(Parts {
        store,
        docs,
        ledger,
        coordination,
        leases,
    })
}

/// Opens the configured store and prepares it: indexes, the config's tenants, and the
/// config's services (added when absent: once stored, the admin API owns them).
async fn open_store(config: &Config) -> Result<(Arc<dyn Store>, Arc<dyn Documents>), StartError> {
    let (store, docs): (Arc<dyn Store>, Arc<dyn Documents>) = match &config.store.mongodb_uri {
        Some(uri) => {
            let mongo = Arc::new(MongoStore::connect(uri, &config.store.mongodb_db).await?);
            (mongo.clone(), mongo)
        }
        None => {
            let sqlite = Arc::new(SqliteStore::open(&config.data_dir)?);
            (sqlite.clone(), sqlite)
        }
    };
    store.migrate().await?;
    for tenant in &config.tenants {
        let new = NewTenant {
            id: &tenant.id,
            name: &tenant.name,
            status: tenant.status.clone(),
            initial_credits: tenant.credits,
            actor: "config",
        };
        let created = store.ensure_tenant(&new).await?;
        if let (true, Some(threshold)) = (created, tenant.low_credit_threshold) {
            let patch = TenantPatch {
                low_credit_threshold: Some(threshold),
                ..TenantPatch::default()
            };
            store.update_tenant(&tenant.id, &patch).await?;
        }
    }
    for service in &config.services {
        if docs
            .insert_doc(Kind::Services, &crate::catalog::service_to_doc(service))
            .await?
        {
            tracing::info!(service = %service.name, "service from the config file stored");
        }
    }
    Ok((store, docs))
}

/// The runtime the store's client lives on for the whole process: the MongoDB driver keeps
/// its connection monitors on the runtime that created the client, and Pingora's runtimes
/// only exist once the server runs.
pub fn store_runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("tollgate-store")
        .enable_all()
        .build()
}

#[cfg(test)]
mod tests;
