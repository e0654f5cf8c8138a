//! Flush throughput of the embedded (SQLite) store: usage events per second written in
//! batches the way the pipeline writes them (500 per `insert_usage`, two tenants, each
//! batch moving durable balances). A benchmark, run with `cargo bench --bench store_flush`;
//! it prints events/s for batch sizes 50, 500 and 2000.

use std::time::Instant;
use tollgate::store::{NewTenant, SqliteStore, Store, UsageBatch};
use tollgate::vocab::TenantStatus;
use tollgate::vocab::UsageEvent;

fn event(i: u64) -> UsageEvent {
    UsageEvent {
        id: uuid::Uuid::now_v7().to_string(),
        tenant_id: if i % 2 == 0 {
            "acme".into()
        } else {
            "zeta".into()
        },
        user_id: "u1".into(),
        key_id: None,
        service: "notes".into(),
        endpoint: "/notes/{id}".into(),
        method: "GET".into(),
        credits_used: 1,
        plan_id: None,
        reserved: None,
        shortfall: 0,
        shadow_credits: None,
        balance_after: 0,
        status: 200,
        latency_ms: 1.0,
        request_id: uuid::Uuid::now_v7().to_string(),
        idempotency_key: None,
        refunded: false,
        timestamp_ms: i as i64,
    }
}

fn main() {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async {
        for batch_size in [50u64, 500, 2000] {
            let dir = std::env::temp_dir().join(format!("tollgate-bench-{}", uuid::Uuid::now_v7()));
            let store = SqliteStore::open(&dir).expect("store");
            store.migrate().await.expect("migrate");
            for id in ["acme", "zeta"] {
                let tenant = NewTenant { id, name: id, status: TenantStatus::Active, initial_credits: 1 << 40, actor: "bench" };
                store.ensure_tenant(&tenant).await.expect("tenant");
            }
            let total = 100_000u64;
            let batches: Vec<Vec<UsageEvent>> = (0..total / batch_size)
                .map(|b| (0..batch_size).map(|i| event(b * batch_size + i)).collect())
                .collect();
            let started = Instant::now();
            for (seq, events) in batches.iter().enumerate() {
                let batch = UsageBatch { pipeline_id: "bench", seq: seq as u64 + 1, events };
                store.insert_usage(&batch).await.expect("insert");
            }
            let secs = started.elapsed().as_secs_f64();
            println!("embedded store, batch {batch_size:>4}: {total} events in {secs:.2} s = {:.0} events/s", total as f64 / secs);
            let _ = std::fs::remove_dir_all(dir);
        }
    });
}
