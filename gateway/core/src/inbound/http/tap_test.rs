use super::*;

/// No panic on any byte soup (the fuzz crate links only meshgw-proto; this parser lives with its I/O).
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
