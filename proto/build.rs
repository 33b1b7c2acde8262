//! Compiles proto/ with protox, the pure-Rust protobuf compiler: these machines have no protoc.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = ["health/v1/patient.proto", "phi/v1/annotations.proto"];
    for file in &files {
        println!("cargo:rerun-if-changed={file}");
    }
    let mut compiler = protox::Compiler::new(["."])?;
    // Only our own files: google/protobuf/descriptor.proto (imported for the field option) adds
    // ~10 KB that the mask filter never needs, and the set travels inline in Envoy's config.
    compiler.include_imports(false).open_files(files)?;
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    // protox's own encoder keeps the `phi.v1.sensitivity` extension in the field options;
    // a round trip through prost-types would drop it, and the mask filter needs it.
    std::fs::write(
        out.join("descriptor_set.bin"),
        compiler.encode_file_descriptor_set(),
    )?;
    let fds = compiler.file_descriptor_set();
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(fds)?;

    // phi.fhir.v1.FhirService carries Google's FHIR messages as raw bytes (`fhir::RawCodec`):
    // they are built and read through the descriptor set `fhir/r4.pb` (prost-reflect), so no
    // Rust code is generated for the hundreds of FHIR types.
    println!("cargo:rerun-if-changed=phi/fhir/v1/fhir_service.proto");
    println!("cargo:rerun-if-changed=fhir/r4.pb");
    let method = |name: &str, route: &str, streaming: bool| {
        let m = tonic_prost_build::manual::Method::builder()
            .name(name)
            .route_name(route)
            .input_type("::bytes::Bytes")
            .output_type("::bytes::Bytes")
            .codec_path("crate::fhir::RawCodec");
        if streaming { m.server_streaming() } else { m }.build()
    };
    let fhir = tonic_prost_build::manual::Service::builder()
        .name("FhirService")
        .package("phi.fhir.v1")
        .method(method("get_patient", "GetPatient", false))
        .method(method("list_observations", "ListObservations", true))
        .build();
    tonic_prost_build::manual::Builder::new().compile(&[fhir]);
    Ok(())
}
