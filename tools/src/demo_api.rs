//! The demo's two APIs behind one inbound Envoy: `health.v1.PatientService` (our own protos,
//! `phi.v1` annotations) and `phi.fhir.v1.FhirService` (Google's FHIR R4 protos, tagged by
//! catalog entries). The mask filter gets one descriptor set covering both and one
//! configuration: [`descriptor_set`] and [`mask_config`], the latter committed as
//! `envoy/demo/mask.json` (the `[mask] config` of `envoy/demo/phi-guard.toml`), kept in step
//! with its two sources by a test.

use std::sync::OnceLock;

use phi_guard_mask_cli::build;
use phi_guard_proto::fhir;
use serde_json::{Map, Value};

/// The demo's services, whose methods the mask filter plans.
pub const SERVICES: &[&str] = &["health.v1.PatientService", fhir::SERVICE];
/// Types a `google.protobuf.Any` in the demo's responses may hold (the FHIR Patient's
/// contained resource), kept beside what the services reach.
pub const ANY_TYPES: &[&str] = &["google.fhir.r4.core.RelatedPerson"];

/// Where the derived mask configuration lives, relative to the repository root.
pub const MASK_CONFIG_PATH: &str = "envoy/demo/mask.json";
/// The sources [`mask_config`] merges, relative to the repository root.
pub const MASK_SOURCES: &[&str] = &[
    "filters/mask/policy.demo.json",
    "filters/mask/policy.fhir.json",
];

/// The demo set (`phi_guard_proto::DESCRIPTOR_SET`) and the FHIR set
/// (`phi_guard_proto::fhir::DESCRIPTOR_SET`) merged (files deduplicated by name, the FHIR
/// set's first: it brings `google/protobuf/descriptor.proto`, which the `phi.v1` annotations
/// import), then pruned to what [`SERVICES`] and [`ANY_TYPES`] reach, with the mask crate's
/// own `build` functions. Options (`phi.v1.sensitivity`, `phi.v1.resource_id`, FHIR's own)
/// are kept byte for byte.
pub fn descriptor_set() -> Result<Vec<u8>, String> {
    static SET: OnceLock<Result<Vec<u8>, String>> = OnceLock::new();
    SET.get_or_init(|| {
        let merged = build::merge(&[
            fhir::DESCRIPTOR_SET.to_vec(),
            phi_guard_proto::DESCRIPTOR_SET.to_vec(),
        ])?;
        let services: Vec<String> = SERVICES.iter().map(|s| s.to_string()).collect();
        let messages: Vec<String> = ANY_TYPES.iter().map(|s| s.to_string()).collect();
        build::prune(&merged, &services, &messages)
            .map(|p| p.set)
            .map_err(|e| format!("the demo descriptor set: {e}"))
    })
    .clone()
}

/// `filters/mask/policy.demo.json` and `filters/mask/policy.fhir.json` as one mask
/// configuration: see [`merge_mask_configs`].
pub fn mask_config() -> Result<Value, String> {
    let mut sources = MASK_SOURCES.iter().map(|path| {
        let text = std::fs::read_to_string(crate::repo_root().join(path))
            .map_err(|e| format!("{path}: {e}"))?;
        phi_guard_common::config::parse_document(text.as_bytes(), "mask")
            .map_err(|e| format!("{path}: {e}"))
    });
    let mut merged = sources.next().ok_or("no mask source")??;
    for (source, path) in sources.zip(&MASK_SOURCES[1..]) {
        merged = merge_mask_configs(merged, source?).map_err(|e| format!("{path}: {e}"))?;
    }
    Ok(merged)
}

/// Merges mask configuration `b` into `a`: catalogs concatenated (`a`'s entries first),
/// `pass_through` lists united, roles united class by class. Anything set in both must be
/// equal (a role's action for a class, a top-level setting, a profile name): a conflict is an
/// error naming the field, never silently decided for one side.
pub fn merge_mask_configs(a: Value, b: Value) -> Result<Value, String> {
    let (Value::Object(mut a), Value::Object(b)) = (a, b) else {
        return Err("a mask configuration must be a JSON object".into());
    };
    for (key, value) in b {
        match (key.as_str(), a.get_mut(&key)) {
            (_, None) => {
                a.insert(key, value);
            }
            ("catalog", Some(Value::Array(entries))) => match value {
                Value::Array(more) => entries.extend(more),
                _ => return Err("catalog: must be an array".into()),
            },
            ("pass_through", Some(Value::Array(methods))) => match value {
                Value::Array(more) => {
                    for m in more {
                        if !methods.contains(&m) {
                            methods.push(m);
                        }
                    }
                }
                _ => return Err("pass_through: must be an array".into()),
            },
            ("roles", Some(Value::Object(roles))) => match value {
                Value::Object(more) => merge_roles(roles, more)?,
                _ => return Err("roles: must be an object".into()),
            },
            (_, Some(existing)) => {
                if *existing != value {
                    return Err(format!("{key}: set differently in the two sources"));
                }
            }
        }
    }
    Ok(Value::Object(a))
}

fn merge_roles(roles: &mut Map<String, Value>, more: Map<String, Value>) -> Result<(), String> {
    for (role, policy) in more {
        match (roles.get_mut(&role), policy) {
            (None, policy) => {
                roles.insert(role, policy);
            }
            (Some(Value::Object(classes)), Value::Object(more)) => {
                for (class, action) in more {
                    match classes.get(&class) {
                        None => {
                            classes.insert(class, action);
                        }
                        Some(existing) if *existing == action => {}
                        Some(_) => {
                            return Err(format!(
                                "roles.{role}.{class}: a different action in each source"
                            ))
                        }
                    }
                }
            }
            (Some(existing), policy) => {
                if *existing != policy {
                    return Err(format!("roles.{role}: set differently in the two sources"));
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use phi_guard_mask_cli::Session;
    use serde_json::json;

    /// `envoy/demo/mask.json` is what its two sources merge to. After editing a source, run
    /// `PHI_GUARD_WRITE_DEMO_MASK=1 cargo test -p phi-guard-tools demo_api` to rewrite it.
    #[test]
    fn the_committed_demo_mask_config_is_derived_from_its_sources() {
        let derived = mask_config().unwrap();
        let path = crate::repo_root().join(MASK_CONFIG_PATH);
        if std::env::var_os("PHI_GUARD_WRITE_DEMO_MASK").is_some() {
            let mut text = serde_json::to_string_pretty(&derived).unwrap();
            text.push('\n');
            std::fs::write(&path, text).unwrap();
        }
        let committed: Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        assert!(
            committed == derived,
            "{MASK_CONFIG_PATH} is out of step with {MASK_SOURCES:?}: rerun this test with \
             PHI_GUARD_WRITE_DEMO_MASK=1"
        );
    }

    #[test]
    fn the_demo_set_covers_both_services_and_the_config_builds_with_it() {
        let set = descriptor_set().unwrap();
        std::env::set_var("PHI_GUARD_MASK_TOKEN_KEY", "k".repeat(64));
        let config = serde_json::to_vec(&mask_config().unwrap()).unwrap();
        let session = Session::new(&config, Some(&set), None).unwrap();
        for method in [
            "health.v1.PatientService/GetPatient",
            "health.v1.PatientService/ListEncounters",
            "health.v1.PatientService/DeletePatient",
            fhir::GET_PATIENT,
            fhir::LIST_OBSERVATIONS,
        ] {
            assert!(
                session.pool.services().any(|s| s.methods().any(|m| format!(
                    "{}/{}",
                    s.full_name(),
                    m.name()
                ) == method)),
                "{method} missing from the demo set"
            );
        }
        assert!(session.pool.get_message_by_name(ANY_TYPES[0]).is_some());
        for role in ["billing", "nurse", "research", "safe_harbor"] {
            assert!(session.roles().iter().any(|r| r == role), "{role}");
        }
        // The demo protos' annotations survived the merge and the pruning: the field option
        // `phi.v1.sensitivity` (51234, varint) as often as in the two sets.
        let key = [0x90, 0x82, 0x19];
        let count = |set: &[u8]| set.windows(3).filter(|w| *w == key).count();
        let annotated = include_str!("../../proto/health/v1/patient.proto")
            .matches("(phi.v1.sensitivity) =")
            .count();
        assert_eq!(count(phi_guard_proto::DESCRIPTOR_SET), annotated);
        assert_eq!(
            count(&set),
            annotated + count(fhir::DESCRIPTOR_SET),
            "sensitivity annotations lost"
        );
    }

    #[test]
    fn a_conflict_between_the_sources_is_an_error_naming_the_field() {
        let a = json!({"roles": {"nurse": {"SSN": "remove"}}, "unknown_fields": "drop",
                       "catalog": [{"field": "a.B.c", "class": "SSN"}]});
        let merged = merge_mask_configs(
            a.clone(),
            json!({"roles": {"nurse": {"SSN": "remove", "ZIP": "remove"}, "x": "safe_harbor"},
                   "catalog": [{"field": "d.E.f", "class": "NAME"}]}),
        )
        .unwrap();
        assert_eq!(
            merged["roles"]["nurse"],
            json!({"SSN": "remove", "ZIP": "remove"})
        );
        assert_eq!(merged["roles"]["x"], "safe_harbor");
        assert_eq!(merged["catalog"].as_array().unwrap().len(), 2);
        let err = merge_mask_configs(a.clone(), json!({"roles": {"nurse": {"SSN": "reveal"}}}))
            .unwrap_err();
        assert_eq!(err, "roles.nurse.SSN: a different action in each source");
        let err = merge_mask_configs(a, json!({"unknown_fields": "keep"})).unwrap_err();
        assert!(err.starts_with("unknown_fields"), "{err}");
    }
}
