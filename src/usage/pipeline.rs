//! The usage pipeline (docs/DESIGN.md §Usage pipeline and journal): the request path hands
//! each event to a bounded queue and
//! returns; one background flusher writes batches to the store, and when the store cannot
//! take them, to the disk journal, replayed in order once the store answers.
//!
//! Exactly-once durable balances rest on order. The flusher alone numbers the batches of
//! the main stream, and delivers them strictly in that order: once anything waits in the
//! journal, new batches queue behind it there. An event that finds the queue full goes to
//! the journal from the request path as its own one-event batch, numbered in a second
//! stream (`<pipeline>-o`) under the journal's lock, so that stream is ordered too. The
//! store applies each stream's batches under its own sequence guard.
//!
//! Sequence numbers come from one [`SeqSource`] for both streams: the microsecond clock,
//! kept strictly increasing and above a high-water mark persisted in the data dir, so a
//! restarted gateway with the same pipeline id continues above its old numbers even when
//! its clock was set back.

use super::journal::{Entry, Journal};
use super::seq::{clock_us, SeqSource};
use super::UsageSink;
use crate::metrics::{
    USAGE_DROPPED, USAGE_FLUSHED, USAGE_JOURNALED, USAGE_JOURNAL_BYTES, USAGE_QUEUE_DEPTH,
};
use crate::store::{Store, UsageBatch};
use crate::vocab::UsageEvent;
use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::Instant;

/// Store attempts for a batch before it goes to the journal.
const STORE_ATTEMPTS: u32 = 3;
/// First retry delay; doubles per attempt (100 ms, 200 ms).
const RETRY_DELAY: Duration = Duration::from_millis(100);
/// How often an idle flusher looks at the journal, and the longest wait between replay
/// attempts while the store stays down.
const REPLAY_TICK: Duration = Duration::from_millis(500);
const REPLAY_BACKOFF_MAX: Duration = Duration::from_secs(5);
/// Journal entries read per replay step.
const REPLAY_CHUNK: usize = 64;

#[derive(Debug, Clone, Copy)]
pub struct UsageSettings {
    pub batch_size: usize,
    pub flush_interval: Duration,
    pub queue_capacity: usize,
    pub journal_max_bytes: u64,
}

/// State shared by the request path and the flusher.
struct Shared {
    pipeline_id: String,
    journal: Mutex<Spool>,
    /// Numbers for both streams' batches.
    seqs: Mutex<SeqSource>,
    /// Credits per tenant charged by the ledger but not yet applied to the store: what
    /// hydration subtracts from the durable balance.
    pending: Mutex<HashMap<String, i64>>,
    /// See [`UsageSink::settle_lock`].
    settling: Arc<tokio::sync::Mutex<()>>,
}

struct Spool {
    journal: Journal,
}

/// The request path's side: a [`UsageSink`] that never blocks.
pub struct UsagePipeline {
    tx: mpsc::Sender<UsageEvent>,
    shared: Arc<Shared>,
}

/// The background side: batches, writes, journals, replays.
pub struct Flusher {
    shared: Arc<Shared>,
    store: Arc<dyn Store>,
    settings: UsageSettings,
    rx: tokio::sync::Mutex<mpsc::Receiver<UsageEvent>>,
    /// How far the journal has been replayed into the store.
    replayed: AtomicU64,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section here is a few assignments or one file append: a panic in
    // one leaves nothing half-done that refusing all later events would repair.
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

fn charged(event: &UsageEvent) -> i64 {
    if event.refunded {
        0
    } else {
        event.credits_used
    }
}

impl Shared {
    fn next_seq(&self) -> u64 {
        lock(&self.seqs).next(clock_us())
    }

    fn settle(&self, events: &[UsageEvent]) {
        let mut pending = lock(&self.pending);
        for event in events {
            let credits = charged(event);
            if credits == 0 {
                continue;
            }
            if let Some(total) = pending.get_mut(&event.tenant_id) {
                *total -= credits;
                if *total == 0 {
                    pending.remove(&event.tenant_id);
                }
            }
        }
    }

    fn overflow_stream(&self) -> String {
        format!("{}-o", self.pipeline_id)
    }

    /// Appends to the journal, or drops loudly when even that fails.
    fn journal(&self, spool: &mut Spool, entry: &Entry) {
        match spool.journal.append(entry) {
            Ok(()) => {
                USAGE_JOURNALED.inc_by(entry.events.len() as u64);
                USAGE_JOURNAL_BYTES.set(spool.journal.len() as i64);
            }
            Err(e) => {
                USAGE_DROPPED.inc_by(entry.events.len() as u64);
                tracing::error!(error = %e, events = entry.events.len(), "usage events LOST: the journal cannot take them");
                self.settle(&entry.events);
            }
        }
    }
}

impl UsagePipeline {
    /// Opens the journal and the pipeline id under `data_dir`.
    pub fn open(
        data_dir: &Path,
        store: Arc<dyn Store>,
        settings: UsageSettings,
    ) -> std::io::Result<(UsagePipeline, Flusher)> {
        let pipeline_id = pipeline_id(data_dir)?;
        let journal = Journal::open(&data_dir.join("usage.journal"), settings.journal_max_bytes)?;
        // What the journal holds from a previous run is still owed to the store.
        let (pending, journaled_seq) = scan(&journal)?;
        let seqs = SeqSource::open(data_dir, journaled_seq)?;
        USAGE_JOURNAL_BYTES.set(journal.len() as i64);
        let shared = Arc::new(Shared {
            pipeline_id,
            journal: Mutex::new(Spool { journal }),
            seqs: Mutex::new(seqs),
            pending: Mutex::new(pending),
            settling: Arc::default(),
        });
        let (tx, rx) = mpsc::channel(settings.queue_capacity.max(1));
        let flusher = Flusher {
            shared: Arc::clone(&shared),
            store,
            settings,
            rx: tokio::sync::Mutex::new(rx),
            replayed: AtomicU64::new(0),
        };
        Ok((UsagePipeline { tx, shared }, flusher))
    }
}

/// Credits per tenant and the highest sequence number in a journal.
fn scan(journal: &Journal) -> std::io::Result<(HashMap<String, i64>, u64)> {
    let mut pending = HashMap::new();
    let mut max_seq = 0;
    let mut offset = 0;
    loop {
        let entries = journal.read_from(offset, REPLAY_CHUNK)?;
        let Some((_, end)) = entries.last() else {
            break;
        };
        offset = *end;
        for (entry, _) in &entries {
            max_seq = max_seq.max(entry.seq);
            for event in &entry.events {
                *pending.entry(event.tenant_id.clone()).or_insert(0) += charged(event);
            }
        }
    }
    Ok((pending, max_seq))
}

/// Credits per tenant waiting in the usage journal of `data_dir` (read only).
pub fn journaled_credits(data_dir: &Path) -> std::io::Result<HashMap<String, i64>> {
    let path = data_dir.join("usage.journal");
    if !path.exists() {
        return Ok(HashMap::new());
    }
    Ok(scan(&Journal::read_only(&path)?)?.0)
}

/// The pipeline id of this data dir, made once and kept, so sequence guards in the store
/// stay one per gateway data dir rather than one per restart.
fn pipeline_id(data_dir: &Path) -> std::io::Result<String> {
    std::fs::create_dir_all(data_dir)?;
    let path = data_dir.join("usage.pipeline-id");
    match std::fs::read_to_string(&path) {
        Ok(id) if !id.trim().is_empty() => Ok(id.trim().to_owned()),
        _ => {
            let id = uuid::Uuid::now_v7().simple().to_string();
            std::fs::write(&path, &id)?;
            Ok(id)
        }
    }
}

impl Shared {
    fn add_pending(&self, tenant_id: &str, credits: i64) {
        let mut pending = lock(&self.pending);
        match pending.get_mut(tenant_id) {
            Some(total) => *total += credits,
            None => {
                pending.insert(tenant_id.to_owned(), credits);
            }
        }
    }
}

impl UsageSink for UsagePipeline {
    fn charged(&self, tenant_id: &str, credits: i64) {
        if credits != 0 {
            self.shared.add_pending(tenant_id, credits);
        }
    }

    fn refunded(&self, tenant_id: &str, credits: i64) {
        if credits != 0 {
            self.shared.add_pending(tenant_id, -credits);
        }
    }

    fn record(&self, event: UsageEvent) {
        let event = match self.tx.try_send(event) {
            Ok(()) => {
                USAGE_QUEUE_DEPTH.inc();
                return;
            }
            Err(mpsc::error::TrySendError::Full(e) | mpsc::error::TrySendError::Closed(e)) => e,
        };
        // Queue full (or shutting down): the event goes to the journal, in its own stream.
        let mut spool = lock(&self.shared.journal);
        let entry = Entry {
            stream: self.shared.overflow_stream(),
            seq: self.shared.next_seq(),
            events: vec![event],
        };
        self.shared.journal(&mut spool, &entry);
    }

    fn pending_credits(&self, tenant_id: &str) -> i64 {
        lock(&self.shared.pending)
            .get(tenant_id)
            .copied()
            .unwrap_or(0)
    }

    fn settle_lock(&self) -> Option<Arc<tokio::sync::Mutex<()>>> {
        Some(Arc::clone(&self.shared.settling))
    }

    fn pipeline_id(&self) -> Option<&str> {
        Some(&self.shared.pipeline_id)
    }

    fn pending_snapshot(&self) -> HashMap<String, i64> {
        lock(&self.shared.pending).clone()
    }
}

impl Flusher {
    async fn store_batch(&self, stream: &str, seq: u64, events: &[UsageEvent]) -> bool {
        let batch = UsageBatch {
            pipeline_id: stream,
            seq,
            events,
        };
        let _settling = self.shared.settling.lock().await;
        let stored = match self.store.insert_usage(&batch).await {
            Ok(()) => {
                self.shared.settle(events);
                USAGE_FLUSHED.inc_by(events.len() as u64);
                true
            }
            Err(e) => {
                tracing::warn!(error = %e, events = events.len(), "usage batch not stored");
                false
            }
        };
        stored
    }

    /// Writes one main-stream batch: to the store when nothing waits in the journal (with
    /// retries), else (or on failure) to the journal behind what waits there.
    async fn deliver(&self, events: Vec<UsageEvent>, attempts: u32) {
        let seq = self.shared.next_seq();
        let stream = self.shared.pipeline_id.clone();
        if lock(&self.shared.journal).journal.is_empty() {
            let mut delay = RETRY_DELAY;
            for attempt in 1..=attempts {
                if self.store_batch(&stream, seq, &events).await {
                    return;
                }
                if attempt < attempts {
                    tokio::time::sleep(delay).await;
                    delay *= 2;
                }
            }
        }
        let entry = Entry {
            stream,
            seq,
            events,
        };
        let mut spool = lock(&self.shared.journal);
        self.shared.journal(&mut spool, &entry);
    }

    /// Replays the journal into the store, in order; truncates it once all is stored.
    /// Returns false when the store refused (try again later).
    async fn replay(&self) -> bool {
        loop {
            let from = self.replayed.load(Ordering::Relaxed);
            let read = lock(&self.shared.journal)
                .journal
                .read_from(from, REPLAY_CHUNK);
            let entries = match read {
                Ok(entries) => entries,
                Err(e) => {
                    tracing::error!(error = %e, "cannot read the usage journal");
                    return false;
                }
            };
            if entries.is_empty() {
                let mut spool = lock(&self.shared.journal);
                if spool.journal.len() <= from {
                    if let Err(e) = spool.journal.truncate() {
                        tracing::error!(error = %e, "cannot truncate the usage journal");
                        return false;
                    }
                    self.replayed.store(0, Ordering::Relaxed);
                    USAGE_JOURNAL_BYTES.set(0);
                    tracing::info!("usage journal replayed into the store");
                    return true;
                }
                continue;
            }
            for (entry, end) in entries {
                if !self
                    .store_batch(&entry.stream, entry.seq, &entry.events)
                    .await
                {
                    return false;
                }
                self.replayed.store(end, Ordering::Relaxed);
            }
        }
    }

    fn journal_waiting(&self) -> bool {
        !lock(&self.shared.journal).journal.is_empty()
    }
}

impl Flusher {
    /// Runs until `stop` turns true, then drains the queue and returns. It runs on the
    /// process's own runtime, not Pingora's: Pingora drops the tasks of its runtimes at the
    /// end of the grace period, which could cut a batch write in half; the server stops
    /// this loop only once every Pingora service has stopped, so the drain sees every event.
    pub async fn run(&self, mut stop: tokio::sync::watch::Receiver<bool>) {
        let mut rx = self.rx.lock().await;
        let size = self.settings.batch_size.max(1);
        let mut next_replay = Instant::now();
        let mut backoff = REPLAY_TICK;
        // The flusher wakes on a tick and drains what queued since, instead of waking per
        // event: a wake-up per event cost a context switch per request under load. An event
        // waits at most about one flush interval.
        let tick = self.settings.flush_interval.min(REPLAY_TICK);
        loop {
            tokio::select! {
                _ = stop.wait_for(|stop| *stop) => break,
                _ = tokio::time::sleep(tick) => {}
            }
            loop {
                let mut batch = Vec::with_capacity(size);
                while batch.len() < size {
                    match rx.try_recv() {
                        Ok(event) => batch.push(event),
                        Err(_) => break,
                    }
                }
                if batch.is_empty() {
                    break;
                }
                let full = batch.len() == size;
                USAGE_QUEUE_DEPTH.sub(batch.len() as i64);
                self.deliver(batch, STORE_ATTEMPTS).await;
                if !full {
                    break;
                }
            }
            if self.journal_waiting() && Instant::now() >= next_replay {
                if self.replay().await {
                    backoff = REPLAY_TICK;
                } else {
                    next_replay = Instant::now() + backoff;
                    backoff = (backoff * 2).min(REPLAY_BACKOFF_MAX);
                }
            }
        }
        // Shutdown: later events take the journal path; drain what is queued.
        rx.close();
        let mut rest = Vec::new();
        while rx.recv_many(&mut rest, size).await > 0 {
            USAGE_QUEUE_DEPTH.sub(rest.len() as i64);
            // One attempt, bounded by the store's own timeouts; on failure the batch is
            // journaled under the same sequence number (never a second one: a batch the store
            // took late must not apply twice).
            self.deliver(std::mem::take(&mut rest), 1).await;
        }
        tracing::info!("usage pipeline drained");
    }
}
