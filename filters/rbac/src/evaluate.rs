//! Policy evaluation: pure, no host calls, the same code in the filter and the checker.
//!
//! Precedence:
//! 1. A request whose `:path` is not a well-formed gRPC method is denied (`malformed_method`);
//!    so is one where a header the policy reads is repeated or carries a comma-separated list
//!    (`repeated_header`): the filter and the backend could otherwise read different values;
//!    and so is a peer whose certificate carries more than one URI SAN (`multiple_uri_sans`)
//!    or could not be read (`bad_peer_certificate`).
//! 2. Any matching `deny` rule denies, wherever it sits in the list (`matched_deny`; the first
//!    matching deny rule in list order is reported).
//! 3. Otherwise the first matching `allow` rule allows (`matched_allow`). A `break_glass` rule
//!    matches only a caller whose purpose of use is `BTG`; when it is the first matching allow
//!    rule it allows if the identity's break-glass reason is one of the rule's codes
//!    (`break_glass`), and denies otherwise (`break_glass_without_reason`): an emergency claim
//!    is never silently downgraded to a normal access, nor granted without a justification.
//! 4. Otherwise the request is refused by default. It is `unauthenticated` (`no_identity`)
//!    exactly when the request carries no verified end-user identity and some `allow` rule that
//!    needs one matches on everything else (principals, methods, headers): presenting a token
//!    could change the answer. In every other case it is denied (`no_rule`).
//!
//! A rule matches when all its conditions hold; a list condition holds when any element does,
//! except `scopes`, which holds when the user has every listed scope.

use phi_guard_common::{GrpcMethod, Identity};

use crate::policy::{Action, Policy, Rule, Tenant, BREAK_GLASS_PURPOSE};
use crate::principal::{Peer, PeerProblem};

/// Everything a decision depends on, gathered by the shell (or the checker).
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    pub peer: &'a Peer,
    /// The verified end-user identity, if the jwt filter established one.
    pub identity: Option<&'a Identity>,
    /// `None` when `:path` is not a gRPC method.
    pub method: Option<&'a GrpcMethod>,
    /// The request's entries of the headers the policy reads, names lower-case, every entry
    /// in arrival order ([`Policy::select_headers`]): a repeated header appears repeatedly.
    pub headers: &'a [(String, String)],
}

impl Request<'_> {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// The verdict is the one the authz contract carries (`phi_guard.authz` `decision`).
pub use phi_guard_common::Verdict;

/// Short machine codes for the audit event and debug logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    MatchedAllow,
    MatchedDeny,
    NoRule,
    NoIdentity,
    MalformedMethod,
    /// A header the policy reads came more than once, or as a comma-separated list.
    RepeatedHeader,
    /// The peer certificate carries more than one URI SAN ([`PeerProblem::MultipleUriSans`]).
    MultipleUriSans,
    /// mTLS, but the peer certificate could not be read ([`PeerProblem::UnreadableCertificate`]).
    BadPeerCertificate,
    /// A break-glass rule allowed the request with one of its reason codes.
    BreakGlass,
    /// A break-glass rule was the first to match, but the identity carries none of its codes.
    BreakGlassWithoutReason,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::MatchedAllow => "matched_allow",
            Reason::MatchedDeny => "matched_deny",
            Reason::NoRule => "no_rule",
            Reason::NoIdentity => "no_identity",
            Reason::MalformedMethod => "malformed_method",
            Reason::RepeatedHeader => "repeated_header",
            Reason::MultipleUriSans => "multiple_uri_sans",
            Reason::BadPeerCertificate => "bad_peer_certificate",
            Reason::BreakGlass => "break_glass",
            Reason::BreakGlassWithoutReason => "break_glass_without_reason",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Evaluation {
    pub verdict: Verdict,
    /// Index into [`Policy::rules`] of the deciding rule.
    pub rule: Option<usize>,
    /// The caller's effective role ([`effective_role`]).
    pub role: String,
    pub reason: Reason,
    /// A break-glass rule decided (allowed or refused).
    pub break_glass: bool,
    /// The policy's reason code of an allowed break-glass access.
    pub break_glass_reason: Option<String>,
}

/// Evaluates `req` against `policy`. Never panics; anything it cannot read counts as a
/// condition that does not hold.
pub fn evaluate(policy: &Policy, req: &Request<'_>) -> Evaluation {
    let done = |verdict, rule: Option<usize>, reason| Evaluation {
        verdict,
        rule,
        role: effective_role(policy, rule.map(|i| &policy.rules[i]), req.identity),
        reason,
        break_glass: false,
        break_glass_reason: None,
    };
    let Some(method) = req.method else {
        return done(Verdict::Deny, None, Reason::MalformedMethod);
    };
    match req.peer.problem {
        Some(PeerProblem::MultipleUriSans) => {
            return done(Verdict::Deny, None, Reason::MultipleUriSans)
        }
        Some(PeerProblem::UnreadableCertificate) => {
            return done(Verdict::Deny, None, Reason::BadPeerCertificate)
        }
        None => {}
    }
    if has_repeated_header(req.headers) {
        return done(Verdict::Deny, None, Reason::RepeatedHeader);
    }
    let mut first_allow = None;
    for (i, rule) in policy.rules.iter().enumerate() {
        // Once an allow matched, only deny rules can still change the outcome.
        if first_allow.is_some() && rule.action == Action::Allow {
            continue;
        }
        if matches_request(rule, req, method) && matches_end_user(policy, rule, req) {
            match rule.action {
                Action::Deny => return done(Verdict::Deny, Some(i), Reason::MatchedDeny),
                Action::Allow => first_allow = Some(i),
            }
        }
    }
    if let Some(i) = first_allow {
        let Some(bg) = &policy.rules[i].break_glass else {
            return done(Verdict::Allow, Some(i), Reason::MatchedAllow);
        };
        // The rule matched, so there is an identity with purpose BTG.
        let code = req
            .identity
            .and_then(|id| id.break_glass_reason.as_deref())
            .and_then(|r| bg.reasons.iter().find(|code| *code == r));
        let mut e = match code {
            Some(code) => {
                let mut e = done(Verdict::Allow, Some(i), Reason::BreakGlass);
                e.break_glass_reason = Some(code.clone());
                e
            }
            None => done(Verdict::Deny, Some(i), Reason::BreakGlassWithoutReason),
        };
        e.break_glass = true;
        return e;
    }
    let token_would_help = req.identity.is_none()
        && policy.rules.iter().any(|r| {
            r.action == Action::Allow && r.needs_end_user() && matches_request(r, req, method)
        });
    if token_would_help {
        done(Verdict::Unauthenticated, None, Reason::NoIdentity)
    } else {
        done(Verdict::Deny, None, Reason::NoRule)
    }
}

/// True when a header appears more than once, or one value is a comma-separated list. Envoy
/// hands a filter each entry of a repeated header separately (and `get_http_request_header`
/// only the first), while the backend may act on any of them or on their comma-joined form
/// (RFC 9110 §5.3 makes `a, b` and two entries `a`, `b` the same field), so no single value
/// can be trusted to be the one that counts: fail closed.
fn has_repeated_header(headers: &[(String, String)]) -> bool {
    headers.iter().enumerate().any(|(i, (name, value))| {
        value.contains(',') || headers[..i].iter().any(|(earlier, _)| earlier == name)
    })
}

/// The workload and request conditions: methods, headers, principals.
fn matches_request(rule: &Rule, req: &Request<'_>, method: &GrpcMethod) -> bool {
    if let Some(methods) = &rule.methods {
        if !methods.iter().any(|m| m.matches(method)) {
            return false;
        }
    }
    if !rule
        .headers
        .iter()
        .all(|(name, value)| req.header(name) == Some(value.as_str()))
    {
        return false;
    }
    match &rule.principals {
        Some(p) => p.matches(req.peer),
        None => true,
    }
}

/// The end-user conditions; a rule with none holds for any caller.
fn matches_end_user(policy: &Policy, rule: &Rule, req: &Request<'_>) -> bool {
    if !rule.needs_end_user() {
        return true;
    }
    let Some(id) = req.identity else {
        return false;
    };
    if let Some(roles) = &rule.roles {
        // The user's own role names and their role_map images both count, so a rule can say
        // `billing` and still match an IdP that calls the role `billing_clerk`.
        let holds = id.roles.iter().any(|r| {
            roles.contains(r)
                || policy
                    .role_map
                    .get(r)
                    .is_some_and(|mapped| roles.contains(mapped))
        });
        if !holds {
            return false;
        }
    }
    if let Some(scopes) = &rule.scopes {
        if !scopes.iter().all(|s| id.has_scope(s)) {
            return false;
        }
    }
    if let Some(tenant) = &rule.tenant {
        let want = match tenant {
            Tenant::Fixed(t) => Some(t.as_str()),
            Tenant::Header(h) => req.header(h),
        };
        match (id.tenant.as_deref(), want) {
            (Some(have), Some(want)) if have == want => {}
            _ => return false,
        }
    }
    if rule.break_glass.is_some() && id.purpose_of_use.as_deref() != Some(BREAK_GLASS_PURPOSE) {
        return false;
    }
    if let Some(purposes) = &rule.purpose_of_use {
        match id.purpose_of_use.as_deref() {
            Some(p) if purposes.iter().any(|x| x == p) => {}
            _ => return false,
        }
    }
    true
}

/// The caller's effective role, which the mask filter masks by:
/// 1. the deciding rule's `role`, if it sets one (this is also how a workload-only caller gets
///    a role);
/// 2. else, for an end user, the `role_map` image of the first of the user's roles (in token
///    order) that `role_map` names;
/// 3. else the first of the user's roles that the policy knows (a `role_map` value, a rule's
///    `role`, or an entry of some rule's `roles`);
/// 4. else `none`.
pub fn effective_role(policy: &Policy, rule: Option<&Rule>, identity: Option<&Identity>) -> String {
    if let Some(role) = rule.and_then(|r| r.role.as_deref()) {
        return role.to_string();
    }
    if let Some(id) = identity {
        if let Some(mapped) = id.roles.iter().find_map(|r| policy.role_map.get(r)) {
            return mapped.clone();
        }
        if let Some(known) = id.roles.iter().find(|r| policy.known_roles.contains(*r)) {
            return known.clone();
        }
    }
    "none".to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    const FE: &str = "spiffe://td/ns/clinic/sa/ehr";

    fn policy(rules: Value) -> Policy {
        let doc = json!({"version": "t", "role_map": {"rn": "nurse", "billing_clerk": "billing"}, "rules": rules});
        Policy::parse(doc.to_string().as_bytes()).unwrap()
    }

    fn user(roles: &[&str]) -> Identity {
        Identity {
            roles: roles.iter().map(|r| r.to_string()).collect(),
            ..Default::default()
        }
    }

    fn method(m: &str) -> GrpcMethod {
        GrpcMethod::from_path(&format!("/{m}")).unwrap()
    }

    /// Evaluates with a peer SAN (mTLS on), optional user, method and headers.
    fn eval(
        p: &Policy,
        san: &str,
        id: Option<&Identity>,
        m: &str,
        headers: &[(&str, &str)],
    ) -> Evaluation {
        let peer = Peer::from_attributes(Some(&[1]), Some(san), None);
        let method = GrpcMethod::from_path(&format!("/{m}"));
        let headers: Vec<(String, String)> = headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        evaluate(
            p,
            &Request {
                peer: &peer,
                identity: id,
                method: method.as_ref(),
                headers: &headers,
            },
        )
    }

    fn rule_of(p: &Policy, e: &Evaluation) -> Option<String> {
        e.rule.map(|i| p.rules[i].name.clone())
    }

    #[test]
    fn default_deny() {
        let p = policy(json!([]));
        let e = eval(&p, FE, Some(&user(&["nurse"])), "a.B/C", &[]);
        assert_eq!(
            (e.verdict, e.reason, e.rule),
            (Verdict::Deny, Reason::NoRule, None)
        );
        // The role is reported on denials too (for the audit event).
        assert_eq!(e.role, "nurse");
    }

    #[test]
    fn deny_overrides_allow_regardless_of_order() {
        let allow = json!({"name": "allow-all", "action": "allow"});
        let deny = json!({"name": "no-delete", "action": "deny", "methods": ["a.B/Delete"]});
        for rules in [json!([allow, deny]), json!([deny, allow])] {
            let p = policy(rules);
            let e = eval(&p, FE, None, "a.B/Delete", &[]);
            assert_eq!(e.verdict, Verdict::Deny);
            assert_eq!(rule_of(&p, &e).as_deref(), Some("no-delete"));
            let e = eval(&p, FE, None, "a.B/Get", &[]);
            assert_eq!(
                (e.verdict, rule_of(&p, &e).as_deref()),
                (Verdict::Allow, Some("allow-all"))
            );
        }
    }

    #[test]
    fn first_matching_allow_decides() {
        let p = policy(json!([
            {"name": "a", "action": "allow", "methods": ["x.Y/Z"], "role": "first"},
            {"name": "b", "action": "allow", "role": "second"}
        ]));
        let e = eval(&p, FE, None, "x.Y/Z", &[]);
        assert_eq!(
            (rule_of(&p, &e).as_deref(), e.role.as_str()),
            (Some("a"), "first")
        );
    }

    #[test]
    fn methods_exact_service_wildcard_and_any() {
        let p = policy(json!([
            {"name": "exact", "action": "allow", "methods": ["a.B/Get"]},
            {"name": "svc", "action": "allow", "methods": ["grpc.health.v1.Health/*"]},
        ]));
        assert_eq!(eval(&p, FE, None, "a.B/Get", &[]).verdict, Verdict::Allow);
        assert_eq!(eval(&p, FE, None, "a.B/GetX", &[]).verdict, Verdict::Deny);
        assert_eq!(eval(&p, FE, None, "a.Bc/Get", &[]).verdict, Verdict::Deny);
        assert_eq!(
            eval(&p, FE, None, "grpc.health.v1.Health/Watch", &[]).verdict,
            Verdict::Allow
        );
        assert_eq!(
            eval(&p, FE, None, "grpc.health.v1.HealthX/Watch", &[]).verdict,
            Verdict::Deny
        );
        let any = policy(json!([{"name": "any", "action": "allow", "methods": ["*"]}]));
        assert_eq!(eval(&any, FE, None, "q.R/S", &[]).verdict, Verdict::Allow);
    }

    #[test]
    fn malformed_method_is_denied_even_by_allow_all() {
        let p = policy(json!([{"name": "any", "action": "allow"}]));
        for m in ["a.B/C/D", "a.B", "a..B/C", "a.B/C?x=1", "a.B/%43"] {
            let e = eval(&p, FE, None, m, &[]);
            assert_eq!(
                (e.verdict, e.reason),
                (Verdict::Deny, Reason::MalformedMethod),
                "{m}"
            );
        }
    }

    #[test]
    fn principal_kinds_in_rules() {
        let p = policy(json!([
            {"name": "wild", "action": "allow", "principals": ["spiffe://*/ns/*/sa/analytics"], "methods": ["r.S/A"]},
            {"name": "prefix", "action": "allow", "principals": [{"prefix": "spiffe://td/ns/clinic/"}], "methods": ["r.S/B"]},
            {"name": "dns", "action": "allow", "principals": [{"dns": "billing.example.org"}], "methods": ["r.S/C"]},
        ]));
        assert_eq!(
            eval(
                &p,
                "spiffe://x.org/ns/research/sa/analytics",
                None,
                "r.S/A",
                &[]
            )
            .verdict,
            Verdict::Allow
        );
        assert_eq!(
            eval(
                &p,
                "spiffe://x.org/ns/research/sa/other",
                None,
                "r.S/A",
                &[]
            )
            .verdict,
            Verdict::Deny
        );
        assert_eq!(
            eval(&p, "spiffe://td/ns/clinic/sa/any", None, "r.S/B", &[]).verdict,
            Verdict::Allow
        );
        assert_eq!(
            eval(&p, "spiffe://td/ns/clinical/sa/any", None, "r.S/B", &[]).verdict,
            Verdict::Deny
        );
        let dns_peer = Peer::from_attributes(Some(&[1]), None, Some("billing.example.org"));
        let m = method("r.S/C");
        let req = Request {
            peer: &dns_peer,
            identity: None,
            method: Some(&m),
            headers: &[],
        };
        assert_eq!(evaluate(&p, &req).verdict, Verdict::Allow);
    }

    #[test]
    fn a_peer_with_two_uri_sans_is_refused_before_any_rule() {
        // The issue's input: the first ID is allowed to delete, the second is denied it.
        let p = policy(json!([
            {"name": "research-never-deletes", "action": "deny",
             "principals": ["spiffe://td/ns/research/sa/analytics"], "methods": ["a.B/Delete"]},
            {"name": "admin-deletes", "action": "allow",
             "principals": ["spiffe://td/ns/ops/sa/admin-tool"], "roles": ["admin"], "methods": ["a.B/Delete"]},
            {"name": "open", "action": "allow"},
        ]));
        let m = method("a.B/Delete");
        let admin = user(&["admin"]);
        for uris in [
            &[
                "spiffe://td/ns/ops/sa/admin-tool",
                "spiffe://td/ns/research/sa/analytics",
            ][..],
            &[
                "spiffe://td/ns/ops/sa/admin-tool",
                "https://td.example/other",
            ][..],
        ] {
            let peer = Peer::from_sans(true, uris, &[]);
            let req = Request {
                peer: &peer,
                identity: Some(&admin),
                method: Some(&m),
                headers: &[],
            };
            let e = evaluate(&p, &req);
            assert_eq!(
                (e.verdict, e.reason, e.rule),
                (Verdict::Deny, Reason::MultipleUriSans, None)
            );
        }
        let peer = Peer::from_sans(true, &["spiffe://td/ns/ops/sa/admin-tool"], &[]);
        let req = Request {
            peer: &peer,
            identity: Some(&admin),
            method: Some(&m),
            headers: &[],
        };
        assert_eq!(evaluate(&p, &req).verdict, Verdict::Allow);
        let peer = Peer::unreadable();
        let req = Request {
            peer: &peer,
            identity: Some(&admin),
            method: Some(&m),
            headers: &[],
        };
        assert_eq!(evaluate(&p, &req).reason, Reason::BadPeerCertificate);
    }

    #[test]
    fn no_mtls_never_matches_principals() {
        let p = policy(json!([
            {"name": "any-workload", "action": "allow", "principals": [{"any_authenticated": true}]},
            {"name": "fe", "action": "allow", "principals": [FE]},
        ]));
        let m = method("a.B/C");
        for mtls in [None, Some(&[0u8][..])] {
            let peer = Peer::from_attributes(mtls, Some(FE), Some("fe.example"));
            let req = Request {
                peer: &peer,
                identity: None,
                method: Some(&m),
                headers: &[],
            };
            assert_eq!(evaluate(&p, &req).verdict, Verdict::Deny);
        }
    }

    #[test]
    fn roles_and_role_map() {
        let p = policy(json!([{"name": "r", "action": "allow", "roles": ["nurse", "billing"]}]));
        assert_eq!(
            eval(&p, FE, Some(&user(&["nurse"])), "a.B/C", &[]).verdict,
            Verdict::Allow
        );
        // Matched through role_map: the IdP says billing_clerk, the rule says billing.
        let e = eval(&p, FE, Some(&user(&["billing_clerk"])), "a.B/C", &[]);
        assert_eq!((e.verdict, e.role.as_str()), (Verdict::Allow, "billing"));
        let e = eval(&p, FE, Some(&user(&["janitor"])), "a.B/C", &[]);
        assert_eq!((e.verdict, e.reason), (Verdict::Deny, Reason::NoRule));
    }

    #[test]
    fn effective_role_algorithm() {
        let p = policy(json!([
            {"name": "pinned", "action": "allow", "methods": ["a.B/Pinned"], "role": "research"},
            {"name": "open", "action": "allow", "methods": ["a.B/Open"]},
            {"name": "known", "action": "deny", "methods": ["a.B/Never"], "roles": ["admin"]},
        ]));
        let role = |roles: &[&str], m| eval(&p, FE, Some(&user(roles)), m, &[]).role;
        // 1. the rule's role wins over the user's
        assert_eq!(role(&["rn"], "a.B/Pinned"), "research");
        // 2. first role_map hit in token order, even after a known role
        assert_eq!(
            role(&["admin", "billing_clerk", "rn"], "a.B/Open"),
            "billing"
        );
        // 3. else the first known role
        assert_eq!(role(&["volunteer", "admin", "nurse"], "a.B/Open"), "admin");
        // 4. else none
        assert_eq!(role(&["volunteer"], "a.B/Open"), "none");
        // workload-only callers: the rule's role, else none
        assert_eq!(eval(&p, FE, None, "a.B/Pinned", &[]).role, "research");
        assert_eq!(eval(&p, FE, None, "a.B/Open", &[]).role, "none");
    }

    #[test]
    fn scopes_must_all_be_present() {
        let p = policy(
            json!([{"name": "s", "action": "allow", "scopes": ["patient.read", "encounter.read"]}]),
        );
        let mut id = user(&[]);
        id.scopes = vec!["encounter.read".into(), "x".into(), "patient.read".into()];
        assert_eq!(
            eval(&p, FE, Some(&id), "a.B/C", &[]).verdict,
            Verdict::Allow
        );
        id.scopes = vec!["patient.read".into()];
        assert_eq!(eval(&p, FE, Some(&id), "a.B/C", &[]).verdict, Verdict::Deny);
    }

    #[test]
    fn tenant_fixed_and_from_header() {
        let p = policy(json!([
            {"name": "fixed", "action": "allow", "methods": ["a.B/F"], "tenant": "north"},
            {"name": "hdr", "action": "allow", "methods": ["a.B/H"], "tenant": {"header": "x-tenant-id"}},
        ]));
        let mut id = user(&[]);
        id.tenant = Some("north".into());
        assert_eq!(
            eval(&p, FE, Some(&id), "a.B/F", &[]).verdict,
            Verdict::Allow
        );
        assert_eq!(
            eval(&p, FE, Some(&id), "a.B/H", &[("x-tenant-id", "north")]).verdict,
            Verdict::Allow
        );
        assert_eq!(
            eval(&p, FE, Some(&id), "a.B/H", &[("x-tenant-id", "south")]).verdict,
            Verdict::Deny
        );
        assert_eq!(eval(&p, FE, Some(&id), "a.B/H", &[]).verdict, Verdict::Deny);
        id.tenant = None;
        assert_eq!(eval(&p, FE, Some(&id), "a.B/F", &[]).verdict, Verdict::Deny);
        assert_eq!(
            eval(&p, FE, Some(&id), "a.B/H", &[("x-tenant-id", "")]).verdict,
            Verdict::Deny
        );
    }

    #[test]
    fn a_repeated_or_listed_header_the_policy_reads_is_refused() {
        let p = policy(json!([
            {"name": "hdr", "action": "allow", "methods": ["a.B/H"], "tenant": {"header": "x-tenant-id"}},
            {"name": "any", "action": "allow", "methods": ["a.B/Any"]},
        ]));
        let mut id = user(&[]);
        id.tenant = Some("north".into());
        // The issue's input: the first entry matches the claim, the backend may read the second.
        for headers in [
            &[("x-tenant-id", "north"), ("x-tenant-id", "south")][..],
            &[("x-tenant-id", "south"), ("x-tenant-id", "north")][..],
            &[("x-tenant-id", "north"), ("x-tenant-id", "north")][..],
            &[("x-tenant-id", "north,south")][..],
            &[("x-tenant-id", "north, south")][..],
            &[("x-tenant-id", ",north")][..],
        ] {
            for m in ["a.B/H", "a.B/Any"] {
                let e = eval(&p, FE, Some(&id), m, headers);
                assert_eq!(
                    (e.verdict, e.reason, e.rule),
                    (Verdict::Deny, Reason::RepeatedHeader, None),
                    "{m} {headers:?}"
                );
            }
        }
        // Headers the policy does not read may repeat (the shell never passes them on).
        let headers = p.select_headers([
            ("X-Tenant-Id", "north"),
            ("accept", "a"),
            ("accept", "b"),
            ("x-other", "1,2"),
        ]);
        assert_eq!(headers, [("x-tenant-id".to_string(), "north".to_string())]);
        let peer = Peer::from_attributes(Some(&[1]), Some(FE), None);
        let m = method("a.B/H");
        let req = Request {
            peer: &peer,
            identity: Some(&id),
            method: Some(&m),
            headers: &headers,
        };
        assert_eq!(evaluate(&p, &req).verdict, Verdict::Allow);
        // select_headers keeps every entry, so the repetition reaches evaluate.
        let both = p.select_headers([("x-tenant-id", "north"), ("X-TENANT-ID", "south")]);
        assert_eq!(both.len(), 2);
    }

    #[test]
    fn purpose_of_use_and_headers() {
        let p = policy(json!([{
            "name": "p", "action": "allow", "purpose_of_use": ["TREAT", "ETREAT"],
            "headers": {"x-client-app": "ehr-web"}
        }]));
        let mut id = user(&[]);
        id.purpose_of_use = Some("ETREAT".into());
        assert_eq!(
            eval(&p, FE, Some(&id), "a.B/C", &[("x-client-app", "ehr-web")]).verdict,
            Verdict::Allow
        );
        assert_eq!(
            eval(&p, FE, Some(&id), "a.B/C", &[("x-client-app", "ehr-web2")]).verdict,
            Verdict::Deny
        );
        assert_eq!(eval(&p, FE, Some(&id), "a.B/C", &[]).verdict, Verdict::Deny);
        id.purpose_of_use = Some("HPAYMT".into());
        assert_eq!(
            eval(&p, FE, Some(&id), "a.B/C", &[("x-client-app", "ehr-web")]).verdict,
            Verdict::Deny
        );
    }

    #[test]
    fn break_glass_needs_btg_and_a_listed_reason() {
        let p = policy(json!([
            {"name": "research-never-deletes", "action": "deny",
             "principals": ["spiffe://td/ns/research/sa/analytics"]},
            {"name": "nurse-reads", "action": "allow", "roles": ["nurse"], "methods": ["a.B/Get"]},
            {"name": "emergency-reads", "action": "allow", "roles": ["physician"], "methods": ["a.B/Get"],
             "break_glass": {"reasons": ["patient-unconscious", "life-threat"]}, "role": "nurse"},
        ]));
        let doctor = |purpose: Option<&str>, reason: Option<&str>| Identity {
            roles: vec!["physician".into(), "admin".into()],
            purpose_of_use: purpose.map(str::to_string),
            break_glass_reason: reason.map(str::to_string),
            ..Default::default()
        };
        let bg = |e: &Evaluation| {
            (
                e.verdict,
                e.reason,
                e.break_glass,
                e.break_glass_reason.clone(),
            )
        };
        // Allowed with a listed reason; the role is the rule's, whatever the token says.
        let e = eval(
            &p,
            FE,
            Some(&doctor(Some("BTG"), Some("life-threat"))),
            "a.B/Get",
            &[],
        );
        assert_eq!(
            bg(&e),
            (
                Verdict::Allow,
                Reason::BreakGlass,
                true,
                Some("life-threat".into())
            )
        );
        assert_eq!(
            (rule_of(&p, &e).as_deref(), e.role.as_str()),
            (Some("emergency-reads"), "nurse")
        );
        // Refused without a reason, or with one the policy does not list (free text included).
        for reason in [
            None,
            Some("Patient John Doe collapsed"),
            Some("LIFE-THREAT"),
            Some(""),
        ] {
            let e = eval(&p, FE, Some(&doctor(Some("BTG"), reason)), "a.B/Get", &[]);
            assert_eq!(
                bg(&e),
                (Verdict::Deny, Reason::BreakGlassWithoutReason, true, None),
                "{reason:?}"
            );
            assert_eq!(rule_of(&p, &e).as_deref(), Some("emergency-reads"));
        }
        // Without purpose BTG the rule does not match at all: default deny, no flag.
        for purpose in [None, Some("TREAT"), Some("btg")] {
            let e = eval(
                &p,
                FE,
                Some(&doctor(purpose, Some("life-threat"))),
                "a.B/Get",
                &[],
            );
            assert_eq!(
                bg(&e),
                (Verdict::Deny, Reason::NoRule, false, None),
                "{purpose:?}"
            );
        }
        // Break-glass never overrides a deny rule.
        let e = eval(
            &p,
            "spiffe://td/ns/research/sa/analytics",
            Some(&doctor(Some("BTG"), Some("life-threat"))),
            "a.B/Get",
            &[],
        );
        assert_eq!((e.verdict, e.reason), (Verdict::Deny, Reason::MatchedDeny));
        // A caller the normal rules allow is a normal access, not a break-glass one.
        let mut nurse = user(&["nurse"]);
        nurse.purpose_of_use = Some("BTG".into());
        let e = eval(&p, FE, Some(&nurse), "a.B/Get", &[]);
        assert_eq!((e.reason, e.break_glass), (Reason::MatchedAllow, false));
        // No token at all: a token could help.
        assert_eq!(
            eval(&p, FE, None, "a.B/Get", &[]).verdict,
            Verdict::Unauthenticated
        );
    }

    #[test]
    fn unauthenticated_only_when_a_token_could_help() {
        let p = policy(json!([
            {"name": "fe-users", "action": "allow", "principals": [FE], "roles": ["nurse"], "methods": ["a.B/Get"]},
            {"name": "no-delete", "action": "deny", "methods": ["a.B/Delete"]},
            {"name": "fe-users-delete", "action": "allow", "principals": [FE], "roles": ["admin"], "methods": ["a.B/Delete"]},
        ]));
        // No user, and an allow rule needing one matches on workload and method: 16.
        let e = eval(&p, FE, None, "a.B/Get", &[]);
        assert_eq!(
            (e.verdict, e.reason),
            (Verdict::Unauthenticated, Reason::NoIdentity)
        );
        // A user who fails the user conditions: 7.
        let e = eval(&p, FE, Some(&user(&["billing"])), "a.B/Get", &[]);
        assert_eq!((e.verdict, e.reason), (Verdict::Deny, Reason::NoRule));
        // Another workload: no rule would match even with a token: 7.
        let e = eval(&p, "spiffe://td/ns/x/sa/y", None, "a.B/Get", &[]);
        assert_eq!((e.verdict, e.reason), (Verdict::Deny, Reason::NoRule));
        // Another method: 7.
        assert_eq!(eval(&p, FE, None, "a.B/List", &[]).verdict, Verdict::Deny);
        // A matching deny beats "a token could help": 7.
        let e = eval(&p, FE, None, "a.B/Delete", &[]);
        assert_eq!((e.verdict, e.reason), (Verdict::Deny, Reason::MatchedDeny));
        // Without mTLS the principal never matches, so a token would not help: 7.
        let peer = Peer::none();
        let m = method("a.B/Get");
        let req = Request {
            peer: &peer,
            identity: None,
            method: Some(&m),
            headers: &[],
        };
        assert_eq!(evaluate(&p, &req).verdict, Verdict::Deny);
    }

    #[test]
    fn deny_rules_with_user_conditions_need_the_user() {
        let p = policy(json!([
            {"name": "all", "action": "allow"},
            {"name": "no-research-deletes", "action": "deny", "roles": ["research"], "methods": ["a.B/Delete"]},
        ]));
        assert_eq!(
            eval(&p, FE, Some(&user(&["research"])), "a.B/Delete", &[]).verdict,
            Verdict::Deny
        );
        assert_eq!(
            eval(&p, FE, Some(&user(&["nurse"])), "a.B/Delete", &[]).verdict,
            Verdict::Allow
        );
        assert_eq!(
            eval(&p, FE, None, "a.B/Delete", &[]).verdict,
            Verdict::Allow
        );
    }
}
