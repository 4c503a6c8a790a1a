//! Request-target normalization exactly as a Consul ≥ 1.20.1 connect proxy configures Envoy's HTTP connection
//! manager (l7-security.md §1, §6 items 1–8). The string this module returns is the one intentions match
//! (after [`path_for_matching`]) **and** the one forwarded upstream: authorizing one string and forwarding
//! another is the bug class of CVE-2024-10005 (l7-security.md §6.7).
//!
//! Pipeline (Envoy `ConnectionManagerUtility::maybeNormalizePath`, l7-security.md §1.2): fragment check →
//! escaped-slash action → `;params` stripped from dot segments + Chromium `CanonicalizePath` → merge slashes.

use serde::{Deserialize, Serialize};

/// `path_with_escaped_slashes_action` of the mesh entry (l7-security.md §1.1), in Consul's spelling.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum EscapedSlashes {
    /// Consul's default ("" in the entry); Envoy without a runtime override treats it as `KeepUnchanged`.
    #[default]
    #[serde(alias = "")]
    ImplementationSpecificDefault,
    /// `%2F`/`%5C` stay as they are (and are never decoded by canonicalization either).
    KeepUnchanged,
    /// Any `%2F %2f %5C %5c` in the path part → 400.
    RejectRequest,
    /// Decode them, normalize, then answer 307 with `Location` = the final path and query.
    UnescapeAndRedirect,
    /// Decode them, normalize, forward.
    UnescapeAndForward,
}

/// `headers_with_underscores_action` of the mesh entry (l7-security.md §1.1, §6.18).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum UnderscoreAction {
    /// Default ("" in the entry): such headers are forwarded.
    #[default]
    #[serde(alias = "")]
    Allow,
    /// 400 (and close the connection on HTTP/1).
    RejectRequest,
    /// Silently remove such headers before any filter sees them.
    DropHeader,
}

/// The mesh entry's `HTTP.Incoming.RequestNormalization` (l7-security.md §1.1). Field names are snake_case;
/// Consul's CamelCase names are accepted as aliases so an entry can be passed through unchanged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Normalization {
    /// `true` turns Envoy's `normalize_path` off (Consul sets it on by default since 1.20.1).
    #[serde(alias = "InsecureDisablePathNormalization")]
    pub insecure_disable_path_normalization: bool,
    /// Collapse `//+` in the path part after normalization.
    #[serde(alias = "MergeSlashes")]
    pub merge_slashes: bool,
    /// What to do with `%2F`/`%5C` in the path part.
    #[serde(alias = "PathWithEscapedSlashesAction")]
    pub path_with_escaped_slashes_action: EscapedSlashes,
    /// What to do with header names containing `_` (applied by `http_head`, kept here with its siblings).
    #[serde(alias = "HeadersWithUnderscoresAction")]
    pub headers_with_underscores_action: UnderscoreAction,
}

/// Verdict of [`normalize_path`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathOutcome {
    /// Match intentions on (the path part of) this and forward exactly this upstream.
    Forward(String),
    /// Answer 307 with this `Location` (path and query); gRPC callers answer 400 instead (l7-security.md §1.2).
    Redirect(String),
    /// Answer 400; the reason is a short snake_case metric label.
    Reject(&'static str),
}

/// Reason for a target containing `#` (Envoy `http_reject_path_with_fragment`, l7-security.md §1.2 step 1).
pub const REJECT_FRAGMENT: &str = "path_with_fragment";
/// Reason for a `%2F`/`%5C` under `REJECT_REQUEST` (l7-security.md §1.2 step 2).
pub const REJECT_ESCAPED_SLASH: &str = "escaped_slash_rejected";
/// Reason for an escape Chromium's canonicalizer calls invalid, i.e. `%00` (l7-security.md §1.3).
pub const REJECT_NORMALIZATION: &str = "path_normalization_failed";
/// Reason for a path that does not start with `/` once normalization is off (Envoy answers these 404 before
/// normalizing, l7-security.md §4; with normalization on a leading `/` is added as §1.3 says).
pub const REJECT_NOT_ABSOLUTE: &str = "path_not_absolute";

/// Normalizes an origin-form request target (`path[?query]`) with the mesh's settings, in Envoy's order
/// (l7-security.md §1.2, §6.1–6). Never panics; the query is re-appended verbatim.
pub fn normalize_path(path_and_query: &str, n: &Normalization) -> PathOutcome {
    // l7-security.md §1.2 step 1: any `#` is refused before anything else, whatever the settings.
    if path_and_query.contains('#') {
        return PathOutcome::Reject(REJECT_FRAGMENT);
    }
    let (path, query) = split_query(path_and_query);
    let (path, redirect) = match apply_escaped_slashes(path, n.path_with_escaped_slashes_action) {
        Ok(done) => done,
        Err(reason) => return PathOutcome::Reject(reason),
    };
    let path = if n.insecure_disable_path_normalization {
        path
    } else {
        match canonicalize(&path) {
            Ok(canonical) => canonical,
            Err(reason) => return PathOutcome::Reject(reason),
        }
    };
    let mut path = if n.merge_slashes {
        merge_slashes(&path)
    } else {
        path
    };
    if !path.starts_with('/') {
        return PathOutcome::Reject(REJECT_NOT_ABSOLUTE);
    }
    path.push_str(query);
    if redirect {
        PathOutcome::Redirect(path)
    } else {
        PathOutcome::Forward(path)
    }
}

/// The part of a (normalized) `:path` that `url_path` rules see: everything before the first `?` or `#`
/// (Envoy `PathMatcher::match`, l7-security.md §1.4 and §6.8).
pub fn path_for_matching(path: &str) -> &str {
    match path.find(['?', '#']) {
        Some(end) => path.get(..end).unwrap_or(path),
        None => path,
    }
}

/// Splits at the first `?`: every step of Envoy's pipeline works on the path part only (l7-security.md §1.2).
fn split_query(path_and_query: &str) -> (&str, &str) {
    match path_and_query.find('?') {
        Some(at) => path_and_query.split_at(at),
        None => (path_and_query, ""),
    }
}

/// Step 2 (Envoy `PathUtil::unescapeSlashes` + `maybeUnescapeSlashes`): returns the path to go on with and
/// whether the outcome must be a redirect.
fn apply_escaped_slashes(
    path: &str,
    action: EscapedSlashes,
) -> Result<(String, bool), &'static str> {
    match action {
        // Envoy's implementation-specific default is KEEP_UNCHANGED unless a runtime key says otherwise, and
        // Consul's bootstrap sets no such key (l7-security.md §0, §1.1).
        EscapedSlashes::ImplementationSpecificDefault | EscapedSlashes::KeepUnchanged => {
            Ok((path.to_owned(), false))
        }
        EscapedSlashes::RejectRequest => match unescape_slashes(path) {
            (_, true) => Err(REJECT_ESCAPED_SLASH),
            (same, false) => Ok((same, false)),
        },
        EscapedSlashes::UnescapeAndRedirect => Ok(unescape_slashes(path)),
        EscapedSlashes::UnescapeAndForward => Ok((unescape_slashes(path).0, false)),
    }
}

/// `%2F %2f` → `/`, `%5C %5c` → `\`, left to right without overlap like `absl::StrReplaceAll`; reports whether
/// any was found.
fn unescape_slashes(path: &str) -> (String, bool) {
    let mut out = String::with_capacity(path.len());
    let mut found = false;
    let mut rest = path;
    while let Some(at) = rest.find('%') {
        let (before, tail) = rest.split_at(at);
        out.push_str(before);
        let replacement = match tail.get(..3) {
            Some("%2F" | "%2f") => Some('/'),
            Some("%5C" | "%5c") => Some('\\'),
            _ => None,
        };
        match (replacement, tail.get(3..)) {
            (Some(slash), Some(after)) => {
                out.push(slash);
                found = true;
                rest = after;
            }
            _ => {
                out.push('%');
                rest = tail.get(1..).unwrap_or("");
            }
        }
    }
    out.push_str(rest);
    (out, found)
}

/// Step 4 (Envoy `PathUtil::mergeSlashes`): keep a leading and a trailing `/`, join the non-empty segments.
fn merge_slashes(path: &str) -> String {
    if !path.contains("//") {
        return path.to_owned();
    }
    let mut out = String::with_capacity(path.len());
    if path.starts_with('/') {
        out.push('/');
    }
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    out.push_str(&segments.join("/"));
    // Like Envoy, an all-slash path keeps both ends: `//` stays `//` (prefix + nothing + suffix).
    if path.ends_with('/') {
        out.push('/');
    }
    out
}

/// How Chromium's `kPathCharLookup` treats a byte, raw or decoded from `%XX` (Envoy's forked
/// `source/common/chromium_url/url_canon_path.cc`, l7-security.md §1.3).
#[derive(Clone, Copy, PartialEq, Eq)]
enum CharClass {
    /// Copied raw; kept escaped (with its original hex case) when it came escaped.
    Pass,
    /// Unreserved (ALPHA DIGIT `-` `_` `~`): an escape of it is decoded.
    Unescape,
    /// Percent-encoded (upper-case hex) when raw; kept as is when it came escaped.
    Escape,
    /// NUL: the path is refused.
    Invalid,
}

fn char_class(b: u8) -> CharClass {
    match b {
        0 => CharClass::Invalid,
        b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'~' => CharClass::Unescape,
        0x01..=0x20
        | b'"'
        | b'#'
        | b'%'
        | b'<'
        | b'>'
        | b'?'
        | b'\\'
        | b'^'
        | b'`'
        | b'{'
        | b'|'
        | b'}' => CharClass::Escape,
        0x7f..=0xff => CharClass::Escape,
        _ => CharClass::Pass,
    }
}

/// What a dot (or `%2e`) at the start of a segment stands for (Chromium `ClassifyAfterDot`).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Dot {
    NotADirectory,
    Current,
    Up,
}

/// Chromium `DoPartialPath` state: the input bytes, the canonical output (ASCII only: every other byte is
/// escaped), the output index of the last `%` that did not start a valid escape, and whether a `%00` was seen.
struct Canon<'a> {
    input: &'a [u8],
    out: Vec<u8>,
    last_invalid_percent: Option<usize>,
    ok: bool,
}

/// Step 3: Envoy `PathUtil::canonicalPath` on the path part (l7-security.md §1.3): dot segments (with their
/// `;params` stripped) removed with clamping at the root, `\` → `/`, unreserved escapes decoded, other escapes
/// kept byte for byte, raw bytes outside the URL safe set escaped, `%00` refused, leading `/` added.
fn canonicalize(path: &str) -> Result<String, &'static str> {
    let mut canon = Canon {
        input: path.as_bytes(),
        out: Vec::with_capacity(path.len() + 1),
        last_invalid_percent: None,
        ok: true,
    };
    // Chromium `DoPath`: a path not starting with a slash gets one; an empty path becomes "/".
    if !canon.input.first().is_some_and(|&b| is_slash(b)) {
        canon.out.push(b'/');
    }
    let mut i = 0;
    while i < canon.input.len() {
        i = canon.step(i);
    }
    if !canon.ok {
        return Err(REJECT_NORMALIZATION);
    }
    // Every byte pushed is ASCII, so this cannot fail; refusing is still the safe answer if it ever did.
    String::from_utf8(canon.out).map_err(|_| REJECT_NORMALIZATION)
}

fn is_slash(b: u8) -> bool {
    b == b'/' || b == b'\\'
}

/// Length of the dot at `at`: 1 for `.`, 3 for `%2e`/`%2E`, 0 otherwise (Chromium `IsDot`).
fn dot_len(input: &[u8], at: usize) -> usize {
    match input.get(at..) {
        Some([b'.', ..]) => 1,
        Some([b'%', b'2', b'e' | b'E', ..]) => 3,
        _ => 0,
    }
}

/// `%XX` with two hex digits at `at` → the byte (Chromium `DecodeEscaped`).
fn decode_escaped(bytes: &[u8], at: usize) -> Option<u8> {
    match bytes.get(at..) {
        Some([b'%', hi, lo, ..]) => Some(hex_value(*hi)? << 4 | hex_value(*lo)?),
        _ => None,
    }
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

const HEX_UPPER: &[u8; 16] = b"0123456789ABCDEF";

impl Canon<'_> {
    /// Handles the input at `i`, returns the index of the next unprocessed input byte.
    fn step(&mut self, i: usize) -> usize {
        let dot = dot_len(self.input, i);
        if dot > 0 {
            return self.dot(i, dot);
        }
        match self.input.get(i).copied() {
            Some(b'\\') => {
                // l7-security.md §1.3: a backslash is a path separator (`/a/..\c` → `/c`).
                self.out.push(b'/');
                i + 1
            }
            Some(b'%') => self.percent(i),
            Some(b) => {
                self.raw(b);
                i + 1
            }
            None => i + 1,
        }
    }

    /// A dot (or `%2e`) of `len` input bytes at `i`.
    fn dot(&mut self, i: usize, len: usize) -> usize {
        if self.out.last() != Some(&b'/') {
            // Not at the start of a segment: just part of a name (and `%2e` comes out as `.`).
            self.out.push(b'.');
            return i + len;
        }
        match self.classify_after_dot(i + len) {
            (Dot::NotADirectory, _) => {
                self.out.push(b'.');
                i + len
            }
            (Dot::Current, consumed) => i + len + consumed,
            (Dot::Up, consumed) => {
                self.back_up_to_previous_slash();
                i + len + consumed
            }
        }
    }

    /// Chromium `ClassifyAfterDot`, plus Envoy's `stripParametersFromDotSegments` (CVE-2026-73551,
    /// l7-security.md §1.2 step 3): a `;` right after `.`/`..` ends the dot segment and everything up to the
    /// next `/` is dropped. Envoy matches only literal `.;`/`..;` between `/`s before canonicalizing; this also
    /// covers `%2e;`, `%2e%2e;` and segments opened by `\`, which Envoy would turn into a `..;x` segment
    /// that a second pass (or a matrix-parameter-aware upstream) reads as `..` — a bypass, and not idempotent.
    fn classify_after_dot(&self, after_dot: usize) -> (Dot, usize) {
        if let Some(end) = self.segment_end(after_dot) {
            return (Dot::Current, end);
        }
        let second = dot_len(self.input, after_dot);
        if second == 0 {
            return (Dot::NotADirectory, 0);
        }
        match self.segment_end(after_dot + second) {
            Some(end) => (Dot::Up, second + end),
            None => (Dot::NotADirectory, 0),
        }
    }

    /// If the dot segment ends at `at` (end of input, a slash, or `;params` up to a `/`), the number of input
    /// bytes that end consumes, the closing slash included.
    fn segment_end(&self, at: usize) -> Option<usize> {
        match self.input.get(at..) {
            None | Some([]) => Some(0),
            Some([b, ..]) if is_slash(*b) => Some(1),
            Some(rest @ [b';', ..]) => Some(match rest.iter().position(|&b| b == b'/') {
                Some(slash) => slash + 1,
                None => rest.len(),
            }),
            Some(_) => None,
        }
    }

    /// Chromium `BackUpToPreviousSlash`: drop the last segment, never above the root (`/../a` → `/a`).
    fn back_up_to_previous_slash(&mut self) {
        let last = self.out.len().saturating_sub(1);
        let keep = match self
            .out
            .get(..last)
            .and_then(|o| o.iter().rposition(|&b| b == b'/'))
        {
            Some(slash) => slash + 1,
            None => 1,
        };
        self.out.truncate(keep.max(1));
        // Chromium keeps a stale index here; a `%` cut off with its segment can no longer form a nested escape.
        if self
            .last_invalid_percent
            .is_some_and(|p| p >= self.out.len())
        {
            self.last_invalid_percent = None;
        }
    }

    /// A `%` at `i` that is not `%2e` (l7-security.md §1.3: unreserved decoded, others kept, `%00` refused,
    /// malformed passed literally).
    fn percent(&mut self, i: usize) -> usize {
        let Some(value) = decode_escaped(self.input, i) else {
            self.last_invalid_percent = Some(self.out.len());
            self.out.push(b'%');
            return i + 1;
        };
        match char_class(value) {
            CharClass::Unescape => {
                self.out.push(value);
                if self
                    .last_invalid_percent
                    .is_some_and(|p| p + 3 >= self.out.len())
                {
                    self.neutralize_nested_escape(i + 3);
                }
            }
            class => {
                // Kept exactly, hex case included: an upstream may be sensitive to it (Chromium comment).
                self.out
                    .extend(self.input.get(i..i + 3).unwrap_or_default());
                if class == CharClass::Invalid {
                    self.ok = false;
                }
            }
        }
        i + 3
    }

    /// A raw byte other than `.`, `\` and `%`.
    fn raw(&mut self, b: u8) {
        match char_class(b) {
            CharClass::Pass | CharClass::Unescape => self.out.push(b),
            class => {
                self.out.push(b'%');
                self.out.push(HEX_UPPER[usize::from(b >> 4)]);
                self.out.push(HEX_UPPER[usize::from(b & 0xf)]);
                if class == CharClass::Invalid {
                    self.ok = false;
                }
            }
        }
    }

    /// Chromium `CheckForNestedEscapes`: if decoding just formed a valid escape with an earlier stray `%`
    /// (`%%32%65` → `%2e`), that `%` becomes `%25`, so re-normalizing (here or upstream) cannot decode a second
    /// layer — this is what keeps the output idempotent.
    fn neutralize_nested_escape(&mut self, next_input: usize) {
        let Some(percent) = self.last_invalid_percent else {
            return;
        };
        let length = self.out.len();
        let append_next = percent + 2 == length;
        if append_next {
            match self.input.get(next_input) {
                Some(&b) if b < 0x80 => self.out.push(b),
                _ => return,
            }
        }
        let nested = decode_escaped(&self.out, percent).is_some();
        // The appended input byte was only a probe: the main loop handles it next.
        self.out.truncate(length);
        if nested && percent < length {
            // "%XY" → "%25XY", "%X" → "%25X".
            self.out.insert(percent + 1, b'5');
            self.out.insert(percent + 1, b'2');
        }
    }
}

#[cfg(test)]
#[path = "normalize_test.rs"]
mod tests;
