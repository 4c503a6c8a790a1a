//! Request-head checks that Envoy's HTTP/1 codec and connection manager make and hyper does not
//! (l7-security.md §4, §6 items 16–19), on plain data so they can be fuzzed: the request-target form and the
//! header list. Every refusal is a [`HeadError`]: a 400 with a bounded metric label.

use crate::normalize::UnderscoreAction;

/// Why a request head is refused. Every variant is answered 400 ([`HeadError::status`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeadError {
    /// Empty target, control bytes or space in it, or a form that is none of the four of RFC 9112 §3.2.
    InvalidTarget,
    /// `http://` / `https://` with a missing or malformed authority (userinfo, bad port, bad host bytes).
    InvalidAbsoluteUrl,
    /// `host:port` outside CONNECT; CONNECT itself is not served by this path.
    AuthorityForm,
    /// `*`: meaningful only for `OPTIONS`, which the caller may answer itself before calling anything else.
    AsteriskForm,
    /// HTTP/1.1 request without `Host` (Envoy `missing_host_header`, l7-security.md §4).
    MissingHost,
    /// More than one `Host` line.
    DuplicateHost,
    /// A header name with `_` under `HeadersWithUnderscoresAction = REJECT_REQUEST` (Envoy
    /// `http1.unexpected_underscore`, l7-security.md §4).
    UnderscoreInHeaderName,
    /// Both `Content-Length` and `Transfer-Encoding` (Envoy with `allow_chunked_length` false, §4, §6.16).
    ContentLengthWithTransferEncoding,
    /// `Connection` nominates an `X-Forwarded-*` or pseudo header, or 10+ tokens (Envoy
    /// `http1.connection_header_rejected`).
    ConnectionHeaderRejected,
}

impl HeadError {
    /// Short snake_case label for metrics and access logs.
    pub fn reason(&self) -> &'static str {
        match self {
            HeadError::InvalidTarget => "invalid_request_target",
            HeadError::InvalidAbsoluteUrl => "invalid_absolute_url",
            HeadError::AuthorityForm => "authority_form_target",
            HeadError::AsteriskForm => "asterisk_form_target",
            HeadError::MissingHost => "missing_host_header",
            HeadError::DuplicateHost => "duplicate_host_header",
            HeadError::UnderscoreInHeaderName => "unexpected_underscore",
            HeadError::ContentLengthWithTransferEncoding => "content_length_with_transfer_encoding",
            HeadError::ConnectionHeaderRejected => "connection_header_rejected",
        }
    }

    /// HTTP status of the local answer: always 400 (l7-security.md §4, §6.16, §6.18).
    pub fn status(&self) -> u16 {
        400
    }
}

impl std::fmt::Display for HeadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.reason())
    }
}

impl std::error::Error for HeadError {}

/// A request target brought to origin form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The authority of an absolute-form target: it replaces `Host` before matching (l7-security.md §6.17).
    pub authority: Option<String>,
    /// Origin-form `/path[?query]`, still to be normalized (`normalize::normalize_path`).
    pub path_and_query: String,
}

/// Brings a request target to origin form (l7-security.md §4 first row, §6.17): origin-form passes as is;
/// `http[s]://authority[/path][?query]` gives its authority and `/path?query` (an empty path is `/`); `*`
/// and authority-form give their own errors; anything else is [`HeadError::InvalidTarget`].
pub fn split_target(target: &str) -> Result<Target, HeadError> {
    if target.is_empty() || target.bytes().any(|b| b <= b' ' || b == 0x7f) {
        return Err(HeadError::InvalidTarget);
    }
    if target.starts_with('/') {
        return Ok(Target {
            authority: None,
            path_and_query: target.to_owned(),
        });
    }
    if target == "*" {
        return Err(HeadError::AsteriskForm);
    }
    if let Some(rest) = strip_http_scheme(target) {
        return split_absolute(rest);
    }
    // RFC 9112 §3.2.3: authority-form is `host:port`, port required.
    let has_port = target
        .rsplit_once(':')
        .is_some_and(|(_, port)| !port.contains(']'));
    if valid_authority(target) && has_port {
        Err(HeadError::AuthorityForm)
    } else {
        Err(HeadError::InvalidTarget)
    }
}

/// The part after `http://` or `https://` (scheme case-insensitive, RFC 3986 §3.1). Envoy's codec takes
/// absolute URLs because Consul leaves `allow_absolute_url` at its default true (l7-security.md §0).
fn strip_http_scheme(target: &str) -> Option<&str> {
    ["http://", "https://"].iter().find_map(|scheme| {
        let head = target.get(..scheme.len())?;
        head.eq_ignore_ascii_case(scheme)
            .then(|| target.get(scheme.len()..))
            .flatten()
    })
}

/// `authority[/path][?query][#fragment]` → authority + origin form. A fragment stays in the path so
/// `normalize_path` refuses it like any other (l7-security.md §1.2 step 1).
fn split_absolute(rest: &str) -> Result<Target, HeadError> {
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    if !valid_authority(authority) {
        return Err(HeadError::InvalidAbsoluteUrl);
    }
    let path_and_query = if tail.starts_with('/') {
        tail.to_owned()
    } else {
        format!("/{tail}")
    };
    Ok(Target {
        authority: Some(authority.to_owned()),
        path_and_query,
    })
}

/// `host[:port]` of RFC 3986 §3.2 without userinfo (deprecated for http, RFC 9110 §4.2.4, and a way to make
/// `Host` say something other than what a reader of the URL sees).
fn valid_authority(authority: &str) -> bool {
    let (host, port) = match authority.strip_prefix('[') {
        Some(inner) => match inner.split_once(']') {
            Some((ip, after)) if valid_ip_literal(ip) => (ip, after),
            _ => return false,
        },
        None => match authority.find(':') {
            Some(colon) => authority.split_at(colon),
            None => (authority, ""),
        },
    };
    let host_ok =
        authority.starts_with('[') || (!host.is_empty() && host.bytes().all(is_reg_name_byte));
    host_ok && valid_port_suffix(port)
}

fn valid_ip_literal(ip: &str) -> bool {
    !ip.is_empty()
        && ip
            .bytes()
            .all(|b| b.is_ascii_hexdigit() || b == b':' || b == b'.')
}

/// RFC 3986 reg-name: unreserved, pct-encoded and sub-delims.
fn is_reg_name_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-._~%!$&'()*+,;=".contains(&b)
}

/// Empty, or `:` and a port 0–65535 (an empty port after `:` is refused: nothing needs it).
fn valid_port_suffix(port: &str) -> bool {
    match port.strip_prefix(':') {
        None => port.is_empty(),
        Some(digits) => {
            !digits.is_empty()
                && digits.len() <= 5
                && digits.bytes().all(|b| b.is_ascii_digit())
                && digits.parse::<u32>().is_ok_and(|p| p <= 65535)
        }
    }
}

/// What to do to an accepted header list before intentions and forwarding.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct HeaderVerdict {
    /// Indexes (into the slice given) of headers named with `_` under `DROP_HEADER`: remove them before any
    /// matching, as Envoy's codec does (l7-security.md §4, §6.18).
    pub drop: Vec<usize>,
    /// Lower-case names of hop-by-hop headers to remove before forwarding (l7-security.md §6.19, RFC 9110
    /// §7.6.1). `upgrade` is listed too: a websocket upgrade is served elsewhere, not by this path.
    pub strip: Strip,
    /// `TE` named codings besides `trailers` and is in `strip`; forward `te: trailers` in its place (Envoy
    /// keeps only that token, `Utility::sanitizeConnectionHeader`). A `TE` of only `trailers` is not stripped.
    pub te_trailers: bool,
}

/// The names a verdict strips: the fixed hop-by-hop ones, `te` when its value says so, and what `Connection`
/// nominated. Made per request, so the fixed part is not copied into a set each time.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Strip {
    te: bool,
    /// Lower-case, none of them `te` nor one of the fixed names.
    nominated: Vec<String>,
}

impl Strip {
    pub fn contains(&self, name: &str) -> bool {
        if name == "te" {
            return self.te;
        }
        HOP_BY_HOP.contains(&name) || self.nominated.iter().any(|n| n == name)
    }

    /// Every name stripped, each once.
    pub fn iter(&self) -> impl Iterator<Item = &str> {
        HOP_BY_HOP
            .iter()
            .copied()
            .chain(self.te.then_some("te"))
            .chain(self.nominated.iter().map(String::as_str))
    }
}

/// Always hop-by-hop (l7-security.md §6.19); `te` is decided by its value.
const HOP_BY_HOP: [&str; 5] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "upgrade",
];

/// Nominated by `Connection` but never removed: they frame the message or route it, so removing them after
/// hyper framed the body on them would let the upstream see a different message than the one authorized —
/// the smuggling bypass `Connection: content-length` (envoyproxy/envoy#8623, l7-security.md §4).
const NEVER_NOMINATED: [&str; 3] = ["content-length", "transfer-encoding", "host"];

/// Envoy refuses these nominations: removing them would hide the request's origin
/// (`Utility::sanitizeConnectionHeader`, `source/common/http/utility.cc`).
const FORBIDDEN_NOMINATIONS: [&str; 3] =
    ["x-forwarded-for", "x-forwarded-host", "x-forwarded-proto"];

/// Envoy's `MAX_ALLOWED_NOMINATED_HEADERS`: 10 or more `Connection` tokens are refused.
const MAX_CONNECTION_TOKENS: usize = 10;

/// Checks a request's header list (names as received, values as bytes) in Envoy's order — codec first
/// (underscores, framing, `Connection`), then the connection manager (`Host`) — and says what to drop and
/// strip. For an absolute-form target the caller still passes the `Host` line(s) received: HTTP/1.1 requires
/// one (RFC 9112 §3.2), and the URL's authority then replaces it (l7-security.md §6.17).
pub fn check_request_headers(
    headers: &[(&str, &[u8])],
    action: UnderscoreAction,
) -> Result<HeaderVerdict, HeadError> {
    let drop = underscore_drops(headers, action)?;
    check_framing(headers)?;
    let nominated = connection_nominations(headers)?;
    check_host(headers)?;
    let (te_stripped, te_trailers) = te_disposition(headers);
    let mut strip = Strip {
        te: te_stripped,
        nominated: Vec::new(),
    };
    for name in nominated {
        if name != "te" && !strip.contains(&name) {
            strip.nominated.push(name);
        }
    }
    Ok(HeaderVerdict {
        drop,
        strip,
        te_trailers,
    })
}

fn named<'a>(
    headers: &'a [(&'a str, &'a [u8])],
    name: &'a str,
) -> impl Iterator<Item = &'a [u8]> + 'a {
    headers
        .iter()
        .filter(move |(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, value)| *value)
}

/// `HeadersWithUnderscoresAction` (l7-security.md §1.1, §4, §6.18).
fn underscore_drops(
    headers: &[(&str, &[u8])],
    action: UnderscoreAction,
) -> Result<Vec<usize>, HeadError> {
    let with_underscore = headers
        .iter()
        .enumerate()
        .filter(|(_, (name, _))| name.contains('_'));
    match action {
        UnderscoreAction::Allow => Ok(Vec::new()),
        UnderscoreAction::DropHeader => Ok(with_underscore.map(|(i, _)| i).collect()),
        UnderscoreAction::RejectRequest => match with_underscore.count() {
            0 => Ok(Vec::new()),
            _ => Err(HeadError::UnderscoreInHeaderName),
        },
    }
}

/// `Content-Length` with `Transfer-Encoding` is refused (Consul leaves `allow_chunked_length` false,
/// l7-security.md §0, §4, §6.16); hyper would frame on one of them and ignore the other.
fn check_framing(headers: &[(&str, &[u8])]) -> Result<(), HeadError> {
    let has_cl = named(headers, "content-length").next().is_some();
    let has_te = named(headers, "transfer-encoding").next().is_some();
    if has_cl && has_te {
        return Err(HeadError::ContentLengthWithTransferEncoding);
    }
    Ok(())
}

/// Exactly one `Host`. Envoy (l7-security.md §4) joins repeated `Host` lines into one `:authority` `a,b`
/// and forwards it; meshgw refuses them with 400 as the issue asks, since two hosts leave it ambiguous
/// which authority the intentions and the route were decided on.
fn check_host(headers: &[(&str, &[u8])]) -> Result<(), HeadError> {
    match named(headers, "host").count() {
        0 => Err(HeadError::MissingHost),
        1 => Ok(()),
        _ => Err(HeadError::DuplicateHost),
    }
}

/// Comma-separated tokens of every line of `name`, trimmed of OWS, empty ones skipped (RFC 9110 §5.6.1).
fn list_tokens<'a>(
    headers: &'a [(&'a str, &'a [u8])],
    name: &'a str,
) -> impl Iterator<Item = &'a [u8]> + 'a {
    named(headers, name)
        .flat_map(|value| value.split(|&b| b == b','))
        .map(|token| token.trim_ascii())
        .filter(|token| !token.is_empty())
}

/// Lower-case header names nominated by `Connection` that must go (RFC 9110 §7.6.1), minus the framing and
/// routing headers of [`NEVER_NOMINATED`] and the `close` option, which names no header.
fn connection_nominations(headers: &[(&str, &[u8])]) -> Result<Vec<String>, HeadError> {
    let tokens: Vec<&[u8]> = list_tokens(headers, "connection").collect();
    if tokens.len() >= MAX_CONNECTION_TOKENS {
        return Err(HeadError::ConnectionHeaderRejected);
    }
    let mut names = Vec::with_capacity(tokens.len());
    for token in tokens {
        let name = String::from_utf8_lossy(token).to_ascii_lowercase();
        if name.starts_with(':') || FORBIDDEN_NOMINATIONS.contains(&name.as_str()) {
            return Err(HeadError::ConnectionHeaderRejected);
        }
        if name != "close" && !NEVER_NOMINATED.contains(&name.as_str()) {
            names.push(name);
        }
    }
    Ok(names)
}

/// `(strip te?, forward te: trailers?)`: a `TE` of only `trailers` stays; otherwise it goes, and if it
/// offered `trailers` among other codings that one token is forwarded (Envoy `sanitizeConnectionHeader`).
/// Without any `TE` token stripping is a no-op, and an empty `te:` line should not reach the upstream.
fn te_disposition(headers: &[(&str, &[u8])]) -> (bool, bool) {
    let (mut trailers, mut others) = (false, false);
    for token in list_tokens(headers, "te") {
        if token.eq_ignore_ascii_case(b"trailers") {
            trailers = true;
        } else {
            others = true;
        }
    }
    let keep = trailers && !others;
    (!keep, trailers && others)
}

#[cfg(test)]
#[path = "http_head_test.rs"]
mod tests;
