//! Tollgate's control plane: the admin REST API of docs/ADMIN-API.md, the billing it runs
//! ([`billing`]: credit changes, subscriptions, refills) and the [`scheduler`].
//!
//! One `axum` router, merged from each resource module's `router()`, over the same store,
//! ledger and token verifier as the gateway.
//! `tollgate run` serves it beside the gateway (sharing the gateway's [`Handles`], so a
//! change reaches the in-process catalog at once); `tollgate admin` serves it alone against
//! the distributed backends, and the gateways pick changes up through the catalog version.
//! Every handler documents itself for the OpenAPI document at `/openapi.json`.

mod auth;
pub mod billing;
mod console;
mod credits;
mod extract;
mod keys;
mod limits;
mod me;
mod openapi;
mod ops;
mod plans;
mod preview;
mod problem;
mod records;
mod reports;
pub mod scheduler;
mod services;
mod session;
mod subscriptions;
mod tenants;
mod time;
mod usage;
mod users;

pub use auth::{create_admin, hash_password};
pub use problem::{ApiResult, Problem};

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::{background_service, BackgroundService};
use std::sync::Arc;
use tollgate::app::StartError;
use tollgate::auth::Verifier;
use tollgate::catalog::Catalog;
use tollgate::config::{AdminConfig, AuthConfig};
use tollgate::hydration::Hydrator;
use tollgate::ledger::{Coordination, Ledger};
use tollgate::server::Handles;
use tollgate::store::{Documents, Store};
use utoipa::openapi::OpenApi;
use utoipa_axum::router::OpenApiRouter;

/// What every handler reaches: cheap to clone (all shared).
#[derive(Clone)]
pub struct AdminState {
    pub store: Arc<dyn Store>,
    pub docs: Arc<dyn Documents>,
    pub ledger: Arc<dyn Ledger>,
    pub coordination: Arc<dyn Coordination>,
    pub hydrator: Arc<Hydrator>,
    /// The gateway's catalog when it runs in this process (changes apply at once).
    pub catalog: Option<Arc<Catalog>>,
    pub verifier: Arc<Verifier>,
    pub auth: Arc<AuthConfig>,
    pub settings: Arc<AdminConfig>,
    pub throttle: Arc<auth::Throttle>,
}

impl AdminState {
    pub fn new(
        handles: &Handles,
        auth: &AuthConfig,
        settings: &AdminConfig,
    ) -> Result<AdminState, tollgate::auth::AuthError> {
        Ok(AdminState {
            store: Arc::clone(&handles.parts.store),
            docs: Arc::clone(&handles.parts.docs),
            ledger: Arc::clone(&handles.parts.ledger),
            coordination: Arc::clone(&handles.parts.coordination),
            hydrator: Arc::clone(&handles.hydrator),
            catalog: handles.catalog.clone(),
            verifier: Arc::new(Verifier::new(auth)?),
            auth: Arc::new(auth.clone()),
            settings: Arc::new(settings.clone()),
            throttle: Arc::new(auth::Throttle::new(Arc::clone(&handles.parts.coordination))),
        })
    }

    /// Announces a change of services or tenant status to every gateway replica.
    pub async fn catalog_changed(&self) {
        if let Err(e) = self.coordination.bump_catalog_version().await {
            tracing::warn!(error = %e, "catalog version not bumped: other replicas see the change at their next successful poll");
        }
        if let Some(catalog) = &self.catalog {
            catalog.changed();
        }
    }
}

/// The control plane's services (the admin API on `admin_listen`, the scheduler when
/// enabled, the recovery of credit changes), added to the server that `tollgate run` (beside
/// the gateway) or `tollgate admin` (alone) runs; in a graceful `upgrade`, the admin port is
/// taken once the replaced process lets it go.
pub fn control_plane(
    config: &tollgate::config::Config,
    upgrade: bool,
) -> impl FnOnce(&mut pingora::server::Server, &Handles) -> Result<(), StartError> {
    let auth = config.auth.clone();
    let settings = config.admin.clone();
    let schedule = config
        .scheduler
        .enabled
        .then(|| std::time::Duration::from_secs(config.scheduler.interval_secs));
    let listen = tollgate::config::parse_addr("admin_listen", &config.admin_listen);
    move |server, handles| {
        let state = AdminState::new(handles, &auth, &settings)?;
        if let Some(interval) = schedule {
            let scheduler = scheduler::Scheduler::new(state.clone(), interval);
            server.add_service(background_service(
                "scheduler",
                scheduler::SchedulerService(scheduler),
            ));
        }
        let recovery = billing::Recovery(state.clone());
        server.add_service(background_service("credit recovery", recovery));
        let listener = tollgate::server::reserve("the admin API (admin_listen)", listen?, upgrade)?;
        server.add_service(background_service(
            "admin api",
            AdminService { listener, state },
        ));
        Ok(())
    }
}

/// The router and its OpenAPI document, built from the same route list.
pub fn router(state: AdminState) -> (axum::Router, OpenApi) {
    let (router, mut api) = OpenApiRouter::new()
        .merge(auth::router())
        .merge(me::router())
        .merge(keys::router())
        .merge(tenants::router())
        .merge(credits::router())
        .merge(users::router())
        .merge(plans::router())
        .merge(subscriptions::router())
        .merge(services::router())
        .merge(preview::router())
        .merge(reports::router())
        .merge(usage::router())
        .merge(ops::router())
        .with_state(state.clone())
        .split_for_parts();
    openapi::finish(&mut api);
    let document = api.clone();
    let router = router
        .merge(console::router().with_state(state))
        .route(
            "/openapi.json",
            axum::routing::get(move || async move { axum::Json(document) }),
        )
        .fallback(|| async { Problem::new(404, "not-found", "Not found", "no such route") })
        .layer(axum::extract::DefaultBodyLimit::max(
            extract::MAX_BODY_BYTES,
        ))
        .layer(axum::middleware::from_fn(count));
    (router, api)
}

/// Counts every answer in `tollgate_admin_requests_total`.
async fn count(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let route = request
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let method = request.method().clone();
    let response = next.run(request).await;
    tollgate::metrics::ADMIN_REQUESTS
        .with_label_values(&[route.as_str(), method.as_str(), response.status().as_str()])
        .inc();
    response
}

/// Serves the admin API on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: AdminState,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let (router, _) = router(state);
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown)
        .await
}

/// The admin API as a Pingora background service of `tollgate run`.
pub struct AdminService {
    /// `admin_listen`, bound at start-up.
    pub listener: tollgate::listen::Reserved,
    pub state: AdminState,
}

#[async_trait]
impl BackgroundService for AdminService {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let listener = match self.listener.listen().await {
            Ok(listener) => listener,
            Err(e) => {
                tracing::error!(listen = %self.listener.addr, error = %e, "admin API cannot listen");
                return;
            }
        };
        tracing::info!(listen = %self.listener.addr, "admin API listening");
        let stop = async move {
            let _ = shutdown.changed().await;
        };
        if let Err(e) = serve(listener, self.state.clone(), stop).await {
            tracing::error!(error = %e, "admin API stopped");
        }
    }
}
