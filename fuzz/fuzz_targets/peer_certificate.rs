//! The peer-certificate reader (percent-decoding, PEM, X.509 DER, subjectAltName) on arbitrary
//! `connection.peer_certificate` values, and the peer and header decisions built on it: errors,
//! never panics. The first byte splits the input: a certificate, then header list entries.
#![no_main]

use libfuzzer_sys::fuzz_target;
use phi_guard_rbac::{cert, evaluate, Peer, Policy, Request};

fuzz_target!(|data: &[u8]| {
    let peer = match cert::subject_alt_names(data) {
        Ok(sans) => {
            let uris: Vec<&str> = sans.uris.iter().map(String::as_str).collect();
            let dns: Vec<&str> = sans.dns.iter().map(String::as_str).collect();
            Peer::from_sans(true, &uris, &dns)
        }
        Err(_) => Peer::unreadable(),
    };
    // The same bytes as a header list (`name: value` lines), through the policy's selection.
    let policy = Policy::parse(
        br#"{"version":"f","rules":[{"name":"t","action":"allow","tenant":{"header":"x-tenant-id"},
            "headers":{"x-app":"a"},"principals":[{"any_authenticated":true}]}]}"#,
    )
    .expect("the fuzz policy parses");
    let text = String::from_utf8_lossy(data);
    let headers = policy.select_headers(text.lines().filter_map(|l| l.split_once(": ")));
    let method = phi_guard_common::GrpcMethod::from_path("/a.B/C");
    let _ = evaluate(
        &policy,
        &Request {
            peer: &peer,
            identity: None,
            method: method.as_ref(),
            headers: &headers,
        },
    );
});
