//! [`Storage`]: the storage half of the shipper. It owns the outbox (SQLite, [`super::outbox`]),
//! the requests held in memory while the outbox takes no writes ([`super::held`]), settled requests
//! not yet removed, eviction and disk space, a vanished or corrupt outbox file, the pick of the next
//! request to send ([`queue`]), and the saved copy of the breaker state (an outbox rebuilt from
//! scratch needs it). It never sends and never calls delivery: [`super::delivery::Delivery`] calls
//! it, and [`super::Shipper`] (the front) hands it encoded requests.
//!
//! Lock order (the whole shipper): the delivery pass lock, then the delivery state, then the
//! storage state (`Storage::state`), then the held requests. Delivery releases its state before it
//! calls storage, so a storage stuck on a hung disk never blocks `stats()` through delivery.

use std::path::PathBuf;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use parking_lot::MutexGuard;

use super::breaker::BreakerState;
use super::held::{Held, Unremoved};
use super::outbox::cursor::LogCursor;
use super::outbox::{self, EvictionReport, NewBatch, Outbox, OutboxError, OutboxStats};
use super::ShipError;
use crate::config::Config;
use crate::telemetry::registry::{Counters, Event};

mod fallback;
pub mod queue;
pub mod recreate;

pub use queue::{Next, Stored};

/// How long a writer waits for the outbox while another one holds it, before it holds its
/// requests in memory instead: SQLite statements take milliseconds, so a longer wait means a
/// writer is stuck on the storage (a hung disk or file system).
pub const STORAGE_WAIT: Duration = Duration::from_secs(2);
/// The same wait while the outbox is known to be stuck, so that each write fails fast.
const STALLED_WAIT: Duration = Duration::from_millis(20);
/// The batch-level field of a pg_logs batch that carries the log position on the wire (kept for
/// the listener; the outbox keeps its own copy, [`outbox::cursor`]).
pub const LOG_CURSOR_FIELD: &str = "log_position";
/// How long `figures()` waits for the outbox before answering with the figures it read last.
const STATS_WAIT: Duration = Duration::from_millis(100);
/// How often a failure to save the breaker state is said while the disk keeps failing or flapping.
pub const SAY_AGAIN_AFTER: Duration = Duration::from_secs(600);

/// What the storage half tells `stats()`.
#[derive(Debug, Clone, PartialEq)]
pub struct StorageFigures {
    pub max_size_bytes: u64,
    /// Persistent figures of the outbox, when it is open.
    pub outbox: Option<OutboxStats>,
    /// Requests in memory now, and their bytes.
    pub held_now: usize,
    pub held_bytes: usize,
    /// Settled requests the outbox could not remove yet (0 while the outbox is stuck).
    pub unremoved: usize,
    /// Why the outbox takes no writes now, while it does not.
    pub storage_error: Option<String>,
}

/// Behind `Storage::state`: locked for single SQLite statements, never across a request.
struct State {
    path: PathBuf,
    max_size_bytes: u64,
    outbox: Option<Outbox>,
    /// The breaker state delivery gave last: written into an outbox made anew (a corrupt or
    /// vanished file), so the circuit survives the rebuild.
    breaker: BreakerState,
    /// What was last written to the database, so unchanged state is not rewritten per request.
    saved_breaker: Option<BreakerState>,
    /// When the failure to save the breaker was last said: a disk that flaps between full and not
    /// (eviction frees a page, the next write takes it) is said once per [`SAY_AGAIN_AFTER`].
    breaker_save_said: Option<Instant>,
    /// A failure was said and its recovery not yet.
    breaker_save_recovery_due: bool,
    /// The reserve file could not be made (said once until it exists).
    reserve_missing: bool,
    /// The newest request imported from the Python agent's buffer: those go before anything else,
    /// strictly in order, so the fresh share of a pass waits until they are sent.
    imported_until_seq: i64,
    /// `agent.collection_interval`: a request waiting longer than two of them makes a backlog.
    interval: Duration,
    /// Settled requests whose removal from the outbox failed.
    unremoved: Unremoved,
    /// The last storage error, until a write succeeds again.
    storage_error: Option<String>,
}

/// The storage half of the shipper (see the module doc for what it owns and the lock order).
pub struct Storage {
    /// Locked blocking only by the delivery thread and the commands; the daemon's other writers
    /// wait [`STORAGE_WAIT`] at most ([`Storage::lock_within`]).
    state: parking_lot::Mutex<State>,
    /// Requests the outbox could not take ([`super::held`]): outside `state`, so a writer can hold
    /// its requests while another one is stuck in the outbox. Locked for memory work only, and
    /// never while waiting for `state`.
    held: Mutex<Held>,
    /// Since when (unix ms) the outbox has not been available to writers; 0 when it is.
    stalled_since_ms: AtomicI64,
    /// The outbox figures read last, for when the outbox is stuck.
    last_figures: Mutex<Option<(u64, Option<OutboxStats>)>>,
    counters: Counters,
}

impl Storage {
    /// Storage for `<agent.state_dir>/outbox.db`; the outbox opens in [`Storage::reconfigure`].
    pub fn new(config: &Config, counters: Counters) -> Storage {
        Storage {
            state: parking_lot::Mutex::new(State {
                path: config.agent.state_dir.join(outbox::FILE_NAME),
                max_size_bytes: config.buffer.max_size_bytes,
                outbox: None,
                breaker: BreakerState::default(),
                saved_breaker: None,
                breaker_save_said: None,
                breaker_save_recovery_due: false,
                reserve_missing: false,
                imported_until_seq: 0,
                interval: config.agent.collection_interval,
                unremoved: Unremoved::default(),
                storage_error: None,
            }),
            held: Mutex::new(Held::default()),
            stalled_since_ms: AtomicI64::new(0),
            last_figures: Mutex::new(None),
            counters,
        }
    }

    /// Applies a reloaded configuration (path, cap, interval) and opens the outbox when a listener
    /// is configured and it is not open yet. Returns the breaker state saved in the outbox, if it
    /// was opened now and holds one. The cap is applied by [`Storage::apply_max_size`].
    pub fn reconfigure(
        &self,
        config: &Config,
        has_listener: bool,
    ) -> Result<Option<BreakerState>, ShipError> {
        let mut st = self.lock();
        let wanted = config.agent.state_dir.join(outbox::FILE_NAME);
        if st.outbox.is_some() && wanted != st.path {
            tracing::warn!(
                event = "reload_state_dir_ignored",
                current = %st.path.display(),
                requested = %wanted.display(),
                "agent.state_dir cannot change on reload; restart the agent to move the outbox"
            );
        } else {
            st.path = wanted;
        }
        st.max_size_bytes = config.buffer.max_size_bytes;
        st.interval = config.agent.collection_interval;
        let mut loaded = None;
        if has_listener && st.outbox.is_none() {
            match Outbox::open(&st.path, st.max_size_bytes) {
                Ok(opened) => {
                    if let Some(saved) = opened.load_breaker()? {
                        st.breaker = saved.clone();
                        st.saved_breaker = Some(saved.clone());
                        loaded = Some(saved);
                    }
                    st.outbox = Some(opened);
                    self.check_reserve(&mut st);
                }
                // An unwritable state directory: run on the memory queue; every later write
                // tries to open the outbox again.
                Err(e) if e.is_storage() => self.storage_failed(&mut st, &e),
                Err(e) => return Err(e.into()),
            }
        }
        Ok(loaded)
    }

    /// Applies `buffer.max_size_mb` to the open outbox; a smaller cap evicts (counted) at once.
    pub fn apply_max_size(&self) -> Result<(), ShipError> {
        let mut st = self.lock();
        let max = st.max_size_bytes;
        if let Some(ob) = st.outbox.as_mut() {
            if ob.max_size_bytes() != max {
                let report = ob.set_max_size(max)?;
                self.log_evictions(&report, "buffer.max_size_mb lowered");
            }
        }
        Ok(())
    }

    /// The storage state, waiting as long as it takes: for the delivery thread and the commands.
    /// (A panic while holding the lock leaves SQLite consistent, transactions roll back;
    /// parking_lot's mutex does not poison.)
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock()
    }

    /// The storage state, if it is free within [`STORAGE_WAIT`] (20 ms while it is known to be
    /// stuck); None means a writer is stuck on the storage, and the caller holds its requests in
    /// memory.
    fn lock_within(&self) -> Option<MutexGuard<'_, State>> {
        let since = self.stalled_since_ms.load(Ordering::Relaxed);
        let wait = if since == 0 {
            STORAGE_WAIT
        } else {
            STALLED_WAIT
        };
        match self.state.try_lock_for(wait) {
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

    fn held(&self) -> std::sync::MutexGuard<'_, Held> {
        // Memory only: a panic cannot leave it half-written in a way that matters.
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs `f` on the open outbox (opening it if needed); a corrupt database is moved aside,
    /// replaced, and `f` retried once on the fresh one.
    fn with_outbox<T>(
        &self,
        st: &mut State,
        f: impl Fn(&mut Outbox) -> Result<T, OutboxError>,
    ) -> Result<T, ShipError> {
        if st.outbox.is_none() {
            st.outbox = Some(Outbox::open(&st.path, st.max_size_bytes)?);
        }
        let Some(ob) = st.outbox.as_mut() else {
            return Err(ShipError::NoOutbox);
        };
        match f(ob) {
            Err(e) if e.is_corruption() => {
                st.outbox = None;
                let mut fresh = Outbox::recover(&st.path, st.max_size_bytes, &e)?;
                self.counters.add(Event::OutboxRecreated, 1);
                let _ = fresh.save_breaker(&st.breaker);
                let result = f(&mut fresh);
                st.outbox = Some(fresh);
                Ok(result?)
            }
            other => Ok(other?),
        }
    }

    /// Runs `f` on the outbox under the storage lock (waiting as long as it takes): for work on
    /// stored requests that the front does (re-encoding queued requests on a protocol switch).
    pub fn outbox<T>(
        &self,
        f: impl Fn(&mut Outbox) -> Result<T, OutboxError>,
    ) -> Result<T, ShipError> {
        let mut st = self.lock();
        self.with_outbox(&mut st, f)
    }

    /// Stores one payload imported from the Python agent's buffer; those go first, in order.
    pub fn push_imported(&self, row: &NewBatch) -> Result<(), ShipError> {
        let mut st = self.lock();
        let eviction = self.with_outbox(&mut st, |ob| ob.push(row))?;
        self.log_evictions(&eviction, "buffer.max_size_mb reached");
        if let Ok(seq) = self.with_outbox(&mut st, |ob| ob.max_seq()) {
            st.imported_until_seq = seq;
        }
        Ok(())
    }

    /// Saves the breaker state delivery has now, once per transition (not per request: the
    /// failure count in between is not saved). A save that fails (a full disk) is tried again at
    /// every later call until it succeeds; the failure is logged at most once per
    /// [`SAY_AGAIN_AFTER`] (a disk that flaps between full and not would otherwise say it at every
    /// flap), and the recovery once after each failure logged.
    pub fn save_breaker(&self, state: &BreakerState) {
        let mut st = self.lock();
        st.breaker = state.clone();
        let unsaved = match &st.saved_breaker {
            None => true,
            Some(saved) => {
                saved.state != state.state || saved.last_transition != state.last_transition
            }
        };
        if !unsaved {
            return;
        }
        match self.with_outbox(&mut st, |ob| ob.save_breaker(state)) {
            Ok(()) => {
                st.saved_breaker = Some(state.clone());
                // The recovery is said once for each failure that was said.
                if std::mem::take(&mut st.breaker_save_recovery_due) {
                    tracing::info!(
                        event = "breaker_persisted",
                        "the circuit breaker state is saved again"
                    );
                }
            }
            Err(e) => {
                if st
                    .breaker_save_said
                    .is_none_or(|t| t.elapsed() >= SAY_AGAIN_AFTER)
                {
                    st.breaker_save_said = Some(Instant::now());
                    st.breaker_save_recovery_due = true;
                    tracing::error!(event = "outbox_error", error = %e,
                        "cannot persist the circuit breaker state; trying again at every request \
                         until the outbox takes writes (said at most once every 10 minutes)");
                }
            }
        }
    }

    /// The log cursor stored with the newest waiting pg_logs batch ([`outbox::cursor`]): what the
    /// log reader needs on start to skip entries already written to the outbox before a crash.
    /// None when no pg_logs batch waits, or when it cannot be read. A request written by the
    /// previous version (or first held in memory) has its cursor only in its body, as
    /// `log_position` (an envelope field in the batch protocol, inside `data` in bitville): read
    /// from there.
    pub fn log_cursor(&self) -> Option<serde_json::Value> {
        let mut st = self.lock();
        match self.with_outbox(&mut st, |ob| ob.log_cursor()).ok()?? {
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

    fn log_evictions(&self, report: &EvictionReport, why: &str) {
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
        let st = self.state.try_lock_for(STATS_WAIT)?;
        st.path.parent().map(|p| p.to_path_buf())
    }

    /// The storage's figures (reads the outbox; cheap). While the outbox is stuck (a hung disk),
    /// the outbox figures it gave last, with the memory figures of now.
    pub fn figures(&self) -> Result<StorageFigures, ShipError> {
        let (held_now, held_bytes) = {
            let held = self.held();
            (held.len(), held.bytes())
        };
        let Some(mut st) = self.state.try_lock_for(STATS_WAIT) else {
            let last = self.last_figures.lock().ok().and_then(|l| l.clone());
            let (max_size_bytes, outbox) = last.unwrap_or((0, None));
            return Ok(StorageFigures {
                max_size_bytes,
                outbox,
                held_now,
                held_bytes,
                unremoved: 0,
                storage_error: self.storage_problem(None),
            });
        };
        let outbox = match st.outbox.is_some() {
            true => Some(self.with_outbox(&mut st, |ob| ob.stats())?),
            false => None,
        };
        let figures = StorageFigures {
            max_size_bytes: st.max_size_bytes,
            outbox,
            held_now,
            held_bytes,
            unremoved: st.unremoved.len(),
            storage_error: self.storage_problem(st.storage_error.as_ref()),
        };
        drop(st);
        if let Ok(mut last) = self.last_figures.lock() {
            *last = Some((figures.max_size_bytes, figures.outbox.clone()));
        }
        Ok(figures)
    }
}
