//! Header lists as Envoy hands them to the rbac filter (any names, any values, any repeats),
//! through `Policy::select_headers` and `evaluate`: never a panic, and never an allow while a
//! header the policy reads arrives more than once or as a comma-joined list (issue 12's
//! repeated-header hole: the filter and the backend could read different entries).
//!
//! Input: lines of `name:value` (split at the first `:`), one header entry a line.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use phi_guard_common::{GrpcMethod, Identity};
use phi_guard_rbac::{evaluate, Peer, Policy, Request, Verdict};

const POLICY: &str = r#"{
  "version": "fuzz",
  "rules": [
    {"name": "tenant", "action": "allow", "methods": ["a.B/H"], "tenant": {"header": "x-tenant-id"}},
    {"name": "open", "action": "allow", "methods": ["a.B/Open"]}
  ]
}"#;

fn policy() -> &'static Policy {
    static POLICY_CELL: OnceLock<Policy> = OnceLock::new();
    POLICY_CELL.get_or_init(|| Policy::parse(POLICY.as_bytes()).expect("the fuzz policy parses"))
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let entries: Vec<(&str, &str)> = text
        .lines()
        .filter_map(|line| line.split_once(':'))
        .collect();
    let policy = policy();
    let headers = policy.select_headers(entries.iter().copied());
    let tenant_entries: Vec<&str> = headers
        .iter()
        .filter(|(n, _)| n == "x-tenant-id")
        .map(|(_, v)| v.as_str())
        .collect();
    let ambiguous = tenant_entries.len() > 1 || tenant_entries.iter().any(|v| v.contains(','));

    let peer = Peer::from_sans(
        true,
        &["spiffe://phi-guard.test/ns/clinic/sa/ehr-frontend"],
        &[],
    );
    let identity = Identity {
        provider: "idp".into(),
        issuer: "https://idp.test".into(),
        subject: "user".into(),
        tenant: tenant_entries.first().map(|v| v.to_string()),
        ..Identity::default()
    };
    for path in ["/a.B/H", "/a.B/Open"] {
        let method = GrpcMethod::from_path(path);
        let evaluation = evaluate(
            policy,
            &Request {
                peer: &peer,
                identity: Some(&identity),
                method: method.as_ref(),
                headers: &headers,
            },
        );
        if ambiguous {
            assert_eq!(evaluation.verdict, Verdict::Deny, "{path} {headers:?}");
        }
    }
});
