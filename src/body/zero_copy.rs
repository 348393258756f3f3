//! Zero-copy hits: blob bytes go from the page cache to the socket without a copy through a
//! user-space buffer.
//!
//! Committed (immutable) cache files — and the already-written part of a fill's temp file — are
//! mapped window by window and handed to hyper as `Bytes`. Every mapping is registered by
//! address. [`ZeroCopyStream`], the socket type the server gives hyper, looks up each buffer
//! hyper asks it to write: when the buffer lies inside a registered mapping it calls
//! `sendfile(2)` on the file at the matching offset instead of `write(2)`, so the kernel moves
//! page-cache pages to the socket and the mapping itself is never touched (no page faults, no
//! resident memory). Any other buffer (headers, TLS records, bytes hyper copied) is written
//! normally — the bytes are the same either way, so correctness never depends on the lookup.
//!
//! This is the only module with `unsafe` (the `mmap` call).
#![allow(unsafe_code)]

use std::collections::BTreeMap;
use std::fs::File;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, LazyLock, RwLock};
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};
use tokio::net::TcpStream;

use crate::body::budget::{holding, CopyBudget, Permits};
use crate::body::BoxError;

/// How a response's file bytes may leave: mapped slices that [`ZeroCopyStream`] sends with
/// `sendfile(2)` (plain TCP, HTTP/1), or `pread` copies (TLS, HTTP/2 framing, in-process
/// readers), where a file truncated under us must fail one response rather than fault the
/// process.
#[derive(Debug, Clone)]
pub enum Delivery {
    /// Mapped slices, sent with `sendfile`.
    Sendfile,
    /// Copies read with `pread`, each holding its bytes of the connection's copy budget until
    /// sent.
    Copy(CopyBudget),
}

impl Delivery {
    /// A copying delivery with a budget of its own (a reader that is not a client connection,
    /// such as prefetch).
    pub fn copy() -> Delivery {
        Delivery::Copy(CopyBudget::connection())
    }
}

/// Bytes mapped per window (a multiple of every page size in use).
pub const WINDOW: u64 = 4 << 20;

/// Bytes sent with `sendfile(2)` since the start (for tests and metrics).
static SENDFILE_BYTES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Bytes sent with `sendfile(2)` since the process started.
pub fn sendfile_bytes() -> u64 {
    SENDFILE_BYTES.load(std::sync::atomic::Ordering::Relaxed)
}

/// A live mapping: its length, the file and the file offset of its first byte.
struct MapInfo {
    len: usize,
    file: Arc<File>,
    offset: u64,
}

/// Live mappings by start address.
static REGISTRY: LazyLock<RwLock<BTreeMap<usize, MapInfo>>> =
    LazyLock::new(|| RwLock::new(BTreeMap::new()));

/// A mapping that stays registered for as long as it lives.
struct Registered {
    map: memmap2::Mmap,
}

impl AsRef<[u8]> for Registered {
    fn as_ref(&self) -> &[u8] {
        &self.map
    }
}

impl Drop for Registered {
    fn drop(&mut self) {
        // Unregister before the mapping goes (the field drops after this).
        REGISTRY
            .write()
            .expect("mmap registry")
            .remove(&(self.map.as_ptr() as usize));
    }
}

/// Maps bytes `[start, end)` of `file` read-only and returns them as `Bytes` (which keeps the
/// mapping alive while any slice of it lives). An empty range gives an empty `Bytes`.
///
/// `file` must be a committed cache file, or a fill's temp file with at least `end` bytes
/// written (fills only append, so written bytes never change).
///
/// Errors: the `mmap(2)` error.
pub fn map_range(file: &Arc<File>, start: u64, end: u64) -> io::Result<Bytes> {
    if end <= start {
        return Ok(Bytes::new());
    }
    // mmap offsets must be page-aligned.
    let aligned = start - start % 4096;
    let len =
        usize::try_from(end - aligned).map_err(|_| io::Error::other("range too large to map"))?;
    // SAFETY: the mapped bytes never change while mapped. Committed files are never written again
    // (fills write a temp file and rename it into place; eviction and healing only unlink, which
    // keeps the inode alive for open mappings), and a fill's temp file is only appended to, and
    // only its already-written prefix is mapped. The length was checked against the file's
    // (digest-verified) size before mapping, so no access goes past the end of the file. The one
    // way bytes could change underneath is another process writing into the cache directory by
    // hand, which the operator docs forbid.
    let map = unsafe {
        memmap2::MmapOptions::new()
            .offset(aligned)
            .len(len)
            .map(&**file)?
    };
    // No `madvise(MADV_WILLNEED)`: `sendfile` reads ahead on its own. Asking for the whole
    // window ahead cost 4–6% of a warm hit's server CPU (the page-cache walk) and made a hit
    // read from disk slower (BENCHMARKS.md "Hits: sendfile and readahead").
    let skip = (start - aligned) as usize;
    Ok(register(map, file, aligned).slice(skip..))
}

/// Registers `map` (of `file`, starting at file offset `offset`) and returns it as `Bytes` that
/// unregister the mapping when the last slice goes.
fn register(map: memmap2::Mmap, file: &Arc<File>, offset: u64) -> Bytes {
    REGISTRY.write().expect("mmap registry").insert(
        map.as_ptr() as usize,
        MapInfo {
            len: map.len(),
            file: file.clone(),
            offset,
        },
    );
    Bytes::from_owner(Registered { map })
}

/// Maps `[0, len)` of a fill's temp file once, for the whole fill, while the file is still
/// being written: followers slice their chunks out of it instead of mapping each chunk (an
/// `mmap` and `munmap` per chunk per follower). Nothing is ever read through the mapping
/// beyond the written prefix: slices of it only go to [`ZeroCopyStream`], which sends them
/// with `sendfile`.
///
/// Errors: the `mmap(2)` error; `len` of 0 gives an empty `Bytes`.
pub fn map_fill(file: &Arc<File>, len: u64) -> io::Result<Bytes> {
    if len == 0 {
        return Ok(Bytes::new());
    }
    let len = usize::try_from(len).map_err(|_| io::Error::other("range too large to map"))?;
    // SAFETY: as in `map_range`: a fill's temp file is only appended to, and only slices of its
    // already-written prefix are handed out (by `fill::follow`), so no mapped byte that is read
    // ever changes or lies past the end of the file. Pages past the written prefix are mapped
    // but never touched (mapping past EOF is allowed; touching it would fault).
    let map = unsafe { memmap2::MmapOptions::new().len(len).map(&**file)? };
    Ok(register(map, file, 0))
}

/// Reads bytes `[start, end)` of `file` into a buffer (`pread`). For connections where the bytes
/// would be copied in user space anyway (TLS, HTTP/2 framing): a file truncated or unreadable
/// under us then gives an I/O error for that response instead of a SIGBUS for the process.
///
/// The buffer is never zeroed first (`pread` into the spare capacity of a new one): zeroing
/// 256 KiB per chunk cost about 5% of a TLS hit's CPU (`perf`, BENCHMARKS.md).
///
/// Errors: the read error, or `UnexpectedEof` when the file is shorter than `end`.
pub fn read_range(file: &File, start: u64, end: u64) -> io::Result<Bytes> {
    let n = usize::try_from(end.saturating_sub(start))
        .map_err(|_| io::Error::other("range too large"))?;
    let mut buf: Vec<u8> = Vec::with_capacity(n);
    while buf.len() < n {
        let at = start + buf.len() as u64;
        // Reads into the spare capacity and grows the length by what was read.
        match rustix::io::pread(file, rustix::buffer::spare_capacity(&mut buf), at) {
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(_) => {}
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    // The capacity may exceed `n`, and a read may go past `end`.
    buf.truncate(n);
    Ok(Bytes::from(buf))
}

/// Bytes `[start, end)` of `file` for a response: a registered mapping (sent with `sendfile`)
/// for [`Delivery::Sendfile`], else a `pread` copy.
///
/// Errors: the `mmap(2)` or read error.
pub fn chunk(file: &Arc<File>, start: u64, end: u64, delivery: &Delivery) -> io::Result<Bytes> {
    match delivery {
        Delivery::Sendfile => map_range(file, start, end),
        Delivery::Copy(_) => read_range(file, start, end),
    }
}

/// The file and file offset behind `buf`, when `buf` lies entirely inside a live mapping.
fn lookup(buf: &[u8]) -> Option<(Arc<File>, u64)> {
    let addr = buf.as_ptr() as usize;
    let reg = REGISTRY.read().expect("mmap registry");
    let (start, info) = reg.range(..=addr).next_back()?;
    let end_in_map = (addr - start).checked_add(buf.len())?;
    (end_in_map <= info.len).then(|| (info.file.clone(), info.offset + (addr - start) as u64))
}

/// Bytes read per step when not zero-copy.
const READ_CHUNK: u64 = 256 * 1024;

/// A response body over bytes `[start, end)` of a committed file: mapped [`WINDOW`] bytes at a
/// time (zero-copy), or read [`READ_CHUNK`] bytes at a time.
pub struct MmapBody {
    /// The committed file.
    file: Arc<File>,
    /// Next byte to send.
    pos: u64,
    /// One past the last byte to send.
    end: u64,
    /// Whether the connection sends mapped bytes with `sendfile` (plain TCP, HTTP/1).
    delivery: Delivery,
    /// Permits being waited for, for the next copied chunk.
    waiting: Option<PermitFuture>,
}

/// The wait for copy-budget permits.
type PermitFuture = Pin<Box<dyn std::future::Future<Output = Permits> + Send>>;

impl MmapBody {
    /// A body of bytes `[start, end)` of `file`.
    pub fn new(file: Arc<File>, start: u64, end: u64, delivery: Delivery) -> MmapBody {
        MmapBody {
            file,
            pos: start,
            end,
            delivery,
            waiting: None,
        }
    }
}

impl Body for MmapBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if self.pos >= self.end {
            return Poll::Ready(None);
        }
        let step = match self.delivery {
            Delivery::Sendfile => WINDOW,
            Delivery::Copy(_) => READ_CHUNK,
        };
        let next = ((self.pos / step) + 1) * step;
        let stop = next.min(self.end);
        // A copy waits for its bytes of the copy budget first.
        let permit = match &self.delivery {
            Delivery::Sendfile => None,
            Delivery::Copy(budget) => {
                let (budget, n) = (budget.clone(), (stop - self.pos) as usize);
                let waiting = self
                    .waiting
                    .get_or_insert_with(|| Box::pin(async move { budget.reserve(n).await }));
                let permit = ready!(waiting.as_mut().poll(cx));
                self.waiting = None;
                Some(permit)
            }
        };
        match chunk(&self.file, self.pos, stop, &self.delivery) {
            Ok(b) => {
                self.pos = stop;
                let b = match permit {
                    Some(p) => holding(b, p),
                    None => b,
                };
                Poll::Ready(Some(Ok(Frame::data(b))))
            }
            Err(e) => {
                self.pos = self.end;
                Poll::Ready(Some(Err(e.into())))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.pos >= self.end
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.end - self.pos)
    }
}

/// Marks a request that arrived on a [`ZeroCopyStream`] (a request extension): mapped bytes
/// of its response go out with `sendfile` when the protocol is HTTP/1 (HTTP/2 frames are copied).
#[derive(Debug, Clone, Copy)]
pub struct ZeroCopyConnection;

/// A TCP stream whose writes of mapped cache bytes become `sendfile(2)` calls.
pub struct ZeroCopyStream {
    inner: TcpStream,
}

impl ZeroCopyStream {
    /// Wraps an accepted connection.
    pub fn new(inner: TcpStream) -> ZeroCopyStream {
        ZeroCopyStream { inner }
    }

    fn poll_sendfile(
        &self,
        cx: &mut Context<'_>,
        file: &File,
        mut offset: u64,
        len: usize,
    ) -> Poll<io::Result<usize>> {
        loop {
            ready!(self.inner.poll_write_ready(cx))?;
            let sent = self.inner.try_io(Interest::WRITABLE, || {
                rustix::fs::sendfile(&self.inner, file, Some(&mut offset), len)
                    .map_err(io::Error::from)
            });
            match sent {
                Ok(0) if len > 0 => {
                    // The file is shorter than its mapping claims: never expected; write no
                    // wrong bytes, fail the connection.
                    return Poll::Ready(Err(io::Error::other("sendfile: unexpected end of file")));
                }
                Ok(n) => {
                    SENDFILE_BYTES.fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
                    return Poll::Ready(Ok(n));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

impl AsyncRead for ZeroCopyStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for ZeroCopyStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if let Some((file, offset)) = lookup(buf) {
            return self.poll_sendfile(cx, &file, offset, buf.len());
        }
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        // Plain buffers before the first mapped one go out with one writev; a mapped one first
        // in line goes out with sendfile. Partial writes are normal for AsyncWrite.
        let first_mapped = bufs
            .iter()
            .position(|b| !b.is_empty() && lookup(b).is_some());
        match first_mapped {
            Some(0) => {
                let (file, offset) = lookup(&bufs[0]).expect("checked above");
                self.poll_sendfile(cx, &file, offset, bufs[0].len())
            }
            Some(i) => Pin::new(&mut self.inner).poll_write_vectored(cx, &bufs[..i]),
            None => Pin::new(&mut self.inner).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::time::Duration;

    /// A fill's whole-length mapping is made before its bytes are written; slices of the
    /// written prefix are found with the right file offsets (nothing is read through it).
    #[test]
    fn fill_mapping_covers_bytes_written_later() {
        let mut f = tempfile::tempfile().unwrap();
        f.write_all(b"abc").unwrap();
        let reader = Arc::new(f.try_clone().unwrap());
        let m = map_fill(&reader, 3 * 4096).unwrap();
        assert_eq!(m.len(), 3 * 4096);
        f.write_all(&vec![1u8; 8000]).unwrap();
        let s = m.slice(5..8000);
        let (file, off) = lookup(&s).unwrap();
        assert_eq!(off, 5);
        let mut out = [0u8; 4];
        use std::os::unix::fs::FileExt;
        file.read_exact_at(&mut out, off).unwrap();
        assert_eq!(&out, b"\x01\x01\x01\x01");
        assert!(map_fill(&reader, 0).unwrap().is_empty());
    }

    /// `read_range` gives exactly bytes `[start, end)` (never zeroed-buffer leftovers), and
    /// `UnexpectedEof` when the file ends before `end`.
    #[test]
    fn read_range_reads_exactly_the_range() {
        let mut f = tempfile::tempfile().unwrap();
        let data: Vec<u8> = (0..700_000u32).map(|i| (i % 251) as u8 + 1).collect();
        f.write_all(&data).unwrap();
        for (a, b) in [(0, 0), (0, 1), (5, 4096), (1000, 263_144), (0, 700_000)] {
            let got = read_range(&f, a, b).unwrap();
            assert_eq!(&got[..], &data[a as usize..b as usize], "range {a}..{b}");
        }
        let e = read_range(&f, 699_000, 700_001).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof);
    }

    #[test]
    fn mappings_are_found_by_address_until_dropped() {
        let mut f = tempfile::tempfile().unwrap();
        f.write_all(&vec![7u8; 3 * 4096 + 10]).unwrap();
        let f = Arc::new(f);
        let b = map_range(&f, 5000, 3 * 4096 + 10).unwrap();
        assert_eq!(b.len(), 3 * 4096 + 10 - 5000);
        let (_, off) = lookup(&b).unwrap();
        assert_eq!(off, 5000);
        let (_, off) = lookup(&b[100..200]).unwrap();
        assert_eq!(off, 5100);
        let copy = b.to_vec();
        assert!(lookup(&copy).is_none(), "a copy is not a mapping");
        let ptr = b.as_ptr();
        drop(b);
        let reg = REGISTRY.read().unwrap();
        assert!(reg
            .range(..=(ptr as usize))
            .next_back()
            .is_none_or(|(s, i)| (ptr as usize) >= s + i.len));
    }

    /// Mapping a hit's window reads nothing ahead: pages the kernel has dropped stay dropped
    /// until `sendfile` reads them (no `MADV_WILLNEED` readahead of the whole window).
    #[test]
    fn mapping_a_window_reads_nothing_ahead() {
        let len = 1usize << 20;
        let mut f = tempfile::tempfile().unwrap();
        f.write_all(&vec![3u8; len]).unwrap();
        f.sync_all().unwrap();
        rustix::fs::fadvise(&f, 0, None, rustix::fs::Advice::DontNeed).unwrap();
        // SAFETY: the test's own unlinked file; nothing writes it while it is mapped, and
        // nothing is read through the mapping (mincore only asks which pages are resident).
        let probe = unsafe { memmap2::MmapOptions::new().len(len).map(&f).unwrap() };
        let resident = || {
            let mut vec = vec![0u8; len / 4096];
            // SAFETY: `probe` maps `len` bytes; `vec` has one byte per 4 KiB page of them.
            let rc = unsafe { libc::mincore(probe.as_ptr() as *mut _, len, vec.as_mut_ptr()) };
            assert_eq!(rc, 0, "mincore: {}", io::Error::last_os_error());
            vec.iter().filter(|b| *b & 1 == 1).count()
        };
        if resident() > 0 {
            eprintln!("skipped: this file system keeps the test file's pages (tmpfs?)");
            return;
        }
        let f = Arc::new(f);
        let b = map_range(&f, 0, len as u64).unwrap();
        assert_eq!(b.len(), len);
        // Readahead completes in the background (here within 50 ms): give it time to show.
        std::thread::sleep(Duration::from_millis(300));
        assert_eq!(resident(), 0, "mapping the window read pages ahead");
    }

    /// Copied chunks not yet sent hold the copy budget: with it spent, the next copy waits
    /// until a chunk is dropped (sent).
    #[tokio::test]
    async fn copies_wait_for_the_copy_budget() {
        use http_body_util::BodyExt;
        let f = file_of(1 << 20);
        let total = Arc::new(tokio::sync::Semaphore::new(512 << 10));
        // Three connections, each with a share larger than the total.
        let body = || {
            let budget = CopyBudget::new(1 << 20, total.clone(), 512 << 10);
            MmapBody::new(f.clone(), 0, 1 << 20, Delivery::Copy(budget))
        };
        let (mut a, mut b, mut c) = (body(), body(), body());
        let first = a.frame().await.unwrap().unwrap();
        let _second = b.frame().await.unwrap().unwrap();
        assert_eq!(total.available_permits(), 0);
        let wait = Duration::from_millis(50);
        assert!(
            tokio::time::timeout(wait, c.frame()).await.is_err(),
            "no budget: waits"
        );
        drop(first);
        let third = tokio::time::timeout(wait, c.frame()).await;
        assert!(
            matches!(third, Ok(Some(Ok(_)))),
            "a sent chunk gives its budget back"
        );
        // Sendfile deliveries copy nothing and need no budget.
        let mut z = MmapBody::new(f.clone(), 0, 1 << 20, Delivery::Sendfile);
        assert!(tokio::time::timeout(wait, z.frame()).await.is_ok());
    }

    /// A connection that has spent its share waits without taking from the total: another
    /// connection's copies go on.
    #[tokio::test]
    async fn a_connection_is_held_to_its_share() {
        use http_body_util::BodyExt;
        let f = file_of(4 << 20);
        let total = Arc::new(tokio::sync::Semaphore::new(4 << 20));
        let hog = CopyBudget::new(512 << 10, total.clone(), 4 << 20);
        let other = CopyBudget::new(512 << 10, total.clone(), 4 << 20);
        let mut held = Vec::new();
        let mut bodies: Vec<_> = (0..4)
            .map(|_| MmapBody::new(f.clone(), 0, 4 << 20, Delivery::Copy(hog.clone())))
            .collect();
        let wait = Duration::from_millis(50);
        for b in &mut bodies[..2] {
            held.push(b.frame().await.unwrap().unwrap());
        }
        assert!(
            tokio::time::timeout(wait, bodies[2].frame()).await.is_err(),
            "its share spent: the connection waits"
        );
        assert_eq!(total.available_permits(), (4 << 20) - (512 << 10));
        let mut o = MmapBody::new(f.clone(), 0, 4 << 20, Delivery::Copy(other));
        assert!(
            matches!(tokio::time::timeout(wait, o.frame()).await, Ok(Some(Ok(_)))),
            "another connection is not held back"
        );
    }

    fn file_of(len: usize) -> Arc<File> {
        let mut f = tempfile::tempfile().unwrap();
        f.write_all(&vec![3u8; len]).unwrap();
        Arc::new(f)
    }
}
