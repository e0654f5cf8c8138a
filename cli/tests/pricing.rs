//! What a call costs (docs/DESIGN.md §Pricing): a tenant's active subscription's plan
//! overrides an endpoint's price at every replica within the catalog's reload bound; the
//! usage logs and the usage lines say which price applied. On the embedded default (one
//! process) and on Redis with two replicas sharing a MongoDB.

use tollgate_testkit as common;

use common::store::StoreUnderTest;
use common::{admin_token, client, header_i64, token, wait_until, Gateway, RedisServer, Upstream};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

fn yaml(upstream: &str) -> String {
    format!(
        "usage: {{ batch_size: 10, flush_interval_ms: 50 }}
services:
  - name: notes
    upstream: {upstream}
    endpoints:
      - {{ method: GET, path: /x, credits: 5 }}
      - {{ method: GET, path: /y, credits: 4 }}
tenants:
  - {{ id: ops }}
  - {{ id: acme, credits: 100000 }}
  - {{ id: other, credits: 100000 }}
"
    )
}

/// One call to GET /`path` as `tenant`: what it cost.
async fn cost(gateway: &Gateway, tenant: &str, path: &str) -> Option<i64> {
    let response = client()
        .get(gateway.url(&format!("/api/proxy/notes{path}")))
        .bearer_auth(token(tenant, "alice"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    header_i64(&response, "x-credits-cost")
}

/// An admin API call on `gateway`; the status and the JSON answer.
async fn admin(
    gateway: &Gateway,
    method: reqwest::Method,
    path: &str,
    body: Value,
) -> (u16, Value) {
    let response = client()
        .request(method, gateway.admin_url(path))
        .bearer_auth(admin_token("ops", "root"))
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// Every gateway charges `expected` for acme's GET /x within the catalog's reload bound.
async fn every_replica_charges(gateways: &[&Gateway], expected: i64) {
    let changed = Instant::now();
    for gateway in gateways {
        wait_until(
            "the new price at every replica",
            Duration::from_secs(10),
            async || cost(gateway, "acme", "/x").await == Some(expected),
        )
        .await;
    }
    assert!(
        changed.elapsed() < Duration::from_millis(2_500),
        "the catalog's reload bound (2 s): took {:?}",
        changed.elapsed()
    );
}

async fn plan_prices_are_charged(upstream: &Upstream, gateways: &[&Gateway]) {
    let first = gateways[0];
    // An override must name an endpoint a service declares.
    let (status, problem) = admin(
        first,
        reqwest::Method::POST,
        "/admin/plans",
        json!({"id": "typo", "name": "Typo", "monthly_credits": 0,
               "price_overrides": [{"service": "notes", "method": "GET", "path": "/nope", "credits": 1}]}),
    )
    .await;
    assert_eq!(status, 422, "{problem}");
    assert_eq!(problem["field"], "price_overrides[0]", "{problem}");

    let (status, plan) = admin(
        first,
        reqwest::Method::POST,
        "/admin/plans",
        json!({"id": "pro", "name": "Pro", "monthly_credits": 0,
               "price_overrides": [{"service": "notes", "method": "GET", "path": "/x", "credits": 2}]}),
    )
    .await;
    assert_eq!(status, 201, "{plan}");
    assert_eq!(cost(first, "acme", "/x").await, Some(5), "no plan yet");

    let (status, subscription) = admin(
        first,
        reqwest::Method::POST,
        "/admin/subscriptions",
        json!({"tenant_id": "acme", "plan_id": "pro"}),
    )
    .await;
    assert_eq!(status, 201, "{subscription}");
    every_replica_charges(gateways, 2).await;
    for gateway in gateways {
        assert_eq!(
            cost(gateway, "acme", "/y").await,
            Some(4),
            "not on the plan"
        );
        assert_eq!(
            cost(gateway, "other", "/x").await,
            Some(5),
            "not subscribed"
        );
    }

    // The plan's price changes: every replica follows.
    let (status, _) = admin(
        first,
        reqwest::Method::PATCH,
        "/admin/plans/pro",
        json!({"price_overrides": [{"service": "notes", "method": "GET", "path": "/x", "credits": 3}]}),
    )
    .await;
    assert_eq!(status, 200);
    every_replica_charges(gateways, 3).await;

    // Cancelled, the subscription's plan prices nothing.
    let id = subscription["id"].as_str().unwrap();
    let (status, _) = admin(
        first,
        reqwest::Method::PATCH,
        &format!("/admin/subscriptions/{id}"),
        json!({"status": "cancelled"}),
    )
    .await;
    assert_eq!(status, 200);
    every_replica_charges(gateways, 5).await;

    // The usage logs say which price each call paid (all of them written: as many as the
    // upstream saw), and the usage lines split by it.
    let mut logs = Vec::new();
    wait_until(
        "every call's usage log",
        Duration::from_secs(10),
        async || {
            let (status, page) = admin(
                first,
                reqwest::Method::GET,
                "/admin/usage-logs?limit=1000",
                Value::Null,
            )
            .await;
            assert_eq!(status, 200, "{page}");
            logs = page["items"].as_array().unwrap().clone();
            logs.len() as u64 == upstream.requests()
        },
    )
    .await;
    let mut expected_lines = std::collections::BTreeMap::new();
    for log in &logs {
        let (endpoint, plan) = (log["endpoint"].as_str(), log["plan_id"].as_str());
        let credits = log["credits_used"].as_i64().unwrap();
        let prices: &[i64] = match (log["tenant_id"].as_str(), endpoint, plan) {
            (Some("acme"), Some("/x"), Some("pro")) => &[2, 3],
            (_, Some("/x"), None) => &[5],
            (_, Some("/y"), None) => &[4],
            _ => panic!("unexpected log: {log}"),
        };
        assert!(prices.contains(&credits), "{log}");
        if log["tenant_id"] == "acme" {
            let line = expected_lines
                .entry((endpoint.unwrap().to_owned(), plan.map(str::to_owned)))
                .or_insert((0, 0));
            *line = (line.0 + 1, line.1 + credits);
        }
    }
    let usage: Value = client()
        .get(first.admin_url("/me/usage"))
        .bearer_auth(token("acme", "alice"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let lines: std::collections::BTreeMap<_, _> = usage["lines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            let key = (
                l["endpoint"].as_str().unwrap().to_owned(),
                l["plan_id"].as_str().map(str::to_owned),
            );
            (
                key,
                (l["calls"].as_i64().unwrap(), l["credits"].as_i64().unwrap()),
            )
        })
        .collect();
    assert_eq!(lines, expected_lines);
    assert!(
        lines.contains_key(&("/x".to_owned(), Some("pro".to_owned()))),
        "{lines:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plan_prices_are_charged_on_the_embedded_ledger() {
    let upstream = Upstream::start().await;
    let gateway = Gateway::start(&yaml(&upstream.url()), None);
    plan_prices_are_charged(&upstream, &[&gateway]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plan_prices_are_charged_at_every_redis_replica() {
    let Some(uri) = common::mongo_uri() else {
        return;
    };
    let upstream = Upstream::start().await;
    let redis = RedisServer::start();
    let mut env = StoreUnderTest::Mongo {
        uri,
        db: common::unique_db(),
    }
    .env();
    env.push(("TOLLGATE_REDIS_URL".to_owned(), redis.url()));
    let first = Gateway::start_with(&yaml(&upstream.url()), env.clone());
    let second = Gateway::start_with(&yaml(&upstream.url()), env);
    plan_prices_are_charged(&upstream, &[&first, &second]).await;
}

fn expression_yaml(upstream: &str) -> String {
    format!(
        r#"services:
  - name: api
    upstream: {upstream}
    endpoints:
      - {{ method: GET, path: /search, credits: "1 + int(request.query.pages)" }}
      - {{ method: POST, path: /upload, credits: "request.size > 1000 ? 10 : 2" }}
      - {{ method: GET, path: "/models/{{model}}/complete", credits: 'request.params.model == "large" ? 8 : 1' }}
tenants:
  - {{ id: ops }}
  - {{ id: acme, credits: 1000 }}
"#
    )
}

/// Calls `path` as acme: the status, the cost charged and the balance left.
async fn priced(
    gateway: &Gateway,
    method: reqwest::Method,
    path: &str,
    body: &str,
) -> (u16, Option<i64>, Option<i64>, Value) {
    let response = client()
        .request(method, gateway.url(&format!("/api/proxy/api{path}")))
        .bearer_auth(token("acme", "alice"))
        .body(body.to_owned())
        .send()
        .await
        .unwrap();
    let (status, cost, left) = (
        response.status().as_u16(),
        header_i64(&response, "x-credits-cost"),
        header_i64(&response, "x-credits-remaining"),
    );
    (
        status,
        cost,
        left,
        response.json().await.unwrap_or(Value::Null),
    )
}

async fn expressions_price_each_call(upstream: &Upstream, gateway: &Gateway) {
    use reqwest::Method;
    let get = |path: &'static str| priced(gateway, Method::GET, path, "");
    let (status, cost, left, _) = get("/search?pages=4").await;
    assert_eq!((status, cost, left), (200, Some(5), Some(995)));
    let (_, cost, _, _) = priced(gateway, Method::POST, "/upload", &"x".repeat(2000)).await;
    assert_eq!(cost, Some(10));
    let (_, cost, _, _) = priced(gateway, Method::POST, "/upload", "small").await;
    assert_eq!(cost, Some(2));
    assert_eq!(get("/models/large/complete").await.1, Some(8));
    let (_, cost, left, _) = get("/models/small/complete").await;
    assert_eq!((cost, left), (Some(1), Some(974)));

    // A call the price cannot be computed for is refused, names the pricing, costs nothing
    // and never reaches the upstream.
    let forwarded = upstream.requests();
    for path in [
        "/search",
        "/search?pages=many",
        "/search?pages=-9",
        "/search?pages=99999999",
    ] {
        let (status, cost, _, problem) = get(path).await;
        assert_eq!((status, cost), (400, None), "{path}: {problem}");
        assert_eq!(
            problem["type"], "urn:tollgate:problem:price-not-computed",
            "{problem}"
        );
        assert_eq!(
            (&problem["service"], &problem["endpoint"]),
            (&json!("api"), &json!("/search")),
            "{problem}"
        );
    }
    assert_eq!(upstream.requests(), forwarded);
    let (_, _, left, _) = get("/models/small/complete").await;
    assert_eq!(left, Some(973), "the refused calls cost nothing");

    // The admin API takes expressions, returns them, and refuses a bad one with its place.
    let (status, problem) = admin(
        gateway,
        reqwest::Method::POST,
        "/admin/services",
        json!({"name": "bad", "upstream": upstream.url(),
               "endpoints": [{"method": "GET", "path": "/x", "credits": "1 + * 2"}]}),
    )
    .await;
    assert_eq!(status, 422, "{problem}");
    assert_eq!(problem["field"], "endpoints[0].credits", "{problem}");
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("line 1, column"),
        "{problem}"
    );
    let (status, problem) = admin(
        gateway,
        reqwest::Method::POST,
        "/admin/services",
        json!({"name": "loop", "upstream": upstream.url(),
               "endpoints": [{"method": "GET", "path": "/x", "credits": "[1].map(x, x)[0]"}]}),
    )
    .await;
    assert_eq!(status, 422, "{problem}");
    let (status, service) = admin(
        gateway,
        reqwest::Method::GET,
        "/admin/services/api",
        Value::Null,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(
        service["endpoints"][0]["credits"], "1 + int(request.query.pages)",
        "{service}"
    );
    let (status, _) = admin(
        gateway,
        reqwest::Method::GET,
        "/admin/services/bad",
        Value::Null,
    )
    .await;
    assert_eq!(status, 404, "nothing was written");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expressions_price_each_call_on_the_embedded_ledger() {
    let upstream = Upstream::start().await;
    let gateway = Gateway::start(&expression_yaml(&upstream.url()), None);
    expressions_price_each_call(&upstream, &gateway).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expressions_price_each_call_on_redis() {
    let upstream = Upstream::start().await;
    let redis = RedisServer::start();
    let env = vec![("TOLLGATE_REDIS_URL".to_owned(), redis.url())];
    let gateway = Gateway::start_with(&expression_yaml(&upstream.url()), env);
    expressions_price_each_call(&upstream, &gateway).await;
}

fn shadow_yaml(upstream: &str) -> String {
    format!(
        r#"usage: {{ batch_size: 10, flush_interval_ms: 50 }}
services:
  - name: api
    upstream: {upstream}
    price_headers: [x-model]
    endpoints:
      - {{ method: GET, path: /search, credits: "1 + int(request.query.pages)", shadow_credits: "2 * int(request.query.pages)" }}
      - {{ method: POST, path: /complete, credits: 'request.headers["x-model"] == "large" ? 8 : 1' }}
      - {{ method: GET, path: /leak, credits: 'has(request.headers.authorization) ? 9 : 1' }}
      - {{ method: POST, path: /chat, credits: 1, reserve: 40, settle: {{ header: X-Usage-Credits }} }}
tenants:
  - {{ id: ops }}
  - {{ id: acme, credits: 1000 }}
  - {{ id: other, credits: 1000 }}
"#
    )
}

/// A call as `tenant` with `headers`: the status and the cost charged.
async fn call_as(
    gateway: &Gateway,
    tenant: &str,
    method: reqwest::Method,
    path: &str,
    headers: &[(&str, &str)],
) -> (u16, Option<i64>) {
    let mut request = client()
        .request(method, gateway.url(&format!("/api/proxy/api{path}")))
        .bearer_auth(token(tenant, "alice"));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = request.send().await.unwrap();
    (
        response.status().as_u16(),
        header_i64(&response, "x-credits-cost"),
    )
}

/// Headers a service offers its prices (and no others); shadow prices logged beside the
/// charged ones and compared per tenant; a price previewed before it is saved.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headers_shadow_prices_and_previews_on_the_embedded_ledger() {
    headers_shadow_prices_and_previews(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headers_shadow_prices_and_previews_on_redis() {
    let redis = RedisServer::start();
    headers_shadow_prices_and_previews(Some(redis.url())).await;
}

async fn headers_shadow_prices_and_previews(redis: Option<String>) {
    use reqwest::Method;
    let upstream = Upstream::start().await;
    let gateway = Gateway::start(&shadow_yaml(&upstream.url()), redis);

    // Only the listed header is offered: the token in Authorization is not.
    let large = [("X-Model", "large")];
    assert_eq!(
        call_as(&gateway, "acme", Method::POST, "/complete", &large).await,
        (200, Some(8))
    );
    assert_eq!(
        call_as(&gateway, "acme", Method::POST, "/complete", &[]).await,
        (200, Some(1))
    );
    assert_eq!(
        call_as(&gateway, "acme", Method::GET, "/leak", &[]).await,
        (200, Some(1))
    );

    // Charged at the price, the shadow price logged beside it.
    for (tenant, pages, cost) in [("acme", "4", 5), ("acme", "4", 5), ("other", "1", 2)] {
        let path = format!("/search?pages={pages}");
        assert_eq!(
            call_as(&gateway, tenant, Method::GET, &path, &[]).await,
            (200, Some(cost))
        );
    }
    let mut report = Value::Null;
    wait_until("the shadow report", Duration::from_secs(10), async || {
        report = gateway
            .admin_json(
                "/admin/reports/shadow?service=api",
                &admin_token("ops", "root"),
            )
            .await;
        report["calls"] == 3
    })
    .await;
    assert_eq!(
        (&report["charged"], &report["shadow"], &report["difference"]),
        (&json!(12), &json!(18), &json!(6)),
        "{report}"
    );
    assert_eq!(
        report["tenants"],
        json!([
            {"tenant_id": "acme", "calls": 2, "charged": 10, "shadow": 16, "difference": 6},
            {"tenant_id": "other", "calls": 1, "charged": 2, "shadow": 2, "difference": 0},
        ]),
        "{report}"
    );

    // Previews: the saved price, a candidate (not saved), headers, a reserve; and what
    // cannot be priced is named.
    let preview = async |body: Value| {
        admin(
            &gateway,
            Method::POST,
            "/admin/services/api/price-preview",
            body,
        )
        .await
    };
    let (status, answer) =
        preview(json!({"method": "get", "path": "/search", "query": "pages=4"})).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(
        answer,
        json!({"method": "GET", "endpoint": "/search", "credits": 5, "shadow_credits": 8})
    );
    let (_, answer) = preview(
        json!({"method": "GET", "path": "/search", "query": "pages=4",
                                     "credits": "3 * int(request.query.pages)"}),
    )
    .await;
    assert_eq!(answer["credits"], 12, "{answer}");
    assert_eq!(
        call_as(&gateway, "acme", Method::GET, "/search?pages=4", &[]).await,
        (200, Some(5)),
        "a preview saves nothing"
    );
    let (_, answer) = preview(json!({"method": "POST", "path": "/complete",
                                     "headers": {"X-Model": "large"}}))
    .await;
    assert_eq!(answer["credits"], 8, "{answer}");
    let (_, answer) = preview(json!({"method": "POST", "path": "/chat"})).await;
    assert_eq!(
        (&answer["credits"], &answer["reserve"]),
        (&json!(1), &json!(40)),
        "{answer}"
    );
    for (body, field) in [
        (json!({"method": "GET", "path": "/search"}), "credits"),
        (json!({"method": "GET", "path": "/nowhere"}), "path"),
        (
            json!({"method": "GET", "path": "/search", "query": "pages=1", "credits": "1 +"}),
            "credits",
        ),
    ] {
        let (status, problem) = preview(body.clone()).await;
        assert_eq!(status, 422, "{body}: {problem}");
        assert_eq!(problem["field"], field, "{body}: {problem}");
    }
}
