//! A request's access-log line ([`LoggedBody`]): written when its response body is done, or
//! dropped because the client left, with the bytes actually sent; also counts the client's kind
//! and keeps the request in the recent-requests ring (the admin socket's `GET /-/clients`,
//! which `regcache doctor` reads).

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};
use tokio::time::Instant;

use crate::body::{BoxError, ResponseBody};
use crate::cache::CacheResult;
use crate::mirror::Mirror;

use super::gauge::Entered;
use super::guard::{Progress, Waiting};

/// A request id unique within this process run: 16 hex digits (the process start's low bits,
/// then a counter), e.g. `5f3a9c01000000a2`.
pub(super) fn next_request_id() -> String {
    static START: std::sync::LazyLock<u64> = std::sync::LazyLock::new(|| {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        (t.as_secs() ^ u64::from(std::process::id())) << 32
    });
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("{:016x}", *START ^ n)
}

/// What the access log line says about a request.
pub(super) struct AccessLog {
    /// The client's kind, from its `User-Agent`.
    pub(super) kind: crate::clients::ClientKind,
    /// Its `User-Agent` (at most 256 characters).
    pub(super) user_agent: String,
    /// When the request arrived, in milliseconds since the Unix epoch.
    pub(super) arrived_unix_ms: u64,
    /// Request method.
    pub(super) method: String,
    /// Request path (no query: nothing secret ever travels there, but it is noise).
    pub(super) path: String,
    /// Response status.
    pub(super) status: u16,
    /// hit / miss / coalesced / stale / pass.
    pub(super) cache: CacheResult,
    /// The registry the request was routed to, once known.
    pub(super) registry: Option<String>,
    /// Answering it sent a manifest GET upstream (counted by Docker Hub's rate limit).
    pub(super) counted: bool,
    /// The client's address.
    pub(super) client: std::net::SocketAddr,
    /// Who the client authenticated as: its Basic user name, or its client certificate's
    /// subject.
    pub(super) user: Option<String>,
    /// This request's id (also sent as `X-Request-Id`).
    pub(super) request_id: String,
    /// When the request arrived.
    pub(super) started: Instant,
    /// Where the request counters live.
    pub(super) app: Arc<Mirror>,
}

/// A response body that writes the request's access-log line when it is done (or dropped
/// because the client left), with the bytes actually sent.
pub struct LoggedBody {
    /// The handler's body.
    inner: ResponseBody,
    /// Body bytes handed to hyper so far.
    bytes: u64,
    /// The body's length, when known in advance.
    expected: Option<u64>,
    /// Whether the body reached its end.
    finished: bool,
    /// The rest of the log line.
    log: AccessLog,
    /// Keeps the connection counted as busy until the response is done.
    _active: Entered,
    /// The connection's send progress.
    progress: Arc<Progress>,
    /// Set while hyper has not asked for the next frame: from the start, and from handing over
    /// a frame until the next ask.
    waiting: Option<Waiting>,
}

impl LoggedBody {
    /// `inner`, whose end (or drop) writes `log`; the connection counts as busy (`active`)
    /// until then, and `progress` hears when a frame handed to hyper waits to be asked for the
    /// next.
    pub(super) fn new(
        inner: ResponseBody,
        log: AccessLog,
        active: Entered,
        progress: Arc<Progress>,
    ) -> LoggedBody {
        let expected = inner.size_hint().exact();
        // A body hyper has yet to ask for (HTTP/2 asks only once the client grants credit).
        let waiting = (!inner.is_end_stream()).then(|| progress.waiting());
        LoggedBody {
            inner,
            bytes: 0,
            expected,
            finished: false,
            log,
            _active: active,
            progress,
            waiting,
        }
    }
}

impl Body for LoggedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        // Asked for more: whatever was handed over has been taken (or buffered).
        self.waiting = None;
        let p = Pin::new(&mut self.inner).poll_frame(cx);
        match &p {
            Poll::Ready(Some(Ok(f))) => {
                if let Some(d) = f.data_ref() {
                    self.bytes += d.len() as u64;
                    // Until asked again (or dropped: hyper keeps a last frame it cannot send).
                    self.waiting = Some(self.progress.waiting());
                }
            }
            Poll::Ready(None) => self.finished = true,
            _ => {}
        }
        p
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for LoggedBody {
    fn drop(&mut self) {
        let (bytes, l) = (self.bytes, &mut self.log);
        let complete = self.finished || self.expected == Some(bytes);
        l.app.record(l.cache, bytes);
        let ms = (l.started.elapsed().as_secs_f64() * 10_000.0).round() / 10.0;
        let registry = l.registry.as_deref().unwrap_or("-");
        macro_rules! access {
            ($level:ident) => {
                tracing::$level!(
                    target: "regcache::access",
                    method = %l.method,
                    path = %l.path,
                    status = l.status,
                    cache = l.cache.as_str(),
                    bytes,
                    complete,
                    ms,
                    registry,
                    counted = l.counted,
                    client = %l.client,
                    user = l.user.as_deref().unwrap_or("-"),
                    request_id = %l.request_id,
                )
            };
        }
        // Health probes come every second or so: kept out of the access log at info.
        let probe = super::health::PATHS.contains(&l.path.as_str());
        if probe {
            access!(debug);
        } else {
            access!(info);
        }
        let clients = l.app.clients();
        clients.count(l.kind);
        if !probe && l.path != "/metrics" {
            // The line is written: the ring takes the log's strings instead of copies.
            let mut path = std::mem::take(&mut l.path);
            if let Some((cut, _)) = path.char_indices().nth(256) {
                path.truncate(cut);
            }
            clients.keep(
                l.kind,
                crate::clients::Seen {
                    at_unix_ms: l.arrived_unix_ms,
                    method: std::mem::take(&mut l.method),
                    path,
                    status: l.status,
                    registry: l.registry.take(),
                    user_agent: std::mem::take(&mut l.user_agent),
                    client: l.client.to_string(),
                },
            );
        }
    }
}
