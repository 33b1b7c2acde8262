//! OTLP/HTTP logs: the `ExportLogsServiceRequest` body the service POSTs to `/v1/logs`, in
//! either encoding of the OTLP specification (*OTLP/HTTP*): binary protobuf (the default, the
//! specification's default, which OTLP receivers should accept; the official schema's types from the
//! `opentelemetry-proto` crate) or its JSON mapping. And the readers the collector and
//! verifier use. One log record per event; the body is the event's canonical JSON as a string
//! (so the exact chained bytes survive any re-encoding of the envelope) and the chain rides in
//! attributes.

use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::common::v1 as otlp_common;
use opentelemetry_proto::tonic::logs::v1 as otlp_logs;
use prost::Message as _;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use phi_guard_common::GrpcStatus;

use crate::chain::{link_from_hex, to_hex, ChainedRecord};

pub const ATTR_SEQ: &str = "phi_guard.seq";
pub const ATTR_CHAIN: &str = "phi_guard.chain";
pub const ATTR_PREV: &str = "phi_guard.prev";
pub const SCOPE_NAME: &str = "phi_guard.audit";

/// How an OTLP/HTTP body is encoded (OTLP specification, *OTLP/HTTP*, *Binary Protobuf
/// Encoding* and *JSON Protobuf Encoding*); config value `"protobuf"` or `"json"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Encoding {
    /// `application/x-protobuf`: the specification's default and the smaller body.
    #[default]
    Protobuf,
    /// `application/json`: the protobuf JSON mapping, readable on the wire; some receivers
    /// (Elastic APM, Seq) do not accept it.
    Json,
}

impl Encoding {
    /// The `content-type` of a request (and of the receiver's answer) in this encoding.
    pub fn content_type(self) -> &'static str {
        match self {
            Encoding::Protobuf => "application/x-protobuf",
            Encoding::Json => "application/json",
        }
    }

    /// The encoding a `content-type` header value names (parameters such as `; charset=`
    /// ignored, case-insensitive); `None` for anything else.
    pub fn from_content_type(value: &str) -> Option<Self> {
        let media = value.split(';').next().unwrap_or_default().trim();
        [Encoding::Protobuf, Encoding::Json]
            .into_iter()
            .find(|e| media.eq_ignore_ascii_case(e.content_type()))
    }
}

/// Resource-level description of the sender, and the body's encoding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OtlpMeta {
    /// `service.name` resource attribute.
    pub service_name: String,
    pub encoding: Encoding,
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

impl Severity {
    /// INFO when the RPC ended with gRPC OK, else WARN.
    pub fn of(ok: bool) -> Self {
        if ok {
            Severity::Info
        } else {
            Severity::Warn
        }
    }
}

/// Milliseconds as OTLP JSON's decimal-string nanoseconds, saturating at `u64::MAX` as the
/// protobuf encoding does (a far-off clock must not make a body every receiver refuses).
fn nanos(ms: u64) -> String {
    ms.saturating_mul(1_000_000).to_string()
}

/// One record of a logs request: the chained record, its severity, and when the service
/// observed it (took it off the queue), in Unix milliseconds: OTLP's
/// `observed_time_unix_nano`, the same in every resend of its batch.
#[derive(Debug, Clone, Copy)]
pub struct LogEntry<'a> {
    pub record: &'a ChainedRecord,
    pub severity: Severity,
    pub observed_ms: u64,
}

impl Severity {
    /// OTLP's `SeverityNumber` and its short name.
    fn number_and_text(self) -> (u8, &'static str) {
        match self {
            Severity::Info => (9, "INFO"),
            Severity::Warn => (13, "WARN"),
        }
    }
}

/// The `/v1/logs` request body for `records` (in order), in `meta.encoding`. The same
/// records give the same bytes: a resent batch is the batch sent before.
pub fn encode_logs(records: &[LogEntry<'_>], meta: &OtlpMeta) -> Vec<u8> {
    match meta.encoding {
        Encoding::Protobuf => encode_protobuf(records, meta),
        Encoding::Json => encode_json(records, meta),
    }
}

fn proto_string(value: &str) -> Option<otlp_common::AnyValue> {
    Some(otlp_common::AnyValue {
        value: Some(otlp_common::any_value::Value::StringValue(
            value.to_string(),
        )),
    })
}

fn key_value(key: &str, value: Option<otlp_common::AnyValue>) -> otlp_common::KeyValue {
    otlp_common::KeyValue {
        key: key.to_string(),
        value,
        ..Default::default()
    }
}

fn encode_protobuf(records: &[LogEntry<'_>], meta: &OtlpMeta) -> Vec<u8> {
    let log_records = records
        .iter()
        .map(|e| {
            let r = e.record;
            let (number, text) = e.severity.number_and_text();
            otlp_logs::LogRecord {
                time_unix_nano: r.time_ms.saturating_mul(1_000_000),
                observed_time_unix_nano: e.observed_ms.saturating_mul(1_000_000),
                severity_number: i32::from(number),
                severity_text: text.to_string(),
                body: proto_string(&r.event),
                attributes: vec![
                    key_value(
                        ATTR_SEQ,
                        Some(otlp_common::AnyValue {
                            // Beyond i64::MAX events a chain is not something this reaches.
                            value: Some(otlp_common::any_value::Value::IntValue(
                                i64::try_from(r.seq).unwrap_or(i64::MAX),
                            )),
                        }),
                    ),
                    key_value(ATTR_CHAIN, proto_string(&to_hex(&r.chain))),
                    key_value(ATTR_PREV, proto_string(&to_hex(&r.prev))),
                ],
                ..Default::default()
            }
        })
        .collect();
    ExportLogsServiceRequest {
        resource_logs: vec![otlp_logs::ResourceLogs {
            resource: Some(opentelemetry_proto::tonic::resource::v1::Resource {
                attributes: vec![key_value("service.name", proto_string(&meta.service_name))],
                ..Default::default()
            }),
            scope_logs: vec![otlp_logs::ScopeLogs {
                scope: Some(otlp_common::InstrumentationScope {
                    name: SCOPE_NAME.to_string(),
                    version: env!("CARGO_PKG_VERSION").to_string(),
                    ..Default::default()
                }),
                log_records,
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
    .encode_to_vec()
}

fn encode_json(records: &[LogEntry<'_>], meta: &OtlpMeta) -> Vec<u8> {
    let log_records = records
        .iter()
        .map(|e| {
            let (severity_number, severity_text) = e.severity.number_and_text();
            LogRecord {
                time_unix_nano: nanos(e.record.time_ms),
                observed_time_unix_nano: nanos(e.observed_ms),
                severity_number,
                severity_text,
                body: AnyValue::StringValue(e.record.event.as_str().into()),
                attributes: vec![
                    KeyValue {
                        key: ATTR_SEQ,
                        value: AnyValue::IntValue(e.record.seq.to_string()),
                    },
                    KeyValue {
                        key: ATTR_CHAIN,
                        value: AnyValue::StringValue(to_hex(&e.record.chain).into()),
                    },
                    KeyValue {
                        key: ATTR_PREV,
                        value: AnyValue::StringValue(to_hex(&e.record.prev).into()),
                    },
                ],
            }
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

/// A chained record from the parts of one OTLP log record, in either encoding, or what is
/// wrong with it.
fn chained_record(
    event: Option<&str>,
    seq: Option<u64>,
    chain: Option<&str>,
    prev: Option<&str>,
    time_unix_nano: Option<u64>,
) -> Result<ChainedRecord, String> {
    let event = event.ok_or("log record body is not a string")?;
    let seq = seq.ok_or("missing or non-integer phi_guard.seq")?;
    let chain = chain
        .and_then(link_from_hex)
        .ok_or("missing or malformed phi_guard.chain")?;
    let prev = prev
        .and_then(link_from_hex)
        .ok_or("missing or malformed phi_guard.prev")?;
    Ok(ChainedRecord {
        seq,
        prev,
        chain,
        event: event.to_string(),
        time_ms: time_unix_nano.unwrap_or(0) / 1_000_000,
    })
}

/// Reads one OTLP JSON log record back into a chained record, or says what is wrong with it.
pub fn record_from_otlp(record: &Value) -> Result<ChainedRecord, String> {
    let text = |key| attr(record, key).and_then(string_value);
    chained_record(
        record.get("body").and_then(string_value),
        attr(record, ATTR_SEQ).and_then(int_value),
        text(ATTR_CHAIN),
        text(ATTR_PREV),
        record.get("timeUnixNano").and_then(|t| {
            t.as_str()
                .and_then(|s| s.parse::<u64>().ok())
                .or(t.as_u64())
        }),
    )
}

/// Reads one protobuf log record back into a chained record, or says what is wrong with it.
fn record_from_proto(record: &otlp_logs::LogRecord) -> Result<ChainedRecord, String> {
    use otlp_common::any_value::Value as V;
    let attr = |key: &str| {
        record
            .attributes
            .iter()
            .find(|kv| kv.key == key)
            .and_then(|kv| kv.value.as_ref()?.value.as_ref())
    };
    fn text(value: Option<&V>) -> Option<&str> {
        match value {
            Some(V::StringValue(s)) => Some(s.as_str()),
            _ => None,
        }
    }
    let seq = match attr(ATTR_SEQ) {
        Some(V::IntValue(n)) => u64::try_from(*n).ok(),
        _ => None,
    };
    chained_record(
        text(record.body.as_ref().and_then(|b| b.value.as_ref())),
        seq,
        text(attr(ATTR_CHAIN)),
        text(attr(ATTR_PREV)),
        Some(record.time_unix_nano),
    )
}

/// Every log record of a binary-protobuf `ExportLogsServiceRequest`, in order. `Err` when the
/// bytes are not one.
pub fn records_from_protobuf(body: &[u8]) -> Result<Vec<Result<ChainedRecord, String>>, String> {
    let request = ExportLogsServiceRequest::decode(body)
        .map_err(|_| "not an OTLP logs request (protobuf decoding failed)".to_string())?;
    Ok(request
        .resource_logs
        .iter()
        .flat_map(|rl| &rl.scope_logs)
        .flat_map(|sl| &sl.log_records)
        .map(record_from_proto)
        .collect())
}

/// Every log record of an OTLP/HTTP logs request body in `encoding`, in order. `Err` when the
/// body is not an OTLP logs request in that encoding.
pub fn records_from_body(
    body: &[u8],
    encoding: Encoding,
) -> Result<Vec<Result<ChainedRecord, String>>, String> {
    match encoding {
        Encoding::Protobuf => records_from_protobuf(body),
        Encoding::Json => {
            let doc: Value =
                serde_json::from_slice(body).map_err(|_| "body is not JSON".to_string())?;
            records_from_request(&doc)
        }
    }
}

/// Every log record of an `ExportLogsServiceRequest`, in document order. `Err` when the
/// document is not OTLP logs at all.
pub fn records_from_request(doc: &Value) -> Result<Vec<Result<ChainedRecord, String>>, String> {
    let doc = doc
        .as_object()
        .ok_or("not an OTLP logs request (not an object)")?;
    // An absent repeated field is an empty one (the JSON mapping's default): `{}` is a request
    // without records.
    let resource_logs = match doc.get("resourceLogs") {
        None | Some(Value::Null) => &[][..],
        Some(v) => v
            .as_array()
            .ok_or("not an OTLP logs request (resourceLogs is not an array)")?,
    };
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

/// A receiver's answer to a logs request (`ExportLogsServiceResponse`) in the request's
/// `encoding`: empty when every record was kept, with `partial_success` counting the
/// `rejected` records and saying why otherwise (OTLP specification, *Partial Success*).
pub fn export_response(encoding: Encoding, rejected: u64, error_message: &str) -> Vec<u8> {
    use opentelemetry_proto::tonic::collector::logs::v1::{
        ExportLogsPartialSuccess, ExportLogsServiceResponse,
    };
    let rejected = i64::try_from(rejected).unwrap_or(i64::MAX);
    match encoding {
        Encoding::Protobuf => ExportLogsServiceResponse {
            partial_success: (rejected > 0).then(|| ExportLogsPartialSuccess {
                rejected_log_records: rejected,
                error_message: error_message.to_string(),
            }),
        }
        .encode_to_vec(),
        Encoding::Json if rejected == 0 => b"{}".to_vec(),
        // OTLP JSON carries 64-bit integers as decimal strings.
        Encoding::Json => serde_json::json!({"partialSuccess": {
            "rejectedLogRecords": rejected.to_string(),
            "errorMessage": error_message,
        }})
        .to_string()
        .into_bytes(),
    }
}

/// How many records a receiver's 2xx answer (`ExportLogsServiceResponse` in `encoding`)
/// says it rejected: `partial_success.rejected_log_records`, 0 when the answer is empty or
/// has no `partial_success` (OTLP specification, *Partial Success*). `None` when the body is
/// not such a response; the error message is never read (it is the receiver's text).
pub fn rejected_records(encoding: Encoding, body: &[u8]) -> Option<u64> {
    use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceResponse;
    let rejected = match encoding {
        Encoding::Protobuf => ExportLogsServiceResponse::decode(body)
            .ok()?
            .partial_success
            .map_or(0, |p| p.rejected_log_records),
        Encoding::Json if body.iter().all(u8::is_ascii_whitespace) => 0,
        Encoding::Json => {
            let doc: Value = serde_json::from_slice(body).ok()?;
            match doc.as_object()?.get("partialSuccess") {
                None | Some(Value::Null) => 0,
                Some(p) => match p.as_object()?.get("rejectedLogRecords") {
                    None | Some(Value::Null) => 0,
                    // The JSON mapping writes int64 as a decimal string and reads numbers too.
                    Some(Value::String(s)) => s.parse().ok()?,
                    Some(v) => v.as_i64()?,
                },
            }
        }
    };
    u64::try_from(rejected).ok()
}

/// `google.rpc.Status` (`google/rpc/status.proto`; `details` left out): the body of an
/// OTLP/HTTP receiver's 4xx/5xx answer.
#[derive(Clone, PartialEq, prost::Message)]
struct RpcStatus {
    #[prost(int32, tag = "1")]
    code: i32,
    #[prost(string, tag = "2")]
    message: String,
}

/// A receiver's answer body to a refused logs request, in the request's `encoding`
/// (OTLP specification, *Failures*): a `google.rpc.Status` with `status`'s gRPC code (e.g.
/// INVALID_ARGUMENT, UNAVAILABLE) and a `message` for the sender's log.
pub fn error_response(encoding: Encoding, status: GrpcStatus, message: &str) -> Vec<u8> {
    // gRPC codes are 0..=16.
    let code = i32::try_from(status.code()).unwrap_or(i32::MAX);
    match encoding {
        Encoding::Protobuf => RpcStatus {
            code,
            message: message.to_string(),
        }
        .encode_to_vec(),
        Encoding::Json => serde_json::json!({"code": code, "message": message})
            .to_string()
            .into_bytes(),
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejected_records_reads_partial_success_in_either_encoding() {
        for encoding in [Encoding::Protobuf, Encoding::Json] {
            for rejected in [0, 1, 7, u64::from(u32::MAX) + 1] {
                let body = export_response(encoding, rejected, "why");
                assert_eq!(
                    rejected_records(encoding, &body),
                    Some(rejected),
                    "{encoding:?} {rejected}"
                );
            }
            // An empty answer is a full success (the protobuf default, and no JSON body).
            assert_eq!(rejected_records(encoding, b""), Some(0), "{encoding:?}");
            // Not a response at all.
            assert_eq!(
                rejected_records(encoding, b"\xff\xff\xff"),
                None,
                "{encoding:?}"
            );
        }
        for (body, want) in [
            (&br#"{}"#[..], Some(0)),
            (br#"{"partialSuccess":{}}"#, Some(0)),
            (br#"{"partialSuccess":{"rejectedLogRecords":3}}"#, Some(3)),
            (br#"{"partialSuccess":{"rejectedLogRecords":"-1"}}"#, None),
            (br#"{"partialSuccess":[]}"#, None),
            (br#"[]"#, None),
        ] {
            assert_eq!(
                rejected_records(Encoding::Json, body),
                want,
                "{}",
                String::from_utf8_lossy(body)
            );
        }
    }

    #[test]
    fn an_empty_request_has_no_records_and_a_non_object_is_refused() {
        assert_eq!(records_from_body(b"{}", Encoding::Json), Ok(vec![]));
        assert_eq!(
            records_from_body(br#"{"resourceLogs":null}"#, Encoding::Json),
            Ok(vec![])
        );
        assert_eq!(records_from_body(b"", Encoding::Protobuf), Ok(vec![]));
        for bad in [&b"[]"[..], b"1", br#"{"resourceLogs":{}}"#] {
            assert!(records_from_body(bad, Encoding::Json).is_err());
        }
    }
}
