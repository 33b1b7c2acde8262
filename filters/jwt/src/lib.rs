//! phi-guard jwt: the AUTHN filter. Verifies the JWT on each gRPC request against the
//! configured providers and hands the verified [`phi_guard_common::Identity`] to the filters
//! after it through filter state.
//!
//! Laid out the way Envoy's jwt_authn (and its jwt_verify_lib) is split, one job per file.
//! Pure core (no host calls, time passed in):
//!
//! - [`config`]: the configuration document, parsed strictly;
//! - [`extractor`]: where a provider's token is taken from (bearer rules, custom header);
//! - [`matcher`]: which rule, and so which requirement, applies to a gRPC method;
//! - [`requirement`]: what a requirement comes to over which providers' tokens verify;
//! - [`token`]: compact JWS parsing, before any key is involved;
//! - [`alg`]: the JWA algorithm names;
//! - [`jwks`]: JWK set parsing (JWKS JSON to verification keys) and key selection;
//! - [`jwks_cache`]: a remote key set's fetch schedule and last good set;
//! - [`verify`]: one token for one provider: signature, claims, time, claim mapping;
//! - [`binding`]: the whole RFC 8705 `cnf` / `x5t#S256` check;
//! - [`cache`]: the verified-token cache; [`replay`]: the shared `jti` replay cache;
//! - [`engine`]: the per-VM state and the decision for one request, tying the above together.
//!
//! Host-facing logic in [`shell`], written against the `Host` trait, and the root context in
//! [`root`] (the engine, the JWKS fetches) over `filters/host`'s traits; the proxy-wasm
//! wiring is in `wasm.rs` (wasm32 only).

// A panic traps the VM for every stream of its worker: none outside tests.
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

pub mod alg;
pub mod binding;
pub mod cache;
pub mod config;
pub mod engine;
pub mod extractor;
mod json;
pub mod jwks;
pub mod jwks_cache;
pub mod matcher;
pub mod reason;
pub mod replay;
pub mod requirement;
pub mod root;
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
pub use engine::{Engine, FetchRequest, Outcome, Request};
pub use reason::Reason;
pub use requirement::{decide, Decision};
