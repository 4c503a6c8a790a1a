//! The intention evaluator as Python sees it: `gateway._core.IntentionTable` over `meshgw_proto::intentions`
//! (design.md "one intention evaluator, the core's; the CLI and console call it through the module").
//!
//! ```python
//! t = _core.IntentionTable.from_json(spec_json)          # connect/intentions.py IntentionTable.to_core()
//! d = t.authorize_l4("web", namespace="default", peer="")
//! d = t.authorize_http("web", "GET", "/a?x", [("x-role", b"admin")], namespace="default", peer="")
//! d.allowed, d.reason, d.source, d.precedence, d.index   # d is t.decisions()[d.index], built once
//! _core.check_regex("(") -> "does not compile: unclosed group (expected RE2 syntax)" (None when valid)
//! ```
//! Headers: None, a mapping, or an iterable of (name, value) tuples; names and values are str or bytes (a str
//! value is matched as its UTF-8 bytes). Names compare case-insensitively; only the headers some permission
//! reads are looked at (`header_names`), so a table without header rules never touches them.

use meshgw_proto::intentions::{Request, Source, Table};
use meshgw_proto::matchers::compile_regex;
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyString};

/// One precomputed decision; `index` is its position in `IntentionTable.decisions()`.
#[pyclass(frozen, get_all, module = "gateway._core", name = "Decision")]
pub struct PyDecision {
    allowed: bool,
    reason: String,
    source: Option<String>,
    precedence: Option<u8>,
    index: usize,
}

#[pymethods]
impl PyDecision {
    fn __repr__(&self) -> String {
        format!(
            "Decision(allowed={}, reason={:?}, source={:?}, precedence={:?}, index={})",
            self.allowed, self.reason, self.source, self.precedence, self.index
        )
    }
}

/// The intentions of one destination, compiled by the core.
#[pyclass(frozen, module = "gateway._core", name = "IntentionTable")]
pub struct PyIntentionTable {
    table: Table,
    decisions: Vec<Py<PyDecision>>,
}

/// The bytes of a header name or value given as str (UTF-8) or bytes.
fn text_or_bytes<'a>(obj: &'a Bound<'_, PyAny>, what: &str) -> PyResult<&'a [u8]> {
    if let Ok(s) = obj.downcast::<PyString>() {
        return Ok(s.to_str()?.as_bytes());
    }
    if let Ok(b) = obj.downcast::<PyBytes>() {
        return Ok(b.as_bytes());
    }
    Err(PyTypeError::new_err(format!(
        "header {what} must be str or bytes, not {}",
        obj.get_type().name()?
    )))
}

impl PyIntentionTable {
    fn source<'a>(
        name: &'a str,
        namespace: &'a str,
        peer: &'a str,
        partition: &'a str,
    ) -> Source<'a> {
        Source {
            name,
            namespace,
            partition,
            peer,
        }
    }

    fn decision(&self, py: Python<'_>, index: usize) -> PyResult<Py<PyDecision>> {
        self.decisions
            .get(index)
            .map(|d| d.clone_ref(py))
            .ok_or_else(|| PyValueError::new_err(format!("no decision {index}")))
    }

    /// The (table's name, value) pairs of the headers the table reads, in request order.
    fn read_headers(&self, headers: &Bound<'_, PyAny>) -> PyResult<Vec<(usize, Vec<u8>)>> {
        let names = self.table.header_names();
        let mut out = Vec::new();
        let mut take = |name: &Bound<'_, PyAny>, value: &Bound<'_, PyAny>| -> PyResult<()> {
            let n = text_or_bytes(name, "name")?;
            if let Some(i) = names
                .iter()
                .position(|r| r.as_bytes().eq_ignore_ascii_case(n))
            {
                out.push((i, text_or_bytes(value, "value")?.to_vec()));
            }
            Ok(())
        };
        if let Ok(d) = headers.downcast::<PyDict>() {
            for (k, v) in d.iter() {
                take(&k, &v)?;
            }
            return Ok(out);
        }
        let items = if headers.hasattr("items")? {
            headers.call_method0("items")?
        } else {
            headers.clone()
        };
        for item in items.try_iter()? {
            let (k, v): (Bound<'_, PyAny>, Bound<'_, PyAny>) = item?.extract().map_err(|_| {
                PyTypeError::new_err("headers must be a mapping or (name, value) tuples")
            })?;
            take(&k, &v)?;
        }
        Ok(out)
    }
}

#[pymethods]
impl PyIntentionTable {
    /// Compiles a TableSpec (JSON text). A spec that is valid JSON but cannot be compiled gives a table that
    /// denies everyone (see `problem`); ValueError only when the text is not a TableSpec at all.
    #[staticmethod]
    fn from_json(py: Python<'_>, spec: &str) -> PyResult<Self> {
        let table = Table::from_json(spec).map_err(PyValueError::new_err)?;
        let decisions = table
            .decisions()
            .iter()
            .enumerate()
            .map(|(index, d)| {
                Py::new(
                    py,
                    PyDecision {
                        allowed: d.allowed,
                        reason: d.reason.clone(),
                        source: d.source.clone(),
                        precedence: d.precedence,
                        index,
                    },
                )
            })
            .collect::<PyResult<Vec<_>>>()?;
        Ok(Self { table, decisions })
    }

    /// A connection from `source` on a TCP listener (an L7 intention denies).
    #[pyo3(signature = (source, namespace = "default", peer = "", partition = "default"))]
    fn authorize_l4(
        &self,
        py: Python<'_>,
        source: &str,
        namespace: &str,
        peer: &str,
        partition: &str,
    ) -> PyResult<Py<PyDecision>> {
        let index = self
            .table
            .decide_l4(&Self::source(source, namespace, peer, partition));
        self.decision(py, index)
    }

    /// One request on an HTTP listener. `path` is the normalized path (a `?query` is ignored).
    #[pyo3(signature = (source, method, path, headers = None, namespace = "default", peer = "", partition = "default"))]
    #[allow(clippy::too_many_arguments)]
    fn authorize_http(
        &self,
        py: Python<'_>,
        source: &str,
        method: &str,
        path: &str,
        headers: Option<&Bound<'_, PyAny>>,
        namespace: &str,
        peer: &str,
        partition: &str,
    ) -> PyResult<Py<PyDecision>> {
        let read = match headers {
            Some(h) if !self.table.header_names().is_empty() => self.read_headers(h)?,
            _ => Vec::new(),
        };
        let names = self.table.header_names();
        let pairs: Vec<(&str, &[u8])> = read
            .iter()
            .filter_map(|(i, v)| Some((names.get(*i)?.as_str(), v.as_slice())))
            .collect();
        let request = Request {
            method,
            path,
            headers: &pairs,
        };
        let index = self
            .table
            .decide_http(&Self::source(source, namespace, peer, partition), &request);
        self.decision(py, index)
    }

    /// Every decision the table can return, by index.
    fn decisions(&self, py: Python<'_>) -> Vec<Py<PyDecision>> {
        self.decisions.iter().map(|d| d.clone_ref(py)).collect()
    }

    /// Why the spec could not be compiled (every caller is then denied), or None.
    #[getter]
    fn problem(&self) -> Option<String> {
        self.table.problem().map(str::to_owned)
    }

    /// Lower-cased names of the headers some permission reads (empty: headers are never looked at).
    #[getter]
    fn header_names(&self) -> Vec<String> {
        self.table.header_names().to_vec()
    }

    #[getter]
    fn destination(&self) -> String {
        self.table.destination().to_owned()
    }

    fn __repr__(&self) -> String {
        format!(
            "<IntentionTable {} ({} decisions{})>",
            self.table.destination(),
            self.decisions.len(),
            if self.table.problem().is_some() {
                ", DENY ALL"
            } else {
                ""
            }
        )
    }
}

/// None when `pattern` compiles as the core compiles PathRegex / header Regex, else the one-line problem.
#[pyfunction]
fn check_regex(pattern: &str) -> Option<String> {
    compile_regex(pattern).err()
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyIntentionTable>()?;
    m.add_class::<PyDecision>()?;
    m.add_function(wrap_pyfunction!(check_regex, m)?)?;
    Ok(())
}
