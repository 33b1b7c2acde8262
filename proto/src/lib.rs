//! Generated code for the phi/v1 annotations and the demo healthcare API, plus the encoded
//! FileDescriptorSet the mask filter is configured with.

pub mod demo;
pub mod fhir;

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

/// The FileDescriptorSet of `health/v1/patient.proto` and `phi/v1/annotations.proto`, with
/// the `phi.v1.sensitivity` field options kept, encoded as protobuf. The mask filter's config
/// carries it (base64).
pub const DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/descriptor_set.bin"));

#[cfg(test)]
mod tests {
    /// The varint key of field 51234 (`phi.v1.sensitivity`) with wire type 0.
    fn sensitivity_key() -> Vec<u8> {
        let mut key = 51234u64 << 3;
        let mut out = Vec::new();
        while key >= 0x80 {
            out.push((key as u8) | 0x80);
            key >>= 7;
        }
        out.push(key as u8);
        out
    }

    #[test]
    fn descriptor_set_keeps_the_sensitivity_annotations() {
        let key = sensitivity_key();
        let count = super::DESCRIPTOR_SET
            .windows(key.len())
            .filter(|w| *w == key.as_slice())
            .count();
        // Every annotated field in health/v1/patient.proto carries the option.
        let annotated = include_str!("../health/v1/patient.proto")
            .matches("(phi.v1.sensitivity) =")
            .count();
        assert_eq!(count, annotated, "annotations lost in the descriptor set");
    }
}
