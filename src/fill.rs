//! Fills and the streaming tee.
//!
//! A *fill* is the one upstream download of a blob. It writes the upstream body into a temp file
//! (hashing as it goes, on a blocking writer thread) and publishes its progress through a
//! `tokio::sync::watch`. Every client asking for that digest while the fill runs — the first one
//! included — is a *follower*: it reads the temp file from its own offset up to the published
//! progress, at its own pace. So:
//! - there is exactly one upstream fetch per digest however many clients ask (coalescing);
//! - the first client gets headers as soon as upstream's arrive and bytes as they are written;
//! - a client that disconnects or reads slowly never cancels or slows the fill;
//! - a Range request can be served from the fill as soon as its bytes are there;
//! - followers hold back the object's last byte until the digest is verified and the file
//!   committed, so a fill that fails verification always ends its clients' streams short.
//!
//! After commit the followers switch to an mmap of the (now immutable) file.

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::{Arc, Mutex};

use bytes::{Bytes, BytesMut};
use http::header::CONTENT_LENGTH;
use http::{HeaderMap, Method, StatusCode};
use http_body_util::BodyExt;
use tokio::sync::{mpsc, watch};

use crate::body::BoxError;
use crate::reference::Digest;
use crate::store::{CommitError, Store};
use crate::upstream::{error_chain, Upstream, UpstreamError, BODY_IDLE_TIMEOUT};

/// Bytes read from the temp file per follower step.
const FOLLOW_CHUNK: usize = 256 * 1024;
/// Size of the mmap slices handed to hyper once the file is committed.
const MAP_SLICE: usize = 4 * 1024 * 1024;
/// Chunks buffered between the network reader and the disk writer.
const WRITE_QUEUE: usize = 64;

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
    /// A disk error in regcache's own cache.
    #[error("cache write failed: {0}")]
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
        /// Bytes written to the temp file so far.
        written: u64,
        /// Read handle on the temp file.
        file: Arc<File>,
    },
    /// Verified and committed.
    Done {
        /// Total length in bytes.
        len: u64,
        /// Read handle on the committed file.
        file: Arc<File>,
    },
    /// Failed; nothing was committed.
    Failed(Arc<FillError>),
}

/// One in-progress fill.
pub struct Fill {
    /// The blob being filled.
    pub digest: Digest,
    /// Progress; followers subscribe to it.
    state: watch::Sender<FillState>,
}

impl Fill {
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
}

/// The fills in progress, one per digest.
#[derive(Default)]
pub struct Fills {
    /// Running fills by digest. Held only briefly (never across I/O but one `stat`).
    map: Mutex<HashMap<Digest, Arc<Fill>>>,
}

/// What [`Fills::join`] found.
pub enum Joined {
    /// The blob was committed meanwhile: serve it from disk.
    Hit,
    /// Follow this fill; `leader` is true when this call started it.
    Fill { fill: Arc<Fill>, leader: bool },
}

impl Fills {
    /// The fill of `digest` in progress, if any.
    pub fn get(&self, digest: &Digest) -> Option<Arc<Fill>> {
        self.map.lock().expect("fills lock").get(digest).cloned()
    }

    /// Number of fills in progress.
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
                fill: f.clone(),
                leader: false,
            };
        }
        // A fill may have committed between the caller's store lookup and this lock.
        if store.has_blob(digest) {
            return Joined::Hit;
        }
        let (tx, _) = watch::channel(FillState::Connecting);
        let fill = Arc::new(Fill {
            digest: digest.clone(),
            state: tx,
        });
        map.insert(digest.clone(), fill.clone());
        drop(map);
        let guard = FillGuard {
            fills: self.clone(),
            fill: fill.clone(),
        };
        tokio::spawn(run_fill(
            guard,
            store.clone(),
            upstream.clone(),
            name.to_string(),
        ));
        Joined::Fill { fill, leader: true }
    }
}

/// Removes the fill from the map when its task ends, however it ends (a panic included), and
/// marks it failed if it never reached a final state, so followers are woken, never hung.
struct FillGuard {
    fills: Arc<Fills>,
    fill: Arc<Fill>,
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
        let mut map = self.fills.map.lock().expect("fills lock");
        if map
            .get(&self.fill.digest)
            .is_some_and(|f| Arc::ptr_eq(f, &self.fill))
        {
            map.remove(&self.fill.digest);
        }
    }
}

async fn run_fill(guard: FillGuard, store: Store, upstream: Arc<Upstream>, name: String) {
    let fill = guard.fill.clone();
    let digest = fill.digest.clone();
    let started = std::time::Instant::now();
    let result = fetch_into_cache(&fill, &store, &upstream, &name).await;
    match result {
        Ok(len) => {
            tracing::info!(%digest, bytes = len, ms = started.elapsed().as_millis() as u64, "fill committed");
        }
        Err(e) => {
            let e = Arc::new(e);
            match &*e {
                FillError::Upstream(UpstreamError::Status { status, .. })
                    if *status == StatusCode::NOT_FOUND =>
                {
                    tracing::info!(%digest, "fill: upstream has no such blob")
                }
                other => tracing::warn!(%digest, error = %other, "fill failed; nothing cached"),
            }
            fill.state.send_replace(FillState::Failed(e));
        }
    }
    drop(guard);
}

/// The fill proper. Returns the committed length.
async fn fetch_into_cache(
    fill: &Fill,
    store: &Store,
    upstream: &Upstream,
    name: &str,
) -> Result<u64, FillError> {
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
    let mut file = store
        .begin_fill(&fill.digest)
        .map_err(|e| FillError::Disk(e.to_string()))?;
    let reader = Arc::new(file.reader().map_err(|e| FillError::Disk(e.to_string()))?);
    fill.state.send_replace(FillState::Streaming {
        len,
        written: 0,
        file: reader.clone(),
    });

    // Disk writer: a blocking thread that writes, hashes and publishes progress.
    let (chunk_tx, mut chunk_rx) = mpsc::channel::<Bytes>(WRITE_QUEUE);
    let state = fill.state.clone();
    let writer = tokio::task::spawn_blocking(move || -> Result<crate::store::FillFile, String> {
        while let Some(first) = chunk_rx.blocking_recv() {
            file.write(&first).map_err(|e| e.to_string())?;
            // Write whatever else is queued before waking followers.
            while let Ok(more) = chunk_rx.try_recv() {
                file.write(&more).map_err(|e| e.to_string())?;
            }
            let w = file.written();
            state.send_modify(|s| {
                if let FillState::Streaming { written, .. } = s {
                    *written = w;
                }
            });
        }
        Ok(file)
    });

    let mut body = resp.into_body();
    let mut received: u64 = 0;
    let mut body_error = None;
    loop {
        match tokio::time::timeout(BODY_IDLE_TIMEOUT, body.frame()).await {
            Err(_) => {
                body_error = Some(format!("no bytes for {BODY_IDLE_TIMEOUT:?}"));
                break;
            }
            Ok(None) => break,
            Ok(Some(Err(e))) => {
                body_error = Some(error_chain(&e));
                break;
            }
            Ok(Some(Ok(frame))) => {
                if let Ok(data) = frame.into_data() {
                    received += data.len() as u64;
                    if len.is_some_and(|l| received > l) {
                        body_error =
                            Some("upstream sent more bytes than its Content-Length".into());
                        break;
                    }
                    if chunk_tx.send(data).await.is_err() {
                        break; // the writer failed; its error is reported below
                    }
                }
            }
        }
    }
    drop(chunk_tx);
    let file = writer
        .await
        .map_err(|e| FillError::Disk(e.to_string()))?
        .map_err(FillError::Disk)?;
    if let Some(reason) = body_error {
        return Err(FillError::Body {
            written: file.written(),
            reason,
        });
    }
    if let Some(l) = len {
        if file.written() != l {
            return Err(FillError::Body {
                written: file.written(),
                reason: format!("body ended before its Content-Length {l}"),
            });
        }
    }
    let committed = tokio::task::spawn_blocking(move || file.commit())
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
        file: reader,
    });
    Ok(total)
}

/// Streams bytes `[start, end)` of the fill into `tx` (end `None` = to the end of the object),
/// following the fill's progress. Ends with an error item if the fill fails, so the response is
/// cut short. Returns when done or when the client has gone.
pub async fn follow(
    mut rx: watch::Receiver<FillState>,
    start: u64,
    end: Option<u64>,
    tx: mpsc::Sender<Result<Bytes, BoxError>>,
) {
    let mut pos = start;
    loop {
        let state = rx.borrow_and_update().clone();
        match state {
            FillState::Connecting => {}
            FillState::Failed(e) => {
                let _ = tx.send(Err(format!("fill failed: {e}").into())).await;
                return;
            }
            FillState::Streaming { len, written, file } => {
                // Hold back the object's last byte until it is verified and committed.
                // With no Content-Length any byte may be the last, so one is always held back.
                let avail = match len {
                    Some(l) => written.min(l.saturating_sub(1)),
                    None => written.saturating_sub(1),
                };
                let limit = end.map_or(avail, |e| e.min(avail));
                if pos < limit {
                    match read_at(file, pos, (limit - pos).min(FOLLOW_CHUNK as u64) as usize).await
                    {
                        Ok(b) => {
                            pos += b.len() as u64;
                            if tx.send(Ok(b)).await.is_err() {
                                return;
                            }
                            continue;
                        }
                        Err(e) => {
                            let _ = tx.send(Err(e.into())).await;
                            return;
                        }
                    }
                }
            }
            FillState::Done { len, file } => {
                let end = end.unwrap_or(len).min(len);
                if pos < end {
                    let map = match crate::mmap::map_file(&file, len) {
                        Ok(m) => m,
                        Err(e) => {
                            let _ = tx.send(Err(e.into())).await;
                            return;
                        }
                    };
                    let mut p = pos as usize;
                    while p < end as usize {
                        let q = (p + MAP_SLICE).min(end as usize);
                        if tx.send(Ok(map.slice(p..q))).await.is_err() {
                            return;
                        }
                        p = q;
                    }
                }
                return;
            }
        }
        if rx.changed().await.is_err() {
            let _ = tx.send(Err("fill ended without a result".into())).await;
            return;
        }
    }
}

async fn read_at(file: Arc<File>, pos: u64, n: usize) -> std::io::Result<Bytes> {
    tokio::task::spawn_blocking(move || {
        let mut buf = BytesMut::zeroed(n);
        let mut got = 0;
        while got < n {
            let k = file.read_at(&mut buf[got..], pos + got as u64)?;
            if k == 0 {
                break;
            }
            got += k;
        }
        if got == 0 {
            return Err(std::io::Error::other("fill file shorter than its progress"));
        }
        buf.truncate(got);
        Ok(buf.freeze())
    })
    .await
    .map_err(std::io::Error::other)?
}
