//! The snapshot as Python hands it over (JSON, deserialized here): the contract between the two layers
//! (design.md "The snapshot"). Sections owned by one listener kind stay opaque `serde_json::Value`s here and
//! are compiled by that kind's module, so each schema lives beside the code that reads it.

use serde::Deserialize;
use std::collections::BTreeMap;

#[derive(Deserialize, Debug, Clone)]
pub struct Snapshot {
    pub version: u64,
    #[serde(default)]
    pub datacenter: String,
    #[serde(default)]
    pub trust_domain: String,
    /// This proxy's leaf and the CA roots; None until the certificate provider has delivered one.
    #[serde(default)]
    pub tls: Option<TlsMaterial>,
    #[serde(default)]
    pub listeners: Vec<ListenerSpec>,
    /// Upstream targets by name (`api.dc1`, a discovery-chain target, ...).
    #[serde(default)]
    pub clusters: BTreeMap<String, ClusterSpec>,
}

#[derive(Deserialize, Debug, Clone, PartialEq)]
pub struct TlsMaterial {
    pub roots_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
    /// Unix seconds: outside [not_before, not_after) the proxy refuses every connection (never plaintext).
    pub not_before: f64,
    pub not_after: f64,
}

#[derive(Deserialize, Debug, Clone, PartialEq)]
pub struct ListenerSpec {
    /// Metric label and identity of the listener across snapshots (`inbound`, `upstream:api`, ...).
    pub name: String,
    /// `host:port`; port 0 asks the system for one (`Core.ports()` tells which).
    pub bind: String,
    #[serde(flatten)]
    pub kind: ListenerKind,
    #[serde(default)]
    pub limits: Limits,
}

/// A listener's protocol as Consul resolves it (http2-grpc.md §1; Python lower-cases it and sends unknown
/// values as `tcp`). `http`, `http2` and `grpc` are HTTP-like: requests are authorized and routed one by one.
#[derive(Deserialize, Debug, Clone, Copy, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    #[default]
    Tcp,
    Http,
    Http2,
    Grpc,
}

impl Protocol {
    /// `IsProtocolHTTPLike` (`C:agent/structs/config_entry_discoverychain.go`).
    pub fn is_http(self) -> bool {
        !matches!(self, Protocol::Tcp)
    }

    /// The hops Consul configures with explicit HTTP/2 (the app's and the upstream cluster's, http2-grpc.md
    /// §2.2, §2.4): h2c with prior knowledge to the app, h2 over mTLS between sidecars.
    pub fn is_h2(self) -> bool {
        matches!(self, Protocol::Http2 | Protocol::Grpc)
    }
}

#[derive(Deserialize, Debug, Clone, PartialEq)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ListenerKind {
    /// The public mesh port of a sidecar: mTLS in, identity, intentions, the local app out.
    Inbound {
        #[serde(default)]
        protocol: Protocol,
        app: Addr,
        /// meshgw_proto::intentions::TableSpec for this service.
        intentions: serde_json::Value,
        /// HTTP policy (normalization, limits, header rules), read by `inbound::http`.
        #[serde(default)]
        http: serde_json::Value,
    },
    /// A local plaintext port the app dials; meshgw carries it over mTLS to a healthy instance.
    Upstream {
        #[serde(default)]
        protocol: Protocol,
        /// L4: the cluster every connection goes to.
        #[serde(default)]
        cluster: String,
        /// HTTP: the compiled discovery chain(s), read by `outbound::http`.
        #[serde(default)]
        http: serde_json::Value,
    },
    /// SNI passthrough between datacenters and into this one (consul.md §6): never decrypts.
    MeshGateway {
        #[serde(default)]
        local: BTreeMap<String, Vec<EndpointSpec>>,
        #[serde(default)]
        remote: BTreeMap<String, Vec<EndpointSpec>>,
    },
    /// mTLS from the mesh, out to services that are not in it, each with its own leaf (picked by SNI).
    TerminatingGateway { services: Vec<LinkedSpec> },
    /// Consul's Expose paths: plaintext HTTP for the agent's health checks, an exact-path allow-list to the
    /// local app; the section is read by `inbound::expose`.
    Expose { expose: serde_json::Value },
}

#[derive(Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Addr {
    pub address: String,
    pub port: u16,
}

/// Per-listener bounds, each with a safe default (design.md "Every buffer, queue ... has a bound").
#[derive(Deserialize, Debug, Clone, PartialEq)]
#[serde(default)]
pub struct Limits {
    pub max_connections: usize,
    pub handshake_timeout_ms: u64,
    pub connect_timeout_ms: u64,
    /// L4: a connection with no byte either way for this long is closed (0 = never).
    pub idle_timeout_ms: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 10_000,
            handshake_timeout_ms: 10_000,
            connect_timeout_ms: 5_000,
            idle_timeout_ms: 0,
        }
    }
}

#[derive(Deserialize, Debug, Clone, PartialEq)]
pub struct EndpointSpec {
    pub address: String,
    pub port: u16,
    #[serde(default = "one")]
    pub weight: u32,
    #[serde(default)]
    pub health: String,
    #[serde(default)]
    pub datacenter: String,
}

fn one() -> u32 {
    1
}

#[derive(Deserialize, Debug, Clone, PartialEq)]
pub struct ClusterSpec {
    /// Consul's SNI for the target (`<svc>.<ns>.<dc>.internal.<td>`, consul.md §5.2).
    pub sni: String,
    /// The URI SAN the server must present.
    pub expected_uri: String,
    pub endpoints: Vec<EndpointSpec>,
}

#[derive(Deserialize, Debug, Clone, PartialEq)]
pub struct LinkedSpec {
    pub service: String,
    /// The SNI callers use for this service; picks its leaf in the handshake.
    pub sni: String,
    /// This service's leaf as the gateway presents it; None until issued (then the handshake fails).
    #[serde(default)]
    pub cert_pem: Option<String>,
    #[serde(default)]
    pub key_pem: Option<String>,
    pub intentions: serde_json::Value,
    pub endpoints: Vec<EndpointSpec>,
    /// TLS to the external service; with `tls_required` and no usable origination, refuse (never plaintext).
    #[serde(default)]
    pub origination: Option<Origination>,
    #[serde(default)]
    pub tls_required: bool,
}

#[derive(Deserialize, Debug, Clone, PartialEq)]
pub struct Origination {
    pub ca_pem: String,
    #[serde(default)]
    pub cert_pem: Option<String>,
    #[serde(default)]
    pub key_pem: Option<String>,
    #[serde(default)]
    pub sni: Option<String>,
}
