//! Envoy terminating mutual TLS in front of the demo backend: who gets in, who does not.

use std::time::Duration;

use phi_guard_e2e::{probe, wait_until, ProbeOptions};
use phi_guard_proto::health::v1::{GetPatientRequest, ListEncountersRequest};
use phi_guard_tools::backend::{canary, PATIENT_ID};
use phi_guard_tools::client::{connect_mtls, ClientCert};
use phi_guard_tools::pki::{self, Kind};
use phi_guard_tools::stack::Stack;

fn get_patient() -> GetPatientRequest {
    GetPatientRequest {
        patient_id: PATIENT_ID.into(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn valid_client_certificate_gets_real_responses() {
    let stack = Stack::builder("valid_client")
        .workload("frontend", "clinic", "ehr-frontend")
        .start()
        .await
        .expect("stack starts");
    let mut client = stack
        .client_as("frontend", Some("billing"))
        .await
        .expect("mTLS connects");

    let patient = client
        .get_patient(get_patient())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(patient.patient_id, PATIENT_ID);
    assert_eq!(patient.ssn, canary::SSN, "billing sees the SSN");

    let mut stream = client
        .list_encounters(ListEncountersRequest {
            patient_id: PATIENT_ID.into(),
            limit: 20,
            note_bytes: 50_000,
        })
        .await
        .unwrap()
        .into_inner();
    let mut count = 0;
    while let Some(encounter) = stream.message().await.unwrap() {
        assert!(encounter.note.len() >= 50_000);
        count += 1;
    }
    assert_eq!(count, 20, "every streamed message arrives");

    // The connection log shows the verified SPIFFE ID of the peer.
    let log = stack.dir.join("logs/inbound_access.log");
    assert!(
        wait_until(Duration::from_secs(5), || std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("spiffe://phi-guard.test/ns/clinic/sa/ehr-frontend"))
        .await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_client_certificates_are_refused() {
    let stack = Stack::builder("bad_client_certs")
        .workload("frontend", "clinic", "ehr-frontend")
        .start()
        .await
        .expect("stack starts");
    let target = stack.target();
    let spiffe = pki::spiffe_id("clinic", "intruder");
    let untrusted = stack
        .pki
        .issue_untrusted("untrusted", Kind::Client, &spiffe)
        .unwrap();
    let expired = stack
        .pki
        .issue("expired", Kind::Client, &spiffe, &[], &["--expired"])
        .unwrap();
    let server_eku = stack
        .pki
        .issue("server-eku", Kind::Server, &spiffe, &["intruder.test"], &[])
        .unwrap();
    let foreign_domain = stack
        .pki
        .issue(
            "foreign",
            Kind::Client,
            "spiffe://elsewhere.test/ns/clinic/sa/ehr-frontend",
            &[],
            &[],
        )
        .unwrap();

    let prefix = stack.inbound.listener_stat_prefix();
    let cases: [(&str, Option<&pki::Leaf>); 5] = [
        ("no client certificate", None),
        ("certificate from an untrusted CA", Some(&untrusted)),
        ("expired certificate", Some(&expired)),
        ("serverAuth-only certificate", Some(&server_eku)),
        ("SPIFFE ID outside the trust domain", Some(&foreign_domain)),
    ];
    for (what, leaf) in cases {
        let identity = leaf.map(|l| ClientCert {
            cert: &l.cert,
            key: &l.key,
        });
        // With TLS 1.3 the client may finish its side of the handshake before the server
        // rejects its certificate, so the refusal shows as a failed connect or a failed RPC.
        // A valid user token goes along, so only the certificate can be the reason.
        let refused = match connect_mtls(&target, identity, Some(stack.token("nurse"))).await {
            Err(_) => true,
            Ok(mut client) => client.get_patient(get_patient()).await.is_err(),
        };
        assert!(refused, "{what}: was let in");
    }

    let stat = |name: &str| {
        stack
            .inbound
            .stat(&format!("{prefix}ssl.{name}"))
            .unwrap_or(0)
    };
    assert!(stat("fail_verify_no_cert") >= 1, "no-cert refusal counted");
    assert!(
        stat("fail_verify_error") >= 3,
        "untrusted/expired/EKU refusals counted"
    );
    assert!(
        stat("fail_verify_san") >= 1,
        "foreign trust domain refused on SAN"
    );

    // And the legitimate workload still gets in.
    let mut client = stack.client_as("frontend", Some("nurse")).await.unwrap();
    client.get_patient(get_patient()).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protocol_downgrades_are_refused() {
    let stack = Stack::builder("protocol")
        .workload("frontend", "clinic", "ehr-frontend")
        .start()
        .await
        .expect("stack starts");
    let addr = stack.inbound.listen.to_string();
    let leaf = &stack.workload("frontend").leaf;
    let bundle = stack.pki.bundle();
    let run = |alpn: Option<&'static str>, extra: Vec<&'static str>| {
        probe(
            &addr,
            pki::SERVER_NAME,
            &bundle,
            &ProbeOptions {
                cert: Some((&leaf.cert, &leaf.key)),
                extra,
                alpn,
            },
        )
    };

    let tls13 = run(Some("h2"), vec![]);
    assert!(
        tls13.handshake_ok,
        "control: TLS 1.3 with h2\n{}",
        tls13.output
    );
    assert!(tls13.output.contains("TLSv1.3"));
    let tls12 = run(
        Some("h2"),
        vec!["-tls1_2", "-cipher", "ECDHE-ECDSA-AES128-GCM-SHA256"],
    );
    assert!(
        tls12.handshake_ok,
        "control: TLS 1.2 AES-GCM\n{}",
        tls12.output
    );
    let chacha = run(
        Some("h2"),
        vec!["-tls1_2", "-cipher", "ECDHE-ECDSA-CHACHA20-POLY1305"],
    );
    assert!(
        chacha.handshake_ok,
        "control: TLS 1.2 CHACHA20\n{}",
        chacha.output
    );

    let refused = [
        (
            "TLS 1.1",
            run(Some("h2"), vec!["-tls1_1", "-cipher", "DEFAULT@SECLEVEL=0"]),
        ),
        (
            "TLS 1.0",
            run(Some("h2"), vec!["-tls1", "-cipher", "DEFAULT@SECLEVEL=0"]),
        ),
        (
            "TLS 1.2 with AES-CBC",
            run(
                Some("h2"),
                vec!["-tls1_2", "-cipher", "ECDHE-ECDSA-AES128-SHA"],
            ),
        ),
        ("ALPN http/1.1 only", run(Some("http/1.1"), vec![])),
        ("no ALPN", run(None, vec![])),
    ];
    for (what, p) in refused {
        assert!(!p.handshake_ok, "{what} was accepted:\n{}", p.output);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hardening_is_in_place() {
    let stack = Stack::builder("hardening")
        .workload("frontend", "clinic", "ehr-frontend")
        .start()
        .await
        .expect("stack starts");

    // Certificate expiry is visible to monitoring.
    let days = stack
        .inbound
        .stat("server.days_until_first_cert_expiring")
        .expect("expiry gauge present");
    assert!(days <= 1, "24 h leaf reports {days} days");
    let (_, certs) = stack.inbound.admin_get("/certs").unwrap();
    let certs: serde_json::Value = serde_json::from_str(&certs).unwrap();
    let text = certs.to_string();
    assert!(text.contains("expiration_time"), "{text}");
    assert!(text.contains(pki::SERVER_SPIFFE));

    // No plaintext: an h2c client to the mTLS port gets nothing.
    let plain =
        phi_guard_tools::client::connect_plain(&stack.inbound.listen.to_string(), None).await;
    let refused = match plain {
        Err(_) => true,
        Ok(mut c) => c.get_patient(get_patient()).await.is_err(),
    };
    assert!(refused, "plaintext reached the backend");

    // Admin listens on loopback only.
    assert!(stack.inbound.admin.ip().is_loopback());
    let config = std::fs::read_to_string(&stack.inbound.config).unwrap();
    assert!(
        !config.contains("0.0.0.0"),
        "a listener binds every interface"
    );
}
