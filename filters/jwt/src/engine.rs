//! The whole authentication decision for one request, and the per-VM state behind it (key
//! sets, token cache). Pure: the shell passes in headers, the peer certificate digest and the
//! time, and acts on the [`Outcome`].

use phi_guard_common::{GrpcMethod, Identity, UnixSeconds};
use phi_guard_host::SharedData;

use crate::binding;
use crate::cache::TokenCache;
use crate::config::{Config, JwksSource};
use crate::extractor::extract;
use crate::jwks::{JwksError, KeySet};
use crate::jwks_cache::{Fetched, JwksCache};
use crate::reason::Reason;
use crate::replay::ReplayCache;
use crate::requirement::{decide, Decision};
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
