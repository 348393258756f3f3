//! The listener: accepts connections, serves HTTP/1.1 and HTTP/2 (hyper-util `auto`), writes
//! the access log, and drains connections on shutdown.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::Instant;

use bytes::Bytes;
use http::{Request, Response};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::body::{BoxError, ResponseBody};
use crate::cache::CacheResult;
use crate::mirror::Mirror;

use super::guard::{Progress, SendGuard, Waiting};

/// Time in-flight responses (and fills) get to finish after shutdown is asked for.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves `app` on an already bound `listener` until `shutdown` completes, then drains open
/// connections (and fills) for up to [`DRAIN_TIMEOUT`]. Speaks HTTPS when the config names a
/// certificate. Accept errors never stop the loop (it backs off when out of file descriptors).
///
/// Errors: the TLS certificate or key cannot be loaded.
pub async fn run(
    listener: TcpListener,
    app: Arc<Mirror>,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let tls = match &app.config().tls {
        Some((cert, key)) => Some(tokio_rustls::TlsAcceptor::from(
            crate::tls::server_config(cert, key).map_err(std::io::Error::other)?,
        )),
        None => None,
    };
    // Shutdown: `stop` tells every connection to finish gracefully; `conns` counts them.
    let (stop, stopping) = watch::channel(false);
    let conns = Gauge::new();
    let client_idle = app.config().client_idle_timeout;
    let header_timeout = app.config().header_read_timeout;
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(H2_MAX_STREAMS)
        .max_send_buf_size(H2_SEND_BUFFER)
        .keep_alive_interval(Some(Duration::from_secs(30)))
        .keep_alive_timeout(Duration::from_secs(20));
    // The protocol is decided before hyper sees the connection (ALPN, or the first bytes on
    // plain TCP, within the header timeout): hyper's own detection waits for ever.
    let builders = Builders {
        h1: builder.clone().http1_only(),
        h2: builder.http2_only(),
    };
    let max = app
        .config()
        .max_connections
        .unwrap_or_else(default_max_connections);
    let slots = Arc::new(tokio::sync::Semaphore::new(max));
    let admin = tokio::spawn(super::admin_socket::serve(app.clone(), stopping.clone()));
    let refusals = Arc::new(tokio::sync::Semaphore::new(MAX_REFUSALS));
    tokio::pin!(shutdown);
    let mut fd_warning = Throttled::new(FD_WARNING_INTERVAL);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(s) => s,
                    Err(e) => {
                        // EMFILE/ENFILE: wait for descriptors to free up (said at most every
                        // few seconds); others: client resets.
                        if matches!(e.raw_os_error(), Some(23) | Some(24)) {
                            fd_warning.say(&e);
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let Ok(slot) = slots.clone().try_acquire_owned() else {
                    // A few refusals at a time are answered (on plain HTTP; a TLS client would
                    // see a plaintext answer as a broken handshake); past that, closed at once.
                    if tls.is_some() {
                        continue;
                    }
                    if let Ok(r) = refusals.clone().try_acquire_owned() {
                        tokio::spawn(async move {
                            refuse(stream, max).await;
                            drop(r);
                        });
                    }
                    continue;
                };
                let (app, builders) = (app.clone(), builders.clone());
                let watch = Watch {
                    stopping: stopping.clone(),
                    idle: client_idle,
                    _live: conns.enter(),
                };
                match tls.clone() {
                    None => {
                        tokio::spawn(async move {
                            let _slot = slot;
                            // A connection that sends nothing, or stops inside the HTTP/2
                            // preface, is closed after the header timeout (or at shutdown).
                            let mut stopping = watch.stopping.clone();
                            let proto = tokio::select! {
                                p = sniff(&stream, header_timeout) => p,
                                _ = stopping.wait_for(|s| *s) => None,
                            };
                            let Some(proto) = proto else {
                                return;
                            };
                            let io = crate::body::zero_copy::ZeroCopyStream::new(stream);
                            serve_connection(io, app, builders.pick(proto), watch, true, None, peer).await
                        });
                    }
                    Some(acceptor) => {
                        // The handshake runs in the connection's task, bounded like header reads.
                        tokio::spawn(async move {
                            let _slot = slot;
                            let mut stopping = watch.stopping.clone();
                            let handshake = tokio::select! {
                                r = tokio::time::timeout(header_timeout, acceptor.accept(stream)) => r,
                                _ = stopping.wait_for(|s| *s) => return,
                            };
                            match handshake {
                                Ok(Ok(io)) => {
                                    let proto = match io.get_ref().1.alpn_protocol() {
                                        Some(b"h2") => Proto::Http2,
                                        _ => Proto::Http1,
                                    };
                                    // HTTP/1 heads are bounded by hyper; the HTTP/2 preface here.
                                    let preface = (proto == Proto::Http2).then_some(header_timeout);
                                    serve_connection(io, app, builders.pick(proto), watch, false, preface, peer).await
                                }
                                Ok(Err(e)) => tracing::debug!(error = %e, "TLS handshake failed"),
                                Err(_) => tracing::debug!("TLS handshake timed out"),
                            }
                        });
                    }
                }
            }
            _ = &mut shutdown => break,
        }
    }
    drop(listener);
    let _ = stop.send(true);
    let _ = admin.await;
    tokio::select! {
        _ = async {
            conns.wait_none().await;
            // Fills whose clients are gone finish and commit rather than being cut.
            app.cache().wait_idle().await;
        } => {}
        _ = tokio::time::sleep(DRAIN_TIMEOUT) => tracing::warn!("shutdown: connections still open after the drain timeout"),
    }
    Ok(())
}

/// Half the process's open-file limit (the other half is for upstream connections, temp and
/// cache files), at least 64 and at most 16384.
fn default_max_connections() -> usize {
    let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile)
        .current
        .unwrap_or(4096);
    (limit / 2).clamp(64, 16384) as usize
}

/// Bytes hyper buffers per HTTP/2 stream for a client that does not read (with the copy
/// budget in `body::budget`, this bounds what non-reading HTTP/2 clients make regcache hold).
pub const H2_SEND_BUFFER: usize = 128 << 10;

/// Connections over `max_connections` answered with a 503 at a time (the rest are closed).
const MAX_REFUSALS: usize = 64;

/// Concurrent streams per HTTP/2 connection (bounds what one connection can make regcache
/// buffer).
pub const H2_MAX_STREAMS: u32 = 128;

/// The protocol a connection speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Proto {
    Http1,
    Http2,
}

/// The connection builders, one per protocol (no detection inside hyper).
#[derive(Clone)]
struct Builders {
    h1: auto::Builder<TokioExecutor>,
    h2: auto::Builder<TokioExecutor>,
}

impl Builders {
    fn pick(self, proto: Proto) -> auto::Builder<TokioExecutor> {
        match proto {
            Proto::Http1 => self.h1,
            Proto::Http2 => self.h2,
        }
    }
}

/// The HTTP/2 connection preface (RFC 9113 §3.4).
const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Reads (without consuming) the first bytes of a plain-TCP connection: the whole HTTP/2
/// preface means HTTP/2, anything else HTTP/1. `None`: the client sent nothing, or stopped
/// inside the preface, within `timeout` (or closed).
async fn sniff(stream: &tokio::net::TcpStream, timeout: Duration) -> Option<Proto> {
    let deadline = Instant::now() + timeout;
    let mut buf = [0u8; 24];
    loop {
        let n = tokio::time::timeout_at(deadline, stream.peek(&mut buf))
            .await
            .ok()?
            .ok()?;
        if n == 0 {
            return None;
        }
        if buf[..n] != H2_PREFACE[..n] {
            return Some(Proto::Http1);
        }
        if n == H2_PREFACE.len() {
            return Some(Proto::Http2);
        }
        // A prefix of the preface so far: look again shortly (bounded by the deadline).
        tokio::time::timeout_at(deadline, tokio::time::sleep(Duration::from_millis(10)))
            .await
            .ok()?;
    }
}

/// Answers a connection over `max_connections` with a 503 (an OCI error body, `Retry-After`)
/// and closes it, so the clients already connected keep their capacity.
async fn refuse(mut stream: tokio::net::TcpStream, max: usize) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // Read the request head first (bounded): clients treat an answer before their request as
    // a broken connection, not as an answer.
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        let mut head = Vec::new();
        let mut buf = [0u8; 2048];
        while head.len() < 16 << 10 && !head.windows(4).any(|w| w == b"\r\n\r\n") {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => head.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    let body = crate::error::ApiError::unavailable(format!(
        "too many connections (max_connections = {max}); retry shortly"
    ))
    .body_json();
    let head = format!(
        "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nContent-Length: {}\r\nRetry-After: 1\r\nDocker-Distribution-API-Version: registry/2.0\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        let _ = stream.write_all(head.as_bytes()).await;
        let _ = stream.write_all(body.as_bytes()).await;
        let _ = stream.shutdown().await;
    })
    .await;
}

/// Out of file descriptors is said at most this often (with the count of repeats).
const FD_WARNING_INTERVAL: Duration = Duration::from_secs(10);

/// A warning said at most once per interval, counting the repeats in between.
struct Throttled {
    every: Duration,
    last: Option<Instant>,
    suppressed: u64,
}

impl Throttled {
    fn new(every: Duration) -> Throttled {
        Throttled {
            every,
            last: None,
            suppressed: 0,
        }
    }

    fn say(&mut self, e: &std::io::Error) {
        let now = Instant::now();
        if self.last.is_some_and(|l| now - l < self.every) {
            self.suppressed += 1;
            return;
        }
        tracing::warn!(error = %e, repeated = self.suppressed, "out of file descriptors; pausing accepts");
        self.last = Some(now);
        self.suppressed = 0;
    }
}

/// A count of things in progress — the server's connections (drained at shutdown), one
/// connection's requests (an idle connection is closed) — with when it last fell.
struct Gauge {
    count: std::sync::atomic::AtomicUsize,
    since: std::sync::Mutex<Instant>,
    fell: tokio::sync::Notify,
}

impl Gauge {
    fn new() -> Arc<Gauge> {
        Arc::new(Gauge {
            count: Default::default(),
            since: std::sync::Mutex::new(Instant::now()),
            fell: tokio::sync::Notify::new(),
        })
    }

    fn enter(self: &Arc<Self>) -> Entered {
        self.count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Entered(self.clone())
    }

    /// Nothing in progress, for at least `limit`.
    fn idle_for(&self, limit: Duration) -> bool {
        self.count.load(std::sync::atomic::Ordering::SeqCst) == 0
            && self.since.lock().expect("gauge lock").elapsed() >= limit
    }

    /// Waits until nothing is in progress.
    async fn wait_none(&self) {
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
struct Entered(Arc<Gauge>);

impl Drop for Entered {
    fn drop(&mut self) {
        *self.0.since.lock().expect("gauge lock") = Instant::now();
        self.0
            .count
            .fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
        self.0.fell.notify_waiters();
    }
}

/// What ends a connection gracefully: shutdown, or no request for `idle`.
struct Watch {
    stopping: watch::Receiver<bool>,
    idle: Duration,
    _live: Entered,
}

/// Serves one connection (HTTP/1.1 or HTTP/2) until it closes, shutdown drains it, it has
/// been idle (no request in progress) for `client_idle_timeout`, or its responses have waited
/// that long for a client that takes nothing (see `http::guard`). `preface`: the time an HTTP/2
/// client has to send its connection preface, when not already checked. `peer`: the client's
/// address, for the access log.
async fn serve_connection<I>(
    io: I,
    app: Arc<Mirror>,
    builder: auto::Builder<TokioExecutor>,
    mut watch: Watch,
    zero_copy: bool,
    preface: Option<Duration>,
    peer: std::net::SocketAddr,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    // Requests in progress on this connection: an idle one (HTTP/1.1 keep-alive, or HTTP/2
    // that only answers pings) is closed after `client_idle_timeout`.
    let activity = Gauge::new();
    let act = activity.clone();
    // The connection's share of the copy budget, for every response it copies.
    let copy_budget = crate::body::budget::CopyBudget::connection();
    let progress = Arc::new(Progress::default());
    let prog = progress.clone();
    let svc = service_fn(move |mut req: Request<Incoming>| {
        let (app, active, progress) = (app.clone(), act.enter(), prog.clone());
        if zero_copy {
            req.extensions_mut()
                .insert(crate::body::zero_copy::ZeroCopyConnection);
        }
        req.extensions_mut().insert(copy_budget.clone());
        async move { Ok::<_, Infallible>(serve(app, req, active, progress, peer).await) }
    });
    let mut io = SendGuard::new(io, watch.idle, progress.clone());
    if let Some(t) = preface {
        io = io.expect_preface(t);
    }
    let conn = builder.serve_connection(TokioIo::new(io), svc).into_owned();
    // A per-connection graceful shutdown, triggered by the server's or by idleness.
    let graceful = GracefulShutdown::new();
    let served = graceful.watcher().watch(conn);
    tokio::pin!(served);
    let idle = watch.idle;
    let reason = async {
        let tick = (idle / 4).clamp(Duration::from_millis(50), Duration::from_secs(5));
        loop {
            tokio::select! {
                _ = watch.stopping.wait_for(|s| *s) => return End::Graceful,
                _ = tokio::time::sleep(tick) => {
                    if activity.idle_for(idle) {
                        return End::Graceful;
                    }
                    if progress.stalled(idle) {
                        return End::Stalled;
                    }
                }
            }
        }
    };
    let ended = tokio::select! {
        r = &mut served => Ok(r),
        end = reason => Err(end),
    };
    let r = match ended {
        Ok(r) => r,
        Err(End::Stalled) => {
            tracing::debug!("connection closed: its client took nothing for client_idle_timeout");
            return;
        }
        // Streams still open after a GOAWAY (an HTTP/2 client granting no credit for what is
        // buffered) get at most one more window.
        Err(End::Graceful) => {
            let drained = async { tokio::join!(graceful.shutdown(), served).1 };
            match tokio::time::timeout(idle, drained).await {
                Ok(r) => r,
                Err(_) => return,
            }
        }
    };
    if let Err(e) = r {
        tracing::debug!(error = %e, "connection ended with an error");
    }
}

/// Why a connection's watchdog ends it.
enum End {
    /// Shutdown, or idle: finish what is in progress (for at most one more window).
    Graceful,
    /// Its responses waited a window for a client that took nothing: dropped at once.
    Stalled,
}

async fn serve(
    app: Arc<Mirror>,
    req: Request<Incoming>,
    active: Entered,
    progress: Arc<Progress>,
    client: std::net::SocketAddr,
) -> Response<LoggedBody> {
    let started = Instant::now();
    let request_id = next_request_id();
    let handled = super::handle(&app, &req).await;
    let (mut parts, body) = handled.response.into_parts();
    if let Ok(v) = http::HeaderValue::from_str(&request_id) {
        parts.headers.insert("x-request-id", v);
    }
    let expected = body.size_hint().exact();
    // A body hyper has yet to ask for (HTTP/2 asks only once the client grants credit).
    let waiting = (!body.is_end_stream()).then(|| progress.waiting());
    let log = AccessLog {
        method: req.method().to_string(),
        path: req.uri().path().chars().take(512).collect(),
        status: parts.status.as_u16(),
        cache: handled.cache,
        registry: handled.registry,
        client,
        request_id,
        started,
        app,
    };
    Response::from_parts(
        parts,
        LoggedBody {
            inner: body,
            bytes: 0,
            expected,
            finished: false,
            log,
            _active: active,
            progress,
            waiting,
        },
    )
}

/// A request id unique within this process run: 16 hex digits (the process start's low bits,
/// then a counter), e.g. `5f3a9c01000000a2`.
fn next_request_id() -> String {
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
struct AccessLog {
    /// Request method.
    method: String,
    /// Request path (no query: nothing secret ever travels there, but it is noise).
    path: String,
    /// Response status.
    status: u16,
    /// hit / miss / coalesced / stale / pass.
    cache: CacheResult,
    /// The registry the request was routed to, once known.
    registry: Option<String>,
    /// The client's address.
    client: std::net::SocketAddr,
    /// This request's id (also sent as `X-Request-Id`).
    request_id: String,
    /// When the request arrived.
    started: Instant,
    /// Where the request counters live.
    app: Arc<Mirror>,
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
        let l = &self.log;
        let complete = self.finished || self.expected == Some(self.bytes);
        l.app.record(l.cache, self.bytes);
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
                    bytes = self.bytes,
                    complete,
                    ms,
                    registry,
                    client = %l.client,
                    request_id = %l.request_id,
                )
            };
        }
        // Health probes come every second or so: kept out of the access log at info.
        if super::health::PATHS.contains(&l.path.as_str()) {
            access!(debug);
        } else {
            access!(info);
        }
    }
}
