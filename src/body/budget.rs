//! A bound on response bytes copied into user space and not yet sent (TLS, HTTP/2 framing,
//! in-process readers; `sendfile` hits copy nothing). Each copied chunk holds permits for its
//! bytes until it is dropped, which hyper does once it has written the chunk to the socket: so
//! thousands of HTTP/2 streams whose clients grant no flow-control credit hold at most the
//! budget in all, not a chunk (or a channel of chunks) each. A body waiting for permits simply
//! waits, like a slow socket.

use std::sync::{Arc, LazyLock};

use bytes::Bytes;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Bytes of copied, unsent response data allowed at once, all connections together.
pub const COPY_BUDGET: usize = 256 << 20;

static BUDGET: LazyLock<Arc<Semaphore>> = LazyLock::new(|| Arc::new(Semaphore::new(COPY_BUDGET)));

/// The process's copy budget.
pub fn copy_budget() -> Arc<Semaphore> {
    BUDGET.clone()
}

/// Waits for `n` bytes of `budget` (at most the budget itself).
pub async fn reserve(budget: &Arc<Semaphore>, n: usize) -> OwnedSemaphorePermit {
    let n = u32::try_from(n.min(COPY_BUDGET)).unwrap_or(u32::MAX);
    budget
        .clone()
        .acquire_many_owned(n)
        .await
        .expect("the copy budget is never closed")
}

/// `bytes` that give their permits back when the last slice of them is dropped.
pub fn holding(bytes: Bytes, permit: OwnedSemaphorePermit) -> Bytes {
    Bytes::from_owner(Held {
        bytes,
        _permit: permit,
    })
}

/// Copied bytes and the permits they hold.
struct Held {
    bytes: Bytes,
    _permit: OwnedSemaphorePermit,
}

impl AsRef<[u8]> for Held {
    fn as_ref(&self) -> &[u8] {
        &self.bytes
    }
}
