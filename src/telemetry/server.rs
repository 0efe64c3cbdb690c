//! The `/health` and `/metrics` HTTP endpoint on `telemetry.listen` (127.0.0.1:9188 by default).
//!
//! `/health` tells the truth ([`Telemetry::health`]): 503 `starting` until the first successful
//! cycle; 503 `unhealthy` while cycles fail or data is being lost or cannot be stored (each reason
//! under its code in `conditions`); 200 `degraded` while the agent works with something missing (a
//! warning, say an extension, or an open circuit breaker); 200 `ok` otherwise. Delivery is judged
//! in [`super::delivery_health`]. docs/operations.md lists every code. `/metrics`
//! renders [`super::metrics::Metrics`] in the Prometheus text format.

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

use super::conditions::{Condition, Effect};
use super::delivery_health::DeliveryHealth;
use super::metrics::Metrics;
use super::registry::Counters;

/// What `/health` judges by; updated by the daemon after every cycle.
#[derive(Debug, Clone)]
pub struct HealthState {
    pub started: Instant,
    pub interval: Duration,
    pub last_success: Option<Instant>,
    pub last_error: Option<String>,
    /// Conditions that make the agent unhealthy while they last (data that cannot be stored or is
    /// being lost), by [`Condition::code`]; some expire by themselves (an event "in the last interval").
    pub conditions: std::collections::BTreeMap<&'static str, (String, Option<Instant>)>,
    /// What the agent works without (200, `degraded`), by code.
    pub warnings: std::collections::BTreeMap<&'static str, String>,
    /// `breaker_open` (a warning) and `delivery_failing` (a condition).
    pub delivery: DeliveryHealth,
}

/// Shared between the daemon and the endpoint.
#[derive(Clone)]
pub struct Telemetry {
    pub metrics: Metrics,
    /// Everything the agent counts ([`super::registry`]), handed down to the parts that count.
    pub counters: Counters,
    registry: Arc<Registry>,
    health: Arc<Mutex<HealthState>>,
}

impl Telemetry {
    pub fn new(interval: Duration) -> Telemetry {
        let metrics = Metrics::default();
        let counters = Counters::default();
        let mut registry = Registry::default();
        metrics.register(&mut registry);
        counters.register(&mut registry);
        Telemetry {
            metrics,
            counters,
            registry: Arc::new(registry),
            health: Arc::new(Mutex::new(HealthState {
                started: Instant::now(),
                interval,
                last_success: None,
                last_error: None,
                conditions: Default::default(),
                warnings: Default::default(),
                delivery: DeliveryHealth::default(),
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

    /// Sets (`Some(reason)`) or clears `condition`: while set, `/health` answers 503 (an
    /// [`Effect::Unhealthy`] code) or says `degraded` (an [`Effect::Degraded`] one).
    pub fn set_condition(&self, condition: Condition, reason: Option<String>) {
        if let Ok(mut h) = self.health.lock() {
            let code = condition.code();
            match (condition.effect(), reason) {
                (Effect::Unhealthy, Some(r)) => {
                    h.conditions.insert(code, (r, None));
                }
                (Effect::Unhealthy, None) => {
                    h.conditions.remove(code);
                }
                (Effect::Degraded, Some(r)) => {
                    h.warnings.insert(code, r);
                }
                (Effect::Degraded, None) => {
                    h.warnings.remove(code);
                }
            }
        }
    }

    /// Sets an [`Effect::Unhealthy`] condition for `lasting` (an event such as a dead letter,
    /// reported for one interval).
    pub fn set_condition_for(&self, condition: Condition, reason: String, lasting: Duration) {
        debug_assert_eq!(condition.effect(), Effect::Unhealthy);
        if let Ok(mut h) = self.health.lock() {
            h.conditions
                .insert(condition.code(), (reason, Some(Instant::now() + lasting)));
        }
    }

    /// After a delivery pass: why sending fails (None once a request was accepted) and why the
    /// circuit breaker is open (None while closed); see [`DeliveryHealth`].
    pub fn record_delivery(&self, failing: Option<String>, breaker_open: Option<String>) {
        if let Ok(mut h) = self.health.lock() {
            h.delivery.update(failing, breaker_open, Instant::now());
        }
    }

    /// `telemetry.unhealthy_after_s`.
    pub fn set_unhealthy_after(&self, after: Duration) {
        if let Ok(mut h) = self.health.lock() {
            h.delivery.set_unhealthy_after(after);
        }
    }

    pub fn set_interval(&self, interval: Duration) {
        if let Ok(mut h) = self.health.lock() {
            h.interval = interval;
        }
    }

    /// (healthy, JSON body): `status` is `starting`, `unhealthy`, `degraded` or `ok`; `reasons`
    /// the messages of what makes it unhealthy, `conditions` the same by code, `warnings` what it
    /// works without.
    pub fn health(&self) -> (bool, serde_json::Value) {
        let Ok(mut h) = self.health.lock().map(|h| h.clone()) else {
            return (
                false,
                json!({"status": "unhealthy", "reasons": ["health state poisoned"]}),
            );
        };
        let now = Instant::now();
        h.conditions
            .retain(|_, (_, until)| until.is_none_or(|u| u > now));
        let window = h.interval * 3;
        let mut conditions = serde_json::Map::new();
        let age = h.last_success.map(|t| t.elapsed());
        let starting = age.is_none() && h.started.elapsed() <= window;
        match age {
            Some(a) if a <= window => {}
            Some(a) => {
                conditions.insert(
                    Condition::CyclesFailing.code().into(),
                    format!(
                        "last successful cycle {:.0}s ago, more than 3 intervals ({}s)",
                        a.as_secs_f64(),
                        window.as_secs()
                    )
                    .into(),
                );
            }
            None if starting => {
                conditions.insert(
                    Condition::Starting.code().into(),
                    "starting: no cycle has succeeded yet".into(),
                );
            }
            None => {
                conditions.insert(
                    Condition::CyclesFailing.code().into(),
                    format!(
                        "no successful cycle since start {:.0}s ago",
                        h.started.elapsed().as_secs_f64()
                    )
                    .into(),
                );
            }
        }
        if let (Some(e), false) = (&h.last_error, conditions.is_empty()) {
            conditions.insert(
                Condition::LastError.code().into(),
                format!("last error: {e}").into(),
            );
        }
        for (code, (reason, _)) in &h.conditions {
            conditions.insert((*code).into(), reason.clone().into());
        }
        let (failing, breaker_open) = h.delivery.judge(now);
        if let Some(reason) = failing {
            conditions.insert(Condition::DeliveryFailing.code().into(), reason.into());
        }
        if let Some(reason) = breaker_open {
            h.warnings.insert(Condition::BreakerOpen.code(), reason);
        }
        let healthy = conditions.is_empty();
        let status = match (starting, healthy, h.warnings.is_empty()) {
            (true, _, _) => "starting",
            (false, false, _) => "unhealthy",
            (false, true, false) => "degraded",
            (false, true, true) => "ok",
        };
        let reasons: Vec<serde_json::Value> = conditions.values().cloned().collect();
        (
            healthy,
            json!({
                "status": status,
                "reasons": reasons,
                "conditions": conditions,
                "warnings": h.warnings,
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
