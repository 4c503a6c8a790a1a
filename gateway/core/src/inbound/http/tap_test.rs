use super::*;

/// No panic on any byte soup through the ring and its bounds (the reading itself is fuzzed: raw_head).
#[test]
fn arbitrary_bytes_never_panic() {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let alphabet = b"GET /#? \r\nContent-Length:ab%";
    for round in 0..2000 {
        let r = Recent::new(64 + round % 300);
        for _ in 0..8 {
            let len = (x % 97) as usize;
            let bytes: Vec<u8> = (0..len)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    alphabet[(x % alphabet.len() as u64) as usize]
                })
                .collect();
            r.record(&bytes);
            let _ = r.lookup("GET", "/", x.is_multiple_of(2));
            let _ = r.lookup("GET", "/a#", true);
        }
    }
}

#[test]
fn an_upload_does_not_stay_allocated() {
    let r = Recent::new(80 * 1024);
    r.record(&vec![b'u'; 200 * 1024]);
    r.record(b"GET /next HTTP/1.1\r\nHost: a\r\n\r\n");
    assert!(!r.lookup("GET", "/next", false).fragment);
    let ring = r.0.lock().unwrap();
    assert!(
        ring.bytes.capacity() <= 2 * SMALL,
        "{}",
        ring.bytes.capacity()
    );
}

#[test]
fn finds_fragments_in_order_and_stays_bounded() {
    let r = Recent::new(64);
    r.record(b"GET /admin#x HTTP/1.1\r\nHost: a\r\n\r\nGET /admin HTTP/1.1\r\n\r\n");
    assert!(r.lookup("GET", "/admin", false).fragment);
    assert!(!r.lookup("GET", "/admin", false).fragment);
    assert!(!r.lookup("GET", "/nothing", false).fragment);
    r.record(&[b'x'; 200]);
    assert!(r.0.lock().unwrap().bytes.len() <= 64);
    r.record(b"POST /p?q#f HTTP/1.1\r\n");
    assert!(r.lookup("POST", "/p?q", false).fragment);
    let r = Recent::new(4096);
    r.record(
        b"POST /b HTTP/1.1\r\nHost: a\r\nContent-length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
    );
    assert_eq!(
        r.lookup("POST", "/b", true),
        Raw {
            fragment: false,
            content_length: true
        }
    );
}

#[test]
fn pipelined_heads_with_bare_line_feeds_are_found_in_order() {
    let r = Recent::new(4096);
    // httparse takes LF alone as a line end: the first head ends at its empty line, not at a later CRLF CRLF.
    r.record(
        b"GET /a HTTP/1.1\nHost: a\n\nGET /a#f HTTP/1.1\r\nHost: a\r\n\r\nGET /b HTTP/1.1\r\n\r\n",
    );
    assert!(!r.lookup("GET", "/a", false).fragment);
    assert!(r.lookup("GET", "/a", false).fragment);
    assert!(!r.lookup("GET", "/b", false).fragment);
    assert!(r.0.lock().unwrap().bytes.is_empty());
}

#[test]
fn a_longer_target_is_another_request_and_a_length_after_the_head_is_not_this_ones() {
    let r = Recent::new(4096);
    r.record(b"GET /ab HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /a#x HTTP/1.1\r\nContent-Length: 1\r\n\r\n");
    assert_eq!(r.lookup("GET", "/ab", true), Raw::default());
    assert_eq!(
        r.lookup("GET", "/a", true),
        Raw {
            fragment: true,
            content_length: true
        }
    );
    // The match needs the whole `method SP target` and what follows it.
    let r = Recent::new(4096);
    r.record(b"GET /a");
    assert_eq!(r.lookup("GET", "/a", false), Raw::default());
    r.record(b"#x HTTP/1.1\r\n\r\n");
    assert!(r.lookup("GET", "/a", false).fragment);
}
