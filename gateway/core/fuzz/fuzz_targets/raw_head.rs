//! Fuzz `meshgw_proto::raw_head`: arbitrary bytes searched for an arbitrary request line, as the inbound tap
//! searches what a caller sent. No panic; what it says it used lies inside the bytes and covers the request
//! line it found; that line is really there, followed by `#` exactly when it says fragment; a Content-Length is
//! reported only when asked for.
#![no_main]

use libfuzzer_sys::fuzz_target;
use meshgw_proto::raw_head::find;

fuzz_target!(|data: &[u8]| {
    let [flags, m, t, rest @ ..] = data else {
        return;
    };
    let (m, t) = (usize::from(*m % 8), usize::from(*t % 16));
    let Some((method, rest)) = rest.split_at_checked(m) else {
        return;
    };
    let Some((target, hay)) = rest.split_at_checked(t) else {
        return;
    };
    let want_length = flags & 1 != 0;
    let Some(f) = find(hay, method, target, want_length) else {
        return;
    };
    assert!(!method.is_empty());
    assert!(f.used <= hay.len());
    assert!(want_length || !f.content_length);
    let line = method.len() + 1 + target.len();
    assert!(f.used >= line);
    // The line ends `f.used` bytes in, or earlier when the head's end was found after it.
    let found = (0..=f.used - line).rev().find(|&at| {
        hay.get(at..at + line).is_some_and(|w| {
            w.starts_with(method) && w[method.len()] == b' ' && w.ends_with(target)
        }) && matches!(hay.get(at + line), Some(b'#' | b' '))
    });
    let at = found.expect("a request line inside what was used");
    if f.used == at + line {
        assert_eq!(f.fragment, hay.get(at + line) == Some(&b'#'));
    }
});
