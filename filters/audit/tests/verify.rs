//! The verifier finds the first missing, altered or reordered record and says where.

use phi_guard_audit::chain::{to_hex, ChainKey, ChainedRecord, Chainer};
use phi_guard_audit::otlp::{collector_line, encode_logs, Encoding, LogEntry, OtlpMeta, Severity};
use phi_guard_audit::verify::{parse_input, verify, Failure, Located, VerifyOptions};

fn key() -> ChainKey {
    ChainKey::new(b"verify-key-0123456789abcdef-0123456789").unwrap()
}

fn chain(n: u64) -> Vec<ChainedRecord> {
    let mut c = Chainer::new(key());
    (0..n)
        .map(|i| c.append(format!(r#"{{"n":{i}}}"#), 1_000 + i))
        .collect()
}

fn lines(records: &[ChainedRecord]) -> String {
    records.iter().map(|r| collector_line(r) + "\n").collect()
}

fn check(text: &str, opts: &VerifyOptions) -> Result<String, String> {
    verify(&parse_input("audit.jsonl", text), &key(), opts)
        .map(|r| r.to_string())
        .map_err(|f| f.to_string())
}

fn ok(text: &str) -> Result<String, String> {
    check(text, &VerifyOptions::default())
}

#[test]
fn intact_chain() {
    assert_eq!(
        ok(&lines(&chain(5))).unwrap(),
        "ok: 5 events, chain intact (seq 0..=4)"
    );
}

#[test]
fn detects_an_altered_event() {
    let mut r = chain(5);
    r[2].event = r[2].event.replace('2', "9");
    assert_eq!(
        ok(&lines(&r)).unwrap_err(),
        "altered record at audit.jsonl:3 (seq 2): HMAC does not match its event, seq and prev (or wrong key)"
    );
}

#[test]
fn detects_an_edit_to_the_collected_line_itself() {
    let text = lines(&chain(3)).replacen(r#"{\"n\":1}"#, r#"{\"n\":7}"#, 1);
    assert!(ok(&text)
        .unwrap_err()
        .starts_with("altered record at audit.jsonl:2 (seq 1)"));
}

#[test]
fn detects_a_renumbered_record() {
    let mut r = chain(4);
    r.remove(2);
    r[2].seq = 2; // hide the gap
    assert!(ok(&lines(&r))
        .unwrap_err()
        .starts_with("altered record at audit.jsonl:3 (seq 2)"));
}

#[test]
fn detects_a_deletion_in_the_middle() {
    let mut r = chain(6);
    r.drain(2..4);
    assert_eq!(
        ok(&lines(&r)).unwrap_err(),
        "missing events seq 2..=3: not found before audit.jsonl:3 (seq 4)"
    );
    let mut r = chain(6);
    r.remove(1);
    assert_eq!(
        ok(&lines(&r)).unwrap_err(),
        "missing event seq 1: not found before audit.jsonl:2 (seq 2)"
    );
}

#[test]
fn detects_a_swap() {
    let mut r = chain(5);
    r.swap(1, 3);
    assert_eq!(
        ok(&lines(&r)).unwrap_err(),
        "reordered: seq 3 at audit.jsonl:2 comes before seq 1, which is at audit.jsonl:4"
    );
    let mut r = chain(5);
    r.swap(3, 4);
    assert_eq!(
        ok(&lines(&r)).unwrap_err(),
        "reordered: seq 4 at audit.jsonl:4 comes before seq 3, which is at audit.jsonl:5"
    );
}

#[test]
fn a_copy_of_an_earlier_record_replacing_the_tail_needs_an_expected_count() {
    let mut r = chain(4);
    let old = r[1].clone();
    r[3] = old; // seq 3 replaced by a copy of seq 1
                // An exact copy of an already verified record is a tolerated duplicate; the missing
                // seq 3 is then only visible with an expected count.
    assert_eq!(
        check(
            &lines(&r),
            &VerifyOptions {
                expect_count: Some(4),
                ..Default::default()
            }
        )
        .unwrap_err(),
        "expected 4 events, found 3 (events missing at the end?)"
    );
}

#[test]
fn detects_a_spliced_record_from_another_chain() {
    // Same key, different chain (e.g. another Envoy): valid HMAC, wrong prev.
    let mut c = Chainer::new(key());
    let other: Vec<ChainedRecord> = (0..3)
        .map(|i| c.append(format!(r#"{{"other":{i}}}"#), 0))
        .collect();
    let mut r = chain(3);
    r[2] = other[2].clone();
    assert_eq!(
        ok(&lines(&r)).unwrap_err(),
        "broken link at audit.jsonl:3 (seq 2): prev is not the link of seq 1"
    );
}

#[test]
fn truncated_tail_needs_an_expected_count() {
    let r = chain(5);
    assert!(
        ok(&lines(&r[..3])).is_ok(),
        "a cut tail is invisible to the chain alone"
    );
    assert_eq!(
        check(
            &lines(&r[..3]),
            &VerifyOptions {
                expect_count: Some(5),
                ..Default::default()
            }
        )
        .unwrap_err(),
        "expected 5 events, found 3 (events missing at the end?)"
    );
}

#[test]
fn missing_head_needs_partial() {
    let r = chain(5);
    assert_eq!(
        ok(&lines(&r[2..])).unwrap_err(),
        "chain does not start at genesis: first record at audit.jsonl:1 has seq 2 (use --partial if collection started late)"
    );
    assert_eq!(
        check(
            &lines(&r[2..]),
            &VerifyOptions {
                partial: true,
                ..Default::default()
            }
        )
        .unwrap(),
        "ok: 3 events, chain intact (seq 2..=4)"
    );
}

#[test]
fn exact_duplicates_from_resends_are_ignored() {
    let r = chain(4);
    let mut text = lines(&r[..3]);
    text += &lines(&r[1..]); // a resent batch 1..=2 after a lost acknowledgement, then 3
    assert_eq!(
        ok(&text).unwrap(),
        "ok: 4 events, chain intact (seq 0..=3); 2 exact duplicates ignored"
    );
}

#[test]
fn restarts_are_segments() {
    let mut text = lines(&chain(3));
    let mut c = Chainer::new(key());
    for i in 0..2 {
        text += &(collector_line(&c.append(format!(r#"{{"after_restart":{i}}}"#), 0)) + "\n");
    }
    assert_eq!(
        ok(&text).unwrap(),
        "ok: 5 events, chain intact (2 segments, restarts at audit.jsonl:4)"
    );
    assert_eq!(
        check(
            &text,
            &VerifyOptions {
                single_segment: true,
                ..Default::default()
            }
        )
        .unwrap_err(),
        "chain restarts at audit.jsonl:4 (--single-segment)"
    );
}

#[test]
fn wrong_key_fails_at_the_first_record() {
    let other = ChainKey::new(b"another-key-0123456789abcdef-01234567").unwrap();
    let f = verify(
        &parse_input("f", &lines(&chain(2))),
        &other,
        &VerifyOptions::default(),
    )
    .unwrap_err();
    assert_eq!(
        f,
        Failure::Altered {
            at: "f:1".into(),
            seq: 0
        }
    );
}

#[test]
fn malformed_and_empty_inputs() {
    assert_eq!(ok("").unwrap_err(), "no events found");
    let mut text = lines(&chain(2));
    text += "{\"seq\":2}\n";
    assert_eq!(
        ok(&text).unwrap_err(),
        "malformed record at audit.jsonl:3: missing or malformed prev"
    );
    let text = lines(&chain(2)) + "garbage\n";
    assert!(ok(&text)
        .unwrap_err()
        .starts_with("malformed record at audit.jsonl:3: not JSON"));
    let bad_prev = lines(&chain(1)).replace(&to_hex(&[0u8; 32]), "zz");
    assert!(ok(&bad_prev).unwrap_err().contains("malformed prev"));
}

#[test]
fn reads_otlp_bodies_one_per_line_and_pretty_printed() {
    let r = chain(5);
    // The verifier reads OTLP/HTTP JSON bodies saved to files.
    let meta = OtlpMeta {
        service_name: "phi-guard".into(),
        encoding: Encoding::Json,
    };
    let body = |rs: &[ChainedRecord]| {
        let entries: Vec<_> = rs
            .iter()
            .map(|record| LogEntry {
                record,
                severity: Severity::Info,
                observed_ms: 0,
            })
            .collect();
        String::from_utf8(encode_logs(&entries, &meta)).unwrap()
    };
    let text = format!("{}\n{}\n", body(&r[..2]), body(&r[2..]));
    assert_eq!(ok(&text).unwrap(), "ok: 5 events, chain intact (seq 0..=4)");
    let pretty: serde_json::Value = serde_json::from_str(&body(&r)).unwrap();
    let pretty = serde_json::to_string_pretty(&pretty).unwrap();
    let records = parse_input("body.json", &pretty);
    assert_eq!(records.len(), 5);
    assert_eq!(records[4].at, "body.json#5");
    assert!(verify(&records, &key(), &VerifyOptions::default()).is_ok());
    // A swapped pair inside one OTLP body is located by record index.
    let mut swapped = r.clone();
    swapped.swap(0, 1);
    let err = verify(
        &parse_input("b.json", &body(&swapped)),
        &key(),
        &VerifyOptions::default(),
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.starts_with("chain does not start at genesis: first record at b.json:1#1"),
        "{err}"
    );
}

#[test]
fn located_records_keep_their_errors() {
    let l = Located {
        at: "x".into(),
        record: Err("boom".into()),
    };
    assert_eq!(
        verify(&[l], &key(), &VerifyOptions::default())
            .unwrap_err()
            .to_string(),
        "malformed record at x: boom"
    );
}

#[test]
fn lists_break_glass_decisions_once_each() {
    use phi_guard_audit::event::{AuditEvent, Authz, Outcome, What, Who};
    use phi_guard_audit::verify::break_glass_accesses;
    use phi_guard_common::{AuthzMode, Verdict};
    let event = |break_glass: bool, decision: Verdict, reason: Option<&str>| AuditEvent {
        schema: "phi_guard.audit.v1".into(),
        time: "2026-12-02T05:00:00.000Z".into(),
        who: Who {
            subject: Some("dr-house".into()),
            peer: Some("spiffe://phi-guard.test/ns/clinic/sa/ehr-frontend".into()),
            ..Default::default()
        },
        what: What {
            service: Some("health.v1.PatientService".into()),
            method: Some("GetPatient".into()),
            resource_id: Some("p-0001".into()),
            claimed_resource_id: None,
        },
        outcome: Outcome {
            authz: Some(Authz {
                decision,
                mode: AuthzMode::Enforce,
                policy_version: "v".into(),
                reason: if reason.is_some() {
                    "break_glass"
                } else {
                    "matched_allow"
                }
                .into(),
                rule: Some("emergency-reads".into()),
                break_glass,
                break_glass_reason: reason.map(str::to_string),
                shadow_decision: None,
            }),
            grpc_status: Some(0),
            ..Default::default()
        },
        ..Default::default()
    };
    let mut c = Chainer::new(key());
    let events = [
        event(false, Verdict::Allow, None),
        event(true, Verdict::Allow, Some("life-threat")),
        event(true, Verdict::Deny, None),
    ];
    let records: Vec<ChainedRecord> = events
        .iter()
        .map(|e| c.append(String::from_utf8(e.canonical_bytes()).unwrap(), 1))
        .collect();
    // The second event arrives twice (a resent batch).
    let text = lines(&records) + &lines(&records[1..2]);
    let located = parse_input("audit.jsonl", &text);
    assert!(verify(&located, &key(), &VerifyOptions::default()).is_ok());
    let listed: Vec<String> = break_glass_accesses(&located)
        .iter()
        .map(|a| a.to_string())
        .collect();
    assert_eq!(
        listed,
        [
            "seq=1 time=2026-12-02T05:00:00.000Z decision=allow reason=life-threat rule=emergency-reads subject=dr-house peer=spiffe://phi-guard.test/ns/clinic/sa/ehr-frontend method=health.v1.PatientService/GetPatient resource=p-0001 claimed_resource=- grpc_status=0",
            "seq=2 time=2026-12-02T05:00:00.000Z decision=deny reason=- rule=emergency-reads subject=dr-house peer=spiffe://phi-guard.test/ns/clinic/sa/ehr-frontend method=health.v1.PatientService/GetPatient resource=p-0001 claimed_resource=- grpc_status=0",
        ]
    );
}
