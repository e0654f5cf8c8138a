//! The ledger contract, checked directly against both implementations: the embedded ledger
//! and the Redis scripts on a private `redis-server`.

mod common;

use common::RedisServer;
use tollgate::config::LedgerConfig;
use tollgate::ledger::{
    Charge, ChargeOutcome, EmbeddedLedger, Ledger, RedisLedger, Void, VoidOutcome,
};

fn charge<'a>(tenant: &'a str, id: &'a str, cost: i64, key: Option<&'a str>) -> Charge<'a> {
    Charge {
        tenant_id: tenant,
        cost,
        charge_id: id,
        idempotency_key: key,
    }
}

fn void<'a>(
    tenant: &'a str,
    id: &'a str,
    applied_cost: Option<i64>,
    key: Option<&'a str>,
) -> Void<'a> {
    Void {
        tenant_id: tenant,
        charge_id: id,
        idempotency_key: key,
        applied_cost,
    }
}

async fn contract(l: &dyn Ledger) {
    // Seeding only sets a missing balance.
    assert_eq!(
        l.charge(&charge("t", "c0", 5, None)).await.unwrap(),
        ChargeOutcome::NoBalance
    );
    l.seed("t", 10).await.unwrap();
    l.seed("t", 999).await.unwrap();
    assert_eq!(l.balance("t").await.unwrap(), Some(10));
    assert_eq!(l.balance("nobody").await.unwrap(), None);

    // Check-and-decrement, never below zero.
    assert_eq!(
        l.charge(&charge("t", "c1", 7, None)).await.unwrap(),
        ChargeOutcome::Charged { balance: 3 }
    );
    assert_eq!(
        l.charge(&charge("t", "c2", 4, None)).await.unwrap(),
        ChargeOutcome::Insufficient { balance: 3 }
    );

    // A refund of a charge seen applied happens once.
    assert_eq!(
        l.void(&void("t", "c1", Some(7), None)).await.unwrap(),
        VoidOutcome::Refunded { balance: 10 }
    );
    assert_eq!(
        l.void(&void("t", "c1", Some(7), None)).await.unwrap(),
        VoidOutcome::AlreadyVoided
    );
    assert_eq!(l.balance("t").await.unwrap(), Some(10));

    // A void of a charge never seen spends its id: the late charge takes nothing.
    assert_eq!(
        l.void(&void("t", "late", None, None)).await.unwrap(),
        VoidOutcome::NotApplied
    );
    assert_eq!(
        l.charge(&charge("t", "late", 1, None)).await.unwrap(),
        ChargeOutcome::Void
    );
    assert_eq!(l.balance("t").await.unwrap(), Some(10));

    // Idempotency keys: paid once, per tenant; a refund frees the key for a fresh charge.
    assert_eq!(
        l.charge(&charge("t", "a", 2, Some("k"))).await.unwrap(),
        ChargeOutcome::Charged { balance: 8 }
    );
    assert_eq!(
        l.charge(&charge("t", "b", 2, Some("k"))).await.unwrap(),
        ChargeOutcome::Replayed { balance: 8 }
    );
    l.seed("u", 5).await.unwrap();
    assert_eq!(
        l.charge(&charge("u", "a2", 2, Some("k"))).await.unwrap(),
        ChargeOutcome::Charged { balance: 3 }
    );
    l.void(&void("t", "a", Some(2), Some("k"))).await.unwrap();
    assert_eq!(
        l.charge(&charge("t", "c", 2, Some("k"))).await.unwrap(),
        ChargeOutcome::Charged { balance: 8 }
    );
}

#[tokio::test]
async fn embedded_ledger_keeps_the_contract() {
    contract(&EmbeddedLedger::in_memory(&LedgerConfig::default())).await;
}

#[tokio::test]
async fn redis_ledger_keeps_the_contract() {
    let redis = RedisServer::start();
    let ledger = RedisLedger::new(&redis.url(), &LedgerConfig::default()).unwrap();
    contract(&ledger).await;
    // A charge that applied but whose answer was lost (timeout) is found by its record.
    assert_eq!(
        ledger.charge(&charge("t", "lost", 3, None)).await.unwrap(),
        ChargeOutcome::Charged { balance: 5 }
    );
    assert_eq!(
        ledger.void(&void("t", "lost", None, None)).await.unwrap(),
        VoidOutcome::Refunded { balance: 8 }
    );
    // Keys carry the tenant's hash tag.
    let mut conn = redis.connection().await;
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("*")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(
        keys.iter()
            .all(|k| k.starts_with("tg:{t}:") || k.starts_with("tg:{u}:")),
        "{keys:?}"
    );
}

#[tokio::test]
async fn the_embedded_journal_survives_a_reopen() {
    let dir = std::env::temp_dir().join(format!("tollgate-ledger-{}", uuid::Uuid::now_v7()));
    let config = LedgerConfig::default();
    {
        let l = EmbeddedLedger::open(&dir, &config).unwrap();
        l.seed("t", 10).await.unwrap();
        l.charge(&charge("t", "a", 4, Some("k"))).await.unwrap();
        l.close().await;
    }
    let l = EmbeddedLedger::open(&dir, &config).unwrap();
    assert_eq!(l.balance("t").await.unwrap(), Some(6));
    assert_eq!(
        l.charge(&charge("t", "b", 4, Some("k"))).await.unwrap(),
        ChargeOutcome::Replayed { balance: 6 }
    );
    std::fs::remove_dir_all(dir).unwrap();
}
