//! The whole authentication decision for one request, and the per-VM state behind it (key
//! sets, token cache). Pure: the shell passes in headers, the peer certificate digest and the
//! time, and acts on the [`Outcome`].

use phi_guard_common::{GrpcMethod, Identity, UnixSeconds};
use phi_guard_host::SharedData;

use crate::binding;
use crate::cache::TokenCache;
use crate::config::{Config, JwksSource, Requirement, TokenSource};
use crate::jwks::{Fetched, JwksCache};
use crate::keys::{JwksError, KeySet};
use crate::reason::Reason;
use crate::replay::ReplayCache;
use crate::token;
use crate::verify::{self, Keys};

/// What the request carried, as the shell read it.
pub struct Request<'a> {
    /// `None` when `:path` is not a gRPC method.
    pub method: Option<&'a GrpcMethod>,
    /// Looks up a request header (case-insensitive).
    pub header: &'a dyn Fn(&str) -> Option<String>,
    /// Envoy's `connection.sha256_peer_certificate_digest` (lower-case hex), if any.
    pub peer_cert_sha256_hex: Option<&'a str>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Verified {
        /// Boxed: an identity is large next to the other variants.
        identity: Box<Identity>,
        /// The headers that carried the tokens, to remove before the upstream (unless the
        /// provider forwards them).
        strip_headers: Vec<String>,
        cache_hit: bool,
    },
    /// The method allows a missing token and none came.
    Skipped,
    /// Authentication failed: UNAUTHENTICATED (or UNAVAILABLE, see [`Reason::status`]).
    Denied(Reason),
    /// The token is valid, but no rule names the method: PERMISSION_DENIED (the caller is
    /// known, the method is not allowed). The identity goes to the audit event.
    Forbidden {
        identity: Box<Identity>,
        reason: Reason,
    },
}

/// A JWKS fetch the shell should dispatch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchRequest {
    pub provider: usize,
    pub cluster: String,
    pub path: String,
    pub authority: String,
    pub timeout_ms: u64,
}

#[derive(Debug)]
enum ProviderKeys {
    None,
    Inline(KeySet),
    Remote(JwksCache),
}

/// Per-VM state: configuration, key sets, verified-token cache.
#[derive(Debug)]
pub struct Engine {
    config: Config,
    keys: Vec<ProviderKeys>,
    cache: TokenCache,
    replay: Option<ReplayCache>,
}

/// One token that satisfied one provider.
struct Success {
    provider: usize,
    identity: Identity,
    strip_header: Option<String>,
    cache_hit: bool,
    exp: UnixSeconds,
    clock_skew_s: u64,
    jti: Option<String>,
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

/// Reads the token from where `source` says. `None`: no token there (a non-Bearer
/// `authorization`, e.g. Basic, is someone else's credential, so it counts as none).
fn extract(
    source: &TokenSource,
    header: &dyn Fn(&str) -> Option<String>,
) -> Option<Result<String, Reason>> {
    let value = header(source.header_name())?;
    // Only HTTP's optional whitespace (SP, HTAB) surrounds a token; any other byte, a vertical
    // tab or form feed included, stays and makes the token malformed.
    const OWS: [char; 2] = [' ', '\t'];
    let value = value.trim_matches(OWS);
    let token = match source {
        TokenSource::AuthorizationBearer => {
            let (scheme, rest) = value.split_once(' ').unwrap_or((value, ""));
            if !scheme.eq_ignore_ascii_case("bearer") {
                return None;
            }
            rest.trim_matches(OWS)
        }
        TokenSource::Header(_) => value,
    };
    if token.is_empty() {
        return match source {
            TokenSource::AuthorizationBearer => Some(Err(Reason::Malformed)),
            TokenSource::Header(_) => None,
        };
    }
    Some(Ok(token.to_string()))
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

impl Engine {
    pub fn new(config: Config) -> Self {
        let keys = config
            .providers
            .iter()
            .map(|p| match &p.jwks {
                JwksSource::None => ProviderKeys::None,
                JwksSource::Inline(set) => ProviderKeys::Inline(set.clone()),
                JwksSource::Remote(remote) => {
                    ProviderKeys::Remote(JwksCache::new(remote, &p.algorithms))
                }
            })
            .collect();
        let cache = TokenCache::new(config.cache_max_entries);
        let replay = config
            .replay
            .as_ref()
            .map(|r| ReplayCache::new(&r.key, r.max_entries));
        Engine {
            config,
            keys,
            cache,
            replay,
        }
    }

    /// The shared replay cache, when replay protection is configured (for the shell to
    /// prepare at configure time).
    pub fn replay_cache(&self) -> Option<&ReplayCache> {
        self.replay.as_ref()
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    pub fn cached_tokens(&self) -> usize {
        self.cache.len()
    }

    /// Decides one request at `now`, without a replay store: a request that needs replay
    /// protection fails closed (`replay_cache_error`).
    pub fn authenticate(&mut self, request: &Request<'_>, now: UnixSeconds) -> Outcome {
        self.authenticate_with(request, now, None)
    }

    /// Decides one request at `now`; `replay_store` is the host's shared data (shared by
    /// every worker) for `jti` replay protection.
    pub fn authenticate_with(
        &mut self,
        request: &Request<'_>,
        now: UnixSeconds,
        replay_store: Option<&dyn SharedData>,
    ) -> Outcome {
        let Some(method) = request.method else {
            return Outcome::Denied(Reason::BadPath);
        };
        let peer = request
            .peer_cert_sha256_hex
            .and_then(binding::thumbprint_from_hex);
        let requirement = self.config.requirement_for(method).cloned();
        let providers = self.config.providers.len();
        let header = request.header;
        let decision = decide(requirement.as_ref(), providers, &mut |index| {
            let token = match extract(&self.config.providers[index].token_source, header) {
                None => return Err(Reason::Missing),
                Some(Err(reason)) => return Err(reason),
                Some(Ok(token)) => token,
            };
            self.attempt(index, &token, now, peer.as_deref())
        });
        let successes = match decision {
            Decision::Satisfied(successes) => successes,
            Decision::Skipped => return Outcome::Skipped,
            Decision::Denied(reason) => return Outcome::Denied(reason),
            Decision::Forbidden(first, reason) => {
                return Outcome::Forbidden {
                    identity: Box::new(first.identity),
                    reason,
                }
            }
        };
        let rule_replay = self.config.rule_replay_protection(method);
        for success in &successes {
            let provider = &self.config.providers[success.provider];
            if !(rule_replay || provider.replay_protection) {
                continue;
            }
            let Some(jti) = success.jti.as_deref() else {
                return Outcome::Denied(Reason::MissingJti);
            };
            let (Some(cache), Some(store)) = (self.replay.as_ref(), replay_store) else {
                return Outcome::Denied(Reason::ReplayCacheError);
            };
            // Kept as long as the token could be accepted: exp plus the clock skew.
            let until = success.exp.saturating_add(success.clock_skew_s);
            if let Err(reason) = cache.check_and_record(store, &provider.issuer, jti, until, now) {
                return Outcome::Denied(reason);
            }
        }
        let cache_hit = successes.iter().all(|s| s.cache_hit);
        let mut strip_headers: Vec<String> = Vec::new();
        for name in successes.iter().filter_map(|s| s.strip_header.clone()) {
            if !strip_headers.contains(&name) {
                strip_headers.push(name);
            }
        }
        // A satisfied requirement has at least one token (the config refuses empty lists).
        let Some(first) = successes.into_iter().next() else {
            return Outcome::Denied(Reason::Missing);
        };
        Outcome::Verified {
            identity: Box::new(first.identity),
            strip_headers,
            cache_hit,
        }
    }

    /// Verifies `token` for provider `index` (cache first). A token naming another issuer
    /// is `WrongIssuer`.
    fn attempt(
        &mut self,
        index: usize,
        token: &str,
        now: UnixSeconds,
        peer: Option<&str>,
    ) -> Result<Success, Reason> {
        let provider = &self.config.providers[index];
        let strip_header =
            (!provider.forward).then(|| provider.token_source.header_name().to_string());
        let digest = self.cache.digest(token);
        if let Some(hit) = self.cache.get(index, &digest, now) {
            verify::recheck(hit, now, peer)?;
            return Ok(Success {
                provider: index,
                identity: hit.identity.clone(),
                strip_header,
                cache_hit: true,
                exp: hit.exp,
                clock_skew_s: hit.clock_skew_s,
                jti: hit.jti.clone(),
            });
        }

        let parsed = token::parse(token, self.config.max_token_bytes)?;
        // The (unverified) issuer only picks which provider's keys to try; verification then
        // checks it again against that provider.
        if parsed.claims.iss.as_deref() != Some(provider.issuer.as_str()) {
            return Err(Reason::WrongIssuer);
        }
        let keys = match &self.keys[index] {
            ProviderKeys::None => Keys::None,
            ProviderKeys::Inline(set) => Keys::Set(set),
            ProviderKeys::Remote(jwks) => jwks.keys().map_or(Keys::Unavailable, Keys::Set),
        };
        match verify::verify(&parsed, index, provider, keys, now, peer) {
            Ok(verified) => {
                let success = Success {
                    provider: index,
                    identity: verified.identity.clone(),
                    strip_header,
                    cache_hit: false,
                    exp: verified.exp,
                    clock_skew_s: verified.clock_skew_s,
                    jti: verified.jti.clone(),
                };
                self.cache.insert(digest, verified, now);
                Ok(success)
            }
            Err(reason) => {
                // A kid we do not know may be a key the issuer just rotated in.
                if reason == Reason::UnknownKid {
                    if let ProviderKeys::Remote(jwks) = &mut self.keys[index] {
                        jwks.request_refetch(now);
                    }
                }
                Err(reason)
            }
        }
    }

    /// The JWKS fetches due at `now`, each marked as started.
    pub fn due_fetches(&mut self, now: UnixSeconds) -> Vec<FetchRequest> {
        let mut due = Vec::new();
        for (index, keys) in self.keys.iter_mut().enumerate() {
            let ProviderKeys::Remote(jwks) = keys else {
                continue;
            };
            let JwksSource::Remote(remote) = &self.config.providers[index].jwks else {
                continue;
            };
            if jwks.should_fetch(now) {
                jwks.on_fetch_started(now);
                due.push(FetchRequest {
                    provider: index,
                    cluster: remote.cluster.clone(),
                    path: remote.path.clone(),
                    authority: remote.authority.clone(),
                    timeout_ms: remote.timeout_ms,
                });
            }
        }
        due
    }

    fn remote(&mut self, provider: usize) -> Option<&mut JwksCache> {
        match self.keys.get_mut(provider) {
            Some(ProviderKeys::Remote(jwks)) => Some(jwks),
            _ => None,
        }
    }

    /// A JWKS answer arrived: `status` is the HTTP status, `body` the payload.
    pub fn on_jwks_response(
        &mut self,
        provider: usize,
        status: Option<u32>,
        body: &[u8],
        now: UnixSeconds,
    ) -> Result<Fetched, JwksFetchError> {
        let jwks = self
            .remote(provider)
            .ok_or(JwksFetchError::UnknownProvider)?;
        if status != Some(200) {
            jwks.on_fetch_failed(now);
            return Err(JwksFetchError::Status(status));
        }
        let fetched = jwks
            .on_fetched(body, now)
            .map_err(JwksFetchError::Document)?;
        if fetched.changed {
            self.cache.clear_provider(provider);
        }
        Ok(fetched)
    }

    /// True when remote provider `provider` holds a good key set (one fetch succeeded).
    pub fn has_remote_keys(&self, provider: usize) -> bool {
        matches!(self.keys.get(provider), Some(ProviderKeys::Remote(jwks)) if jwks.keys().is_some())
    }

    /// The fetch could not be dispatched, or the host reported no answer.
    pub fn on_jwks_failed(&mut self, provider: usize, now: UnixSeconds) {
        if let Some(jwks) = self.remote(provider) {
            jwks.on_fetch_failed(now);
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JwksFetchError {
    UnknownProvider,
    /// Not HTTP 200 (`None`: no status, e.g. a timeout or reset).
    Status(Option<u32>),
    Document(JwksError),
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::test;

    #[test]
    fn extraction() {
        let h =
            |v: &'static str| move |name: &str| (name == "authorization").then(|| v.to_string());
        let bearer = TokenSource::AuthorizationBearer;
        assert_eq!(extract(&bearer, &h("Bearer abc")), Some(Ok("abc".into())));
        assert_eq!(
            extract(&bearer, &h("bearer   abc ")),
            Some(Ok("abc".into()))
        );
        assert_eq!(extract(&bearer, &h("Basic dXNlcjpwdw==")), None);
        assert_eq!(extract(&bearer, &h("Bearer")), Some(Err(Reason::Malformed)));
        assert_eq!(
            extract(&bearer, &h("Bearer  ")),
            Some(Err(Reason::Malformed))
        );
        assert_eq!(extract(&bearer, &|_: &str| None), None);
        assert_eq!(
            extract(&bearer, &h("Bearer \t abc\t")),
            Some(Ok("abc".into()))
        );
        assert_eq!(
            extract(&bearer, &h("Bearer \u{b}\u{b}abc\u{c}")),
            Some(Ok("\u{b}\u{b}abc\u{c}".into()))
        );
        let custom = TokenSource::Header("x-token".into());
        let x = |name: &str| (name == "x-token").then(|| " t ".to_string());
        assert_eq!(extract(&custom, &x), Some(Ok("t".into())));
        assert_eq!(extract(&custom, &h("Bearer abc")), None);
    }

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
