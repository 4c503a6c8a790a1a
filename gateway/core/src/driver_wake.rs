//! Keeps the tokio time driver's next wake-up within a second, so that arming a request's timer never has to
//! interrupt the driver.
//!
//! tokio unparks its driver (a write to the runtime's eventfd: one syscall, and the next `epoll_wait` returns
//! at once) whenever a timer is armed that is due before the wake-up the driver last parked with
//! (tokio `runtime/time/mod.rs`, `reregister`: `when < next_wake`). With only far timers pending, such as the
//! connections' one-hour idle timeouts, every request's 15 s route timeout was earlier: on the inbound side of a
//! saturated HTTP/1.1 pair, 0.42 `write` syscalls per request (`perf stat -e syscalls:sys_enter_write`); the
//! outbound side, whose pool sweeper sleeps at most a second, had none. A timer that is always due within the
//! second puts every later one behind it. It costs one wake-up a second.

use std::time::Duration;

/// Under every per-request timeout meshgw arms by default (route 15 s, stream idle 5 min, idle 1 h).
const PERIOD: Duration = Duration::from_secs(1);

/// Runs for the life of the data plane's runtime.
pub async fn hold_near() {
    loop {
        tokio::time::sleep(PERIOD).await;
    }
}
