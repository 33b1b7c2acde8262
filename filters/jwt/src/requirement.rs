//! What a method's requirement comes to for the tokens a request presents: the requirement
//! tree (Envoy jwt_authn's `JwtRequirement`: provider, `requires_any`, `requires_all`,
//! `allow_missing`) evaluated over which providers' tokens verify. Pure and generic over what
//! a satisfied provider yields, so the engine and `phi-guard-policy test` decide with the same
//! function.

use crate::reason::Reason;

/// What a method requires, as Envoy's `JwtRequirement` has it (`provider_name`,
/// `requires_any`, `requires_all`, `allow_missing`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Requirement {
    /// A token verified by this provider (index into `providers`).
    Provider(usize),
    /// At least one of these holds (the first that does gives the identity).
    AnyOf(Vec<Requirement>),
    /// Every one of these holds (each provider reads its own token; the first gives the
    /// identity).
    AllOf(Vec<Requirement>),
    /// No token needed; a token that is present must still verify (with the provider whose
    /// issuer it names). Only at the top of a rule.
    AllowMissing,
}

/// Why a requirement failed. `Missing` < `WrongIssuer` < a token's own failure: across the
/// alternatives of `any_of` the most telling reason is reported.
fn rank(reason: Reason) -> u8 {
    match reason {
        Reason::Missing => 0,
        Reason::WrongIssuer => 1,
        _ => 2,
    }
}

/// What a method's requirement comes to for the tokens a request presents, before replay
/// protection. `S` is what one satisfied provider yields (a verified token in the engine).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision<S> {
    /// The requirement holds: every provider that satisfied it (the first gives the identity).
    Satisfied(Vec<S>),
    /// The rule allows a missing token and none came.
    Skipped,
    /// UNAUTHENTICATED (or UNAVAILABLE, see [`Reason::status`]).
    Denied(Reason),
    /// A token verifies but no rule names the method: PERMISSION_DENIED (`no_rule`).
    Forbidden(S, Reason),
}

/// The jwt filter's decision for one method, pure: `requirement` is
/// [`Config::requirement_for`] of the method (`None`: no rule names it), `providers` the
/// number of configured providers, and `try_provider(i)` reads and verifies provider `i`'s
/// token (`Err(Reason::Missing)` when the request has none). The engine passes real token
/// verification; `phi-guard-policy test` passes the providers a test case says it has tokens
/// from, so both decide with this one function.
pub fn decide<S>(
    requirement: Option<&Requirement>,
    providers: usize,
    try_provider: &mut dyn FnMut(usize) -> Result<S, Reason>,
) -> Decision<S> {
    let all_providers = || Requirement::AnyOf((0..providers).map(Requirement::Provider).collect());
    let Some(requirement) = requirement else {
        // No rule names the method. A caller without a valid token is still told it is
        // unauthenticated; a caller whose token verifies is known, so PERMISSION_DENIED.
        return match satisfy(&all_providers(), try_provider) {
            Ok(successes) => match successes.into_iter().next() {
                Some(first) => Decision::Forbidden(first, Reason::NoRule),
                None => Decision::Denied(Reason::NoRule),
            },
            Err(reason) => Decision::Denied(reason),
        };
    };
    let (requirement, allow_missing) = match requirement {
        Requirement::AllowMissing => (all_providers(), true),
        other => (other.clone(), false),
    };
    match satisfy(&requirement, try_provider) {
        // A satisfied requirement has at least one token (the config refuses empty lists).
        Ok(successes) if successes.is_empty() => Decision::Denied(Reason::Missing),
        Ok(successes) => Decision::Satisfied(successes),
        Err(Reason::Missing) if allow_missing => Decision::Skipped,
        Err(reason) => Decision::Denied(reason),
    }
}

/// Evaluates a requirement: every provider that satisfied it (the first gives the identity),
/// or why it failed.
fn satisfy<S>(
    requirement: &Requirement,
    try_provider: &mut dyn FnMut(usize) -> Result<S, Reason>,
) -> Result<Vec<S>, Reason> {
    match requirement {
        Requirement::Provider(index) => try_provider(*index).map(|s| vec![s]),
        Requirement::AnyOf(list) => {
            let mut best = Reason::Missing;
            for child in list {
                match satisfy(child, try_provider) {
                    Ok(successes) => return Ok(successes),
                    Err(reason) if rank(reason) > rank(best) => best = reason,
                    Err(_) => {}
                }
            }
            Err(best)
        }
        Requirement::AllOf(list) => {
            let mut all = Vec::new();
            for child in list {
                all.extend(satisfy(child, try_provider)?);
            }
            Ok(all)
        }
        // The config allows it only at the top, where `decide` unwraps it.
        Requirement::AllowMissing => Err(Reason::Missing),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::test;

    #[test]
    fn decide_is_pure_over_which_providers_verify() {
        use Requirement::{AllOf, AllowMissing, AnyOf, Provider};
        // Providers 0 and 1 share a header; the request has a valid token from provider 0.
        let mut only_0 = |i: usize| match i {
            0 => Ok(i),
            1 => Err(Reason::WrongIssuer),
            _ => Err(Reason::Missing),
        };
        assert_eq!(
            decide(Some(&Provider(0)), 3, &mut only_0),
            Decision::Satisfied(vec![0])
        );
        // any_of reports the most telling failure; all_of needs every one.
        assert_eq!(
            decide(Some(&AnyOf(vec![Provider(2), Provider(1)])), 3, &mut only_0),
            Decision::Denied(Reason::WrongIssuer)
        );
        assert_eq!(
            decide(Some(&AllOf(vec![Provider(0), Provider(2)])), 3, &mut only_0),
            Decision::Denied(Reason::Missing)
        );
        // No rule: a verified token is PERMISSION_DENIED, no token UNAUTHENTICATED.
        assert_eq!(
            decide(None, 3, &mut only_0),
            Decision::Forbidden(0, Reason::NoRule)
        );
        let mut none = |_: usize| Err::<usize, _>(Reason::Missing);
        assert_eq!(
            decide(None, 3, &mut none),
            Decision::Denied(Reason::Missing)
        );
        // allow_missing: no token skips, a present token must verify.
        assert_eq!(decide(Some(&AllowMissing), 3, &mut none), Decision::Skipped);
        assert_eq!(
            decide(Some(&AllowMissing), 3, &mut only_0),
            Decision::Satisfied(vec![0])
        );
        let mut bad = |_: usize| Err::<usize, _>(Reason::BadSignature);
        assert_eq!(
            decide(Some(&AllowMissing), 3, &mut bad),
            Decision::Denied(Reason::BadSignature)
        );
    }
}
