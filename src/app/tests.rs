//! Loading a config: each rule refused with the key at fault (the config's own rules and
//! those of the modules that own the meaning).

use super::*;
use crate::config::*;
use std::collections::HashMap;
use std::path::PathBuf;

fn env(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
    let map: HashMap<String, String> = vars
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    move |name| map.get(name).cloned()
}

fn shipped(name: &str) -> String {
    std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("conf")
            .join(name),
    )
    .unwrap()
}

#[test]
fn the_shipped_quickstart_config_is_valid() {
    let config = Config::from_yaml(&shipped("tollgate.yaml")).unwrap();
    validate(&config).unwrap();
    assert!(!config.is_distributed());
    assert_eq!(config.services[0].endpoints.len(), 3);
    crate::routing::Router::new(&config.services).unwrap();
    // The README's tour: the trial tenant's first create crosses its low-credit threshold
    // (a `low` warning needs a balance that starts above it), the second leaves too little
    // for a third, which is refused (`exhausted`).
    let trial = config.tenants.iter().find(|t| t.id == "trial").unwrap();
    let threshold = trial.low_credit_threshold.unwrap_or(100);
    let create = config.services[0]
        .endpoints
        .iter()
        .find(|e| e.path == "/notes/create")
        .and_then(|e| match e.credits {
            crate::config::Credits::Fixed(n) => Some(i64::from(n)),
            crate::config::Credits::Expression(_) => None,
        })
        .unwrap();
    assert!(trial.credits > threshold && trial.credits - create <= threshold);
    assert!((0..create).contains(&(trial.credits - 2 * create)));
}

#[test]
fn the_shipped_distributed_example_needs_a_real_secret() {
    let mut config = Config::from_yaml(&shipped("distributed.example.yaml")).unwrap();
    config.apply_env(env(&[])).unwrap();
    let err = validate(&config).unwrap_err().to_string();
    assert!(err.contains("auth.secret"), "{err}");
    config
        .apply_env(env(&[(
            "TOLLGATE_JWT_SECRET",
            "0123456789abcdef0123456789abcdef",
        )]))
        .unwrap();
    validate(&config).unwrap();
}

#[test]
fn services_and_tenants_alone_are_a_whole_config() {
    let config = Config::from_yaml(
        "services:\n  - { name: s, upstream: 'http://127.0.0.1:1', endpoints: [{ method: GET, path: /, credits: 1 }] }\ntenants:\n  - { id: t }\n",
    )
    .unwrap();
    validate(&config).unwrap();
    assert_eq!(config.listen, "0.0.0.0:8080");
    assert_eq!(config.ledger.timeout_ms, 250);
    assert_eq!(config.tenants[0].credits, 0);
    assert_eq!(
        Config::from_yaml("").unwrap().metrics_listen,
        "127.0.0.1:9091"
    );
}

#[test]
fn unknown_keys_are_refused_by_name() {
    let err = Config::from_yaml("listn: 0.0.0.0:1\n").unwrap_err();
    assert!(err.contains("listn"), "{err}");
    let err = Config::from_yaml("ledger:\n  timeout: 5\n").unwrap_err();
    assert!(err.contains("timeout"), "{err}");
}

#[test]
fn bad_values_are_refused_by_key() {
    let cases = [
        ("listen: nowhere\n", "listen"),
        ("ledger:\n  timeout_ms: 0\n", "ledger.timeout_ms"),
        ("admin:\n  token_ttl_secs: 604801\n", "admin.token_ttl_secs"),
        ("client_read_timeout_ms: 0\n", "client_read_timeout_ms"),
        ("tenants:\n  - { id: 'a{b}' }\n", "tenants[0].id"),
        ("tenants:\n  - { id: a, credits: -1 }\n", "tenants[0].credits"),
        ("services:\n  - { name: s, upstream: 'ftp://x', endpoints: [{ method: GET, path: /, credits: 1 }] }\n", "services[0].upstream"),
        ("services:\n  - { name: s, upstream: 'http://x', endpoints: [{ method: get, path: /, credits: 1 }] }\n", "services[0].endpoints[0]"),
        ("services:\n  - { name: s, upstream: 'http://x', endpoints: [] }\n", "services[0].endpoints"),
        ("services:\n  - { name: 'a/b', upstream: 'http://x', endpoints: [{ method: GET, path: /, credits: 1 }] }\n", "services[0].name"),
        ("auth:\n  algorithm: RS256\n", "auth.public_key_file"),
        ("services:\n  - { name: s, upstream: 'http://x', endpoints: [{ method: GET, path: /, credits: 1, reserve: 5 }] }\n", "services[0].endpoints[0].reserve"),
        ("services:\n  - { name: s, upstream: 'http://x', endpoints: [{ method: GET, path: /, credits: 1, settle: {} }] }\n", "services[0].endpoints[0].settle"),
        ("services:\n  - { name: s, upstream: 'http://x', endpoints: [{ method: GET, path: /, credits: 1, settle: { json: 'response.body.n +' } }] }\n", "services[0].endpoints[0].settle.json"),
        ("services:\n  - { name: s, upstream: 'http://x', endpoints: [{ method: GET, path: /, credits: 1, settle: { sse: 'request.size' } }] }\n", "services[0].endpoints[0].settle.sse"),
        ("services:\n  - { name: s, upstream: 'http://x', endpoints: [{ method: GET, path: /, credits: 1, settle: { header: 'a b' } }] }\n", "services[0].endpoints[0].settle.header"),
        ("services:\n  - { name: s, upstream: 'http://x', endpoints: [{ method: GET, path: /, credits: 1, overage: allow }] }\n", "services[0].endpoints[0].overage"),
        ("settle_body_max_bytes: 10\n", "settle_body_max_bytes"),
    ];
    for (yaml, key) in cases {
        let err = validate(&Config::from_yaml(yaml).unwrap())
            .unwrap_err()
            .to_string();
        assert!(err.contains(&format!("`{key}`")), "{yaml:?} gave {err}");
    }
    let err = Config::from_yaml("ledger:\n  timeout_ms: soon\n").unwrap_err();
    assert!(err.contains("timeout_ms"), "{err}");
}

#[test]
fn on_ledger_error_is_deny_or_allow() {
    let service = |mode: &str| {
        format!("services:\n  - {{ name: s, upstream: 'http://x', on_ledger_error: {mode}, endpoints: [{{ method: GET, path: /, credits: 1 }}] }}\n")
    };
    let config = Config::from_yaml(&service("allow")).unwrap();
    validate(&config).unwrap();
    assert_eq!(config.services[0].on_ledger_error, OnLedgerError::Allow);
    let err = Config::from_yaml(&service("maybe")).unwrap_err();
    assert!(err.contains("on_ledger_error"), "{err}");
}

#[test]
fn environment_overrides_the_file() {
    let mut config = Config::default();
    config
        .apply_env(env(&[
            ("TOLLGATE_LISTEN", "127.0.0.1:1234"),
            ("TOLLGATE_REDIS_URL", "redis://127.0.0.1:1/"),
            ("TOLLGATE_DATA_DIR", "/tmp/x"),
            ("TOLLGATE_JWT_SECRET", "s"),
        ]))
        .unwrap();
    assert_eq!(config.listen, "127.0.0.1:1234");
    assert_eq!(config.data_dir, PathBuf::from("/tmp/x"));
    assert!(config.is_distributed());
    let err = validate(&config).unwrap_err().to_string();
    assert!(err.contains("at least 32 bytes"), "{err}");
    config
        .apply_env(env(&[("TOLLGATE_REDIS_URL", "")]))
        .unwrap();
    assert!(!config.is_distributed());
    assert!(config
        .apply_env(env(&[("TOLLGATE_THREADS", "many")]))
        .is_err());
}

#[test]
fn the_demo_secret_is_refused_with_redis() {
    let mut config = Config::default();
    config.ledger.redis_url = Some("redis://127.0.0.1/".into());
    let err = validate(&config).unwrap_err().to_string();
    assert!(err.contains("demo secret"), "{err}");
}

#[test]
fn a_redis_cluster_is_named_by_its_seed_nodes() {
    let mut config = Config::default();
    config.auth.secret = "x".repeat(32);
    config
        .apply_env(env(&[(
            "TOLLGATE_REDIS_CLUSTER_NODES",
            "redis://127.0.0.1:7000, redis://127.0.0.1:7001,",
        )]))
        .unwrap();
    assert_eq!(
        config.ledger.redis_cluster_nodes,
        ["redis://127.0.0.1:7000", "redis://127.0.0.1:7001"]
    );
    assert!(config.ledger.uses_redis() && config.is_distributed());
    validate(&config).unwrap();

    config.ledger.redis_cluster_nodes = vec!["redis://a".into(), "http://b".into()];
    let err = validate(&config).unwrap_err().to_string();
    assert!(err.contains("`ledger.redis_cluster_nodes[1]`"), "{err}");

    config.ledger.redis_cluster_nodes = vec!["redis://a".into()];
    config.ledger.redis_url = Some("redis://a".into());
    let err = validate(&config).unwrap_err().to_string();
    assert!(err.contains("`ledger.redis_cluster_nodes`"), "{err}");

    config
        .apply_env(env(&[("TOLLGATE_REDIS_CLUSTER_NODES", "")]))
        .unwrap();
    config.ledger.redis_url = None;
    assert!(!config.ledger.uses_redis());
}
