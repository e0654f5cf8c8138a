//! An upstream that answers like an LLM API (OpenAI's chat completions), for settled prices:
//! `POST /v1/chat/completions?tokens=N` answers JSON with `usage.total_tokens = N` and an
//! `X-Usage-Credits: N / 10` header; `&stream=1` answers server-sent events, content first
//! and a last event with the usage (OpenAI's `stream_options.include_usage`), then
//! `[DONE]`; `&cut=1` breaks the stream after its first events; `&hold=1` sends the first
//! event, then waits for [`Llm::release`] before the rest (is the stream forwarded as it
//! comes?).

use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::{header, StatusCode};
use axum::response::Response;
use bytes::Bytes;
use serde_json::json;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tokio::sync::Notify;

pub struct Llm {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

#[derive(Default)]
struct Shared {
    requests: AtomicU64,
    release: Notify,
}

/// The credits the header says for `tokens` (and what `total_tokens / 10` comes to).
pub fn credits_for(tokens: u64) -> i64 {
    (tokens / 10) as i64
}

impl Llm {
    pub async fn start() -> Llm {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shared = Arc::new(Shared::default());
        let app = axum::Router::new()
            .route("/v1/chat/completions", axum::routing::post(complete))
            .with_state(Arc::clone(&shared));
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Llm { addr, shared, task }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn requests(&self) -> u64 {
        self.shared.requests.load(Ordering::SeqCst)
    }

    /// Lets a held stream (`hold=1`) go on.
    pub fn release(&self) {
        self.shared.release.notify_waiters();
        self.shared.release.notify_one();
    }
}

impl Drop for Llm {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn event(value: serde_json::Value) -> Result<Bytes, std::io::Error> {
    Ok(Bytes::from(format!("data: {value}\n\n")))
}

async fn complete(
    State(shared): State<Arc<Shared>>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    shared.requests.fetch_add(1, Ordering::SeqCst);
    let flag = |name: &str| query.get(name).is_some_and(|v| v == "1");
    let tokens: u64 = query
        .get("tokens")
        .and_then(|t| t.parse().ok())
        .unwrap_or(0);
    let usage = json!({
        "prompt_tokens": tokens / 2,
        "completion_tokens": tokens - tokens / 2,
        "total_tokens": tokens,
    });
    if !flag("stream") {
        let body = json!({
            "id": "chatcmpl-1",
            "object": "chat.completion",
            "choices": [{ "index": 0, "message": { "role": "assistant", "content": "Hello." } }],
            "usage": usage,
        });
        return Response::builder()
            .status(StatusCode::OK)
            .header(header::CONTENT_TYPE, "application/json")
            .header("x-usage-credits", credits_for(tokens).to_string())
            .body(Body::from(body.to_string()))
            .unwrap();
    }
    let (cut, hold) = (flag("cut"), flag("hold"));
    let stream = async_stream(shared, usage, cut, hold);
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "text/event-stream")
        .header(header::CACHE_CONTROL, "no-cache")
        .body(Body::from_stream(stream))
        .unwrap()
}

/// The events of one streamed answer, as a stream of body chunks.
fn async_stream(
    shared: Arc<Shared>,
    usage: serde_json::Value,
    cut: bool,
    hold: bool,
) -> impl futures_util::Stream<Item = Result<Bytes, std::io::Error>> {
    let chunk = |word: &str| {
        json!({
            "object": "chat.completion.chunk",
            "choices": [{ "index": 0, "delta": { "content": word } }],
            "usage": null,
        })
    };
    let first = vec![event(chunk("Hello")), event(chunk(", "))];
    let rest = vec![
        event(chunk("world.")),
        event(json!({ "object": "chat.completion.chunk", "choices": [], "usage": usage })),
        Ok(Bytes::from_static(b"data: [DONE]\n\n")),
    ];
    let head = futures_util::stream::iter(first);
    let tail = futures_util::stream::once(async move {
        if hold {
            shared.release.notified().await;
        } else {
            tokio::task::yield_now().await;
        }
        if cut {
            Err(std::io::Error::other("the model's stream broke"))
        } else {
            Ok(rest)
        }
    });
    use futures_util::StreamExt;
    head.chain(tail.flat_map(|rest| match rest {
        Ok(rest) => futures_util::stream::iter(rest).left_stream(),
        Err(e) => futures_util::stream::iter(vec![Err(e)]).right_stream(),
    }))
}
