//! The control plane as operators deploy it: the first admin from `tollgate create-admin`
//! (never from sign-up), and `tollgate admin` run alone beside gateways that share its
//! Redis and MongoDB, its changes reaching them through the catalog version.

use tollgate_testkit as common;

use common::{client, token, wait_until, ControlPlane, Gateway, RedisServer, Upstream};
use serde_json::{json, Value};
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Runs `tollgate create-admin` with `password` on stdin; returns the new user's id.
fn create_admin(
    config: &std::path::Path,
    env: &[(String, String)],
    email: &str,
    password: &str,
) -> Result<String, String> {
    let mut child = Command::new(common::tollgate_bin())
        .args(["create-admin", "--email", email, "--config"])
        .arg(config)
        .env_remove("TOLLGATE_REDIS_URL")
        .env_remove("TOLLGATE_MONGODB_URI")
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    writeln!(child.stdin.take().unwrap(), "{password}").unwrap();
    let out = child.wait_with_output().unwrap();
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

async fn login(admin_url: &str, email: &str, password: &str) -> reqwest::Response {
    client()
        .post(format!("{admin_url}/auth/login"))
        .json(&json!({"email": email, "password": password}))
        .send()
        .await
        .unwrap()
}

const SERVICES: &str = "\
services:
  - name: notes
    upstream: UPSTREAM
    endpoints:
      - { method: POST, path: /notes/create, credits: 5 }
tenants:
  - { id: acme, name: Acme, credits: 1000 }
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_admin_comes_from_the_cli_and_can_log_in() {
    let upstream = Upstream::start().await;
    let gateway = Gateway::start(&SERVICES.replace("UPSTREAM", &upstream.url()), None);
    let env = vec![(
        "TOLLGATE_DATA_DIR".to_owned(),
        gateway.data_dir().display().to_string(),
    )];
    let config = gateway.dir.join("tollgate.yaml");
    let id = create_admin(&config, &env, "Root@Example.com", "a long enough password").unwrap();
    assert!(id.starts_with("u_"), "{id}");
    let again = create_admin(&config, &env, "root@example.com", "another long password");
    assert!(again.unwrap_err().contains("exists"), "the email is taken");
    let short = create_admin(&config, &env, "other@example.com", "short");
    assert!(
        short.unwrap_err().contains("password"),
        "names the password"
    );

    let admin = gateway.admin_url("");
    let answer = login(&admin, "root@example.com", "a long enough password").await;
    assert_eq!(answer.status(), 200);
    let body: Value = answer.json().await.unwrap();
    let token = body["access_token"].as_str().unwrap();
    let tenants = client()
        .get(format!("{admin}/admin/tenants"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(tenants.status(), 200, "the CLI's admin has the admin role");
    let me: Value = client()
        .get(format!("{admin}/me"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(me["role"], "admin");
    assert_eq!(me["tenant_id"], "operators");
    // Self-registration never makes an admin.
    let registered: Value = client()
        .post(format!("{admin}/auth/register"))
        .json(&json!({"email": "eve@example.com", "password": "eve's password", "tenant_name": "Eve"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(registered["role"], "user");

    let metrics = gateway.metrics_text().await;
    let line = r#"tollgate_admin_requests_total{method="POST",route="/auth/login",status="200"} 1"#;
    assert!(metrics.contains(line), "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_control_plane_alone_changes_what_a_separate_gateway_charges() {
    let Some(mongo) = common::mongo_uri() else {
        return;
    };
    let redis = RedisServer::start();
    let upstream = Upstream::start().await;
    let env = vec![
        ("TOLLGATE_REDIS_URL".to_owned(), redis.url()),
        ("TOLLGATE_MONGODB_URI".to_owned(), mongo),
        ("TOLLGATE_MONGODB_DB".to_owned(), common::unique_db()),
    ];
    let gateway = Gateway::start_with(&SERVICES.replace("UPSTREAM", &upstream.url()), env.clone());
    let config = gateway.dir.join("tollgate.yaml");
    create_admin(&config, &env, "root@example.com", "a long enough password").unwrap();

    let control_plane = ControlPlane::start(&config, &env, &gateway.dir.join("admin.log"));
    let admin = control_plane.url("");
    let body: Value = login(&admin, "root@example.com", "a long enough password")
        .await
        .json()
        .await
        .unwrap();
    let root = body["access_token"].as_str().unwrap().to_owned();

    let call = || async {
        client()
            .post(gateway.url("/api/proxy/notes/notes/create"))
            .bearer_auth(token("acme", "u1"))
            .send()
            .await
            .unwrap()
    };
    assert_eq!(common::header_i64(&call().await, "x-credits-cost"), Some(5));
    let patched = client()
        .patch(format!("{admin}/admin/services/notes"))
        .bearer_auth(&root)
        .json(&json!({"endpoints": [{"method": "POST", "path": "/notes/create", "credits": 9}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(patched.status(), 200);
    let changed_at = Instant::now();
    wait_until(
        "the gateway charges the new price",
        Duration::from_secs(5),
        async || common::header_i64(&call().await, "x-credits-cost") == Some(9),
    )
    .await;
    assert!(
        changed_at.elapsed() < Duration::from_millis(2_500),
        "took {:?}",
        changed_at.elapsed()
    );

    // A top-up through the lone control plane moves the gateway's live balance.
    let before: Value = client()
        .get(format!("{admin}/admin/tenants/acme"))
        .bearer_auth(&root)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let topped: Value = client()
        .post(format!("{admin}/admin/tenants/acme/credits"))
        .bearer_auth(&root)
        .json(&json!({"amount": 100, "reason": "goodwill"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(topped["balance"], before["balance"].as_i64().unwrap() + 100);
    let next = call().await;
    assert_eq!(
        common::header_i64(&next, "x-credits-remaining"),
        Some(topped["balance"].as_i64().unwrap() - 9)
    );
}
