use super::*;

const TD: &str = "test.consul";

fn u16b(n: usize) -> [u8; 2] {
    u16::try_from(n).unwrap().to_be_bytes()
}

fn ext(etype: u16, data: &[u8]) -> Vec<u8> {
    let mut v = etype.to_be_bytes().to_vec();
    v.extend_from_slice(&u16b(data.len()));
    v.extend_from_slice(data);
    v
}

fn sni_ext(name: &[u8]) -> Vec<u8> {
    let mut entry = vec![NAME_TYPE_HOST_NAME];
    entry.extend_from_slice(&u16b(name.len()));
    entry.extend_from_slice(name);
    let mut list = u16b(entry.len()).to_vec();
    list.extend_from_slice(&entry);
    ext(EXT_SERVER_NAME, &list)
}

fn alpn_ext(protos: &[&[u8]]) -> Vec<u8> {
    let mut list = Vec::new();
    for p in protos {
        list.push(u8::try_from(p.len()).unwrap());
        list.extend_from_slice(p);
    }
    let mut data = u16b(list.len()).to_vec();
    data.extend_from_slice(&list);
    ext(EXT_ALPN, &data)
}

/// A ClientHello body as a TLS 1.3 client sends it (RFC 8446 §4.1.2): GREASE, supported_versions,
/// supported_groups, signature_algorithms, an x25519 key share, then the given extensions.
fn body_with(exts: &[Vec<u8>]) -> Vec<u8> {
    let mut b = vec![0x03, 0x03]; // legacy_version TLS 1.2
    b.extend((0u8..32).map(|i| i.wrapping_mul(37))); // random
    b.push(32); // legacy_session_id (middlebox compatibility mode)
    b.extend([0xab; 32]);
    let suites = [0x13u8, 0x01, 0x13, 0x02, 0x13, 0x03, 0xc0, 0x2f];
    b.extend_from_slice(&u16b(suites.len()));
    b.extend_from_slice(&suites);
    b.extend([1, 0]); // compression: null
    let mut all = vec![
        ext(0x0a0a, &[]),                         // GREASE (RFC 8701)
        ext(43, &[4, 0x03, 0x04, 0x03, 0x03]),    // supported_versions: 1.3, 1.2
        ext(10, &[0, 4, 0x00, 0x1d, 0x00, 0x17]), // supported_groups: x25519, p256
        ext(13, &[0, 4, 0x04, 0x03, 0x08, 0x04]), // signature_algorithms
    ];
    let mut ks = vec![0, 36, 0x00, 0x1d, 0, 32];
    ks.extend([0x55; 32]);
    all.push(ext(51, &ks)); // key_share
    all.extend_from_slice(exts);
    let flat: Vec<u8> = all.concat();
    b.extend_from_slice(&u16b(flat.len()));
    b.extend_from_slice(&flat);
    b
}

fn handshake(body: &[u8]) -> Vec<u8> {
    let n = u32::try_from(body.len()).unwrap().to_be_bytes();
    let mut m = vec![HANDSHAKE_CLIENT_HELLO, n[1], n[2], n[3]];
    m.extend_from_slice(body);
    m
}

/// The handshake message in records whose fragments are cut at `cuts` (offsets into the message).
fn records(msg: &[u8], cuts: &[usize]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut bounds = vec![0];
    bounds.extend_from_slice(cuts);
    bounds.push(msg.len());
    for w in bounds.windows(2) {
        let frag = &msg[w[0]..w[1]];
        out.extend([RECORD_HANDSHAKE, 3, 1]);
        out.extend_from_slice(&u16b(frag.len()));
        out.extend_from_slice(frag);
    }
    out
}

fn hello(sni: Option<&str>, alpn: &[&str]) -> Vec<u8> {
    let mut exts = Vec::new();
    if let Some(s) = sni {
        exts.push(sni_ext(s.as_bytes()));
    }
    if !alpn.is_empty() {
        let protos: Vec<&[u8]> = alpn.iter().map(|p| p.as_bytes()).collect();
        exts.push(alpn_ext(&protos));
    }
    records(&handshake(&body_with(&exts)), &[])
}

fn got(sni: Option<&str>, alpn: &[&str]) -> Result<Peek, NotTls> {
    Ok(Peek::Hello(ClientHello {
        sni: sni.map(str::to_owned),
        alpn: alpn.iter().map(|s| s.to_string()).collect(),
    }))
}

/// Every strict prefix is `NeedMore` (the prefix of a valid ClientHello is never refused).
fn assert_prefixes_need_more(bytes: &[u8]) {
    for n in 0..bytes.len() {
        assert_eq!(
            peek_client_hello(&bytes[..n]),
            Ok(Peek::NeedMore),
            "prefix {n}"
        );
    }
}

// tests/test_mesh_gateway.py test_sni_from_a_real_client_hello_fed_byte_by_byte
#[test]
fn sni_and_alpn_fed_byte_by_byte() {
    let name = format!("api.default.dc2.internal.{TD}");
    let bytes = hello(Some(&name), &["h2", "http/1.1"]);
    assert_prefixes_need_more(&bytes);
    assert_eq!(
        peek_client_hello(&bytes),
        got(Some(&name), &["h2", "http/1.1"])
    );
    let mut trailing = bytes.clone();
    trailing.extend_from_slice(b"trailing");
    assert_eq!(
        peek_client_hello(&trailing),
        got(Some(&name), &["h2", "http/1.1"])
    );
}

/// A ClientHello from OpenSSL 3.0.19 (Python's ssl, server_hostname "Web.Default.dc1.internal.test.consul",
/// ALPN h2 and http/1.1; 517 bytes with its padding extension), captured once: the parser reads what a
/// real TLS stack sends.
const OPENSSL_HELLO: &str = concat!(
        "1603010200010001fc030344183a11c88e0541440540f4b58fd8d982d21e52fec33b44e112a460732a913420e023dc95",
        "a8fb307ae62dffef0116c0b607c2409c4200b82748e167ed05ca97f00024130213031301c02cc030c02bc02fcca9cca8",
        "c024c028c023c027009f009e006b006700ff0100018f0000002900270000245765622e44656661756c742e6463312e69",
        "6e7465726e616c2e746573742e636f6e73756c000b000403000102000a00160014001d0017001e001900180100010101",
        "0201030104002300000010000e000c02683208687474702f312e310016000000170000000d002a002804030503060308",
        "0708080809080a080b080408050806040105010601030303010302040205020602002b00050403040303002d00020101",
        "003300260024001d0020f272a159c892030a4e6fc06273085ed37309ef54e0622812d9b90c294d76fe5d001500b70000",
        "000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000",
        "000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000",
        "000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000",
        "00000000000000000000000000000000000000000000000000000000000000000000000000",
    );

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len() / 2)
        .map(|i| u8::from_str_radix(&s[2 * i..2 * i + 2], 16).unwrap())
        .collect()
}

#[test]
fn openssl_client_hello() {
    let bytes = unhex(OPENSSL_HELLO);
    assert_prefixes_need_more(&bytes);
    assert_eq!(
        peek_client_hello(&bytes),
        got(
            Some(&format!("web.default.dc1.internal.{TD}")),
            &["h2", "http/1.1"]
        )
    );
}

// tests/test_mesh_gateway.py test_client_hello_without_sni_and_non_tls_bytes
#[test]
fn without_sni_and_non_tls_bytes() {
    assert_eq!(peek_client_hello(&hello(None, &[])), got(None, &[]));
    let junk: [&[u8]; 3] = [
        b"GET / HTTP/1.1\r\n\r\n",
        b"\x16\x07\x01\x00\x05",
        b"\x15\x03\x01\x00\x02\x02\x28",
    ];
    for j in junk {
        assert!(peek_client_hello(j).is_err(), "{j:?}");
    }
    // A handshake record that is not a ClientHello (a ServerHello, type 2).
    assert!(peek_client_hello(b"\x16\x03\x03\x00\x04\x02\x00\x00\x00").is_err());
    // Refused as soon as the first byte(s) show it: a gateway need not wait for five bytes of HTTP.
    assert!(peek_client_hello(b"G").is_err());
    assert!(peek_client_hello(b"\x16\x07").is_err());
    assert!(peek_client_hello(b"\x16\x03\x03\x00\x04\x02").is_err());
    assert_eq!(peek_client_hello(b""), Ok(Peek::NeedMore));
}

#[test]
fn record_lengths() {
    assert!(peek_client_hello(b"\x16\x03\x01\x00\x00").is_err()); // length 0
    assert!(peek_client_hello(b"\x16\x03\x01\x41\x01").is_err()); // 16384+256+1
    assert_eq!(
        peek_client_hello(b"\x16\x03\x01\x41\x00"),
        Ok(Peek::NeedMore)
    ); // 16384+256
}

// tests/test_mesh_gateway.py test_client_hello_split_over_two_records, and every other cut
#[test]
fn split_over_two_records_at_every_cut() {
    let name = format!("web.default.dc1.internal.{TD}");
    let msg = handshake(&body_with(&[sni_ext(name.as_bytes()), alpn_ext(&[b"h2"])]));
    for cut in 1..msg.len() {
        let two = records(&msg, &[cut]);
        assert_prefixes_need_more(&two);
        assert_eq!(
            peek_client_hello(&two),
            got(Some(&name), &["h2"]),
            "cut {cut}"
        );
        assert!(two.len() < MAX_HELLO);
    }
}

#[test]
fn one_byte_records() {
    let msg = handshake(&body_with(&[sni_ext(b"a.b")]));
    let cuts: Vec<usize> = (1..msg.len()).collect();
    let many = records(&msg, &cuts);
    assert_prefixes_need_more(&many);
    assert_eq!(peek_client_hello(&many), got(Some("a.b"), &[]));
}

#[test]
fn other_record_type_between_fragments() {
    let msg = handshake(&body_with(&[sni_ext(b"a.b")]));
    let mut bytes = records(&msg[..10], &[]);
    bytes.extend_from_slice(b"\x14\x03\x03\x00\x01\x01"); // change_cipher_spec
    bytes.extend_from_slice(&records(&msg[10..], &[]));
    assert!(peek_client_hello(&bytes).is_err());
}

#[test]
fn host_name_lower_cased_and_ascii_only() {
    let bytes = hello(Some("API.Default.DC2.internal.TEST.consul"), &[]);
    assert_eq!(
        peek_client_hello(&bytes),
        got(Some("api.default.dc2.internal.test.consul"), &[])
    );
    assert_eq!(
        peek_client_hello(&hello(Some("bücher.example"), &[])),
        Err(NotTls("server name is not ASCII"))
    );
    let latin1 = records(&handshake(&body_with(&[sni_ext(b"b\xfccher")])), &[]);
    assert!(peek_client_hello(&latin1).is_err());
}

#[test]
fn server_name_list_forms() {
    // An entry of another name type before the host name is skipped.
    let mut list = vec![7, 0, 1, b'x', NAME_TYPE_HOST_NAME, 0, 3];
    list.extend_from_slice(b"a.b");
    let mut data = u16b(list.len()).to_vec();
    data.extend_from_slice(&list);
    let bytes = records(&handshake(&body_with(&[ext(EXT_SERVER_NAME, &data)])), &[]);
    assert_eq!(peek_client_hello(&bytes), got(Some("a.b"), &[]));
    // Only other name types: no SNI.
    let bytes = records(
        &handshake(&body_with(&[ext(0, &[0, 4, 7, 0, 1, b'x'])])),
        &[],
    );
    assert_eq!(peek_client_hello(&bytes), got(None, &[]));
    // Two host names, two server_name extensions, a name running past the list: refused.
    let two = [0, 8, 0, 0, 1, b'a', 0, 0, 1, b'b'];
    for exts in [
        vec![ext(0, &two)],
        vec![sni_ext(b"a"), sni_ext(b"a")],
        vec![ext(0, &[0, 4, 0, 0, 9, b'a'])],
        vec![ext(0, &[0, 9, 0, 0, 1, b'a'])],
    ] {
        let bytes = records(&handshake(&body_with(&exts)), &[]);
        assert!(peek_client_hello(&bytes).is_err(), "{exts:?}");
    }
}

#[test]
fn alpn_forms() {
    // A non-UTF-8 protocol (a GREASE value, RFC 8701) is left out, the rest kept in order.
    let bytes = hello(None, &[]);
    assert_eq!(peek_client_hello(&bytes), got(None, &[]));
    let exts = [alpn_ext(&[b"\xfa\xfa", b"h2", b"http/1.1"])];
    let bytes = records(&handshake(&body_with(&exts)), &[]);
    assert_eq!(peek_client_hello(&bytes), got(None, &["h2", "http/1.1"]));
    for exts in [
        vec![alpn_ext(&[b"h2", b""])],
        vec![alpn_ext(&[b"h2"]), alpn_ext(&[b"h2"])],
        vec![ext(EXT_ALPN, &[0, 3, 2, b'h'])],
        vec![ext(EXT_ALPN, &[0])],
    ] {
        let bytes = records(&handshake(&body_with(&exts)), &[]);
        assert!(peek_client_hello(&bytes).is_err(), "{exts:?}");
    }
}

#[test]
fn tls12_without_extensions() {
    let mut body = vec![3, 3];
    body.extend([0; 32]);
    body.extend([0, 0, 2, 0, 0x2f, 1, 0]);
    assert_eq!(
        peek_client_hello(&records(&handshake(&body), &[])),
        got(None, &[])
    );
    // A body cut inside its fixed fields is malformed, not incomplete: the message length said it ended.
    for n in 0..body.len() {
        let bytes = records(&handshake(&body[..n]), &[]);
        assert!(peek_client_hello(&bytes).is_err(), "body cut at {n}");
    }
}

#[test]
fn max_hello() {
    // A handshake message declaring more than can fit is refused at its header.
    let header = [RECORD_HANDSHAKE, 3, 1, 0, 4, 1, 0, 0x40, 0x00];
    assert_eq!(peek_client_hello(&header[..8]), Ok(Peek::NeedMore));
    assert!(peek_client_hello(&header).is_err());
    // One that fits exactly: a 16384-byte message in one record is MAX_HELLO bytes; the padding
    // extension (21, RFC 7685) fills it up.
    let base = body_with(&[sni_ext(b"a.b"), ext(21, &[])]).len();
    let msg = handshake(&body_with(&[
        sni_ext(b"a.b"),
        ext(21, &vec![0; 16384 - 4 - base]),
    ]));
    let bytes = records(&msg, &[]);
    assert_eq!(bytes.len(), MAX_HELLO);
    assert_prefixes_need_more(&bytes);
    assert_eq!(peek_client_hello(&bytes), got(Some("a.b"), &[]));
    // One byte longer cannot complete within the bound: refused as soon as its header is read.
    let msg = handshake(&body_with(&[
        sni_ext(b"a.b"),
        ext(21, &vec![0; 16384 - 3 - base]),
    ]));
    let bytes = records(&msg, &[]);
    assert_eq!(peek_client_hello(&bytes[..8]), Ok(Peek::NeedMore));
    assert_eq!(
        peek_client_hello(&bytes[..9]),
        Err(NotTls("ClientHello longer than MAX_HELLO"))
    );
    // Tiny records that never finish a small message within MAX_HELLO bytes.
    let msg = handshake(&vec![0; 8000]);
    let cuts: Vec<usize> = (1..msg.len()).collect();
    let many = records(&msg, &cuts);
    assert_eq!(
        peek_client_hello(&many[..MAX_HELLO - 1]),
        Ok(Peek::NeedMore)
    );
    assert_eq!(
        peek_client_hello(&many[..MAX_HELLO]),
        Err(NotTls("no whole ClientHello within MAX_HELLO bytes"))
    );
}

/// Every single-byte change and every truncation of a real ClientHello: an answer, never a panic, and
/// a prefix's answer is `NeedMore` or the whole buffer's.
#[test]
fn mutations_never_panic_and_prefixes_agree() {
    let bytes = records(
        &handshake(&body_with(&[sni_ext(b"x.y"), alpn_ext(&[b"h2"])])),
        &[60],
    );
    for i in 0..bytes.len() {
        for v in [0u8, 1, 0x7f, 0x80, 0xff, bytes[i] ^ 1] {
            let mut m = bytes.clone();
            m[i] = v;
            let full = peek_client_hello(&m);
            for n in (0..m.len()).step_by(7) {
                let p = peek_client_hello(&m[..n]);
                assert!(
                    p == Ok(Peek::NeedMore) || p == full,
                    "byte {i}={v} prefix {n}"
                );
            }
        }
    }
}
