//! API keys (docs/DESIGN.md §API keys), end to end: a tenant's user makes a key, calls with
//! it (as a bearer token and as `X-Api-Key`), finds the calls under the key in the usage
//! logs and `/me/usage`; a key limited to some services is refused elsewhere; a typo is
//! refused by its checksum; a roll keeps the old key for its overlap only; disabling and
//! deleting take effect at every replica within the catalog's reload bound. On the
//! embedded default (one process) and on Redis with two replicas sharing a MongoDB.

use tollgate_testkit as common;

use common::store::StoreUnderTest;
use common::{admin_token, client, header_i64, token, wait_until, Gateway, RedisServer, Upstream};
use reqwest::Method;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

fn yaml(upstream: &str) -> String {
    yaml_with(upstream, "")
}

fn yaml_with(upstream: &str, extra: &str) -> String {
    format!(
        "usage: {{ batch_size: 10, flush_interval_ms: 50 }}
{extra}
services:
  - name: notes
    upstream: {upstream}
    endpoints:
      - {{ method: GET, path: /x, credits: 5 }}
      - {{ method: GET, path: /free, credits: 0 }}
  - name: search
    upstream: {upstream}
    endpoints:
      - {{ method: GET, path: /q, credits: 1 }}
tenants:
  - {{ id: ops }}
  - {{ id: acme, credits: 100000 }}
  - {{ id: other, credits: 100000 }}
"
    )
}

/// A control-plane call with `bearer`: the status and the JSON answer.
async fn api(
    gateway: &Gateway,
    method: Method,
    path: &str,
    bearer: &str,
    body: Value,
) -> (u16, Value) {
    let mut request = client()
        .request(method, gateway.admin_url(path))
        .bearer_auth(bearer);
    if !body.is_null() {
        request = request.json(&body);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// How a key is presented.
#[derive(Clone, Copy)]
enum As {
    Bearer,
    XApiKey,
}

/// A call to `service``path` with `key`: the status, the cost charged, and the answer.
async fn call(
    gateway: &Gateway,
    service: &str,
    path: &str,
    key: &str,
    how: As,
) -> (u16, Option<i64>, Value) {
    let request = client().get(gateway.url(&format!("/api/proxy/{service}{path}")));
    let request = match how {
        As::Bearer => request.bearer_auth(key),
        As::XApiKey => request.header("x-api-key", key),
    };
    let response = request.send().await.unwrap();
    let (status, cost) = (
        response.status().as_u16(),
        header_i64(&response, "x-credits-cost"),
    );
    (status, cost, response.json().await.unwrap_or(Value::Null))
}

/// Waits until a call with `key` gets `status` at every replica, and checks that it took
/// no longer than the catalog's reload bound (2 s, with room for a loaded machine).
async fn every_replica_answers(gateways: &[&Gateway], key: &str, status: u16, what: &str) {
    every_replica_answers_on(gateways, "/x", key, status, what).await;
}

/// [`every_replica_answers`] on notes' `path`.
async fn every_replica_answers_on(
    gateways: &[&Gateway],
    path: &str,
    key: &str,
    status: u16,
    what: &str,
) {
    let changed = Instant::now();
    for gateway in gateways {
        wait_until(what, Duration::from_secs(10), async || {
            call(gateway, "notes", path, key, As::Bearer).await.0 == status
        })
        .await;
    }
    assert!(
        changed.elapsed() < Duration::from_millis(2_500),
        "{what}: the catalog's reload bound (2 s): took {:?}",
        changed.elapsed()
    );
}

async fn keys_from_creation_to_revocation(gateways: &[&Gateway]) {
    let first = gateways[0];
    let alice = token("acme", "alice");
    let (status, created) = api(
        first,
        Method::POST,
        "/me/keys",
        &alice,
        json!({"name": "ci", "services": ["notes"]}),
    )
    .await;
    assert_eq!(status, 201, "{created}");
    let key = created["key"].as_str().unwrap().to_owned();
    let id = created["id"].as_str().unwrap().to_owned();
    assert!(key.starts_with("tg_live_") && key.len() == 45, "{key}");
    assert!(key.starts_with(created["prefix"].as_str().unwrap()));
    assert_eq!(created["tenant_id"], "acme");
    assert_eq!(created["created_by"], "alice");

    // Listed without the key; another tenant's user sees none of it.
    let (_, listed) = api(first, Method::GET, "/me/keys", &alice, Value::Null).await;
    let items = listed["items"].as_array().unwrap();
    assert_eq!(items.len(), 1, "{listed}");
    assert_eq!(items[0]["id"], id.as_str());
    assert!(items[0].get("key").is_none(), "{listed}");
    assert!(!listed.to_string().contains(&key[20..]), "{listed}");
    let bob = token("other", "bob");
    let (_, theirs) = api(first, Method::GET, "/me/keys", &bob, Value::Null).await;
    assert_eq!(theirs["items"], json!([]));
    let (status, _) = api(
        first,
        Method::DELETE,
        &format!("/me/keys/{id}"),
        &bob,
        Value::Null,
    )
    .await;
    assert_eq!(status, 404, "another tenant's key is not found");
    let (status, _) = api(
        first,
        Method::GET,
        "/admin/tenants/acme/keys",
        &alice,
        Value::Null,
    )
    .await;
    assert_eq!(status, 403, "a user is no admin");

    // The key works at every replica, either way it is presented; the upstream learns the
    // key's id, never the key.
    every_replica_answers(gateways, &key, 200, "the new key at every replica").await;
    let mut with_key = gateways.len() as i64;
    for gateway in gateways {
        let (status, cost, echo) = call(gateway, "notes", "/x", &key, As::XApiKey).await;
        assert_eq!((status, cost), (200, Some(5)), "{echo}");
        let headers = &echo["headers"];
        assert_eq!(headers["x-user-id"], id.as_str(), "{echo}");
        assert_eq!(headers["x-tenant-id"], "acme", "{echo}");
        assert!(headers.get("x-api-key").is_none() && headers.get("authorization").is_none());
        with_key += 1;
    }

    // Limited to `notes`: refused on `search`, charged nothing.
    let (status, cost, problem) = call(first, "search", "/q", &key, As::Bearer).await;
    assert_eq!((status, cost), (403, None), "{problem}");
    assert_eq!(problem["type"], "urn:tollgate:problem:key-not-allowed");
    assert_eq!(problem["service"], "search");

    // A typo fails the checksum; a well-formed key nobody made is unknown; the control
    // plane does not take keys.
    let mut typo = key.clone().into_bytes();
    typo[12] = if typo[12] == b'a' { b'b' } else { b'a' };
    let typo = String::from_utf8(typo).unwrap();
    let (status, _, problem) = call(first, "notes", "/x", &typo, As::Bearer).await;
    assert_eq!(status, 401);
    assert!(
        problem["detail"].as_str().unwrap().contains("checksum"),
        "{problem}"
    );
    let (status, _) = api(first, Method::GET, "/me", &key, Value::Null).await;
    assert_eq!(status, 401, "a key is no session");

    // An operator's key for the same tenant; its calls are told apart from the first's.
    let (status, ops_key) = api(
        first,
        Method::POST,
        "/admin/tenants/acme/keys",
        &admin_token("ops", "root"),
        json!({"name": "made by ops"}),
    )
    .await;
    assert_eq!(status, 201, "{ops_key}");
    let ops_key_secret = ops_key["key"].as_str().unwrap().to_owned();
    every_replica_answers(gateways, &ops_key_secret, 200, "the operator's key").await;
    let (status, _, _) = call(first, "search", "/q", &ops_key_secret, As::Bearer).await;
    assert_eq!(status, 200, "no services listed: every service");
    let ops_calls = gateways.len() as i64 + 1;

    // Usage by key: the logs carry it and filter by it; /me/usage sums per key.
    let admin = admin_token("ops", "root");
    let logs_path = format!("/admin/usage-logs?key_id={id}&limit=1000");
    let mut logs = Vec::new();
    wait_until(
        "the key's usage logs",
        Duration::from_secs(10),
        async || {
            let (_, page) = api(first, Method::GET, &logs_path, &admin, Value::Null).await;
            logs = page["items"].as_array().cloned().unwrap_or_default();
            logs.len() as i64 == with_key
        },
    )
    .await;
    for log in &logs {
        assert_eq!(
            (&log["key_id"], &log["credits_used"]),
            (&json!(id), &json!(5)),
            "{log}"
        );
    }
    let ops_id = ops_key["id"].as_str().unwrap();
    wait_until("usage per key", Duration::from_secs(10), async || {
        let (_, usage) = api(first, Method::GET, "/me/usage", &alice, Value::Null).await;
        let keys = usage["keys"].as_array().cloned().unwrap_or_default();
        keys.contains(&json!({"key_id": id, "calls": with_key, "credits": 5 * with_key}))
            && keys
                .iter()
                .any(|k| k["key_id"] == ops_id && k["calls"] == ops_calls)
    })
    .await;

    // A roll: the new key works at once, the old one for the overlap, then no more.
    let (status, rolled) = api(
        first,
        Method::POST,
        &format!("/me/keys/{id}/roll"),
        &alice,
        json!({"overlap_secs": 3}),
    )
    .await;
    assert_eq!(status, 201, "{rolled}");
    let new_key = rolled["key"].as_str().unwrap().to_owned();
    assert_eq!(rolled["rolled_from"], id.as_str());
    assert_eq!(rolled["services"], json!(["notes"]), "the old key's terms");
    assert!(rolled["previous"]["expires_at"].is_string(), "{rolled}");
    every_replica_answers(gateways, &new_key, 200, "the rolled key").await;
    for gateway in gateways {
        assert_eq!(
            call(gateway, "notes", "/x", &key, As::Bearer).await.0,
            200,
            "overlap"
        );
    }
    for gateway in gateways {
        wait_until("the old key expired", Duration::from_secs(15), async || {
            let (status, _, problem) = call(gateway, "notes", "/x", &key, As::Bearer).await;
            status == 401
                && problem["detail"]
                    .as_str()
                    .is_some_and(|d| d.contains("expired"))
        })
        .await;
    }

    // Disabled, enabled, deleted: each at every replica within the bound.
    let new_id = rolled["id"].as_str().unwrap();
    let path = format!("/me/keys/{new_id}");
    let (status, view) = api(
        first,
        Method::PATCH,
        &path,
        &alice,
        json!({"disabled": true}),
    )
    .await;
    assert_eq!((status, &view["disabled"]), (200, &json!(true)), "{view}");
    every_replica_answers(gateways, &new_key, 401, "the disabled key refused").await;
    let roll = format!("{path}/roll");
    let (status, _) = api(
        first,
        Method::POST,
        &roll,
        &alice,
        json!({"overlap_secs": 0}),
    )
    .await;
    assert_eq!(status, 409, "a disabled key is not rolled");
    let (status, _) = api(
        first,
        Method::PATCH,
        &path,
        &alice,
        json!({"disabled": false}),
    )
    .await;
    assert_eq!(status, 200);
    every_replica_answers(gateways, &new_key, 200, "the key enabled again").await;
    let (status, _) = api(first, Method::DELETE, &path, &alice, Value::Null).await;
    assert_eq!(status, 204);
    every_replica_answers(gateways, &new_key, 401, "the deleted key refused").await;
    let (status, _) = api(first, Method::DELETE, &path, &alice, Value::Null).await;
    assert_eq!(status, 404, "deleted once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_from_creation_to_revocation_on_the_embedded_default() {
    let upstream = Upstream::start().await;
    let gateway = Gateway::start(&yaml(&upstream.url()), None);
    keys_from_creation_to_revocation(&[&gateway]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_from_creation_to_revocation_at_two_redis_replicas() {
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
    keys_from_creation_to_revocation(&[&first, &second]).await;
}

/// The admin API refuses bad key requests naming the field, and writes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_key_requests_are_refused_naming_the_field() {
    let upstream = Upstream::start().await;
    let gateway = Gateway::start(&yaml(&upstream.url()), None);
    let admin = admin_token("ops", "root");
    let keys = "/admin/tenants/acme/keys";
    for (body, field) in [
        (json!({"name": ""}), "name"),
        (json!({"name": "x", "services": []}), "services"),
        (json!({"name": "x", "services": ["nope"]}), "services[0]"),
        (
            json!({"name": "x", "services": ["notes", "../x"]}),
            "services[1]",
        ),
        (
            json!({"name": "x", "expires_at": "2001-01-01T00:00:00Z"}),
            "expires_at",
        ),
        (json!({"name": "x", "expires_at": "soon"}), "expires_at"),
        (json!({"name": "x", "budget": -1}), "budget"),
        (json!({"name": "x", "owner": "me"}), "owner"),
    ] {
        let (status, problem) = api(&gateway, Method::POST, keys, &admin, body.clone()).await;
        assert_eq!(
            (status, &problem["field"]),
            (422, &json!(field)),
            "{body}: {problem}"
        );
    }
    let (status, _) = api(
        &gateway,
        Method::POST,
        "/admin/tenants/ghost/keys",
        &admin,
        json!({"name": "x"}),
    )
    .await;
    assert_eq!(status, 404, "no such tenant");
    let (_, listed) = api(&gateway, Method::GET, keys, &admin, Value::Null).await;
    assert_eq!(listed["items"], json!([]), "nothing written");
    let (status, created) = api(&gateway, Method::POST, keys, &admin, json!({"name": "x"})).await;
    assert_eq!(status, 201);
    let roll = format!("{keys}/{}/roll", created["id"].as_str().unwrap());
    let (status, problem) = api(
        &gateway,
        Method::POST,
        &roll,
        &admin,
        json!({"overlap_secs": -1}),
    )
    .await;
    assert_eq!(
        (status, &problem["field"]),
        (422, &json!("overlap_secs")),
        "{problem}"
    );
}

/// acme's live balance, as the admin API reads it from the ledger.
async fn balance(gateway: &Gateway) -> i64 {
    let (status, tenant) = api(
        gateway,
        Method::GET,
        "/admin/tenants/acme",
        &admin_token("ops", "root"),
        Value::Null,
    )
    .await;
    assert_eq!(status, 200, "{tenant}");
    tenant["balance"].as_i64().unwrap()
}

/// A key's monthly budget, drawn from the tenant's balance in the charge's own atomic step:
/// 60 calls at once over every replica, 20 of them fit a budget of 100 at 5 credits each,
/// the rest get `402 key-budget-exhausted` and cost nothing, while another key of the
/// tenant goes on; a roll keeps the month's spend; a raised budget lets exactly the
/// difference through.
async fn a_key_budget_is_exact(gateways: &[&Gateway]) {
    let first = gateways[0];
    let alice = token("acme", "alice");
    let start = balance(first).await;
    let make = |body: Value| api(first, Method::POST, "/me/keys", &alice, body);
    let (status, capped) = make(json!({"name": "capped", "budget": 100})).await;
    assert_eq!((status, &capped["budget"]), (201, &json!(100)), "{capped}");
    let (_, free) = make(json!({"name": "uncapped"})).await;
    let (capped_key, free_key) = (
        capped["key"].as_str().unwrap(),
        free["key"].as_str().unwrap(),
    );
    every_replica_answers_on(gateways, "/free", capped_key, 200, "the capped key").await;
    every_replica_answers_on(gateways, "/free", free_key, 200, "the other key").await;

    let calls = (0..60).map(|i| {
        let gateway = gateways[i % gateways.len()];
        async move { call(gateway, "notes", "/x", capped_key, As::Bearer).await }
    });
    let answers = futures_util::future::join_all(calls).await;
    let served = answers.iter().filter(|(status, ..)| *status == 200).count();
    assert_eq!(served, 20, "100 credits of budget at 5 each");
    for (status, cost, problem) in answers.iter().filter(|(status, ..)| *status != 200) {
        assert_eq!((*status, *cost), (402, Some(5)), "{problem}");
        assert_eq!(problem["type"], "urn:tollgate:problem:key-budget-exhausted");
        assert_eq!(
            (&problem["budget"], &problem["spent"]),
            (&json!(100), &json!(100))
        );
    }
    let (status, _, _) = call(first, "notes", "/x", free_key, As::XApiKey).await;
    assert_eq!(status, 200, "the tenant's other key goes on");
    assert_eq!(balance(first).await, start - 100 - 5);

    // Rolled, the key's month goes on: the new key is as spent as the old.
    let id = capped["id"].as_str().unwrap();
    let (status, rolled) = api(
        first,
        Method::POST,
        &format!("/me/keys/{id}/roll"),
        &alice,
        json!({"overlap_secs": 0}),
    )
    .await;
    assert_eq!(status, 201, "{rolled}");
    let rolled_key = rolled["key"].as_str().unwrap();
    every_replica_answers_on(gateways, "/free", rolled_key, 200, "the rolled key").await;
    for gateway in gateways {
        let (status, _, problem) = call(gateway, "notes", "/x", rolled_key, As::Bearer).await;
        assert_eq!(status, 402, "{problem}");
    }

    // Raised to 110: two more calls, then no more.
    let rolled_id = rolled["id"].as_str().unwrap();
    let (status, _) = api(
        first,
        Method::PATCH,
        &format!("/me/keys/{rolled_id}"),
        &alice,
        json!({"budget": 110}),
    )
    .await;
    assert_eq!(status, 200);
    every_replica_answers(gateways, rolled_key, 200, "the raised budget").await;
    let mut served = gateways.len();
    while served < 2 {
        assert_eq!(
            call(first, "notes", "/x", rolled_key, As::Bearer).await.0,
            200
        );
        served += 1;
    }
    for gateway in gateways {
        assert_eq!(
            call(gateway, "notes", "/x", rolled_key, As::Bearer).await.0,
            402
        );
    }
    assert_eq!(balance(first).await, start - 110 - 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_budget_is_exact_on_the_embedded_ledger() {
    let upstream = Upstream::start().await;
    let mut gateway = Gateway::start(&yaml(&upstream.url()), None);
    a_key_budget_is_exact(&[&gateway]).await;
    gateway.stop();
    let (ok, printed) = gateway.reconcile(&[]);
    assert!(ok, "{printed}");
}

/// Two replicas on one Redis and one MongoDB, per call and with leased credits (a budgeted
/// key's charges go to Redis, where its budget is).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_budget_is_exact_across_two_redis_replicas() {
    let Some(uri) = common::mongo_uri() else {
        return;
    };
    for extra in ["", "ledger:\n  lease: { enabled: true }"] {
        let upstream = Upstream::start().await;
        let redis = RedisServer::start();
        let mut env = StoreUnderTest::Mongo {
            uri: uri.clone(),
            db: common::unique_db(),
        }
        .env();
        env.push(("TOLLGATE_REDIS_URL".to_owned(), redis.url()));
        let yaml = yaml_with(&upstream.url(), extra);
        let mut first = Gateway::start_with(&yaml, env.clone());
        let mut second = Gateway::start_with(&yaml, env.clone());
        a_key_budget_is_exact(&[&first, &second]).await;
        first.stop();
        second.stop();
        let mut reconcile_env: Vec<(&str, String)> =
            env.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
        reconcile_env.push(("TOLLGATE_REDIS_URL", redis.url()));
        let (ok, printed) = first.reconcile(&reconcile_env);
        assert!(ok, "{extra}: {printed}");
    }
}
