//! The thin host-facing part: gathers the request's facts through [`Host`], calls the core, and
//! acts on the decision. Written against `&dyn Host` so it is unit-tested with `FakeHost`.

use phi_guard_common::{state, ConfigError, Identity};
use phi_guard_host::{Counter, Host, HostExt, LogLevel};

use crate::decision::{decide, Decision};
use crate::evaluate::{evaluate, Request};
use crate::policy::Policy;
use crate::principal::Peer;

/// Envoy attributes of the downstream connection. Envoy exposes only the *first* URI SAN and
/// the first DNS SAN of the peer certificate through these (see README, "SAN limit").
const MTLS: [&str; 2] = ["connection", "mtls"];
const URI_SAN: [&str; 2] = ["connection", "uri_san_peer_certificate"];
const DNS_SAN: [&str; 2] = ["connection", "dns_san_peer_certificate"];
const SUBJECT: [&str; 2] = ["connection", "subject_peer_certificate"];

/// Counters, defined once per configuration.
#[derive(Debug, Clone, Default)]
pub struct Metrics {
    allowed: Counter,
    denied: Counter,
    unauthenticated: Counter,
    shadow_denied: Counter,
    /// `phi_guard.rbac.rule.<name>.matched`, by rule index.
    rules: Vec<Counter>,
}

impl Metrics {
    pub fn define(host: &dyn Host, policy: &Policy) -> Self {
        Metrics {
            allowed: Counter::define(host, "phi_guard.rbac.allowed"),
            denied: Counter::define(host, "phi_guard.rbac.denied"),
            unauthenticated: Counter::define(host, "phi_guard.rbac.unauthenticated"),
            shadow_denied: Counter::define(host, "phi_guard.rbac.shadow_denied"),
            rules: policy
                .rules
                .iter()
                .map(|r| Counter::define(host, &format!("phi_guard.rbac.rule.{}.matched", r.name)))
                .collect(),
        }
    }
}

/// One configured filter: the compiled policy and its counters.
#[derive(Debug)]
pub struct Filter {
    pub policy: Policy,
    metrics: Metrics,
}

impl Filter {
    /// Parses the plugin configuration. On error the caller logs it and refuses the config.
    pub fn configure(host: &dyn Host, config: &[u8]) -> Result<Self, ConfigError> {
        let policy = Policy::parse(config)?;
        let metrics = Metrics::define(host, &policy);
        host.log(
            LogLevel::Info,
            &format!(
                "phi-guard rbac: policy {} loaded, {} rules, mode {}",
                policy.version,
                policy.rules.len(),
                policy.mode.as_str()
            ),
        );
        Ok(Filter { policy, metrics })
    }

    /// Handles the request headers. Returns true to continue the request, false when a gRPC
    /// error was sent and the stream must stop.
    pub fn on_request_headers(&self, host: &dyn Host) -> bool {
        // Before anything reads headers: an incoming x-phi-guard-* header is a spoof attempt.
        host.strip_reserved_headers();

        let peer = read_peer(host);
        let identity = read_identity(host);
        let method = host.grpc_method();
        let headers: Vec<(String, String)> = self
            .policy
            .header_names()
            .iter()
            .filter_map(|name| host.request_header(name).map(|v| (name.clone(), v)))
            .collect();
        let eval = evaluate(
            &self.policy,
            &Request {
                peer: &peer,
                identity: identity.as_ref(),
                method: method.as_ref(),
                headers: &headers,
            },
        );
        let decision = decide(&self.policy, &eval);
        self.count(host, eval.rule, &decision);
        host.set_filter_state(state::AUTHZ, &decision.record.to_bytes());
        let Decision { reject, record, .. } = decision;
        if record.decision != "allow"
            || record
                .shadow_decision
                .as_deref()
                .is_some_and(|d| d != "allow")
        {
            // Rule names and reason codes only: no claim values, no certificate contents.
            host.log(
                LogLevel::Debug,
                &format!(
                    "phi-guard rbac: {} (rule {}, reason {}, mode {})",
                    record
                        .shadow_decision
                        .as_deref()
                        .unwrap_or(&record.decision),
                    record.rule.as_deref().unwrap_or("-"),
                    record.reason,
                    record.mode
                ),
            );
        }
        match reject {
            Some(status) => {
                host.send_grpc_error(status, &[]);
                false
            }
            None => true,
        }
    }

    fn count(&self, host: &dyn Host, rule: Option<usize>, decision: &Decision) {
        if let Some(counter) = rule.and_then(|i| self.metrics.rules.get(i)) {
            counter.inc(host);
        }
        let m = &self.metrics;
        match decision.reject {
            _ if decision.shadow_denied => m.shadow_denied.inc(host),
            None => m.allowed.inc(host),
            Some(phi_guard_common::GrpcStatus::Unauthenticated) => m.unauthenticated.inc(host),
            Some(_) => m.denied.inc(host),
        }
    }
}

/// A missing policy (configuration refused, or a stream created before one loaded) denies.
pub fn deny_without_policy(host: &dyn Host) -> bool {
    host.strip_reserved_headers();
    host.log(LogLevel::Warn, "phi-guard rbac: no policy loaded, denying");
    host.send_grpc_error(phi_guard_common::GrpcStatus::PermissionDenied, &[]);
    false
}

fn read_peer(host: &dyn Host) -> Peer {
    let mtls = host.property(&MTLS);
    let uri = host.string_property(&URI_SAN);
    let dns = host.string_property(&DNS_SAN);
    let peer = Peer::from_attributes(mtls.as_deref(), uri.as_deref(), dns.as_deref());
    if mtls.as_deref() == Some(&[1u8][..]) && !peer.is_authenticated() {
        // Workload identifiers, not secrets, but still only at debug.
        let subject = host.string_property(&SUBJECT);
        host.log(
            LogLevel::Debug,
            &format!(
                "phi-guard rbac: mTLS peer without a usable SPIFFE URI or DNS SAN (subject {})",
                subject.as_deref().unwrap_or("-")
            ),
        );
    }
    peer
}

fn read_identity(host: &dyn Host) -> Option<Identity> {
    let bytes = host.filter_state(state::IDENTITY)?;
    let identity = Identity::from_bytes(&bytes);
    if identity.is_none() {
        // Fail closed (no end user) and say so without echoing the bytes.
        host.log(
            LogLevel::Warn,
            "phi-guard rbac: identity filter state unreadable; treating the request as having no end user",
        );
    }
    identity
}

#[cfg(test)]
mod tests {
    use super::*;
    use phi_guard_common::{AuthzDecision, GrpcStatus};
    use phi_guard_host::FakeHost;

    const FE: &str = "spiffe://phi-guard.test/ns/clinic/sa/ehr-frontend";

    fn config(mode: &str) -> Vec<u8> {
        format!(
            r#"{{"version":"v1","mode":"{mode}","rules":[
                {{"name":"nurse-reads","action":"allow","principals":["{FE}"],"roles":["nurse"],
                  "methods":["health.v1.PatientService/GetPatient"]}},
                {{"name":"no-delete","action":"deny","methods":["health.v1.PatientService/DeletePatient"]}}
            ]}}"#
        )
        .into_bytes()
    }

    fn request(path: &str, san: Option<&str>, roles: Option<&[&str]>) -> FakeHost {
        let host = FakeHost::with_request_headers(&[
            (":path", path),
            ("x-phi-guard-role", "admin"),
            ("content-type", "application/grpc"),
        ]);
        if let Some(san) = san {
            host.insert_property(&MTLS, &[1]);
            host.insert_property(&URI_SAN, san.as_bytes());
        }
        if let Some(roles) = roles {
            let id = Identity {
                provider: "idp".into(),
                issuer: "https://idp".into(),
                subject: "secret-subject-value".into(),
                roles: roles.iter().map(|r| r.to_string()).collect(),
                tenant: Some("secret-tenant-value".into()),
                expires_at: 1,
                ..Default::default()
            };
            host.insert_property(&[state::IDENTITY], &id.to_bytes());
        }
        host
    }

    fn run(mode: &str, host: &FakeHost) -> (bool, Filter) {
        let filter = Filter::configure(host, &config(mode)).unwrap();
        (filter.on_request_headers(host), filter)
    }

    fn authz(host: &FakeHost) -> AuthzDecision {
        AuthzDecision::from_bytes(&host.property(&[state::AUTHZ]).expect("authz written")).unwrap()
    }

    #[test]
    fn allow_continues_and_writes_authz() {
        let host = request(
            "/health.v1.PatientService/GetPatient",
            Some(FE),
            Some(&["nurse"]),
        );
        let (proceed, _) = run("enforce", &host);
        assert!(proceed);
        assert_eq!(host.sent_status(), None);
        let d = authz(&host);
        assert_eq!(d.decision, "allow");
        assert_eq!(d.rule.as_deref(), Some("nurse-reads"));
        assert_eq!(
            (d.role.as_str(), d.policy_version.as_str(), d.mode.as_str()),
            ("nurse", "v1", "enforce")
        );
        assert_eq!(d.reason, "matched_allow");
        assert_eq!(host.counter("phi_guard.rbac.allowed"), 1);
        assert_eq!(host.counter("phi_guard.rbac.rule.nurse-reads.matched"), 1);
        // The spoofed header is gone before anything downstream can read it.
        assert_eq!(host.request_header("x-phi-guard-role"), None);
        assert_eq!(
            host.request_header("content-type").as_deref(),
            Some("application/grpc")
        );
    }

    #[test]
    fn deny_sends_permission_denied() {
        let host = request(
            "/health.v1.PatientService/DeletePatient",
            Some(FE),
            Some(&["nurse"]),
        );
        let (proceed, _) = run("enforce", &host);
        assert!(!proceed);
        assert_eq!(host.sent_status(), Some(GrpcStatus::PermissionDenied));
        assert_eq!(authz(&host).reason, "matched_deny");
        assert_eq!(host.counter("phi_guard.rbac.denied"), 1);
        assert_eq!(host.counter("phi_guard.rbac.rule.no-delete.matched"), 1);
        assert_eq!(host.counter("phi_guard.rbac.allowed"), 0);
    }

    #[test]
    fn missing_identity_where_needed_sends_unauthenticated() {
        let host = request("/health.v1.PatientService/GetPatient", Some(FE), None);
        let (proceed, _) = run("enforce", &host);
        assert!(!proceed);
        assert_eq!(host.sent_status(), Some(GrpcStatus::Unauthenticated));
        assert_eq!(authz(&host).decision, "unauthenticated");
        assert_eq!(host.counter("phi_guard.rbac.unauthenticated"), 1);
    }

    #[test]
    fn unreadable_identity_is_no_identity() {
        let host = request("/health.v1.PatientService/GetPatient", Some(FE), None);
        host.insert_property(&[state::IDENTITY], b"{\"roles\":[\"nurse\"]}");
        run("enforce", &host);
        assert_eq!(host.sent_status(), Some(GrpcStatus::Unauthenticated));
        assert!(!host.log_text().contains("nurse"));
    }

    #[test]
    fn no_mtls_is_denied_not_unauthenticated() {
        let host = request(
            "/health.v1.PatientService/GetPatient",
            None,
            Some(&["nurse"]),
        );
        host.insert_property(&URI_SAN, FE.as_bytes());
        host.insert_property(&MTLS, &[0]);
        run("enforce", &host);
        assert_eq!(host.sent_status(), Some(GrpcStatus::PermissionDenied));
    }

    #[test]
    fn malformed_path_is_denied() {
        let host = request(
            "/health.v1.PatientService/GetPatient/../DeletePatient",
            Some(FE),
            Some(&["nurse"]),
        );
        let (proceed, _) = run("enforce", &host);
        assert!(!proceed);
        assert_eq!(host.sent_status(), Some(GrpcStatus::PermissionDenied));
        assert_eq!(authz(&host).reason, "malformed_method");
    }

    #[test]
    fn shadow_never_sends() {
        for (path, roles, would) in [
            (
                "/health.v1.PatientService/DeletePatient",
                Some(&["nurse"][..]),
                "deny",
            ),
            (
                "/health.v1.PatientService/GetPatient",
                None,
                "unauthenticated",
            ),
            ("/bad", Some(&["nurse"][..]), "deny"),
            (
                "/health.v1.PatientService/GetPatient",
                Some(&["nurse"][..]),
                "allow",
            ),
        ] {
            let host = request(path, Some(FE), roles);
            let (proceed, _) = run("shadow", &host);
            assert!(proceed, "{path}");
            assert_eq!(host.sent_status(), None);
            let d = authz(&host);
            assert_eq!((d.decision.as_str(), d.mode.as_str()), ("allow", "shadow"));
            assert_eq!(d.shadow_decision.as_deref(), Some(would));
            let shadow_denied = i64::from(would != "allow");
            assert_eq!(host.counter("phi_guard.rbac.shadow_denied"), shadow_denied);
            assert_eq!(host.counter("phi_guard.rbac.allowed"), 1 - shadow_denied);
            assert_eq!(host.counter("phi_guard.rbac.denied"), 0);
        }
    }

    #[test]
    fn logs_carry_no_claim_values() {
        let host = request(
            "/health.v1.PatientService/DeletePatient",
            Some(FE),
            Some(&["nurse"]),
        );
        run("enforce", &host);
        let logs = host.log_text();
        assert!(!logs.contains("secret-subject-value") && !logs.contains("secret-tenant-value"));
        assert!(
            !logs.contains(FE),
            "SANs are not logged on the decision path"
        );
    }

    #[test]
    fn configure_defines_every_counter() {
        let host = FakeHost::default();
        Filter::configure(&host, &config("enforce")).unwrap();
        let names: Vec<String> = host
            .counters
            .borrow()
            .iter()
            .map(|(n, _)| n.clone())
            .collect();
        assert_eq!(
            names,
            [
                "phi_guard.rbac.allowed",
                "phi_guard.rbac.denied",
                "phi_guard.rbac.unauthenticated",
                "phi_guard.rbac.shadow_denied",
                "phi_guard.rbac.rule.nurse-reads.matched",
                "phi_guard.rbac.rule.no-delete.matched",
            ]
        );
        let err = Filter::configure(
            &host,
            br#"{"version":"1","rules":[{"name":"x","action":"allow","principals":["bad"]}]}"#,
        )
        .unwrap_err();
        assert_eq!(err.field, "rules[0].principals[0]");
    }

    #[test]
    fn no_policy_denies() {
        let host = request(
            "/health.v1.PatientService/GetPatient",
            Some(FE),
            Some(&["nurse"]),
        );
        assert!(!deny_without_policy(&host));
        assert_eq!(host.sent_status(), Some(GrpcStatus::PermissionDenied));
        assert_eq!(host.request_header("x-phi-guard-role"), None);
    }
}
