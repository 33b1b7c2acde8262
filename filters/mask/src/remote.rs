//! The descriptor set fetched from an Envoy cluster: the `descriptor_set.remote` block, the
//! SHA-256 pins, and the state machine that turns fetched sets into the [`MaskConfig`] the
//! streams use. Pure (no host calls): the shell dispatches the fetches and reports back here.
//!
//! States and rules:
//! - **no set yet** (from configure until the first good set): [`RemoteMask::config`] is
//!   `None` and the shell refuses every request at its headers (fail closed);
//! - **a set** arrives (HTTP 200): its SHA-256 must be one of the pins (when `sha256` lists
//!   any), it must decode, and the rest of the configuration (roles, catalog, ...) must build
//!   against it; then it replaces the current config. A set that fails any of these is a
//!   failed fetch: the last good config stays (or there still is none), and the error names
//!   the reason and the config field, never a byte of the body;
//! - **refresh** on the shared schedule (`phi_guard_common::fetch`): `refresh_interval_s`
//!   after a good set, `retry_interval_s` after a failure. The same set again (same digest)
//!   is not rebuilt.

use std::fmt;
use std::rc::Rc;

use phi_guard_common::fetch::{FetchSchedule, RemoteDefaults, RemoteSource};
use phi_guard_common::{ConfigError, UnixSeconds};
use serde_json::Value;

use crate::config::{MaskConfig, TOP_KEYS};

/// Largest descriptor set accepted from a fetch (a FHIR Bundle with every resource is about
/// 860 KB).
pub const MAX_DESCRIPTOR_SET_BYTES: usize = 16 << 20;
/// Most bytes of an answer the shell reads: one more than accepted, so an oversized set is
/// seen as such.
pub const READ_LIMIT: usize = MAX_DESCRIPTOR_SET_BYTES + 1;

pub const DEFAULT_REFRESH_INTERVAL_S: u64 = 300;
pub const DEFAULT_TIMEOUT_MS: u64 = 5000;
pub const DEFAULT_RETRY_INTERVAL_S: u64 = 10;

/// The mask filter's defaults for `descriptor_set.remote` (no early refetch: nothing in a
/// request asks for a newer set).
pub const REMOTE_DEFAULTS: RemoteDefaults = RemoteDefaults {
    refresh_interval_s: DEFAULT_REFRESH_INTERVAL_S,
    timeout_ms: DEFAULT_TIMEOUT_MS,
    min_refetch_interval_s: None,
    retry_interval_s: DEFAULT_RETRY_INTERVAL_S,
};

/// Where the path of the block is, for errors.
const REMOTE_PATH: &str = "descriptor_set.remote";

/// The parsed `descriptor_set.remote` block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteDescriptorSet {
    pub source: RemoteSource,
    /// Accepted SHA-256 digests of the set's bytes; empty: any set (no pin).
    pub sha256: Vec<[u8; 32]>,
}

impl RemoteDescriptorSet {
    /// Parses `descriptor_set` when it is an object: `{"remote": {...}}`.
    pub fn parse(descriptor_set: &Value) -> Result<Self, ConfigError> {
        let obj = descriptor_set.as_object().ok_or_else(|| {
            ConfigError::new(
                "descriptor_set",
                "must be a base64 string or {\"remote\": {...}}",
            )
        })?;
        if let Some(k) = obj.keys().find(|k| k.as_str() != "remote") {
            return Err(ConfigError::new(
                format!("descriptor_set.{k}"),
                "unknown field, expected remote",
            ));
        }
        let mut remote = obj
            .get("remote")
            .ok_or_else(|| ConfigError::new(REMOTE_PATH, "missing"))?
            .clone();
        let block = remote
            .as_object_mut()
            .ok_or_else(|| ConfigError::new(REMOTE_PATH, "must be an object"))?;
        let pins = block.remove("sha256");
        let source = RemoteSource::parse(&remote, REMOTE_PATH, &REMOTE_DEFAULTS)?;
        let sha256 = match pins {
            None => Vec::new(),
            Some(v) => parse_pins(&v)?,
        };
        Ok(RemoteDescriptorSet { source, sha256 })
    }

    /// Whether `body` is one of the pinned sets (any set when none is pinned).
    pub fn pinned(&self, digest: &[u8; 32]) -> bool {
        self.sha256.is_empty() || self.sha256.contains(digest)
    }
}

/// `sha256`: one hex digest or a non-empty list of them.
fn parse_pins(v: &Value) -> Result<Vec<[u8; 32]>, ConfigError> {
    let field = format!("{REMOTE_PATH}.sha256");
    let one = |s: &Value, at: &str| -> Result<[u8; 32], ConfigError> {
        s.as_str().and_then(hex32).ok_or_else(|| {
            ConfigError::new(at, "must be a SHA-256 digest: 64 hexadecimal characters")
        })
    };
    match v {
        Value::Array(list) => {
            if list.is_empty() {
                return Err(ConfigError::new(
                    &field,
                    "must list at least one digest (omit it for no pin)",
                ));
            }
            let mut out: Vec<[u8; 32]> = Vec::new();
            for (i, item) in list.iter().enumerate() {
                let at = format!("{field}[{i}]");
                let d = one(item, &at)?;
                if out.contains(&d) {
                    return Err(ConfigError::new(at, "listed twice"));
                }
                out.push(d);
            }
            Ok(out)
        }
        other => Ok(vec![one(other, &field)?]),
    }
}

fn hex32(s: &str) -> Option<[u8; 32]> {
    phi_guard_common::hex::digest(s)
}

/// Lower-case hex of a digest (for tests and tools; never logged for a fetched body).
pub fn hex(digest: &[u8; 32]) -> String {
    phi_guard_common::hex::encode(digest)
}

/// Where the filter's descriptor set comes from, as the configuration says.
#[derive(Debug)]
pub enum MaskSource {
    /// Inline base64: the config is complete at configure time.
    Inline(Box<MaskConfig>),
    /// Fetched: no config until the first good set arrives.
    Remote(Box<RemoteMask>),
}

impl MaskSource {
    /// Parses the plugin configuration. With an inline set this is [`MaskConfig::parse`];
    /// with `descriptor_set.remote` only the document, its top-level keys and the remote
    /// block are checked here: the rest is validated against each set that arrives.
    pub fn parse(json: &[u8], env: &dyn Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let doc = phi_guard_common::config::parse_document(json, "mask")?;
        match doc.get("descriptor_set") {
            Some(set @ Value::Object(_)) => {
                let Some(top) = doc.as_object() else {
                    // parse_document returns objects only; refuse rather than trust that.
                    return Err(ConfigError::new(
                        "",
                        "the mask configuration must be a JSON object",
                    ));
                };
                if let Some(k) = top.keys().find(|k| !TOP_KEYS.contains(&k.as_str())) {
                    return Err(ConfigError::new(
                        k.as_str(),
                        format!("unknown field, expected one of: {}", TOP_KEYS.join(", ")),
                    ));
                }
                let spec = RemoteDescriptorSet::parse(set)?;
                Ok(MaskSource::Remote(Box::new(RemoteMask::new(doc, spec))))
            }
            _ => MaskConfig::parse(json, env).map(|c| MaskSource::Inline(Box::new(c))),
        }
    }
}

/// Why a fetched set was not installed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FetchError {
    /// Not HTTP 200 (`None`: no answer, e.g. a timeout, a reset or a refused dispatch).
    Status(Option<u32>),
    /// Larger than [`MAX_DESCRIPTOR_SET_BYTES`].
    TooLarge,
    /// Its SHA-256 is not one of `descriptor_set.remote.sha256`.
    PinMismatch,
    /// It does not decode, or the configuration does not build against it (the error names
    /// the field: `descriptor_set` for the set itself, `roles.nurse.SSN`, ...).
    Unusable(ConfigError),
}

impl FetchError {
    /// A short code for metrics and tests.
    pub fn code(&self) -> &'static str {
        match self {
            FetchError::Status(_) => "status",
            FetchError::TooLarge => "too_large",
            FetchError::PinMismatch => "pin_mismatch",
            FetchError::Unusable(_) => "unusable",
        }
    }
}

impl fmt::Display for FetchError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FetchError::Status(Some(code)) => write!(f, "HTTP {code}"),
            FetchError::Status(None) => write!(f, "no response"),
            FetchError::TooLarge => {
                write!(f, "the set is larger than {MAX_DESCRIPTOR_SET_BYTES} bytes")
            }
            FetchError::PinMismatch => write!(
                f,
                "its SHA-256 is not listed in field `{REMOTE_PATH}.sha256`"
            ),
            FetchError::Unusable(e) => write!(f, "the configuration does not build with it: {e}"),
        }
    }
}

/// A set that was installed (or was the current one already).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Installed {
    /// The set differs from the previous good one (a new config was built).
    pub changed: bool,
    /// Methods with a plan in the current config.
    pub methods: usize,
}

/// The fetched-set state machine (see the module doc).
#[derive(Debug)]
pub struct RemoteMask {
    /// The configuration document, built against each set.
    doc: Value,
    spec: RemoteDescriptorSet,
    schedule: FetchSchedule,
    current: Option<Rc<MaskConfig>>,
    /// SHA-256 of the set behind `current`.
    digest: Option<[u8; 32]>,
}

impl RemoteMask {
    pub fn new(doc: Value, spec: RemoteDescriptorSet) -> Self {
        let schedule = FetchSchedule::new(&spec.source);
        RemoteMask {
            doc,
            spec,
            schedule,
            current: None,
            digest: None,
        }
    }

    /// The config built from the last good set; `None` until one arrived (fail closed).
    pub fn config(&self) -> Option<Rc<MaskConfig>> {
        self.current.clone()
    }

    pub fn source(&self) -> &RemoteSource {
        &self.spec.source
    }

    /// True when a fetch should be dispatched now; the fetch is then marked as started.
    pub fn start_due_fetch(&mut self, now: UnixSeconds) -> bool {
        if self.schedule.should_fetch(now) {
            self.schedule.on_started(now);
            true
        } else {
            false
        }
    }

    /// A fetch answered: `status` is the HTTP status (`None`: no answer), `body` the set.
    pub fn on_response(
        &mut self,
        status: Option<u32>,
        body: &[u8],
        now: UnixSeconds,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Installed, FetchError> {
        let result = self.install(status, body, env);
        match &result {
            Ok(_) => self.schedule.on_succeeded(now),
            Err(_) => self.schedule.on_failed(now),
        }
        result
    }

    fn install(
        &mut self,
        status: Option<u32>,
        body: &[u8],
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Installed, FetchError> {
        if status != Some(200) {
            return Err(FetchError::Status(status));
        }
        if body.len() > MAX_DESCRIPTOR_SET_BYTES {
            return Err(FetchError::TooLarge);
        }
        let digest = hmac_sha256::Hash::hash(body);
        if !self.spec.pinned(&digest) {
            return Err(FetchError::PinMismatch);
        }
        if let (Some(current), true) = (&self.current, self.digest == Some(digest)) {
            return Ok(Installed {
                changed: false,
                methods: current.plans.methods.len(),
            });
        }
        let config =
            MaskConfig::build_with_set(&self.doc, body, env).map_err(FetchError::Unusable)?;
        let methods = config.plans.methods.len();
        self.current = Some(Rc::new(config));
        self.digest = Some(digest);
        Ok(Installed {
            changed: true,
            methods,
        })
    }

    /// The fetch could not be dispatched (e.g. an unknown cluster).
    pub fn on_dispatch_failed(&mut self, now: UnixSeconds) {
        self.schedule.on_failed(now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn set() -> &'static [u8] {
        crate::testdata::demo_descriptor_set()
    }

    fn digest_hex(bytes: &[u8]) -> String {
        hex(&hmac_sha256::Hash::hash(bytes))
    }

    fn doc(remote: Value) -> Value {
        json!({
            "descriptor_set": {"remote": remote},
            "roles": {"nurse": {"SSN": {"action": "partial", "keep_last": 4}, "*": "reveal"}}
        })
    }

    fn remote_of(doc: &Value) -> Result<RemoteMask, ConfigError> {
        match MaskSource::parse(doc.to_string().as_bytes(), &|_| None)? {
            MaskSource::Remote(r) => Ok(*r),
            MaskSource::Inline(_) => panic!("inline"),
        }
    }

    fn field_of(doc: Value) -> String {
        remote_of(&doc).unwrap_err().field
    }

    const BASE: fn() -> Value =
        || json!({"cluster": "mask_descriptor_set", "path": "/api.binpb", "authority": "schemas"});

    fn with(extra: Value) -> Value {
        let mut v = BASE();
        for (k, x) in extra.as_object().unwrap() {
            v[k] = x.clone();
        }
        v
    }

    #[test]
    fn the_remote_block_is_checked_at_configure_time_and_errors_name_the_field() {
        let r = remote_of(&doc(BASE())).unwrap();
        assert_eq!(r.source().cluster, "mask_descriptor_set");
        assert_eq!(r.source().refresh_interval_s, DEFAULT_REFRESH_INTERVAL_S);
        assert!(r.config().is_none(), "no config before the first set");
        assert_eq!(
            field_of(doc(with(json!({"path": "api.binpb"})))),
            "descriptor_set.remote.path"
        );
        assert_eq!(
            field_of(doc(with(json!({"timeout_ms": 0})))),
            "descriptor_set.remote.timeout_ms"
        );
        assert_eq!(
            field_of(doc(with(json!({"min_refetch_interval_s": 5})))),
            "descriptor_set.remote.min_refetch_interval_s"
        );
        assert_eq!(
            field_of(doc(with(json!({"sha256": "abc"})))),
            "descriptor_set.remote.sha256"
        );
        assert_eq!(
            field_of(doc(with(json!({"sha256": []})))),
            "descriptor_set.remote.sha256"
        );
        let d = digest_hex(b"x");
        assert_eq!(
            field_of(doc(with(json!({"sha256": [d, "zz"]})))),
            "descriptor_set.remote.sha256[1]"
        );
        assert_eq!(
            field_of(doc(with(json!({"sha256": [d, d.to_uppercase()]})))),
            "descriptor_set.remote.sha256[1]"
        );
        assert_eq!(
            field_of(json!({"descriptor_set": {"remote": BASE(), "url": "x"}, "roles": {}})),
            "descriptor_set.url"
        );
        assert_eq!(
            field_of(json!({"descriptor_set": {}, "roles": {}})),
            "descriptor_set.remote"
        );
        assert_eq!(
            field_of(json!({"descriptor_set": {"remote": BASE()}, "rolez": {}})),
            "rolez"
        );
        let err = remote_of(&json!({"descriptor_set": {"remote": BASE()}, "roles": {}}))
            .map(|_| ())
            .map_err(|e| e.to_string());
        assert!(err.is_ok(), "the roles are checked when a set arrives");
        // An inline set still parses the whole config at once.
        let inline = json!({"descriptor_set": 5, "roles": {}});
        let err = MaskSource::parse(inline.to_string().as_bytes(), &|_| None).unwrap_err();
        assert_eq!(err.field, "descriptor_set");
    }

    #[test]
    fn no_set_then_a_good_set_then_the_last_good_one_stays() {
        let mut r = remote_of(&doc(BASE())).unwrap();
        let env = |_: &str| None;
        assert!(r.start_due_fetch(100), "first fetch due at once");
        assert!(!r.start_due_fetch(100), "one in flight");
        assert_eq!(
            r.on_response(Some(503), b"", 101, &env),
            Err(FetchError::Status(Some(503)))
        );
        assert!(r.config().is_none(), "still failing closed");
        assert!(!r.start_due_fetch(110));
        assert!(r.start_due_fetch(111), "retry interval");
        let ok = r.on_response(Some(200), set(), 111, &env).unwrap();
        assert!(ok.changed);
        assert!(ok.methods > 0);
        let first = r.config().expect("installed");
        let (_, nurse) = first.policy.for_role(Some("nurse"));
        assert_ne!(*nurse, crate::policy::RolePolicy::strictest());

        // Refresh: garbage, no answer and a 500 keep the last good config.
        assert!(!r.start_due_fetch(111 + 299));
        assert!(r.start_due_fetch(111 + 300));
        let err = r.on_response(Some(200), b"\xff\xff garbage", 411, &env);
        match err {
            Err(FetchError::Unusable(e)) => assert_eq!(e.field, "descriptor_set"),
            other => panic!("{other:?}"),
        }
        assert!(Rc::ptr_eq(&first, &r.config().unwrap()));
        assert!(r.start_due_fetch(421));
        assert_eq!(
            r.on_response(None, b"", 421, &env),
            Err(FetchError::Status(None))
        );
        assert!(r.start_due_fetch(431));
        r.on_dispatch_failed(431);
        assert!(r.start_due_fetch(441));
        // The same set again: nothing rebuilt.
        let again = r.on_response(Some(200), set(), 441, &env).unwrap();
        assert!(!again.changed);
        assert!(Rc::ptr_eq(&first, &r.config().unwrap()));
    }

    #[test]
    fn a_set_outside_the_pins_is_never_installed() {
        let other = [set(), b"\x0a\x00"].concat();
        let mut r = remote_of(&doc(with(json!({"sha256": digest_hex(&other)})))).unwrap();
        let env = |_: &str| None;
        assert!(r.start_due_fetch(0));
        assert_eq!(
            r.on_response(Some(200), set(), 0, &env),
            Err(FetchError::PinMismatch)
        );
        assert!(r.config().is_none());
        // A list of pins: any of them will do.
        let mut r = remote_of(&doc(with(
            json!({"sha256": [digest_hex(&other), digest_hex(set()).to_uppercase()]}),
        )))
        .unwrap();
        assert!(r.start_due_fetch(0));
        assert!(r.on_response(Some(200), set(), 0, &env).is_ok());
        assert!(r.config().is_some());
        // Once a good set is in, a set outside the pins leaves it in place.
        assert!(r.start_due_fetch(300));
        assert_eq!(
            r.on_response(Some(200), b"\x0a\x00", 300, &env),
            Err(FetchError::PinMismatch)
        );
        assert!(r.config().is_some());
    }

    #[test]
    fn a_set_the_config_does_not_build_with_is_refused_naming_the_field() {
        // The set decodes, but the policy names a class it lacks.
        let mut d = doc(BASE());
        d["roles"] = json!({"nurse": {"NOT_A_CLASS": "reveal"}});
        let mut r = remote_of(&d).unwrap();
        assert!(r.start_due_fetch(0));
        match r.on_response(Some(200), set(), 0, &|_| None) {
            Err(e @ FetchError::Unusable(_)) => {
                let text = e.to_string();
                assert!(text.contains("roles.nurse.NOT_A_CLASS"), "{text}");
            }
            other => panic!("{other:?}"),
        }
        assert!(r.config().is_none());
        // Too large.
        let big = vec![0u8; MAX_DESCRIPTOR_SET_BYTES + 1];
        assert!(r.start_due_fetch(10));
        assert_eq!(
            r.on_response(Some(200), &big, 10, &|_| None),
            Err(FetchError::TooLarge)
        );
    }
}
