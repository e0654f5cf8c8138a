//! Leased credits on a real Redis (docs/DESIGN.md §Leased credits): gateway replicas charge
//! busy tenants from slices held in memory and report every 100 ms. Never over-spent, exact
//! near zero with two replicas, no per-call Redis command while a slice lasts, an
//! operator's change exact with slices out, and a replica killed holding a slice strands
//! at most its margin, for at most the lease's life.

use tollgate_testkit as common;

use common::store::StoreUnderTest;
use common::{
    admin_token, client, metric_sample, token, wait_until, Gateway, RedisServer, Upstream,
};
use std::collections::HashMap;
use std::time::{Duration, Instant};
use tollgate::config::LedgerConfig;
use tollgate::ledger::RedisLedger;

/// A ledger timeout well above a loaded test machine's Redis latency: these tests are about
/// exactness, and a 503 (a per-call charge that timed out under the suite's load) would
/// change the counts they check.
fn yaml(upstream: &str, credits: i64) -> String {
    format!(
        "ledger:
  timeout_ms: 1000
  lease: {{ enabled: true }}
usage: {{ batch_size: 50, flush_interval_ms: 50 }}
services:
  - name: notes
    upstream: {upstream}
    endpoints:
      - {{ method: POST, path: /expensive, credits: 7 }}
      - {{ method: GET, path: /x, credits: 5 }}
tenants:
  - {{ id: ops }}
  - {{ id: rich, credits: {credits} }}
"
    )
}

fn env(redis: &RedisServer) -> Vec<(String, String)> {
    vec![("TOLLGATE_REDIS_URL".to_owned(), redis.url())]
}

/// The tenant's leases as Redis holds them: holder → (held, margin).
async fn leases(redis: &RedisServer) -> HashMap<String, (i64, i64)> {
    let mut conn = redis.connection().await;
    let fields: HashMap<String, String> = redis::cmd("HGETALL")
        .arg("tg:{rich}:leases")
        .query_async(&mut conn)
        .await
        .unwrap();
    fields
        .into_iter()
        .filter(|(k, _)| !k.starts_with('_'))
        .map(|(k, v)| {
            let mut parts = v.split(':').map(|p| p.parse::<i64>().unwrap());
            (k, (parts.next().unwrap(), parts.next().unwrap()))
        })
        .collect()
}

async fn forfeited(redis: &RedisServer) -> i64 {
    let mut conn = redis.connection().await;
    let value: Option<i64> = redis::cmd("HGET")
        .arg("tg:{rich}:leases")
        .arg("_forfeited")
        .query_async(&mut conn)
        .await
        .unwrap();
    value.unwrap_or(0)
}

async fn leased_charges(gateway: &Gateway) -> f64 {
    metric_sample(
        &gateway.metrics_text().await,
        "tollgate_ledger_leased_charges_total",
        &[],
    )
}

/// `n` GET /x calls (5 credits) on `gateway`, `width` at a time: the statuses.
async fn calls(gateway: &Gateway, n: usize, width: usize) -> Vec<u16> {
    common::get_many(gateway, "/api/proxy/notes/x", "rich", n, width).await
}

/// `n` GET /x calls on each gateway at once, `width` at a time, again and again until at
/// least `holders` replicas hold a slice of `rich` (an idle slice goes back after 1 s, and a
/// loaded machine is slow to hydrate the first calls; 30 s deadline): the calls served. A
/// 503 under load costs nothing (the first calls hydrate; a per-call charge may pass the
/// ledger timeout); any other status fails the test.
async fn warm_until_leased(
    redis: &RedisServer,
    gateways: &[&Gateway],
    holders: usize,
    (n, width): (usize, usize),
) -> i64 {
    let mut served = 0;
    let deadline = Instant::now() + Duration::from_secs(30);
    while leases(redis).await.len() < holders {
        assert!(
            Instant::now() < deadline,
            "{holders} replica(s) to hold a slice"
        );
        let statuses =
            futures_util::future::join_all(gateways.iter().map(|g| calls(g, n, width))).await;
        let all: Vec<u16> = statuses.into_iter().flatten().collect();
        assert!(all.iter().all(|s| matches!(s, 200 | 503)), "{all:?}");
        served += all.iter().filter(|s| **s == 200).count() as i64;
    }
    served
}

/// The existing exactness test with leasing on, from slices already held: both replicas
/// lease while a warm-up spends on GET /x (5 credits), then concurrent POST /expensive
/// calls (7 credits), 150 more than the rest of the balance pays, spread over them: exactly
/// what it pays are served.
/// Slices are recalled near zero; once they are back Redis holds what no call could use.
/// (The warm-up makes the slices certain: a burst that outruns the first lease tick on a
/// loaded machine would be charged per call only, and test nothing about slices.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_leasing_replicas_serve_exactly_what_the_balance_pays() {
    let upstream = Upstream::start().await;
    let redis = RedisServer::start();
    let first = Gateway::start_with(&yaml(&upstream.url(), 2500), env(&redis));
    let second = Gateway::start_with(&yaml(&upstream.url(), 2500), env(&redis));

    let warmed = warm_until_leased(&redis, &[&first, &second], 2, (20, 4)).await;
    let left = 2500 - 5 * warmed;
    assert!(
        left >= 7 * 50,
        "the warm-up left enough for a burst: {left}"
    );
    // Enough calls for every credit left, and 150 more that must be refused.
    let burst = (left / 7 + 150) as usize;

    let http = client();
    let calls = (0..burst).map(|i| {
        let gateway = if i % 2 == 0 { &first } else { &second };
        let request = http
            .post(gateway.url("/api/proxy/notes/expensive"))
            .bearer_auth(token("rich", "alice"));
        async move { request.send().await.unwrap().status().as_u16() }
    });
    let statuses = futures_util::future::join_all(calls).await;
    let ok = statuses.iter().filter(|s| **s == 200).count() as i64;
    let refused = statuses.iter().filter(|s| **s == 402).count() as i64;
    assert_eq!((ok, refused), (left / 7, 150), "{statuses:?}");
    assert_eq!(upstream.requests() as i64, warmed + ok);
    let leased = leased_charges(&first).await + leased_charges(&second).await;
    eprintln!(
        "exactness: {leased} of {} calls taken from slices",
        warmed + ok
    );
    assert!(leased > 0.0, "calls were charged from slices");
    wait_until("every slice back", Duration::from_secs(10), async || {
        leases(&redis).await.is_empty()
    })
    .await;
    assert_eq!(redis.balance("rich").await, Some(left % 7));
}

/// A busy tenant on two replicas: once each holds a slice, calls cost no Redis command
/// (INFO commandstats: a report every 100 ms per replica, not one script per call); every
/// call is paid once; an operator's top-up and a balance set mid-run stay exact (the set
/// recalls the slices first); reconciliation finds nothing once the gateways stopped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slices_take_the_round_trip_off_the_hot_path_and_stay_exact() {
    let Some(uri) = common::mongo_uri() else {
        return;
    };
    let upstream = Upstream::start().await;
    let redis = RedisServer::start();
    let db = common::unique_db();
    let mut env = env(&redis);
    env.extend(
        StoreUnderTest::Mongo {
            uri: uri.clone(),
            db: db.clone(),
        }
        .env(),
    );
    let mut first = Gateway::start_with(&yaml(&upstream.url(), 1_000_000), env.clone());
    let mut second = Gateway::start_with(&yaml(&upstream.url(), 1_000_000), env);

    // Every phase may see a 503 under load (the first calls hydrate from the store and
    // wait for the other replica's publishes; a per-call charge may pass the ledger
    // timeout): it costs nothing, so the books count the 200s.
    let served = |statuses: (Vec<u16>, Vec<u16>)| {
        let all: Vec<u16> = statuses.0.into_iter().chain(statuses.1).collect();
        assert!(all.iter().all(|s| matches!(s, 200 | 503)), "{all:?}");
        all.iter().filter(|s| **s == 200).count() as u64
    };
    // Warm: both replicas see a busy tenant and lease.
    let warmed = warm_until_leased(&redis, &[&first, &second], 2, (100, 8)).await as u64;

    let scripts_before = redis.evalsha_calls().await;
    let leased_before = leased_charges(&first).await + leased_charges(&second).await;
    let started = Instant::now();
    let busy = served(tokio::join!(
        calls(&first, 1000, 8),
        calls(&second, 1000, 8)
    ));
    let took = started.elapsed();
    assert!(busy >= 1900, "{busy} of 2000 served");
    let scripts = redis.evalsha_calls().await - scripts_before;
    let leased = leased_charges(&first).await + leased_charges(&second).await - leased_before;
    // Reports: one per replica per tick, plus a few per-call charges while a slice grows.
    let ticks = (took.as_millis() / 100 + 2) as u64;
    eprintln!("2000 calls in {took:?}: {scripts} scripts, {leased} from slices, {ticks} ticks");
    assert!(
        leased >= 0.9 * busy as f64,
        "most calls were taken from slices: {leased} of {busy}"
    );
    assert!(
        scripts <= 2 * ticks + 200,
        "no script per call: {scripts} for 2000 calls"
    );

    // An operator's changes with slices out: a top-up, then a new balance.
    let admin = client();
    // A change that could not finish in time (a balance set waits for the slices) answers
    // 503 change-pending; asked again with its key, it gives its one result.
    let credit = async |method: reqwest::Method, body: serde_json::Value, key: &str| {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let r = admin
                .request(
                    method.clone(),
                    first.admin_url("/admin/tenants/rich/credits"),
                )
                .bearer_auth(admin_token("ops", "root"))
                .header("idempotency-key", key)
                .json(&body)
                .send()
                .await
                .unwrap();
            if r.status() == 503 && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
            assert_eq!(r.status(), 200, "{:?}", r.text().await);
            return;
        }
    };
    let (first_calls, second_calls, ()) =
        tokio::join!(calls(&first, 300, 8), calls(&second, 300, 8), async {
            let top_up = serde_json::json!({"amount": 1000, "reason": "top-up"});
            credit(reqwest::Method::POST, top_up, "k1").await;
            let reset = serde_json::json!({"balance": 500_000, "reason": "reset"});
            credit(reqwest::Method::PUT, reset, "k2").await;
        });
    let during = served((first_calls, second_calls));
    assert_eq!(upstream.requests(), warmed + busy + during);

    // Stopped, the replicas return their slices and drain their usage: the books agree.
    first.stop();
    second.stop();
    assert!(leases(&redis).await.is_empty(), "returned at shutdown");
    assert_eq!(forfeited(&redis).await, 0);
    let balance = redis.balance("rich").await.unwrap();
    let after_set = 500_000 - balance;
    assert!(
        after_set % 5 == 0 && after_set <= 600 * 5,
        "the calls after the set, charged from 500,000: {balance}"
    );
    let store = StoreUnderTest::Mongo { uri, db }
        .open(std::path::Path::new(""))
        .await;
    let ledger = RedisLedger::new(&redis.url(), &LedgerConfig::default()).unwrap();
    let reports = tollgate::reconcile::reconcile(&*store, &ledger, &|_| 0)
        .await
        .unwrap();
    assert!(
        reports
            .iter()
            .all(|r| r.ledger_difference == 0 && r.store_difference == 0),
        "{reports:?}"
    );
}

/// A replica SIGKILLed holding a slice: Redis takes the slice back once the lease expires
/// (3 s after its last report; swept by the next report of any replica), but for its
/// margin (what the dead replica may have spent unreported), which it keeps and reports as
/// forfeited. A survivor then drains the tenant: the upstream never saw more calls than the
/// balance paid for, and no more than the forfeited margin stays unspent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_replica_strands_its_slice_only_until_the_lease_expires() {
    const INITIAL: i64 = 10_000;
    let upstream = Upstream::start().await;
    let redis = RedisServer::start();
    let mut doomed = Gateway::start_with(&yaml(&upstream.url(), INITIAL), env(&redis));
    // The books below count what the upstream saw, warm-up included.
    warm_until_leased(&redis, &[&doomed], 1, (100, 8)).await;
    let held_out = async || leases(&redis).await.into_values().next();
    // Spend from it, so the lease has something unreported when the replica dies.
    let statuses = calls(&doomed, 40, 4).await;
    assert!(
        statuses.iter().all(|s| matches!(s, 200 | 503)),
        "{statuses:?}"
    );
    doomed.kill();
    let killed = Instant::now();
    let (held, margin) = held_out().await.expect("the dead replica's lease");
    assert!(held > 0 && margin > 0, "held {held}, margin {margin}");

    // A survivor takes a slice of its own; its reports (and per-call charges) sweep the
    // dead lease once expired. Until then the dead slice is out of reach: a fast survivor
    // may spend the rest and get 402s, which end once the sweep returns the slice.
    let survivor = Gateway::start_with(&yaml(&upstream.url(), INITIAL), env(&redis));
    let deadline = Instant::now() + Duration::from_secs(15);
    while forfeited(&redis).await == 0 {
        assert!(Instant::now() < deadline, "the dead lease never expired");
        let statuses = calls(&survivor, 40, 4).await;
        assert!(
            statuses.iter().all(|s| matches!(s, 200 | 402 | 503)),
            "{statuses:?}"
        );
    }
    let expired_after = killed.elapsed();
    assert!(
        expired_after >= Duration::from_millis(2500),
        "not before its ttl: {expired_after:?}"
    );
    let kept = forfeited(&redis).await;
    assert_eq!(
        kept,
        margin.min(held),
        "the margin is kept, the rest returned"
    );

    // The survivor drains the tenant.
    loop {
        let statuses = calls(&survivor, 200, 8).await;
        assert!(
            statuses.iter().all(|s| matches!(s, 200 | 402)),
            "{statuses:?}"
        );
        if statuses.contains(&402) {
            break;
        }
    }
    let paid = upstream.requests() as i64;
    eprintln!("killed replica: held {held}, margin {margin}, kept {kept}, expired after {expired_after:?}, {paid} calls paid");
    assert!(
        paid * 5 <= INITIAL,
        "never more than paid: {paid} calls of 5"
    );
    assert!(
        INITIAL - paid * 5 <= kept + 4,
        "only the forfeited margin stays unspent: {paid} calls, kept {kept}"
    );
}
