//! phi-guard rbac: the AUTHZ filter.
//!
//! Decides, on request headers, whether a gRPC call may proceed from three verified facts: the
//! peer workload (SPIFFE ID / DNS SAN of the mTLS client certificate), the end user (the
//! Identity the jwt filter left in filter state) and the gRPC method. It records the decision
//! and the caller's effective role under `phi_guard.authz` for the mask and audit filters.
//!
//! Layout: [`policy`] (parse/compile), [`principal`] (workload matching), [`evaluate`],
//! [`decision`] (mode and status mapping) are pure; [`shell`] talks to the host through
//! `&dyn Host`; `wasm` holds the proxy-wasm contexts. The native policy checker,
//! `phi-guard-policy`, is its own crate (cli/policy) over this one.

// A panic traps the VM for every stream of its worker: none outside tests.
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

pub mod cert;
pub mod decision;
pub mod evaluate;
mod json;
pub mod policy;
pub mod principal;
pub mod shell;
#[cfg(all(target_os = "wasi", feature = "module"))]
mod wasm;

pub use decision::{decide, Decision};
pub use evaluate::{effective_role, evaluate, Evaluation, Reason, Request, Verdict};
pub use policy::{Action, Mode, Policy};
pub use principal::{Peer, PeerProblem};
