//! Fuzz `meshgw_proto::h1_response`: arbitrary bytes read as an app's or a peer sidecar's answer, its head
//! then its chunked body fed in pieces. No panic; every range a field is given lies inside the bytes parsed;
//! the head's length never passes the buffer; a refused framing never comes back as a usable one; the chunk
//! reader never hands out more data than it was given, nor more than the sizes it read announced.
#![no_main]

use libfuzzer_sys::fuzz_target;
use meshgw_proto::h1_response::{parse_head, Chunked, Field, Framing, Step, MAX_HEAD};

fn inside(buf: &[u8], fields: &[Field]) {
    for f in fields {
        assert!(f.name.0 <= f.name.1 && f.name.1 <= buf.len(), "{f:?}");
        assert!(f.value.0 <= f.value.1 && f.value.1 <= buf.len(), "{f:?}");
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let (head_req, upgrade) = (flags & 1 != 0, flags & 2 != 0);
    let piece = usize::from(flags >> 2).max(1);
    let h = match parse_head(rest, head_req, upgrade) {
        Ok(Some(h)) => h,
        Ok(None) => {
            assert!(rest.len() <= MAX_HEAD);
            return;
        }
        Err(_) => return,
    };
    assert!(h.len <= rest.len() && h.len <= MAX_HEAD);
    inside(&rest[..h.len], &h.fields);
    assert!(h.framing != Framing::Upgrade || (upgrade && h.status == 101));
    assert!(!(head_req && matches!(h.framing, Framing::Length(_) | Framing::Chunked)));
    if h.framing == Framing::Eof {
        assert!(!h.keep_alive);
    }
    if h.framing != Framing::Chunked {
        return;
    }
    // The body, fed `piece` bytes at a time.
    let body = &rest[h.len..];
    let (mut c, mut buf, mut fed, mut data_out) = (Chunked::Size, Vec::new(), 0usize, 0usize);
    for _ in 0..100_000 {
        let step = match c.step(&buf) {
            Ok(s) => s,
            Err(_) => return,
        };
        match step {
            Step::Data(n) => {
                assert!(n > 0 && n <= buf.len());
                data_out += n;
                buf.drain(..n);
            }
            Step::Skip(n) => {
                assert!(n > 0 && n <= buf.len());
                buf.drain(..n);
            }
            Step::Trailers { len, fields } => {
                assert!(len <= buf.len());
                inside(&buf[..len], &fields);
                break;
            }
            Step::End(n) => {
                assert!(n <= buf.len());
                break;
            }
            Step::More => {
                if fed == body.len() {
                    break;
                }
                let end = (fed + piece).min(body.len());
                buf.extend_from_slice(&body[fed..end]);
                fed = end;
            }
        }
    }
    assert!(data_out <= body.len());
});
