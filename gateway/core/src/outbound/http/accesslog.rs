//! Access-log records of the outbound HTTP path: one JSON line per finished request, with the fields the config
//! names, rendered by the renderer both stacks share (crate::http::accesslog). Python writes the lines
//! (Shared::take_access).

#[cfg(test)]
use std::time::{Duration, UNIX_EPOCH};
use std::time::{Instant, SystemTime};

#[cfg(test)]
use crate::http::accesslog::iso;
pub use crate::http::accesslog::Record;
use crate::http::accesslog::{self as shared, Field};

/// `fields` as the config names them (a name the renderer does not know is left out).
pub fn render(fields: &[String], r: &Record, started: Instant, start_wall: SystemTime) -> String {
    shared::render(
        fields.iter().filter_map(|f| Field::parse(f)),
        r,
        started.elapsed(),
        start_wall,
    )
}

#[cfg(test)]
#[path = "accesslog_test.rs"]
mod tests;
