//! `phi-descriptor-set`: prints the demo API's FileDescriptorSet (with the phi.v1 sensitivity
//! options) as standard base64, the form the mask filter's `descriptor_set` field takes.

use base64::Engine;

fn main() {
    println!(
        "{}",
        base64::engine::general_purpose::STANDARD.encode(phi_guard_proto::DESCRIPTOR_SET)
    );
}
