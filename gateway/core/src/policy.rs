//! Intentions as the listeners use them: the compiled table of meshgw-proto, or — when the snapshot's table for
//! this destination cannot be used — a refusal of every caller of this destination only (fail closed).

use meshgw_proto::intentions::{Request, Source, Table};
use meshgw_proto::spiffe::ServiceId;

pub struct Verdict<'a> {
    pub allowed: bool,
    pub reason: &'a str,
}

pub enum Intentions {
    Table(Box<Table>),
    Unusable(String),
}

impl Intentions {
    pub fn build(v: &serde_json::Value) -> Intentions {
        match Table::from_json(&v.to_string()) {
            Ok(t) => Intentions::Table(Box::new(t)),
            Err(e) => Intentions::Unusable(format!("intentions unusable, denying: {e}")),
        }
    }

    fn source(id: &ServiceId) -> Source<'_> {
        Source {
            name: &id.service,
            namespace: &id.namespace,
            partition: &id.partition,
            peer: "",
        }
    }

    pub fn authorize_l4(&self, id: &ServiceId) -> Verdict<'_> {
        match self {
            Intentions::Table(t) => {
                let d = t.authorize_l4(&Self::source(id));
                Verdict {
                    allowed: d.allowed,
                    reason: &d.reason,
                }
            }
            Intentions::Unusable(why) => Verdict {
                allowed: false,
                reason: why,
            },
        }
    }

    pub fn authorize_http(&self, id: &ServiceId, req: &Request<'_>) -> Verdict<'_> {
        match self {
            Intentions::Table(t) => {
                let d = t.authorize_http(&Self::source(id), req);
                Verdict {
                    allowed: d.allowed,
                    reason: &d.reason,
                }
            }
            Intentions::Unusable(why) => Verdict {
                allowed: false,
                reason: why,
            },
        }
    }
}
