//! The whole authentication decision for one request, and the per-VM state behind it (key
//! sets, token cache). Pure: the shell passes in headers, the peer certificate digest and the
//! time, and acts on the [`Outcome`].

use phi_guard_common::{GrpcMethod, Identity, UnixSeconds};

use crate::binding;
use crate::cache::TokenCache;
use crate::config::{Config, JwksSource, Requirement, TokenSource};
use crate::jwks::{Fetched, JwksCache};
use crate::keys::{JwksError, KeySet};
use crate::reason::Reason;
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
        /// The header that carried the token, to remove before the upstream (unless the
        /// provider forwards it).
        strip_header: Option<String>,
        cache_hit: bool,
    },
    /// The method allows a missing token and none came.
    Skipped,
    Denied(Reason),
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
}

enum Attempt {
    Done(Outcome),
    /// The token names another issuer: try the next candidate provider.
    OtherIssuer,
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
        Engine {
            config,
            keys,
            cache,
        }
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    pub fn cached_tokens(&self) -> usize {
        self.cache.len()
    }

    /// Decides one request at `now`.
    pub fn authenticate(&mut self, request: &Request<'_>, now: UnixSeconds) -> Outcome {
        let Some(method) = request.method else {
            return Outcome::Denied(Reason::BadPath);
        };
        let Some(requirement) = self.config.requirement_for(method) else {
            return Outcome::Denied(Reason::NoRule);
        };
        let (candidates, allow_missing) = match requirement {
            Requirement::Provider(i) => (vec![*i], false),
            Requirement::AnyOf(list) => (list.clone(), false),
            Requirement::AllowMissing => ((0..self.config.providers.len()).collect(), true),
        };
        let peer = request
            .peer_cert_sha256_hex
            .and_then(binding::thumbprint_from_hex);

        let mut saw_token = false;
        for index in candidates {
            let source = &self.config.providers[index].token_source;
            let Some(extracted) = extract(source, request.header) else {
                continue;
            };
            saw_token = true;
            let token = match extracted {
                Ok(token) => token,
                Err(reason) => return Outcome::Denied(reason),
            };
            match self.attempt(index, &token, now, peer.as_deref()) {
                Attempt::Done(outcome) => return outcome,
                Attempt::OtherIssuer => continue,
            }
        }
        match (saw_token, allow_missing) {
            (false, true) => Outcome::Skipped,
            (false, false) => Outcome::Denied(Reason::Missing),
            (true, _) => Outcome::Denied(Reason::WrongIssuer),
        }
    }

    fn attempt(
        &mut self,
        index: usize,
        token: &str,
        now: UnixSeconds,
        peer: Option<&str>,
    ) -> Attempt {
        let provider = &self.config.providers[index];
        let strip_header =
            (!provider.forward).then(|| provider.token_source.header_name().to_string());
        let digest = self.cache.digest(token);
        if let Some(hit) = self.cache.get(index, &digest, now) {
            return Attempt::Done(match verify::recheck(hit, now, peer) {
                Ok(()) => Outcome::Verified {
                    identity: Box::new(hit.identity.clone()),
                    strip_header,
                    cache_hit: true,
                },
                Err(reason) => Outcome::Denied(reason),
            });
        }

        let parsed = match token::parse(token, self.config.max_token_bytes) {
            Ok(parsed) => parsed,
            Err(reason) => return Attempt::Done(Outcome::Denied(reason)),
        };
        // The (unverified) issuer only picks which provider's keys to try; verification then
        // checks it again against that provider.
        if parsed.claims.iss.as_deref() != Some(provider.issuer.as_str()) {
            return Attempt::OtherIssuer;
        }
        let keys = match &self.keys[index] {
            ProviderKeys::None => Keys::None,
            ProviderKeys::Inline(set) => Keys::Set(set),
            ProviderKeys::Remote(jwks) => jwks.keys().map_or(Keys::Unavailable, Keys::Set),
        };
        match verify::verify(&parsed, index, provider, keys, now, peer) {
            Ok(verified) => {
                let identity = Box::new(verified.identity.clone());
                self.cache.insert(digest, verified, now);
                Attempt::Done(Outcome::Verified {
                    identity,
                    strip_header,
                    cache_hit: false,
                })
            }
            Err(reason) => {
                // A kid we do not know may be a key the issuer just rotated in.
                if reason == Reason::UnknownKid {
                    if let ProviderKeys::Remote(jwks) = &mut self.keys[index] {
                        jwks.request_refetch(now);
                    }
                }
                Attempt::Done(Outcome::Denied(reason))
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
}
