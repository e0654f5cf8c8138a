//! A small echo upstream: the quickstart's demo service, the integration tests' origin and
//! the load test's fast upstream. It answers every request with JSON describing what it
//! received (method, path, query, headers, body size), streaming the body rather than
//! buffering it, and counts requests so tests can compare with what the gateway forwarded.
//!
//! Query parameters shape the reply: `status=NNN` sets the status, `delay_ms=N` waits first,
//! `pad=N` adds N bytes to the reply (a large response).

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Longest delay a request may ask for, so a test typo cannot hang a worker for hours.
const MAX_DELAY_MS: u64 = 60_000;

/// Largest padding a request may ask for (a demo service must not be a memory lever).
const MAX_PAD_BYTES: usize = 16 * 1024 * 1024;

#[derive(Default)]
pub struct Counters {
    requests: AtomicU64,
}

impl Counters {
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::SeqCst)
    }
}

pub fn router(counters: Arc<Counters>) -> axum::Router {
    axum::Router::new().fallback(echo).with_state(counters)
}

/// Serves the echo upstream on `listener` until the future is dropped.
pub async fn serve(
    listener: tokio::net::TcpListener,
    counters: Arc<Counters>,
) -> std::io::Result<()> {
    axum::serve(listener, router(counters)).await
}

async fn echo(State(counters): State<Arc<Counters>>, request: Request) -> Response {
    counters.requests.fetch_add(1, Ordering::SeqCst);
    let (parts, body) = request.into_parts();
    let query: BTreeMap<String, String> = parts
        .uri
        .query()
        .map(|q| {
            q.split('&')
                .filter_map(|kv| kv.split_once('='))
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect()
        })
        .unwrap_or_default();
    if let Some(ms) = query.get("delay_ms").and_then(|v| v.parse::<u64>().ok()) {
        tokio::time::sleep(Duration::from_millis(ms.min(MAX_DELAY_MS))).await;
    }
    let status = query
        .get("status")
        .and_then(|v| v.parse::<u16>().ok())
        .and_then(|s| StatusCode::from_u16(s).ok())
        .unwrap_or(StatusCode::OK);
    let mut body_bytes = 0u64;
    let mut stream = body.into_data_stream();
    while let Some(chunk) = futures_util::StreamExt::next(&mut stream).await {
        match chunk {
            Ok(chunk) => body_bytes += chunk.len() as u64,
            Err(_) => return StatusCode::BAD_REQUEST.into_response(),
        }
    }
    let headers: BTreeMap<&str, &str> = parts
        .headers
        .iter()
        .filter_map(|(k, v)| Some((k.as_str(), v.to_str().ok()?)))
        .collect();
    let reply = serde_json::json!({
        "method": parts.method.as_str(),
        "path": parts.uri.path(),
        "query": parts.uri.query(),
        "headers": headers,
        "body_bytes": body_bytes,
    });
    let pad = query.get("pad").and_then(|v| v.parse::<usize>().ok());
    let reply = match pad {
        Some(n) => serde_json::json!({ "echo": reply, "pad": "x".repeat(n.min(MAX_PAD_BYTES)) }),
        None => reply,
    };
    let mut response = Response::new(Body::from(reply.to_string()));
    *response.status_mut() = status;
    response.headers_mut().insert(
        "content-type",
        axum::http::HeaderValue::from_static("application/json"),
    );
    response
}

/// The demo upstream as a Pingora background service of `tollgate run`.
pub struct DemoUpstream {
    /// `demo_upstream.listen`, bound at start-up.
    pub listener: crate::listen::Reserved,
}

#[async_trait::async_trait]
impl BackgroundService for DemoUpstream {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let listener = match self.listener.listen().await {
            Ok(l) => l,
            Err(e) => {
                tracing::error!(listen = %self.listener.addr, error = %e, "demo upstream cannot listen");
                return;
            }
        };
        tracing::info!(listen = %self.listener.addr, "demo upstream listening");
        tokio::select! {
            result = serve(listener, Arc::default()) => {
                if let Err(e) = result {
                    tracing::error!(error = %e, "demo upstream stopped");
                }
            }
            _ = shutdown.changed() => {}
        }
    }
}
