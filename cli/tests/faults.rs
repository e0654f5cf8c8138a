//! Faults the gateway must ride out with the books intact: a slow Redis (fail closed within
//! the timeout, nothing charged once it recovers), upstreams that reset or answer garbage
//! (a refunded 502), a client that stalls mid-body (a refunded 408, its connection closed),
//! and a 200 MB upload (streamed: the gateway's memory stays flat).

use tollgate_testkit as common;

use common::gate::TcpGate;
use common::{client, header_i64, token, wait_until, Gateway, RedisServer, Upstream};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn yaml(upstream: &str, broken: &str) -> String {
    format!(
        "ledger:
  timeout_ms: 250
services:
  - name: notes
    upstream: {upstream}
    endpoints:
      - {{ method: ANY, path: /*, credits: 5 }}
  - name: broken
    upstream: {broken}
    timeouts: {{ connect_ms: 500, read_ms: 2000, write_ms: 2000 }}
    endpoints:
      - {{ method: ANY, path: /*, credits: 5 }}
tenants:
  - {{ id: acme, credits: 1000 }}
"
    )
}

async fn call(gateway: &Gateway, path: &str) -> reqwest::Response {
    client()
        .get(gateway.url(path))
        .bearer_auth(token("acme", "alice"))
        .send()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_redis_fails_closed_in_time_and_costs_nothing_once_it_recovers() {
    let upstream = Upstream::start().await;
    let redis = RedisServer::start();
    let gate = TcpGate::start(std::net::SocketAddr::from(([127, 0, 0, 1], redis.port))).await;
    let url = format!("redis://{}/", gate.addr);
    let gateway = Gateway::start(&yaml(&upstream.url(), &upstream.url()), Some(url));
    assert_eq!(call(&gateway, "/api/proxy/notes/x").await.status(), 200);
    assert_eq!(redis.balance("acme").await, Some(995));

    gate.slow_down(Duration::from_millis(800));
    for _ in 0..10 {
        let started = Instant::now();
        let r = call(&gateway, "/api/proxy/notes/x").await;
        assert_eq!(r.status(), 503);
        assert!(r.headers().get("retry-after").is_some());
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{:?}",
            started.elapsed()
        );
    }
    gate.slow_down(Duration::ZERO);
    let mut served = 0i64;
    wait_until("charging again", Duration::from_secs(20), async || {
        let ok = call(&gateway, "/api/proxy/notes/x").await.status() == 200;
        served += i64::from(ok);
        ok
    })
    .await;
    // The slow charges landed late; each is voided by id.
    wait_until("late charges voided", Duration::from_secs(20), async || {
        redis.balance("acme").await == Some(995 - 5 * served)
    })
    .await;
    assert_eq!(
        upstream.requests() as i64,
        1 + served,
        "no 503 was forwarded"
    );
}

/// Headers and 10 bytes of a 1,000-byte body, then silence: after the client read timeout
/// the gateway answers 408, closes the connection and gives the credits back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stalls_mid_body_is_timed_out_and_refunded() {
    let upstream = Upstream::start().await;
    let redis = RedisServer::start();
    let config = format!(
        "client_read_timeout_ms: 1000\n{}",
        yaml(&upstream.url(), &upstream.url())
    );
    let gateway = Gateway::start(&config, Some(redis.url()));
    assert_eq!(call(&gateway, "/api/proxy/notes/x").await.status(), 200);
    assert_eq!(redis.balance("acme").await, Some(995));

    let mut stream = tokio::net::TcpStream::connect(gateway.addr())
        .await
        .unwrap();
    let head = format!(
        "POST /api/proxy/notes/upload HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\n\
         Content-Length: 1000\r\n\r\n0123456789",
        token("acme", "alice")
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let started = Instant::now();
    let mut reply = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), stream.read_to_end(&mut reply))
        .await
        .expect("the gateway closes a stalled connection")
        .unwrap();
    let elapsed = started.elapsed();
    let reply = String::from_utf8_lossy(&reply).to_ascii_lowercase();
    assert!(reply.starts_with("http/1.1 408"), "{reply}");
    assert!(reply.contains("application/problem+json"), "{reply}");
    assert!(reply.contains("x-credits-cost: 0"), "{reply}");
    assert!(
        elapsed >= Duration::from_millis(900),
        "timed out early: {elapsed:?}"
    );
    wait_until("the refund", Duration::from_secs(10), async || {
        redis.balance("acme").await == Some(995)
    })
    .await;
}

/// A TCP server that answers every connection with `reply` (nothing: a reset).
async fn bad_upstream(reply: &'static [u8]) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = socket.read(&mut buf).await;
                if reply.is_empty() {
                    // A zero linger sends RST, not FIN, and never blocks the drop.
                    #[allow(deprecated)]
                    let _ = socket.set_linger(Some(Duration::ZERO));
                } else {
                    let _ = socket.write_all(reply).await;
                }
            });
        }
    });
    format!("http://{addr}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstreams_that_reset_or_answer_garbage_are_refunded_502s() {
    let upstream = Upstream::start().await;
    for (what, reply) in [
        ("reset", &b""[..]),
        ("garbage", &b"garbage\r\n\r\n"[..]),
        ("half a status line", &b"HTTP/1.1 2"[..]),
        ("binary", &b"\x00\x01\x02\xff\xfe\r\n\r\n"[..]),
    ] {
        let broken = bad_upstream(reply).await;
        let gateway = Gateway::start(&yaml(&upstream.url(), &broken), None);
        let r = call(&gateway, "/api/proxy/broken/x").await;
        assert_eq!(r.status(), 502, "{what}");
        assert_eq!(
            r.headers()["content-type"],
            "application/problem+json",
            "{what}"
        );
        assert_eq!(
            header_i64(&r, "x-credits-remaining"),
            Some(1000),
            "{what}: refunded"
        );
        let after = call(&gateway, "/api/proxy/notes/x").await;
        assert_eq!(
            header_i64(&after, "x-credits-remaining"),
            Some(995),
            "{what}"
        );
    }
}

fn rss_kb(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_200_mb_upload_streams_through_in_flat_memory() {
    const SIZE: usize = 200 * 1024 * 1024;
    let upstream = Upstream::start().await;
    let gateway = Gateway::start(&yaml(&upstream.url(), &upstream.url()), None);
    assert_eq!(
        call(&gateway, "/api/proxy/notes/warm-up").await.status(),
        200
    );
    let before = rss_kb(gateway.pid());
    let mut stream = tokio::net::TcpStream::connect(gateway.addr())
        .await
        .unwrap();
    let head = format!(
        "POST /api/proxy/notes/upload HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {}\r\n\
         Content-Length: {SIZE}\r\nConnection: close\r\n\r\n",
        token("acme", "alice")
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let chunk = vec![b'x'; 1024 * 1024];
    let mut peak = before;
    for i in 0..SIZE / chunk.len() {
        stream.write_all(&chunk).await.unwrap();
        if i % 20 == 0 {
            peak = peak.max(rss_kb(gateway.pid()));
        }
    }
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(
        answer.contains(&format!("\"body_bytes\":{SIZE}")),
        "{answer}"
    );
    let grown_mb = (peak.saturating_sub(before)) / 1024;
    assert!(
        grown_mb < 64,
        "RSS grew {grown_mb} MB for a {} MB body",
        SIZE >> 20
    );
}
