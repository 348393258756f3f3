//! The running mirror: its configuration, its cache, one upstream per configured registry, and
//! the request counters. The HTTP layer holds one [`Mirror`]; everything below it is reached
//! through it.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::Arc;

use crate::cache::{Cache, CacheOptions, CacheResult};
use crate::config::Config;
use crate::metrics::{Figures, RequestCounters, UpstreamFigures};
use crate::reference::{hostlike_prefix, DOCKER_HUB};
use crate::upstream::{Upstream, UpstreamOptions};

/// Shared state of a running mirror.
pub struct Mirror {
    /// Effective configuration.
    config: Config,
    /// The cache (and its background tasks: index rebuild, evictor).
    cache: Cache,
    /// One upstream per configured registry.
    registries: Registries,
    /// Requests and bytes by cache result (for `/metrics`).
    counters: RequestCounters,
    /// When the mirror was built (its uptime).
    started: tokio::time::Instant,
    /// Requests by client kind, and the last few of each (`/metrics`, `regcache doctor`).
    clients: crate::clients::Recent,
}

impl Mirror {
    /// Builds a mirror for serving: opens the cache (cleaning leftover temp files, loading the
    /// index in the background, starting the evictor) and one client per registry. Must be
    /// called inside a tokio runtime.
    ///
    /// Errors: the I/O error if the cache directory cannot be prepared, or a TLS setup error
    /// (a registry's `ca_file`).
    pub fn new(config: Config) -> std::io::Result<Mirror> {
        let cache = Cache::open(&config.cache_dir, cache_options(&config))?;
        Mirror::with_cache(config, cache)
    }

    /// Builds a mirror over a cache that a running mirror may share (`regcache prefetch`): the
    /// index is loaded at once, `tmp/` is left alone, no evictor runs.
    ///
    /// Errors: as [`Mirror::new`].
    pub fn open_shared(config: Config) -> std::io::Result<Mirror> {
        let cache = Cache::open_shared(&config.cache_dir, cache_options(&config))?;
        Mirror::with_cache(config, cache)
    }

    fn with_cache(config: Config, cache: Cache) -> std::io::Result<Mirror> {
        Ok(Mirror {
            registries: Registries::new(&config)?,
            cache,
            config,
            counters: RequestCounters::default(),
            started: tokio::time::Instant::now(),
            clients: crate::clients::Recent::default(),
        })
    }

    /// Time since the mirror was built.
    pub fn uptime(&self) -> std::time::Duration {
        self.started.elapsed()
    }

    /// The effective configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The cache.
    pub fn cache(&self) -> &Cache {
        &self.cache
    }

    /// The configured registries.
    pub fn registries(&self) -> &Registries {
        &self.registries
    }

    /// Counts one answered request and the body bytes it sent.
    pub fn record(&self, result: CacheResult, bytes: u64) {
        self.counters.record(result, bytes);
    }

    /// Requests by client kind and the last few of each.
    pub fn clients(&self) -> &crate::clients::Recent {
        &self.clients
    }

    /// The figures `/metrics` reports, gathered from the parts.
    pub fn figures(&self) -> Figures {
        let usage = self.cache.store().index().usage();
        Figures {
            requests: self.counters.snapshot(),
            by_client: self.clients.counts(),
            cache_bytes: usage.total,
            cache_objects: usage.objects as u64,
            max_size: self.config.budget.max_size,
            fills_in_progress: self.cache.fills_in_progress() as u64,
            fills: self.cache.fill_stats(),
            evicted: self.cache.evicted(),
            sendfile_bytes: crate::body::zero_copy::sendfile_bytes(),
            stale_by_cause: self.cache.stale_counts(),
            node: self.config.node_name.clone(),
            upstreams: self
                .registries
                .map
                .iter()
                .map(|(name, up)| {
                    let budget = up.governor().budget();
                    // A gauge is an i64: a reported number beyond it shows as the largest, not
                    // wrapped negative.
                    let gauge = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
                    UpstreamFigures {
                        registry: name.clone(),
                        requests: up.requests_sent(),
                        ratelimit_remaining: budget.as_ref().map(|b| gauge(b.remaining)),
                        ratelimit_limit: budget.as_ref().map(|b| gauge(b.limit)),
                        ratelimit_refill_seconds: budget
                            .as_ref()
                            .map(|b| gauge(b.refills_in().as_secs())),
                        ratelimit_reserve: up.governor().reserve(),
                        ratelimit_at_reserve: up.governor().at_reserve().is_some(),
                        manifest_requests: up.manifest_requests(),
                        latency: up.latency(),
                        token_fetches: up.token_fetches(),
                    }
                })
                .collect(),
        }
    }
}

fn cache_options(config: &Config) -> CacheOptions {
    CacheOptions {
        budget: config.budget,
        idle_timeout: config.idle_timeout,
        bandwidth: config.max_upstream_bandwidth,
        min_fill_rate: config.min_fill_rate,
        tag_ttl: config.tag_ttl,
        policies: config
            .registries
            .iter()
            .map(|r| (r.registry.clone(), r.freshness.clone()))
            .collect(),
        offline: config.offline,
        revalidate_timeout: config.revalidate_timeout,
        max_manifest_size: config.max_manifest_size,
    }
}

/// Why a request selects no configured registry.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SelectError {
    /// The path prefix and `ns=` name different registries.
    #[error("the path names registry {path:?} but ns= names {ns:?}; use one")]
    Conflict {
        /// The registry of the path prefix.
        path: String,
        /// The registry of `ns=`.
        ns: String,
    },
    /// The registry is not configured: nothing goes upstream (no open proxy).
    #[error("registry {registry:?} is not mirrored here (configured: {})", .configured.join(", "))]
    NotMirrored {
        /// The registry asked for (at most 100 characters of it).
        registry: String,
        /// The configured registries.
        configured: Vec<String>,
    },
}

/// The configured registries, by the name clients use (`docker.io`, `ghcr.io`, `host:port`).
pub struct Registries {
    /// One upstream per registry.
    map: BTreeMap<String, Arc<Upstream>>,
    /// The registry a request that names none means.
    default: String,
    /// Path aliases (`prefix = "internal"`) to the registry names they stand for.
    aliases: BTreeMap<String, String>,
}

impl Registries {
    /// One client per configured registry.
    ///
    /// Errors: a TLS setup error (a bad `ca_file` certificate).
    pub fn new(config: &Config) -> std::io::Result<Registries> {
        let opts = UpstreamOptions {
            timeout: config.revalidate_timeout,
            offline: config.offline,
            outage_backoff: config.outage_backoff,
            probe_interval: config.outage_probe_interval,
        };
        let mut map = BTreeMap::new();
        let mut aliases = BTreeMap::new();
        for r in &config.registries {
            map.insert(r.registry.clone(), Arc::new(Upstream::new(r, opts)?));
            if let Some(p) = &r.prefix {
                aliases.insert(p.clone(), r.registry.clone());
            }
        }
        Ok(Registries {
            map,
            aliases,
            default: config.default_registry.clone(),
        })
    }

    /// The registry a request means and the path it asks for there. A path-prefix request
    /// (`/v2/<registry>/<name>/...`, podman/CRI-O mirrors) names a configured registry as its
    /// first component; `ns` is containerd's `?ns=<registry>`; neither means the default
    /// registry. `ns` and prefixes are keys into the configured registries, never hosts to dial.
    ///
    /// Errors: [`SelectError::Conflict`] when both name registries and they differ;
    /// [`SelectError::NotMirrored`] for a registry that is not configured, including a
    /// host-like first component when the default registry is Docker Hub (whose repository
    /// names never start with a host name).
    pub fn select<'p>(
        &self,
        path: &'p str,
        ns: Option<&str>,
    ) -> Result<(&Arc<Upstream>, Cow<'p, str>), SelectError> {
        // An alias is for path-prefix clients, which send no `ns=`; with `ns=` (containerd) the
        // path is the repository, whatever its first component.
        let (prefix, path) = self.strip_prefix(path, ns.is_none());
        if prefix.is_none() && self.default == DOCKER_HUB {
            if let Some(host) = hostlike_prefix(&path) {
                return Err(self.not_mirrored(host));
            }
        }
        let registry = match (prefix, ns) {
            (Some(p), Some(ns)) if p != ns => {
                return Err(SelectError::Conflict {
                    path: p.to_string(),
                    ns: ns.to_string(),
                })
            }
            (Some(p), _) => p,
            (None, Some(ns)) => ns,
            (None, None) => self.default.as_str(),
        };
        match self.map.get(registry) {
            Some(up) => Ok((up, path)),
            None => Err(self.not_mirrored(registry)),
        }
    }

    /// The upstream of a configured registry.
    pub fn get(&self, registry: &str) -> Option<&Arc<Upstream>> {
        self.map.get(registry)
    }

    /// The default registry's name.
    pub fn default_registry(&self) -> &str {
        &self.default
    }

    /// The default registry's upstream.
    pub fn default_upstream(&self) -> &Arc<Upstream> {
        &self.map[&self.default]
    }

    /// The configured registries' names, in order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.map.keys().map(String::as_str)
    }

    /// [`SelectError::NotMirrored`] for `registry`.
    pub fn not_mirrored(&self, registry: &str) -> SelectError {
        SelectError::NotMirrored {
            registry: registry.chars().take(100).collect(),
            configured: self.map.keys().cloned().collect(),
        }
    }

    /// Splits a `/v2/<registry>/<rest>` path whose first component is a configured registry
    /// name, or (when `aliases`) a registry's `prefix` alias, into that registry's name and
    /// `/v2/<rest>`.
    fn strip_prefix<'p>(&self, path: &'p str, aliases: bool) -> (Option<&str>, Cow<'p, str>) {
        if let Some(rest) = path.strip_prefix("/v2/") {
            let (first, tail) = rest.split_once('/').unwrap_or((rest, ""));
            if let Some((key, _)) = self.map.get_key_value(first) {
                return (Some(key.as_str()), format!("/v2/{tail}").into());
            }
            if let Some(name) = self.aliases.get(first).filter(|_| aliases) {
                return (Some(name.as_str()), format!("/v2/{tail}").into());
            }
        }
        (None, path.into())
    }
}
