//! The body of a response from upstream (the app, or another sidecar), whichever client hop brought it:
//! hyper's HTTP/1.1 client, or the HTTP/2 stream the request task drove (crate::http::h2_client).

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};

use super::h2_client::H2Body;
use super::BoxError;

pub enum UpBody {
    H1(Incoming),
    H2(H2Body),
}

impl Body for UpBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            UpBody::H1(b) => Pin::new(b).poll_frame(cx).map_err(BoxError::from),
            UpBody::H2(b) => Pin::new(b).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            UpBody::H1(b) => b.is_end_stream(),
            UpBody::H2(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            UpBody::H1(b) => b.size_hint(),
            UpBody::H2(b) => b.size_hint(),
        }
    }
}
