//! An HTTP/2 frame-header scanner for the bytes a peer sends (RFC 9113 §4.1: 24-octet length, type, flags,
//! stream id; then the payload, skipped). It sees what the h2 crate does not let a server count: control
//! frames that cost the server work or an answer without opening a request — PING and SETTINGS (each wants an
//! ACK), PRIORITY, RST_STREAM — against the requests (HEADERS) the peer opened. Envoy caps the same class
//! (`max_outbound_control_frames`, `max_inbound_priority_frames_per_stream` 100 × (1 + streams),
//! http2-grpc.md §5.8); meshgw's bound is one budget: [`CONTROL_BASE`] + [`CONTROL_PER_STREAM`] × HEADERS.
//!
//! The scanner keeps a few integers whatever it is fed (split anywhere, any garbage): it never buffers.

/// RFC 9113 §3.4.
pub const PREFACE_LEN: usize = 24;
const HEADER_LEN: usize = 9;

pub const CONTROL_BASE: u64 = 1000;
pub const CONTROL_PER_STREAM: u64 = 100;

const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const PRIORITY: u8 = 0x2;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const PING: u8 = 0x6;
const CONTINUATION: u8 = 0x9;
const ACK: u8 = 0x1;

#[derive(Debug, Default, Clone)]
pub struct Scanner {
    /// Preface bytes still to skip (a server's view starts with the client preface).
    preface: usize,
    head: [u8; HEADER_LEN],
    have: usize,
    /// Payload bytes of the current frame still to skip.
    skip: u64,
    pub headers: u64,
    pub control: u64,
    pub empty_data: u64,
    pub resets: u64,
    /// DATA frames without END_STREAM carrying under 100 bytes (h2's small-frame accounting counts these).
    pub small_data: u64,
    /// CONTINUATION frames since the last HEADERS, and the longest such run.
    run: u64,
    pub longest_continuation_run: u64,
}

/// Why h2 answered a peer with ENHANCE_YOUR_CALM: h2 says only that code, so the frames the peer sent decide
/// (`meshgw-core` http::h2 counts the cut under this name).
pub fn calm_reason(s: &Scanner) -> &'static str {
    if s.longest_continuation_run > 4 {
        "header_flood" // h2's CONTINUATION cap (max header list / frame size, at least 5)
    } else if s.resets >= 20 && s.resets * 2 >= s.headers {
        "rapid_reset" // h2's 20 resets of not-yet-accepted streams, or Envoy's premature-reset rule
    } else if s.headers <= 2 && s.resets == 0 {
        "header_flood" // one header block was enough: its decoded size (an HPACK bomb)
    } else if s.small_data > 1000 {
        "small_frame_flood"
    } else {
        "stream_error_flood" // streams h2 had to reset itself, over its bound
    }
}

impl Scanner {
    /// For a server: the client preface comes first.
    pub fn server() -> Scanner {
        Scanner {
            preface: PREFACE_LEN,
            ..Scanner::default()
        }
    }

    /// Whether the peer's control frames are over its budget.
    pub fn over_budget(&self) -> bool {
        self.control > CONTROL_BASE.saturating_add(self.headers.saturating_mul(CONTROL_PER_STREAM))
    }

    pub fn feed(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            if self.preface > 0 {
                let n = self.preface.min(data.len());
                self.preface -= n;
                data = &data[n..];
                continue;
            }
            if self.skip > 0 {
                let n = usize::try_from(self.skip)
                    .unwrap_or(usize::MAX)
                    .min(data.len());
                self.skip -= n as u64;
                data = &data[n..];
                continue;
            }
            let n = (HEADER_LEN - self.have).min(data.len());
            self.head[self.have..self.have + n].copy_from_slice(&data[..n]);
            self.have += n;
            data = &data[n..];
            if self.have == HEADER_LEN {
                self.have = 0;
                self.frame();
            }
        }
    }

    fn frame(&mut self) {
        let h = &self.head;
        let len = (u64::from(h[0]) << 16) | (u64::from(h[1]) << 8) | u64::from(h[2]);
        let (kind, flags) = (h[3], h[4]);
        self.skip = len;
        if kind != CONTINUATION {
            self.run = 0;
        }
        match kind {
            HEADERS => self.headers += 1,
            CONTINUATION => {
                self.run += 1;
                self.longest_continuation_run = self.longest_continuation_run.max(self.run);
            }
            RST_STREAM => {
                self.control += 1;
                self.resets += 1;
            }
            PRIORITY => self.control += 1,
            SETTINGS | PING if flags & ACK == 0 => self.control += 1,
            DATA if flags & 0x1 == 0 && len < 100 => {
                self.small_data += 1;
                if len == 0 {
                    self.empty_data += 1;
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(kind: u8, flags: u8, len: usize) -> Vec<u8> {
        let mut f = vec![
            (len >> 16) as u8,
            (len >> 8) as u8,
            len as u8,
            kind,
            flags,
            0,
            0,
            0,
            1,
        ];
        f.extend(std::iter::repeat_n(0xAA, len));
        f
    }

    #[test]
    fn counts_across_any_split() {
        let mut all = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        all.extend(frame(SETTINGS, 0, 12));
        all.extend(frame(HEADERS, 0x4, 30));
        all.extend(frame(PING, 0, 8));
        all.extend(frame(PING, ACK, 8)); // an ACK is an answer, not a request for work
        all.extend(frame(DATA, 0, 0));
        all.extend(frame(RST_STREAM, 0, 4));
        for split in [1, 2, 7, 9, 10, 33, all.len()] {
            let mut s = Scanner::server();
            for chunk in all.chunks(split) {
                s.feed(chunk);
            }
            assert_eq!(
                (s.headers, s.control, s.empty_data),
                (1, 3, 1),
                "split {split}"
            );
        }
    }

    #[test]
    fn calm_reasons_from_the_frames() {
        let mut flood = Scanner::server();
        flood.feed(&[0; PREFACE_LEN]);
        flood.feed(&frame(HEADERS, 0, 10));
        for _ in 0..6 {
            flood.feed(&frame(CONTINUATION, 0, 10));
        }
        assert_eq!(calm_reason(&flood), "header_flood");
        let mut rr = Scanner::server();
        rr.feed(&[0; PREFACE_LEN]);
        for _ in 0..30 {
            rr.feed(&frame(HEADERS, 0x5, 10));
            rr.feed(&frame(RST_STREAM, 0, 4));
        }
        assert_eq!(calm_reason(&rr), "rapid_reset");
        let mut bomb = Scanner::server();
        bomb.feed(&[0; PREFACE_LEN]);
        bomb.feed(&frame(HEADERS, 0x5, 9000));
        assert_eq!(calm_reason(&bomb), "header_flood");
        let mut errs = Scanner::server();
        errs.feed(&[0; PREFACE_LEN]);
        for _ in 0..50 {
            errs.feed(&frame(HEADERS, 0x5, 10));
        }
        assert_eq!(calm_reason(&errs), "stream_error_flood");
    }

    #[test]
    fn budget_grows_with_requests() {
        let mut s = Scanner::server();
        s.feed(&[0; PREFACE_LEN]);
        for _ in 0..CONTROL_BASE {
            s.feed(&frame(PING, 0, 8));
        }
        assert!(!s.over_budget());
        s.feed(&frame(PING, 0, 8));
        assert!(s.over_budget());
        s.feed(&frame(HEADERS, 0x5, 3));
        assert!(!s.over_budget(), "one request buys 100 more");
    }
}
