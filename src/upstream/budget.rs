//! The rate-limit budget governor: what a registry's answers say is left of its pull budget,
//! and whether that is down to the reserve.
//!
//! Docker Hub limits manifest GETs per IPv4 address or IPv6 /64 over a window (anonymous: 100 per
//! 6 hours at the time of writing) and reports it on every manifest answer, HEADs included
//! (which it does not count): `ratelimit-limit: 100;w=21600`, `ratelimit-remaining: 76;w=21600`
//! (<https://docs.docker.com/docker-hub/usage/pulls/>; the form of
//! draft-ietf-httpapi-ratelimit-headers). The latest report is kept. While `remaining` is at or
//! below `rate_limit_reserve`, `regcache prefetch` pauses and tag revalidation backs off (the
//! cached tag is served stale, up to `max_stale`); pulls of uncached content still go upstream
//! until the registry answers 429 (then [`super::breaker`] holds everything until its
//! `Retry-After`).
//!
//! The window is rolling, so a report says nothing of when single requests come back; the
//! governor assumes the whole budget is back one window after the report (`w`, at most
//! [`MAX_WINDOW`]; 6 hours when absent), the latest time it can be, and leaves the reserve state
//! then (or as soon as an answer reports more than the reserve).

use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use http::HeaderMap;

/// Window assumed when `ratelimit-remaining` carries no `w=` (Docker Hub's, 6 hours).
pub const DEFAULT_WINDOW: Duration = Duration::from_secs(21600);

/// Longest window believed (a day, four of Docker Hub's): a longer `w=` is taken as this, so a
/// broken or hostile report can neither overflow the refill time nor hold revalidation and
/// prefetch back for longer (a registry whose budget is really still spent answers 429, and
/// then its `Retry-After` holds everything).
pub const MAX_WINDOW: Duration = Duration::from_secs(86400);

/// A registry's budget as its latest answer reported it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateBudget {
    /// Requests the window allows (`ratelimit-limit`'s number).
    pub limit: u64,
    /// Requests left (`ratelimit-remaining`'s number).
    pub remaining: u64,
    /// The window (`w=`, seconds, at most [`MAX_WINDOW`]), [`DEFAULT_WINDOW`] when absent.
    pub window: Duration,
    /// When it was reported.
    pub reported: Instant,
    /// The same, as wall-clock time (for messages).
    pub reported_at: SystemTime,
    /// The headers as sent, e.g. (`100;w=21600`, `76;w=21600`).
    pub raw: (String, String),
}

impl RateBudget {
    /// Parses `ratelimit-limit` / `ratelimit-remaining` (`<number>[;w=<seconds>]`, other
    /// parameters ignored). `None` when either is absent or not of that form.
    pub fn from_headers(headers: &HeaderMap) -> Option<RateBudget> {
        let get = |n: &str| headers.get(n).and_then(|v| v.to_str().ok());
        let (limit_raw, remaining_raw) = (get("ratelimit-limit")?, get("ratelimit-remaining")?);
        let (limit, _) = parse_item(limit_raw)?;
        let (remaining, w) = parse_item(remaining_raw)?;
        let w = w.or_else(|| parse_item(limit_raw).and_then(|(_, w)| w));
        Some(RateBudget {
            limit,
            remaining,
            window: w.map_or(DEFAULT_WINDOW, |w| Duration::from_secs(w).min(MAX_WINDOW)),
            reported: Instant::now(),
            reported_at: SystemTime::now(),
            raw: (limit_raw.to_owned(), remaining_raw.to_owned()),
        })
    }

    /// Time until the whole budget is back at the latest (one window after the report; zero
    /// once passed).
    pub fn refills_in(&self) -> Duration {
        (self.reported + self.window).saturating_duration_since(Instant::now())
    }

    /// Wall-clock time the whole budget is back at the latest.
    pub fn refills_at(&self) -> SystemTime {
        self.reported_at + self.window
    }
}

/// `<number>[;w=<seconds>][;...]` → (number, w).
fn parse_item(v: &str) -> Option<(u64, Option<u64>)> {
    let mut parts = v.split(';');
    let n = parts.next()?.trim().parse().ok()?;
    let w = parts.find_map(|p| {
        let (k, v) = p.split_once('=')?;
        (k.trim() == "w").then(|| v.trim().parse().ok())?
    });
    Some((n, w))
}

/// One registry's governor.
pub struct Governor {
    /// `rate_limit_reserve` (replaced on reload).
    reserve: std::sync::atomic::AtomicU64,
    /// The latest report, and whether the reserve state has been logged.
    state: Mutex<(Option<RateBudget>, bool)>,
}

impl Governor {
    /// A governor holding back `reserve` requests.
    pub fn new(reserve: u64) -> Governor {
        Governor {
            reserve: reserve.into(),
            state: Mutex::new((None, false)),
        }
    }

    /// `rate_limit_reserve`.
    pub fn reserve(&self) -> u64 {
        self.reserve.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Replaces `rate_limit_reserve` (a reload).
    pub fn set_reserve(&self, reserve: u64) {
        self.reserve
            .store(reserve, std::sync::atomic::Ordering::Relaxed);
    }

    /// Records the report an answer carries (if any); logs entering and leaving the reserve.
    pub fn record(&self, registry: &str, headers: &HeaderMap) {
        let Some(b) = RateBudget::from_headers(headers) else {
            return;
        };
        let mut s = self.state.lock().expect("budget lock");
        let changed = s.0.as_ref().map(|o| &o.raw) != Some(&b.raw);
        if changed {
            tracing::info!(registry, limit = %b.raw.0, remaining = %b.raw.1, "upstream rate limit");
        }
        // A report whose window has already passed (`w=0`) says nothing is held back.
        let reserve = self.reserve();
        let low = b.remaining <= reserve && !b.refills_in().is_zero();
        if low && !s.1 {
            tracing::warn!(
                registry,
                remaining = b.remaining,
                limit = b.limit,
                reserve,
                refills_by = %humantime::format_rfc3339_seconds(b.refills_at()),
                "rate-limit budget down to the reserve: prefetch pauses and cached tags are served without revalidation (stale, up to max_stale) until it refills; uncached pulls still go upstream"
            );
        } else if !low && s.1 {
            tracing::info!(
                registry,
                remaining = b.remaining,
                "rate-limit budget above the reserve again"
            );
        }
        s.1 = low;
        s.0 = Some(b);
    }

    /// The latest report.
    pub fn budget(&self) -> Option<RateBudget> {
        self.state.lock().expect("budget lock").0.clone()
    }

    /// The latest report while it says the budget is at or below the reserve and its window
    /// has not passed; `None` otherwise (no report, above the reserve, or refilled).
    pub fn at_reserve(&self) -> Option<RateBudget> {
        let mut s = self.state.lock().expect("budget lock");
        let b = s.0.as_ref()?;
        if b.remaining > self.reserve() {
            return None;
        }
        if b.refills_in().is_zero() {
            if s.1 {
                tracing::info!(
                    "rate-limit budget window passed; revalidating and prefetching again"
                );
                s.1 = false;
            }
            return None;
        }
        Some(b.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(limit: &str, remaining: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("ratelimit-limit", limit.parse().unwrap());
        h.insert("ratelimit-remaining", remaining.parse().unwrap());
        h
    }

    #[test]
    fn parses_docker_hub_headers() {
        let b = RateBudget::from_headers(&headers("100;w=21600", "76;w=21600")).unwrap();
        assert_eq!((b.limit, b.remaining), (100, 76));
        assert_eq!(b.window, Duration::from_secs(21600));
        let b = RateBudget::from_headers(&headers("100", "7")).unwrap();
        assert_eq!(b.window, DEFAULT_WINDOW);
        assert!(RateBudget::from_headers(&headers("lots", "7")).is_none());
        assert!(RateBudget::from_headers(&HeaderMap::new()).is_none());
    }

    /// A window of any size (`w=18446744073709551615`, or centuries) is taken as at most
    /// [`MAX_WINDOW`]: computing when it refills neither overflows (a panic holding the lock,
    /// poisoning it for every later request to the registry) nor gives a time past year 9999
    /// (which RFC 3339 formatting refuses, panicking `prefetch`'s message), and a hostile or
    /// broken registry cannot stop revalidation and prefetch for centuries.
    #[test]
    fn a_huge_window_is_bounded() {
        let g = Governor::new(10);
        let w = u64::MAX;
        g.record(
            "docker.io",
            &headers(&format!("100;w={w}"), &format!("0;w={w}")),
        );
        let b = g.at_reserve().expect("at the reserve");
        assert_eq!(b.window, MAX_WINDOW);
        assert!(b.refills_in() <= MAX_WINDOW);
        let _ = humantime::format_rfc3339_seconds(b.refills_at()).to_string();
        let g = Governor::new(10);
        g.record(
            "docker.io",
            &headers("100;w=400000000000", "0;w=400000000000"),
        );
        let b = g.at_reserve().expect("at the reserve");
        assert_eq!(b.window, MAX_WINDOW);
        let _ = humantime::format_rfc3339_seconds(b.refills_at()).to_string();
    }

    #[test]
    fn reserve_holds_until_the_window_passes_or_a_report_says_more() {
        let g = Governor::new(10);
        assert!(g.at_reserve().is_none());
        g.record("docker.io", &headers("100;w=21600", "11;w=21600"));
        assert!(g.at_reserve().is_none());
        g.record("docker.io", &headers("100;w=21600", "10;w=21600"));
        assert_eq!(g.at_reserve().unwrap().remaining, 10);
        g.record("docker.io", &headers("100;w=21600", "40;w=21600"));
        assert!(g.at_reserve().is_none());
        // A window already passed: refilled.
        g.record("docker.io", &headers("100;w=0", "0;w=0"));
        assert!(g.at_reserve().is_none());
    }
}
