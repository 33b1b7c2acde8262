//! phi-guard jwt: the AUTHN filter. Verifies the JWT on each gRPC request against the
//! configured providers and hands the verified [`phi_guard_common::Identity`] to the filters
//! after it through filter state.
//!
//! Pure core (no host calls, time passed in): [`config`], [`token`], [`keys`], [`jwks`],
//! [`verify`], [`cache`], [`binding`], [`engine`]. Host-facing logic in [`shell`], written
//! against the `Host` trait; the proxy-wasm wiring is in `wasm.rs` (wasm32 only).

pub mod binding;
pub mod cache;
pub mod config;
pub mod engine;
mod json;
pub mod jwks;
pub mod keys;
pub mod reason;
pub mod replay;
pub mod shell;
pub mod token;
pub mod verify;

#[cfg(all(target_os = "wasi", feature = "module"))]
mod wasm;

#[cfg(test)]
mod engine_tests;
#[cfg(test)]
mod shell_tests;
#[cfg(test)]
mod test_support;
#[cfg(test)]
mod testkit;

pub use config::Config;
pub use engine::{decide, Decision, Engine, FetchRequest, Outcome, Request};
pub use reason::Reason;
