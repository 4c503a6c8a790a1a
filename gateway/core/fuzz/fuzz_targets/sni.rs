//! Fuzz `meshgw_proto::sni::peek_client_hello`: no panic on any bytes, and the peek is monotone (a prefix
//! answers `NeedMore` or what the whole buffer answers), which is what lets a mesh gateway peek again as
//! bytes arrive (consul.md §6). Each input is tried raw and, so that the fuzzer reaches the ClientHello body
//! without first having to learn the record and handshake lengths, wrapped as a handshake message in records.
#![no_main]

use libfuzzer_sys::fuzz_target;
use meshgw_proto::sni::{peek_client_hello, Peek, MAX_HELLO};

fn check(buf: &[u8], cut: usize) {
    let full = peek_client_hello(buf);
    if let Ok(Peek::Hello(hello)) = &full {
        if let Some(sni) = &hello.sni {
            assert!(
                sni.is_ascii() && !sni.bytes().any(|b| b.is_ascii_uppercase()),
                "{sni:?}"
            );
        }
    }
    if buf.len() >= MAX_HELLO {
        assert!(
            full.is_err() || matches!(full, Ok(Peek::Hello(_))),
            "NeedMore past MAX_HELLO"
        );
    }
    for n in [
        cut % (buf.len() + 1),
        buf.len() / 2,
        buf.len().saturating_sub(1),
    ] {
        let prefix = peek_client_hello(buf.get(..n).unwrap_or(buf));
        assert!(
            prefix == Ok(Peek::NeedMore) || prefix == full,
            "prefix {n}: {prefix:?} vs {full:?}"
        );
    }
}

/// `body` as a ClientHello handshake message in records, the first fragment `cut` bytes long.
fn wrapped(body: &[u8], cut: usize) -> Vec<u8> {
    let n = body.len().min(0xff_ffff);
    let mut msg = vec![0x01, (n >> 16) as u8, (n >> 8) as u8, n as u8];
    msg.extend_from_slice(body.get(..n).unwrap_or(body));
    let cut = if msg.len() > 1 {
        1 + cut % (msg.len() - 1)
    } else {
        msg.len()
    };
    let mut out = Vec::with_capacity(msg.len() + 10);
    for frag in [msg.get(..cut), msg.get(cut..)].into_iter().flatten() {
        for chunk in frag.chunks(16384) {
            out.extend_from_slice(&[
                0x16,
                0x03,
                0x01,
                (chunk.len() >> 8) as u8,
                chunk.len() as u8,
            ]);
            out.extend_from_slice(chunk);
        }
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let cut = data.first().map_or(0, |&b| usize::from(b));
    check(data, cut);
    let body = data.get(1..).unwrap_or_default();
    let hello = wrapped(body, cut);
    // A whole message is never NeedMore (unless it is too long to fit).
    if hello.len() < MAX_HELLO {
        assert!(peek_client_hello(&hello) != Ok(Peek::NeedMore));
    }
    check(&hello, cut);
});
