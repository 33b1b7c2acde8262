//! The HTTP filter shell: admit or refuse at request headers (the fail-closed flag and the
//! queue), build the event at `on_log` and hold it in the VM's batch, which goes to the
//! service's queue as one item ([`crate::batch`]) when it holds `batch_max_events` events or
//! `batch_max_bytes`, on the root context's tick (every `batch_flush_ms`), when the
//! configuration is replaced ([`FilterRuntime::retire`]) and when the VM shuts down
//! (`on_done`). Generic over [`AuditHost`] so it runs against the fakes natively.
//!
//! What a batch can lose: its events live in the worker VM until they are queued. If the VM
//! goes away without `on_done` (Envoy crashes or is killed, the VM traps), the events of at
//! most one batch (`batch_max_events`, none older than `batch_flush_ms`) are lost with it,
//! as the service's backlog and Envoy's queue are lost in the same crash; the chain then
//! shows the service restarting (a new segment), not the lost tail. A batch the host
//! refuses to queue (the service VM is gone) is counted in `enqueue_failed`, event by event.

use std::cell::{Cell, RefCell};

use phi_guard_common::GrpcStatus;
use phi_guard_host::{Counter, LogLevel};

use crate::batch::{format_key, BatchWriter, EventMeta};
use crate::config::{backlog_flag_key, FilterConfig};
use crate::event::{build_event_at, EventOptions};
use crate::hostx::AuditHost;
use crate::time::UnixMillis;

pub const METRIC_ENQUEUED: &str = "phi_guard.audit.enqueued";
/// RPCs refused with UNAVAILABLE because the audit trail could not take their event.
pub const METRIC_REFUSED: &str = "phi_guard.audit.refused";
/// Events lost at `on_log` because the queue was gone or refused them.
pub const METRIC_ENQUEUE_FAILED: &str = "phi_guard.audit.enqueue_failed";
/// Queue items the filter put on the queue (one per batch).
pub const METRIC_BATCHES: &str = "phi_guard.audit.batches";

/// How events go on the queue, as the service said ([`crate::batch::format_key`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Wire {
    /// Batches of this version (1 or 2: the older of the service's and ours).
    Batched(u8),
    /// A service of the previous release: one bare event per queue item.
    Bare,
}

/// Per-root (per worker VM) state shared by every stream: config, counters, the resolved
/// queue id (resolved lazily because the service may be configured after the filter).
#[derive(Debug)]
pub struct FilterRuntime {
    pub config: FilterConfig,
    options: EventOptions,
    flag_key: String,
    format_key: String,
    queue_id: Cell<Option<u32>>,
    /// Learnt once the service's flag is seen (the service writes its format first).
    wire: Cell<Option<Wire>>,
    /// Events built and not yet queued.
    batch: RefCell<BatchWriter>,
    /// The event being serialised, reused by every stream of the VM.
    scratch: RefCell<Vec<u8>>,
    /// Set when a new configuration replaced this one: nothing ticks for it any more, so
    /// every event is queued at once.
    retired: Cell<bool>,
    /// Whether the last admission refused: refusals are logged on change, not per RPC,
    /// so a full backlog cannot flood Envoy's log.
    refusing: Cell<bool>,
    enqueued: Counter,
    refused: Counter,
    enqueue_failed: Counter,
    batches: Counter,
}

impl FilterRuntime {
    pub fn new<H: AuditHost>(host: &H, config: FilterConfig) -> Self {
        Self {
            options: EventOptions {
                claimed_resource_id_header: config.claimed_resource_id_header.clone(),
            },
            flag_key: backlog_flag_key(&config.queue),
            format_key: format_key(&config.queue),
            batch: RefCell::new(BatchWriter::new(
                config.batch_max_events,
                config.batch_max_bytes,
            )),
            scratch: RefCell::default(),
            config,
            queue_id: Cell::new(None),
            wire: Cell::new(None),
            retired: Cell::new(false),
            refusing: Cell::new(false),
            enqueued: Counter::define(host, METRIC_ENQUEUED),
            refused: Counter::define(host, METRIC_REFUSED),
            enqueue_failed: Counter::define(host, METRIC_ENQUEUE_FAILED),
            batches: Counter::define(host, METRIC_BATCHES),
        }
    }

    /// The root context's tick period for this configuration.
    pub fn tick_ms(&self) -> u64 {
        self.config.batch_flush_ms
    }

    /// Events held and not yet queued.
    pub fn buffered(&self) -> usize {
        self.batch.borrow().len()
    }

    /// The root context's tick, and `on_done`: queues what the VM holds. The service's batch
    /// format, once learnt, is read afresh here (one shared-data read per tick), so a service
    /// replaced by another release is written what it reads from the next tick on.
    pub fn on_tick<H: AuditHost>(&self, host: &H) {
        self.flush(host);
        if self.wire.get().is_some() {
            self.wire.set(Some(self.read_wire(host)));
        }
    }

    /// A new configuration replaces this one: queues what it holds, and from now on every
    /// event of a stream that still runs under it is queued at once.
    pub fn retire<H: AuditHost>(&self, host: &H) {
        self.retired.set(true);
        self.flush(host);
    }

    /// Which wire format the service reads; learnt (and kept) once the service's flag is
    /// present, since the service writes the format before the flag.
    fn wire<H: AuditHost>(&self, host: &H, flag_seen: bool) -> Wire {
        if let Some(wire) = self.wire.get() {
            return wire;
        }
        let wire = self.read_wire(host);
        if flag_seen {
            self.wire.set(Some(wire));
        }
        wire
    }

    /// The format the service publishes now.
    fn read_wire<H: AuditHost>(&self, host: &H) -> Wire {
        match host.shared_data(&self.format_key).as_deref() {
            Some([digit, ..]) if (b'1'..=b'9').contains(digit) => {
                Wire::Batched((digit - b'0').min(crate::batch::VERSION))
            }
            _ => Wire::Bare,
        }
    }

    /// Puts one item on the queue; after a refusal resolves the queue afresh (a restarted
    /// service registers it again) and tries once more.
    fn enqueue<H: AuditHost>(&self, host: &H, bytes: &[u8]) -> bool {
        if self.queue(host).is_some_and(|q| host.enqueue(q, bytes)) {
            return true;
        }
        self.queue_id.set(None);
        self.wire.set(None);
        self.queue(host).is_some_and(|q| host.enqueue(q, bytes))
    }

    /// Queues the batch, if it holds anything.
    fn flush<H: AuditHost>(&self, host: &H) {
        let Some((bytes, n)) = self.batch.borrow_mut().take() else {
            return;
        };
        self.sent(host, self.enqueue(host, &bytes), n);
    }

    /// Counts an item's events as enqueued or lost.
    fn sent<H: AuditHost>(&self, host: &H, ok: bool, events: usize) {
        let n = i64::try_from(events).unwrap_or(i64::MAX);
        if ok {
            self.enqueued.add(host, n);
            self.batches.inc(host);
        } else {
            self.queue_id.set(None);
            self.wire.set(None);
            self.enqueue_failed.add(host, n);
            host.log(
                LogLevel::Error,
                &format!("phi_guard audit: {events} event(s) could not be enqueued"),
            );
        }
    }

    /// One event at its stream's end: into the batch, which goes out when full.
    fn submit<H: AuditHost>(&self, host: &H, event: &[u8], meta: EventMeta) {
        let version = match self.wire(host, false) {
            Wire::Bare => {
                self.sent(host, self.enqueue(host, event), 1);
                return;
            }
            Wire::Batched(version) => version,
        };
        if self.batch.borrow().version() != version {
            // The service changed (a restart with another release): what is held goes in
            // its own version first.
            self.flush(host);
            self.batch.borrow_mut().set_version(version);
        }
        let pushed = self.batch.borrow_mut().push(event, meta);
        if !pushed {
            // It would overflow the batch: send what is held, then start a new one.
            self.flush(host);
            if !self.batch.borrow_mut().push(event, meta) {
                // Larger than any batch may be (MAX_BATCH_BYTES): counted, never sent.
                self.sent(host, false, 1);
                return;
            }
        }
        if self.retired.get() || self.batch.borrow().is_full() {
            self.flush(host);
        }
    }

    fn queue<H: AuditHost>(&self, host: &H) -> Option<u32> {
        if let Some(id) = self.queue_id.get() {
            return Some(id);
        }
        let id = host.resolve_queue(&self.config.service_vm_id, &self.config.queue);
        self.queue_id.set(id);
        id
    }

    /// Why a new RPC cannot be audited right now, if it cannot.
    fn refusal<H: AuditHost>(&self, host: &H) -> Option<&'static str> {
        if self.queue(host).is_none() {
            return Some("audit queue not registered");
        }
        // The service publishes "0" as soon as it is configured; no flag means no service.
        match host.shared_data(&self.flag_key).as_deref() {
            Some(b"0") => {
                self.wire(host, true);
                None
            }
            Some(_) => Some("audit backlog full"),
            None => Some("audit service flag missing"),
        }
    }
}

/// What the shell should do after request headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    Continue,
    /// A gRPC UNAVAILABLE was sent; stop the filter chain.
    Refused,
}

/// One stream's state.
#[derive(Debug, Default)]
pub struct AuditStream {
    started_ms: Option<UnixMillis>,
    refused: bool,
}

impl AuditStream {
    /// The stream's start as the module's first stage saw it (Unix milliseconds): the
    /// pipeline calls it before jwt, so a call an earlier stage refuses still has its
    /// duration. Without it the start is when this stage saw the request headers.
    pub fn note_start(&mut self, now_ms: UnixMillis) {
        self.started_ms.get_or_insert(now_ms);
    }

    pub fn on_request_headers<H: AuditHost>(&mut self, host: &H, rt: &FilterRuntime) -> Admission {
        if self.started_ms.is_none() {
            self.started_ms = Some(host.now_ms());
        }
        match rt.refusal(host) {
            None => {
                if rt.refusing.replace(false) {
                    host.log(LogLevel::Info, "phi_guard audit: admitting RPCs again");
                }
                Admission::Continue
            }
            Some(reason) => {
                self.refused = true;
                rt.refused.inc(host);
                if !rt.refusing.replace(true) {
                    host.log(
                        LogLevel::Warn,
                        &format!("phi_guard audit: refusing RPCs with UNAVAILABLE: {reason}"),
                    );
                }
                host.send_grpc_error(GrpcStatus::Unavailable, &[]);
                Admission::Refused
            }
        }
    }

    /// Stream end. A stream this filter refused leaves no event: its refusal is counted, and
    /// queueing events for RPCs refused because the queue is full would only grow it.
    pub fn on_log<H: AuditHost>(&mut self, host: &H, rt: &FilterRuntime) {
        if self.refused {
            return;
        }
        // Every RPC passes here: no per-RPC log line, not even at debug (formatting and the
        // host call cost more than the event's own lookups).
        let now_ms = host.now_ms();
        let event = build_event_at(host, &rt.options, self.started_ms, now_ms);
        let meta = EventMeta {
            time_ms: now_ms,
            ok: event.is_ok(),
        };
        let mut bytes = rt.scratch.borrow_mut();
        bytes.clear();
        event.write_canonical(&mut bytes);
        rt.submit(host, &bytes, meta);
    }
}
