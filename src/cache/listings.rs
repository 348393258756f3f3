//! Listings: answers that list other content — a repository's tag list (`GET
//! /v2/<name>/tags/list`, each page by its `n` / `last` query) and a manifest's referrers (`GET
//! /v2/<name>/referrers/<digest>`, OCI distribution-spec 1.1 "Listing Referrers") — cached per
//! registry, repository and upstream request, one small JSON file each at
//! `<cache_dir>/lists/<registry>/<name>/_lists/<sha256 of the upstream path and query>`.
//!
//! Policy, as for tags ([`super::manifests`]): an answer is trusted for `tag_ttl`, then asked
//! for again (conditionally, with `If-None-Match`, when the upstream gave an `ETag`); while the
//! upstream is down or rate-limiting the cached answer is served stale. Referrers are always
//! asked for unfiltered, so `artifactType` filters are applied here from the full list. An
//! upstream without the referrers API answers 404: so does the mirror (never an empty 200, which
//! would hide the tag-schema fallback clients then use), and that 404 is remembered for
//! [`NOT_FOUND_TTL`] (or `tag_ttl`, if longer).

use std::fs;
use std::io;
use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use http::header::{CONTENT_TYPE, ETAG, IF_NONE_MATCH, LINK};
use http::{HeaderMap, HeaderValue, Method, StatusCode};
use serde::{Deserialize, Serialize};

use crate::cache::index::unix_now;
use crate::cache::manifests::{stale_cause, Manifests};
use crate::cache::store::{remove_if_exists, Store};
use crate::cache::{CacheError, CacheResult, Origin};
use crate::reference::Digest;
use crate::upstream::{read_limited, UpstreamError};

/// How long an upstream's 404 to a referrers request (no referrers API) is remembered when
/// `tag_ttl` is shorter.
pub const NOT_FOUND_TTL: Duration = Duration::from_secs(60);

/// What is listed.
#[derive(Debug, Clone)]
pub enum ListingKind {
    /// A page of `tags/list`: `n` and `last` as the client gave them.
    Tags {
        n: Option<String>,
        last: Option<String>,
    },
    /// The referrers of `subject` (a page of them: `n` and `last` as given).
    Referrers {
        subject: Digest,
        n: Option<String>,
        last: Option<String>,
    },
}

impl ListingKind {
    /// The upstream path and query for repository `name` (never `ns`, never `artifactType`).
    pub fn upstream_path(&self, name: &str) -> String {
        let (mut path, n, last) = match self {
            ListingKind::Tags { n, last } => (format!("/v2/{name}/tags/list"), n, last),
            ListingKind::Referrers { subject, n, last } => {
                (format!("/v2/{name}/referrers/{subject}"), n, last)
            }
        };
        let mut sep = '?';
        for (k, v) in [("n", n), ("last", last)] {
            if let Some(v) = v {
                path.push(sep);
                path.push_str(k);
                path.push('=');
                path.extend(url::form_urlencoded::byte_serialize(v.as_bytes()));
                sep = '&';
            }
        }
        path
    }

    fn label(&self) -> &'static str {
        match self {
            ListingKind::Tags { .. } => "tag list",
            ListingKind::Referrers { .. } => "referrers",
        }
    }
}

/// A listing as cached: the upstream's answer (200 with its body, or a remembered 404).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct StoredListing {
    /// 200, or 404 (referrers: the upstream has no referrers API).
    pub status: u16,
    /// The upstream's `Content-Type`.
    pub content_type: Option<String>,
    /// The upstream's `Link` (the next page).
    pub link: Option<String>,
    /// The upstream's `ETag`, for a conditional revalidation.
    pub etag: Option<String>,
    /// The JSON body, exactly as the upstream sent it.
    pub body: String,
    /// When the upstream last confirmed it, seconds since the Unix epoch.
    pub checked: u64,
}

/// A listing answer, and how it was answered.
#[derive(Debug, Clone)]
pub struct Listing {
    /// The cached (or just fetched) answer.
    pub stored: StoredListing,
    /// Hit, miss, coalesced or stale.
    pub result: CacheResult,
}

impl Store {
    fn listing_path(&self, registry: &str, name: &str, upstream_path: &str) -> PathBuf {
        let key = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(
            upstream_path.as_bytes(),
        ));
        self.root()
            .join("lists")
            .join(registry)
            .join(name)
            .join("_lists")
            .join(key)
    }

    fn read_listing(&self, registry: &str, name: &str, path: &str) -> Option<StoredListing> {
        let raw = fs::read(self.listing_path(registry, name, path)).ok()?;
        serde_json::from_slice(&raw).ok()
    }

    fn write_listing(
        &self,
        registry: &str,
        name: &str,
        path: &str,
        l: &StoredListing,
    ) -> io::Result<()> {
        let json = serde_json::to_vec(l).map_err(io::Error::other)?;
        self.write_atomic(&self.listing_path(registry, name, path), &json)
            .map(|_| ())
    }

    fn remove_listing(&self, registry: &str, name: &str, path: &str) -> io::Result<()> {
        remove_if_exists(&self.listing_path(registry, name, path))
    }
}

impl Manifests {
    /// A listing: fresh from the cache, revalidated, fetched, or stale (see the module docs).
    ///
    /// Errors: nothing usable cached and the upstream failed or answered an error status (a
    /// tags/list 404 also forgets the cached page); [`UpstreamError::Protocol`] for a body
    /// over `max_manifest_size` or not a JSON object (never cached).
    pub(super) async fn listing(
        &self,
        from: Origin<'_>,
        kind: &ListingKind,
    ) -> Result<Listing, CacheError> {
        let (registry, name) = (from.upstream.registry(), from.name);
        let path = kind.upstream_path(name);
        let cached = self.store.read_listing(registry, name, &path);
        if let Some(c) = &cached {
            if self.offline || self.listing_fresh(from, c) {
                return Ok(Listing {
                    stored: c.clone(),
                    result: CacheResult::Hit,
                });
            }
        }
        let _guard = self.locks.lock(format!("{registry}/{name} {path}")).await;
        let cached = self.store.read_listing(registry, name, &path);
        match cached {
            Some(c) if self.listing_fresh(from, &c) => Ok(Listing {
                stored: c,
                result: CacheResult::Coalesced,
            }),
            Some(c) if !self.revalidate_timeout.is_zero() => {
                let bounded = tokio::time::timeout(
                    self.revalidate_timeout * 2,
                    self.fetch_listing(from, kind, &path, Some(c.clone())),
                );
                match bounded.await {
                    Ok(answer) => answer,
                    Err(_) if !self.listing_within_max_stale(from, &c) => {
                        Err(CacheError::Upstream(UpstreamError::Timeout {
                            host: from.upstream.host(),
                            after: self.revalidate_timeout * 2,
                        }))
                    }
                    Err(_) => {
                        self.count_stale(0);
                        tracing::warn!(registry = %registry, name, what = kind.label(), "revalidation took too long; serving cached listing (stale)");
                        Ok(Listing {
                            stored: c,
                            result: CacheResult::Stale,
                        })
                    }
                }
            }
            c => self.fetch_listing(from, kind, &path, c).await,
        }
    }

    /// Whether a cached listing may be used without asking upstream.
    fn listing_fresh(&self, from: Origin<'_>, l: &StoredListing) -> bool {
        let tag_ttl = self.tag_rules(from, "").tag_ttl;
        let ttl = match l.status {
            404 => tag_ttl.max(NOT_FOUND_TTL),
            _ => tag_ttl,
        };
        !ttl.is_zero() && unix_now().saturating_sub(l.checked) < ttl.as_secs()
    }

    /// Whether a cached listing is young enough to be served stale (`max_stale`).
    fn listing_within_max_stale(&self, from: Origin<'_>, l: &StoredListing) -> bool {
        self.tag_rules(from, "")
            .max_stale
            .is_none_or(|m| unix_now().saturating_sub(l.checked) <= m.as_secs())
    }

    /// Asks upstream for `path` (conditionally when `cached` has an ETag), stores what it
    /// says, and falls back to `cached` (stale) when the upstream is down.
    async fn fetch_listing(
        &self,
        from: Origin<'_>,
        kind: &ListingKind,
        path: &str,
        cached: Option<StoredListing>,
    ) -> Result<Listing, CacheError> {
        let (up, registry, name) = (from.upstream, from.upstream.registry(), from.name);
        let stale = |e: UpstreamError, c: StoredListing| {
            if !self.listing_within_max_stale(from, &c) {
                tracing::warn!(registry = %registry, name, what = kind.label(), error = %e, "upstream unavailable and the cached listing is older than max_stale; not serving it");
                return Err(CacheError::Upstream(e));
            }
            self.count_stale(stale_cause(&e));
            tracing::warn!(registry = %registry, name, what = kind.label(), error = %e, "upstream unavailable; serving cached listing (stale)");
            Ok(Listing {
                stored: c,
                result: CacheResult::Stale,
            })
        };
        let mut headers = HeaderMap::new();
        if let Some(etag) = cached.as_ref().and_then(|c| c.etag.as_deref()) {
            if let Ok(v) = HeaderValue::from_str(etag) {
                headers.insert(IF_NONE_MATCH, v);
            }
        }
        let sent = match &cached {
            Some(_) => up.send_cached(Method::GET, name, path, &headers).await,
            None => up.send(Method::GET, name, path, &headers).await,
        };
        let resp = match sent {
            Ok(r) => r,
            Err(e) if e.is_outage() => match cached {
                Some(c) => return stale(e, c),
                None => return Err(e.into()),
            },
            Err(e) => return Err(e.into()),
        };
        let status = resp.status();
        let confirmed = |mut c: StoredListing| {
            c.checked = unix_now();
            self.keep(registry, name, path, &c);
            c
        };
        match status {
            StatusCode::NOT_MODIFIED if cached.is_some() => {
                let c = confirmed(cached.expect("checked above"));
                return Ok(Listing {
                    stored: c,
                    result: CacheResult::Hit,
                });
            }
            StatusCode::NOT_FOUND if matches!(kind, ListingKind::Referrers { .. }) => {
                let l = StoredListing {
                    status: 404,
                    content_type: None,
                    link: None,
                    etag: None,
                    body: String::new(),
                    checked: unix_now(),
                };
                self.keep(registry, name, path, &l);
                return Ok(Listing {
                    stored: l,
                    result: CacheResult::Miss,
                });
            }
            StatusCode::OK => {}
            _ => {
                let e = UpstreamError::from_status(&resp);
                if e.is_outage() {
                    if let Some(c) = cached {
                        return stale(e, c);
                    }
                }
                if status == StatusCode::NOT_FOUND {
                    let _ = self.store.remove_listing(registry, name, path);
                }
                return Err(e.into());
            }
        }
        let header = |h: http::HeaderName| {
            resp.headers()
                .get(h)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        let (content_type, link, etag) = (header(CONTENT_TYPE), header(LINK), header(ETAG));
        let read = read_limited(resp.into_body(), self.max_manifest_size);
        let read = tokio::time::timeout(self.idle_timeout, read).await;
        let body = match read.unwrap_or_else(|_| Err("timed out reading the body".into())) {
            Ok(b) => b,
            Err(e) => {
                let e =
                    UpstreamError::Protocol(format!("reading the {} of {name}: {e}", kind.label()));
                return match cached {
                    Some(c) => stale(e, c),
                    None => Err(e.into()),
                };
            }
        };
        let body = json_object_text(&body).map_err(|why| {
            CacheError::Upstream(UpstreamError::Protocol(format!(
                "the upstream's {} of {name} {why}; not cached",
                kind.label()
            )))
        })?;
        let unchanged = cached.as_ref().is_some_and(|c| {
            c.status == 200 && c.body == body && c.link == link && c.content_type == content_type
        });
        let l = StoredListing {
            status: 200,
            content_type,
            link,
            etag,
            body,
            checked: unix_now(),
        };
        self.keep(registry, name, path, &l);
        Ok(Listing {
            stored: l,
            result: if unchanged {
                CacheResult::Hit
            } else {
                CacheResult::Miss
            },
        })
    }

    fn keep(&self, registry: &str, name: &str, path: &str, l: &StoredListing) {
        if let Err(e) = self.store.write_listing(registry, name, path, l) {
            tracing::warn!(registry, name, error = %e, "cannot record a listing in the cache");
        }
    }
}

/// `bytes` as text when they are one JSON object.
fn json_object_text(bytes: &Bytes) -> Result<String, &'static str> {
    let v: serde_json::Value = serde_json::from_slice(bytes).map_err(|_| "is not JSON")?;
    if !v.is_object() {
        return Err("is not a JSON object");
    }
    String::from_utf8(bytes.to_vec()).map_err(|_| "is not UTF-8")
}

/// The referrers index `body` with only the descriptors whose `artifactType` is
/// `artifact_type` (distribution-spec 1.1: the answer then carries `OCI-Filters-Applied:
/// artifactType`). A body that is not an index with `manifests` is returned unchanged.
pub fn filter_referrers(body: &str, artifact_type: &str) -> String {
    let Ok(mut v) = serde_json::from_str::<serde_json::Value>(body) else {
        return body.to_owned();
    };
    let Some(list) = v.get_mut("manifests").and_then(|m| m.as_array_mut()) else {
        return body.to_owned();
    };
    list.retain(|d| d["artifactType"].as_str() == Some(artifact_type));
    v.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filtering_keeps_the_matching_descriptors() {
        let body = r#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[{"digest":"sha256:a","artifactType":"application/vnd.dev.sigstore.bundle.v0.3+json"},{"digest":"sha256:b","artifactType":"application/spdx+json"}]}"#;
        let f: serde_json::Value =
            serde_json::from_str(&filter_referrers(body, "application/spdx+json")).unwrap();
        assert_eq!(f["manifests"].as_array().unwrap().len(), 1);
        assert_eq!(f["manifests"][0]["digest"], "sha256:b");
        assert_eq!(f["schemaVersion"], 2);
        assert_eq!(filter_referrers("[1]", "x"), "[1]");
    }

    #[test]
    fn upstream_paths_carry_only_the_page() {
        let d: Digest = format!("sha256:{}", "a".repeat(64)).parse().unwrap();
        let r = ListingKind::Referrers {
            subject: d.clone(),
            n: None,
            last: None,
        };
        assert_eq!(
            r.upstream_path("library/x"),
            format!("/v2/library/x/referrers/{d}")
        );
        let t = ListingKind::Tags {
            n: Some("2".into()),
            last: Some("a b&c".into()),
        };
        assert_eq!(
            t.upstream_path("library/x"),
            "/v2/library/x/tags/list?n=2&last=a+b%26c"
        );
    }
}
