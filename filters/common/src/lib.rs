//! Contracts shared by the phi-guard filters.
//!
//! Filters run in separate wasm VMs (or separate root contexts of one VM) and talk to each other
//! only through Envoy filter state. This crate fixes the keys and byte formats of that channel,
//! the gRPC status mapping every filter answers with, the one config parser and config error every filter uses, the strict JSON parser, the
//! schedule of documents fetched from a cluster ([`fetch`]),
//! and the clock abstraction the pure cores take time from. It has no proxy-wasm dependency so
//! every core can be tested natively.

// A panic traps the VM for every stream of its worker: none outside tests.
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

pub mod clock;
pub mod config;
pub mod fetch;
pub mod grpc;
pub mod hex;
pub mod identity;
pub mod json;
pub mod outcome;
pub mod sanitize;
pub mod state;

pub use clock::{Clock, FixedClock, UnixSeconds};
pub use config::ConfigError;
pub use grpc::{GrpcMethod, GrpcStatus};
pub use identity::Identity;
pub use outcome::{
    AuthnOutcome, AuthnResult, AuthzDecision, AuthzMode, MaskFailure, MaskSummary, Verdict,
};
pub use state::{MethodLabel, RequestId, ResourceId, StateContract, StateSlots};
