//! `phi-demo [run|up|down]`: the stack the e2e tests run, brought up for people.
//!
//! - `run` (default): starts the stack, calls the demo service as several client identities,
//!   prints what each saw, and tears everything down.
//! - `up`: starts the stack, leaves it running and writes `target/phi-guard-demo/state.json`.
//! - `down`: stops what `up` started.

use std::path::{Path, PathBuf};

use phi_guard_proto::health::v1::{DeletePatientRequest, GetPatientRequest, ListEncountersRequest};
use phi_guard_tools::backend::PATIENT_ID;
use phi_guard_tools::issuer::{self, UserClaims};
use phi_guard_tools::stack::{Error, Stack};
use serde_json::json;

/// The demo's client workloads: name, namespace, service account.
const WORKLOADS: &[(&str, &str, &str)] = &[
    ("ehr-frontend", "clinic", "ehr-frontend"),
    ("analytics", "research", "analytics"),
    ("admin-tool", "ops", "admin-tool"),
    ("deid-export", "research", "deid-export"),
];

fn demo_dir() -> PathBuf {
    phi_guard_tools::repo_root().join("target/phi-guard-demo")
}

fn state_path() -> PathBuf {
    demo_dir().join("state.json")
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let cmd = std::env::args().nth(1).unwrap_or_else(|| "run".into());
    let result = match cmd.as_str() {
        "run" => run().await,
        "up" => up().await,
        "down" => down(),
        other => Err(format!("unknown command {other}; use run, up or down").into()),
    };
    if let Err(e) = result {
        eprintln!("phi-demo {cmd}: {e}");
        std::process::exit(1);
    }
}

async fn start() -> Result<Stack, Error> {
    if state_path().exists() {
        return Err("a demo stack is already up: run `scripts/demo down` first".into());
    }
    let bin_dir = bin_dir()?;
    let mut builder = Stack::builder("demo").dir(demo_dir()).as_processes(bin_dir);
    for (name, ns, sa) in WORKLOADS {
        builder = builder.workload(name, ns, sa);
    }
    let stack = builder.start().await?;
    println!(
        "stack up: Envoy mTLS listener {} (admin {}), backend {}",
        stack.inbound.listen, stack.inbound.admin, stack.backend_addr
    );
    Ok(stack)
}

async fn run() -> Result<(), Error> {
    let stack = start().await?;
    // Who calls, as whom: the demo policy lets the clinic's frontend read for nurses and
    // billing clerks, and the research workload read for researchers; nobody but the ops
    // admin tool may delete.
    let callers: &[(&str, Option<&str>)] = &[
        ("ehr-frontend", Some("nurse")),
        ("ehr-frontend", Some("billing")),
        ("analytics", Some("research")),
        ("ehr-frontend", Some("research")),
        ("ehr-frontend", None),
    ];
    for (workload, user) in callers {
        show_calls(&stack, workload, *user).await?;
    }

    // The FHIR R4 service behind the same Envoy: Google's protos, tagged by catalog entries
    // (filters/mask/policy.fhir.json). The de-identified export workload gets the Safe Harbor
    // view for a researcher (the demo policy's deid-export-reads rule pins it).
    let fhir_callers: &[(&str, &str, &str)] = &[
        ("ehr-frontend", "billing", "billing"),
        ("ehr-frontend", "nurse", "nurse"),
        ("analytics", "research", "research"),
        ("deid-export", "research", "safe_harbor"),
        ("ehr-frontend", "research", "-"),
    ];
    for (workload, user, view) in fhir_callers {
        show_fhir(&stack, workload, user, view).await?;
    }

    for (workload, user) in [("analytics", "research"), ("admin-tool", "admin")] {
        let outcome = stack
            .client_as(workload, Some(user))
            .await?
            .delete_patient(DeletePatientRequest {
                patient_id: PATIENT_ID.into(),
            })
            .await;
        let shown = match outcome {
            Ok(_) => "OK".to_string(),
            Err(status) => format!("{:?} \"{}\"", status.code(), status.message()),
        };
        println!("\nas {workload} for user {user}:\n  DeletePatient -> {shown}");
    }

    println!("\nas ehr-frontend with an expired nurse token:");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs();
    let expired = stack.idp.key.mint_at(
        &UserClaims::user("nurse", &["nurse"]),
        issuer::ISSUER,
        issuer::AUDIENCE,
        now - 7200,
        now - 3600,
    );
    let leaf = &stack.workload("ehr-frontend").leaf;
    let mut client = phi_guard_tools::client::connect_mtls(
        &stack.target(),
        Some(phi_guard_tools::client::ClientCert {
            cert: &leaf.cert,
            key: &leaf.key,
        }),
        Some(&expired),
    )
    .await?;
    match client.get_patient(get_patient()).await {
        Ok(_) => return Err("an expired token was accepted".into()),
        Err(status) => println!(
            "  the caller sees: {:?} \"{}\"",
            status.code(),
            status.message()
        ),
    }
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    println!(
        "  the operator sees (inbound_access.log): {}",
        last_access_log_decision(&stack)
    );

    println!("\nno client certificate:");
    match phi_guard_tools::client::connect_mtls(&stack.target(), None, Some(stack.token("nurse")))
        .await
    {
        Err(e) => println!("  refused at connect: {}", first_line(&e.to_string())),
        Ok(mut c) => match c.get_patient(get_patient()).await {
            Err(status) => println!("  refused: {:?}", status.code()),
            Ok(_) => return Err("a client without a certificate got an answer".into()),
        },
    }
    show_audit(&stack).await?;
    println!("\nstack torn down");
    Ok(())
}

/// Prints the audit events of the calls above, then the verifier's verdict on their chain.
async fn show_audit(stack: &Stack) -> Result<(), Error> {
    // The audit service ships in batches every 200 ms; give the last one time to land.
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    println!("\naudit events ({}):", stack.audit_log.display());
    let text = std::fs::read_to_string(&stack.audit_log).unwrap_or_default();
    for line in text.lines() {
        let record: serde_json::Value = serde_json::from_str(line)?;
        let event: serde_json::Value =
            serde_json::from_str(record["event"].as_str().unwrap_or("{}"))?;
        let outcome = &event["outcome"];
        println!(
            "  #{} {} {} subject={} role={} {} authn={} authz={} grpc_status={} masked={}",
            record["seq"],
            event["time"].as_str().unwrap_or(""),
            event["who"]["peer"].as_str().unwrap_or("-"),
            event["who"]["subject"].as_str().unwrap_or("-"),
            event["who"]["role"].as_str().unwrap_or("-"),
            event["what"]["method"].as_str().unwrap_or("-"),
            outcome["authn"]["reason"]
                .as_str()
                .or(outcome["authn"]["result"].as_str())
                .unwrap_or("-"),
            outcome["authz"]["reason"].as_str().unwrap_or("-"),
            outcome["grpc_status"],
            outcome["mask"]["fields"],
        );
    }
    let verifier = bin_dir()?.join("phi-guard-audit-verify");
    let output = std::process::Command::new(&verifier)
        .arg("--key-file")
        .arg(&stack.audit_key)
        .arg(&stack.audit_log)
        .output()?;
    println!(
        "\n$ phi-guard-audit-verify --key-file {} {}\n  {}",
        stack.audit_key.display(),
        stack.audit_log.display(),
        String::from_utf8_lossy(&output.stdout).trim()
    );
    if !output.status.success() {
        return Err("the audit chain did not verify".into());
    }
    Ok(())
}

fn bin_dir() -> Result<PathBuf, Error> {
    Ok(std::env::current_exe()?
        .parent()
        .ok_or("no directory for phi-demo")?
        .to_path_buf())
}

fn get_patient() -> GetPatientRequest {
    GetPatientRequest {
        patient_id: PATIENT_ID.into(),
    }
}

/// The authn/authz part of the newest access-log entry: reason codes, never token contents.
fn last_access_log_decision(stack: &Stack) -> String {
    let log =
        std::fs::read_to_string(stack.dir.join("logs/inbound_access.log")).unwrap_or_default();
    let Some(entry) = log
        .lines()
        .last()
        .and_then(|l| serde_json::from_str::<serde_json::Value>(l).ok())
    else {
        return "(no entry yet)".into();
    };
    format!(
        "grpc_status={} authn={} authz={}",
        entry["grpc_status"], entry["authn"], entry["authz"]
    )
}

fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or("")
}

async fn show_calls(stack: &Stack, workload: &str, user: Option<&str>) -> Result<(), Error> {
    let spiffe = &stack.workload(workload).spiffe_id;
    match user {
        Some(user) => println!("\nas {workload} ({spiffe}) for user {user}:"),
        None => println!("\nas {workload} ({spiffe}) with no user token:"),
    }
    let mut client = stack.client_as(workload, user).await?;
    match client.get_patient(get_patient()).await {
        Ok(patient) => {
            let p = patient.into_inner();
            let name = p.name.clone().unwrap_or_default();
            let contact = p.contacts.first().cloned().unwrap_or_default();
            let address = p.address.clone().unwrap_or_default();
            println!("  GetPatient -> OK, as this caller sees it:");
            println!(
                "    name={:?} {:?}  birth_date={:?}  ssn={:?}  mrn={:?}",
                name.given.join(" "),
                name.family,
                p.birth_date,
                p.ssn,
                p.mrn
            );
            println!(
                "    phone={:?}  email={:?}  address={:?} {:?}  insurance={:?}",
                contact.phone,
                contact.email,
                address.line.join(", "),
                address.city,
                p.insurance_member_id
            );
            println!("    notes={:?}", p.notes);
        }
        Err(status) => println!(
            "  GetPatient -> {:?} \"{}\"",
            status.code(),
            status.message()
        ),
    }
    match client
        .list_encounters(ListEncountersRequest {
            patient_id: PATIENT_ID.into(),
            limit: 3,
            note_bytes: 0,
        })
        .await
    {
        Ok(stream) => {
            let mut stream = stream.into_inner();
            let mut ids = Vec::new();
            loop {
                match stream.message().await {
                    Ok(Some(e)) => ids.push(e.encounter_id),
                    Ok(None) => break,
                    Err(status) => {
                        println!(
                            "  ListEncounters -> {:?} \"{}\"",
                            status.code(),
                            status.message()
                        );
                        return Ok(());
                    }
                }
            }
            println!("  ListEncounters -> OK: {} messages {:?}", ids.len(), ids);
        }
        Err(status) => println!(
            "  ListEncounters -> {:?} \"{}\"",
            status.code(),
            status.message()
        ),
    }
    Ok(())
}

/// The FHIR service's Patient and Observations as `workload` for `user` see them (`view`: the
/// role rbac gives the call), a few lines each.
async fn show_fhir(stack: &Stack, workload: &str, user: &str, view: &str) -> Result<(), Error> {
    use phi_guard_proto::fhir;
    use prost::Message;
    println!("\nFHIR as {workload} for user {user} (view: {view}):");
    let leaf = &stack.workload(workload).leaf;
    let mut client = phi_guard_tools::client::connect_fhir_mtls(
        &stack.target(),
        Some(phi_guard_tools::client::ClientCert {
            cert: &leaf.cert,
            key: &leaf.key,
        }),
        Some(stack.token(user)),
    )
    .await?;
    let request = fhir::GetPatientRequest {
        id: fhir::PATIENT_ID.into(),
    };
    let patient = match client
        .get_patient(bytes::Bytes::from(request.encode_to_vec()))
        .await
    {
        Ok(response) => response.into_inner(),
        Err(status) => {
            println!(
                "  GetPatient -> {:?} \"{}\"",
                status.code(),
                status.message()
            );
            return Ok(());
        }
    };
    let p = fhir_json(fhir::PATIENT_TYPE, &patient)?;
    let strings = |v: &serde_json::Value| -> String {
        let all: Vec<&str> = v
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|x| x["value"].as_str())
            .collect();
        shown(&all.join(" "))
    };
    let name = &p["name"][0];
    let address = &p["address"][0];
    println!("  GetPatient -> OK, as this caller sees it:");
    println!(
        "    name={} {}  birth_date={}  identifiers={}",
        strings(&name["given"]),
        shown_value(&name["family"]),
        fhir_date(&field(&p, "birth_date")),
        strings(&json_values(&p["identifier"], "value")),
    );
    println!(
        "    telecom={}  address={} / {} / {} {}",
        strings(&json_values(&p["telecom"], "value")),
        strings(&address["line"]),
        shown_value(&address["city"]),
        shown_value(&address["state"]),
        shown_value(&field(address, "postal_code")),
    );
    println!(
        "    maiden_name={}  contact={} {}  narrative={}",
        // FHIR's JSON name of `Extension.value.string_value` is `string`.
        shown_value(&p["extension"][0]["value"]["string"]),
        strings(&p["contained"][0]["name"][0]["given"]),
        strings(&json_values(&p["contained"][0]["telecom"], "value")),
        shown_value(&p["text"]["div"]),
    );
    let request = fhir::ListObservationsRequest {
        patient_id: fhir::PATIENT_ID.into(),
        limit: 3,
    };
    let mut stream = client
        .list_observations(bytes::Bytes::from(request.encode_to_vec()))
        .await?
        .into_inner();
    let mut observations = Vec::new();
    while let Some(o) = stream.message().await? {
        observations.push(fhir_json(fhir::OBSERVATION_TYPE, &o)?);
    }
    let first = observations.first().cloned().unwrap_or_default();
    println!(
        "  ListObservations -> OK: {} messages; the first: effective={} value={} note={}",
        observations.len(),
        fhir_date(&field(&first["effective"], "date_time")),
        shown_value(&first["value"]["quantity"]["value"]),
        shown_value(&first["note"][0]["text"]),
    );
    Ok(())
}

/// A FHIR message as proto3 JSON, through the committed descriptor set.
fn fhir_json(type_name: &str, bytes: &[u8]) -> Result<serde_json::Value, Error> {
    let text = phi_guard_mask_cli::to_json(phi_guard_proto::fhir::pool(), type_name, bytes)?;
    Ok(serde_json::from_str(&text)?)
}

/// Member `snake_name` of a proto3 JSON object, under its JSON (lowerCamelCase) name.
fn field(v: &serde_json::Value, snake_name: &str) -> serde_json::Value {
    let mut camel = String::new();
    let mut upper = false;
    for c in snake_name.chars() {
        if c == '_' {
            upper = true;
        } else if upper {
            camel.extend(c.to_uppercase());
            upper = false;
        } else {
            camel.push(c);
        }
    }
    v.get(&camel)
        .or_else(|| v.get(snake_name))
        .cloned()
        .unwrap_or_default()
}

/// Each element's member `name` (e.g. every identifier's `value`).
fn json_values(list: &serde_json::Value, name: &str) -> serde_json::Value {
    list.as_array()
        .into_iter()
        .flatten()
        .map(|x| x[name].clone())
        .collect()
}

/// A FHIR primitive's `value`, quoted, or `-` when the caller did not get it.
fn shown_value(v: &serde_json::Value) -> String {
    match &v["value"] {
        serde_json::Value::String(s) => shown(s),
        serde_json::Value::Null => "-".into(),
        other => other.to_string(),
    }
}

fn shown(s: &str) -> String {
    if s.is_empty() {
        "-".into()
    } else {
        format!("{s:?}")
    }
}

/// A FHIR `Date`/`DateTime` as `YYYY-MM-DD (PRECISION)`, or `-`.
fn fhir_date(v: &serde_json::Value) -> String {
    let Some(us) = field(v, "value_us")
        .as_str()
        .and_then(|s| s.parse::<i64>().ok())
    else {
        return "-".into();
    };
    // Days since 1970-01-01 to a civil date (H. Hinnant's algorithm).
    let z = us.div_euclid(86_400_000_000) + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} ({})",
        v["precision"].as_str().unwrap_or("-")
    )
}

async fn up() -> Result<(), Error> {
    let stack = start().await?;
    let clients: serde_json::Map<String, serde_json::Value> = stack
        .workloads
        .values()
        .map(|w| {
            (
                w.name.clone(),
                json!({"spiffe_id": w.spiffe_id, "cert": w.leaf.cert, "key": w.leaf.key}),
            )
        })
        .collect();
    let mut state = json!({
        "endpoint": stack.inbound.listen.to_string(),
        "server_name": phi_guard_tools::pki::SERVER_NAME,
        "admin": stack.inbound.admin.to_string(),
        "ca_bundle": stack.pki.bundle(),
        "sds_dir": stack.inbound_sds(),
        "pki_dir": stack.pki.dir,
        "envoy_log": stack.inbound.log,
        "clients": clients,
        "issuer": {
            "iss": issuer::ISSUER,
            "audience": issuer::AUDIENCE,
            "alg": "ES256",
            "jwks": stack.idp.jwks_file,
            "jwks_url": format!("http://{}{}", stack.idp.addr, issuer::JWKS_PATH),
            "signing_key": stack.idp.signing_key_file,
        },
        "tokens": stack.idp.tokens,
        "audit_log": stack.audit_log,
        "audit_key": stack.audit_key,
        "mask_key": stack.mask_key,
    });
    let dir = stack.dir.clone();
    state["fhir"] = fhir_state(&dir, &stack.inbound.config)?;
    let pids = stack.detach();
    state["pids"] = json!(pids);
    write_state(&dir, &state)?;
    println!("{}", serde_json::to_string_pretty(&state)?);
    println!("state written to {}", state_path().display());
    Ok(())
}

/// `state.json`'s `fhir`: the FHIR service's method paths, its descriptor set, and the mask
/// filter's configuration as Envoy runs it (the JSON `phi-guard-mask apply --policy` takes).
fn fhir_state(dir: &Path, envoy_config: &Path) -> Result<serde_json::Value, Error> {
    use phi_guard_proto::fhir;
    let root = phi_guard_tools::repo_root();
    // The rendered config Envoy runs (the template only has a placeholder for it).
    let yaml = std::fs::read_to_string(envoy_config)?;
    let mask = phi_guard_tools::stack::embedded_filter_config(&yaml, "mask")
        .ok_or("the rendered inbound config has no phi_guard.mask configuration")?;
    let mask_config = dir.join("mask_config.json");
    std::fs::write(&mask_config, serde_json::to_vec_pretty(&mask)?)?;
    Ok(json!({
        "service": fhir::SERVICE,
        "methods": [format!("/{}", fhir::GET_PATIENT), format!("/{}", fhir::LIST_OBSERVATIONS)],
        "patient_id": fhir::PATIENT_ID,
        "descriptor_set": root.join(fhir::DESCRIPTOR_SET_PATH),
        "mask_config": mask_config,
    }))
}

fn write_state(dir: &Path, state: &serde_json::Value) -> Result<(), Error> {
    let tmp = dir.join("state.json.tmp");
    std::fs::write(&tmp, serde_json::to_vec_pretty(state)?)?;
    std::fs::rename(tmp, state_path())?;
    Ok(())
}

fn down() -> Result<(), Error> {
    let path = state_path();
    let Ok(text) = std::fs::read_to_string(&path) else {
        println!("no demo stack is up");
        return Ok(());
    };
    let state: serde_json::Value = serde_json::from_str(&text)?;
    for pid in state["pids"].as_array().into_iter().flatten() {
        if let Some(pid) = pid.as_u64() {
            // SIGTERM: Envoy and the backend both shut down cleanly on it.
            let _ = std::process::Command::new("kill")
                .arg(pid.to_string())
                .status();
        }
    }
    std::fs::remove_file(&path)?;
    println!("demo stack stopped");
    Ok(())
}
