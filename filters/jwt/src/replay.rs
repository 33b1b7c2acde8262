//! `jti` replay detection shared by every Envoy worker, through proxy-wasm shared data.
//!
//! Shared data has no delete and no atomic insert-if-absent, so the cache is a fixed set of
//! [`BUCKETS`] keys (`phi_guard.jwt.replay.<n>`), each holding a bounded list of entries, and
//! every change is a compare-and-swap on its bucket: read the bucket and its CAS token, drop
//! the entries whose token has expired, refuse if the `jti` is there, else append it and
//! write back with the CAS token; a concurrent writer makes the write fail and the loop read
//! again. Memory is bounded by `max_entries` (spread over the buckets); an entry lives until
//! the token's `exp` plus the provider's clock skew, when the token could no longer be used
//! anyway. A full bucket refuses new tokens (fail closed) rather than forget a live `jti`.
//!
//! The stored tag is HMAC-SHA256(key, iss ‖ 0x00 ‖ jti), first 16 bytes: neither the token
//! nor the `jti` (which an issuer may build from anything, PHI included) is ever stored, and
//! without the key a tag cannot be recomputed from a guessed `jti`.
//!
//! Known limit: a bucket that does not exist yet is created with a blind write (shared data
//! cannot create a key conditionally). [`ReplayCache::prepare`] creates every bucket at
//! configure time, so only a first write racing another worker's configure could lose an entry.

use phi_guard_common::UnixSeconds;
use phi_guard_host::{SharedData, SharedDataError};

use crate::reason::Reason;

/// Number of shared-data keys the cache is spread over.
pub const BUCKETS: usize = 64;
/// Tag bytes kept per `jti`.
const TAG_LEN: usize = 16;
/// One entry: the tag, then the expiry (big-endian seconds).
const ENTRY_LEN: usize = TAG_LEN + 8;
/// First byte of every bucket value (a bucket is never empty, so "never set" and "empty" stay
/// distinguishable through hosts that return no data for a zero-length value).
const VERSION: u8 = 1;
/// CAS attempts before giving up (fail closed with `replay_cache_error`).
const MAX_ATTEMPTS: usize = 16;

/// The replay cache's parameters (the state itself lives in shared data).
#[derive(Clone)]
pub struct ReplayCache {
    key: Vec<u8>,
    per_bucket: usize,
}

impl std::fmt::Debug for ReplayCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ReplayCache {{ per_bucket: {} }}", self.per_bucket)
    }
}

fn bucket_key(index: usize) -> String {
    format!("phi_guard.jwt.replay.{index}")
}

impl ReplayCache {
    /// `key` is the tag key (at least 32 bytes, checked by the config); `max_entries` the
    /// total number of live `jti`s kept.
    pub fn new(key: &[u8], max_entries: usize) -> Self {
        ReplayCache {
            key: key.to_vec(),
            per_bucket: max_entries.div_ceil(BUCKETS).max(1),
        }
    }

    /// Creates the buckets that do not exist yet (configure time).
    pub fn prepare(&self, store: &dyn SharedData) -> Result<(), SharedDataError> {
        for index in 0..BUCKETS {
            if store.get_shared_data_cas(&bucket_key(index))?.is_none() {
                store.set_shared_data_cas(&bucket_key(index), &[VERSION], None)?;
            }
        }
        Ok(())
    }

    fn tag(&self, issuer: &str, jti: &str) -> [u8; TAG_LEN] {
        let mut mac = hmac_sha256::HMAC::new(&self.key);
        mac.update(issuer.as_bytes());
        mac.update([0u8]);
        mac.update(jti.as_bytes());
        let digest = mac.finalize();
        let mut tag = [0u8; TAG_LEN];
        tag.copy_from_slice(&digest[..TAG_LEN]);
        tag
    }

    /// Records the first use of (`issuer`, `jti`), a token usable until `expires_at`; a
    /// second use before then is `Err(Replayed)`.
    pub fn check_and_record(
        &self,
        store: &dyn SharedData,
        issuer: &str,
        jti: &str,
        expires_at: UnixSeconds,
        now: UnixSeconds,
    ) -> Result<(), Reason> {
        let tag = self.tag(issuer, jti);
        let index = usize::from(u16::from_be_bytes([tag[0], tag[1]])) % BUCKETS;
        let key = bucket_key(index);
        for _ in 0..MAX_ATTEMPTS {
            let (current, cas) = match store.get_shared_data_cas(&key) {
                Ok(Some((value, cas))) => (value, Some(cas)),
                Ok(None) => {
                    // Not prepared (or wiped): create it, then go through the CAS path.
                    store
                        .set_shared_data_cas(&key, &[VERSION], None)
                        .map_err(|_| Reason::ReplayCacheError)?;
                    continue;
                }
                Err(_) => return Err(Reason::ReplayCacheError),
            };
            let entries = match current.split_first() {
                Some((&VERSION, rest)) if rest.len() % ENTRY_LEN == 0 => rest,
                // Not ours or corrupt: refuse rather than guess.
                _ => return Err(Reason::ReplayCacheError),
            };
            let mut next = Vec::with_capacity(1 + entries.len() + ENTRY_LEN);
            next.push(VERSION);
            let mut live = 0;
            for entry in entries.chunks_exact(ENTRY_LEN) {
                let mut exp = [0u8; 8];
                exp.copy_from_slice(&entry[TAG_LEN..]);
                if u64::from_be_bytes(exp) <= now {
                    continue; // expired: evicted by this write
                }
                if entry[..TAG_LEN] == tag {
                    return Err(Reason::Replayed);
                }
                next.extend_from_slice(entry);
                live += 1;
            }
            if live >= self.per_bucket {
                return Err(Reason::ReplayCacheFull);
            }
            next.extend_from_slice(&tag);
            next.extend_from_slice(&expires_at.to_be_bytes());
            match store.set_shared_data_cas(&key, &next, cas) {
                Ok(()) => return Ok(()),
                Err(SharedDataError::CasMismatch) => continue,
                Err(SharedDataError::Failed) => return Err(Reason::ReplayCacheError),
            }
        }
        Err(Reason::ReplayCacheError)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::test;
    use phi_guard_host::FakeHost;

    fn cache(max: usize) -> ReplayCache {
        ReplayCache::new(&[9u8; 32], max)
    }

    #[test]
    fn second_use_is_a_replay_until_expiry() {
        let host = FakeHost::default();
        let c = cache(1024);
        c.prepare(&host).unwrap();
        assert_eq!(c.check_and_record(&host, "iss", "j1", 200, 100), Ok(()));
        assert_eq!(
            c.check_and_record(&host, "iss", "j1", 200, 150),
            Err(Reason::Replayed)
        );
        // Same jti from another issuer is another token.
        assert_eq!(c.check_and_record(&host, "other", "j1", 200, 150), Ok(()));
        // After expiry the entry is evicted (and the token itself would be refused anyway).
        assert_eq!(c.check_and_record(&host, "iss", "j1", 300, 200), Ok(()));
    }

    #[test]
    fn two_workers_share_one_store() {
        // Two engines' caches (two VMs), one shared-data store.
        let host = FakeHost::default();
        let (a, b) = (cache(1024), cache(1024));
        a.prepare(&host).unwrap();
        b.prepare(&host).unwrap();
        assert_eq!(a.check_and_record(&host, "iss", "j", 200, 100), Ok(()));
        assert_eq!(
            b.check_and_record(&host, "iss", "j", 200, 101),
            Err(Reason::Replayed)
        );
    }

    #[test]
    fn cas_conflicts_are_retried_and_bounded() {
        let host = FakeHost::default();
        let c = cache(1024);
        c.prepare(&host).unwrap();
        host.cas_conflicts.set(3);
        assert_eq!(c.check_and_record(&host, "iss", "j", 200, 100), Ok(()));
        assert_eq!(
            c.check_and_record(&host, "iss", "j", 200, 100),
            Err(Reason::Replayed)
        );
        host.cas_conflicts.set(1000);
        assert_eq!(
            c.check_and_record(&host, "iss", "k", 200, 100),
            Err(Reason::ReplayCacheError)
        );
    }

    #[test]
    fn memory_is_bounded_and_full_fails_closed() {
        let host = FakeHost::default();
        let c = cache(64); // one entry per bucket
        c.prepare(&host).unwrap();
        let mut full = 0;
        for i in 0..400 {
            match c.check_and_record(&host, "iss", &format!("j{i}"), 1000, 100) {
                Ok(()) => {}
                Err(Reason::ReplayCacheFull) => full += 1,
                other => panic!("{other:?}"),
            }
        }
        assert!(full > 0);
        let stored: usize = host.shared.borrow().values().map(|(v, _)| v.len()).sum();
        assert!(stored <= BUCKETS * (1 + ENTRY_LEN), "{stored}");
        // Once those tokens expire, room comes back.
        assert_eq!(c.check_and_record(&host, "iss", "late", 2000, 1000), Ok(()));
    }

    #[test]
    fn nothing_of_the_jti_is_stored() {
        let host = FakeHost::default();
        let c = cache(1024);
        c.check_and_record(&host, "iss", "078-05-1120", 200, 100)
            .unwrap();
        for (k, (v, _)) in host.shared.borrow().iter() {
            assert!(!k.contains("078"), "{k}");
            assert!(!v.windows(3).any(|w| w == b"078"), "{v:?}");
        }
    }

    #[test]
    fn a_broken_store_fails_closed() {
        let host = FakeHost::default();
        host.shared_data_broken.set(true);
        assert_eq!(
            cache(1024).check_and_record(&host, "iss", "j", 200, 100),
            Err(Reason::ReplayCacheError)
        );
        host.shared_data_broken.set(false);
        host.shared
            .borrow_mut()
            .insert(bucket_key(0), (b"garbage".to_vec(), 1));
        let c = cache(1024);
        // Some jti lands in bucket 0; every one there is refused, never admitted.
        let refused = (0..500)
            .filter(|i| {
                c.check_and_record(&host, "iss", &format!("x{i}"), 200, 100)
                    == Err(Reason::ReplayCacheError)
            })
            .count();
        assert!(refused > 0);
    }
}
