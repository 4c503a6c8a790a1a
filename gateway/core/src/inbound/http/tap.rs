//! The inbound listener's tap: it keeps the most recent bytes the caller sent (bounded), so the service can ask
//! what hyper's parsing hides about a request head as it arrived (a fragment, a Content-Length hyper removed:
//! `meshgw_proto::raw_head`, where the reading is done and fuzzed). It also counts the bytes each way, the time
//! of the last one, and on HTTP/2 feeds the peer's frames to the control-frame budget.

use std::collections::VecDeque;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use meshgw_proto::raw_head;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// What a connection of small requests keeps allocated.
const SMALL: usize = 4096;

struct Ring {
    bytes: VecDeque<u8>,
    cap: usize,
    /// Where the search for the next request line starts (index into `bytes`).
    cursor: usize,
    on: bool,
    /// False on an HTTP/2 connection: bytes are counted, not kept (no request line to look up there).
    keep: bool,
    /// HTTP/2: the peer's frames, counted against the control-frame budget (meshgw_proto::h2_frames).
    scan: Option<meshgw_proto::h2_frames::Scanner>,
    flooded: bool,
    /// Bytes read and written while the connection speaks HTTP (a tunnel counts its own in `relay`).
    rx: u64,
    tx: u64,
    last: tokio::time::Instant,
}

#[derive(Clone)]
pub struct Recent(Arc<Mutex<Ring>>);

impl Recent {
    /// `cap` must hold a whole head plus what hyper may read ahead of it (its read buffer bound).
    pub fn new(cap: usize) -> Recent {
        Recent(Arc::new(Mutex::new(Ring {
            bytes: VecDeque::new(),
            cap,
            cursor: 0,
            on: true,
            keep: true,
            scan: None,
            flooded: false,
            rx: 0,
            tx: 0,
            last: tokio::time::Instant::now(),
        })))
    }

    /// Keeps (or counts) what was read; true once the peer is over its HTTP/2 control-frame budget.
    fn record(&self, data: &[u8]) -> bool {
        let mut r = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if !r.on {
            return false;
        }
        r.rx += data.len() as u64;
        r.last = tokio::time::Instant::now();
        if let Some(s) = r.scan.as_mut() {
            s.feed(data);
            if s.over_budget() {
                r.flooded = true;
            }
        }
        if !r.keep {
            return r.flooded;
        }
        r.bytes.extend(data);
        let over = r.bytes.len().saturating_sub(r.cap);
        if over > 0 {
            r.bytes.drain(..over);
            r.cursor = r.cursor.saturating_sub(over);
        }
        false
    }

    fn wrote(&self, n: usize) {
        let mut r = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if r.on {
            r.tx += n as u64;
            r.last = tokio::time::Instant::now();
        }
    }

    /// (bytes read, bytes written) while the connection spoke HTTP.
    pub fn counts(&self) -> (u64, u64) {
        let r = self.0.lock().unwrap_or_else(|p| p.into_inner());
        (r.rx, r.tx)
    }

    /// When a byte last went either way.
    pub fn last_activity(&self) -> tokio::time::Instant {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).last
    }

    /// HTTP/2 frames its heads itself (HPACK): nothing to look up; counts, activity and the frame scan.
    pub fn http2(&self) {
        let mut r = self.0.lock().unwrap_or_else(|p| p.into_inner());
        r.keep = false;
        r.bytes = VecDeque::new();
        r.scan = Some(meshgw_proto::h2_frames::Scanner::server());
    }

    /// Which of h2's bounds an ENHANCE_YOUR_CALM stood for, from the frames this peer sent.
    pub fn calm_reason(&self) -> &'static str {
        self.0
            .lock()
            .ok()
            .and_then(|r| r.scan.as_ref().map(meshgw_proto::h2_frames::calm_reason))
            .unwrap_or("stream_error_flood")
    }

    /// The peer went over its control-frame budget: its connection is being cut.
    pub fn flooded(&self) -> bool {
        self.0.lock().map(|r| r.flooded).unwrap_or(true)
    }

    /// An upgraded connection carries no more requests: stop copying its bytes.
    pub fn stop(&self) {
        let mut r = self.0.lock().unwrap_or_else(|p| p.into_inner());
        r.on = false;
        r.bytes = VecDeque::new();
    }

    /// What hyper's parsing hides about the head of `method target` as received: whether the target went on
    /// with `#`, and (asked only with `Transfer-Encoding`) whether the head also had a `Content-Length`, which
    /// hyper removes before the service sees it (l7-security.md §4, §6.16 want 400 for both). Requests are
    /// looked up in the order hyper hands them over, each search starting after the previous request's head.
    pub fn lookup(&self, method: &str, target: &str, want_length: bool) -> Raw {
        let mut r = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let cursor = r.cursor.min(r.bytes.len());
        let hay = r.bytes.make_contiguous();
        let Some(hay) = hay.get(cursor..) else {
            return Raw::default();
        };
        let Some(f) = raw_head::find(hay, method.as_bytes(), target.as_bytes(), want_length) else {
            return Raw::default();
        };
        // What came before the next request line is of no more use: the rest of this head goes too, so the
        // next lookup starts where the next request does (after a body-less request, at the ring's start)
        // instead of scanning this head again. The ring stays small between requests (an upload's bytes
        // otherwise stay allocated for the connection's life).
        let used = (cursor + f.used).min(r.bytes.len());
        r.bytes.drain(..used);
        r.cursor = 0;
        let (len, cap) = (r.bytes.len(), r.bytes.capacity());
        if cap > SMALL && len < cap / 4 {
            r.bytes.shrink_to(SMALL.max(len));
        }
        Raw {
            fragment: f.fragment,
            content_length: f.content_length,
        }
    }
}

#[derive(Default, Debug, Clone, Copy, PartialEq, Eq)]
pub struct Raw {
    pub fragment: bool,
    pub content_length: bool,
}

pub struct Tap<T> {
    inner: T,
    recent: Recent,
}

impl<T> Tap<T> {
    pub fn new(inner: T, recent: Recent) -> Tap<T> {
        Tap { inner, recent }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Tap<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = r {
            let flooded = buf
                .filled()
                .get(before..)
                .is_some_and(|new| self.recent.record(new));
            if flooded {
                // Ends hyper's connection at once (counted by the serve loop as control_frame_flood).
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::ConnectionAborted,
                    "HTTP/2 control frame flood",
                )));
            }
        }
        r
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Tap<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = r {
            self.recent.wrote(n);
        }
        r
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(n)) = r {
            self.recent.wrote(n);
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
#[path = "tap_test.rs"]
mod tests;
