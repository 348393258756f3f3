//! What a reload (SIGHUP, `systemctl reload regcache`) cannot apply: the settings that need a
//! restart.

use std::net::SocketAddr;

use super::{Config, UpstreamConfig};

/// The settings that differ between a running `old` and a reloaded `new` configuration but
/// need a restart to apply, by key. Listener files (certificates, client CAs, htpasswd),
/// upstream credentials, the freshness policy (`tag_ttl`, `immutable_tags`, `max_stale`,
/// policies) and `rate_limit_reserve` are not among them: a reload applies those.
pub fn needs_restart(old: &Config, new: &Config) -> Vec<&'static str> {
    let mut out = Vec::new();
    let mut differ = |key: &'static str, changed: bool| {
        if changed {
            out.push(key);
        }
    };
    let addresses = |c: &Config| -> Vec<(SocketAddr, Option<String>)> {
        c.listeners
            .iter()
            .map(|l| (l.address, l.name.clone()))
            .collect()
    };
    differ("listeners", addresses(old) != addresses(new));
    differ("cache_dir", old.cache_dir != new.cache_dir);
    differ("max_size", old.budget.max_size != new.budget.max_size);
    differ("min_free", old.budget.min_free != new.budget.min_free);
    differ("offline", old.offline != new.offline);
    differ(
        "revalidate_timeout",
        old.revalidate_timeout != new.revalidate_timeout,
    );
    differ("idle_timeout", old.idle_timeout != new.idle_timeout);
    differ("outage_backoff", old.outage_backoff != new.outage_backoff);
    differ(
        "outage_probe_interval",
        old.outage_probe_interval != new.outage_probe_interval,
    );
    differ("min_fill_rate", old.min_fill_rate != new.min_fill_rate);
    differ(
        "header_read_timeout",
        old.header_read_timeout != new.header_read_timeout,
    );
    differ(
        "client_idle_timeout",
        old.client_idle_timeout != new.client_idle_timeout,
    );
    differ(
        "max_manifest_size",
        old.max_manifest_size != new.max_manifest_size,
    );
    differ(
        "max_connections",
        old.max_connections != new.max_connections,
    );
    differ(
        "max_upstream_bandwidth",
        old.max_upstream_bandwidth != new.max_upstream_bandwidth,
    );
    differ(
        "default_registry",
        old.default_registry != new.default_registry,
    );
    differ("log_format", old.log_format != new.log_format);
    differ("node_name", old.node_name != new.node_name);
    differ("shutdown_grace", old.shutdown_grace != new.shutdown_grace);
    let registries = |c: &Config| -> Vec<UpstreamConfig> {
        c.registries
            .iter()
            .map(|r| UpstreamConfig {
                // A reload applies these (see `service`).
                credentials: None,
                freshness: Default::default(),
                rate_limit_reserve: 0,
                ..r.clone()
            })
            .collect()
    };
    differ("registries", registries(old) != registries(new));
    out
}
