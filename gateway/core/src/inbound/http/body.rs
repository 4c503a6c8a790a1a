//! The two streamed bodies of an exchange. Both are hyper `Incoming` bodies passed through frame by frame, so
//! hyper's own bounded buffers and readiness carry back-pressure end to end (design.md): nothing here buffers.
//!
//! - [`ReqBody`] (caller → app) counts bytes, tells when the request is complete (the route timeout starts
//!   then, as Envoy's does), remembers whether the caller's framing broke (→ 400, not 503) and enforces the
//!   stream idle timeout between frames (→ 408 before the response head; l7-security.md §4).
//! - [`RespBody`] (app → caller) is a local answer or the app's body; the latter hands its app connection back
//!   to the pool at its end, enforces the stream idle timeout (→ reset after the head), and writes the access
//!   record when the exchange is over, however it ends.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use tokio::sync::Notify;
use tokio::time::{sleep_until, Instant, Sleep};

use super::accesslog::{Exchange, Field};
use super::metrics::{HttpStats, Timeout};
use super::pool::Checkin;
use crate::http::upstream_body::UpBody;
use crate::http::BoxError;
use crate::listener::ListenerStats;

#[derive(Debug)]
struct IdleTimeout;

impl std::fmt::Display for IdleTimeout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("stream idle timeout")
    }
}

impl std::error::Error for IdleTimeout {}

/// A gap between two frames longer than the stream idle timeout (Envoy `stream_idle_timeout`). A frame only marks
/// the body as moved; the clock is read when the body next has to wait, right after (a body that is there at
/// once, as most small ones are, never reads it), the timer is made the first time it waits, and set again only
/// when it fires before the deadline.
struct Idle {
    after: Duration,
    /// None: moved since the last wait (or never waited); the idle time starts at the next wait.
    deadline: Option<Instant>,
    timer: Option<Pin<Box<Sleep>>>,
}

impl Idle {
    fn new(after: Option<Duration>) -> Option<Idle> {
        after.map(|after| Idle {
            after,
            deadline: None,
            timer: None,
        })
    }

    /// Polled when the inner body is pending: true means the stream went idle too long.
    fn expired(&mut self, cx: &mut Context<'_>) -> bool {
        let after = self.after;
        let deadline = *self.deadline.get_or_insert_with(|| Instant::now() + after);
        let timer = self
            .timer
            .get_or_insert_with(|| Box::pin(sleep_until(deadline)));
        while timer.as_mut().poll(cx).is_ready() {
            if Instant::now() >= deadline {
                return true;
            }
            timer.as_mut().reset(deadline);
        }
        false
    }

    fn touch(&mut self) {
        self.deadline = None;
    }
}

/// What the exchange learns from the request body while it streams.
pub struct ReqState {
    pub bytes: AtomicU64,
    /// The caller's body framing failed (a bad chunk): the exchange answers 400.
    pub broken: AtomicBool,
    pub idle: AtomicBool,
    /// Read to its end; `ended` wakes whoever waits in `complete` (an atomic and one Notify: a `watch` channel
    /// per request allocated eight).
    done: AtomicBool,
    ended: Notify,
}

impl ReqState {
    pub fn new() -> Arc<ReqState> {
        Arc::new(ReqState {
            bytes: AtomicU64::new(0),
            broken: AtomicBool::new(false),
            idle: AtomicBool::new(false),
            done: AtomicBool::new(false),
            ended: Notify::new(),
        })
    }

    fn set_done(&self) {
        self.done.store(true, Ordering::Release);
        self.ended.notify_waiters();
    }

    /// Read to its end (whatever its framing).
    pub fn is_done(&self) -> bool {
        self.done.load(Ordering::Acquire)
    }

    /// The body was read to its end without a framing error.
    pub fn is_whole(&self) -> bool {
        self.is_done() && !self.broken.load(Ordering::Relaxed) && !self.idle.load(Ordering::Relaxed)
    }

    /// Resolves once the whole request body has been read (never, if it never is).
    pub async fn complete(&self) {
        // Most requests (every GET) ended with their head: no waiter to register and take off again.
        if self.is_done() {
            return;
        }
        loop {
            let ended = self.ended.notified();
            tokio::pin!(ended);
            // Registered before the flag is read: a set_done in between still wakes this waiter.
            ended.as_mut().enable();
            if self.is_done() {
                return;
            }
            ended.await;
        }
    }
}

pub struct ReqBody {
    inner: Incoming,
    state: Arc<ReqState>,
    idle: Option<Idle>,
}

impl ReqBody {
    pub fn new(inner: Incoming, state: Arc<ReqState>, idle: Option<Duration>) -> ReqBody {
        if inner.is_end_stream() {
            state.set_done();
        }
        ReqBody {
            inner,
            state,
            idle: Idle::new(idle),
        }
    }
}

impl Body for ReqBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(f))) => {
                if let Some(d) = f.data_ref() {
                    this.state
                        .bytes
                        .fetch_add(d.len() as u64, Ordering::Relaxed);
                }
                if let Some(i) = this.idle.as_mut() {
                    i.touch();
                }
                if this.inner.is_end_stream() {
                    this.state.set_done();
                }
                Poll::Ready(Some(Ok(f)))
            }
            Poll::Ready(Some(Err(e))) => {
                this.state.broken.store(true, Ordering::Relaxed);
                Poll::Ready(Some(Err(e.into())))
            }
            Poll::Ready(None) => {
                this.state.set_done();
                Poll::Ready(None)
            }
            Poll::Pending => {
                if this.idle.as_mut().is_some_and(|i| i.expired(cx)) {
                    this.state.idle.store(true, Ordering::Relaxed);
                    return Poll::Ready(Some(Err(Box::new(IdleTimeout))));
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Ends an exchange once: the access record (when the log is on), pushed when the response body is done or
/// dropped (a caller gone mid-body is flagged `DC` as in gateway/listeners.py `_done`).
pub struct Finish {
    pub exchange: Exchange,
    pub fields: Option<Arc<[Field]>>,
    pub stats: ListenerStats,
    pub http: HttpStats,
    pub req: Option<Arc<ReqState>>,
    pub complete: bool,
}

impl Drop for Finish {
    fn drop(&mut self) {
        if self.exchange.grpc {
            if let Some(s) = self.exchange.grpc_status {
                self.http.grpc.count(s);
            }
        }
        let Some(fields) = &self.fields else { return };
        if let Some(r) = &self.req {
            self.exchange.bytes_received = r.bytes.load(Ordering::Relaxed);
        }
        if !self.complete && self.exchange.flags.is_empty() {
            self.exchange.flags = "DC";
        }
        self.stats
            .shared()
            .access_record(self.exchange.record(fields));
    }
}

pub struct Proxied {
    inner: UpBody,
    checkin: Option<Checkin>,
    idle: Option<Idle>,
    finish: Finish,
    /// HTTP/2: the stream's watch, which also fires while hyper waits for the peer's window (crate::http::h2).
    watch: Option<Arc<crate::http::h2::StreamWatch>>,
}

pub enum RespBody {
    /// The finish is held only to run when hyper drops the body.
    Local {
        data: Option<Bytes>,
        _finish: Option<Box<Finish>>,
    },
    Proxied(Box<Proxied>),
}

impl RespBody {
    pub fn empty() -> RespBody {
        RespBody::Local {
            data: None,
            _finish: None,
        }
    }

    pub fn full(b: Bytes) -> RespBody {
        RespBody::Local {
            data: Some(b),
            _finish: None,
        }
    }

    /// Attaches the end-of-exchange work to a local answer (written when hyper drops the body): it is whole
    /// once made, so it is never flagged as cut short.
    pub fn with_finish(self, mut f: Finish) -> RespBody {
        match self {
            RespBody::Local { data: b, .. } => {
                f.complete = true;
                f.exchange.bytes_sent = b.as_ref().map_or(0, |b| b.len() as u64);
                RespBody::Local {
                    data: b,
                    _finish: Some(Box::new(f)),
                }
            }
            p => p,
        }
    }

    pub fn proxied(
        inner: UpBody,
        checkin: Option<Checkin>,
        idle: Option<Duration>,
        finish: Finish,
    ) -> RespBody {
        // An answer without a body is over already: nothing to watch.
        let ended = inner.is_end_stream();
        let watch = idle.filter(|_| !ended).and_then(|d| {
            let w = crate::http::h2::StreamWatch::current()?;
            w.arm(d, finish.http.timeout_counter(Timeout::StreamIdle)?);
            Some(w)
        });
        let mut p = Proxied {
            inner,
            checkin,
            idle: Idle::new(idle),
            finish,
            watch,
        };
        if ended {
            p.end();
        }
        RespBody::Proxied(Box::new(p))
    }
}

impl Proxied {
    fn end(&mut self) {
        if let Some(w) = self.watch.take() {
            w.disarm();
        }
        self.finish.complete = true;
        if let Some(c) = self.checkin.take() {
            c.put_back();
        }
    }
}

impl Drop for Proxied {
    fn drop(&mut self) {
        // An empty body (HEAD, 204, 304) may never be polled: it is over all the same.
        if self.inner.is_end_stream() {
            self.end();
        }
    }
}

impl Body for RespBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match &mut *self {
            RespBody::Local { data: b, .. } => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            RespBody::Proxied(p) => match Pin::new(&mut p.inner).poll_frame(cx) {
                Poll::Ready(Some(Ok(f))) => {
                    if let Some(d) = f.data_ref() {
                        p.finish.exchange.bytes_sent += d.len() as u64;
                    } else if let Some(t) = f.trailers_ref() {
                        if let Some(s) = crate::http::grpc::status_of(t) {
                            p.finish.exchange.grpc_status = Some(s);
                        }
                    }
                    if p.inner.is_end_stream() {
                        p.end();
                    } else {
                        // Only a body that goes on needs its idle time moved.
                        if let Some(i) = p.idle.as_mut() {
                            i.touch();
                        }
                        if let Some(w) = &p.watch {
                            w.touch();
                        }
                    }
                    Poll::Ready(Some(Ok(f)))
                }
                Poll::Ready(Some(Err(e))) => {
                    // Mid-body: the caller must not take a truncated answer as whole (hyper aborts).
                    p.finish.exchange.flags = "UC";
                    Poll::Ready(Some(Err(e)))
                }
                Poll::Ready(None) => {
                    p.end();
                    Poll::Ready(None)
                }
                Poll::Pending => {
                    if p.idle.as_mut().is_some_and(|i| i.expired(cx)) {
                        // After the head a stream idle timeout resets the stream (l7-security.md §4).
                        p.finish.http.timeout(Timeout::StreamIdle);
                        if let Some(w) = p.watch.take() {
                            w.disarm(); // counted here already
                        }
                        p.finish.exchange.flags = "SI";
                        p.checkin = None;
                        return Poll::Ready(Some(Err(Box::new(IdleTimeout))));
                    }
                    Poll::Pending
                }
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            RespBody::Local { data: b, .. } => b.is_none(),
            RespBody::Proxied(p) => p.inner.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            RespBody::Local { data: Some(b), .. } => SizeHint::with_exact(b.len() as u64),
            RespBody::Local { data: None, .. } => SizeHint::with_exact(0),
            RespBody::Proxied(p) => p.inner.size_hint(),
        }
    }
}
