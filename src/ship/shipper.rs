//! [`Shipper`]: the one object the daemon holds for shipping. It ties the outbox, the breaker and the
//! HTTP sender together, and switches to stdout JSON lines when no listener is configured. Sending
//! (`drain`) lives in `drain.rs`.

use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use serde::Serialize;

use super::batch::{Batch, BatchKind};
use super::breaker::{Breaker, BreakerState};
use super::encode::{EncodeCounters, Encoder, PrepareError, MAX_BODY_BYTES};
use super::held::{Held, Unremoved};
use super::http::Sender;
use super::outbox::{self, EvictionReport, NewBatch, Outbox, OutboxError, OutboxStats};
use super::python_buffer::LegacyPayload;
use super::ratelimit::RateLimiter;
use super::store::Stored;
use super::ShipError;
use crate::config::{Config, Protocol};

/// What [`Shipper::enqueue`] did with a batch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EnqueueReport {
    /// Parts stored in the outbox (more than 1 when the batch was split).
    pub stored_parts: usize,
    /// Batches evicted to make room (possibly including this one's parts).
    pub evicted: usize,
    /// True when written to stdout instead (no listener configured).
    pub stdout: bool,
    /// Requests held in memory because the outbox could not take them (full disk, read-only state
    /// directory): sent from memory, written to the outbox when it recovers, lost if the process
    /// dies first.
    pub held: usize,
}

/// Counters of this process, beside the persistent ones in the outbox.
#[derive(Debug, Default)]
pub(super) struct ProcessCounters {
    pub(super) stdout_lines: AtomicU64,
    /// Batches lost because neither the outbox nor stdout would take them.
    pub(super) enqueue_failures: AtomicU64,
    pub(super) evicted: AtomicU64,
    pub(super) dead_lettered: AtomicU64,
    pub(super) delivered: AtomicU64,
    pub(super) send_failures: AtomicU64,
    pub(super) outbox_recreated: AtomicU64,
    /// 429 answers.
    pub(super) throttled: AtomicU64,
    /// Outbox writes that failed on the storage (full disk, read-only, I/O error).
    pub(super) storage_failures: AtomicU64,
    /// Requests held in memory (cumulative) and dropped from memory at its bound.
    pub(super) held: AtomicU64,
    pub(super) held_dropped: AtomicU64,
}

/// Figures for `/metrics` and `status`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ShipStats {
    /// "outbox" or "stdout".
    pub mode: &'static str,
    pub listener_url: Option<String>,
    pub max_size_bytes: u64,
    /// Persistent figures of the outbox, when it is open.
    pub outbox: Option<OutboxStats>,
    pub breaker: Option<BreakerState>,
    /// Since this process started.
    pub process: ProcessStats,
}

/// Counters since this process started (the outbox keeps cumulative ones across restarts).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ProcessStats {
    pub stdout_lines: u64,
    pub enqueue_failures: u64,
    pub evicted: u64,
    pub dead_lettered: u64,
    pub delivered: u64,
    pub send_failures: u64,
    pub outbox_recreated: u64,
    pub throttled: u64,
    /// Correlated payloads made, statements merged and repeats not sent (bitville protocol).
    pub encode: EncodeCounters,
    pub storage_failures: u64,
    pub held_total: u64,
    pub held_dropped: u64,
    /// Requests in memory now, and their bytes.
    pub held_now: usize,
    pub held_bytes: usize,
    /// Settled requests the outbox could not remove yet (never sent again).
    pub unremoved: usize,
    /// Why the outbox does not take writes, while it does not.
    pub storage_error: Option<String>,
}

pub(super) struct Inner {
    pub(super) path: PathBuf,
    pub(super) max_size_bytes: u64,
    pub(super) outbox: Option<Outbox>,
    pub(super) sender: Option<Arc<Sender>>,
    pub(super) breaker: Breaker,
    /// Set from Retry-After: no request before this time (unix ms).
    pub(super) not_before_ms: i64,
    /// What was last written to the database, so unchanged state is not rewritten per request.
    pub(super) saved_breaker: Option<BreakerState>,
    /// `listener.max_requests_per_minute`, over both protocols and the backlog.
    pub(super) rate: RateLimiter,
    /// Requests the outbox could not take ([`super::held`]).
    pub(super) held: Held,
    /// Settled requests whose removal from the outbox failed.
    pub(super) unremoved: Unremoved,
    /// The last storage error, until a write succeeds again.
    pub(super) storage_error: Option<String>,
}

/// The shipping side of the agent. Cheap to share (`&Shipper` from any task): every method takes
/// `&self`; the outbox is behind a mutex held only for single SQLite statements, never across a
/// request.
pub struct Shipper {
    inner: Mutex<Inner>,
    /// Turns batches into stored requests (`listener.protocol`); locked only while encoding.
    encoder: Mutex<Encoder>,
    /// One drain at a time, so FIFO and the half-open single probe hold.
    pub(super) drain_lock: tokio::sync::Mutex<()>,
    pub(super) counters: ProcessCounters,
}

impl Shipper {
    /// Opens the outbox at `<agent.state_dir>/outbox.db` (when a listener is configured) and builds
    /// the HTTP client.
    pub fn open(config: &Config) -> Result<Shipper, ShipError> {
        Shipper::open_with(config, MAX_BODY_BYTES)
    }

    /// [`Shipper::open`] with a different per-request body limit (tests use small ones).
    pub fn open_with(config: &Config, max_body_bytes: usize) -> Result<Shipper, ShipError> {
        let shipper = Shipper {
            inner: Mutex::new(Inner {
                path: config.agent.state_dir.join(outbox::FILE_NAME),
                max_size_bytes: config.buffer.max_size_bytes,
                outbox: None,
                sender: None,
                breaker: Breaker::new(
                    config.circuit_breaker.failure_threshold,
                    config.circuit_breaker.recovery_timeout,
                    BreakerState::default(),
                ),
                not_before_ms: 0,
                saved_breaker: None,
                rate: RateLimiter::new(config.listener.max_requests_per_minute),
                held: Held::default(),
                unremoved: Unremoved::default(),
                storage_error: None,
            }),
            encoder: Mutex::new(Encoder::new(config, max_body_bytes)),
            drain_lock: tokio::sync::Mutex::new(()),
            counters: ProcessCounters::default(),
        };
        shipper.reconfigure(config)?;
        Ok(shipper)
    }

    /// Applies a reloaded configuration: listener, breaker and buffer settings. Queued batches are
    /// kept; a smaller cap evicts (counted) at once. `agent.state_dir` is not changed by a reload
    /// (a warning says so); restart to move the outbox.
    pub fn reconfigure(&self, config: &Config) -> Result<(), ShipError> {
        let sender = match &config.listener.url {
            Some(url) => Some(Arc::new(Sender::new(&config.listener, url)?)),
            None => None,
        };
        let mut inner = self.lock();
        let wanted = config.agent.state_dir.join(outbox::FILE_NAME);
        if inner.outbox.is_some() && wanted != inner.path {
            tracing::warn!(
                event = "reload_state_dir_ignored",
                current = %inner.path.display(),
                requested = %wanted.display(),
                "agent.state_dir cannot change on reload; restart the agent to move the outbox"
            );
        } else {
            inner.path = wanted;
        }
        inner.breaker.failure_threshold = config.circuit_breaker.failure_threshold.max(1);
        inner.breaker.recovery_timeout = config.circuit_breaker.recovery_timeout;
        inner.max_size_bytes = config.buffer.max_size_bytes;
        inner
            .rate
            .set_limit(config.listener.max_requests_per_minute);
        self.encoder().reconfigure(config);
        if sender.is_some() && inner.outbox.is_none() {
            match Outbox::open(&inner.path, inner.max_size_bytes) {
                Ok(opened) => {
                    if let Some(saved) = opened.load_breaker()? {
                        let (t, r) = (
                            inner.breaker.failure_threshold,
                            inner.breaker.recovery_timeout,
                        );
                        inner.breaker = Breaker::new(t, r, saved.clone());
                        inner.saved_breaker = Some(saved);
                    }
                    inner.outbox = Some(opened);
                }
                // An unwritable state directory: run on the memory queue; every later write
                // tries to open the outbox again.
                Err(e) if e.is_storage() => self.storage_failed(&mut inner, &e),
                Err(e) => return Err(e.into()),
            }
        }
        if sender.is_some() && config.listener.protocol == Protocol::Bitville {
            self.convert_queued(&mut inner);
        }
        let max = inner.max_size_bytes;
        if let Some(ob) = inner.outbox.as_mut() {
            if ob.max_size_bytes() != max {
                let report = ob.set_max_size(max)?;
                self.log_evictions(&report, "buffer.max_size_mb lowered");
            }
        }
        inner.sender = sender;
        Ok(())
    }

    pub(super) fn encoder(&self) -> MutexGuard<'_, Encoder> {
        // Encoding holds no state a panic could leave half-written beyond the dedup memory.
        self.encoder.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(super) fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves SQLite consistent (transactions roll back), so the
        // state behind a poisoned mutex is still usable.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes a batch: with a listener, encodes it for `listener.protocol` ([`super::encode`]) and
    /// stores its requests durably in the outbox in one transaction, returning once they are
    /// committed; without one, prints it as one JSON line on stdout.
    pub fn enqueue(&self, batch: &Batch) -> Result<EnqueueReport, ShipError> {
        let stdout_mode = self.lock().sender.is_none();
        if stdout_mode {
            return self.print(batch);
        }
        let fail = |e| {
            self.counters
                .enqueue_failures
                .fetch_add(1, Ordering::Relaxed);
            e
        };
        let encoded = self.encoder().encode(batch).map_err(|e| fail(e.into()))?;
        let mut inner = self.lock();
        if encoded.merged > 0 {
            let _ = self.with_outbox(&mut inner, |ob| {
                ob.bump("correlated_merged", encoded.merged as i64)
            });
        }
        let rows = encoded.rows;
        let n = rows.len();
        match self.store(&mut inner, rows) {
            Stored::Outbox(eviction) => {
                self.log_evictions(&eviction, "buffer.max_size_mb reached");
                Ok(EnqueueReport {
                    stored_parts: n.saturating_sub(eviction.evicted.len()),
                    evicted: eviction.evicted.len(),
                    stdout: false,
                    held: 0,
                })
            }
            Stored::Memory => Ok(EnqueueReport {
                stored_parts: 0,
                evicted: 0,
                stdout: false,
                held: n,
            }),
            Stored::Failed(e) => Err(fail(e)),
        }
    }

    /// Stores one payload of the Bitville Python agent's buffer as a bitville request, so it is
    /// sent (oldest first, before anything collected after it) like the agent's own.
    pub fn enqueue_python_payload(&self, p: &LegacyPayload) -> Result<(), ShipError> {
        let kind = match p.source.as_str() {
            "pg_stat_statements" => BatchKind::PgStatements,
            "pg_log" => BatchKind::PgLogs,
            "system_metrics" => BatchKind::SystemMetrics,
            _ => BatchKind::PgActivity,
        };
        let batch_id = uuid::Uuid::now_v7();
        let body = super::encode::gzip(p.json.as_bytes())
            .map_err(|source| ShipError::from(PrepareError::Gzip { batch_id, source }))?;
        let collected_at =
            time::OffsetDateTime::from_unix_timestamp_nanos((p.timestamp * 1e9) as i128)
                .map(super::batch::format_rfc3339)
                .unwrap_or_else(|_| super::batch::now_rfc3339());
        let row = NewBatch {
            batch_id,
            kind,
            collected_at,
            body,
            protocol: Protocol::Bitville,
        };
        let mut inner = self.lock();
        let eviction = self.with_outbox(&mut inner, |ob| ob.push(&row))?;
        self.log_evictions(&eviction, "buffer.max_size_mb reached");
        Ok(())
    }

    fn print(&self, batch: &Batch) -> Result<EnqueueReport, ShipError> {
        let line = serde_json::to_string(batch).map_err(|source| {
            self.counters
                .enqueue_failures
                .fetch_add(1, Ordering::Relaxed);
            ShipError::Json {
                batch_id: batch.batch_id,
                source,
            }
        })?;
        let mut out = std::io::stdout().lock();
        writeln!(out, "{line}")
            .and_then(|_| out.flush())
            .map_err(|source| {
                self.counters
                    .enqueue_failures
                    .fetch_add(1, Ordering::Relaxed);
                ShipError::Stdout { source }
            })?;
        self.counters.stdout_lines.fetch_add(1, Ordering::Relaxed);
        Ok(EnqueueReport {
            stored_parts: 0,
            evicted: 0,
            stdout: true,
            held: 0,
        })
    }

    /// Runs `f` on the open outbox; a corrupt database is moved aside, replaced, and `f` retried
    /// once on the fresh one.
    pub(super) fn with_outbox<T>(
        &self,
        inner: &mut Inner,
        f: impl Fn(&mut Outbox) -> Result<T, OutboxError>,
    ) -> Result<T, ShipError> {
        if inner.outbox.is_none() {
            inner.outbox = Some(Outbox::open(&inner.path, inner.max_size_bytes)?);
        }
        let Some(ob) = inner.outbox.as_mut() else {
            return Err(ShipError::NoOutbox);
        };
        match f(ob) {
            Err(e) if e.is_corruption() => {
                inner.outbox = None;
                let mut fresh = Outbox::recover(&inner.path, inner.max_size_bytes, &e)?;
                self.counters
                    .outbox_recreated
                    .fetch_add(1, Ordering::Relaxed);
                let _ = fresh.save_breaker(inner.breaker.state());
                let result = f(&mut fresh);
                inner.outbox = Some(fresh);
                Ok(result?)
            }
            other => Ok(other?),
        }
    }

    /// A batch-level field (for example `log_position`) of the newest waiting batch of `kind`:
    /// what the log reader needs on start to skip entries already written to the outbox before a
    /// crash. None in stdout mode, when nothing of that kind waits, or when the body is unreadable.
    pub fn newest_field(&self, kind: BatchKind, field: &str) -> Option<serde_json::Value> {
        let mut inner = self.lock();
        inner.sender.as_ref()?;
        let body = self
            .with_outbox(&mut inner, |ob| ob.newest_body(kind))
            .ok()??;
        let mut json = Vec::new();
        std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&body[..]), &mut json).ok()?;
        let mut value: serde_json::Value = serde_json::from_slice(&json).ok()?;
        // Batch protocol: an envelope field; bitville: inside `data`.
        if value.get(field).is_none() {
            value = value.get_mut("data")?.take();
        }
        value.get_mut(field).map(serde_json::Value::take)
    }

    pub(super) fn log_evictions(&self, report: &EvictionReport, why: &str) {
        self.counters
            .evicted
            .fetch_add(report.evicted.len() as u64, Ordering::Relaxed);
        for (kind, id) in &report.evicted {
            tracing::warn!(event = "outbox_evicted", kind = %kind, batch_id = %id, reason = why,
                "outbox full: evicted the oldest batch");
        }
        if report.dead_letters_dropped > 0 {
            tracing::warn!(
                event = "dead_letters_dropped",
                count = report.dead_letters_dropped,
                reason = why,
                "outbox full: dropped the oldest dead letters to make room"
            );
        }
    }

    /// Current figures (reads the outbox; cheap).
    pub fn stats(&self) -> Result<ShipStats, ShipError> {
        let mut inner = self.lock();
        let outbox = match inner.outbox.is_some() {
            true => Some(self.with_outbox(&mut inner, |ob| ob.stats())?),
            false => None,
        };
        let c = &self.counters;
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        Ok(ShipStats {
            mode: if inner.sender.is_some() {
                "outbox"
            } else {
                "stdout"
            },
            listener_url: inner.sender.as_ref().map(|s| s.url().to_string()),
            max_size_bytes: inner.max_size_bytes,
            outbox,
            breaker: inner.sender.as_ref().map(|_| inner.breaker.state().clone()),
            process: ProcessStats {
                stdout_lines: load(&c.stdout_lines),
                enqueue_failures: load(&c.enqueue_failures),
                evicted: load(&c.evicted),
                dead_lettered: load(&c.dead_lettered),
                delivered: load(&c.delivered),
                send_failures: load(&c.send_failures),
                outbox_recreated: load(&c.outbox_recreated),
                throttled: load(&c.throttled),
                encode: self.encoder().counters(),
                storage_failures: load(&c.storage_failures),
                held_total: load(&c.held),
                held_dropped: load(&c.held_dropped),
                held_now: inner.held.len(),
                held_bytes: inner.held.bytes(),
                unremoved: inner.unremoved.len(),
                storage_error: inner.storage_error.clone(),
            },
        })
    }
}
