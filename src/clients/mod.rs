//! The clients of a mirror on this host — dockerd, containerd, podman/CRI-O (containers/image)
//! and BuildKit — as the mirror sees them (their kind, from the User-Agent) and as `regcache
//! setup` and `regcache doctor` configure and check them (one module per client).
//!
//! - [`ClientKind`]: which client sent a request, from its `User-Agent`; `/metrics` counts
//!   requests by kind (`regcache_client_requests_total{client=...}`).
//! - [`Recent`]: the last requests of each kind, which `regcache doctor` reads on the admin
//!   socket (`GET /-/clients`) to prove a client went through the mirror.
//! - [`docker`], [`containerd`], [`podman`], [`buildkit`]: each client's config files, its
//!   version, what `setup` writes and what `doctor` checks.
//! - [`setup`], [`doctor`]: the two commands.

use std::collections::VecDeque;
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

pub mod buildkit;
pub mod containerd;
pub mod docker;
pub mod doctor;
pub mod files;
pub mod podman;
pub mod setup;

/// Which client sent a request, from its `User-Agent`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum ClientKind {
    /// dockerd (`docker/20.10.24 go/go1.19.8 git-commit/... UpstreamClient(Docker-Client/...)`).
    Docker,
    /// containerd and ctr (`containerd/1.6.20~ds1`, `containerd/v2.1.0`), CRI pulls included.
    Containerd,
    /// BuildKit's buildkitd (`buildkit/v0.12.5`).
    Buildkit,
    /// containers/image: podman, skopeo, buildah (`containers/5.24.2
    /// (github.com/containers/image)`), and CRI-O (`cri-o/1.28.0 ...`).
    Podman,
    /// Anything else (curl, regcache prefetch, a browser), or no User-Agent.
    Other,
}

impl ClientKind {
    /// Every kind, in label order (the index of [`ClientKind::index`]).
    pub const ALL: [ClientKind; 5] = [
        ClientKind::Docker,
        ClientKind::Containerd,
        ClientKind::Buildkit,
        ClientKind::Podman,
        ClientKind::Other,
    ];

    /// The label value: `docker`, `containerd`, `buildkit`, `podman`, `other`.
    pub fn as_str(self) -> &'static str {
        match self {
            ClientKind::Docker => "docker",
            ClientKind::Containerd => "containerd",
            ClientKind::Buildkit => "buildkit",
            ClientKind::Podman => "podman",
            ClientKind::Other => "other",
        }
    }

    /// Its position in [`ClientKind::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }

    /// The kind a `User-Agent` value names (case-insensitive on the product token). Sources:
    /// moby `dockerversion.DockerUserAgent` (`docker/<v> ...`), containerd
    /// `version.UserAgent` / remotes docker resolver (`containerd/<v>`), BuildKit
    /// `version.UserAgent` (`buildkit/<v>`), containers/image `DefaultUserAgent`
    /// (`containers/<v> (github.com/containers/image)`), CRI-O (`cri-o/<v>`).
    pub fn from_user_agent(ua: &str) -> ClientKind {
        let ua = ua.trim().to_ascii_lowercase();
        let product = ua.split(['/', ' ']).next().unwrap_or("");
        match product {
            "docker" => ClientKind::Docker,
            "containerd" | "ctr" => ClientKind::Containerd,
            "buildkit" => ClientKind::Buildkit,
            "containers" | "cri-o" | "podman" | "skopeo" | "buildah" => ClientKind::Podman,
            _ if ua.contains("github.com/containers/image") => ClientKind::Podman,
            _ => ClientKind::Other,
        }
    }

    /// The kind named `s` (a label value), if any.
    pub fn parse(s: &str) -> Option<ClientKind> {
        ClientKind::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

/// One request as [`Recent`] keeps it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Seen {
    /// When it arrived, in milliseconds since the Unix epoch (the mirror's clock).
    pub at_unix_ms: u64,
    /// Request method.
    pub method: String,
    /// Request path (no query), at most 256 characters.
    pub path: String,
    /// Response status.
    pub status: u16,
    /// The registry it was routed to, once known.
    pub registry: Option<String>,
    /// Its `User-Agent`, at most 256 characters.
    pub user_agent: String,
    /// The client's address (`ip:port`).
    pub client: String,
}

/// How many requests [`Recent`] keeps per client kind.
pub const RECENT_PER_KIND: usize = 32;

/// The last [`RECENT_PER_KIND`] requests of each client kind (newest last). Probes
/// (`/healthz`, `/readyz`) and `/metrics` are not kept.
#[derive(Debug, Default)]
pub struct Recent {
    rings: Mutex<[VecDeque<Seen>; 5]>,
    counts: [std::sync::atomic::AtomicU64; 5],
}

impl Recent {
    /// Counts a request of `kind` (for `/metrics`, every request).
    pub fn count(&self, kind: ClientKind) {
        self.counts[kind.index()].fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    /// Requests so far by kind, in [`ClientKind::ALL`] order.
    pub fn counts(&self) -> [u64; 5] {
        std::array::from_fn(|i| self.counts[i].load(std::sync::atomic::Ordering::Relaxed))
    }

    /// Keeps `seen` as the newest request of `kind`, dropping the oldest beyond
    /// [`RECENT_PER_KIND`].
    pub fn keep(&self, kind: ClientKind, seen: Seen) {
        let mut rings = self.rings.lock().unwrap_or_else(|p| p.into_inner());
        let ring = &mut rings[kind.index()];
        if ring.len() == RECENT_PER_KIND {
            ring.pop_front();
        }
        ring.push_back(seen);
    }

    /// The kept requests, by kind label (`{"docker": [...], ...}`), oldest first.
    pub fn snapshot(&self) -> std::collections::BTreeMap<String, Vec<Seen>> {
        let rings = self.rings.lock().unwrap_or_else(|p| p.into_inner());
        ClientKind::ALL
            .iter()
            .map(|k| {
                (
                    k.as_str().to_owned(),
                    rings[k.index()].iter().cloned().collect(),
                )
            })
            .collect()
    }
}

/// Milliseconds since the Unix epoch, now.
pub fn now_unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// What the admin socket's `GET /-/clients` answers: the requests kept by kind.
pub type RecentAnswer = std::collections::BTreeMap<String, Vec<Seen>>;

/// Asks the mirror serving `cache_dir` for its recent requests by client kind (admin socket,
/// `GET /-/clients`).
///
/// Errors: no mirror answers there (no socket, a stale one, a timeout), or the answer is not
/// the expected JSON.
pub fn fetch_recent(cache_dir: &std::path::Path) -> std::io::Result<RecentAnswer> {
    crate::live::get_json(cache_dir, "/-/clients")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_from_real_user_agents() {
        for (ua, kind) in [
            ("docker/20.10.24+dfsg1 go/go1.19.8 git-commit/5d6db84 kernel/6.1.0 os/linux arch/amd64 UpstreamClient(Docker-Client/20.10.24+dfsg1 \\(linux\\))", ClientKind::Docker),
            ("containerd/1.6.20~ds1", ClientKind::Containerd),
            ("containerd/v2.1.3", ClientKind::Containerd),
            ("buildkit/v0.12.5", ClientKind::Buildkit),
            ("containers/5.24.2 (github.com/containers/image)", ClientKind::Podman),
            ("cri-o/1.28.1 go/go1.20 os/linux arch/amd64", ClientKind::Podman),
            ("curl/7.88.1", ClientKind::Other),
            ("", ClientKind::Other),
        ] {
            assert_eq!(ClientKind::from_user_agent(ua), kind, "{ua}");
        }
    }

    #[test]
    fn ring_keeps_the_newest() {
        let r = Recent::default();
        for i in 0..(RECENT_PER_KIND as u64 + 5) {
            r.keep(
                ClientKind::Docker,
                Seen {
                    at_unix_ms: i,
                    method: "GET".into(),
                    path: "/v2/".into(),
                    status: 200,
                    registry: None,
                    user_agent: "docker/1".into(),
                    client: "127.0.0.1:1".into(),
                },
            );
        }
        let s = r.snapshot();
        assert_eq!(s["docker"].len(), RECENT_PER_KIND);
        assert_eq!(s["docker"][0].at_unix_ms, 5);
        assert!(s["podman"].is_empty());
    }
}
