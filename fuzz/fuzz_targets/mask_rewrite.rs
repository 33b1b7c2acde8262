//! The protobuf rewriter behind the stream masker, on arbitrary message payloads: with the
//! demo descriptor set and policy; with a FHIR-shaped set
//! (filters/mask/tests/protos/test/v1/fhirish.proto) under a catalog of conditional entries
//! and `Any` fields; and with the real FHIR R4 set of the demo's FhirService
//! (`phi_guard_proto::fhir::DESCRIPTOR_SET`, Google's protos) under its policy
//! (filters/mask/policy.fhir.json: conditional Identifier/ContactPoint/Extension entries, type
//! entries, a contained `Any`, Safe Harbor's year and zip3), for roles that reveal little
//! (nurse, research, safe_harbor). Seeds include the demo's FHIR Patient and Observation.
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
            (name == "PHI_GUARD_MASK_TOKEN_KEY").then(|| KEY.to_string())
        };
        MaskConfig::parse(doc.to_string().as_bytes(), &env).unwrap()
    })
}

fn fhir_config() -> &'static MaskConfig {
    static CONFIG: OnceLock<MaskConfig> = OnceLock::new();
    CONFIG.get_or_init(|| {
        let set = include_bytes!("../../filters/mask/tests/protos/fhirish.binpb");
        let doc = serde_json::json!({
            "descriptor_set": base64::engine::general_purpose::STANDARD.encode(set),
            "catalog": [
                {"field": "test.fhir.Identifier.value", "class": "OTHER_ID"},
                {"field": "test.fhir.Identifier.value", "class": "SSN",
                 "when": {"path": "system.value", "equals": "http://hl7.org/fhir/sid/us-ssn"}},
                {"field": "test.fhir.Identifier.value", "class": "MRN",
                 "when": {"path": "type.coding.code.value", "equals": "MR"}},
                {"field": "test.fhir.ContactPoint.value", "class": "PHONE",
                 "when": {"path": "system.value", "equals": "PHONE"}},
                {"field": "test.fhir.Patient.birth_date", "class": "DOB"},
                {"type": "test.fhir.Address", "class": "ADDRESS"},
                {"field": "test.fhir.Address.postal_code", "class": "ZIP"},
                {"field": "test.fhir.Patient.age", "class": "AGE"},
                {"type": "test.fhir.Extension", "class": "NAME",
                 "when": {"path": "url.value", "equals": "http://example.test/maiden-name"}}
            ],
            "roles": {
                "nurse": {"SSN": {"action": "partial", "keep_last": 4}, "FREE_TEXT": "reveal",
                          "NAME": "reveal", "DOB": "reveal", "*": "remove"},
                "safe_harbor": "safe_harbor"
            }
        });
        MaskConfig::parse(doc.to_string().as_bytes(), &|_| None).unwrap()
    })
}

const KEY: &str = "fuzz-key-0123456789abcdef-0123456789";

/// The demo's real FHIR R4 set and policy, as the FhirService is masked in Envoy.
fn real_fhir_config() -> &'static MaskConfig {
    static CONFIG: OnceLock<MaskConfig> = OnceLock::new();
    CONFIG.get_or_init(|| {
        let mut doc: serde_json::Value =
            serde_json::from_str(include_str!("../../filters/mask/policy.fhir.json")).unwrap();
        doc["descriptor_set"] = base64::engine::general_purpose::STANDARD
            .encode(phi_guard_proto::fhir::DESCRIPTOR_SET)
            .into();
        let env = |name: &str| (name == "PHI_GUARD_MASK_TOKEN_KEY").then(|| KEY.to_string());
        MaskConfig::parse(doc.to_string().as_bytes(), &env).unwrap()
    })
}

fn feed(cfg: &MaskConfig, role: &str, method: &str, data: &[u8]) {
    let (_, block) = cfg.policy.for_role(Some(role));
    let rewriter = cfg.rewriter(block);
    let root = cfg.plans.method(method).unwrap();
    let mut masker = StreamMasker::new(root, Encoding::Identity, cfg.max_message_bytes);
    let mut frame = vec![0u8];
    frame.extend_from_slice(&(data.len() as u32).to_be_bytes());
    frame.extend_from_slice(data);
    let _ = masker.feed(&rewriter, &frame);
    let _ = masker.finish();
}

fuzz_target!(|data: &[u8]| {
    for role in ["nurse", "safe_harbor"] {
        feed(fhir_config(), role, "test.fhir.Fhir/GetPatient", data);
    }
    for role in ["nurse", "research", "safe_harbor"] {
        for method in [
            phi_guard_proto::fhir::GET_PATIENT,
            phi_guard_proto::fhir::LIST_OBSERVATIONS,
        ] {
            feed(real_fhir_config(), role, method, data);
        }
    }
    for role in ["research", "nurse"] {
        for method in [
            "health.v1.PatientService/GetPatient",
            "health.v1.PatientService/ListEncounters",
        ] {
            feed(config(), role, method, data);
        }
    }
});
