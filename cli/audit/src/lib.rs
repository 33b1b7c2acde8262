//! The native commands of the audit trail: `phi-guard-audit-verify` (src/bin/verify.rs, the
//! chain verifier over `phi_guard_audit::verify`) and `phi-guard-audit-collector`
//! (src/bin/collector.rs over [`collector`], a stand-in OTLP/HTTP collector for the tests and
//! the demo). Kept out of the filter crate so the wasm module never carries an async runtime.

pub mod collector;
