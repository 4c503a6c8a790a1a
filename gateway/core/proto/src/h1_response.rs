//! HTTP/1.1 answers as the core's client hop reads them (gateway/core/src/http/h1_client.rs): the head and its
//! framing, and chunked bodies. Byte slices in, offsets out; the core turns them into `http` types.
//!
//! Framing follows RFC 9112 §6.3: no body for an answer to HEAD, for 1xx, 204 and 304; chunked when `chunked`
//! is the last transfer coding; read to the close when another coding is last, or when no length is given;
//! `content-length` otherwise. Refused, as Envoy refuses them (an answer two parsers could frame differently is
//! how responses are split): `transfer-encoding` with `content-length`, or in an HTTP/1.0 answer; `chunked`
//! twice or not last; lengths that differ or are not plain digits; a 101 to a request that asked for no
//! upgrade; more than [`MAX_HEADERS`] fields or a head over [`MAX_HEAD`] bytes (Envoy's `max_headers_count`
//! and `max_response_headers_kb` defaults); a chunk line that is not `hex-size [; extensions] CRLF`.

/// Envoy's `max_headers_count` default.
pub const MAX_HEADERS: usize = 100;
/// Envoy's `max_response_headers_kb` default (60 KiB), for the head and for trailers.
pub const MAX_HEAD: usize = 60 * 1024;
/// A chunk-size line, extensions included, longer than this is refused (the data it announces is not).
pub const MAX_CHUNK_LINE: usize = 4096;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Framing {
    Empty,
    Length(u64),
    Chunked,
    /// Read until the peer closes; the connection cannot be reused.
    Eof,
    /// A 101 to an upgrade request: the connection is the caller's tunnel from here.
    Upgrade,
}

/// A field of a head or of trailers: name and value as byte ranges of the buffer parsed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Field {
    pub name: (usize, usize),
    pub value: (usize, usize),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Head {
    /// Bytes of the head, its blank line included.
    pub len: usize,
    pub status: u16,
    pub http11: bool,
    pub fields: Vec<Field>,
    pub framing: Framing,
    /// The connection may carry another request after this answer (its own framing permitting).
    pub keep_alive: bool,
}

fn ranges(buf: &[u8], fields: &[httparse::Header<'_>]) -> Vec<Field> {
    let base = buf.as_ptr() as usize;
    fields
        .iter()
        .map(|h| {
            let n = h.name.as_ptr() as usize - base;
            let v = h.value.as_ptr() as usize - base;
            Field {
                name: (n, n + h.name.len()),
                value: (v, v + h.value.len()),
            }
        })
        .collect()
}

/// One answer's head from the start of `buf`; Ok(None) while it is incomplete (the caller bounds how long it
/// waits with [`MAX_HEAD`]).
pub fn parse_head(buf: &[u8], head_req: bool, upgrade: bool) -> Result<Option<Head>, &'static str> {
    let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut r = httparse::Response::new(&mut slots);
    let len = match r.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() > MAX_HEAD => {
            return Err("response head too large")
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err("too many header fields"),
        Err(_) => return Err("malformed head"),
    };
    if len > MAX_HEAD {
        return Err("response head too large");
    }
    let status = r.code.ok_or("malformed head")?;
    let http11 = r.version == Some(1);
    let fields = ranges(buf, r.headers);
    let framing = framing(status, http11, r.headers, head_req, upgrade)?;
    let keep_alive = framing != Framing::Eof && keep_alive(http11, r.headers);
    Ok(Some(Head {
        len,
        status,
        http11,
        fields,
        framing,
        keep_alive,
    }))
}

/// The comma-separated, trimmed, non-empty tokens of every field named `name`.
fn tokens<'a>(
    fields: &'a [httparse::Header<'a>],
    name: &'a str,
) -> impl Iterator<Item = &'a [u8]> + 'a {
    fields
        .iter()
        .filter(move |h| h.name.eq_ignore_ascii_case(name))
        .flat_map(|h| h.value.split(|b| *b == b','))
        .map(<[u8]>::trim_ascii)
        .filter(|t| !t.is_empty())
}

fn has(fields: &[httparse::Header<'_>], name: &str) -> bool {
    fields.iter().any(|h| h.name.eq_ignore_ascii_case(name))
}

/// Every `content-length` value, as fields or as a list (RFC 9110 §8.6 allows a repeated identical one):
/// Ok(None) when there is none.
pub fn content_length<'a>(
    values: impl Iterator<Item = &'a [u8]>,
) -> Result<Option<u64>, &'static str> {
    let mut found: Option<u64> = None;
    for v in values {
        for part in v.split(|b| *b == b',') {
            let p = part.trim_ascii();
            if p.is_empty() || p.len() > 19 || !p.iter().all(u8::is_ascii_digit) {
                return Err("invalid content-length");
            }
            let n = p.iter().fold(0u64, |acc, d| acc * 10 + u64::from(d - b'0'));
            match found {
                Some(m) if m != n => return Err("invalid content-length"),
                _ => found = Some(n),
            }
        }
    }
    Ok(found)
}

fn framing(
    status: u16,
    http11: bool,
    fields: &[httparse::Header<'_>],
    head_req: bool,
    upgrade: bool,
) -> Result<Framing, &'static str> {
    if status == 101 {
        return if upgrade {
            Ok(Framing::Upgrade)
        } else {
            Err("101 to a request that asked for no upgrade")
        };
    }
    if head_req || (100..200).contains(&status) || status == 204 || status == 304 {
        return Ok(Framing::Empty);
    }
    if has(fields, "transfer-encoding") {
        if !http11 {
            return Err("transfer-encoding in an HTTP/1.0 response");
        }
        if has(fields, "content-length") {
            return Err("both transfer-encoding and content-length");
        }
        let mut chunked_at = None;
        let mut n = 0;
        for t in tokens(fields, "transfer-encoding") {
            if t.eq_ignore_ascii_case(b"chunked") {
                if chunked_at.is_some() {
                    return Err("chunked twice");
                }
                chunked_at = Some(n);
            }
            n += 1;
        }
        return match chunked_at {
            Some(i) if i + 1 == n => Ok(Framing::Chunked),
            Some(_) => Err("chunked is not the last transfer coding"),
            None => Ok(Framing::Eof),
        };
    }
    let lengths = fields
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("content-length"))
        .map(|h| h.value);
    Ok(match content_length(lengths)? {
        Some(n) => Framing::Length(n),
        None => Framing::Eof,
    })
}

fn keep_alive(http11: bool, fields: &[httparse::Header<'_>]) -> bool {
    let mut close = false;
    let mut keep = false;
    for t in tokens(fields, "connection") {
        close |= t.eq_ignore_ascii_case(b"close");
        keep |= t.eq_ignore_ascii_case(b"keep-alive");
    }
    !close && (http11 || keep)
}

/// Where a chunked body's reader is (RFC 9112 §7.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Chunked {
    Size,
    Data(u64),
    DataEnd,
    Trailers,
    Done,
}

/// What to do with the front of the buffer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// This many bytes are body data.
    Data(usize),
    /// This many bytes were framing: drop them and step again.
    Skip(usize),
    /// The body ended with trailers: `len` bytes hold them (with the blank line).
    Trailers { len: usize, fields: Vec<Field> },
    /// The body ended: drop `0` (or this many) bytes.
    End(usize),
    /// More bytes are needed.
    More,
}

impl Chunked {
    /// One step over the front of `buf` (which the caller then advances as the step says).
    pub fn step(&mut self, buf: &[u8]) -> Result<Step, &'static str> {
        match *self {
            Chunked::Size => {
                let Some(i) = buf.iter().take(MAX_CHUNK_LINE).position(|b| *b == b'\n') else {
                    if buf.len() >= MAX_CHUNK_LINE {
                        return Err("chunk-size line too long");
                    }
                    return Ok(Step::More);
                };
                let size = chunk_size(&buf[..i])?;
                *self = if size == 0 {
                    Chunked::Trailers
                } else {
                    Chunked::Data(size)
                };
                Ok(Step::Skip(i + 1))
            }
            Chunked::Data(rem) => {
                if buf.is_empty() {
                    return Ok(Step::More);
                }
                let n = usize::try_from(rem).unwrap_or(usize::MAX).min(buf.len());
                let left = rem - n as u64;
                *self = if left == 0 {
                    Chunked::DataEnd
                } else {
                    Chunked::Data(left)
                };
                Ok(Step::Data(n))
            }
            Chunked::DataEnd => match buf.get(..2) {
                None if buf.first().is_some_and(|b| *b != b'\r') => {
                    Err("chunk data not followed by CRLF")
                }
                None => Ok(Step::More),
                Some(b"\r\n") => {
                    *self = Chunked::Size;
                    Ok(Step::Skip(2))
                }
                Some(_) => Err("chunk data not followed by CRLF"),
            },
            Chunked::Trailers => {
                let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
                match httparse::parse_headers(buf, &mut slots) {
                    Ok(httparse::Status::Partial) if buf.len() > MAX_HEAD => {
                        Err("trailers too large")
                    }
                    Ok(httparse::Status::Partial) => Ok(Step::More),
                    Err(_) => Err("malformed trailers"),
                    Ok(httparse::Status::Complete((len, fields))) => {
                        if len > MAX_HEAD {
                            return Err("trailers too large");
                        }
                        *self = Chunked::Done;
                        if fields.is_empty() {
                            Ok(Step::End(len))
                        } else {
                            Ok(Step::Trailers {
                                len,
                                fields: ranges(buf, fields),
                            })
                        }
                    }
                }
            }
            Chunked::Done => Ok(Step::End(0)),
        }
    }
}

/// `chunk-size [ chunk-ext ] CRLF`, the line given without its LF: hex digits (at most 16), then nothing, or
/// extensions after `;` (optionally after spaces), and the CR. A bare LF ending is refused.
pub fn chunk_size(line: &[u8]) -> Result<u64, &'static str> {
    let line = line
        .strip_suffix(b"\r")
        .ok_or("chunk-size line not ended by CRLF")?;
    let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    if digits == 0 || digits > 16 {
        return Err("bad chunk size");
    }
    let rest = line[digits..].trim_ascii_start();
    if !(rest.is_empty() || rest.starts_with(b";")) {
        return Err("bad chunk size");
    }
    let mut n = 0u64;
    for d in &line[..digits] {
        let v = match d {
            b'0'..=b'9' => d - b'0',
            b'a'..=b'f' => d - b'a' + 10,
            _ => d - b'A' + 10,
        };
        n = (n << 4) | u64::from(v);
    }
    Ok(n)
}

#[cfg(test)]
#[path = "h1_response_test.rs"]
mod tests;
