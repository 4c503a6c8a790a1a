//! `gateway._core.Core`: the data plane as Python drives it. One tokio runtime on its own thread (the data
//! plane never needs the GIL); Python hands over snapshots, reads stats, log lines and access-log records, and
//! asks for drain and shutdown.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use pyo3::exceptions::{PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use tokio::runtime::Handle;
use tokio::sync::oneshot;

use crate::listener::{self, Identity, Running};
use crate::snapshot::Snapshot;
use crate::state::{Compiled, Shared};

/// Whether a terminating gateway's TLS-origination files (PEM text) are usable: None, or what is wrong, in one
/// line. `meshgw validate` and start-up ask this, so what the data plane would refuse is refused up front.
#[pyfunction]
#[pyo3(signature = (ca_pem, cert_pem=None, key_pem=None))]
pub fn check_origination(
    ca_pem: String,
    cert_pem: Option<String>,
    key_pem: Option<String>,
) -> Option<String> {
    let o = crate::snapshot::Origination {
        ca_pem,
        cert_pem,
        key_pem,
        sni: None,
    };
    crate::tls::origination_config(&o).err()
}

#[pyclass(module = "gateway._core")]
pub struct Core {
    shared: Arc<Shared>,
    handle: Handle,
    running: Mutex<HashMap<Identity, Running>>,
    stop: Mutex<Option<oneshot::Sender<()>>>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

#[pymethods]
impl Core {
    #[new]
    fn new() -> PyResult<Self> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| PyRuntimeError::new_err(format!("cannot start the data plane: {e}")))?;
        let handle = rt.handle().clone();
        let (tx, rx) = oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("meshgw-data".into())
            .spawn(move || {
                rt.block_on(async {
                    let near = tokio::spawn(crate::driver_wake::hold_near());
                    let _ = rx.await;
                    near.abort();
                });
                rt.shutdown_timeout(Duration::from_millis(100));
            })
            .map_err(|e| PyRuntimeError::new_err(format!("cannot start the data plane: {e}")))?;
        Ok(Core {
            shared: Shared::new(),
            handle,
            running: Mutex::new(HashMap::new()),
            stop: Mutex::new(Some(tx)),
            thread: Mutex::new(Some(thread)),
        })
    }

    /// Compiles and swaps in a snapshot (JSON), then starts and stops listeners to match it. Returns each
    /// listener's bound port. ValueError with one line for a snapshot that cannot be read or a bind that fails.
    fn apply(&self, py: Python<'_>, snapshot_json: &str) -> PyResult<HashMap<String, u16>> {
        py.allow_threads(|| {
            let snap: Snapshot = serde_json::from_str(snapshot_json)
                .map_err(|e| PyValueError::new_err(format!("snapshot: {e}")))?;
            let compiled = Compiled::build(&snap, &self.shared);
            self.shared.current.store(Arc::new(compiled));
            let mut running = self.running.lock().unwrap_or_else(|p| p.into_inner());
            listener::sync(&self.handle, &self.shared, &mut running, &snap.listeners)
                .map_err(PyValueError::new_err)?;
            Ok(running
                .iter()
                .map(|(id, r)| (id.name.clone(), r.port))
                .collect())
        })
    }

    fn ports(&self) -> HashMap<String, u16> {
        let running = self.running.lock().unwrap_or_else(|p| p.into_inner());
        running
            .iter()
            .map(|(id, r)| (id.name.clone(), r.port))
            .collect()
    }

    /// The version of the snapshot in service.
    fn version(&self) -> u64 {
        self.shared.current.load().version
    }

    /// Every counter, gauge and histogram as JSON (see stats.rs `render`).
    fn stats_json(&self) -> String {
        self.shared.stats.render().to_string()
    }

    /// The outbound HTTP clusters' live state as JSON: per endpoint the requests in flight and the outlier
    /// ejection (outbound/http/runtime_view.rs `describe`), for the admin port's /clusters and console.
    fn clusters_json(&self) -> String {
        self.shared.outbound_http.describe().to_string()
    }

    /// Log lines since the last call, as (level, message).
    fn take_logs(&self) -> Vec<(&'static str, String)> {
        self.shared
            .take_logs()
            .into_iter()
            .map(|(l, m)| (l.name(), m))
            .collect()
    }

    /// Access-log records (JSON lines) since the last call.
    fn take_access_log(&self) -> Vec<String> {
        self.shared.take_access()
    }

    /// A descriptor that becomes readable when `take_logs`/`take_access_log` have something; read it empty
    /// before taking. -1 when the platform gave none (then poll).
    fn wakeup_fd(&self) -> i64 {
        use std::os::fd::AsRawFd;
        self.shared
            .wake_rx
            .as_ref()
            .map(|s| i64::from(s.as_raw_fd()))
            .unwrap_or(-1)
    }

    fn open_connections(&self) -> usize {
        self.shared.open.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Stops accepting on every listener; open connections go on.
    fn stop_accepting(&self) {
        let mut running = self.running.lock().unwrap_or_else(|p| p.into_inner());
        for r in running.values() {
            r.stop();
        }
        running.clear();
    }

    /// Stops accepting and waits up to `timeout` seconds for open connections to finish. Returns how many are
    /// still open (they end with `close`).
    fn drain(&self, py: Python<'_>, timeout: f64) -> usize {
        self.stop_accepting();
        self.shared.draining.send_replace(true);
        py.allow_threads(|| {
            let deadline = Instant::now() + Duration::from_secs_f64(timeout.max(0.0));
            loop {
                let open = self.shared.open.load(std::sync::atomic::Ordering::SeqCst);
                if open == 0 || Instant::now() >= deadline {
                    return open;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        })
    }

    /// Ends the data plane: every connection still open is closed.
    fn close(&self, py: Python<'_>) {
        self.stop_accepting();
        if let Some(tx) = self.stop.lock().unwrap_or_else(|p| p.into_inner()).take() {
            let _ = tx.send(());
        }
        let thread = self.thread.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(t) = thread {
            py.allow_threads(|| {
                let _ = t.join();
            });
        }
    }
}
