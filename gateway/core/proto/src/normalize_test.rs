use super::*;

fn with(action: EscapedSlashes, merge: bool) -> Normalization {
    Normalization {
        merge_slashes: merge,
        path_with_escaped_slashes_action: action,
        ..Normalization::default()
    }
}

fn fwd(path: &str) -> PathOutcome {
    PathOutcome::Forward(path.to_owned())
}

/// Normalizes with Consul's defaults (normalize on, merge off, KEEP).
fn norm(path: &str) -> PathOutcome {
    normalize_path(path, &Normalization::default())
}

fn assert_all(cases: &[(&str, &str)]) {
    for (input, want) in cases {
        assert_eq!(norm(input), fwd(want), "input {input:?}");
    }
}

#[test]
fn defaults_are_consuls() {
    let n = Normalization::default();
    assert!(!n.insecure_disable_path_normalization);
    assert!(!n.merge_slashes);
    assert_eq!(
        n.path_with_escaped_slashes_action,
        EscapedSlashes::ImplementationSpecificDefault
    );
    assert_eq!(n.headers_with_underscores_action, UnderscoreAction::Allow);
}

#[test]
fn serde_reads_consul_spellings() {
    let n: Normalization = serde_json::from_str(
        r#"{"merge_slashes":true,"path_with_escaped_slashes_action":"UNESCAPE_AND_REDIRECT",
                "headers_with_underscores_action":"DROP_HEADER"}"#,
    )
    .unwrap();
    assert!(n.merge_slashes && !n.insecure_disable_path_normalization);
    assert_eq!(
        n.path_with_escaped_slashes_action,
        EscapedSlashes::UnescapeAndRedirect
    );
    assert_eq!(
        n.headers_with_underscores_action,
        UnderscoreAction::DropHeader
    );

    let empty: Normalization = serde_json::from_str(
        r#"{"path_with_escaped_slashes_action":"","headers_with_underscores_action":""}"#,
    )
    .unwrap();
    assert_eq!(empty, Normalization::default());
    assert_eq!(
        serde_json::from_str::<Normalization>("{}").unwrap(),
        Normalization::default()
    );

    let camel: Normalization = serde_json::from_str(
        r#"{"InsecureDisablePathNormalization":true,"PathWithEscapedSlashesAction":"REJECT_REQUEST",
                "HeadersWithUnderscoresAction":"REJECT_REQUEST","MergeSlashes":true}"#,
    )
    .unwrap();
    assert!(camel.insecure_disable_path_normalization && camel.merge_slashes);
    assert_eq!(
        camel.path_with_escaped_slashes_action,
        EscapedSlashes::RejectRequest
    );
    assert_eq!(
        camel.headers_with_underscores_action,
        UnderscoreAction::RejectRequest
    );

    for name in [
        "IMPLEMENTATION_SPECIFIC_DEFAULT",
        "KEEP_UNCHANGED",
        "UNESCAPE_AND_FORWARD",
    ] {
        let json = format!("\"{name}\"");
        let action: EscapedSlashes = serde_json::from_str(&json).unwrap();
        assert_eq!(serde_json::to_string(&action).unwrap(), json);
    }
    assert!(serde_json::from_str::<EscapedSlashes>("\"reject_request\"").is_err());
    assert!(serde_json::from_str::<UnderscoreAction>("\"DENY\"").is_err());
}

// l7-security.md §1.3, first bullet, and Envoy path_utility_test NormalizeValidPaths.
#[test]
fn dot_segments_removed_and_clamped() {
    assert_all(&[
        ("/a/b/../c", "/a/c"),
        ("/a/b/./c", "/a/b/c"),
        ("a/b/../c", "/a/c"),
        ("/a/b/../../../../c", "/c"),
        ("/../a/b", "/a/b"),
        ("/./a/b", "/a/b"),
        ("..", "/"),
        (".", "/"),
        ("", "/"),
        ("/a/..", "/"),
        ("/a/.", "/a/"),
        ("/a/b/..", "/a/"),
        ("/a/.//b", "/a//b"),
        ("/a/...", "/a/..."),
        ("/a/.b/..c/c..", "/a/.b/..c/c.."),
        ("/xyz", "/xyz"),
        ("/x/y/z", "/x/y/z"),
    ]);
}

// l7-security.md §1.3: `%2E`/`%2e` count as dots; Envoy test NormalizeCasePath.
#[test]
fn escaped_dots_are_dots() {
    assert_all(&[
        ("/a/b/%2E%2E/c", "/a/c"),
        ("/a/b/%2e%2e/c", "/a/c"),
        ("/a/b/%2E./c", "/a/c"),
        ("/a/b/.%2e/c", "/a/c"),
        ("/a/b/%2E/c", "/a/b/c"),
        ("/a%2eb", "/a.b"),
        ("/%2ea", "/.a"),
        ("/a/%2e%2", "/a/.%2"),
    ]);
}

// l7-security.md §1.3: `\` is a separator.
#[test]
fn backslash_is_a_slash() {
    assert_all(&[
        ("/a/..\\c", "/c"),
        ("\\a\\b", "/a/b"),
        ("/a/b\\..\\..\\c", "/c"),
    ]);
}

// l7-security.md §1.3: only unreserved escapes are decoded; others kept with their hex case.
#[test]
fn only_unreserved_escapes_decoded() {
    assert_all(&[
        ("/%61dmin", "/admin"),
        ("/%41%5a%30%39%2D%5F%7E", "/AZ09-_~"),
        ("/%5c%25", "/%5c%25"),
        ("/%c0%af", "/%c0%af"),
        ("/a/%2F%2f/c", "/a/%2F%2f/c"),
        ("/%3b%3B%3f%40%2b", "/%3b%3B%3f%40%2b"),
        ("/A/B/C", "/A/B/C"),
    ]);
}

// l7-security.md §1.3: malformed escapes pass literally; raw bytes outside the URL safe set come out escaped (Chromium table).
#[test]
fn malformed_escapes_and_raw_bytes() {
    assert_all(&[
        ("/%zz", "/%zz"),
        ("/a%", "/a%"),
        ("/a%4", "/a%4"),
        ("/a b\"<>^`{|}", "/a%20b%22%3C%3E%5E%60%7B%7C%7D"),
        ("/caf\u{e9}", "/caf%C3%A9"),
        ("/a\u{7f}", "/a%7F"),
        ("/!$&'()*+,;=:@[]", "/!$&'()*+,;=:@[]"),
    ]);
}

// Chromium CheckForNestedEscapes: a stray `%` that would form an escape after decoding becomes `%25`.
#[test]
fn nested_escapes_cannot_decode_twice() {
    assert_all(&[
        ("/%%30%30", "/%2500"),
        ("/%%32%65%%32%65/admin", "/%252e%252e/admin"),
        ("/%%32f", "/%252f"),
        ("/%2%66", "/%252f"),
        ("/%3%30", "/%2530"),
        ("/%%3%34", "/%%2534"),
    ]);
}

// l7-security.md §1.3 `%00`, Envoy test InvalidPaths; §7 #14.
#[test]
fn nul_is_refused() {
    for input in [
        "/xyz/.%00../abc",
        "/xyz/%00.%00./abc",
        "/xyz/AAAAA%%0000/abc",
        "/ok%00",
        "/a\0b",
    ] {
        assert_eq!(
            norm(input),
            PathOutcome::Reject(REJECT_NORMALIZATION),
            "input {input:?}"
        );
    }
}

// l7-security.md §1.2 step 3, Envoy test NormalizeValidPaths (strip_dotdot_segments_with_parameters).
#[test]
fn params_stripped_from_dot_segments() {
    assert_all(&[
        ("/xyz/..;foo=bar/abc", "/abc"),
        ("/..;foo=bar/abc", "/abc"),
        ("/xyz/..;foo=bar", "/"),
        ("/xyz/.;foo=bar/abc", "/xyz/abc"),
        ("/.;foo=bar/abc", "/abc"),
        ("/xyz/.;foo=bar", "/xyz/"),
        ("/xyz/..;foo=bar/.;v1=2,v2=3/abc", "/abc"),
        ("/..;foo=bar/abc/.;mmm", "/abc/"),
        ("/.;aaa/..;foo=bar/abc/.;mmm", "/abc/"),
        ("/xyz/..;foo=bar/.;fff=zzz", "/"),
        ("/xyz/..;foo=bar/.;fff=zzz?blah=woops", "/?blah=woops"),
        (
            "/xyz/..;foo=bar/.;fff=zzz/remain;blah-bluh?query",
            "/remain;blah-bluh?query",
        ),
        ("/a/..;param1;param2/b", "/b"),
        ("/xyz/..;", "/"),
        ("/xyz/..foo", "/xyz/..foo"),
        ("/xyz/...;foo", "/xyz/...;foo"),
        ("/xyz?param=/..;foo", "/xyz?param=/..;foo"),
        // Envoy strips up to the next `/` only, so a `\` inside the parameters goes with them.
        ("/..;x\\y/b", "/b"),
        // Beyond Envoy (see classify_after_dot): escaped dots and `\`-opened segments.
        ("/a/%2e%2e;x/b", "/b"),
        ("/a/%2E;x/b", "/a/b"),
        ("/a\\..;x/b", "/b"),
        // Ordinary segments keep their parameters (l7-security.md §1.4 `/admin;x`).
        ("/admin;x", "/admin;x"),
        ("/a;x/..", "/"),
    ]);
}

// l7-security.md §1.2 step 1, §6.3.
#[test]
fn fragment_is_refused_whatever_the_settings() {
    let disabled = Normalization {
        insecure_disable_path_normalization: true,
        ..Normalization::default()
    };
    for n in [Normalization::default(), disabled] {
        for input in ["/admin#frag", "/a?x#y", "#", "/a%23b#"] {
            assert_eq!(
                normalize_path(input, &n),
                PathOutcome::Reject(REJECT_FRAGMENT)
            );
        }
    }
    assert_eq!(norm("/a%23b"), fwd("/a%23b"));
}

// l7-security.md §1.2 step 2 and Envoy test UnescapeSlashes.
#[test]
fn escaped_slash_actions() {
    let keep = with(EscapedSlashes::KeepUnchanged, false);
    let reject = with(EscapedSlashes::RejectRequest, false);
    let redirect = with(EscapedSlashes::UnescapeAndRedirect, false);
    let forward = with(EscapedSlashes::UnescapeAndForward, false);
    let input = "/admin%2fx";
    assert_eq!(norm(input), fwd(input));
    assert_eq!(normalize_path(input, &keep), fwd(input));
    assert_eq!(
        normalize_path(input, &reject),
        PathOutcome::Reject(REJECT_ESCAPED_SLASH)
    );
    assert_eq!(
        normalize_path(input, &redirect),
        PathOutcome::Redirect("/admin/x".into())
    );
    assert_eq!(normalize_path(input, &forward), fwd("/admin/x"));
    // Nothing to unescape: no redirect, no rejection.
    assert_eq!(normalize_path("/a/b?c=%2f", &redirect), fwd("/a/b?c=%2f"));
    assert_eq!(normalize_path("/a/b?c=%2f", &reject), fwd("/a/b?c=%2f"));
    assert_eq!(
        normalize_path("/a%5Cb", &reject),
        PathOutcome::Reject(REJECT_ESCAPED_SLASH)
    );
    // The query is untouched; `%5c` becomes `\`, which canonicalization makes `/`.
    assert_eq!(
        normalize_path("%2fa%5Cb%2fc%5c?%2fabcd%5C%%2f%", &forward),
        fwd("/a/b/c/?%2fabcd%5C%%2f%")
    );
    assert_eq!(
        normalize_path("/x/%2E%2e/z%2f%2Fabc%5C../def", &forward),
        fwd("/z//def")
    );
}

#[test]
fn unescape_slashes_like_str_replace_all() {
    for (input, want, found) in [
        ("", "", false),
        ("%2f%2F", "//", true),
        ("/a%2Fb%2fc/", "/a/b/c/", true),
        ("%2b", "%2b", false),
        ("%2", "%2", false),
        ("%", "%", false),
        ("foo%", "foo%", false),
        ("%%2fa/", "%/a/", true),
        ("%2%2fa/", "%2/a/", true),
        ("%5c%5C", "\\\\", true),
        ("%2fa%5Cb%2fc%5c", "/a\\b/c\\", true),
        ("/é%2f", "/é/", true),
    ] {
        assert_eq!(
            unescape_slashes(input),
            (want.to_owned(), found),
            "input {input:?}"
        );
    }
}

// Envoy test MergeSlashes, through normalize_path with normalization off so relative forms survive
// to the merge step (they are then refused as not absolute).
#[test]
fn merge_slashes_like_envoy() {
    for (input, want) in [
        ("", ""),
        ("a//b/c", "a/b/c"),
        ("/a//b/c/", "/a/b/c/"),
        ("a//b/c/", "a/b/c/"),
        ("/a", "/a"),
        ("//a/b/c", "/a/b/c"),
        ("/a//b/c", "/a/b/c"),
        ("/a/b/c//", "/a/b/c/"),
        ("/a///b/c", "/a/b/c"),
        ("/a////b/c", "/a/b/c"),
        ("//", "//"),
        ("///", "//"),
    ] {
        assert_eq!(merge_slashes(input), want, "input {input:?}");
    }
    let merge = with(EscapedSlashes::KeepUnchanged, true);
    assert_eq!(normalize_path("/a//b?a=///c", &merge), fwd("/a/b?a=///c"));
    assert_eq!(normalize_path("/a//b?", &merge), fwd("/a/b?"));
    assert_eq!(normalize_path("//a/?b", &merge), fwd("/a/?b"));
    assert_eq!(normalize_path("//admin", &merge), fwd("/admin"));
    assert_eq!(norm("//admin"), fwd("//admin"));
}

// l7-security.md §1.1: normalize_path off leaves dots and escapes; the other steps still run.
#[test]
fn insecure_disable_path_normalization() {
    let off = |action, merge| Normalization {
        insecure_disable_path_normalization: true,
        ..with(action, merge)
    };
    let keep = off(EscapedSlashes::KeepUnchanged, false);
    assert_eq!(normalize_path("/a/../admin", &keep), fwd("/a/../admin"));
    assert_eq!(normalize_path("/%61dmin", &keep), fwd("/%61dmin"));
    assert_eq!(normalize_path("/ok%00", &keep), fwd("/ok%00"));
    assert_eq!(
        normalize_path("a/b", &keep),
        PathOutcome::Reject(REJECT_NOT_ABSOLUTE)
    );
    assert_eq!(
        normalize_path("", &keep),
        PathOutcome::Reject(REJECT_NOT_ABSOLUTE)
    );
    let forward = off(EscapedSlashes::UnescapeAndForward, true);
    assert_eq!(
        normalize_path("%2fa%5cb//c?x//", &forward),
        fwd("/a\\b/c?x//")
    );
}

// l7-security.md §1.4, every row.
#[test]
fn worked_examples_of_section_1_4() {
    assert_all(&[
        ("/a/../admin", "/admin"),
        ("/./admin", "/admin"),
        ("/%61dmin", "/admin"),
        ("//admin", "//admin"),
        ("/admin%2fx", "/admin%2fx"),
        ("/ADMIN", "/ADMIN"),
        ("/admin?x", "/admin?x"),
        ("/admin;x", "/admin;x"),
        ("/x/..;p/admin", "/admin"),
    ]);
    assert_eq!(path_for_matching("/admin?x"), "/admin");
    assert_eq!(norm("/admin#frag"), PathOutcome::Reject(REJECT_FRAGMENT));
}

// l7-security.md §7, path vectors #2–#14 (what reaches RBAC and upstream).
#[test]
fn hostile_vectors_of_section_7() {
    assert_all(&[
        ("/api/../admin", "/admin"),            // #2
        ("/./admin", "/admin"),                 // #3
        ("/x/%2E%2e/admin", "/admin"),          // #4
        ("/%61dmin", "/admin"),                 // #5
        ("/a/..\\admin", "/admin"),             // #6
        ("//admin", "//admin"),                 // #7
        ("/x%2f..%2fadmin", "/x%2f..%2fadmin"), // #8 KEEP
        ("/admin%2Fx", "/admin%2Fx"),           // #9
        ("/ADMIN", "/ADMIN"),                   // #10
        ("/admin?debug=1", "/admin?debug=1"),   // #11
        ("/ok?next=/admin", "/ok?next=/admin"), // #11
        ("/x/..;p/admin", "/admin"),            // #13
    ]);
    let merge = with(EscapedSlashes::ImplementationSpecificDefault, true);
    assert_eq!(normalize_path("//admin", &merge), fwd("/admin")); // #7 MergeSlashes
    let eight = "/x%2f..%2fadmin";
    let run = |action| normalize_path(eight, &with(action, false));
    assert_eq!(
        run(EscapedSlashes::RejectRequest),
        PathOutcome::Reject(REJECT_ESCAPED_SLASH)
    );
    assert_eq!(
        run(EscapedSlashes::UnescapeAndRedirect),
        PathOutcome::Redirect("/admin".into())
    );
    assert_eq!(run(EscapedSlashes::UnescapeAndForward), fwd("/admin"));
    assert_eq!(path_for_matching("/admin?debug=1"), "/admin"); // #11
    assert_eq!(path_for_matching("/ok?next=/admin"), "/ok"); // #11
    assert_eq!(norm("/admin#x"), PathOutcome::Reject(REJECT_FRAGMENT)); // #12
    assert_eq!(norm("/ok%00"), PathOutcome::Reject(REJECT_NORMALIZATION)); // #14
}

#[test]
fn redirect_location_keeps_the_query() {
    let redirect = with(EscapedSlashes::UnescapeAndRedirect, true);
    assert_eq!(
        normalize_path("/a%2F%2f..%2Fb?q=%2f//", &redirect),
        PathOutcome::Redirect("/a/b?q=%2f//".into())
    );
}

#[test]
fn path_for_matching_strips_query_and_fragment() {
    for (input, want) in [
        ("", ""),
        ("/abc", "/abc"),
        ("/abc?", "/abc"),
        ("/abc??param=value", "/abc"),
        ("/abc#fragment?param=value", "/abc"),
        ("/abc?param=value#fragment", "/abc"),
        ("?", ""),
    ] {
        assert_eq!(path_for_matching(input), want, "input {input:?}");
    }
}

fn all_settings() -> Vec<Normalization> {
    let actions = [
        EscapedSlashes::ImplementationSpecificDefault,
        EscapedSlashes::KeepUnchanged,
        EscapedSlashes::RejectRequest,
        EscapedSlashes::UnescapeAndRedirect,
        EscapedSlashes::UnescapeAndForward,
    ];
    let mut all = Vec::new();
    for disable in [false, true] {
        for merge in [false, true] {
            for action in actions {
                all.push(Normalization {
                    insecure_disable_path_normalization: disable,
                    ..with(action, merge)
                });
            }
        }
    }
    all
}

/// The fuzz target's invariants: what goes through is origin-form, `#`-free, a fixed point, and (with
/// normalization on) leaves no dot segment, `%2e` or `\\` for an upstream to resolve.
fn assert_idempotent(input: &str, n: &Normalization) {
    let (PathOutcome::Forward(once) | PathOutcome::Redirect(once)) = normalize_path(input, n)
    else {
        return;
    };
    assert!(
        once.starts_with('/') && !once.contains('#'),
        "{input:?} -> {once:?}"
    );
    assert_eq!(
        normalize_path(&once, n),
        fwd(&once),
        "input {input:?} with {n:?}"
    );
    if !n.insecure_disable_path_normalization {
        let path = path_for_matching(&once);
        assert!(
            !path.split('/').any(|s| s == "." || s == ".."),
            "{input:?} -> {once:?}"
        );
        assert!(!path.contains('\\'), "{input:?} -> {once:?}");
        assert!(
            !path.to_ascii_lowercase().contains("%2e"),
            "{input:?} -> {once:?}"
        );
    }
}

#[test]
fn forward_output_is_a_fixed_point() {
    let inputs = [
        "/a/../admin",
        "/%%32%65%%32%65/admin",
        "/a/%2e%2e;x/b",
        "/a\\..;x/b",
        "/x%2f..%2fadmin",
        "/%2%2f%66",
        "/%%2f2f",
        "a//b/../c?x=/../",
        "/caf\u{e9}/%C3%a9",
        "/%%%3233",
    ];
    for n in all_settings() {
        for input in inputs {
            assert_idempotent(input, &n);
        }
    }
}

/// Every string of up to 4 symbols from an alphabet chosen to build dots, escapes, nested escapes,
/// slashes and parameters: no panic, and Forward is a fixed point (what the fuzz target checks at large).
#[test]
fn forward_is_a_fixed_point_exhaustively() {
    let alphabet = [
        "/", "\\", ".", "%", "2", "e", "f", "5", "c", "3", "0", ";", "?", "%2e", "%2f",
    ];
    let settings = all_settings();
    let mut current = vec![String::new()];
    for _ in 0..4 {
        let mut next = Vec::with_capacity(current.len() * alphabet.len());
        for prefix in &current {
            for symbol in alphabet {
                let input = format!("{prefix}{symbol}");
                for n in &settings {
                    assert_idempotent(&input, n);
                }
                next.push(input);
            }
        }
        current = next;
    }
}
