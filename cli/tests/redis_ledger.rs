//! The Redis ledger under replicas and faults: two gateway processes sharing one Redis,
//! a paused Redis (SIGSTOP), and a Redis restarted on the same port.

use tollgate_testkit as common;

use common::{client, token, wait_until, Gateway, RedisServer, Upstream};
use std::time::{Duration, Instant};

fn yaml(upstream: &str) -> String {
    format!(
        r#"
ledger:
  timeout_ms: 250
services:
  - name: notes
    upstream: {upstream}
    endpoints:
      - {{ method: POST, path: /expensive, credits: 7 }}
      - {{ method: GET, path: /cheap, credits: 1 }}
tenants:
  - {{ id: rich, credits: 1000 }}
"#
    )
}

async fn call(gateway: &Gateway, path: &str) -> reqwest::Response {
    let url = gateway.url(&format!("/api/proxy/notes{path}"));
    let request = if path == "/expensive" {
        client().post(url)
    } else {
        client().get(url)
    };
    request
        .bearer_auth(token("rich", "alice"))
        .send()
        .await
        .unwrap()
}

/// Balance 1000, cost 7, 300 concurrent requests spread over two gateways: exactly 142.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_never_overspend() {
    let upstream = Upstream::start().await;
    let redis = RedisServer::start();
    let first = Gateway::start(&yaml(&upstream.url()), Some(redis.url()));
    let second = Gateway::start(&yaml(&upstream.url()), Some(redis.url()));
    let http = client();
    let calls = (0..300).map(|i| {
        let gateway = if i % 2 == 0 { &first } else { &second };
        let request = http
            .post(gateway.url("/api/proxy/notes/expensive"))
            .bearer_auth(token("rich", "alice"));
        async move { request.send().await.unwrap().status().as_u16() }
    });
    let statuses = futures_util::future::join_all(calls).await;
    let ok = statuses.iter().filter(|s| **s == 200).count();
    let refused = statuses.iter().filter(|s| **s == 402).count();
    assert_eq!((ok, refused), (142, 158), "{statuses:?}");
    assert_eq!(
        upstream.requests(),
        142,
        "the upstream saw exactly the paid calls"
    );
    assert_eq!(redis.balance("rich").await, Some(6));
}

/// A paused Redis: 503 with Retry-After within the ledger timeout, never a hang; once it
/// resumes, service returns without a restart and every timed-out charge is voided.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_redis_fails_closed_and_costs_nothing() {
    let upstream = Upstream::start().await;
    let redis = RedisServer::start();
    let gateway = Gateway::start(&yaml(&upstream.url()), Some(redis.url()));
    assert_eq!(call(&gateway, "/expensive").await.status(), 200);
    assert_eq!(redis.balance("rich").await, Some(993));

    redis.pause();
    let calls = (0..20).map(|_| async {
        let started = Instant::now();
        let response = call(&gateway, "/expensive").await;
        (
            response.status().as_u16(),
            response.headers().get("retry-after").is_some(),
            started.elapsed(),
        )
    });
    for (status, retry_after, elapsed) in futures_util::future::join_all(calls).await {
        assert_eq!(status, 503);
        assert!(retry_after, "a 503 carries Retry-After");
        // The ledger timeout is 250 ms; the bound leaves room for a busy machine, not a hang.
        assert!(
            elapsed < Duration::from_secs(3),
            "answered after {elapsed:?}"
        );
    }
    redis.resume();

    let mut cheap_ok = 0i64;
    wait_until(
        "the gateway to charge again",
        Duration::from_secs(20),
        async || {
            let ok = call(&gateway, "/cheap").await.status() == 200;
            cheap_ok += i64::from(ok);
            ok
        },
    )
    .await;
    // The 503s' charges sat in Redis's socket buffer and applied on resume; the void worker
    // must give every one of them back. Only then is the balance 993 minus the cheap calls.
    wait_until(
        "timed-out charges to be voided",
        Duration::from_secs(20),
        async || redis.balance("rich").await == Some(993 - cheap_ok),
    )
    .await;
    assert_eq!(
        upstream.requests() as i64,
        1 + cheap_ok,
        "no 503 reached the upstream"
    );
    let log = gateway.log();
    assert!(!log.contains("panicked"), "{log}");
}

/// Redis killed and started again (empty) on the same port: 503 meanwhile, and the gateway
/// reconnects by itself, re-seeding the balance from its tenant directory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_redis_is_reconnected() {
    let upstream = Upstream::start().await;
    let mut redis = RedisServer::start();
    let gateway = Gateway::start(&yaml(&upstream.url()), Some(redis.url()));
    assert_eq!(call(&gateway, "/cheap").await.status(), 200);

    redis.kill();
    let started = Instant::now();
    let response = call(&gateway, "/cheap").await;
    assert_eq!(response.status(), 503);
    assert!(started.elapsed() < Duration::from_secs(3));
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["status"], 503);

    redis.restart();
    wait_until(
        "the gateway to reconnect",
        Duration::from_secs(20),
        async || call(&gateway, "/cheap").await.status() == 200,
    )
    .await;
    let balance = redis.balance("rich").await.expect("balance re-seeded");
    assert!((990..1000).contains(&balance), "balance {balance}");
}
