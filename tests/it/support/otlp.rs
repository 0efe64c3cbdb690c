//! An OTLP/HTTP receiver inside the test process (`POST /v1/logs`, `POST /v1/metrics`): keeps every
//! request's body (gunzipped), headers and the status it answered, which the test can change at any
//! time (a 503 with `Retry-After`). And the official decoder: every kept body is decoded by
//! `otlp_decode.py` with the PyPI `opentelemetry-proto` definitions, in a venv at `.venv-otlp/`
//! (gitignored; scripts/test.sh makes it, and so does [`decoder`] when it is missing).

use std::io::Read;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::post;
use axum::Router;
use serde_json::Value;

/// The opentelemetry-proto release the decoder uses.
pub const OTEL_PROTO_VERSION: &str = "1.45.0";

/// One request as received.
#[derive(Debug, Clone)]
pub struct OtlpRequest {
    /// "logs" or "metrics".
    pub signal: &'static str,
    pub content_type: String,
    pub content_encoding: String,
    pub idempotency_key: String,
    /// The protobuf body, gunzipped.
    pub body: Vec<u8>,
    pub status: u16,
}

#[derive(Clone, Default)]
struct Shared {
    received: Arc<Mutex<Vec<OtlpRequest>>>,
    status: Arc<AtomicU16>,
    /// The body of a 200 answer: empty (full success) or a `partial_success`.
    answer: Arc<Mutex<Vec<u8>>>,
}

pub struct OtlpReceiver {
    pub addr: SocketAddr,
    shared: Shared,
    _thread: std::thread::JoinHandle<()>,
}

async fn take(
    s: Shared,
    signal: &'static str,
    headers: HeaderMap,
    body: Bytes,
) -> impl IntoResponse {
    let status = s.status.load(Ordering::SeqCst);
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string()
    };
    let encoding = header("content-encoding");
    let body = if encoding == "gzip" {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(&body[..])
            .read_to_end(&mut out)
            .expect("gzip body");
        out
    } else {
        body.to_vec()
    };
    s.received.lock().unwrap().push(OtlpRequest {
        signal,
        content_type: header("content-type"),
        content_encoding: encoding,
        idempotency_key: header("idempotency-key"),
        body,
        status,
    });
    let code = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
    let mut h = HeaderMap::new();
    h.insert("content-type", "application/x-protobuf".parse().unwrap());
    if status == 503 || status == 429 {
        h.insert("retry-after", "1".parse().unwrap());
    }
    let body = match status {
        200 => s.answer.lock().unwrap().clone(),
        _ => Vec::new(),
    };
    (code, h, body)
}

async fn post_logs(State(s): State<Shared>, headers: HeaderMap, body: Bytes) -> impl IntoResponse {
    take(s, "logs", headers, body).await
}

async fn post_metrics(
    State(s): State<Shared>,
    headers: HeaderMap,
    body: Bytes,
) -> impl IntoResponse {
    take(s, "metrics", headers, body).await
}

impl OtlpReceiver {
    pub fn start() -> OtlpReceiver {
        let shared = Shared::default();
        shared.status.store(200, Ordering::SeqCst);
        let app = Router::new()
            .route("/v1/logs", post(post_logs))
            .route("/v1/metrics", post(post_metrics))
            .with_state(shared.clone());
        let (addr, thread) = super::serve::serve_in_thread(app);
        OtlpReceiver {
            addr,
            shared,
            _thread: thread,
        }
    }

    /// The base endpoint (`listener.url`).
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn set_status(&self, status: u16) {
        self.shared.status.store(status, Ordering::SeqCst);
    }

    /// Answers 200 with a `partial_success` of `rejected` items and `message` from now on
    /// (`ExportLogsServiceResponse` and `ExportMetricsServiceResponse` have the same fields).
    pub fn set_partial_success(&self, rejected: i64, message: &str) {
        // Field 1 (partial_success) holding field 1 (rejected, varint) and field 2 (message).
        let mut inner = vec![0x08];
        let mut v = rejected as u64;
        while v >= 0x80 {
            inner.push((v as u8) | 0x80);
            v >>= 7;
        }
        inner.push(v as u8);
        inner.push(0x12);
        inner.push(message.len() as u8);
        inner.extend_from_slice(message.as_bytes());
        let mut body = vec![0x0a, inner.len() as u8];
        body.extend(inner);
        *self.shared.answer.lock().unwrap() = body;
    }

    pub fn received(&self) -> Vec<OtlpRequest> {
        self.shared.received.lock().unwrap().clone()
    }
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The venv's python with opentelemetry-proto installed (made on first use when missing).
pub fn decoder() -> &'static Path {
    static PYTHON: OnceLock<PathBuf> = OnceLock::new();
    PYTHON.get_or_init(|| {
        let venv = repo().join(".venv-otlp");
        let python = venv.join("bin/python");
        let ready = || {
            Command::new(&python)
                .args(["-c", "import opentelemetry.proto, google.protobuf"])
                .status()
                .is_ok_and(|s| s.success())
        };
        if !ready() {
            let ok = Command::new("python3")
                .args(["-m", "venv"])
                .arg(&venv)
                .status()
                .is_ok_and(|s| s.success());
            assert!(
                ok,
                "python3 -m venv {} failed (apt-get install python3-venv)",
                venv.display()
            );
            let ok = Command::new(venv.join("bin/pip"))
                .args([
                    "install",
                    "-q",
                    &format!("opentelemetry-proto=={OTEL_PROTO_VERSION}"),
                ])
                .status()
                .is_ok_and(|s| s.success());
            assert!(
                ok,
                "pip install opentelemetry-proto=={OTEL_PROTO_VERSION} failed"
            );
            assert!(
                ready(),
                "the venv at {} cannot import opentelemetry.proto",
                venv.display()
            );
        }
        python
    })
}

/// Every request decoded by the official definitions, in arrival order: the `request` objects
/// (protobuf JSON mapping, original field names, IDs in hex). Panics naming the body that does not
/// decode or that holds an unknown field.
pub fn decode(requests: &[OtlpRequest]) -> Vec<Value> {
    let dir = tempfile::tempdir().unwrap();
    let mut files = Vec::new();
    for (i, r) in requests.iter().enumerate() {
        let path = dir.path().join(format!("{i:05}.{}.pb", r.signal));
        std::fs::write(&path, &r.body).unwrap();
        files.push(path);
    }
    if files.is_empty() {
        return Vec::new();
    }
    let out = Command::new(decoder())
        .arg(repo().join("tests/it/support/otlp_decode.py"))
        .args(&files)
        .output()
        .expect("run otlp_decode.py");
    assert!(
        out.status.success(),
        "the official OTLP definitions refuse a request: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).expect("decoder JSON line");
            v["request"].clone()
        })
        .collect()
}

/// The value of attribute `key` in an attribute list of the JSON mapping (`stringValue`, ...).
pub fn attr<'a>(attributes: &'a Value, key: &str) -> Option<&'a Value> {
    let kv = attributes.as_array()?.iter().find(|kv| kv["key"] == key)?;
    let v = &kv["value"];
    [
        "string_value",
        "int_value",
        "double_value",
        "bool_value",
        "kvlist_value",
        "array_value",
    ]
    .iter()
    .find_map(|k| v.get(*k))
}

/// The resources of a decoded request.
pub fn resources(request: &Value) -> Vec<&Value> {
    ["resource_logs", "resource_metrics"]
        .iter()
        .filter_map(|k| request.get(*k).and_then(Value::as_array))
        .flatten()
        .map(|r| &r["resource"])
        .collect()
}

/// Every log record of decoded requests.
pub fn log_records(requests: &[Value]) -> Vec<&Value> {
    requests
        .iter()
        .filter_map(|r| r.get("resource_logs").and_then(Value::as_array))
        .flatten()
        .filter_map(|rl| rl["scope_logs"].as_array())
        .flatten()
        .filter_map(|sl| sl["log_records"].as_array())
        .flatten()
        .collect()
}

/// Every metric of decoded requests.
pub fn metrics(requests: &[Value]) -> Vec<&Value> {
    requests
        .iter()
        .filter_map(|r| r.get("resource_metrics").and_then(Value::as_array))
        .flatten()
        .filter_map(|rm| rm["scope_metrics"].as_array())
        .flatten()
        .filter_map(|sm| sm["metrics"].as_array())
        .flatten()
        .collect()
}

/// The data points of metric `name` (sum or gauge).
pub fn points<'a>(metrics: &[&'a Value], name: &str) -> Vec<&'a Value> {
    metrics
        .iter()
        .filter(|m| m["name"] == name)
        .filter_map(|m| {
            m.get("sum")
                .or_else(|| m.get("gauge"))
                .and_then(|d| d["data_points"].as_array())
        })
        .flatten()
        .collect()
}

/// A data point's value as a number (`as_int` is a JSON string in the protobuf JSON mapping).
pub fn value(point: &Value) -> f64 {
    match (&point["as_int"], &point["as_double"]) {
        (Value::String(s), _) => s.parse().unwrap_or(f64::NAN),
        (Value::Number(n), _) => n.as_f64().unwrap_or(f64::NAN),
        (_, v) => v.as_f64().unwrap_or(f64::NAN),
    }
}

/// A nanosecond time field (a JSON string in the mapping) as u64.
pub fn nanos(v: &Value) -> u64 {
    v.as_str()
        .and_then(|s| s.parse().ok())
        .or_else(|| v.as_u64())
        .unwrap_or(0)
}
