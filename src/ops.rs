//! The operations endpoint on `metrics_listen`: Prometheus metrics (`/metrics`, the default
//! registry in text format), liveness (`/healthz`: the process answers) and readiness
//! (`/readyz`: the ledger and the store answer; 503 with the failing part named otherwise).

use crate::ledger::Ledger;
use crate::store::Store;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Json;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;

/// A readiness probe must answer within a load balancer's timeout, whatever the backends do.
const READY_TIMEOUT: Duration = Duration::from_secs(1);

#[derive(Clone)]
pub struct Backends {
    pub ledger: Arc<dyn Ledger>,
    pub store: Arc<dyn Store>,
}

pub fn router(backends: Backends) -> axum::Router {
    axum::Router::new()
        .route("/metrics", get(metrics))
        .route(
            "/healthz",
            get(|| async { Json(json!({ "status": "ok" })) }),
        )
        .route("/readyz", get(ready))
        .with_state(backends)
}

async fn metrics() -> Response {
    let families = prometheus::gather();
    match prometheus::TextEncoder::new().encode_to_string(&families) {
        Ok(text) => ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response(),
        Err(e) => {
            tracing::error!(error = %e, "cannot encode metrics");
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }
}

async fn ready(State(backends): State<Backends>) -> Response {
    let (ledger, store) = tokio::join!(
        tokio::time::timeout(READY_TIMEOUT, backends.ledger.ping()),
        tokio::time::timeout(READY_TIMEOUT, backends.store.ping()),
    );
    let describe = |result: Result<Result<(), String>, _>| match result {
        Ok(Ok(())) => "ok".to_owned(),
        Ok(Err(e)) => e,
        Err(_) => "timed out".to_owned(),
    };
    let ledger = describe(ledger.map(|r| r.map_err(|e| e.to_string())));
    let store = describe(store.map(|r| r.map_err(|e| e.to_string())));
    let ready = ledger == "ok" && store == "ok";
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = json!({ "status": if ready { "ready" } else { "unready" }, "ledger": ledger, "store": store });
    (status, Json(body)).into_response()
}

/// The endpoint as a Pingora background service of `tollgate run`.
pub struct OpsService {
    /// `metrics_listen`, bound at start-up.
    pub listener: crate::listen::Reserved,
    pub backends: Backends,
}

#[async_trait::async_trait]
impl BackgroundService for OpsService {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let listener = match self.listener.listen().await {
            Ok(l) => l,
            Err(e) => {
                tracing::error!(listen = %self.listener.addr, error = %e, "metrics endpoint cannot listen");
                return;
            }
        };
        let app = router(self.backends.clone());
        tokio::select! {
            result = axum::serve(listener, app) => {
                if let Err(e) = result {
                    tracing::error!(error = %e, "metrics endpoint stopped");
                }
            }
            _ = shutdown.changed() => {}
        }
    }
}
