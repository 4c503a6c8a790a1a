//! The HTTP/2 client hop (h2c to an `http2`/`grpc` app, h2 over mTLS to another sidecar), driven from the
//! request's own task on hyper's HTTP/2 implementation (the `h2` crate), without hyper's client dispatch.
//!
//! hyper's HTTP/2 client hands each request through a channel to a connection task, which spawns a task per
//! request to wait for its response (and a second one to pipe a request body) and answers through a oneshot.
//! Here the request task opens the stream, pipes the body and awaits the head itself: in a saturated gRPC pair
//! that machinery was about 10 % of the samples (spawning its large per-request future was 4 %). What hyper's
//! client did around the stream is kept: connection-specific fields never go out (RFC 9113 §8.2.2), a body of
//! known length says so in `content-length`, received DATA is handed back to flow control as it is consumed,
//! and a request body still streaming when the response head arrives goes on streaming on its own task.

use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use ::h2::client::{ResponseFuture, SendRequest};
use ::h2::{RecvStream, SendStream};
use bytes::Bytes;
use http::header::{HeaderMap, HeaderValue, CONTENT_LENGTH, TE};
use http::{Method, Request, Response};
use hyper::body::{Body, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite};

use super::forwarding::strip_hop_by_hop;
use super::h2::{CONNECTION_WINDOW, MAX_LOCAL_ERROR_RESETS, STREAM_WINDOW};
use super::BoxError;

/// hyper's client defaults, kept: streams opened before the peer's SETTINGS arrive, bytes buffered per stream.
const INITIAL_MAX_SEND_STREAMS: usize = 100;
const MAX_SEND_BUFFER: usize = 1024 * 1024;
const MAX_HEADER_LIST: u32 = 256 * 1024;

/// A handle to one HTTP/2 client connection; clones share it.
#[derive(Clone)]
pub struct H2Client {
    tx: SendRequest<Bytes>,
    closed: Arc<AtomicBool>,
    /// The per-request fields went out indexed once: their names are in the peer's HPACK table (http::hpack).
    named: Arc<AtomicBool>,
}

/// A request that failed; `request` is given back when nothing of it was sent (the connection was already gone),
/// so it may go out on another connection.
pub struct SendError<B> {
    pub request: Option<Request<B>>,
    pub error: ::h2::Error,
}

/// The HTTP/2 preface and SETTINGS on `io`; the connection then runs on its own task, with `guard` held (and
/// dropped) for as long as it does.
pub async fn handshake<T, G>(io: T, guard: G) -> Result<H2Client, ::h2::Error>
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    G: Send + 'static,
{
    let (tx, conn) = ::h2::client::Builder::new()
        .initial_max_send_streams(INITIAL_MAX_SEND_STREAMS)
        .initial_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_header_list_size(MAX_HEADER_LIST)
        .max_send_buffer_size(MAX_SEND_BUFFER)
        .max_concurrent_reset_streams(MAX_LOCAL_ERROR_RESETS)
        .enable_push(false)
        .handshake::<T, Bytes>(io)
        .await?;
    let closed = Arc::new(AtomicBool::new(false));
    let done = closed.clone();
    tokio::spawn(async move {
        let _guard = guard;
        let _ = conn.await;
        done.store(true, Ordering::Release);
    });
    Ok(H2Client {
        tx,
        closed,
        named: Arc::new(AtomicBool::new(false)),
    })
}

impl H2Client {
    /// The connection ended (the peer closed it, an error, or GOAWAY with every stream done).
    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Sends `req` on a new stream and waits for the response head. Takes this handle (each request holds its
    /// own copy, from the pool): cloning h2's `SendRequest` again per request locked the connection's stream
    /// state once more to count the handle, and once more to drop it.
    pub async fn send<B>(&mut self, req: Request<B>) -> Result<Response<H2Body>, SendError<B>>
    where
        B: Body<Data = Bytes> + Send + Unpin + 'static,
        B::Error: Into<BoxError> + Send,
    {
        // Waits while the peer's SETTINGS_MAX_CONCURRENT_STREAMS is reached; an error here means the
        // connection is gone and nothing was sent.
        if let Err(error) = poll_fn(|cx| self.tx.poll_ready(cx)).await {
            self.closed.store(true, Ordering::Release);
            return Err(SendError {
                request: Some(req),
                error,
            });
        }
        let tx = &mut self.tx;
        let (mut parts, body) = req.into_parts();
        prepare_head(&parts.method, &mut parts.headers, &body);
        let named = self.named.load(Ordering::Relaxed);
        if super::hpack::per_request(&mut parts.headers, named) && !named {
            self.named.store(true, Ordering::Relaxed);
        }
        let eos = body.is_end_stream();
        let (response, stream) = match tx.send_request(Request::from_parts(parts, ()), eos) {
            Ok(x) => x,
            Err(error) => {
                return Err(SendError {
                    request: None,
                    error,
                })
            }
        };
        let mut pipe = (!eos).then(|| Box::pin(pipe_body(body, stream)));
        let head = await_head(response, &mut pipe).await;
        if let Some(p) = pipe {
            // The app answered before the request body ended (a streaming call): it goes on by itself.
            tokio::spawn(p);
        }
        match head {
            Ok(resp) => {
                let (p, recv) = resp.into_parts();
                let body = H2Body::new(recv, &p.headers);
                Ok(Response::from_parts(p, body))
            }
            Err(error) => Err(SendError {
                request: None,
                error,
            }),
        }
    }
}

/// The response head, while the request body is piped beside it; `pipe` is emptied once the body is all sent.
async fn await_head(
    mut response: ResponseFuture,
    pipe: &mut Option<Pin<Box<impl Future<Output = ()> + Send>>>,
) -> Result<Response<RecvStream>, ::h2::Error> {
    poll_fn(|cx| {
        if let Some(p) = pipe.as_mut() {
            if p.as_mut().poll(cx).is_ready() {
                *pipe = None;
            }
        }
        Pin::new(&mut response).poll(cx)
    })
    .await
}

/// What hyper's client does to a request head before HTTP/2 takes it: connection-specific fields out (a
/// `TE: trailers` stays, RFC 9113 §8.2.2), and `content-length` from a body of known length (not for a method
/// without defined payload semantics whose body is empty).
fn prepare_head<B: Body>(method: &Method, headers: &mut HeaderMap, body: &B) {
    let trailers = headers.get(TE).is_some_and(|v| v == "trailers");
    strip_hop_by_hop(headers, false);
    if trailers {
        headers.insert(TE, HeaderValue::from_static("trailers"));
    }
    if let Some(len) = body.size_hint().exact() {
        let payload_method = !matches!(
            *method,
            Method::GET | Method::HEAD | Method::DELETE | Method::CONNECT
        );
        if (len != 0 || payload_method) && !headers.contains_key(CONTENT_LENGTH) {
            headers.insert(CONTENT_LENGTH, HeaderValue::from(len));
        }
    }
}

/// The request body onto the stream, as the peer's window allows; a broken body resets the stream, and a reset
/// from the peer ends the pipe.
async fn pipe_body<B>(mut body: B, mut stream: SendStream<Bytes>)
where
    B: Body<Data = Bytes> + Send + Unpin,
    B::Error: Into<BoxError> + Send,
{
    loop {
        let frame = poll_fn(|cx| {
            if stream.poll_reset(cx).is_ready() {
                return Poll::Ready(None);
            }
            Pin::new(&mut body).poll_frame(cx).map(Some)
        })
        .await;
        let frame = match frame {
            None => return, // the peer reset the stream
            Some(None) => {
                let _ = stream.send_data(Bytes::new(), true);
                return;
            }
            Some(Some(Err(_))) => {
                stream.send_reset(::h2::Reason::INTERNAL_ERROR);
                return;
            }
            Some(Some(Ok(f))) => f,
        };
        match frame.into_data() {
            Ok(data) => {
                let eos = body.is_end_stream();
                if send_data(&mut stream, data, eos).await.is_err() || eos {
                    return;
                }
            }
            Err(frame) => {
                if let Ok(t) = frame.into_trailers() {
                    let _ = stream.send_trailers(t);
                    return;
                }
            }
        }
    }
}

/// `data` in pieces the stream's send window has room for (h2 would otherwise buffer it all).
async fn send_data(
    stream: &mut SendStream<Bytes>,
    mut data: Bytes,
    eos: bool,
) -> Result<(), ::h2::Error> {
    if data.is_empty() {
        return stream.send_data(data, eos);
    }
    while !data.is_empty() {
        stream.reserve_capacity(data.len());
        let cap = poll_fn(|cx| {
            if let Poll::Ready(r) = stream.poll_reset(cx) {
                return Poll::Ready(Err(r.map_or_else(|e| e, ::h2::Error::from)));
            }
            match stream.poll_capacity(cx) {
                Poll::Ready(Some(Ok(0))) | Poll::Pending => Poll::Pending,
                Poll::Ready(Some(Ok(n))) => Poll::Ready(Ok(n)),
                Poll::Ready(Some(Err(e))) => Poll::Ready(Err(e)),
                Poll::Ready(None) => Poll::Ready(Err(::h2::Error::from(::h2::Reason::CANCEL))),
            }
        })
        .await?;
        let chunk = data.split_to(cap.min(data.len()));
        stream.send_data(chunk, eos && data.is_empty())?;
    }
    Ok(())
}

/// A response body from an HTTP/2 stream: DATA frames, then the trailers if any.
pub struct H2Body {
    recv: RecvStream,
    data_done: bool,
    done: bool,
    /// What `content-length` says is left, when it says.
    left: Option<u64>,
}

impl H2Body {
    fn new(recv: RecvStream, headers: &HeaderMap) -> H2Body {
        let done = recv.is_end_stream();
        H2Body {
            left: if done {
                Some(0)
            } else {
                super::content_length(headers).ok().flatten()
            },
            data_done: false,
            done,
            recv,
        }
    }
}

impl Body for H2Body {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        if this.done {
            return Poll::Ready(None);
        }
        if !this.data_done {
            match this.recv.poll_data(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Ok(data))) => {
                    // Consumed as far as flow control goes: the peer may send more (hyper's client does the same).
                    let _ = this.recv.flow_control().release_capacity(data.len());
                    if let Some(l) = this.left.as_mut() {
                        *l = l.saturating_sub(data.len() as u64);
                    }
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Poll::Ready(Some(Err(e))) => {
                    this.done = true;
                    return Poll::Ready(Some(Err(e.into())));
                }
                Poll::Ready(None) => this.data_done = true,
            }
        }
        match this.recv.poll_trailers(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(r) => {
                this.done = true;
                match r {
                    Ok(Some(t)) => Poll::Ready(Some(Ok(Frame::trailers(t)))),
                    Ok(None) => Poll::Ready(None),
                    Err(e) => Poll::Ready(Some(Err(e.into()))),
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done || self.recv.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        match self.left {
            Some(n) => SizeHint::with_exact(n),
            None => SizeHint::default(),
        }
    }
}
