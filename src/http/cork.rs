//! A TLS connection's socket writes, gathered over one poll of its connection task.
//!
//! Under HTTP/2 every 16 KiB DATA frame (what Go clients such as dockerd and containerd accept)
//! is written and flushed on its own: through rustls that is two TLS records and one `writev`
//! per frame, four times the socket writes HTTP/1.1 makes for the same bytes (rustls takes 64
//! KiB of plaintext per write there). [`Corked`] sits under rustls: while the connection is
//! polled inside [`Streams::drive`](super::streams::Streams::drive) its writes go into a buffer
//! (written out once [`CORK_LIMIT`] bytes wait) and its flushes wait; the drive loop writes
//! what is left with [`CorkHandle::poll_drain`] before the task goes to sleep, so no byte waits
//! longer than the poll that produced it. Outside the drive loop (the TLS handshake) writes and
//! flushes go straight to the socket.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;

/// Bytes gathered before they are written out within the poll (64 KiB: what rustls puts in
/// one write for HTTP/1.1).
pub const CORK_LIMIT: usize = 64 << 10;

/// A TCP stream whose writes inside the drive loop are gathered (see the module docs).
pub struct Corked {
    read: OwnedReadHalf,
    write: CorkHandle,
}

/// The write side of a [`Corked`] stream, shared with the drive loop that drains it.
#[derive(Clone)]
pub struct CorkHandle(Arc<Mutex<WriteSide>>);

struct WriteSide {
    half: OwnedWriteHalf,
    /// Bytes accepted; `pending[sent..]` are not yet written to the socket. Given back when
    /// the drive loop has written it all, so an idle connection holds no buffer.
    pending: Vec<u8>,
    sent: usize,
    /// A write error met while draining, returned by the next write or flush.
    failed: Option<io::ErrorKind>,
    /// Socket writes made (for tests).
    socket_writes: u64,
}

impl Corked {
    /// Wraps `stream`; the handle is for the loop that drives its connection.
    pub fn new(stream: TcpStream) -> (Corked, CorkHandle) {
        let (read, half) = stream.into_split();
        let write = CorkHandle(Arc::new(Mutex::new(WriteSide {
            half,
            pending: Vec::new(),
            sent: 0,
            failed: None,
            socket_writes: 0,
        })));
        (
            Corked {
                read,
                write: write.clone(),
            },
            write,
        )
    }
}

impl CorkHandle {
    /// Writes every pending byte to the socket, then gives the buffer back. `Pending` (the
    /// waker registered for writability) while the socket is full; a write error is kept for
    /// the stream's next write and the pending bytes dropped.
    pub fn poll_drain(&self, cx: &mut Context<'_>) -> Poll<()> {
        let mut w = self.0.lock().expect("cork");
        let r = w.poll_drain(cx);
        if let Poll::Ready(Err(e)) = &r {
            w.failed = Some(e.kind());
        }
        if r.is_ready() {
            (w.pending, w.sent) = (Vec::new(), 0);
        }
        r.map(|_| ())
    }

    /// Waits until every pending byte is written (or writing failed).
    pub async fn drain(&self) {
        std::future::poll_fn(|cx| self.poll_drain(cx)).await
    }
}

impl WriteSide {
    fn check(&self) -> io::Result<()> {
        match self.failed {
            Some(kind) => Err(io::Error::new(kind, "an earlier socket write failed")),
            None => Ok(()),
        }
    }

    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.check()?;
        while self.sent < self.pending.len() {
            let n = ready!(Pin::new(&mut self.half).poll_write(cx, &self.pending[self.sent..]))?;
            self.socket_writes += 1;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.sent += n;
        }
        // Keeps the allocation for the rest of this poll's writes.
        self.pending.clear();
        self.sent = 0;
        Poll::Ready(Ok(()))
    }

    /// Takes `bufs` whole into the buffer (after writing it out when full), or writes them
    /// straight when not gathering.
    fn poll_write(
        &mut self,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.check()?;
        if !super::streams::in_drive() {
            ready!(self.poll_drain(cx))?;
            let n = ready!(Pin::new(&mut self.half).poll_write_vectored(cx, bufs))?;
            self.socket_writes += 1;
            return Poll::Ready(Ok(n));
        }
        if self.pending.len() >= CORK_LIMIT {
            ready!(self.poll_drain(cx))?;
        }
        let mut n = 0;
        for b in bufs {
            self.pending.extend_from_slice(b);
            n += b.len();
        }
        Poll::Ready(Ok(n))
    }
}

impl AsyncRead for Corked {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.read).poll_read(cx, buf)
    }
}

impl AsyncWrite for Corked {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let mut w = self.write.0.lock().expect("cork");
        w.poll_write(cx, &[io::IoSlice::new(buf)])
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let mut w = self.write.0.lock().expect("cork");
        w.poll_write(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut w = self.write.0.lock().expect("cork");
        if super::streams::in_drive() {
            // The drive loop writes it out before the task sleeps.
            return Poll::Ready(w.check());
        }
        ready!(w.poll_drain(cx))?;
        Pin::new(&mut w.half).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut w = self.write.0.lock().expect("cork");
        ready!(w.poll_drain(cx))?;
        Pin::new(&mut w.half).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::streams::Streams;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn pair() -> (Corked, CorkHandle, TcpStream) {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (server, _) = l.accept().await.unwrap();
        let (c, h) = Corked::new(server);
        (c, h, client)
    }

    fn writes(h: &CorkHandle) -> u64 {
        h.0.lock().unwrap().socket_writes
    }

    /// Inside the drive loop, many small writes and flushes of one poll leave in one socket
    /// write, made before the loop waits (here: while the connection waits for ever).
    #[tokio::test]
    async fn writes_of_one_poll_are_gathered_and_drained_before_waiting() {
        let (mut io, h, mut peer) = pair().await;
        let mut wrote = false;
        let conn = std::future::poll_fn(move |cx| {
            if !wrote {
                wrote = true;
                for i in 0..100u8 {
                    let chunk = [i; 100];
                    assert!(matches!(
                        Pin::new(&mut io).poll_write(cx, &chunk),
                        Poll::Ready(Ok(100))
                    ));
                    assert!(matches!(
                        Pin::new(&mut io).poll_flush(cx),
                        Poll::Ready(Ok(()))
                    ));
                }
            }
            Poll::<()>::Pending
        });
        let conn = std::pin::pin!(conn);
        let mut streams = Streams::corked(Some(h.clone()));
        let driving =
            tokio::time::timeout(std::time::Duration::from_millis(300), streams.drive(conn));
        let mut got = vec![0u8; 10_000];
        let (_, read) = tokio::join!(driving, peer.read_exact(&mut got));
        read.unwrap();
        let want: Vec<u8> = (0..100u8).flat_map(|i| [i; 100]).collect();
        assert_eq!(got, want, "every byte, in order");
        assert_eq!(
            writes(&h),
            1,
            "100 writes and flushes of one poll: one socket write"
        );
    }

    /// Outside the drive loop (the TLS handshake) writes and flushes go straight out.
    #[tokio::test]
    async fn outside_the_drive_loop_writes_go_straight_out() {
        let (mut io, h, mut peer) = pair().await;
        io.write_all(b"hello").await.unwrap();
        io.flush().await.unwrap();
        let mut got = [0u8; 5];
        peer.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"hello");
        assert_eq!(writes(&h), 1);
    }

    /// A reader slower than the writer: the buffer stays bounded by its limit plus one
    /// write (the writer waits), every byte arrives in order, and bytes still gathered when
    /// the connection ends are written by `CorkHandle::drain`; the buffer is then given back.
    #[tokio::test]
    async fn a_slow_reader_gets_every_byte_and_the_last_are_drained() {
        let (io, h, mut peer) = pair().await;
        const TOTAL: usize = 8 << 20;
        let h2 = h.clone();
        let conn = async move {
            let mut io = io;
            let block: Vec<u8> = (0..16_384u32).map(|i| (i % 253) as u8).collect();
            let mut sent = 0;
            while sent < TOTAL {
                io.write_all(&block).await.unwrap();
                io.flush().await.unwrap();
                sent += block.len();
                let pending = {
                    let w = h2.0.lock().unwrap();
                    w.pending.len() - w.sent
                };
                assert!(pending <= CORK_LIMIT + block.len(), "pending {pending}");
            }
            // Ends with the last bytes still gathered: `drain` below writes them.
        };
        let conn = std::pin::pin!(conn);
        let mut streams = Streams::corked(Some(h.clone()));
        let reader = async {
            let mut got = Vec::with_capacity(TOTAL);
            let mut buf = vec![0u8; 4096];
            while got.len() < TOTAL {
                let n = peer.read(&mut buf).await.unwrap();
                assert!(n > 0, "early EOF at {}", got.len());
                got.extend_from_slice(&buf[..n]);
                if got.len() % (1 << 20) < 4096 {
                    tokio::time::sleep(std::time::Duration::from_millis(2)).await;
                }
            }
            got
        };
        let writer = async {
            streams.drive(conn).await;
            h.drain().await;
        };
        let ((), got) = tokio::join!(writer, reader);
        assert_eq!(got.len(), TOTAL);
        assert!(got
            .chunks(16_384)
            .all(|c| c.iter().enumerate().all(|(i, b)| *b == (i % 253) as u8)));
        let w = h.0.lock().unwrap();
        assert!(
            w.pending.is_empty() && w.pending.capacity() == 0,
            "drained and given back"
        );
    }
}
