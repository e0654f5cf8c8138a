//! Running: turns a validated [`Config`] and the parts [`crate::app::open`] opened into a
//! Pingora server running the gateway, the ledger's void worker, the usage flusher, the
//! reconciliation check and, when configured, the demo upstream ([`run`]); or the control
//! plane alone ([`run_control_plane`]). The control plane (admin API, scheduler) lives in
//! another crate and joins through the hook of both, with the [`Handles`] it shares.

use crate::alerts::{AlertPublisher, AlertSink, Alerts, MqttTarget};
use crate::app::{Parts, StartError};
use crate::auth::Verifier;
use crate::catalog::{Catalog, CatalogWatcher};
use crate::config::{Config, DEMO_JWT_SECRET};
use crate::deferred::settles::SettleWorker;
use crate::deferred::{DeferredWorker, WorkerParts};
use crate::demo_upstream::DemoUpstream;
use crate::hydration::{Hydrator, PendingPublisher};
use crate::ledger::{RedisLedger, VoidWorker, WorkLog};
use crate::listen::EarlySignals;
use crate::proxy::{Backends, Gateway};
use crate::reconcile::Reconciler;
use crate::store::Documents;
use crate::usage::{NoUsage, UsagePipeline, UsageSettings, UsageSink};
use pingora::proxy::http_proxy_service;
use pingora::server::configuration::{Opt, ServerConf};
use pingora::server::{RunArgs, Server};
use pingora::services::background::background_service;
use std::sync::Arc;
use std::time::Duration;

/// Seconds Pingora gives services to stop after the grace period.
const SHUTDOWN_TIMEOUT_SECS: u64 = 5;

/// Options from the command line that Pingora itself understands.
#[derive(Debug, Default, Clone, Copy)]
pub struct RunOptions {
    /// Take over the listening sockets of a running instance (graceful upgrade).
    pub upgrade: bool,
}

/// What the gateway shares with the control plane running in the same process.
#[derive(Clone)]
pub struct Handles {
    pub parts: Parts,
    pub hydrator: Arc<Hydrator>,
    /// The gateway's catalog, when a gateway runs in this process: a change made by the
    /// control plane is applied at once (other replicas follow the catalog version).
    pub catalog: Option<Arc<Catalog>>,
}

/// The alert queue and its MQTT publisher; starts the in-process broker when no broker URL
/// is configured.
pub fn open_alerts(
    config: &Config,
    docs: Arc<dyn Documents>,
) -> Result<(Arc<dyn AlertSink>, AlertPublisher), StartError> {
    let alerts = &config.alerts;
    let (target, local) = match &alerts.mqtt_url {
        Some(url) => (
            MqttTarget::parse(url).map_err(|message| {
                crate::config::ConfigError::invalid("alerts.mqtt_url", message)
            })?,
            None,
        ),
        None => {
            let listen =
                crate::config::parse_addr("alerts.embedded_listen", &alerts.embedded_listen)?;
            let local =
                crate::alerts::broker::start(listen).map_err(|source| StartError::Listen {
                    what: "the embedded MQTT broker (alerts.embedded_listen)",
                    addr: listen,
                    source,
                })?;
            let target = MqttTarget {
                host: listen.ip().to_string(),
                port: listen.port(),
                username: None,
                password: None,
                tls: false,
            };
            (target, Some(local))
        }
    };
    let sample = if alerts.credit_success {
        alerts.credit_success_sample
    } else {
        0.0
    };
    let (sink, publisher) = Alerts::new(alerts.queue_capacity, sample, target, local, docs);
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

/// A Pingora server configured from `config`, bootstrapped (in an `upgrade`, holding the
/// sockets the running instance hands over).
fn pingora_server(config: &Config, upgrade: bool) -> Server {
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
        upgrade,
        ..Opt::default()
    };
    let mut server = Server::new_with_opt_and_conf(opt, server_conf);
    server.bootstrap();
    server
}

/// Builds and runs the gateway until shutdown; returns once everything has stopped.
/// `control_plane` adds the services that share the gateway's [`Handles`].
pub fn run(
    config: Config,
    options: RunOptions,
    control_plane: impl FnOnce(&mut Server, &Handles) -> Result<(), StartError>,
) -> Result<(), StartError> {
    let (store_rt, parts, run_args) = open_for_serving(&config)?;
    let settings = UsageSettings {
        batch_size: config.usage.batch_size,
        flush_interval: Duration::from_millis(config.usage.flush_interval_ms),
        queue_capacity: config.usage.queue_capacity,
        journal_max_bytes: config.usage.journal_max_mb * 1024 * 1024,
    };
    let (pipeline, flusher) =
        UsagePipeline::open(&config.data_dir, Arc::clone(&parts.store), settings)
            .map_err(StartError::data_dir(&config, "usage journal"))?;
    let usage: Arc<dyn UsageSink> = Arc::new(pipeline);
    // The flusher outlives the services (it drains the queue once they stopped): it gets
    // its own watch of the same kind.
    let (stop_flusher, stop) = tokio::sync::watch::channel(false);
    let flushing = store_rt.spawn(async move { flusher.run(stop).await });
    let catalog = Arc::new(store_rt.block_on(Catalog::load(&*parts.store, &*parts.docs))?);
    let verifier = Verifier::new(&config.auth)?;
    // Voids and deferred charges a previous run left open are finished first.
    let (worklog, mut open_work) = WorkLog::open(&config.data_dir)
        .map_err(StartError::data_dir(&config, "ledger work journal"))?;
    let worklog = Arc::new(worklog);
    let record_life = Duration::from_secs(config.ledger.charge_ttl_secs);
    let restored_voids = VoidWorker::restore(&mut open_work);
    let restored_deferred = DeferredWorker::restore(&mut open_work);
    let restored_settles = SettleWorker::restore(&mut open_work);
    let ledger = &parts.ledger;
    let (voids, void_worker) = VoidWorker::new(
        Arc::clone(ledger),
        Arc::clone(&worklog),
        record_life,
        restored_voids,
    );
    let hydrator = Arc::new(Hydrator::new(
        Arc::clone(ledger),
        Arc::clone(&parts.store),
        Arc::clone(&usage),
        Duration::from_millis(config.ledger.timeout_ms),
    ));
    let (alerts, publisher) = open_alerts(&config, Arc::clone(&parts.docs))?;
    let workers = WorkerParts {
        ledger: Arc::clone(ledger),
        hydrator: Arc::clone(&hydrator),
        usage: Arc::clone(&usage),
        alerts: Arc::clone(&alerts),
        worklog: Arc::clone(&worklog),
        record_life,
    };
    let (settles, settle_worker) = SettleWorker::new(
        Arc::clone(ledger),
        Arc::clone(&usage),
        worklog,
        record_life,
        restored_settles,
    );
    let (deferred, deferred_worker) = DeferredWorker::new(workers, restored_deferred);
    let backends = Backends {
        ledger: Arc::clone(ledger),
        voids,
        deferred,
        settles,
        usage: Arc::clone(&usage),
        hydrator: Arc::clone(&hydrator),
        alerts,
    };
    let gateway = Gateway::new(Arc::clone(&catalog), verifier, backends)
        .with_client_read_timeout(Duration::from_millis(config.client_read_timeout_ms))
        .with_max_kept_response(config.ledger.idempotency_max_response_bytes)
        .with_settle_body_max(config.settle_body_max_bytes);
    let handles = Handles {
        parts: parts.clone(),
        hydrator,
        catalog: Some(Arc::clone(&catalog)),
    };

    let mut server = pingora_server(&config, options.upgrade);
    let mut proxy = http_proxy_service(&server.configuration, gateway);
    proxy.add_tcp(&config.listen);
    server.add_service(proxy);
    server.add_service(background_service("ledger voids", void_worker));
    server.add_service(background_service("deferred charges", deferred_worker));
    server.add_service(background_service("settlements", settle_worker));
    server.add_service(background_service("alerts", publisher));
    let watcher = CatalogWatcher {
        catalog,
        coordination: Arc::clone(&parts.coordination),
        store: Arc::clone(&parts.store),
        docs: Arc::clone(&parts.docs),
        interval: crate::catalog::POLL_INTERVAL,
    };
    server.add_service(background_service("catalog", watcher));
    let publisher = PendingPublisher::new(Arc::clone(ledger), Arc::clone(&usage));
    let last_publish = publisher.clone();
    server.add_service(background_service("pending credits", publisher));
    if let Some(leases) = &parts.leases {
        let keeper = crate::ledger::lease::LeaseKeeper(Arc::clone(leases));
        server.add_service(background_service("leased credits", keeper));
    }
    control_plane(&mut server, &handles)?;
    if config.reconcile_interval_secs > 0 {
        let reconciler = Reconciler {
            store: Arc::clone(&parts.store),
            ledger: Arc::clone(ledger),
            usage,
            interval: Duration::from_secs(config.reconcile_interval_secs),
            last: Default::default(),
        };
        server.add_service(background_service("reconciliation", reconciler));
    }
    add_metrics(&mut server, &config, &parts, options.upgrade)?;
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
        ledger = if config.ledger.redis_url.is_some() {
            "redis"
        } else if config.ledger.uses_redis() {
            "redis cluster"
        } else {
            "embedded"
        },
        store = if config.store.mongodb_uri.is_some() { "mongodb" } else { "embedded" },
        "tollgate gateway starting"
    );
    server.run(run_args);

    // Every service has stopped, so no event can come any more: drain the usage queue,
    // then make the embedded ledger's last writes durable.
    let _ = stop_flusher.send(true);
    if let Err(e) = store_rt.block_on(flushing) {
        tracing::error!(error = %e, "usage flusher failed at shutdown");
    }
    // What the drain settled, published (through a fresh connection), so no replica
    // hydrating later subtracts credits the store already has.
    // And the slices still held go back (their keeper returned them unless a report was in
    // flight as it stopped).
    match RedisLedger::from_config(&config.ledger) {
        Ok(Some(fresh)) => store_rt.block_on(async {
            if let Some(leases) = &parts.leases {
                let held = leases.sync_through(&fresh, true).await;
                if held > 0 {
                    tracing::warn!(
                        held,
                        "slices not returned at shutdown: they come back when their leases expire"
                    );
                }
            }
            last_publish.publish_through(&fresh).await;
        }),
        Ok(None) => {}
        Err(e) => tracing::warn!(error = %e, "cannot publish the last pending credits"),
    }
    store_rt.block_on(parts.ledger.close());
    Ok(())
}

/// Runs the control plane alone (`tollgate admin`), against the configured backends, until
/// shutdown: the same server and shutdown as [`run`], without a gateway. No catalog here
/// to nudge: the replicas follow the catalog version.
pub fn run_control_plane(
    config: Config,
    control_plane: impl FnOnce(&mut Server, &Handles) -> Result<(), StartError>,
) -> Result<(), StartError> {
    let (store_rt, parts, run_args) = open_for_serving(&config)?;
    let hydrator = Arc::new(Hydrator::new(
        Arc::clone(&parts.ledger),
        Arc::clone(&parts.store),
        Arc::new(NoUsage),
        Duration::from_millis(config.ledger.timeout_ms),
    ));
    let handles = Handles {
        parts: parts.clone(),
        hydrator,
        catalog: None,
    };
    let mut server = pingora_server(&config, false);
    control_plane(&mut server, &handles)?;
    tracing::info!("tollgate control plane starting (no gateway in this process)");
    server.run(run_args);
    store_rt.block_on(parts.ledger.close());
    Ok(())
}

/// What both servers do first: warn about unsafe modes, register the metrics, and open the
/// backends on the runtime that keeps serving the store.
/// And catches the shutdown signals from now on, before anything listens.
fn open_for_serving(
    config: &Config,
) -> Result<(tokio::runtime::Runtime, Parts, RunArgs), StartError> {
    warn_about_modes(config);
    crate::metrics::register_all();
    let store_rt =
        crate::app::store_runtime().map_err(StartError::data_dir(config, "store runtime"))?;
    let signals = EarlySignals::register(&store_rt).map_err(StartError::Signals)?;
    let run_args = RunArgs {
        shutdown_signal: Box::new(signals),
    };
    let parts = store_rt.block_on(crate::app::open(config, crate::app::Access::Serve))?;
    Ok((store_rt, parts, run_args))
}

/// The metrics and health endpoint (`metrics_listen`).
fn add_metrics(
    server: &mut Server,
    config: &Config,
    parts: &Parts,
    upgrade: bool,
) -> Result<(), StartError> {
    let ops = crate::ops::OpsService {
        listener: reserve(
            "the metrics endpoint (metrics_listen)",
            crate::config::parse_addr("metrics_listen", &config.metrics_listen)?,
            upgrade,
        )?,
        backends: crate::ops::Backends {
            ledger: Arc::clone(&parts.ledger),
            store: Arc::clone(&parts.store),
        },
    };
    server.add_service(background_service("metrics", ops));
    Ok(())
}

fn warn_about_modes(config: &Config) {
    if config.auth.secret == DEMO_JWT_SECRET {
        tracing::warn!("using the shipped demo JWT secret: fine for the embedded quickstart, never for production (set TOLLGATE_JWT_SECRET)");
    }
}
