//! Leased credits (docs/DESIGN.md §Leased credits): this replica takes a slice of a busy
//! tenant's Redis balance in one atomic step and charges calls against it in memory, with
//! no round trip; every [`SYNC_TICK`] it reports what it spent, and grows, keeps or returns
//! the slice (`lease.lua`). The guarantees, and how each is kept:
//!
//! - **Never over-spent.** A slice is taken from the balance before a call is charged to
//!   it. A lease records a margin: the most the holder may spend beyond its last report.
//!   The holder never spends past it, and when a lease expires (its holder died or was cut
//!   off) Redis takes back only what lies beyond the margin, keeping the margin
//!   (`_forfeited`, reported by `tollgate reconcile`).
//! - **Exact near zero.** A grant leaves three quarters of the balance to everyone else, so
//!   near zero nothing is leased and calls are charged one by one; a call that Redis cannot
//!   pay while slices are out recalls them all and is refused only once none is out.
//! - **Nothing stranded for long.** A slice goes back when idle, at shutdown, on a recall (a
//!   refusal near zero, any operator's change) and when its lease expires (Redis's clock).
//!
//! Charges that must meet the shared ledger go there, never to a slice: a charge with an
//! `Idempotency-Key` (its claim is shared) and a retry by id (a deferred charge, which may
//! have landed). Refunds and voids go to Redis by charge id ([`Ledger::void`] with the
//! cost), which gives the credits back to the balance exactly once.

use super::{
    AdjustOutcome, Adjustment, Charge, ChargeOutcome, KeyRecord, Leases, Ledger, LedgerError,
    PendingElsewhere, RedisLedger, Settle, SettleOutcome, Void, VoidOutcome, Warnings,
};
use crate::metrics::LEASED_CHARGES;
use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// How often a replica reports to Redis what it spent of each slice (and renews it).
pub const SYNC_TICK: Duration = Duration::from_millis(100);

/// The window over which a tenant's rate is measured.
const WINDOW: Duration = Duration::from_millis(250);

/// Fewer calls than this in a window: the tenant is too slow for a slice to pay off.
const MIN_CALLS: u32 = 4;

/// The slice aims at this much of the tenant's spending here.
const SLICE_SPAN: Duration = Duration::from_secs(1);

/// The margin aims at this much: several ticks, so a report in flight never holds a call up.
const MARGIN_SPAN: Duration = Duration::from_millis(500);

/// A report to Redis about one slice (`lease.lua`).
#[derive(Debug, Clone, Copy)]
pub struct LeaseRequest<'a> {
    pub holder: &'a str,
    /// Credits spent of the slice since the last report.
    pub spent: i64,
    /// Credits wanted on top of what the slice holds (0: none).
    pub want: i64,
    /// The least grant worth having (a smaller one is refused).
    pub least: i64,
    /// The most this replica will spend beyond this report.
    pub margin: i64,
    /// How long the lease lives without another report.
    pub ttl: Duration,
    /// Return the slice instead.
    pub give_back: bool,
    /// The report's number: a report whose answer was lost is sent again with the same
    /// number and spent, and Redis takes that spent once.
    pub report: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseReply {
    /// The lease stands: the slice holds `held` unspent credits; `recall`: return it.
    Held {
        balance: i64,
        held: i64,
        recall: bool,
    },
    /// The slice went back to the balance.
    Returned { balance: i64 },
    /// No lease (none granted, or it expired): drop the slice.
    NoLease { balance: i64 },
    /// Redis lost the balance (a flush): drop the slice; the balance is hydrated again.
    NoBalance,
}

/// What this replica knows of one tenant's slice.
#[derive(Debug)]
struct Slice {
    /// Credits of the slice Redis counts as unspent (its last answer).
    held: i64,
    /// Spent here, not yet in a report.
    unreported: i64,
    /// Spent here, in the report in flight, or in one whose answer was lost (sent again,
    /// with the same number, before anything else is reported).
    reporting: i64,
    /// The number of the next report.
    report: u64,
    /// The most that may be spent beyond the last confirmed report.
    margin: i64,
    /// Redis's balance outside every slice, as last seen.
    balance: i64,
    leased: bool,
    /// A report is in flight.
    busy: bool,
    /// A return is in flight: nothing may be taken from the slice meanwhile.
    returning: bool,
    recall: bool,
    /// This replica has asked whether to announce the low warning since its view last
    /// went below the threshold (its view can jump below it between charges, when a
    /// report shows what other replicas took).
    low_asked: bool,
    last_used: Instant,
    window_start: Instant,
    window_spent: i64,
    window_calls: u32,
    /// Credits per second and calls in the last whole window.
    rate: i64,
    calls: u32,
    largest_cost: i64,
}

impl Slice {
    fn new(now: Instant) -> Slice {
        Slice {
            held: 0,
            unreported: 0,
            reporting: 0,
            report: 1,
            margin: 0,
            balance: 0,
            leased: false,
            busy: false,
            returning: false,
            recall: false,
            low_asked: false,
            last_used: now,
            window_start: now,
            window_spent: 0,
            window_calls: 0,
            rate: 0,
            calls: 0,
            largest_cost: 1,
        }
    }

    fn remaining(&self) -> i64 {
        self.held - self.reporting - self.unreported
    }

    /// This replica's view of the balance: Redis's, plus what is left of its own slice.
    fn view(&self) -> i64 {
        self.balance + self.remaining().max(0)
    }

    fn can_take(&self, cost: i64) -> bool {
        self.leased
            && !self.returning
            && !self.recall
            && self.remaining() >= cost
            && self.reporting + self.unreported + cost <= self.margin
    }

    fn note(&mut self, cost: i64, now: Instant) {
        self.roll(now);
        self.last_used = now;
        self.window_spent += cost;
        self.window_calls += 1;
        self.largest_cost = self.largest_cost.max(cost);
    }

    fn roll(&mut self, now: Instant) {
        let elapsed = now.duration_since(self.window_start);
        if elapsed >= WINDOW {
            let per_second = self.window_spent as f64 / elapsed.as_secs_f64();
            // A window long past says nothing of now.
            let stale = elapsed >= 2 * WINDOW;
            self.rate = if stale { 0 } else { per_second as i64 };
            self.calls = if stale { 0 } else { self.window_calls };
            self.window_start = now;
            self.window_spent = 0;
            self.window_calls = 0;
        }
    }

    /// The slice this tenant's rate here deserves (0: too slow for one).
    fn target(&self, max_slice: i64) -> i64 {
        if self.calls < MIN_CALLS {
            return 0;
        }
        let span = (self.rate as f64 * SLICE_SPAN.as_secs_f64()) as i64;
        span.max(8 * self.largest_cost).min(max_slice)
    }

    fn target_margin(&self, target: i64) -> i64 {
        let span = (self.rate as f64 * MARGIN_SPAN.as_secs_f64()) as i64;
        span.max(2 * self.largest_cost)
            .min(target.max(self.largest_cost))
    }
}

/// The settings of `ledger.lease` this code needs.
#[derive(Debug, Clone, Copy)]
pub struct LeaseSettings {
    pub max_slice: i64,
    pub ttl: Duration,
    pub idle: Duration,
}

/// The Redis ledger with leased slices in front of it; everything but charges and
/// operators' changes goes straight through.
pub struct LeasedLedger {
    redis: Arc<RedisLedger>,
    /// This process's name in every lease it holds.
    holder: String,
    settings: LeaseSettings,
    slices: Mutex<HashMap<String, Slice>>,
}

impl LeasedLedger {
    pub fn new(redis: Arc<RedisLedger>, settings: LeaseSettings) -> LeasedLedger {
        LeasedLedger {
            redis,
            holder: format!("gw-{}", uuid::Uuid::now_v7().simple()),
            settings,
            slices: Mutex::new(HashMap::new()),
        }
    }

    fn slices(&self) -> MutexGuard<'_, HashMap<String, Slice>> {
        self.slices.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes a charge from the tenant's slice if it can: the view before and after, and
    /// whether to ask if the low warning is this replica's to announce.
    fn take(&self, charge: &Charge<'_>) -> Option<(i64, i64, bool)> {
        let now = Instant::now();
        let mut slices = self.slices();
        // The tenant's id is copied only the first time it is seen, not per charge.
        if !slices.contains_key(charge.tenant_id) {
            slices.insert(charge.tenant_id.to_owned(), Slice::new(now));
        }
        let slice = slices.get_mut(charge.tenant_id)?;
        slice.note(charge.cost, now);
        if !slice.can_take(charge.cost) {
            return None;
        }
        let before = slice.view();
        slice.unreported += charge.cost;
        let after = slice.view();
        Some((before, after, slice.ask_low(after, charge.threshold)))
    }

    /// This replica's own unspent slice of the tenant's balance.
    fn own(&self, tenant_id: &str) -> i64 {
        self.slices()
            .get(tenant_id)
            .map_or(0, |s| s.remaining().max(0))
    }

    /// Records the Redis balance an answer carried and returns this replica's view: that
    /// balance plus what is left of its own slice (read now: a recall may have returned it
    /// meanwhile). With a charge's threshold, also whether that charge asks for the low
    /// warning (see [`Slice::ask_low`]).
    fn saw(&self, tenant_id: &str, balance: i64, threshold: Option<i64>) -> (i64, bool) {
        let mut slices = self.slices();
        let Some(slice) = slices.get_mut(tenant_id) else {
            return (balance, false);
        };
        slice.balance = balance;
        let view = slice.view();
        (view, threshold.is_some_and(|t| slice.ask_low(view, t)))
    }

    /// The warnings a charge from the slice crossed, announced once across every replica.
    async fn crossings(&self, tenant_id: &str, before: i64, after: i64, ask_low: bool) -> Warnings {
        let mut warnings = Warnings::NONE;
        if ask_low {
            warnings.low = self.first_to_announce(tenant_id, "low").await;
        }
        if after == 0 && before > 0 {
            warnings.exhausted = self.first_to_announce(tenant_id, "exhausted").await;
        }
        warnings
    }

    async fn first_to_announce(&self, tenant_id: &str, warning: &str) -> bool {
        match self.redis.announce(tenant_id, warning).await {
            Ok(first) => first,
            Err(e) => {
                tracing::warn!(%tenant_id, warning, error = %e, "cannot announce a warning");
                false
            }
        }
    }

    /// One report per slice that needs one, all in flight at once; `give_back_all` at
    /// shutdown. Returns how many slices are still held.
    pub async fn sync(&self, give_back_all: bool) -> usize {
        self.sync_through(&self.redis, give_back_all).await
    }

    /// [`Self::sync`] through `redis`: at shutdown, a fresh connection (the ledger's own
    /// died with the server's runtimes).
    pub async fn sync_through(&self, redis: &RedisLedger, give_back_all: bool) -> usize {
        let now = Instant::now();
        let mut reports = Vec::new();
        {
            let mut slices = self.slices();
            slices.retain(|_, s| {
                s.leased || s.busy || now.duration_since(s.last_used) < self.settings.idle
            });
            for (tenant, s) in slices.iter_mut() {
                s.roll(now);
                if s.busy {
                    continue;
                }
                let idle = now.duration_since(s.last_used) >= self.settings.idle;
                let give_back = give_back_all || s.recall || idle;
                let target = if give_back {
                    0
                } else {
                    s.target(self.settings.max_slice)
                };
                let want = if target > 0 && s.remaining() < target / 2 {
                    target - s.remaining()
                } else {
                    0
                };
                if !s.leased && want == 0 {
                    continue;
                }
                // A report whose answer was lost goes again as it was (Redis applies its
                // spent once, by its number); otherwise what was spent since is reported.
                if s.reporting == 0 {
                    s.reporting = s.unreported;
                    s.unreported = 0;
                }
                // Redis keeps the margin if the lease expires: it must cover what may be
                // spent while this report is in flight, under the margin it replaces.
                let margin = s.target_margin(target).max(s.margin - s.reporting);
                s.busy = true;
                s.returning = give_back;
                let request = LeaseRequest {
                    holder: &self.holder,
                    spent: s.reporting,
                    want,
                    least: 2 * s.largest_cost,
                    margin,
                    ttl: self.settings.ttl,
                    give_back,
                    report: s.report,
                };
                reports.push((tenant.clone(), request));
            }
        }
        let replies = futures_util::future::join_all(
            reports
                .iter()
                .map(|(tenant, request)| redis.lease(tenant, request)),
        )
        .await;
        let mut slices = self.slices();
        for ((tenant, request), reply) in reports.iter().zip(replies) {
            let Some(s) = slices.get_mut(tenant) else {
                continue;
            };
            s.busy = false;
            // A return whose answer was lost may have landed: the slice stays unusable
            // until Redis answers one.
            if reply.is_ok() {
                s.report += 1;
                s.returning = false;
            }
            match reply {
                Ok(LeaseReply::Held {
                    balance,
                    held,
                    recall,
                }) => {
                    s.held = held;
                    s.reporting = 0;
                    s.margin = request.margin;
                    s.balance = balance;
                    s.leased = true;
                    s.recall = recall;
                }
                Ok(LeaseReply::Returned { balance } | LeaseReply::NoLease { balance }) => {
                    s.balance = balance;
                    s.drop_slice();
                }
                Ok(LeaseReply::NoBalance) => s.drop_slice(),
                // It may have been applied: sent again as it was, at the next tick.
                Err(e) => {
                    tracing::debug!(tenant_id = %tenant, error = %e, "lease report failed");
                }
            }
        }
        slices.values().filter(|s| s.leased).count()
    }
}

impl Slice {
    /// Whether a charge that left the view at `view` asks if the low warning is this
    /// replica's to announce: the first since the view went at or below the threshold,
    /// whichever path the charge took (a report can move the view below it between two
    /// charges, so a crossing is not only a charge's).
    fn ask_low(&mut self, view: i64, threshold: i64) -> bool {
        let ask = view <= threshold && !self.low_asked;
        self.low_asked = view <= threshold;
        ask
    }

    /// The lease is over: whatever was spent unreported is covered by the margin Redis kept
    /// (an expired lease) or was reported with the return.
    fn drop_slice(&mut self) {
        self.held = 0;
        self.reporting = 0;
        self.unreported = 0;
        self.margin = 0;
        self.leased = false;
        self.recall = false;
    }
}

#[async_trait]
impl Ledger for LeasedLedger {
    async fn charge(&self, charge: &Charge<'_>) -> Result<ChargeOutcome, LedgerError> {
        // A key's claim, an API key's budget and the limits live in Redis: such charges go
        // there (docs/DESIGN.md §Limits).
        let shared = charge.idempotency.is_some() || charge.budget.is_some();
        if charge.fresh && !shared && charge.limits.is_empty() {
            if let Some((before, after, ask_low)) = self.take(charge) {
                LEASED_CHARGES.inc();
                let warnings = if ask_low || (after == 0 && before > 0) {
                    self.crossings(charge.tenant_id, before, after, ask_low)
                        .await
                } else {
                    Warnings::NONE
                };
                return Ok(ChargeOutcome::Charged {
                    balance: after,
                    warnings,
                    rate: None,
                });
            }
        }
        // Per call: warnings are decided on this replica's view (Redis's balance plus its
        // own slice), as a charge from the slice decides them (charge.lua's ARGV[7]).
        let outcome = self
            .redis
            .charge_holding(charge, self.own(charge.tenant_id))
            .await?;
        let tenant = charge.tenant_id;
        Ok(match outcome {
            ChargeOutcome::Charged {
                balance,
                mut warnings,
                rate,
            } => {
                let (view, ask_low) = self.saw(tenant, balance, Some(charge.threshold));
                if ask_low && !warnings.low {
                    warnings.low = self.first_to_announce(tenant, "low").await;
                }
                ChargeOutcome::Charged {
                    balance: view,
                    warnings,
                    rate,
                }
            }
            ChargeOutcome::Insufficient { balance, warnings } => ChargeOutcome::Insufficient {
                balance: self.saw(tenant, balance, None).0,
                warnings,
            },
            ChargeOutcome::KeyTaken { balance } => ChargeOutcome::KeyTaken {
                balance: self.saw(tenant, balance, None).0,
            },
            ChargeOutcome::AlreadyCharged { balance } => ChargeOutcome::AlreadyCharged {
                balance: self.saw(tenant, balance, None).0,
            },
            other => other,
        })
    }

    async fn void(&self, void: &Void<'_>) -> Result<VoidOutcome, LedgerError> {
        let outcome = self.redis.void(void).await?;
        Ok(match outcome {
            VoidOutcome::Refunded { balance } => VoidOutcome::Refunded {
                balance: self.saw(void.tenant_id, balance, None).0,
            },
            other => other,
        })
    }

    /// Settles in Redis by charge id, as a void does: a charge taken from the slice left
    /// no record there, so the reserve is passed along; the part of the reserve not used
    /// goes back to the shared balance, extra is taken from it.
    async fn settle(&self, settle: &Settle<'_>) -> Result<SettleOutcome, LedgerError> {
        let tenant = settle.tenant_id;
        let outcome = self.redis.settle_holding(settle, self.own(tenant)).await?;
        Ok(match outcome {
            SettleOutcome::Settled {
                charged,
                balance,
                warnings,
            } => SettleOutcome::Settled {
                charged,
                balance: self.saw(tenant, balance, None).0,
                warnings,
            },
            other => other,
        })
    }

    async fn key_record(
        &self,
        tenant_id: &str,
        key: &str,
    ) -> Result<Option<KeyRecord>, LedgerError> {
        self.redis.key_record(tenant_id, key).await
    }

    async fn release(&self, release: &super::Release<'_>) -> Result<(), LedgerError> {
        self.redis.release(release).await
    }

    async fn keep_response(
        &self,
        tenant_id: &str,
        key: &str,
        charge_id: &str,
        response: &[u8],
    ) -> Result<bool, LedgerError> {
        self.redis
            .keep_response(tenant_id, key, charge_id, response)
            .await
    }

    async fn seed(&self, tenant_id: &str, balance: i64) -> Result<(), LedgerError> {
        self.redis.seed(tenant_id, balance).await
    }

    async fn balance(&self, tenant_id: &str) -> Result<Option<i64>, LedgerError> {
        self.redis.balance(tenant_id).await
    }

    async fn leases(&self, tenant_id: &str) -> Result<Leases, LedgerError> {
        self.redis.leases(tenant_id).await
    }

    async fn adjust(&self, adjustment: &Adjustment<'_>) -> Result<AdjustOutcome, LedgerError> {
        self.redis.adjust(adjustment).await
    }

    async fn publish_pending(
        &self,
        pipeline: &str,
        changes: &[(String, i64)],
    ) -> Result<bool, LedgerError> {
        self.redis.publish_pending(pipeline, changes).await
    }

    async fn pending_elsewhere(
        &self,
        tenant: &str,
        own: Option<&str>,
    ) -> Result<Option<PendingElsewhere>, LedgerError> {
        self.redis.pending_elsewhere(tenant, own).await
    }

    async fn ping(&self) -> Result<(), LedgerError> {
        self.redis.ping().await
    }

    async fn close(&self) {
        self.redis.close().await
    }
}

/// Reports every [`SYNC_TICK`]; at shutdown, returns every slice.
pub struct LeaseKeeper(pub Arc<LeasedLedger>);

#[async_trait]
impl BackgroundService for LeaseKeeper {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        loop {
            tokio::select! {
                _ = shutdown.changed() => break,
                _ = tokio::time::sleep(SYNC_TICK) => {}
            }
            self.0.sync(false).await;
        }
        // Calls still in flight may take from a slice until the service stops: a return
        // makes the slice unusable first, and the server returns what is left after.
        self.0.sync(true).await;
    }
}
