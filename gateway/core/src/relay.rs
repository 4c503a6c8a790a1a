//! The one L4 relay: bytes both ways with half-close (a FIN, or a TLS close_notify, is passed on as the same
//! on the other side) and back-pressure (each direction holds at most one buffer; a slow reader stops the
//! writer). Used by inbound and upstream TCP listeners, gateways and upgraded HTTP connections.
//!
//! Not `tokio::io::copy_bidirectional_with_sizes`: that allocates and zeroes its whole buffer per direction when
//! the connection starts (128 KiB of `memset` per connection at 64 KiB, 6 % of a new-connection bench's samples,
//! and all of it resident for an idle keep-alive connection). Here a direction's buffer is allocated on its first
//! read, never zeroed (reads go into the uninitialised spare capacity), starts small and grows only while reads
//! fill it, as Envoy reads into 16 KiB slices and grows its buffer up to a limit.

use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite};

use crate::listener::ListenerStats;

/// 64 KiB per direction: the bound on what one connection holds in user space (design.md "every buffer").
pub const BUFFER: usize = 64 * 1024;
/// A direction's first buffer: a TLS record's worth of plaintext (RFC 8446 §5.1) holds a whole small request.
const FIRST: usize = 16 * 1024;

/// Relays until both directions are closed or one fails; counts the downstream's bytes when it ends.
pub async fn relay<D, U>(down: &mut D, up: &mut U, stats: &ListenerStats)
where
    D: AsyncRead + AsyncWrite + Unpin + ?Sized,
    U: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    let (from_down, from_up) = copy_both(down, up).await;
    stats.bytes_received.add(from_down);
    stats.bytes_sent.add(from_up);
}

/// Bytes both ways until both directions are closed or one fails: what passed from `a` and from `b`. An abort
/// (reset, TLS error) ends both sides; what was relayed up to then is still counted.
pub async fn copy_both<A, B>(a: &mut A, b: &mut B) -> (u64, u64)
where
    A: AsyncRead + AsyncWrite + Unpin + ?Sized,
    B: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    let mut from_a = Direction::default();
    let mut from_b = Direction::default();
    let _ = poll_fn(|cx| {
        let x = from_a.poll(cx, &mut *a, &mut *b)?;
        let y = from_b.poll(cx, &mut *b, &mut *a)?;
        if x.is_ready() && y.is_ready() {
            Poll::Ready(Ok::<(), io::Error>(()))
        } else {
            Poll::Pending
        }
    })
    .await;
    (from_a.relayed, from_b.relayed)
}

/// One direction: read into the buffer, write it out, pass the end of stream on as a shutdown.
#[derive(Default)]
struct Direction {
    buf: BytesMut,
    /// The size the buffer grows to next; 0 until the first read.
    want: usize,
    read_done: bool,
    need_flush: bool,
    done: bool,
    relayed: u64,
}

impl Direction {
    fn poll<R, W>(&mut self, cx: &mut Context<'_>, r: &mut R, w: &mut W) -> Poll<io::Result<()>>
    where
        R: AsyncRead + Unpin + ?Sized,
        W: AsyncWrite + Unpin + ?Sized,
    {
        if self.done {
            return Poll::Ready(Ok(()));
        }
        loop {
            // Read while there is room, even with bytes waiting to be written: larger writes, fewer records.
            if !self.read_done && self.buf.len() < self.want.max(FIRST) {
                if self.want == 0 {
                    self.want = FIRST;
                }
                let room = self.want - self.buf.len();
                self.buf.reserve(room);
                match tokio_util::io::poll_read_buf(Pin::new(&mut *r), cx, &mut self.buf) {
                    Poll::Ready(Ok(0)) => self.read_done = true,
                    Poll::Ready(Ok(n)) => {
                        self.relayed += n as u64;
                        // A read that filled what was free: the peer sends faster than one buffer; grow (bounded).
                        if n == room && self.want < BUFFER {
                            self.want = (self.want * 2).min(BUFFER);
                        }
                    }
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Pending => {
                        if self.buf.is_empty() {
                            if self.need_flush {
                                ready!(Pin::new(&mut *w).poll_flush(cx))?;
                                self.need_flush = false;
                            }
                            return Poll::Pending;
                        }
                    }
                }
            }
            if !self.buf.is_empty() {
                let n = ready!(Pin::new(&mut *w).poll_write(cx, &self.buf))?;
                if n == 0 {
                    return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                }
                self.buf.advance(n);
                self.need_flush = true;
                continue;
            }
            if self.read_done {
                ready!(Pin::new(&mut *w).poll_flush(cx))?;
                ready!(Pin::new(&mut *w).poll_shutdown(cx))?;
                self.done = true;
                // Nothing more will pass this way: give the memory back now, not when the other side ends.
                self.buf = BytesMut::new();
                return Poll::Ready(Ok(()));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn relays_both_ways_with_half_close_and_counts() {
        let (mut client, mut down) = tokio::io::duplex(1024);
        let (mut up, mut server) = tokio::io::duplex(1024);
        let relay_task = copy_both(&mut down, &mut up);
        let peers = async {
            // More than one buffer and more than the duplex capacity: back-pressure and growth both happen.
            let big: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
            let (mut cr, mut cw) = tokio::io::split(&mut client);
            let (mut sr, mut sw) = tokio::io::split(&mut server);
            let send = async {
                cw.write_all(&big).await.unwrap();
                cw.shutdown().await.unwrap();
            };
            let echo_back = async {
                let mut got = Vec::new();
                sr.read_to_end(&mut got).await.unwrap();
                sw.write_all(b"done").await.unwrap();
                sw.shutdown().await.unwrap();
                got
            };
            let recv = async {
                let mut got = Vec::new();
                cr.read_to_end(&mut got).await.unwrap();
                got
            };
            let ((), got, back) = tokio::join!(send, echo_back, recv);
            assert_eq!(got, big);
            assert_eq!(back, b"done");
        };
        let ((from_down, from_up), ()) = tokio::join!(relay_task, peers);
        assert_eq!((from_down, from_up), (300_000, 4));
    }

    #[tokio::test]
    async fn a_half_closed_direction_keeps_the_other_open() {
        let (mut client, mut down) = tokio::io::duplex(64);
        let (mut up, mut server) = tokio::io::duplex(64);
        let relay_task = copy_both(&mut down, &mut up);
        let peers = async {
            client.shutdown().await.unwrap();
            // The server sees the end of the request, and can still answer afterwards.
            let mut buf = Vec::new();
            server.read_to_end(&mut buf).await.unwrap();
            assert!(buf.is_empty());
            server.write_all(b"late answer").await.unwrap();
            server.shutdown().await.unwrap();
            let mut got = Vec::new();
            client.read_to_end(&mut got).await.unwrap();
            assert_eq!(got, b"late answer");
        };
        let ((from_down, from_up), ()) = tokio::join!(relay_task, peers);
        assert_eq!((from_down, from_up), (0, 11));
    }
}
