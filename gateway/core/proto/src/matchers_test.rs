use super::*;

fn hm(rule: HeaderRule, invert: bool) -> HeaderMatcher {
    HeaderMatcher::new("X-Role", rule, invert)
}

fn v(m: StringMatcher) -> HeaderRule {
    HeaderRule::Value(m)
}

#[test]
fn regex_is_full_match_and_cannot_escape_its_group() {
    let re = compile_regex("/users/[0-9]+").unwrap();
    assert!(re.is_match(b"/users/42"));
    assert!(!re.is_match(b"/users/42/x"));
    assert!(!re.is_match(b"x/users/42"));
    // `$` is end of text, not "before a final newline".
    assert!(!re.is_match(b"/users/42\n"));
    assert!(compile_regex("a)|(b").is_err());
    assert!(compile_regex("(").is_err());
    assert!(compile_regex("*x").is_err());
}

#[test]
fn regex_errors_are_one_line() {
    for bad in ["(", "*x", "(?=x)", "a\\", "[z-a]", "\\pL"] {
        let e = compile_regex(bad).unwrap_err();
        assert!(!e.contains('\n'), "{e:?}");
        assert!(e.starts_with("does not compile: "), "{e:?}");
        assert!(e.ends_with(" (expected RE2 syntax)"), "{e:?}");
    }
    let long = "a".repeat(REGEX_MAX_PATTERN_LEN + 1);
    assert!(compile_regex(&long).unwrap_err().contains("bytes long"));
    let huge = compile_regex("(?:a{1000}){1000}").unwrap_err();
    assert!(huge.contains("compiles to more than"), "{huge}");
    let deep = format!("{}a{}", "(".repeat(200), ")".repeat(200));
    assert!(compile_regex(&deep).is_err());
}

#[test]
fn regex_latin1_mode() {
    // One byte is one character: `.` matches any single byte, including non-UTF-8 ones.
    let re = compile_regex("a.b").unwrap();
    assert!(re.is_match(b"a\xffb"));
    assert!(!re.is_match("aéb".as_bytes())); // é is two bytes in UTF-8
    assert!(compile_regex("a..b").unwrap().is_match("aéb".as_bytes()));
    // A non-ASCII literal in the pattern matches its UTF-8 bytes.
    assert!(compile_regex("café").unwrap().is_match("café".as_bytes()));
    // RE2's Perl classes are ASCII.
    assert!(compile_regex("\\d+").unwrap().is_match(b"123"));
    assert!(compile_regex("(?i)abc").unwrap().is_match(b"ABC"));
}

#[test]
fn string_matchers() {
    assert!(StringMatcher::exact("admin", false).matches(b"admin"));
    assert!(!StringMatcher::exact("admin", false).matches(b"Admin"));
    assert!(StringMatcher::exact("admin", true).matches(b"ADMIN"));
    assert!(StringMatcher::prefix("cu", true).matches(b"CURL"));
    assert!(!StringMatcher::prefix("curl/", false).matches(b"cur"));
    assert!(StringMatcher::suffix(".Internal", true).matches(b"api.INTERNAL"));
    assert!(!StringMatcher::suffix(".internal", false).matches(b"internal"));
    let c = StringMatcher::contains("admin", false).unwrap();
    assert!(c.matches(b"user,admin"));
    assert!(!c.matches(b"user,Admin"));
    assert!(StringMatcher::contains("admin", true)
        .unwrap()
        .matches(b"user,ADMIN"));
    // Regex metacharacters in Contains are literal.
    let dots = StringMatcher::contains("a.b", false).unwrap();
    assert!(dots.matches(b"xa.by"));
    assert!(!dots.matches(b"xaxby"));
    assert!(StringMatcher::contains("", false).unwrap().matches(b""));
    assert!(StringMatcher::contains("é", true)
        .unwrap()
        .matches("café".as_bytes()));
    // IgnoreCase folds ASCII only, as Envoy's StringMatcher.
    assert!(!StringMatcher::exact("é", true).matches("É".as_bytes()));
    assert!(StringMatcher::regex("v[0-9]+").unwrap().matches(b"v12"));
    assert!(!StringMatcher::regex("v[0-9]+")
        .unwrap()
        .matches(b"v12-beta"));
}

#[test]
fn headers_joined_absent_inverted() {
    let admin = hm(v(StringMatcher::exact("admin", false)), false);
    let one: &[(&str, &[u8])] = &[("x-role", b"admin")];
    let two: &[(&str, &[u8])] = &[("x-role", b"user"), ("x-other", b"1"), ("x-role", b"admin")];
    assert!(admin.matches(one));
    assert!(!admin.matches(two)); // "user,admin"
    let joined = hm(v(StringMatcher::exact("user,admin", false)), false);
    assert!(joined.matches(two));
    let contains = hm(v(StringMatcher::contains("admin", false).unwrap()), false);
    assert!(contains.matches(two));
    // Absent: no value matcher matches, inverted or not; only Present+Invert does.
    let none: &[(&str, &[u8])] = &[("x-other", b"admin")];
    assert!(!admin.matches(none));
    assert!(!hm(v(StringMatcher::exact("admin", false)), true).matches(none));
    assert!(!hm(v(StringMatcher::regex("a.*").unwrap()), true).matches(none));
    assert!(!hm(HeaderRule::Present, false).matches(none));
    assert!(hm(HeaderRule::Present, true).matches(none));
    assert!(!hm(HeaderRule::Present, true).matches(one));
    assert!(hm(HeaderRule::Present, false).matches(&[("x-role", b"")]));
    // Inverted value matcher on a present header.
    assert!(hm(v(StringMatcher::exact("admin", false)), true).matches(&[("x-role", b"user")]));
    // Names compare case-insensitively even if a caller forgot to lower-case them.
    assert!(admin.matches(&[("X-Role", b"admin")]));
    assert_eq!(admin.name(), "x-role");
}

#[test]
fn joined_value_borrows_single() {
    let h: &[(&str, &[u8])] = &[("a", b"1"), ("b", b"2"), ("a", b""), ("a", b"3")];
    assert!(matches!(joined_value(h, "b"), Some(Cow::Borrowed(b"2"))));
    assert_eq!(joined_value(h, "a").as_deref(), Some(&b"1,,3"[..]));
    assert_eq!(joined_value(h, "c"), None);
}

#[test]
fn path_and_methods() {
    assert_eq!(path_only("/admin?x=1"), "/admin");
    assert_eq!(path_only("/a#f?x"), "/a");
    assert_eq!(path_only("?weird"), "");
    assert!(PathMatcher::Prefix("/admin".into()).matches("/admin;x"));
    assert!(!PathMatcher::Exact("/admin".into()).matches("/admin;x"));
    assert!(!PathMatcher::Prefix("/admin".into()).matches("/ADMIN"));
    let m = MethodMatcher::new(&["get", "POST"]);
    assert!(m.matches("GET"));
    assert!(!m.matches("get"));
    assert!(!m.matches("HEAD"));
    let http = HttpMatcher {
        path: Some(PathMatcher::Prefix("/api".into())),
        methods: Some(MethodMatcher::new(&["GET"])),
        headers: vec![HeaderMatcher::new(
            "x-a",
            HeaderRule::Value(StringMatcher::exact("1", false)),
            false,
        )],
    };
    assert!(http.matches("GET", "/api/x", &[("x-a", b"1")]));
    assert!(!http.matches("GET", "/api/x", &[("x-a", b"2")]));
    assert!(!http.matches("POST", "/api/x", &[("x-a", b"1")]));
    assert!(!http.matches("GET", "/other", &[("x-a", b"1")]));
    assert!(HttpMatcher::default().matches("ANY", "", &[]));
}
