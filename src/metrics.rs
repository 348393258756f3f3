//! Prometheus metrics, served at `GET /metrics` (OpenMetrics text, via `prometheus-client`).
//!
//! Request counters are kept live; everything the components already count (cache size, fills,
//! upstream requests, evictions, bytes sent with `sendfile`) is read at scrape time.

use std::sync::atomic::{AtomicU64, Ordering};

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::registry::Registry;

use crate::http::{App, CacheResult};

/// The cache results counted, in label order.
const RESULTS: [CacheResult; 6] = [
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
}

/// A metric family labelled by `(name, value)` pairs, filled at scrape time.
type Labelled = Family<Vec<(&'static str, String)>, Counter>;

/// The metrics text for `app`, in the OpenMetrics text format.
pub fn render(app: &App) -> String {
    let mut reg = Registry::with_prefix("regcache");
    let requests = Labelled::default();
    let served = Labelled::default();
    for (i, r) in RESULTS.iter().enumerate() {
        let label = vec![(
            "cache",
            if *r == CacheResult::None {
                "none"
            } else {
                r.as_str()
            }
            .to_string(),
        )];
        requests
            .get_or_create(&label)
            .inc_by(app.counters.requests[i].load(Ordering::Relaxed));
        served
            .get_or_create(&label)
            .inc_by(app.counters.bytes[i].load(Ordering::Relaxed));
    }
    reg.register(
        "requests",
        "Requests answered, by how the cache answered them",
        requests,
    );
    reg.register(
        "served_bytes",
        "Response body bytes sent to clients",
        served,
    );
    let usage = app.store.usage();
    reg.register(
        "cache_bytes",
        "Bytes the cache takes on disk",
        ConstGauge::new(usage.total as i64),
    );
    reg.register(
        "cache_objects",
        "Blobs and manifests in the cache",
        ConstGauge::new(usage.objects as i64),
    );
    if let Some(m) = app.config.budget.max_size {
        reg.register(
            "cache_max_bytes",
            "The max_size budget",
            ConstGauge::new(m as i64),
        );
    }
    reg.register(
        "fills_in_progress",
        "Upstream blob downloads in progress",
        ConstGauge::new(app.fills.len() as i64),
    );
    let f = app.fills.stats();
    reg.register(
        "fills_committed",
        "Fills verified and committed",
        ConstCounter::new(f.committed),
    );
    reg.register(
        "fills_uncached",
        "Fills passed through uncached (too large, disk full)",
        ConstCounter::new(f.uncached),
    );
    reg.register(
        "fills_failed",
        "Fills that failed (upstream error, digest mismatch)",
        ConstCounter::new(f.failed),
    );
    reg.register(
        "fill_resumes",
        "Broken upstream downloads resumed with Range",
        ConstCounter::new(f.resumes),
    );
    reg.register(
        "upstream_blob_bytes",
        "Blob bytes received from upstreams",
        ConstCounter::new(f.bytes),
    );
    let e = app.store.evictions();
    reg.register(
        "evicted_objects",
        "Objects removed by eviction",
        ConstCounter::new(e.0),
    );
    reg.register(
        "evicted_bytes",
        "Bytes on disk freed by eviction",
        ConstCounter::new(e.1),
    );
    reg.register(
        "sendfile_bytes",
        "Bytes sent with sendfile(2), without a user-space copy",
        ConstCounter::new(crate::body::zero_copy::sendfile_bytes()),
    );
    let upstream = Labelled::default();
    let remaining = Family::<Vec<(&'static str, String)>, Gauge>::default();
    for (name, up) in &app.registries {
        let label = vec![("registry", name.clone())];
        upstream.get_or_create(&label).inc_by(up.requests_sent());
        if let Some(rem) = up.rate_limit().and_then(|(_, r)| {
            r.split(';')
                .next()
                .and_then(|v| v.trim().parse::<i64>().ok())
        }) {
            remaining.get_or_create(&label).set(rem);
        }
    }
    reg.register(
        "upstream_requests",
        "Requests sent to each upstream registry (redirects and token fetches included)",
        upstream,
    );
    reg.register(
        "upstream_ratelimit_remaining",
        "Docker Hub's last ratelimit-remaining, per registry (present once reported)",
        remaining,
    );
    let mut out = String::new();
    let _ = encode(&mut out, &reg);
    out
}
