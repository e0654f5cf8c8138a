//! Batch sequence numbers that never go backwards, across restarts and a clock set back.
//!
//! The store moves a tenant's durable balance only for a batch numbered above the last one
//! it applied from the same stream, so a number below that would insert its logs and
//! silently skip the balance. Numbers are the microsecond clock kept strictly increasing,
//! and a high-water mark persisted in `usage.seq` under the data dir bounds them from below
//! at the next start. The mark is leased ahead by [`LEASE_US`] so it is rewritten (and
//! synced) about once a minute, not once per batch.

use std::path::{Path, PathBuf};

/// How far ahead of the last issued number the persisted mark is set: one write and fsync
/// per minute of issued numbers, and a restart jumps at most this far ahead.
pub const LEASE_US: u64 = 60_000_000;

#[derive(Debug)]
pub struct SeqSource {
    path: PathBuf,
    last: u64,
    /// The persisted mark: every number issued so far is below it.
    leased: u64,
}

pub fn clock_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

impl SeqSource {
    /// Opens the mark in `data_dir`; every number issued will be above both it and `floor`
    /// (the highest number the journal still holds).
    pub fn open(data_dir: &Path, floor: u64) -> std::io::Result<SeqSource> {
        let path = data_dir.join("usage.seq");
        let mark = match std::fs::read_to_string(&path) {
            Ok(text) => text.trim().parse::<u64>().map_err(|e| {
                std::io::Error::other(format!("{} is not a sequence number: {e}", path.display()))
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
            Err(e) => return Err(e),
        };
        let last = mark.max(floor);
        Ok(SeqSource {
            path,
            last,
            leased: last,
        })
    }

    /// The next number after every one issued before, here or in an earlier run. A mark
    /// that cannot be written is logged and tried again at the next number: the batch is
    /// still numbered (in order within this run) rather than lost.
    pub fn next(&mut self, now_us: u64) -> u64 {
        let seq = now_us.max(self.last + 1);
        if seq >= self.leased {
            let lease = seq + LEASE_US;
            match write_synced(&self.path, lease) {
                Ok(()) => self.leased = lease,
                Err(e) => {
                    tracing::error!(path = %self.path.display(), error = %e, "cannot persist the usage sequence mark: a restart with the clock set back could reuse numbers")
                }
            }
        }
        self.last = seq;
        seq
    }
}

/// Replaces the mark whole (write a temp file, fsync, rename): a crash leaves the old mark
/// or the new one, never a torn number.
fn write_synced(path: &Path, mark: u64) -> std::io::Result<()> {
    let tmp = path.with_extension("seq.tmp");
    {
        let file = std::fs::File::create(&tmp)?;
        std::io::Write::write_all(&mut &file, mark.to_string().as_bytes())?;
        file.sync_all()?;
    }
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir() -> PathBuf {
        let dir = std::env::temp_dir().join(format!("tg-seq-{}", uuid::Uuid::now_v7()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    /// A restart whose clock is an hour behind still numbers above the last run.
    #[test]
    fn never_goes_back_across_a_restart_with_the_clock_behind() {
        let dir = dir();
        let hour = 3_600_000_000;
        let mut seqs = SeqSource::open(&dir, 0).unwrap();
        let a = seqs.next(10 * hour);
        let b = seqs.next(10 * hour);
        assert!(b > a);
        drop(seqs);
        let mut seqs = SeqSource::open(&dir, 0).unwrap();
        let c = seqs.next(9 * hour);
        assert!(c > b, "{c} after {b}");
        // Within the lease, no write: the mark stays one lease ahead of the first number.
        assert_eq!(
            std::fs::read_to_string(dir.join("usage.seq")).unwrap(),
            (c + LEASE_US).to_string()
        );
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn starts_above_the_journal_and_refuses_a_garbled_mark() {
        let dir = dir();
        let mut seqs = SeqSource::open(&dir, 500).unwrap();
        assert_eq!(seqs.next(7), 501);
        std::fs::write(dir.join("usage.seq"), "12x").unwrap();
        let err = SeqSource::open(&dir, 0).unwrap_err();
        assert!(err.to_string().contains("usage.seq"), "{err}");
        std::fs::remove_dir_all(dir).unwrap();
    }
}
