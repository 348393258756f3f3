//! The upstream client: hyper-util over rustls (HTTP/1.1 and HTTP/2, pooled connections), the
//! bearer-token challenge flow, and redirect following.
//!
//! Auth ([`auth`]) follows the Docker token spec. A 401 with a cached token drops it and fetches a fresh one once, so short-lived tokens never
//! break a pull. Redirects (blob GETs answer 307 to a CDN) are followed without `Authorization`
//! unless they stay on the upstream's own origin; signed CDN URLs are never cached. Each
//! upstream keeps its rate-limit budget ([`budget`]) and its circuit breaker ([`breaker`]).

mod auth;
pub(crate) mod bandwidth;
pub mod breaker;
pub mod budget;
pub mod proxy;
mod target;

use std::sync::Mutex;

use bytes::Bytes;
use http::header::{HeaderMap, HeaderValue, AUTHORIZATION, LOCATION, USER_AGENT, WWW_AUTHENTICATE};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty, Limited};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::time::{Duration, Instant};
use url::Url;

use crate::config::{Credentials, UpstreamConfig};
use auth::AuthState;
pub use auth::{parse_challenge, Challenge};
use target::GuardedResolver;

/// `Retry-After` assumed for a 429 that gives none (or gives an HTTP-date).
const DEFAULT_RETRY_AFTER: Duration = Duration::from_secs(60);
/// Longest `Retry-After` honoured.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

/// `User-Agent` sent upstream.
pub(crate) const USER_AGENT_VALUE: &str = concat!("regcache/", env!("CARGO_PKG_VERSION"));
/// Longest pause between two body chunks of a manifest or token answer.
pub const BODY_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Most redirects followed for one request.
const MAX_REDIRECTS: usize = 5;

/// What went wrong talking to an upstream, classified so the caller can decide between serving
/// stale content, failing fast with a retryable error, or passing a 404 on.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// TCP/TLS connection failed (refused, unreachable, DNS, handshake).
    #[error("cannot reach upstream {host}: {reason}")]
    Connect { host: String, reason: String },
    /// No response headers (or no body bytes) within the limit.
    #[error("upstream {host} did not answer within {after:?}")]
    Timeout { host: String, after: Duration },
    /// Upstream answered with a non-success status.
    #[error("upstream answered {status}")]
    Status {
        status: StatusCode,
        /// `Retry-After` as upstream sent it (429, 503).
        retry_after: Option<HeaderValue>,
    },
    /// The token flow failed (realm unreachable, bad answer).
    #[error("upstream authentication failed: {0}")]
    Auth(String),
    /// The upstream (its token endpoint, or the registry for Basic auth) refused the
    /// configured credentials: the mirror's config needs fixing, retrying will not help.
    #[error("upstream {registry} rejected the configured credentials (username {username:?}, password_file {}): fix the password file or the config, then reload regcache (systemctl reload regcache, or SIGHUP)", password_file.display())]
    CredentialsRejected {
        registry: String,
        username: String,
        password_file: std::path::PathBuf,
    },
    /// Upstream broke the protocol (bad redirect, oversized or malformed answer).
    #[error("upstream protocol error: {0}")]
    Protocol(String),
    /// `offline = true`: regcache does not contact upstreams.
    #[error("offline mode: upstream is not contacted")]
    Offline,
    /// Upstream recently answered 429 (honouring its `Retry-After`) or timed out; nothing is
    /// sent to it until the back-off ends.
    #[error("upstream {host} is {} for another {}s", if *.rate_limited { "rate limiting us" } else { "not answering" }, .retry_after.as_secs().max(1))]
    BackingOff {
        host: String,
        /// Time left until requests go upstream again.
        retry_after: Duration,
        /// Whether the back-off comes from a 429.
        rate_limited: bool,
    },
}

impl UpstreamError {
    /// The error for a response with a non-success status (keeping its `Retry-After`).
    pub fn from_status<B>(resp: &Response<B>) -> UpstreamError {
        UpstreamError::Status {
            status: resp.status(),
            retry_after: resp.headers().get(http::header::RETRY_AFTER).cloned(),
        }
    }

    /// Whether this is an upstream outage (unreachable, timing out, 5xx, 429, auth trouble), for
    /// which a cached answer may be served stale. A 404 is not an outage: it is an answer.
    pub fn is_outage(&self) -> bool {
        match self {
            UpstreamError::Status { status, .. } => {
                status.is_server_error() || *status == StatusCode::TOO_MANY_REQUESTS
            }
            _ => true,
        }
    }
}

/// An upstream's answer: the final response, whatever its status.
pub type Answer = Result<Response<Incoming>, UpstreamError>;

type HttpsClient = Client<hyper_rustls::HttpsConnector<proxy::Connector>, Empty<Bytes>>;

/// One upstream registry: its base URL, credentials, token cache and connection pool.
pub struct Upstream {
    /// Registry name clients use (`docker.io`).
    registry: String,
    /// Base URL (`https://registry-1.docker.io/`).
    base: Url,
    /// Non-public redirect targets this registry may use (`host` or `host:port`).
    redirect_hosts: Vec<String>,
    /// Basic credentials for the token realm or the registry (replaced on reload).
    credentials: std::sync::RwLock<Option<Credentials>>,
    /// Pooled HTTP/1.1 + HTTP/2 client.
    client: HttpsClient,
    /// Challenge and tokens.
    auth: Mutex<AuthState>,
    /// Bound on connecting and receiving response headers (`revalidate_timeout`).
    timeout: Duration,
    /// `offline = true`: never send anything.
    offline: bool,
    /// Fail fast while the upstream is down or rate limiting; probe for its return.
    breaker: breaker::Breaker,
    /// The rate-limit budget its answers report, and the reserve.
    governor: budget::Governor,
    /// Manifest requests answered by the registry itself: (GET, HEAD). Docker Hub counts the
    /// GETs against its pull rate limit, not the HEADs.
    manifest_requests: (std::sync::atomic::AtomicU64, std::sync::atomic::AtomicU64),
    /// Requests sent (for `/metrics`).
    sent: std::sync::atomic::AtomicU64,
    /// When the upstream last answered, and its last failure (for `/readyz`).
    seen: Mutex<Seen>,
    /// Response-header latency of answered requests (for `/metrics`).
    latency: Latency,
    /// Token fetches that succeeded and failed (for `/metrics`).
    token_fetches: (std::sync::atomic::AtomicU64, std::sync::atomic::AtomicU64),
    /// Whether the rejection of the configured credentials has been logged (once, until they
    /// work again).
    rejection_said: std::sync::atomic::AtomicBool,
}

/// Upper bounds of the latency buckets, in seconds (5 ms to 41 s, doubling).
pub const LATENCY_BUCKETS: [f64; 14] = [
    0.005, 0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96,
];

/// A latency histogram kept in atomics: counts per [`LATENCY_BUCKETS`] bucket (and one past the
/// last), the sum in microseconds.
#[derive(Default)]
struct Latency {
    buckets: [std::sync::atomic::AtomicU64; LATENCY_BUCKETS.len() + 1],
    sum_micros: std::sync::atomic::AtomicU64,
}

impl Latency {
    fn observe(&self, d: Duration) {
        use std::sync::atomic::Ordering::Relaxed;
        let s = d.as_secs_f64();
        let i = LATENCY_BUCKETS
            .iter()
            .position(|b| s <= *b)
            .unwrap_or(LATENCY_BUCKETS.len());
        self.buckets[i].fetch_add(1, Relaxed);
        self.sum_micros.fetch_add(d.as_micros() as u64, Relaxed);
    }

    fn figures(&self) -> LatencyFigures {
        use std::sync::atomic::Ordering::Relaxed;
        let counts: Vec<u64> = self.buckets.iter().map(|b| b.load(Relaxed)).collect();
        LatencyFigures {
            sum_seconds: self.sum_micros.load(Relaxed) as f64 / 1e6,
            count: counts.iter().sum(),
            buckets: LATENCY_BUCKETS
                .iter()
                .copied()
                .chain([f64::INFINITY])
                .zip(counts)
                .collect(),
        }
    }
}

/// A latency histogram's figures: the sum (seconds), the count, and per-bucket (not cumulative)
/// counts by upper bound, the last `+Inf`.
#[derive(Debug, Clone, Default)]
pub struct LatencyFigures {
    /// Sum of all observations, in seconds.
    pub sum_seconds: f64,
    /// Observations.
    pub count: u64,
    /// (upper bound in seconds, observations in this bucket only).
    pub buckets: Vec<(f64, u64)>,
}

/// What an upstream did last.
#[derive(Default)]
struct Seen {
    /// When it last answered (any status below 500).
    answer: Option<Instant>,
    /// When it last failed, and how (no secret: errors never carry credentials or tokens).
    failure: Option<(Instant, String)>,
}

/// An upstream's state as `/readyz` reports it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct UpstreamHealth {
    /// `host[:port]` of the upstream, e.g. `registry-1.docker.io`.
    pub upstream: String,
    /// `reachable` (its last request was answered), `failing` (its last request failed),
    /// `backing_off` (timeouts opened its circuit: uncached requests fail fast),
    /// `rate_limited` (a 429: nothing is sent until its `Retry-After`), `offline`, or
    /// `untried` (nothing sent yet).
    pub state: &'static str,
    /// Seconds until requests go again (`backing_off`, `rate_limited`).
    pub retry_after_seconds: Option<u64>,
    /// The last failure, e.g. `upstream registry-1.docker.io did not answer within 5s`.
    pub last_error: Option<String>,
    /// Seconds since that failure.
    pub last_error_seconds_ago: Option<u64>,
    /// Seconds since the upstream last answered.
    pub last_answer_seconds_ago: Option<u64>,
}

/// Settings shared by every upstream of a mirror.
#[derive(Debug, Clone, Copy)]
pub struct UpstreamOptions {
    /// Bound on connecting and receiving response headers.
    pub timeout: Duration,
    /// Never contact upstream.
    pub offline: bool,
    /// After the upstream stops answering, how long requests skip it (but for probes).
    pub outage_backoff: Duration,
    /// While it is skipped, how often one request probes whether it is back.
    pub probe_interval: Duration,
}

impl Upstream {
    /// Builds the client for `cfg`. TLS trusts the system roots (or the bundled webpki roots
    /// when the system has none) plus the registry's `ca_file` certificates. Connections go
    /// direct or through the proxy `cfg.proxy` names for their host (see [`proxy`]).
    ///
    /// Errors: an I/O error when the TLS configuration cannot be built (a bad `ca_file`
    /// certificate).
    pub fn new(cfg: &UpstreamConfig, opts: UpstreamOptions) -> std::io::Result<Upstream> {
        let mut trusted: Vec<String> = cfg
            .redirect_hosts
            .iter()
            .map(|h| {
                h.rsplit_once(':')
                    .map_or(h.as_str(), |(host, _)| host)
                    .to_ascii_lowercase()
            })
            .collect();
        trusted.extend(cfg.url.host_str().map(str::to_ascii_lowercase));
        let guard = GuardedResolver {
            trusted: std::sync::Arc::new(trusted),
        };
        let mut http = HttpConnector::new_with_resolver(guard.clone());
        http.enforce_http(false);
        http.set_connect_timeout(Some(opts.timeout));
        http.set_nodelay(true);
        let http = proxy::Connector::new(&cfg.proxy, http, guard, opts.timeout);
        tracing::info!(
            registry = %cfg.registry,
            url = %cfg.url,
            proxy = %cfg.proxy.describe(&cfg.url),
            "upstream"
        );
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls_config(&cfg.extra_roots, cfg.client_identity.as_ref())?)
            .https_or_http()
            .enable_http1()
            .enable_http2()
            .wrap_connector(http);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(90))
            .build(https);
        Ok(Upstream {
            registry: cfg.registry.clone(),
            base: cfg.url.clone(),
            credentials: std::sync::RwLock::new(cfg.credentials.clone()),
            redirect_hosts: cfg.redirect_hosts.clone(),
            client,
            auth: Mutex::new(AuthState::default()),
            timeout: opts.timeout,
            offline: opts.offline,
            breaker: breaker::Breaker::new(opts.outage_backoff, opts.probe_interval),
            governor: budget::Governor::new(cfg.rate_limit_reserve),
            manifest_requests: Default::default(),
            sent: Default::default(),
            seen: Default::default(),
            latency: Default::default(),
            token_fetches: Default::default(),
            rejection_said: Default::default(),
        })
    }

    /// Registry name clients use for this upstream.
    pub fn registry(&self) -> &str {
        &self.registry
    }

    /// Host (and port) of the upstream, for logs.
    pub fn host(&self) -> String {
        host_of(&self.base)
    }

    /// Sends `method` to `path_and_query` (e.g. `/v2/library/alpine/manifests/3.19`) on behalf
    /// of repository `name`, with `headers` (Accept, Range), handling auth and redirects.
    /// Returns the final response whatever its status (the caller classifies it).
    ///
    /// While the upstream is down this request may be the one probe that finds it back (see
    /// [`breaker`]); use [`Upstream::send_cached`] when a cached answer is waiting.
    ///
    /// Errors: [`UpstreamError::Offline`], `BackingOff` (nothing is sent), `Connect`, `Timeout`,
    /// `Auth`, `Protocol`.
    pub async fn send(
        &self,
        method: Method,
        name: &str,
        path_and_query: &str,
        headers: &HeaderMap,
    ) -> Result<Response<Incoming>, UpstreamError> {
        self.send_inner(method, name, path_and_query, headers, true)
            .await
    }

    /// [`Upstream::send`] for a request whose cached answer is waiting (a tag revalidation):
    /// while the upstream is down it fails fast and is never the probe, so cached content is
    /// never delayed by probing.
    ///
    /// Errors: as [`Upstream::send`].
    pub async fn send_cached(&self, m: Method, name: &str, path: &str, h: &HeaderMap) -> Answer {
        self.send_inner(m, name, path, h, false).await
    }

    async fn send_inner(
        &self,
        method: Method,
        name: &str,
        path_and_query: &str,
        headers: &HeaderMap,
        may_probe: bool,
    ) -> Result<Response<Incoming>, UpstreamError> {
        let r = self
            .send_attempt(method, name, path_and_query, headers, may_probe)
            .await;
        let mut seen = self.seen.lock().expect("seen lock");
        match &r {
            Ok(resp) if resp.status().is_server_error() => {
                seen.failure = Some((
                    Instant::now(),
                    format!("upstream answered {}", resp.status()),
                ))
            }
            Ok(_) => seen.answer = Some(Instant::now()),
            Err(UpstreamError::Offline | UpstreamError::BackingOff { .. }) => {}
            Err(e) => seen.failure = Some((Instant::now(), e.to_string())),
        }
        r
    }

    /// The upstream's state now (for `/readyz`).
    pub fn health(&self) -> UpstreamHealth {
        let now = Instant::now();
        let seen = self.seen.lock().expect("seen lock");
        let ago = |t: Instant| now.saturating_duration_since(t).as_secs();
        let open = self.breaker.open();
        let failing = match (&seen.failure, seen.answer) {
            (Some((f, _)), Some(a)) => *f > a,
            (Some(_), None) => true,
            _ => false,
        };
        let state = match open {
            _ if self.offline => "offline",
            Some(r) if r.rate_limited => "rate_limited",
            Some(_) => "backing_off",
            None if failing => "failing",
            None if seen.answer.is_some() => "reachable",
            None => "untried",
        };
        UpstreamHealth {
            upstream: self.host(),
            state,
            retry_after_seconds: open.map(|r| r.retry_after.as_secs().max(1)),
            last_error: seen.failure.as_ref().map(|(_, e)| e.clone()),
            last_error_seconds_ago: seen.failure.as_ref().map(|(t, _)| ago(*t)),
            last_answer_seconds_ago: seen.answer.map(ago),
        }
    }

    async fn send_attempt(
        &self,
        method: Method,
        name: &str,
        path_and_query: &str,
        headers: &HeaderMap,
        may_probe: bool,
    ) -> Result<Response<Incoming>, UpstreamError> {
        if self.offline {
            return Err(UpstreamError::Offline);
        }
        if let Err(r) = self.breaker.admit(may_probe) {
            return Err(UpstreamError::BackingOff {
                host: self.host(),
                retry_after: r.retry_after,
                rate_limited: r.rate_limited,
            });
        }
        let mut url = self
            .base
            .join(path_and_query)
            .map_err(|e| UpstreamError::Protocol(format!("bad path: {e}")))?;
        let scope = format!("repository:{name}:pull");
        let mut auth = AuthAttempts::default();
        let mut redirects = 0;
        let mut method = method;
        loop {
            let on_origin = same_origin(&url, &self.base);
            let resp = self
                .send_once(
                    &method,
                    &url,
                    headers,
                    on_origin.then_some(&scope),
                    &mut auth,
                )
                .await?;
            let status = resp.status();
            if status == StatusCode::UNAUTHORIZED && on_origin {
                if self.on_unauthorized(&resp, &scope, &mut auth)? {
                    continue;
                }
            } else if status.is_redirection() && status != StatusCode::NOT_MODIFIED {
                redirects += 1;
                (url, method) = follow_redirect(&resp, &url, method, redirects)?;
                tracing::debug!(upstream = %self.host(), to = %host_of(&url), status = status.as_u16(), "upstream redirected (without credentials)");
                self.check_target(&url).await?;
                continue;
            } else if status == StatusCode::TOO_MANY_REQUESTS && on_origin {
                self.back_off_rate_limited(&resp);
            }
            if on_origin {
                self.governor.record(&self.registry, resp.headers());
                if url.path().contains("/manifests/") {
                    self.count_manifest_request(&method);
                }
            }
            return Ok(resp);
        }
    }

    /// One request to `url`, with `Authorization` when `scope` is given (the upstream's own
    /// origin only: credentials never go to a redirect host).
    async fn send_once(
        &self,
        method: &Method,
        url: &Url,
        headers: &HeaderMap,
        scope: Option<&String>,
        auth: &mut AuthAttempts,
    ) -> Result<Response<Incoming>, UpstreamError> {
        let mut req = Request::builder()
            .method(method.clone())
            .uri(url.as_str())
            .header(USER_AGENT, USER_AGENT_VALUE);
        for (k, v) in headers {
            req = req.header(k, v);
        }
        if let Some(scope) = scope {
            match self.authorization(scope).await {
                Ok(Some(h)) => req = req.header(AUTHORIZATION, h),
                Ok(None) => {}
                // The stored challenge leads nowhere (realm down, bad realm): forget it and
                // ask without a token, so the upstream's answer brings a fresh challenge.
                // One bad challenge must not block every repository until a restart.
                Err(e) if auth.retries < 2 => {
                    tracing::debug!(error = %e, "token fetch failed; retrying the challenge");
                    self.auth.lock().expect("auth lock").challenge = None;
                    auth.retries += 1;
                    auth.error = Some(e);
                }
                Err(e) => return Err(e),
            }
        }
        let req = req
            .body(Empty::new())
            .map_err(|e| UpstreamError::Protocol(e.to_string()))?;
        self.request(req, url).await
    }

    /// A 401 from the upstream's origin: `true` to retry with the challenge it carries (at most
    /// twice), `false` to answer it as it is (no usable challenge).
    ///
    /// Errors: the token-flow failure that made the retries fail, instead of a bare 401.
    fn on_unauthorized(
        &self,
        resp: &Response<Incoming>,
        scope: &str,
        auth: &mut AuthAttempts,
    ) -> Result<bool, UpstreamError> {
        if auth.retries >= 2 {
            return match auth.error.take() {
                Some(e) => Err(e),
                None => Ok(false),
            };
        }
        let challenge = resp
            .headers()
            .get_all(WWW_AUTHENTICATE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .find_map(parse_challenge);
        let Some(challenge) = challenge else {
            return Ok(false);
        };
        if challenge == Challenge::Basic && self.credentials().is_none() {
            return Ok(false);
        }
        // Basic credentials sent and refused again: they are wrong.
        if challenge == Challenge::Basic && auth.retries >= 1 {
            return Err(self.credentials_rejected());
        }
        auth.retries += 1;
        let mut st = self.auth.lock().expect("auth lock");
        if let Challenge::Bearer { realm, service, .. } = &challenge {
            st.tokens.remove(&(
                realm.clone(),
                service.clone().unwrap_or_default(),
                scope.to_string(),
            ));
        }
        st.challenge = Some(challenge);
        Ok(true)
    }

    /// The error for refused credentials, logged once (until they work again).
    pub(super) fn credentials_rejected(&self) -> UpstreamError {
        let c = self.credentials();
        let c = c.as_ref();
        let e = UpstreamError::CredentialsRejected {
            registry: self.registry.clone(),
            username: c.map(|c| c.username.clone()).unwrap_or_default(),
            password_file: c.map(|c| c.password_file.clone()).unwrap_or_default(),
        };
        if !self
            .rejection_said
            .swap(true, std::sync::atomic::Ordering::Relaxed)
        {
            tracing::warn!(registry = %self.registry, error = %e, "upstream credentials rejected");
        }
        e
    }

    /// The credentials in force (a copy: a reload may replace them meanwhile).
    pub(super) fn credentials(&self) -> Option<Credentials> {
        self.credentials.read().expect("credentials lock").clone()
    }

    /// Replaces the credentials (a reload re-read the password file). Returns whether they
    /// changed; if so, tokens fetched with the old ones are forgotten.
    pub fn set_credentials(&self, credentials: Option<Credentials>) -> bool {
        let mut c = self.credentials.write().expect("credentials lock");
        if *c == credentials {
            return false;
        }
        *c = credentials;
        drop(c);
        self.auth.lock().expect("auth lock").tokens.clear();
        self.credentials_accepted();
        true
    }

    /// The configured credentials worked: a later rejection is said again.
    pub(super) fn credentials_accepted(&self) {
        self.rejection_said
            .store(false, std::sync::atomic::Ordering::Relaxed);
    }

    /// A 429: nothing goes to this upstream until its `Retry-After` (delta-seconds; else 60 s,
    /// at most 1 h) has passed.
    fn back_off_rate_limited(&self, resp: &Response<Incoming>) {
        let wait = resp
            .headers()
            .get(http::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs)
            .unwrap_or(DEFAULT_RETRY_AFTER)
            .min(MAX_RETRY_AFTER);
        tracing::warn!(upstream = %self.host(), retry_after_s = wait.as_secs(), "upstream rate limit hit (429); serving from cache until Retry-After passes");
        self.breaker.rate_limited(wait);
    }

    fn count_manifest_request(&self, method: &Method) {
        use std::sync::atomic::Ordering::Relaxed;
        match *method {
            Method::GET => self.manifest_requests.0.fetch_add(1, Relaxed),
            Method::HEAD => self.manifest_requests.1.fetch_add(1, Relaxed),
            _ => 0,
        };
    }

    /// Manifest requests the registry answered since the start: (GET, HEAD). Docker Hub counts
    /// each GET against the pull rate limit; HEADs are free.
    pub fn manifest_requests(&self) -> (u64, u64) {
        use std::sync::atomic::Ordering::Relaxed;
        (
            self.manifest_requests.0.load(Relaxed),
            self.manifest_requests.1.load(Relaxed),
        )
    }

    /// The rate-limit budget governor (see [`budget`]).
    pub fn governor(&self) -> &budget::Governor {
        &self.governor
    }

    /// Response-header latency of this upstream's answered requests (token fetches and
    /// redirect hops included).
    pub fn latency(&self) -> LatencyFigures {
        self.latency.figures()
    }

    /// Token fetches from this upstream's realm: (succeeded, failed).
    pub fn token_fetches(&self) -> (u64, u64) {
        use std::sync::atomic::Ordering::Relaxed;
        (
            self.token_fetches.0.load(Relaxed),
            self.token_fetches.1.load(Relaxed),
        )
    }

    /// Requests sent to this upstream since the start (redirects and token fetches included).
    pub fn requests_sent(&self) -> u64 {
        self.sent.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Docker Hub's last reported rate limit: (`ratelimit-limit`, `ratelimit-remaining`), e.g.
    /// `("100;w=21600", "76;w=21600")`.
    pub fn rate_limit(&self) -> Option<(String, String)> {
        self.governor.budget().map(|b| b.raw)
    }

    /// Sends `req` with the header timeout, mapping transport errors.
    async fn request(
        &self,
        req: Request<Empty<Bytes>>,
        url: &Url,
    ) -> Result<Response<Incoming>, UpstreamError> {
        self.sent.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        // Only the upstream's own origin drives its circuit: a slow CDN host after a redirect
        // or a slow token realm is that request's trouble, not the registry's.
        let origin = same_origin(url, &self.base);
        let sent = Instant::now();
        let method = req.method().clone();
        let answer = tokio::time::timeout(self.timeout, self.client.request(req)).await;
        if let Ok(Ok(r)) = &answer {
            self.latency.observe(sent.elapsed());
            // The path only: a redirect's query may be a signed URL, a realm's carries scopes.
            tracing::debug!(
                upstream = %host_of(url),
                method = %method,
                path = url.path(),
                status = r.status().as_u16(),
                ms = sent.elapsed().as_millis() as u64,
                "upstream answered"
            );
        }
        match answer {
            Err(_) => {
                if origin && self.breaker.timed_out() {
                    tracing::warn!(upstream = %host_of(url), after = ?self.timeout, "upstream does not answer; failing fast (cached answers are served) and probing for its return");
                } else {
                    tracing::warn!(upstream = %host_of(url), after = ?self.timeout, "upstream did not answer in time");
                }
                Err(UpstreamError::Timeout {
                    host: host_of(url),
                    after: self.timeout,
                })
            }
            // A response head hyper cannot parse (oversized, malformed) is the upstream's
            // fault, not an outage: 502, not 503.
            Ok(Err(e)) if is_parse_error(&e) => Err(UpstreamError::Protocol(format!(
                "{} sent a response head that cannot be read: {}",
                host_of(url),
                error_chain(&e)
            ))),
            Ok(Err(e)) => {
                let mut reason = error_chain(&e);
                // A TLS refusal for want of a client certificate is configuration, not an outage
                // to wait out: say which keys fix it.
                if reason.contains("CertificateRequired") {
                    reason.push_str(&format!(
                        " (the upstream asks for a TLS client certificate: set client_cert and client_key in [registries.\"{}\"])",
                        self.registry
                    ));
                }
                tracing::warn!(upstream = %host_of(url), error = %reason, "cannot reach upstream");
                Err(UpstreamError::Connect {
                    host: host_of(url),
                    reason,
                })
            }
            Ok(Ok(r)) => {
                if origin && self.breaker.answered() {
                    tracing::info!(upstream = %host_of(url), "upstream answers again");
                }
                Ok(r)
            }
        }
    }
}

/// Auth retries within one [`Upstream::send`].
#[derive(Default)]
struct AuthAttempts {
    /// Challenges retried (or token fetches failed) so far; at most 2.
    retries: u32,
    /// The last token-flow failure: reported instead of the upstream's bare 401.
    error: Option<UpstreamError>,
}

/// The next hop of a redirect (the `redirects`-th): its URL (http or https only) and method
/// (303 turns a GET-like request into a GET).
///
/// Errors: [`UpstreamError::Protocol`] for a missing or bad `Location`, another scheme, or
/// more than [`MAX_REDIRECTS`] hops.
fn follow_redirect(
    resp: &Response<Incoming>,
    url: &Url,
    method: Method,
    redirects: usize,
) -> Result<(Url, Method), UpstreamError> {
    let status = resp.status();
    let loc = resp
        .headers()
        .get(LOCATION)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| UpstreamError::Protocol(format!("{status} without a Location")))?;
    let next = url
        .join(loc)
        .map_err(|e| UpstreamError::Protocol(format!("bad redirect Location: {e}")))?;
    if !matches!(next.scheme(), "http" | "https") {
        return Err(UpstreamError::Protocol("redirect to a non-http URL".into()));
    }
    if redirects > MAX_REDIRECTS {
        return Err(UpstreamError::Protocol("too many redirects".into()));
    }
    let method = if status == StatusCode::SEE_OTHER && method != Method::HEAD {
        Method::GET
    } else {
        method
    };
    Ok((next, method))
}

/// rustls client configuration (ring provider): system roots, else webpki roots, plus `extra`
/// DER certificates; with `identity`, that client certificate for servers that ask for one.
///
/// Errors: an `extra` certificate rustls rejects, or a key that does not fit its certificate.
fn tls_config(
    extra: &[Vec<u8>],
    identity: Option<&crate::config::ClientIdentity>,
) -> std::io::Result<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    for c in native.certs {
        let _ = roots.add(c);
    }
    if roots.is_empty() {
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    }
    for der in extra {
        roots
            .add(rustls_pki_types::CertificateDer::from(der.clone()))
            .map_err(|e| std::io::Error::other(format!("ca_file certificate rejected: {e}")))?;
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| std::io::Error::other(e.to_string()))?
        .with_root_certificates(roots);
    let Some(id) = identity else {
        return Ok(cfg.with_no_client_auth());
    };
    use rustls_pki_types::pem::PemObject;
    let key = rustls_pki_types::PrivateKeyDer::from_pem_slice(id.key_pem.as_bytes())
        .map_err(|_| std::io::Error::other("client_key: no PEM private key"))?;
    let chain = id
        .chain
        .iter()
        .map(|c| rustls_pki_types::CertificateDer::from(c.clone()))
        .collect();
    cfg.with_client_auth_cert(chain, key).map_err(|e| {
        std::io::Error::other(format!(
            "client_cert {} with client_key: {e}",
            id.cert_file.display()
        ))
    })
}

/// Reads a whole body of at most `limit` bytes.
///
/// Errors: a message when the body is larger or the connection fails.
pub async fn read_limited(body: Incoming, limit: usize) -> Result<Bytes, String> {
    match tokio::time::timeout(BODY_IDLE_TIMEOUT, Limited::new(body, limit).collect()).await {
        Err(_) => Err("timed out reading the body".into()),
        Ok(Err(e)) => Err(e.to_string()),
        Ok(Ok(c)) => Ok(c.to_bytes()),
    }
}

fn same_origin(a: &Url, b: &Url) -> bool {
    a.scheme() == b.scheme()
        && a.host_str() == b.host_str()
        && a.port_or_known_default() == b.port_or_known_default()
}

pub(crate) fn host_of(u: &Url) -> String {
    match (u.host_str(), u.port()) {
        (Some(h), Some(p)) => format!("{h}:{p}"),
        (Some(h), None) => h.to_string(),
        _ => String::from("?"),
    }
}

/// Whether hyper failed to parse the response (a head too large or malformed).
fn is_parse_error(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(c) = cur {
        if c.downcast_ref::<hyper::Error>()
            .is_some_and(|h| h.is_parse())
        {
            return true;
        }
        cur = c.source();
    }
    false
}

/// An error and its sources, joined (hyper's top-level errors say little on their own).
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outage_classification() {
        let s = |c: u16| UpstreamError::Status {
            status: StatusCode::from_u16(c).unwrap(),
            retry_after: None,
        };
        assert!(s(502).is_outage() && s(429).is_outage());
        assert!(!s(404).is_outage() && !s(401).is_outage());
        assert!(UpstreamError::Auth("x".into()).is_outage());
    }
}
