//! Publishing this gateway's pending credits (charged by the ledger, not yet in the store)
//! through a shared ledger, so that any process hydrating a tenant counts every replica's
//! unflushed usage, not only its own (see the module above). Every [`PUBLISH_TICK`] the
//! tenants whose pending changed are written, then a heartbeat; after a flush of the ledger
//! everything is written again.

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

/// What changed between two snapshots (0 for a tenant no longer pending).
fn changes(before: &HashMap<String, i64>, now: &HashMap<String, i64>) -> Vec<(String, i64)> {
    let mut changed: Vec<(String, i64)> = now
        .iter()
        .filter(|(t, c)| before.get(*t) != Some(*c))
        .map(|(t, c)| (t.clone(), *c))
        .collect();
    changed.extend(
        before
            .keys()
            .filter(|t| !now.contains_key(*t))
            .map(|t| (t.clone(), 0)),
    );
    changed
}

impl PendingPublisher {
    pub fn new(ledger: Arc<dyn Ledger>, usage: Arc<dyn UsageSink>) -> PendingPublisher {
        PendingPublisher {
            ledger,
            usage,
            published: Arc::default(),
        }
    }

    /// Publishes what changed since the last publish that succeeded, through `ledger`.
    pub async fn publish_through(&self, ledger: &dyn Ledger) {
        let Some(pipeline) = self.usage.pipeline_id() else {
            return;
        };
        let now = self.usage.pending_snapshot();
        let changed = {
            let published = self.published.lock().unwrap_or_else(|p| p.into_inner());
            changes(&published, &now)
        };
        let result = ledger.publish_pending(pipeline, &changed).await;
        let mut published = self.published.lock().unwrap_or_else(|p| p.into_inner());
        match result {
            Ok(true) => *published = now,
            // The ledger lost us (flushed): everything again next time.
            Ok(false) => published.clear(),
            // Some of it may not have landed: the next diff repeats it (writes are absolute).
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
    fn only_what_changed_is_published() {
        let before = HashMap::from([("a".to_owned(), 5), ("b".to_owned(), 3)]);
        let now = HashMap::from([("a".to_owned(), 5), ("c".to_owned(), 2)]);
        let mut changed = changes(&before, &now);
        changed.sort();
        assert_eq!(changed, [("b".to_owned(), 0), ("c".to_owned(), 2)]);
    }
}
