//! What hyper's parsing hides about a request head as it arrived, read from the raw bytes the caller sent
//! (the inbound listener's tap keeps the most recent ones, `inbound/http/tap.rs`):
//! - a target that went on with `#`: Envoy refuses any fragment with 400 (`http_reject_path_with_fragment`,
//!   l7-security.md §1.2 step 1, §6.3), but the `http` crate cuts the fragment off while parsing the target;
//! - a `Content-Length` beside `Transfer-Encoding`: hyper removes it, Envoy answers 400 (§4, §6.16).
//!
//! Security does not rest on this: without it the fragment-free target is what is both authorized and forwarded
//! (§6.7). It makes the answer Envoy's.

/// What [`find`] read about one request's head.
#[derive(Default, Debug, Clone, Copy, PartialEq, Eq)]
pub struct Found {
    /// The target went on with `#`.
    pub fragment: bool,
    /// Asked for (a head with `Transfer-Encoding`): the head also had a `Content-Length` line.
    pub content_length: bool,
    /// How much of the bytes searched is of no more use: through this head's empty line, or through its target
    /// when the head's end is not there.
    pub used: usize,
}

/// Finds the request line `method SP target` in `hay`, followed by `#` or a space (a longer target is another
/// request), and reads its head.
pub fn find(hay: &[u8], method: &[u8], target: &[u8], want_length: bool) -> Option<Found> {
    let at = find_line(hay, method, target)?;
    let line_end = at + method.len() + 1 + target.len();
    let rest = hay.get(line_end..).unwrap_or_default();
    let head = head_len(rest);
    Some(Found {
        fragment: rest.first() == Some(&b'#'),
        content_length: want_length
            && has_length(rest.get(..head.unwrap_or(rest.len())).unwrap_or_default()),
        used: line_end + head.unwrap_or(0),
    })
}

/// Where `method SP target` starts in `hay`, followed by `#` or a space. Candidates are the places holding the
/// method's first byte, so a head that is not the request line costs one byte scan, not a comparison at every
/// offset.
fn find_line(hay: &[u8], method: &[u8], target: &[u8]) -> Option<usize> {
    let first = *method.first()?;
    let len = method.len() + 1 + target.len();
    let mut from = 0;
    loop {
        let at = from + hay.get(from..)?.iter().position(|&b| b == first)?;
        let line = hay.get(at..=at + len)?; // too short here means too short at every later offset too
        let (m, rest) = line.split_at(method.len());
        if m == method
            && rest.first() == Some(&b' ')
            && rest.get(1..=target.len()) == Some(target)
            && matches!(line.last(), Some(b'#' | b' '))
        {
            return Some(at);
        }
        from = at + 1;
    }
}

/// The length of what is left of a head in `rest` (the request line's tail, the fields, the empty line), if its
/// end is there. Lines end with LF, optionally after CR, as hyper's parser (httparse) takes them.
fn head_len(rest: &[u8]) -> Option<usize> {
    let mut start = 0;
    loop {
        let nl = start + rest.get(start..)?.iter().position(|&b| b == b'\n')?;
        let line = rest.get(start..nl)?;
        if start > 0 && (line.is_empty() || line == b"\r") {
            return Some(nl + 1);
        }
        start = nl + 1;
    }
}

/// A `content-length:` line in the head (names carry no whitespace before the colon: hyper refuses them).
fn has_length(head: &[u8]) -> bool {
    head.split(|&b| b == b'\n').any(|line| {
        line.get(..15)
            .is_some_and(|n| n.eq_ignore_ascii_case(b"content-length:"))
    })
}

#[cfg(test)]
#[path = "raw_head_test.rs"]
mod tests;
