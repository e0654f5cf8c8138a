//! The usage pipeline end to end (docs/DESIGN.md §Usage pipeline and journal): every charged call becomes exactly one usage
//! log, the logs add up to what the ledger took, a store outage loses nothing, a crash
//! loses at most what was in memory, and a Redis that forgot everything is rehydrated.
//! Real processes throughout: the gateway binary, `redis-server`, and the embedded store or
//! MongoDB (the stand-in in CI) behind a TCP gate the test can cut.

use tollgate_testkit as common;

use common::store::{all_logs, wait_for_logs, GatedMongo, StoreUnderTest};
use common::{client, token, tx, wait_until, Gateway, RedisServer, Upstream};
use std::collections::HashSet;
use std::time::{Duration, Instant};
use tollgate::config::LedgerConfig;
use tollgate::ledger::RedisLedger;
use tollgate::store::{SqliteStore, Store};
use tollgate::vocab::UsageEvent;

const INITIAL: i64 = 1_000_000;

fn yaml(upstream: &str, closed_port: u16) -> String {
    format!(
        r#"
usage: {{ batch_size: 50, flush_interval_ms: 50 }}
services:
  - name: notes
    upstream: {upstream}
    endpoints:
      - {{ method: POST, path: /expensive, credits: 7 }}
      - {{ method: GET, path: /cheap, credits: 1 }}
  - name: down
    upstream: http://127.0.0.1:{closed_port}
    endpoints:
      - {{ method: ANY, path: "/*", credits: 4 }}
tenants:
  - {{ id: acme, name: Acme, credits: {INITIAL} }}
  - {{ id: zeta, name: Zeta, credits: {INITIAL} }}
"#
    )
}

/// Sends `n` requests, `concurrency` at a time, in a mix: cheap and expensive calls for two
/// tenants, refunded calls to a dead upstream, and calls with an `Idempotency-Key` (each a
/// first use: replays are neither forwarded nor logged, see gateway.rs). Returns the statuses.
async fn traffic(gateway: &Gateway, n: usize, concurrency: usize, tag: &str) -> Vec<u16> {
    let http = client();
    let calls = (0..n).map(|i| {
        let tenant = if i % 3 == 0 { "zeta" } else { "acme" };
        let request = match i % 10 {
            0 => http.get(gateway.url("/api/proxy/down/x")),
            1 | 2 => http
                .post(gateway.url("/api/proxy/notes/expensive"))
                .header("idempotency-key", format!("{tag}-{i}")),
            3..=5 => http.post(gateway.url("/api/proxy/notes/expensive")),
            _ => http.get(gateway.url("/api/proxy/notes/cheap")),
        };
        let request = request.bearer_auth(token(tenant, "u1"));
        async move {
            match request.send().await {
                Ok(r) => r.status().as_u16(),
                Err(e) => {
                    eprintln!("request failed: {e:?}");
                    0
                }
            }
        }
    });
    let mut statuses = Vec::with_capacity(n);
    let mut stream = futures_util::stream::iter(calls).buffer_unordered(concurrency);
    while let Some(status) = futures_util::StreamExt::next(&mut stream).await {
        statuses.push(status);
    }
    statuses
}

use futures_util::StreamExt as _;

/// What the ledger took from `tenant` equals the non-refunded credits its logs carry, and
/// the store's durable balance agrees with both.
async fn assert_books_balance(redis: &RedisServer, store: &dyn Store, logs: &[UsageEvent]) {
    let ledger = RedisLedger::new(&redis.url(), &LedgerConfig::default()).unwrap();
    for tenant in ["acme", "zeta"] {
        let taken = INITIAL - redis.balance(tenant).await.unwrap();
        let logged: i64 = logs
            .iter()
            .filter(|e| e.tenant_id == tenant && !e.refunded)
            .map(|e| e.credits_used)
            .sum();
        assert_eq!(
            taken, logged,
            "{tenant}: ledger took {taken}, logs say {logged}"
        );
    }
    let reports = tollgate::reconcile::reconcile(store, &ledger, &|_| 0)
        .await
        .unwrap();
    assert_eq!(reports.len(), 2);
    for report in reports {
        assert!(report.is_consistent(), "{report:?}");
    }
}

fn assert_unique(logs: &[UsageEvent]) {
    let ids: HashSet<&str> = logs.iter().map(|e| e.id.as_str()).collect();
    let requests: HashSet<&str> = logs.iter().map(|e| e.request_id.as_str()).collect();
    assert_eq!(
        (ids.len(), requests.len()),
        (logs.len(), logs.len()),
        "duplicate usage logs"
    );
}

async fn every_charged_call_is_logged_once(store_kind: StoreUnderTest, requests: usize) {
    let upstream = Upstream::start().await;
    let redis = RedisServer::start();
    let mut env = store_kind.env();
    env.push(("TOLLGATE_REDIS_URL".into(), redis.url()));
    let closed = common::ClosedPort::new();
    let gateway = Gateway::start_with(&yaml(&upstream.url(), closed.port), env);
    let statuses = traffic(&gateway, requests, 50, "once").await;
    let answered = statuses.iter().filter(|s| matches!(s, 200 | 502)).count();
    assert_eq!(answered, requests, "every call answered: {statuses:?}");

    let store = store_kind.open(&gateway.data_dir()).await;
    let logs = wait_for_logs(&*store, requests, Duration::from_secs(60)).await;
    assert_eq!(logs.len(), requests, "one log per metered call");
    assert_unique(&logs);
    assert!(logs
        .iter()
        .filter(|e| e.service == "down")
        .all(|e| e.refunded && e.status == 502));
    assert!(
        logs.iter()
            .any(|e| e.idempotency_key.is_some() && e.credits_used > 0),
        "a key's first use is logged with its key, at its cost"
    );
    assert_books_balance(&redis, &*store, &logs).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_charged_call_is_logged_once_in_the_embedded_store() {
    every_charged_call_is_logged_once(StoreUnderTest::Sqlite, 2000).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_charged_call_is_logged_once_in_mongodb() {
    let Some(uri) = common::mongo_uri() else {
        return;
    };
    // The stand-in takes hundreds of inserts per second: keep it small.
    every_charged_call_is_logged_once(
        StoreUnderTest::Mongo {
            uri,
            db: common::unique_db(),
        },
        200,
    )
    .await;
}

/// MongoDB behind a gate the test cuts: requests keep their speed, events wait in the
/// journal, and all of them arrive once the store is back, none twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_outage_loses_nothing() {
    let Some(uri) = common::mongo_uri() else {
        return;
    };
    let GatedMongo {
        gate,
        upstream: _upstream,
        redis,
        gateway,
        store,
        _closed,
    } = GatedMongo::start(&uri, yaml).await;

    assert!(traffic(&gateway, 40, 10, "before")
        .await
        .iter()
        .all(|s| matches!(s, 200 | 502)));
    wait_for_logs(&*store, 40, Duration::from_secs(30)).await;

    gate.close();
    let started = Instant::now();
    let http = client();
    let mut slowest = Duration::ZERO;
    for _ in 0..60 {
        let call = Instant::now();
        let r = http
            .get(gateway.url("/api/proxy/notes/cheap"))
            .bearer_auth(token("acme", "u1"))
            .send()
            .await
            .unwrap();
        assert_eq!(
            r.status(),
            200,
            "requests are served while the store is down"
        );
        slowest = slowest.max(call.elapsed());
    }
    assert!(
        slowest < Duration::from_secs(1),
        "a request took {slowest:?} during the outage"
    );
    let journal = gateway.data_dir().join("usage.journal");
    wait_until(
        "events to reach the journal",
        Duration::from_secs(60),
        async || {
            std::fs::metadata(&journal)
                .map(|m| m.len() > 0)
                .unwrap_or(false)
        },
    )
    .await;
    eprintln!(
        "outage: 60 requests in {:?}, slowest {slowest:?}",
        started.elapsed()
    );

    gate.open();
    let logs = wait_for_logs(&*store, 100, Duration::from_secs(60)).await;
    assert_eq!(logs.len(), 100);
    assert_unique(&logs);
    wait_until(
        "the journal to be emptied",
        Duration::from_secs(30),
        async || {
            std::fs::metadata(&journal)
                .map(|m| m.len() == 0)
                .unwrap_or(false)
        },
    )
    .await;
    assert_books_balance(&redis, &*store, &logs).await;
}

/// Journaled events survive a SIGKILL: the restarted gateway replays them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_replays_the_journal() {
    let Some(uri) = common::mongo_uri() else {
        return;
    };
    let GatedMongo {
        gate,
        upstream: _upstream,
        redis,
        mut gateway,
        store,
        _closed,
    } = GatedMongo::start(&uri, yaml).await;

    // Hydrate both tenants first: a fresh Redis with the store unreachable fails closed.
    assert!(traffic(&gateway, 10, 2, "warm")
        .await
        .iter()
        .all(|s| matches!(s, 200 | 502)));
    wait_for_logs(&*store, 10, Duration::from_secs(30)).await;
    gate.close();
    assert!(traffic(&gateway, 50, 10, "crash")
        .await
        .iter()
        .all(|s| matches!(s, 200 | 502)));
    let journal = gateway.data_dir().join("usage.journal");
    // At least the 50 new events; the warm-up batch may be there too if the gate cut it
    // between its insert and its balance update (it replays idempotently).
    wait_until(
        "the 50 events in the journal",
        Duration::from_secs(60),
        async || {
            let text = std::fs::read_to_string(&journal).unwrap_or_default();
            text.lines()
                .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
                .map(|e| e["events"].as_array().map_or(0, Vec::len))
                .sum::<usize>()
                >= 50
        },
    )
    .await;
    gateway.kill();
    gate.open();
    gateway.start_again();
    let logs = wait_for_logs(&*store, 60, Duration::from_secs(60)).await;
    assert_eq!(logs.len(), 60);
    assert_unique(&logs);
    assert_books_balance(&redis, &*store, &logs).await;
}

/// A SIGKILL under load with the store up loses at most what was in memory, and
/// reconciliation reports exactly that loss.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_under_load_loses_only_what_was_in_memory() {
    let upstream = Upstream::start().await;
    let redis = RedisServer::start();
    let closed = common::ClosedPort::new();
    let mut gateway = Gateway::start(&yaml(&upstream.url(), closed.port), Some(redis.url()));
    // The store stays up, so nothing is journaled: what the kill loses is what was in memory.
    let load = {
        let http = client();
        let url = gateway.url("/api/proxy/notes/cheap");
        tokio::spawn(async move {
            let calls = (0..100_000).map(|_| {
                let request = http.get(&url).bearer_auth(token("acme", "u1"));
                async move {
                    request
                        .send()
                        .await
                        .map(|r| r.status().as_u16())
                        .unwrap_or(0)
                }
            });
            futures_util::stream::iter(calls)
                .buffer_unordered(32)
                .take_while(|s| std::future::ready(*s != 0))
                .count()
                .await
        })
    };
    let store = StoreUnderTest::Sqlite.open(&gateway.data_dir()).await;
    wait_for_logs(&*store, 500, Duration::from_secs(60)).await;
    gateway.kill();
    let answered = load.await.unwrap();
    let taken = INITIAL - redis.balance("acme").await.unwrap();
    let logs = all_logs(&*store).await;
    let logged: i64 = logs
        .iter()
        .filter(|e| e.tenant_id == "acme")
        .map(|e| e.credits_used)
        .sum();
    let lost = taken - logged;
    eprintln!(
        "crash under load: {answered} answered, ledger took {taken}, logged {logged}, lost {lost}"
    );
    assert!(lost >= 0, "more logged than charged");
    // In memory at the kill: the queue (≤ one flush interval of events plus the batch being
    // written) and the requests in flight (≤ 32 here).
    assert!(lost <= 2_000, "lost {lost} events' credits");
    let ledger = RedisLedger::new(&redis.url(), &LedgerConfig::default()).unwrap();
    let reports = tollgate::reconcile::reconcile(&*store, &ledger, &|_| 0)
        .await
        .unwrap();
    let acme = reports.iter().find(|r| r.tenant_id == "acme").unwrap();
    assert_eq!(
        acme.ledger_difference, -lost,
        "reconciliation reports the loss: {acme:?}"
    );
}

/// FLUSHALL mid-run: the gateway rehydrates from the durable store and, once the queues
/// drain, the books balance to the credit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flushed_redis_is_rehydrated_exactly() {
    let upstream = Upstream::start().await;
    let redis = RedisServer::start();
    let closed = common::ClosedPort::new();
    let gateway = Gateway::start(&yaml(&upstream.url(), closed.port), Some(redis.url()));
    let http = client();
    let calls = (0..600).map(|i| {
        let request = http
            .get(gateway.url("/api/proxy/notes/cheap"))
            .bearer_auth(token(if i % 2 == 0 { "acme" } else { "zeta" }, "u1"));
        let redis = &redis;
        async move {
            if i == 300 {
                let mut conn = redis.connection().await;
                let _: () = redis::cmd("FLUSHALL").query_async(&mut conn).await.unwrap();
            }
            request.send().await.unwrap().status().as_u16()
        }
    });
    let statuses: Vec<u16> = futures_util::stream::iter(calls)
        .buffer_unordered(20)
        .collect()
        .await;
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    let store = StoreUnderTest::Sqlite.open(&gateway.data_dir()).await;
    let logs = wait_for_logs(&*store, 600, Duration::from_secs(60)).await;
    assert_eq!(logs.len(), 600);
    assert!(
        gateway.log().contains("hydrating the ledger"),
        "the flushed balance was rehydrated"
    );
    assert_books_balance(&redis, &*store, &logs).await;
}

/// `tollgate reconcile` beside a cleanly stopped gateway: agrees, then catches a balance
/// that moved in the store without the ledger.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_reconcile_command_proves_the_books() {
    let upstream = Upstream::start().await;
    let closed = common::ClosedPort::new();
    let mut gateway = Gateway::start(&yaml(&upstream.url(), closed.port), None);
    assert!(traffic(&gateway, 200, 20, "cli")
        .await
        .iter()
        .all(|s| matches!(s, 200 | 502)));
    gateway.stop();
    let reconcile = || {
        std::process::Command::new(common::tollgate_bin())
            .args(["reconcile", "--config"])
            .arg(gateway.dir.join("tollgate.yaml"))
            .env("TOLLGATE_DATA_DIR", gateway.data_dir())
            .env_remove("TOLLGATE_REDIS_URL")
            .env_remove("TOLLGATE_MONGODB_URI")
            .output()
            .unwrap()
    };
    let out = reconcile();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("acme") && stdout.contains("zeta"),
        "{stdout}"
    );

    let store = SqliteStore::open(&gateway.data_dir()).unwrap();
    store
        .apply_transaction(&tx("acme", 5, "adjustment", "test"))
        .await
        .unwrap();
    let out = reconcile();
    assert!(
        !out.status.success(),
        "a store-only top-up must show as a difference"
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let acme = stdout.lines().find(|l| l.starts_with("acme")).unwrap();
    assert!(acme.split_whitespace().nth(4) == Some("-5"), "{stdout}");
}
