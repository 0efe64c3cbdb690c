//! A real HTTP listener inside the test process that answers as the Bitville listener does for the
//! routes `check` probes: `GET /health` 200 "OK" without auth; `POST /ingest/postgres` checks the
//! bearer key (401), then parses JSON (400 "Invalid JSON payload"), then validates the payload
//! (400 "Payload validation failed"), then stores it (200); anything else 404 "Not Found". It can
//! be told to rate limit `/ingest*` (429). Not a model of the whole listener: only of the order in
//! which it refuses.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use axum::Router;
use serde_json::{json, Value};

const SOURCES: [&str; 4] = [
    "pg_stat_activity",
    "pg_stat_statements",
    "pg_log",
    "system_metrics",
];

struct Shared {
    key: String,
    rate_limited: AtomicBool,
    /// When set, `/ingest/postgres` answers this status and body to everything.
    answer: Mutex<Option<(u16, String)>>,
    stored: Mutex<Vec<Value>>,
    /// "METHOD path" of every request, in order.
    seen: Mutex<Vec<String>>,
}

/// The listener runs on its own thread with its own runtime, so blocking tests can use it.
pub struct BitvilleListener {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    _thread: std::thread::JoinHandle<()>,
}

fn json_response(status: StatusCode, body: Value) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

/// zod's `{correlation_id?: string, project: string 1..50, timestamp: number, source: enum, data:
/// object}`: the list of failed fields, empty when valid.
fn validate(v: &Value) -> Vec<&'static str> {
    let mut bad = Vec::new();
    let Some(o) = v.as_object() else {
        return vec!["(root)"];
    };
    if o.get("correlation_id").is_some_and(|c| !c.is_string()) {
        bad.push("correlation_id");
    }
    match o.get("project").and_then(Value::as_str) {
        Some(p) if (1..=50).contains(&p.chars().count()) => {}
        _ => bad.push("project"),
    }
    if !o.get("timestamp").is_some_and(Value::is_number) {
        bad.push("timestamp");
    }
    if !o
        .get("source")
        .and_then(Value::as_str)
        .is_some_and(|s| SOURCES.contains(&s))
    {
        bad.push("source");
    }
    if !o.get("data").is_some_and(Value::is_object) {
        bad.push("data");
    }
    bad
}

async fn ingest(
    State(s): State<Arc<Shared>>,
    method: Method,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    s.seen
        .lock()
        .unwrap()
        .push(format!("{method} /ingest/postgres"));
    if s.rate_limited.load(Ordering::SeqCst) {
        let mut r = json_response(
            StatusCode::TOO_MANY_REQUESTS,
            json!({"error": "Too Many Requests", "message": "Rate limit exceeded"}),
        );
        r.headers_mut()
            .insert(header::RETRY_AFTER, header::HeaderValue::from_static("30"));
        return r;
    }
    if let Some((status, body)) = s.answer.lock().unwrap().clone() {
        let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        return (status, body).into_response();
    }
    if method != Method::POST {
        return json_response(StatusCode::NOT_FOUND, json!({"error": "Not Found"}));
    }
    let expected = format!("Bearer {}", s.key);
    if headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        != Some(&expected)
    {
        return json_response(
            StatusCode::UNAUTHORIZED,
            json!({"error": "Unauthorized", "message": "Invalid API key"}),
        );
    }
    let payload: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => {
            return json_response(
                StatusCode::BAD_REQUEST,
                json!({"error": "Bad Request", "message": "Invalid JSON payload", "details": e.to_string()}),
            )
        }
    };
    let bad = validate(&payload);
    if !bad.is_empty() {
        return json_response(
            StatusCode::BAD_REQUEST,
            json!({"error": "Bad Request", "message": "Payload validation failed", "details": bad}),
        );
    }
    let source = payload["source"].clone();
    let mut stored = s.stored.lock().unwrap();
    stored.push(payload);
    json_response(
        StatusCode::OK,
        json!({"success": true, "row_id": stored.len(), "source": source}),
    )
}

async fn not_found(State(s): State<Arc<Shared>>, method: Method, uri: Uri) -> Response {
    s.seen
        .lock()
        .unwrap()
        .push(format!("{method} {}", uri.path()));
    json_response(StatusCode::NOT_FOUND, json!({"error": "Not Found"}))
}

async fn health(State(s): State<Arc<Shared>>) -> &'static str {
    s.seen.lock().unwrap().push("GET /health".into());
    "OK"
}

impl BitvilleListener {
    /// Starts a listener that accepts `key`.
    pub fn start(key: &str) -> BitvilleListener {
        let shared = Arc::new(Shared {
            key: key.to_string(),
            rate_limited: AtomicBool::new(false),
            answer: Mutex::new(None),
            stored: Mutex::new(Vec::new()),
            seen: Mutex::new(Vec::new()),
        });
        let app = Router::new()
            .route("/health", get(health))
            .route("/ingest/postgres", any(ingest))
            .fallback(not_found)
            .with_state(shared.clone());
        let (addr, thread) = crate::support::serve::serve_in_thread(app);
        BitvilleListener {
            addr,
            shared,
            _thread: thread,
        }
    }

    /// `http://127.0.0.1:PORT/ingest/postgres`.
    pub fn url(&self) -> String {
        format!("http://{}/ingest/postgres", self.addr)
    }

    pub fn base(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Answer 429 to every `/ingest/postgres` request from now on (or stop).
    pub fn set_rate_limited(&self, on: bool) {
        self.shared.rate_limited.store(on, Ordering::SeqCst);
    }

    /// Answer `status` with `body` to every `/ingest/postgres` request from now on (None: as the
    /// Bitville listener does).
    pub fn set_answer(&self, answer: Option<(u16, &str)>) {
        *self.shared.answer.lock().unwrap() = answer.map(|(s, b)| (s, b.to_string()));
    }

    /// Payloads that passed validation and were stored.
    pub fn stored(&self) -> Vec<Value> {
        self.shared.stored.lock().unwrap().clone()
    }

    /// "METHOD path" of every request so far.
    pub fn seen(&self) -> Vec<String> {
        self.shared.seen.lock().unwrap().clone()
    }
}
