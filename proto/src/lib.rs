//! Generated code for the phi/v1 annotations and the demo healthcare API, plus the encoded
//! FileDescriptorSet the mask filter is configured with.

pub mod phi {
    pub mod v1 {
        tonic::include_proto!("phi.v1");
    }
}

pub mod health {
    pub mod v1 {
        tonic::include_proto!("health.v1");
    }
}

/// The FileDescriptorSet of `health/v1/patient.proto` and everything it imports, including
/// the `phi.v1.sensitivity` field options, encoded as protobuf.
pub const DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/descriptor_set.bin"));
