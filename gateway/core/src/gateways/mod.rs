//! Gateways on the same core: mesh (SNI passthrough, never decrypts) and terminating (mTLS from the mesh to
//! services outside it). Ingress HTTP listeners are outbound listeners with several chains picked by Host.

pub mod mesh;
pub mod terminating;
