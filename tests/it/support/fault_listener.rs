//! A fault-injecting HTTP(S) listener inside the test process, standing in for the ingestion endpoint: it
//! records every request (headers and gunzipped JSON body) and answers as told: accept, a given
//! status with or without Retry-After, or stall. Stopping it makes the port refuse connections;
//! it can come back on the same port.

use std::io::Read;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Router;
use postgres_agent::config::Config;
use serde_json::Value;

/// How the listener answers.
#[derive(Debug, Clone, PartialEq)]
pub enum Behavior {
    Accept,
    /// Answer this status, with this Retry-After header if given, and a short text body.
    Status(u16, Option<String>),
    /// Sleep this long before answering 200 (longer than the client timeout = a stalled listener).
    Stall(Duration),
}

/// One request as the listener saw it.
#[derive(Debug, Clone)]
pub struct Received {
    pub idempotency_key: String,
    pub authorization: Option<String>,
    pub user_agent: Option<String>,
    pub content_type: Option<String>,
    pub content_encoding: Option<String>,
    /// The decoded JSON body.
    pub body: Value,
    /// What the listener answered (0 for a stall that the client abandoned or not).
    pub answered: u16,
}

impl Received {
    pub fn batch_id(&self) -> String {
        self.body["batch_id"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }
}

#[derive(Default)]
struct Shared {
    behavior: Mutex<Option<Behavior>>,
    received: Mutex<Vec<Received>>,
}

/// A running listener.
pub struct Listener {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    task: Option<tokio::task::JoinHandle<()>>,
    tls: bool,
}

fn header(h: &HeaderMap, name: &str) -> Option<String> {
    h.get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

async fn ingest(State(shared): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Response {
    let encoding = header(&headers, "content-encoding");
    let mut text = Vec::new();
    if encoding.as_deref() == Some("gzip") {
        flate2::read::GzDecoder::new(&body[..])
            .read_to_end(&mut text)
            .expect("gzip body");
    } else {
        text = body.to_vec();
    }
    let behavior = shared
        .behavior
        .lock()
        .unwrap()
        .clone()
        .unwrap_or(Behavior::Accept);
    let answered = match &behavior {
        Behavior::Accept | Behavior::Stall(_) => 200,
        Behavior::Status(s, _) => *s,
    };
    let record = Received {
        idempotency_key: header(&headers, "idempotency-key").unwrap_or_default(),
        authorization: header(&headers, "authorization"),
        user_agent: header(&headers, "user-agent"),
        content_type: header(&headers, "content-type"),
        content_encoding: encoding,
        body: serde_json::from_slice(&text).expect("JSON body"),
        answered,
    };
    if let Behavior::Stall(d) = behavior {
        let mut stalled = record.clone();
        stalled.answered = 0;
        shared.received.lock().unwrap().push(stalled);
        tokio::time::sleep(d).await;
        return StatusCode::OK.into_response();
    }
    shared.received.lock().unwrap().push(record);
    match behavior {
        Behavior::Status(s, retry_after) => {
            let status = StatusCode::from_u16(s).unwrap();
            let mut resp = (status, format!("test listener says {s}")).into_response();
            if let Some(ra) = retry_after {
                resp.headers_mut()
                    .insert("retry-after", ra.parse().unwrap());
            }
            resp
        }
        _ => StatusCode::ACCEPTED.into_response(),
    }
}

impl Listener {
    /// An HTTP listener on a free port of 127.0.0.1.
    pub async fn start() -> Listener {
        Listener::start_on("127.0.0.1:0".parse().unwrap()).await
    }

    /// An HTTP listener on `addr` (to come back on the port of a stopped one).
    pub async fn start_on(addr: SocketAddr) -> Listener {
        let tcp = tokio::net::TcpListener::bind(addr).await.expect("bind");
        let addr = tcp.local_addr().unwrap();
        let shared = Arc::new(Shared::default());
        let app = Router::new()
            .route("/ingest", axum::routing::post(ingest))
            .with_state(shared.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(tcp, app).await;
        });
        Listener {
            addr,
            shared,
            task: Some(task),
            tls: false,
        }
    }

    /// An HTTPS listener on a free port of 127.0.0.1 with this certificate chain and key (PEM).
    pub async fn start_tls(cert_chain_pem: &str, key_pem: &str) -> Listener {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        postgres_agent::db::tls::install_crypto_provider();
        let certs: Vec<CertificateDer<'static>> =
            CertificateDer::pem_slice_iter(cert_chain_pem.as_bytes())
                .collect::<Result<_, _>>()
                .unwrap();
        let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).unwrap();
        let config = rustls::ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = tcp.local_addr().unwrap();
        let shared = Arc::new(Shared::default());
        let app = Router::new()
            .route("/ingest", axum::routing::post(ingest))
            .with_state(shared.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(TlsListener { tcp, acceptor }, app).await;
        });
        Listener {
            addr,
            shared,
            task: Some(task),
            tls: true,
        }
    }

    pub fn url(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}/ingest", self.addr.port())
    }

    pub fn set(&self, behavior: Behavior) {
        *self.shared.behavior.lock().unwrap() = Some(behavior);
    }

    /// Every request so far, in arrival order.
    pub fn received(&self) -> Vec<Received> {
        self.shared.received.lock().unwrap().clone()
    }

    /// Requests answered 2xx.
    pub fn accepted(&self) -> Vec<Received> {
        self.received()
            .into_iter()
            .filter(|r| (200..300).contains(&r.answered))
            .collect()
    }

    /// Stops serving: the port refuses connections from now on.
    pub async fn stop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
            let _ = task.await;
        }
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

struct TlsListener {
    tcp: tokio::net::TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
}

impl axum::serve::Listener for TlsListener {
    type Io = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let Ok((stream, addr)) = self.tcp.accept().await else {
                continue;
            };
            // A failed handshake (the client rejecting our certificate) is what some tests expect.
            if let Ok(tls) = self.acceptor.accept(stream).await {
                return (tls, addr);
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.tcp.local_addr()
    }
}

/// A configuration for shipping tests: state in `state_dir`, the listener at `url` (None = stdout
/// mode), plus extra INI text (later keys win).
pub fn ship_config(state_dir: &std::path::Path, url: Option<&str>, extra: &str) -> Config {
    std::fs::create_dir_all(state_dir).unwrap();
    let base = format!(
        "[agent]\nproject_id = test-project\nstate_dir = {}\n\n[listener]\nprotocol = batch\nmax_requests_per_minute = 100000\nurl = {}\napi_key = test-key\ntimeout_s = 2\n\n",
        state_dir.display(),
        url.unwrap_or("")
    );
    let ini = super::merge_ini(&base, extra);
    let path = state_dir.join("agent.ini");
    std::fs::write(&path, ini).unwrap();
    Config::load_with(Some(&path), Vec::<(String, String)>::new()).expect("valid test config")
}

/// A batch of `records` pg_activity-like records (about 250 bytes of JSON each), distinct per `seed`.
pub fn test_batch(
    kind: postgres_agent::batch::BatchKind,
    records: usize,
    seed: u64,
) -> postgres_agent::batch::Batch {
    use postgres_agent::batch::{AgentInfo, Batch, Record};
    let data = (0..records)
        .map(|i| {
            let v = serde_json::json!({
                "pid": 10_000 + i,
                "seed": seed,
                "datname": "app",
                "usename": "app_rw",
                "state": if i % 3 == 0 { "active" } else { "idle" },
                "query": format!("SELECT * FROM orders WHERE customer_id = $1 AND id > {} /* {seed} */", i * 7),
                "wait_event_type": null,
                "backend_start": "2026-11-27T00:00:00.000Z",
                "correlation": if i % 4 == 0 { Value::from(format!("req-{seed}-{i}")) } else { Value::Null },
            });
            Record::new(&v).expect("a JSON value serializes")
        })
        .collect();
    Batch::new(
        kind,
        "test-project",
        AgentInfo::new("test-host"),
        None,
        60,
        data,
    )
}
