//! Fills and the streaming tee.
//!
//! A *fill* is the one upstream download of a blob. It writes the upstream body into a temp file
//! and hashes it, each in its own `Serial` queue on the blocking pool beside the network reads,
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
//! ([`MEM_WINDOW`]) that followers read from; the download waits (asynchronously, holding no
//! thread) for the slowest follower rather than growing the window, so memory stays bounded and
//! every follower still gets the complete, digest-checked stream. Such a fill leaves the coalescing map, so later clients start afresh.
//!
//! After commit, followers switch to mmap windows of the (now immutable) file.
//!
//! # Layout
//! - this module: [`Fills`] (the map, `join`, the guard that cleans up however a fill ends),
//!   [`Fill`] (its published state, the pass-through window, the followers' positions).
//! - `download`: the upstream GET, admission, the read loop with resume, verify and commit.
//! - `writer`: the writer and hasher steps, pass-through on disk errors.
//! - `follow`: one follower's stream.

mod download;
pub(crate) mod follow;
mod writer;

use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::watch;

use crate::body::BoxError;
use crate::cache::eviction::Budget;
use crate::cache::store::Store;
use crate::reference::Digest;
use crate::upstream::{Upstream, UpstreamError, BODY_IDLE_TIMEOUT};

/// Most bytes a follower maps from the temp file per step.
const FOLLOW_CHUNK: usize = 4 << 20;
/// Most resume attempts (`Range: bytes=N-`) in a row without progress after the upstream
/// connection drops or stalls mid-blob.
pub const MAX_RESUMES: u32 = 5;
/// Bytes of progress since the last resume that reset the count of resumes in a row.
pub const RESUME_PROGRESS: u64 = 64 << 10;
/// Most resume attempts of one fill in all.
pub const MAX_FILL_RESUMES: u32 = 50;
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

/// Why fills fail, as `/metrics` labels them: `upstream_error` (the request failed or
/// answered an error before any byte), `upstream_body` (the body broke off, stalled past
/// `idle_timeout` or stayed under `min_fill_rate` beyond the resume budget, or ended short),
/// `digest_mismatch`, `disk`.
pub const FILL_FAILURE_REASONS: [&str; 4] =
    ["upstream_error", "upstream_body", "digest_mismatch", "disk"];

impl FillError {
    /// This failure's index in [`FILL_FAILURE_REASONS`].
    pub fn reason(&self) -> usize {
        match self {
            FillError::Upstream(_) => 0,
            FillError::Body { .. } => 1,
            FillError::Verify(_) => 2,
            FillError::Disk(_) => 3,
        }
    }
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
    /// Signalled when followers advance or leave (the download may trim the window).
    advanced: tokio::sync::Notify,
    /// The whole temp file mapped once (length from `Content-Length`), for zero-copy followers.
    map: std::sync::OnceLock<Bytes>,
    /// When the fill started.
    started: tokio::time::Instant,
}

/// One fill in progress, as `regcache status` shows it.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct FillProgress {
    /// The blob, `sha256:<64 hex>`.
    pub digest: String,
    /// Bytes received so far.
    pub received: u64,
    /// The blob's length in bytes, when the upstream gave it.
    pub length: Option<u64>,
    /// Seconds since the fill started.
    pub seconds: f64,
    /// Mean rate since the start, in bytes per second.
    pub bytes_per_second: u64,
}

/// A follower's registration; dropping it lets a pass-through fill forget the follower.
pub struct Reader {
    fill: Arc<Fill>,
    id: u64,
}

impl Reader {
    /// Records that the follower needs nothing before `pos` any more.
    pub(crate) fn advance(&self, pos: u64) {
        let mut t = self.fill.tail.lock().expect("tail lock");
        if let Some(p) = t.readers.get_mut(&self.id) {
            *p = pos;
        }
        drop(t);
        self.fill.advanced.notify_waiters();
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
        self.fill.advanced.notify_waiters();
    }
}

impl Fill {
    fn new(digest: Digest) -> Fill {
        Fill {
            digest,
            state: watch::channel(FillState::Connecting).0,
            tail: Mutex::new(Tail::default()),
            advanced: tokio::sync::Notify::new(),
            map: std::sync::OnceLock::new(),
            started: tokio::time::Instant::now(),
        }
    }

    /// Where this fill stands.
    pub fn progress(&self) -> FillProgress {
        let (received, length) = match &*self.state.borrow() {
            FillState::Connecting | FillState::Failed(_) => (0, None),
            FillState::Streaming { len, written, .. } => (*written, *len),
            FillState::Done { len, .. } => (*len, Some(*len)),
        };
        let seconds = self.started.elapsed().as_secs_f64();
        FillProgress {
            digest: self.digest.to_string(),
            received,
            length,
            seconds: (seconds * 10.0).round() / 10.0,
            bytes_per_second: (received as f64 / seconds.max(0.001)) as u64,
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

    /// Waits until every byte has arrived and hashed to the digest (the commit may follow).
    ///
    /// Errors: the fill failed (a digest mismatch included).
    pub async fn verified(&self) -> Result<(), Arc<FillError>> {
        let mut rx = self.subscribe();
        loop {
            match &*rx.borrow_and_update() {
                FillState::Streaming { verified: true, .. } | FillState::Done { .. } => {
                    return Ok(())
                }
                FillState::Failed(e) => return Err(e.clone()),
                _ => {}
            }
            if rx.changed().await.is_err() {
                return Err(Arc::new(FillError::Disk("fill task ended".into())));
            }
        }
    }

    /// Whether the fill has failed.
    fn has_failed(&self) -> bool {
        matches!(&*self.state.borrow(), FillState::Failed(_))
    }

    /// Whether the fill passes (some of) its bytes through uncached.
    pub fn is_pass_through(&self) -> bool {
        matches!(
            &*self.state.borrow(),
            FillState::Streaming {
                mem_start: Some(_),
                ..
            } | FillState::Done {
                mem_start: Some(_),
                ..
            }
        )
    }

    /// Waits for upstream's response headers: the length from its `Content-Length`, if given.
    ///
    /// Errors: the fill failed before any byte.
    pub async fn len(&self) -> Result<Option<u64>, Arc<FillError>> {
        match self.started().await {
            FillState::Failed(e) => Err(e),
            FillState::Streaming { len, .. } => Ok(len),
            FillState::Done { len, .. } => Ok(Some(len)),
            FillState::Connecting => Ok(None),
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

    /// Waits until the pass-through window is back under [`MEM_WINDOW`] (dropping the chunks
    /// every follower has read); a follower that keeps it full for the idle timeout is cut.
    /// Async: a stalled reader holds no thread (the network reader waits here, not the writer).
    pub(super) async fn room(&self) {
        loop {
            let advanced = self.advanced.notified();
            tokio::pin!(advanced);
            advanced.as_mut().enable();
            let min = {
                let mut t = self.tail.lock().expect("tail lock");
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
                min
            };
            if tokio::time::timeout(BODY_IDLE_TIMEOUT, advanced)
                .await
                .is_err()
            {
                let mut t = self.tail.lock().expect("tail lock");
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
    /// Failures by [`FILL_FAILURE_REASONS`].
    failed_by: [AtomicU64; 4],
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
    /// Failures by reason, in [`FILL_FAILURE_REASONS`] order.
    pub failed_by: [u64; 4],
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
    pub bandwidth: Option<Arc<crate::upstream::bandwidth::Bandwidth>>,
    /// A fill receiving fewer bytes per second than this over an `idle_timeout` window is
    /// treated as stalled and resumed (0: no floor).
    pub min_rate: u64,
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

    /// How long a fill may receive nothing before it is resumed.
    pub fn idle_timeout(&self) -> Duration {
        self.settings.idle_timeout
    }

    /// The disk budget fills are admitted against.
    pub fn budget(&self) -> Budget {
        self.settings.budget
    }

    /// The fills in progress, oldest first.
    pub fn progress(&self) -> Vec<FillProgress> {
        let fills: Vec<Arc<Fill>> = self
            .map
            .lock()
            .expect("fills lock")
            .values()
            .cloned()
            .collect();
        let mut p: Vec<FillProgress> = fills.iter().map(|f| f.progress()).collect();
        p.sort_by(|a, b| b.seconds.total_cmp(&a.seconds));
        p
    }

    /// The fill counters.
    pub fn stats(&self) -> FillStats {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        FillStats {
            committed: g(&self.stats.committed),
            uncached: g(&self.stats.uncached),
            failed: g(&self.stats.failed),
            failed_by: std::array::from_fn(|i| g(&self.stats.failed_by[i])),
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
        // A fill that has just failed may still be in the map for a moment (it leaves when its
        // task ends): a new request starts afresh rather than inheriting that failure.
        if let Some(f) = map.get(digest).filter(|f| !f.has_failed()) {
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
        };
        tokio::spawn(download::run_fill(
            guard,
            upstream.clone(),
            name.to_string(),
        ));
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

/// Removes the fill from the map when its task ends, however it ends (a panic included), and
/// marks it failed if it never reached a final state, so followers are woken, never hung. (The
/// space reservation is the writer's: see `writer::Reservation`.)
struct FillGuard {
    fills: Arc<Fills>,
    fill: Arc<Fill>,
    store: Store,
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
    }
}
