//! Compiles labs/v1/labs.proto with protox, taking phi/v1/annotations.proto from the
//! repository's proto/ directory on the include path (the "reference" way of docs/ADOPTING.md).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/labs/v1/labs.proto");
    let fds = protox::compile(["labs/v1/labs.proto"], ["proto", "../../proto"])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(fds)?;
    Ok(())
}
