//! The daemon (`postgres-agent run`): five tasks under one shutdown token (four on the task
//! tracker, delivery on a thread of its own), the state writer thread, and a main loop that only
//! answers signals and the systemd watchdog. It holds the state directory's lock
//! ([`crate::state::lock`]) for its whole life: a second daemon on the directory exits 75.
//!
//! - collection (`tasks::collect`): a cycle at every tick of the drift-free schedule, handing its
//!   batches to the state writer;
//! - active-session sampling (`tasks::sample`): a sample every second, its per-cycle aggregate and
//!   spike snapshots;
//! - the state writer (`tasks::writer`): writes those batches to the outbox and the cycle record for
//!   `status`, after checking that the lock file and the outbox file are still in place;
//! - delivery (`tasks::deliver`): drains the outbox to the listener, on its own thread and runtime;
//! - the log reader (`tasks::log`): tails the server log into pg_logs batches;
//! - telemetry: `/health` and `/metrics`.
//!
//! No task waits on another, and collection never waits on the disk.
//! SIGTERM/SIGINT: no new cycle starts and one in progress is abandoned, the state writer finishes
//! what is queued (within `SHUTDOWN_WRITER_FLUSH`), no new request starts and
//! one in flight may finish, the log task writes its buffered entries to the outbox and saves its
//! position, one last send is attempted, all within [`SHUTDOWN_SEND_BUDGET`] and a few hundred
//! milliseconds more; the pool is closed, exit 0. SIGHUP reloads the configuration; an invalid one
//! is logged and the old one kept.
//!
//! Threads, inside the unit's `TasksMax=10`: the main runtime (current-thread: collection, the log
//! reader, telemetry, signals) with at most `BLOCKING_THREADS` (4) blocking threads, the state
//! writer, and the delivery thread with a runtime of its own and one blocking thread: 8 at most. A
//! hung disk can leave the writer stuck, the delivery thread stuck, and one blocking thread stuck
//! per remaining state file (baseline, log position), since no writer starts a second write while
//! its first has not returned; one more stays free.

mod cycle;
pub mod notify;
mod publish;
pub mod schedule;
pub mod setup;
mod tasks;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::signal::unix::{signal, SignalKind};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{Config, Protocol};
use crate::db::Db;
use crate::ship::Shipper;
use crate::state::lock::StateLock;
use crate::telemetry::logging::LogControl;
use crate::telemetry::server::Telemetry;
use setup::Setup;
use tasks::deliver::Delivery;
use tasks::log::{LogShared, LogTask};
use tasks::SetupTask;
use tasks::{sample, writer};

/// Blocking threads of the main runtime (SQLite and file writes run there).
const BLOCKING_THREADS: usize = 4;

/// The last send attempt on shutdown may take this long.
pub const SHUTDOWN_SEND_BUDGET: Duration = Duration::from_millis(500);
/// The state writer may take this long to finish what is queued at shutdown.
const SHUTDOWN_WRITER_FLUSH: Duration = Duration::from_millis(300);
/// The log task's final flush may take this long.
const SHUTDOWN_LOG_FLUSH: Duration = Duration::from_millis(300);

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("cannot start the runtime: {0}")]
    Runtime(std::io::Error),
    #[error("cannot install signal handlers: {0}")]
    Signals(std::io::Error),
    #[error(transparent)]
    Db(#[from] crate::db::DbError),
    #[error("cannot open the outbox: {0}")]
    Ship(#[from] crate::ship::ShipError),
    #[error("cannot listen on telemetry.listen = {addr}: {source}")]
    Telemetry {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
}

/// Tunes glibc's allocator for a small long-running process: allocations of 128 KiB and more (a
/// cycle's serialized batches, the statement baseline) get their own mappings and go back to the
/// system when freed, instead of staying in a heap that only grows; free heap top beyond 256 KiB is
/// returned; and one arena suffices for one busy thread.
fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator parameters; called before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 128 * 1024);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 256 * 1024);
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
}

/// A file-size limit (`RLIMIT_FSIZE`, `LimitFSIZE=`) must fail the write (EFBIG), which the outbox
/// handles like a full disk, instead of killing the agent with SIGXFSZ.
fn ignore_file_size_signal() {
    // SAFETY: installs the SIG_IGN disposition for one signal before any other thread exists.
    unsafe {
        libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
    }
}

/// Runs the daemon until SIGTERM or SIGINT. `path` is the config file to re-read on SIGHUP.
pub fn run(path: Option<PathBuf>, config: Config, log: LogControl) -> ExitCode {
    tune_allocator();
    ignore_file_size_signal();
    // One daemon per state directory: a second one would send the same outbox rows again.
    let lock = match StateLock::acquire_or_defer(&config.agent.state_dir) {
        Ok(lock) => Arc::new(Mutex::new(lock)),
        Err(e) => {
            tracing::error!(event = "state_dir_locked", error = %e, "postgres-agent not started");
            eprintln!("postgres-agent: {e}");
            return ExitCode::from(crate::state::lock::EXIT_LOCKED);
        }
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .max_blocking_threads(BLOCKING_THREADS)
        .thread_name("postgres-agent")
        .enable_all()
        .build();
    let result = match runtime {
        Ok(rt) => {
            let result = rt.block_on(async move {
                let mut daemon = Daemon::start(path, config, log, lock).await?;
                daemon.run().await
            });
            // Blocking work stuck on a hung disk must not hold up the exit.
            rt.shutdown_timeout(Duration::from_millis(500));
            result
        }
        Err(e) => Err(DaemonError::Runtime(e)),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "postgres-agent stopped");
            eprintln!("postgres-agent: {e}");
            ExitCode::FAILURE
        }
    }
}

struct Daemon {
    path: Option<PathBuf>,
    /// The running configuration, its pool and what is built from it; replaced on reload.
    setup: Arc<Setup>,
    log: LogControl,
    shipper: Arc<Shipper>,
    telemetry: Telemetry,
    collection: Option<SetupTask>,
    server: Arc<Mutex<Option<crate::db::ServerInfo>>>,
    log_task: Option<LogTask>,
    shutdown: CancellationToken,
    /// Every task the daemon spawns that must end before it exits.
    tracker: TaskTracker,
    /// See [`LogShared::resume_hint`].
    log_resume_hint: Arc<Mutex<Option<serde_json::Value>>>,
    /// The hand-over of plan sightings from the log task to the plans collector (kept on reload).
    plans: crate::collect::plans::PlanInbox,
    delivery: Option<Delivery>,
    sampling: Option<SetupTask>,
    /// The lock on the state directory, held until the process exits.
    lock: Arc<Mutex<StateLock>>,
    /// Does the collection's disk work (outbox, cycle record) off the collection path.
    writer: Option<Arc<writer::Writer>>,
    /// The /health and /metrics server: its token (a child of `shutdown`) and its task, counted by
    /// `tracker`.
    telemetry_task: Option<(
        CancellationToken,
        tokio_util::task::task_tracker::TrackedFuture<tokio::task::JoinHandle<()>>,
    )>,
}

impl Daemon {
    async fn start(
        path: Option<PathBuf>,
        config: Config,
        log: LogControl,
        lock: Arc<Mutex<StateLock>>,
    ) -> Result<Daemon, DaemonError> {
        let config = Arc::new(config);
        // Everything the daemon keeps lives here; an unwritable directory is reported by the
        // outbox and the other writers, not fatal.
        if let Err(e) = std::fs::create_dir_all(&config.agent.state_dir) {
            tracing::warn!(error = %e, state_dir = %config.agent.state_dir.display(),
                "cannot create the state directory");
        }
        let db = Db::new(&config.postgres, &config.safety)?;
        let telemetry = Telemetry::new(config.agent.collection_interval);
        telemetry.set_unhealthy_after(config.telemetry.unhealthy_after);
        let shipper = Arc::new(Shipper::open_counted(
            &config,
            crate::ship::encode::MAX_BODY_BYTES,
            telemetry.counters.clone(),
        )?);
        let mut daemon = Daemon {
            path,
            collection: None,
            setup: Arc::new(Setup::new(config, db)),
            log,
            shipper,
            telemetry,
            server: Arc::new(Mutex::new(None)),
            log_task: None,
            shutdown: CancellationToken::new(),
            tracker: TaskTracker::new(),
            log_resume_hint: Arc::new(Mutex::new(None)),
            plans: Default::default(),
            delivery: None,
            sampling: None,
            lock,
            writer: None,
            telemetry_task: None,
        };
        daemon.start_telemetry().await?;
        daemon.import_python_buffer().await;
        // Where the log reader must resume, read before the delivery task can send it away.
        if let Ok(mut hint) = daemon.log_resume_hint.lock() {
            *hint = daemon.shipper.log_cursor();
        }
        daemon.start_log_task();
        daemon.delivery = Some(
            Delivery::spawn(
                daemon.shipper.clone(),
                daemon.telemetry.clone(),
                daemon.setup.config.agent.collection_interval,
                daemon.shutdown.child_token(),
            )
            .map_err(DaemonError::Runtime)?,
        );
        Ok(daemon)
    }

    /// Moves the unsent payloads of the Bitville Python agent's buffer (`buffer.python_buffer_path`)
    /// into the outbox before anything new is collected, so they are sent first. The file itself is
    /// never changed; a marker in the state directory remembers what was taken. Failures are logged
    /// and the import is tried again at the next start.
    async fn import_python_buffer(&self) {
        let Some(dir) = self.setup.config.buffer.python_buffer_path.clone() else {
            return;
        };
        if self.setup.config.listener.url.is_none()
            || self.setup.config.listener.protocol != Protocol::Bitville
        {
            if dir.join(crate::ship::python_buffer::DB_FILE_NAME).exists() {
                tracing::warn!(event = "python_buffer_not_imported", path = %dir.display(),
                    "the Python agent's buffer is sent only to a Bitville listener \
                     (listener.url set, listener.protocol = bitville); left as it is");
            }
            return;
        }
        let shipper = self.shipper.clone();
        let state_dir = self.setup.config.agent.state_dir.clone();
        let job = tokio::task::spawn_blocking(move || {
            crate::ship::python_buffer::import(&dir, &state_dir, |p| {
                shipper.enqueue_python_payload(&p)
            })
        });
        match job.await {
            Ok(Ok(r)) if r.pushed > 0 || r.skipped > 0 => {
                tracing::info!(event = "python_buffer_imported", pushed = r.pushed,
                    skipped = r.skipped, already_imported = r.already_imported,
                    path = ?r.db_path, "queued the Python agent's unsent payloads for sending first")
            }
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::error!(event = "python_buffer_import_failed", error = %e,
                "cannot import the Python agent's buffer; trying again at the next start"),
            Err(e) => tracing::error!(event = "python_buffer_import_failed", error = %e,
                "the Python buffer import did not finish"),
        }
    }

    async fn start_telemetry(&mut self) -> Result<(), DaemonError> {
        if let Some((token, handle)) = self.telemetry_task.take() {
            token.cancel();
            let _ = handle.await;
        }
        if let Some(addr) = self.setup.config.telemetry.listen {
            let token = self.shutdown.child_token();
            let (bound, handle) =
                crate::telemetry::server::serve(addr, self.telemetry.clone(), token.clone())
                    .await
                    .map_err(|source| DaemonError::Telemetry { addr, source })?;
            tracing::info!(address = %bound, "serving /health and /metrics");
            self.telemetry_task = Some((token, self.tracker.track_future(handle)));
        }
        Ok(())
    }

    fn start_log_task(&mut self) {
        if !self.setup.config.logs.enabled {
            return;
        }
        let shared = LogShared {
            shipper: self.shipper.clone(),
            telemetry: self.telemetry.clone(),
            server: self.server.clone(),
            resume_hint: self.log_resume_hint.clone(),
            plans: self.plans.clone(),
        };
        self.log_task = Some(LogTask::spawn(
            self.setup.clone(),
            shared,
            &self.tracker,
            self.shutdown.child_token(),
        ));
    }

    async fn run(&mut self) -> Result<(), DaemonError> {
        let mut sigterm = signal(SignalKind::terminate()).map_err(DaemonError::Signals)?;
        let mut sigint = signal(SignalKind::interrupt()).map_err(DaemonError::Signals)?;
        let mut sighup = signal(SignalKind::hangup()).map_err(DaemonError::Signals)?;
        let watchdog = notify::Watchdog::from_env();
        let mut watchdog_tick =
            tokio::time::interval(watchdog.map_or(Duration::from_secs(3600), |w| w.period));
        watchdog_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);

        self.start_collection();
        notify::ready("started; first cycle now");
        tracing::info!(
            interval_s = self.setup.config.agent.collection_interval.as_secs(),
            listener = self
                .setup
                .config
                .listener
                .url
                .as_deref()
                .unwrap_or("stdout"),
            "postgres-agent running"
        );
        // This loop only answers signals and the watchdog; collection, delivery, the log reader
        // and telemetry are tasks of their own.
        loop {
            tokio::select! {
                _ = sigterm.recv() => break,
                _ = sigint.recv() => break,
                _ = sighup.recv() => {
                    if self.reload().await {
                        if let Some(s) = &self.sampling {
                            s.update(self.setup.clone());
                        }
                        if let Some(c) = &self.collection {
                            c.update(self.setup.clone());
                        }
                    }
                }
                _ = watchdog_tick.tick(), if watchdog.is_some() => notify::watchdog(),
            }
        }
        self.stop().await;
        Ok(())
    }

    fn start_collection(&mut self) {
        let Some((deliver, delivery)) = self.delivery.as_ref().map(|d| (d.waker(), d.watch()))
        else {
            return;
        };
        let writer = match writer::Writer::spawn(
            self.shipper.clone(),
            self.telemetry.clone(),
            deliver.clone(),
            self.lock.clone(),
        ) {
            Ok(w) => Arc::new(w),
            Err(e) => {
                tracing::error!(error = %e, "cannot start the state writer thread; not collecting");
                return;
            }
        };
        self.writer = Some(writer.clone());
        self.collection = Some(tasks::collect::spawn(
            &self.tracker,
            self.setup.clone(),
            tasks::collect::CycleShared {
                telemetry: self.telemetry.clone(),
                server: self.server.clone(),
                deliver: deliver.clone(),
                delivery,
                writer: writer.clone(),
                plans: self.plans.clone(),
            },
            self.shutdown.child_token(),
        ));
        self.sampling = Some(sample::spawn(
            &self.tracker,
            self.setup.clone(),
            sample::SampleShared {
                writer: writer.clone(),
                telemetry: self.telemetry.clone(),
                deliver,
            },
            self.shutdown.child_token(),
        ));
    }

    /// Re-reads the configuration; returns true when a new one took effect.
    async fn reload(&mut self) -> bool {
        notify::reloading();
        let new = match Config::load(self.path.as_deref()) {
            Ok(c) => {
                c.log_notices();
                c
            }
            Err(e) => {
                tracing::error!(error = %e, "configuration reload rejected; keeping the running configuration");
                notify::reloaded("reload rejected: invalid configuration");
                return false;
            }
        };
        if new == *self.setup.config {
            tracing::info!("configuration reloaded: unchanged");
            notify::reloaded("configuration unchanged");
            return false;
        }
        let old = self.setup.config.clone();
        let mut db = self.setup.db.clone();
        if new.postgres != old.postgres || new.safety != old.safety {
            match Db::new(&new.postgres, &new.safety) {
                // The old pool is not closed under a cycle that may be using it: its connections
                // close when that cycle ends and the collection task takes the new setup.
                Ok(new_db) => db = new_db,
                Err(e) => {
                    tracing::error!(error = %e, "configuration reload rejected: [postgres]; keeping the running configuration");
                    notify::reloaded("reload rejected");
                    return false;
                }
            }
        }
        // The outbox may be busy on a stuck disk: off the signal loop, waited for only so long
        // (it is applied when the outbox answers).
        let (shipper, listener) = (self.shipper.clone(), Arc::new(new.clone()));
        let apply = tokio::task::spawn_blocking(move || shipper.reconfigure(&listener));
        match tokio::time::timeout(Duration::from_secs(2), apply).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => tracing::error!(error = %e,
                "listener settings could not be applied; keeping the previous ones"),
            Ok(Err(e)) => tracing::error!(error = %e, "applying the listener settings failed"),
            Err(_) => tracing::warn!(
                "the outbox is busy (a hung disk?): the listener settings take effect when it answers"
            ),
        }
        self.log.set_level(&new.logging.level);
        self.telemetry.set_interval(new.agent.collection_interval);
        self.telemetry
            .set_unhealthy_after(new.telemetry.unhealthy_after);
        if let Some(d) = &self.delivery {
            d.set_interval(new.agent.collection_interval);
        }
        // Everything built from the configuration is built again, once, for all the tasks.
        self.setup = Arc::new(Setup::new(Arc::new(new), db));
        if self.setup.config.telemetry.listen != old.telemetry.listen {
            if let Err(e) = self.start_telemetry().await {
                tracing::error!(error = %e, "telemetry endpoint not restarted");
            }
        }
        if self.setup.config.logs != old.logs
            || self.setup.config.postgres != old.postgres
            || self.setup.config.safety != old.safety
            || self.setup.config.correlation != old.correlation
            || self.setup.config.privacy != old.privacy
            || self.setup.config.agent != old.agent
        {
            // The old task flushes its buffer into the outbox and saves its position first.
            if let Some(task) = self.log_task.take() {
                task.stop(Duration::from_secs(5)).await;
            }
            self.start_log_task();
        }
        tracing::info!("configuration reloaded");
        notify::reloaded("configuration reloaded");
        true
    }

    async fn stop(&mut self) {
        notify::stopping();
        tracing::info!("stopping");
        // No new cycle; one in progress is abandoned (what it wrote is durable).
        if let Some(c) = self.collection.take() {
            c.stop(Duration::from_millis(200)).await;
        }
        if let Some(s) = self.sampling.take() {
            s.stop(sample::STOP_FLUSH + Duration::from_millis(50)).await;
        }
        // The state writer finishes what the last cycles handed it, if the disk answers.
        if let Some(w) = self.writer.take() {
            match Arc::try_unwrap(w) {
                Ok(w) => w.stop(SHUTDOWN_WRITER_FLUSH).await,
                Err(_) => tracing::debug!("the state writer is still shared; left to the exit"),
            }
        }
        // The log task writes what it holds to the outbox and saves its position.
        if let Some(task) = self.log_task.take() {
            task.stop(SHUTDOWN_LOG_FLUSH).await;
        }
        // Delivery starts no new request; one in flight may finish, then one last pass sends what
        // the log task flushed, all within the budget; past it the thread is left behind.
        if let Some(d) = self.delivery.take() {
            d.stop(SHUTDOWN_SEND_BUDGET).await;
        }
        self.setup.db.close();
        self.shutdown.cancel();
        // Its tracked future must be awaited (or dropped) for the tracker to see it end.
        if let Some((_, handle)) = self.telemetry_task.take() {
            let _ = tokio::time::timeout(Duration::from_millis(200), handle).await;
        }
        self.tracker.close();
        if tokio::time::timeout(Duration::from_millis(200), self.tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                event = "tasks_not_finished",
                tasks = self.tracker.len(),
                "tasks still running at exit"
            );
        }
        tracing::info!("stopped");
    }
}
