use super::*;

fn head(raw: &[u8]) -> Result<Option<Head>, &'static str> {
    parse_head(raw, false, false)
}

#[test]
fn framing_of_answers() {
    let f = |raw: &[u8]| head(raw).unwrap().unwrap().framing;
    assert_eq!(
        f(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n"),
        Framing::Length(5)
    );
    assert_eq!(
        f(b"HTTP/1.1 200 OK\r\nContent-Length: 5, 5\r\nContent-Length: 5\r\n\r\n"),
        Framing::Length(5)
    );
    assert_eq!(
        f(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, Chunked\r\n\r\n"),
        Framing::Chunked
    );
    assert_eq!(
        f(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n"),
        Framing::Eof
    );
    assert_eq!(f(b"HTTP/1.1 200 OK\r\n\r\n"), Framing::Eof);
    assert_eq!(
        f(b"HTTP/1.1 204 No Content\r\nContent-Length: 3\r\n\r\n"),
        Framing::Empty
    );
    assert_eq!(
        f(b"HTTP/1.1 304 Not Modified\r\nTransfer-Encoding: chunked\r\n\r\n"),
        Framing::Empty
    );
    assert_eq!(f(b"HTTP/1.1 100 Continue\r\n\r\n"), Framing::Empty);
    let h = parse_head(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", true, false)
        .unwrap()
        .unwrap();
    assert_eq!(h.framing, Framing::Empty, "an answer to HEAD");
    let h = parse_head(
        b"HTTP/1.1 101 Switching\r\nUpgrade: websocket\r\n\r\n",
        false,
        true,
    )
    .unwrap()
    .unwrap();
    assert_eq!(h.framing, Framing::Upgrade);
}

#[test]
fn refused_answers() {
    for raw in [
        &b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n"[..],
        b"HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 5, 6\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 0x5\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 99999999999999999999\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length:\r\n\r\n",
        b"HTTP/1.1 101 Switching\r\nUpgrade: websocket\r\n\r\n",
        b"HTTP/1.1 20 OK\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nBad Name: x\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nX: a\r\n b\r\n\r\n",
    ] {
        assert!(head(raw).is_err(), "{:?}", String::from_utf8_lossy(raw));
    }
}

#[test]
fn head_bounds() {
    let mut many = b"HTTP/1.1 200 OK\r\n".to_vec();
    for i in 0..=MAX_HEADERS {
        many.extend_from_slice(format!("x-{i}: v\r\n").as_bytes());
    }
    many.extend_from_slice(b"\r\n");
    assert_eq!(head(&many), Err("too many header fields"));
    let mut big = b"HTTP/1.1 200 OK\r\nx: ".to_vec();
    big.resize(MAX_HEAD + 10, b'a');
    assert_eq!(head(&big), Err("response head too large"));
    assert_eq!(head(b"HTTP/1.1 200 OK\r\nx: 1\r\n"), Ok(None));
}

#[test]
fn fields_and_keep_alive() {
    let raw = b"HTTP/1.1 200 OK\r\nX-A: 1\r\nConnection: keep-alive, Close\r\nContent-Length: 0\r\n\r\nrest";
    let h = head(raw).unwrap().unwrap();
    assert_eq!(h.len, raw.len() - 4);
    assert_eq!(h.status, 200);
    assert!(h.http11 && !h.keep_alive);
    let f = h.fields[0];
    assert_eq!(&raw[f.name.0..f.name.1], b"X-A");
    assert_eq!(&raw[f.value.0..f.value.1], b"1");
    let h = head(b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 0\r\n\r\n")
        .unwrap()
        .unwrap();
    assert!(h.keep_alive);
    let h = head(b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n")
        .unwrap()
        .unwrap();
    assert!(!h.keep_alive);
    let h = head(b"HTTP/1.1 200 OK\r\n\r\n").unwrap().unwrap();
    assert!(!h.keep_alive, "read to the close");
}

/// Runs the decoder over `body` fed in pieces of `piece` bytes: the data and the trailers' raw bytes.
fn decode(body: &[u8], piece: usize) -> Result<(Vec<u8>, Vec<u8>), &'static str> {
    let mut c = Chunked::Size;
    let (mut buf, mut data, mut trailers) = (Vec::new(), Vec::new(), Vec::new());
    let mut fed = 0;
    loop {
        match c.step(&buf)? {
            Step::Data(n) => {
                data.extend_from_slice(&buf[..n]);
                buf.drain(..n);
            }
            Step::Skip(n) => {
                buf.drain(..n);
            }
            Step::Trailers { len, fields } => {
                for f in fields {
                    trailers.extend_from_slice(&buf[f.name.0..f.name.1]);
                    trailers.push(b'=');
                    trailers.extend_from_slice(&buf[f.value.0..f.value.1]);
                }
                buf.drain(..len);
                return Ok((data, trailers));
            }
            Step::End(n) => {
                buf.drain(..n);
                assert!(buf.is_empty() || fed <= body.len());
                return Ok((data, trailers));
            }
            Step::More => {
                if fed >= body.len() {
                    return Err("incomplete");
                }
                let end = (fed + piece).min(body.len());
                buf.extend_from_slice(&body[fed..end]);
                fed = end;
            }
        }
    }
}

#[test]
fn chunked_bodies_in_any_pieces() {
    let body = b"5;ext=1\r\nhello\r\n6 ;x\r\n world\r\n0\r\ngrpc-status: 0\r\n\r\n";
    for piece in [1, 2, 3, 7, 100] {
        let (d, t) = decode(body, piece).unwrap();
        assert_eq!(d, b"hello world");
        assert_eq!(t, b"grpc-status=0");
    }
    let (d, t) = decode(b"3\r\nabc\r\n0\r\n\r\n", 1).unwrap();
    assert_eq!((d.as_slice(), t.as_slice()), (&b"abc"[..], &b""[..]));
}

#[test]
fn malformed_chunks() {
    for body in [
        &b"5\nhello\r\n0\r\n\r\n"[..],
        b"zz\r\n",
        b"5\r\nhelloXX0\r\n\r\n",
        b"11111111111111111\r\n",
        b"-1\r\n",
        b"0x5\r\n",
        b"5x\r\n",
        b"\r\n",
    ] {
        assert!(
            decode(body, 100).is_err(),
            "{:?}",
            String::from_utf8_lossy(body)
        );
    }
    let mut long = b"5;".to_vec();
    long.resize(MAX_CHUNK_LINE + 1, b'a');
    assert_eq!(Chunked::Size.step(&long), Err("chunk-size line too long"));
}

#[test]
fn chunk_size_lines() {
    assert_eq!(chunk_size(b"1a\r"), Ok(26));
    assert_eq!(chunk_size(b"1A;name=v\r"), Ok(26));
    assert_eq!(chunk_size(b"ffffffffffffffff\r"), Ok(u64::MAX));
    assert!(chunk_size(b"5").is_err(), "bare LF");
}
