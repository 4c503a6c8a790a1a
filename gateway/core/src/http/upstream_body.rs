//! The body of a response from upstream (the app, or another sidecar), whichever client hop brought it:
//! the HTTP/1.1 connection (crate::http::h1_client) or the HTTP/2 stream (crate::http::h2_client) the request
//! task drove.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};

use super::h1_client::H1Body;

use super::h2_client::H2Body;
use super::BoxError;

pub enum UpBody {
    H1(H1Body),
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
            UpBody::H1(b) => Pin::new(b).poll_frame(cx),
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
