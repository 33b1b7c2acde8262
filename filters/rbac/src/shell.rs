//! The thin host-facing part: gathers the request's facts through [`Host`], calls the core, and
//! acts on the decision. Written against `&dyn Host` so it is unit-tested with `FakeHost`.

use phi_guard_common::{ConfigError, Identity, Verdict};
use phi_guard_host::{
    read_state, reserved_header_names, write_state, Counter, Host, HostExt, LogLevel,
};

use crate::cert;
use crate::decision::{decide, Decision};
use crate::evaluate::{evaluate, Request};
use crate::policy::Policy;
use crate::principal::Peer;

/// Envoy attributes of the downstream connection. The per-SAN attributes
/// (`connection.uri_san_peer_certificate`, ...) carry only the *first* URI and DNS SAN, so the
/// filter reads the validated leaf itself and takes every SAN from it (see README, "SANs").
const MTLS: [&str; 2] = ["connection", "mtls"];
const PEER_CERT: [&str; 2] = ["connection", "peer_certificate"];

/// Parsed certificates kept per VM, so the requests of one connection parse its leaf once.
/// Keyed by the attribute's exact bytes (no hash to collide); FIFO beyond this many.
const PEER_CACHE_ENTRIES: usize = 32;

type PeerCache = std::collections::VecDeque<(Vec<u8>, Option<cert::Sans>)>;

/// Counters, defined once per configuration.
#[derive(Debug, Clone, Default)]
pub struct Metrics {
    allowed: Counter,
    denied: Counter,
    unauthenticated: Counter,
    shadow_denied: Counter,
    /// Break-glass accesses allowed / refused (both modes).
    break_glass_allowed: Counter,
    break_glass_refused: Counter,
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
            break_glass_allowed: Counter::define(host, "phi_guard.rbac.break_glass_allowed"),
            break_glass_refused: Counter::define(host, "phi_guard.rbac.break_glass_refused"),
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
    peers: std::cell::RefCell<PeerCache>,
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
        Ok(Filter {
            policy,
            metrics,
            peers: Default::default(),
        })
    }

    /// Handles the request headers. Returns true to continue the request, false when a gRPC
    /// error was sent and the stream must stop.
    pub fn on_request_headers(&self, host: &dyn Host) -> bool {
        // The whole header list, not `request_header` per name: that hostcall returns only the
        // first entry of a repeated header, and a repetition must be seen to be refused.
        let (mut reserved, mut headers) = (Vec::new(), Vec::new());
        host.with_request_headers(&mut |all| {
            reserved = reserved_header_names(all);
            headers = self
                .policy
                .select_headers(all.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        });
        // Before anything reads headers: an incoming x-phi-guard-* header is a spoof attempt
        // (the policy cannot name one, so `select_headers` never passes one on either).
        for name in &reserved {
            host.remove_request_header(name);
        }

        let peer = self.read_peer(host);
        let identity = read_identity(host);
        let method = host.grpc_method();
        let eval = evaluate(
            &self.policy,
            &Request {
                peer: &peer,
                identity: identity.as_ref(),
                method: method.as_deref(),
                headers: &headers,
            },
        );
        let decision = decide(&self.policy, &eval);
        self.count(host, eval.rule, &decision);
        write_state(host, &decision.record);
        if record_break_glass(host, &decision, method.as_deref()) {
            let m = &self.metrics;
            if decision.record.break_glass_reason.is_some() {
                m.break_glass_allowed.inc(host);
            } else {
                m.break_glass_refused.inc(host);
            }
        }
        let Decision { reject, record, .. } = decision;
        if record.decision != Verdict::Allow
            || record.shadow_decision.is_some_and(|d| d != Verdict::Allow)
        {
            // Rule names and reason codes only: no claim values, no certificate contents.
            host.log(
                LogLevel::Debug,
                &format!(
                    "phi-guard rbac: {} (rule {}, reason {}, mode {})",
                    record.shadow_decision.unwrap_or(record.decision),
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

/// Break-glass is never silent: a warning per use, with the rule, the policy's reason code and
/// the method, never the user, the token's free-text reason or anything from the request.
/// Returns whether a break-glass rule decided.
fn record_break_glass(
    host: &dyn Host,
    decision: &Decision,
    method: Option<&phi_guard_common::GrpcMethod>,
) -> bool {
    let record = &decision.record;
    if !record.break_glass {
        return false;
    }
    let method = method.map_or_else(|| "-".to_string(), |m| m.full_name());
    let rule = record.rule.as_deref().unwrap_or("-");
    let message = match &record.break_glass_reason {
        Some(code) => format!(
            "phi-guard rbac: break-glass access allowed (rule {rule}, reason {code}, method {method}, mode {}); review it",
            record.mode
        ),
        None => format!(
            "phi-guard rbac: break-glass access refused without an accepted reason (rule {rule}, method {method}, mode {})",
            record.mode
        ),
    };
    host.log(LogLevel::Warn, &message);
    true
}

/// A missing policy (configuration refused, or a stream created before one loaded) denies.
pub fn deny_without_policy(host: &dyn Host) -> bool {
    host.strip_reserved_headers();
    host.log(LogLevel::Warn, "phi-guard rbac: no policy loaded, denying");
    host.send_grpc_error(phi_guard_common::GrpcStatus::PermissionDenied, &[]);
    false
}

impl Filter {
    /// The peer from every SAN of its certificate; see [`Peer::from_sans`].
    fn read_peer(&self, host: &dyn Host) -> Peer {
        if host.property(&MTLS).as_deref() != Some(&[1u8][..]) {
            return Peer::none();
        }
        let Some(pem) = host.property(&PEER_CERT) else {
            host.log(
                LogLevel::Warn,
                "phi-guard rbac: mTLS but no connection.peer_certificate attribute; refusing the peer",
            );
            return Peer::unreadable();
        };
        let sans = self.parsed(&pem);
        let peer = match &sans {
            Some(sans) => {
                let uris: Vec<&str> = sans.uris.iter().map(String::as_str).collect();
                let dns: Vec<&str> = sans.dns.iter().map(String::as_str).collect();
                Peer::from_sans(true, &uris, &dns)
            }
            None => Peer::unreadable(),
        };
        if !peer.is_authenticated() && peer.problem.is_none() {
            // No certificate contents in logs: a client certificate's subject can name a person.
            host.log(
                LogLevel::Debug,
                "phi-guard rbac: mTLS peer without a usable SPIFFE URI or DNS SAN",
            );
        }
        peer
    }

    /// The SANs of a `connection.peer_certificate` value, parsed once per distinct value.
    fn parsed(&self, pem: &[u8]) -> Option<cert::Sans> {
        let mut cache = self.peers.borrow_mut();
        if let Some((_, sans)) = cache.iter().find(|(k, _)| k.as_slice() == pem) {
            return sans.clone();
        }
        let sans = cert::subject_alt_names(pem).ok();
        if cache.len() >= PEER_CACHE_ENTRIES {
            cache.pop_front();
        }
        cache.push_back((pem.to_vec(), sans.clone()));
        sans
    }
}

fn read_identity(host: &dyn Host) -> Option<Identity> {
    read_state::<Identity, _>(host).unwrap_or_else(|_| {
        // Fail closed (no end user) and say so without echoing the bytes.
        host.log(
            LogLevel::Warn,
            "phi-guard rbac: identity filter state unreadable; treating the request as having no end user",
        );
        None
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use phi_guard_common::{state, AuthzDecision, AuthzMode, GrpcStatus, StateContract};
    use phi_guard_host::FakeHost;

    const FE: &str = "spiffe://phi-guard.test/ns/clinic/sa/ehr-frontend";
    /// Leaf certificates as Envoy's `connection.peer_certificate` (see testdata/README.md).
    const FE_PEM: &str = include_str!("../testdata/ehr-frontend.pem");
    const TWO_IDS_PEM: &str = include_str!("../testdata/two-spiffe-ids.pem");
    const DNS_ONLY_PEM: &str = include_str!("../testdata/dns-only.pem");

    /// The certificate whose only URI SAN is `san` (only the frontend's is needed here).
    fn cert_for(san: &str) -> &'static [u8] {
        assert_eq!(san, FE, "no fixture certificate for {san}");
        FE_PEM.as_bytes()
    }

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
            host.insert_property(&PEER_CERT, cert_for(san));
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
            host.insert_property(&[state::IDENTITY], &id.encode());
        }
        host
    }

    fn run(mode: &str, host: &FakeHost) -> (bool, Filter) {
        let filter = Filter::configure(host, &config(mode)).unwrap();
        (filter.on_request_headers(host), filter)
    }

    fn authz(host: &FakeHost) -> AuthzDecision {
        read_state(host).unwrap().expect("authz written")
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
        assert_eq!(d.decision, Verdict::Allow);
        assert_eq!(d.rule.as_deref(), Some("nurse-reads"));
        assert_eq!(
            (d.role.as_str(), d.policy_version.as_str(), d.mode),
            ("nurse", "v1", AuthzMode::Enforce)
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
        assert_eq!(authz(&host).decision, Verdict::Unauthenticated);
        assert_eq!(host.counter("phi_guard.rbac.unauthenticated"), 1);
    }

    #[test]
    fn unreadable_identity_is_no_identity() {
        let host = request("/health.v1.PatientService/GetPatient", Some(FE), None);
        host.insert_property(&[state::IDENTITY], b"{\"roles\":[\"nurse\"]}");
        run("enforce", &host);
        assert_eq!(host.sent_status(), Some(GrpcStatus::Unauthenticated));
        assert!(host.log_text().contains("identity filter state unreadable"));
        assert!(!host.log_text().contains("nurse"));
    }

    #[test]
    fn an_identity_with_a_field_outside_the_contract_is_no_identity() {
        let host = request("/health.v1.PatientService/GetPatient", Some(FE), None);
        let id = Identity {
            provider: "idp".into(),
            issuer: "https://idp".into(),
            subject: "s".into(),
            roles: vec!["nurse".into()],
            ..Default::default()
        };
        let mut doc: serde_json::Value = serde_json::from_slice(&id.encode()).unwrap();
        doc["admin"] = serde_json::json!(true);
        host.insert_property(&[state::IDENTITY], doc.to_string().as_bytes());
        let (proceed, _) = run("enforce", &host);
        assert!(!proceed);
        assert_eq!(host.sent_status(), Some(GrpcStatus::Unauthenticated));
        assert_eq!(authz(&host).reason, "no_identity");
        assert!(host.log_text().contains("identity filter state unreadable"));
    }

    #[test]
    fn a_missing_identity_logs_no_warning() {
        let host = request("/health.v1.PatientService/GetPatient", Some(FE), None);
        run("enforce", &host);
        assert_eq!(host.sent_status(), Some(GrpcStatus::Unauthenticated));
        assert!(!host.log_text().contains("unreadable"));
    }

    #[test]
    fn no_mtls_is_denied_not_unauthenticated() {
        let host = request(
            "/health.v1.PatientService/GetPatient",
            None,
            Some(&["nurse"]),
        );
        host.insert_property(&PEER_CERT, cert_for(FE));
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
                Verdict::Deny,
            ),
            (
                "/health.v1.PatientService/GetPatient",
                None,
                Verdict::Unauthenticated,
            ),
            ("/bad", Some(&["nurse"][..]), Verdict::Deny),
            (
                "/health.v1.PatientService/GetPatient",
                Some(&["nurse"][..]),
                Verdict::Allow,
            ),
        ] {
            let host = request(path, Some(FE), roles);
            let (proceed, _) = run("shadow", &host);
            assert!(proceed, "{path}");
            assert_eq!(host.sent_status(), None);
            let d = authz(&host);
            assert_eq!((d.decision, d.mode), (Verdict::Allow, AuthzMode::Shadow));
            assert_eq!(d.shadow_decision, Some(would));
            let shadow_denied = i64::from(would != Verdict::Allow);
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
                "phi_guard.rbac.break_glass_allowed",
                "phi_guard.rbac.break_glass_refused",
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
    fn a_repeated_policy_header_is_refused_with_its_reason() {
        let config = br#"{"version":"v1","rules":[
            {"name":"tenant-reads","action":"allow","tenant":{"header":"x-tenant-id"},
             "methods":["health.v1.PatientService/GetPatient"]}]}"#;
        let run = |headers: &[(&str, &str)]| {
            let mut all = vec![(":path", "/health.v1.PatientService/GetPatient")];
            all.extend_from_slice(headers);
            let host = FakeHost::with_request_headers(&all);
            host.insert_property(&MTLS, &[1]);
            host.insert_property(&PEER_CERT, cert_for(FE));
            let id = Identity {
                tenant: Some("north".into()),
                ..Default::default()
            };
            host.insert_property(&[state::IDENTITY], &id.encode());
            let filter = Filter::configure(&host, config).unwrap();
            let proceed = filter.on_request_headers(&host);
            (proceed, host)
        };
        let (proceed, host) = run(&[("x-tenant-id", "north")]);
        assert!(proceed, "{:?}", authz(&host));
        // Envoy hands the filter each entry of a repeated header: both reach the policy.
        for headers in [
            &[("x-tenant-id", "north"), ("x-tenant-id", "south")][..],
            &[("x-tenant-id", "north,south")][..],
        ] {
            let (proceed, host) = run(headers);
            assert!(!proceed);
            assert_eq!(host.sent_status(), Some(GrpcStatus::PermissionDenied));
            let d = authz(&host);
            assert_eq!(
                (d.decision.as_str(), d.reason.as_str()),
                ("deny", "repeated_header")
            );
            assert!(
                !host.log_text().contains("south"),
                "values are never logged"
            );
        }
    }

    #[test]
    fn every_san_of_the_certificate_counts() {
        let config = br#"{"version":"v1","rules":[
            {"name":"research-never-deletes","action":"deny",
             "principals":["spiffe://phi-guard.test/ns/research/sa/analytics"],
             "methods":["health.v1.PatientService/DeletePatient"]},
            {"name":"admin-deletes","action":"allow",
             "principals":["spiffe://phi-guard.test/ns/ops/sa/admin-tool"],
             "methods":["health.v1.PatientService/DeletePatient"]},
            {"name":"probes","action":"allow","principals":[{"dns":"billing.example.org"}],
             "methods":["grpc.health.v1.Health/Check"]}]}"#;
        let filter = Filter::configure(&FakeHost::default(), config).unwrap();
        let call = |path: &str, cert: Option<&[u8]>| {
            let host = FakeHost::with_request_headers(&[(":path", path)]);
            host.insert_property(&MTLS, &[1]);
            // What Envoy's first-SAN attribute says must not matter.
            host.insert_property(
                &["connection", "uri_san_peer_certificate"],
                b"spiffe://phi-guard.test/ns/ops/sa/admin-tool",
            );
            if let Some(cert) = cert {
                host.insert_property(&PEER_CERT, cert);
            }
            let proceed = filter.on_request_headers(&host);
            (proceed, authz(&host).reason, host)
        };
        let delete = "/health.v1.PatientService/DeletePatient";
        // The issue's input: admin-tool first, analytics second.
        let (proceed, reason, host) = call(delete, Some(TWO_IDS_PEM.as_bytes()));
        assert_eq!((proceed, reason.as_str()), (false, "multiple_uri_sans"));
        assert_eq!(host.sent_status(), Some(GrpcStatus::PermissionDenied));
        assert!(!host.log_text().contains("spiffe://"), "no SAN in the logs");
        // The second DNS SAN names the workload as well as the first.
        let (proceed, reason, _) = call(
            "/grpc.health.v1.Health/Check",
            Some(DNS_ONLY_PEM.as_bytes()),
        );
        assert_eq!((proceed, reason.as_str()), (true, "matched_allow"));
        // mTLS without a readable certificate: refused, not "no SAN".
        for cert in [None, Some(&b"not a certificate"[..])] {
            let (proceed, reason, _) = call(delete, cert);
            assert_eq!((proceed, reason.as_str()), (false, "bad_peer_certificate"));
        }
        // A certificate is parsed once, however many requests present it.
        let before = filter.peers.borrow().len();
        call(delete, Some(TWO_IDS_PEM.as_bytes()));
        assert_eq!(filter.peers.borrow().len(), before);
    }

    #[test]
    fn break_glass_is_flagged_logged_and_counted_without_its_free_text() {
        let config = format!(
            r#"{{"version":"v1","rules":[
            {{"name":"emergency-reads","action":"allow","principals":["{FE}"],"roles":["physician"],
              "methods":["health.v1.PatientService/GetPatient"],
              "break_glass":{{"reasons":["life-threat"]}},"role":"nurse"}}]}}"#
        );
        let call = |reason: Option<&str>| {
            let host = request("/health.v1.PatientService/GetPatient", Some(FE), None);
            let filter = Filter::configure(&host, config.as_bytes()).unwrap();
            let id = Identity {
                subject: "secret-subject-value".into(),
                roles: vec!["physician".into()],
                purpose_of_use: Some("BTG".into()),
                break_glass_reason: reason.map(str::to_string),
                ..Default::default()
            };
            host.insert_property(&[state::IDENTITY], &id.encode());
            let proceed = filter.on_request_headers(&host);
            (proceed, host)
        };
        let (proceed, host) = call(Some("life-threat"));
        assert!(proceed);
        let d = authz(&host);
        assert_eq!(
            (
                d.reason.as_str(),
                d.break_glass,
                d.break_glass_reason.as_deref(),
                d.role.as_str()
            ),
            ("break_glass", true, Some("life-threat"), "nurse")
        );
        let warn = host
            .logs
            .borrow()
            .iter()
            .filter(|(l, _)| *l == LogLevel::Warn)
            .map(|(_, m)| m.clone())
            .collect::<Vec<_>>();
        assert_eq!(warn.len(), 1, "{warn:?}");
        assert!(
            warn[0].contains("break-glass access allowed") && warn[0].contains("emergency-reads")
        );
        assert!(!host.log_text().contains("secret-subject-value"));
        assert_eq!(host.counter("phi_guard.rbac.break_glass_allowed"), 1);
        assert_eq!(host.counter("phi_guard.rbac.break_glass_refused"), 0);

        let (proceed, host) = call(Some("Patient John Doe, bed 4"));
        assert_eq!(host.counter("phi_guard.rbac.break_glass_refused"), 1);
        assert_eq!(host.counter("phi_guard.rbac.break_glass_allowed"), 0);
        assert!(!proceed);
        assert_eq!(host.sent_status(), Some(GrpcStatus::PermissionDenied));
        let d = authz(&host);
        assert_eq!(
            (
                d.reason.as_str(),
                d.break_glass,
                d.break_glass_reason.as_deref()
            ),
            ("break_glass_without_reason", true, None)
        );
        assert!(host.log_text().contains("break-glass access refused"));
        assert!(
            !host.log_text().contains("John Doe"),
            "the free text is never logged"
        );
        assert!(!String::from_utf8_lossy(&d.encode()).contains("John Doe"));
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
