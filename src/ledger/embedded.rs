//! The embedded ledger: the Redis scripts' semantics in-process, for the single-process
//! default. Balances and idempotency keys are journaled under the data dir (see
//! [`super::journal`]) so a restart keeps them; charge records only matter to in-flight
//! requests and are kept in memory.

use super::journal::{Journal, Record};
use super::{Charge, ChargeOutcome, Ledger, LedgerError, VoidOutcome};
use crate::config::LedgerConfig;
use async_trait::async_trait;
use std::collections::HashMap;
use std::path::Path;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

/// Expired charge records and idempotency keys of a tenant are swept at most this often.
const SWEEP_EVERY_MS: u64 = 10_000;

pub struct EmbeddedLedger {
    books: Mutex<HashMap<String, Book>>,
    journal: Option<Journal>,
    charge_ttl_ms: u64,
    idempotency_ttl_ms: u64,
}

#[derive(Default)]
struct Book {
    balance: Option<i64>,
    /// charge id → (cost, or `None` once voided; expiry in unix ms)
    charges: HashMap<String, (Option<i64>, u64)>,
    /// idempotency key → (charge id, expiry in unix ms)
    idempotency: HashMap<String, (String, u64)>,
    next_sweep: u64,
}

impl Book {
    fn sweep(&mut self, now: u64) {
        if now >= self.next_sweep {
            self.charges.retain(|_, (_, expires)| *expires > now);
            self.idempotency.retain(|_, (_, expires)| *expires > now);
            self.next_sweep = now + SWEEP_EVERY_MS;
        }
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl EmbeddedLedger {
    /// An in-memory ledger that forgets everything at exit (tests, benches).
    pub fn in_memory(config: &LedgerConfig) -> EmbeddedLedger {
        EmbeddedLedger {
            books: Mutex::new(HashMap::new()),
            journal: None,
            charge_ttl_ms: config.charge_ttl_secs * 1000,
            idempotency_ttl_ms: config.idempotency_ttl_secs * 1000,
        }
    }

    /// Opens (or creates) the journal in `data_dir` and restores balances and live
    /// idempotency keys from it.
    pub fn open(data_dir: &Path, config: &LedgerConfig) -> std::io::Result<EmbeddedLedger> {
        let (journal, restored) = Journal::open(&data_dir.join("ledger.journal"), now_ms())?;
        let mut books: HashMap<String, Book> = HashMap::new();
        for (tenant, balance) in restored.balances {
            books.entry(tenant).or_default().balance = Some(balance);
        }
        for ((tenant, key), (charge_id, expires)) in restored.idempotency {
            let book = books.entry(tenant).or_default();
            book.idempotency.insert(key, (charge_id, expires));
        }
        Ok(EmbeddedLedger {
            books: Mutex::new(books),
            journal: Some(journal),
            charge_ttl_ms: config.charge_ttl_secs * 1000,
            idempotency_ttl_ms: config.idempotency_ttl_secs * 1000,
        })
    }

    fn log(&self, record: Record) {
        if let Some(journal) = &self.journal {
            journal.append(record);
        }
    }

    fn with_books<T>(&self, f: impl FnOnce(&mut HashMap<String, Book>) -> T) -> T {
        // A poisoned lock means a panic mid-update elsewhere; the maps hold no invariant
        // that a half-done update could break worse than refusing all traffic would.
        let mut books = self.books.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut books)
    }
}

#[async_trait]
impl Ledger for EmbeddedLedger {
    async fn charge(&self, charge: &Charge<'_>) -> Result<ChargeOutcome, LedgerError> {
        let now = now_ms();
        Ok(self.with_books(|books| {
            let Some(book) = books.get_mut(charge.tenant_id) else {
                return ChargeOutcome::NoBalance;
            };
            let Some(balance) = book.balance else {
                return ChargeOutcome::NoBalance;
            };
            book.sweep(now);
            if book.charges.contains_key(charge.charge_id) {
                return ChargeOutcome::Void;
            }
            if let Some(key) = charge.idempotency_key {
                if book.idempotency.get(key).is_some_and(|(_, exp)| *exp > now) {
                    return ChargeOutcome::Replayed { balance };
                }
            }
            if balance < charge.cost {
                return ChargeOutcome::Insufficient { balance };
            }
            let balance = balance - charge.cost;
            book.balance = Some(balance);
            let expires = now + self.charge_ttl_ms;
            book.charges
                .insert(charge.charge_id.to_owned(), (Some(charge.cost), expires));
            let tenant = charge.tenant_id.to_owned();
            if let Some(key) = charge.idempotency_key {
                let expires = now + self.idempotency_ttl_ms;
                let id = charge.charge_id.to_owned();
                book.idempotency
                    .insert(key.to_owned(), (id.clone(), expires));
                self.log(Record::Idempotency {
                    tenant: tenant.clone(),
                    key: key.to_owned(),
                    charge_id: id,
                    expires,
                });
            }
            self.log(Record::Balance { tenant, balance });
            ChargeOutcome::Charged { balance }
        }))
    }

    async fn void(
        &self,
        tenant_id: &str,
        charge_id: &str,
        idempotency_key: Option<&str>,
    ) -> Result<VoidOutcome, LedgerError> {
        let now = now_ms();
        Ok(self.with_books(|books| {
            let book = books.entry(tenant_id.to_owned()).or_default();
            let expires = now + self.charge_ttl_ms;
            let (cost, balance) = match (book.charges.get_mut(charge_id), book.balance) {
                (Some((Some(cost), _)), Some(balance)) => {
                    let cost = *cost;
                    book.charges.insert(charge_id.to_owned(), (None, expires));
                    (cost, balance)
                }
                (Some((None, _)), _) => return VoidOutcome::AlreadyVoided,
                _ => {
                    book.charges.insert(charge_id.to_owned(), (None, expires));
                    return VoidOutcome::NotApplied;
                }
            };
            let balance = balance + cost;
            book.balance = Some(balance);
            if let Some(key) = idempotency_key {
                if book
                    .idempotency
                    .get(key)
                    .is_some_and(|(id, _)| id == charge_id)
                {
                    book.idempotency.remove(key);
                    self.log(Record::Forget {
                        tenant: tenant_id.to_owned(),
                        key: key.to_owned(),
                    });
                }
            }
            self.log(Record::Balance {
                tenant: tenant_id.to_owned(),
                balance,
            });
            VoidOutcome::Refunded { balance }
        }))
    }

    async fn seed(&self, tenant_id: &str, balance: i64) -> Result<(), LedgerError> {
        self.with_books(|books| {
            let book = books.entry(tenant_id.to_owned()).or_default();
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
        Ok(self.with_books(|books| books.get(tenant_id).and_then(|b| b.balance)))
    }

    async fn close(&self) {
        if let Some(journal) = &self.journal {
            journal.flush();
        }
    }
}
