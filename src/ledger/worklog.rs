//! The ledger's unfinished work, on disk: voids and deferred charges the gateway owes the
//! ledger survive a restart (SIGKILL, or a shutdown while the ledger is down) and are
//! finished at the next start. What a worker gives up for good (its exactly-once record in
//! the ledger is about to expire) goes to a second, append-only file that `tollgate
//! reconcile` reports. See docs/DESIGN.md §Unfinished ledger work.
//!
//! `ledger-work.journal` holds JSON lines: `put` (an item, or its newer state) and `done`.
//! It is read and compacted to the items still open when it is opened. Writes happen only
//! off the common path (a ledger timeout, a refund the ledger could not take, a call served
//! on credit), each one line; a line torn by a crash is skipped at the next open (the
//! compaction drops it).

use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

const JOURNAL: &str = "ledger-work.journal";
const UNRESOLVED: &str = "ledger-unresolved.log";

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "lowercase")]
enum Line {
    Put {
        kind: String,
        id: String,
        item: Value,
    },
    Done {
        kind: String,
        id: String,
    },
}

/// Work given up for good: the gateway can no longer tell whether the ledger applied it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Unresolved {
    /// Unix ms when it was given up.
    pub at_ms: i64,
    /// `void` (a 503's charge may have landed), `refund` (may have been given back),
    /// `deferred` (a call served on credit may have been charged).
    pub kind: String,
    pub tenant_id: String,
    pub charge_id: String,
    /// The most the ledger may differ by because of it.
    pub credits: i64,
}

pub struct WorkLog {
    /// `None`: in memory only (tests, benches).
    files: Option<Mutex<Files>>,
}

struct Files {
    journal: File,
    unresolved: PathBuf,
}

/// The items still open, by kind, in the order they were first put.
pub type OpenWork = HashMap<String, Vec<(String, Value)>>;

impl WorkLog {
    pub fn disabled() -> WorkLog {
        WorkLog { files: None }
    }

    /// Reads what is still open in `data_dir`, compacts the journal to it, and opens it.
    pub fn open(data_dir: &Path) -> std::io::Result<(WorkLog, OpenWork)> {
        std::fs::create_dir_all(data_dir)?;
        let path = data_dir.join(JOURNAL);
        let open = read_open(&path)?;
        let tmp = data_dir.join(format!("{JOURNAL}.tmp"));
        {
            let mut out = std::io::BufWriter::new(File::create(&tmp)?);
            for (kind, items) in &open {
                for (id, item) in items {
                    let line = Line::Put {
                        kind: kind.clone(),
                        id: id.clone(),
                        item: item.clone(),
                    };
                    out.write_all(&line_bytes(&line))?;
                }
            }
            out.into_inner().map_err(|e| e.into_error())?.sync_all()?;
        }
        std::fs::rename(&tmp, &path)?;
        let journal = OpenOptions::new().append(true).open(&path)?;
        let files = Files {
            journal,
            unresolved: data_dir.join(UNRESOLVED),
        };
        Ok((
            WorkLog {
                files: Some(Mutex::new(files)),
            },
            open,
        ))
    }

    /// Records an item (or its newer state) as open.
    pub fn put(&self, kind: &str, id: &str, item: &impl Serialize) {
        let item = match serde_json::to_value(item) {
            Ok(item) => item,
            Err(e) => {
                tracing::error!(kind, id, error = %e, "cannot journal ledger work");
                return;
            }
        };
        self.append(&Line::Put {
            kind: kind.to_owned(),
            id: id.to_owned(),
            item,
        });
    }

    /// Records an item as finished.
    pub fn done(&self, kind: &str, id: &str) {
        self.append(&Line::Done {
            kind: kind.to_owned(),
            id: id.to_owned(),
        });
    }

    /// Records work given up for good, for reconciliation to report, and closes the item
    /// (`item_kind`, `id`).
    pub fn give_up(&self, item_kind: &str, id: &str, unresolved: &Unresolved) {
        crate::metrics::LEDGER_UNRESOLVED
            .with_label_values(&[unresolved.kind.as_str()])
            .inc();
        tracing::error!(
            kind = %unresolved.kind,
            tenant_id = %unresolved.tenant_id,
            charge_id = %unresolved.charge_id,
            credits = unresolved.credits,
            "gave up ledger work whose exactly-once record is about to expire: the ledger may differ by these credits (reported by tollgate reconcile)"
        );
        if let Some(files) = &self.files {
            let files = files.lock().unwrap_or_else(|p| p.into_inner());
            let written = serde_json::to_vec(unresolved)
                .map_err(std::io::Error::other)
                .and_then(|mut line| {
                    line.push(b'\n');
                    OpenOptions::new()
                        .create(true)
                        .append(true)
                        .open(&files.unresolved)?
                        .write_all(&line)
                });
            if let Err(e) = written {
                tracing::error!(error = %e, "cannot record unresolved ledger work");
            }
        }
        self.done(item_kind, id);
    }

    fn append(&self, line: &Line) {
        let Some(files) = &self.files else { return };
        let mut files = files.lock().unwrap_or_else(|p| p.into_inner());
        if let Err(e) = files.journal.write_all(&line_bytes(line)) {
            tracing::error!(error = %e, "cannot journal ledger work: a restart now would forget it");
        }
    }
}

fn line_bytes(line: &Line) -> Vec<u8> {
    let mut bytes = serde_json::to_vec(line).unwrap_or_default();
    bytes.push(b'\n');
    bytes
}

fn read_open(path: &Path) -> std::io::Result<OpenWork> {
    let mut order: Vec<(String, String)> = Vec::new();
    let mut items: HashMap<(String, String), Value> = HashMap::new();
    if path.exists() {
        for line in BufReader::new(File::open(path)?).lines() {
            match serde_json::from_str::<Line>(&line?) {
                Ok(Line::Put { kind, id, item }) => {
                    let key = (kind, id);
                    if items.insert(key.clone(), item).is_none() {
                        order.push(key);
                    }
                }
                Ok(Line::Done { kind, id }) => {
                    items.remove(&(kind, id));
                }
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "skipping an unreadable ledger work line (torn by a crash?)")
                }
            }
        }
    }
    let mut open = OpenWork::new();
    for key in order {
        if let Some(item) = items.remove(&key) {
            open.entry(key.0).or_default().push((key.1, item));
        }
    }
    Ok(open)
}

/// The work still open in `data_dir`, read without touching the file (for `tollgate
/// reconcile` beside a stopped or running gateway).
pub fn still_open(data_dir: &Path) -> std::io::Result<OpenWork> {
    read_open(&data_dir.join(JOURNAL))
}

/// Everything given up for good in `data_dir` (read only; for `tollgate reconcile`).
pub fn unresolved(data_dir: &Path) -> std::io::Result<Vec<Unresolved>> {
    let path = data_dir.join(UNRESOLVED);
    if !path.exists() {
        return Ok(Vec::new());
    }
    let mut all = Vec::new();
    for line in BufReader::new(File::open(path)?).lines() {
        if let Ok(item) = serde_json::from_str(&line?) {
            all.push(item);
        }
    }
    Ok(all)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_work_survives_a_reopen_and_a_torn_line() {
        let dir = std::env::temp_dir().join(format!("tg-worklog-{}", uuid::Uuid::now_v7()));
        {
            let (log, open) = WorkLog::open(&dir).unwrap();
            assert!(open.is_empty());
            log.put("void", "a", &serde_json::json!({"n": 1}));
            log.put("void", "b", &serde_json::json!({"n": 2}));
            log.put("deferred", "c", &serde_json::json!({"n": 3}));
            log.put("void", "a", &serde_json::json!({"n": 4}));
            log.done("void", "b");
            let unresolved = Unresolved {
                at_ms: 1,
                kind: "deferred".into(),
                tenant_id: "t".into(),
                charge_id: "c".into(),
                credits: 5,
            };
            log.give_up("deferred", "c", &unresolved);
        }
        let path = dir.join(JOURNAL);
        let mut file = OpenOptions::new().append(true).open(&path).unwrap();
        file.write_all(br#"{"op":"put","kind":"void","id":"x","it"#)
            .unwrap();
        drop(file);
        let (_, open) = WorkLog::open(&dir).unwrap();
        assert_eq!(open.len(), 1, "{open:?}");
        assert_eq!(
            open["void"],
            vec![("a".into(), serde_json::json!({"n": 4}))]
        );
        assert_eq!(unresolved(&dir).unwrap().len(), 1);
        std::fs::remove_dir_all(dir).unwrap();
    }
}
