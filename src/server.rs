//! Wiring: turns a validated [`Config`] into a Pingora server running the gateway, the
//! ledger's void worker and, when configured, the demo upstream. The admin API and the
//! scheduler join here as they land.

use crate::auth::Verifier;
use crate::config::{Config, DEMO_JWT_SECRET};
use crate::demo_upstream::DemoUpstream;
use crate::ledger::{EmbeddedLedger, Ledger, RedisLedger, VoidWorker};
use crate::proxy::Gateway;
use crate::routing::Router;
use crate::tenants::TenantDirectory;
use crate::usage::TracingSink;
use pingora::proxy::http_proxy_service;
use pingora::server::configuration::{Opt, ServerConf};
use pingora::server::{RunArgs, Server};
use pingora::services::background::background_service;
use std::sync::Arc;

/// Seconds Pingora gives services to stop after the grace period.
const SHUTDOWN_TIMEOUT_SECS: u64 = 5;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{0}")]
    Config(#[from] crate::config::ConfigError),
    #[error("auth: {0}")]
    Auth(#[from] crate::auth::AuthError),
    #[error("routing: {0}")]
    Routing(String),
    #[error("ledger: {0}")]
    Ledger(#[from] crate::ledger::LedgerError),
    #[error("embedded ledger in {path}: {source}")]
    LedgerFile {
        path: String,
        source: std::io::Error,
    },
}

/// Options from the command line that Pingora itself understands.
#[derive(Debug, Default, Clone, Copy)]
pub struct RunOptions {
    /// Take over the listening sockets of a running instance (graceful upgrade).
    pub upgrade: bool,
}

/// Builds and runs the server until shutdown; returns once everything has stopped.
pub fn run(config: Config, options: RunOptions) -> Result<(), StartError> {
    warn_about_modes(&config);
    let ledger: Arc<dyn Ledger> = match &config.ledger.redis_url {
        Some(url) => Arc::new(RedisLedger::new(url, &config.ledger)?),
        None => Arc::new(
            EmbeddedLedger::open(&config.data_dir, &config.ledger).map_err(|source| {
                StartError::LedgerFile {
                    path: config.data_dir.display().to_string(),
                    source,
                }
            })?,
        ),
    };
    let router = Arc::new(Router::new(&config.services).map_err(StartError::Routing)?);
    let verifier = Verifier::new(&config.auth)?;
    let (voids, void_worker) = VoidWorker::new(Arc::clone(&ledger));
    let gateway = Gateway::new(
        router,
        verifier,
        TenantDirectory::new(&config.tenants),
        Arc::clone(&ledger),
        voids,
        Arc::new(TracingSink),
    );

    let server_conf = ServerConf {
        threads: config.worker_threads(),
        grace_period_seconds: Some(config.grace_period_secs),
        graceful_shutdown_timeout_seconds: Some(SHUTDOWN_TIMEOUT_SECS),
        upgrade_sock: config.data_dir.join("upgrade.sock").display().to_string(),
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
    if let Some(demo) = &config.demo_upstream {
        let listen = crate::config::parse_addr("demo_upstream.listen", &demo.listen)?;
        server.add_service(background_service("demo upstream", DemoUpstream { listen }));
    }
    tracing::info!(listen = %config.listen, ledger = if config.ledger.redis_url.is_some() { "redis" } else { "embedded" }, "tollgate gateway starting");
    server.run(RunArgs::default());

    // Every service has stopped: make the embedded ledger's last writes durable.
    match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt.block_on(ledger.close()),
        Err(e) => tracing::error!(error = %e, "cannot flush the ledger at exit"),
    }
    Ok(())
}

fn warn_about_modes(config: &Config) {
    if config.auth.secret == DEMO_JWT_SECRET {
        tracing::warn!("using the shipped demo JWT secret: fine for the embedded quickstart, never for production (set TOLLGATE_JWT_SECRET)");
    }
    if config.store.mongodb_uri.is_some() {
        tracing::warn!("TOLLGATE_MONGODB_URI is set, but this build has no durable store yet: usage events are logged, not stored");
    }
    if config.alerts.mqtt_url.is_some() {
        tracing::warn!("TOLLGATE_MQTT_URL is set, but this build does not publish alerts yet");
    }
}
