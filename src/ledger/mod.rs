//! Step 3 of the request path: the credit ledger. One atomic step checks the balance,
//! takes the cost and remembers the charge by id, so it can be refunded (upstream failed)
//! or voided (the ledger answered too late) exactly once.
//!
//! Two implementations keep the same semantics: [`RedisLedger`] (one Lua script per
//! operation, shared by any number of gateway replicas) and [`EmbeddedLedger`] (in-process,
//! journaled under the data dir). The behavioural test suite runs against both.

mod coordination;
mod embedded;
mod expiring;
#[cfg(test)]
pub(crate) mod flaky;
mod journal;
pub mod lease;
mod redis;
pub mod retry;
mod voids;
pub mod worklog;

pub use coordination::{Coordination, LoginOp, LoginPolicy};
pub use embedded::EmbeddedLedger;
pub use lease::LeasedLedger;
pub use redis::RedisLedger;
pub use voids::{PendingVoid, VoidQueue, VoidWorker};
pub use worklog::WorkLog;

use crate::idempotency::{KeyClaim, KeyRecord};
use async_trait::async_trait;

/// One charge, identified by `charge_id` (the request id).
#[derive(Debug, Clone, Copy)]
pub struct Charge<'a> {
    pub tenant_id: &'a str,
    pub cost: i64,
    pub charge_id: &'a str,
    /// With a key, the charge also claims it for this request (see [`crate::idempotency`]);
    /// a key already claimed takes nothing ([`ChargeOutcome::KeyTaken`]).
    pub idempotency: Option<KeyClaim<'a>>,
    /// The tenant's low-credit threshold: a charge crossing it announces a warning.
    pub threshold: i64,
    /// A first try under a new id: it may be taken from a leased slice. A retry by id (a
    /// deferred charge) goes to the shared ledger, where an earlier try may have landed.
    pub fresh: bool,
    /// The API key's monthly budget the charge also draws on, if any (docs/DESIGN.md
    /// §API keys): checked and counted in the same atomic step as the balance.
    pub budget: Option<Budget<'a>>,
    /// Rate and concurrency limits the call must pass (docs/DESIGN.md §Limits), checked
    /// in the same atomic step: a limited call is not charged, and only a charged call
    /// counts against them.
    pub limits: &'a [Limiter<'a>],
}

/// One party's limits on a call: the tenant's, or an API key's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limiter<'a> {
    /// Whose: `t` (the tenant) or `k:<key id>`.
    pub scope: &'a str,
    pub rate: Option<crate::vocab::RateLimit>,
    pub max_concurrent: Option<u32>,
}

/// How long a call counts as in flight at most: a gateway that died mid-call frees its
/// calls' places after this.
pub const IN_FLIGHT_LEASE: std::time::Duration = std::time::Duration::from_secs(300);

/// Where a charged call stands against the tightest rate limit it passed, for the
/// `RateLimit` header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateState {
    /// The limiter's index in [`Charge::limits`].
    pub limiter: usize,
    /// Calls that may still come at once.
    pub remaining: u32,
    /// Until the limit is whole again, ms.
    pub reset_ms: u64,
}

/// A call's places in flight, given back when it ends ([`Ledger::release`]).
#[derive(Debug, Clone, Copy)]
pub struct Release<'a> {
    pub tenant_id: &'a str,
    pub charge_id: &'a str,
    /// The scopes ([`Limiter::scope`]) with a concurrency limit.
    pub scopes: &'a [&'a str],
}

/// A spending cap a charge counts against besides the balance: an API key's per month.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget<'a> {
    /// The counter: `<key>:<YYYY-MM>` (one per key and calendar month, UTC).
    pub counter: &'a str,
    /// The most the counter may reach.
    pub limit: i64,
}

/// How long a budget counter outlives its last change: its month and then some, so a
/// refund or settlement in the first days of the next month still finds it.
pub const BUDGET_COUNTER_LIFE: std::time::Duration = std::time::Duration::from_secs(40 * 24 * 3600);

/// The warnings (docs/DESIGN.md §Alerts) a ledger operation decided to announce: each fires once per
/// crossing, decided atomically with the balance change, and is re-armed by a top-up.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Warnings {
    /// The balance went from above the threshold to at or below it.
    pub low: bool,
    /// The balance reached 0, or a charge was refused for lack of credits.
    pub exhausted: bool,
}

impl Warnings {
    pub const NONE: Warnings = Warnings {
        low: false,
        exhausted: false,
    };

    /// From the scripts' bit set: 1 low, 2 exhausted.
    pub fn from_bits(bits: i64) -> Warnings {
        Warnings {
            low: bits & 1 != 0,
            exhausted: bits & 2 != 0,
        }
    }

    pub fn any(self) -> bool {
        self.low || self.exhausted
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChargeOutcome {
    /// The cost was taken; `balance` is what remains; `rate`, where the call stands
    /// against the tightest rate limit it passed.
    Charged {
        balance: i64,
        warnings: Warnings,
        rate: Option<RateState>,
    },
    /// The idempotency key belongs to an earlier request: nothing was taken. Its record
    /// ([`Ledger::key_record`]) says whether to replay, wait or refuse.
    KeyTaken { balance: i64 },
    /// Not enough credits; nothing was taken.
    Insufficient { balance: i64, warnings: Warnings },
    /// The charge would take the key's budget past its limit: nothing was taken. `spent`
    /// is what the key spent this month.
    OverBudget { balance: i64, spent: i64 },
    /// A limit of [`Charge::limits`] refused the call: nothing was taken or counted.
    Limited {
        /// The limiter's index.
        limiter: usize,
        /// A concurrency limit (else the rate limit).
        concurrency: bool,
        /// When a call may come again, ms.
        retry_after_ms: u64,
    },
    /// The ledger holds no balance for the tenant: hydrate it, then charge again.
    NoBalance,
    /// This charge id was voided: nothing was taken.
    Void,
    /// This charge id was already applied by an earlier try whose answer was lost (a
    /// deferred charge retried): nothing more was taken. Only a ledger that keeps a record
    /// per charge can tell; the embedded one never loses an answer, so never says this.
    AlreadyCharged { balance: i64 },
}

/// Gives a charge back by id.
#[derive(Debug, Clone, Copy)]
pub struct Void<'a> {
    pub tenant_id: &'a str,
    pub charge_id: &'a str,
    pub idempotency_key: Option<&'a str>,
    /// The cost, when the caller saw the charge applied (a refund). `None` after a ledger
    /// timeout, when only the ledger knows whether the charge landed.
    pub applied_cost: Option<i64>,
    /// The budget counter the charge counted against ([`Budget::counter`]): what is given
    /// back is taken off it too.
    pub budget: Option<&'a str>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VoidOutcome {
    /// The charge had been applied and is now given back.
    Refunded { balance: i64 },
    /// The charge was never applied; it never will be (the id is spent).
    NotApplied,
    /// Voided before; nothing changed.
    AlreadyVoided,
    /// The charge was applied but the ledger has lost the tenant's balance since (Redis
    /// flushed): nothing to give back to. Hydration seeds the balance from the store, which
    /// this charge never reaches, so the books still agree.
    NoBalance,
}

/// A reserved charge settled at what the call cost (docs/DESIGN.md §Settled prices): the
/// charge `charge_id` took `reserved`; the call cost `cost`. Applied once per charge id.
#[derive(Debug, Clone, Copy)]
pub struct Settle<'a> {
    pub tenant_id: &'a str,
    pub charge_id: &'a str,
    /// What the charge took (the reserve).
    pub reserved: i64,
    /// What the call cost, after the endpoint's overage policy: above `reserved` only under
    /// `overage: allow`, and then taken only as far as the balance goes.
    pub cost: i64,
    /// The tenant's low-credit threshold: extra taken across it announces a warning.
    pub threshold: i64,
    /// The budget counter the reserve counted against: it moves by what the settlement
    /// moves (and may pass its limit by what a settled cost exceeded the reserve).
    pub budget: Option<&'a str>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SettleOutcome {
    /// Settled, now or by an earlier try whose answer was lost: `charged` is what the call
    /// took in all (the reserve, less what went back, plus any extra taken), `balance` the
    /// balance after.
    Settled {
        charged: i64,
        balance: i64,
        warnings: Warnings,
    },
    /// The charge was voided (refunded) before: nothing to settle, nothing taken.
    Void,
    /// The ledger has lost the tenant's balance since the charge (Redis flushed): nothing
    /// moved. Hydration seeds it from the store, which gets the call at its settled cost.
    NoBalance,
}

/// Unix time in ms: when ledger work began, compared with when it must end.
pub fn unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// The highest balance a tenant may hold: far beyond any real account, and exact in the
/// double-precision numbers of Redis's Lua.
pub const MAX_BALANCE: i64 = 1_000_000_000_000_000;

/// How long the ledger remembers an operator's change by its operation id, so a change
/// retried (or recovered after a crash) within it is applied once. Operators' changes are
/// a handful a day: a week of records costs next to nothing.
pub const ADJUSTMENT_RECORD_LIFE: std::time::Duration =
    std::time::Duration::from_secs(7 * 24 * 3600);

/// An operator's change of a balance: a top-up or correction (`Add`, signed) or a new
/// balance (`Set`). Applied once per `op_id`, so a retry after a timeout is safe.
#[derive(Debug, Clone, Copy)]
pub struct Adjustment<'a> {
    pub tenant_id: &'a str,
    pub op_id: &'a str,
    pub change: Change,
    /// The tenant's low-credit threshold: a balance left above it re-arms the warnings.
    pub threshold: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    Add(i64),
    Set(i64),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdjustOutcome {
    /// Applied now, or by an earlier try of the same operation: `amount` is the signed
    /// change, `balance` the balance now.
    Applied { amount: i64, balance: i64 },
    /// The ledger holds no balance for the tenant: hydrate it, then adjust again.
    NoBalance,
    /// Nothing changed: the balance would leave `0..=MAX_BALANCE`.
    OutOfRange { amount: i64, balance: i64 },
}

/// The slices of a tenant's balance that replicas hold (docs/DESIGN.md §Leased credits).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Leases {
    /// Credits taken from the balance into slices and not yet reported spent.
    pub held: i64,
    /// How many replicas hold one.
    pub holders: usize,
    /// Credits kept from leases that expired (their holders died or were cut off): at most
    /// what they may have spent without reporting it.
    pub forfeited: i64,
}

/// What other processes hold for a tenant in usage not yet in the store, as hydration sees
/// it through a shared ledger (docs/DESIGN.md §Hydration).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PendingElsewhere {
    /// The ledger's clock, ms.
    pub now_ms: u64,
    /// Since when the registry of pipelines exists (it is rebuilt within a publish tick
    /// after a flush); `None`: no pipeline has published since the last flush, or ever.
    pub registry_since_ms: Option<u64>,
    /// Live pipelines: (id, the tenant's pending credits, when they last published, ms).
    pub live: Vec<(String, i64, u64)>,
    /// What pipelines that stopped publishing last said they held for the tenant.
    pub dead_credits: i64,
}

#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    #[error("ledger timed out")]
    Timeout,
    #[error("redis: {0}")]
    Redis(#[from] ::redis::RedisError),
    #[error("unexpected ledger reply: {0}")]
    Reply(String),
    #[error("cannot hydrate the balance: {0}")]
    Hydration(String),
}

#[async_trait]
pub trait Ledger: Send + Sync + 'static {
    /// Checks the balance and takes the cost in one atomic step. Never goes negative.
    async fn charge(&self, charge: &Charge<'_>) -> Result<ChargeOutcome, LedgerError>;

    /// Gives back charge `charge_id` if it was applied, once; if it was not applied yet,
    /// spends the id so a late arrival cannot apply it. Also releases the idempotency key
    /// the charge claimed, so a retry is a new call.
    async fn void(&self, void: &Void<'_>) -> Result<VoidOutcome, LedgerError>;

    /// Settles reserved charge `charge_id` at what the call cost, once: the unused part of
    /// the reserve goes back, a cost above it is taken as far as the balance goes.
    async fn settle(&self, settle: &Settle<'_>) -> Result<SettleOutcome, LedgerError>;

    /// What the ledger holds for the tenant's idempotency key, if it is live.
    async fn key_record(
        &self,
        tenant_id: &str,
        key: &str,
    ) -> Result<Option<KeyRecord>, LedgerError>;

    /// Keeps a completed call's encoded response with the key its charge claimed. False
    /// when the key no longer belongs to that charge (released or expired): nothing kept.
    async fn keep_response(
        &self,
        tenant_id: &str,
        key: &str,
        charge_id: &str,
        response: &[u8],
    ) -> Result<bool, LedgerError>;

    /// Sets the tenant's balance only if the ledger has none (racing replicas agree).
    async fn seed(&self, tenant_id: &str, balance: i64) -> Result<(), LedgerError>;

    /// The tenant's current balance, if the ledger has one.
    async fn balance(&self, tenant_id: &str) -> Result<Option<i64>, LedgerError>;

    /// The slices replicas hold of the tenant's balance (none where nothing is leased).
    async fn leases(&self, _tenant_id: &str) -> Result<Leases, LedgerError> {
        Ok(Leases::default())
    }

    /// Moves a balance by an operator's decision, atomically with concurrent charges.
    async fn adjust(&self, adjustment: &Adjustment<'_>) -> Result<AdjustOutcome, LedgerError>;

    /// Publishes the tenants' pending credits of usage pipeline `pipeline` that changed
    /// (0: none left), then its heartbeat. False when the ledger had lost this pipeline (a
    /// flush): the caller publishes everything it holds next. A ledger that serves one
    /// process needs none of it.
    async fn publish_pending(
        &self,
        _pipeline: &str,
        _changes: &[(String, i64)],
    ) -> Result<bool, LedgerError> {
        Ok(true)
    }

    /// What the other pipelines hold for `tenant` (all but `own`). `None`: this ledger
    /// serves one process, whose own pending is all there is.
    async fn pending_elsewhere(
        &self,
        _tenant: &str,
        _own: Option<&str>,
    ) -> Result<Option<PendingElsewhere>, LedgerError> {
        Ok(None)
    }

    /// Waits until every change made so far would survive a crash of this process (the
    /// embedded ledger's journal is written by a thread of its own); at once for a ledger
    /// in another process. False when it was not written in time.
    async fn written(&self) -> bool {
        true
    }

    /// Answers when the ledger is reachable (`/readyz`).
    async fn ping(&self) -> Result<(), LedgerError> {
        Ok(())
    }

    /// Makes everything written so far durable; called once at shutdown.
    async fn close(&self) {}

    /// Gives back a call's places in flight as it ends (docs/DESIGN.md §Limits).
    async fn release(&self, _release: &Release<'_>) -> Result<(), LedgerError> {
        Ok(())
    }
}

impl From<LedgerError> for crate::problem::Problem {
    /// `503`: the ledger did not answer; nothing changed.
    fn from(e: LedgerError) -> Self {
        crate::problem::Problem::unavailable("ledger", e)
    }
}
