//! OTLP/HTTP JSON logs: the request body the service POSTs to `/v1/logs`, and the reader the
//! collector and verifier use. One log record per event; the body is the event's canonical
//! JSON as a string (so the exact chained bytes survive any re-encoding of the envelope) and
//! the chain rides in attributes.

use serde::Serialize;
use serde_json::Value;

use crate::chain::{link_from_hex, to_hex, ChainedRecord};

pub const ATTR_SEQ: &str = "phi_guard.seq";
pub const ATTR_CHAIN: &str = "phi_guard.chain";
pub const ATTR_PREV: &str = "phi_guard.prev";
pub const SCOPE_NAME: &str = "phi_guard.audit";

/// Resource-level description of the sender.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OtlpMeta {
    /// `service.name` resource attribute.
    pub service_name: String,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Request<'a> {
    resource_logs: [ResourceLogs<'a>; 1],
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ResourceLogs<'a> {
    resource: Resource<'a>,
    scope_logs: [ScopeLogs<'a>; 1],
}

#[derive(Serialize)]
struct Resource<'a> {
    attributes: Vec<KeyValue<'a>>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ScopeLogs<'a> {
    scope: Scope<'a>,
    log_records: Vec<LogRecord<'a>>,
}

#[derive(Serialize)]
struct Scope<'a> {
    name: &'a str,
    version: &'a str,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct LogRecord<'a> {
    // OTLP JSON carries 64-bit integers as decimal strings.
    time_unix_nano: String,
    observed_time_unix_nano: String,
    severity_number: u8,
    severity_text: &'a str,
    body: AnyValue<'a>,
    attributes: Vec<KeyValue<'a>>,
}

#[derive(Serialize)]
struct KeyValue<'a> {
    key: &'a str,
    value: AnyValue<'a>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
enum AnyValue<'a> {
    StringValue(std::borrow::Cow<'a, str>),
    IntValue(String),
}

/// Severity per record: INFO for an RPC that ended OK, WARN for everything else.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    Info,
    Warn,
}

fn nanos(ms: u64) -> String {
    format!("{ms}000000")
}

/// The `/v1/logs` request body for `records` (in order), observed at `now_ms`.
pub fn encode_logs(records: &[(ChainedRecord, Severity)], meta: &OtlpMeta, now_ms: u64) -> Vec<u8> {
    let log_records = records
        .iter()
        .map(|(r, sev)| LogRecord {
            time_unix_nano: nanos(r.time_ms),
            observed_time_unix_nano: nanos(now_ms),
            severity_number: match sev {
                Severity::Info => 9,
                Severity::Warn => 13,
            },
            severity_text: match sev {
                Severity::Info => "INFO",
                Severity::Warn => "WARN",
            },
            body: AnyValue::StringValue(r.event.as_str().into()),
            attributes: vec![
                KeyValue {
                    key: ATTR_SEQ,
                    value: AnyValue::IntValue(r.seq.to_string()),
                },
                KeyValue {
                    key: ATTR_CHAIN,
                    value: AnyValue::StringValue(to_hex(&r.chain).into()),
                },
                KeyValue {
                    key: ATTR_PREV,
                    value: AnyValue::StringValue(to_hex(&r.prev).into()),
                },
            ],
        })
        .collect();
    let req = Request {
        resource_logs: [ResourceLogs {
            resource: Resource {
                attributes: vec![KeyValue {
                    key: "service.name",
                    value: AnyValue::StringValue(meta.service_name.as_str().into()),
                }],
            },
            scope_logs: [ScopeLogs {
                scope: Scope {
                    name: SCOPE_NAME,
                    version: env!("CARGO_PKG_VERSION"),
                },
                log_records,
            }],
        }],
    };
    serde_json::to_vec(&req).unwrap_or_default()
}

fn attr<'a>(record: &'a Value, key: &str) -> Option<&'a Value> {
    record
        .get("attributes")?
        .as_array()?
        .iter()
        .find(|kv| kv.get("key").and_then(Value::as_str) == Some(key))?
        .get("value")
}

/// OTLP JSON allows int64 as a string or a number.
fn int_value(v: &Value) -> Option<u64> {
    let iv = v.get("intValue")?;
    iv.as_u64()
        .or_else(|| iv.as_str().and_then(|s| s.parse().ok()))
}

fn string_value(v: &Value) -> Option<&str> {
    v.get("stringValue")?.as_str()
}

/// Reads one OTLP log record back into a chained record, or says what is wrong with it.
pub fn record_from_otlp(record: &Value) -> Result<ChainedRecord, String> {
    let event = record
        .get("body")
        .and_then(string_value)
        .ok_or("log record body is not a string")?;
    let seq = attr(record, ATTR_SEQ)
        .and_then(int_value)
        .ok_or("missing or non-integer phi_guard.seq")?;
    let chain = attr(record, ATTR_CHAIN)
        .and_then(string_value)
        .and_then(link_from_hex)
        .ok_or("missing or malformed phi_guard.chain")?;
    let prev = attr(record, ATTR_PREV)
        .and_then(string_value)
        .and_then(link_from_hex)
        .ok_or("missing or malformed phi_guard.prev")?;
    let time_ms = record
        .get("timeUnixNano")
        .and_then(|t| {
            t.as_str()
                .and_then(|s| s.parse::<u64>().ok())
                .or(t.as_u64())
        })
        .map(|ns| ns / 1_000_000)
        .unwrap_or(0);
    Ok(ChainedRecord {
        seq,
        prev,
        chain,
        event: event.to_string(),
        time_ms,
    })
}

/// Every log record of an `ExportLogsServiceRequest`, in document order. `Err` when the
/// document is not OTLP logs at all.
pub fn records_from_request(doc: &Value) -> Result<Vec<Result<ChainedRecord, String>>, String> {
    let resource_logs = doc
        .get("resourceLogs")
        .and_then(Value::as_array)
        .ok_or("not an OTLP logs request (no resourceLogs array)")?;
    let mut out = Vec::new();
    for rl in resource_logs {
        for sl in rl
            .get("scopeLogs")
            .and_then(Value::as_array)
            .map(Vec::as_slice)
            .unwrap_or_default()
        {
            for lr in sl
                .get("logRecords")
                .and_then(Value::as_array)
                .map(Vec::as_slice)
                .unwrap_or_default()
            {
                out.push(record_from_otlp(lr));
            }
        }
    }
    Ok(out)
}

/// The collector's file format: one JSON object per line with the exact event string.
pub fn collector_line(r: &ChainedRecord) -> String {
    serde_json::json!({
        "seq": r.seq,
        "prev": to_hex(&r.prev),
        "chain": to_hex(&r.chain),
        "event": r.event,
        "time_unix_nano": nanos(r.time_ms),
    })
    .to_string()
}

/// Reads a collector line back.
pub fn record_from_line(doc: &Value) -> Result<ChainedRecord, String> {
    let seq = doc
        .get("seq")
        .and_then(Value::as_u64)
        .ok_or("missing or non-integer seq")?;
    let prev = doc
        .get("prev")
        .and_then(Value::as_str)
        .and_then(link_from_hex)
        .ok_or("missing or malformed prev")?;
    let chain = doc
        .get("chain")
        .and_then(Value::as_str)
        .and_then(link_from_hex)
        .ok_or("missing or malformed chain")?;
    let event = doc
        .get("event")
        .and_then(Value::as_str)
        .ok_or("missing event string")?;
    let time_ms = doc
        .get("time_unix_nano")
        .and_then(Value::as_str)
        .and_then(|s| s.parse::<u64>().ok())
        .map(|ns| ns / 1_000_000)
        .unwrap_or(0);
    Ok(ChainedRecord {
        seq,
        prev,
        chain,
        event: event.to_string(),
        time_ms,
    })
}
