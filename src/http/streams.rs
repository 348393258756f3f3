//! HTTP/2 streams polled in their connection's task.
//!
//! hyper runs each HTTP/2 stream (the response body feeding `h2`'s send buffer) as a future it
//! hands to an executor. With tokio's spawn, every stream is a task of its own: each 16 KiB
//! DATA frame's flow-control capacity wakes the stream task from the connection task and the
//! next frame wakes the connection back, and on a multi-threaded runtime those wake-ups cross
//! worker threads (`perf`: context switches 8.6% of an HTTP/2 hit's CPU against 0.85% for
//! HTTP/1.1; BENCHMARKS.md, issue 17 item 5). [`StreamExec`] instead queues the stream in the
//! connection's own task, which [`drive`] polls beside the connection, so those wake-ups stay
//! in one task. A stream spawned outside [`drive`] (none is, today) falls back to `tokio::spawn`.
//! [`drive`] also ends every poll by writing out a TLS connection's gathered socket writes
//! (`cork`).

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use futures_util::stream::{FuturesUnordered, StreamExt};

type StreamFuture = Pin<Box<dyn Future<Output = ()> + Send>>;

/// Streams handed to [`StreamExec`] while their connection is being polled, not yet picked up.
type Inbox = Arc<Mutex<Vec<StreamFuture>>>;

tokio::task_local! {
    static INBOX: Inbox;
}

/// hyper's executor for a connection's HTTP/2 streams: into the connection's task (see the
/// module docs).
#[derive(Clone, Copy, Debug, Default)]
pub struct StreamExec;

impl<F> hyper::rt::Executor<F> for StreamExec
where
    F: Future<Output = ()> + Send + 'static,
{
    fn execute(&self, fut: F) {
        match INBOX.try_with(|inbox| inbox.clone()) {
            Ok(inbox) => inbox.lock().expect("stream inbox").push(Box::pin(fut)),
            // Not inside `drive`: a task of its own.
            Err(_) => drop(tokio::spawn(fut)),
        }
    }
}

/// Whether the caller runs inside [`Streams::drive`]'s poll of its connection (where a
/// [`Corked`](super::cork::Corked) stream gathers its writes).
pub fn in_drive() -> bool {
    INBOX.try_with(|_| ()).is_ok()
}

/// One connection's streams.
#[derive(Default)]
pub struct Streams {
    inbox: Inbox,
    running: FuturesUnordered<StreamFuture>,
    /// The connection's gathered socket writes, drained after every poll.
    cork: Option<super::cork::CorkHandle>,
}

impl Streams {
    /// Streams of a connection whose socket writes `cork` gathers: each poll ends by writing
    /// them out.
    pub fn corked(cork: Option<super::cork::CorkHandle>) -> Streams {
        Streams {
            cork,
            ..Streams::default()
        }
    }

    /// Polls `conn` to its end, and the streams it starts meanwhile beside it; every poll ends
    /// by writing out the connection's gathered writes (a socket that is full wakes the task
    /// when it drains). Bytes a connection that ended with an error left gathered are the
    /// caller's to drain ([`CorkHandle::drain`](super::cork::CorkHandle::drain)): a normal end
    /// drains them itself, in its shutdown.
    pub async fn drive<F: Future>(&mut self, mut conn: Pin<&mut F>) -> F::Output {
        std::future::poll_fn(|cx| {
            let done = self.poll(conn.as_mut(), cx);
            if let Some(cork) = &self.cork {
                let _ = cork.poll_drain(cx);
            }
            done
        })
        .await
    }

    fn poll<F: Future>(&mut self, conn: Pin<&mut F>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let done = INBOX.sync_scope(self.inbox.clone(), || conn.poll(cx));
        loop {
            self.running
                .extend(self.inbox.lock().expect("stream inbox").drain(..));
            match self.running.poll_next_unpin(cx) {
                Poll::Ready(Some(())) => continue,
                Poll::Ready(None) | Poll::Pending => break,
            }
        }
        done
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::rt::Executor;
    use std::sync::atomic::{AtomicU64, Ordering};

    /// A stream started while the connection is driven runs in the connection's own task (so
    /// its wake-ups never cross threads), and the connection sees it finish.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn streams_run_in_the_connection_task() {
        let outer = tokio::spawn(async {
            let conn_task = tokio::task::id();
            let stream_task = Arc::new(Mutex::new(None));
            let done = Arc::new(AtomicU64::new(0));
            let (seen, finished) = (stream_task.clone(), done.clone());
            let mut started = false;
            let conn = std::future::poll_fn(move |cx| {
                if !started {
                    started = true;
                    let (seen, finished) = (seen.clone(), finished.clone());
                    StreamExec.execute(async move {
                        tokio::task::yield_now().await;
                        *seen.lock().unwrap() = tokio::task::try_id();
                        finished.store(1, Ordering::SeqCst);
                    });
                }
                if finished.load(Ordering::SeqCst) == 1 {
                    Poll::Ready(())
                } else {
                    cx.waker().wake_by_ref();
                    Poll::Pending
                }
            });
            let conn = std::pin::pin!(conn);
            Streams::default().drive(conn).await;
            assert_eq!(done.load(Ordering::SeqCst), 1);
            let ran_in = *stream_task.lock().unwrap();
            (conn_task, ran_in)
        });
        let (conn_task, stream_task) = outer.await.unwrap();
        assert_eq!(
            stream_task,
            Some(conn_task),
            "the stream ran in the connection's task"
        );
    }

    /// Outside a driven connection a stream is a task of its own (and still runs).
    #[tokio::test]
    async fn outside_a_connection_streams_are_spawned() {
        let (tx, rx) = tokio::sync::oneshot::channel();
        StreamExec.execute(async move {
            let _ = tx.send(());
        });
        rx.await.unwrap();
    }
}
