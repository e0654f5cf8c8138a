//! A user's tokens speak for them only while they still match the account: once an operator
//! promotes, demotes, moves or disables the user, the admin API refuses every token issued
//! before, at once (a demoted admin keeps no admin power until the token expires).

mod common;

use common::{admin_token, client, Gateway};
use serde_json::{json, Value};

async fn login(gateway: &Gateway, email: &str) -> (u16, Option<String>) {
    let r = client()
        .post(gateway.admin_url("/auth/login"))
        .json(&json!({"email": email, "password": "a long password"}))
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let body: Value = r.json().await.unwrap();
    (status, body["access_token"].as_str().map(str::to_owned))
}

async fn get(gateway: &Gateway, path: &str, token: &str) -> u16 {
    client()
        .get(gateway.admin_url(path))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
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
    let gateway = Gateway::start(
        "tenants:\n  - { id: ops, name: Operators }\n  - { id: other, name: Other }\n",
        None,
    );
    let email = "mallory@example.com";
    let r = client()
        .post(gateway.admin_url("/auth/register"))
        .json(&json!({"email": email, "password": "a long password", "tenant_name": "M"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let (_, user_token) = login(&gateway, email).await;
    let user_token = user_token.unwrap();
    let me: Value = client()
        .get(gateway.admin_url("/me"))
        .bearer_auth(&user_token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
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

    // Disabled: every token refused, and no new one issued.
    let (_, last) = login(&gateway, email).await;
    let last = last.unwrap();
    assert_eq!(get(&gateway, "/me", &last).await, 200);
    patch_user(&gateway, &id, json!({"disabled": true})).await;
    assert_eq!(get(&gateway, "/me", &last).await, 401);
    assert_eq!(login(&gateway, email).await.0, 401);
}
