//! phi-guard mask filter: masks fields annotated with `phi.v1.sensitivity` in gRPC responses,
//! by the caller's role, rewriting the protobuf wire format in one pass.
//!
//! Pure core (no host calls): [`descriptor`] decodes the FileDescriptorSet, [`plan`] builds
//! per-method rewrite plans, [`policy`] and [`token`] decide and transform values,
//! [`freetext`] finds identifiers in free text, [`rewriter`] rewrites one message,
//! [`framing`] cuts gRPC frames out of body chunks; [`resource`] reads the resource id from
//! the first request message. [`config`] parses the JSON config;
//! [`remote`] keeps the config of a descriptor set fetched from a cluster.
//! [`shell`] is the per-stream logic behind narrow host traits ([`remote_shell`]: the fetches'
//! metrics and logs, and the refusal before the first set; [`root`]: the root context over
//! the host traits); `wasm` wires them to proxy-wasm.
//! The `phi-guard-mask` command-line tool is its own crate (cli/mask) over this one.

// A panic traps the VM for every stream of its worker: none outside tests.
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

pub mod catalog;
pub mod config;
pub mod descriptor;
pub mod error;
pub mod framing;
pub mod freetext;
pub mod plan;
pub mod policy;
pub mod remote;
pub mod remote_shell;
pub mod resource;
pub mod rewriter;
pub mod root;
pub mod shell;
pub mod token;
pub mod wire;

#[cfg(test)]
pub(crate) mod testdata;

#[cfg(all(target_os = "wasi", feature = "module"))]
mod wasm;

pub use config::MaskConfig;
pub use error::MaskError;
pub use framing::{Encoding, Framer, StreamMasker};
pub use remote::{MaskSource, RemoteMask};
pub use shell::{BodyHost, MaskStream, Metrics};
