//! phi-guard audit.
//!
//! - [`event`]: the PHI-free event built at the end of each RPC, and its canonical bytes;
//! - [`chain`]: the HMAC-SHA256 hash chain over those bytes;
//! - [`delivery`]: the service's pure state machine (chain, batch, backlog, retry, flag);
//! - [`otlp`]: OTLP/HTTP logs, binary protobuf (the official schema) or JSON: encoding and reading;
//! - [`verify`]: chain verification for the verifier command and tests;
//! - [`filter`], [`service`]: the two shells, generic over the sets of host traits in
//!   [`hostx`]; [`root`]: the module's root and HTTP contexts over them (which root by
//!   `root_id`); `wasm` (wasm32, feature `module`): the SDK's entry points, wiring only.
//!
//! The commands (`phi-guard-audit-verify`, `phi-guard-audit-collector`) are their own crate,
//! cli/audit.

// A panic traps the VM for every stream of its worker: none outside tests.
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

pub mod batch;
pub mod chain;
pub mod config;
pub mod delivery;
pub mod event;
pub mod filter;
pub mod hostx;
pub mod otlp;
pub mod root;
pub mod service;
pub mod time;
pub mod verify;

#[cfg(all(target_os = "wasi", feature = "module"))]
mod wasm;
