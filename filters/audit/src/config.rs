//! Configuration of both root contexts, as the JSON in Envoy's `configuration` StringValue
//! (or Istio's `pluginConfig`). Unknown fields are refused and every error names its field.

use phi_guard_common::ConfigError;
use serde::Deserialize;

use crate::delivery::{BacklogPolicy, DeliveryConfig};

/// `root_id` of the HTTP filter.
pub const FILTER_ROOT_ID: &str = "phi_guard_audit";
/// `root_id` of the singleton service (bootstrap extension).
pub const SERVICE_ROOT_ID: &str = "phi_guard_audit_service";
pub const DEFAULT_VM_ID: &str = "phi_guard_audit";
pub const DEFAULT_QUEUE: &str = "phi_guard_audit_events";

/// The shared-data key carrying the fail-closed flag for `queue`: `"1"` refuse, `"0"` admit.
pub fn backlog_flag_key(queue: &str) -> String {
    format!("phi_guard.audit.{queue}.blocked")
}

fn default_vm_id() -> String {
    DEFAULT_VM_ID.to_string()
}
fn default_queue() -> String {
    DEFAULT_QUEUE.to_string()
}

/// The HTTP filter (root_id `phi_guard_audit`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FilterConfig {
    /// vm_id of the service that registered the queue; shared data (the flag) is scoped by
    /// vm_id too, so the filter must run with this same vm_id.
    #[serde(default = "default_vm_id")]
    pub service_vm_id: String,
    #[serde(default = "default_queue")]
    pub queue: String,
    /// Request header carrying the resource id the client *claims* (e.g. `x-patient-id`),
    /// recorded as `what.claimed_resource_id` beside the one read from the request message
    /// (`what.resource_id`, filter state `phi_guard.resource`); none by default.
    #[serde(default)]
    pub claimed_resource_id_header: Option<String>,
    /// Events a worker VM holds before it queues them as one batch (1..=1024; 1 queues each
    /// event at its RPC's end).
    #[serde(default = "d_batch_max_events")]
    pub batch_max_events: usize,
    /// Largest batch in bytes (1024..=1 MiB); a batch is sent before an event would push it
    /// past this. An event larger than this on its own goes alone.
    #[serde(default = "d_batch_max_bytes")]
    pub batch_max_bytes: usize,
    /// How often (the VM's tick) a worker sends what it holds: the most an event waits in the
    /// worker before it is queued (1..=10000).
    #[serde(default = "d_batch_flush_ms")]
    pub batch_flush_ms: u64,
}

/// Default `batch_max_events`.
pub const DEFAULT_BATCH_MAX_EVENTS: usize = 32;
/// Default `batch_max_bytes`.
pub const DEFAULT_BATCH_MAX_BYTES: usize = 64 * 1024;
/// Default `batch_flush_ms`.
pub const DEFAULT_BATCH_FLUSH_MS: u64 = 100;

fn d_batch_max_events() -> usize {
    DEFAULT_BATCH_MAX_EVENTS
}
fn d_batch_max_bytes() -> usize {
    DEFAULT_BATCH_MAX_BYTES
}
fn d_batch_flush_ms() -> u64 {
    DEFAULT_BATCH_FLUSH_MS
}

/// The option's name before the resource id came from the request message.
const OLD_RESOURCE_ID_HEADER: &str = "resource_id_header";

impl FilterConfig {
    /// Parses through the one config parser: an empty document is refused (`{}` takes every
    /// default), as are repeated members.
    pub fn parse(bytes: &[u8]) -> Result<Self, ConfigError> {
        let doc = phi_guard_common::config::parse_document(bytes, "audit")?;
        if doc.get(OLD_RESOURCE_ID_HEADER).is_some() {
            return Err(ConfigError::new(
                OLD_RESOURCE_ID_HEADER,
                "renamed to claimed_resource_id_header: the event's resource_id now comes from \
                 the request message (phi.v1.resource_id, read by the mask filter), a header \
                 only gives what the client claims (claimed_resource_id)",
            ));
        }
        let cfg: Self = phi_guard_common::config::from_json_value(&doc)?;
        non_empty("service_vm_id", &cfg.service_vm_id)?;
        non_empty("queue", &cfg.queue)?;
        let within = |field: &str, v: u64, lo: u64, hi: u64| {
            if (lo..=hi).contains(&v) {
                Ok(())
            } else {
                Err(ConfigError::new(
                    field,
                    format!("must be between {lo} and {hi}"),
                ))
            }
        };
        within(
            "batch_max_events",
            cfg.batch_max_events as u64,
            1,
            crate::batch::MAX_BATCH_EVENTS as u64,
        )?;
        within(
            "batch_max_bytes",
            cfg.batch_max_bytes as u64,
            1024,
            crate::batch::MAX_BATCH_BYTES as u64,
        )?;
        within("batch_flush_ms", cfg.batch_flush_ms, 1, 10_000)?;
        if let Some(h) = &cfg.claimed_resource_id_header {
            let valid = !h.is_empty()
                && !h.starts_with(':')
                && h.bytes().all(|b| {
                    b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_'
                });
            if !valid {
                return Err(ConfigError::new(
                    "claimed_resource_id_header",
                    "must be a lower-case header name",
                ));
            }
            if matches!(
                h.as_str(),
                "authorization" | "cookie" | "proxy-authorization"
            ) {
                return Err(ConfigError::new(
                    "claimed_resource_id_header",
                    "must not name a credential header",
                ));
            }
        }
        Ok(cfg)
    }
}

fn non_empty(field: &str, v: &str) -> Result<(), ConfigError> {
    if v.is_empty() {
        Err(ConfigError::new(field, "must not be empty"))
    } else {
        Ok(())
    }
}

/// The singleton service (root_id `phi_guard_audit_service`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceConfig {
    #[serde(default = "default_queue")]
    pub queue: String,
    /// Name of the VM environment variable holding the HMAC key (at least 32 bytes).
    pub key_env: String,
    /// Envoy cluster of the OTLP/HTTP collector.
    pub cluster: String,
    /// `:authority` of the POST; defaults to the cluster name.
    #[serde(default)]
    pub authority: Option<String>,
    #[serde(default = "default_path")]
    pub path: String,
    #[serde(default = "default_service_name")]
    pub service_name: String,
    /// The OTLP/HTTP body's encoding: `"protobuf"` (default: the OTLP specification's)
    /// or `"json"`.
    #[serde(default)]
    pub encoding: crate::otlp::Encoding,
    #[serde(default = "d_batch")]
    pub max_batch_events: usize,
    #[serde(default = "d_delay")]
    pub max_batch_delay_ms: u64,
    #[serde(default = "d_backlog")]
    pub max_backlog_events: usize,
    #[serde(default)]
    pub on_backlog_full: BacklogPolicy,
    #[serde(default = "d_initial_backoff")]
    pub initial_backoff_ms: u64,
    #[serde(default = "d_max_backoff")]
    pub max_backoff_ms: u64,
    #[serde(default = "d_timeout")]
    pub request_timeout_ms: u64,
    #[serde(default = "d_event_bytes")]
    pub max_event_bytes: usize,
    /// How often the service wakes to flush, retry and expire calls.
    #[serde(default = "d_tick")]
    pub tick_ms: u64,
}

fn default_path() -> String {
    "/v1/logs".to_string()
}
fn default_service_name() -> String {
    "phi-guard".to_string()
}
fn d_batch() -> usize {
    DeliveryConfig::default().max_batch_events
}
fn d_delay() -> u64 {
    DeliveryConfig::default().max_batch_delay_ms
}
fn d_backlog() -> usize {
    DeliveryConfig::default().max_backlog_events
}
fn d_initial_backoff() -> u64 {
    DeliveryConfig::default().initial_backoff_ms
}
fn d_max_backoff() -> u64 {
    DeliveryConfig::default().max_backoff_ms
}
fn d_timeout() -> u64 {
    DeliveryConfig::default().request_timeout_ms
}
fn d_event_bytes() -> usize {
    DeliveryConfig::default().max_event_bytes
}
fn d_tick() -> u64 {
    200
}

impl ServiceConfig {
    pub fn parse(bytes: &[u8]) -> Result<Self, ConfigError> {
        let cfg: Self = phi_guard_common::config::parse_config(bytes, "audit service")?;
        non_empty("queue", &cfg.queue)?;
        non_empty("key_env", &cfg.key_env)?;
        non_empty("cluster", &cfg.cluster)?;
        if !cfg.path.starts_with('/') {
            return Err(ConfigError::new("path", "must start with '/'"));
        }
        let positive = |field: &str, v: u64| {
            if v == 0 {
                Err(ConfigError::new(field, "must be greater than 0"))
            } else {
                Ok(())
            }
        };
        positive("max_batch_events", cfg.max_batch_events as u64)?;
        positive("max_backlog_events", cfg.max_backlog_events as u64)?;
        positive("initial_backoff_ms", cfg.initial_backoff_ms)?;
        positive("request_timeout_ms", cfg.request_timeout_ms)?;
        positive("max_event_bytes", cfg.max_event_bytes as u64)?;
        positive("tick_ms", cfg.tick_ms)?;
        // drop_oldest never drops records of the batch on the wire, so the backlog must be
        // able to hold one more than a batch.
        if cfg.max_batch_events >= cfg.max_backlog_events {
            return Err(ConfigError::new(
                "max_batch_events",
                "must be smaller than max_backlog_events",
            ));
        }
        if cfg.max_backoff_ms < cfg.initial_backoff_ms {
            return Err(ConfigError::new(
                "max_backoff_ms",
                "must be at least initial_backoff_ms",
            ));
        }
        Ok(cfg)
    }

    pub fn delivery(&self) -> DeliveryConfig {
        DeliveryConfig {
            max_batch_events: self.max_batch_events,
            max_batch_delay_ms: self.max_batch_delay_ms,
            max_backlog_events: self.max_backlog_events,
            policy: self.on_backlog_full,
            initial_backoff_ms: self.initial_backoff_ms,
            max_backoff_ms: self.max_backoff_ms,
            request_timeout_ms: self.request_timeout_ms,
            max_event_bytes: self.max_event_bytes,
        }
    }

    pub fn authority(&self) -> &str {
        self.authority.as_deref().unwrap_or(&self.cluster)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filter_defaults_and_validation() {
        let err = FilterConfig::parse(b"").unwrap_err();
        assert!(err.reason.contains("audit configuration is empty"), "{err}");
        let cfg = FilterConfig::parse(b"{}").unwrap();
        assert_eq!(cfg.service_vm_id, "phi_guard_audit");
        assert_eq!(cfg.queue, "phi_guard_audit_events");
        assert_eq!(cfg.claimed_resource_id_header, None);
        let cfg = FilterConfig::parse(br#"{"claimed_resource_id_header":"x-patient-id"}"#).unwrap();
        assert_eq!(
            cfg.claimed_resource_id_header.as_deref(),
            Some("x-patient-id")
        );
        for bad in ["Authorization", "authorization", ":path", "", "x patient"] {
            let doc = format!(r#"{{"claimed_resource_id_header":"{bad}"}}"#);
            let err = FilterConfig::parse(doc.as_bytes()).unwrap_err();
            assert_eq!(err.field, "claimed_resource_id_header", "{bad}");
        }
        let err = FilterConfig::parse(br#"{"queu":"x"}"#).unwrap_err();
        assert_eq!(err.field, "queu");
    }

    #[test]
    fn batch_limits_have_defaults_and_bounds() {
        let cfg = FilterConfig::parse(b"{}").unwrap();
        assert_eq!(
            (
                cfg.batch_max_events,
                cfg.batch_max_bytes,
                cfg.batch_flush_ms
            ),
            (32, 65_536, 100)
        );
        let cfg = FilterConfig::parse(
            br#"{"batch_max_events":1,"batch_max_bytes":1024,"batch_flush_ms":10000}"#,
        )
        .unwrap();
        assert_eq!(
            (
                cfg.batch_max_events,
                cfg.batch_max_bytes,
                cfg.batch_flush_ms
            ),
            (1, 1024, 10_000)
        );
        for (doc, field) in [
            (r#"{"batch_max_events":0}"#, "batch_max_events"),
            (r#"{"batch_max_events":1025}"#, "batch_max_events"),
            (r#"{"batch_max_bytes":1023}"#, "batch_max_bytes"),
            (r#"{"batch_max_bytes":1048577}"#, "batch_max_bytes"),
            (r#"{"batch_flush_ms":0}"#, "batch_flush_ms"),
            (r#"{"batch_flush_ms":10001}"#, "batch_flush_ms"),
            (r#"{"batch_flush_ms":"fast"}"#, "batch_flush_ms"),
            (
                r#"{"batch_max_events":2,"batch_max_events":3}"#,
                "batch_max_events",
            ),
        ] {
            let err = FilterConfig::parse(doc.as_bytes()).unwrap_err();
            assert_eq!(err.field, field, "{doc}: {err}");
            assert!(!err.to_string().contains("fast"), "no value echoed");
        }
    }

    #[test]
    fn the_old_header_option_is_refused_with_its_new_name() {
        let err = FilterConfig::parse(br#"{"resource_id_header":"x-patient-id"}"#).unwrap_err();
        assert_eq!(err.field, "resource_id_header");
        assert!(
            err.reason.contains("renamed to claimed_resource_id_header"),
            "{err}"
        );
        assert!(!err.to_string().contains("x-patient-id"), "no value echoed");
    }

    #[test]
    fn repeated_members_are_refused() {
        let err = FilterConfig::parse(br#"{"queue":"a","queue":"b"}"#).unwrap_err();
        assert_eq!(err.field, "queue");
        assert!(err.reason.contains("twice"), "{err}");
        let err = ServiceConfig::parse(br#"{"key_env":"K","cluster":"c","cluster":"other"}"#)
            .unwrap_err();
        assert_eq!(err.field, "cluster");
        let err = ServiceConfig::parse(b"").unwrap_err();
        assert!(
            err.reason.contains("audit service configuration is empty"),
            "{err}"
        );
    }

    #[test]
    fn service_requires_key_and_cluster() {
        let err = ServiceConfig::parse(br#"{"cluster":"c"}"#).unwrap_err();
        assert_eq!(err.field, "key_env");
        let cfg = ServiceConfig::parse(br#"{"cluster":"c","key_env":"K"}"#).unwrap();
        assert_eq!(cfg.on_backlog_full, BacklogPolicy::FailClosed);
        assert_eq!(cfg.path, "/v1/logs");
        assert_eq!(cfg.authority(), "c");
        let cfg = ServiceConfig::parse(
            br#"{"cluster":"c","key_env":"K","on_backlog_full":"drop_oldest"}"#,
        )
        .unwrap();
        assert_eq!(cfg.delivery().policy, BacklogPolicy::DropOldest);
    }

    #[test]
    fn service_encoding_is_protobuf_unless_json_is_asked_for() {
        use crate::otlp::Encoding;
        let cfg = ServiceConfig::parse(br#"{"cluster":"c","key_env":"K"}"#).unwrap();
        assert_eq!(cfg.encoding, Encoding::Protobuf);
        assert_eq!(cfg.encoding.content_type(), "application/x-protobuf");
        let cfg =
            ServiceConfig::parse(br#"{"cluster":"c","key_env":"K","encoding":"json"}"#).unwrap();
        assert_eq!(cfg.encoding.content_type(), "application/json");
        let err =
            ServiceConfig::parse(br#"{"cluster":"c","key_env":"K","encoding":"xml"}"#).unwrap_err();
        assert_eq!(err.field, "encoding", "{err}");
        assert!(!err.to_string().contains("xml"), "no value echoed: {err}");
        assert_eq!(
            Encoding::from_content_type("Application/X-Protobuf; charset=binary"),
            Some(Encoding::Protobuf)
        );
        assert_eq!(Encoding::from_content_type("text/plain"), None);
    }

    #[test]
    fn service_limits_are_checked() {
        for (doc, field) in [
            (
                r#"{"cluster":"c","key_env":"K","max_batch_events":0}"#,
                "max_batch_events",
            ),
            (
                r#"{"cluster":"c","key_env":"K","max_batch_events":10,"max_backlog_events":10}"#,
                "max_batch_events",
            ),
            (r#"{"cluster":"c","key_env":"K","path":"v1/logs"}"#, "path"),
            (
                r#"{"cluster":"c","key_env":"K","initial_backoff_ms":10,"max_backoff_ms":5}"#,
                "max_backoff_ms",
            ),
            (
                r#"{"cluster":"c","key_env":"K","on_backlog_full":"ignore"}"#,
                "on_backlog_full",
            ),
        ] {
            let err = ServiceConfig::parse(doc.as_bytes()).unwrap_err();
            assert!(
                err.field == field || err.reason.contains(field) || err.reason.contains("variant"),
                "{doc}: {err}"
            );
        }
    }
}
