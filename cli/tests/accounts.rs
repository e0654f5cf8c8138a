//! Accounts under attack. A user's tokens speak for them only while they still match the
//! account: once an operator promotes, demotes, moves or disables the user, the admin API
//! refuses every token issued before, at once (a demoted admin keeps no admin power until
//! the token expires), and the gateway within the catalog's reload. And failed logins are counted across control-plane replicas sharing
//! a Redis, so more replicas do not mean more guesses.

use tollgate_testkit as common;

use common::{admin_token, client, wait_until, Gateway, RedisServer, Upstream};
use serde_json::{json, Value};
use std::time::Duration;

const PASSWORD: &str = "a long password";

async fn login(gateway: &Gateway, email: &str) -> (u16, Option<String>) {
    login_with(gateway, email, PASSWORD).await
}

async fn login_with(gateway: &Gateway, email: &str, password: &str) -> (u16, Option<String>) {
    let r = client()
        .post(gateway.admin_url("/auth/login"))
        .json(&json!({"email": email, "password": password}))
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let body: Value = r.json().await.unwrap();
    (status, body["access_token"].as_str().map(str::to_owned))
}

async fn register(gateway: &Gateway, email: &str) {
    let r = client()
        .post(gateway.admin_url("/auth/register"))
        .json(&json!({"email": email, "password": PASSWORD, "tenant_name": "M"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
}

/// The status of a GET of `url` with `token`.
async fn status(url: String, token: &str) -> u16 {
    let r = client().get(url).bearer_auth(token).send().await.unwrap();
    r.status().as_u16()
}

/// An admin API route.
async fn get(gateway: &Gateway, path: &str, token: &str) -> u16 {
    status(gateway.admin_url(path), token).await
}

/// A metered call through the gateway.
async fn call(gateway: &Gateway, token: &str) -> u16 {
    status(gateway.url("/api/proxy/notes/x"), token).await
}

async fn patch_user(gateway: &Gateway, id: &str, body: Value) {
    let r = client()
        .patch(gateway.admin_url(&format!("/admin/users/{id}")))
        .bearer_auth(admin_token("ops", "root"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changing_a_user_ends_the_tokens_issued_before() {
    let upstream = Upstream::start().await;
    let yaml = format!(
        "services:
  - name: notes
    upstream: {}
    endpoints:
      - {{ method: GET, path: /*, credits: 1 }}
tenants:
  - {{ id: ops, name: Operators }}
  - {{ id: other, name: Other, credits: 100 }}
",
        upstream.url()
    );
    let gateway = Gateway::start(&yaml, None);
    let email = "mallory@example.com";
    register(&gateway, email).await;
    let (_, user_token) = login(&gateway, email).await;
    let user_token = user_token.unwrap();
    let me = gateway.admin_json("/me", &user_token).await;
    let id = me["user_id"].as_str().unwrap().to_owned();
    assert_eq!(get(&gateway, "/admin/tenants", &user_token).await, 403);

    // Promoted: the user token no longer matches; a fresh login carries the new role.
    patch_user(&gateway, &id, json!({"role": "admin"})).await;
    assert_eq!(get(&gateway, "/me", &user_token).await, 401);
    let (_, admin) = login(&gateway, email).await;
    let admin = admin.unwrap();
    assert_eq!(get(&gateway, "/admin/tenants", &admin).await, 200);

    // Demoted: the admin token is refused at once, not when it expires.
    patch_user(&gateway, &id, json!({"role": "user"})).await;
    assert_eq!(get(&gateway, "/admin/tenants", &admin).await, 401);
    assert_eq!(get(&gateway, "/me", &admin).await, 401);

    // Moved to another tenant: the token naming the old one is refused.
    let (_, before_move) = login(&gateway, email).await;
    let before_move = before_move.unwrap();
    assert_eq!(get(&gateway, "/me/balance", &before_move).await, 200);
    patch_user(&gateway, &id, json!({"tenant_id": "other"})).await;
    assert_eq!(get(&gateway, "/me/balance", &before_move).await, 401);

    // Disabled: every token refused, at the gateway too, and no new one issued.
    let (_, last) = login(&gateway, email).await;
    let last = last.unwrap();
    assert_eq!(get(&gateway, "/me", &last).await, 200);
    assert_eq!(call(&gateway, &last).await, 200);
    // Tokens carry their issue time in milliseconds: change the user in a later one.
    next_millisecond().await;
    patch_user(&gateway, &id, json!({"disabled": true})).await;
    assert_eq!(get(&gateway, "/me", &last).await, 401);
    wait_until(
        "the gateway to refuse the token",
        Duration::from_secs(2),
        async || call(&gateway, &last).await == 401,
    )
    .await;
    assert_eq!(login(&gateway, email).await.0, 401);

    // Enabled again: the old token stays dead; a new login works.
    patch_user(&gateway, &id, json!({"disabled": false})).await;
    assert_eq!(get(&gateway, "/me", &last).await, 401, "not revived");
    assert_eq!(
        call(&gateway, &last).await,
        401,
        "not revived at the gateway"
    );
    let (status, fresh) = login(&gateway, email).await;
    assert_eq!(status, 200);
    assert_eq!(get(&gateway, "/me", &fresh.unwrap()).await, 200);
}

/// Waits for the wall clock to enter the next millisecond (what a token's `iat` tells).
async fn next_millisecond() {
    let now = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis()
    };
    let start = now();
    wait_until("the next millisecond", Duration::from_secs(1), async || {
        now() > start
    })
    .await;
}

/// Two control planes on one Redis, each with its own store: 3 wrong guesses on one and 2 on
/// the other lock the account on both, even against the right password.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_logins_are_counted_across_replicas() {
    let redis = RedisServer::start();
    let yaml = "tenants:\n  - { id: ops, name: Operators }\n";
    let first = Gateway::start(yaml, Some(redis.url()));
    let second = Gateway::start(yaml, Some(redis.url()));
    let email = "victim@example.com";
    register(&first, email).await;
    register(&second, email).await;
    for (replica, guesses) in [(&first, 3), (&second, 2)] {
        for _ in 0..guesses {
            assert_eq!(login_with(replica, email, "a wrong guess").await.0, 401);
        }
    }
    for replica in [&first, &second] {
        assert_eq!(
            login(replica, email).await.0,
            429,
            "5 failures across replicas lock the account everywhere"
        );
    }
    assert_eq!(
        login(&first, "someone.else@example.com").await.0,
        401,
        "the lock is per account"
    );
}
