//! Where the resource id of a request comes from: `phi.v1.resource_id` annotations and the
//! catalog's `resource_id` entries, checked against the descriptor set at configure time.

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};

use base64::Engine;
use phi_guard_common::ConfigError;
use phi_guard_mask::resource::IdKind;
use phi_guard_mask::MaskConfig;
use serde_json::{json, Value};
use support::*;

/// Compiles one proto file (with the repository's phi/v1 annotations on the include path).
fn compile(source: &str) -> Vec<u8> {
    static N: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "phi-guard-mask-resource-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(dir.join("t")).unwrap();
    std::fs::write(dir.join("t/api.proto"), source).unwrap();
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../../proto");
    let set = protox::Compiler::new([dir.as_path(), std::path::Path::new(root)])
        .unwrap()
        .include_imports(true)
        .open_files(["t/api.proto"])
        .unwrap()
        .encode_file_descriptor_set();
    std::fs::remove_dir_all(&dir).unwrap();
    set
}

fn config(set: &[u8], catalog: Value) -> Result<MaskConfig, ConfigError> {
    let doc = json!({
        "descriptor_set": base64::engine::general_purpose::STANDARD.encode(set),
        "catalog": catalog,
        "roles": {"billing": {"*": "reveal"}},
    });
    MaskConfig::parse(doc.to_string().as_bytes(), &env)
}

fn ids(cfg: &MaskConfig) -> Vec<(String, String, IdKind)> {
    let mut v: Vec<_> = cfg
        .resource_ids
        .methods
        .iter()
        .map(|(m, f)| (m.clone(), f.full_name.clone(), f.kind))
        .collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

const API: &str = r#"
syntax = "proto3";
package t;
import "phi/v1/annotations.proto";
service S {
  rpc Get(GetRequest) returns (Record);
  rpc Find(FindRequest) returns (stream Record);
  rpc Plain(PlainRequest) returns (Record);
}
message GetRequest {
  string note = 1;
  string id = 2 [(phi.v1.resource_id) = true];
}
message FindRequest {
  int64 number = 1;
  repeated string tags = 2;
  bytes blob = 3;
  Record record = 4;
  sint32 offset = 5;
}
message PlainRequest { string id = 1; }
message Record {
  string id = 1 [(phi.v1.resource_id) = true];
  string ssn = 2 [(phi.v1.sensitivity) = SSN];
}
"#;

#[test]
fn the_demo_api_reads_the_patient_id_of_every_request() {
    let cfg = demo_config();
    assert_eq!(
        ids(&cfg),
        [
            ("DeletePatient", "DeletePatientRequest"),
            ("GetPatient", "GetPatientRequest"),
            ("ListEncounters", "ListEncountersRequest"),
        ]
        .map(|(m, r)| (
            format!("health.v1.PatientService/{m}"),
            format!("health.v1.{r}.patient_id"),
            IdKind::String
        ))
    );
}

#[test]
fn annotations_and_catalog_entries_name_the_field() {
    let set = compile(API);
    // The annotation on a response message (Record.id) is ignored: only requests count.
    let cfg = config(&set, json!([])).unwrap();
    assert_eq!(
        ids(&cfg),
        [(
            "t.S/Get".to_string(),
            "t.GetRequest.id".to_string(),
            IdKind::String
        )]
    );
    let cfg = config(
        &set,
        json!([
            {"field": "t.FindRequest.number", "resource_id": true},
            {"field": "t.GetRequest.note", "resource_id": true},
            {"field": "t.PlainRequest.id", "resource_id": true},
        ]),
    )
    .unwrap();
    assert_eq!(
        ids(&cfg),
        [
            ("t.S/Find", "t.FindRequest.number", IdKind::Int64),
            // The catalog wins over the annotation on another field of the message.
            ("t.S/Get", "t.GetRequest.note", IdKind::String),
            ("t.S/Plain", "t.PlainRequest.id", IdKind::String),
        ]
        .map(|(m, f, k)| (m.to_string(), f.to_string(), k))
    );
    let sint = config(
        &set,
        json!([{"field": "t.FindRequest.offset", "resource_id": true}]),
    )
    .unwrap();
    assert_eq!(
        sint.resource_ids.for_method("t.S/Find").unwrap().kind,
        IdKind::SInt32
    );
    assert_eq!(sint.resource_ids.for_method("t.S/Find").unwrap().number, 5);
}

#[test]
fn catalog_entries_that_cannot_name_a_resource_id_are_refused_by_field() {
    let set = compile(API);
    for (entry, field, reason) in [
        (
            json!({"field": "t.GetRequest.id", "resource_id": false}),
            "catalog[0].resource_id",
            "must be true",
        ),
        (
            json!({"field": "t.GetRequest.id", "resource_id": "yes"}),
            "catalog[0].resource_id",
            "must be true",
        ),
        (
            json!({"field": "t.GetRequest.id", "resource_id": true, "class": "SSN"}),
            "catalog[0].resource_id",
            "without class",
        ),
        (
            json!({"type": "t.GetRequest", "resource_id": true}),
            "catalog[0].resource_id",
            "without type",
        ),
        (json!({"resource_id": true}), "catalog[0].field", "missing"),
        (
            json!({"field": "t.GetRequest.nope", "resource_id": true}),
            "catalog[0].field",
            "no such field",
        ),
        (
            json!({"field": "t.Missing.id", "resource_id": true}),
            "catalog[0].field",
            "not in the descriptor set",
        ),
        (
            json!({"field": "t.Record.id", "resource_id": true}),
            "catalog[0].field",
            "request message",
        ),
        (
            json!({"field": "t.FindRequest.tags", "resource_id": true}),
            "catalog[0].field",
            "singular string or integer",
        ),
        (
            json!({"field": "t.FindRequest.blob", "resource_id": true}),
            "catalog[0].field",
            "singular string or integer",
        ),
        (
            json!({"field": "t.FindRequest.record", "resource_id": true}),
            "catalog[0].field",
            "singular string or integer",
        ),
    ] {
        let err = config(&set, json!([entry.clone()])).unwrap_err();
        assert_eq!(err.field, field, "{entry}: {err}");
        assert!(err.reason.contains(reason), "{entry}: {err}");
    }
    let err = config(
        &set,
        json!([
            {"field": "t.FindRequest.number", "resource_id": true},
            {"field": "t.FindRequest.offset", "resource_id": true},
        ]),
    )
    .unwrap_err();
    assert_eq!(err.field, "catalog[1].field");
    assert!(err.reason.contains("catalog[0]"), "{err}");
}

#[test]
fn annotations_that_cannot_name_a_resource_id_are_refused() {
    let two = API.replace(
        "string note = 1;",
        "string note = 1 [(phi.v1.resource_id) = true];",
    );
    let err = config(&compile(&two), json!([])).unwrap_err();
    assert_eq!(err.field, "descriptor_set");
    assert!(
        err.reason.contains("t.GetRequest: fields note and id"),
        "{err}"
    );
    let bytes = API.replace(
        "bytes blob = 3;",
        "bytes blob = 3 [(phi.v1.resource_id) = true];",
    );
    let err = config(&compile(&bytes), json!([])).unwrap_err();
    assert_eq!(err.field, "descriptor_set");
    assert!(err.reason.contains("t.FindRequest.blob"), "{err}");
    // A catalog entry on the message settles it: the annotations there are not used.
    let cfg = config(
        &compile(&two),
        json!([{"field": "t.GetRequest.id", "resource_id": true}]),
    )
    .unwrap();
    assert_eq!(cfg.resource_ids.for_method("t.S/Get").unwrap().number, 2);
}

#[test]
fn the_fhir_policy_names_the_fhir_requests() {
    let mut doc: Value = serde_json::from_str(include_str!("../policy.fhir.json")).unwrap();
    doc["descriptor_set"] = base64::engine::general_purpose::STANDARD
        .encode(phi_guard_proto::fhir::DESCRIPTOR_SET)
        .into();
    let cfg = MaskConfig::parse(doc.to_string().as_bytes(), &env).unwrap();
    assert_eq!(
        ids(&cfg),
        [
            ("GetPatient", "GetPatientRequest.id"),
            ("ListObservations", "ListObservationsRequest.patient_id"),
        ]
        .map(|(m, f)| (
            format!("phi.fhir.v1.FhirService/{m}"),
            format!("phi.fhir.v1.{f}"),
            IdKind::String
        ))
    );
}

#[test]
fn a_classed_field_cannot_be_the_resource_id() {
    // The new-user trial's input: an MRN as the audit resource id would put a patient
    // identifier in the PHI-free audit event. Refused at configure time, naming the field.
    let mrn = API.replace(
        "string id = 2 [(phi.v1.resource_id) = true];",
        "string id = 2 [(phi.v1.sensitivity) = MRN, (phi.v1.resource_id) = true];",
    );
    assert_ne!(mrn, API);
    let set = compile(&mrn);
    let err = config(&set, json!([])).unwrap_err();
    assert_eq!(err.field, "descriptor_set", "{err}");
    for part in [
        "t.GetRequest.id",
        "phi.v1.resource_id",
        "MRN",
        "phi.v1.sensitivity",
        "opaque",
    ] {
        assert!(err.reason.contains(part), "{part}: {err}");
    }
    // The catalog form: the resource_id entry names a field the catalog (or an annotation)
    // classes. The error names the resource_id entry and what classes the field.
    let set = compile(API);
    for (catalog, field, by) in [
        (
            json!([
                {"field": "t.PlainRequest.id", "class": "MRN"},
                {"field": "t.PlainRequest.id", "resource_id": true},
            ]),
            "catalog[1].field",
            "catalog[0]",
        ),
        (
            json!([
                {"field": "t.PlainRequest.id", "resource_id": true},
                {"type": "t.PlainRequest", "class": "NAME"},
            ]),
            "catalog[0].field",
            "catalog[1]",
        ),
        (
            // A conditional entry on the annotated id: it may hold, so it is refused too.
            json!([
                {"field": "t.GetRequest.id", "class": "SSN",
                 "when": {"path": "note", "equals": "ssn"}},
            ]),
            "descriptor_set",
            "catalog[0]",
        ),
    ] {
        let err = config(&set, catalog.clone()).unwrap_err();
        assert_eq!(err.field, field, "{catalog}: {err}");
        assert!(err.reason.contains(by), "{catalog}: {err}");
        assert!(
            err.reason.contains("opaque resource id"),
            "{catalog}: {err}"
        );
    }
    let annotated = API.replace(
        "message PlainRequest { string id = 1; }",
        "message PlainRequest { string id = 1 [(phi.v1.sensitivity) = MRN]; }",
    );
    assert_ne!(annotated, API);
    let err = config(
        &compile(&annotated),
        json!([{"field": "t.PlainRequest.id", "resource_id": true}]),
    )
    .unwrap_err();
    assert_eq!(err.field, "catalog[0].field", "{err}");
    assert!(
        err.reason.contains("t.PlainRequest.id")
            && err
                .reason
                .contains("MRN by its phi.v1.sensitivity annotation"),
        "{err}"
    );
}
