//! `phi-guard init` and `phi-guard keys`: a starter project from a descriptor set (default deny
//! everywhere), and the secrets each stage needs.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use phi_guard_mask_cli::lint::suggested_class;
use serde_json::{json, Value};

/// A gRPC method found in a descriptor set: `pkg.Service/Method`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Method {
    pub service: String,
    pub name: String,
    pub output: String,
}

impl Method {
    pub fn path(&self) -> String {
        format!("{}/{}", self.service, self.name)
    }
}

/// A message field and whether it carries a `phi.v1.sensitivity` class.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Field {
    /// `pkg.Message.field`.
    pub path: String,
    /// The protobuf type (`string`, `message .pkg.Other`, …), `repeated` when it is.
    pub kind: String,
    /// The `phi.v1.sensitivity` class, when tagged.
    pub class: Option<String>,
}

/// What `init` reads from a descriptor set.
#[derive(Debug, Clone, Default)]
pub struct Api {
    pub methods: Vec<Method>,
    pub fields: Vec<Field>,
}

impl Api {
    /// Reads a binary FileDescriptorSet with the mask filter's own decoder, so `init` sees the
    /// fields and classes exactly as the filter will.
    pub fn from_descriptor_set(bytes: &[u8]) -> Result<Api, String> {
        let catalog = phi_guard_mask::descriptor::DescriptorSet::decode(bytes).map_err(|e| e.0)?;
        let mut api = Api::default();
        for method in &catalog.methods {
            let (service, name) = method
                .full_name
                .split_once('/')
                .ok_or("a method without a service")?;
            api.methods.push(Method {
                service: service.into(),
                name: name.into(),
                output: method.output_type.clone(),
            });
        }
        if api.methods.is_empty() {
            return Err("the descriptor set declares no service".into());
        }
        // Only the message types the services' requests and responses reach: a set built
        // with its imports holds google/protobuf/descriptor.proto (phi/v1/annotations.proto
        // extends its FieldOptions), whose fields are no part of the API.
        let mut reached: BTreeMap<&str, &phi_guard_mask::descriptor::MessageDesc> = BTreeMap::new();
        let mut queue: Vec<&str> = catalog
            .methods
            .iter()
            .flat_map(|m| [m.input_type.as_str(), m.output_type.as_str()])
            .collect();
        while let Some(name) = queue.pop() {
            if reached.contains_key(name) {
                continue;
            }
            let Some(desc) = catalog.messages.get(name) else {
                continue;
            };
            reached.insert(name, desc);
            queue.extend(desc.fields.iter().filter_map(|f| f.type_name.as_deref()));
        }
        for (message, desc) in reached {
            if desc.map_entry || message.starts_with("phi.v1.") {
                continue;
            }
            for field in &desc.fields {
                let ty = match &field.type_name {
                    Some(t) => t.clone(),
                    None => format!("{:?}", field.kind).to_lowercase(),
                };
                api.fields.push(Field {
                    path: format!("{message}.{}", field.name),
                    kind: if field.repeated {
                        format!("repeated {ty}")
                    } else {
                        ty
                    },
                    class: field.sensitivity.map(|c| catalog.class_name(c)),
                });
            }
        }
        Ok(api)
    }

    /// The services, in order of appearance.
    pub fn services(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for m in &self.methods {
            if !out.contains(&m.service) {
                out.push(m.service.clone());
            }
        }
        out
    }
}

/// One file `init` writes.
#[derive(Debug, Clone)]
pub struct StarterFile {
    pub name: &'static str,
    pub text: String,
}

/// The starter project for `api`: project file, jwt config, rbac policy (every method allowed
/// to nobody) with its test cases, mask config (every role sees nothing) and the list of fields
/// without a sensitivity class, audit config.
pub fn starter(api: &Api, service_name: &str, trust_domain: &str) -> Vec<StarterFile> {
    let services = api.services();
    let pretty = |v: &Value| serde_json::to_string_pretty(v).expect("JSON") + "\n";
    let jwt = json!({
        "providers": [{
            "name": "idp",
            "issuer": "https://idp.example",
            "audiences": [service_name],
            "algorithms": ["ES256", "RS256"],
            "clock_skew_s": 60,
            "max_lifetime_s": 3600
        }],
        "rules": services.iter().map(|s| json!({
            "match": format!("{s}/*"), "requires": {"provider": "idp"}
        })).collect::<Vec<_>>(),
    });
    // No rule: every method is denied to everyone until a rule allows it.
    let policy = json!({
        "version": format!("{service_name}-0"),
        "mode": "enforce",
        "rules": []
    });
    let cases: Vec<Value> = api
        .methods
        .iter()
        .map(|m| {
            json!({
                "name": format!("nobody may call {} yet", m.path()),
                "san": format!("spiffe://{trust_domain}/ns/default/sa/client"),
                "claims": {"roles": ["any"]},
                "method": m.path(),
                "expect": "deny"
            })
        })
        .collect();
    // Through the listener and jwt as render configures them, so a case cannot pass while
    // the handshake or jwt would refuse it.
    let tests = json!({
        "policy": "policy.json",
        "jwt_config": "jwt.json",
        "listener": {"trust_domain": trust_domain},
        "cases": cases
    });
    // Untagged fields whose name says what they hold get a catalog entry with that class, for
    // the user to confirm: tagging too much only removes data, tagging too little leaks it.
    let catalog: Vec<Value> = api
        .fields
        .iter()
        .filter(|f| f.class.is_none())
        .filter_map(|f| {
            let name = f.path.rsplit_once('.').map_or(f.path.as_str(), |(_, n)| n);
            suggested_class(name).map(|class| json!({"field": f.path, "class": class}))
        })
        .collect();
    // Every role that is not listed gets `default`: every class removed.
    let mask = json!({
        "max_message_bytes": 4194304,
        "catalog": catalog,
        "roles": {},
        "default": {"*": "remove"}
    });
    let mut fields = String::from(
        "# Fields of the API and their phi.v1.sensitivity class, as phi-guard init found them.\n\
         # An untagged field passes through mask unchanged for every role: tag each one that\n\
         # can carry PHI, in the .proto ([(phi.v1.sensitivity) = SSN], see docs/ADOPTING.md)\n\
         # or, for a proto you cannot edit, as a mask.json catalog entry\n\
         # ({\"field\": \"pkg.Message.field\", \"class\": \"SSN\"}). `catalog: CLASS?` marks an\n\
         # untagged field whose name suggests CLASS: init wrote that entry into mask.json's\n\
         # catalog; confirm or change it.\n",
    );
    let mut by_message: BTreeMap<&str, Vec<&Field>> = BTreeMap::new();
    for f in &api.fields {
        let message = f.path.rsplit_once('.').map_or("", |(m, _)| m);
        by_message.entry(message).or_default().push(f);
    }
    for (message, list) in by_message {
        fields.push_str(&format!("\n{message}\n"));
        for f in list {
            let name = f.path.rsplit_once('.').map_or("", |(_, n)| n);
            let state = match (&f.class, suggested_class(name)) {
                (Some(class), _) => class.clone(),
                (None, Some(suggested)) => format!("UNTAGGED  catalog: {suggested}?"),
                (None, None) => "UNTAGGED".to_string(),
            };
            fields.push_str(&format!("  {name:<24} {:<28} {state}\n", f.kind));
        }
    }
    let project = format!(
        r#"# phi-guard project file: `phi-guard render` turns it into envoy/envoy.yaml and the SDS
# files. Paths are relative to this file. docs/ADOPTING.md describes every field.

[service]
name = "{service_name}"
upstream = "127.0.0.1:50051"     # your gRPC server (plaintext h2), reachable from Envoy

[listener]
address = "0.0.0.0"
port = 8443
admin_port = 9901                # Envoy admin, always on 127.0.0.1

[trust]
domain = "{trust_domain}"
# allowed_spiffe_ids = ["spiffe://{trust_domain}/ns/clinic/sa/portal"]   # default: the whole domain

[paths]
out = "envoy"
sds = "sds"
logs = "logs"

[jwt]
config = "jwt.json"

[jwks]
url = "https://idp.example/.well-known/jwks.json"   # or: file = "jwks.json" (inline, no fetch)

[rbac]
policy = "policy.json"

[mask]
config = "mask.json"
descriptor_set = "api.binpb"

[audit]
config = "audit.json"
collector = "http://127.0.0.1:4318/v1/logs"

[keys]
dir = "keys"
"#
    );
    vec![
        StarterFile {
            name: "phi-guard.toml",
            text: project,
        },
        StarterFile {
            name: "jwt.json",
            text: pretty(&jwt),
        },
        StarterFile {
            name: "policy.json",
            text: pretty(&policy),
        },
        StarterFile {
            name: "policy.test.json",
            text: pretty(&tests),
        },
        StarterFile {
            name: "mask.json",
            text: pretty(&mask),
        },
        StarterFile {
            name: "mask.fields.txt",
            text: fields,
        },
        StarterFile {
            name: "audit.json",
            text: pretty(&json!({})),
        },
    ]
}

/// A secret a stage needs: its file, the environment variable Envoy passes to the VM, and the
/// random bytes it holds.
#[derive(Debug, Clone)]
pub struct KeySpec {
    pub file: &'static str,
    pub env: String,
    pub bytes: usize,
    pub purpose: &'static str,
}

/// The keys of the single-stage layout, with the lengths the filters require
/// (`phi_guard_common::config`); the jwt replay key when the jwt config turns replay
/// protection on. An HS256 secret is the IdP's, not made here.
pub fn key_specs(keys: &crate::render::KeyEnv, jwt: &serde_json::Value) -> Vec<KeySpec> {
    use phi_guard_common::config::{
        MIN_AUDIT_CHAIN_KEY_BYTES, MIN_MASK_TOKEN_KEY_BYTES, MIN_REPLAY_KEY_BYTES,
    };
    let mut specs = vec![
        KeySpec {
            file: "audit.key",
            env: keys.audit.clone(),
            bytes: MIN_AUDIT_CHAIN_KEY_BYTES,
            purpose: "audit chain HMAC key",
        },
        KeySpec {
            file: "mask-token.key",
            env: keys.mask_token.clone(),
            bytes: MIN_MASK_TOKEN_KEY_BYTES,
            purpose: "mask keyed-token key",
        },
    ];
    let replay = jwt
        .get("replay")
        .and_then(|r| r.get("key_env"))
        .and_then(serde_json::Value::as_str);
    if let Some(env) = replay {
        specs.push(KeySpec {
            file: "jwt-replay.key",
            env: env.to_string(),
            bytes: MIN_REPLAY_KEY_BYTES,
            purpose: "jwt replay-cache key",
        });
    }
    specs
}

/// Writes each key as the hex text of `bytes` bytes from the OS CSPRNG (the filters use the
/// text, `2 × bytes` long, as the key), mode 0600, refusing to overwrite unless `force`.
pub fn write_keys(dir: &Path, specs: &[KeySpec], force: bool) -> Result<Vec<PathBuf>, String> {
    use std::io::Write as _;
    use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| format!("{}: {e}", dir.display()))?;
    let mut written = Vec::new();
    for spec in specs {
        let path = dir.join(spec.file);
        if path.exists() && !force {
            return Err(format!(
                "{} exists (keep it, or pass --force to replace it: events chained or tokens \
                 made with the old key will no longer verify or match)",
                path.display()
            ));
        }
        let hex = random_hex(spec.bytes).map_err(|e| format!("no OS randomness: {e}"))?;
        let _ = std::fs::remove_file(&path);
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        file.write_all(hex.as_bytes())
            .map_err(|e| format!("{}: {e}", path.display()))?;
        written.push(path);
    }
    Ok(written)
}

/// How to hand the keys to the VMs, for Envoy and for Istio.
pub fn key_instructions(dir: &Path, specs: &[KeySpec], envoy_config: &Path) -> String {
    let mut out = String::from(
        "Envoy: the rendered config lists these variables in each VM's\n\
         vm_config.environment_variables.host_env_keys; start Envoy with them set:\n\n  ",
    );
    for spec in specs {
        out.push_str(&format!(
            "{}=\"$(cat {})\" \\\n  ",
            spec.env,
            dir.join(spec.file).display()
        ));
    }
    out.push_str(&format!(
        "envoy -c {} --disable-hot-restart\n\n",
        envoy_config.display()
    ));
    out.push_str(
        "Istio: put the files in a Kubernetes Secret, expose it to the istio-proxy container's\n\
         environment, and let each WasmPlugin read it from the host (vmConfig.env):\n\n",
    );
    out.push_str("  kubectl create secret generic phi-guard-keys");
    for spec in specs {
        out.push_str(&format!(
            " \\\n    --from-file={}={}",
            spec.env,
            dir.join(spec.file).display()
        ));
    }
    out.push_str("\n\n  # WasmPlugin spec:\n  vmConfig:\n    env:\n");
    for spec in specs {
        out.push_str(&format!(
            "    - name: {}          # {}\n      valueFrom: HOST\n",
            spec.env, spec.purpose
        ));
    }
    out
}

/// `bytes` random bytes from the OS, as lower-case hex: a key's file contents (the key is
/// the hex text itself, `2 * bytes` characters).
pub fn random_hex(bytes: usize) -> Result<String, getrandom::Error> {
    let mut raw = vec![0u8; bytes];
    getrandom::fill(&mut raw)?;
    Ok(phi_guard_common::hex::encode(&raw))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_demo_api_is_read_with_its_tags() {
        let api = Api::from_descriptor_set(phi_guard_proto::DESCRIPTOR_SET).unwrap();
        let paths: Vec<String> = api.methods.iter().map(Method::path).collect();
        assert!(paths.contains(&"health.v1.PatientService/GetPatient".to_string()));
        let field = |p: &str| api.fields.iter().find(|f| f.path == p).unwrap().clone();
        assert_eq!(field("health.v1.Patient.ssn").class.as_deref(), Some("SSN"));
        assert_eq!(field("health.v1.Patient.patient_id").class, None);
        assert_eq!(
            field("health.v1.Patient.allergy_codes").kind,
            "repeated varint"
        );
    }

    #[test]
    fn the_starter_denies_everything_and_lists_untagged_fields() {
        let api = Api::from_descriptor_set(phi_guard_proto::DESCRIPTOR_SET).unwrap();
        let files = starter(&api, "patients", "example.test");
        let file = |n: &str| files.iter().find(|f| f.name == n).unwrap().text.clone();
        let policy = file("policy.json");
        phi_guard_rbac::policy::Policy::parse(policy.as_bytes()).unwrap();
        let policy: Value = serde_json::from_str(&policy).unwrap();
        assert_eq!(policy["rules"], json!([]));
        let tests: Value = serde_json::from_str(&file("policy.test.json")).unwrap();
        assert_eq!(tests["cases"].as_array().unwrap().len(), api.methods.len());
        let fields = file("mask.fields.txt");
        assert!(fields.contains("patient_id"), "{fields}");
        // Untagged in the demo proto; its name says it identifies a patient, so init suggests a
        // class for it (the user confirms or drops the entry).
        assert!(
            fields
                .lines()
                .any(|l| l.contains("patient_id") && l.ends_with("UNTAGGED  catalog: OTHER_ID?")),
            "{fields}"
        );
        assert!(fields
            .lines()
            .any(|l| l.trim_start().starts_with("ssn ") && l.ends_with(" SSN")));
        let project: crate::render::ProjectFile = toml::from_str(&file("phi-guard.toml")).unwrap();
        assert_eq!(project.trust.domain, "example.test");
    }

    #[test]
    fn the_starter_catalog_tags_untagged_fields_by_name_and_builds_against_the_set() {
        // Google's FHIR protos carry no phi.v1 annotation: every field starts untagged.
        let set = phi_guard_proto::fhir::DESCRIPTOR_SET;
        let api = Api::from_descriptor_set(set).unwrap();
        let files = starter(&api, "fhir", "example.test");
        let file = |n: &str| files.iter().find(|f| f.name == n).unwrap().text.clone();
        let mask: Value = serde_json::from_str(&file("mask.json")).unwrap();
        let entry = |field: &str| {
            mask["catalog"]
                .as_array()
                .unwrap()
                .iter()
                .find(|e| e["field"] == field)
                .map(|e| e["class"].as_str().unwrap().to_string())
        };
        assert_eq!(
            entry("google.fhir.r4.core.Patient.birth_date").as_deref(),
            Some("DOB")
        );
        assert_eq!(
            entry("google.fhir.r4.core.HumanName.family").as_deref(),
            Some("NAME")
        );
        assert_eq!(
            entry("google.fhir.r4.core.Address.postal_code").as_deref(),
            Some("ZIP")
        );
        assert_eq!(entry("google.fhir.r4.core.Patient.gender"), None);
        // The skeleton is a config the filter accepts against the same set.
        let config = phi_guard_mask::config::MaskConfig::parse_with_descriptor_set(
            file("mask.json").as_bytes(),
            set,
            &[],
            &|_| None,
        )
        .unwrap();
        let dob = config
            .catalog
            .field_class("google.fhir.r4.core.Patient", "birth_date")
            .unwrap();
        assert_eq!(config.class_names[&dob], "DOB");
        let fields = file("mask.fields.txt");
        assert!(
            fields
                .lines()
                .any(|l| l.trim_start().starts_with("birth_date ")
                    && l.ends_with("UNTAGGED  catalog: DOB?")),
            "{fields}"
        );
        assert!(fields
            .lines()
            .any(|l| l.trim_start().starts_with("gender ") && l.ends_with("UNTAGGED")));
    }

    /// The labs example's set as `phi-guard protoset` builds it: with every import, so with
    /// google/protobuf/descriptor.proto (phi/v1/annotations.proto extends FieldOptions).
    fn labs_set() -> Vec<u8> {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let mut compiler =
            protox::Compiler::new([root.join("examples/labs/proto"), root.join("proto")]).unwrap();
        compiler.include_imports(true).include_source_info(false);
        compiler.open_files(["labs/v1/labs.proto"]).unwrap();
        compiler.encode_file_descriptor_set()
    }

    #[test]
    fn init_lists_only_the_fields_the_services_reach() {
        let set = labs_set();
        let pool = phi_guard_mask::descriptor::DescriptorSet::decode(&set).unwrap();
        assert!(
            pool.messages
                .contains_key("google.protobuf.DescriptorProto"),
            "the set holds descriptor.proto, as protoset builds it"
        );
        let api = Api::from_descriptor_set(&set).unwrap();
        let paths: Vec<&str> = api.fields.iter().map(|f| f.path.as_str()).collect();
        assert!(paths.iter().all(|p| p.starts_with("labs.v1.")), "{paths:?}");
        // GetResultRequest 1, DeleteResultRequest 1, DeleteResultResponse 1, LabResult 9.
        assert_eq!(api.fields.len(), 12, "{paths:?}");
        let untagged: Vec<&str> = api
            .fields
            .iter()
            .filter(|f| f.class.is_none())
            .map(|f| f.path.as_str())
            .collect();
        assert_eq!(
            untagged,
            [
                "labs.v1.DeleteResultRequest.result_id",
                "labs.v1.DeleteResultResponse.deleted",
                "labs.v1.GetResultRequest.result_id",
                "labs.v1.LabResult.result_id",
                "labs.v1.LabResult.test_code",
                "labs.v1.LabResult.unit",
            ]
        );
        let files = starter(&api, "labs", "labs.example");
        let file = |n: &str| files.iter().find(|f| f.name == n).unwrap().text.clone();
        // docs/ADOPTING.md: every sensitive field is annotated, so the catalog starts empty.
        let mask: Value = serde_json::from_str(&file("mask.json")).unwrap();
        assert_eq!(mask["catalog"], json!([]));
        let fields = file("mask.fields.txt");
        assert!(!fields.contains("google.protobuf"), "{fields}");
    }

    #[test]
    fn the_starter_policy_tests_pass_through_listener_jwt_and_rbac() {
        let api = Api::from_descriptor_set(phi_guard_proto::DESCRIPTOR_SET).unwrap();
        let dir = std::env::temp_dir().join(format!("phi-guard-init-tests-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for f in starter(&api, "patients", "example.test") {
            std::fs::write(dir.join(f.name), f.text).unwrap();
        }
        let cases = dir.join("policy.test.json");
        let suite: Value = serde_json::from_slice(&std::fs::read(&cases).unwrap()).unwrap();
        assert_eq!(suite["jwt_config"], "jwt.json");
        assert_eq!(suite["listener"]["trust_domain"], "example.test");
        let args = ["test".to_string(), cases.to_string_lossy().into_owned()];
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let code = phi_guard_policy_cli::run(&args, &mut out, &mut err);
        let _ = std::fs::remove_dir_all(&dir);
        let out = String::from_utf8_lossy(&out);
        assert_eq!(
            (code, out.trim()),
            (
                0,
                format!("{} passed, 0 failed", api.methods.len()).as_str()
            ),
            "{}",
            String::from_utf8_lossy(&err)
        );
    }

    #[test]
    fn init_suggests_a_class_for_plural_and_camel_case_names() {
        let dir = std::env::temp_dir().join(format!("phi-guard-init-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("care/v1")).unwrap();
        std::fs::write(
            dir.join("care/v1/care.proto"),
            r#"syntax = "proto3";
package care.v1;
service Care { rpc Get(GetRequest) returns (Visit); }
message GetRequest { string visit_id = 1; }
message Visit {
  repeated string caregiver_phones = 1;
  repeated string emails = 2;
  string phoneNumber = 3;
  string medical_record_number = 4;
  string patient_id = 5;
  string status = 6;
  string gender = 7;
  Contact contact = 8;
}
message Contact { repeated string addresses = 1; }
message Unused { string ssn = 1; }
"#,
        )
        .unwrap();
        let mut compiler = protox::Compiler::new([&dir]).unwrap();
        compiler.include_imports(true).include_source_info(false);
        compiler.open_files(["care/v1/care.proto"]).unwrap();
        let set = compiler.encode_file_descriptor_set();
        std::fs::remove_dir_all(&dir).unwrap();
        let api = Api::from_descriptor_set(&set).unwrap();
        let files = starter(&api, "care", "care.example");
        let mask: Value =
            serde_json::from_str(&files.iter().find(|f| f.name == "mask.json").unwrap().text)
                .unwrap();
        let catalog: Vec<(String, String)> = mask["catalog"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                (
                    e["field"].as_str().unwrap().to_string(),
                    e["class"].as_str().unwrap().to_string(),
                )
            })
            .collect();
        let expected: Vec<(String, String)> = [
            ("care.v1.Contact.addresses", "ADDRESS"),
            ("care.v1.Visit.caregiver_phones", "PHONE"),
            ("care.v1.Visit.emails", "EMAIL"),
            ("care.v1.Visit.phoneNumber", "PHONE"),
            ("care.v1.Visit.medical_record_number", "MRN"),
            ("care.v1.Visit.patient_id", "OTHER_ID"),
        ]
        .iter()
        .map(|(f, c)| (f.to_string(), c.to_string()))
        .collect();
        assert_eq!(catalog, expected);
        // `Unused` is reached by no method: not listed, no entry.
        assert!(api
            .fields
            .iter()
            .all(|f| !f.path.starts_with("care.v1.Unused")));
    }

    #[test]
    fn keys_are_random_hex_of_the_required_length_and_private() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = std::env::temp_dir().join(format!("phi-guard-keys-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let keys = crate::render::KeyEnv {
            audit: "A".into(),
            mask_token: "M".into(),
        };
        let specs = key_specs(&keys, &json!({}));
        assert_eq!(specs.len(), 2);
        let replay = key_specs(&keys, &json!({"replay": {"key_env": "R"}}));
        assert_eq!(replay.last().unwrap().env, "R");
        let written = write_keys(&dir, &specs, false).unwrap();
        let mut texts = Vec::new();
        for (path, spec) in written.iter().zip(&specs) {
            let text = std::fs::read_to_string(path).unwrap();
            assert_eq!(text.len(), 2 * spec.bytes);
            assert!(spec.bytes >= 32);
            assert!(text.bytes().all(|b| b.is_ascii_hexdigit()));
            let mode = std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600);
            texts.push(text);
        }
        assert_ne!(texts[0], texts[1]);
        assert!(
            write_keys(&dir, &specs, false).is_err(),
            "no silent overwrite"
        );
        write_keys(&dir, &specs, true).unwrap();
        assert_ne!(std::fs::read_to_string(&written[0]).unwrap(), texts[0]);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
