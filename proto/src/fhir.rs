//! The FHIR demo: `phi.fhir.v1.FhirService` (proto/phi/fhir/v1/fhir_service.proto) serving
//! real FHIR R4 messages as Google's protos define them (`google.fhir.r4.core`, PyPI
//! google-fhir-r4 0.11.0). Messages are built from proto3 JSON against the committed
//! descriptor set [`DESCRIPTOR_SET`] with prost-reflect and travel as raw bytes
//! ([`RawCodec`]): no Rust type is generated for the FHIR schema.
//!
//! Every sensitive value is a canary (never real PHI), distinct from the first demo's, so a
//! leak names its source.

use std::sync::OnceLock;

use bytes::{Buf, BufMut, Bytes};
use prost_reflect::{DescriptorPool, DynamicMessage};
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::Status;

/// The generated client and server of `phi.fhir.v1.FhirService` (bytes in, bytes out).
// tonic's generator builds every codec with `Default::default()`, also a unit struct.
#[allow(clippy::default_constructed_unit_structs)]
pub mod service {
    include!(concat!(env!("OUT_DIR"), "/phi.fhir.v1.FhirService.rs"));
}

/// `phi.fhir.v1.FhirService` and what its methods reach, plus `RelatedPerson` (the type of the
/// Patient's contained resource): `proto/fhir/r4.pb`, built by `scripts/fhir-descriptors` with
/// `phi-guard-mask build`.
pub const DESCRIPTOR_SET: &[u8] = include_bytes!("../fhir/r4.pb");
/// Where [`DESCRIPTOR_SET`] lives, relative to the repository root.
pub const DESCRIPTOR_SET_PATH: &str = "proto/fhir/r4.pb";

pub const SERVICE: &str = "phi.fhir.v1.FhirService";
pub const GET_PATIENT: &str = "phi.fhir.v1.FhirService/GetPatient";
pub const LIST_OBSERVATIONS: &str = "phi.fhir.v1.FhirService/ListObservations";
pub const PATIENT_TYPE: &str = "google.fhir.r4.core.Patient";
pub const OBSERVATION_TYPE: &str = "google.fhir.r4.core.Observation";

/// The only Patient id the FHIR demo knows.
pub const PATIENT_ID: &str = "fp-0001";
/// Upper bound on streamed Observations per call.
pub const MAX_OBSERVATIONS: u32 = 10_000;

/// Synthetic sensitive values of the FHIR patient.
pub mod canary {
    pub const FAMILY: &str = "Fhircanary";
    pub const GIVEN: &str = "Ottoline";
    pub const SSN: &str = "900-66-4321";
    pub const MRN: &str = "MRN-FHIR-8812";
    pub const PHONE: &str = "555-014-9931";
    pub const EMAIL: &str = "ottoline.fhircanary@example.test";
    pub const STREET: &str = "12 Kestrel Canary Road";
    pub const CITY: &str = "Finchburg";
    pub const POSTAL: &str = "99701-4321";
    /// 1954-07-05T00:00:00Z in microseconds (FHIR `Date.value_us`).
    pub const BIRTH_DATE_US: i64 = -488_937_600_000_000;
    /// The mother's maiden name, in a FHIR extension.
    pub const MAIDEN_NAME: &str = "Maidencanary";
    /// The contained RelatedPerson (the emergency contact).
    pub const RELATED_GIVEN: &str = "Wrenna";
    pub const RELATED_PHONE: &str = "555-016-2277";
    /// An Observation's free-text note.
    pub fn note() -> String {
        format!("{GIVEN} {FAMILY} reports fever; call back on {PHONE}, SSN {SSN} on file.")
    }

    /// Every string canary, for leak scans (the birth date is a number: see
    /// [`super::birth_date_bytes`]).
    pub const ALL: &[&str] = &[
        FAMILY,
        GIVEN,
        SSN,
        MRN,
        PHONE,
        EMAIL,
        STREET,
        CITY,
        POSTAL,
        MAIDEN_NAME,
        RELATED_GIVEN,
        RELATED_PHONE,
    ];
}

/// The `value_us` record of the birth date as it appears on the wire (field 1, varint), for
/// scans of raw responses.
pub fn birth_date_bytes() -> Vec<u8> {
    let mut out = vec![0x08];
    let mut v = canary::BIRTH_DATE_US as u64;
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
    out
}

/// The URIs FHIR uses to say what an identifier or contact point is.
pub mod system {
    pub const US_SSN: &str = "http://hl7.org/fhir/sid/us-ssn";
    pub const V2_0203: &str = "http://terminology.hl7.org/CodeSystem/v2-0203";
    pub const HOSPITAL_MRN: &str = "urn:oid:2.16.840.1.113883.19.5";
    pub const MAIDEN_NAME: &str =
        "http://hl7.org/fhir/StructureDefinition/patient-mothersMaidenName";
}

/// The descriptor pool of [`DESCRIPTOR_SET`].
pub fn pool() -> &'static DescriptorPool {
    static POOL: OnceLock<DescriptorPool> = OnceLock::new();
    POOL.get_or_init(|| {
        DescriptorPool::decode(DESCRIPTOR_SET).expect("committed FHIR descriptor set links")
    })
}

fn encode_json(type_name: &str, json: serde_json::Value) -> Vec<u8> {
    use prost::Message;
    let desc = pool()
        .get_message_by_name(type_name)
        .expect("type in the FHIR set");
    let msg =
        DynamicMessage::deserialize(desc, json).expect("the demo's FHIR JSON matches the protos");
    msg.encode_to_vec()
}

fn s(v: &str) -> serde_json::Value {
    serde_json::json!({ "value": v })
}

/// The Patient as proto3 JSON of `google.fhir.r4.core.Patient`.
pub fn patient_json() -> serde_json::Value {
    use canary::*;
    use serde_json::json;
    json!({
        "id": s(PATIENT_ID),
        "text": {
            "status": {"value": "GENERATED"},
            "div": s(&format!(
                "<div xmlns=\"http://www.w3.org/1999/xhtml\">{GIVEN} {FAMILY}, MRN {MRN}, phone {PHONE}, {EMAIL}</div>"
            )),
        },
        "contained": [related_person_any()],
        "extension": [{
            "url": s(system::MAIDEN_NAME),
            "value": {"string_value": s(MAIDEN_NAME)},
        }],
        "identifier": [
            {
                "use": {"value": "OFFICIAL"},
                "type": {"coding": [{"system": s(system::V2_0203), "code": s("SS")}]},
                "system": s(system::US_SSN),
                "value": s(SSN),
            },
            {
                "use": {"value": "USUAL"},
                "type": {"coding": [{"system": s(system::V2_0203), "code": s("MR")}]},
                "system": s(system::HOSPITAL_MRN),
                "value": s(MRN),
            },
        ],
        "active": {"value": true},
        "name": [{
            "use": {"value": "OFFICIAL"},
            "family": s(FAMILY),
            "given": [s(GIVEN), s("Q")],
        }],
        "telecom": [
            {"system": {"value": "PHONE"}, "value": s(PHONE), "use": {"value": "HOME"}},
            {"system": {"value": "EMAIL"}, "value": s(EMAIL)},
        ],
        "gender": {"value": "FEMALE"},
        "birthDate": {"valueUs": BIRTH_DATE_US.to_string(), "timezone": "UTC", "precision": "DAY"},
        "address": [{
            "use": {"value": "HOME"},
            "line": [s(STREET)],
            "city": s(CITY),
            "state": s("AK"),
            "postalCode": s(POSTAL),
            "country": s("US"),
        }],
    })
}

/// The emergency contact, a `RelatedPerson` packed in a `google.protobuf.Any`.
fn related_person_any() -> serde_json::Value {
    use canary::*;
    serde_json::json!({
        "@type": "type.googleapis.com/google.fhir.r4.core.RelatedPerson",
        "id": s("rp-1"),
        "patient": {"patientId": {"value": PATIENT_ID}},
        "name": [{"family": s(FAMILY), "given": [s(RELATED_GIVEN)]}],
        "telecom": [{"system": {"value": "PHONE"}, "value": s(RELATED_PHONE)}],
    })
}

/// The Observation `index` of the patient, as proto3 JSON.
pub fn observation_json(index: u32) -> serde_json::Value {
    serde_json::json!({
        "id": s(&format!("obs-{index:05}")),
        "status": {"value": "FINAL"},
        "code": {"coding": [{"system": s("http://loinc.org"), "code": s("8310-5"), "display": s("Body temperature")}]},
        "subject": {"patientId": {"value": PATIENT_ID}},
        "effective": {"dateTime": {"valueUs": (1_767_257_400_000_000i64 + i64::from(index) * 3_600_000_000).to_string(), "timezone": "UTC", "precision": "SECOND"}},
        "value": {"quantity": {"value": {"value": "38.4"}, "unit": s("Cel"), "system": s("http://unitsofmeasure.org"), "code": s("Cel")}},
        "note": [{"text": {"value": canary::note()}}],
    })
}

/// The encoded `google.fhir.r4.core.Patient`.
pub fn patient() -> Vec<u8> {
    static BYTES: OnceLock<Vec<u8>> = OnceLock::new();
    BYTES
        .get_or_init(|| encode_json(PATIENT_TYPE, patient_json()))
        .clone()
}

/// The encoded `google.fhir.r4.core.Observation` number `index`. Encoded once per index (up to
/// [`MAX_OBSERVATIONS`]): building a message from JSON through the descriptor pool costs far
/// more than serving it, and load tests stream thousands.
pub fn observation(index: u32) -> Vec<u8> {
    use std::sync::Mutex;
    static CACHE: OnceLock<Mutex<Vec<Vec<u8>>>> = OnceLock::new();
    if index >= MAX_OBSERVATIONS {
        return encode_json(OBSERVATION_TYPE, observation_json(index));
    }
    let cache = CACHE.get_or_init(|| Mutex::new(Vec::new()));
    let mut cache = cache
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    while cache.len() <= index as usize {
        let next = cache.len() as u32;
        cache.push(encode_json(OBSERVATION_TYPE, observation_json(next)));
    }
    cache[index as usize].clone()
}

/// `phi.fhir.v1.GetPatientRequest`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct GetPatientRequest {
    #[prost(string, tag = "1")]
    pub id: String,
}

/// `phi.fhir.v1.ListObservationsRequest`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ListObservationsRequest {
    #[prost(string, tag = "1")]
    pub patient_id: String,
    #[prost(uint32, tag = "2")]
    pub limit: u32,
}

/// A codec that moves gRPC message payloads as they are: the server encodes FHIR messages with
/// prost-reflect, and tests read the raw bytes a role receives.
#[derive(Debug, Clone, Copy, Default)]
pub struct RawCodec;

#[derive(Debug, Clone, Copy, Default)]
pub struct RawEncoder;

#[derive(Debug, Clone, Copy, Default)]
pub struct RawDecoder;

impl Codec for RawCodec {
    type Encode = Bytes;
    type Decode = Bytes;
    type Encoder = RawEncoder;
    type Decoder = RawDecoder;
    fn encoder(&mut self) -> RawEncoder {
        RawEncoder
    }
    fn decoder(&mut self) -> RawDecoder {
        RawDecoder
    }
}

impl Encoder for RawEncoder {
    type Item = Bytes;
    type Error = Status;
    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for RawDecoder {
    type Item = Bytes;
    type Error = Status;
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, Status> {
        Ok(Some(src.copy_to_bytes(src.remaining())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn contains(hay: &[u8], needle: &[u8]) -> bool {
        hay.windows(needle.len()).any(|w| w == needle)
    }

    /// `fuzz/seeds/mask_rewrite/` starts the `mask_rewrite` fuzz target from the demo's FHIR
    /// messages. After changing them, run `PHI_GUARD_WRITE_FUZZ_SEEDS=1 cargo test -p
    /// phi-guard-proto fuzz_seeds` to rewrite the seeds.
    #[test]
    fn the_fuzz_seeds_are_the_demo_fhir_messages() {
        let dir =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/seeds/mask_rewrite");
        for (name, bytes) in [
            ("fhir-r4-patient", patient()),
            ("fhir-r4-observation", observation(0)),
        ] {
            let path = dir.join(name);
            if std::env::var_os("PHI_GUARD_WRITE_FUZZ_SEEDS").is_some() {
                std::fs::write(&path, &bytes).unwrap();
            }
            assert!(
                std::fs::read(&path).ok() == Some(bytes),
                "{} is not the demo's message: rerun with PHI_GUARD_WRITE_FUZZ_SEEDS=1",
                path.display()
            );
        }
    }

    #[test]
    fn the_demo_messages_carry_every_canary() {
        let p = patient();
        for c in canary::ALL {
            assert!(contains(&p, c.as_bytes()), "patient lacks canary {c}");
        }
        assert!(contains(&p, &birth_date_bytes()));
        let o = observation(3);
        assert!(contains(&o, canary::note().as_bytes()));
        // Round trip through the descriptor set: the bytes are a valid Patient.
        let desc = pool().get_message_by_name(PATIENT_TYPE).unwrap();
        let msg = DynamicMessage::decode(desc, p.as_slice()).unwrap();
        assert_eq!(
            serde_json::to_value(&msg).unwrap()["gender"]["value"],
            "FEMALE"
        );
    }
}
