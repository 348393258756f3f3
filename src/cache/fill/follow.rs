//! A follower: one client's stream of a fill, read from the temp file (or the first chunk in
//! memory, or the pass-through window) at the client's own pace, then from the committed file.

use std::sync::Arc;

use bytes::Bytes;
use http_body_util::BodyExt;
use tokio::sync::mpsc;

use super::{Fill, FillState, Reader, FOLLOW_CHUNK};

/// Most bytes a follower copies per step when it cannot use `sendfile` (TLS, HTTP/2).
const COPY_CHUNK: usize = 256 << 10;
use crate::body::budget;
use crate::body::zero_copy::{Delivery, MmapBody};
use crate::body::BoxError;

/// Streams bytes `[start, end)` of the fill into `tx` (end `None` = to the end of the object),
/// following the fill's progress. Ends with an error item if the fill fails, so the response is
/// cut short. Returns when done or when the client has gone.
pub async fn follow(
    fill: Arc<Fill>,
    reader: Reader,
    start: u64,
    end: Option<u64>,
    delivery: Delivery,
    tx: mpsc::Sender<Result<Bytes, BoxError>>,
) {
    let copy_budget = match &delivery {
        Delivery::Sendfile => None,
        Delivery::Copy(b) => Some(b.clone()),
    };
    let zero_copy = copy_budget.is_none();
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
            let mut body = MmapBody::new(file.clone(), pos, end, delivery.clone());
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
            // Copies are smaller steps and hold copy-budget permits until sent.
            let step = if zero_copy { FOLLOW_CHUNK } else { COPY_CHUNK };
            let want = (limit - pos).min(step as u64) as usize;
            let mut permit = match &copy_budget {
                None => None,
                Some(b) => Some(b.reserve(want).await),
            };
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
                                _ => crate::body::zero_copy::chunk(&f, pos, pos + n, &delivery)
                                    .map(|b| match permit.take() {
                                        Some(p) => Some(budget::holding(b, p)),
                                        None => Some(b),
                                    })
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
    use crate::reference::Digest;
    use std::time::Duration;

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

    /// A fill in `state` and a follower of it from byte 0 (its stream and its task).
    fn follow_from_start(
        state: FillState,
    ) -> (
        Arc<Fill>,
        mpsc::Receiver<Result<Bytes, BoxError>>,
        tokio::task::JoinHandle<()>,
    ) {
        let digest: Digest = format!("sha256:{}", "ab".repeat(32)).parse().unwrap();
        let fill = Arc::new(Fill::new(digest));
        fill.state.send_replace(state);
        let (tx, rx) = mpsc::channel(4);
        let task = tokio::spawn(follow(
            fill.clone(),
            fill.reader(),
            0,
            None,
            Delivery::copy(),
            tx,
        ));
        (fill, rx, task)
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
        let (_fill, mut rx, task) = follow_from_start(streaming(10, 0, b"0123"));
        assert_eq!(next(&mut rx).await.as_deref(), Some(&b"0123"[..]));
        assert_eq!(next(&mut rx).await, None, "nothing beyond the head yet");
        task.abort();
    }

    /// A blob that fits in its first chunk still holds its last byte back until verified.
    #[tokio::test]
    async fn head_holds_back_the_last_byte_until_verified() {
        let (fill, mut rx, task) = follow_from_start(streaming(4, 0, b"0123"));
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
