//! Native tooling for phi-guard: the demo backend, the stack harness the e2e tests and the
//! demo share, and gRPC client helpers.

pub mod backend;
pub mod bench;
pub mod client;
pub mod demo_api;
pub mod docserver;
pub mod issuer;
pub mod pki;
pub mod project;
pub mod render;
pub mod stack;

/// The repository root, for scripts/ and envoy/ (the tools run from a checkout).
pub fn repo_root() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tools/ sits in the repository root")
        .to_path_buf()
}
