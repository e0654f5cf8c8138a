//! The usage journal: an append-only file (`usage.journal` under the data dir) of batches
//! the store could not take, one JSON line each, replayed in order when the store answers
//! again and truncated once fully replayed. Each line keeps the stream and sequence number
//! its batch was given, so a replay (even after a crash mid-replay) applies it exactly once.

use crate::vocab::UsageEvent;
use serde::{Deserialize, Serialize};
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// One journaled batch.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Entry {
    /// The pipeline stream the batch belongs to (its sequence guard in the store).
    pub stream: String,
    pub seq: u64,
    pub events: Vec<UsageEvent>,
}

#[derive(Debug)]
pub struct Journal {
    path: PathBuf,
    file: File,
    /// Bytes in the file.
    len: u64,
    /// Refuse appends past this size (disk is finite; a drop is counted and logged).
    max_bytes: u64,
}

impl Journal {
    pub fn open(path: &Path, max_bytes: u64) -> std::io::Result<Journal> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let file = OpenOptions::new()
            .create(true)
            .read(true)
            .append(true)
            .open(path)?;
        let len = repair_torn_tail(&file, path)?;
        Ok(Journal {
            path: path.to_owned(),
            file,
            len,
            max_bytes,
        })
    }

    /// The journal as it is, for reading beside the gateway that writes it (`tollgate
    /// reconcile`): never repaired, never appended to.
    pub fn read_only(path: &Path) -> std::io::Result<Journal> {
        let file = File::open(path)?;
        let len = file.metadata()?.len();
        Ok(Journal {
            path: path.to_owned(),
            file,
            len,
            max_bytes: 0,
        })
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn len(&self) -> u64 {
        self.len
    }

    /// Appends one batch as one line (written whole or, on a crash, torn and skipped).
    pub fn append(&mut self, entry: &Entry) -> std::io::Result<()> {
        let mut line = serde_json::to_vec(entry).map_err(std::io::Error::other)?;
        line.push(b'\n');
        if self.len + line.len() as u64 > self.max_bytes {
            return Err(std::io::Error::other(format!(
                "usage journal {} is full ({} bytes)",
                self.path.display(),
                self.max_bytes
            )));
        }
        if let Err(e) = self.file.write_all(&line) {
            // A partial line (disk full) would swallow the next append: cut it off.
            if let Err(cut) = self.file.set_len(self.len) {
                tracing::error!(path = %self.path.display(), error = %cut, "cannot cut a partly written usage journal line");
            }
            return Err(e);
        }
        self.len += line.len() as u64;
        Ok(())
    }

    /// Reads the entries from byte `from` up to the current end, returning them with the
    /// offset each one ends at. Unreadable (torn) lines are skipped with a warning.
    pub fn read_from(&self, from: u64, limit: usize) -> std::io::Result<Vec<(Entry, u64)>> {
        let mut reader = BufReader::new(File::open(&self.path)?);
        reader.seek(SeekFrom::Start(from))?;
        let mut entries = Vec::new();
        let mut offset = from;
        let mut line = String::new();
        while entries.len() < limit && offset < self.len {
            line.clear();
            let n = reader.read_line(&mut line)?;
            if n == 0 {
                break;
            }
            offset += n as u64;
            match serde_json::from_str::<Entry>(line.trim_end()) {
                Ok(entry) => entries.push((entry, offset)),
                Err(e) => {
                    tracing::warn!(path = %self.path.display(), offset, error = %e, "skipping an unreadable usage journal line")
                }
            }
        }
        Ok(entries)
    }

    /// Empties the journal (everything in it has reached the store).
    pub fn truncate(&mut self) -> std::io::Result<()> {
        self.file.set_len(0)?;
        self.file.sync_all()?;
        self.len = 0;
        Ok(())
    }
}

/// Cuts a torn last line (a crash or a full disk mid-append) so the next append starts a
/// line of its own; returns the file's length after. The torn batch itself is lost (it
/// cannot be parsed): logged with its size, and reconciliation reports its credits.
fn repair_torn_tail(file: &File, path: &Path) -> std::io::Result<u64> {
    let len = file.metadata()?.len();
    let mut end = len;
    let mut chunk = vec![0u8; 64 * 1024];
    let mut reader = file;
    while end > 0 {
        let start = end.saturating_sub(chunk.len() as u64);
        let buf = &mut chunk[..(end - start) as usize];
        reader.seek(SeekFrom::Start(start))?;
        std::io::Read::read_exact(&mut reader, buf)?;
        match buf.iter().rposition(|b| *b == b'\n') {
            Some(i) => {
                end = start + i as u64 + 1;
                break;
            }
            None => end = start,
        }
    }
    if end < len {
        tracing::error!(path = %path.display(), torn_bytes = len - end, "usage journal ended in a torn line (crash or full disk mid-write): cut off; the events in it are lost");
        file.set_len(end)?;
        file.sync_all()?;
    }
    Ok(end)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(seq: u64) -> Entry {
        Entry {
            stream: "s".into(),
            seq,
            events: Vec::new(),
        }
    }

    /// A crash mid-append leaves a torn line; the next run cuts it, so the batch appended
    /// after the restart is read back instead of being glued to the torn bytes.
    #[test]
    fn a_torn_last_line_does_not_swallow_the_next_batch() {
        let dir = std::env::temp_dir().join(format!("tg-usage-journal-{}", uuid::Uuid::now_v7()));
        let path = dir.join("usage.journal");
        let mut journal = Journal::open(&path, u64::MAX).unwrap();
        journal.append(&entry(1)).unwrap();
        let whole = journal.len();
        drop(journal);
        let mut file = OpenOptions::new().append(true).open(&path).unwrap();
        file.write_all(br#"{"stream":"s","seq":2,"ev"#).unwrap();
        drop(file);
        let mut journal = Journal::open(&path, u64::MAX).unwrap();
        assert_eq!(journal.len(), whole);
        journal.append(&entry(3)).unwrap();
        let seqs: Vec<u64> = journal
            .read_from(0, 10)
            .unwrap()
            .into_iter()
            .map(|(e, _)| e.seq)
            .collect();
        assert_eq!(seqs, [1, 3]);
        std::fs::remove_dir_all(dir).unwrap();
    }
}
