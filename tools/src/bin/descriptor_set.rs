//! `phi-descriptor-set`: prints the FileDescriptorSet the demo stack's mask filter carries
//! (both demo APIs, `health.v1.PatientService` with its phi.v1 sensitivity options and
//! `phi.fhir.v1.FhirService` with what it reaches of Google's FHIR R4 protos) as standard
//! base64, the form the mask filter's `descriptor_set` field takes.

use base64::Engine;

fn main() {
    match phi_guard_tools::demo_api::descriptor_set() {
        Ok(set) => println!("{}", base64::engine::general_purpose::STANDARD.encode(set)),
        Err(e) => {
            eprintln!("phi-descriptor-set: {e}");
            std::process::exit(1);
        }
    }
}
