use super::super::hash::{compile_hash_policies, hash64, request_hash};
use super::super::spec::HashPolicySpec;
use super::*;
use http::HeaderMap;

fn keys(n: usize) -> Vec<(String, u16)> {
    (0..n).map(|i| (format!("10.0.0.{i}"), 8080)).collect()
}

fn hosts(n: usize) -> Vec<Arc<HostState>> {
    (0..n).map(|_| Arc::new(HostState::default())).collect()
}

fn tables(policy: &str, weights: &[u32]) -> Tables {
    let lb = LbSpec {
        policy: policy.into(),
        ..LbSpec::default()
    };
    Tables::build(&keys(weights.len()), weights, &lb).unwrap()
}

fn pick(t: &Tables, h: &[Arc<HostState>], rr: &AtomicUsize, hash: Option<u64>) -> usize {
    t.pick(&Pick {
        hosts: h,
        rr,
        hash,
        exclude: None,
        now: now_ns(),
        any_ejected: true,
    })
    .unwrap()
}

#[test]
fn round_robin_smooth_weights() {
    let t = tables("round_robin", &[5, 1, 1]);
    let h = hosts(3);
    let rr = AtomicUsize::new(0);
    let seq: Vec<usize> = (0..7).map(|_| pick(&t, &h, &rr, None)).collect();
    assert_eq!(seq.iter().filter(|i| **i == 0).count(), 5);
    // Spread, not bunched: nginx's sequence for 5,1,1.
    assert_eq!(seq, vec![0, 0, 1, 0, 2, 0, 0]);
    let t = tables("round_robin", &[1, 1]);
    let seq: Vec<usize> = (0..4).map(|_| pick(&t, &h[..2], &rr, None)).collect();
    assert_eq!(seq, vec![1, 0, 1, 0]);
}

#[test]
fn ejected_are_skipped_and_panic_mode() {
    let t = tables("round_robin", &[1, 1, 1]);
    let h = hosts(3);
    h[1].ejected_until.store(u64::MAX, Ordering::Relaxed);
    let rr = AtomicUsize::new(0);
    for _ in 0..30 {
        assert_ne!(pick(&t, &h, &rr, None), 1);
    }
    for x in &h {
        x.ejected_until.store(u64::MAX, Ordering::Relaxed);
    }
    let got: std::collections::HashSet<usize> = (0..30).map(|_| pick(&t, &h, &rr, None)).collect();
    assert_eq!(got.len(), 3, "all ejected: all used");
    // A retry avoids the previous endpoint.
    let h = hosts(2);
    let t = tables("random", &[1, 1]);
    for _ in 0..20 {
        let i = t
            .pick(&Pick {
                hosts: &h,
                rr: &rr,
                hash: None,
                exclude: Some(0),
                now: now_ns(),
                any_ejected: false,
            })
            .unwrap();
        assert_eq!(i, 1);
    }
}

#[test]
fn random_and_least_request() {
    let t = tables("random", &[3, 1]);
    let h = hosts(2);
    let rr = AtomicUsize::new(0);
    let zero = (0..8000).filter(|_| pick(&t, &h, &rr, None) == 0).count();
    assert!((5600..6400).contains(&zero), "{zero}");
    let t = tables("least_request", &[1, 1, 1]);
    let h = hosts(3);
    h[0].active.store(10, Ordering::Relaxed);
    h[1].active.store(10, Ordering::Relaxed);
    let two = (0..1000).filter(|_| pick(&t, &h, &rr, None) == 2).count();
    // P2C: the idle one wins whenever it is drawn (5/9 of the time with two draws of three).
    assert!(two > 450, "{two}");
}

#[test]
fn peak_ewma_prefers_the_faster_endpoint() {
    let t = tables("peak_ewma", &[1, 1]);
    let h = hosts(2);
    let rr = AtomicUsize::new(0);
    let now = now_ns();
    for _ in 0..5 {
        h[0].observe_rtt_at(Duration::from_millis(2), now);
        h[1].observe_rtt_at(Duration::from_millis(80), now);
    }
    let fast = (0..1000).filter(|_| pick(&t, &h, &rr, None) == 0).count();
    assert_eq!(
        fast, 1000,
        "two distinct candidates: the cheaper always wins"
    );
    // Load counts too: enough requests in flight on the fast one make the slow one cheaper.
    h[0].active.store(100, Ordering::Relaxed);
    let slow = (0..100).filter(|_| pick(&t, &h, &rr, None) == 1).count();
    assert_eq!(slow, 100);
    // A peak replaces the estimate at once.
    h[0].active.store(0, Ordering::Relaxed);
    h[0].observe_rtt_at(Duration::from_millis(500), now);
    assert_eq!(pick(&t, &h, &rr, None), 1);
}

#[test]
fn hashing_is_sticky_and_spreads() {
    for policy in ["ring_hash", "maglev"] {
        let t = tables(policy, &[1, 1, 1, 1]);
        let h = hosts(4);
        let rr = AtomicUsize::new(0);
        let mut seen = std::collections::HashSet::new();
        for k in 0..200u32 {
            let hash = hash64(format!("user-{k}").as_bytes());
            let a = pick(&t, &h, &rr, Some(hash));
            assert_eq!(a, pick(&t, &h, &rr, Some(hash)), "{policy}");
            seen.insert(a);
        }
        assert_eq!(seen.len(), 4, "{policy}");
        // An ejected endpoint's keys move; the others' stay.
        let hash = hash64(b"user-1");
        let a = pick(&t, &h, &rr, Some(hash));
        h[a].ejected_until.store(u64::MAX, Ordering::Relaxed);
        assert_ne!(pick(&t, &h, &rr, Some(hash)), a, "{policy}");
    }
}

#[test]
fn request_hash_fields() {
    let mut hm = HeaderMap::new();
    hm.insert("x-user", "bob".parse().unwrap());
    hm.insert("cookie", "a=1; sid=xyz".parse().unwrap());
    let p = compile_hash_policies(&[HashPolicySpec {
        field: "header".into(),
        name: "X-User".into(),
        terminal: true,
    }]);
    assert_eq!(request_hash(&p, &hm, b"", ""), Some(hash64(b"bob")));
    let p = compile_hash_policies(&[HashPolicySpec {
        field: "cookie".into(),
        name: "sid".into(),
        terminal: false,
    }]);
    assert_eq!(request_hash(&p, &hm, b"", ""), Some(hash64(b"xyz")));
    let p = compile_hash_policies(&[HashPolicySpec {
        field: "query_parameter".into(),
        name: "u".into(),
        terminal: false,
    }]);
    assert_eq!(request_hash(&p, &hm, b"a=1&u=7", ""), Some(hash64(b"7")));
    assert_eq!(request_hash(&p, &hm, b"a=1", ""), None);
    let p = compile_hash_policies(&[HashPolicySpec {
        field: "source_ip".into(),
        name: String::new(),
        terminal: false,
    }]);
    assert_eq!(
        request_hash(&p, &hm, b"", "10.1.2.3"),
        Some(hash64(b"10.1.2.3"))
    );
}
