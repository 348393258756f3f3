//! Response bodies: whole buffers (hits from an mmap, manifests, errors) and channel-fed streams
//! (fills), boxed into one type for the router.

pub mod budget;
pub mod zero_copy;

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::{Body, Frame, SizeHint};
use tokio::sync::mpsc;

/// Error type carried by response bodies; an error frame aborts the response (the client sees a
/// short body or a reset stream), which is how a failed fill is signalled.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The body type every handler returns.
pub type ResponseBody = http_body_util::combinators::UnsyncBoxBody<Bytes, BoxError>;

/// A body holding exactly `bytes` (for an mmap-backed `Bytes`, no copy is made).
pub fn full(bytes: impl Into<Bytes>) -> ResponseBody {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// An empty body (HEAD responses, 304s).
pub fn empty() -> ResponseBody {
    Empty::<Bytes>::new()
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// A body fed by a bounded channel. The producer sends `Ok(chunk)`s; sending `Err` or dropping
/// the sender before `len` bytes were sent ends the response short.
pub struct ChannelBody {
    rx: mpsc::Receiver<Result<Bytes, BoxError>>,
    /// Bytes still expected, when the length is known (for an exact size hint).
    remaining: Option<u64>,
}

impl ChannelBody {
    /// A body of `len` bytes (if known) read from `rx`.
    pub fn new(rx: mpsc::Receiver<Result<Bytes, BoxError>>, len: Option<u64>) -> ChannelBody {
        ChannelBody { rx, remaining: len }
    }
}

impl Body for ChannelBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.rx.poll_recv(cx) {
            Poll::Ready(Some(Ok(chunk))) => {
                if let Some(r) = self.remaining.as_mut() {
                    *r = r.saturating_sub(chunk.len() as u64);
                }
                Poll::Ready(Some(Ok(Frame::data(chunk))))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e))),
            Poll::Ready(None) => match self.remaining {
                Some(r) if r > 0 => Poll::Ready(Some(Err("stream ended before its length".into()))),
                _ => Poll::Ready(None),
            },
            Poll::Pending => Poll::Pending,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self.remaining {
            Some(r) => SizeHint::with_exact(r),
            None => SizeHint::default(),
        }
    }
}

/// A body that fails when its inner body yields nothing for `idle` (a stalled upstream must not
/// hold a client forever).
pub struct IdleTimeout<B> {
    inner: B,
    idle: std::time::Duration,
    timer: Pin<Box<tokio::time::Sleep>>,
}

impl<B> IdleTimeout<B> {
    /// Wraps `inner`, failing after `idle` without a frame.
    pub fn new(inner: B, idle: std::time::Duration) -> IdleTimeout<B> {
        IdleTimeout {
            inner,
            idle,
            timer: Box::pin(tokio::time::sleep(idle)),
        }
    }
}

impl<B> Body for IdleTimeout<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(f) => {
                let deadline = tokio::time::Instant::now() + self.idle;
                self.timer.as_mut().reset(deadline);
                Poll::Ready(f.map(|r| r.map_err(Into::into)))
            }
            Poll::Pending => match self.timer.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(Some(Err(format!(
                    "upstream sent nothing for {:?}",
                    self.idle
                )
                .into()))),
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
