//! Publishing this gateway's pending credits (charged by the ledger, not yet in the store)
//! through a shared ledger, so that any process hydrating a tenant counts every replica's
//! unflushed usage, not only its own (see the module above). Every [`PUBLISH_TICK`] every
//! tenant this gateway holds credits for is written (absolute values), those it no longer
//! holds any for are cleared, then a heartbeat. Writing all of them, not only what changed,
//! repairs within a tick a tenant's pending lost apart from the registry: on a Redis
//! Cluster one master can be flushed, or fail over without its last writes, while the
//! registry on another master still knows this pipeline (docs/DESIGN.md §Hydration). It
//! costs little: a tenant with usage in flight changes its pending nearly every tick anyway.

use crate::ledger::Ledger;
use crate::usage::UsageSink;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How often the pending credits are published: also how stale they may be, so hydration
/// waits a little over this for a fresh publish.
pub const PUBLISH_TICK: Duration = Duration::from_millis(100);

/// Publishes through the ledger it was built with, every [`PUBLISH_TICK`]; clones share
/// what was last published, so the server can make a last publish after the usage queue
/// drained at shutdown (through a fresh connection: the ledger's own died with Pingora's
/// runtimes).
#[derive(Clone)]
pub struct PendingPublisher {
    ledger: Arc<dyn Ledger>,
    usage: Arc<dyn UsageSink>,
    /// What the ledger holds from us, as of the last publish that succeeded.
    published: Arc<Mutex<HashMap<String, i64>>>,
}

/// What to write: every tenant held now, and 0 for each one held before but not now.
fn to_publish(before: &HashMap<String, i64>, now: &HashMap<String, i64>) -> Vec<(String, i64)> {
    let mut writes: Vec<(String, i64)> = now.iter().map(|(t, c)| (t.clone(), *c)).collect();
    writes.extend(
        before
            .keys()
            .filter(|t| !now.contains_key(*t))
            .map(|t| (t.clone(), 0)),
    );
    writes
}

impl PendingPublisher {
    pub fn new(ledger: Arc<dyn Ledger>, usage: Arc<dyn UsageSink>) -> PendingPublisher {
        PendingPublisher {
            ledger,
            usage,
            published: Arc::default(),
        }
    }

    /// Publishes what this gateway holds, and clears what it held at the last publish that
    /// succeeded but no longer does, through `ledger`.
    pub async fn publish_through(&self, ledger: &dyn Ledger) {
        let Some(pipeline) = self.usage.pipeline_id() else {
            return;
        };
        let now = self.usage.pending_snapshot();
        let writes = {
            let published = self.published.lock().unwrap_or_else(|p| p.into_inner());
            to_publish(&published, &now)
        };
        let result = ledger.publish_pending(pipeline, &writes).await;
        let mut published = self.published.lock().unwrap_or_else(|p| p.into_inner());
        match result {
            Ok(true) => *published = now,
            // The ledger lost us (flushed): nothing of ours is left there to clear.
            Ok(false) => *published = now,
            // Some of it may not have landed: the next tick repeats it (writes are absolute).
            Err(e) => tracing::debug!(error = %e, "cannot publish pending credits"),
        }
    }
}

#[async_trait::async_trait]
impl BackgroundService for PendingPublisher {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        if self.usage.pipeline_id().is_none() {
            return;
        }
        loop {
            self.publish_through(&*self.ledger).await;
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = tokio::time::sleep(PUBLISH_TICK) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn everything_held_is_published_and_what_left_is_cleared() {
        let before = HashMap::from([("a".to_owned(), 5), ("b".to_owned(), 3)]);
        let now = HashMap::from([("a".to_owned(), 5), ("c".to_owned(), 2)]);
        let mut writes = to_publish(&before, &now);
        writes.sort();
        assert_eq!(
            writes,
            [
                ("a".to_owned(), 5),
                ("b".to_owned(), 0),
                ("c".to_owned(), 2)
            ]
        );
    }
}
