//! The collector and the verifier natively: batches built by the core are POSTed to the
//! collector on a loopback port, with injected 503/429 answers and an outage, and the
//! verifier command checks the file it wrote.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;

use phi_guard_audit::chain::ChainKey;
use phi_guard_audit::delivery::{CallOutcome, Delivery, DeliveryConfig};
use phi_guard_audit::otlp::{Encoding, OtlpMeta};
use phi_guard_audit_cli::collector::{Collector, FailMode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const KEY: &str = "collector-key-0123456789abcdef-0123456789";

fn tmp(name: &str) -> PathBuf {
    let p = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("phi-guard-audit-{}-{name}", std::process::id()));
    let _ = std::fs::remove_file(&p);
    p
}

/// A minimal HTTP/1.1 client: one request per connection, `content-type: application/json`.
/// `None` when nobody listens.
async fn post(addr: SocketAddr, path: &str, body: &[u8]) -> Option<(u16, String)> {
    post_as(addr, path, "application/json", body).await
}

/// [`post`] with another `content-type`.
async fn post_as(
    addr: SocketAddr,
    path: &str,
    content_type: &str,
    body: &[u8],
) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(addr).await.ok()?;
    let head = format!(
        "POST {path} HTTP/1.1\r\nhost: collector\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).await.ok()?;
    s.write_all(body).await.ok()?;
    let mut resp = Vec::new();
    s.read_to_end(&mut resp).await.ok()?;
    let text = String::from_utf8_lossy(&resp).to_string();
    let status = text.get(9..12)?.parse().ok()?;
    let body = text
        .split("\r\n\r\n")
        .nth(1)
        .unwrap_or_default()
        .to_string();
    Some((status, body))
}

fn verify_cmd(key: &PathBuf, files: &[&PathBuf], extra: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_phi-guard-audit-verify"))
        .arg("--key-file")
        .arg(key)
        .args(extra)
        .args(files)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).trim().to_string()
            + &String::from_utf8_lossy(&out.stderr),
    )
}

fn event(i: u64) -> Vec<u8> {
    format!(r#"{{"outcome":{{"grpc_status":0}},"schema":"phi_guard.audit.v1","time":"2025-11-26T18:03:04.512Z","what":{{"resource_id":"p-{i:04}"}}}}"#).into_bytes()
}

#[tokio::test]
async fn collector_writes_what_the_verifier_accepts_through_failures_protobuf() {
    through_failures(Encoding::Protobuf, "protobuf").await;
}

#[tokio::test]
async fn collector_writes_what_the_verifier_accepts_through_failures_json() {
    through_failures(Encoding::Json, "json").await;
}

/// The service's core ships 23 events in `encoding` through two 503s, a 429 and an outage;
/// the collector's file verifies, and tampering with it is caught.
async fn through_failures(encoding: Encoding, name: &str) {
    let tmp = |file: &str| tmp(&format!("{name}-{file}"));
    let post = |addr, path, body: &[u8]| {
        let body = body.to_vec();
        let content_type = if path == "/v1/logs" {
            encoding.content_type()
        } else {
            "application/json"
        };
        async move { post_as(addr, path, content_type, &body).await }
    };
    // An empty ExportLogsServiceResponse: no bytes in protobuf, `{}` in JSON.
    let all_kept = match encoding {
        Encoding::Protobuf => "",
        Encoding::Json => "{}",
    };
    let out = tmp("audit.jsonl");
    let key_file = tmp("key");
    std::fs::write(&key_file, format!("{KEY}\n")).unwrap();
    let loopback: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let collector = Collector::start(loopback, &out, FailMode::default())
        .await
        .unwrap();
    let addr = collector.addr;

    let mut core = Delivery::new(
        DeliveryConfig {
            max_batch_events: 5,
            max_backlog_events: 100,
            initial_backoff_ms: 10,
            max_backoff_ms: 40,
            ..DeliveryConfig::default()
        },
        ChainKey::new(KEY.as_bytes()).unwrap(),
        OtlpMeta {
            service_name: "phi-guard".into(),
            encoding,
        },
    );
    // Two injected 503s, then one 429 through the control endpoint.
    collector.set_fail(FailMode {
        status: Some(503),
        remaining: Some(2),
    });
    let mut now = 0u64;
    let mut sent_events = 0;
    let mut statuses = Vec::new();
    let mut restarted = None;
    for step in 0..400 {
        if sent_events < 23 {
            core.on_event(event(sent_events), now).unwrap();
            sent_events += 1;
        }
        if step == 6 {
            let (code, _) = post(addr, "/control/fail?status=429&count=1", b"")
                .await
                .unwrap();
            assert_eq!(code, 200);
        }
        if let Some(batch) = core.poll(now) {
            let target = restarted.unwrap_or(addr);
            let outcome = match post(target, "/v1/logs", &batch.body).await {
                Some((code, body)) => {
                    if code == 200 {
                        assert_eq!(body, all_kept);
                    }
                    statuses.push(code);
                    CallOutcome::Status(u32::from(code))
                }
                None => {
                    statuses.push(0);
                    CallOutcome::Failed
                }
            };
            core.on_response(batch.id, outcome, now);
        }
        now += 10;
        if core.stats().shipped == 23 {
            break;
        }
    }
    assert_eq!(core.stats().shipped, 23, "statuses {statuses:?}");
    assert!(
        statuses.contains(&503) && statuses.contains(&429),
        "{statuses:?}"
    );
    let stats = collector.stats();
    assert_eq!(stats.records, 23);
    assert_eq!(stats.failed, 3);

    let (code, text) = verify_cmd(&key_file, &[&out], &["--expect-count", "23"]);
    assert_eq!(
        (code, text.as_str()),
        (0, "ok: 23 events, chain intact (seq 0..=22)")
    );

    // The collector goes away: calls fail, the batch is retained, nothing is lost.
    collector.stop().await;
    core.on_event(event(99), now).unwrap();
    now += 2_000;
    let batch = core.poll(now).unwrap();
    assert_eq!(post(addr, "/v1/logs", &batch.body).await, None);
    core.on_response(batch.id, CallOutcome::Failed, now);
    let back = Collector::start(addr, &out, FailMode::default())
        .await
        .unwrap();
    restarted = Some(back.addr);
    now += 1_000;
    let batch = core.poll(now).unwrap();
    assert_eq!(
        post(restarted.unwrap(), "/v1/logs", &batch.body)
            .await
            .map(|r| r.0),
        Some(200)
    );
    core.on_response(batch.id, CallOutcome::Status(200), now);
    back.stop().await;
    let (code, text) = verify_cmd(&key_file, &[&out], &[]);
    assert_eq!(
        (code, text.as_str()),
        (0, "ok: 24 events, chain intact (seq 0..=23)")
    );

    // Tampering with the file is caught with the line number.
    let text = std::fs::read_to_string(&out).unwrap();
    let tampered = tmp("tampered.jsonl");
    std::fs::write(&tampered, text.replacen("p-0007", "p-0008", 1)).unwrap();
    let (code, msg) = verify_cmd(&key_file, &[&tampered], &[]);
    assert_eq!(code, 1);
    assert!(msg.starts_with("FAIL: altered record at"), "{msg}");
    assert!(msg.contains("tampered.jsonl:8 (seq 7)"), "{msg}");
    let deleted = tmp("deleted.jsonl");
    let kept: Vec<&str> = text
        .lines()
        .enumerate()
        .filter(|(i, _)| *i != 10)
        .map(|(_, l)| l)
        .collect();
    std::fs::write(&deleted, kept.join("\n")).unwrap();
    let (code, msg) = verify_cmd(&key_file, &[&deleted], &[]);
    assert_eq!(code, 1);
    assert!(msg.contains("missing event seq 10"), "{msg}");
}

#[tokio::test]
async fn collector_rejects_what_is_not_otlp_and_answers_control() {
    let out = tmp("reject.jsonl");
    let c = Collector::start("127.0.0.1:0".parse().unwrap(), &out, FailMode::default())
        .await
        .unwrap();
    assert_eq!(post(c.addr, "/v1/logs", b"nope").await.unwrap().0, 400);
    let protobuf = "application/x-protobuf";
    // A truncated length-delimited field is not an ExportLogsServiceRequest.
    assert_eq!(
        post_as(c.addr, "/v1/logs", protobuf, b"\x0a\x05ab")
            .await
            .unwrap()
            .0,
        400
    );
    assert_eq!(
        post_as(c.addr, "/v1/logs", "text/plain", b"{}")
            .await
            .unwrap()
            .0,
        415
    );
    // Refusals are a google.rpc.Status in the request's encoding: JSON here, and binary
    // (field 1 the code, 14 UNAVAILABLE; field 2 the message) below.
    let (code, body) = post(c.addr, "/v1/logs", b"nope").await.unwrap();
    assert_eq!(code, 400);
    let status: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(status["code"], 3, "INVALID_ARGUMENT: {body}");
    // An empty request is a request without records (an absent repeated field): accepted.
    assert_eq!(post(c.addr, "/v1/logs", b"{}").await.unwrap().0, 200);
    for not_otlp in [&b"[]"[..], br#"{"resourceLogs":{}}"#] {
        assert_eq!(post(c.addr, "/v1/logs", not_otlp).await.unwrap().0, 400);
    }
    let partial =
        br#"{"resourceLogs":[{"scopeLogs":[{"logRecords":[{"body":{"stringValue":"{}"}}]}]}]}"#;
    let (code, body) = post(c.addr, "/v1/logs", partial).await.unwrap();
    assert_eq!(code, 200);
    assert!(body.contains("rejectedLogRecords"));
    assert_eq!(
        post(c.addr, "/control/fail?status=200", b"")
            .await
            .unwrap()
            .0,
        400
    );
    assert_eq!(
        post(c.addr, "/control/fail?status=503", b"")
            .await
            .unwrap()
            .0,
        200
    );
    assert_eq!(post(c.addr, "/v1/logs", b"{}").await.unwrap().0, 503);
    let (code, body) = post_as(c.addr, "/v1/logs", protobuf, b"").await.unwrap();
    assert_eq!(code, 503);
    assert!(body.starts_with("\u{8}\u{e}\u{12}"), "{body:?}");
    assert!(body.ends_with("injected failure"), "{body:?}");
    assert_eq!(
        post(c.addr, "/v1/logs", b"{}").await.unwrap().0,
        503,
        "until cleared"
    );
    assert_eq!(post(c.addr, "/control/ok", b"").await.unwrap().0, 200);
    assert_eq!(post(c.addr, "/v1/logs", b"{}").await.unwrap().0, 200);
    assert_eq!(post(c.addr, "/nowhere", b"").await.unwrap().0, 404);
    assert!(std::fs::read_to_string(&out).unwrap().is_empty());
    c.stop().await;
    assert!(
        Collector::start("0.0.0.0:0".parse().unwrap(), &out, FailMode::default())
            .await
            .is_err(),
        "loopback only"
    );
}

#[test]
fn collector_command_starts_and_reports_its_address() {
    use std::io::{BufRead, BufReader};
    let out = tmp("cmd.jsonl");
    let mut child = Command::new(env!("CARGO_BIN_EXE_phi-guard-audit-collector"))
        .args(["--listen", "127.0.0.1:0", "--out"])
        .arg(&out)
        .args(["--fail-status", "429", "--fail-count", "1"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert!(line.starts_with("listening on 127.0.0.1:"), "{line}");
    let addr: SocketAddr = line
        .trim()
        .trim_start_matches("listening on ")
        .parse()
        .unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        assert_eq!(post(addr, "/v1/logs", b"{}").await.unwrap().0, 429);
        assert_eq!(post(addr, "/v1/logs", b"{}").await.unwrap().0, 200);
    });
    child.kill().unwrap();
    child.wait().unwrap();
    let status = Command::new(env!("CARGO_BIN_EXE_phi-guard-audit-collector"))
        .args(["--listen", "0.0.0.0:4318", "--out"])
        .arg(&out)
        .status()
        .unwrap();
    assert_eq!(
        status.code(),
        Some(2),
        "non-loopback refused before binding"
    );
}
