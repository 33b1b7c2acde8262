//! The catalog on FHIR-shaped protos (tests/protos/test/v1/fhirish.proto): classes by field,
//! by type and by condition (the condition's field before or after the value on the wire),
//! precedence over annotations, `Any`, extensions, the date and ZIP generalizations and the
//! `safe_harbor` profile.

use base64::Engine;
use phi_guard_mask::rewriter::{days_from_civil, Counts};
use phi_guard_mask::MaskConfig;
use proptest::prelude::*;
use prost::Message;
use prost_reflect::{DescriptorPool, DynamicMessage, Value};

const SSN: &str = "900-55-1234";
const MRN: &str = "MRN-CANARY-77";
const PHONE: &str = "555-0199-212";
const OTHER: &str = "EXT-CANARY-9";
const SSN_SYSTEM: &str = "http://hl7.org/fhir/sid/us-ssn";
const MAIDEN_URL: &str = "http://hl7.org/fhir/StructureDefinition/patient-mothersMaidenName";
/// 2026-06-01T00:00:00Z, the tests' "now".
const NOW: i64 = 1_780_272_000;

fn set() -> Vec<u8> {
    let here = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/protos");
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../../proto");
    protox::Compiler::new([here, root])
        .unwrap()
        .include_imports(true)
        .open_files(["test/v1/fhirish.proto"])
        .unwrap()
        .encode_file_descriptor_set()
}

fn pool() -> DescriptorPool {
    DescriptorPool::decode(&set()[..]).unwrap()
}

fn catalog() -> serde_json::Value {
    serde_json::json!([
        {"field": "test.fhir.Identifier.value", "class": "OTHER_ID"},
        {"field": "test.fhir.Identifier.value", "class": "SSN",
         "when": {"path": "system.value", "in": [SSN_SYSTEM, "urn:oid:2.16.840.1.113883.4.1"]}},
        {"field": "test.fhir.Identifier.value", "class": "MRN",
         "when": {"path": "type.coding.code.value", "equals": "MR"}},
        {"field": "test.fhir.ContactPoint.value", "class": "PHONE",
         "when": {"path": "system.value", "equals": "PHONE"}},
        {"field": "test.fhir.ContactPoint.value", "class": "EMAIL",
         "when": {"path": "system.value", "equals": "EMAIL"}},
        {"field": "test.fhir.Patient.birth_date", "class": "DOB"},
        {"type": "test.fhir.Address", "class": "ADDRESS"},
        {"field": "test.fhir.Address.postal_code", "class": "ZIP"},
        {"field": "test.fhir.Address.state", "class": "CLINICAL"},
        {"field": "test.fhir.Patient.nickname", "class": "OTHER_ID"},
        {"field": "test.fhir.Patient.age", "class": "AGE"},
        {"type": "test.fhir.Extension", "class": "NAME",
         "when": {"path": "url.value", "equals": MAIDEN_URL}}
    ])
}

fn config_with(extra: serde_json::Value) -> MaskConfig {
    try_config_with(extra).unwrap()
}

/// The test config with `extra`'s members added, as the filter would parse it.
fn try_config_with(extra: serde_json::Value) -> Result<MaskConfig, phi_guard_common::ConfigError> {
    let mut doc = serde_json::json!({
        "descriptor_set": base64::engine::general_purpose::STANDARD.encode(set()),
        "catalog": catalog(),
        "roles": {
            "billing": {"*": "reveal"},
            "nurse": {"SSN": {"action": "partial", "keep_last": 4}, "MRN": "reveal",
                      "NAME": "reveal", "DOB": "reveal", "ADDRESS": "reveal", "ZIP": "reveal",
                      "PHONE": {"action": "partial", "keep_last": 3}, "FREE_TEXT": "reveal",
                      "CLINICAL": "reveal", "OTHER_ID": "redact", "*": "remove"},
            "deid": "safe_harbor"
        }
    });
    if let (Some(d), Some(e)) = (doc.as_object_mut(), extra.as_object()) {
        for (k, v) in e {
            d.insert(k.clone(), v.clone());
        }
    }
    MaskConfig::parse(doc.to_string().as_bytes(), &|_| None)
}

fn config() -> &'static MaskConfig {
    static CFG: std::sync::OnceLock<MaskConfig> = std::sync::OnceLock::new();
    CFG.get_or_init(|| config_with(serde_json::json!({})))
}

fn mask_bytes(cfg: &MaskConfig, role: &str, bytes: &[u8]) -> (Vec<u8>, Counts) {
    let root = cfg.plans.method("test.fhir.Fhir/GetPatient").unwrap();
    let (_, block) = cfg.policy.for_role(Some(role));
    let mut out = Vec::new();
    let mut counts = Counts::default();
    cfg.rewriter_at(block, NOW)
        .rewrite(root, bytes, &mut out, &mut counts)
        .unwrap();
    (out, counts)
}

fn patient(text: &str) -> DynamicMessage {
    let desc = pool().get_message_by_name("test.fhir.Patient").unwrap();
    DynamicMessage::parse_text_format(desc, text).unwrap()
}

fn decode(bytes: &[u8]) -> DynamicMessage {
    let desc = pool().get_message_by_name("test.fhir.Patient").unwrap();
    DynamicMessage::decode(desc, bytes).unwrap()
}

fn mask(role: &str, msg: &DynamicMessage) -> DynamicMessage {
    decode(&mask_bytes(config(), role, &msg.encode_to_vec()).0)
}

/// The string at a dotted path (`identifier.0.value.value`); "" when absent.
fn at(msg: &DynamicMessage, path: &str) -> String {
    let mut v = Value::Message(msg.clone());
    for p in path.split('.') {
        v = match (&v, p.parse::<usize>()) {
            (Value::List(l), Ok(i)) => match l.get(i) {
                Some(x) => x.clone(),
                None => return String::new(),
            },
            (Value::Message(m), _) => match m.get_field_by_name(p) {
                Some(x) => x.into_owned(),
                None => return String::new(),
            },
            _ => return String::new(),
        };
    }
    match v {
        Value::String(s) => s,
        Value::I64(n) => n.to_string(),
        Value::EnumNumber(n) => n.to_string(),
        _ => String::new(),
    }
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push(v as u8 | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn len_field(out: &mut Vec<u8>, number: u32, body: &[u8]) {
    put_varint(out, u64::from(number << 3 | 2));
    put_varint(out, body.len() as u64);
    out.extend_from_slice(body);
}

fn string_msg(value: &str) -> Vec<u8> {
    let mut b = Vec::new();
    len_field(&mut b, 1, value.as_bytes());
    b
}

/// An Identifier with its `system` written before or after its `value`.
fn identifier(value: &str, system: &str, system_first: bool) -> Vec<u8> {
    let mut v = Vec::new();
    len_field(&mut v, 1, &string_msg(value));
    let mut s = Vec::new();
    len_field(&mut s, 2, &string_msg(system));
    let mut out = Vec::new();
    if system_first {
        out.extend(s);
        out.extend(v);
    } else {
        out.extend(v);
        out.extend(s);
    }
    out
}

#[test]
fn conditions_classify_identifiers_and_contact_points() {
    let p = patient(&format!(
        r#"
        identifier {{ system {{ value: "{SSN_SYSTEM}" }} value {{ value: "{SSN}" }} }}
        identifier {{ value {{ value: "{MRN}" }} type {{ coding {{ code {{ value: "MR" }} }} }} }}
        identifier {{ value {{ value: "{OTHER}" }} system {{ value: "urn:example" }} }}
        telecom {{ system {{ value: PHONE }} value {{ value: "{PHONE}" }} }}
        telecom {{ value {{ value: "z@example.test" }} system {{ value: EMAIL }} }}
        "#
    ));
    let nurse = mask("nurse", &p);
    assert_eq!(at(&nurse, "identifier.0.value.value"), "***-**-1234");
    assert_eq!(
        at(&nurse, "identifier.0.system.value"),
        SSN_SYSTEM,
        "the discriminator is not the value"
    );
    assert_eq!(at(&nurse, "identifier.1.value.value"), MRN);
    assert_eq!(
        at(&nurse, "identifier.2.value.value"),
        "",
        "no condition holds: the unconditional entry (OTHER_ID: redact)"
    );
    assert_eq!(at(&nurse, "telecom.0.value.value"), "***-****-212");
    assert_eq!(at(&nurse, "telecom.1.value.value"), "", "EMAIL removed");
    let bytes = mask_bytes(config(), "nurse", &p.encode_to_vec()).0;
    for canary in [SSN, PHONE, OTHER, "z@example.test"] {
        assert!(!contains(&bytes, canary), "{canary} reached the nurse");
    }
    // Billing gets every byte as sent.
    let original = p.encode_to_vec();
    assert_eq!(mask_bytes(config(), "billing", &original).0, original);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// The condition holds wherever its field is on the wire, before or after the value, in
    /// any number of identifiers, and the rest of the message is untouched.
    #[test]
    fn conditions_hold_before_or_after_the_value(
        order in prop::collection::vec(any::<bool>(), 1..6),
        digits in "[0-9]{4}",
        noise in "[a-z]{0,12}",
    ) {
        let ssn = format!("900-55-{digits}");
        let mut bytes = Vec::new();
        len_field(&mut bytes, 1, &string_msg(&noise));
        for &system_first in &order {
            len_field(&mut bytes, 2, &identifier(&ssn, SSN_SYSTEM, system_first));
        }
        let (out, counts) = mask_bytes(config(), "nurse", &bytes);
        let got = decode(&out);
        prop_assert_eq!(at(&got, "id.value"), noise);
        for i in 0..order.len() {
            prop_assert_eq!(at(&got, &format!("identifier.{i}.value.value")), format!("***-**-{digits}"));
            prop_assert_eq!(at(&got, &format!("identifier.{i}.system.value")), SSN_SYSTEM);
        }
        prop_assert_eq!(counts.by_name(&config().class_names).get("SSN/partial").copied(), Some(order.len() as u64));
        let (removed, _) = mask_bytes(config(), "deid", &bytes);
        prop_assert!(!contains(&removed, &ssn));
    }
}

#[test]
fn field_entries_beat_annotations_and_type_entries() {
    let p = patient(
        r#"
        nickname { value: "Zeb" }
        address { line { value: "77 Canary Wharf" } city { value: "Yellowbird" }
                  postal_code { value: "99501-7788" } state { value: "AK" } }
        "#,
    );
    let nurse = mask("nurse", &p);
    // nickname is annotated NAME (nurse: reveal) but the catalog says OTHER_ID (redact).
    assert_eq!(at(&nurse, "nickname.value"), "");
    let deid = mask("deid", &p);
    assert_eq!(at(&deid, "address.0.line.0.value"), "", "ADDRESS removed");
    assert_eq!(at(&deid, "address.0.city.value"), "");
    assert_eq!(
        at(&deid, "address.0.postal_code.value"),
        "995",
        "ZIP (field entry) over ADDRESS (type entry)"
    );
    assert_eq!(at(&deid, "address.0.state.value"), "AK");
}

#[test]
fn zip_codes_of_restricted_areas_become_000() {
    for (zip, want) in [
        ("03601", "000"),
        ("893-1", ""),
        ("89301-1234", "000"),
        ("10001", "100"),
        ("1000", ""),
        ("ABCDE", ""),
    ] {
        let p = patient(&format!(
            r#"address {{ postal_code {{ value: "{zip}" }} }}"#
        ));
        assert_eq!(
            at(&mask("deid", &p), "address.0.postal_code.value"),
            want,
            "{zip}"
        );
    }
}

#[test]
fn fhir_dates_are_reduced_to_the_year_and_old_ages_aggregated() {
    let us = |y, m, d| days_from_civil(y, m, d) * 86_400 * 1_000_000;
    for (value_us, tz, want_year) in [
        (us(1980, 7, 14), "Z", 1980),
        // Local midnight of January 1 in +05:00 is still the previous day in UTC.
        (us(2001, 1, 1) - 5 * 3_600_000_000, "+05:00", 2001),
        // 1931: older than 89 in 2026, aggregated into 1936 (everyone 90 or older).
        (us(1931, 2, 28), "America/Anchorage", 1936),
    ] {
        let p = patient(&format!(
            r#"birth_date {{ value_us: {value_us} timezone: "{tz}" precision: DAY id {{ value: "x" }} }}"#
        ));
        let deid = mask("deid", &p);
        assert_eq!(
            at(&deid, "birth_date.value_us"),
            us(want_year, 1, 1).to_string()
        );
        assert_eq!(at(&deid, "birth_date.timezone"), "Z");
        assert_eq!(at(&deid, "birth_date.precision"), "1", "precision YEAR");
        assert_eq!(at(&deid, "birth_date.id.value"), "", "other fields dropped");
        // The nurse sees the date as sent.
        let bytes = p.encode_to_vec();
        assert_eq!(mask_bytes(config(), "nurse", &bytes).0, bytes);
    }
}

#[test]
fn ages_over_89_are_aggregated() {
    for (age, want) in [("93", "90"), ("89", "89"), ("42.5", "42.5"), ("old", "")] {
        let p = patient(&format!(r#"age {{ value: "{age}" }}"#));
        assert_eq!(at(&mask("deid", &p), "age.value"), want, "{age}");
    }
}

#[test]
fn extensions_are_masked_by_their_url() {
    let p = patient(&format!(
        r#"
        extension {{ url {{ value: "{MAIDEN_URL}" }} value {{ string_value {{ value: "Canarymaid" }} }} }}
        extension {{ url {{ value: "http://example.test/favourite-colour" }} value {{ string_value {{ value: "blue" }} }} }}
        "#
    ));
    let deid = mask("deid", &p);
    assert_eq!(at(&deid, "extension.0.value.string_value.value"), "");
    assert_eq!(at(&deid, "extension.0.url.value"), MAIDEN_URL, "url stays");
    assert_eq!(at(&deid, "extension.1.value.string_value.value"), "blue");
    let bytes = p.encode_to_vec();
    assert_eq!(
        mask_bytes(config(), "nurse", &bytes).0,
        bytes,
        "NAME revealed to the nurse"
    );
}

fn any_msg(type_url: &str, value: &[u8]) -> Vec<u8> {
    let mut a = Vec::new();
    len_field(&mut a, 1, type_url.as_bytes());
    len_field(&mut a, 2, value);
    a
}

#[test]
fn any_is_masked_as_the_type_its_url_names() {
    let inner = patient(&format!(
        r#"identifier {{ system {{ value: "{SSN_SYSTEM}" }} value {{ value: "{SSN}" }} }}"#
    ))
    .encode_to_vec();
    let mut bytes = Vec::new();
    len_field(
        &mut bytes,
        6,
        &any_msg("type.googleapis.com/test.fhir.Patient", &inner),
    );
    // Value before type URL on the wire, too.
    let mut reversed = Vec::new();
    len_field(&mut reversed, 2, &inner);
    len_field(&mut reversed, 1, b"type.googleapis.com/test.fhir.Patient");
    len_field(&mut bytes, 6, &reversed);
    let (out, counts) = mask_bytes(config(), "nurse", &bytes);
    assert!(!contains(&out, SSN));
    assert!(contains(&out, "***-**-1234"));
    assert_eq!(counts.unknown_any, 0);
    assert_eq!(mask_bytes(config(), "billing", &bytes).0, bytes);

    // An Any of a type the set does not have: dropped unless the role reveals everything.
    let mut unknown = Vec::new();
    len_field(
        &mut unknown,
        6,
        &any_msg("type.googleapis.com/other.Secret", SSN.as_bytes()),
    );
    len_field(&mut unknown, 6, &any_msg("", SSN.as_bytes()));
    let (out, counts) = mask_bytes(config(), "nurse", &unknown);
    assert!(out.is_empty());
    assert_eq!(counts.unknown_any, 2);
    assert_eq!(mask_bytes(config(), "billing", &unknown).0, unknown);
    let keep = config_with(serde_json::json!({"unknown_fields": "keep"}));
    assert!(
        mask_bytes(&keep, "nurse", &unknown).0.is_empty(),
        "unknown Anys go whatever unknown_fields says"
    );
}

#[test]
fn bad_catalog_entries_name_the_entry() {
    let parse = |entry: serde_json::Value| {
        let doc = serde_json::json!({
            "descriptor_set": base64::engine::general_purpose::STANDARD.encode(set()),
            "catalog": [entry],
            "roles": {"r": {"*": "remove"}}
        });
        MaskConfig::parse(doc.to_string().as_bytes(), &|_| None)
            .unwrap_err()
            .field
    };
    assert_eq!(
        parse(serde_json::json!({"field": "test.fhir.Patient.nope", "class": "SSN"})),
        "catalog[0].field"
    );
    assert_eq!(
        parse(serde_json::json!({"type": "test.fhir.Nope", "class": "SSN"})),
        "catalog[0].type"
    );
    assert_eq!(
        parse(serde_json::json!({"type": "test.fhir.Address", "class": "NOPE"})),
        "catalog[0].class"
    );
    assert_eq!(
        parse(
            serde_json::json!({"type": "test.fhir.Identifier", "class": "SSN",
            "when": {"path": "system.nope", "equals": "x"}})
        ),
        "catalog[0].when.path"
    );
    assert_eq!(
        parse(
            serde_json::json!({"type": "test.fhir.ContactPoint", "class": "PHONE",
            "when": {"path": "system.value", "equals": "PAGER"}})
        ),
        "catalog[0].when"
    );
    assert_eq!(
        parse(
            serde_json::json!({"field": "test.fhir.Patient.id", "type": "test.fhir.Patient", "class": "SSN"})
        ),
        "catalog[0]"
    );
}

#[test]
fn free_text_detectors_are_tunable() {
    let cfg = config_with(serde_json::json!({
        "free_text": {"detectors": [
            {"name": "ssn"},
            {"name": "npi", "class": "OTHER_ID", "pattern": "\\bNPI[: ]*[0-9]{10}\\b"}
        ]}
    }));
    let p = patient(&format!(
        r#"note {{ value: "SSN {SSN}, NPI 1234567890, call {PHONE}" }}"#
    ));
    let (out, _) = mask_bytes(&cfg, "nurse", &p.encode_to_vec());
    let note = at(&decode(&out), "note.value");
    assert_eq!(
        note,
        format!("SSN ***-**-1234, , call {PHONE}"),
        "phone detector off"
    );
    // The default set catches the phone the issue found.
    let (out, _) = mask_bytes(config(), "nurse", &p.encode_to_vec());
    let note = at(&decode(&out), "note.value");
    assert!(!note.contains(PHONE), "{note}");
    assert!(!note.contains(SSN), "{note}");
}

#[test]
fn detector_patterns_that_could_hide_others_or_do_not_compile_are_refused_by_name() {
    let refused = |free_text: serde_json::Value| {
        let Err(err) = try_config_with(serde_json::json!({ "free_text": free_text })) else {
            panic!("accepted");
        };
        (err.field, err.reason)
    };
    // A trial's failing input: an optional NPI listed first matched the empty string before
    // the SSN and the phone, and they went through unmasked.
    let (field, message) = refused(serde_json::json!({"detectors": [
        {"name": "npi", "class": "OTHER_ID", "pattern": "(?:NPI[0-9]{10})?"},
        {"name": "ssn"}, {"name": "phone"}
    ]}));
    assert_eq!(field, "free_text.detectors[0].pattern");
    assert!(message.contains("can match the empty string"), "{message}");
    let (field, _) = refused(serde_json::json!({"mrn_pattern": "\\b"}));
    assert_eq!(field, "free_text.mrn_pattern");
    // A syntax error says what it is, on one line.
    let (field, message) = refused(serde_json::json!({"detectors": [
        {"name": "ssn"}, {"name": "x", "class": "OTHER_ID", "pattern": "(NPI"}
    ]}));
    assert_eq!(field, "free_text.detectors[1].pattern");
    assert!(message.ends_with("unclosed group"), "{message}");
    assert!(!message.contains('\n'), "{message}");
}

/// `tests/protos/fhirish.binpb` is this set, committed for the `mask_rewrite` fuzz target
/// (which has no protobuf compiler). `PHI_GUARD_REGENERATE=1` rewrites it.
#[test]
fn the_committed_fuzz_descriptor_set_is_current() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/protos/fhirish.binpb");
    if std::env::var_os("PHI_GUARD_REGENERATE").is_some() {
        std::fs::write(path, set()).unwrap();
        // And a seed for the fuzz target: every shape the catalog acts on.
        let mut seed = patient(&format!(
            r#"
            identifier {{ system {{ value: "{SSN_SYSTEM}" }} value {{ value: "{SSN}" }} }}
            identifier {{ value {{ value: "{MRN}" }} type {{ coding {{ code {{ value: "MR" }} }} }} }}
            telecom {{ system {{ value: PHONE }} value {{ value: "{PHONE}" }} }}
            birth_date {{ value_us: -1225756800000000 timezone: "+01:00" precision: DAY }}
            address {{ line {{ value: "77 Canary Wharf" }} postal_code {{ value: "03601" }} }}
            extension {{ url {{ value: "http://example.test/maiden-name" }} value {{ string_value {{ value: "Canarymaid" }} }} }}
            age {{ value: "93" }}
            "#
        ))
        .encode_to_vec();
        let inner = seed.clone();
        len_field(
            &mut seed,
            6,
            &any_msg("type.googleapis.com/test.fhir.Patient", &inner),
        );
        let seeds = concat!(env!("CARGO_MANIFEST_DIR"), "/../../fuzz/seeds/mask_rewrite");
        std::fs::write(format!("{seeds}/fhirish-patient"), seed).unwrap();
    }
    assert!(
        std::fs::read(path).unwrap() == set(),
        "{path} is stale: run PHI_GUARD_REGENERATE=1 cargo test -p phi-guard-mask --test catalog"
    );
}
