//! The deferred worker against a ledger that fails a set number of times, in paused time
//! (the backoff sleeps are skipped, not waited for).

use super::*;
use crate::ledger::flaky::Flaky;
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
    dir: std::path::PathBuf,
}

impl Drop for Setup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// How long the test ledger keeps a charge's record, unless a test says otherwise.
const LIFE: Duration = Duration::from_secs(3600);

async fn setup(balance: i64, failures: u32) -> Setup {
    let dir = std::env::temp_dir().join(format!("tollgate-deferred-{}", uuid::Uuid::now_v7()));
    setup_in(dir, balance, failures, LIFE, Vec::new()).await
}

async fn setup_in(
    dir: std::path::PathBuf,
    balance: i64,
    failures: u32,
    record_life: Duration,
    restored: Vec<Restored>,
) -> Setup {
    let ledger = Arc::new(Flaky::new(failures));
    ledger.seed("acme", balance).await.unwrap();
    let store = Arc::new(SqliteStore::open(&dir).unwrap());
    let usage = Arc::new(Recorded::default());
    let hydrator = Arc::new(Hydrator::new(
        ledger.clone(),
        store,
        usage.clone(),
        Duration::from_millis(250),
    ));
    let (worklog, _) = WorkLog::open(&dir).unwrap();
    let parts = WorkerParts {
        ledger: ledger.clone(),
        hydrator,
        usage: usage.clone(),
        alerts: Arc::new(crate::alerts::NoAlerts),
        worklog: Arc::new(worklog),
        record_life,
    };
    let (queue, worker) = DeferredWorker::new(parts, restored);
    Setup {
        ledger,
        usage,
        worker,
        queue,
        dir,
    }
}

fn charge(_: &Setup) -> DeferredCharge {
    DeferredCharge {
        service: "notes".into(),
        tenant_id: "acme".into(),
        cost: 5,
        charge_id: uuid::Uuid::now_v7().to_string(),
        threshold: 0,
        charged_at_ms: crate::store::now_ms(),
        refund_since_ms: None,
        taken_balance: None,
    }
}

/// The call's usage event as the gateway hands it over: the cost, and whether it failed.
fn event(charge: &DeferredCharge, refunded: bool) -> UsageEvent {
    UsageEvent {
        id: uuid::Uuid::now_v7().to_string(),
        tenant_id: charge.tenant_id.clone(),
        user_id: "u1".into(),
        key_id: None,
        service: "notes".into(),
        endpoint: "/*".into(),
        method: "GET".into(),
        credits_used: charge.cost,
        plan_id: None,
        reserved: None,
        shortfall: 0,
        shadow_credits: None,
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

/// Shutdown with the ledger down: the calls are not logged at 0 and forgotten (before: the
/// tenant was served free); they stay journaled, and the next start charges each once.
#[tokio::test(start_paused = true)]
async fn shutdown_with_the_ledger_down_leaves_the_calls_to_the_next_start() {
    let s = setup(1000, u32::MAX).await;
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
        // One last try for each charge being asked for; the rest are left unasked.
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
    assert!(s.recorded().is_empty(), "nothing settled, nothing logged");

    // The next start: the ledger answers, every call is charged once and logged.
    let (_, mut open) = WorkLog::open(&s.dir).unwrap();
    let restored = DeferredWorker::restore(&mut open);
    assert_eq!(restored.len(), calls);
    let next = setup_in(s.dir.clone(), 1000, 0, LIFE, restored).await;
    next.drive(async {}, async || next.recorded().len() == calls)
        .await;
    assert_eq!(next.balance().await, 1000 - 5 * calls as i64);
    assert!(next.recorded().iter().all(|e| e.credits_used == 5));
    let (_, open) = WorkLog::open(&s.dir).unwrap();
    assert!(open.is_empty(), "settled, so no longer journaled: {open:?}");
}

/// The ledger stays down past the charge record's life: the worker stops asking a margin
/// before it expires (a later try could take the cost twice), logs the call at 0 and
/// records it as unresolved for reconciliation. Before, it asked forever.
#[tokio::test(start_paused = true)]
async fn a_charge_not_taken_before_its_record_expires_is_given_up() {
    let dir = std::env::temp_dir().join(format!("tollgate-deferred-{}", uuid::Uuid::now_v7()));
    let s = setup_in(dir, 100, u32::MAX, Duration::from_secs(20), Vec::new()).await;
    let c = charge(&s);
    let e = event(&c, false);
    s.queue.defer(c).unwrap().finish(e);
    let started = tokio::time::Instant::now();
    s.drive(async {}, async || s.recorded().len() == 1).await;
    assert!(started.elapsed() < Duration::from_secs(20));
    assert_eq!(s.recorded()[0].credits_used, 0);
    let unresolved = crate::ledger::worklog::unresolved(&s.dir).unwrap();
    assert_eq!(unresolved.len(), 1);
    assert_eq!(
        (unresolved[0].kind.as_str(), unresolved[0].credits),
        ("deferred", 5)
    );
}

/// A restart while a failed call's refund was still being asked for, past the deadline
/// of the charge itself: the restored call knows its charge was taken (journaled apart),
/// so it gives it back under the refund's own deadline. Before, it asked for the charge
/// again, found its deadline gone, and reported a refund that was still possible as lost.
#[tokio::test(start_paused = true)]
async fn a_restart_mid_refund_gives_back_and_never_charges_again() {
    let dir = std::env::temp_dir().join(format!("tollgate-deferred-{}", uuid::Uuid::now_v7()));
    let life = Duration::from_secs(20);
    let s = setup_in(dir.clone(), 100, 0, life, Vec::new()).await;
    let mut c = charge(&s);
    c.charged_at_ms -= 15_000; // charged 15 s ago: its own deadline passes in 3 s
    let e = event(&c, true);
    let r = s.queue.defer(c).unwrap();
    let (tx, stop) = watch::channel(false);
    let work = async {
        s.until(async || s.balance().await == 95).await;
        s.ledger.fail_next(u32::MAX);
        r.finish(e);
        tokio::time::sleep(Duration::from_secs(1)).await;
        tx.send(true).unwrap();
    };
    tokio::join!(s.worker.start(stop), work);
    assert!(
        s.recorded().is_empty(),
        "not settled: left to the next start"
    );

    let (_, mut open) = WorkLog::open(&dir).unwrap();
    let restored = DeferredWorker::restore(&mut open);
    assert_eq!(restored[0].charge.taken_balance, Some(95));
    let mut restored = restored;
    restored[0].charge.charged_at_ms -= 10_000; // the charge's deadline is long gone
    let next = setup_in(dir.clone(), 95, 0, life, restored).await;
    next.drive(async {}, async || next.recorded().len() == 1)
        .await;
    assert_eq!(
        next.balance().await,
        100,
        "given back once, not charged again"
    );
    assert!(next.recorded()[0].refunded);
    assert!(crate::ledger::worklog::unresolved(&dir).unwrap().is_empty());
}
