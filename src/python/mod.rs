//! The pyo3 layer: converts between Python objects and core types, releases
//! the GIL around core work, and maps core errors to Python exceptions. It
//! holds no policy, crypto or file logic of its own.

pub mod audit;
pub mod bundle;
pub mod convert;
pub mod errors;
pub mod gate;
pub mod keys;
pub mod redact;
pub mod sandbox;
pub mod ship;
pub mod state;
