//! regcache: a pull-through cache (mirror) for container registries.
//!
//! # Layout
//! A request goes down through the layers, each visited once, and only its response body comes
//! back up: [`http`] → [`mirror`] → [`cache`] → `cache::fill` → {[`upstream`], `cache::store`}.
//!
//! - [`http`]: the pull API — the listener ([`http::server`]), dispatch, one module per endpoint
//!   (blobs, manifests, listings: tag lists and referrers), `Range`.
//! - [`mirror`]: the running mirror — configuration, the cache, the registries (`?ns=` and path
//!   prefixes select among the configured ones), request counters.
//! - [`cache`]: where a miss becomes a hit — `Cache::blob` answers `Hit(Committed)` or
//!   `Filling(Follower)`, `Cache::manifest` applies the tag policy; below it the store, the
//!   index, eviction and the fills (the streaming tee).
//! - [`upstream`]: the upstream client — rustls, token auth, redirects without credentials,
//!   back-off, the shared bandwidth cap.
//! - [`body`]: response bodies, and zero-copy delivery with `sendfile` (the one `unsafe`
//!   module, [`body::zero_copy`]).
//! - `error`: the one OCI error response, and every mapping of an internal error to it.
//! - [`reference`]: repository names, tags, digests and routes (spec grammars).
//! - [`config`]: the TOML file, the flags, the embedded defaults, every value parser.
//! - [`metrics`]: `/metrics` text from plain figures.
//! - [`logging`]: the log's writer (lines gathered, written in batches).
//! - [`access`]: who may use a listener (htpasswd, client certificates).
//! - [`admin`]: operator commands on a cache directory (`status`, `verify`, `gc`).
//! - [`live`]: a running mirror's live status, on its admin socket (`regcache status`).
//! - [`clients`]: the mirror's clients — their kind from the User-Agent (`/metrics`, the ring
//!   of recent requests on the admin socket), and `regcache setup` / `regcache doctor`, one
//!   module per client (docker, containerd, podman, buildkit).
//! - [`prefetch`]: `regcache prefetch`, over the cache API.
//! - [`service`]: the mirror as a systemd service: sockets (activation), `sd_notify`,
//!   SIGHUP reload, graceful stop.
//! - [`tls`]: HTTPS for the listeners: loading the certificate, key and client CA, errors
//!   that say what a wrong file holds.
//! - [`certs`]: a local CA and its certificates (`regcache certs init|client|show`, `gen-cert`).
//! - `fuzzing`: the fuzz targets' bodies (`fuzz/`, replayed by `tests/fuzz_corpus.rs`).
#![deny(unsafe_code)]

pub mod access;
pub mod admin;
pub mod body;
pub mod cache;
pub mod certs;
pub mod clients;
pub mod config;
pub(crate) mod error;
#[doc(hidden)]
pub mod fuzzing;
pub mod http;
pub mod live;
pub mod logging;
pub mod metrics;
pub mod mirror;
pub mod prefetch;
pub mod reference;
pub mod service;
pub mod tls;
pub mod upstream;
