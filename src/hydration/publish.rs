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
use std::sync::Arc;
use std::time::Duration;

/// How often the pending credits are published: also how stale they may be, so hydration
/// waits a little over this for a fresh publish.
pub const PUBLISH_TICK: Duration = Duration::from_millis(100);

pub struct PendingPublisher {
    pub ledger: Arc<dyn Ledger>,
    pub usage: Arc<dyn UsageSink>,
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

#[async_trait::async_trait]
impl BackgroundService for PendingPublisher {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let Some(pipeline) = self.usage.pipeline_id().map(str::to_owned) else {
            return;
        };
        let mut published = HashMap::new();
        loop {
            let now = self.usage.pending_snapshot();
            match self
                .ledger
                .publish_pending(&pipeline, &changes(&published, &now))
                .await
            {
                Ok(true) => published = now,
                // The ledger lost us (flushed): everything again at the next tick.
                Ok(false) => published.clear(),
                Err(e) => {
                    tracing::debug!(error = %e, "cannot publish pending credits");
                    published.clear();
                }
            }
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
