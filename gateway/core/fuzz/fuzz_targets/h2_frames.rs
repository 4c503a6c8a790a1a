#![no_main]
//! The HTTP/2 frame-header scanner takes any bytes split anywhere: no panic, and the split never changes the
//! counts (the same input fed whole and in two parts).

use libfuzzer_sys::fuzz_target;
use meshgw_proto::h2_frames::Scanner;

fuzz_target!(|data: &[u8]| {
    let mut whole = Scanner::server();
    whole.feed(data);
    let cut = data.first().map_or(0, |b| usize::from(*b)).min(data.len());
    let mut parts = Scanner::server();
    parts.feed(&data[..cut]);
    parts.feed(&data[cut..]);
    let counts = |s: &Scanner| {
        (
            s.headers,
            s.control,
            s.empty_data,
            s.resets,
            s.small_data,
            s.longest_continuation_run,
        )
    };
    assert_eq!(counts(&whole), counts(&parts));
    let _ = meshgw_proto::h2_frames::calm_reason(&whole);
    let _ = whole.over_budget();
});
