//! Who is on the other end of an mTLS connection: the SPIFFE service ID in its leaf's URI SAN, and only that
//! (never a header; l7-security.md §6.13).

use meshgw_proto::spiffe::{parse_service_uri, ServiceId};

pub struct Peer {
    pub uri: String,
    pub id: ServiceId,
}

/// The caller's identity, or the `reason` label of the refusal (README's list).
pub fn peer_of(
    certs: Option<&[rustls::pki_types::CertificateDer<'_>]>,
    trust_domain: &str,
) -> Result<Peer, &'static str> {
    let leaf = certs.and_then(|c| c.first()).ok_or("no_client_cert")?;
    let uri = crate::tls::uri_san(leaf.as_ref()).ok_or("no_spiffe_id")?;
    let id = parse_service_uri(&uri).ok_or("no_spiffe_id")?;
    // Trust domains compare case-insensitively (C:agent/connect/uri_signing.go); parse_service_uri lower-cases.
    if id.trust_domain != trust_domain {
        return Err("foreign_trust_domain");
    }
    Ok(Peer { uri, id })
}
