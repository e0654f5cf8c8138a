//! Operators' credit changes happen exactly once. A failpoint crashes the control plane
//! (SIGABRT) between each pair of steps of a top-up — intent recorded, ledger moved,
//! transaction row written — and after a restart the recovery pass and a retry with the
//! same `Idempotency-Key` finish it once: one transaction row, the ledger moved once, and
//! `tollgate reconcile` reports nothing. Before: a store failure after the ledger moved
//! was "undone" (silently kept when the undo was refused), and a retried top-up applied
//! twice.

use tollgate_testkit as common;

use common::{admin_token, client, wait_until, Gateway, RedisServer};
use serde_json::{json, Value};
use std::time::Duration;

const YAML: &str = "
usage: { flush_interval_ms: 50 }
services:
  - name: notes
    upstream: http://127.0.0.1:9
    endpoints:
      - { method: GET, path: /x, credits: 1 }
tenants:
  - { id: ops, name: Ops }
  - { id: acme, name: Acme, credits: 1000 }
";

const STEPS: [&str; 3] = [
    "credits.after_intent",
    "credits.after_ledger",
    "credits.after_transaction",
];

async fn top_up(
    gateway: &Gateway,
    key: Option<&str>,
    amount: i64,
) -> reqwest::Result<reqwest::Response> {
    let mut request = client()
        .post(gateway.admin_url("/admin/tenants/acme/credits"))
        .bearer_auth(admin_token("ops", "root"))
        .json(&json!({"amount": amount, "reason": "goodwill"}));
    if let Some(key) = key {
        request = request.header("idempotency-key", key);
    }
    request.send().await
}

async fn goodwill_rows(gateway: &Gateway) -> Vec<Value> {
    let path = "/admin/tenants/acme/credits/transactions";
    let rows = gateway.admin_json(path, &admin_token("ops", "root")).await;
    rows["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["reason"] == "goodwill")
        .cloned()
        .collect()
}

async fn crash_between_steps(redis: bool) {
    let redis = redis.then(RedisServer::start);
    for (i, step) in STEPS.iter().enumerate() {
        let mut env = vec![("TOLLGATE_FAILPOINTS".to_owned(), (*step).to_owned())];
        if let Some(redis) = &redis {
            env.push(("TOLLGATE_REDIS_URL".to_owned(), redis.url()));
            let mut conn = redis.connection().await;
            let _: () = redis::cmd("FLUSHALL").query_async(&mut conn).await.unwrap();
        }
        let mut gateway = Gateway::start_with(YAML, env);
        let key = format!("top-up-{i}");
        // The crash kills the process mid-request.
        assert!(top_up(&gateway, Some(&key), 100).await.is_err(), "{step}");
        gateway.kill();
        gateway.set_env("TOLLGATE_FAILPOINTS", None);
        gateway.start_again();
        // The keyed retry finishes (or finds) the change and answers its result, as often
        // as it is asked.
        let mut results = Vec::new();
        for _ in 0..2 {
            let r = top_up(&gateway, Some(&key), 100).await.unwrap();
            assert_eq!(r.status(), 200, "{step}");
            results.push(r.json::<Value>().await.unwrap());
        }
        assert_eq!(results[0], results[1], "{step}");
        assert_eq!(
            (
                results[0]["amount"].as_i64(),
                results[0]["balance"].as_i64()
            ),
            (Some(100), Some(1100))
        );
        let other = top_up(&gateway, Some(&key), 101).await.unwrap();
        assert_eq!(other.status(), 422, "{step}: the key names another change");

        // Without a key: the next start's recovery pass finishes it.
        gateway.kill();
        gateway.set_env("TOLLGATE_FAILPOINTS", Some(step));
        gateway.start_again();
        assert!(top_up(&gateway, None, 50).await.is_err(), "{step}");
        gateway.kill();
        gateway.set_env("TOLLGATE_FAILPOINTS", None);
        gateway.start_again();
        wait_until(
            "the recovered change",
            Duration::from_secs(10),
            async || goodwill_rows(&gateway).await.len() == 2,
        )
        .await;
        let rows = goodwill_rows(&gateway).await;
        let amounts: Vec<i64> = rows.iter().map(|r| r["amount"].as_i64().unwrap()).collect();
        assert_eq!(amounts.iter().sum::<i64>(), 150, "{step}: {rows:?}");
        let tenant = gateway
            .admin_json("/admin/tenants/acme", &admin_token("ops", "root"))
            .await;
        assert_eq!(tenant["balance"], 1150, "{step}: {tenant}");
        gateway.stop();
        let env: Vec<(&str, String)> = redis
            .iter()
            .map(|r| ("TOLLGATE_REDIS_URL", r.url()))
            .collect();
        let (ok, printed) = gateway.reconcile(&env);
        assert!(ok, "{step}: {printed}");
    }
}

/// A client that gives up mid-change (here after 200 ms, while a failpoint holds the change
/// for a second after its intent) cuts nothing: the change finishes on its own, before any
/// recovery pass could (the next is 30 s away).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_gone_mid_change_cuts_nothing() {
    let env = vec![("TOLLGATE_FAILPOINTS".to_owned(), "credits.slow".to_owned())];
    let gateway = Gateway::start_with(YAML, env);
    let gone = reqwest::Client::builder()
        .timeout(Duration::from_millis(200))
        .build()
        .unwrap()
        .post(gateway.admin_url("/admin/tenants/acme/credits"))
        .bearer_auth(admin_token("ops", "root"))
        .json(&json!({"amount": 100, "reason": "goodwill"}))
        .send()
        .await;
    assert!(gone.is_err(), "the client gave up");
    wait_until(
        "the change to finish",
        Duration::from_secs(10),
        async || goodwill_rows(&gateway).await.len() == 1,
    )
    .await;
    let tenant = gateway
        .admin_json("/admin/tenants/acme", &admin_token("ops", "root"))
        .await;
    assert_eq!(tenant["balance"], 1100);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_between_any_two_steps_applies_a_top_up_once_embedded() {
    crash_between_steps(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_between_any_two_steps_applies_a_top_up_once_on_redis() {
    crash_between_steps(true).await;
}
