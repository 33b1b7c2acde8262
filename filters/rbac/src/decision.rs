//! From an evaluation to what the filter does and records: the enforcement mode is applied
//! here, once, so the shell only acts on the result.

use phi_guard_common::{AuthzDecision, GrpcStatus};

use crate::evaluate::{Evaluation, Verdict};
use crate::policy::{Mode, Policy};

/// What the filter does with the request and what it writes to filter state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// `None`: let the request through. `Some(status)`: end it with that gRPC status.
    pub reject: Option<GrpcStatus>,
    /// The authz contract, written to filter state (`phi_guard.authz`).
    pub record: AuthzDecision,
    /// True in shadow mode when enforce mode would have refused the request.
    pub shadow_denied: bool,
}

/// Status mapping: allow → continue; deny → PERMISSION_DENIED (7); unauthenticated →
/// UNAUTHENTICATED (16). In shadow mode nothing is refused and the verdict is recorded as
/// `shadow_decision`.
pub fn decide(policy: &Policy, eval: &Evaluation) -> Decision {
    let status = match eval.verdict {
        Verdict::Allow => None,
        Verdict::Deny => Some(GrpcStatus::PermissionDenied),
        Verdict::Unauthenticated => Some(GrpcStatus::Unauthenticated),
    };
    let rule = eval
        .rule
        .and_then(|i| policy.rules.get(i))
        .map(|r| r.name.clone());
    let (enforced, reject, shadow_decision) = match policy.mode {
        Mode::Enforce => (eval.verdict, status, None),
        Mode::Shadow => (Verdict::Allow, None, Some(eval.verdict)),
    };
    Decision {
        reject,
        shadow_denied: policy.mode == Mode::Shadow && eval.verdict != Verdict::Allow,
        record: AuthzDecision {
            decision: enforced,
            rule,
            role: eval.role.clone(),
            policy_version: policy.version.clone(),
            mode: policy.mode,
            shadow_decision,
            reason: eval.reason.as_str().to_string(),
            break_glass: eval.break_glass,
            break_glass_reason: eval.break_glass_reason.clone(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::evaluate::Reason;

    fn policy(mode: &str) -> Policy {
        let doc = format!(
            r#"{{"version":"v7","mode":"{mode}","rules":[{{"name":"r","action":"allow"}}]}}"#
        );
        Policy::parse(doc.as_bytes()).unwrap()
    }

    fn eval(verdict: Verdict, rule: Option<usize>, reason: Reason) -> Evaluation {
        Evaluation {
            verdict,
            rule,
            role: "nurse".into(),
            reason,
            break_glass: false,
            break_glass_reason: None,
        }
    }

    #[test]
    fn enforce_maps_verdicts_to_statuses() {
        let p = policy("enforce");
        let d = decide(&p, &eval(Verdict::Allow, Some(0), Reason::MatchedAllow));
        assert_eq!(d.reject, None);
        assert_eq!(d.record.decision, Verdict::Allow);
        assert_eq!(d.record.rule.as_deref(), Some("r"));
        assert_eq!(
            (d.record.role.as_str(), d.record.policy_version.as_str()),
            ("nurse", "v7")
        );
        assert_eq!(d.record.shadow_decision, None);
        let d = decide(&p, &eval(Verdict::Deny, None, Reason::NoRule));
        assert_eq!(d.reject, Some(GrpcStatus::PermissionDenied));
        assert_eq!(
            (d.record.decision, d.record.reason.as_str()),
            (Verdict::Deny, "no_rule")
        );
        let d = decide(
            &p,
            &eval(Verdict::Unauthenticated, None, Reason::NoIdentity),
        );
        assert_eq!(d.reject, Some(GrpcStatus::Unauthenticated));
        assert!(!d.shadow_denied);
    }

    #[test]
    fn shadow_never_rejects_and_records_the_verdict() {
        let p = policy("shadow");
        for (v, r) in [
            (Verdict::Deny, Reason::MatchedDeny),
            (Verdict::Unauthenticated, Reason::NoIdentity),
            (Verdict::Allow, Reason::MatchedAllow),
        ] {
            let d = decide(&p, &eval(v, None, r));
            assert_eq!(d.reject, None);
            assert_eq!(d.record.decision, Verdict::Allow);
            assert_eq!(d.record.mode, Mode::Shadow);
            assert_eq!(d.record.shadow_decision, Some(v));
            assert_eq!(d.shadow_denied, v != Verdict::Allow);
        }
    }
}
