//! `phi-guard render`'s output through the real Envoy: the renderer the stack, the demo and the
//! `phi-guard` command share, for the demo project and for the shapes a user's project takes
//! (inline JWKS without a cluster, an https IdP and collector, named SPIFFE IDs, names
//! resolved by DNS), each accepted by `envoy --mode validate`; and a config Envoy must refuse
//! is refused, so the check is not vacuous. Every shape in both layouts: `single` (four
//! modules, envoy/inbound.yaml) and `pipeline` (one module, envoy/inbound.pipeline.yaml).

use phi_guard_tools::render::{self, HostPort, Inbound, Jwks, Layout, Upstream};
use serde_json::json;

fn demo() -> Inbound {
    let mut inbound =
        Inbound::from_project(&phi_guard_tools::repo_root().join("envoy/demo/phi-guard.toml"))
            .expect("the demo project resolves");
    inbound.descriptor_set = Some(phi_guard_tools::demo_api::descriptor_set().unwrap());
    inbound.wasm_dir = phi_guard_tools::stack::wasm_dir().expect("scripts/build-wasm ran");
    inbound
}

/// Renders into a fresh directory and runs `envoy --mode validate` on it, in each layout.
fn validate(name: &str, inbound: &mut Inbound) -> Result<String, String> {
    let mut out = String::new();
    for layout in Layout::ALL {
        inbound.layout = layout;
        out += &validate_layout(&format!("{name}-{}", layout.name()), inbound)?;
    }
    Ok(out)
}

fn validate_layout(name: &str, inbound: &mut Inbound) -> Result<String, String> {
    inbound.check_wasm().map_err(|e| e.to_string())?;
    let dir = phi_guard_tools::repo_root()
        .join("target/e2e")
        .join(format!("render-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    inbound.out_dir = dir.clone();
    inbound.sds_dir = dir.join("sds");
    inbound.log_dir = dir.join("logs");
    std::fs::create_dir_all(&inbound.log_dir).unwrap();
    let rendered = inbound.render().map_err(|e| e.to_string())?;
    let config = rendered.write(&inbound.out_dir, &inbound.sds_dir).unwrap();
    let result = render::validate_with_envoy(&config, &inbound.keys);
    if result.is_ok() {
        let _ = std::fs::remove_dir_all(&dir);
    }
    result
}

#[test]
fn the_demo_project_validates() {
    let mut inbound = demo();
    validate("demo", &mut inbound).expect("envoy accepts the demo config");
}

#[test]
fn a_users_project_shapes_validate() {
    // Inline JWKS: no idp_jwks cluster at all; explicit SPIFFE IDs; a DNS-named upstream.
    let mut inline = demo();
    inline.jwt["providers"][0]
        .as_object_mut()
        .unwrap()
        .remove("jwks");
    inline.jwks = Jwks::Inline(json!({"keys": [{
        "kty": "EC", "crv": "P-256", "kid": "k1", "alg": "ES256", "use": "sig",
        "x": "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU",
        "y": "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}]}));
    inline.trust_domain = "labs.example".into();
    inline.allowed_spiffe_ids = vec![
        "spiffe://labs.example/ns/clinic/sa/lab-portal".into(),
        "spiffe://labs.example/ns/research/sa/analytics".into(),
    ];
    inline.upstream = HostPort {
        host: "localhost".into(),
        port: 50051,
    };
    validate("inline", &mut inline).expect("envoy accepts an inline-JWKS config");

    // An https IdP and an https collector: TLS clusters verified against the system CA
    // bundle (Envoy checks that the file exists).
    if !std::path::Path::new(render::SYSTEM_CA_FILE).exists() {
        eprintln!(
            "no CA bundle at {}: https shape skipped",
            render::SYSTEM_CA_FILE
        );
        return;
    }
    let mut remote = demo();
    remote.jwt["providers"][0]
        .as_object_mut()
        .unwrap()
        .remove("jwks");
    remote.jwks = Jwks::Remote(
        Upstream::parse(
            "https://idp.labs.example/.well-known/jwks.json",
            "jwks.url",
            "/",
            None,
        )
        .unwrap(),
    );
    remote.collector = Upstream::parse(
        "https://otel.labs.example:4318",
        "audit.collector",
        "/v1/logs",
        None,
    )
    .unwrap();
    validate("remote", &mut remote).expect("envoy accepts an https IdP and collector");
}

#[test]
fn the_pipeline_layout_carries_each_stage_config_unchanged() {
    let mut inbound = demo();
    inbound.layout = Layout::Single;
    let single = inbound.render().unwrap().envoy;
    inbound.layout = Layout::Pipeline;
    let pipeline = inbound.render().unwrap().envoy;
    assert!(pipeline.contains("phi_guard.wasm"));
    assert!(!pipeline.contains("phi_guard_jwt.wasm"));
    // The audit service stays its own module.
    assert!(pipeline.contains("phi_guard_audit.wasm"));
    for stage in ["jwt", "rbac", "mask", "audit"] {
        let embedded = |yaml: &str| {
            phi_guard_tools::stack::embedded_filter_config(yaml, stage)
                .unwrap_or_else(|| panic!("no {stage} config"))
        };
        assert_eq!(embedded(&single), embedded(&pipeline), "{stage}");
    }
}

#[test]
fn the_project_file_names_the_layout() {
    let dir = phi_guard_tools::repo_root()
        .join("target/e2e")
        .join(format!("render-layout-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let demo =
        std::fs::read_to_string(phi_guard_tools::repo_root().join("envoy/demo/phi-guard.toml"))
            .unwrap();
    let base = phi_guard_tools::repo_root().join("envoy/demo");
    for (line, want) in [
        ("layout = \"pipeline\"\n", Some(Layout::Pipeline)),
        ("layout = \"single\"\n", Some(Layout::Single)),
        ("", Some(Layout::Single)),
        ("layout = \"chain\"\n", None),
    ] {
        let path = base.join(format!(".layout-test-{}.toml", std::process::id()));
        std::fs::write(&path, format!("{line}{demo}")).unwrap();
        let got = Inbound::from_project(&path);
        let _ = std::fs::remove_file(&path);
        match want {
            Some(layout) => assert_eq!(got.unwrap().layout, layout, "{line}"),
            None => assert_eq!(got.unwrap_err().field, "layout", "{line}"),
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn envoy_validation_is_not_vacuous() {
    let mut inbound = demo();
    // A listener address Envoy cannot parse: render does not look inside, Envoy must refuse.
    inbound.listen.host = "999.1.1.1".into();
    let err = validate("refused", &mut inbound).expect_err("envoy refuses a bad address");
    assert!(
        err.contains("999.1.1.1") || err.to_lowercase().contains("malformed"),
        "{err}"
    );
}
