//! SPIFFE IDs and Consul SNI names (consul.md §5; C:agent/connect/uri_service.go, C:agent/connect/sni.go).
//!
//! Port of `connect/spiffe.py` and of `parse_mesh_sni` in `gateway/sni.py`, with the same results for the
//! same input, except where noted (an empty `/ap/` partition, which Consul refuses too).

#![deny(clippy::indexing_slicing)]

/// A service identity: the URI SAN of a leaf certificate (consul.md §5.1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceId {
    /// Lower-cased: trust-domain comparison is case-insensitive (C:agent/connect/uri_signing.go).
    pub trust_domain: String,
    pub namespace: String,
    pub datacenter: String,
    pub service: String,
    /// `"default"` when the URI has no `/ap/<partition>` prefix.
    pub partition: String,
}

impl ServiceId {
    /// The URI this identity is written as, by `service_uri`.
    pub fn uri(&self) -> String {
        service_uri(
            &self.trust_domain,
            &self.datacenter,
            &self.service,
            &self.namespace,
            &self.partition,
        )
    }
}

fn or_default(s: &str) -> &str {
    if s.is_empty() {
        "default"
    } else {
        s
    }
}

/// `spiffe://<td>[/ap/<partition>]/ns/<ns>/dc/<dc>/svc/<service>`: the prefix only for a partition other
/// than `default`; an empty namespace is `default` (consul.md §5.1; C:agent/connect/uri_service.go).
pub fn service_uri(
    trust_domain: &str,
    datacenter: &str,
    service: &str,
    namespace: &str,
    partition: &str,
) -> String {
    let ns = or_default(namespace);
    if partition.is_empty() || partition == "default" {
        format!("spiffe://{trust_domain}/ns/{ns}/dc/{datacenter}/svc/{service}")
    } else {
        format!("spiffe://{trust_domain}/ap/{partition}/ns/{ns}/dc/{datacenter}/svc/{service}")
    }
}

/// The service identity in a leaf's URI SAN, or `None` for anything that is not a service URI (an agent,
/// server or mesh-gateway URI, another scheme). The path is compared as written, without percent-decoding,
/// as `connect/spiffe.py` does.
pub fn parse_service_uri(uri: &str) -> Option<ServiceId> {
    let rest = uri.strip_prefix("spiffe://")?;
    let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
    if host.is_empty() {
        return None;
    }
    let parts: Vec<&str> = path.split('/').collect();
    // C:agent/connect/uri.go matches `^(?:/ap/([^/]+))?/ns/([^/]+)/dc/([^/]+)/svc/([^/]+)$`: every value,
    // the partition's too, is non-empty. (connect/spiffe.py accepted `/ap//ns/...` as partition "", which
    // service_uri then writes without the prefix: a different identity on the way back.)
    let (partition, parts) = match parts.as_slice() {
        ["ap", p, rest @ ..] if rest.len() == 6 => (*p, rest),
        all => ("default", all),
    };
    match parts {
        ["ns", ns, "dc", dc, "svc", svc]
            if !partition.is_empty() && !ns.is_empty() && !dc.is_empty() && !svc.is_empty() =>
        {
            Some(ServiceId {
                // Python's str.lower and Rust's to_lowercase both apply Unicode's full lower-case mapping;
                // Consul's trust domains are ASCII (`<uuid>.consul`, consul.md §5.1).
                trust_domain: host.to_lowercase(),
                namespace: (*ns).to_owned(),
                datacenter: (*dc).to_owned(),
                service: (*svc).to_owned(),
                partition: partition.to_owned(),
            })
        }
        _ => None,
    }
}

/// Consul's ServiceSNI (consul.md §5.2; C:agent/connect/sni.go): `[<subset>.]<service>.<ns>.<dc>.internal.<td>`
/// in the default partition, `[<subset>.]<service>.<ns>.<partition>.<dc>.internal-v1.<td>` in another.
/// An empty namespace or partition is `default`.
pub fn service_sni(
    service: &str,
    subset: &str,
    namespace: &str,
    partition: &str,
    datacenter: &str,
    trust_domain: &str,
) -> String {
    let ns = or_default(namespace);
    let subset_dot = if subset.is_empty() {
        String::new()
    } else {
        format!("{subset}.")
    };
    match or_default(partition) {
        "default" => format!("{subset_dot}{service}.{ns}.{datacenter}.internal.{trust_domain}"),
        p => format!("{subset_dot}{service}.{ns}.{p}.{datacenter}.internal-v1.{trust_domain}"),
    }
}

/// `<service>.<namespace>.<dc>.internal.<trust-domain>` (consul.md §5.2; C:agent/connect/sni.go ServiceSNI),
/// in `connect/spiffe.py`'s argument order.
pub fn upstream_sni(
    service: &str,
    datacenter: &str,
    trust_domain: &str,
    namespace: &str,
) -> String {
    service_sni(service, "", namespace, "", datacenter, trust_domain)
}

/// `<dc>.internal.<trust-domain>`: the name mesh gateways route a whole datacenter by (consul.md §5.2, §6;
/// C:agent/connect/sni.go DatacenterSNI).
pub fn datacenter_sni(datacenter: &str, trust_domain: &str) -> String {
    format!("{datacenter}.internal.{trust_domain}")
}

/// Where a mesh SNI name points (consul.md §5.2). `service` is empty for a datacenter name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MeshTarget {
    pub datacenter: String,
    pub service: String,
    pub subset: String,
    pub namespace: String,
    pub partition: String,
}

impl MeshTarget {
    fn new(
        datacenter: &str,
        service: &str,
        subset: &str,
        namespace: &str,
        partition: &str,
    ) -> Self {
        MeshTarget {
            datacenter: datacenter.to_owned(),
            service: service.to_owned(),
            subset: subset.to_owned(),
            namespace: namespace.to_owned(),
            partition: partition.to_owned(),
        }
    }

    /// The SNI name Consul gives this target: `datacenter_sni` for a datacenter, `service_sni` otherwise.
    pub fn sni(&self, trust_domain: &str) -> String {
        if self.service.is_empty() {
            datacenter_sni(&self.datacenter, trust_domain)
        } else {
            service_sni(
                &self.service,
                &self.subset,
                &self.namespace,
                &self.partition,
                &self.datacenter,
                trust_domain,
            )
        }
    }
}

/// The target of a Consul SNI name in `trust_domain`, or `None` for a name of another trust domain or form:
/// `<svc>.<ns>.<dc>.internal.<td>`, `<subset>.<svc>.<ns>.<dc>.internal.<td>`, the `internal-v1` forms with a
/// partition, and `<dc>.internal.<td>` (consul.md §5.2; C:agent/connect/sni.go). Case-insensitive; trailing
/// dots (a fully-qualified name) are ignored.
///
/// The name is read from its end: the trust domain is known, so the label before it says the form, and a
/// label `internal` or `internal-v1` elsewhere (a namespace, partition, subset or datacenter of that name)
/// is only a label. Envoy's mesh gateway matches the whole name ServiceSNI wrote (C:agent/xds/listeners.go,
/// `server_names`), so this reads every name it would match, and no other.
pub fn parse_mesh_sni(sni: &str, trust_domain: &str) -> Option<MeshTarget> {
    let lowered = sni.to_lowercase();
    let sni = lowered.trim_end_matches('.');
    let td = trust_domain.to_lowercase();
    let rest = sni.strip_suffix(td.as_str())?.strip_suffix('.')?;
    let (head, with_partition) = match rest.strip_suffix(".internal") {
        Some(head) => (head, false),
        None => (rest.strip_suffix(".internal-v1")?, true),
    };
    let labels: Vec<&str> = head.split('.').collect();
    if labels.iter().any(|l| l.is_empty()) {
        return None;
    }
    let t = MeshTarget::new;
    match (with_partition, labels.as_slice()) {
        (true, [svc, ns, part, dc]) => Some(t(dc, svc, "", ns, part)),
        (true, [subset, svc, ns, part, dc]) => Some(t(dc, svc, subset, ns, part)),
        (false, [dc]) => Some(t(dc, "", "", "default", "default")),
        (false, [svc, ns, dc]) => Some(t(dc, svc, "", ns, "default")),
        (false, [subset, svc, ns, dc]) => Some(t(dc, svc, subset, ns, "default")),
        _ => None,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
#[path = "spiffe_test.rs"]
mod tests;
