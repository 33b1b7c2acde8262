//! The protobuf rewriter behind the stream masker, with the demo descriptor set and policy,
//! on arbitrary message payloads, for a role that reveals nothing of the direct identifiers.
#![no_main]

use std::sync::OnceLock;

use base64::Engine as _;
use libfuzzer_sys::fuzz_target;
use phi_guard_mask::{Encoding, MaskConfig, StreamMasker};

fn config() -> &'static MaskConfig {
    static CONFIG: OnceLock<MaskConfig> = OnceLock::new();
    CONFIG.get_or_init(|| {
        let mut doc: serde_json::Value =
            serde_json::from_str(include_str!("../../filters/mask/policy.demo.json")).unwrap();
        doc["descriptor_set"] = base64::engine::general_purpose::STANDARD
            .encode(phi_guard_proto::DESCRIPTOR_SET)
            .into();
        let env = |name: &str| {
            (name == "PHI_GUARD_MASK_TOKEN_KEY").then(|| "fuzz-key-0123456789abcdef-0123456789".to_string())
        };
        MaskConfig::parse(doc.to_string().as_bytes(), &env).unwrap()
    })
}

fuzz_target!(|data: &[u8]| {
    let cfg = config();
    for role in ["research", "nurse"] {
        let (_, block) = cfg.policy.for_role(Some(role));
        let rewriter = cfg.rewriter(block);
        for method in [
            "health.v1.PatientService/GetPatient",
            "health.v1.PatientService/ListEncounters",
        ] {
            let root = cfg.plans.method(method).unwrap();
            let mut masker = StreamMasker::new(root, Encoding::Identity, cfg.max_message_bytes);
            let mut frame = vec![0u8];
            frame.extend_from_slice(&(data.len() as u32).to_be_bytes());
            frame.extend_from_slice(data);
            let _ = masker.feed(&rewriter, &frame);
            let _ = masker.finish();
        }
    }
});
