//! Wiring: turns a validated [`Config`] into a Pingora server running the gateway, the
//! ledger's void worker, the usage flusher, the reconciliation check and, when configured,
//! the demo upstream. The control plane (admin API, scheduler) lives in another crate and
//! joins through the hook of [`run`], with the [`Handles`] it shares with the gateway.

use crate::alerts::{AlertPublisher, AlertSink, Alerts, MqttTarget};
use crate::auth::Verifier;
use crate::catalog::{service_to_doc, Catalog, CatalogWatcher};
use crate::config::{Config, DEMO_JWT_SECRET};
use crate::deferred::{DeferredWorker, WorkerParts};
use crate::demo_upstream::DemoUpstream;
use crate::hydration::{Hydrator, PendingPublisher};
use crate::ledger::{EmbeddedLedger, Ledger, RedisLedger, VoidWorker, WorkLog};
use crate::proxy::{Backends, Gateway};
use crate::reconcile::Reconciler;
use crate::store::{Kind, MongoStore, NewTenant, SqliteStore, Store, TenantPatch};
use crate::usage::{UsagePipeline, UsageSettings, UsageSink};
use pingora::proxy::http_proxy_service;
use pingora::server::configuration::{Opt, ServerConf};
use pingora::server::{RunArgs, Server};
use pingora::services::background::background_service;
use std::sync::Arc;
use std::time::Duration;

/// Seconds Pingora gives services to stop after the grace period.
const SHUTDOWN_TIMEOUT_SECS: u64 = 5;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{0}")]
    Config(#[from] crate::config::ConfigError),
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
    #[error("{what} cannot listen on {addr}: {source}")]
    Listen {
        what: &'static str,
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
}

/// Options from the command line that Pingora itself understands.
#[derive(Debug, Default, Clone, Copy)]
pub struct RunOptions {
    /// Take over the listening sockets of a running instance (graceful upgrade).
    pub upgrade: bool,
}

fn data_dir_error(
    config: &Config,
    what: &'static str,
) -> impl FnOnce(std::io::Error) -> StartError {
    let path = config.data_dir.display().to_string();
    move |source| StartError::DataDir { what, path, source }
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

/// What the gateway shares with the control plane running in the same process.
#[derive(Clone)]
pub struct Handles {
    pub store: Arc<dyn Store>,
    pub ledger: Arc<dyn Ledger>,
    pub hydrator: Arc<Hydrator>,
    pub catalog: Arc<Catalog>,
}

/// Opens the configured store and prepares it: indexes, the config's tenants, and the
/// config's services (added when absent: once stored, the admin API owns them).
pub async fn open_store(config: &Config) -> Result<Arc<dyn Store>, StartError> {
    let store: Arc<dyn Store> = match &config.store.mongodb_uri {
        Some(uri) => Arc::new(MongoStore::connect(uri, &config.store.mongodb_db).await?),
        None => Arc::new(SqliteStore::open(&config.data_dir)?),
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
        if store
            .insert_doc(Kind::Services, &service_to_doc(service))
            .await?
        {
            tracing::info!(service = %service.name, "service from the config file stored");
        }
    }
    Ok(store)
}

/// Opens the configured ledger.
pub fn open_ledger(config: &Config) -> Result<Arc<dyn Ledger>, StartError> {
    Ok(match &config.ledger.redis_url {
        Some(url) => Arc::new(RedisLedger::new(url, &config.ledger)?),
        None => Arc::new(
            EmbeddedLedger::open(&config.data_dir, &config.ledger)
                .map_err(data_dir_error(config, "embedded ledger"))?,
        ),
    })
}

/// The alert queue and its MQTT publisher; starts the in-process broker when no broker URL
/// is configured.
pub fn open_alerts(
    config: &Config,
    store: Arc<dyn Store>,
) -> Result<(Arc<dyn AlertSink>, AlertPublisher), StartError> {
    let alerts = &config.alerts;
    let target = match &alerts.mqtt_url {
        Some(url) => MqttTarget::parse(url)
            .map_err(|message| crate::config::ConfigError::invalid("alerts.mqtt_url", message))?,
        None => {
            let listen =
                crate::config::parse_addr("alerts.embedded_listen", &alerts.embedded_listen)?;
            crate::alerts::broker::start(listen).map_err(|source| StartError::Listen {
                what: "the embedded MQTT broker (alerts.embedded_listen)",
                addr: listen,
                source,
            })?;
            MqttTarget {
                host: listen.ip().to_string(),
                port: listen.port(),
                username: None,
                password: None,
                tls: false,
            }
        }
    };
    let sample = if alerts.credit_success {
        alerts.credit_success_sample
    } else {
        0.0
    };
    let (sink, publisher) = Alerts::new(alerts.queue_capacity, sample, target, store);
    Ok((Arc::new(sink), publisher))
}

/// Binds a side listener now, or says which and where it could not (see [`crate::listen`]);
/// in a graceful `upgrade`, once the process being replaced lets it go.
pub fn reserve(
    what: &'static str,
    addr: std::net::SocketAddr,
    upgrade: bool,
) -> Result<crate::listen::Reserved, StartError> {
    if upgrade {
        return Ok(crate::listen::when_free(addr));
    }
    crate::listen::reserve(addr).map_err(|source| StartError::Listen { what, addr, source })
}

/// Builds and runs the server until shutdown; returns once everything has stopped.
/// `control_plane` adds the services that share the gateway's [`Handles`].
pub fn run(
    config: Config,
    options: RunOptions,
    control_plane: impl FnOnce(&mut Server, &Handles) -> Result<(), StartError>,
) -> Result<(), StartError> {
    warn_about_modes(&config);
    crate::metrics::register_all();
    let store_rt = store_runtime().map_err(data_dir_error(&config, "store runtime"))?;
    let store = store_rt.block_on(open_store(&config))?;
    let ledger = open_ledger(&config)?;
    let settings = UsageSettings {
        batch_size: config.usage.batch_size,
        flush_interval: Duration::from_millis(config.usage.flush_interval_ms),
        queue_capacity: config.usage.queue_capacity,
        journal_max_bytes: config.usage.journal_max_mb * 1024 * 1024,
    };
    let (pipeline, flusher) = UsagePipeline::open(&config.data_dir, Arc::clone(&store), settings)
        .map_err(data_dir_error(&config, "usage journal"))?;
    let usage: Arc<dyn UsageSink> = Arc::new(pipeline);
    let (stop_flusher, stop) = tokio::sync::watch::channel(false);
    let flushing = store_rt.spawn(async move { flusher.run(stop).await });
    let catalog = Arc::new(store_rt.block_on(Catalog::load(&*store))?);
    let verifier = Verifier::new(&config.auth)?;
    // Voids and deferred charges a previous run left open are finished first.
    let (worklog, mut open_work) =
        WorkLog::open(&config.data_dir).map_err(data_dir_error(&config, "ledger work journal"))?;
    let worklog = Arc::new(worklog);
    let record_life = Duration::from_secs(config.ledger.charge_ttl_secs);
    let restored_voids = VoidWorker::restore(&mut open_work);
    let restored_deferred = DeferredWorker::restore(&mut open_work);
    let (voids, void_worker) = VoidWorker::new(
        Arc::clone(&ledger),
        Arc::clone(&worklog),
        record_life,
        restored_voids,
    );
    let hydrator = Arc::new(Hydrator::new(
        Arc::clone(&ledger),
        Arc::clone(&store),
        Arc::clone(&usage),
        Duration::from_millis(config.ledger.timeout_ms),
    ));
    let (alerts, publisher) = open_alerts(&config, Arc::clone(&store))?;
    let parts = WorkerParts {
        ledger: Arc::clone(&ledger),
        hydrator: Arc::clone(&hydrator),
        usage: Arc::clone(&usage),
        alerts: Arc::clone(&alerts),
        worklog,
        record_life,
    };
    let (deferred, deferred_worker) = DeferredWorker::new(parts, restored_deferred);
    let backends = Backends {
        ledger: Arc::clone(&ledger),
        voids,
        deferred,
        usage: Arc::clone(&usage),
        hydrator: Arc::clone(&hydrator),
        alerts,
    };
    let gateway = Gateway::new(Arc::clone(&catalog), verifier, backends)
        .with_client_read_timeout(Duration::from_millis(config.client_read_timeout_ms))
        .with_max_kept_response(config.ledger.idempotency_max_response_bytes);
    let handles = Handles {
        store: Arc::clone(&store),
        ledger: Arc::clone(&ledger),
        hydrator,
        catalog: Arc::clone(&catalog),
    };

    let server_conf = ServerConf {
        threads: config.worker_threads(),
        grace_period_seconds: Some(config.grace_period_secs),
        graceful_shutdown_timeout_seconds: Some(SHUTDOWN_TIMEOUT_SECS),
        upgrade_sock: config
            .upgrade_sock
            .clone()
            .unwrap_or_else(|| config.data_dir.join("upgrade.sock"))
            .display()
            .to_string(),
        ..ServerConf::default()
    };
    let opt = Opt {
        upgrade: options.upgrade,
        ..Opt::default()
    };
    let mut server = Server::new_with_opt_and_conf(opt, server_conf);
    server.bootstrap();

    let mut proxy = http_proxy_service(&server.configuration, gateway);
    proxy.add_tcp(&config.listen);
    server.add_service(proxy);
    server.add_service(background_service("ledger voids", void_worker));
    server.add_service(background_service("deferred charges", deferred_worker));
    server.add_service(background_service("alerts", publisher));
    let watcher = CatalogWatcher {
        catalog,
        ledger: Arc::clone(&ledger),
        store: Arc::clone(&store),
        interval: crate::catalog::POLL_INTERVAL,
    };
    server.add_service(background_service("catalog", watcher));
    let publisher = PendingPublisher::new(Arc::clone(&ledger), Arc::clone(&usage));
    let last_publish = publisher.clone();
    server.add_service(background_service("pending credits", publisher));
    control_plane(&mut server, &handles)?;
    if config.reconcile_interval_secs > 0 {
        let reconciler = Reconciler {
            store: Arc::clone(&store),
            ledger: Arc::clone(&ledger),
            usage,
            interval: Duration::from_secs(config.reconcile_interval_secs),
            last: Default::default(),
        };
        server.add_service(background_service("reconciliation", reconciler));
    }
    let ops = crate::ops::OpsService {
        listener: reserve(
            "the metrics endpoint (metrics_listen)",
            crate::config::parse_addr("metrics_listen", &config.metrics_listen)?,
            options.upgrade,
        )?,
        backends: crate::ops::Backends {
            ledger: Arc::clone(&ledger),
            store: Arc::clone(&store),
        },
    };
    server.add_service(background_service("metrics", ops));
    if let Some(demo) = &config.demo_upstream {
        let listen = crate::config::parse_addr("demo_upstream.listen", &demo.listen)?;
        let listener = reserve(
            "the demo upstream (demo_upstream.listen)",
            listen,
            options.upgrade,
        )?;
        server.add_service(background_service(
            "demo upstream",
            DemoUpstream { listener },
        ));
    }
    tracing::info!(
        listen = %config.listen,
        ledger = if config.ledger.redis_url.is_some() { "redis" } else { "embedded" },
        store = if config.store.mongodb_uri.is_some() { "mongodb" } else { "embedded" },
        "tollgate gateway starting"
    );
    server.run(RunArgs::default());

    // Every service has stopped, so no event can come any more: drain the usage queue,
    // then make the embedded ledger's last writes durable.
    let _ = stop_flusher.send(true);
    if let Err(e) = store_rt.block_on(flushing) {
        tracing::error!(error = %e, "usage flusher failed at shutdown");
    }
    // What the drain settled, published (through a fresh connection), so no replica
    // hydrating later subtracts credits the store already has.
    if let Some(url) = &config.ledger.redis_url {
        match RedisLedger::new(url, &config.ledger) {
            Ok(fresh) => store_rt.block_on(last_publish.publish_through(&fresh)),
            Err(e) => tracing::warn!(error = %e, "cannot publish the last pending credits"),
        }
    }
    store_rt.block_on(ledger.close());
    Ok(())
}

fn warn_about_modes(config: &Config) {
    if config.auth.secret == DEMO_JWT_SECRET {
        tracing::warn!("using the shipped demo JWT secret: fine for the embedded quickstart, never for production (set TOLLGATE_JWT_SECRET)");
    }
}
