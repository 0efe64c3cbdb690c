//! The daemon's tasks, one file each, all under the daemon's shutdown token: collection
//! (`collect`), active-session sampling (`sample`), the log reader (`log`), delivery on its own
//! thread (`deliver`) and the state writer thread (`writer`). The daemon (`super`) starts them,
//! hands them a new `Setup` on reload and stops them; what they share lives beside them in
//! `super` (`cycle`, `publish`, `schedule`, `setup`, `notify`).

pub mod collect;
pub mod deliver;
pub mod log;
pub mod sample;
pub mod writer;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::setup::Setup;

/// A running task that takes a new [`Setup`] on reload: the collection and sampling tasks (each
/// file's `spawn` starts its own `run` through [`SetupTask::spawn`]).
pub struct SetupTask {
    setup: watch::Sender<Arc<Setup>>,
    stop: CancellationToken,
    handle: JoinHandle<()>,
}

impl SetupTask {
    /// Starts `run` on `tracker` with a receiver of the current setup; it is to return when `stop`
    /// (a child of the daemon's token) is cancelled.
    pub fn spawn<F, Fut>(
        tracker: &TaskTracker,
        setup: Arc<Setup>,
        stop: CancellationToken,
        run: F,
    ) -> SetupTask
    where
        F: FnOnce(watch::Receiver<Arc<Setup>>, CancellationToken) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let (tx, rx) = watch::channel(setup);
        let handle = tracker.spawn(run(rx, stop.clone()));
        SetupTask {
            setup: tx,
            stop,
            handle,
        }
    }

    /// A reloaded setup (configuration and pool) for the task's next round.
    pub fn update(&self, setup: Arc<Setup>) {
        self.setup.send_replace(setup);
    }

    /// Stops the task, abandoning the round in progress, and waits at most `deadline` for it.
    pub async fn stop(self, deadline: Duration) {
        self.stop.cancel();
        let _ = tokio::time::timeout(deadline, self.handle).await;
    }
}
