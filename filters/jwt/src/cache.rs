//! Verified-token cache, one per VM (Envoy runs one VM per worker thread).
//!
//! A token reused across RPCs is verified once. Keyed by (provider, a 128-bit SipHash-1-3 tag
//! of the token under a random per-VM key): the token itself is never stored. SipHash with a
//! secret key is a PRF, so a forged token lands on a cached tag with probability about
//! entries / 2^128; unlike SHA-256 (the cost of most cache hits in V8) it runs at about a
//! cycle per byte. A hit is not a pass: the caller re-applies the time and
//! certificate-binding checks ([`crate::verify::recheck`]). Bounded: least recently used
//! entries go first, expired ones before them.

use std::collections::{BTreeMap, HashMap};
use std::hash::{BuildHasher, Hasher};

use phi_guard_common::UnixSeconds;
use siphasher::sip128::{Hasher128, SipHasher13};

use crate::verify::Verified;

pub type TokenDigest = u128;

/// 128 bits of key from the standard library's randomly seeded hasher (the OS's, or on
/// wasm32-wasip1 the host's, random source), fresh per VM.
fn random_key() -> [u8; 16] {
    let seed = std::collections::hash_map::RandomState::new();
    let mut key = [0u8; 16];
    for (i, half) in key.chunks_mut(8).enumerate() {
        let mut h = seed.build_hasher();
        h.write_usize(i);
        half.copy_from_slice(&h.finish().to_le_bytes());
    }
    key
}

type Key = (usize, TokenDigest);

#[derive(Debug)]
struct Entry {
    verified: Verified,
    last_used: u64,
    /// The instant the entry expires (`exp` + skew), with the insertion stamp that makes it
    /// unique in [`TokenCache::deadlines`].
    deadline: (UnixSeconds, u64),
}

#[derive(Debug)]
pub struct TokenCache {
    key: [u8; 16],
    max_entries: usize,
    entries: HashMap<Key, Entry>,
    /// Use stamp → key, oldest first.
    lru: BTreeMap<u64, Key>,
    /// Expiry → key, soonest first: a full cache drops its expired entries without scanning
    /// every entry (a miss on a full cache would otherwise cost O(entries)).
    deadlines: BTreeMap<(UnixSeconds, u64), Key>,
    stamp: u64,
}

impl TokenCache {
    pub fn new(max_entries: usize) -> Self {
        TokenCache {
            key: random_key(),
            max_entries,
            entries: HashMap::new(),
            lru: BTreeMap::new(),
            deadlines: BTreeMap::new(),
            stamp: 0,
        }
    }

    /// The cache's key for `token`.
    pub fn digest(&self, token: &str) -> TokenDigest {
        let mut h = SipHasher13::new_with_key(&self.key);
        h.write(token.as_bytes());
        h.finish128().as_u128()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    fn next_stamp(&mut self) -> u64 {
        self.stamp += 1;
        self.stamp
    }

    /// The cached verification of `token_digest` by `provider`. An entry past its `exp` (plus
    /// skew) is dropped rather than returned.
    pub fn get(
        &mut self,
        provider: usize,
        token_digest: &TokenDigest,
        now: UnixSeconds,
    ) -> Option<&Verified> {
        let key = (provider, *token_digest);
        let entry = self.entries.get(&key)?;
        if now
            >= entry
                .verified
                .exp
                .saturating_add(entry.verified.clock_skew_s)
        {
            self.remove(&key);
            return None;
        }
        let old = entry.last_used;
        let stamp = self.next_stamp();
        self.lru.remove(&old);
        self.lru.insert(stamp, key);
        let entry = self.entries.get_mut(&key)?;
        entry.last_used = stamp;
        Some(&entry.verified)
    }

    pub fn insert(&mut self, token_digest: TokenDigest, verified: Verified, now: UnixSeconds) {
        if self.max_entries == 0 {
            return;
        }
        let key = (verified.provider, token_digest);
        self.remove(&key);
        if self.entries.len() >= self.max_entries {
            self.evict_expired(now);
        }
        while self.entries.len() >= self.max_entries {
            let Some((_, &oldest)) = self.lru.first_key_value() else {
                break;
            };
            self.remove(&oldest);
        }
        let stamp = self.next_stamp();
        let deadline = (verified.exp.saturating_add(verified.clock_skew_s), stamp);
        self.lru.insert(stamp, key);
        self.deadlines.insert(deadline, key);
        self.entries.insert(
            key,
            Entry {
                verified,
                last_used: stamp,
                deadline,
            },
        );
    }

    /// Forgets every token of `provider`, after its key set changed: a key that was rotated
    /// out (perhaps because it leaked) must not keep vouching for cached tokens.
    pub fn clear_provider(&mut self, provider: usize) {
        let keys: Vec<Key> = self
            .entries
            .keys()
            .filter(|k| k.0 == provider)
            .copied()
            .collect();
        for key in keys {
            self.remove(&key);
        }
    }

    fn remove(&mut self, key: &Key) {
        if let Some(entry) = self.entries.remove(key) {
            self.lru.remove(&entry.last_used);
            self.deadlines.remove(&entry.deadline);
        }
    }

    fn evict_expired(&mut self, now: UnixSeconds) {
        while let Some((&(deadline, _), &key)) = self.deadlines.first_key_value() {
            if now < deadline {
                break;
            }
            self.remove(&key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::test;
    use phi_guard_common::Identity;

    fn verified(provider: usize, exp: u64) -> Verified {
        Verified {
            provider,
            identity: Identity {
                subject: format!("s{exp}"),
                expires_at: exp,
                ..Default::default()
            },
            exp,
            nbf: None,
            iat: None,
            clock_skew_s: 10,
            bound_to: None,
            jti: None,
        }
    }

    #[test]
    fn hit_after_insert_and_keyed_by_provider() {
        let mut c = TokenCache::new(4);
        let d = c.digest("token-a");
        c.insert(d, verified(0, 100), 0);
        assert_eq!(c.get(0, &d, 50).unwrap().exp, 100);
        assert!(
            c.get(1, &d, 50).is_none(),
            "another provider's verification does not count"
        );
        assert!(c.get(0, &c.digest("token-b"), 50).is_none());
    }

    #[test]
    fn entries_are_dropped_at_exp_plus_skew() {
        let mut c = TokenCache::new(4);
        let d = c.digest("t");
        c.insert(d, verified(0, 100), 0);
        assert!(c.get(0, &d, 109).is_some());
        assert!(c.get(0, &d, 110).is_none());
        assert!(c.is_empty());
    }

    #[test]
    fn bounded_with_least_recently_used_eviction() {
        let mut c = TokenCache::new(2);
        let (a, b, x) = (c.digest("a"), c.digest("b"), c.digest("x"));
        c.insert(a, verified(0, 1000), 0);
        c.insert(b, verified(0, 1000), 0);
        assert!(c.get(0, &a, 1).is_some());
        c.insert(x, verified(0, 1000), 1);
        assert_eq!(c.len(), 2);
        assert!(c.get(0, &b, 1).is_none(), "b was least recently used");
        assert!(c.get(0, &a, 1).is_some());
        assert!(c.get(0, &x, 1).is_some());
    }

    #[test]
    fn expired_entries_go_before_live_ones() {
        let mut c = TokenCache::new(2);
        let (old, live, new) = (c.digest("old"), c.digest("live"), c.digest("new"));
        c.insert(live, verified(0, 1000), 0);
        c.insert(old, verified(0, 5), 0);
        c.insert(new, verified(0, 1000), 100);
        assert!(c.get(0, &live, 100).is_some());
        assert!(c.get(0, &new, 100).is_some());
    }

    #[test]
    fn size_zero_disables_and_clear_provider_forgets() {
        let mut c = TokenCache::new(0);
        c.insert(c.digest("a"), verified(0, 100), 0);
        assert!(c.is_empty());
        let mut c = TokenCache::new(8);
        c.insert(c.digest("a"), verified(0, 100), 0);
        c.insert(c.digest("b"), verified(1, 100), 0);
        c.clear_provider(0);
        assert_eq!(c.len(), 1);
        assert!(c.get(1, &c.digest("b"), 0).is_some());
    }

    #[test]
    fn indexes_follow_the_entries() {
        let mut c = TokenCache::new(3);
        for i in 0..50u64 {
            let d = c.digest(&format!("t{i}"));
            // Every third token expires at once; the others live on.
            let exp = if i % 3 == 0 { 10 } else { 1000 };
            c.insert(d, verified(0, exp), 20);
            assert!(c.len() <= 3);
            assert_eq!(c.lru.len(), c.len());
            assert_eq!(c.deadlines.len(), c.len());
        }
        c.clear_provider(0);
        assert!(c.lru.is_empty() && c.deadlines.is_empty());
    }

    #[test]
    fn digests_are_keyed_per_cache() {
        let (a, b) = (TokenCache::new(1), TokenCache::new(1));
        assert_eq!(a.digest("token"), a.digest("token"));
        assert_ne!(a.digest("token"), a.digest("token "));
        assert_ne!(a.key, b.key, "each VM draws its own key");
        assert_ne!(a.digest("token"), b.digest("token"));
    }
}
