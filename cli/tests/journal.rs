//! The usage journal at its limits, with MongoDB (the stand-in in CI) cut off behind a
//! gate: a journal that reaches its bound, and a journal on a full disk. Either way requests
//! keep being served, the journal never grows past its bound, every event that cannot be
//! kept is counted and logged, and reconciliation reports exactly the credits whose logs
//! were lost: never a silent difference.

use tollgate_testkit as common;

use common::store::{all_logs, wait_for_logs, GatedMongo};
use common::{client, metric_sample, token, wait_until, Gateway, RedisServer};
use futures_util::StreamExt as _;
use std::time::Duration;
use tollgate::config::LedgerConfig;
use tollgate::ledger::RedisLedger;
use tollgate::store::Store;

const INITIAL: i64 = 1_000_000;

fn yaml(upstream: &str, _closed_port: u16) -> String {
    format!(
        "usage: {{ batch_size: 50, flush_interval_ms: 50, journal_max_mb: 1 }}
services:
  - name: notes
    upstream: {upstream}
    endpoints:
      - {{ method: GET, path: /cheap, credits: 1 }}
tenants:
  - {{ id: acme, credits: {INITIAL} }}
"
    )
}

/// `n` cheap calls, 32 at a time; all must be served.
async fn traffic(gateway: &Gateway, n: usize) {
    let http = client();
    let url = gateway.url("/api/proxy/notes/cheap");
    let calls = (0..n).map(|_| {
        let request = http.get(&url).bearer_auth(token("acme", "u1"));
        async move { request.send().await.map(|r| r.status().as_u16()).ok() }
    });
    let statuses: Vec<_> = futures_util::stream::iter(calls)
        .buffer_unordered(32)
        .collect()
        .await;
    let served = statuses.iter().filter(|s| **s == Some(200)).count();
    assert_eq!(served, n, "every call is served whatever the journal does");
}

async fn metric(gateway: &Gateway, name: &str) -> i64 {
    metric_sample(&gateway.metrics_text().await, name, &[]) as i64
}

/// Reconciliation's verdict on acme once everything that can arrive has: the ledger is
/// ahead of the durable balance by exactly the credits of the lost logs.
async fn assert_loss_reported(redis: &RedisServer, store: &dyn Store, lost: i64) {
    let ledger = RedisLedger::new(&redis.url(), &LedgerConfig::default()).unwrap();
    let reports = tollgate::reconcile::reconcile(store, &ledger, &|_| 0)
        .await
        .unwrap();
    let acme = reports.iter().find(|r| r.tenant_id == "acme").unwrap();
    assert_eq!(acme.ledger_difference, -lost, "{acme:?}");
    assert_eq!(acme.store_difference, 0, "the store agrees with itself");
}

/// 1 MiB of journal, 4,000 events while the store is down: the journal stops at its bound,
/// the rest are counted as dropped, and what it kept reaches the store once it is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_journal_at_its_bound_drops_loudly_and_replays_what_it_kept() {
    let Some(uri) = common::mongo_uri() else {
        return;
    };
    let g = GatedMongo::start(&uri, yaml).await;
    traffic(&g.gateway, 10).await;
    wait_for_logs(&*g.store, 10, Duration::from_secs(30)).await;

    g.gate.close();
    const DOWN: usize = 4_000;
    traffic(&g.gateway, DOWN).await;
    // The flusher replays the journal into the closed store between batches, each try
    // waiting out the driver's server selection: on a loaded machine 4,000 events take
    // a while to be journaled or dropped.
    wait_until(
        "every event journaled or dropped",
        Duration::from_secs(150),
        async || {
            metric(&g.gateway, "tollgate_usage_journaled_total").await
                + metric(&g.gateway, "tollgate_usage_dropped_total").await
                == DOWN as i64
        },
    )
    .await;
    let journaled = metric(&g.gateway, "tollgate_usage_journaled_total").await;
    let dropped = metric(&g.gateway, "tollgate_usage_dropped_total").await;
    eprintln!("journal bound: {journaled} journaled, {dropped} dropped");
    assert!(dropped > 0, "4,000 events do not fit in 1 MiB");
    let journal = g.gateway.data_dir().join("usage.journal");
    let size = std::fs::metadata(&journal).unwrap().len();
    assert!(size <= 1024 * 1024, "the journal grew to {size} bytes");
    assert_eq!(
        metric(&g.gateway, "tollgate_usage_journal_bytes").await,
        size as i64,
        "the gauge shows the journal's size"
    );
    assert!(g.gateway.log().contains("usage events LOST"));

    g.gate.open();
    let logs = wait_for_logs(&*g.store, 10 + journaled as usize, Duration::from_secs(120)).await;
    assert_eq!(logs.len(), 10 + journaled as usize, "replayed exactly once");
    wait_until("the journal emptied", Duration::from_secs(30), async || {
        std::fs::metadata(&journal).is_ok_and(|m| m.len() == 0)
            && metric(&g.gateway, "tollgate_usage_journal_bytes").await == 0
    })
    .await;
    assert_eq!(
        INITIAL - g.redis.balance("acme").await.unwrap(),
        10 + DOWN as i64,
        "the ledger charged every call"
    );
    assert_loss_reported(&g.redis, &*g.store, dropped).await;
}

/// The journal's disk is full (its file is `/dev/full`: every write fails with ENOSPC)
/// while the store is down: calls are served at their usual speed, each lost event is
/// counted and logged, and events reach the store again once it is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_under_the_journal_costs_requests_nothing() {
    let Some(uri) = common::mongo_uri() else {
        return;
    };
    let mut g = GatedMongo::start(&uri, yaml).await;
    g.gateway.stop();
    let journal = g.gateway.data_dir().join("usage.journal");
    std::fs::remove_file(&journal).unwrap();
    std::os::unix::fs::symlink("/dev/full", &journal).unwrap();
    g.gateway.start_again();
    traffic(&g.gateway, 10).await;
    wait_for_logs(&*g.store, 10, Duration::from_secs(30)).await;

    g.gate.close();
    let started = std::time::Instant::now();
    traffic(&g.gateway, 60).await;
    eprintln!("disk full: 60 calls in {:?}", started.elapsed());
    wait_until(
        "the lost events to be counted",
        Duration::from_secs(60),
        async || metric(&g.gateway, "tollgate_usage_dropped_total").await == 60,
    )
    .await;
    let log = g.gateway.log();
    assert!(log.contains("usage events LOST"), "a loud error");
    assert!(log.contains("No space left on device"), "naming the cause");

    g.gate.open();
    traffic(&g.gateway, 10).await;
    let logs = wait_for_logs(&*g.store, 20, Duration::from_secs(60)).await;
    assert_eq!(logs.len(), 20);
    assert_eq!(all_logs(&*g.store).await.len(), 20, "nothing else arrived");
    assert_loss_reported(&g.redis, &*g.store, 60).await;
}
