//! The log's writer: what the background log thread (`tracing_appender::non_blocking`) writes
//! lines through.
//!
//! That thread waits on its queue, writes every line waiting there, then flushes. Writing each
//! line as it comes means one `write(2)` per access-log line, and a thread woken for every
//! request or two: in the manifest-hit benchmark the two were 10% of regcache's CPU samples, more
//! than formatting the lines (BENCHMARKS.md, "manifest hits and the access log").
//! [`PacedWriter`] gathers the lines into one buffer, writes it at the flush, and then lets the
//! thread rest for [`PACE`] so that the next lines gather in the queue instead of waking it one
//! by one. A line reaches stderr at most about
//! `PACE` after it was logged; an idle mirror's thread sleeps in its queue as before.

use std::io::{self, BufWriter, Write};
use std::time::Duration;

/// The longest a written-out batch holds the writer thread back before it looks at its queue
/// again: 5 ms (at most ~200 wake-ups a second under load).
pub const PACE: Duration = Duration::from_millis(5);

/// The buffer lines gather in between flushes, bytes (64 KiB); a full buffer is written out
/// at once, whole lines unless one line is longer than it.
pub const BUFFER: usize = 64 * 1024;

/// A writer that buffers lines and, after a flush that wrote something, sleeps [`PACE`].
pub struct PacedWriter<W: Write> {
    inner: BufWriter<W>,
    pace: Duration,
}

impl<W: Write> PacedWriter<W> {
    /// `inner` (stderr) written through a [`BUFFER`]-byte buffer, paced by [`PACE`].
    pub fn new(inner: W) -> Self {
        Self::with_pace(inner, PACE)
    }

    /// As [`PacedWriter::new`] with another pace (tests: zero).
    pub fn with_pace(inner: W, pace: Duration) -> Self {
        PacedWriter {
            inner: BufWriter::with_capacity(BUFFER, inner),
            pace,
        }
    }
}

impl<W: Write> Write for PacedWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.inner.write(buf)
    }

    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        self.inner.write_all(buf)
    }

    /// Writes out what is buffered; then, if that was anything, rests for the pace. Errors: the
    /// inner writer's.
    fn flush(&mut self) -> io::Result<()> {
        let wrote = !self.inner.buffer().is_empty();
        self.inner.flush()?;
        if wrote && !self.pace.is_zero() {
            std::thread::sleep(self.pace);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};
    use std::time::Instant;

    /// Records each `write` call it gets.
    #[derive(Clone, Default)]
    struct Calls(Arc<Mutex<Vec<Vec<u8>>>>);

    impl Write for Calls {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().push(buf.to_vec());
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn lines_gather_into_one_write_at_the_flush() {
        let calls = Calls::default();
        let mut w = PacedWriter::with_pace(calls.clone(), Duration::ZERO);
        for i in 0..100 {
            w.write_all(format!("line {i}\n").as_bytes()).unwrap();
        }
        assert!(
            calls.0.lock().unwrap().is_empty(),
            "nothing before the flush"
        );
        w.flush().unwrap();
        let got = calls.0.lock().unwrap().clone();
        assert_eq!(got.len(), 1, "one write for 100 lines");
        let want: String = (0..100).map(|i| format!("line {i}\n")).collect();
        assert_eq!(got[0], want.as_bytes());
    }

    #[test]
    fn a_full_buffer_is_written_without_waiting_for_the_flush() {
        let calls = Calls::default();
        let mut w = PacedWriter::with_pace(calls.clone(), Duration::ZERO);
        let line = vec![b'x'; 1000];
        for _ in 0..(BUFFER / 1000 + 1) {
            w.write_all(&line).unwrap();
        }
        let got = calls.0.lock().unwrap().clone();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].len() % 1000, 0, "whole lines only");
    }

    #[test]
    fn a_flush_that_wrote_rests_and_an_empty_one_does_not() {
        let mut w = PacedWriter::with_pace(Calls::default(), Duration::from_millis(30));
        let t = Instant::now();
        w.flush().unwrap();
        assert!(
            t.elapsed() < Duration::from_millis(30),
            "nothing written: no rest"
        );
        w.write_all(b"a line\n").unwrap();
        let t = Instant::now();
        w.flush().unwrap();
        assert!(t.elapsed() >= Duration::from_millis(30));
    }
}
