//! Microbenchmarks of the request path's own work: route matching among 1,000 endpoints,
//! JWT verification (HS256 and RS256), a charge on the embedded ledger, and a price
//! expression next to an integer price.
//! `cargo bench --bench hot_path`.

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use tollgate::auth::{mint, Role, Verifier};
use tollgate::config::{AuthConfig, Config, JwtAlgorithm, LedgerConfig};
use tollgate::ledger::{Charge, EmbeddedLedger, Ledger};
use tollgate::routing::Router;

fn routing(c: &mut Criterion) {
    let mut yaml = String::from(
        "services:\n  - name: api\n    upstream: http://127.0.0.1:9000\n    endpoints:\n",
    );
    for i in 0..1000 {
        yaml.push_str(&format!(
            "      - {{ method: GET, path: \"/v1/resource{i}/{{id}}\", credits: 1 }}\n"
        ));
    }
    yaml.push_str("      - { method: ANY, path: \"/search/*\", credits: 2 }\n");
    let config = Config::from_yaml(&yaml).expect("config");
    let router = Router::new(&config.services).expect("router");
    c.bench_function("route among 1,000 endpoints (param)", |b| {
        b.iter(|| {
            router.route(
                black_box("GET"),
                black_box("/api/proxy/api/v1/resource777/abc"),
                None,
            )
        })
    });
    c.bench_function("route among 1,000 endpoints (wildcard)", |b| {
        b.iter(|| {
            router.route(
                black_box("POST"),
                black_box("/api/proxy/api/search/a/b/c"),
                Some("q=1"),
            )
        })
    });
}

fn jwt(c: &mut Criterion) {
    let hs = AuthConfig {
        secret: "bench-secret-0123456789abcdef0123456789".into(),
        ..AuthConfig::default()
    };
    let verifier = Verifier::new(&hs).expect("verifier");
    let token = format!(
        "Bearer {}",
        mint(&hs, "acme", "u1", Role::User, 3600).expect("token")
    );
    c.bench_function("verify HS256, token seen before (cached)", |b| {
        b.iter(|| verifier.verify_header(Some(black_box(token.as_bytes()))))
    });

    let dir = std::env::temp_dir().join(format!("tollgate-bench-keys-{}", uuid::Uuid::now_v7()));
    std::fs::create_dir_all(&dir).expect("dir");
    let openssl = |args: &[&str]| {
        std::process::Command::new("openssl")
            .args(args)
            .current_dir(&dir)
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
    };
    if openssl(&[
        "genpkey",
        "-algorithm",
        "RSA",
        "-pkeyopt",
        "rsa_keygen_bits:2048",
        "-out",
        "private.pem",
    ]) && openssl(&[
        "pkey",
        "-in",
        "private.pem",
        "-pubout",
        "-out",
        "public.pem",
    ]) {
        let rs = AuthConfig {
            algorithm: JwtAlgorithm::RS256,
            public_key_file: Some(dir.join("public.pem")),
            private_key_file: Some(dir.join("private.pem")),
            ..AuthConfig::default()
        };
        let verifier = Verifier::new(&rs).expect("verifier");
        let token = format!(
            "Bearer {}",
            mint(&rs, "acme", "u1", Role::User, 3600).expect("token")
        );
        c.bench_function("verify RS256 (2048-bit), token seen before (cached)", |b| {
            b.iter(|| verifier.verify_header(Some(black_box(token.as_bytes()))))
        });
    } else {
        eprintln!("openssl not found: RS256 benchmark skipped");
    }
    let _ = std::fs::remove_dir_all(dir);
}

/// An API key as the gateway checks one (docs/DESIGN.md §API keys): the checksum, the
/// SHA-256, the lookup among 100,000 keys, the expiry; and a well-formed unknown key.
fn api_keys(c: &mut Criterion) {
    use tollgate::auth::keys::{self, ApiKeys, KeyRecord};
    let mut presented = Vec::new();
    let records: Vec<KeyRecord> = (0..100_000)
        .map(|i| {
            let new = keys::generate();
            if i == 50_000 {
                presented.push(new.key.clone());
            }
            KeyRecord {
                id: format!("key_{i}"),
                tenant_id: "acme".into(),
                name: "bench".into(),
                prefix: new.shown,
                hash: keys::hash_hex(&new.hash),
                services: None,
                budget: None,
                expires_at_ms: Some(i64::MAX),
                disabled: false,
                created_at_ms: 0,
                created_by: "u1".into(),
                rolled_from: None,
                budget_id: None,
                limits: Default::default(),
            }
        })
        .collect();
    let known = ApiKeys::from_records(records);
    let key = presented.pop().expect("a key");
    let check = |key: &str| {
        let hash = keys::parse(key).ok()?;
        let found = known.get(&hash)?;
        (!found.expired(0)).then_some(found.id.len())
    };
    c.bench_function("verify an API key among 100,000", |b| {
        b.iter(|| check(black_box(&key)))
    });
    let unknown = keys::generate().key;
    c.bench_function("refuse an unknown, well-formed API key", |b| {
        b.iter(|| check(black_box(&unknown)))
    });
}

fn ledger(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    let ledger = EmbeddedLedger::in_memory(&LedgerConfig::default());
    runtime
        .block_on(ledger.seed("acme", i64::MAX / 2))
        .expect("seed");
    let ids: Vec<String> = (0..1024)
        .map(|_| uuid::Uuid::now_v7().to_string())
        .collect();
    let mut i = 0;
    c.bench_function("embedded ledger charge", |b| {
        b.iter(|| {
            i = (i + 1) % ids.len();
            let charge = Charge {
                tenant_id: "acme",
                cost: 1,
                charge_id: &ids[i],
                idempotency: None,
                threshold: 100,
                fresh: true,
                budget: None,
                limits: &[],
            };
            runtime.block_on(ledger.charge(black_box(&charge)))
        })
    });
    // The same with a rate limit (never reached here) and an API key's budget checked in
    // the same step: what a limit check adds (docs/DESIGN.md §Limits).
    let limiter = [tollgate::ledger::Limiter {
        scope: "t",
        rate: Some(tollgate::vocab::RateLimit {
            requests_per_second: 1_000_000,
            burst: 1_000_000,
        }),
        max_concurrent: None,
    }];
    c.bench_function("embedded ledger charge with a rate limit", |b| {
        b.iter(|| {
            i = (i + 1) % ids.len();
            let charge = Charge {
                tenant_id: "acme",
                cost: 1,
                charge_id: &ids[i],
                idempotency: None,
                threshold: 100,
                fresh: true,
                budget: None,
                limits: &limiter,
            };
            runtime.block_on(ledger.charge(black_box(&charge)))
        })
    });
}

fn pricing(c: &mut Criterion) {
    use tollgate::pricing::{Call, PriceExpression};
    let call = Call {
        method: "GET",
        path: "/models/large/complete",
        pattern: "/models/{model}/complete",
        query: Some("pages=4&lang=en"),
        size: Some(2048),
        tenant: "acme",
        plan: None,
        headers: &[],
    };
    let fixed = tollgate::pricing::EndpointPrice::Fixed(5);
    c.bench_function("price, integer", |b| {
        b.iter(|| match black_box(&fixed) {
            tollgate::pricing::EndpointPrice::Fixed(credits) => Ok(*credits),
            tollgate::pricing::EndpointPrice::Expression(e) => e.evaluate(&call),
        })
    });
    for source in [
        "1 + int(request.query.pages)",
        "request.params.model == \"large\" ? 8 : 1",
    ] {
        let expression = PriceExpression::compile(source).expect("compiles");
        c.bench_function(&format!("price expression `{source}`"), |b| {
            b.iter(|| expression.evaluate(black_box(&call)))
        });
    }
}

criterion_group!(benches, routing, jwt, api_keys, ledger, pricing);
criterion_main!(benches);
