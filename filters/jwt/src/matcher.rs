//! Which requirement applies to which gRPC method: the rules' method patterns
//! (`pkg.Service/Method`, `pkg.Service/*`, `*`) and the most-specific-match lookup, as Envoy
//! jwt_authn's matcher picks a requirement per route.

use phi_guard_common::GrpcMethod;

use crate::config::Config;
use crate::requirement::Requirement;

/// A method pattern: `pkg.Service/Method`, `pkg.Service/*` or `*`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MethodPattern {
    Exact(String),
    Service(String),
    Any,
}

impl MethodPattern {
    pub(crate) fn parse(pattern: &str) -> Option<Self> {
        if pattern == "*" {
            return Some(MethodPattern::Any);
        }
        if let Some(service) = pattern.strip_suffix("/*") {
            // Validate the service part with the same rules as a real request path.
            GrpcMethod::from_path(&format!("/{service}/M"))?;
            return Some(MethodPattern::Service(service.to_string()));
        }
        let method = GrpcMethod::from_path(&format!("/{pattern}"))?;
        Some(MethodPattern::Exact(method.full_name()))
    }

    /// Higher is more specific; the most specific matching rule wins.
    pub fn specificity(&self) -> u8 {
        match self {
            MethodPattern::Exact(_) => 2,
            MethodPattern::Service(_) => 1,
            MethodPattern::Any => 0,
        }
    }

    pub fn matches(&self, method: &GrpcMethod) -> bool {
        match self {
            MethodPattern::Exact(full) => *full == method.full_name(),
            MethodPattern::Service(service) => *service == method.service,
            MethodPattern::Any => true,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub pattern: MethodPattern,
    pub requires: Requirement,
    /// Refuse a second use of a token's `jti` on the methods of this rule.
    pub replay_protection: bool,
}

/// The rule that decides `method`: the matching one with the most specific pattern.
fn rule_for<'a>(rules: &'a [Rule], method: &GrpcMethod) -> Option<&'a Rule> {
    rules
        .iter()
        .filter(|r| r.pattern.matches(method))
        .max_by_key(|r| r.pattern.specificity())
}

impl Config {
    /// Whether the rule that decides `method` turns replay protection on.
    pub fn rule_replay_protection(&self, method: &GrpcMethod) -> bool {
        rule_for(&self.rules, method).is_some_and(|r| r.replay_protection)
    }

    /// The requirement for a method: the matching rule with the most specific pattern (exact
    /// method, then `Service/*`, then `*`; patterns are unique, so there is no tie), else
    /// `default`. `None` means deny.
    pub fn requirement_for(&self, method: &GrpcMethod) -> Option<&Requirement> {
        rule_for(&self.rules, method)
            .map(|r| &r.requires)
            .or(self.default.as_ref())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::test;
    use crate::testkit;

    #[test]
    fn most_specific_rule_wins_then_default() {
        let env = |_: &str| Some("s".repeat(32));
        let config = Config::parse(testkit::readme_config_json().as_bytes(), &env).unwrap();
        let m = |p: &str| GrpcMethod::from_path(p).unwrap();
        assert_eq!(
            config.requirement_for(&m("/grpc.health.v1.Health/Check")),
            Some(&Requirement::AllowMissing)
        );
        assert_eq!(
            config.requirement_for(&m("/health.v1.PatientService/GetPatient")),
            Some(&Requirement::Provider(0))
        );
        assert_eq!(
            config.requirement_for(&m("/health.v1.PatientService/ExportRecords")),
            Some(&Requirement::AnyOf(vec![
                Requirement::Provider(0),
                Requirement::Provider(1)
            ]))
        );
        assert_eq!(config.requirement_for(&m("/other.Svc/Call")), None);
    }

    #[test]
    fn rule_patterns() {
        assert_eq!(MethodPattern::parse("*"), Some(MethodPattern::Any));
        assert_eq!(
            MethodPattern::parse("a.B/*"),
            Some(MethodPattern::Service("a.B".into()))
        );
        assert_eq!(
            MethodPattern::parse("a.B/C"),
            Some(MethodPattern::Exact("a.B/C".into()))
        );
        for bad in [
            "", "a.B", "a.B/", "/a.B/C", "a.B/C/D", "a.*/C", "a.B/C*", "**",
        ] {
            assert_eq!(MethodPattern::parse(bad), None, "{bad}");
        }
    }
}
