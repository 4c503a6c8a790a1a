//! Outbound HTTP (being written): discovery chain, balancing, pools, retries, breakers, outlier detection.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpStream;

use crate::listener::ListenerStats;
use crate::snapshot::Limits;
use crate::state::{Compiled, Shared};

pub struct Plan;

impl Plan {
    pub fn build(
        _name: &str,
        _v: &serde_json::Value,
        _limits: &Limits,
        _shared: &Shared,
    ) -> Result<Plan, String> {
        Err("protocol http is not served by this build of the core".into())
    }
}

pub async fn serve(
    _stream: TcpStream,
    _peer: SocketAddr,
    _snap: &Arc<Compiled>,
    _plan: &super::Plan,
    _h: &Plan,
    _stats: &ListenerStats,
) {
}
