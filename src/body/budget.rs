//! A bound on response bytes copied into user space and not yet sent (TLS, HTTP/2 framing,
//! in-process readers; `sendfile` hits copy nothing). Each copied chunk holds permits for its
//! bytes until it is dropped, which hyper does once it has written the chunk to the socket: so
//! thousands of HTTP/2 streams whose clients grant no flow-control credit hold at most the
//! budget in all, not a chunk (or a channel of chunks) each. A body waiting for permits simply
//! waits, like a slow socket.
//!
//! Two levels: each connection has its own share ([`CONNECTION_COPY_BUDGET`]), taken before
//! the process-wide [`COPY_BUDGET`], so a few connections that never take their bytes cannot
//! spend the whole budget and slow every other copying response.

use std::sync::{Arc, LazyLock};

use bytes::Bytes;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Bytes of copied, unsent response data allowed at once, all connections together.
pub const COPY_BUDGET: usize = 256 << 20;

/// Bytes of copied, unsent response data one connection may hold (32 chunks of 256 KiB in
/// flight: more than one connection's socket or HTTP/2 windows usually take at once).
pub const CONNECTION_COPY_BUDGET: usize = 8 << 20;

static BUDGET: LazyLock<Arc<Semaphore>> = LazyLock::new(|| Arc::new(Semaphore::new(COPY_BUDGET)));

/// One connection's copy budget: its own share, under a process-wide total.
#[derive(Clone, Debug)]
pub struct CopyBudget {
    /// This connection's share, and its size in bytes.
    own: (Arc<Semaphore>, usize),
    /// The total all connections share, and its size in bytes.
    total: (Arc<Semaphore>, usize),
}

impl CopyBudget {
    /// A new connection's budget: [`CONNECTION_COPY_BUDGET`] under the process's
    /// [`COPY_BUDGET`].
    pub fn connection() -> CopyBudget {
        CopyBudget::new(CONNECTION_COPY_BUDGET, BUDGET.clone(), COPY_BUDGET)
    }

    /// A budget of `own` bytes under `total`, a semaphore of `total_size` permits (tests give
    /// their own).
    pub fn new(own: usize, total: Arc<Semaphore>, total_size: usize) -> CopyBudget {
        CopyBudget {
            own: (Arc::new(Semaphore::new(own)), own),
            total: (total, total_size),
        }
    }

    /// Waits for `n` bytes (at most the smaller of the two budgets): the connection's share
    /// first, so a connection that has spent its share waits without taking from the total.
    pub async fn reserve(&self, n: usize) -> Permits {
        let n = n.clamp(1, self.own.1.min(self.total.1).max(1));
        let n = u32::try_from(n).unwrap_or(u32::MAX);
        let own = take(&self.own.0, n).await;
        let total = take(&self.total.0, n).await;
        Permits {
            _own: own,
            _total: total,
        }
    }
}

/// Waits for `n` permits of `s`.
async fn take(s: &Arc<Semaphore>, n: u32) -> OwnedSemaphorePermit {
    s.clone()
        .acquire_many_owned(n)
        .await
        .expect("the copy budget is never closed")
}

/// Permits for copied bytes: of the connection's share and of the total.
#[derive(Debug)]
pub struct Permits {
    _own: OwnedSemaphorePermit,
    _total: OwnedSemaphorePermit,
}

/// `bytes` that give their permits back when the last slice of them is dropped.
pub fn holding(bytes: Bytes, permits: Permits) -> Bytes {
    Bytes::from_owner(Held {
        bytes,
        _permits: permits,
    })
}

/// Copied bytes and the permits they hold.
struct Held {
    bytes: Bytes,
    _permits: Permits,
}

impl AsRef<[u8]> for Held {
    fn as_ref(&self) -> &[u8] {
        &self.bytes
    }
}
