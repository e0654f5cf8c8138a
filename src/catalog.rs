//! What the gateway routes and admits, kept current without restart: the services with
//! their priced endpoints (the [`Router`]), the plans' prices ([`PlanPrices`]), the
//! tenants' status and plan ([`TenantDirectory`]) and
//! the users whose earlier tokens are void ([`Revocations`]: disabled, demoted or moved
//! within the longest token life), and the API keys the gateway accepts ([`ApiKeys`]).
//!
//! The store is the source. A change made through the admin API bumps a version in the
//! ledger (a Redis key shared by every replica, or a counter in the embedded ledger); each
//! replica's [`CatalogWatcher`] polls it and reloads from the store when it moves, so a
//! change reaches every replica within one poll interval plus a reload. The request path
//! reads the current catalog through [`ArcSwap`]: no lock, no allocation.

use crate::auth::keys::{ApiKeys, KeyRecord};
use crate::config::ServiceConfig;
use crate::ledger::Coordination;
use crate::pricing::PlanPrices;
use crate::routing::Router;
use crate::store::{Doc, Documents, Kind, Store, StoreError};
use crate::tenants::TenantDirectory;
use arc_swap::{ArcSwap, Guard};
use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;

/// How far back user changes still void tokens: the longest token life, plus a day for
/// clocks and for tokens minted by hand (`tollgate token --ttl`).
const REVOCATION_HORIZON_SECS: u64 = crate::config::MAX_TOKEN_TTL_SECS + 24 * 3600;

/// How often each replica reloads the catalog whatever the version says: a change whose
/// version bump was lost (Redis down at that moment) still arrives, a minute late.
const FULL_RELOAD_INTERVAL: Duration = Duration::from_secs(60);

/// How often each replica asks whether the catalog changed (docs/ADMIN-API.md allows 2 s in all).
pub const POLL_INTERVAL: Duration = Duration::from_millis(500);

/// User id → unix ms of the change: tokens issued before it are void.
pub type Revocations = HashMap<String, u64>;

pub struct Catalog {
    router: ArcSwap<Router>,
    tenants: ArcSwap<TenantDirectory>,
    prices: ArcSwap<PlanPrices>,
    revoked: ArcSwap<Revocations>,
    keys: ArcSwap<ApiKeys>,
    /// Wakes the watcher at once after a change made in this process.
    changed: Notify,
}

impl Catalog {
    /// Loads services, plans and users from the documents, tenants from the store.
    pub async fn load(store: &dyn Store, docs: &dyn Documents) -> Result<Catalog, StoreError> {
        let read = read(store, docs).await?;
        Ok(Catalog {
            router: ArcSwap::from_pointee(read.router),
            tenants: ArcSwap::from_pointee(read.tenants),
            prices: ArcSwap::from_pointee(read.prices),
            revoked: ArcSwap::from_pointee(read.revoked),
            keys: ArcSwap::from_pointee(read.keys),
            changed: Notify::new(),
        })
    }

    /// A catalog that never changes (tests, benches).
    pub fn fixed(router: Router, tenants: TenantDirectory) -> Catalog {
        Catalog {
            router: ArcSwap::from_pointee(router),
            tenants: ArcSwap::from_pointee(tenants),
            prices: ArcSwap::from_pointee(PlanPrices::default()),
            revoked: ArcSwap::from_pointee(Revocations::new()),
            keys: ArcSwap::from_pointee(ApiKeys::default()),
            changed: Notify::new(),
        }
    }

    pub fn router(&self) -> Guard<Arc<Router>> {
        self.router.load()
    }

    pub fn tenants(&self) -> Guard<Arc<TenantDirectory>> {
        self.tenants.load()
    }

    pub fn prices(&self) -> Guard<Arc<PlanPrices>> {
        self.prices.load()
    }

    pub fn revoked(&self) -> Guard<Arc<Revocations>> {
        self.revoked.load()
    }

    pub fn keys(&self) -> Guard<Arc<ApiKeys>> {
        self.keys.load()
    }

    /// Replaces the keys (tests, benches: a [`Catalog::fixed`] with keys).
    pub fn set_keys(&self, keys: ApiKeys) {
        self.keys.store(Arc::new(keys));
    }

    /// Reads the store again and swaps the new catalog in.
    pub async fn reload(&self, store: &dyn Store, docs: &dyn Documents) -> Result<(), StoreError> {
        let read = read(store, docs).await?;
        // Prices before the directory: a tenant moved to a new plan finds its prices.
        self.router.store(Arc::new(read.router));
        self.prices.store(Arc::new(read.prices));
        self.tenants.store(Arc::new(read.tenants));
        self.revoked.store(Arc::new(read.revoked));
        self.keys.store(Arc::new(read.keys));
        Ok(())
    }

    /// Tells this process's watcher to reload now (other replicas see the version bump).
    pub fn changed(&self) {
        self.changed.notify_one();
    }
}

/// One reading of the store.
struct Read {
    router: Router,
    tenants: TenantDirectory,
    prices: PlanPrices,
    revoked: Revocations,
    keys: ApiKeys,
}

/// The services as stored, skipping (loudly) any that cannot be routed: one bad document
/// must not take every other service down.
async fn read(store: &dyn Store, docs: &dyn Documents) -> Result<Read, StoreError> {
    let mut services = Vec::new();
    for doc in docs.docs(Kind::Services, None).await? {
        match service_from_doc(doc) {
            Ok(service) => services.push(service),
            Err(e) => tracing::error!(error = %e, "stored service skipped"),
        }
    }
    let plans = docs.docs(Kind::Plans, None).await?;
    let prices = PlanPrices::from_docs(&plans);
    // A plan's limits are its `rate_limit` and `max_concurrent` fields.
    let plan_limits = plans
        .iter()
        .filter_map(|plan| {
            let id = plan.get("id")?.as_str()?.to_owned();
            let limits = serde_json::from_value(serde_json::Value::Object(plan.clone())).ok()?;
            Some((id, limits))
        })
        .collect();
    let tenants = TenantDirectory::from_records(&store.tenants().await?, &plan_limits);
    // A change older than the longest token life has outlived every token it voids.
    // Users changed (disabled, demoted, moved) at or after `since`: the tokens they hold
    // from before the change are void (`users` documents' `tokens_valid_after_ms`).
    let since = crate::store::now_ms().saturating_sub(REVOCATION_HORIZON_SECS as i64 * 1000);
    let revoked = docs
        .docs_at_least(Kind::Users, "tokens_valid_after_ms", since)
        .await?
        .into_iter()
        .map(|(user, after_ms)| (user, after_ms.max(0) as u64))
        .collect();
    let keys = crate::store::all_docs(docs, Kind::ApiKeys)
        .await?
        .into_iter()
        .filter_map(|doc| {
            serde_json::from_value::<KeyRecord>(serde_json::Value::Object(doc))
                .inspect_err(|e| tracing::error!(error = %e, "stored API key skipped"))
                .ok()
        });
    let keys = ApiKeys::from_records(keys);
    // Building resolves upstream host names: blocking work.
    let (router, errors) = tokio::task::spawn_blocking(move || Router::lenient(&services))
        .await
        .map_err(|e| StoreError::Task(e.to_string()))?;
    for error in errors {
        tracing::error!(%error, "service not routable; its calls get 404 until fixed");
    }
    Ok(Read {
        router,
        tenants,
        prices,
        revoked,
        keys,
    })
}

/// A stored service document (its `id` is its name) as the config shape.
pub fn service_from_doc(mut doc: Doc) -> Result<ServiceConfig, String> {
    doc.remove("id");
    serde_json::from_value(serde_json::Value::Object(doc)).map_err(|e| e.to_string())
}

/// A service in its stored shape.
pub fn service_to_doc(service: &ServiceConfig) -> Doc {
    let mut doc = Doc::new();
    doc.insert("id".into(), service.name.clone().into());
    if let Ok(serde_json::Value::Object(fields)) = serde_json::to_value(service) {
        doc.extend(fields);
    }
    doc
}

/// Polls the catalog version and reloads on change.
pub struct CatalogWatcher {
    pub catalog: Arc<Catalog>,
    pub coordination: Arc<dyn Coordination>,
    pub store: Arc<dyn Store>,
    pub docs: Arc<dyn Documents>,
    pub interval: Duration,
}

impl CatalogWatcher {
    /// One poll: reloads when the version moved, or when `forced` (nudged in-process, or
    /// the periodic reload); returns the version seen.
    async fn poll(&self, last: Option<u64>, forced: bool) -> Option<u64> {
        let version = match self.coordination.catalog_version().await {
            Ok(version) => Some(version),
            Err(e) => {
                // Unknown: a forced reload goes ahead, an ordinary poll waits for the next.
                tracing::warn!(error = %e, "cannot read the catalog version");
                last
            }
        };
        if version == last && !forced {
            return last;
        }
        match self.catalog.reload(&*self.store, &*self.docs).await {
            Ok(()) => {
                tracing::debug!(?version, "catalog reloaded");
                version
            }
            Err(e) => {
                tracing::warn!(error = %e, "catalog reload failed; will retry");
                last
            }
        }
    }
}

#[async_trait]
impl BackgroundService for CatalogWatcher {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut last = self.coordination.catalog_version().await.ok();
        let mut reloaded = tokio::time::Instant::now();
        loop {
            let nudged = tokio::select! {
                _ = shutdown.changed() => return,
                _ = tokio::time::sleep(self.interval) => false,
                _ = self.catalog.changed.notified() => true,
            };
            let due = reloaded.elapsed() >= FULL_RELOAD_INTERVAL;
            if nudged || due {
                reloaded = tokio::time::Instant::now();
            }
            last = self.poll(last, nudged || due).await;
        }
    }
}
