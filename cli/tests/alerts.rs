//! docs/DESIGN.md §Alerts against real brokers: warnings announced once per crossing across replicas,
//! re-armed by a top-up; a broker outage costs requests nothing and loses no warning; the
//! in-process broker serves plain MQTT clients.

use tollgate_testkit as common;

use common::gate::TcpGate;
use common::mqtt::{Message, Mosquitto, Subscriber};
use common::{admin_token, client, token, wait_until, Gateway, RedisServer, Upstream};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

fn config(upstream: &Upstream, credits: i64) -> String {
    config_with(upstream, credits, false)
}

fn config_with(upstream: &Upstream, credits: i64, lease: bool) -> String {
    format!(
        "ledger: {{ lease: {{ enabled: {lease} }} }}
services:
  - name: api
    upstream: {}
    endpoints:
      - {{ method: ANY, path: /*, credits: 10 }}
tenants:
  - {{ id: alerted, name: Alerted, credits: {credits} }}
  - {{ id: ops, name: Operators }}
",
        upstream.url()
    )
}

async fn call(gateway: &Gateway, tenant: &str) -> u16 {
    client()
        .get(gateway.url("/api/proxy/api/work"))
        .bearer_auth(token(tenant, "u1"))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// `calls` concurrent calls spread over the gateways; returns how many got 200.
async fn burst(gateways: &[&Gateway], calls: usize) -> usize {
    let answers = futures_util::future::join_all(
        (0..calls).map(|i| call(gateways[i % gateways.len()], "alerted")),
    )
    .await;
    assert!(
        answers.iter().all(|s| matches!(s, 200 | 402)),
        "{answers:?}"
    );
    answers.iter().filter(|s| **s == 200).count()
}

async fn metric(gateway: &Gateway, line_start: &str) -> f64 {
    let text = gateway.metrics_text().await;
    text.lines()
        .find(|l| l.starts_with(line_start))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

async fn warnings_published(gateways: &[&Gateway]) -> f64 {
    let mut sum = 0.0;
    for g in gateways {
        sum += metric(g, r#"tollgate_alerts_published_total{topic="warning"}"#).await;
    }
    sum
}

/// With leased credits the low warning shows the announcing replica's view, at or just
/// below the threshold, so `balance` is checked as a range there.
fn check_warning(message: &Message, level: &str, balance: std::ops::RangeInclusive<i64>) {
    assert_eq!(message.topic, "tenant/alerted/warning");
    let p = &message.payload;
    assert_eq!(p["tenant_id"], "alerted", "{p}");
    assert_eq!(p["level"], level, "{p}");
    assert!(
        p["balance"].as_i64().is_some_and(|b| balance.contains(&b)),
        "{p}"
    );
    assert_eq!(p["threshold"], 100, "{p}");
    let at = p["timestamp"].as_str().unwrap();
    assert!(chrono::DateTime::parse_from_rfc3339(at).is_ok(), "{p}");
    let mut fields: Vec<_> = p.as_object().unwrap().keys().cloned().collect();
    fields.sort();
    assert_eq!(
        fields,
        ["balance", "level", "tenant_id", "threshold", "timestamp"]
    );
}

async fn wait_for(subscriber: &Subscriber, suffix: &str, count: usize) -> Vec<Message> {
    wait_until(
        &format!("{count} messages on {suffix}"),
        Duration::from_secs(15),
        async || subscriber.on(suffix).len() >= count,
    )
    .await;
    subscriber.on(suffix)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_announce_each_crossing_once_and_a_top_up_re_arms() {
    announce_each_crossing_once(false).await;
}

/// The same with leased credits: crossings inside slices, decided on each replica's view,
/// still announced once across both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leasing_replicas_announce_each_crossing_once() {
    announce_each_crossing_once(true).await;
}

async fn announce_each_crossing_once(lease: bool) {
    let low = if lease { 0..=100 } else { 100..=100 };
    // Exhausted is announced when the balance reaches 0 or a charge is refused for want of
    // credits. With leased credits a replica decides on its own view (the shared balance
    // and its slice), which can be under one call's price (10) without being 0 while the
    // other replica's slice holds the rest: the refusal announces it there.
    let exhausted = if lease { 0..=9 } else { 0..=0 };
    let broker = Mosquitto::start();
    let redis = RedisServer::start();
    let upstream = Upstream::start().await;
    let env = vec![
        ("TOLLGATE_REDIS_URL".to_owned(), redis.url()),
        ("TOLLGATE_MQTT_URL".to_owned(), broker.url()),
    ];
    let yaml = config_with(&upstream, 250, lease);
    let a = Gateway::start_with(&yaml, env.clone());
    let b = Gateway::start_with(&yaml, env);
    let subscriber = Subscriber::start(broker.port, "tenant/+/warning").await;

    assert_eq!(burst(&[&a, &b], 40).await, 25);
    // Two replicas publish: the order of arrival may differ from the order of decision,
    // which is low, then exhausted.
    let by_balance = |mut m: Vec<Message>| {
        m.sort_by_key(|m| m.payload["level"] != "low");
        m
    };
    let first = by_balance(wait_for(&subscriber, "/warning", 2).await);
    wait_until("both published", Duration::from_secs(5), async || {
        warnings_published(&[&a, &b]).await >= 2.0
    })
    .await;
    check_warning(&first[0], "low", low.clone());
    check_warning(&first[1], "exhausted", exhausted.clone());

    let topped: Value = client()
        .post(a.admin_url("/admin/tenants/alerted/credits"))
        .bearer_auth(admin_token("ops", "root"))
        .json(&json!({"amount": 500, "reason": "refill"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(topped["balance"], 500, "{topped}");
    assert_eq!(burst(&[&a, &b], 60).await, 50);
    let all = wait_for(&subscriber, "/warning", 4).await;
    let second = by_balance(all[2..].to_vec());
    check_warning(&second[0], "low", low);
    check_warning(&second[1], "exhausted", exhausted);

    // Exactly: the ledger decided four warnings in all, and nobody published more.
    wait_until("four published", Duration::from_secs(5), async || {
        warnings_published(&[&a, &b]).await >= 4.0
    })
    .await;
    assert_eq!(warnings_published(&[&a, &b]).await, 4.0);
    assert_eq!(subscriber.on("/warning").len(), 4);

    // Each warning is in `notifications` (each gateway here has its own store), delivered.
    let admin = admin_token("ops", "root");
    wait_until("delivery recorded", Duration::from_secs(10), async || {
        let mut delivered = 0;
        for g in [&a, &b] {
            let list = g
                .admin_json("/admin/notifications?tenant_id=alerted", &admin)
                .await;
            let items = list["items"].as_array().cloned().unwrap_or_default();
            delivered += items
                .iter()
                .filter(|n| n["delivery"] == "delivered")
                .count();
        }
        delivered == 4
    })
    .await;
}

fn p99(mut latencies: Vec<Duration>) -> Duration {
    latencies.sort();
    latencies[(latencies.len() * 99 / 100).min(latencies.len() - 1)]
}

async fn timed_calls(gateway: &Gateway, tenant: &str, n: usize) -> Vec<Duration> {
    let results = futures_util::future::join_all((0..8).map(|_| async move {
        let mut latencies = Vec::new();
        for _ in 0..n / 8 {
            let started = Instant::now();
            assert_eq!(call(gateway, tenant).await, 200);
            latencies.push(started.elapsed());
        }
        latencies
    }))
    .await;
    results.into_iter().flatten().collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_outage_costs_requests_nothing_and_loses_no_warning() {
    let broker = Mosquitto::start();
    let gate = TcpGate::start(broker.addr()).await;
    let upstream = Upstream::start().await;
    let yaml = format!(
        "{}  - {{ id: busy, name: Busy, credits: 1000000 }}\n",
        config(&upstream, 150)
    );
    let env = vec![(
        "TOLLGATE_MQTT_URL".to_owned(),
        format!("mqtt://{}", gate.addr),
    )];
    let gateway = Gateway::start_with(&yaml, env);
    let subscriber = Subscriber::start(broker.port, "tenant/#").await;
    // Connected: credit-success notices flow.
    call(&gateway, "busy").await;
    wait_for(&subscriber, "/credit-success", 1).await;

    let up = p99(timed_calls(&gateway, "busy", 400).await);
    gate.close();
    let down = p99(timed_calls(&gateway, "busy", 400).await);
    assert!(
        down <= (up * 3).max(up + Duration::from_millis(50)),
        "p99 with the broker down {down:?} vs up {up:?}"
    );

    // A crossing while the broker is away is delivered when it returns.
    for _ in 0..5 {
        assert_eq!(call(&gateway, "alerted").await, 200);
    }
    assert!(subscriber.on("/warning").is_empty());
    gate.open();
    let warnings = wait_for(&subscriber, "/warning", 1).await;
    check_warning(&warnings[0], "low", 100..=100);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_in_process_broker_serves_a_plain_mqtt_client() {
    let upstream = Upstream::start().await;
    let gateway = Gateway::start(&config(&upstream, 120), None);
    let subscriber = Subscriber::start(gateway.mqtt_port, "tenant/#").await;
    for _ in 0..3 {
        assert_eq!(call(&gateway, "alerted").await, 200);
    }
    let warnings = wait_for(&subscriber, "/warning", 1).await;
    check_warning(&warnings[0], "low", 100..=100);
    let notices = wait_for(&subscriber, "/credit-success", 3).await;
    let p = &notices[2].payload;
    assert_eq!(notices[2].topic, "tenant/alerted/credit-success");
    assert_eq!(
        (
            &p["tenant_id"],
            &p["service"],
            &p["endpoint"],
            &p["credits_used"]
        ),
        (&json!("alerted"), &json!("api"), &json!("/*"), &json!(10))
    );
    let balances: Vec<_> = notices
        .iter()
        .map(|m| m.payload["balance"].clone())
        .collect();
    assert_eq!(balances, [json!(110), json!(100), json!(90)]);
}
