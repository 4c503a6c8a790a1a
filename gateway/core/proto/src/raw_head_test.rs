use super::*;

#[test]
fn a_fragment_and_the_head_it_opens() {
    let hay = b"GET /a#x HTTP/1.1\r\nHost: a\r\n\r\nGET /b HTTP/1.1\r\n\r\n";
    let f = find(hay, b"GET", b"/a", false).unwrap();
    assert!(f.fragment && !f.content_length);
    assert_eq!(&hay[f.used..], b"GET /b HTTP/1.1\r\n\r\n");
    let f = find(&hay[f.used..], b"GET", b"/b", false).unwrap();
    assert_eq!(
        f,
        Found {
            fragment: false,
            content_length: false,
            used: 19
        }
    );
}

#[test]
fn bare_line_feeds_end_a_head_as_httparse_takes_them() {
    let hay = b"GET /a HTTP/1.1\nHost: a\n\nGET /a#f HTTP/1.1\r\n\r\n";
    let f = find(hay, b"GET", b"/a", false).unwrap();
    assert!(!f.fragment);
    assert!(find(&hay[f.used..], b"GET", b"/a", false).unwrap().fragment);
}

#[test]
fn only_a_whole_target_matches() {
    // `/a` is not `/ab`, nor a request line without what follows its target.
    assert_eq!(
        find(b"GET /ab HTTP/1.1\r\n\r\n", b"GET", b"/a", false),
        None
    );
    assert_eq!(find(b"GET /a", b"GET", b"/a", false), None);
    assert_eq!(
        find(b"xGET /a#", b"GET", b"/a", false).map(|f| f.fragment),
        Some(true)
    );
    assert_eq!(find(b"GET /a ", b"", b"/a", false), None);
}

#[test]
fn a_length_counts_only_inside_its_own_head() {
    let te = b"POST /b HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-length: 5\r\n\r\n";
    assert!(find(te, b"POST", b"/b", true).unwrap().content_length);
    assert!(!find(te, b"POST", b"/b", false).unwrap().content_length);
    let next = b"POST /b HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /c HTTP/1.1\r\nContent-Length: 1\r\n\r\n";
    assert!(!find(next, b"POST", b"/b", true).unwrap().content_length);
    // Without the head's end in the bytes, what there is counts, and only the request line is used.
    let f = find(
        b"POST /b HTTP/1.1\r\nContent-Length: 3\r\n",
        b"POST",
        b"/b",
        true,
    )
    .unwrap();
    assert!(f.content_length);
    assert_eq!(f.used, 7);
}
