//! Operations: Prometheus metrics that count what was sent, liveness and readiness, and
//! public (unmetered) services.

use tollgate_testkit as common;

use common::{client, metric_sample, token, wait_until, Gateway, RedisServer, Upstream};
use std::time::Duration;

fn yaml(upstream: &str) -> String {
    format!(
        r#"
services:
  - name: notes
    upstream: {upstream}
    endpoints:
      - {{ method: GET, path: "/notes/{{id}}", credits: 1 }}
  - name: docs
    upstream: {upstream}
    public: true
    endpoints:
      - {{ method: GET, path: "/*", credits: 0 }}
tenants:
  - {{ id: acme, credits: 1000 }}
  - {{ id: poor, credits: 0 }}
  - {{ id: load, credits: 1000000000000 }}
"#
    )
}

async fn get(url: &str, bearer: Option<&str>) -> reqwest::Response {
    let request = client().get(url);
    let request = match bearer {
        Some(t) => request.bearer_auth(t),
        None => request,
    };
    request.send().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_what_was_sent() {
    let upstream = Upstream::start().await;
    let gateway = Gateway::start(&yaml(&upstream.url()), None);
    let acme = token("acme", "u1");
    for _ in 0..5 {
        assert_eq!(
            get(&gateway.url("/api/proxy/notes/notes/1"), Some(&acme))
                .await
                .status(),
            200
        );
    }
    for _ in 0..3 {
        assert_eq!(
            get(&gateway.url("/api/proxy/notes/notes/1"), None)
                .await
                .status(),
            401
        );
    }
    for _ in 0..2 {
        assert_eq!(
            get(&gateway.url("/api/proxy/nope/x"), Some(&acme))
                .await
                .status(),
            404
        );
        assert_eq!(
            get(
                &gateway.url("/api/proxy/notes/notes/1"),
                Some(&token("poor", "u2"))
            )
            .await
            .status(),
            402
        );
    }
    for _ in 0..4 {
        assert_eq!(
            get(&gateway.url("/api/proxy/docs/readme"), None)
                .await
                .status(),
            200
        );
    }
    let metrics_url = gateway.metrics_url("/metrics");
    let mut text = String::new();
    // Metrics are recorded in the logging phase, just after the response: poll.
    wait_until(
        "all 16 requests in the metrics",
        Duration::from_secs(10),
        async || {
            text = get(&metrics_url, None).await.text().await.unwrap();
            text.contains("tollgate_request_duration_seconds_count 16")
        },
    )
    .await;
    let requests = "tollgate_requests_total";
    assert_eq!(
        metric_sample(
            &text,
            requests,
            &[("service", "notes"), ("outcome", "forwarded")]
        ),
        5.0
    );
    assert_eq!(
        metric_sample(
            &text,
            requests,
            &[("service", "notes"), ("outcome", "unauthorized")]
        ),
        3.0
    );
    assert_eq!(
        metric_sample(
            &text,
            requests,
            &[("service", "notes"), ("outcome", "no_credits")]
        ),
        2.0
    );
    assert_eq!(
        metric_sample(
            &text,
            requests,
            &[("service", "-"), ("outcome", "not_found")]
        ),
        2.0
    );
    assert_eq!(
        metric_sample(
            &text,
            requests,
            &[("service", "docs"), ("outcome", "forwarded")]
        ),
        4.0
    );
    assert_eq!(
        metric_sample(
            &text,
            "tollgate_credits_charged_total",
            &[("service", "notes")]
        ),
        5.0
    );
    assert_eq!(
        metric_sample(&text, "tollgate_ledger_duration_seconds_count", &[]),
        7.0
    );
    assert!(text.contains("# TYPE tollgate_request_duration_seconds histogram"));
    assert!(text.contains("# TYPE tollgate_usage_queue_depth gauge"));
    assert!(text.contains("# TYPE tollgate_usage_flushed_total counter"));
    assert!(!text.contains("acme"), "tenant ids are not labels");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_readiness_follow_the_ledger() {
    let upstream = Upstream::start().await;
    let mut redis = RedisServer::start();
    let gateway = Gateway::start(&yaml(&upstream.url()), Some(redis.url()));
    let healthz = gateway.metrics_url("/healthz");
    let readyz = gateway.metrics_url("/readyz");
    assert_eq!(get(&healthz, None).await.status(), 200);
    let ready = get(&readyz, None).await;
    assert_eq!(ready.status(), 200);
    let body: serde_json::Value = ready.json().await.unwrap();
    assert_eq!(
        (body["ledger"].as_str(), body["store"].as_str()),
        (Some("ok"), Some("ok"))
    );

    redis.kill();
    let unready = get(&readyz, None).await;
    assert_eq!(unready.status(), 503);
    let body: serde_json::Value = unready.json().await.unwrap();
    assert_ne!(body["ledger"], "ok", "{body}");
    assert_eq!(body["store"], "ok");
    assert_eq!(
        get(&healthz, None).await.status(),
        200,
        "alive, just not ready"
    );

    redis.restart();
    wait_until("ready again", Duration::from_secs(20), async || {
        get(&readyz, None).await.status() == 200
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn public_services_are_free_and_anonymous() {
    let upstream = Upstream::start().await;
    let gateway = Gateway::start(&yaml(&upstream.url()), None);
    let response = client()
        .get(gateway.url("/api/proxy/docs/readme"))
        .header("x-tenant-id", "spoofed")
        .header("authorization", "Bearer whatever")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert!(response.headers().get("x-credits-cost").is_none());
    let echo: serde_json::Value = response.json().await.unwrap();
    assert!(
        echo["headers"].get("x-tenant-id").is_none(),
        "spoofed identity is stripped"
    );
    assert!(echo["headers"].get("authorization").is_none());
    assert_eq!(echo["path"], "/readme");
}

/// The shipped dashboard only queries metrics the gateway exposes (or the alerts counter,
/// which comes with the alerts issue), so it cannot rot silently.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_grafana_dashboard_queries_real_metrics() {
    let path = concat!(
        concat!(env!("CARGO_MANIFEST_DIR"), "/.."),
        "/conf/grafana-dashboard.json"
    );
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let upstream = Upstream::start().await;
    let gateway = Gateway::start(&yaml(&upstream.url()), None);
    let exposed = get(&gateway.metrics_url("/metrics"), None)
        .await
        .text()
        .await
        .unwrap();
    let panels = dashboard["panels"].as_array().unwrap();
    assert!(panels.len() >= 6);
    for panel in panels {
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"].as_str().unwrap();
            for metric in expr
                .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .filter(|w| w.starts_with("tollgate_"))
            {
                let family = metric.trim_end_matches("_bucket");
                let known = exposed.contains(&format!("# TYPE {family} "))
                    || family == "tollgate_alerts_published_total";
                assert!(
                    known,
                    "panel {:?} queries {metric}, which the gateway does not expose",
                    panel["title"]
                );
            }
        }
    }
}

/// SIGTERM with a request in flight: the request completes, and its usage event is in the
/// store when the process has exited.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_requests_in_flight_and_flushes_their_usage() {
    let upstream = Upstream::start().await;
    let yaml = format!("grace_period_secs: 3\n{}", yaml(&upstream.url()));
    let mut gateway = Gateway::start(&yaml, None);
    let slow = {
        let request = client()
            .get(gateway.url("/api/proxy/notes/notes/1?delay_ms=1500"))
            .bearer_auth(token("acme", "u1"));
        tokio::spawn(async move { request.send().await.map(|r| r.status().as_u16()) })
    };
    wait_until(
        "the slow request to reach the upstream",
        Duration::from_secs(10),
        async || upstream.requests() == 1,
    )
    .await;
    gateway.terminate();
    assert_eq!(
        slow.await.unwrap().unwrap(),
        200,
        "the request in flight was served"
    );
    assert!(gateway.wait(), "clean exit; log:\n{}", gateway.log());
    let store = tollgate::store::SqliteStore::open(&gateway.data_dir()).unwrap();
    let logs = tollgate::store::Store::usage_logs(
        &store,
        &tollgate::store::UsageQuery {
            limit: 10,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(logs.len(), 1, "its usage event was flushed before exit");
    assert_eq!((logs[0].status, logs[0].credits_used), (200, 1));
}

/// Pingora's graceful upgrade under load: a new process started with `--upgrade` takes the
/// listening socket when the old one gets SIGQUIT; the old one finishes its requests and
/// drains its usage queue. No request fails, no usage event is lost. (Distributed mode: the
/// two processes share Redis and MongoDB, each with its own data dir.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graceful_upgrade_under_load_loses_nothing() {
    let Some(uri) = common::mongo_uri() else {
        return;
    };
    let upstream = Upstream::start().await;
    let redis = RedisServer::start();
    let db = common::unique_db();
    let sock = common::temp_dir("tollgate-upgrade").join("upgrade.sock");
    let yaml = format!(
        "grace_period_secs: 2\nupgrade_sock: {}\n{}",
        sock.display(),
        yaml(&upstream.url())
    );
    let env = vec![
        ("TOLLGATE_REDIS_URL".to_owned(), redis.url()),
        ("TOLLGATE_MONGODB_URI".to_owned(), uri.clone()),
        ("TOLLGATE_MONGODB_DB".to_owned(), db.clone()),
    ];
    let mut old = Gateway::start_with(&yaml, env.clone());

    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let loops: Vec<_> = (0..4)
        .map(|_| {
            let (url, stop) = (old.url("/api/proxy/notes/notes/1"), stop.clone());
            tokio::spawn(async move {
                let http = client();
                let (mut ok, mut retried, mut failed) = (0u64, 0u64, Vec::new());
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    // A request written onto a keep-alive connection just as the old process
                    // closes it fails in transport; clients retry an idempotent GET once.
                    let mut outcome = http.get(&url).bearer_auth(token("load", "u1")).send().await;
                    if outcome.is_err() {
                        retried += 1;
                        outcome = http.get(&url).bearer_auth(token("load", "u1")).send().await;
                    }
                    match outcome {
                        Ok(r) if r.status() == 200 => ok += 1,
                        Ok(r) => failed.push(r.status().to_string()),
                        Err(e) => failed.push(e.to_string()),
                    }
                    // Paced to what the MongoDB stand-in absorbs (hundreds of inserts/s).
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                (ok, retried, failed)
            })
        })
        .collect();
    wait_until("some traffic", Duration::from_secs(10), async || {
        upstream.requests() > 20
    })
    .await;

    let log = std::fs::File::create(old.dir.join("new.log")).unwrap();
    let new = std::process::Command::new(common::tollgate_bin())
        .args(["run", "--upgrade", "--config"])
        .arg(old.dir.join("tollgate.yaml"))
        .env("TOLLGATE_LISTEN", format!("127.0.0.1:{}", old.port))
        .env(
            "TOLLGATE_METRICS_LISTEN",
            format!("127.0.0.1:{}", common::free_port()),
        )
        .env("TOLLGATE_DATA_DIR", old.dir.join("data-new"))
        // The same in-process broker port: the new process waits for the old one's.
        .env(
            "TOLLGATE_MQTT_EMBEDDED_LISTEN",
            format!("127.0.0.1:{}", old.mqtt_port),
        )
        .envs(env.iter().map(|(k, v)| (k, v)))
        .env("RUST_LOG", "info,tollgate=debug")
        .stderr(log)
        .spawn()
        .unwrap();
    // Killed however the test ends.
    struct KillOnDrop(std::process::Child);
    impl Drop for KillOnDrop {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut new = KillOnDrop(new);
    wait_until(
        "the new process to wait on the upgrade socket",
        Duration::from_secs(20),
        async || sock.exists(),
    )
    .await;
    common::signal_pid(old.pid(), libc::SIGQUIT);
    assert!(old.wait(), "the old process exits cleanly");
    let served_before = upstream.requests();
    wait_until(
        "the new process to serve",
        Duration::from_secs(10),
        async || upstream.requests() > served_before + 20,
    )
    .await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (mut ok, mut retried) = (0, 0);
    for handle in loops {
        let (n, r, failed) = handle.await.unwrap();
        assert!(
            failed.is_empty(),
            "requests failed during the upgrade: {failed:?}"
        );
        ok += n;
        retried += r;
    }
    common::signal_pid(new.0.id(), libc::SIGTERM);
    assert!(new.0.wait().unwrap().success());

    for dir in ["data", "data-new"] {
        let journal = old.dir.join(dir).join("usage.journal");
        let len = std::fs::metadata(&journal).map_or(0, |m| m.len());
        assert_eq!(len, 0, "{} still holds events", journal.display());
    }
    let store = tollgate::store::MongoStore::connect(&uri, &db)
        .await
        .unwrap();
    let logs = tollgate::store::Store::usage_logs(
        &store,
        &tollgate::store::UsageQuery {
            limit: 100_000,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    // Every served request is logged; a retried first attempt may have been served too.
    let logged = logs.len() as u64;
    assert!(
        (ok..=ok + retried).contains(&logged),
        "{logged} logs for {ok} served requests and {retried} retries"
    );
    let ledger = tollgate::ledger::RedisLedger::new(&redis.url(), &Default::default()).unwrap();
    let reports = tollgate::reconcile::reconcile(&store, &ledger, &|_| 0)
        .await
        .unwrap();
    assert!(
        reports.iter().all(|r| r.is_consistent()),
        "every charge has its usage log: {reports:?}"
    );
    eprintln!("upgrade under load: {ok} served, {retried} retried, {logged} logged");
}

/// A side port that cannot be had (the admin API's, the metrics endpoint's) stops start-up
/// with the address named. Before, the error was logged and the gateway ran without it.
#[test]
fn a_port_that_cannot_be_had_stops_start_up_naming_it() {
    let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken = held.local_addr().unwrap().to_string();
    for (variable, key) in [
        ("TOLLGATE_ADMIN_LISTEN", "admin_listen"),
        ("TOLLGATE_METRICS_LISTEN", "metrics_listen"),
    ] {
        let dir = common::temp_dir("tollgate-bind");
        let config = dir.join("tollgate.yaml");
        std::fs::write(
            &config,
            "grace_period_secs: 0\nscheduler:\n  enabled: false\n",
        )
        .unwrap();
        let free = || format!("127.0.0.1:{}", common::free_port());
        let mut child = std::process::Command::new(common::tollgate_bin())
            .args(["run", "--config"])
            .arg(&config)
            .env("TOLLGATE_DATA_DIR", dir.join("data"))
            .env("TOLLGATE_LISTEN", free())
            .env("TOLLGATE_ADMIN_LISTEN", free())
            .env("TOLLGATE_METRICS_LISTEN", free())
            .env("TOLLGATE_MQTT_EMBEDDED_LISTEN", free())
            .env_remove("TOLLGATE_REDIS_URL")
            .env_remove("TOLLGATE_MONGODB_URI")
            .env(variable, &taken)
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            if std::time::Instant::now() > deadline {
                let _ = child.kill();
                panic!("{key}: the gateway started without its port");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let mut stderr = String::new();
        std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
        assert!(!status.success(), "{key}: {stderr}");
        assert!(
            stderr.contains(key) && stderr.contains(&taken),
            "{key} {taken}: {stderr}"
        );
        std::fs::remove_dir_all(dir).unwrap();
    }
}

/// A SIGTERM the moment the first port answers (an orchestrator stopping a replica that
/// just started) stops the gateway cleanly: the shutdown signals are caught from before
/// anything listens. Before, Pingora caught them only once its services ran, and a SIGTERM
/// in between killed the process without its shutdown (CI saw `signal: 15` once).
#[test]
fn a_sigterm_during_start_up_is_a_clean_stop() {
    for _ in 0..5 {
        let dir = common::temp_dir("tollgate-early-term");
        let config = dir.join("tollgate.yaml");
        std::fs::write(
            &config,
            format!(
                "auth: {{ secret: {} }}\nscheduler: {{ enabled: false }}\ngrace_period_secs: 0\n",
                common::SECRET
            ),
        )
        .unwrap();
        let admin_port = common::free_port();
        let mut child = std::process::Command::new(common::tollgate_bin())
            .args(["run", "--config"])
            .arg(&config)
            .env(
                "TOLLGATE_LISTEN",
                format!("127.0.0.1:{}", common::free_port()),
            )
            .env(
                "TOLLGATE_METRICS_LISTEN",
                format!("127.0.0.1:{}", common::free_port()),
            )
            .env("TOLLGATE_ADMIN_LISTEN", format!("127.0.0.1:{admin_port}"))
            .env(
                "TOLLGATE_MQTT_EMBEDDED_LISTEN",
                format!("127.0.0.1:{}", common::free_port()),
            )
            .env("TOLLGATE_DATA_DIR", dir.join("data"))
            .env_remove("TOLLGATE_REDIS_URL")
            .env_remove("TOLLGATE_REDIS_CLUSTER_NODES")
            .env_remove("TOLLGATE_MONGODB_URI")
            .env_remove("TOLLGATE_MQTT_URL")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        // The admin port listens first (bound before the server runs): signal at once.
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", admin_port)).is_err() {
            assert!(std::time::Instant::now() < deadline, "never listened");
            if let Ok(Some(status)) = child.try_wait() {
                panic!("exited before listening: {status}");
            }
        }
        common::signal(&child, libc::SIGTERM);
        let status = child.wait().unwrap();
        assert!(status.success(), "a SIGTERM during start-up: {status}");
    }
}
