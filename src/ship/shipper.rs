//! [`Shipper`]: the one object the daemon holds for shipping. It ties the outbox, the breaker and the
//! HTTP sender together, and switches to stdout JSON lines when no listener is configured. Sending
//! (`drain`) lives in `drain.rs`.

use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use parking_lot::MutexGuard;

use serde::Serialize;

use super::breaker::{Breaker, BreakerState};
use super::encode::{EncodeCounters, Encoder, PrepareError, MAX_BODY_BYTES};
use super::held::{Held, Unremoved};
use super::http::Sender;
use super::outbox::cursor::LogCursor;
use super::outbox::{self, EvictionReport, NewBatch, Outbox, OutboxError, OutboxStats};
use super::python_buffer::LegacyPayload;
use super::ratelimit::RateLimiter;
use super::ShipError;
use crate::batch::Batch;
use crate::config::{Config, Protocol};
use crate::telemetry::registry::{Counters, Event};

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

/// Where [`Shipper::store`] put a batch's requests.
pub(super) enum Stored {
    Outbox(EvictionReport),
    Memory,
    Failed(ShipError),
}

/// How long a writer waits for the outbox while another one holds it, before it holds its
/// requests in memory instead: SQLite statements take milliseconds, so a longer wait means a
/// writer is stuck on the storage (a hung disk or file system).
pub const STORAGE_WAIT: Duration = Duration::from_secs(2);
/// The same wait while the outbox is known to be stuck, so that each write fails fast.
const STALLED_WAIT: Duration = Duration::from_millis(20);
/// The batch-level field of a pg_logs batch that carries the log position on the wire (kept for
/// the listener; the outbox keeps its own copy, [`outbox::cursor`]).
pub const LOG_CURSOR_FIELD: &str = "log_position";
/// How long `stats()` waits for the outbox before answering with the figures it read last.
const STATS_WAIT: Duration = Duration::from_millis(100);

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
    /// Held in memory at exit and not sent (lost).
    pub held_lost: u64,
    /// Writes that found the outbox stuck (a hung disk) and went to memory.
    pub storage_stalls: u64,
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
    /// When the failure to save the breaker was last said: a disk that flaps between full and not
    /// (eviction frees a page, the next write takes it) is said once per [`super::drain::SAY_AGAIN_AFTER`].
    pub(super) breaker_save_said: Option<std::time::Instant>,
    /// A failure was said and its recovery not yet.
    pub(super) breaker_save_recovery_due: bool,
    /// The reserve file could not be made (said once until it exists).
    pub(super) reserve_missing: bool,
    /// The newest request imported from the Python agent's buffer: those go before anything else,
    /// strictly in order, so the fresh share of a pass waits until they are sent.
    pub(super) imported_until_seq: i64,
    /// `agent.collection_interval`: a request waiting longer than two of them makes a backlog.
    pub(super) interval: Duration,
    /// `listener.max_requests_per_minute` where it applies, over new data and the backlog.
    pub(super) rate: RateLimiter,
    /// Settled requests whose removal from the outbox failed.
    pub(super) unremoved: Unremoved,
    /// The last storage error, until a write succeeds again.
    pub(super) storage_error: Option<String>,
}

/// The shipping side of the agent. Cheap to share (`&Shipper` from any task): every method takes
/// `&self`; the outbox is behind a mutex held only for single SQLite statements, never across a
/// request.
pub struct Shipper {
    /// Locked blocking only by the delivery thread and the commands; the daemon's other writers
    /// wait [`STORAGE_WAIT`] at most ([`Shipper::lock_within`]).
    inner: parking_lot::Mutex<Inner>,
    /// Requests the outbox could not take ([`super::held`]): outside `inner`, so a writer can hold
    /// its requests while another one is stuck in the outbox. Locked for memory work only, and
    /// never while waiting for `inner`.
    pub(super) held: Mutex<Held>,
    /// A listener is configured (else batches go to stdout).
    has_listener: AtomicBool,
    /// Since when (unix ms) the outbox has not been available to writers; 0 when it is.
    stalled_since_ms: AtomicI64,
    /// The figures `stats()` read last, for when the outbox is stuck.
    last_stats: Mutex<Option<ShipStats>>,
    /// Turns batches into stored requests (`listener.protocol`); locked only while encoding.
    encoder: Mutex<Encoder>,
    /// One drain at a time, so FIFO and the half-open single probe hold.
    pub(super) drain_lock: tokio::sync::Mutex<()>,
    /// What this process counts (the daemon's registry, exported on /metrics).
    pub(super) counters: Counters,
}

impl Shipper {
    /// Opens the outbox at `<agent.state_dir>/outbox.db` (when a listener is configured) and builds
    /// the HTTP client.
    pub fn open(config: &Config) -> Result<Shipper, ShipError> {
        Shipper::open_counted(config, MAX_BODY_BYTES, Counters::default())
    }

    /// [`Shipper::open`] with a different per-request body limit (tests use small ones).
    pub fn open_with(config: &Config, max_body_bytes: usize) -> Result<Shipper, ShipError> {
        Shipper::open_counted(config, max_body_bytes, Counters::default())
    }

    /// [`Shipper::open_with`] counting into `counters` (the daemon's registry).
    pub fn open_counted(
        config: &Config,
        max_body_bytes: usize,
        counters: Counters,
    ) -> Result<Shipper, ShipError> {
        let shipper = Shipper {
            inner: parking_lot::Mutex::new(Inner {
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
                breaker_save_said: None,
                breaker_save_recovery_due: false,
                reserve_missing: false,
                imported_until_seq: 0,
                interval: config.agent.collection_interval,
                rate: RateLimiter::new(config.listener.request_limit()),
                unremoved: Unremoved::default(),
                storage_error: None,
            }),
            held: Mutex::new(Held::default()),
            has_listener: AtomicBool::new(false),
            stalled_since_ms: AtomicI64::new(0),
            last_stats: Mutex::new(None),
            encoder: Mutex::new(Encoder::new(config, max_body_bytes)),
            drain_lock: tokio::sync::Mutex::new(()),
            counters,
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
        inner.interval = config.agent.collection_interval;
        inner.rate.set_limit(config.listener.request_limit());
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
                    self.check_reserve(&mut inner);
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
        self.has_listener.store(sender.is_some(), Ordering::Relaxed);
        inner.sender = sender;
        Ok(())
    }

    /// True when a listener is configured (else batches go to stdout).
    pub fn has_listener(&self) -> bool {
        self.has_listener.load(Ordering::Relaxed)
    }

    pub(super) fn encoder(&self) -> std::sync::MutexGuard<'_, Encoder> {
        // Encoding holds no state a panic could leave half-written beyond the dedup memory.
        self.encoder.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The outbox, waiting as long as it takes: for the delivery thread and the commands. (A panic
    /// while holding the lock leaves SQLite consistent, transactions roll back; parking_lot's
    /// mutex does not poison.)
    pub(super) fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock()
    }

    /// The outbox, if it is free within [`STORAGE_WAIT`] (20 ms while it is known to be stuck);
    /// None means a writer is stuck on the storage, and the caller holds its requests in memory.
    pub(super) fn lock_within(&self) -> Option<MutexGuard<'_, Inner>> {
        let since = self.stalled_since_ms.load(Ordering::Relaxed);
        let wait = if since == 0 {
            STORAGE_WAIT
        } else {
            STALLED_WAIT
        };
        match self.inner.try_lock_for(wait) {
            Some(guard) => {
                if since != 0 {
                    self.stalled_since_ms.store(0, Ordering::Relaxed);
                    tracing::info!(
                        event = "outbox_answers",
                        stalled_ms = crate::clock::now_ms() - since,
                        "the outbox answers again"
                    );
                }
                Some(guard)
            }
            None => {
                self.counters.add(Event::OutboxStorageStalls, 1);
                if since == 0 {
                    self.stalled_since_ms.store(
                        crate::clock::now_ms() - wait.as_millis() as i64,
                        Ordering::Relaxed,
                    );
                    tracing::error!(
                        event = "outbox_stalled",
                        waited_ms = wait.as_millis() as u64,
                        "the outbox has been busy for seconds: a write is stuck on the storage (a \
                         hung disk or file system?); holding new requests in memory"
                    );
                }
                None
            }
        }
    }

    /// Why the outbox takes no writes now, if it does not: stuck, or failing.
    fn storage_problem(&self, failing: Option<&String>) -> Option<String> {
        let since = self.stalled_since_ms.load(Ordering::Relaxed);
        if since != 0 {
            return Some(format!(
                "a write has been stuck for {} s (a hung disk or file system?)",
                (crate::clock::now_ms() - since).max(0) / 1000
            ));
        }
        failing.cloned()
    }

    pub(super) fn held(&self) -> std::sync::MutexGuard<'_, Held> {
        // Memory only: a panic cannot leave it half-written in a way that matters.
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes a batch: with a listener, encodes it for `listener.protocol` ([`super::encode`]) and
    /// stores its requests durably in the outbox in one transaction, returning once they are
    /// committed; without one, prints it as one JSON line on stdout.
    pub fn enqueue(&self, batch: &Batch) -> Result<EnqueueReport, ShipError> {
        self.enqueue_with_cursor(batch, None)
    }

    /// [`Shipper::enqueue`] of a pg_logs batch with the log position after its entries (`cursor`,
    /// JSON text), stored in the outbox in the same transaction as the batch's requests and read
    /// back on start by [`Shipper::log_cursor`]. Requests held in memory (the outbox takes no
    /// writes) keep it only in their body.
    pub fn enqueue_with_cursor(
        &self,
        batch: &Batch,
        cursor: Option<&str>,
    ) -> Result<EnqueueReport, ShipError> {
        if !self.has_listener.load(Ordering::Relaxed) {
            return self.print(batch);
        }
        let fail = |e| {
            self.counters.add(Event::EnqueueFailures, 1);
            e
        };
        let encoded = self.encoder().encode(batch).map_err(|e| fail(e.into()))?;
        self.counters.add(
            Event::CorrelatedPayloads,
            encoded.correlated_payloads as u64,
        );
        self.counters
            .add(Event::CorrelatedMerged, encoded.merged as u64);
        self.counters
            .add(Event::CorrelatedRepeated, encoded.repeated as u64);
        let Some(mut inner) = self.lock_within() else {
            // Another writer is stuck on the storage: memory, sent from there while the listener
            // answers, written once the outbox answers again.
            let n = encoded.rows.len();
            self.hold(encoded.rows);
            return Ok(EnqueueReport {
                stored_parts: 0,
                evicted: 0,
                stdout: false,
                held: n,
            });
        };
        if encoded.merged > 0 {
            let _ = self.with_outbox(&mut inner, |ob| {
                ob.bump("correlated_merged", encoded.merged as i64)
            });
        }
        let rows = encoded.rows;
        let n = rows.len();
        match self.store(&mut inner, rows, cursor) {
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
        let kind = super::encode::bitville::kind_of_source(&p.source);
        let batch_id = uuid::Uuid::now_v7();
        let body = super::encode::gzip(p.json.as_bytes())
            .map_err(|source| ShipError::from(PrepareError::Gzip { batch_id, source }))?;
        let collected_at =
            time::OffsetDateTime::from_unix_timestamp_nanos((p.timestamp * 1e9) as i128)
                .map(crate::clock::format_rfc3339)
                .unwrap_or_else(|_| crate::clock::now_rfc3339());
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
        if let Ok(seq) = self.with_outbox(&mut inner, |ob| ob.max_seq()) {
            inner.imported_until_seq = seq;
        }
        Ok(())
    }

    fn print(&self, batch: &Batch) -> Result<EnqueueReport, ShipError> {
        let line = serde_json::to_string(batch).map_err(|source| {
            self.counters.add(Event::EnqueueFailures, 1);
            ShipError::Json {
                batch_id: batch.batch_id,
                source,
            }
        })?;
        let mut out = std::io::stdout().lock();
        writeln!(out, "{line}")
            .and_then(|_| out.flush())
            .map_err(|source| {
                self.counters.add(Event::EnqueueFailures, 1);
                ShipError::Stdout { source }
            })?;
        self.counters.add(Event::StdoutLines, 1);
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
                self.counters.add(Event::OutboxRecreated, 1);
                let _ = fresh.save_breaker(inner.breaker.state());
                let result = f(&mut fresh);
                inner.outbox = Some(fresh);
                Ok(result?)
            }
            other => Ok(other?),
        }
    }

    /// The log cursor stored with the newest waiting pg_logs batch ([`outbox::cursor`]): what the
    /// log reader needs on start to skip entries already written to the outbox before a crash.
    /// None in stdout mode, when no pg_logs batch waits, or when it cannot be read. A request
    /// written by the previous version (or first held in memory) has its cursor only in its body,
    /// as `log_position` (an envelope field in the batch protocol, inside `data` in bitville):
    /// read from there.
    pub fn log_cursor(&self) -> Option<serde_json::Value> {
        let mut inner = self.lock();
        inner.sender.as_ref()?;
        match self.with_outbox(&mut inner, |ob| ob.log_cursor()).ok()?? {
            LogCursor::Stored(text) => serde_json::from_str(&text).ok(),
            LogCursor::InBody(body) => {
                let mut json = Vec::new();
                std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&body[..]), &mut json)
                    .ok()?;
                let mut value: serde_json::Value = serde_json::from_slice(&json).ok()?;
                if value.get(LOG_CURSOR_FIELD).is_none() {
                    value = value.get_mut("data")?.take();
                }
                value.get_mut(LOG_CURSOR_FIELD).map(serde_json::Value::take)
            }
        }
    }

    pub(super) fn log_evictions(&self, report: &EvictionReport, why: &str) {
        self.counters
            .add(Event::RequestsEvicted, report.evicted.len() as u64);
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

    /// The directory of the outbox, unless the outbox is stuck (a hung disk).
    pub fn state_dir(&self) -> Option<PathBuf> {
        let inner = self.inner.try_lock_for(STATS_WAIT)?;
        inner.path.parent().map(|p| p.to_path_buf())
    }

    /// Current figures (reads the outbox; cheap). While the outbox is stuck (a hung disk), the
    /// figures it gave last, with the counters of now.
    pub fn stats(&self) -> Result<ShipStats, ShipError> {
        let Some(mut inner) = self.inner.try_lock_for(STATS_WAIT) else {
            let last = self.last_stats.lock().ok().and_then(|l| l.clone());
            return Ok(match last {
                Some(mut s) => {
                    s.process = self.process_stats(None, None);
                    s
                }
                None => ShipStats {
                    mode: "outbox",
                    listener_url: None,
                    max_size_bytes: 0,
                    outbox: None,
                    breaker: None,
                    process: self.process_stats(None, None),
                },
            });
        };
        let outbox = match inner.outbox.is_some() {
            true => Some(self.with_outbox(&mut inner, |ob| ob.stats())?),
            false => None,
        };
        let stats = ShipStats {
            mode: if inner.sender.is_some() {
                "outbox"
            } else {
                "stdout"
            },
            listener_url: inner.sender.as_ref().map(|s| s.url().to_string()),
            max_size_bytes: inner.max_size_bytes,
            outbox,
            breaker: inner.sender.as_ref().map(|_| inner.breaker.state().clone()),
            process: self.process_stats(Some(inner.unremoved.len()), inner.storage_error.as_ref()),
        };
        drop(inner);
        if let Ok(mut last) = self.last_stats.lock() {
            *last = Some(stats.clone());
        }
        Ok(stats)
    }

    /// This process's counters; `unremoved` and the storage error come from the outbox's state
    /// when it could be read.
    fn process_stats(&self, unremoved: Option<usize>, failing: Option<&String>) -> ProcessStats {
        let c = &self.counters;
        let (held_now, held_bytes) = {
            let held = self.held();
            (held.len(), held.bytes())
        };
        ProcessStats {
            stdout_lines: c.get(Event::StdoutLines),
            enqueue_failures: c.get(Event::EnqueueFailures),
            evicted: c.get(Event::RequestsEvicted),
            dead_lettered: c.get(Event::RequestsDeadLettered),
            delivered: c.get(Event::RequestsDelivered),
            send_failures: c.get(Event::SendFailures),
            outbox_recreated: c.get(Event::OutboxRecreated),
            throttled: c.get(Event::RequestsThrottled),
            encode: EncodeCounters {
                correlated_payloads: c.get(Event::CorrelatedPayloads),
                correlated_merged: c.get(Event::CorrelatedMerged),
                correlated_repeated: c.get(Event::CorrelatedRepeated),
            },
            storage_failures: c.get(Event::OutboxStorageFailures),
            held_total: c.get(Event::RequestsHeld),
            held_dropped: c.get(Event::HeldDropped),
            held_lost: c.get(Event::HeldLost),
            storage_stalls: c.get(Event::OutboxStorageStalls),
            held_now,
            held_bytes,
            unremoved: unremoved.unwrap_or(0),
            storage_error: self.storage_problem(failing),
        }
    }
}
