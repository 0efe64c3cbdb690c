//! The background log task: follows the server log, and writes a `pg_logs` batch into the outbox every
//! cycle (and early when `logs.max_buffered_entries` are buffered), committing the log position only
//! after the batch is in the outbox. On shutdown it writes what it holds and saves its position.
//!
//! Where the log is comes from `[logs]`, completed by asking the server (`logs::source::discover`)
//! when `logs.path` is unset; while neither is possible (or the path is not a regular file or
//! directory, say a FIFO) it retries with back-off up to every interval, having warned once (a role
//! without pg_read_all_settings cannot see the location: the warning names the grant).
//!
//! The task learns the identity of the server it follows (`system_identifier`) when it starts: its
//! batches carry that identity, and a saved position taken on another server (after a reload or
//! restart that points `[postgres]` elsewhere) is not applied to this server's files. A read error
//! keeps the entries read before it: they are written to the outbox, then reading resumes after
//! them once the error clears (warned once, shown on `/health` meanwhile).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::batch::{BatchKind, Record, Stamp};
use crate::daemon::setup::Setup;
use crate::db::{Db, ServerInfo};
use crate::identity::{APPLICATION_NAME, QUERY_TAG};
use crate::logs::position::{Position, PositionStore};
use crate::logs::settings::{TailConfig, TailSettings};
use crate::logs::source;
use crate::logs::tail::{LogBatch, Tailer};
use crate::ship::shipper::LOG_CURSOR_FIELD;
use crate::ship::Shipper;
use crate::telemetry::conditions::Condition;
use crate::telemetry::registry::{Counters, Event};
use crate::telemetry::server::Telemetry;

/// The first retry when the log cannot be followed yet.
const RETRY_FIRST: Duration = Duration::from_secs(1);

/// What the log task shares with the main loop.
#[derive(Clone)]
pub struct LogShared {
    pub shipper: Arc<Shipper>,
    pub telemetry: Telemetry,
    /// The server's identity, as the last cycle read it, for the batch envelope.
    pub server: Arc<Mutex<Option<ServerInfo>>>,
    /// Where the plans of shipped auto_explain entries go (the plans collector reads them).
    pub plans: crate::collect::plans::PlanInbox,
    /// The log cursor of the newest pg_logs batch that was in the outbox when the daemon
    /// started ([`Shipper::log_cursor`]), read before the delivery task could send (and delete)
    /// it. Taken by the first log task; later ones ask the outbox.
    pub resume_hint: Arc<Mutex<Option<serde_json::Value>>>,
}

/// A running log task.
pub struct LogTask {
    stop: CancellationToken,
    handle: tokio::task::JoinHandle<()>,
}

impl LogTask {
    /// Starts the task on `tracker`; it stops when `stop` (a child of the daemon's token) is
    /// cancelled.
    pub fn spawn(
        setup: Arc<Setup>,
        shared: LogShared,
        tracker: &tokio_util::task::TaskTracker,
        stop: CancellationToken,
    ) -> LogTask {
        let token = stop.clone();
        let handle = tracker.spawn(async move { run(setup, shared, token).await });
        LogTask { stop, handle }
    }

    /// Stops the task after it has written its buffered entries and saved its position, waiting at
    /// most `deadline`.
    pub async fn stop(self, deadline: Duration) {
        self.stop.cancel();
        if tokio::time::timeout(deadline, self.handle).await.is_err() {
            tracing::warn!("the log task did not finish its flush in time");
        }
    }
}

/// How long the log settings' discovery waits for the agent's connection to be free before it
/// opens one of its own (the server may be down: then the collectors have none either).
const SHARE_WAIT: Duration = Duration::from_secs(10);

async fn settings(config: &TailConfig, db: &Db) -> Result<TailSettings, String> {
    let mut hidden = None;
    let server = if config.logs.path.is_none() || config.logs.line_prefix.is_none() {
        // At start the first cycle is opening the agent's one connection: wait (a while) for it to
        // come back to the pool rather than open a second one beside it.
        let deadline = tokio::time::Instant::now() + SHARE_WAIT;
        while db.idle_connections() == 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        match db.session().await {
            Ok(mut s) => match source::discover(&mut s).await {
                Ok(found) => Some(found),
                Err(e @ source::DiscoverError::Hidden { .. }) => {
                    hidden = Some(e);
                    None
                }
                Err(_) => None,
            },
            Err(_) => None,
        }
    } else {
        None
    };
    let settings = TailSettings::resolve(config, server.as_ref()).map_err(|e| {
        // Without [logs] path, a hidden location is the reason; say which grant unlocks it.
        match (&config.logs.path, hidden) {
            (None, Some(h)) => h.to_string(),
            _ => e.to_string(),
        }
    })?;
    Ok(settings)
}

async fn run(setup: Arc<Setup>, shared: LogShared, stop: CancellationToken) {
    let (config, db) = (&setup.config, &setup.db);
    let interval = config.agent.collection_interval;
    let mut warned = false;
    // Retries start after a second and double up to the collection interval.
    let mut backoff = RETRY_FIRST.min(interval);
    let mut tailer = loop {
        let attempt = match settings(&setup.tail, db).await {
            Ok(s) => Tailer::open(s).map_err(|e| e.to_string()),
            Err(e) => Err(e),
        };
        match attempt {
            Ok(t) => break t,
            Err(e) => {
                shared.telemetry.set_condition(
                    Condition::LogsNotFollowed,
                    Some(format!(
                        "the server log is not followed: {e} (set [logs] enabled = false to run \
                         without logs)"
                    )),
                );
                if !warned {
                    tracing::warn!(error = %e, "cannot follow the server log yet; retrying with back-off up to every interval");
                    warned = true;
                }
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(interval);
            }
        }
    };
    // A crash between writing a batch to the outbox and saving the position would read those
    // entries again: resume after the newest pg_logs batch still waiting in the outbox instead.
    let hint = shared.resume_hint.lock().ok().and_then(|mut h| h.take());
    let hint = match hint {
        Some(h) => Some(h),
        // Reads the outbox: off the scheduler.
        None => {
            let shipper = shared.shipper.clone();
            tokio::task::spawn_blocking(move || shipper.log_cursor())
                .await
                .ok()
                .flatten()
        }
    };
    // Whose log this is: learned before the outbox hint is applied, so a position taken on
    // another server is applied neither from the position file nor from the outbox.
    let own_server = match crate::collect::server_context(db, &setup.collect).await {
        Ok(c) if !c.info.system_identifier.is_empty() => Some(c.info),
        _ => None,
    };
    if let Some(info) = &own_server {
        if let Some(old) = tailer.set_server(&info.system_identifier) {
            tracing::warn!(event = "log_position_other_server", old_server = ?old.server,
                server = %info.system_identifier, old_file = %old.path.display(),
                "the saved log position belongs to another server; this server's log is read \
                 as on a first start (logs.start_at)");
        }
    }
    let enqueued: Option<Position> = hint
        .and_then(|v| serde_json::from_value(v).ok())
        .filter(|p| !tailer.other_server(p));
    if let Some(enqueued) = &enqueued {
        if let Err(e) = tailer.reconcile(enqueued) {
            tracing::warn!(error = %e, "cannot reconcile the log position with the outbox");
        }
    }
    if let Some(aside) = tailer.set_aside() {
        shared.telemetry.counters.incr(Event::LogPositionSetAside);
        shared.telemetry.counters.incr(Event::StateFilesSetAside);
        // A damaged position file must not stop shipping: say once, loudly, where reading resumes.
        let resume = match (&enqueued, config.logs.start_at_end) {
            (Some(_), _) => "after the newest pg_logs batch in the outbox",
            (None, true) => "at the end of the newest log file (logs.start_at = end)",
            (None, false) => "at the start of the oldest log file (logs.start_at = beginning)",
        };
        tracing::error!(event = "log_position_corrupt", moved_to = %aside.moved_to.display(),
            reason = %aside.reason, resume_from = resume,
            "the saved log position was damaged and has been moved aside; reading resumes {resume}");
    }
    shared
        .telemetry
        .set_condition(Condition::LogsNotFollowed, None);
    tracing::info!("following the server log");
    let max = config.logs.max_buffered_entries;
    // The task's config is fixed for its life: its batches' envelope is filled once.
    let stamp = setup.collect.stamp.clone();
    let mut failing = ShipFailures {
        position: false,
        saver: PositionSaver::new(&config.agent.state_dir, shared.telemetry.counters.clone()),
    };
    let mut backoff = RETRY_FIRST.min(interval);
    let mut read_failing = false;
    let own = own_server.as_ref();
    loop {
        let deadline = Instant::now() + interval;
        let batch = tokio::select! {
            _ = stop.cancelled() => break,
            b = tailer.next_batch(max, deadline) => b,
        };
        record_log_stats(&shared.telemetry.counters, tailer.take_stats());
        // A read error comes with the entries read before it (kept, and written first), or alone.
        let (batch, read_error) = match batch {
            Ok(mut b) => {
                let e = b.read_error.take();
                (Some(b), e)
            }
            Err(e) => (None, Some(e)),
        };
        if let Some(b) = batch {
            if !ship(&mut tailer, b, &stamp, &shared, own, &mut failing).await {
                // The same entries are read again: wait, with back-off and jitter, so a failing
                // outbox cannot make this loop spin.
                shared.telemetry.counters.incr(Event::LogBatchRetries);
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = tokio::time::sleep(jittered(backoff)) => {}
                }
                backoff = (backoff * 2).min(interval);
                continue;
            }
            backoff = RETRY_FIRST.min(interval);
        }
        let Some(e) = read_error else {
            shared
                .telemetry
                .set_condition(Condition::LogsNotFollowed, None);
            if std::mem::take(&mut read_failing) {
                tracing::info!("reading the server log works again");
            }
            continue;
        };
        shared.telemetry.set_condition(
            Condition::LogsNotFollowed,
            Some(format!(
                "reading the server log failed: {e}; retrying every interval"
            )),
        );
        if !read_failing {
            read_failing = true;
            tracing::warn!(error = %e, "reading the server log failed; the entries read before \
                it are kept, reading resumes after them (retried every interval, said once)");
        }
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep(interval) => {}
        }
    }
    // Shutdown: whatever is readable now goes into the outbox, `max` entries at a time so memory
    // stays bounded, then the position is saved. Bounded in time by the caller's deadline.
    loop {
        match tailer.take_batch(max) {
            Ok(b) if b.entries.is_empty() || b.read_error.is_some() => {
                ship(&mut tailer, b, &stamp, &shared, own, &mut failing).await;
                break;
            }
            Ok(b) => {
                if !ship(&mut tailer, b, &stamp, &shared, own, &mut failing).await {
                    break;
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "final read of the server log failed");
                break;
            }
        }
    }
}

/// An entry written by one of the agent's sessions: its application_name when the format carries it,
/// else the agent's query tag in the logged text.
/// Counted as [`Event::LogAgentOwnEntries`] (as the collectors leave out its sessions and
/// statements).
fn is_agent_entry(e: &serde_json::Value, counters: &Counters) -> bool {
    let own = match e.get("application_name").and_then(|a| a.as_str()) {
        Some(app) => app == APPLICATION_NAME,
        None => ["message", "statement"].iter().any(|k| {
            e.get(*k)
                .and_then(|v| v.as_str())
                .is_some_and(|t| t.contains(QUERY_TAG))
        }),
    };
    if own {
        counters.incr(Event::LogAgentOwnEntries);
    }
    own
}

/// What the log task has already said about failures, so a lasting one is logged once; and the
/// position saver.
struct ShipFailures {
    position: bool,
    saver: PositionSaver,
}

/// How long the log task waits for a position save, and for a pg_logs batch to be written, before
/// it reports a stall.
const STATE_WRITE_WAIT: Duration = Duration::from_secs(2);
const LOG_WRITE_WAIT: Duration = Duration::from_secs(10);

/// Saves the log position off the scheduler. A save that has not returned within
/// [`STATE_WRITE_WAIT`] (a hung disk) is left to finish, and later positions are not saved until it
/// has (the newest one is saved then): stuck writes cannot pile up, and the saved position only
/// lags, so entries may be read again after a restart, never lost.
struct PositionSaver {
    counters: Counters,
    store: PositionStore,
    in_flight: Option<tokio::task::JoinHandle<Result<(), String>>>,
}

impl PositionSaver {
    fn new(state_dir: &std::path::Path, counters: Counters) -> PositionSaver {
        PositionSaver {
            counters,
            store: PositionStore::new(state_dir),
            in_flight: None,
        }
    }
}

impl ShipFailures {
    /// Takes `position` as committed and saves it (see [`PositionSaver`]).
    async fn commit(&mut self, tailer: &mut Tailer, position: &Position) {
        tailer.mark_committed(position);
        if let Some(h) = self.saver.in_flight.take() {
            if !h.is_finished() {
                self.saver.in_flight = Some(h);
                self.saver.counters.incr(Event::StateWritesSkipped);
                return;
            }
            if let Ok(r) = h.await {
                self.saved(r);
            }
        }
        let (store, pos) = (self.saver.store.clone(), position.clone());
        let mut job =
            tokio::task::spawn_blocking(move || store.save(&pos).map_err(|e| e.to_string()));
        match tokio::time::timeout(STATE_WRITE_WAIT, &mut job).await {
            Ok(Ok(r)) => self.saved(r),
            Ok(Err(e)) => self.saved(Err(e.to_string())),
            Err(_) => {
                self.saved(Err(format!(
                    "the save did not return within {} s (a hung disk?)",
                    STATE_WRITE_WAIT.as_secs()
                )));
                self.saver.in_flight = Some(job);
            }
        }
    }

    fn saved(&mut self, result: Result<(), impl std::fmt::Display>) {
        match result {
            Ok(()) => {
                if std::mem::take(&mut self.position) {
                    tracing::info!("the log position is saved again");
                }
            }
            Err(e) if !self.position => {
                self.position = true;
                tracing::warn!(error = %e, "cannot save the log position; entries may be read \
                    again after a restart (said once until it works again)");
            }
            Err(_) => {}
        }
    }
}

/// Adds what the tailer met to the registry.
fn record_log_stats(counters: &Counters, met: crate::logs::stats::LogStats) {
    counters.add(Event::LogEntriesParsed, met.entries);
    counters.add(Event::LogLinesUnparsed, met.unparsed);
    counters.add(Event::LogEntriesTruncated, met.truncated);
    counters.add(Event::LogBytesSkipped, met.skipped_bytes);
    counters.add(Event::LogNoTimestamp, met.no_timestamp);
    counters.add(Event::LogFilesTruncated, met.files_truncated);
    crate::privacy::count(counters, met.privacy);
}

/// `d` plus up to a quarter of it, so retries of many agents do not line up.
fn jittered(d: Duration) -> Duration {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|t| t.subsec_nanos())
        .unwrap_or(0);
    d + d.mul_f64(f64::from(nanos % 1000) / 4000.0)
}

/// Writes one pg_logs batch to the outbox and commits its position; on failure re-reads from the
/// committed position next time, so nothing is lost. False when the batch was not written. The
/// write runs off the scheduler; while it has not returned (a hung disk) the log is not read, which
/// loses nothing (the entries stay in the log file) and is reported on `/health`.
async fn ship(
    tailer: &mut Tailer,
    batch: LogBatch,
    stamp: &Stamp,
    shared: &LogShared,
    own_server: Option<&ServerInfo>,
    failing: &mut ShipFailures,
) -> bool {
    let Some(position) = batch.position else {
        return true;
    };
    if batch.entries.is_empty() {
        // Nothing to ship, but the position may have moved past lines that made no entry.
        failing.commit(tailer, &position).await;
        return true;
    }
    let mut entries = Vec::with_capacity(batch.entries.len());
    // The correlated statements the tailer took from the entries while they were typed.
    let mut correlated = Vec::new();
    let mut statements = batch.correlated.into_iter();
    // The plans of auto_explain entries, handed to the plans collector once the batch is written.
    let mut plans = Vec::new();
    for e in batch.entries.into_iter() {
        let statement = statements.next().flatten();
        if is_agent_entry(&e, &shared.telemetry.counters) {
            continue;
        }
        correlated.extend(statement);
        plans.extend(crate::collect::plans::Sighting::from_log_entry(&e));
        match Record::new(&e) {
            Ok(r) => entries.push(r),
            Err(e) => {
                // Not expected for a JSON value; re-read these entries rather than drop one.
                tracing::error!(error = %e, "cannot serialize a log entry; will read these entries again");
                tailer.rewind();
                return false;
            }
        }
    }
    if entries.is_empty() {
        failing.commit(tailer, &position).await;
        return true;
    }
    // The identity the task learned at its start; else what the last cycle read.
    let server = match own_server {
        Some(s) => Some(s.clone()),
        None => shared.server.lock().ok().and_then(|s| s.clone()),
    };
    let mut b = stamp.batch(BatchKind::PgLogs, server, entries);
    b.correlated = correlated;
    // The marks of other files stay out of the payload (up to 64 of them, state rather than data):
    // `reconcile` takes them from the saved position.
    let stored = Position {
        read: Vec::new(),
        ..position.clone()
    };
    // On the wire inside the batch (as before), and in the outbox as the cursor of its requests,
    // written in the same transaction.
    let cursor = serde_json::to_value(&stored).ok();
    if let Some(v) = &cursor {
        b.extra.insert(LOG_CURSOR_FIELD.into(), v.clone());
    }
    let cursor = cursor.map(|v| v.to_string());
    let count = b.count;
    let shipper = shared.shipper.clone();
    let mut job =
        tokio::task::spawn_blocking(move || shipper.enqueue_with_cursor(&b, cursor.as_deref()));
    let written = match tokio::time::timeout(LOG_WRITE_WAIT, &mut job).await {
        Ok(r) => r,
        Err(_) => {
            shared.telemetry.set_condition(
                Condition::LogsStalled,
                Some(format!(
                    "writing a pg_logs batch has not returned for {} s (a hung disk?): the log \
                     is not read meanwhile",
                    LOG_WRITE_WAIT.as_secs()
                )),
            );
            let r = job.await;
            shared.telemetry.set_condition(Condition::LogsStalled, None);
            r
        }
    };
    let written = written.unwrap_or_else(|e| Err(crate::ship::ShipError::Task(e.to_string())));
    match written {
        Ok(r) => {
            shared.plans.push(plans, &shared.telemetry.counters);
            let outcome = if r.stdout { "printed" } else { "enqueued" };
            shared
                .telemetry
                .metrics
                .count_batch(BatchKind::PgLogs, count, outcome);
            shared
                .telemetry
                .set_condition(Condition::LogsEnqueueFailed, None);
            failing.commit(tailer, &position).await;
            true
        }
        Err(e) => {
            shared.telemetry.set_condition(
                Condition::LogsEnqueueFailed,
                Some(format!(
                    "a pg_logs batch could not be stored ({e}); its entries are read again after \
                     a back-off"
                )),
            );
            tracing::error!(error = %e, entries = count, "cannot write the pg_logs batch to the outbox; will read these entries again after a back-off");
            shared
                .telemetry
                .metrics
                .count_batch(BatchKind::PgLogs, count, "failed");
            tailer.rewind();
            false
        }
    }
}
