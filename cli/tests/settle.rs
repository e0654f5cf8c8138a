//! Settled prices (docs/DESIGN.md §Settled prices): a reserve is charged before the call, the
//! cost is read from the upstream's answer (a header, the JSON body, the last server-sent
//! event with a usage object) and the charge settled once at the call's end. Against an
//! upstream that answers like an LLM API, on the embedded ledger and on Redis with two
//! replicas (per call and leased); every run ends with `tollgate reconcile` passing.

use tollgate_testkit as common;

use common::llm::{credits_for, Llm};
use common::store::StoreUnderTest;
use common::{admin_token, client, header_i64, token, wait_until, Gateway, RedisServer};
use serde_json::Value;
use std::time::Duration;

const RESERVE: i64 = 50;

fn yaml(llm: &str, extra: &str) -> String {
    let service = |name: &str, settle: &str| {
        format!(
            "  - name: {name}
    upstream: {llm}
    endpoints:
      - method: POST
        path: /v1/chat/completions
        credits: 1
        reserve: {RESERVE}
        {settle}
"
        )
    };
    format!(
        "usage: {{ batch_size: 20, flush_interval_ms: 50 }}
{extra}
services:
{}{}{}{}  - name: llm-size
    upstream: {llm}
    endpoints:
      - method: POST
        path: /v1/chat/completions
        credits: 1
        reserve: \"10 + int(request.query.tokens) / 100\"
        settle: {{ header: X-Usage-Credits }}
tenants:
  - {{ id: ops }}
  - {{ id: acme, credits: 100000 }}
  - {{ id: poor, credits: 60 }}
",
        service(
            "llm-json",
            "settle: { json: \"response.body.usage.total_tokens / 10\" }"
        ),
        service(
            "llm-sse",
            "settle: { sse: \"event.usage.total_tokens / 10\" }"
        ),
        service("llm-header", "settle: { header: X-Usage-Credits }"),
        service(
            "llm-allow",
            "settle: { header: X-Usage-Credits }\n        overage: allow"
        ),
    )
}

/// One call as `tenant`: the status, the reserve header, and the body read to its end
/// (`None`: the stream broke).
async fn call(
    gateway: &Gateway,
    tenant: &str,
    service: &str,
    query: &str,
) -> (u16, Option<i64>, Option<String>) {
    let response = client()
        .post(gateway.url(&format!("/api/proxy/{service}/v1/chat/completions?{query}")))
        .bearer_auth(token(tenant, "alice"))
        .body("{}")
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let reserved = header_i64(&response, "x-credits-reserved");
    (status, reserved, response.text().await.ok())
}

async fn balance(gateway: &Gateway, tenant: &str) -> i64 {
    let tenant = gateway
        .admin_json(
            &format!("/admin/tenants/{tenant}"),
            &admin_token("ops", "root"),
        )
        .await;
    tenant["balance"].as_i64().unwrap()
}

/// The usage logs of `tenant`, once there are `count`.
async fn logs(gateway: &Gateway, tenant: &str, count: usize) -> Vec<Value> {
    let mut logs = Vec::new();
    wait_until(
        "the calls' usage logs",
        Duration::from_secs(20),
        async || {
            let page = gateway
                .admin_json(
                    &format!("/admin/usage-logs?tenant_id={tenant}&limit=1000"),
                    &admin_token("ops", "root"),
                )
                .await;
            logs = page["items"].as_array().cloned().unwrap_or_default();
            logs.len() >= count
        },
    )
    .await;
    assert_eq!(logs.len(), count, "{logs:?}");
    logs
}

/// Each kind of settlement, one call at a time, with the balance checked after each.
async fn each_kind_settles(llm: &Llm, gateway: &Gateway) {
    let start = balance(gateway, "acme").await;
    let mut spent = 0;
    let mut calls = 0;
    let cases: [(&str, &str, i64); 7] = [
        // The JSON body's usage: 230 tokens / 10.
        ("llm-json", "tokens=230", 23),
        // The last server-sent event's usage.
        ("llm-sse", "tokens=120&stream=1", 12),
        // A stream cut before its usage: the reserve.
        ("llm-sse", "tokens=120&stream=1&cut=1", RESERVE),
        // The header, under the reserve.
        ("llm-header", "tokens=70", 7),
        // Above the reserve, capped (the default).
        ("llm-header", "tokens=900", RESERVE),
        // Above the reserve, allowed.
        ("llm-allow", "tokens=900", 90),
        // A reserve computed from the request: 10 + 4000 / 100.
        ("llm-size", "tokens=4000", 400),
    ];
    for (service, query, cost) in cases {
        let (status, reserved, body) = call(gateway, "acme", service, query).await;
        assert_eq!(status, 200, "{service}?{query}");
        let expected_reserve = if service == "llm-size" { 50 } else { RESERVE };
        assert_eq!(reserved, Some(expected_reserve), "{service}?{query}");
        if query.contains("cut=1") {
            assert!(body.is_none(), "the client sees the stream break");
        } else if query.contains("stream=1") {
            let body = body.unwrap();
            assert!(
                body.contains("\"total_tokens\":120") && body.ends_with("data: [DONE]\n\n"),
                "{body}"
            );
        }
        // llm-size reserves 50 and allows no overage: capped at it.
        let cost = if service == "llm-size" {
            cost.min(50)
        } else {
            cost
        };
        spent += cost;
        calls += 1;
        wait_until("the settlement", Duration::from_secs(10), async || {
            balance(gateway, "acme").await == start - spent
        })
        .await;
    }
    assert_eq!(llm.requests(), calls);
    let mut settled: Vec<(i64, i64)> = logs(gateway, "acme", calls as usize)
        .await
        .iter()
        .map(|l| {
            (
                l["reserved"].as_i64().unwrap(),
                l["credits_used"].as_i64().unwrap(),
            )
        })
        .collect();
    settled.sort();
    assert_eq!(
        settled,
        vec![
            (50, 7),
            (50, 12),
            (50, 23),
            (50, 50),
            (50, 50),
            (50, 50),
            (50, 90)
        ]
    );

    // Overage beyond the balance: taken as far as it goes, the shortfall logged.
    let (status, _, _) = call(gateway, "poor", "llm-allow", "tokens=900").await;
    assert_eq!(status, 200);
    wait_until("poor's settlement", Duration::from_secs(10), async || {
        balance(gateway, "poor").await == 0
    })
    .await;
    let poor = logs(gateway, "poor", 1).await;
    assert_eq!(poor[0]["credits_used"], 60, "{poor:?}");
    assert_eq!(poor[0]["shortfall"], 30, "{poor:?}");
    // A tenant who cannot cover the reserve is refused before the upstream is called.
    let (status, _, _) = call(gateway, "poor", "llm-json", "tokens=10").await;
    assert_eq!(status, 402);
    assert_eq!(llm.requests(), calls + 1);
}

/// A stream reaches the client as it comes: the first event arrives while the upstream
/// still holds the rest.
async fn streams_are_not_buffered(llm: &Llm, gateway: &Gateway) {
    let before = balance(gateway, "acme").await;
    let mut response = client()
        .post(gateway.url("/api/proxy/llm-sse/v1/chat/completions?tokens=300&stream=1&hold=1"))
        .bearer_auth(token("acme", "alice"))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let first = tokio::time::timeout(Duration::from_secs(5), response.chunk())
        .await
        .expect("the first event arrives before the upstream's last")
        .unwrap()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&first).starts_with("data: "),
        "{first:?}"
    );
    llm.release();
    let mut rest = Vec::new();
    while let Some(chunk) = response.chunk().await.unwrap() {
        rest.extend_from_slice(&chunk);
    }
    assert!(String::from_utf8_lossy(&rest).contains("\"total_tokens\":300"));
    // Settled after the last byte (not before the gateway stops: a stop in between leaves
    // the settlement journaled for the next start).
    wait_until("the settlement", Duration::from_secs(10), async || {
        balance(gateway, "acme").await == before - 30
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settled_prices_on_the_embedded_ledger() {
    let llm = Llm::start().await;
    let mut gateway = Gateway::start(&yaml(&llm.url(), ""), None);
    each_kind_settles(&llm, &gateway).await;
    streams_are_not_buffered(&llm, &gateway).await;
    gateway.stop();
    let (ok, printed) = gateway.reconcile(&[]);
    assert!(ok, "{printed}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settled_prices_on_redis() {
    let llm = Llm::start().await;
    let redis = RedisServer::start();
    let mut gateway = Gateway::start(&yaml(&llm.url(), ""), Some(redis.url()));
    each_kind_settles(&llm, &gateway).await;
    streams_are_not_buffered(&llm, &gateway).await;
    gateway.stop();
    let (ok, printed) = gateway.reconcile(&[("TOLLGATE_REDIS_URL", redis.url())]);
    assert!(ok, "{printed}");
}

/// 200 calls at once of every kind (some cut mid-stream), spread over `gateways`: the
/// balance ends exactly at what the calls' answers say they cost, and every call's log
/// says the same.
async fn concurrent_calls_settle_exactly(llm: &Llm, gateways: &[&Gateway]) {
    let start = balance(gateways[0], "acme").await;
    let mut calls = Vec::new();
    for i in 0..200u64 {
        let gateway = gateways[i as usize % gateways.len()];
        let tokens = 10 + (i * 37) % 700;
        let (service, query, cost) = match i % 5 {
            0 => (
                "llm-json",
                format!("tokens={tokens}"),
                credits_for(tokens).min(RESERVE),
            ),
            1 => (
                "llm-sse",
                format!("tokens={tokens}&stream=1"),
                credits_for(tokens).min(RESERVE),
            ),
            2 => (
                "llm-sse",
                format!("tokens={tokens}&stream=1&cut=1"),
                RESERVE,
            ),
            3 => (
                "llm-header",
                format!("tokens={tokens}"),
                credits_for(tokens).min(RESERVE),
            ),
            _ => ("llm-allow", format!("tokens={tokens}"), credits_for(tokens)),
        };
        calls.push(async move {
            let (status, _, _) = call(gateway, "acme", service, &query).await;
            assert_eq!(status, 200, "{service}?{query}");
            cost
        });
    }
    let expected: i64 = futures_util::future::join_all(calls)
        .await
        .into_iter()
        .sum();
    let logged: i64 = logs(gateways[0], "acme", 200)
        .await
        .iter()
        .map(|l| l["credits_used"].as_i64().unwrap())
        .sum();
    assert_eq!(logged, expected, "the usage logs say what the answers cost");
    for gateway in gateways {
        wait_until("the exact balance", Duration::from_secs(10), async || {
            balance(gateway, "acme").await == start - expected
        })
        .await;
    }
    assert!(llm.requests() >= 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_settled_calls_are_exact_on_the_embedded_ledger() {
    let llm = Llm::start().await;
    let mut gateway = Gateway::start(&yaml(&llm.url(), ""), None);
    concurrent_calls_settle_exactly(&llm, &[&gateway]).await;
    gateway.stop();
    let (ok, printed) = gateway.reconcile(&[]);
    assert!(ok, "{printed}");
}

/// Two replicas on one Redis and one MongoDB, per call and with leased credits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_settled_calls_are_exact_across_two_redis_replicas() {
    let Some(uri) = common::mongo_uri() else {
        return;
    };
    for extra in ["", "ledger:\n  lease: { enabled: true }"] {
        let llm = Llm::start().await;
        let redis = RedisServer::start();
        let mut env = StoreUnderTest::Mongo {
            uri: uri.clone(),
            db: common::unique_db(),
        }
        .env();
        env.push(("TOLLGATE_REDIS_URL".to_owned(), redis.url()));
        let mut first = Gateway::start_with(&yaml(&llm.url(), extra), env.clone());
        let mut second = Gateway::start_with(&yaml(&llm.url(), extra), env.clone());
        concurrent_calls_settle_exactly(&llm, &[&first, &second]).await;
        first.stop();
        second.stop();
        let mut reconcile_env: Vec<(&str, String)> =
            env.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
        reconcile_env.push(("TOLLGATE_REDIS_URL", redis.url()));
        let (ok, printed) = first.reconcile(&reconcile_env);
        assert!(ok, "{extra}: {printed}");
    }
}

/// A gateway killed in the middle of a settled call's answer (a failpoint aborts the process
/// as the first bytes of the body pass) settles the call at the reserve at its next start,
/// as a stream cut anywhere else settles: its usage log says so and the books agree. Before,
/// the reserve was taken and no log ever said why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_killed_mid_answer_settles_at_the_reserve_at_its_next_start() {
    for redis in [None, Some(RedisServer::start())] {
        let llm = Llm::start().await;
        let mut env = vec![(
            "TOLLGATE_FAILPOINTS".to_owned(),
            "settled_call_mid_body".to_owned(),
        )];
        if let Some(redis) = &redis {
            env.push(("TOLLGATE_REDIS_URL".to_owned(), redis.url()));
        }
        let mut gateway = Gateway::start_with(&yaml(&llm.url(), ""), env);
        let before = balance(&gateway, "acme").await;
        let cut = client()
            .post(gateway.url("/api/proxy/llm-sse/v1/chat/completions?tokens=120&stream=1"))
            .bearer_auth(token("acme", "alice"))
            .body("{}")
            .send()
            .await;
        let read = match cut {
            Ok(response) => response.text().await.is_ok(),
            Err(_) => false,
        };
        assert!(!read, "the process died mid-answer");
        assert!(!gateway.wait(), "aborted by the failpoint");
        gateway.set_env("TOLLGATE_FAILPOINTS", None);
        gateway.start_again();
        let log = logs(&gateway, "acme", 1).await;
        assert_eq!(
            (log[0]["reserved"].as_i64(), log[0]["credits_used"].as_i64()),
            (Some(RESERVE), Some(RESERVE)),
            "{log:?}"
        );
        assert_eq!(balance(&gateway, "acme").await, before - RESERVE);
        gateway.stop();
        let env: Vec<(&str, String)> = redis
            .iter()
            .map(|r| ("TOLLGATE_REDIS_URL", r.url()))
            .collect();
        let (ok, printed) = gateway.reconcile(&env);
        assert!(ok, "{printed}");
    }
}

/// Redis stops answering while a settled call streams: the call ends normally for the
/// client, its settlement waits in the background (journaled, with its usage log) and is
/// applied once Redis answers again; the books agree.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_settlement_the_ledger_did_not_answer_is_applied_when_it_does() {
    let llm = Llm::start().await;
    let redis = RedisServer::start();
    let mut gateway = Gateway::start(
        &yaml(&llm.url(), "ledger:\n  timeout_ms: 250"),
        Some(redis.url()),
    );
    let before = balance(&gateway, "acme").await;
    let mut response = client()
        .post(gateway.url("/api/proxy/llm-sse/v1/chat/completions?tokens=170&stream=1&hold=1"))
        .bearer_auth(token("acme", "alice"))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert!(response.chunk().await.unwrap().is_some());
    redis.pause();
    llm.release();
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.unwrap() {
        body.extend_from_slice(&chunk);
    }
    assert!(String::from_utf8_lossy(&body).ends_with("data: [DONE]\n\n"));
    // The settlement times out (250 ms) and waits; nothing is logged meanwhile.
    wait_until(
        "the settlement to be deferred",
        Duration::from_secs(10),
        async || gateway.log().contains("settlement deferred"),
    )
    .await;
    redis.resume();
    let log = logs(&gateway, "acme", 1).await;
    assert_eq!(
        (log[0]["reserved"].as_i64(), log[0]["credits_used"].as_i64()),
        (Some(RESERVE), Some(17)),
        "{log:?}"
    );
    assert_eq!(balance(&gateway, "acme").await, before - 17);
    gateway.stop();
    let (ok, printed) = gateway.reconcile(&[("TOLLGATE_REDIS_URL", redis.url())]);
    assert!(ok, "{printed}");
}

/// The admin API takes and returns settled terms, and refuses bad ones naming the field.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_api_takes_settled_terms_and_names_what_is_wrong() {
    let llm = Llm::start().await;
    let gateway = Gateway::start(&yaml(&llm.url(), ""), None);
    let post = async |endpoint: Value| {
        let response = client()
            .post(gateway.admin_url("/admin/services"))
            .bearer_auth(admin_token("ops", "root"))
            .json(&serde_json::json!({"name": "chat", "upstream": llm.url(), "endpoints": [endpoint]}))
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        (status, response.json::<Value>().await.unwrap())
    };
    for (endpoint, field) in [
        (
            serde_json::json!({"method": "POST", "path": "/v1/chat", "credits": 1,
                               "settle": {"json": "response.body.usage.total_tokens /"}}),
            "endpoints[0].settle.json",
        ),
        (
            serde_json::json!({"method": "POST", "path": "/v1/chat", "credits": 1,
                               "settle": {"sse": "event.a", "header": "x-cost"}}),
            "endpoints[0].settle",
        ),
        (
            serde_json::json!({"method": "POST", "path": "/v1/chat", "credits": 1, "reserve": 9}),
            "endpoints[0].reserve",
        ),
        (
            serde_json::json!({"method": "POST", "path": "/v1/chat", "credits": 1, "overage": "allow"}),
            "endpoints[0].overage",
        ),
    ] {
        let (status, problem) = post(endpoint).await;
        assert_eq!(status, 422, "{problem}");
        assert_eq!(problem["field"], field, "{problem}");
    }
    let terms = serde_json::json!({"method": "POST", "path": "/v1/chat/completions", "credits": 1,
        "reserve": "10 + int(request.query.max_tokens) / 100",
        "settle": {"sse": "event.usage.total_tokens / 10"}, "overage": "allow"});
    let (status, service) = post(terms.clone()).await;
    assert_eq!(status, 201, "{service}");
    assert_eq!(service["endpoints"][0], terms, "returned as given");
    // Once the catalog has it (≤ 2 s): a call of 0 tokens costs nothing in the end.
    let before = balance(&gateway, "acme").await;
    let url = |query: &str| gateway.url(&format!("/api/proxy/chat/v1/chat/completions?{query}"));
    wait_until("the new service", Duration::from_secs(10), async || {
        let response = client()
            .post(url("max_tokens=0&tokens=0&stream=1"))
            .bearer_auth(token("acme", "alice"))
            .send()
            .await
            .unwrap();
        let status = response.status();
        // Read to the end: a stream the client drops settles at the reserve.
        let _ = response.text().await;
        status == 200
    })
    .await;
    wait_until("the free settlement", Duration::from_secs(10), async || {
        balance(&gateway, "acme").await == before
    })
    .await;
    // 300 tokens streamed cost 30 of a 20-credit reserve (overage allowed).
    let response = client()
        .post(url("max_tokens=1000&tokens=300&stream=1"))
        .bearer_auth(token("acme", "alice"))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(header_i64(&response, "x-credits-reserved"), Some(20));
    response.text().await.unwrap();
    wait_until("the settlement", Duration::from_secs(10), async || {
        balance(&gateway, "acme").await == before - 30
    })
    .await;
}
