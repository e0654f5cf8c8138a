//! docs/DESIGN.md §Scheduler: contiguous usage-summary windows whose totals equal the logs, invoices that go
//! from draft to final and never duplicate, refills once per period — first on a clock the
//! test sets (the scheduler in-process, on both stores), then as deployed: two control
//! planes sharing Redis and MongoDB, one of them killed.

use tollgate_testkit as common;

use common::{client, token, wait_until, Gateway, RedisServer, Upstream};
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;
use tollgate::app::Parts;
use tollgate::catalog::Catalog;
use tollgate::config::{AdminConfig, AuthConfig, LedgerConfig};
use tollgate::hydration::Hydrator;
use tollgate::ledger::{Coordination, EmbeddedLedger, Ledger};
use tollgate::server::Handles;
use tollgate::store::{
    Doc, Documents, Kind, MongoStore, NewTenant, SqliteStore, Store, UsageBatch,
};
use tollgate::usage::NoUsage;
use tollgate::vocab::TenantStatus;
use tollgate::vocab::UsageEvent;
use tollgate_admin_api::scheduler::Scheduler;
use tollgate_admin_api::AdminState;

/// 2026-01-31T23:00:00Z: an hour before a billing period closes.
const BASE: i64 = 1_769_900_400_000;
const MIN: i64 = 60_000;

fn event(id: &str, tenant: &str, credits: i64, refunded: bool, ts: i64) -> UsageEvent {
    UsageEvent {
        id: id.into(),
        tenant_id: tenant.into(),
        user_id: "u1".into(),
        key_id: None,
        service: "notes".into(),
        endpoint: "/notes/create".into(),
        method: "POST".into(),
        credits_used: credits,
        plan_id: None,
        reserved: None,
        shortfall: 0,
        shadow_credits: None,
        balance_after: 0,
        status: 200,
        latency_ms: 1.0,
        request_id: format!("r-{id}"),
        idempotency_key: None,
        refunded,
        timestamp_ms: ts,
    }
}

async fn state(store: Arc<dyn Store>, docs: Arc<dyn Documents>) -> AdminState {
    store.migrate().await.unwrap();
    for id in ["acme", "zeta"] {
        let tenant = NewTenant {
            id,
            name: id,
            status: TenantStatus::Active,
            initial_credits: 1000,
            actor: "test",
        };
        store.ensure_tenant(&tenant).await.unwrap();
    }
    let embedded = Arc::new(EmbeddedLedger::in_memory(&LedgerConfig::default()));
    let (ledger, coordination): (Arc<dyn Ledger>, Arc<dyn Coordination>) =
        (embedded.clone(), embedded);
    let hydrator = Arc::new(Hydrator::new(
        Arc::clone(&ledger),
        Arc::clone(&store),
        Arc::new(NoUsage),
        Duration::from_millis(250),
    ));
    let catalog = Arc::new(Catalog::load(&*store, &*docs).await.unwrap());
    let handles = Handles {
        parts: Parts {
            store,
            docs,
            ledger,
            coordination,
            leases: None,
        },
        hydrator,
        catalog: Some(catalog),
    };
    let auth = AuthConfig {
        secret: common::SECRET.into(),
        ..AuthConfig::default()
    };
    AdminState::new(&handles, &auth, &AdminConfig::default()).unwrap()
}

fn doc(value: Value) -> Doc {
    match value {
        Value::Object(doc) => doc,
        other => panic!("{other}"),
    }
}

fn int(doc: &Doc, key: &str) -> i64 {
    doc[key]
        .as_i64()
        .unwrap_or_else(|| panic!("{key} in {doc:?}"))
}

async fn scenario<S: Store + Documents>(backend: Arc<S>) {
    let (store, docs): (Arc<dyn Store>, Arc<dyn Documents>) = (backend.clone(), backend);
    let state = state(Arc::clone(&store), Arc::clone(&docs)).await;
    let events = [
        event("e1", "acme", 5, false, BASE + 10_000),
        event("e2", "acme", 3, true, BASE + 70_000), // refunded: never billed
        event("e3", "acme", 2, false, BASE + 400_000),
        event("e4", "zeta", 7, false, BASE + 610_000),
    ];
    let batch = UsageBatch {
        pipeline_id: "test",
        seq: 1,
        events: &events,
    };
    store.insert_usage(&batch).await.unwrap();
    let plan = json!({"id": "gold", "name": "Gold", "monthly_credits": 100, "refill_day": 1,
        "price_overrides": []});
    docs.insert_doc(Kind::Plans, &doc(plan)).await.unwrap();
    let subscription = json!({"id": "sub1", "tenant_id": "zeta", "plan_id": "gold",
        "status": "active", "current_period_start": "2026-01-01T00:00:00.000Z",
        "current_period_end": "2026-02-01T00:00:00.000Z",
        "created_at": "2026-01-05T00:00:00.000Z", "last_refill_period": "2026-01"});
    docs.insert_doc(Kind::Subscriptions, &doc(subscription))
        .await
        .unwrap();

    let five_minutes = Duration::from_secs(300);
    let scheduler = Scheduler::new(state.clone(), five_minutes);
    // The first run ever takes the last whole window.
    let report = scheduler.run_once(BASE + 2_500).await.unwrap();
    assert_eq!(
        (report.windows, report.summaries, report.refills),
        (1, 0, 0)
    );
    let report = scheduler.run_once(BASE + 5 * MIN + 2_500).await.unwrap();
    assert_eq!((report.windows, report.summaries), (1, 1));
    let again = scheduler.run_once(BASE + 5 * MIN + 2_500).await.unwrap();
    assert_eq!(again.windows, 0, "a window is summarised once");
    // Another process (a restart) catches up where the last run ended.
    let restarted = Scheduler::new(state.clone(), five_minutes);
    let report = restarted.run_once(BASE + 16 * MIN).await.unwrap();
    assert_eq!((report.windows, report.summaries), (2, 2));

    let runs = docs.docs(Kind::ScheduledSummaries, None).await.unwrap();
    assert_eq!(runs.len(), 4);
    for pair in runs.windows(2) {
        assert_eq!(
            int(&pair[0], "window_end_ms"),
            int(&pair[1], "window_start_ms")
        );
    }
    let (first, last) = (
        int(&runs[0], "window_start_ms"),
        int(&runs[3], "window_end_ms"),
    );
    assert_eq!((first, last), (BASE - 5 * MIN, BASE + 15 * MIN));
    for tenant in ["acme", "zeta"] {
        let summaries = docs
            .docs(Kind::UsageSummaries, Some(("tenant_id", tenant)))
            .await
            .unwrap();
        let credits: i64 = summaries.iter().map(|s| int(s, "credits")).sum();
        let totals = store.usage_totals(tenant, first, last).await.unwrap();
        assert_eq!(credits, totals.credits, "{tenant}: {summaries:?}");
    }
    let acme = docs
        .doc(Kind::UsageSummaries, &format!("acme:{BASE:013}"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!((int(&acme, "calls"), int(&acme, "credits")), (1, 5));
    assert_eq!(acme["lines"][0]["endpoint"], "/notes/create");

    // Invoices: the running period as a draft, totals from the non-refunded logs.
    let draft = docs
        .doc(Kind::Invoices, "acme:2026-01")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(draft["status"], "draft");
    assert_eq!(
        (int(&draft, "total_credits_used"), int(&draft, "log_count")),
        (7, 2)
    );
    // After the period closes: final, once; refills on the plan's day, once — even by two
    // control planes whose leader leases overlapped, running the same tick together
    // (before: both saw the period unmarked and both granted it).
    let february = BASE + 60 * MIN + 5_000;
    let overlapping = Scheduler::new(state.clone(), five_minutes);
    let (report, other) =
        tokio::join!(restarted.run_once(february), overlapping.run_once(february));
    let (report, other) = (report.unwrap(), other.unwrap());
    assert!(report.refills + other.refills >= 1);
    let final_ = docs
        .doc(Kind::Invoices, "acme:2026-01")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(final_["status"], "final");
    assert_eq!(int(&final_, "total_credits_used"), 7);
    let late = [event("e5", "acme", 50, false, BASE + 30 * MIN)];
    let batch = UsageBatch {
        pipeline_id: "test",
        seq: 2,
        events: &late,
    };
    store.insert_usage(&batch).await.unwrap();
    let report = restarted.run_once(february + MIN).await.unwrap();
    assert_eq!(report.refills, 0, "once per period");
    let still = docs
        .doc(Kind::Invoices, "acme:2026-01")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(still, final_, "a final invoice never changes");
    let invoices = docs.docs(Kind::Invoices, None).await.unwrap();
    let ids: Vec<_> = invoices.iter().map(|i| i["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["acme:2026-01", "zeta:2026-01"]);

    let refills: Vec<_> = store
        .transactions("zeta")
        .await
        .unwrap()
        .into_iter()
        .filter(|t| t.reason.starts_with("refill"))
        .collect();
    assert_eq!(refills.len(), 1);
    assert_eq!(
        (refills[0].amount, refills[0].actor.as_str()),
        (100, "scheduler")
    );
    assert_eq!(
        state.ledger.balance("zeta").await.unwrap(),
        Some(1000 - 7 + 100)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_schedules_contiguous_windows_invoices_and_refills() {
    let dir = common::temp_dir("tollgate-scheduler");
    scenario(Arc::new(SqliteStore::open(&dir).unwrap())).await;
    std::fs::remove_dir_all(dir).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mongo_schedules_contiguous_windows_invoices_and_refills() {
    let Some(uri) = common::mongo_uri() else {
        return;
    };
    let store = MongoStore::connect(&uri, &common::unique_db())
        .await
        .unwrap();
    scenario(Arc::new(store)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_control_planes_write_each_window_once_and_survive_the_leaders_death() {
    let Some(uri) = common::mongo_uri() else {
        return;
    };
    let redis = RedisServer::start();
    let upstream = Upstream::start().await;
    let db = common::unique_db();
    let env = vec![
        ("TOLLGATE_REDIS_URL".to_owned(), redis.url()),
        ("TOLLGATE_MONGODB_URI".to_owned(), uri.clone()),
        ("TOLLGATE_MONGODB_DB".to_owned(), db.clone()),
        ("TOLLGATE_SUMMARY_INTERVAL_SECS".to_owned(), "1".to_owned()),
    ];
    let yaml = format!(
        "scheduler:\n  enabled: true\nusage:\n  flush_interval_ms: 50\nservices:
  - name: notes
    upstream: {}
    endpoints:
      - {{ method: POST, path: /notes/create, credits: 3 }}
tenants:
  - {{ id: acme, name: Acme, credits: 100000 }}
",
        upstream.url()
    );
    let mut a = Gateway::start_with(&yaml, env.clone());
    let b = Gateway::start_with(&yaml, env);
    let store = MongoStore::connect(&uri, &db).await.unwrap();
    let call = |g: &Gateway| {
        let url = g.url("/api/proxy/notes/notes/create");
        async move {
            client()
                .post(url)
                .bearer_auth(token("acme", "u1"))
                .send()
                .await
                .unwrap()
                .status()
        }
    };
    let windows = async || store.docs(Kind::ScheduledSummaries, None).await.unwrap();
    for _ in 0..10 {
        assert_eq!(call(&a).await, 200);
        assert_eq!(call(&b).await, 200);
    }
    wait_until("three windows", Duration::from_secs(20), async || {
        windows().await.len() >= 3
    })
    .await;
    a.kill();
    let before = windows().await.len();
    for _ in 0..5 {
        assert_eq!(call(&b).await, 200);
    }
    wait_until(
        "the survivor takes over",
        Duration::from_secs(20),
        async || windows().await.len() >= before + 4,
    )
    .await;

    let runs = windows().await;
    for pair in runs.windows(2) {
        assert_eq!(
            int(&pair[0], "window_end_ms"),
            int(&pair[1], "window_start_ms"),
            "contiguous, never overlapping: {runs:?}"
        );
    }
    let (first, last) = (
        int(&runs[0], "window_start_ms"),
        int(&runs[runs.len() - 1], "window_end_ms"),
    );
    assert_eq!(
        runs.len() as i64,
        (last - first) / 1000,
        "one run per window"
    );
    let runners: std::collections::BTreeSet<_> = runs
        .iter()
        .map(|r| r["runner"].as_str().unwrap().to_owned())
        .collect();
    assert!(runners.len() <= 2, "{runners:?}");
    let summaries = store
        .docs(Kind::UsageSummaries, Some(("tenant_id", "acme")))
        .await
        .unwrap();
    let credits: i64 = summaries.iter().map(|s| int(s, "credits")).sum();
    let totals = store.usage_totals("acme", first, last).await.unwrap();
    assert_eq!(credits, totals.credits);
    assert!(totals.credits > 0, "the windows saw the calls");
    let invoice = store
        .doc(
            Kind::Invoices,
            &format!("acme:{}", chrono::Utc::now().format("%Y-%m")),
        )
        .await
        .unwrap();
    assert!(invoice.is_some_and(|i| i["status"] == "draft"));
}
