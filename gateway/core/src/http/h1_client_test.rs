use super::*;

use http_body_util::{BodyExt, Full};
use tokio::io::{duplex, AsyncReadExt, AsyncWriteExt, DuplexStream};

fn client() -> (H1Client, DuplexStream) {
    let (a, b) = duplex(64 * 1024);
    (H1Client::new(a, ()), b)
}

fn get(path: &str) -> Request<Full<Bytes>> {
    Request::builder()
        .uri(path)
        .header("host", "app")
        .body(Full::new(Bytes::new()))
        .unwrap()
}

/// Reads one request head (and `body` more bytes) from the server side.
async fn read_request(s: &mut DuplexStream, body: usize) -> String {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        if let Some(i) = got.windows(4).position(|w| w == b"\r\n\r\n") {
            if got.len() >= i + 4 + body {
                break;
            }
        }
        let n = s.read(&mut buf).await.unwrap();
        assert!(n > 0, "client closed: {:?}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
    }
    String::from_utf8(got).unwrap()
}

/// The server side of one exchange: reads a request (no body), writes `raw`.
async fn reply(s: &mut DuplexStream, raw: &[u8]) {
    read_request(s, 0).await;
    s.write_all(raw).await.unwrap();
}

async fn body_of(resp: Response<H1Body>) -> Result<(Bytes, Option<HeaderMap>), BoxError> {
    let c = resp.into_body().collect().await?;
    let t = c.trailers().cloned();
    Ok((c.to_bytes(), t))
}

#[tokio::test]
async fn content_length_answer_is_read_and_the_connection_reused() {
    let (c, mut s) = client();
    let server = async {
        let r = read_request(&mut s, 0).await;
        assert!(r.starts_with("GET /a?b=1 HTTP/1.1\r\n"), "{r}");
        assert!(r.contains("host: app\r\n"));
        assert!(
            !r.contains("content-length"),
            "GET with no body: no framing field: {r}"
        );
        s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-A: 1\r\nX-A: 2\r\n\r\nhello")
            .await
            .unwrap();
        let r = read_request(&mut s, 0).await;
        assert!(r.starts_with("GET /second HTTP/1.1\r\n"), "{r}");
        s.write_all(b"HTTP/1.1 204 No Content\r\n\r\n")
            .await
            .unwrap();
        s
    };
    let client = async {
        let resp = c.send(get("/a?b=1")).await.map_err(|e| e.error).unwrap();
        assert_eq!(resp.status(), 200);
        let xs: Vec<_> = resp.headers().get_all("x-a").iter().collect();
        assert_eq!(xs, ["1", "2"]);
        assert_eq!(resp.body().size_hint().exact(), Some(5));
        let (b, _) = body_of(resp).await.unwrap();
        assert_eq!(b, "hello");
        assert!(c.is_ready(), "read whole: back in its handle");
        let resp = c.send(get("/second")).await.map_err(|e| e.error).unwrap();
        assert_eq!(resp.status(), 204);
        assert!(resp.body().is_end_stream());
        assert!(c.is_ready());
    };
    let (_s, ()) = tokio::join!(server, client);
}

#[tokio::test]
async fn chunked_answer_with_extensions_and_trailers() {
    let (c, mut s) = client();
    let server = async {
        read_request(&mut s, 0).await;
        s.write_all(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n")
            .await
            .unwrap();
        s.write_all(b"6\r\n world\r\n0\r\ngrpc-status: 0\r\n\r\n")
            .await
            .unwrap();
        s
    };
    let client = async {
        let resp = c.send(get("/")).await.map_err(|e| e.error).unwrap();
        let (b, t) = body_of(resp).await.unwrap();
        assert_eq!(b, "hello world");
        assert_eq!(t.unwrap()["grpc-status"], "0");
        assert!(c.is_ready());
    };
    let (_s, ()) = tokio::join!(server, client);
}

#[tokio::test]
async fn head_answer_has_no_body_and_interim_answers_are_read_past() {
    let (c, mut s) = client();
    let server = async {
        reply(
            &mut s,
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n",
        )
        .await;
        s
    };
    let client = async {
        let mut req = get("/");
        *req.method_mut() = Method::HEAD;
        let resp = c.send(req).await.map_err(|e| e.error).unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()["content-length"], "9");
        assert!(resp.body().is_end_stream());
        assert!(c.is_ready(), "a HEAD answer ends at its head");
    };
    let (_s, ()) = tokio::join!(server, client);
}

#[tokio::test]
async fn close_and_read_to_end_answers_are_not_reused() {
    for (answer, body) in [
        (
            &b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok"[..],
            "ok",
        ),
        (&b"HTTP/1.1 200 OK\r\n\r\nuntil close"[..], "until close"),
        (&b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok"[..], "ok"),
    ] {
        let (c, mut s) = client();
        let server = async {
            reply(&mut s, answer).await;
            drop(s);
        };
        let client = async {
            let resp = c.send(get("/")).await.map_err(|e| e.error).unwrap();
            let (b, _) = body_of(resp).await.unwrap();
            assert_eq!(b, body);
            assert!(!c.is_ready());
        };
        tokio::join!(server, client);
    }
}

#[tokio::test]
async fn ambiguous_or_malformed_answers_are_parse_errors() {
    let cases: [&[u8]; 8] = [
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n",
        b"HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 5, 6\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: +5\r\n\r\n",
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n",
        b"HTTP/1.1 20 OK\r\n\r\n",
    ];
    for answer in cases {
        let (c, mut s) = client();
        let server = async {
            reply(&mut s, answer).await;
            s
        };
        let client = async {
            let e = c.send(get("/")).await.err().map(|e| e.error);
            assert!(
                matches!(e, Some(ref e) if e.is_parse()),
                "{:?}: {e:?}",
                String::from_utf8_lossy(answer)
            );
        };
        let (_s, ()) = tokio::join!(server, client);
    }
}

#[tokio::test]
async fn too_many_fields_or_too_large_a_head_is_refused() {
    let mut many = b"HTTP/1.1 200 OK\r\n".to_vec();
    for i in 0..101 {
        many.extend_from_slice(format!("x-{i}: v\r\n").as_bytes());
    }
    many.extend_from_slice(b"\r\n");
    let mut large = b"HTTP/1.1 200 OK\r\n".to_vec();
    for _ in 0..70 {
        large.extend_from_slice(b"x-big: ");
        large.extend_from_slice(&[b'a'; 1000]);
        large.extend_from_slice(b"\r\n");
    }
    for answer in [many, large] {
        let (c, mut s) = client();
        let server = async {
            read_request(&mut s, 0).await;
            let _ = s.write_all(&answer).await;
            s
        };
        let client = async {
            let e = c.send(get("/")).await.err().map(|e| e.error);
            assert!(matches!(e, Some(ref e) if e.is_parse()), "{e:?}");
        };
        let (_s, ()) = tokio::join!(server, client);
    }
}

#[tokio::test]
async fn malformed_chunks_fail_the_body_and_close() {
    for answer in [
        &b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\nhello\r\n0\r\n\r\n"[..],
        &b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"[..],
        &b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhelloXX0\r\n\r\n"[..],
        &b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n11111111111111111\r\n"[..],
        &b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort"[..],
    ] {
        let (c, mut s) = client();
        let server = async {
            reply(&mut s, answer).await;
            drop(s);
        };
        let client = async {
            let resp = c.send(get("/")).await.map_err(|e| e.error).unwrap();
            assert!(
                body_of(resp).await.is_err(),
                "{:?}",
                String::from_utf8_lossy(answer)
            );
            assert!(!c.is_ready());
        };
        tokio::join!(server, client);
    }
}

#[tokio::test]
async fn request_bodies_are_framed_as_hyper_frames_them() {
    // Exact length: content-length; an empty POST says 0.
    let (c, mut s) = client();
    let server = async {
        let r = read_request(&mut s, 3).await;
        assert!(
            r.contains("content-length: 3\r\n") && r.ends_with("\r\n\r\nabc"),
            "{r}"
        );
        s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
            .await
            .unwrap();
        let r = read_request(&mut s, 0).await;
        assert!(
            r.starts_with("POST / HTTP/1.1\r\n") && r.contains("content-length: 0\r\n"),
            "{r}"
        );
        s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
            .await
            .unwrap();
        s
    };
    let caller = async {
        let mut req = get("/");
        *req.method_mut() = Method::POST;
        *req.body_mut() = Full::new(Bytes::from_static(b"abc"));
        let resp = c.send(req).await.map_err(|e| e.error).unwrap();
        body_of(resp).await.unwrap();
        let mut req = get("/");
        *req.method_mut() = Method::POST;
        let resp = c.send(req).await.map_err(|e| e.error).unwrap();
        body_of(resp).await.unwrap();
        assert!(c.is_ready());
    };
    let (_s, ()) = tokio::join!(server, caller);

    // Unknown length: chunked, trailers in the last chunk.
    let (c, mut s) = client();
    let server = async {
        let mut got = Vec::new();
        let mut buf = [0u8; 1024];
        while !got.ends_with(b"0\r\nx-t: 1\r\n\r\n") {
            let n = s.read(&mut buf).await.unwrap();
            assert!(n > 0);
            got.extend_from_slice(&buf[..n]);
        }
        let r = String::from_utf8(got).unwrap();
        assert!(r.contains("transfer-encoding: chunked\r\n"), "{r}");
        assert!(
            r.ends_with("\r\n\r\n2\r\nab\r\n1\r\nc\r\n0\r\nx-t: 1\r\n\r\n"),
            "{r}"
        );
        s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
            .await
            .unwrap();
        s
    };
    let client = async {
        let mut t = HeaderMap::new();
        t.insert("x-t", HeaderValue::from_static("1"));
        let body = Frames(
            [
                Frame::data(Bytes::from_static(b"ab")),
                Frame::data(Bytes::from_static(b"c")),
                Frame::trailers(t),
            ]
            .into(),
        );
        let req = Request::post("/up")
            .header("host", "app")
            .body(body)
            .unwrap();
        let resp = c.send(req).await.map_err(|e| e.error).unwrap();
        body_of(resp).await.unwrap();
        assert!(c.is_ready());
    };
    let (_s, ()) = tokio::join!(server, client);
}

/// A body of frames, each ready at once, of unknown length.
struct Frames(std::collections::VecDeque<Frame<Bytes>>);

impl Body for Frames {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        Poll::Ready(self.get_mut().0.pop_front().map(Ok))
    }
}

#[tokio::test]
async fn a_closed_idle_connection_gives_the_request_back() {
    let (c, s) = client();
    drop(s);
    assert!(!c.is_ready());
    let e = c.send(get("/x")).await.err().unwrap();
    assert!(matches!(e.error, Error::Closed));
    assert_eq!(e.request.unwrap().uri(), "/x");
}

#[tokio::test]
async fn unasked_bytes_make_an_idle_connection_unusable() {
    let (c, mut s) = client();
    s.write_all(b"HTTP/1.1 408 Request Timeout\r\n\r\n")
        .await
        .unwrap();
    tokio::task::yield_now().await;
    assert!(!c.is_ready());
}

#[tokio::test]
async fn upgrade_hands_over_the_connection_and_early_bytes() {
    let (c, mut s) = client();
    let server = async {
        let r = read_request(&mut s, 0).await;
        assert!(r.contains("upgrade: websocket\r\n"), "{r}");
        s.write_all(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\nearly")
            .await
            .unwrap();
        let mut buf = [0u8; 4];
        s.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"ping");
        s
    };
    let client = async {
        let req = Request::get("/ws")
            .header("host", "app")
            .header("connection", "upgrade")
            .header("upgrade", "websocket")
            .body(Full::new(Bytes::new()))
            .unwrap();
        let mut resp = c.send(req).await.map_err(|e| e.error).unwrap();
        assert_eq!(resp.status(), 101);
        let mut up = take_upgrade(&mut resp).expect("upgraded");
        assert_eq!(up.pre, "early");
        up.io.write_all(b"ping").await.unwrap();
        assert!(!c.is_ready(), "the tunnel's now");
    };
    let (_s, ()) = tokio::join!(server, client);
}
