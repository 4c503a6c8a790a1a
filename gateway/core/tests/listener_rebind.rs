//! A reload that gives a listener a new identity on the same address (an upstream gaining a twin renames its
//! key) must bind that address at once: the old listener's socket is closed before `sync` returns, whether the
//! change comes as one snapshot or as a removal then an addition (what the Python side sends).

use std::collections::HashMap;

use _core::listener;
use _core::snapshot::ListenerSpec;
use _core::state::Shared;

fn spec(name: &str, port: u16) -> ListenerSpec {
    serde_json::from_value(serde_json::json!({
        "name": name, "bind": format!("127.0.0.1:{port}"), "kind": "upstream", "cluster": "api.dc1"
    }))
    .unwrap()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn a_listener_moved_to_another_identity_rebinds_its_address() {
    // The core's own arrangement: one current-thread runtime on its own thread, `sync` called from another.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let handle = rt.handle().clone();
    std::thread::spawn(move || rt.block_on(std::future::pending::<()>()));
    let shared = Shared::new();
    let mut running = HashMap::new();
    let port = free_port();
    for round in 0..20 {
        let (a, b) = (
            format!("upstream:api#{round}a"),
            format!("upstream:api#{round}b"),
        );
        listener::sync(&handle, &shared, &mut running, &[spec(&a, port)]).unwrap();
        // Removal, then addition (two applies).
        listener::sync(&handle, &shared, &mut running, &[]).unwrap();
        listener::sync(&handle, &shared, &mut running, &[spec(&b, port)])
            .unwrap_or_else(|e| panic!("round {round}, rebind after removal: {e}"));
        // Replacement within one apply.
        listener::sync(&handle, &shared, &mut running, &[spec(&a, port)])
            .unwrap_or_else(|e| panic!("round {round}, rebind within one apply: {e}"));
        listener::sync(&handle, &shared, &mut running, &[]).unwrap();
    }
}
