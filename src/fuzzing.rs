//! Entry points for the fuzz targets in `fuzz/` (run by `scripts/fuzz.sh` with `cargo
//! fuzz`), shared with a regression test that replays every saved input on stable Rust.
//! Each takes arbitrary bytes and must neither panic nor accept what it should refuse.

use crate::auth::Verifier;
use crate::config::{AuthConfig, Config, EndpointConfig, ServiceConfig};
use crate::routing::{RouteError, Router};
use std::sync::OnceLock;

fn router() -> &'static Router {
    static ROUTER: OnceLock<Router> = OnceLock::new();
    ROUTER.get_or_init(|| {
        let endpoint = |method: &str, path: &str| EndpointConfig {
            method: method.into(),
            path: path.into(),
            credits: 1.into(),
            reserve: None,
            settle: None,
            overage: Default::default(),
            shadow_credits: None,
        };
        let service = ServiceConfig {
            name: "notes".into(),
            upstream: "http://127.0.0.1:9/base".into(),
            timeouts: Default::default(),
            refund_on_5xx: false,
            on_ledger_error: Default::default(),
            public: false,
            price_headers: Vec::new(),
            endpoints: vec![
                endpoint("POST", "/notes/create"),
                endpoint("GET", "/notes/{id}"),
                endpoint("ANY", "/search/*"),
            ],
        };
        Router::new(&[service]).unwrap_or_default()
    })
}

/// The route matcher and path checks: `method \n path`. A route that matches forwards to
/// the registered base path only, and never carries a hostile segment.
pub fn route(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let (method, rest) = text.split_once('\n').unwrap_or(("GET", &text));
    let (path, query) = match rest.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (rest, None),
    };
    match router().route(method, path, query) {
        Ok(found) => {
            // The query passes through as sent; only the path can escape.
            let upstream = found.upstream_path.split('?').next().unwrap_or_default();
            let escaped = !upstream.starts_with("/base/")
                || upstream.contains("/../")
                || upstream.contains("/./")
                || upstream.ends_with("/..")
                || upstream.ends_with("/.")
                || upstream.contains('\\');
            assert!(!escaped, "escaped the base path: {upstream}");
        }
        Err(RouteError::BadPath(_) | RouteError::NotFound(_)) => {}
    }
}

/// The token front door: `Authorization` header bytes in, and only a token signed with the
/// configured key may pass.
pub fn token(data: &[u8]) {
    static VERIFIER: OnceLock<Option<Verifier>> = OnceLock::new();
    let verifier = VERIFIER.get_or_init(|| {
        let config = AuthConfig {
            secret: "fuzzing-secret-that-is-long-enough-0000".into(),
            ..AuthConfig::default()
        };
        Verifier::new(&config).ok()
    });
    if let Some(verifier) = verifier {
        assert!(
            verifier.verify_header(Some(data)).is_err(),
            "accepted a token the fuzzer made without the key"
        );
    }
}

/// The config loader: any text in, a config or an error naming the key out.
pub fn config(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    if let Ok(config) = Config::from_yaml(&text) {
        let _ = crate::app::validate(&config);
    }
}

/// A price expression: any text in, compiled or refused; a compiled one, evaluated on a
/// call whose query is the same text, gives a price in range or an error, never a panic.
pub fn price(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    if let Ok(expression) = crate::pricing::PriceExpression::compile(&text) {
        let call = crate::pricing::Call {
            method: "GET",
            path: "/a/b",
            pattern: "/{x}/*",
            query: Some(&text),
            size: Some(u64::MAX),
            tenant: "t",
            plan: None,
            headers: &[("x-a", &text)],
        };
        if let Ok(credits) = expression.evaluate(&call) {
            assert!(credits <= crate::vocab::MAX_ENDPOINT_CREDITS);
        }
    }
}

/// Replays every saved input under `fuzz/regressions/<target>/` (crashes the fuzzer found,
/// and seeds); run by `cargo test`.
#[cfg(test)]
mod tests {
    #[test]
    fn saved_fuzz_inputs_still_pass() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/regressions");
        type Target = fn(&[u8]);
        let targets: [(&str, Target); 4] = [
            ("route", super::route),
            ("token", super::token),
            ("config", super::config),
            ("price", super::price),
        ];
        let mut replayed = 0;
        for (name, target) in targets {
            let Ok(entries) = std::fs::read_dir(root.join(name)) else {
                continue;
            };
            for entry in entries.flatten() {
                let data = std::fs::read(entry.path()).unwrap_or_default();
                target(&data);
                replayed += 1;
            }
        }
        assert!(replayed > 0, "no saved inputs under {}", root.display());
    }
}
