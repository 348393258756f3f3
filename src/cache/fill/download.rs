//! The download of one fill: ask upstream, decide whether the blob can be cached (admit), open
//! the sink, read the body (resuming with `Range: bytes=N-` when it breaks off or stalls), then
//! verify the digest and commit.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::Bytes;
use http::header::CONTENT_LENGTH;
use http::{HeaderMap, Method, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use tokio::time::{Duration, Instant};

use super::writer::{Hashing, Reservation, Sink, Writer};
use super::{
    Fill, FillError, FillGuard, FillState, MAX_FILL_RESUMES, MAX_RESUMES, RESUME_PROGRESS,
    WRITE_QUEUE,
};
use crate::cache::eviction::fs_space;
use crate::cache::hash::Hasher;
use crate::cache::serial::Serial;
use crate::cache::store::CommitError;
use crate::reference::Digest;
use crate::upstream::{error_chain, Upstream, UpstreamError};

/// Runs a fill to its end and publishes the outcome; the guard then leaves the map.
pub(super) async fn run_fill(mut guard: FillGuard, upstream: Arc<Upstream>, name: String) {
    let fill = guard.fill.clone();
    let digest = fill.digest.clone();
    let started = Instant::now();
    let fills = guard.fills.clone();
    let cache_dir = guard.store.root().to_path_buf();
    let stats = &fills.stats;
    let outcome = fetch(&mut guard, &upstream, &name).await;
    match &outcome {
        Ok((_, true)) => stats.committed.fetch_add(1, Ordering::Relaxed),
        Ok((_, false)) => stats.uncached.fetch_add(1, Ordering::Relaxed),
        Err(e) => {
            stats.failed_by[e.reason()].fetch_add(1, Ordering::Relaxed);
            stats.failed.fetch_add(1, Ordering::Relaxed)
        }
    };
    match outcome {
        Ok((len, true)) => {
            tracing::info!(%digest, bytes = len, ms = started.elapsed().as_millis() as u64, "fill committed")
        }
        Ok((len, false)) => {
            tracing::info!(%digest, bytes = len, ms = started.elapsed().as_millis() as u64, "fill passed through uncached")
        }
        Err(e) => {
            match &e {
                FillError::Upstream(UpstreamError::Status { status, .. })
                    if *status == StatusCode::NOT_FOUND =>
                {
                    tracing::info!(%digest, "fill: upstream has no such blob")
                }
                FillError::Disk(_) => {
                    tracing::warn!(%digest, error = %e, cache_dir = %cache_dir.display(), "fill failed in the cache directory; nothing cached")
                }
                other => tracing::warn!(%digest, error = %other, "fill failed; nothing cached"),
            }
            fill.state.send_replace(FillState::Failed(Arc::new(e)));
        }
    }
    drop(guard);
}

/// The fill proper. Returns the length and whether it was committed.
async fn fetch(
    guard: &mut FillGuard,
    upstream: &Upstream,
    name: &str,
) -> Result<(u64, bool), FillError> {
    let fill = guard.fill.clone();
    let path = format!("/v2/{name}/blobs/{}", fill.digest);
    let resp = upstream
        .send(Method::GET, name, &path, &HeaderMap::new())
        .await?;
    if resp.status() != StatusCode::OK {
        return Err(FillError::Upstream(UpstreamError::from_status(&resp)));
    }
    let len = resp
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let sink = open(guard, len)?;
    let cached = matches!(sink, Sink::Disk(_));
    // Two queues on the blocking pool run beside the network reads: the writer (disk, or the
    // pass-through window; it publishes progress) and the hasher. Each holds a pool thread only
    // while it has chunks, so slow fills don't tie up the pool.
    let writer = Serial::new(
        Writer {
            sink,
            len,
            preallocated: 0,
            reservation: Reservation {
                store: guard.store.clone(),
                bytes: 0,
                held: 0,
            },
            max_size: guard.fills.settings.budget.max_size,
            fill: fill.clone(),
            fills: guard.fills.clone(),
            error: None,
        },
        WRITE_QUEUE,
    );
    let hasher = Serial::new(Hashing(Hasher::new(fill.digest.algorithm())), WRITE_QUEUE);
    let body = resp.into_body();
    let body_error = read(
        guard, upstream, name, &path, len, cached, body, &writer, &hasher,
    )
    .await;
    let mut writer = writer
        .finish()
        .await
        .map_err(|e| FillError::Disk(format!("cache writer: {e}")))?;
    if let Some(e) = writer.error.take() {
        return Err(e);
    }
    let actual = hasher
        .finish()
        .await
        .map_err(|e| FillError::Disk(format!("hasher: {e}")))?
        .0
        .finish();
    finish(&fill, writer.sink, len, body_error, actual).await
}

/// Admits the blob to the cache or not (too large for `max_size` or the free space, no temp
/// file), reserves its length against the budget, and publishes the fill as streaming. Returns
/// where the bytes go: the temp file, or (uncached) the pass-through window.
///
/// Errors: the temp file cannot be opened for reading.
fn open(guard: &mut FillGuard, len: Option<u64>) -> Result<Sink, FillError> {
    let fill = guard.fill.clone();
    let store = guard.store.clone();
    let mut uncached = len.and_then(|l| {
        if !guard.fills.settings.budget.admits(l) {
            Some("is larger than max_size".to_string())
        } else if fs_space(store.root()).is_some_and(|fs| l > fs.available) {
            Some("is larger than the free space on the cache filesystem".to_string())
        } else {
            None
        }
    });
    let mut disk = None;
    if uncached.is_none() {
        match store.begin_fill(&fill.digest) {
            Ok(f) => disk = Some(f),
            Err(e) => uncached = Some(format!("cannot create a temp file ({e})")),
        }
    }
    let (sink, file, mem_start) = match disk {
        None => {
            let why = uncached.unwrap_or_default();
            tracing::info!(digest = %fill.digest, bytes = len, "blob {why}; passing it through uncached");
            guard.fills.detach(&fill);
            (Sink::Mem { written: 0 }, None, Some(0))
        }
        Some(f) => {
            let reader = Arc::new(f.reader().map_err(|e| FillError::Disk(e.to_string()))?);
            if let Some(l) = len {
                // If mapping fails, followers map chunk by chunk instead.
                if let Ok(m) = crate::body::zero_copy::map_fill(&reader, l) {
                    let _ = fill.map.set(m);
                }
            }
            (Sink::Disk(f), Some(reader), None)
        }
    };
    fill.state.send_replace(FillState::Streaming {
        len,
        written: 0,
        file,
        mem_start,
        verified: false,
        head: None,
    });
    Ok(sink)
}

/// Reads the upstream body into the writer and the hasher, resuming when the connection drops,
/// stalls for `idle_timeout`, or trickles slower than `min_rate` over an `idle_timeout` window.
/// At most [`MAX_RESUMES`] attempts in a row without [`RESUME_PROGRESS`] bytes of progress
/// (so a long download over a flaky link survives many separate drops, but an upstream that
/// sends a byte and cuts does not), and [`MAX_FILL_RESUMES`] in all. Returns why the body
/// failed, or `None` when it ended (or the writer stopped: its error is reported by the caller).
#[allow(clippy::too_many_arguments)]
async fn read(
    guard: &FillGuard,
    upstream: &Upstream,
    name: &str,
    path: &str,
    len: Option<u64>,
    cached: bool,
    mut body: Incoming,
    writer: &Serial<Writer>,
    hasher: &Serial<Hashing>,
) -> Option<String> {
    let fill = &guard.fill;
    let settings = &guard.fills.settings;
    let idle = settings.idle_timeout;
    let mut received: u64 = 0;
    let mut resumes = Resumes::default();
    // The rate window: bytes received since `window_start`, less time in our own bandwidth cap.
    let mut window_start = Instant::now();
    let mut window_from = 0;
    let mut throttled = Duration::ZERO;
    loop {
        let slow = if settings.min_rate > 0 && window_start.elapsed() >= idle + throttled {
            let got = received - window_from;
            let upstream_time = window_start.elapsed().saturating_sub(throttled);
            let floor = (settings.min_rate as f64 * upstream_time.as_secs_f64()) as u64;
            (throttled, window_start, window_from) = (Duration::ZERO, Instant::now(), received);
            (got < floor).then(|| {
                format!(
                    "{got} bytes in {idle:?}, slower than the minimum fill rate of {} bytes/s",
                    settings.min_rate
                )
            })
        } else {
            None
        };
        let broke = match slow {
            Some(why) => why,
            None => match tokio::time::timeout(idle, body.frame()).await {
                // A stalled connection is as good as a dropped one: abandon it and resume.
                Err(_) => format!("no bytes for {idle:?} (idle_timeout)"),
                Ok(None) if len.is_some_and(|l| received < l) => {
                    "connection closed early".to_string()
                }
                Ok(None) => return None,
                Ok(Some(Err(e))) => error_chain(&e),
                Ok(Some(Ok(frame))) => {
                    if let Ok(data) = frame.into_data() {
                        received += data.len() as u64;
                        guard
                            .fills
                            .stats
                            .bytes
                            .fetch_add(data.len() as u64, Ordering::Relaxed);
                        if len.is_some_and(|l| received > l) {
                            return Some("upstream sent more bytes than its Content-Length".into());
                        }
                        if let Some(bw) = &settings.bandwidth {
                            let t = Instant::now();
                            bw.consume(data.len()).await;
                            throttled += t.elapsed();
                        }
                        if received == data.len() as u64 && !data.is_empty() && cached {
                            publish_head(fill, data.clone());
                        }
                        if !hasher.push(data.clone()).await || !writer.push(data).await {
                            return None; // the writer failed; its error is reported by the caller
                        }
                        if fill.is_pass_through() {
                            // Uncached: the window holds what the slowest follower has not
                            // read; wait here (holding no thread) until it has room. That wait
                            // is the client's slowness, not the upstream's.
                            let t = Instant::now();
                            fill.room().await;
                            throttled += t.elapsed();
                        }
                    }
                    continue;
                }
            },
        };
        // The connection dropped, stalled or trickled mid-blob: resume from where it broke.
        match resumes.next(guard, received, &broke).await {
            Ok(()) => {}
            Err(why) => return Some(why),
        }
        match resume(upstream, name, path, received, len).await {
            Ok(b) => body = b,
            Err(why) => return Some(format!("{broke}; cannot resume: {why}")),
        }
        (throttled, window_start, window_from) = (Duration::ZERO, Instant::now(), received);
    }
}

/// The resume attempts of one fill (see [`read`] for the budgets).
#[derive(Default)]
struct Resumes {
    /// Attempts since the last [`RESUME_PROGRESS`] bytes of progress.
    in_a_row: u32,
    /// Attempts in all.
    total: u32,
    /// Where the last attempt resumed.
    at: u64,
}

impl Resumes {
    /// Counts one more resume at byte `received`, then waits a back-off growing with the
    /// attempts in a row.
    ///
    /// Errors: why the fill gives up (a budget is spent).
    async fn next(&mut self, guard: &FillGuard, received: u64, broke: &str) -> Result<(), String> {
        if received >= self.at + RESUME_PROGRESS {
            self.in_a_row = 0;
        }
        self.at = received;
        self.in_a_row += 1;
        self.total += 1;
        guard.fills.stats.resumes.fetch_add(1, Ordering::Relaxed);
        if self.in_a_row > MAX_RESUMES {
            return Err(format!(
                "{broke}; gave up after {MAX_RESUMES} resume attempts without progress"
            ));
        }
        if self.total > MAX_FILL_RESUMES {
            return Err(format!(
                "{broke}; gave up after {MAX_FILL_RESUMES} resume attempts in all"
            ));
        }
        let pause = Duration::from_millis(100 << (self.in_a_row - 1)).min(Duration::from_secs(2));
        tracing::warn!(digest = %guard.fill.digest, at = received, attempt = self.in_a_row, error = %broke, "upstream download broke off; resuming");
        tokio::time::sleep(pause).await;
        Ok(())
    }
}

/// The first chunk: followers may send it before it reaches the disk (time to first byte).
fn publish_head(fill: &Fill, first: Bytes) {
    fill.state.send_modify(|s| {
        if let FillState::Streaming { head, .. } = s {
            *head = Some(first);
        }
    });
}

/// Checks the download is whole and hashes to the digest, lets followers send the held-back
/// last byte, then commits (sync, rename) a cached fill. Returns the length and whether it was
/// committed.
///
/// Errors: the body failed or ended short ([`FillError::Body`]), the bytes hash to another
/// digest ([`FillError::Verify`]), the commit failed ([`FillError::Disk`]).
async fn finish(
    fill: &Arc<Fill>,
    sink: Sink,
    len: Option<u64>,
    body_error: Option<String>,
    actual: Digest,
) -> Result<(u64, bool), FillError> {
    let written = match &sink {
        Sink::Disk(f) => f.written(),
        Sink::Mem { written } => *written,
    };
    if let Some(reason) = body_error {
        return Err(FillError::Body { written, reason });
    }
    if let Some(l) = len {
        if written != l {
            return Err(FillError::Body {
                written,
                reason: format!("body ended before its Content-Length {l}"),
            });
        }
    }
    if actual != fill.digest {
        return Err(FillError::Verify(format!(
            "upstream bytes hash to {actual}, not {}",
            fill.digest
        )));
    }
    // Verified: followers may send the last byte now; syncing and renaming follow.
    fill.state.send_modify(|s| {
        if let FillState::Streaming { verified, .. } = s {
            *verified = true;
        }
    });
    let file = match &*fill.state.borrow() {
        FillState::Streaming { file, .. } => file.clone(),
        _ => None,
    };
    match sink {
        Sink::Disk(f) => {
            let committed = tokio::task::spawn_blocking(move || f.commit(&actual))
                .await
                .map_err(|e| FillError::Disk(e.to_string()))?;
            let total = match committed {
                Ok(n) => n,
                Err(CommitError::DigestMismatch { expected, actual }) => {
                    return Err(FillError::Verify(format!(
                        "upstream bytes hash to {actual}, not {expected}"
                    )))
                }
                Err(CommitError::Io(e)) => return Err(FillError::Disk(e.to_string())),
            };
            fill.state.send_replace(FillState::Done {
                len: total,
                file,
                mem_start: None,
            });
            Ok((total, true))
        }
        Sink::Mem { written } => {
            let mem_start = match &*fill.state.borrow() {
                FillState::Streaming { mem_start, .. } => *mem_start,
                _ => Some(0),
            };
            fill.state.send_replace(FillState::Done {
                len: written,
                file,
                mem_start,
            });
            Ok((written, false))
        }
    }
}

/// Asks upstream for the rest of the blob from byte `from` and checks the answer really
/// continues the same object (206 with a `Content-Range` starting at `from`, of the same total).
async fn resume(
    upstream: &Upstream,
    name: &str,
    path: &str,
    from: u64,
    len: Option<u64>,
) -> Result<hyper::body::Incoming, String> {
    let mut h = HeaderMap::new();
    h.insert(
        http::header::RANGE,
        http::HeaderValue::from_str(&format!("bytes={from}-")).expect("ascii"),
    );
    let resp = upstream
        .send(Method::GET, name, path, &h)
        .await
        .map_err(|e| e.to_string())?;
    if resp.status() != StatusCode::PARTIAL_CONTENT {
        return Err(format!(
            "upstream answered {} to a Range request",
            resp.status()
        ));
    }
    let cr = resp
        .headers()
        .get(http::header::CONTENT_RANGE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let (start, total) =
        parse_content_range(&cr).ok_or_else(|| format!("bad Content-Range {cr:?}"))?;
    if start != from || len.is_some_and(|l| total != Some(l)) {
        return Err(format!(
            "Content-Range {cr:?} does not continue at byte {from}"
        ));
    }
    Ok(resp.into_body())
}

/// Parses `bytes a-b/total` (total may be `*`): returns (a, total).
fn parse_content_range(v: &str) -> Option<(u64, Option<u64>)> {
    let rest = v.trim().strip_prefix("bytes ")?;
    let (range, total) = rest.split_once('/')?;
    let (a, _) = range.split_once('-')?;
    let total = match total.trim() {
        "*" => None,
        t => Some(t.parse().ok()?),
    };
    Some((a.trim().parse().ok()?, total))
}
