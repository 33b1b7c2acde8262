//! The Istio examples in `envoy/istio/` stay true to the filters: every `WasmPlugin`'s
//! `pluginConfig` goes through the parser of the module its `url` names (jwt, rbac, mask, or
//! the one-module pipeline and each of its stages), the way the plugin reads it at start. A
//! mask configuration is also built against the demo's descriptor set (the demo and Google's
//! FHIR R4 protos), so a catalog entry or role class the set lacks fails here, not in a mesh.

use std::path::Path;

use phi_guard_common::ConfigError;
use phi_guard_tools::{demo_api, repo_root};
use serde::Deserialize;
use serde_json::Value;

/// Secrets named by `*_env` keys: a stand-in of the right length, as `phi-guard render` checks.
fn env(_: &str) -> Option<String> {
    Some("k".repeat(64))
}

/// The inline placeholder `envoy/istio/wasmplugins.yaml` puts where a user pastes their set.
const DESCRIPTOR_SET_PLACEHOLDER: &str = "<base64 FileDescriptorSet of your API>";

fn check_stage(stage: &str, config: &Value) -> Result<(), ConfigError> {
    let bytes = serde_json::to_vec(config).expect("a JSON value serialises");
    match stage {
        "jwt" => phi_guard_jwt::config::Config::parse(&bytes, &env).map(drop),
        "rbac" => phi_guard_rbac::policy::Policy::parse(&bytes).map(drop),
        "mask" => {
            // The start-time check (a remote block, the top-level keys), then the whole config
            // against a real set, as the filter does with each set that arrives.
            let mut inline = config.clone();
            if inline["descriptor_set"] == DESCRIPTOR_SET_PLACEHOLDER {
                inline
                    .as_object_mut()
                    .expect("mask config is an object")
                    .remove("descriptor_set");
            } else {
                phi_guard_mask::remote::MaskSource::parse(&bytes, &env)?;
            }
            let set = demo_api::descriptor_set().expect("the demo descriptor set builds");
            let doc = serde_json::to_vec(&inline).expect("a JSON value serialises");
            phi_guard_mask::MaskConfig::parse_with_descriptor_set(&doc, &set, &[], &env).map(drop)
        }
        "pipeline" => {
            let pipeline = phi_guard::PipelineConfig::parse(&bytes)?;
            for (name, doc) in &pipeline.stages {
                let doc: Value = serde_json::from_slice(doc).expect("the envelope keeps JSON");
                check_stage(name.name(), &doc).map_err(|e| e.within(name.name()))?;
            }
            Ok(())
        }
        other => panic!("no parser for a module named {other}"),
    }
}

/// Every `WasmPlugin` in one YAML file: (metadata.name, the module its url names, pluginConfig).
fn wasm_plugins(path: &Path) -> Vec<(String, String, Value)> {
    let text = std::fs::read_to_string(path).unwrap();
    let mut out = Vec::new();
    for doc in serde_norway::Deserializer::from_str(&text) {
        let doc = Value::deserialize(doc).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        if doc["kind"] != "WasmPlugin" {
            continue;
        }
        assert_eq!(doc["apiVersion"], "extensions.istio.io/v1alpha1");
        let spec = &doc["spec"];
        // Nothing a filter refuses may be let through: a plugin that fails to start fails closed.
        assert_eq!(
            spec["failStrategy"], "FAIL_CLOSE",
            "{}",
            doc["metadata"]["name"]
        );
        let url = spec["url"].as_str().expect("spec.url");
        let module = url
            .rsplit('/')
            .next()
            .and_then(|tail| tail.split(':').next())
            .expect("url ends in /<module>:<tag>")
            .to_string();
        out.push((
            doc["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
            module,
            spec["pluginConfig"].clone(),
        ));
    }
    out
}

#[test]
fn every_plugin_config_in_envoy_istio_starts_its_module() {
    let dir = repo_root().join("envoy/istio");
    let mut checked = Vec::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "yaml") {
            for (name, module, config) in wasm_plugins(&path) {
                if let Err(e) = check_stage(&module, &config) {
                    panic!("{}: WasmPlugin {name}: {e}", path.display());
                }
                checked.push(module);
            }
        }
    }
    checked.sort();
    assert_eq!(checked, ["jwt", "mask", "pipeline", "rbac"]);
}

#[test]
fn the_pipeline_plugin_runs_jwt_rbac_and_mask_in_one_module() {
    let plugins = wasm_plugins(&repo_root().join("envoy/istio/pipeline.wasmplugin.yaml"));
    let [(_, module, config)] = plugins.as_slice() else {
        panic!("one WasmPlugin expected");
    };
    assert_eq!(module, "pipeline");
    let pipeline = phi_guard::PipelineConfig::parse(&serde_json::to_vec(config).unwrap()).unwrap();
    let stages: Vec<&str> = pipeline.stages.iter().map(|(s, _)| s.name()).collect();
    assert_eq!(stages, ["jwt", "rbac", "mask"]);
}

#[test]
fn a_broken_stage_is_reported_under_its_stage() {
    // The check is the filters' own: a pipeline whose mask stage names a class no catalog
    // entry or annotation has must fail, naming the stage and the field.
    let mut config = wasm_plugins(&repo_root().join("envoy/istio/pipeline.wasmplugin.yaml"))
        .remove(0)
        .2;
    config["stages"][2]["mask"]["roles"]["nurse"]["NOT_A_CLASS"] = "reveal".into();
    let e = check_stage("pipeline", &config).unwrap_err();
    assert!(e.field.starts_with("mask"), "{e}");
    assert!(e.field.contains("NOT_A_CLASS"), "{e}");
}
