//! A client connection that stops reading its response (or reads it a byte a second) is
//! closed: while the server has bytes to send, a connection must take at least
//! [`MIN_SEND_BYTES`] in every `client_idle_timeout` window, or its writes fail (the response is
//! cut, hyper closes the connection). A connection that is merely idle (nothing to send) is the
//! idle timeout's business, not this one's.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Duration, Instant, Sleep};

/// Bytes a client must take per window while a response is being sent.
pub const MIN_SEND_BYTES: u64 = 1024;

/// The client IO of one connection, with its send-progress deadline.
pub struct SendGuard<I> {
    inner: I,
    /// The window (`client_idle_timeout`).
    window: Duration,
    /// Set while writes are pending: when the window started and the bytes taken since.
    since: Option<(Instant, u64)>,
    /// Wakes the connection's task at the window's end even if the socket never drains.
    timer: Pin<Box<Sleep>>,
}

impl<I> SendGuard<I> {
    /// Guards `inner` with a window of `window`.
    pub fn new(inner: I, window: Duration) -> SendGuard<I> {
        SendGuard {
            inner,
            window,
            since: None,
            timer: Box::pin(tokio::time::sleep(window)),
        }
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
            Poll::Ready(Ok(n)) => Some(*n),
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
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for SendGuard<I> {
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

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
