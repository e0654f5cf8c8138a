//! The store contract, run against the embedded SQLite store and MongoDB (the stand-in in
//! CI; a real server when `TOLLGATE_TEST_MONGODB_URI` points at one).

mod common;

use common::tx;
use tollgate::config::TenantStatus;
use tollgate::store::{MongoStore, NewTenant, SqliteStore, Store, UsageBatch, UsageQuery};
use tollgate::usage::UsageEvent;

fn event(
    id: &str,
    tenant: &str,
    endpoint: &str,
    credits: i64,
    refunded: bool,
    ts: i64,
) -> UsageEvent {
    UsageEvent {
        id: id.into(),
        tenant_id: tenant.into(),
        user_id: "u1".into(),
        service: "notes".into(),
        endpoint: endpoint.into(),
        method: "POST".into(),
        credits_used: credits,
        balance_after: 0,
        status: 200,
        latency_ms: 1.5,
        request_id: format!("r-{id}"),
        idempotency_key: (id == "e1").then(|| "key-1".into()),
        refunded,
        timestamp_ms: ts,
    }
}

fn tenant<'a>(id: &'a str, credits: i64) -> NewTenant<'a> {
    NewTenant {
        id,
        name: "Acme",
        status: TenantStatus::Active,
        initial_credits: credits,
    }
}

async fn contract(store: &dyn Store) {
    store.migrate().await.unwrap();
    store.migrate().await.unwrap();
    store.ping().await.unwrap();

    // Tenants: created once with their initial credits, never reset.
    assert!(store.ensure_tenant(&tenant("acme", 1000)).await.unwrap());
    assert!(!store.ensure_tenant(&tenant("acme", 5)).await.unwrap());
    assert!(store.ensure_tenant(&tenant("zeta", 50)).await.unwrap());
    let acme = store.tenant("acme").await.unwrap().unwrap();
    assert_eq!(
        (acme.balance, acme.low_credit_threshold, acme.status),
        (1000, 100, TenantStatus::Active)
    );
    assert_eq!(store.tenant("nobody").await.unwrap(), None);
    let ids: Vec<String> = store
        .tenants()
        .await
        .unwrap()
        .into_iter()
        .map(|t| t.id)
        .collect();
    assert_eq!(ids, ["acme", "zeta"]);

    // A batch: logs stored, non-refunded credits taken from the durable balance.
    let events = vec![
        event("e1", "acme", "/notes/create", 5, false, 1_000),
        event("e2", "acme", "/notes/create", 5, true, 2_000),
        event("e3", "acme", "/notes/{id}", 1, false, 3_000),
        event("e4", "zeta", "/notes/{id}", 1, false, 3_500),
    ];
    let batch = UsageBatch {
        pipeline_id: "p1",
        seq: 1,
        events: &events,
    };
    store.insert_usage(&batch).await.unwrap();
    assert_eq!(store.tenant("acme").await.unwrap().unwrap().balance, 994);
    assert_eq!(store.tenant("zeta").await.unwrap().unwrap().balance, 49);

    // The same batch again (a retry, a journal replay): no duplicate, no second charge.
    store.insert_usage(&batch).await.unwrap();
    assert_eq!(store.tenant("acme").await.unwrap().unwrap().balance, 994);
    let all = store
        .usage_logs(&UsageQuery {
            limit: 100,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(all.len(), 4);
    assert_eq!(all[0], events[0], "a log reads back as written");

    // An older batch of the same pipeline never applies after a newer one; other pipelines
    // keep their own sequence.
    let later = vec![event("e5", "acme", "/notes/{id}", 1, false, 4_000)];
    store
        .insert_usage(&UsageBatch {
            pipeline_id: "p1",
            seq: 2,
            events: &later,
        })
        .await
        .unwrap();
    store
        .insert_usage(&UsageBatch {
            pipeline_id: "p1",
            seq: 1,
            events: &later,
        })
        .await
        .unwrap();
    let other = vec![event("e6", "acme", "/notes/{id}", 1, false, 5_000)];
    store
        .insert_usage(&UsageBatch {
            pipeline_id: "p2",
            seq: 1,
            events: &other,
        })
        .await
        .unwrap();
    assert_eq!(store.tenant("acme").await.unwrap().unwrap().balance, 992);

    // Queries: by tenant and time range, paginated by cursor.
    let q = UsageQuery {
        tenant_id: Some("acme".into()),
        from_ms: Some(2_000),
        to_ms: Some(5_000),
        limit: 2,
        ..Default::default()
    };
    let page = store.usage_logs(&q).await.unwrap();
    assert_eq!(
        page.iter().map(|e| e.id.as_str()).collect::<Vec<_>>(),
        ["e2", "e3"]
    );
    let last = page.last().unwrap();
    let next = UsageQuery {
        after: Some((last.timestamp_ms, last.id.clone())),
        ..q.clone()
    };
    let page = store.usage_logs(&next).await.unwrap();
    assert_eq!(
        page.iter().map(|e| e.id.as_str()).collect::<Vec<_>>(),
        ["e5"]
    );
    let by_service = UsageQuery {
        service: Some("other".into()),
        limit: 10,
        ..Default::default()
    };
    assert!(store.usage_logs(&by_service).await.unwrap().is_empty());

    // Totals per service and endpoint, refunded logs left out.
    let totals = store.usage_totals("acme", 0, 10_000).await.unwrap();
    assert_eq!((totals.calls, totals.credits), (4, 8));
    let lines: Vec<_> = totals
        .lines
        .iter()
        .map(|l| (l.endpoint.as_str(), l.calls, l.credits))
        .collect();
    assert_eq!(lines, [("/notes/create", 1, 5), ("/notes/{id}", 3, 3)]);
    assert_eq!(
        store
            .usage_totals("acme", 3_000, 4_000)
            .await
            .unwrap()
            .credits,
        1
    );

    // Credit transactions move the balance and keep the audit trail.
    let topup = store
        .apply_transaction(&tx("acme", 100, "top-up", "admin-1"))
        .await
        .unwrap();
    assert_eq!(topup.balance_after, 1092);
    let rows = store.transactions("acme").await.unwrap();
    assert_eq!(
        rows.iter()
            .map(|r| (r.reason.as_str(), r.amount))
            .collect::<Vec<_>>(),
        [("initial", 1000), ("top-up", 100)]
    );
    assert!(store
        .apply_transaction(&tx("nobody", 1, "top-up", "admin-1"))
        .await
        .is_err());

    // The store's own account agrees with its balance.
    let audit = store.audit("acme").await.unwrap();
    assert_eq!((audit.transactions, audit.usage), (1100, 8));
    assert_eq!(
        audit.expected_balance(),
        store.tenant("acme").await.unwrap().unwrap().balance
    );
}

#[tokio::test]
async fn sqlite_store_keeps_the_contract() {
    let dir = common::temp_dir("tollgate-store");
    contract(&SqliteStore::open(&dir).unwrap()).await;
    std::fs::remove_dir_all(dir).unwrap();
}

#[tokio::test]
async fn mongo_store_keeps_the_contract() {
    let Some(uri) = common::mongo_uri() else {
        return;
    };
    contract(
        &MongoStore::connect(&uri, &common::unique_db())
            .await
            .unwrap(),
    )
    .await;
}
