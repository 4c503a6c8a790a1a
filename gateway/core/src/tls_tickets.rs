//! The upstream side's TLS 1.3 session tickets, per server name, for resumption on the mesh hop.
//!
//! rustls' own `ClientSessionMemoryCache` keeps at most 8 tickets per server name, and a ticket is single-use
//! (RFC 8446 §C.4; rustls' `take_tls13_ticket` contract). A sidecar that dials a burst of new connections to
//! one upstream (32 callers connecting at once, each one a new mTLS connection) ran out after 8 and did a full
//! handshake for the rest: 57 % of handshakes were full in the new-connection bench, each with two ECDSA
//! verifications per side. Each finished handshake brings two tickets back (`send_tls13_tickets`), so a deeper
//! queue refills itself; it is bounded per name and in names (design.md: every queue bounded).

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use rustls::client::ClientSessionStore;
use rustls::client::{Tls12ClientSessionValue, Tls13ClientSessionValue};
use rustls::pki_types::ServerName;
use rustls::NamedGroup;

/// Tickets kept per server name: more than a burst of new connections to one upstream takes at once.
pub const TICKETS_PER_NAME: usize = 64;
/// Server names remembered (upstream services × their SNI names); the oldest name is forgotten first.
pub const NAMES: usize = 256;

#[derive(Default)]
struct Entry {
    kx_hint: Option<NamedGroup>,
    tls12: Option<Tls12ClientSessionValue>,
    /// Oldest first; the newest is taken first (its lifetime has the most left).
    tls13: VecDeque<Tls13ClientSessionValue>,
}

#[derive(Default)]
struct Inner {
    by_name: HashMap<ServerName<'static>, Entry>,
    /// Names in the order they were first stored, for eviction.
    order: VecDeque<ServerName<'static>>,
}

impl Inner {
    fn entry(&mut self, name: ServerName<'static>) -> &mut Entry {
        if !self.by_name.contains_key(&name) {
            while self.by_name.len() >= NAMES {
                match self.order.pop_front() {
                    Some(old) => {
                        self.by_name.remove(&old);
                    }
                    None => break,
                }
            }
            self.order.push_back(name.clone());
        }
        self.by_name.entry(name).or_default()
    }
}

#[derive(Default)]
pub struct TicketStore(Mutex<Inner>);

impl std::fmt::Debug for TicketStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TicketStore")
    }
}

impl TicketStore {
    fn with<T>(&self, f: impl FnOnce(&mut Inner) -> T) -> T {
        // A panic elsewhere while holding the lock leaves a cache of tickets: still usable, never a reason to
        // fail every later handshake.
        let mut g = self.0.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut g)
    }
}

impl ClientSessionStore for TicketStore {
    fn set_kx_hint(&self, name: ServerName<'static>, group: NamedGroup) {
        self.with(|i| i.entry(name).kx_hint = Some(group));
    }

    fn kx_hint(&self, name: &ServerName<'_>) -> Option<NamedGroup> {
        self.with(|i| i.by_name.get(name).and_then(|e| e.kx_hint))
    }

    fn set_tls12_session(&self, name: ServerName<'static>, value: Tls12ClientSessionValue) {
        self.with(|i| i.entry(name).tls12 = Some(value));
    }

    fn tls12_session(&self, name: &ServerName<'_>) -> Option<Tls12ClientSessionValue> {
        self.with(|i| i.by_name.get(name).and_then(|e| e.tls12.clone()))
    }

    fn remove_tls12_session(&self, name: &ServerName<'static>) {
        self.with(|i| {
            if let Some(e) = i.by_name.get_mut(name) {
                e.tls12 = None;
            }
        });
    }

    fn insert_tls13_ticket(&self, name: ServerName<'static>, value: Tls13ClientSessionValue) {
        self.with(|i| {
            let q = &mut i.entry(name).tls13;
            if q.len() >= TICKETS_PER_NAME {
                q.pop_front();
            }
            q.push_back(value);
        });
    }

    fn take_tls13_ticket(&self, name: &ServerName<'static>) -> Option<Tls13ClientSessionValue> {
        self.with(|i| i.by_name.get_mut(name).and_then(|e| e.tls13.pop_back()))
    }
}
