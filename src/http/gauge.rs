//! A count of things in progress, with when it last fell: the server's connections (drained at
//! shutdown) and one connection's requests (an idle connection is closed).

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

/// A count of things in progress — the server's connections (drained at shutdown), one
/// connection's requests (an idle connection is closed) — with when it last fell.
pub(super) struct Gauge {
    count: std::sync::atomic::AtomicUsize,
    since: std::sync::Mutex<Instant>,
    fell: tokio::sync::Notify,
}

impl Gauge {
    pub(super) fn new() -> Arc<Gauge> {
        Arc::new(Gauge {
            count: Default::default(),
            since: std::sync::Mutex::new(Instant::now()),
            fell: tokio::sync::Notify::new(),
        })
    }

    pub(super) fn enter(self: &Arc<Self>) -> Entered {
        self.count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Entered(self.clone())
    }

    /// How many are in progress.
    pub(super) fn count(&self) -> usize {
        self.count.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Nothing in progress, for at least `limit`.
    pub(super) fn idle_for(&self, limit: Duration) -> bool {
        self.count.load(std::sync::atomic::Ordering::SeqCst) == 0
            && self.since.lock().expect("gauge lock").elapsed() >= limit
    }

    /// Waits until nothing is in progress.
    pub(super) async fn wait_none(&self) {
        loop {
            let fell = self.fell.notified();
            tokio::pin!(fell);
            fell.as_mut().enable();
            if self.idle_for(Duration::ZERO) {
                return;
            }
            fell.await;
        }
    }
}

/// One thing in progress, counted until dropped.
pub(super) struct Entered(Arc<Gauge>);

impl Drop for Entered {
    fn drop(&mut self) {
        *self.0.since.lock().expect("gauge lock") = Instant::now();
        self.0
            .count
            .fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
        self.0.fell.notify_waiters();
    }
}
