//! Envoy refuses any `#` in a request target with 400 (`http_reject_path_with_fragment`, l7-security.md §1.2
//! step 1, §6.3), but the `http` crate under hyper silently cuts the fragment off while parsing the target, so
//! the service never sees it. This tap keeps the most recent bytes the caller sent (bounded) and the service
//! looks its request line up there: `METHOD SP target` followed by `#` is a fragment. The same lookup finds a
//! `Content-Length` that hyper removed because `Transfer-Encoding` came with it (Envoy: 400).
//!
//! Security does not rest on this: without it the fragment-free target is what is both authorized and forwarded
//! (l7-security.md §6.7). It makes the answer Envoy's (400) instead of forwarding the target without fragment.

use std::collections::VecDeque;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

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
        let Some(at) = find_line(hay, method.as_bytes(), target.as_bytes()) else {
            return Raw::default();
        };
        let line_end = at + method.len() + 1 + target.len();
        let rest = hay.get(line_end..).unwrap_or_default();
        let head = head_len(rest);
        let raw = Raw {
            fragment: rest.first() == Some(&b'#'),
            content_length: want_length
                && head_has_length(rest.get(..head.unwrap_or(rest.len())).unwrap_or_default()),
        };
        // What came before the next request line is of no more use: the rest of this head goes too, so the
        // next lookup starts where the next request does (after a body-less request, at the ring's start)
        // instead of scanning this head again. The ring stays small between requests (an upload's bytes
        // otherwise stay allocated for the connection's life).
        let used = (cursor + line_end + head.unwrap_or(0)).min(r.bytes.len());
        r.bytes.drain(..used);
        r.cursor = 0;
        let (len, cap) = (r.bytes.len(), r.bytes.capacity());
        if cap > SMALL && len < cap / 4 {
            r.bytes.shrink_to(SMALL.max(len));
        }
        raw
    }
}

/// Where `method SP target` starts in `hay`, followed by `#` or a space (a longer target is another request).
/// Candidates are the places holding the method's first byte, so a head that is not the request line costs one
/// byte scan, not a comparison at every offset.
fn find_line(hay: &[u8], method: &[u8], target: &[u8]) -> Option<usize> {
    let first = *method.first()?;
    let len = method.len() + 1 + target.len();
    let mut from = 0;
    loop {
        let at = from + hay.get(from..)?.iter().position(|&b| b == first)?;
        let line = hay.get(at..=at + len)?; // too short here means too short at every later offset too
        let (m, rest) = line.split_at(method.len());
        if m == method
            && rest.first() == Some(&b' ')
            && rest.get(1..=target.len()) == Some(target)
            && matches!(line.last(), Some(b'#' | b' '))
        {
            return Some(at);
        }
        from = at + 1;
    }
}

/// The length of what is left of a head in `rest` (the request line's tail, the fields, the empty line), if
/// its end is there. Lines end with LF, optionally after CR, as hyper's parser (httparse) takes them.
fn head_len(rest: &[u8]) -> Option<usize> {
    let mut start = 0;
    loop {
        let nl = start + rest.get(start..)?.iter().position(|&b| b == b'\n')?;
        let line = rest.get(start..nl)?;
        if start > 0 && (line.is_empty() || line == b"\r") {
            return Some(nl + 1);
        }
        start = nl + 1;
    }
}

#[derive(Default, Debug, Clone, Copy, PartialEq, Eq)]
pub struct Raw {
    pub fragment: bool,
    pub content_length: bool,
}

/// A `content-length:` line in the head's rest (names carry no whitespace before the colon: hyper refuses
/// them).
fn head_has_length(head: &[u8]) -> bool {
    head.split(|&b| b == b'\n').any(|line| {
        line.len() >= 15
            && line
                .get(..15)
                .is_some_and(|n| n.eq_ignore_ascii_case(b"content-length:"))
    })
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
