use super::*;

fn od() -> OutlierSpec {
    OutlierSpec {
        max_failures: 3,
        max_ejection_percent: 50,
        base_ejection_time_ms: 30_000,
        ..OutlierSpec::default()
    }
}

fn setup(shared: &Shared, n: usize) -> (Arc<ClusterRuntime>, Vec<Arc<HostState>>) {
    let reg = shared.outbound_http.get("upstream:api");
    let rt = reg.cluster("api", shared);
    let keys: Vec<(String, u16)> = (0..n).map(|i| (format!("10.0.0.{i}"), 80)).collect();
    let (hosts, _) = rt
        .sync(
            &keys,
            &vec![1; n],
            &LbSpec::default(),
            Settings {
                outlier: od(),
                idle_timeout_ms: 1000,
            },
        )
        .unwrap();
    (rt, hosts)
}

#[test]
fn consecutive_5xx_ejects_and_returns() {
    let shared = Shared::new();
    let (rt, hosts) = setup(&shared, 4);
    let h = &hosts[0];
    rt.host_result(h, 503, &od(), &shared);
    rt.host_result(h, 200, &od(), &shared);
    rt.host_result(h, 500, &od(), &shared);
    rt.host_result(h, 500, &od(), &shared);
    assert!(
        !h.ejected(now_ns()),
        "a success in between resets the count"
    );
    rt.host_result(h, 500, &od(), &shared);
    assert!(h.ejected(now_ns()));
    assert_eq!(rt.ejected.load(Ordering::Relaxed), 1);
    assert_eq!(rt.m.ejections[0].get(), 1);
    assert_eq!(rt.m.ejected.get(), 1);
    // max_ejection_percent 50 of 4: a second one may go, a third not.
    for _ in 0..3 {
        rt.host_result(&hosts[1], 502, &od(), &shared);
    }
    for _ in 0..3 {
        rt.host_result(&hosts[2], 502, &od(), &shared);
    }
    assert!(hosts[1].ejected(now_ns()));
    assert!(!hosts[2].ejected(now_ns()));
    // Time is up: the sweep brings them back.
    for h in &hosts {
        if h.ejected_until.load(Ordering::Relaxed) != 0 {
            h.ejected_until.store(1, Ordering::Relaxed);
        }
    }
    rt.sweep(&shared);
    assert_eq!(rt.ejected.load(Ordering::Relaxed), 0);
    assert!(!hosts[0].ejected(now_ns()));
    assert_eq!(
        hosts[0].ejections.load(Ordering::Relaxed),
        1,
        "the multiplier stays for a while"
    );
}

#[test]
fn gateway_failures_are_counted_not_enforced_by_default() {
    let shared = Shared::new();
    let (rt, hosts) = setup(&shared, 2);
    let o = OutlierSpec {
        max_failures: 0,
        consecutive_gateway_failure: 2,
        ..od()
    };
    rt.host_result(&hosts[0], 502, &o, &shared);
    rt.host_result(&hosts[0], 504, &o, &shared);
    assert!(
        !hosts[0].ejected(now_ns()),
        "enforcing_consecutive_gateway_failure 0"
    );
    let o = OutlierSpec {
        enforcing_consecutive_gateway_failure: 100,
        ..o
    };
    rt.host_result(&hosts[0], 502, &o, &shared);
    rt.host_result(&hosts[0], 504, &o, &shared);
    assert!(hosts[0].ejected(now_ns()));
    assert_eq!(rt.m.ejections[1].get(), 1);
}

#[test]
fn state_survives_a_new_snapshot() {
    let shared = Shared::new();
    let (rt, hosts) = setup(&shared, 2);
    hosts[1].ejected_until.store(u64::MAX, Ordering::Relaxed);
    let (rt2, hosts2) = setup(&shared, 3);
    assert!(Arc::ptr_eq(&rt, &rt2));
    assert!(Arc::ptr_eq(&hosts[1], &hosts2[1]));
    assert_eq!(rt2.ejected.load(Ordering::Relaxed), 1);
}
