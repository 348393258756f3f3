//! regcache: a pull-through cache (mirror) for container registries.
//!
//! # Layout
//! - [`admin`]: operator commands on a cache directory (`status`, `verify`, `gc`).
//! - [`config`]: the TOML file, the flags and the embedded defaults.
//! - [`server`]: the listener, HTTP/1.1 + HTTP/2 serving, the access log, graceful shutdown.
//! - [`http`]: the pull API — hit / miss / coalesced / stale decisions per endpoint.
//! - [`prefetch`]: `regcache prefetch` — warming a cache with whole images ahead of time.
//! - [`reference`]: repository names, tags, digests and route parsing (spec grammars).
//! - [`tls`]: HTTPS for the listener; `regcache gen-cert`.
//! - [`upstream`]: the upstream client — rustls, token auth, redirects without credentials.
//! - [`store`]: the content-addressed cache on disk (temp file, hash, fsync, rename).
//! - [`eviction`]: the disk budget (`max_size`, `min_free`) and LRU eviction off the request path.
//! - [`fill`]: fills and the streaming tee — one upstream fetch per digest, many followers.
//! - [`serial`]: in-order chunk queues on the blocking pool (a fill's disk writer and hasher).
//! - [`metrics`]: Prometheus metrics at `GET /metrics`.
//! - [`mmap`]: zero-copy hits (the one `unsafe` module).
//! - [`body`]: response body types.
//! - [`error`]: OCI error responses.
#![deny(unsafe_code)]

pub mod admin;
pub mod body;
pub mod cache;
pub mod config;
pub mod error;
pub mod http;
pub mod metrics;
pub mod mirror;
pub mod prefetch;
pub mod reference;
pub mod tls;
pub mod upstream;
