//! Framing and stream masking: chunk boundaries, gzip, malformed input, memory bounds.

mod support;

use std::io::{Read, Write};

use flate2::read::GzDecoder;
use flate2::write::GzEncoder;
use flate2::Compression;
use phi_guard_mask::{Encoding, MaskConfig, MaskError, StreamMasker};
use phi_guard_proto::health::v1::{Encounter, Patient};
use proptest::prelude::*;
use prost::Message;
use support::*;

fn config() -> &'static MaskConfig {
    static CFG: std::sync::OnceLock<MaskConfig> = std::sync::OnceLock::new();
    CFG.get_or_init(demo_config)
}

fn masker(cfg: &MaskConfig, method: &str, encoding: Encoding) -> StreamMasker {
    StreamMasker::new(
        cfg.plans.method(method).unwrap(),
        encoding,
        cfg.max_message_bytes,
    )
}

/// Feeds `chunks` to a fresh masker for `role`; returns everything emitted and the result.
fn run(
    cfg: &MaskConfig,
    method: &str,
    role: &str,
    encoding: Encoding,
    chunks: &[&[u8]],
) -> (Vec<u8>, Result<(), MaskError>) {
    let mut m = masker(cfg, method, encoding);
    let (_, block) = cfg.policy.for_role(Some(role));
    let rw = cfg.rewriter(block);
    let mut emitted = Vec::new();
    for c in chunks {
        match m.feed(&rw, c) {
            Ok(out) => emitted.extend(out),
            Err(e) => return (emitted, Err(e)),
        }
    }
    let end = m.finish();
    (emitted, end)
}

/// Several encounters, some larger than a 16 KiB DATA chunk.
fn encounter_stream() -> Vec<u8> {
    let mut s = Vec::new();
    for (i, size) in [0usize, 50_000, 200, 70_000, 10].into_iter().enumerate() {
        s.extend(frame(&encounter(i as u32, size).encode_to_vec()));
    }
    s
}

fn small_stream() -> Vec<u8> {
    let mut s = frame(&patient().encode_to_vec());
    s.extend(frame(&[]));
    s.extend(frame(&patient().encode_to_vec()));
    s
}

#[test]
fn every_split_point_gives_the_same_output() {
    let cfg = config();
    let stream = small_stream();
    let (whole, end) = run(cfg, GET_PATIENT, "nurse", Encoding::Identity, &[&stream]);
    end.unwrap();
    assert!(!contains(&whole, CANARY_SSN));
    let frames = unframe(&whole);
    assert_eq!(frames.len(), 3);
    assert_eq!(
        Patient::decode(&frames[0].1[..]).unwrap().ssn,
        "***-**-1234"
    );
    for split in 0..=stream.len() {
        let (out, end) = run(
            cfg,
            GET_PATIENT,
            "nurse",
            Encoding::Identity,
            &[&stream[..split], &stream[split..]],
        );
        end.unwrap();
        assert_eq!(out, whole, "split at {split}");
    }
}

#[test]
fn sixteen_kib_chunks_of_large_messages() {
    let cfg = config();
    let stream = encounter_stream();
    let (whole, end) = run(
        cfg,
        LIST_ENCOUNTERS,
        "research",
        Encoding::Identity,
        &[&stream],
    );
    end.unwrap();
    let chunks: Vec<&[u8]> = stream.chunks(16 * 1024).collect();
    let (out, end) = run(
        cfg,
        LIST_ENCOUNTERS,
        "research",
        Encoding::Identity,
        &chunks,
    );
    end.unwrap();
    assert_eq!(out, whole);
    for (_, payload) in unframe(&out) {
        let e = Encounter::decode(&payload[..]).unwrap();
        assert_eq!(e.note, "");
        assert!(e.mrn.starts_with("tok_"));
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn random_multi_splits_give_the_same_output(
        cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..12),
        role in prop::sample::select(vec!["billing", "nurse", "research", "intruder"]),
    ) {
        let cfg = config();
        let stream = encounter_stream();
        let (whole, end) = run(cfg, LIST_ENCOUNTERS, role, Encoding::Identity, &[&stream]);
        end.unwrap();
        let mut points: Vec<usize> = cuts.iter().map(|i| i.index(stream.len() + 1)).collect();
        points.sort_unstable();
        let mut chunks = Vec::new();
        let mut last = 0;
        for p in points {
            chunks.push(&stream[last..p]);
            last = p;
        }
        chunks.push(&stream[last..]);
        let (out, end) = run(cfg, LIST_ENCOUNTERS, role, Encoding::Identity, &chunks);
        end.unwrap();
        prop_assert_eq!(out, whole);
    }
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut enc = GzEncoder::new(Vec::new(), Compression::default());
    enc.write_all(bytes).unwrap();
    enc.finish().unwrap()
}

fn gunzip(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    GzDecoder::new(bytes).read_to_end(&mut out).unwrap();
    out
}

#[test]
fn gzip_messages_are_masked_and_recompressed() {
    let cfg = config();
    let plain = patient().encode_to_vec();
    let mut stream = frame_with_flag(1, &gzip(&plain));
    stream.extend(frame(&plain)); // gzip streams may mix uncompressed messages
    let (out, end) = run(cfg, GET_PATIENT, "nurse", Encoding::Gzip, &[&stream]);
    end.unwrap();
    let frames = unframe(&out);
    assert_eq!(frames[0].0, 1, "still compressed");
    let masked = gunzip(&frames[0].1);
    assert_eq!(masked, frames[1].1, "same masking as the plain message");
    assert_eq!(Patient::decode(&masked[..]).unwrap().ssn, "***-**-1234");
    assert!(!contains(&masked, CANARY_SSN));
}

#[test]
fn compressed_messages_need_gzip() {
    let cfg = config();
    let stream = frame_with_flag(1, &gzip(&patient().encode_to_vec()));
    for enc in [Encoding::Identity, Encoding::Unsupported] {
        let (out, end) = run(cfg, GET_PATIENT, "billing", enc, &[&stream]);
        assert_eq!(end, Err(MaskError::UnsupportedEncoding));
        assert!(out.is_empty());
    }
}

#[test]
fn gzip_bombs_and_garbage_are_refused() {
    let small = MaskConfig::parse(
        &{
            let mut doc: serde_json::Value = serde_json::from_slice(&demo_config_json()).unwrap();
            doc["max_message_bytes"] = 4096.into();
            serde_json::to_vec(&doc).unwrap()
        },
        &env,
    )
    .unwrap();
    // 1 MiB of zeros compresses to about 1 KiB: inside the frame limit, not once inflated.
    let bomb = gzip(&vec![0u8; 1 << 20]);
    assert!(bomb.len() < 4096);
    let (_, end) = run(
        &small,
        GET_PATIENT,
        "billing",
        Encoding::Gzip,
        &[&frame_with_flag(1, &bomb)],
    );
    assert_eq!(end, Err(MaskError::DecompressedTooLarge));
    let (_, end) = run(
        &small,
        GET_PATIENT,
        "billing",
        Encoding::Gzip,
        &[&frame_with_flag(1, b"junk")],
    );
    assert_eq!(end, Err(MaskError::Decompress));
}

/// Every malformed stream fails, and nothing emitted (before or at the failure) carries the
/// canaries in clear.
#[test]
fn malformed_streams_fail_without_leaking() {
    let cfg = config();
    let good = frame(&patient().encode_to_vec());
    let canary_payload = patient().encode_to_vec();

    let mut wrong_wire = canary_payload.clone();
    wrong_wire.extend_from_slice(&[4 << 3 | 5, 0, 0, 0, 0]); // ssn as fixed32
    let mut bad_len = canary_payload.clone();
    bad_len.extend_from_slice(&[6 << 3 | 2, 0x7f, 0x0a]); // contacts runs past the end
    let mut bad_varint = canary_payload.clone();
    bad_varint.extend_from_slice(&[0xff; 11]);

    let mut too_big = vec![0u8];
    too_big.extend_from_slice(&(cfg.max_message_bytes as u32 + 1).to_be_bytes());
    too_big.extend_from_slice(CANARY_SSN.as_bytes());

    let mut bad_flag = frame(&canary_payload);
    bad_flag[0] = 0x80;

    let truncated = frame(&canary_payload)[..40].to_vec();
    let mut wrong_length = frame(&canary_payload);
    wrong_length[4] -= 3; // shorter frame: the message is cut mid-record

    let cases: Vec<(&str, Vec<u8>, MaskError)> = vec![
        (
            "wrong wire type",
            frame(&wrong_wire),
            MaskError::WireType { field: 4 },
        ),
        ("bad length", frame(&bad_len), MaskError::Malformed),
        ("bad varint", frame(&bad_varint), MaskError::Malformed),
        ("oversized", too_big, MaskError::FrameTooLarge),
        ("bad flag", bad_flag, MaskError::BadFlag),
        ("truncated", truncated, MaskError::TruncatedFrame),
        ("wrong frame length", wrong_length, MaskError::Malformed),
    ];
    for (name, bad, want) in cases {
        let mut stream = good.clone();
        stream.extend_from_slice(&bad);
        if want != MaskError::TruncatedFrame {
            stream.extend_from_slice(&good);
        }
        // Whole, and in small chunks.
        for size in [stream.len(), 7, 1000] {
            let chunks: Vec<&[u8]> = stream.chunks(size).collect();
            let (emitted, end) = run(cfg, GET_PATIENT, "nurse", Encoding::Identity, &chunks);
            assert_eq!(end, Err(want), "{name} (chunks of {size})");
            for canary in [CANARY_SSN, CANARY_PHONE] {
                assert!(!contains(&emitted, canary), "{name}: {canary} leaked");
            }
        }
    }
}

#[test]
fn a_failed_masker_stays_failed() {
    let cfg = config();
    let mut m = masker(cfg, GET_PATIENT, Encoding::Identity);
    let (_, block) = cfg.policy.for_role(Some("nurse"));
    let rw = cfg.rewriter(block);
    assert!(m.feed(&rw, &frame_with_flag(3, b"")).is_err());
    assert!(m.feed(&rw, &frame(&patient().encode_to_vec())).is_err());
    assert!(m.finish().is_err());
}

/// Memory stays bounded by one message on a long stream fed in awkward chunks.
#[test]
fn buffer_never_exceeds_the_largest_message() {
    let cfg = config();
    let max = 80_000;
    let mut m = StreamMasker::new(
        cfg.plans.method(LIST_ENCOUNTERS).unwrap(),
        Encoding::Identity,
        max,
    );
    let (_, block) = cfg.policy.for_role(Some("nurse"));
    let rw = cfg.rewriter(block);
    let one = frame(&encounter(1, 70_000).encode_to_vec());
    assert!(one.len() <= max + 5);
    let mut stream = Vec::new();
    for _ in 0..40 {
        stream.extend_from_slice(&one);
        stream.extend(frame(&encounter(2, 100).encode_to_vec()));
    }
    let mut messages = 0;
    for chunk in stream.chunks(16_381) {
        let out = m.feed(&rw, chunk).unwrap();
        messages += unframe_partial(&out);
        assert!(m.framer().buffered() <= max + 5);
        assert!(
            m.framer().buffer_capacity() <= max + 5 + 64,
            "{}",
            m.framer().buffer_capacity()
        );
    }
    m.finish().unwrap();
    assert_eq!(messages, 80);
    assert_eq!(m.messages, 80);
}

fn unframe_partial(out: &[u8]) -> usize {
    unframe(out).len()
}
