//! The state machine of one remote JWKS: what to keep. When to fetch is the shared
//! [`FetchSchedule`] (`phi_guard_common::fetch`, which the mask filter's descriptor set uses
//! too).
//!
//! The shell owns the I/O (dispatch_http_call from the root context, driven by on_tick) and
//! reports back here. Rules:
//! - until the first good key set arrives, requests fail closed (`jwks_unavailable`) at once;
//! - a failed fetch, or a document that does not parse, never replaces the last good set;
//! - refresh every `refresh_interval_s`; after a failure retry every `retry_interval_s`;
//! - an unknown `kid` asks for an early refetch, at most once per `min_refetch_interval_s`
//!   (a stream of forged kids must not turn into a stream of fetches);
//! - one fetch in flight at a time; a fetch that never answers is given up after its timeout.

use phi_guard_common::fetch::FetchSchedule;
use phi_guard_common::UnixSeconds;

use crate::alg::Alg;
use crate::config::RemoteJwks;
use crate::jwks::{JwksError, KeySet};

#[derive(Debug, Clone)]
pub struct JwksCache {
    algorithms: Vec<Alg>,
    schedule: FetchSchedule,
    keys: Option<KeySet>,
    /// SHA-256 of the document behind `keys`, to tell a rotation from a plain refresh.
    digest: Option<[u8; 32]>,
}

/// What a successful fetch changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fetched {
    pub keys: usize,
    /// The document differs from the previous good one (cached tokens should be re-verified).
    pub changed: bool,
}

impl JwksCache {
    /// A cache with no keys yet whose first fetch is due immediately.
    pub fn new(remote: &RemoteJwks, algorithms: &[Alg]) -> Self {
        JwksCache {
            algorithms: algorithms.to_vec(),
            schedule: FetchSchedule::new(remote),
            keys: None,
            digest: None,
        }
    }

    /// The last good key set, if any arrived.
    pub fn keys(&self) -> Option<&KeySet> {
        self.keys.as_ref()
    }

    /// True when the shell should dispatch a fetch now.
    pub fn should_fetch(&mut self, now: UnixSeconds) -> bool {
        self.schedule.should_fetch(now)
    }

    pub fn on_fetch_started(&mut self, now: UnixSeconds) {
        self.schedule.on_started(now);
    }

    /// A fetch answered 200 with `body`. A body that is not a usable JWKS counts as a failure.
    pub fn on_fetched(&mut self, body: &[u8], now: UnixSeconds) -> Result<Fetched, JwksError> {
        match KeySet::parse(body, &self.algorithms) {
            Ok(set) => {
                let digest = hmac_sha256::Hash::hash(body);
                let changed = self.digest != Some(digest);
                let keys = set.len();
                self.keys = Some(set);
                self.digest = Some(digest);
                self.schedule.on_succeeded(now);
                Ok(Fetched { keys, changed })
            }
            Err(e) => {
                self.schedule.on_failed(now);
                Err(e)
            }
        }
    }

    /// A fetch failed (no answer, non-200, dispatch refused). The old keys stay.
    pub fn on_fetch_failed(&mut self, now: UnixSeconds) {
        self.schedule.on_failed(now);
    }

    /// A token named a `kid` the set lacks: fetch early if the rate limit allows. Returns
    /// whether a fetch was scheduled.
    pub fn request_refetch(&mut self, now: UnixSeconds) -> bool {
        self.schedule.request_refetch(now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::test;
    use crate::testkit;

    fn remote() -> RemoteJwks {
        RemoteJwks {
            cluster: "idp".into(),
            path: "/jwks".into(),
            authority: "idp".into(),
            refresh_interval_s: 300,
            timeout_ms: 2000,
            min_refetch_interval_s: 30,
            retry_interval_s: 5,
        }
    }

    fn cache() -> JwksCache {
        JwksCache::new(&remote(), &[Alg::EdDSA])
    }

    #[test]
    fn first_fetch_is_due_at_once_and_keys_are_absent_until_it_lands() {
        let mut c = cache();
        assert!(c.keys().is_none());
        assert!(c.should_fetch(1000));
        c.on_fetch_started(1000);
        assert!(!c.should_fetch(1000), "one fetch in flight at a time");
        let (_, jwks) = testkit::ed25519_key(Some("k1"));
        let fetched = c.on_fetched(jwks.as_bytes(), 1001).unwrap();
        assert_eq!(
            fetched,
            Fetched {
                keys: 1,
                changed: true
            }
        );
        assert_eq!(c.keys().unwrap().len(), 1);
        assert!(!c.should_fetch(1300));
        assert!(c.should_fetch(1301), "refresh interval");
    }

    #[test]
    fn garbage_and_failures_keep_the_last_good_set() {
        let mut c = cache();
        let (_, jwks) = testkit::ed25519_key(Some("k1"));
        c.on_fetch_started(0);
        c.on_fetched(jwks.as_bytes(), 0).unwrap();
        c.on_fetch_started(300);
        assert_eq!(
            c.on_fetched(b"<html>oops</html>", 300).unwrap_err(),
            JwksError::InvalidJson
        );
        assert_eq!(c.keys().unwrap().len(), 1);
        assert!(!c.should_fetch(304));
        assert!(c.should_fetch(305), "retry interval after a failure");
        c.on_fetch_started(305);
        c.on_fetch_failed(306);
        assert_eq!(c.keys().unwrap().len(), 1);
        c.on_fetch_started(311);
        let again = c.on_fetched(jwks.as_bytes(), 311).unwrap();
        assert!(!again.changed, "same document");
    }

    #[test]
    fn failures_before_the_first_set_leave_no_keys() {
        let mut c = cache();
        c.on_fetch_started(0);
        c.on_fetch_failed(1);
        assert!(c.keys().is_none());
        assert!(c.should_fetch(6));
        c.on_fetch_started(6);
        assert!(c.on_fetched(br#"{"keys":[]}"#, 6).is_err());
        assert!(c.keys().is_none());
    }

    #[test]
    fn unknown_kid_refetch_is_rate_limited() {
        let mut c = cache();
        let (_, jwks) = testkit::ed25519_key(Some("k1"));
        c.on_fetch_started(100);
        c.on_fetched(jwks.as_bytes(), 100).unwrap();
        assert!(
            !c.request_refetch(110),
            "within min_refetch_interval of the last fetch"
        );
        assert!(!c.should_fetch(110));
        assert!(c.request_refetch(130));
        assert!(c.should_fetch(130));
        c.on_fetch_started(130);
        assert!(!c.request_refetch(131), "already in flight");
        c.on_fetched(jwks.as_bytes(), 131).unwrap();
        assert!(!c.request_refetch(140));
        assert!(!c.request_refetch(159));
        assert!(c.request_refetch(160));
    }

    #[test]
    fn a_fetch_that_never_answers_is_given_up() {
        let mut c = cache();
        c.on_fetch_started(0);
        assert!(!c.should_fetch(2));
        // timeout 2000 ms → backstop 3 s, then the retry interval (5 s) applies.
        assert!(!c.should_fetch(3));
        assert!(c.should_fetch(8));
    }
}
