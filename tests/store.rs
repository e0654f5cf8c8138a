//! The store contract, run against the embedded SQLite store and MongoDB (the stand-in in
//! CI; a real server when `TOLLGATE_TEST_MONGODB_URI` points at one).

use tollgate_testkit as common;

use common::tx;
use serde_json::json;
use tollgate::store::{
    Doc, Documents, KeyUsage, Kind, MongoStore, NewTenant, NewTransaction, SqliteStore, Store,
    TenantPatch, UsageBatch, UsageQuery,
};
use tollgate::vocab::TenantStatus;
use tollgate::vocab::UsageEvent;

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
        key_id: None,
        service: "notes".into(),
        endpoint: endpoint.into(),
        method: "POST".into(),
        credits_used: credits,
        plan_id: None,
        reserved: None,
        shortfall: 0,
        shadow_credits: None,
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
        actor: "config",
    }
}

async fn contract<S: Store + Documents>(store: &S) {
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
    // Priced by a plan: the log and the totals say which.
    let other = vec![UsageEvent {
        plan_id: Some("pro".into()),
        ..event("e6", "acme", "/notes/{id}", 1, false, 5_000)
    }];
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

    let priced = store
        .usage_logs(&UsageQuery {
            from_ms: Some(5_000),
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(priced, other, "a plan-priced log reads back as written");

    // Totals per service, endpoint and plan price, refunded logs left out.
    let totals = store.usage_totals("acme", 0, 10_000).await.unwrap();
    assert_eq!((totals.calls, totals.credits), (4, 8));
    let lines: Vec<_> = totals
        .lines
        .iter()
        .map(|l| {
            (
                l.endpoint.as_str(),
                l.plan_id.as_deref(),
                l.calls,
                l.credits,
            )
        })
        .collect();
    assert_eq!(
        lines,
        [
            ("/notes/create", None, 1, 5),
            ("/notes/{id}", None, 2, 2),
            ("/notes/{id}", Some("pro"), 1, 1)
        ]
    );
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
    // With an id, a transaction is recorded once however often it is retried.
    let once = NewTransaction {
        id: Some("op-1"),
        ..tx("acme", 20, "refill", "scheduler")
    };
    let first = store.apply_transaction(&once).await.unwrap();
    let again = store.apply_transaction(&once).await.unwrap();
    assert_eq!((first.id.as_str(), first.balance_after), ("op-1", 1112));
    assert_eq!(again, first);
    assert_eq!(store.transactions("acme").await.unwrap().len(), 3);
    assert_eq!(store.tenant("acme").await.unwrap().unwrap().balance, 1112);

    // The store's own account agrees with its balance.
    let audit = store.audit("acme").await.unwrap();
    assert_eq!((audit.transactions, audit.usage), (1120, 8));
    assert_eq!(
        audit.expected_balance(),
        store.tenant("acme").await.unwrap().unwrap().balance
    );
    documents(store).await;
    settled_and_shadow_logs(store).await;
    keys_and_their_usage(store).await;
    console_reads(store).await;
}

/// What the console reads (docs/DESIGN.md §Console): calls per hour and endpoint, newest
/// first with a cursor, each tenant's last call.
async fn console_reads<S: Store>(store: &S) {
    const H: i64 = 3_600_000;
    assert!(store.ensure_tenant(&tenant("chart", 100)).await.unwrap());
    let events = vec![
        event("c1", "chart", "/a", 2, false, 10 * H + 5),
        event("c2", "chart", "/a", 3, false, 10 * H + 7),
        event("c3", "chart", "/b", 1, false, 10 * H + 9),
        event("c4", "chart", "/a", 9, true, 11 * H),
        event("c5", "chart", "/a", 4, false, 12 * H + 1),
    ];
    store
        .insert_usage(&UsageBatch {
            pipeline_id: "console",
            seq: 1,
            events: &events,
        })
        .await
        .unwrap();
    let points: Vec<_> = store
        .usage_series("chart", 0, 13 * H, H)
        .await
        .unwrap()
        .into_iter()
        .map(|p| (p.start_ms / H, p.endpoint, p.calls, p.credits))
        .collect();
    assert_eq!(
        points,
        [
            (10, "/a".to_owned(), 2, 5),
            (10, "/b".to_owned(), 1, 1),
            (12, "/a".to_owned(), 1, 4)
        ],
        "bucketed by hour and endpoint, the refunded call left out"
    );
    let day = store
        .usage_series("chart", 0, 13 * H, 24 * H)
        .await
        .unwrap();
    assert_eq!(day.iter().map(|p| p.calls).sum::<u64>(), 4);
    assert!(day.iter().all(|p| p.start_ms == 0));

    let newest = UsageQuery {
        tenant_id: Some("chart".into()),
        limit: 2,
        descending: true,
        ..Default::default()
    };
    let page = store.usage_logs(&newest).await.unwrap();
    assert_eq!(
        page.iter().map(|e| e.id.as_str()).collect::<Vec<_>>(),
        ["c5", "c4"]
    );
    let last = page.last().unwrap();
    let next = UsageQuery {
        after: Some((last.timestamp_ms, last.id.clone())),
        limit: 10,
        ..newest
    };
    let page = store.usage_logs(&next).await.unwrap();
    assert_eq!(
        page.iter().map(|e| e.id.as_str()).collect::<Vec<_>>(),
        ["c3", "c2", "c1"]
    );

    let last_calls = store.last_calls().await.unwrap();
    assert!(last_calls.contains(&("chart".to_owned(), 12 * H + 1)));
    assert!(
        last_calls.windows(2).all(|w| w[0].0 < w[1].0),
        "in id order"
    );
}

/// API keys (docs/DESIGN.md §API keys): a key's hash is unique; a collection is read whole
/// a page at a time past the list limit; usage logs carry the key, filter and sum by it.
async fn keys_and_their_usage<S: Store + Documents>(store: &S) {
    let key = |i: usize, hash: &str| {
        doc(json!({"id": format!("key_{i:05}"), "tenant_id": "acme", "hash": hash}))
    };
    assert!(store
        .insert_doc(Kind::ApiKeys, &key(0, "h0"))
        .await
        .unwrap());
    assert!(
        !store
            .insert_doc(Kind::ApiKeys, &key(1, "h0"))
            .await
            .unwrap(),
        "a hash is unique"
    );
    for i in 1..=1_200 {
        let inserted = store
            .insert_doc(Kind::ApiKeys, &key(i, &format!("h{i}")))
            .await
            .unwrap();
        assert!(inserted);
    }
    let all = tollgate::store::all_docs(store, Kind::ApiKeys)
        .await
        .unwrap();
    let ids: Vec<&str> = all.iter().map(|d| d["id"].as_str().unwrap()).collect();
    let expected: Vec<String> = (0..=1_200).map(|i| format!("key_{i:05}")).collect();
    assert_eq!(ids, expected, "every key once, in id order");
    let page = store
        .docs_after(Kind::ApiKeys, Some("key_01198"))
        .await
        .unwrap();
    assert_eq!(page.len(), 2);

    store.ensure_tenant(&tenant("keyed", 1000)).await.unwrap();
    let keyed = |id: &str, key_id: Option<&str>, credits: i64, refunded: bool| UsageEvent {
        key_id: key_id.map(str::to_owned),
        ..event(id, "keyed", "/x", credits, refunded, 7_000)
    };
    let events = vec![
        keyed("k1", Some("key_a"), 3, false),
        keyed("k2", Some("key_a"), 4, false),
        keyed("k3", Some("key_a"), 5, true),
        keyed("k4", Some("key_b"), 1, false),
        keyed("k5", None, 2, false),
    ];
    let batch = UsageBatch {
        pipeline_id: "keys",
        seq: 1,
        events: &events,
    };
    store.insert_usage(&batch).await.unwrap();
    let by_key = store.usage_by_key("keyed", 0, 10_000).await.unwrap();
    let usage = |key_id: Option<&str>, calls: u64, credits: i64| KeyUsage {
        key_id: key_id.map(str::to_owned),
        calls,
        credits,
    };
    assert_eq!(
        by_key,
        vec![
            usage(None, 1, 2),
            usage(Some("key_a"), 2, 7),
            usage(Some("key_b"), 1, 1)
        ]
    );
    let logs = store
        .usage_logs(&UsageQuery {
            key_id: Some("key_a".into()),
            limit: 100,
            ..UsageQuery::default()
        })
        .await
        .unwrap();
    let ids: Vec<&str> = logs.iter().map(|e| e.id.as_str()).collect();
    assert_eq!(ids, ["k1", "k2", "k3"]);
    assert!(logs.iter().all(|e| e.key_id.as_deref() == Some("key_a")));
}

/// Settled calls' logs (reserve, cost, shortfall) and shadow prices read back as written;
/// the shadow report sums, per tenant, the calls of one service that had a shadow price.
async fn settled_and_shadow_logs<S: Store>(store: &S) {
    store.ensure_tenant(&tenant("sh-a", 1000)).await.unwrap();
    store.ensure_tenant(&tenant("sh-b", 1000)).await.unwrap();
    let shadowed =
        |id: &str, tenant: &str, credits: i64, shadow: Option<i64>, refunded: bool| UsageEvent {
            service: "chat".into(),
            shadow_credits: shadow,
            reserved: Some(50),
            shortfall: 3,
            ..event(id, tenant, "/v1/chat", credits, refunded, 5_000)
        };
    let events = vec![
        shadowed("s1", "sh-a", 10, Some(4), false),
        shadowed("s2", "sh-a", 20, Some(8), false),
        shadowed("s3", "sh-a", 7, Some(7), true),
        shadowed("s4", "sh-a", 9, None, false),
        shadowed("s5", "sh-b", 5, Some(50), false),
    ];
    let batch = UsageBatch {
        pipeline_id: "p-shadow",
        seq: 1,
        events: &events,
    };
    store.insert_usage(&batch).await.unwrap();
    let logs = store
        .usage_logs(&UsageQuery {
            tenant_id: Some("sh-a".into()),
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(
        logs,
        events[..4],
        "settled and shadow fields read back as written"
    );
    let report = store.shadow_totals("chat", 0, 10_000).await.unwrap();
    let rows: Vec<_> = report
        .iter()
        .map(|t| (t.tenant_id.as_str(), t.calls, t.charged, t.shadow))
        .collect();
    assert_eq!(rows, [("sh-a", 3, 30, 12), ("sh-b", 1, 5, 50)]);
    assert!(store
        .shadow_totals("chat", 6_000, 10_000)
        .await
        .unwrap()
        .is_empty());
    assert!(store
        .shadow_totals("notes", 0, 10_000)
        .await
        .unwrap()
        .is_empty());
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

fn doc(value: serde_json::Value) -> Doc {
    match value {
        serde_json::Value::Object(doc) => doc,
        other => panic!("not an object: {other}"),
    }
}

/// The control plane's documents: unique keys, lookups by field, replace, delete — and a
/// query operator given as a value is only ever a string.
async fn documents<S: Store + Documents>(store: &S) {
    let ada = doc(json!({"id": "u1", "email": "ada@example.com", "tenant_id": "acme", "n": 1}));
    let bob = doc(json!({"id": "u2", "email": "bob@example.com", "tenant_id": "zeta", "n": 2}));
    assert!(store.insert_doc(Kind::Users, &ada).await.unwrap());
    assert!(store.insert_doc(Kind::Users, &bob).await.unwrap());
    assert!(
        !store.insert_doc(Kind::Users, &ada).await.unwrap(),
        "same id"
    );
    let same_email = doc(json!({"id": "u3", "email": "ada@example.com", "tenant_id": "x"}));
    assert!(
        !store.insert_doc(Kind::Users, &same_email).await.unwrap(),
        "unique email"
    );
    let plan = doc(json!({"id": "u1", "name": "same id, other collection"}));
    assert!(store.insert_doc(Kind::Plans, &plan).await.unwrap());

    assert_eq!(
        store.doc(Kind::Users, "u1").await.unwrap(),
        Some(ada.clone())
    );
    assert_eq!(store.doc(Kind::Users, "nobody").await.unwrap(), None);
    let found = store
        .find_doc(Kind::Users, "email", "bob@example.com")
        .await
        .unwrap();
    assert_eq!(found, Some(bob.clone()));
    for hostile in [r#"{"$gt": ""}"#, "' OR '1'='1", "%", "*"] {
        assert_eq!(
            store.find_doc(Kind::Users, "email", hostile).await.unwrap(),
            None,
            "{hostile}"
        );
        assert!(store
            .docs(Kind::Users, Some(("tenant_id", hostile)))
            .await
            .unwrap()
            .is_empty());
    }
    let acme = store
        .docs(Kind::Users, Some(("tenant_id", "acme")))
        .await
        .unwrap();
    assert_eq!(acme, vec![ada.clone()]);
    assert_eq!(
        store.docs(Kind::Users, None).await.unwrap(),
        vec![ada.clone(), bob.clone()]
    );

    let mut changed = ada.clone();
    changed.insert("n".into(), json!(10));
    assert!(store.replace_doc(Kind::Users, &changed).await.unwrap());
    assert_eq!(
        store.doc(Kind::Users, "u1").await.unwrap(),
        Some(changed.clone())
    );
    let ghost = doc(json!({"id": "ghost", "email": "g@example.com"}));
    assert!(!store.replace_doc(Kind::Users, &ghost).await.unwrap());
    // A field-level update sets what it names and keeps the rest.
    let fields = doc(json!({"n": 11, "role": "admin"}));
    assert!(store.update_doc(Kind::Users, "u1", &fields).await.unwrap());
    let mut updated = changed.clone();
    updated.insert("n".into(), json!(11));
    updated.insert("role".into(), json!("admin"));
    assert_eq!(
        store.doc(Kind::Users, "u1").await.unwrap(),
        Some(updated.clone())
    );
    assert!(!store
        .update_doc(Kind::Users, "ghost", &fields)
        .await
        .unwrap());
    let moving_id = doc(json!({"id": "u9"}));
    assert!(store
        .update_doc(Kind::Users, "u1", &moving_id)
        .await
        .is_err());
    assert!(store.replace_doc(Kind::Users, &changed).await.unwrap());
    // Users changed since a time: their earlier tokens are void.
    let revoke = |at: u64| doc(json!({ "tokens_valid_after_ms": at }));
    assert!(store
        .update_doc(Kind::Users, "u1", &revoke(1_000))
        .await
        .unwrap());
    assert!(store
        .update_doc(Kind::Users, "u2", &revoke(2_000))
        .await
        .unwrap());
    let revoked = store
        .docs_at_least(Kind::Users, "tokens_valid_after_ms", 1_500)
        .await
        .unwrap();
    assert_eq!(revoked, vec![("u2".to_owned(), 2_000)]);
    let all = store.docs_at_least(Kind::Users, "tokens_valid_after_ms", 0);
    assert_eq!(all.await.unwrap().len(), 2);
    assert!(store.delete_doc(Kind::Users, "u2").await.unwrap());
    assert!(!store.delete_doc(Kind::Users, "u2").await.unwrap());
    assert_eq!(store.docs(Kind::Users, None).await.unwrap().len(), 1);
    assert_eq!(store.docs(Kind::Plans, None).await.unwrap(), vec![plan]);

    assert!(store.ensure_tenant(&tenant("patchme", 5)).await.unwrap());
    let patch = TenantPatch {
        name: Some("Renamed".into()),
        status: Some(TenantStatus::Suspended),
        low_credit_threshold: Some(7),
        plan_id: Some(Some("gold".into())),
        limits: Some(tollgate::vocab::Limits {
            rate_limit: Some(tollgate::vocab::RateLimit {
                requests_per_second: 5,
                burst: 10,
            }),
            max_concurrent: Some(3),
        }),
    };
    let patched = store
        .update_tenant("patchme", &patch)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (
            patched.name.as_str(),
            &patched.status,
            patched.low_credit_threshold
        ),
        ("Renamed", &TenantStatus::Suspended, 7)
    );
    assert_eq!(
        (patched.plan_id.as_deref(), patched.balance),
        (Some("gold"), 5)
    );
    assert_eq!(Some(patched.limits), patch.limits, "limits read back");
    let cleared = TenantPatch {
        plan_id: Some(None),
        ..TenantPatch::default()
    };
    let patched = store
        .update_tenant("patchme", &cleared)
        .await
        .unwrap()
        .unwrap();
    assert_eq!((patched.plan_id, patched.name.as_str()), (None, "Renamed"));
    assert_eq!(Some(patched.limits), patch.limits, "limits kept");
    assert!(store
        .update_tenant("nobody", &patch)
        .await
        .unwrap()
        .is_none());
}
