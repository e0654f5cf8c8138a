//! Charges on their way to or back from the ledger. Hydration must not read "pending"
//! while a charge that the old ledger state already took is still in flight (its credits
//! are counted as pending only once its reply is back), or the tenant gets them twice.
//!
//! Two counting slots and an epoch, as in RCU: a charge counts itself in the current
//! epoch's slot for as long as it is in flight; hydration moves the epoch on and waits for
//! the previous slot to empty. Charges that start after the move count in the other slot,
//! so the wait ends even under constant traffic.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

#[derive(Default)]
pub struct InFlight {
    slots: [AtomicU64; 2],
    epoch: AtomicUsize,
    /// One quiescence at a time, so two waits never share a slot.
    waits: tokio::sync::Mutex<()>,
}

/// Counts one charge in flight until dropped (also when the request is abandoned).
pub struct Ticket<'a> {
    slots: &'a [AtomicU64; 2],
    slot: usize,
}

impl Drop for Ticket<'_> {
    fn drop(&mut self) {
        self.slots[self.slot].fetch_sub(1, Ordering::SeqCst);
    }
}

impl InFlight {
    pub fn enter(&self) -> Ticket<'_> {
        let slot = self.epoch.load(Ordering::SeqCst) % 2;
        self.slots[slot].fetch_add(1, Ordering::SeqCst);
        Ticket {
            slots: &self.slots,
            slot,
        }
    }

    /// Waits until every charge that was in flight when called has finished, or `limit`
    /// passes (then returns false).
    pub async fn quiesce(&self, limit: Duration) -> bool {
        let _one_at_a_time = self.waits.lock().await;
        let previous = self.epoch.fetch_add(1, Ordering::SeqCst) % 2;
        let deadline = tokio::time::Instant::now() + limit;
        while self.slots[previous].load(Ordering::SeqCst) > 0 {
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn waits_for_earlier_charges_only() {
        let inflight = InFlight::default();
        let earlier = inflight.enter();
        let waiting = inflight.quiesce(Duration::from_secs(1));
        tokio::pin!(waiting);
        assert!(
            tokio::time::timeout(Duration::from_millis(10), &mut waiting)
                .await
                .is_err()
        );
        let _later = inflight.enter(); // counts in the new epoch: must not hold the wait
        drop(earlier);
        assert!(waiting.await);
        let other = InFlight::default();
        let _held = other.enter();
        assert!(
            !other.quiesce(Duration::from_millis(50)).await,
            "gives up at the limit"
        );
    }
}
