//! `max_upstream_bandwidth`: one byte-rate cap shared by every fill of a mirror.

/// A byte-rate limit shared by all fills (a token bucket from the `governor` crate).
pub struct Bandwidth {
    /// The bucket: one cell per byte.
    limiter: governor::DefaultDirectRateLimiter,
    /// Largest number of bytes asked for at once (the bucket's burst).
    burst: u32,
}

impl Bandwidth {
    /// A limit of `bytes_per_second` (1 ..= u32::MAX).
    pub fn new(bytes_per_second: u64) -> Bandwidth {
        let rate = u32::try_from(bytes_per_second.max(1)).unwrap_or(u32::MAX);
        let burst = (rate / 4).max(16 * 1024).min(rate);
        let nz = |v: u32| std::num::NonZeroU32::new(v.max(1)).expect("nonzero");
        let quota = governor::Quota::per_second(nz(rate)).allow_burst(nz(burst));
        Bandwidth {
            limiter: governor::RateLimiter::direct(quota),
            burst,
        }
    }

    /// Waits until `n` more bytes may be received.
    pub async fn consume(&self, mut n: usize) {
        while n > 0 {
            let k = n.min(self.burst as usize);
            let nz = std::num::NonZeroU32::new(k as u32).expect("k > 0");
            let _ = self.limiter.until_n_ready(nz).await;
            n -= k;
        }
    }
}
