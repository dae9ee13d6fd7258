//! The pure Rust core of execgate. Nothing under this module imports pyo3:
//! it is usable and tested from Rust alone (`cargo test`).

pub mod args;
pub mod audit;
pub mod bundle;
pub mod counted;
pub mod decision;
pub mod error;
pub mod gate;
pub mod jcs;
pub mod keys;
pub mod ledger;
pub mod obligation;
pub mod pipeline;
pub mod policy;
pub mod receipt;
pub mod redact;
pub mod sandbox;
pub mod state;
