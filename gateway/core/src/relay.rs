//! The one L4 relay: bytes both ways with half-close (a FIN, or a TLS close_notify, is passed on as the same
//! on the other side) and back-pressure (each direction holds at most one buffer; a slow reader stops the
//! writer). Used by inbound and upstream TCP listeners, gateways and upgraded HTTP connections.

use tokio::io::{AsyncRead, AsyncWrite};

use crate::listener::ListenerStats;

/// 64 KiB per direction: the bound on what one connection holds in user space (design.md "every buffer").
pub const BUFFER: usize = 64 * 1024;

/// Relays until both directions are closed or one fails; counts the downstream's bytes when it ends.
pub async fn relay<D, U>(down: &mut D, up: &mut U, stats: &ListenerStats)
where
    D: AsyncRead + AsyncWrite + Unpin + ?Sized,
    U: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    // An abort (reset, TLS error) ends both sides; what was relayed up to then is not known exactly here.
    let (from_down, from_up) = tokio::io::copy_bidirectional_with_sizes(down, up, BUFFER, BUFFER)
        .await
        .unwrap_or_default();
    stats.bytes_received.add(from_down);
    stats.bytes_sent.add(from_up);
}
