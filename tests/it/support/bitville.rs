//! A real HTTP listener inside the test process that enforces the Bitville listener's contract for
//! PostgreSQL agents exactly as its source does (Bitville-Holding-LTD/agent-profiler,
//! listener/src/server.ts, middleware/{rate-limit,auth,validation}.ts, handlers/postgres-agent.ts,
//! database/queries.ts, api/correlation.ts):
//!
//! - `GET /health` -> 200 `OK`.
//! - Any `/ingest*` path is rate limited first: a fixed one-minute window per client IP (the first
//!   address of `X-Forwarded-For`, else the peer), started by the first request, counting only
//!   allowed requests; beyond the limit 429 with `Retry-After: ceil((reset - now) / 1000)`.
//! - `POST /ingest/postgres`: `Authorization: Bearer <key>` (401 without it or with an unknown key);
//!   then the body is parsed as JSON as `req.json()` does, which ignores `Content-Encoding` (a gzip
//!   body is 400 "Invalid JSON payload"); then the zod schema: `correlation_id` optional string (not
//!   null), `project` string of 1..50 UTF-16 units, `timestamp` number, `source` one of four,
//!   `data` an object (400 "Payload validation failed"). Unknown top-level keys are stripped; the row
//!   stores `correlation_id || ""`, the key's project, source `postgres_agent`, and the payload.
//! - `GET /api/correlation?correlation_id=ID` (`api/correlation.ts`, not rate limited): 400 without
//!   the parameter, 404 when no row has that ID, else 200 with `correlation_id`, `trace`
//!   (`php_request`: null, `sql_queries`: the rows' payloads, `other_records`: []) and `summary`
//!   (`total_records`, `php_count`, `postgres_count`).
//! - Anything else: 404.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Router;
use serde_json::{json, Map, Value};

pub const SOURCES: [&str; 4] = [
    "pg_stat_activity",
    "pg_stat_statements",
    "pg_log",
    "system_metrics",
];

/// One stored row, as the listener's `profiling_data` table holds it (the columns the tests read).
#[derive(Debug, Clone)]
pub struct Row {
    pub correlation_id: String,
    pub project: String,
    pub timestamp: f64,
    /// The validated payload with unknown top-level keys stripped.
    pub payload: Value,
    /// Bytes of the request body as received.
    pub body_bytes: usize,
}

#[derive(Debug, Default, Clone, Copy)]
pub struct Tally {
    pub requests: u64,
    pub stored: u64,
    pub rate_limited: u64,
    pub unauthorized: u64,
    pub bad_json: u64,
    pub invalid: u64,
    pub not_found: u64,
}

struct Window {
    count: u32,
    start: Instant,
}

struct Inner {
    keys: HashMap<String, String>,
    limit: u32,
    windows: HashMap<String, Window>,
    rows: Vec<Row>,
    tally: Tally,
    /// Every validation failure's reason, for test messages.
    failures: Vec<String>,
}

#[derive(Clone)]
struct Shared(Arc<Mutex<Inner>>);

pub struct BitvilleListener {
    pub addr: SocketAddr,
    shared: Shared,
    _thread: std::thread::JoinHandle<()>,
}

fn json_response(status: StatusCode, body: Value) -> Response {
    (
        status,
        [("content-type", "application/json")],
        body.to_string(),
    )
        .into_response()
}

async fn handle(
    State(s): State<Shared>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = uri.path();
    let mut inner = s.0.lock().unwrap();
    inner.tally.requests += 1;
    if method == Method::GET && path == "/health" {
        return (StatusCode::OK, [("content-type", "text/plain")], "OK").into_response();
    }
    if method == Method::GET && path == "/api/correlation" {
        return correlation(&inner.rows, uri.query().unwrap_or(""));
    }
    if path.starts_with("/ingest") {
        let ip = headers
            .get("x-forwarded-for")
            .and_then(|v| v.to_str().ok())
            .map(|v| v.split(',').next().unwrap_or("").trim().to_string())
            .unwrap_or_else(|| peer.ip().to_string());
        let now = Instant::now();
        let limit = inner.limit;
        let w = inner.windows.entry(ip).or_insert(Window {
            count: 0,
            start: now,
        });
        if now.duration_since(w.start) >= Duration::from_secs(60) {
            w.count = 0;
            w.start = now;
        }
        if w.count >= limit {
            let reset = w.start + Duration::from_secs(60);
            let retry = reset
                .saturating_duration_since(now)
                .as_millis()
                .div_ceil(1000);
            inner.tally.rate_limited += 1;
            let mut r = json_response(
                StatusCode::TOO_MANY_REQUESTS,
                json!({"error": "Too Many Requests", "message": "Rate limit exceeded"}),
            );
            r.headers_mut()
                .insert("retry-after", retry.to_string().parse().unwrap());
            return r;
        }
        w.count += 1;
    }
    if method != Method::POST || path != "/ingest/postgres" {
        inner.tally.not_found += 1;
        return json_response(
            StatusCode::NOT_FOUND,
            json!({"error": "Not Found", "message": format!("Route {method} {path} not found")}),
        );
    }
    let project = match headers.get("authorization").and_then(|v| v.to_str().ok()) {
        Some(h) if h.starts_with("Bearer ") && !h[7..].trim().is_empty() => {
            inner.keys.get(&h[7..]).cloned()
        }
        _ => None,
    };
    let Some(project) = project else {
        inner.tally.unauthorized += 1;
        return json_response(
            StatusCode::UNAUTHORIZED,
            json!({"error": "Unauthorized", "message": "Invalid API key"}),
        );
    };
    let parsed: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => {
            inner.tally.bad_json += 1;
            inner.failures.push(format!("invalid JSON: {e}"));
            return json_response(
                StatusCode::BAD_REQUEST,
                json!({"error": "Bad Request", "message": "Invalid JSON payload"}),
            );
        }
    };
    let payload = match validate(&parsed) {
        Ok(p) => p,
        Err(reason) => {
            inner.tally.invalid += 1;
            inner.failures.push(reason.clone());
            return json_response(
                StatusCode::BAD_REQUEST,
                json!({"error": "Bad Request", "message": "Payload validation failed", "details": reason}),
            );
        }
    };
    let id = inner.rows.len() as u64 + 1;
    inner.rows.push(Row {
        correlation_id: payload["correlation_id"].as_str().unwrap_or("").to_string(),
        project,
        timestamp: payload["timestamp"].as_f64().unwrap_or(0.0),
        payload: payload.clone(),
        body_bytes: body.len(),
    });
    inner.tally.stored += 1;
    json_response(
        StatusCode::OK,
        json!({"success": true, "row_id": id, "source": payload["source"]}),
    )
}

/// `handleGetCorrelation`: the rows stored with one correlation ID, by timestamp (every row here
/// is the PostgreSQL agent's). The ID is taken from the query string as it is (no percent-decoding:
/// correlation IDs are UUIDs).
fn correlation(rows: &[Row], query: &str) -> Response {
    let id = query
        .split('&')
        .find_map(|kv| kv.strip_prefix("correlation_id="))
        .filter(|id| !id.is_empty());
    let Some(id) = id else {
        return json_response(
            StatusCode::BAD_REQUEST,
            json!({"error": "Bad Request", "message": "correlation_id parameter is required"}),
        );
    };
    let mut found: Vec<&Row> = rows.iter().filter(|r| r.correlation_id == id).collect();
    if found.is_empty() {
        return json_response(
            StatusCode::NOT_FOUND,
            json!({"error": "Not Found", "message": "No records found for the specified correlation_id"}),
        );
    }
    found.sort_by(|a, b| a.timestamp.total_cmp(&b.timestamp));
    let sql: Vec<Value> = found
        .iter()
        .map(|r| json!({"project": r.project, "source": "postgres_agent", "timestamp": r.timestamp, "payload": r.payload}))
        .collect();
    json_response(
        StatusCode::OK,
        json!({
            "correlation_id": id,
            "trace": {"php_request": null, "sql_queries": sql, "other_records": []},
            "summary": {"total_records": found.len(), "php_count": 0, "postgres_count": found.len()},
        }),
    )
}

/// `PostgresPayloadSchema.safeParse`: the stripped payload, or why it fails.
pub fn validate(v: &Value) -> Result<Value, String> {
    let o = v.as_object().ok_or("not an object")?;
    let mut out = Map::new();
    match o.get("correlation_id") {
        None => {}
        Some(Value::String(s)) => {
            out.insert("correlation_id".into(), Value::from(s.as_str()));
        }
        Some(other) => return Err(format!("correlation_id must be a string, got {other}")),
    }
    let project = o
        .get("project")
        .and_then(Value::as_str)
        .ok_or("project must be a string")?;
    let units = project.encode_utf16().count();
    if !(1..=50).contains(&units) {
        return Err(format!("project must be 1 to 50 characters, has {units}"));
    }
    out.insert("project".into(), Value::from(project));
    let timestamp = o.get("timestamp").filter(|t| t.is_number());
    out.insert(
        "timestamp".into(),
        timestamp.ok_or("timestamp must be a number")?.clone(),
    );
    let source = o
        .get("source")
        .and_then(Value::as_str)
        .filter(|s| SOURCES.contains(s))
        .ok_or_else(|| {
            format!(
                "source must be one of {SOURCES:?}, got {:?}",
                o.get("source")
            )
        })?;
    out.insert("source".into(), Value::from(source));
    let data = o
        .get("data")
        .filter(|d| d.is_object())
        .ok_or("data must be an object")?;
    out.insert("data".into(), data.clone());
    Ok(Value::Object(out))
}

impl BitvilleListener {
    /// A listener accepting `keys` (api key -> project) with `limit` requests per minute per IP.
    pub fn start(keys: &[(&str, &str)], limit: u32) -> BitvilleListener {
        BitvilleListener::start_on(keys, limit, 0)
    }

    /// [`BitvilleListener::start`] on a given port (0: any free one).
    pub fn start_on(keys: &[(&str, &str)], limit: u32, port: u16) -> BitvilleListener {
        let shared = Shared(Arc::new(Mutex::new(Inner {
            keys: keys
                .iter()
                .map(|(k, p)| (k.to_string(), p.to_string()))
                .collect(),
            limit,
            windows: HashMap::new(),
            rows: Vec::new(),
            tally: Tally::default(),
            failures: Vec::new(),
        })));
        let app = Router::new().fallback(handle).with_state(shared.clone());
        let (addr, thread) = super::serve::serve_in_thread_on(app, port);
        BitvilleListener {
            addr,
            shared,
            _thread: thread,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}/ingest/postgres", self.addr)
    }

    pub fn rows(&self) -> Vec<Row> {
        self.shared.0.lock().unwrap().rows.clone()
    }

    pub fn tally(&self) -> Tally {
        self.shared.0.lock().unwrap().tally
    }

    pub fn failures(&self) -> Vec<String> {
        self.shared.0.lock().unwrap().failures.clone()
    }

    /// `queryByCorrelationId`: the rows of one correlation ID, by timestamp.
    pub fn by_correlation(&self, id: &str) -> Vec<Row> {
        let mut rows: Vec<Row> = self
            .rows()
            .into_iter()
            .filter(|r| r.correlation_id == id)
            .collect();
        rows.sort_by(|a, b| a.timestamp.total_cmp(&b.timestamp));
        rows
    }
}
