//! A bounded queue of chunks processed in order on tokio's blocking pool, holding a pool thread
//! only while there is work.
//!
//! A fill's disk writer and its hasher are such queues. Giving each fill two dedicated blocking
//! threads for its whole life would let a few hundred slow (drip-fed) fills use up tokio's
//! blocking pool (512 threads) and stall every other fill; a [`Serial`] takes a pool thread when
//! a chunk arrives and gives it back as soon as its queue is empty.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// What a [`Serial`] does with each chunk.
pub trait Step: Send + 'static {
    /// Processes one chunk (blocking I/O allowed). Returning `false` stops the queue: later
    /// chunks are dropped unprocessed and [`Serial::push`] returns `false`.
    fn step(&mut self, chunk: Bytes) -> bool;
}

/// An in-order, bounded queue of chunks for one [`Step`] state.
pub struct Serial<S: Step> {
    inner: Arc<Inner<S>>,
    /// One permit per queued (or in-progress) chunk: at most `depth` at a time.
    permits: Arc<Semaphore>,
    depth: u32,
}

struct Inner<S> {
    queue: Mutex<Queue>,
    state: Mutex<Option<S>>,
    /// Set when a step returned `false` or panicked.
    stopped: AtomicBool,
    /// Set when a step panicked.
    panicked: AtomicBool,
}

#[derive(Default)]
struct Queue {
    items: VecDeque<(Bytes, OwnedSemaphorePermit)>,
    /// Whether a drain job is running on the blocking pool.
    running: bool,
}

/// Why [`Serial::finish`] has no state to give back.
#[derive(Debug, thiserror::Error)]
#[error("a blocking worker panicked")]
pub struct Panicked;

impl<S: Step> Serial<S> {
    /// A queue holding at most `depth` (≥ 1) chunks at a time, processing them with `state`.
    pub fn new(state: S, depth: usize) -> Serial<S> {
        let depth = depth.clamp(1, Semaphore::MAX_PERMITS.min(u32::MAX as usize)) as u32;
        Serial {
            inner: Arc::new(Inner {
                queue: Mutex::new(Queue::default()),
                state: Mutex::new(Some(state)),
                stopped: AtomicBool::new(false),
                panicked: AtomicBool::new(false),
            }),
            permits: Arc::new(Semaphore::new(depth as usize)),
            depth,
        }
    }

    /// Queues `chunk`, waiting while the queue is full. Returns `false` (and drops the chunk)
    /// once the queue has stopped.
    pub async fn push(&self, chunk: Bytes) -> bool {
        if self.inner.stopped.load(Ordering::Acquire) {
            return false;
        }
        let Ok(permit) = self.permits.clone().acquire_owned().await else {
            return false;
        };
        let mut q = self.inner.queue.lock().expect("serial queue");
        q.items.push_back((chunk, permit));
        if !q.running {
            q.running = true;
            let inner = self.inner.clone();
            tokio::task::spawn_blocking(move || inner.drain());
        }
        true
    }

    /// Waits until every queued chunk is processed and returns the state.
    ///
    /// Errors: [`Panicked`] when a step panicked.
    pub async fn finish(self) -> Result<S, Panicked> {
        // Every permit back means every chunk has been processed (or dropped).
        let _all = self.permits.acquire_many(self.depth).await;
        if self.inner.panicked.load(Ordering::Acquire) {
            return Err(Panicked);
        }
        // A step that panicked may have released its permit before `panicked` was set; its
        // poisoned lock says so too.
        let state = self.inner.state.lock().ok().and_then(|mut s| s.take());
        state.ok_or(Panicked)
    }
}

impl<S: Step> Inner<S> {
    /// Processes queued chunks until the queue is empty (runs on the blocking pool).
    fn drain(self: Arc<Self>) {
        // If a step panics, stop the queue and release every permit, so `finish` never hangs.
        struct OnPanic<'a, S>(&'a Inner<S>);
        impl<S> Drop for OnPanic<'_, S> {
            fn drop(&mut self) {
                if std::thread::panicking() {
                    self.0.panicked.store(true, Ordering::Release);
                    self.0.stopped.store(true, Ordering::Release);
                    if let Ok(mut q) = self.0.queue.lock() {
                        q.items.clear();
                        q.running = false;
                    }
                }
            }
        }
        let _guard = OnPanic(&self);
        loop {
            let (chunk, permit) = {
                let mut q = self.queue.lock().expect("serial queue");
                match q.items.pop_front() {
                    Some(item) => item,
                    None => {
                        q.running = false;
                        return;
                    }
                }
            };
            if !self.stopped.load(Ordering::Acquire) {
                let mut state = self.state.lock().expect("serial state");
                let go_on = state.as_mut().is_some_and(|s| s.step(chunk));
                drop(state);
                if !go_on {
                    self.stopped.store(true, Ordering::Release);
                }
            }
            drop(permit);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Collect(Vec<u8>, Option<usize>);

    impl Step for Collect {
        fn step(&mut self, chunk: Bytes) -> bool {
            self.0.extend_from_slice(&chunk);
            self.1.is_none_or(|stop| self.0.len() < stop)
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn chunks_are_processed_in_order() {
        let s = Serial::new(Collect(Vec::new(), None), 3);
        for i in 0..200u8 {
            assert!(s.push(Bytes::from(vec![i])).await);
        }
        let c = s.finish().await.unwrap();
        assert_eq!(c.0, (0..200u8).collect::<Vec<_>>());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failed_step_stops_the_queue() {
        let s = Serial::new(Collect(Vec::new(), Some(5)), 2);
        let mut accepted = 0;
        for _ in 0..100 {
            if !s.push(Bytes::from_static(b"x")).await {
                break;
            }
            accepted += 1;
        }
        assert!(accepted < 100, "push reports the stop");
        assert_eq!(s.finish().await.unwrap().0.len(), 5);
    }

    struct Boom;

    impl Step for Boom {
        fn step(&mut self, _: Bytes) -> bool {
            panic!("boom")
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_panicking_step_does_not_hang_finish() {
        let s = Serial::new(Boom, 2);
        for _ in 0..5 {
            s.push(Bytes::from_static(b"x")).await;
        }
        assert!(s.finish().await.is_err());
    }

    /// A step's panic can release its permit before `panicked` is set: `finish` must still
    /// answer `Err`, never panic on the poisoned state (found in review: ~5% of runs).
    #[test]
    fn finish_never_panics_after_a_panicking_step() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            for _ in 0..3000 {
                let s = Serial::new(Boom, 1);
                assert!(s.push(Bytes::from_static(b"x")).await);
                let r = tokio::spawn(async move { s.finish().await.is_err() }).await;
                assert!(r.expect("finish did not panic"), "finish answers Err");
            }
        });
    }

    /// A depth beyond u32 is clamped, not truncated to zero permits.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_huge_depth_still_accepts_chunks() {
        let s = Serial::new(Collect(Vec::new(), None), 1usize << 32);
        let pushed = tokio::time::timeout(
            std::time::Duration::from_secs(5),
            s.push(Bytes::from_static(b"x")),
        )
        .await;
        assert_eq!(pushed.ok(), Some(true));
    }

    /// Many idle queues hold no blocking threads: with a pool of 2 threads, 50 queues that
    /// each get a chunk now and then all make progress.
    #[test]
    fn idle_queues_hold_no_threads() {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .max_blocking_threads(2)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let queues: Vec<_> = (0..50)
                .map(|_| Serial::new(Collect(Vec::new(), None), 2))
                .collect();
            for round in 0..3u8 {
                for q in &queues {
                    assert!(q.push(Bytes::from(vec![round])).await);
                }
            }
            for q in queues {
                let got = tokio::time::timeout(std::time::Duration::from_secs(10), q.finish())
                    .await
                    .expect("every queue finishes")
                    .unwrap();
                assert_eq!(got.0, vec![0, 1, 2]);
            }
        });
    }
}
