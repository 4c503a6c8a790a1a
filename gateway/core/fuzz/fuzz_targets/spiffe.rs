//! Fuzz `meshgw_proto::spiffe` on arbitrary UTF-8 (consul.md §5): no panic, and what parses writes back to
//! the same value: `parse_service_uri(service_uri(id)) == id`, and a parsed mesh SNI name is the name
//! Consul's ServiceSNI/DatacenterSNI gives its target (in the `internal` or the `internal-v1` form).
//! The same input, split at newlines, is also read as the fields of a URI and of an SNI name, so that the
//! fuzzer checks the writers' output parses without having to discover `spiffe://…/ns/…/dc/…/svc/…` itself.
#![no_main]

use libfuzzer_sys::fuzz_target;
use meshgw_proto::spiffe::{
    parse_mesh_sni, parse_service_uri, service_sni, service_uri, MeshTarget, ServiceId,
};

/// A DNS-style label Consul would write; `internal` and `internal-v1` are labels like any other.
fn plain_label(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

fn default_if_empty(v: &str) -> &str {
    if v.is_empty() {
        "default"
    } else {
        v
    }
}

fn raw(s: &str) {
    if let Some(id) = parse_service_uri(s) {
        let uri = service_uri(
            &id.trust_domain,
            &id.datacenter,
            &id.service,
            &id.namespace,
            &id.partition,
        );
        assert_eq!(parse_service_uri(&uri), Some(id), "{uri:?}");
    }
    // `<sni>` or `<sni>\n<trust domain>`.
    let (sni, td) = s.split_once('\n').unwrap_or((s, "test.consul"));
    if let Some(t) = parse_mesh_sni(sni, td) {
        let td = td.to_lowercase();
        let name = sni.to_lowercase();
        let name = name.trim_end_matches('.');
        if t.service.is_empty() {
            assert_eq!(name, format!("{}.internal.{td}", t.datacenter));
            assert_eq!(t.sni(&td), name);
        } else {
            // A name in the internal-v1 form may name the default partition; ServiceSNI writes that one in
            // the internal form, so either form is the same target.
            let subset = if t.subset.is_empty() {
                String::new()
            } else {
                format!("{}.", t.subset)
            };
            let v1 = format!(
                "{subset}{}.{}.{}.{}.internal-v1.{td}",
                t.service, t.namespace, t.partition, t.datacenter
            );
            let plain = service_sni(
                &t.service,
                &t.subset,
                &t.namespace,
                &t.partition,
                &t.datacenter,
                &td,
            );
            assert!(
                name == v1 || name == plain,
                "{name:?} is neither {v1:?} nor {plain:?}"
            );
        }
    }
}

fn fields(s: &str) {
    let mut f = s.split('\n');
    let mut next = || f.next().unwrap_or_default();
    let (td, dc, svc, ns, part, subset) = (next(), next(), next(), next(), next(), next());
    // Everything service_uri writes from values without '/' parses back to those values.
    let uri = service_uri(td, dc, svc, ns, part);
    let parsed = parse_service_uri(&uri);
    if [td, dc, svc]
        .iter()
        .all(|v| !v.is_empty() && !v.contains('/'))
        && !ns.contains('/')
        && !part.contains('/')
    {
        let or_default = |v: &str| {
            if v.is_empty() {
                "default".to_owned()
            } else {
                v.to_owned()
            }
        };
        let want = ServiceId {
            trust_domain: td.to_lowercase(),
            namespace: or_default(ns),
            datacenter: dc.to_owned(),
            service: svc.to_owned(),
            partition: or_default(part),
        };
        assert_eq!(parsed, Some(want), "{uri:?}");
    } else if let Some(id) = parsed {
        assert_eq!(parse_service_uri(&id.uri()), Some(id));
    }
    // Everything ServiceSNI writes from plain labels parses back to its target.
    let td_ok = td.split('.').all(plain_label);
    let (ns, part) = (default_if_empty(ns), default_if_empty(part));
    let name = service_sni(svc, subset, ns, part, dc, td);
    if td_ok
        && [svc, ns, part, dc].iter().all(|l| plain_label(l))
        && (subset.is_empty() || plain_label(subset))
    {
        let want = MeshTarget {
            datacenter: dc.to_owned(),
            service: svc.to_owned(),
            subset: subset.to_owned(),
            namespace: ns.to_owned(),
            partition: part.to_owned(),
        };
        assert_eq!(parse_mesh_sni(&name, td), Some(want), "{name:?}");
    }
    raw(&name);
}

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    raw(s);
    fields(s);
});
