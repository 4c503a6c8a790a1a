//! Bodies both ways, streamed with back-pressure (hyper polls one frame at a time; nothing is gathered
//! whole). The one exception is the bounded replay buffer (gateway/http/proxy.py REPLAY_LIMIT): a request that
//! a retry may send again is kept up to 256 KiB; a larger one goes on streaming and its attempt is the last.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, Incoming, SizeHint};

use super::exchange::Exchange;
use super::pool::{Conn, Pool};
use crate::http::upstream_body::UpBody;
use crate::http::BoxError;

/// What a retry may replay (proxy.py REPLAY_LIMIT).
pub const REPLAY_LIMIT: usize = 256 * 1024;

/// What the downstream request body did: bytes read, and whether its framing broke (a malformed chunk): then
/// the request gets 400 instead of a 503 for the upstream's reset, as the Python proxy answered.
#[derive(Default)]
pub struct Tap {
    pub bytes: AtomicU64,
    pub failed: AtomicBool,
}

/// The request body sent upstream: nothing, bytes kept for a replay, or the downstream stream (after what was
/// read ahead of it while deciding whether it fits the replay buffer).
pub enum ReqBody {
    Full(Option<Bytes>),
    Stream {
        prefix: VecDeque<Bytes>,
        rest: Incoming,
        tap: Arc<Tap>,
    },
}

impl ReqBody {
    pub fn full(b: Bytes) -> ReqBody {
        if b.is_empty() {
            ReqBody::Full(None)
        } else {
            ReqBody::Full(Some(b))
        }
    }
}

impl Body for ReqBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            ReqBody::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            ReqBody::Stream { prefix, rest, tap } => {
                if let Some(b) = prefix.pop_front() {
                    return Poll::Ready(Some(Ok(Frame::data(b))));
                }
                // Trailers go on as they came (HTTP/2 end to end, RFC 9113 §8.1); hyper's HTTP/1.1 writer
                // sends them only in a chunked body.
                match Pin::new(&mut *rest).poll_frame(cx) {
                    Poll::Ready(Some(Ok(f))) => {
                        if let Some(d) = f.data_ref() {
                            tap.bytes.fetch_add(d.len() as u64, Ordering::Relaxed);
                        }
                        Poll::Ready(Some(Ok(f)))
                    }
                    Poll::Ready(Some(Err(e))) => {
                        tap.failed.store(true, Ordering::Relaxed);
                        Poll::Ready(Some(Err(e)))
                    }
                    other => other,
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ReqBody::Full(b) => b.is_none(),
            ReqBody::Stream { prefix, rest, .. } => prefix.is_empty() && rest.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ReqBody::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            ReqBody::Stream { prefix, rest, .. } => {
                let pre: u64 = prefix.iter().map(|b| b.len() as u64).sum();
                let h = rest.size_hint();
                let mut out = SizeHint::new();
                out.set_lower(h.lower() + pre);
                if let Some(u) = h.upper() {
                    out.set_upper(u + pre);
                }
                out
            }
        }
    }
}

/// The request body, made ready for the attempts: whole (replayable) when it fits the replay buffer,
/// else the stream with what was read of it. `counted` receives the body's byte count.
pub enum Payload {
    Replay(Bytes),
    Once(Option<ReqBody>),
}

impl Payload {
    /// Reads ahead: up to the replay limit when a retry may replay the body, else its first frame only (so a
    /// request whose body is broken from the start never reaches the upstream).
    pub async fn prepare(mut body: Incoming, replay: bool, tap: &Arc<Tap>) -> Payload {
        if body.is_end_stream() {
            return Payload::Replay(Bytes::new());
        }
        let mut prefix: VecDeque<Bytes> = VecDeque::new();
        let mut size = 0usize;
        while (replay && size <= REPLAY_LIMIT) || (!replay && prefix.is_empty()) {
            match body.frame().await {
                None => {
                    let mut all = bytes::BytesMut::with_capacity(size);
                    for b in prefix {
                        all.extend_from_slice(&b);
                    }
                    return Payload::Replay(all.freeze());
                }
                Some(Ok(f)) => {
                    if let Ok(d) = f.into_data() {
                        size += d.len();
                        tap.bytes.fetch_add(d.len() as u64, Ordering::Relaxed);
                        prefix.push_back(d);
                    }
                }
                Some(Err(_)) => {
                    tap.failed.store(true, Ordering::Relaxed);
                    return Payload::Once(None);
                }
            }
        }
        Payload::Once(Some(ReqBody::Stream {
            prefix,
            rest: body,
            tap: tap.clone(),
        }))
    }

    pub fn can_replay(&self) -> bool {
        match self {
            Payload::Replay(_) => true,
            Payload::Once(b) => b.is_some(),
        }
    }

    pub fn take(&mut self) -> Option<ReqBody> {
        match self {
            Payload::Replay(b) => Some(ReqBody::full(b.clone())),
            Payload::Once(b) => b.take(),
        }
    }

    /// An attempt that never left (the connection was found closed): the body comes back.
    pub fn put_back(&mut self, b: ReqBody) {
        if let Payload::Once(slot) = self {
            *slot = Some(b);
        }
    }
}

enum Inner {
    Local(Option<Bytes>),
    Upstream(UpBody),
}

/// The response body sent downstream. At its end the upstream connection goes back to the pool; when it is
/// dropped (end, or the downstream went away) the exchange is settled and logged.
pub struct RespBody {
    inner: Inner,
    conn: Option<(Conn, Arc<Pool>)>,
    ex: Option<Box<Exchange>>,
    sent: u64,
}

impl RespBody {
    pub fn local(b: Bytes, ex: Option<Box<Exchange>>) -> RespBody {
        RespBody {
            sent: 0,
            inner: Inner::Local((!b.is_empty()).then_some(b)),
            conn: None,
            ex,
        }
    }

    pub fn upstream(b: UpBody, conn: Conn, pool: Arc<Pool>, ex: Box<Exchange>) -> RespBody {
        RespBody {
            sent: 0,
            inner: Inner::Upstream(b),
            conn: Some((conn, pool)),
            ex: Some(ex),
        }
    }

    fn ended(&mut self) {
        if let Some((c, pool)) = self.conn.take() {
            pool.release(c);
        }
        if let Some(ex) = self.ex.take() {
            ex.finish(self.sent, true);
        }
    }
}

impl Body for RespBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let r = match &mut this.inner {
            Inner::Local(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            // Trailers pass (gRPC's status travels in them, http2-grpc.md §5.5); an HTTP/1.1 caller gets them
            // only in a chunked answer to a request that said `TE: trailers` (hyper's rule).
            Inner::Upstream(b) => {
                let r = Pin::new(&mut *b).poll_frame(cx);
                if let (Poll::Ready(Some(Ok(f))), Some(ex)) = (&r, this.ex.as_mut()) {
                    if let Some(t) = f.trailers_ref() {
                        ex.grpc_trailers(t);
                    }
                }
                r
            }
        };
        match &r {
            Poll::Ready(Some(Ok(f))) => {
                if let Some(d) = f.data_ref() {
                    this.sent += d.len() as u64;
                }
                if this.is_end_stream() {
                    this.ended();
                }
            }
            Poll::Ready(None) => this.ended(),
            Poll::Ready(Some(Err(_))) => {
                // Broken mid-body: the connection is not reused.
                this.conn = None;
            }
            Poll::Pending => {}
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        match &self.inner {
            Inner::Local(b) => b.is_none(),
            Inner::Upstream(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            Inner::Local(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            Inner::Upstream(b) => b.size_hint(),
        }
    }
}

impl Drop for RespBody {
    fn drop(&mut self) {
        let complete = self.is_end_stream();
        if complete {
            // A body hyper never had to poll (HEAD, 204, 304): the connection is still good.
            if let Some((c, pool)) = self.conn.take() {
                pool.release(c);
            }
        }
        if let Some(ex) = self.ex.take() {
            ex.finish(self.sent, complete);
        }
    }
}
