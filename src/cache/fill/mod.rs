//! Fills and the streaming tee.
//!
//! A *fill* is the one upstream download of a blob. It writes the upstream body into a temp file
//! and hashes it, each in its own [`Serial`] queue on the blocking pool beside the network reads,
//! and publishes its progress through a `tokio::sync::watch`. Every client asking for that digest
//! while the fill runs — the first one included — is a *follower*: it reads the temp file from its
//! own offset up to the published progress, at its own pace (zero-copy followers slice one
//! mapping of the whole temp file and send with `sendfile`). So:
//! - there is exactly one upstream fetch per digest however many clients ask (coalescing);
//! - the first client gets headers as soon as upstream's arrive, the first chunk straight from
//!   memory, and the rest as it is written;
//! - a client that disconnects or reads slowly never cancels or slows the fill;
//! - a Range request is served from the fill as soon as its bytes are there;
//! - followers hold back the object's last byte until the digest is verified (the commit —
//!   fsync and rename — follows), so a fill that fails verification always ends its clients'
//!   streams short.
//!
//! *Pass-through*: a blob larger than `max_size`, or a fill whose disk write fails (ENOSPC, EIO),
//! is not cached. From that point on the bytes go through a small in-memory window
//! ([`MEM_WINDOW`]) that followers read from; the writer waits for the slowest follower rather
//! than growing the window, so memory stays bounded and every follower still gets the complete,
//! digest-checked stream. Such a fill leaves the coalescing map, so later clients start afresh.
//!
//! After commit, followers switch to mmap windows of the (now immutable) file.

use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::header::CONTENT_LENGTH;
use http::{HeaderMap, Method, StatusCode};
use http_body_util::BodyExt;
use tokio::sync::{mpsc, watch};

use crate::body::BoxError;
use crate::cache::eviction::{fs_space, Budget};
use crate::cache::serial::{Serial, Step};
use crate::cache::store::{CommitError, FillFile, Hasher, Store};
use crate::reference::Digest;
use crate::upstream::{error_chain, Upstream, UpstreamError, BODY_IDLE_TIMEOUT};

/// Most bytes a follower maps from the temp file per step.
const FOLLOW_CHUNK: usize = 4 << 20;
/// Most resume attempts (`Range: bytes=N-`) in a row without progress after the upstream
/// connection drops or stalls mid-blob.
pub const MAX_RESUMES: u32 = 5;
/// Chunks buffered between the network reader and the disk writer.
const WRITE_QUEUE: usize = 16;
/// Most bytes a pass-through fill holds in memory for its followers.
pub const MEM_WINDOW: usize = 4 << 20;

/// Why a fill failed.
#[derive(Debug, thiserror::Error)]
pub enum FillError {
    /// Before any byte arrived: the upstream request failed or answered an error status.
    #[error(transparent)]
    Upstream(#[from] UpstreamError),
    /// The upstream body broke off or stalled.
    #[error("upstream body failed after {written} bytes: {reason}")]
    Body { written: u64, reason: String },
    /// The bytes do not hash to the digest.
    #[error("{0}")]
    Verify(String),
    /// A disk error in regcache's own cache that pass-through could not cover.
    #[error("cache error: {0}")]
    Disk(String),
}

/// A fill's progress, as followers see it.
#[derive(Clone)]
pub enum FillState {
    /// Waiting for upstream's response headers.
    Connecting,
    /// Receiving bytes.
    Streaming {
        /// Total length from upstream's `Content-Length`, when given.
        len: Option<u64>,
        /// Bytes received and processed so far.
        written: u64,
        /// Read handle on the temp file, holding bytes `[0, mem_start)` (all, when `None`).
        file: Option<Arc<File>>,
        /// Where pass-through (memory) bytes begin, when the fill is not being cached.
        mem_start: Option<u64>,
        /// All bytes received and the digest checked (the held-back last byte may go out).
        verified: bool,
        /// The body's first chunk (bytes `[0, head.len())`), kept in memory from its arrival
        /// until the writer has it in the temp file: followers send it at once instead of
        /// waiting for the first disk write (time to first byte). `None` for pass-through.
        head: Option<Bytes>,
    },
    /// All bytes received and verified: committed when `mem_start` is `None`.
    Done {
        /// Total length in bytes.
        len: u64,
        /// Read handle on the committed (or, for pass-through, the abandoned) file.
        file: Option<Arc<File>>,
        /// Where pass-through bytes begin (`None`: committed).
        mem_start: Option<u64>,
    },
    /// Failed; nothing was committed.
    Failed(Arc<FillError>),
}

/// The pass-through window and the followers' positions.
#[derive(Default)]
struct Tail {
    /// Chunks `(offset, bytes)` not yet read by every follower, oldest first.
    chunks: VecDeque<(u64, Bytes)>,
    /// Sum of the chunks' lengths.
    buffered: usize,
    /// Each follower's next offset.
    readers: HashMap<u64, u64>,
    /// Followers dropped for stalling a pass-through fill; their streams are cut.
    cut: Vec<u64>,
    /// Next follower id.
    next_id: u64,
}

/// One in-progress fill.
pub struct Fill {
    /// The blob being filled.
    pub digest: Digest,
    /// Progress; followers subscribe to it.
    state: watch::Sender<FillState>,
    /// Pass-through window and follower positions (std mutex: the writer runs on the blocking
    /// pool).
    tail: Mutex<Tail>,
    /// Signalled when followers advance or leave (the writer may trim the window).
    advanced: Condvar,
    /// The whole temp file mapped once (length from `Content-Length`), for zero-copy followers.
    map: std::sync::OnceLock<Bytes>,
}

/// A follower's registration; dropping it lets a pass-through fill forget the follower.
pub struct Reader {
    fill: Arc<Fill>,
    id: u64,
}

impl Reader {
    /// Records that the follower needs nothing before `pos` any more.
    fn advance(&self, pos: u64) {
        let mut t = self.fill.tail.lock().expect("tail lock");
        if let Some(p) = t.readers.get_mut(&self.id) {
            *p = pos;
        }
        drop(t);
        self.fill.advanced.notify_all();
    }
}

impl Drop for Reader {
    fn drop(&mut self) {
        self.fill
            .tail
            .lock()
            .expect("tail lock")
            .readers
            .remove(&self.id);
        self.fill.advanced.notify_all();
    }
}

impl Fill {
    fn new(digest: Digest) -> Fill {
        Fill {
            digest,
            state: watch::channel(FillState::Connecting).0,
            tail: Mutex::new(Tail::default()),
            advanced: Condvar::new(),
            map: std::sync::OnceLock::new(),
        }
    }

    /// Registers a follower starting at offset 0 (it advances as it reads).
    pub fn reader(self: &Arc<Self>) -> Reader {
        let mut t = self.tail.lock().expect("tail lock");
        let id = t.next_id;
        t.next_id += 1;
        t.readers.insert(id, 0);
        Reader {
            fill: self.clone(),
            id,
        }
    }

    /// A receiver of this fill's progress.
    pub fn subscribe(&self) -> watch::Receiver<FillState> {
        self.state.subscribe()
    }

    /// Waits until the fill has response headers (or has failed) and returns that state.
    pub async fn started(&self) -> FillState {
        let mut rx = self.subscribe();
        loop {
            let s = rx.borrow_and_update().clone();
            if !matches!(s, FillState::Connecting) {
                return s;
            }
            if rx.changed().await.is_err() {
                return FillState::Failed(Arc::new(FillError::Disk("fill task ended".into())));
            }
        }
    }

    /// The length, if known: from a running fill's headers or a finished one.
    pub fn known_len(&self) -> Option<u64> {
        match &*self.state.borrow() {
            FillState::Streaming { len, .. } => *len,
            FillState::Done { len, .. } => Some(*len),
            _ => None,
        }
    }

    /// Whether any follower is still registered.
    fn has_readers(&self) -> bool {
        !self.tail.lock().expect("tail lock").readers.is_empty()
    }

    /// Appends a pass-through chunk at `offset`.
    fn push_mem(&self, offset: u64, chunk: Bytes) {
        let mut t = self.tail.lock().expect("tail lock");
        t.buffered += chunk.len();
        t.chunks.push_back((offset, chunk));
    }

    /// Drops chunks every follower has read, then waits (bounded by the idle timeout per step)
    /// until the window is back under [`MEM_WINDOW`]; followers that stall past it are cut.
    fn wait_room(&self) {
        let mut t = self.tail.lock().expect("tail lock");
        loop {
            let min = t.readers.values().copied().min().unwrap_or(u64::MAX);
            while let Some((o, c)) = t.chunks.front() {
                if o + c.len() as u64 > min {
                    break;
                }
                t.buffered -= c.len();
                t.chunks.pop_front();
            }
            if t.buffered <= MEM_WINDOW {
                return;
            }
            let (g, res) = self
                .advanced
                .wait_timeout(t, BODY_IDLE_TIMEOUT)
                .expect("tail lock");
            t = g;
            if res.timed_out() {
                let slow: Vec<u64> = t
                    .readers
                    .iter()
                    .filter(|(_, p)| **p == min)
                    .map(|(id, _)| *id)
                    .collect();
                for id in slow {
                    t.readers.remove(&id);
                    t.cut.push(id);
                }
            }
        }
    }

    /// Reads up to `max` pass-through bytes at `pos` for follower `id`.
    fn read_mem(&self, id: u64, pos: u64, max: usize) -> Result<Option<Bytes>, BoxError> {
        let t = self.tail.lock().expect("tail lock");
        if t.cut.contains(&id) {
            return Err("client too slow for an uncached (pass-through) download".into());
        }
        let i = t.chunks.partition_point(|(o, c)| o + c.len() as u64 <= pos);
        let Some((o, c)) = t.chunks.get(i) else {
            return Ok(None);
        };
        if *o > pos {
            return Err("pass-through bytes no longer available".into());
        }
        let from = (pos - o) as usize;
        let to = (from + max).min(c.len());
        Ok(Some(c.slice(from..to)))
    }
}

/// The fills in progress, one per digest.
pub struct Fills {
    /// Running fills by digest. Held only briefly (never across I/O).
    map: Mutex<HashMap<Digest, Arc<Fill>>>,
    /// How fills behave.
    settings: FillSettings,
    /// Signalled whenever a fill leaves the map (for draining at shutdown).
    left: tokio::sync::Notify,
    /// Outcome counters (for `/metrics`).
    stats: StatCounters,
}

/// Outcome counters of fills.
#[derive(Default)]
struct StatCounters {
    committed: AtomicU64,
    uncached: AtomicU64,
    failed: AtomicU64,
    resumes: AtomicU64,
    bytes: AtomicU64,
}

/// A snapshot of the fill counters.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct FillStats {
    /// Fills verified and committed.
    pub committed: u64,
    /// Fills passed through uncached.
    pub uncached: u64,
    /// Fills that failed.
    pub failed: u64,
    /// Resumes after broken or stalled upstream downloads.
    pub resumes: u64,
    /// Blob bytes received from upstreams.
    pub bytes: u64,
}

/// How fills behave.
#[derive(Clone, Default)]
pub struct FillSettings {
    /// The disk budget (which blobs are too large to cache).
    pub budget: Budget,
    /// A fill receiving nothing for this long is aborted (default 60 s when zero).
    pub idle_timeout: Duration,
    /// Shared cap on upstream bytes per second, all fills together.
    pub bandwidth: Option<Arc<Bandwidth>>,
}

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

/// What [`Fills::join`] found.
pub enum Joined {
    /// The blob was committed meanwhile: serve it from disk.
    Hit,
    /// Follow this fill; `leader` is true when this call started it.
    Fill {
        /// The fill.
        fill: Arc<Fill>,
        /// This follower's registration.
        reader: Reader,
        /// Whether this call started the fill.
        leader: bool,
    },
}

impl Fills {
    /// No fills yet.
    pub fn new(mut settings: FillSettings) -> Fills {
        if settings.idle_timeout.is_zero() {
            settings.idle_timeout = BODY_IDLE_TIMEOUT;
        }
        Fills {
            map: Mutex::new(HashMap::new()),
            settings,
            left: tokio::sync::Notify::new(),
            stats: StatCounters::default(),
        }
    }

    /// The fill counters.
    pub fn stats(&self) -> FillStats {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        FillStats {
            committed: g(&self.stats.committed),
            uncached: g(&self.stats.uncached),
            failed: g(&self.stats.failed),
            resumes: g(&self.stats.resumes),
            bytes: g(&self.stats.bytes),
        }
    }

    /// Waits until no fill is in progress (used to drain at shutdown, so fills that have sent
    /// their bytes also get committed).
    pub async fn wait_idle(&self) {
        loop {
            let left = self.left.notified();
            tokio::pin!(left);
            left.as_mut().enable();
            if self.is_empty() {
                return;
            }
            left.await;
        }
    }

    /// The fill of `digest` in progress, if any.
    pub fn get(&self, digest: &Digest) -> Option<Arc<Fill>> {
        self.map.lock().expect("fills lock").get(digest).cloned()
    }

    /// Number of fills in progress (pass-through fills excluded).
    pub fn len(&self) -> usize {
        self.map.lock().expect("fills lock").len()
    }

    /// Whether no fill is in progress.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Joins the fill of `digest`, starting one (a task fetching from `upstream` for repository
    /// `name`) if none runs and the blob is not already committed.
    pub fn join(
        self: &Arc<Self>,
        store: &Store,
        upstream: &Arc<Upstream>,
        name: &str,
        digest: &Digest,
    ) -> Joined {
        let mut map = self.map.lock().expect("fills lock");
        if let Some(f) = map.get(digest) {
            return Joined::Fill {
                reader: f.reader(),
                fill: f.clone(),
                leader: false,
            };
        }
        // A fill may have committed between the caller's store lookup and this lock.
        if store.has_blob(digest) {
            return Joined::Hit;
        }
        let fill = Arc::new(Fill::new(digest.clone()));
        let reader = fill.reader();
        map.insert(digest.clone(), fill.clone());
        drop(map);
        let guard = FillGuard {
            fills: self.clone(),
            fill: fill.clone(),
            store: store.clone(),
            reserved: 0,
        };
        tokio::spawn(run_fill(guard, upstream.clone(), name.to_string()));
        Joined::Fill {
            fill,
            reader,
            leader: true,
        }
    }

    /// Takes a fill out of the map (it turned pass-through: later clients must not join it).
    fn detach(&self, fill: &Arc<Fill>) {
        let mut map = self.map.lock().expect("fills lock");
        if map.get(&fill.digest).is_some_and(|f| Arc::ptr_eq(f, fill)) {
            map.remove(&fill.digest);
        }
        drop(map);
        self.left.notify_waiters();
    }
}

/// Removes the fill from the map and releases its space reservation when its task ends, however
/// it ends (a panic included), and marks it failed if it never reached a final state, so
/// followers are woken, never hung.
struct FillGuard {
    fills: Arc<Fills>,
    fill: Arc<Fill>,
    store: Store,
    /// Bytes reserved against the budget for this fill.
    reserved: u64,
}

impl Drop for FillGuard {
    fn drop(&mut self) {
        self.fill.state.send_if_modified(|s| {
            if matches!(s, FillState::Done { .. } | FillState::Failed(_)) {
                false
            } else {
                *s = FillState::Failed(Arc::new(FillError::Disk(
                    "fill task ended unexpectedly".into(),
                )));
                true
            }
        });
        self.fills.detach(&self.fill);
        self.store.unreserve(self.reserved);
    }
}

async fn run_fill(mut guard: FillGuard, upstream: Arc<Upstream>, name: String) {
    let fill = guard.fill.clone();
    let digest = fill.digest.clone();
    let started = std::time::Instant::now();
    let fills = guard.fills.clone();
    let stats = &fills.stats;
    let outcome = fetch(&mut guard, &upstream, &name).await;
    match &outcome {
        Ok((_, true)) => stats.committed.fetch_add(1, Ordering::Relaxed),
        Ok((_, false)) => stats.uncached.fetch_add(1, Ordering::Relaxed),
        Err(_) => stats.failed.fetch_add(1, Ordering::Relaxed),
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
                other => tracing::warn!(%digest, error = %other, "fill failed; nothing cached"),
            }
            fill.state.send_replace(FillState::Failed(Arc::new(e)));
        }
    }
    drop(guard);
}

/// Where the writer thread puts bytes.
enum Sink {
    /// Into the cache's temp file.
    Disk(FillFile),
    /// Through the in-memory window only (not cached).
    Mem { written: u64 },
}

/// The fill proper. Returns the length and whether it was committed.
async fn fetch(
    guard: &mut FillGuard,
    upstream: &Upstream,
    name: &str,
) -> Result<(u64, bool), FillError> {
    let fill = guard.fill.clone();
    let store = guard.store.clone();
    let path = format!("/v2/{name}/blobs/{}", fill.digest);
    let resp = upstream
        .send(Method::GET, name, &path, &HeaderMap::new())
        .await?;
    if resp.status() != StatusCode::OK {
        return Err(FillError::Upstream(UpstreamError::Status {
            status: resp.status(),
            retry_after: resp.headers().get(http::header::RETRY_AFTER).cloned(),
        }));
    }
    let len = resp
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());

    let mut uncached = len.and_then(|l| {
        if !guard.fills.settings.budget.admits(l) {
            Some("is larger than max_size".to_string())
        } else if fs_space(&store).is_some_and(|fs| l > fs.available) {
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
                store.reserve(l);
                guard.reserved = l;
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
        file: file.clone(),
        mem_start,
        verified: false,
        head: None,
    });

    // Two queues on the blocking pool run beside the network reads: the writer (disk, or the
    // pass-through window; it publishes progress) and the hasher. Each holds a pool thread only
    // while it has chunks, so slow fills don't tie up the pool.
    let writer = Serial::new(
        Writer {
            sink,
            preallocate: len,
            max_size: guard.fills.settings.budget.max_size,
            fill: fill.clone(),
            fills: guard.fills.clone(),
            error: None,
        },
        WRITE_QUEUE,
    );
    let hasher = Serial::new(Hashing(Hasher::new(fill.digest.algorithm())), WRITE_QUEUE);

    let settings = guard.fills.settings.clone();
    let idle = settings.idle_timeout;
    let mut body = resp.into_body();
    let mut received: u64 = 0;
    // Resume attempts in a row that brought no new byte; progress resets the count, so a long
    // download over a flaky link survives any number of separate drops.
    let mut resumes = 0;
    let mut resumed_at = 0;
    let body_error = loop {
        let broke = match tokio::time::timeout(idle, body.frame()).await {
            // A stalled connection is as good as a dropped one: abandon it and resume.
            Err(_) => format!("no bytes for {idle:?} (idle_timeout)"),
            Ok(None) if len.is_some_and(|l| received < l) => "connection closed early".to_string(),
            Ok(None) => break None,
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
                        break Some("upstream sent more bytes than its Content-Length".into());
                    }
                    if let Some(bw) = &settings.bandwidth {
                        bw.consume(data.len()).await;
                    }
                    if received == data.len() as u64 && !data.is_empty() && file.is_some() {
                        // The first chunk: followers may send it before it reaches the disk.
                        let first = data.clone();
                        fill.state.send_modify(|s| {
                            if let FillState::Streaming { head, .. } = s {
                                *head = Some(first);
                            }
                        });
                    }
                    if !hasher.push(data.clone()).await || !writer.push(data).await {
                        break None; // the writer failed; its error is reported below
                    }
                }
                continue;
            }
        };
        // The connection dropped mid-blob: resume from where it broke.
        if received > resumed_at {
            resumes = 0;
        }
        resumed_at = received;
        resumes += 1;
        guard.fills.stats.resumes.fetch_add(1, Ordering::Relaxed);
        if resumes > MAX_RESUMES {
            break Some(format!(
                "{broke}; gave up after {MAX_RESUMES} resume attempts"
            ));
        }
        let pause = Duration::from_millis(100 << (resumes - 1)).min(Duration::from_secs(2));
        tracing::warn!(digest = %fill.digest, at = received, attempt = resumes, error = %broke, "upstream download broke off; resuming");
        tokio::time::sleep(pause).await;
        match resume(upstream, name, &path, received, len).await {
            Ok(b) => body = b,
            Err(why) => break Some(format!("{broke}; cannot resume: {why}")),
        }
    };
    let mut writer = writer
        .finish()
        .await
        .map_err(|e| FillError::Disk(format!("cache writer: {e}")))?;
    if let Some(e) = writer.error.take() {
        return Err(e);
    }
    let sink = writer.sink;
    let actual = hasher
        .finish()
        .await
        .map_err(|e| FillError::Disk(format!("hasher: {e}")))?
        .0
        .finish();
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

/// Hashes a fill's bytes (a [`Serial`] step).
struct Hashing(Hasher);

impl Step for Hashing {
    fn step(&mut self, chunk: Bytes) -> bool {
        self.0.update(&chunk);
        true
    }
}

/// Writes a fill's bytes and publishes its progress (a [`Serial`] step). On a disk write error
/// it deletes the temp file and switches to pass-through for the rest of the blob.
struct Writer {
    sink: Sink,
    /// The blob's length to reserve on disk once the first bytes are out (off the time to
    /// first byte).
    preallocate: Option<u64>,
    max_size: Option<u64>,
    fill: Arc<Fill>,
    fills: Arc<Fills>,
    /// Why the fill must stop (set when a step returns `false`).
    error: Option<FillError>,
}

/// Publishes that the fill has `w` bytes written (or passed through).
fn publish(fill: &Fill, w: u64) {
    fill.state.send_modify(|s| {
        if let FillState::Streaming { written, head, .. } = s {
            *written = w;
            // On disk now: the file serves it (and the memory goes).
            if head.as_ref().is_some_and(|h| h.len() as u64 <= w) {
                *head = None;
            }
        }
    })
}

impl Step for Writer {
    fn step(&mut self, chunk: Bytes) -> bool {
        let (fill, fills) = (&self.fill, &self.fills);
        if let Sink::Disk(f) = &mut self.sink {
            match f.write(&chunk) {
                Ok(()) if self.max_size.is_some_and(|m| f.written() > m) => {
                    // No Content-Length, and it has outgrown the budget: stop caching.
                    let e = std::io::Error::other("blob is larger than max_size");
                    let w = f.written();
                    to_pass_through(&mut self.sink, fill, fills, &e);
                    // The chunk is on disk already; followers read it from the file.
                    publish(fill, w);
                    return true;
                }
                Ok(()) => {
                    // Wake followers after every chunk (they may be waiting for the first bytes).
                    publish(fill, f.written());
                    if let Some(l) = self.preallocate.take() {
                        if let Err(e) = f.preallocate(l) {
                            to_pass_through(&mut self.sink, fill, fills, &e);
                        }
                    }
                    return true;
                }
                Err(e) => to_pass_through(&mut self.sink, fill, fills, &e), // this chunk goes below
            }
        }
        if let Sink::Mem { written } = &mut self.sink {
            if !fill.has_readers() {
                // Uncached and nobody reading: nothing to gain from the rest of the download.
                self.error = Some(FillError::Body {
                    written: *written,
                    reason: "every client left an uncached (pass-through) download".into(),
                });
                return false;
            }
            let at = *written;
            *written += chunk.len() as u64;
            let w = *written;
            fill.push_mem(at, chunk);
            publish(fill, w);
            fill.wait_room();
        }
        true
    }
}

/// A disk error: delete the temp file and pass the rest of the blob through uncached.
fn to_pass_through(sink: &mut Sink, fill: &Arc<Fill>, fills: &Fills, e: &std::io::Error) {
    let Sink::Disk(f) = std::mem::replace(sink, Sink::Mem { written: 0 }) else {
        return;
    };
    let written = f.abandon();
    tracing::warn!(digest = %fill.digest, reason = %e, written,
        "not caching this blob; passing the rest of it through uncached");
    fills.detach(fill);
    fill.state.send_modify(|s| {
        if let FillState::Streaming { mem_start, .. } = s {
            *mem_start = Some(written);
        }
    });
    *sink = Sink::Mem { written };
}

/// Streams bytes `[start, end)` of the fill into `tx` (end `None` = to the end of the object),
/// following the fill's progress. Ends with an error item if the fill fails, so the response is
/// cut short. Returns when done or when the client has gone.
pub async fn follow(
    fill: Arc<Fill>,
    reader: Reader,
    start: u64,
    end: Option<u64>,
    zero_copy: bool,
    tx: mpsc::Sender<Result<Bytes, BoxError>>,
) {
    let mut rx = fill.subscribe();
    let mut pos = start;
    reader.advance(pos);
    loop {
        let state = rx.borrow_and_update().clone();
        let (avail, file, mem_start, done, head) = match state {
            FillState::Connecting => (0, None, None, None, None),
            FillState::Failed(e) => {
                let _ = tx.send(Err(format!("fill failed: {e}").into())).await;
                return;
            }
            FillState::Streaming {
                len,
                written,
                file,
                mem_start,
                verified,
                head,
            } => {
                // The first chunk may still be in memory only.
                let head = head.filter(|_| mem_start.is_none());
                let have = written.max(head.as_ref().map_or(0, |h| h.len() as u64));
                // Hold back the object's last byte until the digest is verified. With no
                // Content-Length any byte may be the last, so one is always held back.
                let avail = match (verified, len) {
                    (true, _) => have,
                    (false, Some(l)) => have.min(l.saturating_sub(1)),
                    (false, None) => have.saturating_sub(1),
                };
                (avail, file, mem_start, None, head)
            }
            FillState::Done {
                len,
                file,
                mem_start,
            } => (len, file, mem_start, Some(len), None),
        };
        // Committed: the rest comes from mmap windows of the immutable file.
        if let (Some(len), None, Some(file)) = (done, mem_start, &file) {
            let end = end.unwrap_or(len).min(len);
            let mut body = crate::body::zero_copy::MmapBody::new(file.clone(), pos, end, zero_copy);
            drop(reader);
            while let Some(frame) = body.frame().await {
                let item = frame.map(|f| f.into_data().unwrap_or_default());
                if tx.send(item).await.is_err() {
                    return;
                }
            }
            return;
        }
        let limit = end.map_or(avail, |e| e.min(avail));
        if pos < limit {
            let want = (limit - pos).min(FOLLOW_CHUNK as u64) as usize;
            let chunk = match (&head, mem_start) {
                (Some(h), _) if pos < h.len() as u64 => {
                    let to = (pos + want as u64).min(h.len() as u64);
                    Ok(Some(h.slice(pos as usize..to as usize)))
                }
                (_, Some(m)) if pos >= m => fill.read_mem(reader.id, pos, want),
                _ => {
                    let stop = mem_start.map_or(limit, |m| m.min(limit));
                    match file {
                        // The written prefix of the temp file never changes: map it (and so
                        // send it with sendfile, like a hit).
                        Some(f) => {
                            let n = ((stop - pos) as usize).min(want) as u64;
                            match fill.map.get() {
                                Some(m) if zero_copy && pos + n <= m.len() as u64 => {
                                    Ok(Some(m.slice(pos as usize..(pos + n) as usize)))
                                }
                                _ => crate::body::zero_copy::chunk(&f, pos, pos + n, zero_copy)
                                    .map(Some)
                                    .map_err(Into::into),
                            }
                        }
                        None => Err("fill has no file".into()),
                    }
                }
            };
            match chunk {
                Ok(Some(b)) => {
                    pos += b.len() as u64;
                    reader.advance(pos);
                    if tx.send(Ok(b)).await.is_err() {
                        return;
                    }
                    continue;
                }
                Ok(None) if done.is_some() => {
                    let _ = tx.send(Err("pass-through bytes missing".into())).await;
                    return;
                }
                Ok(None) => {}
                Err(e) => {
                    let _ = tx.send(Err(e)).await;
                    return;
                }
            }
        } else if let Some(len) = done {
            if pos >= end.unwrap_or(len).min(len) {
                return;
            }
        }
        if rx.changed().await.is_err() {
            let _ = tx.send(Err("fill ended without a result".into())).await;
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn streaming(len: u64, written: u64, head: &'static [u8]) -> FillState {
        FillState::Streaming {
            len: Some(len),
            written,
            file: None,
            mem_start: None,
            verified: false,
            head: Some(Bytes::from_static(head)),
        }
    }

    async fn next(rx: &mut mpsc::Receiver<Result<Bytes, BoxError>>) -> Option<Bytes> {
        match tokio::time::timeout(Duration::from_millis(200), rx.recv()).await {
            Ok(Some(Ok(b))) => Some(b),
            Ok(Some(Err(e))) => panic!("follower failed: {e}"),
            Ok(None) | Err(_) => None,
        }
    }

    /// The first chunk goes out from memory before any byte is on disk (time to first byte),
    /// and nothing past it is sent until the writer has more.
    #[tokio::test]
    async fn first_chunk_is_served_before_it_reaches_the_disk() {
        let digest: Digest = format!("sha256:{}", "ab".repeat(32)).parse().unwrap();
        let fill = Arc::new(Fill::new(digest));
        fill.state.send_replace(streaming(10, 0, b"0123"));
        let (tx, mut rx) = mpsc::channel(4);
        let task = tokio::spawn(follow(fill.clone(), fill.reader(), 0, None, false, tx));
        assert_eq!(next(&mut rx).await.as_deref(), Some(&b"0123"[..]));
        assert_eq!(next(&mut rx).await, None, "nothing beyond the head yet");
        task.abort();
    }

    /// A blob that fits in its first chunk still holds its last byte back until verified.
    #[tokio::test]
    async fn head_holds_back_the_last_byte_until_verified() {
        let digest: Digest = format!("sha256:{}", "cd".repeat(32)).parse().unwrap();
        let fill = Arc::new(Fill::new(digest));
        fill.state.send_replace(streaming(4, 0, b"0123"));
        let (tx, mut rx) = mpsc::channel(4);
        let task = tokio::spawn(follow(fill.clone(), fill.reader(), 0, None, false, tx));
        assert_eq!(next(&mut rx).await.as_deref(), Some(&b"012"[..]));
        assert_eq!(
            next(&mut rx).await,
            None,
            "the last byte waits for verification"
        );
        fill.state.send_modify(|s| {
            if let FillState::Streaming { verified, .. } = s {
                *verified = true;
            }
        });
        assert_eq!(next(&mut rx).await.as_deref(), Some(&b"3"[..]));
        task.abort();
    }
}
