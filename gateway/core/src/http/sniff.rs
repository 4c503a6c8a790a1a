//! Which HTTP codec a connection speaks when ALPN did not say: the HTTP/2 connection preface (RFC 9113 §3.4) or
//! not. Envoy's `codec_type: AUTO` does the same on every HTTP listener Consul configures (http2-grpc.md §2.3,
//! §7 items 4 and 7): the app's local upstream port takes HTTP/1.1 and h2c with prior knowledge, and a mesh
//! caller that negotiated no ALPN is still served HTTP/2 if it starts with the preface.
//!
//! The bytes read while deciding are handed back in front of the stream ([`Prefixed`]), so the chosen codec
//! reads the connection from its first byte.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};

pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Codec {
    Http1,
    Http2,
}

/// A stream with bytes already read from it put back in front.
pub struct Prefixed<I> {
    head: Vec<u8>,
    at: usize,
    pub inner: I,
}

impl<I> Prefixed<I> {
    pub fn new(inner: I) -> Prefixed<I> {
        Prefixed {
            head: Vec::new(),
            at: 0,
            inner,
        }
    }
}

/// Reads until the first bytes tell the codec: the whole preface (HTTP/2), or a byte where it differs, the end
/// of the stream or `timeout` (HTTP/1.1, whose own parser then answers or times out as it would have). At most
/// 24 bytes are read, so nothing past the decision is buffered here.
pub async fn sniff<I: AsyncRead + Unpin>(
    inner: I,
    timeout: Option<Duration>,
) -> io::Result<(Codec, Prefixed<I>)> {
    let mut p = Prefixed::new(inner);
    let read = async {
        let mut buf = [0u8; 24];
        while p.head.len() < PREFACE.len() {
            let want = PREFACE.len() - p.head.len();
            let n = p.inner.read(&mut buf[..want]).await?;
            if n == 0 {
                return Ok(Codec::Http1);
            }
            p.head.extend_from_slice(&buf[..n]);
            if !PREFACE.starts_with(&p.head) {
                return Ok(Codec::Http1);
            }
        }
        Ok::<_, io::Error>(Codec::Http2)
    };
    let codec = match timeout {
        Some(t) => tokio::time::timeout(t, read)
            .await
            .unwrap_or(Ok(Codec::Http1))?,
        None => read.await?,
    };
    Ok((codec, p))
}

impl<I: AsyncRead + Unpin> AsyncRead for Prefixed<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.at < this.head.len() {
            let rest = &this.head[this.at..];
            let n = rest.len().min(buf.remaining());
            buf.put_slice(&rest[..n]);
            this.at += n;
            if this.at == this.head.len() {
                this.head = Vec::new();
                this.at = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Prefixed<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
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
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    async fn run(input: &'static [u8]) -> (Codec, Vec<u8>) {
        let (mut a, b) = tokio::io::duplex(64);
        a.write_all(input).await.unwrap();
        drop(a);
        let (c, mut p) = sniff(b, None).await.unwrap();
        let mut all = Vec::new();
        p.read_to_end(&mut all).await.unwrap();
        (c, all)
    }

    #[tokio::test]
    async fn preface_is_http2_and_nothing_is_lost() {
        let mut input = PREFACE.to_vec();
        input.extend_from_slice(b"\x00\x00\x00\x04\x00\x00\x00\x00\x00");
        let leaked: &'static [u8] = Box::leak(input.clone().into_boxed_slice());
        assert_eq!(run(leaked).await, (Codec::Http2, input));
    }

    #[tokio::test]
    async fn http1_is_told_at_the_first_differing_byte() {
        assert_eq!(
            run(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n").await,
            (Codec::Http1, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n".to_vec())
        );
        // A request line starting like the preface is HTTP/1.1 as soon as it differs.
        assert_eq!(
            run(b"PRI * HTTP/1.1\r\n\r\n").await,
            (Codec::Http1, b"PRI * HTTP/1.1\r\n\r\n".to_vec())
        );
        assert_eq!(run(b"").await, (Codec::Http1, Vec::new()));
    }
}
