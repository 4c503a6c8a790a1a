//! mTLS with SPIFFE identities on rustls (aws-lc-rs): the proxy's server and client configurations, built once
//! per snapshot, and the peer identity read after a handshake (consul.md §5: the URI SAN is the identity).

use std::sync::{Arc, OnceLock};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{aws_lc_rs, CryptoProvider};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};

use crate::snapshot::{Origination, TlsMaterial};

/// One crypto provider for the process, built once (it was being rebuilt per handshake and per request).
/// Key exchange prefers X25519, then P-256, as Envoy (BoringSSL's defaults) offers them in Consul's mesh; the
/// X25519MLKEM768 hybrid stays available to a peer that asks for it, but is not what meshgw offers first: its
/// 1.2 KB key share and extra work per handshake are what a sidecar pays on every new connection.
pub fn provider() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    PROVIDER
        .get_or_init(|| {
            use aws_lc_rs::kx_group::{SECP256R1, X25519, X25519MLKEM768};
            let base = aws_lc_rs::default_provider();
            // AES-128-GCM with SHA-256 first, as BoringSSL orders TLS 1.3 suites on AES hardware
            // (`ssl_choose_tls13_cipher`), which is what Envoy offers in Consul's mesh. rustls' default puts
            // AES-256-GCM/SHA-384 first: its key schedule's HKDF runs on SHA-512 blocks, which have no CPU
            // instructions of their own (SHA-256 has SHA-NI), 10 % of a new-connection bench's samples. A peer
            // that prefers AES-256 still gets it: the server follows the client's order (RFC 8446 §4.1.1).
            let mut cipher_suites = base.cipher_suites.clone();
            cipher_suites
                .sort_by_key(|s| s.suite() != rustls::CipherSuite::TLS13_AES_128_GCM_SHA256);
            Arc::new(CryptoProvider {
                cipher_suites,
                kx_groups: vec![X25519, SECP256R1, X25519MLKEM768],
                ..base
            })
        })
        .clone()
}

pub fn certs(pem: &str, what: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let mut rd = pem.as_bytes();
    let out: Result<Vec<_>, _> = rustls_pemfile::certs(&mut rd).collect();
    let out = out.map_err(|e| format!("{what}: unreadable PEM: {e}"))?;
    if out.is_empty() {
        return Err(format!("{what}: no certificate in the PEM"));
    }
    Ok(out)
}

fn key(pem: &str, what: &str) -> Result<PrivateKeyDer<'static>, String> {
    let mut rd = pem.as_bytes();
    match rustls_pemfile::private_key(&mut rd) {
        Ok(Some(k)) => Ok(k),
        Ok(None) => Err(format!("{what}: no private key in the PEM")),
        Err(e) => Err(format!("{what}: unreadable private key: {e}")),
    }
}

pub fn roots(pem: &str, what: &str) -> Result<Arc<RootCertStore>, String> {
    let mut store = RootCertStore::empty();
    for c in certs(pem, what)? {
        store
            .add(c)
            .map_err(|e| format!("{what}: unusable CA certificate: {e}"))?;
    }
    Ok(Arc::new(store))
}

pub fn certified_key(
    cert_pem: &str,
    key_pem: &str,
    what: &str,
) -> Result<Arc<CertifiedKey>, String> {
    let chain = certs(cert_pem, what)?;
    let k = key(key_pem, what)?;
    let signing = provider()
        .key_provider
        .load_private_key(k)
        .map_err(|e| format!("{what}: unusable private key: {e}"))?;
    Ok(Arc::new(CertifiedKey::new(chain, signing)))
}

/// The proxy's mTLS material, compiled: what inbound listeners accept with and upstream dials connect with.
pub struct MeshTls {
    /// `tcp` listeners: no ALPN (Consul's Envoy offers none there, http2-grpc.md §2.5).
    pub server: Arc<ServerConfig>,
    /// HTTP-like listeners, by the ALPN list they offer ([`Alpn`]).
    pub server_http: Arc<ServerConfig>,
    pub server_h2: Arc<ServerConfig>,
    pub client: Arc<ClientConfig>,
    /// Upstream clusters of `http`: ALPN `http/1.1`, as Envoy's HTTP/1 pool offers (§2.4), so the callee knows
    /// the codec without sniffing.
    pub client_http: Arc<ClientConfig>,
    /// Upstream clusters of `http2`/`grpc`: ALPN `h2` only, as Envoy's explicit-HTTP/2 pool offers (§2.4).
    pub client_h2: Arc<ClientConfig>,
    pub roots: Arc<RootCertStore>,
    pub not_before: f64,
    pub not_after: f64,
    /// What these were built from: a snapshot with the same material reuses them (state.rs).
    pub material: TlsMaterial,
    pub tickets: Option<Tickets>,
}

impl MeshTls {
    pub fn build(m: &TlsMaterial) -> Result<MeshTls, String> {
        let roots = roots(&m.roots_pem, "tls.roots_pem")?;
        let ck = certified_key(&m.cert_pem, &m.key_pem, "tls.leaf")?;
        let tickets = new_tickets();
        let server = server_config(
            roots.clone(),
            Arc::new(SingleCert(ck.clone())),
            tickets.as_ref(),
        )?;
        let client = client_config(
            Arc::new(SpiffeServerVerifier {
                roots: roots.clone(),
            }),
            Some(ck),
        )?;
        Ok(MeshTls {
            server_http: with_alpn(&server, Alpn::Http),
            server_h2: with_alpn(&server, Alpn::H2),
            server,
            client_h2: {
                let mut c = (*client).clone();
                c.alpn_protocols = vec![H2.to_vec()];
                Arc::new(c)
            },
            client_http: {
                let mut c = (*client).clone();
                c.alpn_protocols = vec![HTTP11.to_vec()];
                Arc::new(c)
            },
            client,
            roots,
            not_before: m.not_before,
            not_after: m.not_after,
            material: m.clone(),
            tickets,
        })
    }

    /// A leaf outside its validity refuses everything: fail safe, never plaintext (design.md).
    pub fn valid_now(&self) -> bool {
        self.valid_at(std::time::SystemTime::now())
    }

    /// [`MeshTls::valid_now`] at `now`, a wall-clock time the caller read.
    pub fn valid_at(&self, now: std::time::SystemTime) -> bool {
        let now = now
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0);
        self.not_before <= now && now < self.not_after
    }
}

pub const H2: &[u8] = b"h2";
pub const HTTP11: &[u8] = b"http/1.1";

/// What an HTTP-like mesh listener offers in ALPN. Consul's Envoy offers `http/1.1` for `http` and
/// `h2,http/1.1` for `http2`/`grpc` (`getAlpnProtocols`, http2-grpc.md §2.5), and a caller offering neither still
/// gets served: BoringSSL then selects nothing and Envoy's AUTO codec sniffs the preface. rustls instead fails
/// a handshake whose ALPN lists do not meet, so an `http` listener offers `h2` too, after `http/1.1`: the server's
/// order decides, so a caller offering both gets HTTP/1.1 there as from Envoy, and one offering only `h2` gets
/// the HTTP/2 that Envoy would have sniffed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Alpn {
    Http,
    H2,
}

fn with_alpn(base: &Arc<ServerConfig>, a: Alpn) -> Arc<ServerConfig> {
    // A clone shares the ticketer and the session cache (Arcs), so resumption works across the variants.
    let mut c = (**base).clone();
    c.alpn_protocols = match a {
        Alpn::Http => vec![HTTP11.to_vec(), H2.to_vec()],
        Alpn::H2 => vec![H2.to_vec(), HTTP11.to_vec()],
    };
    Arc::new(c)
}

#[derive(Debug)]
struct SingleCert(Arc<CertifiedKey>);

impl rustls::server::ResolvesServerCert for SingleCert {
    fn resolve(&self, _hello: rustls::server::ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }
}

/// The key that seals a server's session tickets. Made with the mesh material and kept while it stays the same
/// (state.rs), so the terminating gateway's configuration, rebuilt per snapshot with its linked leaves, keeps
/// accepting the tickets it issued.
pub type Tickets = Arc<dyn rustls::server::ProducesTickets>;

fn new_tickets() -> Option<Tickets> {
    aws_lc_rs::Ticketer::new().ok()
}

/// Mesh servers require a client certificate chaining to the roots (inbound, terminating gateway).
pub fn server_config(
    roots: Arc<RootCertStore>,
    resolver: Arc<dyn rustls::server::ResolvesServerCert>,
    tickets: Option<&Tickets>,
) -> Result<Arc<ServerConfig>, String> {
    let verifier = WebPkiClientVerifier::builder_with_provider(roots, provider())
        .build()
        .map_err(|e| format!("tls: client verifier: {e}"))?;
    let mut cfg = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("tls: {e}"))?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(resolver);
    // Resumption keeps reconnect cost down between sidecars (tickets, as Envoy and linkerd2-proxy use).
    if let Some(t) = tickets {
        cfg.ticketer = t.clone();
    }
    cfg.send_tls13_tickets = 2;
    Ok(Arc::new(cfg))
}

/// A terminating gateway presents each linked service's own leaf, chosen by the SNI the caller sent. The leaves
/// carry only a SPIFFE URI SAN, so the lookup is by the configured name, not by the certificate's DNS names
/// (rustls' own SNI resolver checks those); an unknown name fails the handshake.
pub fn sni_server_config(
    roots: Arc<RootCertStore>,
    by_sni: &[(String, Arc<CertifiedKey>)],
    tickets: Option<&Tickets>,
) -> Result<Arc<ServerConfig>, String> {
    let map = by_sni.iter().cloned().collect();
    server_config(roots, Arc::new(BySni(map)), tickets)
}

#[derive(Debug)]
struct BySni(std::collections::HashMap<String, Arc<CertifiedKey>>);

impl rustls::server::ResolvesServerCert for BySni {
    fn resolve(&self, hello: rustls::server::ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let name = hello.server_name()?.to_ascii_lowercase();
        self.0.get(&name).cloned()
    }
}

fn client_config(
    verifier: Arc<dyn ServerCertVerifier>,
    client_cert: Option<Arc<CertifiedKey>>,
) -> Result<Arc<ClientConfig>, String> {
    let b = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("tls: {e}"))?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let mut cfg = match client_cert {
        Some(ck) => b.with_client_cert_resolver(Arc::new(ClientCert(ck))),
        None => b.with_no_client_auth(),
    };
    // Deep enough for a burst of new connections to one upstream (tls_tickets.rs); the clones with other ALPN
    // lists share it.
    cfg.resumption =
        rustls::client::Resumption::store(Arc::new(crate::tls_tickets::TicketStore::default()));
    Ok(Arc::new(cfg))
}

#[derive(Debug)]
struct ClientCert(Arc<CertifiedKey>);

impl rustls::client::ResolvesClientCert for ClientCert {
    fn resolve(&self, _hints: &[&[u8]], _schemes: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }
    fn has_certs(&self) -> bool {
        true
    }
}

/// TLS origination from a terminating gateway to an external service: ordinary WebPKI server verification
/// against the configured CA (host name = the configured SNI or the endpoint address).
pub fn origination_config(o: &Origination) -> Result<Arc<ClientConfig>, String> {
    let roots = roots(&o.ca_pem, "ca_file")?;
    let b = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("tls: {e}"))?
        .with_root_certificates(roots);
    let cfg = match (&o.cert_pem, &o.key_pem) {
        (Some(c), Some(k)) => b
            .with_client_auth_cert(certs(c, "cert_file")?, key(k, "key_file")?)
            .map_err(|e| format!("cert_file/key_file: {e}"))?,
        _ => b.with_no_client_auth(),
    };
    Ok(Arc::new(cfg))
}

/// Mesh servers are identified by their URI SAN, not by a DNS name: the chain is verified here (WebPKI path
/// building to the mesh roots, serverAuth usage, validity), and the caller compares the SPIFFE ID after the
/// handshake (consul.md §5; what Envoy's SAN matcher does in Consul's upstream clusters).
#[derive(Debug)]
struct SpiffeServerVerifier {
    roots: Arc<RootCertStore>,
}

impl ServerCertVerifier for SpiffeServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let cert = webpki::EndEntityCert::try_from(end_entity).map_err(|_| {
            rustls::Error::InvalidCertificate(rustls::CertificateError::BadEncoding)
        })?;
        let algs = provider().signature_verification_algorithms;
        cert.verify_for_usage(
            algs.all,
            &self.roots.roots,
            intermediates,
            now,
            webpki::KeyUsage::server_auth(),
            None,
            None,
        )
        .map_err(|e| rustls::Error::InvalidCertificate(cert_error(e)))?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &provider().signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &provider().signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

fn cert_error(e: webpki::Error) -> rustls::CertificateError {
    match e {
        webpki::Error::CertExpired { .. } => rustls::CertificateError::Expired,
        webpki::Error::CertNotValidYet { .. } => rustls::CertificateError::NotValidYet,
        webpki::Error::UnknownIssuer => rustls::CertificateError::UnknownIssuer,
        webpki::Error::InvalidSignatureForPublicKey => rustls::CertificateError::BadSignature,
        _ => rustls::CertificateError::ApplicationVerificationFailure,
    }
}

/// The first URI SAN of a DER certificate (a SPIFFE ID for mesh peers).
pub fn uri_san(der: &[u8]) -> Option<String> {
    use x509_parser::prelude::*;
    let (_, cert) = X509Certificate::from_der(der).ok()?;
    let san = cert.subject_alternative_name().ok()??;
    san.value.general_names.iter().find_map(|n| match n {
        GeneralName::URI(u) => Some((*u).to_string()),
        _ => None,
    })
}

/// A resumed TLS 1.3 session carries the peer's certificate from the handshake that issued the ticket, and
/// neither side checks it again (RFC 8446 §4.6.1 leaves that to the endpoints; rustls checks only the ticket's
/// age). A ticket outlives a short leaf (tickets: 6 h here, Envoy's default session timeout 2 h; leaves: Consul's
/// 72 h by default, an hour or less when operators shorten it), so both sides refuse a resumed session whose peer
/// leaf is outside its validity now: an expired certificate is refused, resumed or not (design.md fail safe).
pub fn resumed_with_expired_peer(conn: &rustls::CommonState) -> bool {
    if conn.handshake_kind() != Some(rustls::HandshakeKind::Resumed) {
        return false;
    }
    let Some(leaf) = conn.peer_certificates().and_then(|c| c.first()) else {
        return false;
    };
    use x509_parser::prelude::*;
    match X509Certificate::from_der(leaf.as_ref()) {
        Ok((_, cert)) => !cert.validity().is_valid(),
        Err(_) => true,
    }
}

/// Why a handshake failed, as the `reason` label of `meshgw_connections_denied_total` (README's list).
pub fn failure_reason(e: &std::io::Error) -> &'static str {
    let inner = e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>());
    match inner {
        Some(rustls::Error::NoCertificatesPresented) => "no_client_cert",
        Some(rustls::Error::InvalidCertificate(
            rustls::CertificateError::Expired
            | rustls::CertificateError::ExpiredContext { .. }
            | rustls::CertificateError::NotValidYet
            | rustls::CertificateError::NotValidYetContext { .. },
        )) => "cert_expired",
        Some(rustls::Error::InvalidCertificate(_)) => "untrusted_cert",
        Some(rustls::Error::AlertReceived(rustls::AlertDescription::CertificateExpired)) => {
            "cert_expired"
        }
        _ => "tls_error",
    }
}
