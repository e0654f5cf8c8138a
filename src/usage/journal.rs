//! The usage journal: an append-only file (`usage.journal` under the data dir) of batches
//! the store could not take, one JSON line each, replayed in order when the store answers
//! again and truncated once fully replayed. Each line keeps the stream and sequence number
//! its batch was given, so a replay (even after a crash mid-replay) applies it exactly once.

use super::UsageEvent;
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
        let len = file.metadata()?.len();
        Ok(Journal {
            path: path.to_owned(),
            file,
            len,
            max_bytes,
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
        self.file.write_all(&line)?;
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
