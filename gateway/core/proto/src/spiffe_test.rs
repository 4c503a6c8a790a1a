use super::*;

const TD: &str = "test.consul";

fn t(dc: &str, svc: &str, subset: &str, ns: &str, part: &str) -> Option<MeshTarget> {
    Some(MeshTarget::new(dc, svc, subset, ns, part))
}

// tests/test_mesh_gateway.py test_parse_mesh_sni
#[test]
fn mesh_sni_cases() {
    let up = TD.to_uppercase();
    let cases = [
        (
            format!("api.default.dc2.internal.{TD}"),
            t("dc2", "api", "", "default", "default"),
        ),
        (
            format!("v2.api.default.dc1.internal.{TD}"),
            t("dc1", "api", "v2", "default", "default"),
        ),
        (
            format!("api.ns1.part1.dc3.internal-v1.{TD}"),
            t("dc3", "api", "", "ns1", "part1"),
        ),
        (
            format!("v1.api.ns1.part1.dc3.internal-v1.{TD}"),
            t("dc3", "api", "v1", "ns1", "part1"),
        ),
        (
            format!("dc2.internal.{TD}"),
            t("dc2", "", "", "default", "default"),
        ),
        (
            format!("API.Default.DC2.internal.{up}"),
            t("dc2", "api", "", "default", "default"),
        ),
        ("api.default.dc2.internal.other.consul".to_owned(), None),
        (format!("api.default.dc2.query.{TD}"), None),
        ("example.com".to_owned(), None),
        (format!("a.b.c.d.e.dc2.internal.{TD}"), None),
        (format!(".default.dc2.internal.{TD}"), None),
        // beyond the Python cases: a fully-qualified name, and the forms' label counts
        (
            format!("api.default.dc2.internal.{TD}.."),
            t("dc2", "api", "", "default", "default"),
        ),
        (format!("default.dc2.internal.{TD}"), None),
        (format!("dc2.internal-v1.{TD}"), None),
        (format!("a.b.c.d.e.f.internal-v1.{TD}"), None),
        (format!("api..dc2.internal.{TD}"), None),
        (format!("internal.{TD}"), None),
        (String::new(), None),
        // labels named like the form markers are read from the trust domain's end
        (
            format!("api.internal.dc2.internal.{TD}"),
            t("dc2", "api", "", "internal", "default"),
        ),
        (
            format!("internal.internal.internal.internal.{TD}"),
            t("internal", "internal", "", "internal", "default"),
        ),
        // a partition named `internal-v1`
        (
            format!("api.ns.internal-v1.dc1.internal-v1.{TD}"),
            t("dc1", "api", "", "ns", "internal-v1"),
        ),
        (format!("dc2.internal.internal.{TD}"), None),
        (format!("api.default.dc2.internal.x{TD}"), None),
    ];
    for (sni, want) in cases {
        assert_eq!(parse_mesh_sni(&sni, TD), want, "{sni}");
    }
    // the fuzzer's find (session 12): the partition label equals the form's marker
    assert_eq!(
        parse_mesh_sni("--.w.internal-v1.-.internal-v1.2.internalz", "2.internalz"),
        t("-", "--", "", "w", "internal-v1")
    );
    assert_eq!(
        parse_mesh_sni("dc2.internal.TEST.consul", "Test.Consul"),
        t("dc2", "", "", "default", "default")
    );
}

#[test]
fn mesh_sni_round_trip() {
    for target in [
        MeshTarget::new("dc2", "api", "", "default", "default"),
        MeshTarget::new("dc2", "api", "v2", "ns1", "default"),
        MeshTarget::new("dc3", "api", "", "ns1", "part1"),
        MeshTarget::new("dc3", "api", "v1", "ns1", "part1"),
        MeshTarget::new("dc2", "", "", "default", "default"),
    ] {
        assert_eq!(parse_mesh_sni(&target.sni(TD), TD), Some(target.clone()));
    }
}

// tests/test_config_cli.py test_spiffe_and_sni_formats
#[test]
fn spiffe_and_sni_formats() {
    let td = "11111111-2222-3333-4444-555555555555.consul";
    assert_eq!(
        upstream_sni("db", "dc1", td, "default"),
        format!("db.default.dc1.internal.{td}")
    );
    assert_eq!(
        upstream_sni("db", "dc1", td, ""),
        format!("db.default.dc1.internal.{td}")
    );
    assert_eq!(datacenter_sni("dc2", td), format!("dc2.internal.{td}"));
    let uri = service_uri(td, "dc1", "web", "default", "default");
    assert_eq!(uri, format!("spiffe://{td}/ns/default/dc/dc1/svc/web"));
    assert_eq!(service_uri(td, "dc1", "web", "", ""), uri);
    let sid = parse_service_uri(&uri).unwrap();
    assert_eq!(
        (
            sid.service.as_str(),
            sid.datacenter.as_str(),
            sid.namespace.as_str()
        ),
        ("web", "dc1", "default")
    );
    assert_eq!(sid.partition, "default");
    assert_eq!(sid.uri(), uri);
    let part = parse_service_uri(&format!(
        "spiffe://{td}/ap/finance/ns/default/dc/dc1/svc/web"
    ))
    .unwrap();
    assert_eq!(part.partition, "finance");
    assert_eq!(
        part.uri(),
        format!("spiffe://{td}/ap/finance/ns/default/dc/dc1/svc/web")
    );
    assert_eq!(
        parse_service_uri(&format!("spiffe://{td}/agent/client/dc/dc1/id/x")),
        None
    );
    assert_eq!(
        parse_service_uri("https://example.com/ns/default/dc/dc1/svc/web"),
        None
    );
    let upper = parse_service_uri("spiffe://EXAMPLE.consul/ns/default/dc/dc1/svc/web").unwrap();
    assert_eq!(upper.trust_domain, "example.consul");
}

#[test]
fn service_uri_edges() {
    let td = "example.consul";
    for bad in [
        "spiffe:///ns/default/dc/dc1/svc/web".to_owned(),
        format!("spiffe://{td}"),
        format!("spiffe://{td}/"),
        format!("spiffe://{td}/ns//dc/dc1/svc/web"),
        format!("spiffe://{td}/ns/default/dc/dc1/svc/"),
        format!("spiffe://{td}/ns/default/dc/dc1/svc/web/"),
        format!("spiffe://{td}/ap//ns/default/dc/dc1/svc/web"),
        format!("spiffe://{td}/ap/p/ns/default/dc/dc1"),
        format!("spiffe://{td}/xx/p/ns/default/dc/dc1/svc/web"),
        format!("spiffe://{td}/gateway/mesh/dc/dc1"),
        format!("SPIFFE://{td}/ns/default/dc/dc1/svc/web"),
        format!("spiffe://{td}//ns/default/dc/dc1/svc/web"),
    ] {
        assert_eq!(parse_service_uri(&bad), None, "{bad}");
    }
    // An explicit default partition is the default partition.
    let id = parse_service_uri(&format!("spiffe://{td}/ap/default/ns/n/dc/d/svc/s")).unwrap();
    assert_eq!(id.partition, "default");
    assert_eq!(id.uri(), format!("spiffe://{td}/ns/n/dc/d/svc/s"));
}
