//! The `/health` and `/metrics` HTTP endpoint on `telemetry.listen` (127.0.0.1:9188 by default).
//!
//! `/health` answers 200 when the last cycle succeeded within three intervals, else 503; the JSON body
//! gives the reasons. `/metrics` renders [`super::metrics::Metrics`] in the Prometheus text format.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use prometheus_client::registry::Registry;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use super::metrics::Metrics;

/// What `/health` judges by; updated by the daemon after every cycle.
#[derive(Debug, Clone)]
pub struct HealthState {
    pub started: Instant,
    pub interval: Duration,
    pub last_success: Option<Instant>,
    pub last_error: Option<String>,
    /// Conditions that make the agent unhealthy while they last (data that cannot be stored),
    /// by name.
    pub conditions: std::collections::BTreeMap<&'static str, String>,
}

/// Shared between the daemon and the endpoint.
#[derive(Clone)]
pub struct Telemetry {
    pub metrics: Metrics,
    registry: Arc<Registry>,
    health: Arc<Mutex<HealthState>>,
}

impl Telemetry {
    pub fn new(interval: Duration) -> Telemetry {
        let metrics = Metrics::default();
        let mut registry = Registry::default();
        metrics.register(&mut registry);
        Telemetry {
            metrics,
            registry: Arc::new(registry),
            health: Arc::new(Mutex::new(HealthState {
                started: Instant::now(),
                interval,
                last_success: None,
                last_error: None,
                conditions: Default::default(),
            })),
        }
    }

    /// Records a finished cycle: `error` is None when it succeeded.
    pub fn record_cycle(&self, error: Option<String>) {
        if let Ok(mut h) = self.health.lock() {
            match error {
                None => {
                    h.last_success = Some(Instant::now());
                    h.last_error = None;
                }
                Some(e) => h.last_error = Some(e),
            }
        }
    }

    /// Sets (`Some(reason)`) or clears a condition that makes `/health` answer 503.
    pub fn set_condition(&self, name: &'static str, reason: Option<String>) {
        if let Ok(mut h) = self.health.lock() {
            match reason {
                Some(r) => {
                    h.conditions.insert(name, r);
                }
                None => {
                    h.conditions.remove(name);
                }
            }
        }
    }

    pub fn set_interval(&self, interval: Duration) {
        if let Ok(mut h) = self.health.lock() {
            h.interval = interval;
        }
    }

    /// (healthy, JSON body).
    pub fn health(&self) -> (bool, serde_json::Value) {
        let Ok(h) = self.health.lock().map(|h| h.clone()) else {
            return (
                false,
                json!({"status": "unhealthy", "reasons": ["health state poisoned"]}),
            );
        };
        let window = h.interval * 3;
        let mut reasons = Vec::new();
        let age = h.last_success.map(|t| t.elapsed());
        match age {
            Some(a) if a <= window => {}
            Some(a) => reasons.push(format!(
                "last successful cycle {:.0}s ago, more than 3 intervals ({}s)",
                a.as_secs_f64(),
                window.as_secs()
            )),
            None if h.started.elapsed() <= window => {}
            None => reasons.push(format!(
                "no successful cycle since start {:.0}s ago",
                h.started.elapsed().as_secs_f64()
            )),
        }
        if let (Some(e), false) = (&h.last_error, reasons.is_empty()) {
            reasons.push(format!("last error: {e}"));
        }
        reasons.extend(h.conditions.values().cloned());
        let healthy = reasons.is_empty();
        (
            healthy,
            json!({
                "status": if healthy { "ok" } else { "unhealthy" },
                "reasons": reasons,
                "last_success_age_s": age.map(|a| a.as_secs_f64()),
                "last_error": h.last_error,
                "uptime_s": h.started.elapsed().as_secs_f64(),
            }),
        )
    }

    /// The Prometheus text exposition.
    pub fn render_metrics(&self) -> String {
        self.metrics.refresh_process();
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

async fn health(State(t): State<Telemetry>) -> impl IntoResponse {
    let (ok, body) = t.health();
    let status = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
}

async fn metrics(State(t): State<Telemetry>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        t.render_metrics(),
    )
}

/// Binds `addr` and serves until `shutdown` is cancelled. Returns the bound address.
pub async fn serve(
    addr: SocketAddr,
    telemetry: Telemetry,
    shutdown: CancellationToken,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    let app = Router::new()
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .with_state(telemetry);
    let handle = tokio::spawn(async move {
        let result = axum::serve(listener, app)
            .with_graceful_shutdown(async move { shutdown.cancelled().await })
            .await;
        if let Err(e) = result {
            tracing::error!(error = %e, "telemetry endpoint stopped");
        }
    });
    Ok((bound, handle))
}
