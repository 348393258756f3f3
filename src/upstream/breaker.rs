//! The circuit breaker of one upstream: when it stops answering, requests fail fast (cached
//! answers are served) instead of each waiting for the timeout, and one probe per interval
//! finds out when it is back: the first answer closes the circuit, so an uncached pull works
//! again within a probe interval of the upstream's recovery.
//!
//! - Closed: requests go. [`OPEN_AFTER_TIMEOUTS`] header timeouts in a row at the upstream's
//!   own origin (not at a redirect host, not at the token realm) open it; any answer resets the
//!   count, so one slow repository does not back off the whole upstream.
//! - Open after timeouts: requests fail fast with `BackingOff`, except one probe per
//!   `probe_interval` (and never a request whose cached answer is waiting). A probe that
//!   answers closes it; one that times out keeps it open for another `outage_backoff`.
//!   After `outage_backoff` without a probe it closes by itself.
//! - Open after a 429: nothing goes until its `Retry-After` has passed (no probes).

use std::sync::Mutex;

use tokio::time::{Duration, Instant};

/// Header timeouts in a row at the upstream's origin that open the circuit.
pub const OPEN_AFTER_TIMEOUTS: u32 = 3;

/// Why a request may not go upstream now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refusal {
    /// Time until requests (or the next probe) may go.
    pub retry_after: Duration,
    /// Whether the circuit is open because of a 429.
    pub rate_limited: bool,
}

/// The state of one upstream's circuit.
pub struct Breaker {
    /// After the circuit opens for timeouts, how long it stays open without a probe.
    outage_backoff: Duration,
    /// While open for timeouts, how often a probe may go.
    probe_interval: Duration,
    /// Timeouts in a row and the open state.
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// Header timeouts in a row (reset by any answer).
    timeouts: u32,
    /// Set while the circuit is open.
    open: Option<Open>,
}

#[derive(Clone, Copy)]
struct Open {
    /// When it closes by itself.
    until: Instant,
    /// Opened by a 429: no probes until `until`.
    rate_limited: bool,
    /// When the next probe may go.
    next_probe: Instant,
}

impl Breaker {
    /// A closed circuit.
    pub fn new(outage_backoff: Duration, probe_interval: Duration) -> Breaker {
        Breaker {
            outage_backoff,
            probe_interval,
            state: Mutex::new(State::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("breaker lock")
    }

    /// Whether a request may go now. `may_probe`: the request has no cached answer waiting,
    /// so it may be the probe of an open circuit.
    ///
    /// Errors: the circuit is open (and this request is not the probe).
    pub fn admit(&self, may_probe: bool) -> Result<(), Refusal> {
        let mut st = self.lock();
        let Some(open) = st.open.as_mut() else {
            return Ok(());
        };
        let now = Instant::now();
        if now >= open.until {
            st.open = None;
            return Ok(());
        }
        if open.rate_limited {
            return Err(Refusal {
                retry_after: open.until - now,
                rate_limited: true,
            });
        }
        if may_probe && now >= open.next_probe {
            open.next_probe = now + self.probe_interval;
            return Ok(());
        }
        Err(Refusal {
            retry_after: open.next_probe.saturating_duration_since(now),
            rate_limited: false,
        })
    }

    /// The upstream's origin answered (any status): the count resets, and a circuit open for
    /// timeouts closes. Returns whether it was open.
    pub fn answered(&self) -> bool {
        let mut st = self.lock();
        st.timeouts = 0;
        match st.open {
            Some(o) if !o.rate_limited => {
                st.open = None;
                true
            }
            _ => false,
        }
    }

    /// The upstream's origin did not answer in time. Returns whether the circuit is (now) open.
    pub fn timed_out(&self) -> bool {
        let mut st = self.lock();
        let now = Instant::now();
        st.timeouts += 1;
        let timeouts = st.timeouts;
        match &mut st.open {
            Some(o) if !o.rate_limited => {
                // A probe failed: stay open.
                o.until = now + self.outage_backoff;
                true
            }
            Some(_) => true,
            None if timeouts >= OPEN_AFTER_TIMEOUTS => {
                st.open = Some(Open {
                    until: now + self.outage_backoff,
                    rate_limited: false,
                    next_probe: now + self.probe_interval,
                });
                true
            }
            None => false,
        }
    }

    /// While the circuit is open: the time until it closes by itself, and whether a 429
    /// opened it. `None` when closed.
    pub fn open(&self) -> Option<Refusal> {
        let now = Instant::now();
        let st = self.lock();
        st.open.filter(|o| o.until > now).map(|o| Refusal {
            retry_after: o.until - now,
            rate_limited: o.rate_limited,
        })
    }

    /// A 429: nothing goes until `wait` has passed.
    pub fn rate_limited(&self, wait: Duration) {
        let now = Instant::now();
        self.lock().open = Some(Open {
            until: now + wait,
            rate_limited: true,
            next_probe: now + wait,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn opens_after_timeouts_in_a_row_and_a_probe_closes_it() {
        let b = Breaker::new(Duration::from_secs(10), Duration::from_millis(500));
        assert!(!b.timed_out());
        b.answered(); // an answer in between: the count starts again
        assert!(!b.timed_out() && !b.timed_out());
        assert!(b.timed_out(), "three in a row open it");
        assert!(b.admit(true).is_err(), "fail fast");
        tokio::time::advance(Duration::from_millis(500)).await;
        assert!(
            b.admit(false).is_err(),
            "a request with a cached answer never probes"
        );
        assert!(b.admit(true).is_ok(), "one probe per interval");
        assert!(b.admit(true).is_err(), "only one");
        assert!(b.answered(), "the probe's answer closes it");
        assert!(b.admit(false).is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_probe_keeps_it_open_and_a_429_allows_no_probe() {
        let b = Breaker::new(Duration::from_secs(2), Duration::from_millis(500));
        for _ in 0..OPEN_AFTER_TIMEOUTS {
            b.timed_out();
        }
        tokio::time::advance(Duration::from_millis(1900)).await;
        assert!(b.admit(true).is_ok(), "probe");
        assert!(b.timed_out(), "the probe timed out");
        tokio::time::advance(Duration::from_millis(1000)).await;
        assert!(b.admit(false).is_err(), "still open past the first 2 s");
        b.rate_limited(Duration::from_secs(7));
        tokio::time::advance(Duration::from_secs(6)).await;
        let r = b.admit(true).unwrap_err();
        assert!(r.rate_limited && r.retry_after <= Duration::from_secs(1));
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(b.admit(true).is_ok(), "Retry-After has passed");
    }
}
