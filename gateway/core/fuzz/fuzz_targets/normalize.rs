//! Fuzz `meshgw_proto::normalize` on arbitrary UTF-8 under every combination of the mesh entry's path
//! settings (l7-security.md §1.1): no panic, and what is forwarded or redirected to is an origin-form path
//! without `#` that normalizes to itself — the string intentions matched is the string the upstream gets, and
//! it cannot be read differently by one more pass (l7-security.md §6.7). With normalization on, the path part
//! also has no dot segment, no `%2e` and no `\` left for an upstream to resolve (l7-security.md §1.3).
#![no_main]

use libfuzzer_sys::fuzz_target;
use meshgw_proto::normalize::{
    normalize_path, path_for_matching, EscapedSlashes, Normalization, PathOutcome,
};

const ACTIONS: [EscapedSlashes; 5] = [
    EscapedSlashes::ImplementationSpecificDefault,
    EscapedSlashes::KeepUnchanged,
    EscapedSlashes::RejectRequest,
    EscapedSlashes::UnescapeAndRedirect,
    EscapedSlashes::UnescapeAndForward,
];

fn settings() -> impl Iterator<Item = Normalization> {
    [false, true].into_iter().flat_map(|disable| {
        [false, true].into_iter().flat_map(move |merge| {
            ACTIONS.into_iter().map(move |action| Normalization {
                insecure_disable_path_normalization: disable,
                merge_slashes: merge,
                path_with_escaped_slashes_action: action,
                ..Normalization::default()
            })
        })
    })
}

/// What every path meshgw lets through must satisfy.
fn check_output(input: &str, out: &str, n: &Normalization) {
    assert!(out.starts_with('/'), "{input:?} -> {out:?} ({n:?})");
    assert!(!out.contains('#'), "{input:?} -> {out:?} ({n:?})");
    assert_eq!(
        normalize_path(out, n),
        PathOutcome::Forward(out.to_owned()),
        "not a fixed point: {input:?} -> {out:?} ({n:?})"
    );
    let path = path_for_matching(out);
    assert!(out
        .get(path.len()..)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('?')));
    if !n.insecure_disable_path_normalization {
        assert!(
            !path
                .split('/')
                .any(|segment| segment == "." || segment == ".."),
            "dot segment left: {input:?} -> {out:?} ({n:?})"
        );
        assert!(
            !path.contains('\\') && !path.to_ascii_lowercase().contains("%2e"),
            "dot or backslash left for upstream: {input:?} -> {out:?} ({n:?})"
        );
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(input) = std::str::from_utf8(data) else {
        return;
    };
    for n in settings() {
        match normalize_path(input, &n) {
            PathOutcome::Forward(out) | PathOutcome::Redirect(out) => check_output(input, &out, &n),
            PathOutcome::Reject(reason) => assert!(!reason.is_empty()),
        }
    }
});
