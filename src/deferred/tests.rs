//! The deferred worker against a ledger that fails a set number of times, in paused time
//! (the backoff sleeps are skipped, not waited for).

use super::*;
use crate::config::{EndpointConfig, ServiceConfig};
use crate::ledger::flaky::Flaky;
use crate::routing::Router;
use crate::store::SqliteStore;
use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::Mutex;
use std::time::Duration;
use tokio::sync::watch;

#[derive(Default)]
struct Recorded(Mutex<Vec<UsageEvent>>);

impl UsageSink for Recorded {
    fn record(&self, event: UsageEvent) {
        self.0.lock().unwrap().push(event);
    }
}

struct Setup {
    ledger: Arc<Flaky>,
    usage: Arc<Recorded>,
    worker: DeferredWorker,
    queue: DeferredQueue,
    service: Arc<Service>,
    dir: std::path::PathBuf,
}

impl Drop for Setup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

async fn setup(balance: i64, failures: u32) -> Setup {
    let ledger = Arc::new(Flaky::new(failures));
    ledger.seed("acme", balance).await.unwrap();
    let dir = std::env::temp_dir().join(format!("tollgate-deferred-{}", uuid::Uuid::now_v7()));
    let store = Arc::new(SqliteStore::open(&dir).unwrap());
    let usage = Arc::new(Recorded::default());
    let hydrator = Arc::new(Hydrator::new(
        ledger.clone(),
        store,
        usage.clone(),
        Duration::from_millis(250),
    ));
    let (queue, worker) = DeferredWorker::new(
        ledger.clone(),
        hydrator,
        usage.clone(),
        Arc::new(crate::alerts::NoAlerts),
    );
    let config = ServiceConfig {
        name: "notes".into(),
        upstream: "http://127.0.0.1:9/".into(),
        timeouts: Default::default(),
        refund_on_5xx: false,
        on_ledger_error: crate::config::OnLedgerError::Allow,
        public: false,
        endpoints: vec![EndpointConfig {
            method: "ANY".into(),
            path: "/*".into(),
            credits: 5,
        }],
    };
    let service = Router::new(&[config])
        .unwrap()
        .route("GET", "/api/proxy/notes/x", None)
        .unwrap()
        .service;
    Setup {
        ledger,
        usage,
        worker,
        queue,
        service,
        dir,
    }
}

fn charge(s: &Setup) -> DeferredCharge {
    DeferredCharge {
        service: Arc::clone(&s.service),
        tenant_id: "acme".into(),
        cost: 5,
        charge_id: uuid::Uuid::now_v7().to_string(),
        threshold: 0,
    }
}

/// The call's usage event as the gateway hands it over: the cost, and whether it failed.
fn event(charge: &DeferredCharge, refunded: bool) -> UsageEvent {
    UsageEvent {
        id: uuid::Uuid::now_v7().to_string(),
        tenant_id: charge.tenant_id.clone(),
        user_id: "u1".into(),
        service: "notes".into(),
        endpoint: "/*".into(),
        method: "GET".into(),
        credits_used: charge.cost,
        balance_after: 0,
        status: if refunded { 502 } else { 200 },
        latency_ms: 1.0,
        request_id: charge.charge_id.clone(),
        idempotency_key: None,
        refunded,
        timestamp_ms: 0,
    }
}

impl Setup {
    fn recorded(&self) -> Vec<UsageEvent> {
        self.usage.0.lock().unwrap().clone()
    }

    async fn balance(&self) -> i64 {
        self.ledger.balance("acme").await.unwrap().unwrap_or(-1)
    }

    /// Runs the worker while `work` runs, then until `done` holds (paused time: the waits
    /// cost nothing), then shuts it down.
    async fn drive(&self, work: impl Future<Output = ()>, done: impl AsyncFn() -> bool) {
        let (tx, stop) = watch::channel(false);
        let driver = async {
            work.await;
            while !done().await {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            tx.send(true).unwrap();
        };
        tokio::join!(self.worker.start(stop), driver);
    }

    async fn until(&self, what: impl AsyncFn() -> bool) {
        while !what().await {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

#[tokio::test(start_paused = true)]
async fn a_charge_waits_for_the_ledger_then_logs_what_it_took() {
    let s = setup(100, 3).await;
    let c = charge(&s);
    let e = event(&c, false);
    let r = s.queue.defer(c).unwrap();
    s.drive(async { r.finish(e) }, async || s.recorded().len() == 1)
        .await;
    assert_eq!(
        s.ledger.calls.load(Ordering::SeqCst),
        4,
        "3 failures, then it"
    );
    assert_eq!(s.balance().await, 95);
    let events = s.recorded();
    assert_eq!((events[0].credits_used, events[0].balance_after), (5, 95));
}

/// The charge is taken as soon as the ledger answers, not when the call ends: only then
/// does a late-landed first try still have the record that stops a second charge.
#[tokio::test(start_paused = true)]
async fn the_charge_is_taken_before_the_call_ends() {
    let s = setup(100, 2).await;
    let c = charge(&s);
    let e = event(&c, false);
    let r = s.queue.defer(c).unwrap();
    let work = async {
        s.until(async || s.balance().await == 95).await;
        assert!(s.recorded().is_empty(), "logged only once the call ends");
        r.finish(e);
    };
    s.drive(work, async || s.recorded().len() == 1).await;
    assert_eq!(s.recorded()[0].credits_used, 5);
}

#[tokio::test(start_paused = true)]
async fn out_of_credits_is_uncollected_and_logged_at_zero() {
    let s = setup(3, 0).await;
    let c = charge(&s);
    let e = event(&c, false);
    let r = s.queue.defer(c).unwrap();
    s.drive(async { r.finish(e) }, async || s.recorded().len() == 1)
        .await;
    assert_eq!(s.balance().await, 3);
    let events = s.recorded();
    assert_eq!((events[0].credits_used, events[0].balance_after), (0, 3));
}

/// The upstream failed the call after its charge was taken: the charge is given back and
/// the log is a refunded one.
#[tokio::test(start_paused = true)]
async fn a_failed_call_gets_back_what_it_was_charged() {
    let s = setup(100, 0).await;
    let c = charge(&s);
    let e = event(&c, true);
    let r = s.queue.defer(c).unwrap();
    let work = async {
        s.until(async || s.balance().await == 95).await;
        r.finish(e);
    };
    s.drive(work, async || s.recorded().len() == 1).await;
    assert_eq!(s.balance().await, 100);
    let events = s.recorded();
    assert!(events[0].refunded);
    assert_eq!(events[0].credits_used, 5, "as every refunded log");
    assert_eq!(events[0].balance_after, 100);
}

/// A call that ends without handing over its usage event (its context dropped) is not
/// charged: there would be no log to bill it by.
#[tokio::test(start_paused = true)]
async fn an_abandoned_call_gets_its_charge_back() {
    let s = setup(100, 0).await;
    let r = s.queue.defer(charge(&s)).unwrap();
    let work = async {
        s.until(async || s.balance().await == 95).await;
        drop(r);
    };
    s.drive(work, async || s.balance().await == 100).await;
    assert!(s.recorded().is_empty());
}

#[tokio::test(start_paused = true)]
async fn shutdown_with_the_ledger_down_gives_up_and_logs_zero() {
    let s = setup(100, u32::MAX).await;
    let (tx, stop) = watch::channel(false);
    // More than are asked of the ledger at once: some still wait in the queue at shutdown.
    let calls = CONCURRENT_CHARGES + 6;
    for _ in 0..calls {
        let c = charge(&s);
        let e = event(&c, false);
        s.queue.defer(c).unwrap().finish(e);
    }
    let queue = s.queue.clone();
    let stopper = async {
        tokio::time::sleep(Duration::from_secs(30)).await;
        let before = s.ledger.calls.load(Ordering::SeqCst);
        tx.send(true).unwrap();
        tokio::time::sleep(Duration::from_secs(1)).await;
        // One last try for each charge being asked for; the rest are given up unasked.
        assert_eq!(
            s.ledger.calls.load(Ordering::SeqCst),
            before + CONCURRENT_CHARGES as u32
        );
        assert!(
            queue.defer(charge(&s)).is_none(),
            "a closed queue fails closed"
        );
    };
    tokio::join!(s.worker.start(stop), stopper);
    assert_eq!(s.balance().await, 100);
    let events = s.recorded();
    assert_eq!(events.len(), calls, "the calls are still logged");
    assert!(
        events.iter().all(|e| e.credits_used == 0),
        "at what the ledger took"
    );
}
