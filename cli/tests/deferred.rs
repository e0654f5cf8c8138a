//! Deferred charges (`on_ledger_error: allow`) against a real Redis paused with SIGSTOP:
//! such a service's calls are served while the ledger is down, and once it is back each is
//! charged exactly once (a timed-out try that landed late is found, not repeated), a call
//! the upstream failed is never charged, a tenant out of credits by then is served for free
//! and counted, and the usage logs still add up to what the ledger took. A call still running
//! long after the ledger is back is charged once too: its charge is taken as soon as the
//! ledger answers, while the late-landed try's record still lives.

use tollgate_testkit as common;

use common::{
    admin_token, client, metric_sample, token, wait_until, ClosedPort, Gateway, RedisServer,
    Upstream,
};
use serde_json::Value;
use std::time::Duration;

fn yaml(upstream: &str, closed_port: u16) -> String {
    format!(
        "ledger:
  timeout_ms: 250
  charge_ttl_secs: 5
services:
  - name: lenient
    upstream: {upstream}
    on_ledger_error: allow
    endpoints:
      - {{ method: ANY, path: /*, credits: 5 }}
  - name: strict
    upstream: {upstream}
    endpoints:
      - {{ method: ANY, path: /*, credits: 5 }}
  - name: lenient-down
    upstream: http://127.0.0.1:{closed_port}
    on_ledger_error: allow
    timeouts: {{ connect_ms: 500 }}
    endpoints:
      - {{ method: ANY, path: /*, credits: 5 }}
tenants:
  - {{ id: lean, credits: 25 }}
  - {{ id: other, credits: 100 }}
  - {{ id: third, credits: 50 }}
  - {{ id: patient, credits: 20 }}
"
    )
}

/// One call; returns status, `x-credits-cost`, `x-credits-remaining`, `x-credits-deferred`.
async fn call(
    gateway: &Gateway,
    tenant: &str,
    path: &str,
    key: Option<&str>,
) -> (u16, Option<String>, Option<String>, Option<String>) {
    let mut request = client()
        .post(gateway.url(path))
        .bearer_auth(token(tenant, "u1"));
    if let Some(key) = key {
        request = request.header("idempotency-key", key);
    }
    let r = request.send().await.unwrap();
    let header = |name: &str| {
        r.headers()
            .get(name)
            .map(|v| v.to_str().unwrap().to_owned())
    };
    (
        r.status().as_u16(),
        header("x-credits-cost"),
        header("x-credits-remaining"),
        header("x-credits-deferred"),
    )
}

fn deferred(text: &str, outcome: &str) -> f64 {
    metric_sample(
        text,
        "tollgate_deferred_charges_total",
        &[("outcome", outcome)],
    )
}

/// The tenant's usage logs, through the admin API.
async fn logs(gateway: &Gateway, tenant: &str) -> Vec<Value> {
    let path = format!("/admin/usage-logs?tenant_id={tenant}&limit=1000");
    let page = gateway.admin_json(&path, &admin_token("ops", "root")).await;
    page["items"].as_array().unwrap().clone()
}

fn charged_by_logs(logs: &[Value]) -> i64 {
    logs.iter()
        .filter(|l| l["refunded"] == false)
        .map(|l| l["credits_used"].as_i64().unwrap())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_served_while_the_ledger_is_down_are_charged_once_it_is_back() {
    let upstream = Upstream::start().await;
    let redis = RedisServer::start();
    let closed = ClosedPort::new();
    let gateway = Gateway::start(&yaml(&upstream.url(), closed.port), Some(redis.url()));
    // Balances seeded into Redis before the outage.
    for tenant in ["lean", "other", "third", "patient"] {
        let (status, ..) = call(&gateway, tenant, "/api/proxy/lenient/warm", None).await;
        assert_eq!(status, 200);
    }
    assert_eq!(redis.balance("lean").await, Some(20));

    redis.pause();
    // patient: one call that outlives the charge record of its late-landed first try
    // (9 s against a 5 s record), were its charge only taken when the call ends.
    let slow = {
        let url = gateway.url("/api/proxy/lenient/slow?delay_ms=9000");
        let request = client().get(url).bearer_auth(token("patient", "u1"));
        tokio::spawn(async move { request.send().await.unwrap().status().as_u16() })
    };
    // lean: 10 calls of 5 on a balance of 20, all served on credit.
    let lean = (0..10).map(|i| {
        let path = format!("/api/proxy/lenient/item/{i}");
        let gateway = &gateway;
        async move { call(gateway, "lean", &path, None).await }
    });
    for (status, cost, remaining, deferred) in futures_util::future::join_all(lean).await {
        assert_eq!(
            status, 200,
            "an `allow` service is served while the ledger is down"
        );
        assert_eq!(cost.as_deref(), Some("5"));
        assert_eq!(remaining, None, "no balance is known to tell");
        assert_eq!(deferred.as_deref(), Some("true"));
    }
    // other: a call with an Idempotency-Key fails closed (only the ledger can tell whether
    // its key was used: served on credit it could run twice), and three calls the upstream
    // fails.
    for _ in 0..2 {
        let (status, ..) = call(&gateway, "other", "/api/proxy/lenient/order", Some("k1")).await;
        assert_eq!(status, 503);
    }
    for _ in 0..3 {
        let (status, cost, _, deferred) =
            call(&gateway, "other", "/api/proxy/lenient-down/x", None).await;
        assert_eq!(status, 502);
        assert_eq!(cost.as_deref(), Some("0"), "a failed call costs nothing");
        assert_eq!(deferred.as_deref(), Some("true"));
    }
    // third: a `deny` service still fails closed.
    for _ in 0..2 {
        let (status, ..) = call(&gateway, "third", "/api/proxy/strict/x", None).await;
        assert_eq!(status, 503);
    }
    redis.resume();
    assert_eq!(slow.await.unwrap(), 200);
    assert_eq!(upstream.requests(), 4 + 10 + 1, "503s are never forwarded");

    wait_until(
        "every deferred charge to be settled",
        Duration::from_secs(30),
        async || {
            let text = gateway.metrics_text().await;
            metric_sample(&text, "tollgate_deferred_charges_pending", &[]) == 0.0
                && ["charged", "uncollected", "voided"]
                    .iter()
                    .map(|o| deferred(&text, o))
                    .sum::<f64>()
                    == 14.0
        },
    )
    .await;
    let text = gateway.metrics_text().await;
    // lean could pay for 4 of its 10 calls (the tries that timed out landed when Redis
    // resumed: found by their charge id, not taken again); patient paid for its slow call.
    assert_eq!(deferred(&text, "charged"), 5.0, "{text}");
    assert_eq!(deferred(&text, "uncollected"), 6.0);
    assert_eq!(deferred(&text, "voided"), 3.0);
    assert_eq!(deferred(&text, "lost"), 0.0);
    assert_eq!(redis.balance("lean").await, Some(0));
    assert_eq!(redis.balance("patient").await, Some(10), "charged once");
    wait_until(
        "the 503s to be voided",
        Duration::from_secs(20),
        async || {
            redis.balance("third").await == Some(45) && redis.balance("other").await == Some(95)
        },
    )
    .await;

    // The books: every call is logged once, and the logs add up to what the ledger took.
    let mut lean_logs = Vec::new();
    wait_until("usage logs", Duration::from_secs(20), async || {
        lean_logs = logs(&gateway, "lean").await;
        lean_logs.len() == 11
    })
    .await;
    assert_eq!(charged_by_logs(&lean_logs), 25, "{lean_logs:#?}");
    let free = lean_logs
        .iter()
        .filter(|l| l["credits_used"] == 0 && l["status"] == 200)
        .count();
    assert_eq!(free, 6, "uncollected calls are logged at 0 credits");
    let mut other_logs = Vec::new();
    wait_until("usage logs", Duration::from_secs(20), async || {
        other_logs = logs(&gateway, "other").await;
        other_logs.len() == 4
    })
    .await;
    assert_eq!(charged_by_logs(&other_logs), 5, "{other_logs:#?}");
    assert_eq!(
        other_logs.iter().filter(|l| l["refunded"] == true).count(),
        3
    );
    let log = gateway.log();
    assert!(
        log.contains("was not paid for"),
        "uncollected calls are logged loudly"
    );
    assert!(!log.contains("panicked"), "{log}");
}
