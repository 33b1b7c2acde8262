//! The `phi-guard-mask` tool: build and prune, coverage, lint, apply, as a
//! library and as the binary a CI pipeline runs.
#[path = "../../../filters/mask/tests/support/mod.rs"]
mod support;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;

use phi_guard_mask::rewriter::Counts;
use phi_guard_mask_cli::{self as tool, build, coverage, lint, Session};
use prost::Message;
use support::{CANARY_PHONE, CANARY_SSN, KEY, KEY_ENV};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_phi-guard-mask"));
    c.env(KEY_ENV, KEY);
    c
}

fn tmp(name: &str) -> PathBuf {
    let dir = repo().join("target/tool-tests");
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

/// The demo policy without its descriptor set, written to a file.
fn policy_file() -> PathBuf {
    let path = tmp("policy.demo.json");
    std::fs::write(
        &path,
        include_str!("../../../filters/mask/policy.demo.json"),
    )
    .unwrap();
    path
}

fn demo_session(message_type: Option<&str>) -> Session {
    std::env::set_var(KEY_ENV, KEY);
    Session::new(
        include_str!("../../../filters/mask/policy.demo.json").as_bytes(),
        Some(support::descriptor_set()),
        message_type,
    )
    .unwrap()
}

fn gunzip(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(bytes)
        .read_to_end(&mut out)
        .unwrap();
    out
}

fn full_fhir_set() -> Vec<u8> {
    gunzip(&std::fs::read(repo().join("proto/fhir/google-fhir-r4-0.11.0.pb.gz")).unwrap())
}

#[test]
fn the_committed_fhir_set_is_what_the_script_builds() {
    // scripts/fhir-descriptors: the full set extracted from Google's wheels (committed,
    // gzip), then `build` of our service against it. Offline: only the second half reruns.
    let full = full_fhir_set();
    let compiled = build::compile(
        &[PathBuf::from("phi/fhir/v1/fhir_service.proto")],
        &[repo().join("proto")],
        std::slice::from_ref(&full),
    )
    .unwrap();
    let pruned = build::prune(
        &compiled,
        &["phi.fhir.v1.FhirService".into()],
        &["google.fhir.r4.core.RelatedPerson".into()],
    )
    .unwrap();
    let committed = std::fs::read(repo().join("proto/fhir/r4.pb")).unwrap();
    assert!(
        pruned.set == committed,
        "proto/fhir/r4.pb is stale: run scripts/fhir-descriptors"
    );
    assert_eq!(committed, phi_guard_proto::fhir::DESCRIPTOR_SET);
}

#[test]
fn pruning_keeps_the_closure_and_options_and_drops_the_rest() {
    let full = full_fhir_set();
    let patient = build::prune(&full, &[], &["google.fhir.r4.core.Patient".into()]).unwrap();
    let bundle = build::prune(&full, &[], &["google.fhir.r4.core.Bundle".into()]).unwrap();
    eprintln!(
        "FHIR R4 full set {} bytes; Patient closure {} bytes ({} messages); Bundle closure {} bytes ({} messages)",
        full.len(),
        patient.set.len(),
        patient.messages,
        bundle.set.len(),
        bundle.messages
    );
    assert!(patient.set.len() < bundle.set.len() && bundle.set.len() < full.len());
    let pool = prost_reflect::DescriptorPool::decode(patient.set.as_slice()).unwrap();
    assert!(pool
        .get_message_by_name("google.fhir.r4.core.HumanName")
        .is_some());
    assert!(pool
        .get_message_by_name("google.fhir.r4.core.Observation")
        .is_none());
    assert!(pool.get_file_by_name("google/protobuf/any.proto").is_some());
    // FHIR's own annotations (field options) travel with the kept types, byte for byte.
    let value_regex = pool
        .get_message_by_name("google.fhir.r4.core.Id")
        .unwrap()
        .options();
    assert!(
        !value_regex.encode_to_vec().is_empty(),
        "message options kept"
    );

    // The demo set pruned to PatientService keeps the phi.v1.sensitivity annotations.
    let demo = build::prune(
        support::descriptor_set(),
        &["health.v1.PatientService".into()],
        &[],
    )
    .unwrap();
    let cfg = phi_guard_mask::MaskConfig::parse(
        &serde_json::to_vec(&serde_json::json!({
            "descriptor_set": base64::Engine::encode(&base64::engine::general_purpose::STANDARD, &demo.set),
            "roles": {"nurse": {"*": "redact"}},
        }))
        .unwrap(),
        &|_| None,
    )
    .unwrap();
    assert!(cfg.plans.method(support::GET_PATIENT).is_some());
    assert!(build::prune(support::descriptor_set(), &["no.Such".into()], &[]).is_err());
}

#[test]
fn coverage_lists_every_field_with_each_roles_action() {
    let session = demo_session(None);
    let report =
        coverage::coverage(&session, &["health.v1.PatientService/GetPatient".into()]).unwrap();
    assert_eq!(report.len(), 1);
    let row = |path: &str| {
        report[0]
            .rows
            .iter()
            .find(|r| r.path == path)
            .unwrap_or_else(|| panic!("{path}"))
    };
    let ssn = row("ssn");
    assert_eq!(ssn.class.as_deref(), Some("SSN"));
    assert_eq!(ssn.actions["nurse"], "partial(4)");
    assert_eq!(ssn.actions["billing"], "reveal");
    assert_eq!(ssn.actions["research"], "remove");
    assert_eq!(ssn.actions["default"], "remove");
    assert_eq!(
        row("contacts[].email").actions["nurse"],
        "redact(\"[redacted]\")"
    );
    assert_eq!(row("identifiers[].value").class.as_deref(), Some("MRN"));
    assert_eq!(
        row("identifiers[].key").class,
        None,
        "map keys stay readable"
    );
    assert_eq!(row("tenant").class, None);
    assert_eq!(row("patient_id").class, None);
    assert_eq!(row("allergy_codes[]").kind, "number");

    let text = coverage::to_text(&report);
    assert!(text.contains("  ssn  (string)  SSN  billing=reveal default=remove nurse=partial(4) research=remove\n"), "{text}");
    assert!(text.contains("  tenant  (string)  untagged\n"), "{text}");
    let json = coverage::to_json(&report);
    assert_eq!(
        json["methods"][0]["method"],
        "health.v1.PatientService/GetPatient"
    );
    assert!(json["methods"][0]["fields"]
        .as_array()
        .unwrap()
        .iter()
        .any(|f| f["path"] == "ssn" && f["class"] == "SSN"));

    // The binary prints the same report.
    let out = bin()
        .args(["coverage", "--policy"])
        .arg(policy_file())
        .arg("--descriptor-set")
        .arg(write_demo_set())
        .args(["--method", "health.v1.PatientService/GetPatient"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8(out.stdout).unwrap(), text);
}

fn write_demo_set() -> PathBuf {
    let path = tmp("demo.pb");
    std::fs::write(&path, support::descriptor_set()).unwrap();
    path
}

#[test]
fn lint_fails_on_an_untagged_ssn_field() {
    let set = build::compile(
        &[PathBuf::from("lint/v1/untagged.proto")],
        &[
            Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/protos"),
            repo().join("proto"),
        ],
        &[],
    )
    .unwrap();
    let set_path = tmp("untagged.pb");
    std::fs::write(&set_path, &set).unwrap();
    let policy = tmp("lint-policy.json");
    std::fs::write(&policy, r#"{"roles": {"billing": {"*": "reveal"}}}"#).unwrap();

    let session =
        Session::new(std::fs::read(&policy).unwrap().as_slice(), Some(&set), None).unwrap();
    let report = coverage::coverage(&session, &[]).unwrap();
    let findings = lint::by_name(&report, &[]);
    assert_eq!(findings.len(), 1, "{findings:?}");
    assert_eq!(
        (findings[0].path.as_str(), findings[0].kind.as_str()),
        ("ssn", "ssn")
    );
    assert!(lint::by_name(&report, &["lint.v1.Member.ssn".into()]).is_empty());

    let run = |extra: &[&str]| {
        bin()
            .args(["lint", "--policy"])
            .arg(&policy)
            .arg("--descriptor-set")
            .arg(&set_path)
            .args(extra)
            .output()
            .unwrap()
    };
    let out = run(&[]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "lint must fail: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(
        stdout.contains("lint.v1.MemberService/GetMember: ssn (lint.v1.Member.ssn) looks like ssn"),
        "{stdout}"
    );
    assert_eq!(
        run(&["--allow", "lint.v1.Member.ssn"]).status.code(),
        Some(0)
    );

    // A sample message: an untagged free-text field holding a phone number is a finding too;
    // the value itself is never printed.
    let sample = tmp("member.json");
    std::fs::write(
        &sample,
        format!(r#"{{"memberId": "M-1", "comments": "call {CANARY_PHONE}"}}"#),
    )
    .unwrap();
    let out = run(&[
        "--allow",
        "lint.v1.Member.ssn",
        "--sample",
        sample.to_str().unwrap(),
        "--type",
        "lint.v1.Member",
        "--json",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(
        stdout.contains("comments (lint.v1.Member.comments) looks like PHONE [sample]"),
        "{stdout}"
    );
    assert!(!stdout.contains(CANARY_PHONE));
    assert!(stdout.contains("1 finding(s)"), "{stdout}");
    // The synthetic method through which the sample type is planned is no part of the API:
    // without --allow, the ssn is found once (GetMember), not again under it.
    let out = run(&[
        "--sample",
        sample.to_str().unwrap(),
        "--type",
        "lint.v1.Member",
        "--json",
    ]);
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(!stdout.contains("phi_guard_mask.tool"), "{stdout}");
    assert!(stdout.contains("2 finding(s)"), "{stdout}");
}

#[test]
fn apply_masks_offline_with_the_filters_core() {
    let session = demo_session(Some("health.v1.Patient"));
    let patient = support::patient().encode_to_vec();
    let mut counts = Counts::default();
    let nurse = session.mask("nurse", &patient, &mut counts).unwrap();
    let text = String::from_utf8_lossy(&nurse);
    assert!(!text.contains(CANARY_SSN) && text.contains("***-**-1234"));
    // Byte for byte what the filter's rewriter produces for GetPatient.
    let cfg = support::demo_config();
    let (_, block) = cfg.policy.for_role(Some("nurse"));
    let mut expected = Vec::new();
    cfg.rewriter(block)
        .rewrite(
            cfg.plans.method(support::GET_PATIENT).unwrap(),
            &patient,
            &mut expected,
            &mut Counts::default(),
        )
        .unwrap();
    assert_eq!(nurse, expected);
    let unknown = session
        .mask("intern", &patient, &mut Counts::default())
        .unwrap();
    assert!(
        !String::from_utf8_lossy(&unknown).contains("Canarysmith"),
        "unknown role: default block"
    );

    // The binary: a length-delimited dump of three patients, as research.
    let mut dump = Vec::new();
    for _ in 0..3 {
        tool::put_delimited(&mut dump, &patient);
    }
    let input = tmp("patients.bin");
    let output = tmp("patients.research.bin");
    std::fs::write(&input, &dump).unwrap();
    let out = bin()
        .args(["apply", "--policy"])
        .arg(policy_file())
        .arg("--descriptor-set")
        .arg(write_demo_set())
        .args([
            "--type",
            "health.v1.Patient",
            "--role",
            "research",
            "--delimited",
            "-i",
        ])
        .arg(&input)
        .arg("-o")
        .arg(&output)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let masked = std::fs::read(&output).unwrap();
    let messages = tool::split_delimited(&masked).unwrap();
    assert_eq!(messages.len(), 3);
    for m in messages {
        let p = phi_guard_proto::health::v1::Patient::decode(m).unwrap();
        assert!(p.ssn.is_empty());
        assert!(p
            .name
            .is_none_or(|n| n.family.is_empty() && n.given.is_empty()));
        assert!(p.mrn.starts_with("tok_"));
    }
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(
        stderr.contains("masked as research:") && stderr.contains("SSN/remove=3"),
        "{stderr}"
    );

    // JSON in, JSON out (proto3 JSON through prost-reflect).
    let json = tool::to_json(&session.pool, "health.v1.Patient", &patient).unwrap();
    let out = bin()
        .args(["apply", "--policy"])
        .arg(policy_file())
        .arg("--descriptor-set")
        .arg(write_demo_set())
        .args(["--type", "health.v1.Patient", "--role", "nurse", "--json"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write;
            child.stdin.take().unwrap().write_all(json.as_bytes())?;
            child.wait_with_output()
        })
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["ssn"], "***-**-1234");
    assert_eq!(v["contacts"][0]["email"], "[redacted]");
}

/// The FHIR demo's policy (`policy.fhir.json`: catalog entries only, no proto edited) over
/// `set`.
fn fhir_session(set: &[u8], message_type: Option<&str>) -> Session {
    std::env::set_var(KEY_ENV, KEY);
    Session::new(
        include_str!("../../../filters/mask/policy.fhir.json").as_bytes(),
        Some(set),
        message_type,
    )
    .unwrap()
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// A Bundle (searchset) holding the demo Patient and three Observations, as a production dump
/// would.
fn fhir_bundle(pool: &prost_reflect::DescriptorPool) -> Vec<u8> {
    use phi_guard_proto::fhir;
    let mut entries = vec![serde_json::json!({"resource": {"patient": fhir::patient_json()}})];
    for i in 0..3 {
        entries.push(serde_json::json!({"resource": {"observation": fhir::observation_json(i)}}));
    }
    let doc = serde_json::json!({"type": {"value": "SEARCHSET"}, "entry": entries});
    tool::from_json(pool, "google.fhir.r4.core.Bundle", &doc.to_string()).unwrap()
}

#[test]
fn apply_round_trips_a_fhir_bundle_dump() {
    use phi_guard_proto::fhir::canary;
    let bundle_set = build::prune(
        &full_fhir_set(),
        &[],
        &["google.fhir.r4.core.Bundle".into()],
    )
    .unwrap()
    .set;
    let session = fhir_session(&bundle_set, Some("google.fhir.r4.core.Bundle"));
    let bundle = fhir_bundle(&session.pool);
    for c in canary::ALL {
        assert!(contains(&bundle, c.as_bytes()), "the dump carries {c}");
    }
    // billing reveals everything: byte for byte the dump.
    let billing = session
        .mask("billing", &bundle, &mut Counts::default())
        .unwrap();
    assert_eq!(billing, bundle);
    // research and safe_harbor: no canary survives, the clinical value does, the result is a
    // valid Bundle.
    for role in ["research", "safe_harbor", "intern"] {
        let mut counts = Counts::default();
        let masked = session.mask(role, &bundle, &mut counts).unwrap();
        for c in canary::ALL {
            assert!(!contains(&masked, c.as_bytes()), "{role} sees {c}");
        }
        assert!(
            !contains(&masked, &phi_guard_proto::fhir::birth_date_bytes()),
            "{role} sees the birth date"
        );
        let json = tool::to_json(&session.pool, "google.fhir.r4.core.Bundle", &masked).unwrap();
        if role != "intern" {
            assert!(
                json.contains("38.4"),
                "{role} keeps the observation's value: {json}"
            );
        }
    }
    // nurse: last four of the SSN and phone, the MRN in full, the e-mail redacted.
    let nurse = session
        .mask("nurse", &bundle, &mut Counts::default())
        .unwrap();
    assert!(!contains(&nurse, canary::SSN.as_bytes()) && contains(&nurse, b"***-**-4321"));
    assert!(contains(&nurse, canary::MRN.as_bytes()));
    assert!(!contains(&nurse, canary::EMAIL.as_bytes()));

    // The binary: a length-delimited dump in, the same out for billing; JSON Lines for research.
    let mut dump = Vec::new();
    tool::put_delimited(&mut dump, &bundle);
    tool::put_delimited(&mut dump, &bundle);
    let set_path = tmp("bundle.pb");
    std::fs::write(&set_path, &bundle_set).unwrap();
    let policy = tmp("policy.fhir.json");
    std::fs::write(
        &policy,
        include_str!("../../../filters/mask/policy.fhir.json"),
    )
    .unwrap();
    let input = tmp("bundles.bin");
    std::fs::write(&input, &dump).unwrap();
    let run = |role: &str, output: &Path| {
        bin()
            .args(["apply", "--policy"])
            .arg(&policy)
            .arg("--descriptor-set")
            .arg(&set_path)
            .args([
                "--type",
                "google.fhir.r4.core.Bundle",
                "--role",
                role,
                "--delimited",
                "-i",
            ])
            .arg(&input)
            .arg("-o")
            .arg(output)
            .output()
            .unwrap()
    };
    let out_billing = tmp("bundles.billing.bin");
    assert!(run("billing", &out_billing).status.success());
    assert_eq!(std::fs::read(&out_billing).unwrap(), dump, "round trip");
    let out_sh = tmp("bundles.safe_harbor.bin");
    let out = run("safe_harbor", &out_sh);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let masked = std::fs::read(&out_sh).unwrap();
    assert_eq!(tool::split_delimited(&masked).unwrap().len(), 2);
    for c in canary::ALL {
        assert!(!contains(&masked, c.as_bytes()), "safe_harbor dump has {c}");
    }
}

#[test]
fn coverage_and_lint_of_the_fhir_demo_service() {
    let session = fhir_session(phi_guard_proto::fhir::DESCRIPTOR_SET, None);
    let report =
        coverage::coverage(&session, &["phi.fhir.v1.FhirService/GetPatient".into()]).unwrap();
    let rows = &report[0].rows;
    let find = |pred: &dyn Fn(&coverage::Row) -> bool| rows.iter().find(|r| pred(r)).cloned();
    let ssn = find(&|r| r.path.starts_with("identifier[]<") && r.class.as_deref() == Some("SSN"))
        .expect("SSN condition row");
    assert_eq!(ssn.kind, "condition");
    assert_eq!(ssn.actions["nurse"], "partial(4)");
    assert_eq!(ssn.actions["safe_harbor"], "remove");
    let birth = find(&|r| r.path == "birth_date").unwrap();
    assert_eq!(birth.class.as_deref(), Some("DOB"));
    assert_eq!(find(&|r| r.path == "contained[]").unwrap().kind, "any");
    let text = coverage::to_text(&report);
    assert!(
        text.contains("  gender.value  (number)  untagged\n"),
        "{text}"
    );

    // With the catalog, lint passes on GetPatient once the coded fields that only look like
    // identifiers by name (a contact point's system, use and rank; an identifier's use) are
    // allowed; it found `deceased`, `photo` and `multiple_birth` untagged before the catalog
    // had them.
    let allow: Vec<String> = [
        "google.fhir.r4.core.ContactPoint.SystemCode.",
        "google.fhir.r4.core.ContactPoint.UseCode.",
        "google.fhir.r4.core.Identifier.UseCode.",
        "google.fhir.r4.core.PositiveInt.",
        // Reference ids name resources (Patient/fp-0001), which rbac and audit govern.
        "google.fhir.r4.core.Reference.",
        "google.fhir.r4.core.Identifier.system",
        "google.fhir.r4.core.Identifier.id",
        "google.fhir.r4.core.ContactPoint.id",
        "google.fhir.r4.core.Period.",
        // Names of definitions (ParameterDefinition.name …) an extension may hold.
        "path:extension[].value.",
    ]
    .map(String::from)
    .to_vec();
    let findings = lint::by_name(&report, &allow);
    assert!(findings.is_empty(), "{findings:?}");
    // A catalog without the SSN rule: lint finds nothing by name (Identifier.value is
    // OTHER_ID), but the sample's SSN-shaped values are still under OTHER_ID, so they are
    // tagged; drop the whole Identifier catalog and lint names `identifier[].value`.
    let mut doc: serde_json::Value =
        serde_json::from_str(include_str!("../../../filters/mask/policy.fhir.json")).unwrap();
    doc["catalog"]
        .as_array_mut()
        .unwrap()
        .retain(|e| e["field"] != "google.fhir.r4.core.Identifier.value");
    let bare = Session::new(
        doc.to_string().as_bytes(),
        Some(phi_guard_proto::fhir::DESCRIPTOR_SET),
        Some("google.fhir.r4.core.Patient"),
    )
    .unwrap();
    let report = coverage::coverage(&bare, &["phi.fhir.v1.FhirService/GetPatient".into()]).unwrap();
    let findings = lint::by_name(&report, &[]);
    assert!(
        findings
            .iter()
            .any(|f| f.path == "identifier[].value.value" || f.path == "identifier[].value"),
        "{findings:?}"
    );
    let desc = bare
        .pool
        .get_message_by_name("google.fhir.r4.core.Patient")
        .unwrap();
    let sample =
        prost_reflect::DynamicMessage::decode(desc, phi_guard_proto::fhir::patient().as_slice())
            .unwrap();
    let found = lint::by_sample(&bare, "sample", &sample);
    assert!(
        found
            .iter()
            .any(|f| f.kind == "SSN" && f.path.starts_with("identifier")),
        "{found:?}"
    );
}

fn plain_set() -> (Vec<u8>, PathBuf) {
    let set = build::compile(
        &[PathBuf::from("lint/v1/plain.proto")],
        &[Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/protos")],
        &[],
    )
    .unwrap();
    let path = tmp("plain.pb");
    std::fs::write(&path, &set).unwrap();
    (set, path)
}

/// The labs example's set, as docs/ADOPTING.md §1 builds it (descriptor.proto included).
fn labs_set() -> PathBuf {
    let set = build::compile(
        &[PathBuf::from("labs/v1/labs.proto")],
        &[repo().join("examples/labs/proto"), repo().join("proto")],
        &[],
    )
    .unwrap();
    let path = tmp("labs.pb");
    std::fs::write(&path, &set).unwrap();
    path
}

/// docs/ADOPTING.md §6's mask.json, as the guide writes it: `research` uses `token`, and the
/// file names no `token_key_env` (render adds it).
const ADOPTING_MASK: &str = r#"{
  "max_message_bytes": 4194304,
  "roles": {
    "lab_tech": {"*": "reveal"},
    "physician": {
      "NAME": "reveal", "DOB": "reveal", "MRN": "reveal", "CLINICAL": "reveal",
      "FREE_TEXT": "reveal",
      "SSN": {"action": "partial", "keep_last": 4},
      "*": "remove"
    },
    "research": {
      "MRN": "token", "CLINICAL": "reveal", "FREE_TEXT": "redact", "*": "remove"
    }
  },
  "default": {"*": "remove"}
}"#;

/// The binary with no token key in its environment.
fn bare_bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_phi-guard-mask"));
    c.env_remove(KEY_ENV).env_remove("LINT_TEST_UNSET_KEY");
    c
}

#[test]
fn lint_works_on_an_untagged_api_and_a_default_only_policy() {
    let (set, set_path) = plain_set();
    for policy in [r#"{"default": {"*": "remove"}}"#, r#"{"roles": {}}"#, "{}"] {
        let session = Session::inspect(policy.as_bytes(), Some(&set), None).unwrap();
        let report = coverage::coverage(&session, &[]).unwrap();
        assert!(!report[0].planned);
        let mut found: Vec<(String, String)> = lint::by_name(&report, &[])
            .into_iter()
            .map(|f| (f.path, f.kind))
            .collect();
        found.sort();
        let expected: Vec<(String, String)> = [
            ("caregiver_phones[]", "phone"),
            ("contact.addresses[]", "address"),
            ("contact.phones[]", "phone"),
            ("emails[]", "email"),
            ("medical_record_number", "mrn"),
            ("patient_id", "identifier"),
            ("phoneNumber", "phone"),
        ]
        .iter()
        .map(|(p, k)| (p.to_string(), k.to_string()))
        .collect();
        assert_eq!(found, expected, "{policy}");
    }
    // The filter itself still refuses a set with nothing to mask, and `apply` with it.
    assert!(Session::new(br#"{"roles": {}}"#, Some(&set), None).is_err());

    let policy = tmp("plain-default-only.json");
    std::fs::write(&policy, r#"{"default": {"*": "remove"}}"#).unwrap();
    let out = bare_bin()
        .args(["lint", "--policy"])
        .arg(&policy)
        .arg("--descriptor-set")
        .arg(&set_path)
        .output()
        .unwrap();
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert_eq!(
        out.status.code(),
        Some(1),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains(
            "plain.v1.VisitService/GetVisit: caregiver_phones[] (plain.v1.Visit.caregiver_phones) looks like phone [name]"
        ),
        "{stdout}"
    );
    assert!(stdout.contains("7 finding(s)"), "{stdout}");
    assert!(!stdout.contains("status"), "{stdout}");
    let out = bare_bin()
        .args(["coverage", "--policy"])
        .arg(&policy)
        .arg("--descriptor-set")
        .arg(&set_path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(
        stdout.contains("(nothing to mask: responses pass unchanged)"),
        "{stdout}"
    );
    assert!(
        stdout.contains("  caregiver_phones[]  (string)  untagged\n"),
        "{stdout}"
    );
}

#[test]
fn coverage_and_lint_take_the_adopting_policy_without_the_token_key() {
    let set = labs_set();
    let policy = tmp("adopting-mask.json");
    let run = |doc: &str, cmd: &str, env: Option<(&str, &str)>| {
        std::fs::write(&policy, doc).unwrap();
        let mut c = bare_bin();
        c.arg(cmd)
            .arg("--policy")
            .arg(&policy)
            .arg("--descriptor-set")
            .arg(&set);
        if let Some((k, v)) = env {
            c.env(k, v);
        }
        c.output().unwrap()
    };
    let with_env = |var: &str| {
        let mut doc: serde_json::Value = serde_json::from_str(ADOPTING_MASK).unwrap();
        doc["token_key_env"] = var.into();
        doc.to_string()
    };
    let cases = [
        // No token_key_env in the policy.
        (ADOPTING_MASK.to_string(), None),
        // One that is not set.
        (with_env("LINT_TEST_UNSET_KEY"), None),
        // One that holds fewer than 32 bytes.
        (
            with_env("LINT_TEST_UNSET_KEY"),
            Some(("LINT_TEST_UNSET_KEY", "short")),
        ),
    ];
    for (doc, env) in &cases {
        for cmd in ["coverage", "lint"] {
            let out = run(doc, cmd, *env);
            let stderr = String::from_utf8_lossy(&out.stderr);
            let stdout = String::from_utf8_lossy(&out.stdout);
            assert_eq!(
                out.status.code(),
                Some(0),
                "{cmd} {env:?}: {stderr}{stdout}"
            );
            if cmd == "coverage" {
                assert!(
                    stdout.contains("  mrn  (string)  MRN  default=remove lab_tech=reveal physician=reveal research=token\n"),
                    "{stdout}"
                );
            } else {
                assert!(stdout.contains("ok: no untagged field"), "{stdout}");
            }
        }
        // `apply` masks values: it needs the real key, and says so in the command's terms.
        let sample = tmp("labs-result.json");
        std::fs::write(&sample, r#"{"mrn": "MRN-1"}"#).unwrap();
        std::fs::write(&policy, doc).unwrap();
        let mut c = bare_bin();
        c.args([
            "apply",
            "--type",
            "labs.v1.LabResult",
            "--role",
            "research",
            "--json",
        ])
        .arg("--policy")
        .arg(&policy)
        .arg("--descriptor-set")
        .arg(&set)
        .arg("-i")
        .arg(&sample);
        if let Some((k, v)) = env {
            c.env(k, v);
        }
        let out = c.output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{stderr}");
        assert!(!stderr.contains("VM"), "{stderr}");
        assert!(!stderr.contains("vm_config"), "{stderr}");
        match env {
            None if !doc.contains("token_key_env") => {
                assert!(stderr.contains("--token-key-env"), "{stderr}")
            }
            None => assert!(
                stderr.contains("LINT_TEST_UNSET_KEY (token_key_env) is not set"),
                "{stderr}"
            ),
            Some(_) => assert!(
                stderr.contains("LINT_TEST_UNSET_KEY (token_key_env) holds fewer than 32 bytes"),
                "{stderr}"
            ),
        }
    }
    // With the key, `apply` tokenizes; --token-key-env names the variable for a policy that
    // names none.
    std::fs::write(&policy, ADOPTING_MASK).unwrap();
    let out = bare_bin()
        .args([
            "apply",
            "--type",
            "labs.v1.LabResult",
            "--role",
            "research",
            "--json",
        ])
        .arg("--policy")
        .arg(&policy)
        .arg("--descriptor-set")
        .arg(&set)
        .arg("-i")
        .arg(tmp("labs-result.json"))
        .args(["--token-key-env", KEY_ENV])
        .env(KEY_ENV, KEY)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("\"mrn\":\"tok_"), "{stdout}");
}

#[test]
fn an_inspection_session_masks_nothing() {
    let session = Session::inspect(
        ADOPTING_MASK.as_bytes(),
        Some(&std::fs::read(labs_set()).unwrap()),
        Some("labs.v1.LabResult"),
    )
    .unwrap();
    assert!(session
        .mask("research", &[], &mut Counts::default())
        .is_err());
}

#[test]
fn lint_and_coverage_exit_quietly_when_the_reader_goes_away() {
    use std::process::Stdio;
    let (_, set_path) = plain_set();
    let policy = tmp("plain-pipe.json");
    std::fs::write(&policy, r#"{"default": {"*": "remove"}}"#).unwrap();
    let fhir = tmp("fhir-pipe.pb");
    std::fs::write(&fhir, phi_guard_proto::fhir::DESCRIPTOR_SET).unwrap();
    let fhir_policy = tmp("fhir-pipe.json");
    std::fs::write(
        &fhir_policy,
        include_str!("../../../filters/mask/policy.fhir.json"),
    )
    .unwrap();
    for (cmd, policy, set, code) in [
        ("coverage", &fhir_policy, &fhir, 0),
        ("lint", &policy, &set_path, 1),
    ] {
        let mut child = bare_bin()
            .arg(cmd)
            .arg("--policy")
            .arg(policy)
            .arg("--descriptor-set")
            .arg(set)
            .env(KEY_ENV, KEY)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // `| head -0`: the reader is gone before the first write.
        drop(child.stdout.take());
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(code), "{cmd}: {stderr}");
        assert!(stderr.is_empty(), "{cmd}: {stderr}");
    }
}

#[test]
fn a_member_repeated_in_the_policy_is_refused_like_the_filter_does() {
    // Trial finding: coverage showed `physician=reveal` for a policy whose first SSN entry
    // masked it; the filter refuses such a document, so the tool must too.
    let policy = tmp("policy.repeated.json");
    std::fs::write(
        &policy,
        r#"{"roles": {"nurse": {"SSN": "redact", "SSN": "reveal"}}}"#,
    )
    .unwrap();
    let out = bin()
        .args(["coverage", "--policy"])
        .arg(&policy)
        .arg("--descriptor-set")
        .arg(write_demo_set())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("`SSN`") && err.contains("appears twice"),
        "{err}"
    );
}
