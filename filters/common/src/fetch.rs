//! Documents a filter fetches from an Envoy cluster (jwt's JWKS, mask's descriptor set): the
//! remote-source config block and the fetch schedule, one copy for every filter.
//!
//! The shell owns the I/O (`dispatch_http_call` from the root context, driven by `on_tick`)
//! and reports back to a [`FetchSchedule`]. Rules:
//! - the first fetch is due at once; until a good document arrives the filter fails closed;
//! - after a good document, the next fetch is due `refresh_interval_s` later; after a failure
//!   (no answer, non-200, a document the filter cannot use) `retry_interval_s` later, and the
//!   last good document stays in use;
//! - one fetch in flight at a time; a fetch that never answers is given up after its timeout
//!   (Envoy answers a timed-out call itself; this is only the backstop);
//! - an early refetch (jwt: a token names an unknown `kid`) is allowed at most once per
//!   `min_refetch_interval_s`, so a stream of forged requests is not a stream of fetches.
//!
//! Pure: time comes in as [`UnixSeconds`], nothing here touches a host.

use serde::Deserialize;
use serde_json::Value;

use crate::clock::UnixSeconds;
use crate::config::{from_json_value, ConfigError};

/// Where a document is fetched from, and how often: the `remote` block of a filter config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteSource {
    /// The Envoy cluster the call goes through.
    pub cluster: String,
    /// The request path, starting with `/`.
    pub path: String,
    /// The `:authority` of the request (the upstream's host name).
    pub authority: String,
    pub refresh_interval_s: u64,
    pub timeout_ms: u64,
    /// Shortest time between two fetch starts for an early refetch ([`FetchSchedule::request_refetch`]).
    pub min_refetch_interval_s: u64,
    pub retry_interval_s: u64,
}

/// A filter's defaults for the optional members of its `remote` block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RemoteDefaults {
    pub refresh_interval_s: u64,
    pub timeout_ms: u64,
    /// `None`: the filter never refetches early, and `min_refetch_interval_s` is refused as
    /// an unknown field.
    pub min_refetch_interval_s: Option<u64>,
    pub retry_interval_s: u64,
}

/// Bounds of the intervals, the same for every filter.
pub const REFRESH_INTERVAL_S: std::ops::RangeInclusive<u64> = 1..=86_400;
pub const TIMEOUT_MS: std::ops::RangeInclusive<u64> = 1..=60_000;
pub const MIN_REFETCH_INTERVAL_S: std::ops::RangeInclusive<u64> = 1..=3600;
pub const RETRY_INTERVAL_S: std::ops::RangeInclusive<u64> = 1..=3600;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRemote {
    cluster: String,
    path: String,
    authority: String,
    refresh_interval_s: Option<u64>,
    timeout_ms: Option<u64>,
    min_refetch_interval_s: Option<u64>,
    retry_interval_s: Option<u64>,
}

impl RemoteSource {
    /// Parses a `remote` block found at `path` (e.g. `providers[0].jwks.remote`). Errors name
    /// the member (`providers[0].jwks.remote.timeout_ms`) and never echo a value. A caller
    /// with members of its own in the block removes them first.
    pub fn parse(
        value: &Value,
        path: &str,
        defaults: &RemoteDefaults,
    ) -> Result<RemoteSource, ConfigError> {
        let field = |name: &str| format!("{path}.{name}");
        if defaults.min_refetch_interval_s.is_none()
            && value.get("min_refetch_interval_s").is_some()
        {
            return Err(ConfigError::new(
                field("min_refetch_interval_s"),
                "unknown field: this document is only fetched on its refresh schedule",
            ));
        }
        let raw: RawRemote = from_json_value(value).map_err(|e| e.within(path))?;
        let non_empty = |v: &str, name: &str| {
            if v.trim().is_empty() {
                Err(ConfigError::new(field(name), "must not be empty"))
            } else {
                Ok(())
            }
        };
        non_empty(&raw.cluster, "cluster")?;
        non_empty(&raw.authority, "authority")?;
        if !raw.path.starts_with('/') {
            return Err(ConfigError::new(field("path"), "must start with '/'"));
        }
        let check = |v: u64, range: std::ops::RangeInclusive<u64>, name: &str| {
            if range.contains(&v) {
                Ok(v)
            } else {
                Err(ConfigError::new(
                    field(name),
                    format!("must be {}..={}", range.start(), range.end()),
                ))
            }
        };
        Ok(RemoteSource {
            cluster: raw.cluster,
            path: raw.path,
            authority: raw.authority,
            refresh_interval_s: check(
                raw.refresh_interval_s
                    .unwrap_or(defaults.refresh_interval_s),
                REFRESH_INTERVAL_S,
                "refresh_interval_s",
            )?,
            timeout_ms: check(
                raw.timeout_ms.unwrap_or(defaults.timeout_ms),
                TIMEOUT_MS,
                "timeout_ms",
            )?,
            min_refetch_interval_s: match defaults.min_refetch_interval_s {
                None => 0,
                Some(d) => check(
                    raw.min_refetch_interval_s.unwrap_or(d),
                    MIN_REFETCH_INTERVAL_S,
                    "min_refetch_interval_s",
                )?,
            },
            retry_interval_s: check(
                raw.retry_interval_s.unwrap_or(defaults.retry_interval_s),
                RETRY_INTERVAL_S,
                "retry_interval_s",
            )?,
        })
    }
}

/// When to fetch one remote document. See the module doc for the rules.
#[derive(Debug, Clone)]
pub struct FetchSchedule {
    refresh_interval_s: u64,
    min_refetch_interval_s: u64,
    retry_interval_s: u64,
    timeout_s: u64,
    next_fetch_at: UnixSeconds,
    in_flight_since: Option<UnixSeconds>,
    last_fetch_started: Option<UnixSeconds>,
}

impl FetchSchedule {
    /// A schedule whose first fetch is due immediately.
    pub fn new(remote: &RemoteSource) -> Self {
        FetchSchedule {
            refresh_interval_s: remote.refresh_interval_s,
            min_refetch_interval_s: remote.min_refetch_interval_s,
            retry_interval_s: remote.retry_interval_s,
            // Envoy answers a timed-out call itself; this is only the backstop.
            timeout_s: remote.timeout_ms.div_ceil(1000) + 1,
            next_fetch_at: 0,
            in_flight_since: None,
            last_fetch_started: None,
        }
    }

    /// True when the shell should dispatch a fetch now. A fetch in flight past its timeout
    /// is given up (counted as a failure) first.
    pub fn should_fetch(&mut self, now: UnixSeconds) -> bool {
        if let Some(since) = self.in_flight_since {
            if now < since.saturating_add(self.timeout_s) {
                return false;
            }
            // The answer never came: count it as a failure and carry on.
            self.on_failed(now);
        }
        now >= self.next_fetch_at
    }

    pub fn on_started(&mut self, now: UnixSeconds) {
        self.in_flight_since = Some(now);
        self.last_fetch_started = Some(now);
    }

    /// A good document arrived: refresh after the refresh interval.
    pub fn on_succeeded(&mut self, now: UnixSeconds) {
        self.in_flight_since = None;
        self.next_fetch_at = now.saturating_add(self.refresh_interval_s);
    }

    /// The fetch failed (no answer, non-200, dispatch refused, unusable document): retry
    /// after the retry interval.
    pub fn on_failed(&mut self, now: UnixSeconds) {
        self.in_flight_since = None;
        self.next_fetch_at = now.saturating_add(self.retry_interval_s);
    }

    /// Asks for an early fetch if the rate limit allows. Returns whether one was scheduled.
    pub fn request_refetch(&mut self, now: UnixSeconds) -> bool {
        if self.in_flight_since.is_some() {
            return false;
        }
        let allowed = self
            .last_fetch_started
            .is_none_or(|t| now >= t.saturating_add(self.min_refetch_interval_s));
        if allowed && self.next_fetch_at > now {
            self.next_fetch_at = now;
            return true;
        }
        false
    }

    /// Whether a fetch is in flight.
    pub fn in_flight(&self) -> bool {
        self.in_flight_since.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const DEFAULTS: RemoteDefaults = RemoteDefaults {
        refresh_interval_s: 300,
        timeout_ms: 2000,
        min_refetch_interval_s: Some(30),
        retry_interval_s: 5,
    };

    fn remote() -> RemoteSource {
        RemoteSource::parse(
            &json!({"cluster": "idp", "path": "/jwks", "authority": "idp"}),
            "remote",
            &DEFAULTS,
        )
        .unwrap()
    }

    #[test]
    fn the_block_takes_defaults_and_errors_name_the_member() {
        let r = remote();
        assert_eq!(
            (
                r.refresh_interval_s,
                r.timeout_ms,
                r.min_refetch_interval_s,
                r.retry_interval_s
            ),
            (300, 2000, 30, 5)
        );
        let field = |v: Value, d: &RemoteDefaults| {
            RemoteSource::parse(&v, "x.remote", d).unwrap_err().field
        };
        let base = |extra: Value| {
            let mut v = json!({"cluster": "c", "path": "/p", "authority": "a"});
            for (k, x) in extra.as_object().unwrap() {
                v[k] = x.clone();
            }
            v
        };
        assert_eq!(
            field(base(json!({"path": "p"})), &DEFAULTS),
            "x.remote.path"
        );
        assert_eq!(
            field(base(json!({"cluster": " "})), &DEFAULTS),
            "x.remote.cluster"
        );
        assert_eq!(
            field(base(json!({"authority": ""})), &DEFAULTS),
            "x.remote.authority"
        );
        assert_eq!(
            field(base(json!({"timeout_ms": 0})), &DEFAULTS),
            "x.remote.timeout_ms"
        );
        assert_eq!(
            field(base(json!({"refresh_interval_s": 86_401})), &DEFAULTS),
            "x.remote.refresh_interval_s"
        );
        assert_eq!(
            field(base(json!({"retry_interval_s": 0})), &DEFAULTS),
            "x.remote.retry_interval_s"
        );
        assert_eq!(
            field(base(json!({"min_refetch_interval_s": 0})), &DEFAULTS),
            "x.remote.min_refetch_interval_s"
        );
        assert_eq!(
            field(base(json!({"other": 1})), &DEFAULTS),
            "x.remote.other"
        );
        assert_eq!(
            field(json!({"cluster": "c", "path": "/p"}), &DEFAULTS),
            "x.remote.authority"
        );
        let no_refetch = RemoteDefaults {
            min_refetch_interval_s: None,
            ..DEFAULTS
        };
        assert_eq!(
            field(base(json!({"min_refetch_interval_s": 30})), &no_refetch),
            "x.remote.min_refetch_interval_s"
        );
        // A value is never echoed.
        let err = RemoteSource::parse(&base(json!({"timeout_ms": "s3cr3t"})), "r", &DEFAULTS)
            .unwrap_err();
        assert_eq!(err.field, "r.timeout_ms");
        assert!(!err.to_string().contains("s3cr3t"), "{err}");
    }

    #[test]
    fn first_fetch_at_once_then_refresh_then_retry() {
        let mut s = FetchSchedule::new(&remote());
        assert!(s.should_fetch(1000));
        s.on_started(1000);
        assert!(s.in_flight());
        assert!(!s.should_fetch(1000), "one fetch in flight at a time");
        s.on_succeeded(1001);
        assert!(!s.should_fetch(1300));
        assert!(s.should_fetch(1301), "refresh interval");
        s.on_started(1301);
        s.on_failed(1302);
        assert!(!s.should_fetch(1306));
        assert!(s.should_fetch(1307), "retry interval");
    }

    #[test]
    fn a_fetch_that_never_answers_is_given_up() {
        let mut s = FetchSchedule::new(&remote());
        s.on_started(0);
        // timeout 2000 ms → backstop 3 s, then the retry interval (5 s) applies.
        assert!(!s.should_fetch(2));
        assert!(!s.should_fetch(3));
        assert!(!s.in_flight());
        assert!(s.should_fetch(8));
    }

    #[test]
    fn early_refetch_is_rate_limited() {
        let mut s = FetchSchedule::new(&remote());
        s.on_started(100);
        s.on_succeeded(100);
        assert!(!s.request_refetch(110));
        assert!(s.request_refetch(130));
        assert!(s.should_fetch(130));
        s.on_started(130);
        assert!(!s.request_refetch(131), "already in flight");
        s.on_succeeded(131);
        assert!(!s.request_refetch(159));
        assert!(s.request_refetch(160));
    }
}
