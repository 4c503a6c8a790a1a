//! The HTTP/1.1 client hop (plain to an `http` app, over mTLS to another sidecar), driven from the request's
//! own task, as `h2_client` does for HTTP/2.
//!
//! hyper's HTTP/1.1 client runs each connection on a task of its own: every request crosses a channel to it,
//! the answer comes back through a oneshot, and the body through a third channel, so each exchange wakes two
//! tasks twice. In a saturated HTTP/1.1 pair that dispatch was the largest share of the proxies' user time
//! that was not parsing, TLS or I/O. Here the task serving the caller writes the request and reads the answer
//! itself; an idle connection is owned by its pool and checked (without blocking) when it is taken.
//!
//! Requests are framed as hyper's client frames them: `transfer-encoding` as given (made to end in `chunked`),
//! else `content-length` as given, else the body's exact length, else chunked (no body for GET/HEAD/CONNECT of
//! unknown length). Answers are framed by `meshgw_proto::h1_response` (RFC 9112 §6.3, with Envoy's refusals
//! of what two parsers could frame differently; fuzzed); interim answers (100, 102, 103) are read past. A
//! connection is reused only after an answer that allows it was read whole, its request sent whole, and
//! nothing more arrived.

use std::any::Any;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use http::header::{
    HeaderMap, HeaderName, HeaderValue, CONTENT_LENGTH, HOST, TRANSFER_ENCODING, UPGRADE,
};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, SizeHint};
use meshgw_proto::h1_response::{self as wire, Chunked, Field, Framing, Step};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::io::poll_read_buf;

use super::BoxError;

/// Bytes asked of the socket per read.
const READ_SIZE: usize = 16 * 1024;

/// What a connection runs over: a plain TCP stream to the app, a TLS stream to another sidecar.
pub trait Io: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Io for T {}

/// One connection between exchanges: the stream, bytes read past the last answer (none, on a reusable one),
/// and whatever must live as long as it does (the pool's count of open connections).
struct Wire {
    io: Box<dyn Io>,
    rbuf: BytesMut,
    _hold: Box<dyn Any + Send>,
}

impl Wire {
    /// Idle and usable: the peer has neither closed it nor sent anything unasked (a 408, say). Polled once with
    /// a no-op waker, so this never waits; an unasked byte makes the connection unusable anyway.
    fn idle_ok(&mut self) -> bool {
        if !self.rbuf.is_empty() {
            return false;
        }
        self.rbuf.reserve(READ_SIZE);
        let mut cx = Context::from_waker(Waker::noop());
        matches!(
            poll_read_buf(Pin::new(&mut self.io), &mut cx, &mut self.rbuf),
            Poll::Pending
        )
    }
}

type Slot = Arc<Mutex<Option<Wire>>>;

fn lock(slot: &Slot) -> std::sync::MutexGuard<'_, Option<Wire>> {
    slot.lock().unwrap_or_else(|p| p.into_inner())
}

/// A handle to one HTTP/1.1 client connection. While an exchange runs, the exchange owns the connection; it
/// comes back here when the answer was read whole and the connection can carry another request.
pub struct H1Client {
    slot: Slot,
}

#[derive(Debug)]
pub enum Error {
    /// The connection was closed, busy or unusable before anything was sent.
    Closed,
    Io(std::io::Error),
    /// The peer's answer broke HTTP/1.1 (or the rules above).
    Parse(&'static str),
    /// The peer closed the connection before its answer (or its body) was complete.
    Incomplete,
    /// The request's own body failed (the caller's framing broke, or it went quiet past its timeout).
    Body(BoxError),
    /// The request's body did not match the length its head declared.
    BodyLength,
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::Closed => f.write_str("connection closed before the request was sent"),
            Error::Io(e) => write!(f, "{e}"),
            Error::Parse(what) => write!(f, "invalid HTTP/1.1 response: {what}"),
            Error::Incomplete => f.write_str("connection closed before the response was complete"),
            Error::Body(e) => write!(f, "request body failed: {e}"),
            Error::BodyLength => f.write_str("request body length differs from its content-length"),
        }
    }
}

impl std::error::Error for Error {}

impl Error {
    pub fn is_parse(&self) -> bool {
        matches!(self, Error::Parse(_))
    }
}

/// A failed request; `request` is given back when nothing of it was sent, so it may go on another connection.
pub struct SendError<B> {
    pub request: Option<Request<B>>,
    pub error: Error,
}

/// After a 101, the connection itself, and the bytes the peer sent after its answer's head.
pub struct Upgraded {
    pub io: Box<dyn Io>,
    pub pre: Bytes,
    /// The pool's count of open connections keeps counting the tunnel.
    _hold: Box<dyn Any + Send>,
}

impl Upgraded {
    /// Bytes both ways between `down` and this connection until both close (crate::relay::copy_both), starting
    /// with those the peer sent right after its 101: what passed from `down`, and from the peer.
    pub async fn join<D>(mut self, down: &mut D) -> (u64, u64)
    where
        D: AsyncRead + AsyncWrite + Unpin + ?Sized,
    {
        use tokio::io::AsyncWriteExt;
        if !self.pre.is_empty() && down.write_all(&self.pre).await.is_err() {
            return (0, 0);
        }
        let (from_down, from_up) = crate::relay::copy_both(down, &mut self.io).await;
        (from_down, from_up + self.pre.len() as u64)
    }
}

/// Carried in a 101 answer's extensions (which must be `Clone`): taken once by [`take_upgrade`].
#[derive(Clone)]
struct UpgradeSlot(Arc<Mutex<Option<Upgraded>>>);

/// The upgraded connection of a 101 answer from [`H1Client::send`].
pub fn take_upgrade<B>(resp: &mut Response<B>) -> Option<Upgraded> {
    let s = resp.extensions_mut().remove::<UpgradeSlot>()?;
    let mut g = s.0.lock().unwrap_or_else(|p| p.into_inner());
    g.take()
}

impl H1Client {
    pub fn new<T: Io + 'static, G: Send + 'static>(io: T, hold: G) -> H1Client {
        H1Client {
            slot: Arc::new(Mutex::new(Some(Wire {
                io: Box::new(io),
                rbuf: BytesMut::new(),
                _hold: Box::new(hold),
            }))),
        }
    }

    /// Idle, open and clean; an unusable connection is closed here.
    pub fn is_ready(&self) -> bool {
        let mut g = lock(&self.slot);
        let ok = g.as_mut().is_some_and(Wire::idle_ok);
        if !ok {
            *g = None;
        }
        ok
    }

    /// Sends `req` and reads its answer's head; the body follows in the answer.
    pub async fn send<B>(&self, req: Request<B>) -> Result<Response<H1Body>, SendError<B>>
    where
        B: Body<Data = Bytes> + Send + Unpin + 'static,
        B::Error: Into<BoxError>,
    {
        let (parts, body) = req.into_parts();
        let head = ReqHead {
            method: &parts.method,
            uri: &parts.uri,
            headers: &parts.headers,
        };
        match self.send_head(head, body).await {
            Ok(r) => Ok(r),
            Err((body, error)) => Err(SendError {
                request: body.map(|b| Request::from_parts(parts, b)),
                error,
            }),
        }
    }

    /// [`send`](Self::send) from a borrowed head: the caller keeps its fields for another attempt instead of
    /// cloning them for each (the clone of a field made for the request costs an allocation). On error the
    /// body comes back when none of the request went out.
    pub async fn send_head<B>(
        &self,
        head: ReqHead<'_>,
        body: B,
    ) -> Result<Response<H1Body>, (Option<B>, Error)>
    where
        B: Body<Data = Bytes> + Send + Unpin + 'static,
        B::Error: Into<BoxError>,
    {
        let wire = {
            let mut taken = lock(&self.slot).take();
            match taken.take_if(|w| w.idle_ok()) {
                Some(w) => w,
                None => return Err((Some(body), Error::Closed)),
            }
        };
        let framing = request_framing(&head, &body);
        let mut out = BytesMut::with_capacity(512);
        encode_head(&head, framing, &mut out);
        let expects_body = !matches!(framing, ReqFraming::None);
        let mut x = Exchange {
            wire,
            pump: Pump {
                out,
                flush: true,
                body: None,
                framing,
            },
            head_req: *head.method == Method::HEAD,
            upgrade: head.headers.contains_key(UPGRADE),
        };
        // The head goes out first, the body not yet touched: a connection the peer closed meanwhile gives the
        // request back whole.
        if let Err(error) = std::future::poll_fn(|cx| x.pump.poll_write_out(&mut x.wire, cx)).await
        {
            let error = match error {
                Error::Io(_) => Error::Closed,
                e => e,
            };
            return Err((Some(body), error));
        }
        if expects_body {
            x.pump.body = Some(body.map_err(Into::into).boxed_unsync());
        }
        let head = match std::future::poll_fn(|cx| x.poll_head(cx)).await {
            Ok(h) => h,
            Err(error) => return Err((None, error)),
        };
        Ok(x.into_response(head, &self.slot))
    }
}

/// A request's head as [`H1Client::send_head`] writes it.
#[derive(Clone, Copy)]
pub struct ReqHead<'a> {
    pub method: &'a Method,
    pub uri: &'a Uri,
    pub headers: &'a HeaderMap,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ReqFraming {
    None,
    Length(u64),
    Chunked,
}

/// Methods whose request body has no defined meaning: an empty one needs no `content-length: 0` (hyper's rule).
fn bodiless_method(m: &Method) -> bool {
    matches!(
        *m,
        Method::GET
            | Method::HEAD
            | Method::DELETE
            | Method::CONNECT
            | Method::OPTIONS
            | Method::TRACE
    )
}

fn request_framing<B: Body>(parts: &ReqHead<'_>, body: &B) -> ReqFraming {
    if parts.headers.contains_key(TRANSFER_ENCODING) {
        return ReqFraming::Chunked;
    }
    if let Some(n) = super::content_length(parts.headers).ok().flatten() {
        return ReqFraming::Length(n);
    }
    if body.is_end_stream() {
        return if bodiless_method(parts.method) {
            ReqFraming::None
        } else {
            ReqFraming::Length(0)
        };
    }
    match body.size_hint().exact() {
        Some(0) if bodiless_method(parts.method) => ReqFraming::None,
        Some(n) => ReqFraming::Length(n),
        None if matches!(*parts.method, Method::GET | Method::HEAD | Method::CONNECT) => {
            ReqFraming::Length(0)
        }
        None => ReqFraming::Chunked,
    }
}

/// The request line and fields. `content-length` and `transfer-encoding` are written from `framing`; a given
/// `transfer-encoding` keeps its codings and gets `chunked` last if it lacks it (hyper's rule).
fn encode_head(parts: &ReqHead<'_>, framing: ReqFraming, dst: &mut BytesMut) {
    dst.put_slice(parts.method.as_str().as_bytes());
    dst.put_u8(b' ');
    let target = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    dst.put_slice(if target.is_empty() {
        b"/"
    } else {
        target.as_bytes()
    });
    dst.put_slice(b" HTTP/1.1\r\n");
    if !parts.headers.contains_key(HOST) {
        if let Some(a) = parts.uri.authority() {
            dst.put_slice(b"host: ");
            dst.put_slice(a.as_str().as_bytes());
            dst.put_slice(b"\r\n");
        }
    }
    let mut te_chunked = false;
    for (name, value) in parts.headers {
        if name == CONTENT_LENGTH {
            continue;
        }
        if name == TRANSFER_ENCODING {
            te_chunked = value
                .as_bytes()
                .rsplit(|b| *b == b',')
                .next()
                .is_some_and(|t| t.trim_ascii().eq_ignore_ascii_case(b"chunked"));
        }
        dst.put_slice(name.as_str().as_bytes());
        dst.put_slice(b": ");
        dst.put_slice(value.as_bytes());
        dst.put_slice(b"\r\n");
    }
    match framing {
        ReqFraming::None => {}
        ReqFraming::Length(n) => {
            dst.put_slice(b"content-length: ");
            dst.put_slice(n.to_string().as_bytes());
            dst.put_slice(b"\r\n");
        }
        ReqFraming::Chunked if parts.headers.contains_key(TRANSFER_ENCODING) => {
            if !te_chunked {
                dst.put_slice(b"transfer-encoding: chunked\r\n");
            }
        }
        ReqFraming::Chunked => dst.put_slice(b"transfer-encoding: chunked\r\n"),
    }
    dst.put_slice(b"\r\n");
}

/// The request's bytes on their way out: the encoded head, then the body framed as the head said.
struct Pump {
    out: BytesMut,
    flush: bool,
    body: Option<UnsyncBoxBody<Bytes, BoxError>>,
    framing: ReqFraming,
}

impl Pump {
    /// Writes what is encoded and flushes it.
    fn poll_write_out(&mut self, w: &mut Wire, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        while self.out.has_remaining() {
            match Pin::new(&mut w.io).poll_write(cx, &self.out) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(Error::Incomplete)),
                Poll::Ready(Ok(n)) => self.out.advance(n),
                Poll::Ready(Err(e)) => return Poll::Ready(Err(Error::Io(e))),
                Poll::Pending => return Poll::Pending,
            }
        }
        if self.flush {
            match Pin::new(&mut w.io).poll_flush(cx) {
                Poll::Ready(Ok(())) => self.flush = false,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(Error::Io(e))),
                Poll::Pending => return Poll::Pending,
            }
        }
        Poll::Ready(Ok(()))
    }

    fn done(&self) -> bool {
        self.body.is_none() && self.out.is_empty() && !self.flush
    }

    /// Ready(Ok) once the whole request is out.
    fn poll(&mut self, w: &mut Wire, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        loop {
            match self.poll_write_out(w, cx) {
                Poll::Ready(Ok(())) => {}
                other => return other,
            }
            let Some(body) = self.body.as_mut() else {
                return Poll::Ready(Ok(()));
            };
            match Pin::new(body).poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(None) => {
                    self.body = None;
                    match self.framing {
                        ReqFraming::Chunked => self.out.put_slice(b"0\r\n\r\n"),
                        ReqFraming::Length(0) | ReqFraming::None => {}
                        ReqFraming::Length(_) => return Poll::Ready(Err(Error::BodyLength)),
                    }
                }
                Poll::Ready(Some(Err(e))) => {
                    self.body = None;
                    return Poll::Ready(Err(Error::Body(e)));
                }
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) => {
                        if let Err(e) = self.encode_data(&data) {
                            self.body = None;
                            return Poll::Ready(Err(e));
                        }
                    }
                    Err(frame) => {
                        // Trailers: only chunked framing carries them (RFC 9112 §7.1.2); otherwise dropped.
                        if let (Ok(t), ReqFraming::Chunked) = (frame.into_trailers(), self.framing)
                        {
                            self.out.put_slice(b"0\r\n");
                            for (n, v) in &t {
                                self.out.put_slice(n.as_str().as_bytes());
                                self.out.put_slice(b": ");
                                self.out.put_slice(v.as_bytes());
                                self.out.put_slice(b"\r\n");
                            }
                            self.out.put_slice(b"\r\n");
                            self.framing = ReqFraming::None; // the body's end adds nothing more
                        }
                    }
                },
            }
            self.flush = true;
        }
    }

    fn encode_data(&mut self, data: &Bytes) -> Result<(), Error> {
        if data.is_empty() {
            return Ok(());
        }
        match &mut self.framing {
            ReqFraming::Chunked => {
                self.out
                    .put_slice(format!("{:x}\r\n", data.len()).as_bytes());
                self.out.put_slice(data);
                self.out.put_slice(b"\r\n");
            }
            ReqFraming::Length(rem) => {
                let n = data.len() as u64;
                if n > *rem {
                    return Err(Error::BodyLength);
                }
                *rem -= n;
                self.out.put_slice(data);
            }
            ReqFraming::None => return Err(Error::BodyLength),
        }
        Ok(())
    }
}

struct Head {
    status: StatusCode,
    version: Version,
    headers: HeaderMap,
    framing: Framing,
    keep_alive: bool,
}

struct Exchange {
    wire: Wire,
    pump: Pump,
    head_req: bool,
    upgrade: bool,
}

impl Exchange {
    /// The request goes on out while the answer's head is awaited (a peer may answer before the body ends).
    fn poll_head(&mut self, cx: &mut Context<'_>) -> Poll<Result<Head, Error>> {
        loop {
            if !self.pump.done() {
                if let Poll::Ready(Err(e)) = self.pump.poll(&mut self.wire, cx) {
                    return Poll::Ready(Err(e));
                }
            }
            if !self.wire.rbuf.is_empty() {
                match parse_head(&mut self.wire.rbuf, self.head_req, self.upgrade)? {
                    Some(h) if h.status.is_informational() && h.framing != Framing::Upgrade => {
                        continue; // 100, 102, 103: read past
                    }
                    Some(h) => return Poll::Ready(Ok(h)),
                    None => {}
                }
            }
            self.wire.rbuf.reserve(READ_SIZE);
            match poll_read_buf(Pin::new(&mut self.wire.io), cx, &mut self.wire.rbuf) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(Error::Incomplete)),
                Poll::Ready(Ok(_)) => {}
                Poll::Ready(Err(e)) => return Poll::Ready(Err(Error::Io(e))),
                Poll::Pending => return Poll::Pending,
            }
        }
    }

    fn into_response(self, head: Head, slot: &Slot) -> Response<H1Body> {
        let Exchange { mut wire, pump, .. } = self;
        let decoding = match head.framing {
            Framing::Upgrade => {
                let up = Upgraded {
                    pre: wire.rbuf.split().freeze(),
                    io: wire.io,
                    _hold: wire._hold,
                };
                let mut resp = Response::new(H1Body::ended(slot));
                *resp.status_mut() = head.status;
                *resp.version_mut() = head.version;
                *resp.headers_mut() = head.headers;
                resp.extensions_mut()
                    .insert(UpgradeSlot(Arc::new(Mutex::new(Some(up)))));
                return resp;
            }
            Framing::Empty | Framing::Length(0) => Decoding::Done,
            Framing::Length(n) => Decoding::Length(n),
            Framing::Chunked => Decoding::Chunked(Chunked::Size),
            Framing::Eof => Decoding::Eof,
        };
        let mut body = H1Body {
            wire: Some(wire),
            slot: slot.clone(),
            pump: (!pump.done()).then_some(pump),
            decoding,
            keep_alive: head.keep_alive,
        };
        if body.decoding == Decoding::Done {
            body.finish();
        }
        let mut resp = Response::new(body);
        *resp.status_mut() = head.status;
        *resp.version_mut() = head.version;
        *resp.headers_mut() = head.headers;
        resp
    }
}

/// One answer's head from `buf` (consumed), or None while it is incomplete.
fn parse_head(buf: &mut BytesMut, head_req: bool, upgrade: bool) -> Result<Option<Head>, Error> {
    let Some(h) = wire::parse_head(buf, head_req, upgrade).map_err(Error::Parse)? else {
        return Ok(None);
    };
    let status = StatusCode::from_u16(h.status).map_err(|_| Error::Parse("bad status code"))?;
    // Values are slices of the head, shared rather than copied.
    let head = buf.split_to(h.len).freeze();
    let headers = fields(&head, &h.fields)?;
    Ok(Some(Head {
        status,
        version: if h.http11 {
            Version::HTTP_11
        } else {
            Version::HTTP_10
        },
        headers,
        framing: h.framing,
        keep_alive: h.keep_alive,
    }))
}

fn fields(raw: &Bytes, list: &[Field]) -> Result<HeaderMap, Error> {
    let mut headers = HeaderMap::with_capacity(list.len());
    for f in list {
        let name = raw
            .get(f.name.0..f.name.1)
            .and_then(|n| HeaderName::from_bytes(n).ok())
            .ok_or(Error::Parse("bad field name"))?;
        let value = HeaderValue::from_maybe_shared(raw.slice(f.value.0..f.value.1))
            .map_err(|_| Error::Parse("bad field value"))?;
        headers.append(name, value);
    }
    Ok(headers)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Decoding {
    Length(u64),
    Chunked(Chunked),
    Eof,
    Done,
}

/// An answer's body, read from the connection by whoever polls it; at its end the connection goes back to its
/// handle if it can carry another request, else it is closed.
pub struct H1Body {
    wire: Option<Wire>,
    slot: Slot,
    pump: Option<Pump>,
    decoding: Decoding,
    keep_alive: bool,
}

impl H1Body {
    fn ended(slot: &Slot) -> H1Body {
        H1Body {
            wire: None,
            slot: slot.clone(),
            pump: None,
            decoding: Decoding::Done,
            keep_alive: false,
        }
    }

    fn finish(&mut self) {
        self.decoding = Decoding::Done;
        if let Some(w) = self.wire.take() {
            if self.keep_alive && self.pump.is_none() && w.rbuf.is_empty() {
                *lock(&self.slot) = Some(w);
            }
        }
    }

    fn fail(&mut self, e: Error) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.decoding = Decoding::Done;
        self.wire = None;
        self.pump = None;
        Poll::Ready(Some(Err(Box::new(e))))
    }

    /// One more read into the buffer: Ok(false) at the end of the stream.
    fn poll_fill(w: &mut Wire, cx: &mut Context<'_>) -> Poll<Result<bool, Error>> {
        w.rbuf.reserve(READ_SIZE);
        match poll_read_buf(Pin::new(&mut w.io), cx, &mut w.rbuf) {
            Poll::Ready(Ok(0)) => Poll::Ready(Ok(false)),
            Poll::Ready(Ok(_)) => Poll::Ready(Ok(true)),
            Poll::Ready(Err(e)) => Poll::Ready(Err(Error::Io(e))),
            Poll::Pending => Poll::Pending,
        }
    }
}

/// The next frame of a chunked body from `buf`: Some(frame), Ok(None) at its end, Err(None) when more bytes
/// are needed.
fn chunk_frame(
    state: &mut Chunked,
    buf: &mut BytesMut,
) -> Result<Option<Frame<Bytes>>, Option<Error>> {
    loop {
        match state.step(buf).map_err(|e| Some(Error::Parse(e)))? {
            Step::Skip(n) => buf.advance(n),
            Step::Data(n) => return Ok(Some(Frame::data(buf.split_to(n).freeze()))),
            Step::Trailers { len, fields: list } => {
                let raw = buf.split_to(len).freeze();
                return Ok(Some(Frame::trailers(fields(&raw, &list).map_err(Some)?)));
            }
            Step::End(n) => {
                buf.advance(n);
                return Ok(None);
            }
            Step::More => return Err(None),
        }
    }
}

impl Body for H1Body {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        loop {
            let Some(w) = this.wire.as_mut() else {
                return Poll::Ready(None);
            };
            // A request body still going out (the peer answered early) goes on while the answer is read.
            if let Some(p) = this.pump.as_mut() {
                match p.poll(w, cx) {
                    Poll::Ready(Ok(())) => this.pump = None,
                    Poll::Ready(Err(_)) => {
                        // The request could not be finished: the answer is still read, the connection not kept.
                        this.pump = None;
                        this.keep_alive = false;
                    }
                    Poll::Pending => {}
                }
            }
            match this.decoding {
                Decoding::Done => {
                    this.finish();
                    return Poll::Ready(None);
                }
                Decoding::Length(rem) => {
                    if !w.rbuf.is_empty() {
                        let n = usize::try_from(rem).unwrap_or(usize::MAX).min(w.rbuf.len());
                        let data = w.rbuf.split_to(n).freeze();
                        let left = rem - n as u64;
                        this.decoding = Decoding::Length(left);
                        if left == 0 {
                            this.finish();
                        }
                        return Poll::Ready(Some(Ok(Frame::data(data))));
                    }
                }
                Decoding::Chunked(mut state) => {
                    let r = chunk_frame(&mut state, &mut w.rbuf);
                    this.decoding = Decoding::Chunked(state);
                    match r {
                        Err(Some(e)) => return this.fail(e),
                        Ok(Some(f)) => {
                            if f.is_trailers() {
                                this.finish();
                            }
                            return Poll::Ready(Some(Ok(f)));
                        }
                        Ok(None) => {
                            this.finish();
                            return Poll::Ready(None);
                        }
                        Err(None) => {}
                    }
                }
                Decoding::Eof => {
                    if !w.rbuf.is_empty() {
                        let data = w.rbuf.split().freeze();
                        return Poll::Ready(Some(Ok(Frame::data(data))));
                    }
                }
            }
            let Some(w) = this.wire.as_mut() else {
                return Poll::Ready(None);
            };
            match H1Body::poll_fill(w, cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok(true)) => {}
                Poll::Ready(Ok(false)) if this.decoding == Decoding::Eof => {
                    this.keep_alive = false;
                    this.finish();
                    return Poll::Ready(None);
                }
                Poll::Ready(Ok(false)) => return this.fail(Error::Incomplete),
                Poll::Ready(Err(e)) => return this.fail(e),
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.decoding == Decoding::Done
    }

    fn size_hint(&self) -> SizeHint {
        match self.decoding {
            Decoding::Done => SizeHint::with_exact(0),
            Decoding::Length(n) => SizeHint::with_exact(n),
            _ => SizeHint::default(),
        }
    }
}

#[cfg(test)]
#[path = "h1_client_test.rs"]
mod tests;
