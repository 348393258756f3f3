//! A client connection that stops reading its response (or reads it a byte a second) is
//! closed: while the server has bytes to send, a connection must take at least
//! [`MIN_SEND_BYTES`] in every `client_idle_timeout` window, or its writes fail (the response is
//! cut, hyper closes the connection). A connection that is merely idle (nothing to send) is the
//! idle timeout's business, not this one's.
//!
//! HTTP/2 hides a second way of not reading: a client that grants no flow-control credit
//! makes hyper stop asking a response for more bytes, and nothing reaches the socket at all.
//! [`Progress`] sees that from the responses' side (a response that has handed over bytes and
//! is not asked for more), and the connection's watchdog closes a connection whose responses
//! wait a whole window while fewer than [`MIN_SEND_BYTES`] leave.
//!
//! On TLS, where the protocol is known from ALPN before any byte of HTTP, an HTTP/2 client
//! must also send the whole connection preface within `header_read_timeout`
//! ([`SendGuard::expect_preface`]).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Duration, Instant, Sleep};

/// Bytes a client must take per window while a response is being sent.
pub const MIN_SEND_BYTES: u64 = 1024;

/// How long a closing connection waits, after its last byte and FIN, for the client to close
/// its side. Closing a socket with unread input makes the kernel send a reset, which discards
/// what is still in flight: an HTTP/2 client still sending WINDOW_UPDATEs would lose the end
/// of its last response.
pub const LINGER: Duration = Duration::from_secs(10);

/// The client IO of one connection, with its send-progress deadline.
pub struct SendGuard<I> {
    inner: I,
    /// The window (`client_idle_timeout`).
    window: Duration,
    /// Set while writes are pending: when the window started and the bytes taken since.
    since: Option<(Instant, u64)>,
    /// Wakes the connection's task at the window's end even if the socket never drains.
    timer: Pin<Box<Sleep>>,
    /// Where written bytes are counted for the connection's watchdog.
    progress: Arc<Progress>,
    /// Bytes of the HTTP/2 preface still to come, and by when.
    preface: Option<(usize, Pin<Box<Sleep>>)>,
    /// After the write side was shut down: until when input is drained (see [`LINGER`]).
    linger: Option<Pin<Box<Sleep>>>,
}

impl<I> SendGuard<I> {
    /// Guards `inner` with a window of `window`, counting written bytes in `progress`.
    pub fn new(inner: I, window: Duration, progress: Arc<Progress>) -> SendGuard<I> {
        SendGuard {
            inner,
            window,
            since: None,
            timer: Box::pin(tokio::time::sleep(window)),
            progress,
            preface: None,
            linger: None,
        }
    }

    /// Reads fail (and so the connection ends) unless the 24-byte HTTP/2 preface (RFC 9113
    /// §3.4) has arrived within `timeout`.
    pub fn expect_preface(mut self, timeout: Duration) -> SendGuard<I> {
        self.preface = Some((24, Box::pin(tokio::time::sleep(timeout))));
        self
    }

    /// Whether the window ran out with too little taken (and so the connection must go).
    /// `wrote`: `None` for a pending write, else the bytes taken of the `asked`.
    fn check(&mut self, cx: &mut Context<'_>, wrote: Option<usize>, asked: usize) -> bool {
        let now = Instant::now();
        match (wrote, &mut self.since) {
            // All that was asked was taken: no backlog, no window.
            (Some(n), _) if n == asked => {
                self.since = None;
                return false;
            }
            (Some(n), Some((_, taken))) => *taken += n as u64,
            (Some(n), None) => {
                self.since = Some((now, n as u64));
                self.timer.as_mut().reset(now + self.window);
            }
            (None, None) => {
                self.since = Some((now, 0));
                self.timer.as_mut().reset(now + self.window);
            }
            (None, Some(_)) => {}
        }
        let Some((start, taken)) = self.since else {
            return false;
        };
        if now.duration_since(start) < self.window {
            let _ = self.timer.as_mut().poll(cx);
            return false;
        }
        if taken < MIN_SEND_BYTES {
            return true;
        }
        // A new window starts while the backlog lasts.
        self.since = None;
        false
    }
}

impl<I> SendGuard<I> {
    /// A write's result `r` of `asked` bytes, or the error that ends a too slow client.
    fn judge(
        &mut self,
        cx: &mut Context<'_>,
        r: Poll<io::Result<usize>>,
        asked: usize,
    ) -> Poll<io::Result<usize>> {
        let wrote = match &r {
            Poll::Ready(Ok(n)) => {
                self.progress
                    .written
                    .fetch_add(*n as u64, Ordering::Relaxed);
                Some(*n)
            }
            Poll::Pending => None,
            Poll::Ready(Err(_)) => return r,
        };
        if self.check(cx, wrote, asked) {
            return Poll::Ready(Err(too_slow(self.window)));
        }
        r
    }
}

fn too_slow(window: Duration) -> io::Error {
    io::Error::new(
        io::ErrorKind::TimedOut,
        format!("the client took fewer than {MIN_SEND_BYTES} bytes in {window:?}"),
    )
}

impl<I: AsyncRead + Unpin> AsyncRead for SendGuard<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        let Some((left, deadline)) = &mut self.preface else {
            return r;
        };
        match &r {
            Poll::Ready(Ok(())) => {
                *left = left.saturating_sub(buf.filled().len() - before);
                if *left == 0 {
                    self.preface = None;
                }
                r
            }
            Poll::Pending if deadline.as_mut().poll(cx).is_ready() => {
                Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "the HTTP/2 preface did not arrive within header_read_timeout",
                )))
            }
            _ => r,
        }
    }
}

impl<I: AsyncRead + AsyncWrite + Unpin> AsyncWrite for SendGuard<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.judge(cx, r, buf.len())
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.judge(cx, r, bufs.iter().map(|b| b.len()).sum())
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    /// Shuts the write side down (FIN, after TLS close_notify), then reads and drops what the
    /// client still sends until it closes or [`LINGER`] passes, so the close is never a reset
    /// that discards the response's last bytes.
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.linger.is_none() {
            match Pin::new(&mut self.inner).poll_shutdown(cx) {
                Poll::Ready(Ok(())) => {}
                other => return other,
            }
            self.linger = Some(Box::pin(tokio::time::sleep(LINGER)));
        }
        let mut scratch = [0u8; 4096];
        loop {
            if let Some(t) = &mut self.linger {
                if t.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Ok(()));
                }
            }
            let mut buf = ReadBuf::new(&mut scratch);
            match Pin::new(&mut self.inner).poll_read(cx, &mut buf) {
                Poll::Ready(Ok(())) if buf.filled().is_empty() => return Poll::Ready(Ok(())),
                Poll::Ready(Ok(())) => continue,
                Poll::Ready(Err(_)) => return Poll::Ready(Ok(())),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

/// One connection's send progress as its watchdog sees it: responses holding bytes the client
/// has not taken, and the bytes its socket has taken.
#[derive(Default)]
pub struct Progress {
    /// Responses that handed hyper a frame and have not been asked for the next one.
    waiting: AtomicUsize,
    /// Bytes written to the socket.
    written: AtomicU64,
    /// Since when responses have been waiting, and `written` then.
    mark: Mutex<Option<(Instant, u64)>>,
}

impl Progress {
    /// A response that has handed over a frame and waits to be asked for more; counted until
    /// dropped.
    pub fn waiting(self: &Arc<Self>) -> Waiting {
        self.waiting.fetch_add(1, Ordering::SeqCst);
        Waiting(self.clone())
    }

    /// Called by the watchdog now and then: whether responses have waited for at least
    /// `window` while fewer than [`MIN_SEND_BYTES`] left (the client grants no HTTP/2 credit,
    /// or does not read).
    pub fn stalled(&self, window: Duration) -> bool {
        let now = Instant::now();
        let written = self.written.load(Ordering::Relaxed);
        let mut mark = self.mark.lock().expect("progress lock");
        if self.waiting.load(Ordering::SeqCst) == 0 {
            *mark = None;
            return false;
        }
        match *mark {
            None => {
                *mark = Some((now, written));
                false
            }
            Some((since, _)) if now.duration_since(since) < window => false,
            Some((_, then)) if written - then < MIN_SEND_BYTES => true,
            Some(_) => {
                // Enough left in this window: a new one starts.
                *mark = Some((now, written));
                false
            }
        }
    }
}

/// A response waiting to be asked for its next frame (see [`Progress::waiting`]).
pub struct Waiting(Arc<Progress>);

impl Drop for Waiting {
    fn drop(&mut self) {
        self.0.waiting.fetch_sub(1, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Responses that wait a whole window with nothing taken are a stall; bytes taken, or
    /// nothing waiting, are not.
    #[tokio::test(start_paused = true)]
    async fn a_stall_is_a_window_of_waiting_with_nothing_taken() {
        let p = Arc::new(Progress::default());
        let w = Duration::from_secs(10);
        assert!(!p.stalled(w), "nothing waits");
        let waiting = p.waiting();
        assert!(!p.stalled(w), "the window starts");
        tokio::time::advance(Duration::from_secs(11)).await;
        p.written.fetch_add(MIN_SEND_BYTES, Ordering::Relaxed);
        assert!(!p.stalled(w), "enough taken: a new window");
        tokio::time::advance(Duration::from_secs(5)).await;
        assert!(!p.stalled(w), "inside the window");
        tokio::time::advance(Duration::from_secs(6)).await;
        assert!(p.stalled(w), "a window with nothing taken");
        drop(waiting);
        assert!(!p.stalled(w), "nothing waits any more");
    }
}
