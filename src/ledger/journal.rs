//! The embedded ledger's journal: an append-only file of balance and idempotency-key
//! changes (kept responses included, base64), written by one background thread so the request path only pushes onto a
//! channel. Each record holds the absolute balance, so replay is "last line wins" and a
//! torn last line (crash mid-write) loses one update at most.
//!
//! The writer keeps a mirror of the state it has written and rewrites the file from it
//! (write temp, fsync, rename) at start and whenever the file has grown by
//! [`COMPACT_AFTER_BYTES`], so the journal stays about the size of the state.

use base64::Engine;
use bytes::Bytes;
use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

/// Rewrite the journal after this many appended bytes (~1.5 M charges): small enough to
/// replay in well under a second, large enough that compaction is rare.
pub const COMPACT_AFTER_BYTES: u64 = 64 * 1024 * 1024;

/// How long shutdown waits for the writer to drain.
const FLUSH_WAIT: Duration = Duration::from_secs(5);

/// The writer drains the channel on this tick instead of being woken per record: a wake-up
/// per charge cost ~15% of the gateway's CPU under load. A crash (SIGKILL, power) can lose
/// the last tick's balance changes; a clean shutdown loses nothing (it flushes).
const WRITE_TICK: Duration = Duration::from_millis(5);

#[derive(Debug)]
pub enum Record {
    Balance {
        tenant: String,
        balance: i64,
    },
    /// A key claimed by a charge (in flight).
    Idempotency {
        tenant: String,
        key: String,
        claim: KeyEntry,
    },
    /// The response kept with a claimed key.
    Kept {
        tenant: String,
        key: String,
        response: Bytes,
    },
    Forget {
        tenant: String,
        key: String,
    },
    /// An operator's change by its operation id (applied once while it lives).
    Adjusted {
        tenant: String,
        op_id: String,
        amount: i64,
        expires: u64,
    },
    /// A reserved charge settled: what it took in the end (settled once while it lives).
    Settled {
        tenant: String,
        charge_id: String,
        charged: i64,
        expires: u64,
    },
    /// What an API key spent of its budget this month (docs/DESIGN.md §API keys): the
    /// counter's value now.
    Spent {
        tenant: String,
        counter: String,
        spent: i64,
        expires: u64,
    },
}

enum Message {
    Write(Record),
    Flush(mpsc::SyncSender<()>),
    /// The same, for an async caller.
    Written(tokio::sync::oneshot::Sender<()>),
}

/// An idempotency key's state: the charge that claimed it and, once kept, the response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyEntry {
    pub charge_id: String,
    pub fingerprint: String,
    pub response: Option<Bytes>,
    /// Unix ms.
    pub expires: u64,
}

/// What a journal holds: the state to restore.
#[derive(Debug, Default)]
pub struct Restored {
    pub balances: HashMap<String, i64>,
    /// (tenant, key) → its state
    pub idempotency: HashMap<(String, String), KeyEntry>,
    /// (tenant, operation id) → (amount applied, expiry in unix ms)
    pub adjusted: HashMap<(String, String), (i64, u64)>,
    /// (tenant, charge id) → (credits it took in the end, expiry in unix ms)
    pub settled: HashMap<(String, String), (i64, u64)>,
    /// (tenant, budget counter) → (credits spent, expiry in unix ms)
    pub spent: HashMap<(String, String), (i64, u64)>,
}

impl Restored {
    fn apply(&mut self, record: Record) {
        match record {
            Record::Balance { tenant, balance } => {
                self.balances.insert(tenant, balance);
            }
            Record::Idempotency { tenant, key, claim } => {
                self.idempotency.insert((tenant, key), claim);
            }
            Record::Kept {
                tenant,
                key,
                response,
            } => {
                if let Some(entry) = self.idempotency.get_mut(&(tenant, key)) {
                    entry.response = Some(response);
                }
            }
            Record::Forget { tenant, key } => {
                self.idempotency.remove(&(tenant, key));
            }
            Record::Adjusted {
                tenant,
                op_id,
                amount,
                expires,
            } => {
                self.adjusted.insert((tenant, op_id), (amount, expires));
            }
            Record::Settled {
                tenant,
                charge_id,
                charged,
                expires,
            } => {
                self.settled.insert((tenant, charge_id), (charged, expires));
            }
            Record::Spent {
                tenant,
                counter,
                spent,
                expires,
            } => {
                self.spent.insert((tenant, counter), (spent, expires));
            }
        }
    }
}

pub struct Journal {
    tx: mpsc::Sender<Message>,
}

impl Journal {
    /// Replays `path`, compacts it, and starts the writer thread.
    pub fn open(path: &Path, now_ms: u64) -> std::io::Result<(Journal, Restored)> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let state = read_state(path, now_ms)?;
        let file = compact(path, &state)?;
        let mirror = Restored {
            balances: state.balances.clone(),
            idempotency: state.idempotency.clone(),
            adjusted: state.adjusted.clone(),
            settled: state.settled.clone(),
            spent: state.spent.clone(),
        };
        let (tx, rx) = mpsc::channel();
        let path = path.to_owned();
        std::thread::Builder::new()
            .name("tollgate-ledger-journal".into())
            .spawn(move || write_loop(&path, file, mirror, rx))?;
        Ok((Journal { tx }, state))
    }

    /// Queues a record; never blocks.
    pub fn append(&self, record: Record) {
        if self.tx.send(Message::Write(record)).is_err() {
            tracing::error!("ledger journal writer is gone: a balance change is not persisted");
        }
    }

    /// Waits (without blocking a thread) until everything appended so far is written to
    /// the file: what must survive a crash of the process right after. False when it was
    /// not written in time (or the writer is gone).
    pub async fn written(&self) -> bool {
        let (done_tx, done_rx) = tokio::sync::oneshot::channel();
        if self.tx.send(Message::Written(done_tx)).is_err() {
            return false;
        }
        match tokio::time::timeout(FLUSH_WAIT, done_rx).await {
            Ok(Ok(())) => true,
            _ => {
                tracing::error!("ledger journal did not write in time");
                false
            }
        }
    }

    /// Waits until everything appended so far is written to the file.
    pub fn flush(&self) {
        let (done_tx, done_rx) = mpsc::sync_channel(1);
        if self.tx.send(Message::Flush(done_tx)).is_ok()
            && done_rx.recv_timeout(FLUSH_WAIT).is_err()
        {
            tracing::error!("ledger journal did not flush in time");
        }
    }
}

fn write_loop(path: &Path, file: File, mut mirror: Restored, rx: mpsc::Receiver<Message>) {
    let mut out = BufWriter::new(file);
    let mut written = 0u64;
    let mut open = true;
    while open {
        std::thread::sleep(WRITE_TICK);
        let mut waiting = Vec::new();
        let mut written_waiting = Vec::new();
        let mut next = match rx.try_recv() {
            Ok(message) => Some(message),
            Err(mpsc::TryRecvError::Empty) => continue,
            Err(mpsc::TryRecvError::Disconnected) => None,
        };
        open = next.is_some();
        while let Some(message) = next {
            match message {
                Message::Write(record) => {
                    let line = format_record(&record);
                    written += line.len() as u64;
                    if let Err(e) = out.write_all(line.as_bytes()) {
                        tracing::error!(error = %e, "ledger journal write failed");
                    }
                    mirror.apply(record);
                }
                Message::Flush(done) => waiting.push(done),
                Message::Written(done) => written_waiting.push(done),
            }
            next = rx.try_recv().ok();
        }
        if let Err(e) = out.flush() {
            tracing::error!(error = %e, "ledger journal flush failed");
        }
        if written >= COMPACT_AFTER_BYTES {
            // Expired keys (and their kept responses) and operations leave the mirror here,
            // so neither it nor the compacted file grows with them.
            let now = super::unix_ms() as u64;
            mirror.idempotency.retain(|_, entry| entry.expires > now);
            mirror.adjusted.retain(|_, (_, expires)| *expires > now);
            mirror.settled.retain(|_, (_, expires)| *expires > now);
            mirror.spent.retain(|_, (_, expires)| *expires > now);
            match compact(path, &mirror) {
                Ok(file) => {
                    out = BufWriter::new(file);
                    written = 0;
                }
                Err(e) => tracing::error!(error = %e, "ledger journal compaction failed"),
            }
        }
        for done in waiting {
            let _ = done.send(());
        }
        for done in written_waiting {
            let _ = done.send(());
        }
    }
}

/// Reads the state a journal holds without changing the file (safe beside a running
/// gateway: the file only grows, or is replaced whole by a rename).
pub fn read_state(path: &Path, now_ms: u64) -> std::io::Result<Restored> {
    let mut state = Restored::default();
    if path.exists() {
        let mut skipped = 0usize;
        for line in BufReader::new(File::open(path)?).lines() {
            match parse(&line?) {
                Some(record) => state.apply(record),
                None => skipped += 1,
            }
        }
        if skipped > 0 {
            tracing::warn!(path = %path.display(), skipped, "skipped unreadable ledger journal lines (a torn write at crash?)");
        }
    }
    state.idempotency.retain(|_, entry| entry.expires > now_ms);
    state.adjusted.retain(|_, (_, expires)| *expires > now_ms);
    state.settled.retain(|_, (_, expires)| *expires > now_ms);
    state.spent.retain(|_, (_, expires)| *expires > now_ms);
    Ok(state)
}

/// Rewrites the journal as the state alone and returns it opened for appending.
fn compact(path: &Path, state: &Restored) -> std::io::Result<File> {
    let tmp = PathBuf::from(format!("{}.tmp", path.display()));
    {
        let mut out = BufWriter::new(File::create(&tmp)?);
        for (tenant, balance) in &state.balances {
            let tenant = tenant.clone();
            out.write_all(
                format_record(&Record::Balance {
                    tenant,
                    balance: *balance,
                })
                .as_bytes(),
            )?;
        }
        for ((tenant, op_id), (amount, expires)) in &state.adjusted {
            let record = Record::Adjusted {
                tenant: tenant.clone(),
                op_id: op_id.clone(),
                amount: *amount,
                expires: *expires,
            };
            out.write_all(format_record(&record).as_bytes())?;
        }
        for ((tenant, counter), (spent, expires)) in &state.spent {
            let record = Record::Spent {
                tenant: tenant.clone(),
                counter: counter.clone(),
                spent: *spent,
                expires: *expires,
            };
            out.write_all(format_record(&record).as_bytes())?;
        }
        for ((tenant, charge_id), (charged, expires)) in &state.settled {
            let record = Record::Settled {
                tenant: tenant.clone(),
                charge_id: charge_id.clone(),
                charged: *charged,
                expires: *expires,
            };
            out.write_all(format_record(&record).as_bytes())?;
        }
        for ((tenant, key), entry) in &state.idempotency {
            let claim = KeyEntry {
                response: None,
                ..entry.clone()
            };
            let record = Record::Idempotency {
                tenant: tenant.clone(),
                key: key.clone(),
                claim,
            };
            out.write_all(format_record(&record).as_bytes())?;
            if let Some(response) = &entry.response {
                let record = Record::Kept {
                    tenant: tenant.clone(),
                    key: key.clone(),
                    response: response.clone(),
                };
                out.write_all(format_record(&record).as_bytes())?;
            }
        }
        out.into_inner().map_err(|e| e.into_error())?.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    OpenOptions::new().append(true).open(path)
}

/// Fields are tab-separated; tenant ids, idempotency keys, charge ids and fingerprints never
/// hold tabs (they are validated at the gateway or made by it); responses are base64.
fn format_record(record: &Record) -> String {
    match record {
        Record::Balance { tenant, balance } => format!("B\t{tenant}\t{balance}\n"),
        Record::Idempotency { tenant, key, claim } => {
            let KeyEntry {
                charge_id,
                fingerprint,
                expires,
                ..
            } = claim;
            format!("K\t{tenant}\t{key}\t{charge_id}\t{fingerprint}\t{expires}\n")
        }
        Record::Kept {
            tenant,
            key,
            response,
        } => {
            let response = base64::engine::general_purpose::STANDARD.encode(response);
            format!("R\t{tenant}\t{key}\t{response}\n")
        }
        Record::Forget { tenant, key } => format!("F\t{tenant}\t{key}\n"),
        Record::Adjusted {
            tenant,
            op_id,
            amount,
            expires,
        } => format!("A\t{tenant}\t{op_id}\t{amount}\t{expires}\n"),
        Record::Settled {
            tenant,
            charge_id,
            charged,
            expires,
        } => format!("S\t{tenant}\t{charge_id}\t{charged}\t{expires}\n"),
        Record::Spent {
            tenant,
            counter,
            spent,
            expires,
        } => format!("K\t{tenant}\t{counter}\t{spent}\t{expires}\n"),
    }
}

fn parse(line: &str) -> Option<Record> {
    let fields: Vec<&str> = line.split('\t').collect();
    Some(match fields[..] {
        ["B", tenant, balance] => Record::Balance {
            tenant: tenant.to_owned(),
            balance: balance.parse().ok()?,
        },
        // Keys of earlier versions (`I` lines) bound no request: they are not restored.
        ["K", tenant, key, charge_id, fingerprint, expires] => Record::Idempotency {
            tenant: tenant.to_owned(),
            key: key.to_owned(),
            claim: KeyEntry {
                charge_id: charge_id.to_owned(),
                fingerprint: fingerprint.to_owned(),
                response: None,
                expires: expires.parse().ok()?,
            },
        },
        ["R", tenant, key, response] => Record::Kept {
            tenant: tenant.to_owned(),
            key: key.to_owned(),
            response: base64::engine::general_purpose::STANDARD
                .decode(response.trim_end())
                .ok()?
                .into(),
        },
        ["A", tenant, op_id, amount, expires] => Record::Adjusted {
            tenant: tenant.to_owned(),
            op_id: op_id.to_owned(),
            amount: amount.parse().ok()?,
            expires: expires.parse().ok()?,
        },
        ["S", tenant, charge_id, charged, expires] => Record::Settled {
            tenant: tenant.to_owned(),
            charge_id: charge_id.to_owned(),
            charged: charged.parse().ok()?,
            expires: expires.parse().ok()?,
        },
        ["K", tenant, counter, spent, expires] => Record::Spent {
            tenant: tenant.to_owned(),
            counter: counter.to_owned(),
            spent: spent.parse().ok()?,
            expires: expires.parse().ok()?,
        },
        ["F", tenant, key] => Record::Forget {
            tenant: tenant.to_owned(),
            key: key.to_owned(),
        },
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claim(charge_id: &str, expires: u64) -> KeyEntry {
        KeyEntry {
            charge_id: charge_id.into(),
            fingerprint: "f".into(),
            response: None,
            expires,
        }
    }

    #[test]
    fn replays_last_values_and_survives_a_torn_line() {
        let dir = std::env::temp_dir().join(format!("tg-journal-{}", uuid::Uuid::now_v7()));
        let path = dir.join("ledger.journal");
        {
            let (journal, _) = Journal::open(&path, 0).unwrap();
            journal.append(Record::Balance {
                tenant: "a".into(),
                balance: 10,
            });
            journal.append(Record::Balance {
                tenant: "a".into(),
                balance: 7,
            });
            journal.append(Record::Idempotency {
                tenant: "a".into(),
                key: "k1".into(),
                claim: claim("c1", 500),
            });
            journal.append(Record::Idempotency {
                tenant: "a".into(),
                key: "k2".into(),
                claim: claim("c2", 50),
            });
            journal.append(Record::Idempotency {
                tenant: "a".into(),
                key: "k3".into(),
                claim: claim("c3", 500),
            });
            journal.append(Record::Forget {
                tenant: "a".into(),
                key: "k3".into(),
            });
            journal.append(Record::Kept {
                tenant: "a".into(),
                key: "k1".into(),
                response: Bytes::from_static(b"{\"status\":200}\n\tbody\n\x00"),
            });
            journal.flush();
        }
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(b"B\ta\t9").unwrap(); // torn: no newline is fine, bad number is not
        f.write_all(b"x\n").unwrap();
        let (_, state) = Journal::open(&path, 100).unwrap();
        assert_eq!(state.balances.get("a"), Some(&7));
        assert_eq!(
            state.idempotency.len(),
            1,
            "expired and forgotten keys are gone"
        );
        let k1 = &state.idempotency[&("a".to_owned(), "k1".to_owned())];
        assert_eq!(
            k1.response.as_deref(),
            Some(&b"{\"status\":200}\n\tbody\n\x00"[..]),
            "a kept response survives, whatever bytes it holds"
        );
        // And survives the compaction the reopening did.
        let (_, again) = Journal::open(&path, 100).unwrap();
        assert_eq!(again.idempotency, state.idempotency);
        std::fs::remove_dir_all(dir).unwrap();
    }
}
