//! What a mesh gateway reads of a connection before forwarding it: the SNI (and ALPN) of the TLS ClientHello.
//!
//! The gateway never decrypts (consul.md §6: mesh gateways route by SNI only, TLS passthrough): it reads the
//! first handshake message as bytes, takes the server_name extension (RFC 6066 §3) and the ALPN extension
//! (RFC 7301 §3.1), and hands every byte it read, unchanged, to the endpoint it picks. The mTLS session stays
//! between the two sidecars. Port of `gateway/sni.py` `client_hello_sni`, with every read bounds-checked:
//! where the Python sliced leniently past the end of a field, this refuses the ClientHello as malformed.
//! Also beyond the Python: `MAX_HELLO` is enforced here (the Python left it to its caller), a prefix that
//! can only become an error is refused at once (`G` of `GET /`, not after five bytes), and a second
//! server_name or ALPN extension or a second host name is refused (RFC 8446 §4.2, RFC 6066 §3), so that the
//! gateway cannot route by a name other than the one the server reads.
//!
//! The peek is monotone, which the fuzz target checks: for any `buf` and any prefix `p` of it,
//! `peek_client_hello(p)` is either `NeedMore` or the same answer as `peek_client_hello(buf)`. So a caller
//! can peek again each time more bytes arrive and act on the first answer that is not `NeedMore`.

// Every read goes through `Reader` or `get`; an index that could panic is a compile error here.
#![deny(clippy::indexing_slicing)]

use std::fmt;

/// How many bytes the gateway reads at most while waiting for a whole ClientHello. A ClientHello fits in a
/// few hundred bytes; post-quantum key shares make it ~1.5 KB. A handshake message may span records
/// (RFC 8446 §5.1); past this many bytes we stop waiting and refuse (same bound as `gateway/sni.py`).
pub const MAX_HELLO: usize = 16 * 1024 + 5;

/// The largest record length accepted: 2^14 plaintext plus the 256 bytes TLS 1.2 allowed for expansion
/// (RFC 5246 §6.2.3). A ClientHello is always sent in plaintext records, but the Python accepted this much.
const MAX_RECORD: usize = 16384 + 256;

const RECORD_HANDSHAKE: u8 = 0x16; // ContentType.handshake, RFC 8446 §5.1
const HANDSHAKE_CLIENT_HELLO: u8 = 0x01; // HandshakeType.client_hello, RFC 8446 §4
const EXT_SERVER_NAME: u16 = 0; // RFC 6066 §3
const EXT_ALPN: u16 = 16; // RFC 7301 §3.1
const NAME_TYPE_HOST_NAME: u8 = 0; // RFC 6066 §3

/// The bytes are not the start of a TLS ClientHello (or one the gateway will not route). The reason is for
/// logs and metrics only.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NotTls(pub &'static str);

impl fmt::Display for NotTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "not a TLS ClientHello: {}", self.0)
    }
}

impl std::error::Error for NotTls {}

/// What a gateway routes by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientHello {
    /// The first host_name of the server_name extension, ASCII lower-cased; `None` without the extension.
    /// DNS names compare case-insensitively (RFC 6066 §3, RFC 4343), and Consul's SNI names are lower-case.
    pub sni: Option<String>,
    /// The ALPN protocol names in the client's order; names that are not UTF-8 (RFC 8701 GREASE values such
    /// as 0xFAFA) are left out, since no configured protocol can match them.
    pub alpn: Vec<String>,
}

/// The answer of one peek.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Peek {
    /// Everything so far is a valid prefix of a ClientHello; read more and peek again.
    NeedMore,
    /// A whole ClientHello has arrived.
    Hello(ClientHello),
}

/// Peek at the start of a connection: `NeedMore` while more bytes are needed, the ClientHello's SNI and ALPN
/// once its handshake message is complete (bytes after it are ignored), `NotTls` for anything that is not a
/// TLS ClientHello or that does not complete within `MAX_HELLO` bytes.
pub fn peek_client_hello(buf: &[u8]) -> Result<Peek, NotTls> {
    // Only the first MAX_HELLO bytes count, so that the answer does not depend on how much more the caller
    // happened to read past the bound.
    let window = buf.get(..MAX_HELLO).unwrap_or(buf);
    match client_hello_message(window)? {
        Some(body) => parse_client_hello(&body).map(Peek::Hello),
        None if buf.len() >= MAX_HELLO => {
            Err(NotTls("no whole ClientHello within MAX_HELLO bytes"))
        }
        None => Ok(Peek::NeedMore),
    }
}

/// The body of the first handshake message, reassembled from as many records as have arrived (RFC 8446
/// §5.1: a handshake message may be split across records, and no other record type may come between its
/// fragments), or `None` while it is incomplete. Each check runs on the bytes present, so a prefix that can
/// only become an error is refused at once rather than waited on.
fn client_hello_message(buf: &[u8]) -> Result<Option<Vec<u8>>, NotTls> {
    let mut hs: Vec<u8> = Vec::new();
    let mut rest = buf;
    loop {
        // TLSPlaintext header: type(1) legacy_record_version(2) length(2) (RFC 8446 §5.1).
        if rest.first().is_some_and(|&t| t != RECORD_HANDSHAKE) {
            return Err(NotTls("not a TLS handshake record"));
        }
        if rest.get(1).is_some_and(|&major| major != 3) {
            return Err(NotTls("record version is not 3.x"));
        }
        let Some((header, after)) = rest.split_at_checked(5) else {
            return Ok(None);
        };
        let len = match header {
            [_, _, _, hi, lo] => usize::from(u16::from_be_bytes([*hi, *lo])),
            _ => return Ok(None), // split_at_checked(5) gave exactly 5 bytes
        };
        if len == 0 || len > MAX_RECORD {
            return Err(NotTls("record length is 0 or over 2^14+256"));
        }
        let (fragment, next) = after.split_at_checked(len).unwrap_or((after, &[]));
        hs.extend_from_slice(fragment);
        if hs.first().is_some_and(|&t| t != HANDSHAKE_CLIENT_HELLO) {
            return Err(NotTls("the first handshake message is not a ClientHello"));
        }
        // Handshake header: msg_type(1) length(3) (RFC 8446 §4).
        if let Some(&[_, a, b, c]) = hs.get(..4) {
            let need = 4 + (usize::from(a) << 16 | usize::from(b) << 8 | usize::from(c));
            // At least one record header precedes it: a longer message can never complete in time.
            if need + 5 > MAX_HELLO {
                return Err(NotTls("ClientHello longer than MAX_HELLO"));
            }
            if let Some(body) = hs.get(4..need) {
                return Ok(Some(body.to_vec()));
            }
        }
        if fragment.len() < len {
            return Ok(None); // the record itself is still arriving
        }
        rest = next;
    }
}

/// A cursor over a byte string whose every read is checked: `None` when the bytes run out.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let (head, tail) = self.0.split_at_checked(n)?;
        self.0 = tail;
        Some(head)
    }

    fn u8(&mut self) -> Option<u8> {
        let (&b, tail) = self.0.split_first()?;
        self.0 = tail;
        Some(b)
    }

    fn u16(&mut self) -> Option<u16> {
        match self.take(2)? {
            &[hi, lo] => Some(u16::from_be_bytes([hi, lo])),
            _ => None,
        }
    }

    /// `opaque x<0..2^8-1>`: a one-byte length, then that many bytes (RFC 8446 §3.4).
    fn vec8(&mut self) -> Option<&'a [u8]> {
        let n = self.u8()?;
        self.take(usize::from(n))
    }

    /// `opaque x<0..2^16-1>`: a two-byte length, then that many bytes (RFC 8446 §3.4).
    fn vec16(&mut self) -> Option<&'a [u8]> {
        let n = self.u16()?;
        self.take(usize::from(n))
    }
}

const TRUNCATED: NotTls = NotTls("malformed ClientHello (a field runs past its end)");

/// The server_name and ALPN of a ClientHello body (RFC 8446 §4.1.2; the TLS 1.2 form of RFC 5246 §7.4.1.2
/// is the same up to the optional extensions).
fn parse_client_hello(body: &[u8]) -> Result<ClientHello, NotTls> {
    let mut r = Reader(body);
    r.take(2 + 32).ok_or(TRUNCATED)?; // legacy_version, random
    r.vec8().ok_or(TRUNCATED)?; // legacy_session_id
    r.vec16().ok_or(TRUNCATED)?; // cipher_suites
    r.vec8().ok_or(TRUNCATED)?; // legacy_compression_methods
    let mut hello = ClientHello {
        sni: None,
        alpn: Vec::new(),
    };
    if r.is_empty() {
        return Ok(hello); // TLS 1.2 allows a ClientHello without extensions (RFC 5246 §7.4.1.2)
    }
    // Bytes after the extension block are ignored, as gateway/sni.py did; the server judges them.
    let mut exts = Reader(r.vec16().ok_or(TRUNCATED)?);
    let (mut seen_sni, mut seen_alpn) = (false, false);
    while !exts.is_empty() {
        let etype = exts.u16().ok_or(TRUNCATED)?;
        let data = exts.vec16().ok_or(TRUNCATED)?;
        // RFC 8446 §4.2: at most one extension of a type. Refusing a second server_name or ALPN keeps the
        // gateway from routing by a name other than the one the server would read.
        match etype {
            EXT_SERVER_NAME if seen_sni => return Err(NotTls("two server_name extensions")),
            EXT_SERVER_NAME => {
                seen_sni = true;
                hello.sni = host_name(data)?;
            }
            EXT_ALPN if seen_alpn => return Err(NotTls("two ALPN extensions")),
            EXT_ALPN => {
                seen_alpn = true;
                hello.alpn = alpn_names(data)?;
            }
            _ => {}
        }
    }
    Ok(hello)
}

/// The host_name of a server_name extension: `ServerName server_name_list<1..2^16-1>`, each entry a
/// name_type byte and, for host_name (0), `opaque HostName<1..2^16-1>` (RFC 6066 §3). The first host_name
/// is taken, as gateway/sni.py did; a list with none gives `None`.
fn host_name(data: &[u8]) -> Result<Option<String>, NotTls> {
    const BAD: NotTls = NotTls("malformed server_name extension");
    let mut outer = Reader(data);
    let mut list = Reader(outer.vec16().ok_or(BAD)?);
    let mut found: Option<String> = None;
    while !list.is_empty() {
        let ntype = list.u8().ok_or(BAD)?;
        let name = list.vec16().ok_or(BAD)?;
        if ntype != NAME_TYPE_HOST_NAME {
            continue; // no other name type is defined; unknown ones are skipped
        }
        // RFC 6066 §3: "MUST NOT contain more than one name of the same name_type".
        if found.is_some() {
            return Err(NotTls("two host names in server_name"));
        }
        // RFC 6066 §3: "HostName" is ASCII (A-labels for IDNs); gateway/sni.py decoded it as ASCII too.
        let name = std::str::from_utf8(name)
            .ok()
            .filter(|s| s.is_ascii())
            .ok_or(NotTls("server name is not ASCII"))?;
        found = Some(name.to_ascii_lowercase());
    }
    Ok(found)
}

/// `ProtocolName protocol_name_list<2..2^16-1>`, each `opaque ProtocolName<1..2^8-1>` (RFC 7301 §3.1).
fn alpn_names(data: &[u8]) -> Result<Vec<String>, NotTls> {
    const BAD: NotTls = NotTls("malformed ALPN extension");
    let mut outer = Reader(data);
    let mut list = Reader(outer.vec16().ok_or(BAD)?);
    let mut names = Vec::new();
    while !list.is_empty() {
        let name = list.vec8().ok_or(BAD)?;
        if name.is_empty() {
            return Err(BAD); // RFC 7301 §3.1: "Empty strings MUST NOT be included"
        }
        if let Ok(s) = std::str::from_utf8(name) {
            names.push(s.to_owned());
        }
    }
    Ok(names)
}

#[cfg(test)]
#[allow(clippy::indexing_slicing, clippy::unwrap_used, clippy::expect_used)]
#[path = "sni_test.rs"]
mod tests;
