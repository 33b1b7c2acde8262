//! Chain verification, shared by the `phi-guard-audit-verify` command and the tests.
//!
//! Input: records in the order they were collected, each tagged with where it came from.
//! Exact duplicates (a batch resent after its acknowledgement was lost) are skipped and
//! counted. A record whose seq is 0 with the genesis `prev` after other records starts a new
//! segment: the service restarted (its chain lives in memory). Everything else must continue
//! the chain: seq+1, `prev` equal to the previous record's link, and a valid HMAC.

use std::collections::{HashMap, HashSet};
use std::fmt;

use serde_json::Value;

use crate::chain::{ChainKey, ChainedRecord, Link, GENESIS};
use crate::otlp::{record_from_line, records_from_request};

/// Where a record was found, e.g. `audit.jsonl:17` or `batch-3.json:1#4`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Located {
    pub at: String,
    pub record: Result<ChainedRecord, String>,
}

#[derive(Debug, Clone, Default)]
pub struct VerifyOptions {
    /// Accept a first record that is not the genesis (the collector started late); it is
    /// still checked for a valid HMAC and anchors the rest.
    pub partial: bool,
    /// Fail unless exactly this many distinct events were verified (detects a cut tail,
    /// which no chain can show by itself).
    pub expect_count: Option<usize>,
    /// Refuse service restarts (a second genesis).
    pub single_segment: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    pub events: usize,
    pub duplicates: usize,
    pub segments: usize,
    /// Where each segment after the first started.
    pub restarts: Vec<String>,
    pub first_seq: Option<u64>,
    pub last_seq: Option<u64>,
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ok: {} events, chain intact", self.events)?;
        if self.segments > 1 {
            write!(
                f,
                " ({} segments, restarts at {})",
                self.segments,
                self.restarts.join(", ")
            )?;
        } else if let (Some(a), Some(b)) = (self.first_seq, self.last_seq) {
            write!(f, " (seq {a}..={b})")?;
        }
        if self.duplicates > 0 {
            write!(f, "; {} exact duplicates ignored", self.duplicates)?;
        }
        Ok(())
    }
}

/// The first problem found, precise enough to locate the record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    Empty,
    Malformed {
        at: String,
        reason: String,
    },
    /// The HMAC does not match: the event, seq or prev was edited, or the key is wrong.
    Altered {
        at: String,
        seq: u64,
    },
    /// The first record is not a genesis record and `partial` was not given.
    BadStart {
        at: String,
        seq: u64,
    },
    /// Records `from..=to` are absent between the previous record and this one.
    Missing {
        at: String,
        from: u64,
        to: u64,
        found: u64,
    },
    /// Seq `expected` is present, but later, at `later_at`; found `found` first.
    Reordered {
        at: String,
        expected: u64,
        found: u64,
        later_at: String,
    },
    /// Seq went backwards (and is not an exact duplicate).
    Backwards {
        at: String,
        seq: u64,
        after: u64,
    },
    /// Valid HMAC and the right seq, but `prev` is not the previous link: the record was
    /// spliced in from another chain.
    BrokenLink {
        at: String,
        seq: u64,
    },
    Restart {
        at: String,
    },
    Count {
        expected: usize,
        found: usize,
    },
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Empty => write!(f, "no events found"),
            Failure::Malformed { at, reason } => write!(f, "malformed record at {at}: {reason}"),
            Failure::Altered { at, seq } => write!(
                f,
                "altered record at {at} (seq {seq}): HMAC does not match its event, seq and prev (or wrong key)"
            ),
            Failure::BadStart { at, seq } => write!(
                f,
                "chain does not start at genesis: first record at {at} has seq {seq} (use --partial if collection started late)"
            ),
            Failure::Missing { at, from, to, found } => {
                if from == to {
                    write!(f, "missing event seq {from}: not found before {at} (seq {found})")
                } else {
                    write!(f, "missing events seq {from}..={to}: not found before {at} (seq {found})")
                }
            }
            Failure::Reordered {
                at,
                expected,
                found,
                later_at,
            } => write!(
                f,
                "reordered: seq {found} at {at} comes before seq {expected}, which is at {later_at}"
            ),
            Failure::Backwards { at, seq, after } => write!(
                f,
                "reordered or replayed: seq {seq} at {at} follows seq {after}"
            ),
            Failure::BrokenLink { at, seq } => write!(
                f,
                "broken link at {at} (seq {seq}): prev is not the link of seq {}",
                seq.saturating_sub(1)
            ),
            Failure::Restart { at } => write!(f, "chain restarts at {at} (--single-segment)"),
            Failure::Count { expected, found } if found < expected => write!(
                f,
                "expected {expected} events, found {found} (events missing at the end?)"
            ),
            Failure::Count { expected, found } => {
                write!(f, "expected {expected} events, found {found}")
            }
        }
    }
}

pub fn verify(
    records: &[Located],
    key: &ChainKey,
    opts: &VerifyOptions,
) -> Result<Report, Failure> {
    // Where each seq first appears, to tell "missing" from "moved later".
    let mut first_at: HashMap<u64, usize> = HashMap::new();
    for (i, loc) in records.iter().enumerate() {
        if let Ok(r) = &loc.record {
            first_at.entry(r.seq).or_insert(i);
        }
    }
    // Links already verified: an equal link with a valid HMAC is an identical record.
    let mut seen: HashSet<Link> = HashSet::new();
    let mut report = Report {
        events: 0,
        duplicates: 0,
        segments: 0,
        restarts: Vec::new(),
        first_seq: None,
        last_seq: None,
    };
    let mut last: Option<(u64, Link)> = None;
    for (i, loc) in records.iter().enumerate() {
        let r = loc.record.as_ref().map_err(|reason| Failure::Malformed {
            at: loc.at.clone(),
            reason: reason.clone(),
        })?;
        if !key.verify(&r.prev, r.seq, r.event.as_bytes(), &r.chain) {
            return Err(Failure::Altered {
                at: loc.at.clone(),
                seq: r.seq,
            });
        }
        let genesis = r.seq == 0 && r.prev == GENESIS;
        if seen.contains(&r.chain) {
            report.duplicates += 1;
            continue;
        }
        match last {
            None => {
                if !genesis && !opts.partial {
                    return Err(Failure::BadStart {
                        at: loc.at.clone(),
                        seq: r.seq,
                    });
                }
                report.segments = 1;
                report.first_seq = Some(r.seq);
            }
            Some(_) if genesis => {
                if opts.single_segment {
                    return Err(Failure::Restart { at: loc.at.clone() });
                }
                report.segments += 1;
                report.restarts.push(loc.at.clone());
            }
            Some((prev_seq, prev_link)) => {
                let expected = prev_seq.saturating_add(1);
                if r.seq > expected {
                    return Err(match first_at.get(&expected) {
                        Some(&j) if j > i => Failure::Reordered {
                            at: loc.at.clone(),
                            expected,
                            found: r.seq,
                            later_at: records[j].at.clone(),
                        },
                        _ => Failure::Missing {
                            at: loc.at.clone(),
                            from: expected,
                            to: r.seq - 1,
                            found: r.seq,
                        },
                    });
                }
                if r.seq < expected {
                    return Err(Failure::Backwards {
                        at: loc.at.clone(),
                        seq: r.seq,
                        after: prev_seq,
                    });
                }
                if r.prev != prev_link {
                    return Err(Failure::BrokenLink {
                        at: loc.at.clone(),
                        seq: r.seq,
                    });
                }
            }
        }
        seen.insert(r.chain);
        last = Some((r.seq, r.chain));
        report.events += 1;
        report.last_seq = Some(r.seq);
    }
    if report.events == 0 {
        return Err(Failure::Empty);
    }
    if let Some(expected) = opts.expect_count {
        if expected != report.events {
            return Err(Failure::Count {
                expected,
                found: report.events,
            });
        }
    }
    Ok(report)
}

/// Reads a file's text: JSON lines from the collector, OTLP request bodies one per line,
/// or a single (possibly pretty-printed) OTLP request body.
pub fn parse_input(name: &str, text: &str) -> Vec<Located> {
    let mut out = Vec::new();
    let mut line_failed = false;
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let at = format!("{name}:{}", n + 1);
        match serde_json::from_str::<Value>(line) {
            Ok(doc) => push_doc(&mut out, &at, &doc),
            Err(e) => {
                line_failed = true;
                out.push(Located {
                    at,
                    record: Err(format!("not JSON: {e}")),
                });
            }
        }
    }
    if line_failed {
        // A multi-line document: parse the whole file as one OTLP body.
        if let Ok(doc) = serde_json::from_str::<Value>(text) {
            out.clear();
            push_doc(&mut out, name, &doc);
        }
    }
    out
}

fn push_doc(out: &mut Vec<Located>, at: &str, doc: &Value) {
    if doc.get("resourceLogs").is_some() {
        match records_from_request(doc) {
            Ok(records) => out.extend(records.into_iter().enumerate().map(|(i, record)| Located {
                at: format!("{at}#{}", i + 1),
                record,
            })),
            Err(reason) => out.push(Located {
                at: at.to_string(),
                record: Err(reason),
            }),
        }
    } else {
        out.push(Located {
            at: at.to_string(),
            record: record_from_line(doc),
        });
    }
}

/// One break-glass decision, for post-access review (`phi-guard-audit-verify --break-glass`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BreakGlassAccess {
    pub seq: u64,
    pub event: crate::event::AuditEvent,
}

impl fmt::Display for BreakGlassAccess {
    /// One line: `seq time decision reason rule subject peer method resource claimed_resource
    /// status`, `-` for what the event does not have. Identifiers only: events carry no PHI.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let e = &self.event;
        let authz = e.outcome.authz.as_ref();
        let dash = |v: Option<&str>| v.unwrap_or("-").to_string();
        let method = match (&e.what.service, &e.what.method) {
            (Some(s), Some(m)) => format!("{s}/{m}"),
            _ => "-".into(),
        };
        write!(
            f,
            "seq={} time={} decision={} reason={} rule={} subject={} peer={} method={} resource={} claimed_resource={} grpc_status={}",
            self.seq,
            e.time,
            dash(authz.map(|a| a.decision.as_str())),
            dash(authz.and_then(|a| a.break_glass_reason.as_deref())),
            dash(authz.and_then(|a| a.rule.as_deref())),
            dash(e.who.subject.as_deref()),
            dash(e.who.peer.as_deref()),
            method,
            dash(e.what.resource_id.as_deref()),
            dash(e.what.claimed_resource_id.as_deref()),
            e.outcome
                .grpc_status
                .map_or_else(|| "-".to_string(), |s| s.to_string()),
        )
    }
}

/// The break-glass decisions (`outcome.authz.break_glass`, allowed or refused) among the
/// records, each once (a resent batch is not listed twice), in input order. Run it on records
/// [`verify`] accepted: the review list is only as good as the chain.
pub fn break_glass_accesses(records: &[Located]) -> Vec<BreakGlassAccess> {
    let mut seen: HashSet<Link> = HashSet::new();
    let mut out = Vec::new();
    for loc in records {
        let Ok(r) = &loc.record else { continue };
        if !seen.insert(r.chain) {
            continue;
        }
        let Ok(event) = serde_json::from_str::<crate::event::AuditEvent>(&r.event) else {
            continue;
        };
        if event.outcome.authz.as_ref().is_some_and(|a| a.break_glass) {
            out.push(BreakGlassAccess { seq: r.seq, event });
        }
    }
    out
}
