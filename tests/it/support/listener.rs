//! A real HTTP listener inside the test process: records every request (headers and the gunzipped JSON
//! body) and answers with a status the test can change at any time.

use std::io::Read;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::Router;

#[derive(Debug, Clone)]
pub struct Received {
    pub headers: Vec<(String, String)>,
    pub body: serde_json::Value,
    /// Bytes of the body as sent (compressed when it was).
    pub body_bytes: usize,
    /// What the listener answered.
    pub status: u16,
}

impl Received {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

#[derive(Clone, Default)]
struct Shared {
    received: Arc<Mutex<Vec<Received>>>,
    status: Arc<AtomicU16>,
}

/// The listener runs on its own thread with its own runtime, so blocking tests can use it.
pub struct Listener {
    pub addr: SocketAddr,
    shared: Shared,
    _thread: std::thread::JoinHandle<()>,
}

async fn ingest(State(s): State<Shared>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let status = StatusCode::from_u16(s.status.load(Ordering::SeqCst)).unwrap_or(StatusCode::OK);
    let gzip = headers.get("content-encoding").is_some_and(|v| v == "gzip");
    let body_bytes = body.len();
    let raw = if gzip {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(&body[..])
            .read_to_end(&mut out)
            .expect("gzip body");
        out
    } else {
        body.to_vec()
    };
    let body: serde_json::Value = serde_json::from_slice(&raw).expect("JSON body");
    let headers = headers
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_string()))
        .collect();
    s.received.lock().unwrap().push(Received {
        headers,
        body,
        body_bytes,
        status: status.as_u16(),
    });
    status
}

/// GET (used by `check`): answers the configured status and records nothing.
async fn probe(State(s): State<Shared>) -> StatusCode {
    StatusCode::from_u16(s.status.load(Ordering::SeqCst)).unwrap_or(StatusCode::OK)
}

impl Listener {
    pub fn start() -> Listener {
        let shared = Shared::default();
        shared.status.store(200, Ordering::SeqCst);
        let app = Router::new()
            .route("/ingest", post(ingest).get(probe))
            .with_state(shared.clone());
        let (addr, thread) = super::serve::serve_in_thread(app);
        Listener {
            addr,
            shared,
            _thread: thread,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}/ingest", self.addr)
    }

    /// The status code answered from now on.
    pub fn set_status(&self, status: u16) {
        self.shared.status.store(status, Ordering::SeqCst);
    }

    pub fn received(&self) -> Vec<Received> {
        self.shared.received.lock().unwrap().clone()
    }

    /// How many records of batches of type `kind` satisfy `pred`, without copying the bodies.
    pub fn count_records(&self, kind: &str, pred: impl Fn(&serde_json::Value) -> bool) -> usize {
        let received = self.shared.received.lock().unwrap();
        received
            .iter()
            .filter(|r| r.body["type"] == kind)
            .filter_map(|r| r.body["data"].as_array())
            .flatten()
            .filter(|e| pred(e))
            .count()
    }

    /// How many batches of type `kind` arrived.
    pub fn count_batches(&self, kind: &str) -> usize {
        let received = self.shared.received.lock().unwrap();
        received.iter().filter(|r| r.body["type"] == kind).count()
    }

    /// Bodies of accepted (2xx-answered) requests are not distinguished here; tests set the status.
    pub fn bodies_of_type(&self, kind: &str) -> Vec<serde_json::Value> {
        self.received()
            .into_iter()
            .map(|r| r.body)
            .filter(|b| b["type"] == kind)
            .collect()
    }
}
