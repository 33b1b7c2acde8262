//! phi-guard as one proxy-wasm module (`phi_guard.wasm`): the jwt, rbac, mask and audit
//! stages in one root context and one HTTP context, with one set of callbacks.
//!
//! - [`config`]: the envelope, `{"stages": [{"jwt": {…}}, …]}`, each stage's own JSON nested
//!   unchanged;
//! - [`pipeline`]: the stages, their order and their callbacks, the one file a new stage
//!   touches;
//! - [`host`]: the host as the stages see it inside the pipeline (filter-state hand-off,
//!   request headers and the clock kept in memory);
//! - [`root`]: the root context over the host traits (configure, tick, fetches, done);
//! - `wasm` (wasm32, feature `module`): the proxy-wasm entry point, wiring only.
//!
//! The audit service (the singleton VM that owns the queue, the chain and the shipping) is
//! not a stage: it stays `phi_guard_audit.wasm` in `bootstrap_extensions`, and the pipeline
//! runs with its `vm_id` so the audit stage sees its queue and backlog flag.

// A panic traps the VM for every stream of its worker: none outside tests.
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

pub mod config;
pub mod host;
pub mod pipeline;
pub mod root;

#[cfg(all(target_os = "wasi", feature = "module"))]
mod wasm;

pub use config::{PipelineConfig, StageName};
pub use pipeline::{Fetch, FetchOwner, Pipeline, Stream};
pub use root::PipelineRoot;
