//! The rewriter against the demo API: random messages, every role, unknown fields.

mod support;

use phi_guard_mask::plan::Class;
use phi_guard_mask::policy::{Action, RolePolicy};
use phi_guard_mask::rewriter::Counts;
use phi_guard_mask::{MaskConfig, MaskError};
use phi_guard_proto::health::v1::{
    patient, Address, Contact, Diagnosis, Encounter, HumanName, Patient,
};
use proptest::prelude::*;
use prost::Message;
use support::*;

fn mask(
    cfg: &MaskConfig,
    method: &str,
    role: Option<&str>,
    payload: &[u8],
) -> Result<(Vec<u8>, Counts), MaskError> {
    let root = cfg.plans.method(method).expect("method has a plan");
    let (_, block) = cfg.policy.for_role(role);
    let mut out = Vec::new();
    let mut counts = Counts::default();
    cfg.rewriter(block)
        .rewrite(root, payload, &mut out, &mut counts)?;
    Ok((out, counts))
}

/// An independent statement of what a role sees, on the decoded structs.
struct Model<'a> {
    cfg: &'a MaskConfig,
    block: &'a RolePolicy,
}

impl Model<'_> {
    fn new<'a>(cfg: &'a MaskConfig, role: Option<&str>) -> Model<'a> {
        Model {
            cfg,
            block: cfg.policy.for_role(role).1,
        }
    }

    fn class(&self, name: &str) -> Class {
        *self
            .cfg
            .class_names
            .iter()
            .find(|(_, n)| *n == name)
            .unwrap()
            .0
    }

    fn apply(&self, class_name: &str, value: &str) -> String {
        let class = self.class(class_name);
        let mut out = Vec::new();
        self.block.action(class).transform(
            class_name,
            value.as_bytes(),
            self.cfg.token_key.as_ref(),
            &mut out,
        );
        String::from_utf8(out).unwrap()
    }

    /// `None` when the field is removed.
    fn value(&self, class_name: &str, value: &str) -> Option<String> {
        let class = self.class(class_name);
        let action = self.block.action(class);
        if *action == Action::Remove {
            return None;
        }
        if class_name == "FREE_TEXT" && *action == Action::Reveal {
            let mut out = String::new();
            let mut last = 0;
            self.cfg
                .detectors
                .each(value.as_bytes(), |f| {
                    out.push_str(&value[last..f.start]);
                    let name = self.cfg.class_names[&f.class].clone();
                    out.push_str(&self.apply(&name, &value[f.start..f.end]));
                    last = f.end;
                })
                .unwrap();
            out.push_str(&value[last..]);
            return Some(out);
        }
        Some(self.apply(class_name, value))
    }

    /// A singular proto3 string: an empty one is not on the wire, so it stays empty.
    fn single(&self, class_name: &str, value: &str) -> String {
        if value.is_empty() {
            return String::new();
        }
        self.value(class_name, value).unwrap_or_default()
    }

    fn repeated(&self, class_name: &str, values: &[String]) -> Vec<String> {
        values
            .iter()
            .filter_map(|v| self.value(class_name, v))
            .collect()
    }

    fn name(&self, n: &HumanName) -> HumanName {
        HumanName {
            family: self.single("NAME", &n.family),
            given: self.repeated("NAME", &n.given),
            prefix: n.prefix.clone(),
        }
    }

    fn patient(&self, p: &Patient) -> Patient {
        Patient {
            patient_id: p.patient_id.clone(),
            mrn: self.single("MRN", &p.mrn),
            name: p.name.as_ref().map(|n| self.name(n)),
            ssn: self.single("SSN", &p.ssn),
            birth_date: self.single("DOB", &p.birth_date),
            contacts: p
                .contacts
                .iter()
                .map(|c| Contact {
                    phone: self.single("PHONE", &c.phone),
                    email: self.single("EMAIL", &c.email),
                    r#use: c.r#use.clone(),
                })
                .collect(),
            address: p.address.as_ref().map(|a| Address {
                line: self.repeated("ADDRESS", &a.line),
                city: self.single("ADDRESS", &a.city),
                state: a.state.clone(),
                postal_code: self.single("ADDRESS", &a.postal_code),
            }),
            identifiers: p
                .identifiers
                .iter()
                .map(|(k, v)| (k.clone(), self.single("MRN", v)))
                .collect(),
            emergency_contact: match &p.emergency_contact {
                Some(patient::EmergencyContact::EmergencyName(n)) => {
                    Some(patient::EmergencyContact::EmergencyName(self.name(n)))
                }
                Some(patient::EmergencyContact::EmergencyPhone(ph)) => self
                    .value("PHONE", ph)
                    .map(patient::EmergencyContact::EmergencyPhone),
                None => None,
            },
            allergy_codes: p.allergy_codes.clone(),
            notes: self.single("FREE_TEXT", &p.notes),
            insurance_member_id: self.single("INSURANCE_ID", &p.insurance_member_id),
            tenant: p.tenant.clone(),
        }
    }

    fn encounter(&self, e: &Encounter) -> Encounter {
        Encounter {
            encounter_id: e.encounter_id.clone(),
            patient_id: e.patient_id.clone(),
            mrn: self.single("MRN", &e.mrn),
            start_time: self.single("DOB", &e.start_time),
            attending: e.attending.as_ref().map(|n| self.name(n)),
            diagnoses: e
                .diagnoses
                .iter()
                .map(|d| Diagnosis {
                    code: d.code.clone(),
                    description: self.single("CLINICAL", &d.description),
                })
                .collect(),
            vitals: e.vitals.clone(),
            note: self.single("FREE_TEXT", &e.note),
        }
    }
}

fn config() -> &'static MaskConfig {
    static CFG: std::sync::OnceLock<MaskConfig> = std::sync::OnceLock::new();
    CFG.get_or_init(demo_config)
}

/// The demo config with `"unknown_fields": "keep"`.
fn config_keeping_unknown() -> &'static MaskConfig {
    static CFG: std::sync::OnceLock<MaskConfig> = std::sync::OnceLock::new();
    CFG.get_or_init(|| {
        let mut doc: serde_json::Value = serde_json::from_slice(&demo_config_json()).unwrap();
        doc["unknown_fields"] = "keep".into();
        MaskConfig::parse(doc.to_string().as_bytes(), &env).unwrap()
    })
}

/// Unknown fields are dropped, and counted, for every role that does not reveal everything;
/// with `unknown_fields: keep` (or for billing) they pass byte for byte.
fn check_unknown(
    method: &str,
    role: Option<&str>,
    with_unknown: &[u8],
    without: &[u8],
    unknown: &[&[u8]],
) -> Result<Vec<u8>, TestCaseError> {
    let (out, counts) = mask(config(), method, role, with_unknown).unwrap();
    let (clean, _) = mask(config(), method, role, without).unwrap();
    if role == Some("billing") {
        prop_assert_eq!(&out, with_unknown, "billing sees every byte unchanged");
        prop_assert_eq!(counts.unknown_fields, 0);
    } else {
        prop_assert_eq!(&out, &clean, "unknown fields dropped");
        prop_assert_eq!(
            counts.unknown_fields > 0,
            unknown.iter().any(|u| !u.is_empty())
        );
    }
    let (kept, counts) = mask(config_keeping_unknown(), method, role, with_unknown).unwrap();
    prop_assert_eq!(counts.unknown_fields, 0);
    for u in unknown {
        prop_assert!(
            find(&kept, u),
            "kept byte for byte under unknown_fields: keep"
        );
    }
    Ok(out)
}

const ROLES: [Option<&str>; 5] = [
    Some("billing"),
    Some("nurse"),
    Some("research"),
    Some("intruder"),
    None,
];

fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-zA-Z0-9 ()@.+-]{0,24}",
        Just(CANARY_SSN.to_string()),
        "[0-9]{3}-[0-9]{3}-[0-9]{4}",
        "[a-z]{1,8}@[a-z]{1,8}\\.com",
        "MRN-[0-9A-Z]{4}",
        "\\PC{0,12}",
    ]
}

fn free_text() -> impl Strategy<Value = String> {
    prop::collection::vec(text(), 0..6).prop_map(|v| v.join(" "))
}

fn human_name() -> impl Strategy<Value = HumanName> {
    (text(), prop::collection::vec(text(), 0..3), text()).prop_map(|(family, given, prefix)| {
        HumanName {
            family,
            given,
            prefix,
        }
    })
}

fn patient_strategy() -> impl Strategy<Value = Patient> {
    let ids = (text(), text(), text(), text(), text());
    let parts = (
        prop::option::of(human_name()),
        prop::collection::vec((text(), text(), text()), 0..3),
        prop::option::of((prop::collection::vec(text(), 0..3), text(), text(), text())),
        prop::collection::btree_map("[a-z-]{1,8}", text(), 0..3),
        prop_oneof![
            Just(None),
            human_name().prop_map(|n| Some(patient::EmergencyContact::EmergencyName(n))),
            text().prop_map(|t| Some(patient::EmergencyContact::EmergencyPhone(t))),
        ],
        prop::collection::vec(any::<i32>(), 0..4),
        free_text(),
        text(),
    );
    (ids, parts).prop_map(
        |(
            (patient_id, mrn, ssn, birth_date, tenant),
            (name, contacts, address, identifiers, emergency, allergy_codes, notes, insurance),
        )| Patient {
            patient_id,
            mrn,
            name,
            ssn,
            birth_date,
            contacts: contacts
                .into_iter()
                .map(|(phone, email, r#use)| Contact {
                    phone,
                    email,
                    r#use,
                })
                .collect(),
            address: address.map(|(line, city, state, postal_code)| Address {
                line,
                city,
                state,
                postal_code,
            }),
            identifiers: identifiers.into_iter().collect(),
            emergency_contact: emergency,
            allergy_codes,
            notes,
            insurance_member_id: insurance,
            tenant,
        },
    )
}

fn encounter_strategy() -> impl Strategy<Value = Encounter> {
    (
        (text(), text(), text(), text()),
        prop::option::of(human_name()),
        prop::collection::vec((text(), text()), 0..3),
        prop::collection::vec(
            any::<f32>().prop_filter("NaN != NaN", |f| !f.is_nan()),
            0..5,
        ),
        free_text(),
    )
        .prop_map(
            |((encounter_id, patient_id, mrn, start_time), attending, diagnoses, vitals, note)| {
                Encounter {
                    encounter_id,
                    patient_id,
                    mrn,
                    start_time,
                    attending,
                    diagnoses: diagnoses
                        .into_iter()
                        .map(|(code, description)| Diagnosis { code, description })
                        .collect(),
                    vitals,
                    note,
                }
            },
        )
}

/// Random unknown fields (numbers the demo API does not use), encoded by hand, every wire
/// type including groups.
fn unknown_fields() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(
        (
            100u32..5000,
            0u8..5,
            prop::collection::vec(any::<u8>(), 0..16),
            any::<u64>(),
        ),
        0..6,
    )
    .prop_map(|fields| {
        let mut out = Vec::new();
        for (number, kind, bytes, n) in fields {
            let tag = |wt: u32, out: &mut Vec<u8>| put_varint(out, u64::from(number << 3 | wt));
            match kind {
                0 => {
                    tag(0, &mut out);
                    put_varint(&mut out, n);
                }
                1 => {
                    tag(1, &mut out);
                    out.extend_from_slice(&n.to_le_bytes());
                }
                2 => {
                    tag(2, &mut out);
                    put_varint(&mut out, bytes.len() as u64);
                    out.extend_from_slice(&bytes);
                }
                3 => {
                    // A group holding one varint field.
                    tag(3, &mut out);
                    put_varint(&mut out, 1 << 3);
                    put_varint(&mut out, n);
                    tag(4, &mut out);
                }
                _ => {
                    tag(5, &mut out);
                    out.extend_from_slice(&(n as u32).to_le_bytes());
                }
            }
        }
        out
    })
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push(v as u8 | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn find(haystack: &[u8], needle: &[u8]) -> bool {
    needle.is_empty() || haystack.windows(needle.len()).any(|w| w == needle)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn patients_are_masked_exactly_as_the_policy_says(
        p in patient_strategy(),
        unknown in unknown_fields(),
        nested_unknown in unknown_fields(),
        role in prop::sample::select(ROLES.to_vec()),
    ) {
        let cfg = config();
        // Unknown fields at the top level and inside the (planned) name sub-message.
        let mut without_name = p.clone();
        let name = without_name.name.take();
        let mut bytes = without_name.encode_to_vec();
        if let Some(n) = &name {
            let mut inner = n.encode_to_vec();
            inner.extend_from_slice(&nested_unknown);
            put_varint(&mut bytes, 3 << 3 | 2);
            put_varint(&mut bytes, inner.len() as u64);
            bytes.extend_from_slice(&inner);
        }
        bytes.extend_from_slice(&unknown);
        let mut plain = without_name.encode_to_vec();
        if let Some(n) = &name {
            let inner = n.encode_to_vec();
            put_varint(&mut plain, 3 << 3 | 2);
            put_varint(&mut plain, inner.len() as u64);
            plain.extend_from_slice(&inner);
        }
        let nested: &[u8] = if name.is_some() { &nested_unknown } else { &[] };

        let out = check_unknown(GET_PATIENT, role, &bytes, &plain, &[&unknown, nested])?;
        let got = Patient::decode(&out[..]).unwrap();
        prop_assert_eq!(got, Model::new(cfg, role).patient(&p));
    }

    #[test]
    fn encounters_are_masked_exactly_as_the_policy_says(
        e in encounter_strategy(),
        unknown in unknown_fields(),
        role in prop::sample::select(ROLES.to_vec()),
    ) {
        let cfg = config();
        let plain = e.encode_to_vec();
        let mut bytes = plain.clone();
        bytes.extend_from_slice(&unknown);
        let out = check_unknown(LIST_ENCOUNTERS, role, &bytes, &plain, &[&unknown])?;
        let got = Encounter::decode(&out[..]).unwrap();
        prop_assert_eq!(got, Model::new(cfg, role).encounter(&e));
    }

    /// Skipping the messages a role leaves as they are (quiet walks) gives the same bytes,
    /// counts and errors as rewriting everything.
    #[test]
    fn quiet_walks_change_nothing(
        p in patient_strategy(),
        e in encounter_strategy(),
        unknown in unknown_fields(),
        garbage in prop::collection::vec(any::<u8>(), 0..64),
        role in prop::sample::select(ROLES.to_vec()),
    ) {
        for cfg in [config(), config_keeping_unknown()] {
            let (_, block) = cfg.policy.for_role(role);
            let fast = cfg.rewriter(block);
            prop_assert!(fast.quiet.is_some());
            let slow = phi_guard_mask::rewriter::Rewriter { quiet: None, ..fast };
            let mut with_unknown = p.encode_to_vec();
            with_unknown.extend_from_slice(&unknown);
            let mut truncated = e.encode_to_vec();
            truncated.truncate(truncated.len() / 2);
            for (method, payload) in [
                (GET_PATIENT, p.encode_to_vec()),
                (GET_PATIENT, with_unknown),
                (GET_PATIENT, garbage.clone()),
                (LIST_ENCOUNTERS, e.encode_to_vec()),
                (LIST_ENCOUNTERS, truncated),
            ] {
                let root = cfg.plans.method(method).unwrap();
                let run = |rw: &phi_guard_mask::rewriter::Rewriter<'_>| {
                    let mut out = Vec::new();
                    let mut counts = Counts::default();
                    rw.rewrite(root, &payload, &mut out, &mut counts).map(|()| (out, counts))
                };
                prop_assert_eq!(run(&fast), run(&slow));
            }
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        let _ = mask(config(), GET_PATIENT, Some("nurse"), &bytes);
    }
}

#[test]
fn demo_patient_per_role() {
    let cfg = config();
    let bytes = patient().encode_to_vec();

    let (out, _) = mask(cfg, GET_PATIENT, Some("billing"), &bytes).unwrap();
    assert_eq!(out, bytes);

    let (out, counts) = mask(cfg, GET_PATIENT, Some("nurse"), &bytes).unwrap();
    let p = Patient::decode(&out[..]).unwrap();
    assert_eq!(p.ssn, "***-**-1234");
    assert_eq!(p.contacts[0].phone, "***-***-4477");
    assert_eq!(p.contacts[0].email, "[redacted]");
    assert_eq!(p.name.as_ref().unwrap().family, "Canarysmith");
    assert_eq!(p.birth_date, "1931-02-29");
    assert_eq!(p.mrn, "MRN-7Q4K-CANARY");
    assert_eq!(p.insurance_member_id, "***-******-****7788");
    assert_eq!(
        p.notes,
        "Pt Zebediah Canarysmith called from ***-***-4477 re SSN ***-**-1234; MRN MRN-7Q4K-CANARY."
    );
    assert_eq!(p.address.as_ref().unwrap().state, "AK");
    assert_eq!(p.address.as_ref().unwrap().city, "[redacted]");
    let ssn = cfg.class_names.iter().find(|(_, n)| *n == "SSN").unwrap().0;
    assert_eq!(
        counts.get(*ssn, phi_guard_mask::policy::ActionKind::Partial),
        2,
        "the field and the one in the note"
    );

    let (out, _) = mask(cfg, GET_PATIENT, Some("research"), &bytes).unwrap();
    let p = Patient::decode(&out[..]).unwrap();
    assert!(p.mrn.starts_with("tok_") && p.mrn.len() == 36);
    assert!(p.insurance_member_id.starts_with("tok_"));
    assert_ne!(p.mrn, p.insurance_member_id);
    assert!(p.identifiers["lab-system"].starts_with("tok_"));
    assert_eq!(p.ssn, "");
    assert_eq!(p.birth_date, "");
    assert_eq!(p.notes, "");
    assert_eq!(p.emergency_contact, None);
    assert_eq!(p.contacts[0].phone, "");
    assert_eq!(p.contacts[0].r#use, "home");
    assert_eq!(
        p.name,
        Some(HumanName {
            family: String::new(),
            given: vec![],
            prefix: "Mx".into()
        })
    );
    assert_eq!(p.allergy_codes, vec![91936005, 300916003, 418689008]);
    // Same input, same token, across messages.
    let (again, _) = mask(cfg, GET_PATIENT, Some("research"), &bytes).unwrap();
    assert_eq!(again, out);
    for canary in [CANARY_SSN, CANARY_PHONE, "Canarysmith", "MRN-7Q4K-CANARY"] {
        assert!(!contains(&out, canary), "{canary} leaked to research");
    }

    let (out, _) = mask(cfg, GET_PATIENT, None, &bytes).unwrap();
    let p = Patient::decode(&out[..]).unwrap();
    assert_eq!(
        (p.ssn.as_str(), p.mrn.as_str(), p.notes.as_str()),
        ("", "", "")
    );
    assert_eq!(p.patient_id, "p-0001");
    assert_eq!(p.tenant, "north");
}

#[test]
fn wrong_wire_type_on_a_planned_field_fails_closed() {
    let cfg = config();
    // ssn (field 4) as a varint.
    let mut bytes = patient().encode_to_vec();
    bytes.extend_from_slice(&[4 << 3, 0x01]);
    assert_eq!(
        mask(cfg, GET_PATIENT, Some("nurse"), &bytes).unwrap_err(),
        MaskError::WireType { field: 4 }
    );
    // name (field 3, a message) as fixed32.
    let bytes = [3 << 3 | 5, 1, 2, 3, 4];
    assert_eq!(
        mask(cfg, GET_PATIENT, Some("billing"), &bytes).unwrap_err(),
        MaskError::WireType { field: 3 }
    );
}

#[test]
fn truncated_and_overlong_records_fail() {
    let cfg = config();
    let bytes = patient().encode_to_vec();
    for cut in 1..bytes.len() {
        // Every prefix either ends on a record boundary (valid) or is refused.
        if let Ok((out, _)) = mask(cfg, GET_PATIENT, Some("nurse"), &bytes[..cut]) {
            assert!(!contains(&out, CANARY_SSN));
        }
    }
    // A sub-message length running past the end of its parent.
    let bad = [3 << 3 | 2, 10, 1 << 3 | 2, 2, b'a', b'b'];
    assert_eq!(
        mask(cfg, GET_PATIENT, Some("nurse"), &bad).unwrap_err(),
        MaskError::Malformed
    );
}

#[test]
fn deep_nesting_is_bounded() {
    let cfg = config();
    // 200 nested unknown groups (field 15), properly closed.
    let mut bytes = vec![15 << 3 | 3; 200];
    bytes.extend(vec![15 << 3 | 4; 200]);
    let err = mask(cfg, GET_PATIENT, Some("nurse"), &bytes).unwrap_err();
    assert!(
        matches!(err, MaskError::TooDeep | MaskError::Malformed),
        "{err:?}"
    );
    // 50 deep is fine: an unknown field, dropped for the nurse, kept for billing.
    let mut ok = vec![15 << 3 | 3; 50];
    ok.extend(vec![15 << 3 | 4; 50]);
    let (out, counts) = mask(cfg, GET_PATIENT, Some("nurse"), &ok).unwrap();
    assert!(out.is_empty());
    assert_eq!(counts.unknown_fields, 1);
    assert_eq!(mask(cfg, GET_PATIENT, Some("billing"), &ok).unwrap().0, ok);
}

/// The FHIR demo's Patient under `policy.fhir.json`, every role: quiet walks give what
/// rewriting everything gives, for the message, for it with an unknown field inside a
/// sub-message, and for every truncation of it.
#[test]
fn quiet_walks_change_nothing_on_the_fhir_patient() {
    use base64::Engine;
    use phi_guard_mask::rewriter::Rewriter;
    use phi_guard_proto::fhir;
    let mut doc: serde_json::Value =
        serde_json::from_str(include_str!("../policy.fhir.json")).unwrap();
    doc["descriptor_set"] = base64::engine::general_purpose::STANDARD
        .encode(fhir::DESCRIPTOR_SET)
        .into();
    let cfg = MaskConfig::parse(doc.to_string().as_bytes(), &|_| Some(KEY.into())).unwrap();
    let root = cfg.plans.method(fhir::GET_PATIENT).unwrap();
    let patient = fhir::patient();
    // Field 1 (id, a String) with an unknown field 99 inside its value.
    let mut with_unknown = vec![0x0a, 0x06, 0x0a, 0x01, b'x', 0x98, 0x06, 0x01];
    with_unknown.extend_from_slice(&patient);
    for role in ["billing", "nurse", "research", "safe_harbor", "nobody"] {
        let (_, block) = cfg.policy.for_role(Some(role));
        let fast = cfg.rewriter(block);
        assert!(fast.quiet.is_some());
        let slow = Rewriter {
            quiet: None,
            ..fast
        };
        let run = |rw: &Rewriter<'_>, payload: &[u8]| {
            let mut out = Vec::new();
            let mut counts = Counts::default();
            rw.rewrite(root, payload, &mut out, &mut counts)
                .map(|()| (out, counts))
        };
        assert!(run(&fast, &patient).is_ok(), "{role}");
        assert_eq!(run(&fast, &patient), run(&slow, &patient), "{role}");
        assert_eq!(
            run(&fast, &with_unknown),
            run(&slow, &with_unknown),
            "{role}"
        );
        for n in 0..patient.len() {
            assert_eq!(
                run(&fast, &patient[..n]),
                run(&slow, &patient[..n]),
                "{role}, first {n} bytes"
            );
        }
    }
}
