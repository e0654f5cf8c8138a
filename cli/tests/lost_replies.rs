//! Exactly-once records outlive every retry. A TCP gate between the gateway and a real
//! Redis lets requests through but throws the replies away (Redis acts, the gateway never
//! learns), then cuts every connection (a partition), then heals. Charges that landed for
//! `503`s, refunds that landed once and deferred charges that landed are each found by their
//! record and settled once; work that outlives its record is given up, never repeated, and
//! `tollgate reconcile` explains it. Open work survives a SIGKILL and is finished at the next
//! start.

use tollgate_testkit as common;

use common::gate::TcpGate;
use common::{client, token, wait_until, Gateway, RedisServer, Upstream};
use std::time::Duration;

fn yaml(upstream: &str, charge_ttl_secs: u64) -> String {
    format!(
        "ledger:
  timeout_ms: 250
  charge_ttl_secs: {charge_ttl_secs}
usage:
  flush_interval_ms: 50
services:
  - name: strict
    upstream: {upstream}
    endpoints:
      - {{ method: ANY, path: /*, credits: 5 }}
  - name: lenient
    upstream: {upstream}
    on_ledger_error: allow
    endpoints:
      - {{ method: ANY, path: /*, credits: 5 }}
  - name: slowish
    upstream: {upstream}
    timeouts: {{ read_ms: 1000 }}
    refund_on_5xx: true
    endpoints:
      - {{ method: ANY, path: /*, credits: 3 }}
tenants:
  - {{ id: a, credits: 100 }}
  - {{ id: b, credits: 100 }}
  - {{ id: c, credits: 100 }}
"
    )
}

async fn status(gateway: &Gateway, tenant: &str, path: &str) -> u16 {
    client()
        .get(gateway.url(path))
        .bearer_auth(token(tenant, "u1"))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

struct Setup {
    gateway: Gateway,
    gate: TcpGate,
    redis: RedisServer,
    upstream: Upstream,
}

async fn setup(charge_ttl_secs: u64) -> Setup {
    let upstream = Upstream::start().await;
    let redis = RedisServer::start();
    let gate = TcpGate::start(redis.addr()).await;
    let env = vec![(
        "TOLLGATE_REDIS_URL".to_owned(),
        format!("redis://{}/", gate.addr),
    )];
    let gateway = Gateway::start_with(&yaml(&upstream.url(), charge_ttl_secs), env);
    for tenant in ["a", "b", "c"] {
        assert_eq!(
            status(&gateway, tenant, "/api/proxy/strict/warm").await,
            200
        );
    }
    // A refund, so Redis has the void script cached: with its replies lost, the gateway
    // would never see NOSCRIPT and load it.
    let refunded = status(&gateway, "c", "/api/proxy/slowish/warm?status=500").await;
    assert_eq!(refunded, 500);
    Setup {
        gateway,
        gate,
        redis,
        upstream,
    }
}

impl Setup {
    /// While Redis's replies are lost: c's refund lands once (its call was charged with the
    /// replies flowing, then timed out at the upstream); a's charge lands for a call that
    /// gets `503`; b's charge lands for a call served on credit. Every reply is lost.
    async fn lose_replies(&self) {
        let forwarded = self.upstream.requests();
        let slow = {
            let url = self.gateway.url("/api/proxy/slowish/x?delay_ms=3000");
            let request = client().get(url).bearer_auth(token("c", "u1"));
            tokio::spawn(async move { request.send().await.unwrap() })
        };
        // Forwarded: the gateway has the charge's answer (not only Redis its command).
        wait_until(
            "c's call to reach the upstream",
            Duration::from_secs(10),
            async || self.upstream.requests() > forwarded,
        )
        .await;
        assert_eq!(self.redis.balance("c").await, Some(92));
        self.gate.lose_replies();
        let slow = slow.await.unwrap();
        assert_eq!(slow.status(), 504);
        assert_eq!(slow.headers()["x-credits-cost"], "0");
        // The refund's answer was lost: the balance shown is the last one the ledger told,
        // not a restored one it never confirmed (before: 95).
        assert_eq!(slow.headers()["x-credits-remaining"], "92");
        assert_eq!(self.redis.balance("c").await, Some(95), "the refund landed");
        assert_eq!(status(&self.gateway, "a", "/api/proxy/strict/x").await, 503);
        assert_eq!(self.redis.balance("a").await, Some(90), "the charge landed");
        assert_eq!(
            status(&self.gateway, "b", "/api/proxy/lenient/x").await,
            200
        );
        assert_eq!(self.redis.balance("b").await, Some(90), "the charge landed");
    }

    /// Whether every void and deferred charge is settled (none left in the journal).
    fn settled(&self) -> bool {
        tollgate::ledger::worklog::still_open(&self.gateway.data_dir())
            .is_ok_and(|open| open.values().all(Vec::is_empty))
    }

    async fn balances(&self) -> [Option<i64>; 3] {
        [
            self.redis.balance("a").await,
            self.redis.balance("b").await,
            self.redis.balance("c").await,
        ]
    }

    fn reconcile(&mut self) -> (bool, String) {
        self.gateway.stop();
        let redis = ("TOLLGATE_REDIS_URL", self.redis.url());
        self.gateway.reconcile(&[redis])
    }
}

/// A partition shorter than the records' life: the 503 costs nothing, the refund happens
/// once, the deferred call is charged once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_replies_are_settled_once_by_their_records() {
    let mut s = setup(60).await;
    s.lose_replies().await;
    s.gate.close();
    tokio::time::sleep(Duration::from_secs(2)).await; // the partition itself
    s.gate.open();
    wait_until(
        "every void and deferred charge",
        Duration::from_secs(20),
        async || s.balances().await == [Some(95), Some(90), Some(95)] && s.settled(),
    )
    .await;
    let (ok, printed) = s.reconcile();
    assert!(ok, "{printed}");
    assert!(!printed.contains("unresolved void"), "{printed}");
}

/// A partition longer than the records' life (4 s here; the default is 300 s): the work is
/// given up a margin before its records expire — never a second refund (c stays at 95, not
/// 98), never a second charge (b stays at 90, not 85) — and reconciliation explains what may
/// be off (a paid for its 503). Before: c was refunded twice and b charged twice, silently.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn work_that_outlives_its_records_is_given_up_and_reported() {
    let mut s = setup(4).await;
    s.lose_replies().await;
    s.gate.close();
    tokio::time::sleep(Duration::from_secs(5)).await;
    s.gate.open();
    wait_until(
        "the work to be given up",
        Duration::from_secs(20),
        async || {
            let text = s.gateway.metrics_text().await;
            ["void", "refund", "deferred"].iter().all(|kind| {
                common::metric_sample(&text, "tollgate_ledger_unresolved_total", &[("kind", kind)])
                    == 1.0
            })
        },
    )
    .await;
    // Nothing more happens: what was given up is never retried.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(s.balances().await, [Some(90), Some(90), Some(95)]);
    let (ok, printed) = s.reconcile();
    assert!(ok, "explained by the unresolved work: {printed}");
    for line in [
        "unresolved void of tenant a",
        "unresolved refund of tenant c",
        "unresolved deferred of tenant b",
    ] {
        assert!(printed.contains(line), "{line}: {printed}");
    }
}

/// Open work survives a SIGKILL: the next start voids the 503's charge and settles the
/// deferred call (found applied by its record: charged once, logged at its cost).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_work_survives_a_crash() {
    let mut s = setup(60).await;
    s.lose_replies().await;
    s.gate.close();
    let journal = s.gateway.data_dir().join("ledger-work.journal");
    wait_until(
        "the deferred call's end to be journaled",
        Duration::from_secs(10),
        async || std::fs::read_to_string(&journal).is_ok_and(|j| j.contains("\"event\":{")),
    )
    .await;
    s.gateway.kill();
    s.gate.open();
    s.gateway.start_again();
    wait_until(
        "the next start to finish the work",
        Duration::from_secs(20),
        async || s.balances().await == [Some(95), Some(90), Some(95)] && s.settled(),
    )
    .await;
    let (ok, printed) = s.reconcile();
    assert!(ok, "{printed}");
    assert!(!printed.contains("wait in the data dir"), "{printed}");
}
