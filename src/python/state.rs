//! `execgate._core.rebuild_state`: the shared store's counters from the logs.

use std::path::PathBuf;

use pyo3::prelude::*;
use pyo3::types::PyDict;

use super::convert::seconds;
use super::keys::{keyring, PyVerifyKey};
use crate::core::keys::Keyring;
use crate::core::state::{SharedState, StateOptions};

/// Replaces the execgate state in the Redis at `state` with the counters and
/// history of the verified logs at `paths` (none: initializes an empty
/// store). Returns what was restored.
#[pyfunction]
#[pyo3(signature = (state, paths, keys=Vec::new(), keyring_dir=None, history=crate::core::ledger::DEFAULT_HISTORY,
                    timeout=crate::core::state::DEFAULT_TIMEOUT.as_secs_f64(),
                    connect_timeout=crate::core::state::DEFAULT_CONNECT_TIMEOUT.as_secs_f64()))]
#[allow(clippy::too_many_arguments)]
pub fn rebuild_state<'py>(
    py: Python<'py>,
    state: &str,
    paths: Vec<PathBuf>,
    keys: Vec<PyRef<'_, PyVerifyKey>>,
    keyring_dir: Option<PathBuf>,
    history: usize,
    timeout: f64,
    connect_timeout: f64,
) -> PyResult<Bound<'py, PyDict>> {
    // With no log there is nothing to verify: an empty store is initialized.
    let ring = if paths.is_empty() {
        Keyring::new()
    } else {
        keyring(&keys, keyring_dir.as_deref())?
    };
    let options = StateOptions {
        connect_timeout: seconds(connect_timeout, "connect_timeout")?,
        timeout: seconds(timeout, "timeout")?,
    };
    // Rebuilding never takes or keys a call: no call id key is needed.
    let store = SharedState::open(state, options, [0; 32])?;
    let done = py.detach(|| store.rebuild(&paths, &ring, history.max(1)))?;
    let out = PyDict::new(py);
    out.set_item("state", store.shown())?;
    out.set_item("decisions", done.decisions)?;
    out.set_item("retries", done.retries)?;
    out.set_item("rates", done.rates)?;
    out.set_item("budgets", done.budgets)?;
    out.set_item("sessions", done.sessions)?;
    Ok(out)
}
