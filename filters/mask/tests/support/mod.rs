//! Shared fixtures for the integration tests and the bench.
#![allow(dead_code)]

use std::sync::OnceLock;

use base64::Engine;
use phi_guard_mask::MaskConfig;
use phi_guard_proto::demo::{self, canary};
use phi_guard_proto::health::v1::{Encounter, Patient};

pub const KEY_ENV: &str = "PHI_GUARD_MASK_TOKEN_KEY";
pub const KEY: &str = "test-key-0123456789abcdef-0123456789";
pub const CANARY_SSN: &str = canary::SSN;
pub const CANARY_PHONE: &str = canary::PHONE;

/// The demo protos compiled with protox's encoder, which keeps the sensitivity options.
pub fn descriptor_set() -> &'static [u8] {
    static SET: OnceLock<Vec<u8>> = OnceLock::new();
    SET.get_or_init(|| {
        let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../../proto");
        protox::Compiler::new([root])
            .unwrap()
            .include_imports(true)
            .open_files(["health/v1/patient.proto"])
            .unwrap()
            .encode_file_descriptor_set()
    })
}

/// `policy.demo.json` plus the descriptor set: the config the lead ships.
pub fn demo_config_json() -> Vec<u8> {
    let mut doc: serde_json::Value =
        serde_json::from_str(include_str!("../../policy.demo.json")).unwrap();
    doc["descriptor_set"] = base64::engine::general_purpose::STANDARD
        .encode(descriptor_set())
        .into();
    serde_json::to_vec(&doc).unwrap()
}

pub fn env(name: &str) -> Option<String> {
    (name == KEY_ENV).then(|| KEY.to_string())
}

pub fn demo_config() -> MaskConfig {
    MaskConfig::parse(&demo_config_json(), &env).unwrap()
}

pub const GET_PATIENT: &str = "health.v1.PatientService/GetPatient";
pub const LIST_ENCOUNTERS: &str = "health.v1.PatientService/ListEncounters";

pub fn note() -> String {
    canary::note()
}

pub fn patient() -> Patient {
    demo::patient()
}

pub fn encounter(index: u32, note_bytes: usize) -> Encounter {
    demo::encounter(index, note_bytes as u32)
}

/// One uncompressed gRPC frame.
pub fn frame(payload: &[u8]) -> Vec<u8> {
    frame_with_flag(0, payload)
}

pub fn frame_with_flag(flag: u8, payload: &[u8]) -> Vec<u8> {
    let mut f = vec![flag];
    f.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// Masks a whole response stream as the filter does: `stream` (gRPC frames) fed to a
/// `StreamMasker` for method plan `root` in the 16 KiB chunks Envoy hands the filter; the
/// number of bytes it gave back.
pub fn mask_stream(
    rw: &phi_guard_mask::rewriter::Rewriter<'_>,
    root: usize,
    max_message_bytes: usize,
    stream: &[u8],
) -> usize {
    let mut m = phi_guard_mask::StreamMasker::new(
        root,
        phi_guard_mask::Encoding::Identity,
        max_message_bytes,
    );
    let mut n = 0;
    for chunk in stream.chunks(16 * 1024) {
        n += m.feed(rw, chunk).unwrap().len();
    }
    m.finish().unwrap();
    n
}

/// Splits a stream of frames back into payloads (flag, payload).
pub fn unframe(mut stream: &[u8]) -> Vec<(u8, Vec<u8>)> {
    let mut out = Vec::new();
    while !stream.is_empty() {
        let len = u32::from_be_bytes(stream[1..5].try_into().unwrap()) as usize;
        out.push((stream[0], stream[5..5 + len].to_vec()));
        stream = &stream[5 + len..];
    }
    out
}

pub fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}
