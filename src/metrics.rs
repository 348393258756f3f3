//! Prometheus metrics, served at `GET /metrics` (OpenMetrics text, via `prometheus-client`).
//!
//! Request counters are kept live; everything the components already count (cache size, fills,
//! upstream requests, evictions, bytes sent with `sendfile`) is gathered by the mirror at scrape
//! time into plain [`Figures`], which [`render`] turns into text.

use std::sync::atomic::{AtomicU64, Ordering};

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::registry::Registry;

use crate::cache::{CacheResult, FillStats};

/// The cache results counted, in label order.
pub const RESULTS: [CacheResult; 6] = [
    CacheResult::Hit,
    CacheResult::Miss,
    CacheResult::Coalesced,
    CacheResult::Stale,
    CacheResult::Pass,
    CacheResult::None,
];

/// Live request counters, by cache result.
#[derive(Debug, Default)]
pub struct RequestCounters {
    /// Requests answered, by [`CacheResult`] (index in [`RESULTS`]).
    requests: [AtomicU64; 6],
    /// Response body bytes sent, by [`CacheResult`].
    bytes: [AtomicU64; 6],
}

impl RequestCounters {
    /// Counts one answered request and the body bytes it sent.
    pub fn record(&self, result: CacheResult, bytes: u64) {
        let i = RESULTS.iter().position(|r| *r == result).unwrap_or(5);
        self.requests[i].fetch_add(1, Ordering::Relaxed);
        self.bytes[i].fetch_add(bytes, Ordering::Relaxed);
    }

    /// Requests and body bytes so far, by cache result in the order hit, miss, coalesced,
    /// stale, pass, none.
    pub fn snapshot(&self) -> [(u64, u64); 6] {
        std::array::from_fn(|i| {
            (
                self.requests[i].load(Ordering::Relaxed),
                self.bytes[i].load(Ordering::Relaxed),
            )
        })
    }
}

/// What `/metrics` reports: plain numbers, gathered by the mirror.
#[derive(Debug, Clone, Default)]
pub struct Figures {
    /// Requests and body bytes by cache result ([`RequestCounters::snapshot`]).
    pub requests: [(u64, u64); 6],
    /// Requests by client kind, in [`crate::clients::ClientKind::ALL`] order (from the
    /// `User-Agent`).
    pub by_client: [u64; 5],
    /// Bytes the cache takes on disk.
    pub cache_bytes: u64,
    /// Blobs and manifests in the cache.
    pub cache_objects: u64,
    /// The `max_size` budget in bytes, if set.
    pub max_size: Option<u64>,
    /// Blob fills in progress.
    pub fills_in_progress: u64,
    /// Fill outcome counters.
    pub fills: FillStats,
    /// Objects removed and bytes freed by eviction.
    pub evicted: (u64, u64),
    /// Bytes sent with `sendfile(2)`.
    pub sendfile_bytes: u64,
    /// Cached tags served stale, in [`crate::cache::STALE_CAUSES`] order.
    pub stale_by_cause: [u64; crate::cache::STALE_CAUSES.len()],
    /// Per upstream registry.
    pub upstreams: Vec<UpstreamFigures>,
    /// The mirror's `node_name`: when set, every sample is labelled `node="<name>"`.
    pub node: Option<String>,
}

/// One upstream's figures.
#[derive(Debug, Clone, Default)]
pub struct UpstreamFigures {
    /// The registry name clients use.
    pub registry: String,
    /// Requests sent (redirects and token fetches included).
    pub requests: u64,
    /// Docker Hub's last `ratelimit-remaining`, once reported.
    pub ratelimit_remaining: Option<i64>,
    /// Its last `ratelimit-limit`, once reported.
    pub ratelimit_limit: Option<i64>,
    /// Seconds until the reported budget is whole again at the latest (one window after the
    /// report), once reported.
    pub ratelimit_refill_seconds: Option<i64>,
    /// `rate_limit_reserve`.
    pub ratelimit_reserve: u64,
    /// Whether the budget is at the reserve (prefetch paused, revalidation backing off).
    pub ratelimit_at_reserve: bool,
    /// Manifest requests the registry answered: (GET, HEAD). Docker Hub counts the GETs.
    pub manifest_requests: (u64, u64),
    /// Response-header latency of its answered requests.
    pub latency: crate::upstream::LatencyFigures,
    /// Token fetches (succeeded, failed).
    pub token_fetches: (u64, u64),
}

/// `regcache_upstream_request_duration_seconds`: one histogram per registry, from figures
/// (prometheus-client's own histogram cannot be filled from counts kept elsewhere).
#[derive(Debug)]
struct Latencies(Vec<(String, crate::upstream::LatencyFigures)>);

impl prometheus_client::collector::Collector for Latencies {
    fn encode(
        &self,
        mut encoder: prometheus_client::encoding::DescriptorEncoder,
    ) -> Result<(), std::fmt::Error> {
        let mut m = encoder.encode_descriptor(
            "upstream_request_duration",
            "Time until an upstream's response headers, per registry (answered requests, token fetches and redirect hops included)",
            Some(&prometheus_client::registry::Unit::Seconds),
            prometheus_client::metrics::MetricType::Histogram,
        )?;
        for (registry, h) in &self.0 {
            let labels = vec![("registry", registry.clone())];
            m.encode_family(&labels)?
                .encode_histogram::<prometheus_client::encoding::NoLabelSet>(
                    h.sum_seconds,
                    h.count,
                    &h.buckets,
                    None,
                )?;
        }
        Ok(())
    }
}

/// A metric family labelled by `(name, value)` pairs, filled at scrape time.
type Labelled = Family<Vec<(&'static str, String)>, Counter>;

/// The metrics text for `f`, in the OpenMetrics text format.
pub fn render(f: &Figures) -> String {
    let node = f.node.iter().map(|n| {
        (
            std::borrow::Cow::Borrowed("node"),
            std::borrow::Cow::Owned(n.clone()),
        )
    });
    let mut reg = Registry::with_prefix_and_labels("regcache", node);
    let requests = Labelled::default();
    let served = Labelled::default();
    for (i, r) in RESULTS.iter().enumerate() {
        let label = vec![("cache", r.as_str().to_string())];
        requests.get_or_create(&label).inc_by(f.requests[i].0);
        served.get_or_create(&label).inc_by(f.requests[i].1);
    }
    reg.register(
        "requests",
        "Requests answered, by how the cache answered them",
        requests,
    );
    let clients = Labelled::default();
    for (k, n) in crate::clients::ClientKind::ALL.iter().zip(f.by_client) {
        clients
            .get_or_create(&vec![("client", k.as_str().to_owned())])
            .inc_by(n);
    }
    reg.register(
        "client_requests",
        "Requests received, by client kind from the User-Agent (docker, containerd, buildkit, podman: containers/image incl. skopeo and CRI-O, other)",
        clients,
    );
    reg.register(
        "served_bytes",
        "Response body bytes sent to clients",
        served,
    );
    reg.register(
        "cache_bytes",
        "Bytes the cache takes on disk",
        ConstGauge::new(f.cache_bytes as i64),
    );
    reg.register(
        "cache_objects",
        "Blobs and manifests in the cache",
        ConstGauge::new(f.cache_objects as i64),
    );
    if let Some(m) = f.max_size {
        reg.register(
            "cache_max_bytes",
            "The max_size budget",
            ConstGauge::new(m as i64),
        );
    }
    reg.register(
        "fills_in_progress",
        "Upstream blob downloads in progress",
        ConstGauge::new(f.fills_in_progress as i64),
    );
    let fills = &f.fills;
    reg.register(
        "fills_committed",
        "Fills verified and committed",
        ConstCounter::new(fills.committed),
    );
    reg.register(
        "fills_uncached",
        "Fills passed through uncached (too large, disk full)",
        ConstCounter::new(fills.uncached),
    );
    reg.register(
        "fills_failed",
        "Fills that failed (upstream error, digest mismatch)",
        ConstCounter::new(fills.failed),
    );
    let failures = Labelled::default();
    for (reason, n) in crate::cache::FILL_FAILURE_REASONS
        .iter()
        .zip(fills.failed_by)
    {
        failures
            .get_or_create(&vec![("reason", reason.to_string())])
            .inc_by(n);
    }
    reg.register(
        "fill_failures",
        "Fills that failed, by reason (upstream_error, upstream_body, digest_mismatch, disk)",
        failures,
    );
    let stale = Labelled::default();
    for (cause, n) in crate::cache::STALE_CAUSES.iter().zip(f.stale_by_cause) {
        stale
            .get_or_create(&vec![("cause", cause.to_string())])
            .inc_by(n);
    }
    reg.register(
        "stale_answers",
        "Cached tags served stale, by cause (timeout, unreachable, backing_off, rate_limited, upstream_error, rate_budget)",
        stale,
    );
    reg.register(
        "fill_resumes",
        "Broken upstream downloads resumed with Range",
        ConstCounter::new(fills.resumes),
    );
    reg.register(
        "upstream_blob_bytes",
        "Blob bytes received from upstreams",
        ConstCounter::new(fills.bytes),
    );
    reg.register(
        "evicted_objects",
        "Objects removed by eviction",
        ConstCounter::new(f.evicted.0),
    );
    reg.register(
        "evicted_bytes",
        "Bytes on disk freed by eviction",
        ConstCounter::new(f.evicted.1),
    );
    reg.register(
        "sendfile_bytes",
        "Bytes sent with sendfile(2), without a user-space copy",
        ConstCounter::new(f.sendfile_bytes),
    );
    let upstream = Labelled::default();
    let tokens = Labelled::default();
    let remaining = Family::<Vec<(&'static str, String)>, Gauge>::default();
    let limit = Family::<Vec<(&'static str, String)>, Gauge>::default();
    let refill = Family::<Vec<(&'static str, String)>, Gauge>::default();
    let reserve = Family::<Vec<(&'static str, String)>, Gauge>::default();
    let at_reserve = Family::<Vec<(&'static str, String)>, Gauge>::default();
    let manifests = Labelled::default();
    for up in &f.upstreams {
        let label = vec![("registry", up.registry.clone())];
        upstream.get_or_create(&label).inc_by(up.requests);
        for (result, n) in [("ok", up.token_fetches.0), ("error", up.token_fetches.1)] {
            let l = vec![
                ("registry", up.registry.clone()),
                ("result", result.to_owned()),
            ];
            tokens.get_or_create(&l).inc_by(n);
        }
        if let Some(rem) = up.ratelimit_remaining {
            remaining.get_or_create(&label).set(rem);
        }
        if let Some(l) = up.ratelimit_limit {
            limit.get_or_create(&label).set(l);
        }
        if let Some(r) = up.ratelimit_refill_seconds {
            refill.get_or_create(&label).set(r);
        }
        reserve
            .get_or_create(&label)
            .set(up.ratelimit_reserve as i64);
        at_reserve
            .get_or_create(&label)
            .set(up.ratelimit_at_reserve as i64);
        for (method, n) in [
            ("GET", up.manifest_requests.0),
            ("HEAD", up.manifest_requests.1),
        ] {
            let l = vec![
                ("registry", up.registry.clone()),
                ("method", method.to_owned()),
            ];
            manifests.get_or_create(&l).inc_by(n);
        }
    }
    reg.register(
        "upstream_requests",
        "Requests sent to each upstream registry (redirects and token fetches included)",
        upstream,
    );
    reg.register(
        "upstream_token_fetches",
        "Token fetches from each registry's token realm, by result (ok, error)",
        tokens,
    );
    reg.register_collector(Box::new(Latencies(
        f.upstreams
            .iter()
            .map(|u| (u.registry.clone(), u.latency.clone()))
            .collect(),
    )));
    reg.register(
        "upstream_ratelimit_remaining",
        "Docker Hub's last ratelimit-remaining, per registry (present once reported)",
        remaining,
    );
    reg.register(
        "upstream_ratelimit_limit",
        "The last ratelimit-limit, per registry (present once reported)",
        limit,
    );
    reg.register(
        "upstream_ratelimit_refill_seconds",
        "Seconds until the reported rate-limit budget is whole again at the latest (one window after the last report), per registry",
        refill,
    );
    reg.register(
        "upstream_ratelimit_reserve",
        "rate_limit_reserve: the ratelimit-remaining at which prefetch pauses and tag revalidation backs off",
        reserve,
    );
    reg.register(
        "upstream_ratelimit_at_reserve",
        "1 while the reported budget is at or below rate_limit_reserve (prefetch paused, cached tags served without revalidation)",
        at_reserve,
    );
    reg.register(
        "upstream_manifest_requests",
        "Manifest requests answered by each registry, by method: Docker Hub counts GETs against its pull rate limit, not HEADs",
        manifests,
    );
    let mut out = String::new();
    let _ = encode(&mut out, &reg);
    out
}
