//! The listener: accepts connections, serves HTTP/1.1 and HTTP/2 (hyper-util `auto`), and
//! drains connections on shutdown. Each response's access-log line is `access_log`'s; the
//! counts of connections and requests in progress are `gauge`'s.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::cache::CacheResult;
use crate::mirror::Mirror;

use super::access_log::{next_request_id, AccessLog, LoggedBody};
use super::gauge::{Entered, Gauge};
use super::guard::{Progress, SendGuard};
use super::listener::Listener;

/// How the server is told to stop: `shutdown` begins a graceful stop (no new connections;
/// responses in progress and fills get `grace` to finish), `hurry` (a second signal) ends the
/// wait at once.
pub struct Stop<S, H> {
    /// Resolves when a graceful stop is asked for.
    pub shutdown: S,
    /// Resolves when the wait for responses in progress should end now.
    pub hurry: H,
    /// Longest wait for responses in progress and fills after `shutdown`.
    pub grace: Duration,
}

/// Serves `app` on an already bound `listener`, with the settings of the config's first
/// listener, until `shutdown` completes, then drains open connections (and fills) for up to
/// the config's `shutdown_grace`.
///
/// Errors: the listener's TLS or htpasswd files cannot be loaded.
pub async fn run(
    listener: TcpListener,
    app: Arc<Mirror>,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let settings = super::listener::Listener::load(&app.config().listeners[0])
        .map_err(std::io::Error::other)?;
    let grace = app.config().shutdown_grace;
    serve_listeners(
        vec![(listener, settings)],
        app,
        Stop {
            shutdown,
            hurry: std::future::pending::<()>(),
            grace,
        },
    )
    .await;
    Ok(())
}

/// Serves `app` on every bound listener, each with its settings, until `stop.shutdown`
/// completes; then stops accepting and lets connections in progress (and fills) finish for up
/// to `stop.grace` (or until `stop.hurry`). Accept errors never stop a listener (it backs off
/// when out of file descriptors). Returns the number of connections still open when it gave
/// up waiting (0 after a clean drain).
pub async fn serve_listeners<S, H>(
    listeners: Vec<(TcpListener, Arc<Listener>)>,
    app: Arc<Mirror>,
    stop: Stop<S, H>,
) -> usize
where
    S: Future<Output = ()>,
    H: Future<Output = ()>,
{
    // Shutdown: `stop` tells every connection to finish gracefully; `conns` counts them.
    let (stopper, stopping) = watch::channel(false);
    let conns = Gauge::new();
    let header_timeout = app.config().header_read_timeout;
    let mut builder = auto::Builder::new(super::streams::StreamExec);
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
    let max = app
        .config()
        .max_connections
        .unwrap_or_else(default_max_connections);
    let shared = Arc::new(Shared {
        // The protocol is decided before hyper sees the connection (ALPN, or the first bytes
        // on plain TCP, within the header timeout): hyper's own detection waits for ever.
        builders: Builders {
            h1: builder.clone().http1_only(),
            h2: builder.http2_only(),
        },
        slots: Arc::new(tokio::sync::Semaphore::new(max)),
        max,
        refusals: Arc::new(tokio::sync::Semaphore::new(MAX_REFUSALS)),
        client_idle: app.config().client_idle_timeout,
        header_timeout,
        conns: conns.clone(),
        stopping: stopping.clone(),
        app: app.clone(),
    });
    let admin = tokio::spawn(super::admin_socket::serve(app.clone(), stopping.clone()));
    let loops: Vec<_> = listeners
        .into_iter()
        .map(|(listener, settings)| tokio::spawn(accept_loop(listener, settings, shared.clone())))
        .collect();
    stop.shutdown.await;
    let _ = stopper.send(true);
    for l in loops {
        let _ = l.await;
    }
    drop(shared);
    let _ = admin.await;
    let open = conns.count();
    if open > 0 {
        tracing::info!(
            connections = open,
            grace = %humantime::format_duration(stop.grace),
            "shutdown: waiting for responses in progress (a second SIGTERM or Ctrl-C cuts them)"
        );
    }
    tokio::select! {
        _ = async {
            conns.wait_none().await;
            // Fills whose clients are gone finish and commit rather than being cut.
            app.cache().wait_idle().await;
        } => 0,
        _ = tokio::time::sleep(stop.grace) => {
            let open = conns.count();
            tracing::warn!(connections = open, "shutdown: cutting what is still in progress after shutdown_grace (fills in progress are discarded, never committed)");
            open
        }
        _ = stop.hurry => {
            let open = conns.count();
            tracing::warn!(connections = open, "shutdown: second signal, cutting what is still in progress (fills in progress are discarded, never committed)");
            open
        }
    }
}

/// What every listener's accept loop shares.
struct Shared {
    app: Arc<Mirror>,
    builders: Builders,
    /// One permit per connection served (`max_connections`).
    slots: Arc<tokio::sync::Semaphore>,
    max: usize,
    /// Connections over `max_connections` being answered 503.
    refusals: Arc<tokio::sync::Semaphore>,
    client_idle: Duration,
    header_timeout: Duration,
    conns: Arc<Gauge>,
    stopping: watch::Receiver<bool>,
}

/// Accepts connections on `listener` until shutdown, serving each in its own task.
async fn accept_loop(listener: TcpListener, settings: Arc<Listener>, shared: Arc<Shared>) {
    let mut fd_warning = Throttled::new(FD_WARNING_INTERVAL);
    let mut stopping = shared.stopping.clone();
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = stopping.wait_for(|s| *s) => return,
        };
        let (stream, peer) = match accepted {
            Ok(s) => s,
            Err(e) => {
                // EMFILE/ENFILE: wait for descriptors to free up (said at most every few
                // seconds); others: client resets.
                if matches!(e.raw_os_error(), Some(23) | Some(24)) {
                    fd_warning.say(&e);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let tls = settings.tls();
        let Ok(slot) = shared.slots.clone().try_acquire_owned() else {
            // A few refusals at a time are answered (on plain HTTP; a TLS client would see a
            // plaintext answer as a broken handshake); past that, closed at once.
            if tls.is_some() {
                continue;
            }
            if let Ok(r) = shared.refusals.clone().try_acquire_owned() {
                let max = shared.max;
                tokio::spawn(async move {
                    refuse(stream, max).await;
                    drop(r);
                });
            }
            continue;
        };
        let watch = Watch {
            stopping: shared.stopping.clone(),
            idle: shared.client_idle,
            _live: shared.conns.enter(),
        };
        let header_timeout = shared.header_timeout;
        let conn = Conn {
            app: shared.app.clone(),
            listener: settings.clone(),
            peer,
            client_certificate: None,
        };
        let builders = shared.builders.clone();
        match tls {
            None => {
                tokio::spawn(async move {
                    let _slot = slot;
                    // A connection that sends nothing, or stops inside the HTTP/2 preface, is
                    // closed after the header timeout (or at shutdown).
                    let mut stopping = watch.stopping.clone();
                    let proto = tokio::select! {
                        p = sniff(&stream, header_timeout) => p,
                        _ = stopping.wait_for(|s| *s) => None,
                    };
                    let Some(proto) = proto else {
                        return;
                    };
                    let io = crate::body::zero_copy::ZeroCopyStream::new(stream);
                    serve_connection(io, conn, builders.pick(proto), watch, true, None, None).await
                });
            }
            Some(acceptor) => {
                // The handshake runs in the connection's task, bounded like header reads.
                tokio::spawn(async move {
                    let _slot = slot;
                    let mut stopping = watch.stopping.clone();
                    let handshake = tokio::select! {
                        r = tokio::time::timeout(header_timeout, tls_handshake(acceptor, stream)) => r,
                        _ = stopping.wait_for(|s| *s) => return,
                    };
                    match handshake {
                        Ok(Ok((io, cork))) => {
                            let session = io.get_ref().1;
                            let proto = match session.alpn_protocol() {
                                Some(b"h2") => Proto::Http2,
                                _ => Proto::Http1,
                            };
                            let conn = Conn {
                                client_certificate: session
                                    .peer_certificates()
                                    .and_then(|c| c.first())
                                    .map(|c| {
                                        crate::tls::subject_name(c).escape_debug().to_string()
                                    }),
                                ..conn
                            };
                            // HTTP/1 heads are bounded by hyper; the HTTP/2 preface here.
                            let preface = (proto == Proto::Http2).then_some(header_timeout);
                            serve_connection(
                                io,
                                conn,
                                builders.pick(proto),
                                watch,
                                false,
                                preface,
                                Some(cork),
                            )
                            .await
                        }
                        Ok(Err(e)) if refused_client_certificate(&e) => tracing::info!(
                            client = %peer,
                            error = %e,
                            "TLS client certificate refused: the client needs a certificate signed by the listener's client_ca (regcache certs client)"
                        ),
                        Ok(Err(e)) => {
                            tracing::debug!(client = %peer, error = %e, "TLS handshake failed")
                        }
                        Err(_) => tracing::debug!(client = %peer, "TLS handshake timed out"),
                    }
                });
            }
        }
    }
}

/// Whether a failed handshake is a client certificate the listener refused (none presented, or
/// one that does not chain to `client_ca`), which the operator may need to see.
fn refused_client_certificate(e: &std::io::Error) -> bool {
    matches!(
        e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()),
        Some(rustls::Error::NoCertificatesPresented | rustls::Error::InvalidCertificate(_))
    )
}

/// The TLS handshake, after a look at the first byte: a client speaking plain HTTP to this
/// HTTPS port gets a 400 saying so (not a garbled TLS alert), and the connection is closed.
async fn tls_handshake(
    acceptor: tokio_rustls::TlsAcceptor,
    stream: tokio::net::TcpStream,
) -> std::io::Result<(
    tokio_rustls::server::TlsStream<super::cork::Corked>,
    super::cork::CorkHandle,
)> {
    let mut first = [0u8; 1];
    let n = stream.peek(&mut first).await?;
    // A TLS record starts with its content type: 22, handshake. An HTTP method starts with a
    // capital letter.
    if n == 1 && first[0].is_ascii_uppercase() {
        plain_http_to_tls_port(stream).await;
        return Err(std::io::Error::other("plain HTTP sent to the HTTPS port"));
    }
    let (stream, cork) = super::cork::Corked::new(stream);
    Ok((acceptor.accept(stream).await?, cork))
}

/// Answers a plain-HTTP request on an HTTPS port with a 400 (an OCI error body) and closes.
async fn plain_http_to_tls_port(stream: tokio::net::TcpStream) {
    let port = stream.local_addr().map(|a| a.port()).unwrap_or_default();
    let e = crate::error::ApiError::new(
        http::StatusCode::BAD_REQUEST,
        "UNSUPPORTED",
        format!("this port speaks HTTPS: use https://<host>:{port} (and trust the mirror's CA)"),
    );
    answer_and_close(stream, "400 Bad Request", "", e).await;
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
    h1: auto::Builder<super::streams::StreamExec>,
    h2: auto::Builder<super::streams::StreamExec>,
}

impl Builders {
    fn pick(self, proto: Proto) -> auto::Builder<super::streams::StreamExec> {
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
async fn refuse(stream: tokio::net::TcpStream, max: usize) {
    let e = crate::error::ApiError::unavailable(format!(
        "too many connections (max_connections = {max}); retry shortly"
    ));
    answer_and_close(stream, "503 Service Unavailable", "Retry-After: 1\r\n", e).await;
}

/// Reads the request head, then answers it with `status` (`"503 Service Unavailable"`), the
/// `extra` header lines (each ending in CRLF) and `e`'s OCI error body, and closes; written
/// by hand, for connections hyper never serves. Bounded to a few seconds.
async fn answer_and_close(
    mut stream: tokio::net::TcpStream,
    status: &str,
    extra: &str,
    e: crate::error::ApiError,
) {
    use tokio::io::AsyncWriteExt;
    // Read the request head first: clients treat an answer before their request as a broken
    // connection, not as an answer.
    read_head(&mut stream).await;
    let body = e.body_json();
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n{extra}Docker-Distribution-API-Version: registry/2.0\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        let _ = stream.write_all(head.as_bytes()).await;
        let _ = stream.write_all(body.as_bytes()).await;
        let _ = stream.shutdown().await;
    })
    .await;
}

/// Reads (and drops) a request head, at most 16 KiB and 1 s.
async fn read_head(stream: &mut tokio::net::TcpStream) {
    use tokio::io::AsyncReadExt;
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

/// What ends a connection gracefully: shutdown, or no request for `idle`.
struct Watch {
    stopping: watch::Receiver<bool>,
    idle: Duration,
    _live: Entered,
}

/// One client connection: who it is and where it came in.
#[derive(Clone)]
struct Conn {
    /// The mirror it is served by.
    app: Arc<Mirror>,
    /// The listener it came in on (its htpasswd entries are read per request).
    listener: Arc<Listener>,
    /// The client's address, for the access log.
    peer: std::net::SocketAddr,
    /// The subject of the TLS client certificate it presented (verified in the handshake).
    client_certificate: Option<String>,
}

/// Serves one connection (HTTP/1.1 or HTTP/2) until it closes, shutdown drains it, it has
/// been idle (no request in progress) for `client_idle_timeout`, or its responses have waited
/// that long for a client that takes nothing (see `http::guard`). `preface`: the time an HTTP/2
/// client has to send its connection preface, when not already checked. During a graceful
/// stop, responses in progress go on while their client keeps taking bytes. `cork`: the
/// socket writes under `io` that the drive loop gathers (TLS connections, see `cork`).
#[allow(clippy::too_many_arguments)]
async fn serve_connection<I>(
    io: I,
    conn: Conn,
    builder: auto::Builder<super::streams::StreamExec>,
    mut watch: Watch,
    zero_copy: bool,
    preface: Option<Duration>,
    cork: Option<super::cork::CorkHandle>,
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
        let (conn, active, progress) = (conn.clone(), act.enter(), prog.clone());
        if zero_copy {
            req.extensions_mut()
                .insert(crate::body::zero_copy::ZeroCopyConnection);
        }
        req.extensions_mut().insert(copy_budget.clone());
        async move { Ok::<_, Infallible>(serve(conn, req, active, progress).await) }
    });
    let mut io = SendGuard::new(io, watch.idle, progress.clone());
    if let Some(t) = preface {
        io = io.expect_preface(t);
    }
    let conn = builder.serve_connection(TokioIo::new(io), svc).into_owned();
    tokio::pin!(conn);
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
    // HTTP/2 streams run in this task, beside the connection (see `streams`).
    let mut streams = super::streams::Streams::corked(cork.clone());
    let ended = tokio::select! {
        r = streams.drive(conn.as_mut()) => Ok(r),
        end = reason => Err(end),
    };
    let r = match ended {
        Ok(r) => r,
        Err(End::Stalled) => {
            tracing::debug!("connection closed: its client took nothing for client_idle_timeout");
            return;
        }
        // A graceful close (shutdown, or idle): HTTP/1 finishes the response in progress,
        // HTTP/2 sends GOAWAY and finishes its open streams. They go on while their client
        // takes bytes (the server bounds the whole drain by `shutdown_grace`); one that waited
        // a window for a client granting no credit is dropped.
        Err(End::Graceful) => {
            conn.as_mut().graceful_shutdown();
            let stalled = async {
                let tick = (idle / 4).clamp(Duration::from_millis(50), Duration::from_secs(5));
                loop {
                    tokio::time::sleep(tick).await;
                    if progress.stalled(idle) {
                        return;
                    }
                }
            };
            tokio::select! {
                r = streams.drive(conn.as_mut()) => r,
                _ = stalled => return,
            }
        }
    };
    if let Err(e) = r {
        tracing::debug!(error = %e, "connection ended with an error");
    }
    // What an abrupt end left gathered (a clean end drained it in its shutdown), for as long
    // as a client taking nothing is given.
    if let Some(cork) = cork {
        let _ = tokio::time::timeout(idle, cork.drain()).await;
    }
}

/// Why a connection's watchdog ends it.
enum End {
    /// Shutdown, or idle: finish what is in progress (while its client takes bytes).
    Graceful,
    /// Its responses waited a window for a client that took nothing: dropped at once.
    Stalled,
}

/// The response header naming the node that answered (`node_name`; not sent without it).
pub const NODE_HEADER: &str = "x-regcache-node";

async fn serve(
    conn: Conn,
    req: Request<Incoming>,
    active: Entered,
    progress: Arc<Progress>,
) -> Response<LoggedBody> {
    let started = Instant::now();
    let request_id = next_request_id();
    let app = conn.app.clone();
    let client = conn.peer;
    let (user, handled) = match authorize(&conn, &req).await {
        Ok(user) => (user, super::handle(&app, &req).await),
        Err(denied) => (None, denied),
    };
    let (mut parts, body) = handled.response.into_parts();
    if let Ok(v) = http::HeaderValue::from_str(&request_id) {
        parts.headers.insert("x-request-id", v);
    }
    // Off by default: a node of a tier names itself only when the operator sets node_name.
    if let Some(v) = app
        .config()
        .node_name
        .as_deref()
        .and_then(|n| http::HeaderValue::from_str(n).ok())
    {
        parts.headers.insert(NODE_HEADER, v);
    }
    let user_agent: String = req
        .headers()
        .get(http::header::USER_AGENT)
        .map(|v| {
            String::from_utf8_lossy(v.as_bytes())
                .chars()
                .take(256)
                .collect()
        })
        .unwrap_or_default();
    let log = AccessLog {
        kind: crate::clients::ClientKind::from_user_agent(&user_agent),
        user_agent,
        arrived_unix_ms: crate::clients::now_unix_ms(),
        method: req.method().to_string(),
        path: req.uri().path().chars().take(512).collect(),
        status: parts.status.as_u16(),
        cache: handled.cache,
        registry: handled.registry,
        counted: handled.counted,
        client,
        user,
        request_id,
        started,
        app,
    };
    Response::from_parts(parts, LoggedBody::new(body, log, active, progress))
}

/// Whether the connection's client may make `req`: `Ok` with who it authenticated as (none
/// on an open listener), or the 401 answer (`WWW-Authenticate: Basic`, an OCI `UNAUTHORIZED`
/// body; nothing is read from the cache or asked upstream). Health probes are always
/// answered, `/readyz` with its status alone to a client that has not authenticated. See
/// [`crate::access`] for what each listener requires.
async fn authorize<B>(conn: &Conn, req: &Request<B>) -> Result<Option<String>, super::Handled> {
    let probe = super::health::PATHS.contains(&req.uri().path())
        && matches!(*req.method(), http::Method::GET | http::Method::HEAD);
    let htpasswd = conn.listener.htpasswd();
    if let Some(subject) = &conn.client_certificate {
        // Verified in the handshake; enough on its own.
        return Ok(Some(subject.clone()));
    }
    let Some(htpasswd) = htpasswd else {
        // No htpasswd: open, or client certificates required by the handshake.
        return Ok(None);
    };
    let why = match req.headers().get(http::header::AUTHORIZATION) {
        None => "authentication required: send Basic credentials (skopeo --creds, containerd hosts.toml header, or an Authorization header) or use a client certificate",
        Some(v) => match crate::access::basic_credentials(v) {
            None => "the Authorization header is not Basic credentials",
            Some((user, password)) if user.is_empty() && password.is_empty() => {
                "authentication required: the client sent empty Basic credentials (give it a user name and password: docker login, skopeo --creds)"
            }
            Some((user, password)) => {
                if htpasswd.verify(&user, &password).await {
                    return Ok(Some(user));
                }
                if probe {
                    // Probes are not pulls: a wrong password there is not worth a line.
                    return Err(probe_answer(conn, req).await);
                }
                // Escaped: the name is the client's, and must not forge log lines.
                let shown: String = user.chars().take(64).collect();
                tracing::info!(client = %conn.peer, user = %shown.escape_debug(), "client credentials refused");
                "wrong user name or password"
            }
        },
    };
    if probe {
        return Err(probe_answer(conn, req).await);
    }
    let response = crate::error::ApiError::new(http::StatusCode::UNAUTHORIZED, "UNAUTHORIZED", why)
        .with_header(
            http::header::WWW_AUTHENTICATE,
            http::HeaderValue::from_static("Basic realm=\"regcache\", charset=\"UTF-8\""),
        )
        .into_response(req.method() == http::Method::HEAD);
    Err(super::Handled {
        response,
        cache: CacheResult::None,
        registry: None,
        counted: false,
    })
}

/// A health probe from a client that has not authenticated: `/healthz` as always, `/readyz`
/// with its status alone.
async fn probe_answer<B>(conn: &Conn, req: &Request<B>) -> super::Handled {
    if req.uri().path() != "/readyz" {
        return super::handle(&conn.app, req).await;
    }
    let head = req.method() == http::Method::HEAD;
    let response = match super::check_framing(req) {
        Ok(()) => super::health::readyz_brief(&conn.app, head),
        Err(e) => e.into_response(head),
    };
    super::Handled {
        response,
        cache: CacheResult::None,
        registry: None,
        counted: false,
    }
}
