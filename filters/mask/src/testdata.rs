//! Test fixtures: the demo API's descriptor set with its field options intact.

use std::sync::OnceLock;

/// The encoded FileDescriptorSet of `proto/health/v1/patient.proto` and its imports.
pub fn demo_descriptor_set() -> &'static [u8] {
    static SET: OnceLock<Vec<u8>> = OnceLock::new();
    SET.get_or_init(|| {
        let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../../proto");
        protox::Compiler::new([root])
            .expect("proto include path")
            .include_imports(true)
            .open_files(["health/v1/patient.proto"])
            .expect("demo protos compile")
            .encode_file_descriptor_set()
    })
}
