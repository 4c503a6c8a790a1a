//! HTTP/2 as meshgw serves it: the SETTINGS it advertises, the bounds that cut off an abusive peer, and the
//! counter of each cut (http2-grpc.md §5.2, §5.8). The h2 crate under hyper already holds most lines; this module
//! chooses their values, adds Envoy's premature-reset rule (Rapid Reset, CVE-2023-44487) that h2 has only for
//! streams not yet accepted, and names why a connection was closed:
//!
//! | attack | bound | `reason` label |
//! |---|---|---|
//! | Rapid Reset (HEADERS then RST_STREAM) | ≥ 50 % of ≥ 500 streams reset within 1 s of opening (Envoy's `overload.premature_reset_*`), and h2's 20 resets of not-yet-accepted streams | `rapid_reset` |
//! | streams the server had to reset itself (refused, malformed) | h2's `max_local_error_reset_streams` | `stream_error_flood` |
//! | CONTINUATION flood, HPACK bomb | header list ≤ `max_request_headers_kb` across HEADERS + CONTINUATION, decoded size counted (h2 `header_list_way_too_large`), HPACK table 4096 | `header_flood` |
//! | tiny DATA frames | h2's per-connection data-frame accounting (`too_many_data_frames`) | `small_frame_flood` |
//! | too many concurrent streams | `max_concurrent_streams`; excess streams get REFUSED_STREAM (retriable, RFC 9113 §8.7) | `stream_error_flood` when repeated |
//! | SETTINGS / PING / PRIORITY / RST_STREAM floods | the peer's control frames ≤ 1000 + 100 × its requests (`meshgw_proto::h2_frames`, on the mesh side); h2 also answers one PING/SETTINGS at a time and stops reading while an ACK is unwritten | `control_frame_flood` |
//! | flow-control stall | windows bounded (1 MiB stream, 4 MiB connection); a stream that makes no progress hits the stream idle timeout and is reset | `flow_control` on a window violation |
//!
//! Every other connection error the peer caused is `protocol_error`.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use crate::state::Shared;
use crate::stats::Counter;

/// Envoy 1.36's `max_concurrent_streams` default (http2-grpc.md §5.2).
pub const MAX_CONCURRENT_STREAMS: u32 = 1024;
/// Flow-control windows: what one stream, and one connection, may have in flight towards us. Envoy's 16/24 MiB
/// are also its buffer limits; meshgw streams with back-pressure, so these bound what a stalled peer pins.
pub const STREAM_WINDOW: u32 = 1 << 20;
pub const CONNECTION_WINDOW: u32 = 4 << 20;
/// `overload.premature_reset_min_stream_lifetime_seconds` and `overload.premature_reset_total_stream_count`
/// (`E:changelogs/1.27.1.yaml`).
pub const PREMATURE_LIFETIME: Duration = Duration::from_secs(1);
pub const PREMATURE_MIN_STREAMS: u64 = 500;
/// h2's own defaults, kept explicit: resets of streams not yet accepted, and streams h2 reset itself.
pub const MAX_PENDING_ACCEPT_RESETS: usize = 20;
pub const MAX_LOCAL_ERROR_RESETS: usize = 1024;

pub const CUT_REASONS: [&str; 7] = [
    "rapid_reset",
    "control_frame_flood",
    "stream_error_flood",
    "header_flood",
    "small_frame_flood",
    "flow_control",
    "protocol_error",
];

/// `meshgw_http2_connections_cut_total{listener,reason}`, every series made with the plan.
#[derive(Clone, Default)]
pub struct CutStats(Vec<Counter>);

impl CutStats {
    pub fn new(shared: &Shared, listener: &str) -> CutStats {
        CutStats(
            CUT_REASONS
                .iter()
                .map(|r| {
                    shared.stats.counter(
                        "meshgw_http2_connections_cut_total",
                        &[("listener", listener), ("reason", r)],
                    )
                })
                .collect(),
        )
    }

    pub fn count(&self, reason: &str) {
        if let Some(i) = CUT_REASONS.iter().position(|r| *r == reason) {
            if let Some(c) = self.0.get(i) {
                c.inc();
            }
        }
    }
}

/// Why hyper's HTTP/2 connection ended, if the peer broke a bound or the protocol. h2 says it in its error's
/// text (the GOAWAY reason and debug data), which is all it exposes; None for I/O ends and clean closes.
pub fn cut_reason(e: &hyper::Error) -> Option<&'static str> {
    let text = error_text(e);
    if !text.contains("connection error detected") {
        return None; // not a GOAWAY h2 sent for the peer's fault
    }
    // h2 names the bound in its GOAWAY's debug data but hands hyper only the code: ENHANCE_YOUR_CALM (all of
    // h2's abuse bounds) is told apart by the frames the peer sent (`meshgw_proto::h2_frames::calm_reason`).
    Some(
        if text.contains("excessive load") || text.contains("ENHANCE_YOUR_CALM") {
            CALM
        } else if text.contains("COMPRESSION_ERROR") || text.contains("compression state") {
            "header_flood"
        } else if text.contains("flow-control") || text.contains("FLOW_CONTROL_ERROR") {
            "flow_control"
        } else {
            "protocol_error"
        },
    )
}

/// What [`cut_reason`] says for ENHANCE_YOUR_CALM; the caller names it from the frames it saw.
pub const CALM: &str = "enhance_your_calm";

/// An error and its causes as one line (hyper's own text names only the kind).
pub fn error_text(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut src = e.source();
    while let Some(s) = src {
        text.push_str(": ");
        text.push_str(&s.to_string());
        src = s.source();
    }
    text
}

/// Envoy's premature-reset rule for one connection: streams the peer cancelled within a second of opening
/// them, before any answer. When they reach half of at least 500 streams the connection is cut.
#[derive(Default)]
pub struct ResetWatch {
    streams: AtomicU64,
    premature: AtomicU64,
    tripped: AtomicBool,
    pub cut: Notify,
}

impl ResetWatch {
    pub fn new() -> Arc<ResetWatch> {
        Arc::new(ResetWatch::default())
    }

    /// Held by a stream's handler; dropped unanswered early, it counts as premature. `opened`: the handler's
    /// own first clock read (one read per request serves both).
    pub fn stream(self: &Arc<Self>, opened: Instant) -> StreamGuard {
        self.streams.fetch_add(1, Ordering::Relaxed);
        StreamGuard {
            watch: self.clone(),
            opened,
            answered: false,
        }
    }

    pub fn tripped(&self) -> bool {
        self.tripped.load(Ordering::Relaxed)
    }
}

pub struct StreamGuard {
    watch: Arc<ResetWatch>,
    opened: Instant,
    answered: bool,
}

impl StreamGuard {
    pub fn answered(&mut self) {
        self.answered = true;
    }
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        if self.answered || self.opened.elapsed() >= PREMATURE_LIFETIME {
            return;
        }
        let w = &self.watch;
        let premature = w.premature.fetch_add(1, Ordering::Relaxed) + 1;
        let total = w.streams.load(Ordering::Relaxed);
        if total >= PREMATURE_MIN_STREAMS && premature * 2 >= total && !w.tripped() {
            w.tripped.store(true, Ordering::Relaxed);
            w.cut.notify_one();
        }
    }
}

/// The server side of every HTTP/2 connection meshgw accepts (mesh inbound, local upstream ports).
pub fn server_builder(max_header_list: u32) -> hyper::server::conn::http2::Builder<Exec> {
    let mut b = hyper::server::conn::http2::Builder::new(Exec);
    b.timer(hyper_util::rt::TokioTimer::new())
        .max_concurrent_streams(MAX_CONCURRENT_STREAMS)
        .initial_stream_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_header_list_size(max_header_list)
        .max_pending_accept_reset_streams(MAX_PENDING_ACCEPT_RESETS)
        .max_local_error_reset_streams(MAX_LOCAL_ERROR_RESETS)
        // hyper sends its own Date only on HTTP/1; keep HTTP/2 answers alike (the app's Date goes through).
        .auto_date_header(false);
    b
}

/// hyper's HTTP/2 server runs each stream on a task of the current runtime, under a [`StreamWatch`].
#[derive(Clone, Copy, Debug)]
pub struct Exec;

impl<F> hyper::rt::Executor<F> for Exec
where
    F: std::future::Future<Output = ()> + Send + 'static,
{
    fn execute(&self, fut: F) {
        let watch = Arc::new(StreamWatch::default());
        // Boxed once here: the stream's future (the whole forward state machine inline) is otherwise copied
        // through every wrapper and into the task cell; memmove was 16-18 % of a saturated h2 pair's samples.
        let fut = Box::pin(STREAM.scope(watch.clone(), fut));
        tokio::spawn(Watched {
            watch,
            fut,
            sleep: None,
            sleep_at: 0,
        });
    }
}

tokio::task_local! {
    /// The watch of the HTTP/2 stream whose task is running (hyper's stream task: handler, then body pipe).
    static STREAM: Arc<StreamWatch>;
}

/// Envoy's `stream_idle_timeout` for an HTTP/2 response: hyper stops polling a response body while the peer's
/// window is shut, so a timer inside the body never fires for a peer that stalls flow control (http2-grpc.md
/// §5.8, "flow-control stalls"). The body arms this watch and moves it on with each frame; when it expires the
/// stream's task is dropped, which resets the stream (RST_STREAM CANCEL) and lets go of the upstream side.
///
/// Arming and moving only mark the watch ([`MOVED`]): the stream's task reads the clock once, after the poll
/// that marked it, when that poll leaves the stream waiting. A body that ends within the poll (most small ones)
/// costs no clock read at all, where one per mark was four per answer.
#[derive(Default)]
pub struct StreamWatch {
    /// Nanoseconds on `balancer::now_ns`'s clock; 0 = not armed; [`MOVED`] = armed, the time not read yet.
    deadline: AtomicU64,
    idle_ns: AtomicU64,
    /// Counted when the watch expires (the listener's stream idle timeouts).
    on_expiry: std::sync::OnceLock<Counter>,
}

/// A watch armed or moved on since its task last read the clock.
const MOVED: u64 = u64::MAX;

impl StreamWatch {
    /// The watch of the current HTTP/2 stream task, if this runs in one.
    pub fn current() -> Option<Arc<StreamWatch>> {
        STREAM.try_with(Arc::clone).ok()
    }

    /// Arms the watch: `idle` without [`StreamWatch::touch`] ends the stream, counted in `expired`.
    pub fn arm(&self, idle: Duration, expired: &Counter) {
        self.idle_ns.store(
            u64::try_from(idle.as_nanos()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
        // Armed once per stream: a second arm keeps the first counter (the same listener's).
        let _ = self.on_expiry.set(expired.clone());
        self.touch();
    }

    pub fn touch(&self) {
        if self.idle_ns.load(Ordering::Relaxed) > 0 {
            self.deadline.store(MOVED, Ordering::Relaxed);
        }
    }

    /// The body ended: nothing left to watch.
    pub fn disarm(&self) {
        self.deadline.store(0, Ordering::Relaxed);
    }

    /// The deadline, with a mark made since the last read turned into one from now.
    fn deadline(&self) -> u64 {
        let at = self.deadline.load(Ordering::Relaxed);
        if at != MOVED {
            return at;
        }
        let idle = self.idle_ns.load(Ordering::Relaxed);
        let at = now_ns().saturating_add(idle).clamp(1, MOVED - 1);
        self.deadline.store(at, Ordering::Relaxed);
        at
    }
}

fn now_ns() -> u64 {
    crate::outbound::http::balancer::now_ns()
}

/// A stream's task: its future, ended when the watch expires. The watch is armed, touched and disarmed only
/// from inside that future (the response body is polled on the stream's task), so reading the deadline after
/// each poll sees every change without a wakeup; one timer is kept per stream, moved on only when it fires
/// early (a body that keeps moving pushes the deadline at every frame).
struct Watched<F> {
    watch: Arc<StreamWatch>,
    fut: std::pin::Pin<Box<F>>,
    sleep: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
    /// The deadline (`now_ns` clock) the timer is set for.
    sleep_at: u64,
}

impl<F: std::future::Future> std::future::Future for Watched<F> {
    type Output = ();

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<()> {
        use std::task::Poll;
        let this = &mut *self;
        if this.fut.as_mut().poll(cx).is_ready() {
            return Poll::Ready(());
        }
        loop {
            let at = this.watch.deadline();
            if at == 0 {
                this.sleep = None;
                return Poll::Pending;
            }
            let sleep = match &mut this.sleep {
                Some(s) if at >= this.sleep_at => s,
                slot => {
                    let when = tokio::time::Instant::now()
                        + Duration::from_nanos(at.saturating_sub(now_ns()));
                    this.sleep_at = at;
                    match slot {
                        Some(s) => {
                            s.as_mut().reset(when);
                            s
                        }
                        None => slot.insert(Box::pin(tokio::time::sleep_until(when))),
                    }
                }
            };
            if sleep.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            let now = this.watch.deadline();
            if now != 0 && now <= now_ns() {
                if let Some(c) = this.watch.on_expiry.get() {
                    c.inc();
                }
                return Poll::Ready(()); // dropping the stream's task resets the stream
            }
            // Fired before the deadline, which moved on since: set again for where it is now.
            this.sleep_at = u64::MAX;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn premature_resets_trip_at_half_of_five_hundred() {
        let w = ResetWatch::new();
        for i in 0..PREMATURE_MIN_STREAMS {
            let mut g = w.stream(Instant::now());
            if i % 2 == 0 {
                g.answered();
            }
        }
        assert!(w.tripped(), "250 of 500 streams reset unanswered");
        let calm = ResetWatch::new();
        for i in 0..2000 {
            let mut g = calm.stream(Instant::now());
            if i % 3 != 0 {
                g.answered();
            }
        }
        assert!(!calm.tripped(), "a third cancelled is not an attack");
    }
}
