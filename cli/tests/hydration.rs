//! Hydration counts every replica's unflushed usage. Two gateways and a control plane on
//! one Redis and one MongoDB (reached through a gate the test cuts): the store stops
//! answering while both gateways take traffic (their usage waits in queues and journals),
//! Redis is flushed, the store returns and both gateways (and the control plane, reading a
//! balance) hydrate at once. The ledger ends at the start minus every forwarded call's cost
//! and reconciliation finds nothing. Before, the first replica to hydrate subtracted only
//! its own unflushed usage, and the other's was credited back to the tenant.

use tollgate_testkit as common;

use common::gate::TcpGate;
use common::store::{wait_for_logs, StoreUnderTest};
use common::{admin_token, client, ControlPlane, Gateway, RedisServer, Upstream};
use std::time::Duration;
use tollgate::config::LedgerConfig;
use tollgate::ledger::RedisLedger;

const INITIAL: i64 = 100_000;
const COST: i64 = 5;

fn yaml(upstream: &str) -> String {
    format!(
        "usage: {{ batch_size: 20, flush_interval_ms: 50 }}
services:
  - name: notes
    upstream: {upstream}
    endpoints:
      - {{ method: GET, path: /x, credits: {COST} }}
tenants:
  - {{ id: ops, name: Ops }}
  - {{ id: acme, name: Acme, credits: {INITIAL} }}
"
    )
}

/// `n` calls on `gateway`, 8 at a time; how many were forwarded (200).
async fn calls(gateway: &Gateway, n: usize) -> i64 {
    let statuses = common::get_many(gateway, "/api/proxy/notes/x", "acme", n, 8).await;
    assert!(
        statuses.iter().all(|s| matches!(s, 200 | 503)),
        "served, or refused while the balance cannot be known: {statuses:?}"
    );
    statuses.iter().filter(|s| **s == 200).count() as i64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hydration_counts_every_replicas_unflushed_usage() {
    let Some(uri) = common::mongo_uri() else {
        return;
    };
    let gate = TcpGate::start(common::mongo_addr(&uri)).await;
    let db = common::unique_db();
    let redis = RedisServer::start();
    let upstream = Upstream::start().await;
    let mut env = StoreUnderTest::Mongo {
        uri: format!("mongodb://{}/?directConnection=true", gate.addr),
        db: db.clone(),
    }
    .env();
    env.push(("TOLLGATE_REDIS_URL".into(), redis.url()));
    let a = Gateway::start_with(&yaml(&upstream.url()), env.clone());
    let b = Gateway::start_with(&yaml(&upstream.url()), env.clone());
    let mut admin_env = env.clone();
    admin_env.push((
        "TOLLGATE_DATA_DIR".into(),
        a.dir.join("admin-data").display().to_string(),
    ));
    let config = a.dir.join("tollgate.yaml");
    let control_plane = ControlPlane::start(&config, &admin_env, &a.dir.join("admin.log"));
    let store = StoreUnderTest::Mongo { uri, db }
        .open(std::path::Path::new(""))
        .await;

    let mut forwarded = calls(&a, 5).await + calls(&b, 5).await;
    assert_eq!(forwarded, 10);
    wait_for_logs(&*store, 10, Duration::from_secs(30)).await;

    // The store stops answering; both gateways keep serving (usage waits), then Redis
    // forgets every balance.
    gate.close();
    forwarded += calls(&a, 20).await + calls(&b, 20).await;
    assert_eq!(forwarded, 50);
    let mut conn = redis.connection().await;
    let _: () = redis::cmd("FLUSHALL").query_async(&mut conn).await.unwrap();

    // The store returns; everyone hydrates at once.
    gate.open();
    let balance_reads = async {
        let url = control_plane.url("/admin/tenants/acme");
        for _ in 0..5 {
            let r = client()
                .get(&url)
                .bearer_auth(admin_token("ops", "root"))
                .send()
                .await
                .unwrap();
            assert!(matches!(r.status().as_u16(), 200 | 503), "{}", r.status());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    let (x, y, ()) = tokio::join!(calls(&a, 20), calls(&b, 20), balance_reads);
    forwarded += x + y;
    assert!(x + y > 0, "the gateways serve again once the store is back");

    let logs = wait_for_logs(&*store, forwarded as usize, Duration::from_secs(60)).await;
    assert_eq!(logs.len() as i64, forwarded);
    assert_eq!(
        redis.balance("acme").await,
        Some(INITIAL - COST * forwarded),
        "the ledger took exactly what the forwarded calls cost"
    );
    let ledger = RedisLedger::new(&redis.url(), &LedgerConfig::default()).unwrap();
    let reports = tollgate::reconcile::reconcile(&*store, &ledger, &|_| 0)
        .await
        .unwrap();
    assert!(reports.iter().all(|r| r.is_consistent()), "{reports:?}");
}

/// Hydration waits for the other replicas' publishes to postdate any charge then in flight,
/// so it lasts at least the ledger timeout; its deadline must leave room for that. With a
/// 2.5 s ledger timeout and a second replica live, a tenant's first call is served. Before,
/// the wait gave up after a fixed 2 s, shorter than the wait itself: with any ledger timeout
/// from 2 s up, no tenant could ever be hydrated while another replica ran (every call
/// 503), and a 1 s timeout on a loaded machine left 1 s of slack.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_ledger_timeout_still_leaves_hydration_its_time() {
    let redis = RedisServer::start();
    let upstream = Upstream::start().await;
    let config = format!("ledger: {{ timeout_ms: 2500 }}\n{}", yaml(&upstream.url()));
    let env = vec![("TOLLGATE_REDIS_URL".to_owned(), redis.url())];
    let first = Gateway::start_with(&config, env.clone());
    let _second = Gateway::start_with(&config, env);
    // Both replicas registered (they publish every 100 ms): the wait is a real one.
    common::wait_until(
        "both replicas publish",
        Duration::from_secs(10),
        async || {
            let mut conn = redis.connection().await;
            let fields: Vec<String> = redis::cmd("HKEYS")
                .arg("tg:pipelines")
                .query_async(&mut conn)
                .await
                .unwrap();
            fields.iter().filter(|f| !f.starts_with('_')).count() == 2
        },
    )
    .await;
    let status = client()
        .get(first.url("/api/proxy/notes/x"))
        .bearer_auth(common::token("acme", "alice"))
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, 200, "{}", first.log());
    assert_eq!(redis.balance("acme").await, Some(INITIAL - COST));
}
