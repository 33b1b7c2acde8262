//! Certificate rotation under continuous RPC load: server leaf, client leaf (through the
//! egress sidecar), and a CA rollover. Every scenario prints its counts and requires zero
//! failed RPCs.

use std::sync::Arc;
use std::time::Duration;

use phi_guard_e2e::{probe, wait_until, Connect, Load, ProbeOptions};
use phi_guard_tools::client::{connect_mtls, connect_plain, ClientCert};
use phi_guard_tools::pki::{self, normalise_serial};
use phi_guard_tools::stack::Stack;

const ROTATIONS: usize = 4;

/// Connects straight to Envoy's mTLS listener as workload `frontend`, reading the trust
/// bundle and certificate afresh for every connection (as a client that reloads them would).
fn direct(stack: &Stack) -> Connect {
    let target = stack.target();
    let leaf = stack.workload("frontend").leaf.clone();
    let token = stack.token("nurse").to_string();
    Arc::new(move || {
        let (target, leaf, token) = (target.clone(), leaf.clone(), token.clone());
        Box::pin(async move {
            let id = ClientCert {
                cert: &leaf.cert,
                key: &leaf.key,
            };
            connect_mtls(&target, Some(id), Some(&token))
                .await
                .map_err(|e| e.to_string())
        })
    })
}

/// Connects in plaintext to the egress sidecar, which holds the client certificate.
fn via_egress(stack: &Stack) -> Connect {
    let endpoint = stack.egress.as_ref().expect("egress").listen.to_string();
    let token = stack.token("nurse").to_string();
    Arc::new(move || {
        let (endpoint, token) = (endpoint.clone(), token.clone());
        Box::pin(async move {
            connect_plain(&endpoint, Some(&token))
                .await
                .map_err(|e| e.to_string())
        })
    })
}

/// The serial a brand-new handshake is served, via openssl s_client.
fn served_serial(stack: &Stack) -> Option<String> {
    let leaf = &stack.workload("frontend").leaf;
    probe(
        &stack.inbound.listen.to_string(),
        pki::SERVER_NAME,
        &stack.pki.bundle(),
        &ProbeOptions {
            cert: Some((&leaf.cert, &leaf.key)),
            alpn: Some("h2"),
            extra: vec![],
        },
    )
    .server_serial
}

/// Serials of client certificates the inbound listener has seen, from its access log.
fn client_serials_seen(stack: &Stack) -> Vec<String> {
    std::fs::read_to_string(stack.dir.join("logs/inbound_access.log"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| v["peer_serial"].as_str().map(normalise_serial))
        .collect()
}

async fn wait_for_load(load: &Load, at_least: u64) {
    let start = load.sent();
    let ok = wait_until(Duration::from_secs(20), || load.sent() >= start + at_least).await;
    assert!(ok, "load stalled");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_certificate_rotation_under_load() {
    let stack = Stack::builder("rotate_server")
        .workload("frontend", "clinic", "ehr-frontend")
        .start()
        .await
        .expect("stack starts");
    let load = Load::start(direct(&stack), 3, 25);
    wait_for_load(&load, 50).await;

    let mut served = vec![served_serial(&stack).expect("initial serial")];
    for _ in 0..ROTATIONS {
        let new = stack
            .pki
            .rotate("server", &stack.inbound_sds().join("server"))
            .unwrap();
        let presented = wait_until(Duration::from_secs(10), || {
            served_serial(&stack).as_deref() == Some(new.as_str())
        })
        .await;
        assert!(presented, "new handshakes never presented serial {new}");
        served.push(new);
        wait_for_load(&load, 50).await;
    }
    let (report, first_error) = load.finish().await;
    println!(
        "server rotation: rpcs sent={} failed={} rotations done={} serials={:?}",
        report.sent, report.failed, ROTATIONS, served
    );
    assert_eq!(report.failed, 0, "first failure: {first_error:?}");
    served.dedup();
    assert_eq!(
        served.len(),
        ROTATIONS + 1,
        "every rotation served a new serial"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_certificate_rotation_under_load() {
    let stack = Stack::builder("rotate_client")
        .workload("frontend", "clinic", "ehr-frontend")
        .workload("egress", "clinic", "ehr-frontend")
        .egress("egress")
        .start()
        .await
        .expect("stack starts");
    let load = Load::start(via_egress(&stack), 3, 1_000);
    wait_for_load(&load, 50).await;

    for _ in 0..ROTATIONS {
        let new = stack
            .pki
            .rotate("egress", &stack.egress_sds().join("client"))
            .unwrap();
        // The egress sidecar recycles upstream connections, so the inbound side soon sees a
        // handshake with the new client certificate.
        let seen = wait_until(Duration::from_secs(20), || {
            client_serials_seen(&stack).contains(&new)
        })
        .await;
        assert!(seen, "inbound never saw client serial {new}");
    }
    let (report, first_error) = load.finish().await;
    println!(
        "client rotation: rpcs sent={} failed={} rotations done={}",
        report.sent, report.failed, ROTATIONS
    );
    assert_eq!(report.failed, 0, "first failure: {first_error:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ca_rollover_under_load() {
    let stack = Stack::builder("ca_rollover")
        .workload("frontend", "clinic", "ehr-frontend")
        .workload("egress", "clinic", "ehr-frontend")
        .egress("egress")
        .start()
        .await
        .expect("stack starts");
    let egress = stack.egress.as_ref().unwrap();
    let load = Load::start(via_egress(&stack), 3, 1_000);
    wait_for_load(&load, 50).await;
    let ca_count = |admin: &phi_guard_tools::stack::Envoy| {
        let (_, certs) = admin.admin_get("/certs").unwrap();
        let v: serde_json::Value = serde_json::from_str(&certs).unwrap_or_default();
        v["certificates"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|c| c["ca_cert"].as_array().map_or(0, |x| x.len()))
                    .max()
                    .unwrap_or(0)
            })
            .unwrap_or(0)
    };
    assert_eq!(ca_count(&stack.inbound), 1);

    // 1. Trust the new root beside the old one, everywhere, before anyone presents it.
    stack.pki.rollover_begin().unwrap();
    stack
        .pki
        .install_bundle(&stack.inbound_sds().join("trust"))
        .unwrap();
    stack
        .pki
        .install_bundle(&stack.egress_sds().join("trust"))
        .unwrap();
    for envoy in [&stack.inbound, egress] {
        let loaded = wait_until(Duration::from_secs(10), || ca_count(envoy) == 2).await;
        assert!(loaded, "both roots trusted by {}", envoy.config.display());
    }
    wait_for_load(&load, 50).await;

    // 2. Reissue the leaves under the new root.
    let server = stack
        .pki
        .rotate("server", &stack.inbound_sds().join("server"))
        .unwrap();
    let client = stack
        .pki
        .rotate("egress", &stack.egress_sds().join("client"))
        .unwrap();
    stack.pki.reissue("frontend").unwrap();
    assert!(
        wait_until(Duration::from_secs(10), || served_serial(&stack).as_deref()
            == Some(server.as_str()))
        .await,
        "new server leaf served"
    );
    assert!(
        wait_until(Duration::from_secs(20), || client_serials_seen(&stack)
            .contains(&client))
        .await,
        "new client leaf presented"
    );
    wait_for_load(&load, 50).await;

    // 3. Remove the old root.
    let old_leaf = stack
        .pki
        .issue(
            "old-gen",
            pki::Kind::Client,
            &pki::spiffe_id("clinic", "ehr-frontend"),
            &[],
            &["--gen", "1"],
        )
        .unwrap();
    stack.pki.rollover_finish().unwrap();
    stack
        .pki
        .install_bundle(&stack.inbound_sds().join("trust"))
        .unwrap();
    stack
        .pki
        .install_bundle(&stack.egress_sds().join("trust"))
        .unwrap();
    for envoy in [&stack.inbound, egress] {
        let loaded = wait_until(Duration::from_secs(10), || ca_count(envoy) == 1).await;
        assert!(loaded, "old root dropped by {}", envoy.config.display());
    }
    wait_for_load(&load, 50).await;
    let (report, first_error) = load.finish().await;
    println!(
        "CA rollover: rpcs sent={} failed={} rotations done=3 (bundle, leaves, bundle)",
        report.sent, report.failed
    );
    assert_eq!(report.failed, 0, "first failure: {first_error:?}");

    // A leaf from the old generation is no longer trusted; the new generation is.
    let target = stack.target();
    let old = ClientCert {
        cert: &old_leaf.cert,
        key: &old_leaf.key,
    };
    let refused = match connect_mtls(&target, Some(old), Some(stack.token("nurse"))).await {
        Err(_) => true,
        Ok(mut c) => c
            .get_patient(phi_guard_proto::health::v1::GetPatientRequest {
                patient_id: phi_guard_tools::backend::PATIENT_ID.into(),
            })
            .await
            .is_err(),
    };
    assert!(refused, "old-generation client certificate still accepted");
    let mut fresh = stack.client_as("frontend", Some("nurse")).await.unwrap();
    fresh
        .get_patient(phi_guard_proto::health::v1::GetPatientRequest {
            patient_id: phi_guard_tools::backend::PATIENT_ID.into(),
        })
        .await
        .expect("new-generation client accepted");
}
