//! The audit service's delivery state machine, free of host calls: events in, chained
//! records held in a bounded backlog, batches out, call outcomes back. Time is an argument.
//!
//! States of the head of the backlog:
//! - idle: nothing sent; a batch forms when `max_batch_events` are waiting or the oldest has
//!   waited `max_batch_delay_ms`;
//! - in flight: the first `n` records were POSTed, awaiting the response (or the deadline);
//! - retained: the call failed; the same `n` records are resent, in order and unchanged, at
//!   `retry_at` (exponential backoff). The chain is never recomputed.

use std::collections::VecDeque;

use serde::Deserialize;

use crate::chain::{ChainKey, ChainedRecord, Chainer};
use crate::otlp::{encode_logs, LogEntry, OtlpMeta, Severity};
use crate::time::{parse_iso8601_ms, UnixMillis};

/// What to do when the backlog holds `max_backlog_events`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum BacklogPolicy {
    /// Stop taking events off the shared queue and raise the flag that makes the filter
    /// refuse new RPCs with UNAVAILABLE until the backlog drains to half. No event is lost.
    #[default]
    FailClosed,
    /// Keep serving; discard the oldest record not yet sent. The verifier reports the gap.
    DropOldest,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveryConfig {
    pub max_batch_events: usize,
    pub max_batch_delay_ms: u64,
    pub max_backlog_events: usize,
    pub policy: BacklogPolicy,
    pub initial_backoff_ms: u64,
    pub max_backoff_ms: u64,
    /// After this long without a response an in-flight batch counts as failed.
    pub request_timeout_ms: u64,
    /// Larger queue items are refused (counted as dropped).
    pub max_event_bytes: usize,
}

impl Default for DeliveryConfig {
    fn default() -> Self {
        Self {
            max_batch_events: 100,
            max_batch_delay_ms: 1_000,
            max_backlog_events: 10_000,
            policy: BacklogPolicy::FailClosed,
            initial_backoff_ms: 500,
            max_backoff_ms: 30_000,
            request_timeout_ms: 5_000,
            max_event_bytes: 16 * 1024,
        }
    }
}

/// A batch to POST. Resending after a failure yields the same records and chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchToSend {
    /// Matches the response to this batch; a late answer to an abandoned call is ignored.
    pub id: u64,
    pub first_seq: u64,
    pub count: usize,
    /// 0 for the first send, then 1, 2, ... for retries.
    pub attempt: u32,
    /// OTLP/HTTP body, in the service's `encoding`.
    pub body: Vec<u8>,
}

/// How a POST ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallOutcome {
    /// HTTP status of the collector's answer.
    Status(u32),
    /// A 2xx whose `ExportLogsServiceResponse.partial_success` says the collector rejected
    /// `rejected` of the batch's records (OTLP specification, *Partial Success*). The batch
    /// is done: the specification forbids resending it, so the rejected records are counted
    /// ([`Stats::rejected`]), not retried.
    PartialSuccess { rejected: u64 },
    /// No answer: connection failure, reset, timeout, or the host refused the call.
    Failed,
}

impl CallOutcome {
    /// The batch is done (a 2xx, partial success included).
    pub fn is_success(self) -> bool {
        matches!(
            self,
            CallOutcome::Status(200..=299) | CallOutcome::PartialSuccess { .. }
        )
    }
}

/// Why an event was not taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejected {
    TooLarge,
    NotJson,
    /// fail_closed with a full backlog: the shell checks [`Delivery::has_room`] first, so
    /// this only happens if it did not.
    BacklogFull,
    /// A queue item that is neither a well-formed batch nor a bare event.
    Malformed,
}

/// An event that passed the service's checks, ready to chain.
struct Checked {
    text: String,
    time_ms: UnixMillis,
    severity: Severity,
}

/// An event of a version-2 batch, whose time and severity the worker sent beside it: not
/// parsed; `None` when it is not UTF-8 or not braced like a JSON object (a framing that
/// points into the wrong bytes), which refuses its batch as a non-JSON event does.
fn take_event(bytes: &[u8], meta: crate::batch::EventMeta) -> Option<Checked> {
    if bytes.first() != Some(&b'{') || bytes.last() != Some(&b'}') {
        return None;
    }
    let text = std::str::from_utf8(bytes).ok()?.to_string();
    Some(Checked {
        text,
        time_ms: meta.time_ms,
        severity: Severity::of(meta.ok),
    })
}

/// Reads the record's time and severity from an event; `None` when it is not JSON.
fn check_event(bytes: &[u8], now_ms: UnixMillis) -> Option<Checked> {
    let env = serde_json::from_slice::<Envelope>(bytes).ok()?;
    let time_ms = env
        .time
        .as_deref()
        .and_then(parse_iso8601_ms)
        .unwrap_or(now_ms);
    let severity = Severity::of(env.outcome.and_then(|o| o.grpc_status) == Some(0));
    // Valid JSON is valid UTF-8.
    let text = String::from_utf8(bytes.to_vec()).ok()?;
    Some(Checked {
        text,
        time_ms,
        severity,
    })
}

/// Running totals; the shell turns differences into counter increments.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Events chained into the backlog.
    pub accepted: u64,
    /// Records the collector acknowledged and kept.
    pub shipped: u64,
    /// Records the collector acknowledged but said it rejected (OTLP partial success): lost
    /// to the collector, not resent; the verifier sees the gap in the chain.
    pub rejected: u64,
    /// Resends of a failed batch.
    pub retried: u64,
    /// Events lost: refused queue items and records discarded by drop_oldest.
    pub dropped: u64,
    /// Times the backlog was found full (an event arrived to a full backlog, or fail_closed
    /// raised its flag).
    pub backlog_full: u64,
    /// Queue items refused whole: malformed batches, or batches holding an event that is not
    /// JSON ([`Delivery::on_item`]).
    pub refused_items: u64,
}

#[derive(Debug)]
struct Pending {
    record: ChainedRecord,
    severity: Severity,
    arrived_ms: UnixMillis,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Head {
    Idle,
    InFlight {
        id: u64,
        count: usize,
        deadline_ms: UnixMillis,
    },
    Retained {
        count: usize,
        retry_at_ms: UnixMillis,
    },
}

/// The fields of an event the service reads, for the record's time and severity.
#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(borrow)]
    time: Option<std::borrow::Cow<'a, str>>,
    outcome: Option<EnvelopeOutcome>,
}

#[derive(Deserialize)]
struct EnvelopeOutcome {
    grpc_status: Option<u32>,
}

#[derive(Debug)]
pub struct Delivery {
    cfg: DeliveryConfig,
    meta: OtlpMeta,
    chainer: Chainer,
    backlog: VecDeque<Pending>,
    head: Head,
    /// Consecutive failures of the head batch.
    attempt: u32,
    next_batch_id: u64,
    blocked: bool,
    stats: Stats,
}

impl Delivery {
    pub fn new(cfg: DeliveryConfig, key: ChainKey, meta: OtlpMeta) -> Self {
        Self {
            cfg,
            meta,
            chainer: Chainer::new(key),
            backlog: VecDeque::new(),
            head: Head::Idle,
            attempt: 0,
            next_batch_id: 1,
            blocked: false,
            stats: Stats::default(),
        }
    }

    /// A re-configure keeps the chain, the backlog and any retained batch; only limits and
    /// the resource description change.
    pub fn reconfigure(&mut self, cfg: DeliveryConfig, meta: OtlpMeta) {
        self.cfg = cfg;
        self.meta = meta;
        self.update_flag();
    }

    pub fn stats(&self) -> Stats {
        self.stats
    }

    pub fn backlog_len(&self) -> usize {
        self.backlog.len()
    }

    pub fn next_seq(&self) -> u64 {
        self.chainer.next_seq()
    }

    /// The fail-closed flag the filter reads: true while new RPCs must be refused.
    pub fn blocked(&self) -> bool {
        self.blocked
    }

    /// Whether the shell may take another event off the shared queue. Under fail_closed a
    /// full backlog leaves events in Envoy's queue rather than losing them.
    pub fn has_room(&self) -> bool {
        match self.cfg.policy {
            BacklogPolicy::FailClosed => self.backlog.len() < self.cfg.max_backlog_events,
            BacklogPolicy::DropOldest => true,
        }
    }

    /// Records at the head that belong to a sent or retained batch: never dropped.
    fn protected(&self) -> usize {
        match self.head {
            Head::Idle => 0,
            Head::InFlight { count, .. } | Head::Retained { count, .. } => count,
        }
    }

    /// Chains one event (the filter's canonical bytes) and appends it to the backlog.
    pub fn on_event(&mut self, bytes: Vec<u8>, now_ms: UnixMillis) -> Result<(), Rejected> {
        if bytes.len() > self.cfg.max_event_bytes {
            self.stats.dropped += 1;
            return Err(Rejected::TooLarge);
        }
        let Some(checked) = check_event(&bytes, now_ms) else {
            self.stats.dropped += 1;
            return Err(Rejected::NotJson);
        };
        if self.backlog.len() >= self.cfg.max_backlog_events
            && self.cfg.policy == BacklogPolicy::FailClosed
        {
            self.stats.backlog_full += 1;
            self.stats.dropped += 1;
            self.update_flag();
            return Err(Rejected::BacklogFull);
        }
        self.accept(checked, now_ms);
        self.update_flag();
        Ok(())
    }

    /// One shared-queue item: a batch of events or a bare event ([`crate::batch`]). The item
    /// is taken whole or not at all: a malformed item, or one holding an event that is not
    /// JSON (a version-2 event, whose time and severity come beside it, is not parsed: it
    /// must be UTF-8 between `{` and `}`), is refused and counted in `refused_items` (and its events, when the framing
    /// gave their number, in `dropped`). An event above `max_event_bytes` is dropped alone,
    /// as a bare event always was. Under fail_closed the shell checks [`Delivery::has_room`]
    /// before taking an item, and the whole batch is then taken even if it overshoots the
    /// bound (by less than one batch): its events are never lost. Returns the events chained.
    pub fn on_item(&mut self, item: &[u8], now_ms: UnixMillis) -> Result<usize, Rejected> {
        let events = match crate::batch::decode(item) {
            Ok(events) => events,
            Err(_) => {
                self.stats.refused_items += 1;
                return Err(Rejected::Malformed);
            }
        };
        let mut checked = Vec::with_capacity(events.len());
        let mut oversized = 0u64;
        for item in &events {
            if item.event.len() > self.cfg.max_event_bytes {
                oversized += 1;
                continue;
            }
            let event = match item.meta {
                Some(meta) => take_event(item.event, meta),
                None => check_event(item.event, now_ms),
            };
            match event {
                Some(c) => checked.push(c),
                None => {
                    self.stats.refused_items += 1;
                    self.stats.dropped += events.len() as u64;
                    return Err(Rejected::NotJson);
                }
            }
        }
        if self.cfg.policy == BacklogPolicy::FailClosed && !self.has_room() {
            self.stats.backlog_full += 1;
            self.stats.dropped += events.len() as u64;
            self.update_flag();
            return Err(Rejected::BacklogFull);
        }
        self.stats.dropped += oversized;
        let n = checked.len();
        for c in checked {
            self.accept(c, now_ms);
        }
        self.update_flag();
        if oversized > 0 && n == 0 {
            return Err(Rejected::TooLarge);
        }
        Ok(n)
    }

    /// Appends a checked event; under drop_oldest a full backlog first loses its oldest
    /// record not on the wire.
    fn accept(&mut self, event: Checked, now_ms: UnixMillis) {
        if self.backlog.len() >= self.cfg.max_backlog_events
            && self.cfg.policy == BacklogPolicy::DropOldest
        {
            self.stats.backlog_full += 1;
            let victim = self.protected();
            if victim < self.backlog.len() {
                self.backlog.remove(victim);
                self.stats.dropped += 1;
            }
        }
        let record = self.chainer.append(event.text, event.time_ms);
        self.backlog.push_back(Pending {
            record,
            severity: event.severity,
            arrived_ms: now_ms,
        });
        self.stats.accepted += 1;
    }

    fn backoff_ms(&self) -> u64 {
        let shift = self.attempt.saturating_sub(1).min(32);
        self.cfg
            .initial_backoff_ms
            .saturating_mul(1u64 << shift)
            .min(self.cfg.max_backoff_ms)
    }

    fn fail_head(&mut self, count: usize, now_ms: UnixMillis) {
        self.attempt = self.attempt.saturating_add(1);
        self.head = Head::Retained {
            count,
            retry_at_ms: now_ms.saturating_add(self.backoff_ms()),
        };
    }

    /// Called on every tick and after events arrive: the batch to POST now, if any. Also
    /// expires an in-flight call whose response never came.
    pub fn poll(&mut self, now_ms: UnixMillis) -> Option<BatchToSend> {
        let count = match self.head {
            Head::InFlight {
                count, deadline_ms, ..
            } => {
                if now_ms >= deadline_ms {
                    self.fail_head(count, now_ms);
                }
                return None;
            }
            Head::Retained { count, retry_at_ms } => {
                if now_ms < retry_at_ms {
                    return None;
                }
                self.stats.retried += 1;
                count
            }
            Head::Idle => {
                let oldest = self.backlog.front()?.arrived_ms;
                let full = self.backlog.len() >= self.cfg.max_batch_events;
                let due = now_ms.saturating_sub(oldest) >= self.cfg.max_batch_delay_ms;
                if !full && !due {
                    return None;
                }
                self.backlog.len().min(self.cfg.max_batch_events)
            }
        };
        let id = self.next_batch_id;
        self.next_batch_id += 1;
        self.head = Head::InFlight {
            id,
            count,
            deadline_ms: now_ms.saturating_add(self.cfg.request_timeout_ms),
        };
        let records: Vec<LogEntry<'_>> = self
            .backlog
            .iter()
            .take(count)
            .map(|p| LogEntry {
                record: &p.record,
                severity: p.severity,
                observed_ms: p.arrived_ms,
            })
            .collect();
        let first_seq = records.first().map(|e| e.record.seq).unwrap_or_default();
        let body = encode_logs(&records, &self.meta);
        Some(BatchToSend {
            id,
            first_seq,
            count,
            attempt: self.attempt,
            body,
        })
    }

    /// The answer to batch `id`. 2xx acknowledges it; anything else (429, 5xx, other 4xx,
    /// no answer) retains it for a resend: dropping on a 4xx would silently lose audit
    /// records to a misconfiguration, which fail_closed makes visible instead.
    pub fn on_response(&mut self, id: u64, outcome: CallOutcome, now_ms: UnixMillis) {
        let Head::InFlight {
            id: current, count, ..
        } = self.head
        else {
            return;
        };
        if current != id {
            return;
        }
        if outcome.is_success() {
            self.backlog.drain(..count.min(self.backlog.len()));
            let rejected = match outcome {
                CallOutcome::PartialSuccess { rejected } => rejected.min(count as u64),
                _ => 0,
            };
            self.stats.shipped += count as u64 - rejected;
            self.stats.rejected += rejected;
            self.attempt = 0;
            self.head = Head::Idle;
            self.update_flag();
        } else {
            self.fail_head(count, now_ms);
        }
    }

    /// When the next send may happen, for a shell that wants to schedule precisely.
    pub fn retry_at(&self) -> Option<UnixMillis> {
        match self.head {
            Head::Retained { retry_at_ms, .. } => Some(retry_at_ms),
            _ => None,
        }
    }

    /// fail_closed raises the flag at a full backlog and lowers it at half, so RPCs are not
    /// admitted and refused on alternate events while a recovering collector drains it.
    fn update_flag(&mut self) {
        if self.cfg.policy == BacklogPolicy::DropOldest {
            self.blocked = false;
            return;
        }
        let len = self.backlog.len();
        if !self.blocked && len >= self.cfg.max_backlog_events {
            self.blocked = true;
            self.stats.backlog_full += 1;
        } else if self.blocked && len <= self.cfg.max_backlog_events / 2 {
            self.blocked = false;
        }
    }
}
