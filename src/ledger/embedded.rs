//! The embedded ledger: the Redis scripts' semantics in-process, for the single-process
//! default. Balances and idempotency keys are journaled under the data dir (see
//! [`super::journal`]) so a restart keeps them.
//!
//! An in-process ledger never times out, so every void it receives either names a charge
//! the caller saw applied (a refund, with its cost) or a charge it never saw. It therefore
//! keeps no record per charge, only the ids it has voided (tombstones), which makes voids
//! idempotent and refuses a charge whose id is spent.

use super::expiring::ExpiringMap;
use super::journal::{read_state, Journal, KeyEntry, Record, Restored};
use super::{
    AdjustOutcome, Adjustment, Change, Charge, ChargeOutcome, Coordination, Ledger, LedgerError,
    Limiter, RateState, Settle, SettleOutcome, Void, VoidOutcome, Warnings, MAX_BALANCE,
};
use crate::config::LedgerConfig;
use crate::idempotency::KeyRecord;
use async_trait::async_trait;
use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

pub struct EmbeddedLedger {
    books: Mutex<HashMap<String, Book>>,
    journal: Option<Journal>,
    /// One process holds the whole catalog: a counter in memory is enough.
    catalog_version: AtomicU64,
    charge_ttl_ms: u64,
    idempotency_ttl_ms: u64,
}

#[derive(Default)]
struct Book {
    balance: Option<i64>,
    /// Voided charge ids.
    voided: ExpiringMap<()>,
    /// Settled charge ids → what each took in the end (settle.lua's `=<credits>` record).
    settled: ExpiringMap<i64>,
    /// Idempotency key → the charge that claimed it, and the response once kept.
    idempotency: ExpiringMap<KeyEntry>,
    /// Adjustment op id → the amount it applied (retries of an adjustment).
    adjusted: ExpiringMap<i64>,
    /// API key budget counter → credits spent (charge.lua's `kb` keys). Each lives
    /// [`super::BUDGET_COUNTER_LIFE`] from its month's first charge, and is changed in place.
    spent: ExpiringMap<i64>,
    /// Rate limits' theoretical arrival times by scope (charge.lua's `rl` keys), ms; in
    /// memory only: a restart forgets how fast calls came.
    arrivals: HashMap<String, f64>,
    /// Calls in flight by scope: charge id → when its place lapses, ms (the `cc` sets).
    in_flight: HashMap<String, HashMap<String, u64>>,
    /// Warnings announced and not yet re-armed by a top-up (charge.lua's `warn` hash; in
    /// memory only: a restart may announce a standing warning again).
    announced: Warnings,
}

fn now_ms() -> u64 {
    super::unix_ms() as u64
}

impl EmbeddedLedger {
    /// An in-memory ledger that forgets everything at exit (tests, benches).
    pub fn in_memory(config: &LedgerConfig) -> EmbeddedLedger {
        EmbeddedLedger {
            books: Mutex::new(HashMap::new()),
            journal: None,
            catalog_version: AtomicU64::new(0),
            charge_ttl_ms: config.charge_ttl_secs * 1000,
            idempotency_ttl_ms: config.idempotency_ttl_secs * 1000,
        }
    }

    /// Opens (or creates) the journal in `data_dir` and restores balances and live
    /// idempotency keys from it.
    pub fn open(data_dir: &Path, config: &LedgerConfig) -> std::io::Result<EmbeddedLedger> {
        let (journal, restored) = Journal::open(&data_dir.join("ledger.journal"), now_ms())?;
        Ok(EmbeddedLedger {
            journal: Some(journal),
            ..EmbeddedLedger::restore(restored, config)
        })
    }

    /// The state journaled in `data_dir`, read without touching the file (for
    /// `tollgate reconcile` beside a running gateway). Changes to it are not persisted.
    pub fn read_only(data_dir: &Path, config: &LedgerConfig) -> std::io::Result<EmbeddedLedger> {
        let restored = read_state(&data_dir.join("ledger.journal"), now_ms())?;
        Ok(EmbeddedLedger::restore(restored, config))
    }

    fn restore(restored: Restored, config: &LedgerConfig) -> EmbeddedLedger {
        let mut books: HashMap<String, Book> = HashMap::new();
        for (tenant, balance) in restored.balances {
            books.entry(tenant).or_default().balance = Some(balance);
        }
        let mut keys: Vec<_> = restored.idempotency.into_iter().collect();
        keys.sort_by_key(|(_, entry)| entry.expires);
        for ((tenant, key), entry) in keys {
            let book = books.entry(tenant).or_default();
            let expires = entry.expires;
            book.idempotency.insert(key, entry, expires);
        }
        let mut ops: Vec<_> = restored.adjusted.into_iter().collect();
        ops.sort_by_key(|(_, (_, expires))| *expires);
        for ((tenant, op_id), (amount, expires)) in ops {
            let book = books.entry(tenant).or_default();
            book.adjusted.insert(op_id, amount, expires);
        }
        let mut spent: Vec<_> = restored.spent.into_iter().collect();
        spent.sort_by_key(|(_, (_, expires))| *expires);
        for ((tenant, counter), (credits, expires)) in spent {
            let book = books.entry(tenant).or_default();
            book.spent.insert(counter, credits, expires);
        }
        let mut settled: Vec<_> = restored.settled.into_iter().collect();
        settled.sort_by_key(|(_, (_, expires))| *expires);
        for ((tenant, charge_id), (charged, expires)) in settled {
            let book = books.entry(tenant).or_default();
            book.settled.insert(charge_id, charged, expires);
        }
        EmbeddedLedger {
            books: Mutex::new(books),
            ..EmbeddedLedger::in_memory(config)
        }
    }

    fn log(&self, record: Record) {
        if let Some(journal) = &self.journal {
            journal.append(record);
        }
    }

    /// [`Ledger::adjust`] on the books, journaled (not yet waited for).
    fn adjust_in_memory(&self, adjustment: &Adjustment<'_>) -> AdjustOutcome {
        self.with_book(adjustment.tenant_id, |book, now| {
            let Some(balance) = book.balance else {
                return AdjustOutcome::NoBalance;
            };
            if let Some(&amount) = book.adjusted.get(adjustment.op_id, now) {
                return AdjustOutcome::Applied { amount, balance };
            }
            let (amount, after) = match adjustment.change {
                Change::Add(amount) => (amount, balance.checked_add(amount)),
                Change::Set(after) => (after.saturating_sub(balance), Some(after)),
            };
            let Some(after) = after.filter(|b| (0..=MAX_BALANCE).contains(b)) else {
                return AdjustOutcome::OutOfRange { amount, balance };
            };
            book.balance = Some(after);
            if after > adjustment.threshold {
                book.announced = Warnings::NONE;
            } else if after > 0 {
                book.announced.exhausted = false;
            }
            let expires = now + super::ADJUSTMENT_RECORD_LIFE.as_millis() as u64;
            book.adjusted
                .insert(adjustment.op_id.to_owned(), amount, expires);
            // The operation before the balance: a crash between them replays neither twice.
            self.log(Record::Adjusted {
                tenant: adjustment.tenant_id.to_owned(),
                op_id: adjustment.op_id.to_owned(),
                amount,
                expires,
            });
            self.log(Record::Balance {
                tenant: adjustment.tenant_id.to_owned(),
                balance: after,
            });
            AdjustOutcome::Applied {
                amount,
                balance: after,
            }
        })
    }

    /// Moves an API key's budget counter by `credits` (never below 0), journaled where a
    /// crash between it and the balance leaves the key less room, never more: before a
    /// charge's balance, after a refund's, after a settlement's record.
    fn spend(&self, book: &mut Book, tenant: &str, counter: &str, credits: i64, now: u64) {
        let spent = match book.spent.get_mut(counter, now) {
            Some(spent) => {
                *spent = (*spent + credits).max(0);
                *spent
            }
            None => {
                let spent = credits.max(0);
                let expires = now + super::BUDGET_COUNTER_LIFE.as_millis() as u64;
                book.spent.insert(counter.to_owned(), spent, expires);
                spent
            }
        };
        let expires = book.spent.expiry(counter).unwrap_or(now);
        self.log(Record::Spent {
            tenant: tenant.to_owned(),
            counter: counter.to_owned(),
            spent,
            expires,
        });
    }

    fn with_book<T>(&self, tenant_id: &str, f: impl FnOnce(&mut Book, u64) -> T) -> T {
        let now = now_ms();
        // A poisoned lock means a panic mid-update elsewhere; each update below is a few
        // plain assignments, so the maps are still consistent: keep serving.
        let mut books = self.books.lock().unwrap_or_else(|p| p.into_inner());
        let book = match books.get_mut(tenant_id) {
            Some(book) => book,
            None => books.entry(tenant_id.to_owned()).or_default(),
        };
        book.voided.expire(now);
        book.settled.expire(now);
        book.idempotency.expire(now);
        book.adjusted.expire(now);
        book.spent.expire(now);
        f(book, now)
    }
}

/// The arrival each rate limit records if the call is charged.
type Arrivals = Vec<Option<f64>>;

/// charge.lua's limits on a book, all checked before any is counted: the arrivals to record
/// and the tightest rate limit passed, or (limiter, concurrency, retry after ms).
fn check_limits(
    book: &mut Book,
    limits: &[Limiter<'_>],
    now: u64,
) -> Result<(Arrivals, Option<RateState>), (usize, bool, u64)> {
    let at = now as f64;
    let mut arrivals = vec![None; limits.len()];
    let mut tightest: Option<RateState> = None;
    for (i, limiter) in limits.iter().enumerate() {
        if let Some(rate) = limiter.rate {
            let interval = 1000.0 / f64::from(rate.requests_per_second.max(1));
            let tat = book
                .arrivals
                .get(limiter.scope)
                .copied()
                .unwrap_or(0.0)
                .max(at);
            let allowed = f64::from(rate.burst.saturating_sub(1)) * interval;
            if tat - at > allowed {
                return Err((i, false, (tat - at - allowed).ceil() as u64));
            }
            let next = tat + interval;
            arrivals[i] = Some(next);
            let remaining = ((f64::from(rate.burst) * interval - (next - at)) / interval)
                .floor()
                .max(0.0) as u32;
            if tightest.is_none_or(|t| remaining < t.remaining) {
                tightest = Some(RateState {
                    limiter: i,
                    remaining,
                    reset_ms: (next - at).ceil() as u64,
                });
            }
        }
        if let Some(most) = limiter.max_concurrent {
            let flight = book.in_flight.entry(limiter.scope.to_owned()).or_default();
            flight.retain(|_, lapses| *lapses > now);
            if flight.len() >= most as usize {
                // When a place frees is when a call ends, which nothing here knows.
                return Err((i, true, 1000));
            }
        }
    }
    Ok((arrivals, tightest))
}

#[async_trait]
impl Ledger for EmbeddedLedger {
    async fn charge(&self, charge: &Charge<'_>) -> Result<ChargeOutcome, LedgerError> {
        Ok(self.with_book(charge.tenant_id, |book, now| {
            let Some(balance) = book.balance else {
                return ChargeOutcome::NoBalance;
            };
            if book.voided.get(charge.charge_id, now).is_some() {
                return ChargeOutcome::Void;
            }
            let claim = charge.idempotency;
            if claim.is_some_and(|c| book.idempotency.get(c.key, now).is_some()) {
                return ChargeOutcome::KeyTaken { balance };
            }
            let (arrivals, rate) = match check_limits(book, charge.limits, now) {
                Ok(passed) => passed,
                Err((limiter, concurrency, retry_after_ms)) => {
                    return ChargeOutcome::Limited {
                        limiter,
                        concurrency,
                        retry_after_ms,
                    }
                }
            };
            if let Some(budget) = charge.budget {
                let spent = book.spent.get(budget.counter, now).copied().unwrap_or(0);
                if charge.cost > 0 && spent + charge.cost > budget.limit {
                    return ChargeOutcome::OverBudget { balance, spent };
                }
            }
            if balance < charge.cost {
                let warnings = Warnings {
                    low: false,
                    exhausted: !book.announced.exhausted,
                };
                book.announced.exhausted = true;
                return ChargeOutcome::Insufficient { balance, warnings };
            }
            let before = balance;
            let balance = balance - charge.cost;
            book.balance = Some(balance);
            let warnings = Warnings {
                low: before > charge.threshold
                    && balance <= charge.threshold
                    && !book.announced.low,
                exhausted: balance == 0 && !book.announced.exhausted,
            };
            book.announced.low |= warnings.low;
            book.announced.exhausted |= warnings.exhausted;
            let tenant = charge.tenant_id.to_owned();
            if let Some(budget) = charge.budget {
                self.spend(book, &tenant, budget.counter, charge.cost, now);
            }
            let lapses = now + super::IN_FLIGHT_LEASE.as_millis() as u64;
            for (limiter, arrival) in charge.limits.iter().zip(arrivals) {
                if let Some(arrival) = arrival {
                    book.arrivals.insert(limiter.scope.to_owned(), arrival);
                }
                if limiter.max_concurrent.is_some() {
                    let flight = book.in_flight.entry(limiter.scope.to_owned()).or_default();
                    flight.insert(charge.charge_id.to_owned(), lapses);
                }
            }
            if let Some(claim) = claim {
                let entry = KeyEntry {
                    charge_id: charge.charge_id.to_owned(),
                    fingerprint: claim.fingerprint.to_owned(),
                    response: None,
                    expires: now + self.idempotency_ttl_ms,
                };
                let expires = entry.expires;
                book.idempotency
                    .insert(claim.key.to_owned(), entry.clone(), expires);
                self.log(Record::Idempotency {
                    tenant: tenant.clone(),
                    key: claim.key.to_owned(),
                    claim: entry,
                });
            }
            self.log(Record::Balance { tenant, balance });
            ChargeOutcome::Charged {
                balance,
                warnings,
                rate,
            }
        }))
    }

    async fn void(&self, void: &Void<'_>) -> Result<VoidOutcome, LedgerError> {
        Ok(self.with_book(void.tenant_id, |book, now| {
            if book.voided.get(void.charge_id, now).is_some() {
                return VoidOutcome::AlreadyVoided;
            }
            let expires = now + self.charge_ttl_ms;
            book.voided.insert(void.charge_id.to_owned(), (), expires);
            // A key this charge claimed is released: a retry is a new call.
            if let Some(key) = void.idempotency_key {
                if book
                    .idempotency
                    .get(key, now)
                    .is_some_and(|entry| entry.charge_id == void.charge_id)
                {
                    book.idempotency.remove(key);
                    self.log(Record::Forget {
                        tenant: void.tenant_id.to_owned(),
                        key: key.to_owned(),
                    });
                }
            }
            let settled = book.settled.get(void.charge_id, now).copied();
            let Some(cost) = settled.or(void.applied_cost) else {
                return VoidOutcome::NotApplied;
            };
            let Some(balance) = book.balance else {
                if let Some(counter) = void.budget {
                    self.spend(book, void.tenant_id, counter, -cost, now);
                }
                return VoidOutcome::NoBalance;
            };
            let balance = balance + cost;
            book.balance = Some(balance);
            self.log(Record::Balance {
                tenant: void.tenant_id.to_owned(),
                balance,
            });
            // After the balance: a crash between them gives the key less room, not more.
            if let Some(counter) = void.budget {
                self.spend(book, void.tenant_id, counter, -cost, now);
            }
            VoidOutcome::Refunded { balance }
        }))
    }

    async fn settle(&self, settle: &Settle<'_>) -> Result<SettleOutcome, LedgerError> {
        Ok(self.with_book(settle.tenant_id, |book, now| {
            if book.voided.get(settle.charge_id, now).is_some() {
                return SettleOutcome::Void;
            }
            let Some(balance) = book.balance else {
                return SettleOutcome::NoBalance;
            };
            if let Some(&charged) = book.settled.get(settle.charge_id, now) {
                return SettleOutcome::Settled {
                    charged,
                    balance,
                    warnings: Warnings::NONE,
                };
            }
            // Beyond the reserve only as far as the balance goes: never negative.
            let extra = (settle.cost - settle.reserved)
                .min(balance.max(0))
                .max(-settle.reserved);
            let charged = settle.reserved + extra;
            let after = balance - extra;
            book.balance = Some(after);
            let expires = now + self.charge_ttl_ms;
            book.settled
                .insert(settle.charge_id.to_owned(), charged, expires);
            // The settlement before the balance: a crash between them settles nothing twice.
            self.log(Record::Settled {
                tenant: settle.tenant_id.to_owned(),
                charge_id: settle.charge_id.to_owned(),
                charged,
                expires,
            });
            // After the settlement's record: asked again after a crash, it moves nothing.
            if let (Some(counter), true) = (settle.budget, extra != 0) {
                self.spend(book, settle.tenant_id, counter, extra, now);
            }
            let warnings = Warnings {
                low: balance > settle.threshold && after <= settle.threshold && !book.announced.low,
                exhausted: after == 0 && balance > 0 && !book.announced.exhausted,
            };
            book.announced.low |= warnings.low;
            book.announced.exhausted |= warnings.exhausted;
            if extra != 0 {
                self.log(Record::Balance {
                    tenant: settle.tenant_id.to_owned(),
                    balance: after,
                });
            }
            SettleOutcome::Settled {
                charged,
                balance: after,
                warnings,
            }
        }))
    }

    async fn release(&self, release: &super::Release<'_>) -> Result<(), LedgerError> {
        self.with_book(release.tenant_id, |book, _| {
            for scope in release.scopes {
                if let Some(flight) = book.in_flight.get_mut(*scope) {
                    flight.remove(release.charge_id);
                }
            }
        });
        Ok(())
    }

    async fn key_record(
        &self,
        tenant_id: &str,
        key: &str,
    ) -> Result<Option<KeyRecord>, LedgerError> {
        Ok(self.with_book(tenant_id, |book, now| {
            book.idempotency.get(key, now).map(|entry| KeyRecord {
                charge_id: entry.charge_id.clone(),
                fingerprint: entry.fingerprint.clone(),
                response: entry.response.clone(),
            })
        }))
    }

    async fn keep_response(
        &self,
        tenant_id: &str,
        key: &str,
        charge_id: &str,
        response: &[u8],
    ) -> Result<bool, LedgerError> {
        Ok(self.with_book(tenant_id, |book, now| {
            let Some(entry) = book
                .idempotency
                .get_mut(key, now)
                .filter(|entry| entry.charge_id == charge_id)
            else {
                return false;
            };
            let response = bytes::Bytes::copy_from_slice(response);
            entry.response = Some(response.clone());
            self.log(Record::Kept {
                tenant: tenant_id.to_owned(),
                key: key.to_owned(),
                response,
            });
            true
        }))
    }

    async fn adjust(&self, adjustment: &Adjustment<'_>) -> Result<AdjustOutcome, LedgerError> {
        let outcome = self.adjust_in_memory(adjustment);
        // An operator's change is acted on by the store next: it must be on disk first, or
        // a crash in between would forget it here and apply it again on recovery.
        if let (AdjustOutcome::Applied { .. }, Some(journal)) = (outcome, &self.journal) {
            if !journal.written().await {
                // Applied in memory, not yet on disk: the caller retries by the same id.
                return Err(LedgerError::Timeout);
            }
        }
        Ok(outcome)
    }

    async fn seed(&self, tenant_id: &str, balance: i64) -> Result<(), LedgerError> {
        self.with_book(tenant_id, |book, _| {
            if book.balance.is_none() {
                book.balance = Some(balance);
                self.log(Record::Balance {
                    tenant: tenant_id.to_owned(),
                    balance,
                });
            }
        });
        Ok(())
    }

    async fn balance(&self, tenant_id: &str) -> Result<Option<i64>, LedgerError> {
        Ok(self.with_book(tenant_id, |book, _| book.balance))
    }

    async fn written(&self) -> bool {
        match &self.journal {
            Some(journal) => journal.written().await,
            None => true,
        }
    }

    async fn close(&self) {
        if let Some(journal) = &self.journal {
            journal.flush();
        }
    }
}

#[async_trait]
impl Coordination for EmbeddedLedger {
    async fn catalog_version(&self) -> Result<u64, LedgerError> {
        Ok(self.catalog_version.load(Ordering::Acquire))
    }

    async fn bump_catalog_version(&self) -> Result<u64, LedgerError> {
        Ok(self.catalog_version.fetch_add(1, Ordering::AcqRel) + 1)
    }
}
