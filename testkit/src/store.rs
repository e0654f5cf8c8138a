//! The durable store as tests see it: the store a gateway writes to, opened from the test
//! process, and MongoDB behind a [`TcpGate`] the test can cut.

use super::gate::TcpGate;
use super::{wait_until, Gateway, RedisServer, Upstream};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tollgate::store::{MongoStore, SqliteStore, Store, UsageQuery};
use tollgate::vocab::UsageEvent;

/// The store a gateway writes to, opened from the test.
pub enum StoreUnderTest {
    Sqlite,
    Mongo { uri: String, db: String },
}

impl StoreUnderTest {
    pub fn env(&self) -> Vec<(String, String)> {
        match self {
            StoreUnderTest::Sqlite => vec![],
            StoreUnderTest::Mongo { uri, db } => vec![
                ("TOLLGATE_MONGODB_URI".into(), uri.clone()),
                ("TOLLGATE_MONGODB_DB".into(), db.clone()),
            ],
        }
    }

    pub async fn open(&self, data_dir: &Path) -> Arc<dyn Store> {
        match self {
            StoreUnderTest::Sqlite => Arc::new(SqliteStore::open(data_dir).unwrap()),
            StoreUnderTest::Mongo { uri, db } => {
                Arc::new(MongoStore::connect(uri, db).await.unwrap())
            }
        }
    }
}

pub async fn all_logs(store: &dyn Store) -> Vec<UsageEvent> {
    let mut logs = Vec::new();
    let mut query = UsageQuery {
        limit: 1000,
        ..Default::default()
    };
    loop {
        let page = store.usage_logs(&query).await.unwrap();
        let Some(last) = page.last() else { return logs };
        query.after = Some((last.timestamp_ms, last.id.clone()));
        logs.extend(page);
    }
}

pub async fn wait_for_logs(store: &dyn Store, count: usize, deadline: Duration) -> Vec<UsageEvent> {
    let mut logs = Vec::new();
    wait_until(&format!("{count} usage logs"), deadline, async || {
        logs = all_logs(store).await;
        logs.len() >= count
    })
    .await;
    logs
}

/// A gateway on Redis and on MongoDB reached through a [`TcpGate`], and the store opened
/// directly (not through the gate) for the test's own reads.
pub struct GatedMongo {
    pub gate: TcpGate,
    pub upstream: Upstream,
    pub redis: RedisServer,
    pub gateway: Gateway,
    pub store: Arc<dyn Store>,
    pub _closed: super::ClosedPort,
}

impl GatedMongo {
    /// Starts it all; `yaml` makes the gateway's config from the upstream's URL and a
    /// port that refuses connections (a dead upstream).
    pub async fn start(uri: &str, yaml: impl FnOnce(&str, u16) -> String) -> GatedMongo {
        let gate = TcpGate::start(super::mongo_addr(uri)).await;
        let db = super::unique_db();
        let gated = format!("mongodb://{}/?directConnection=true", gate.addr);
        let upstream = Upstream::start().await;
        let redis = RedisServer::start();
        let mut env = StoreUnderTest::Mongo {
            uri: gated,
            db: db.clone(),
        }
        .env();
        env.push(("TOLLGATE_REDIS_URL".into(), redis.url()));
        let closed = super::ClosedPort::new();
        let gateway = Gateway::start_with(&yaml(&upstream.url(), closed.port), env);
        let store = StoreUnderTest::Mongo {
            uri: uri.to_owned(),
            db,
        }
        .open(Path::new(""))
        .await;
        GatedMongo {
            gate,
            upstream,
            redis,
            gateway,
            store,
            _closed: closed,
        }
    }
}
