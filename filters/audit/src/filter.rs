//! The HTTP filter shell: admit or refuse at request headers (the fail-closed flag and the
//! queue), build and enqueue the event at `on_log`. Generic over [`AuditHost`] so it runs
//! against the fakes natively.

use std::cell::Cell;

use phi_guard_common::GrpcStatus;
use phi_guard_host::{Counter, LogLevel};

use crate::config::{backlog_flag_key, FilterConfig};
use crate::event::{build_event, EventOptions};
use crate::hostx::AuditHost;
use crate::time::UnixMillis;

pub const METRIC_ENQUEUED: &str = "phi_guard.audit.enqueued";
/// RPCs refused with UNAVAILABLE because the audit trail could not take their event.
pub const METRIC_REFUSED: &str = "phi_guard.audit.refused";
/// Events lost at `on_log` because the queue was gone or refused them.
pub const METRIC_ENQUEUE_FAILED: &str = "phi_guard.audit.enqueue_failed";

/// Per-root (per worker VM) state shared by every stream: config, counters, the resolved
/// queue id (resolved lazily because the service may be configured after the filter).
#[derive(Debug)]
pub struct FilterRuntime {
    pub config: FilterConfig,
    options: EventOptions,
    flag_key: String,
    queue_id: Cell<Option<u32>>,
    /// Whether the last admission refused: refusals are logged on change, not per RPC,
    /// so a full backlog cannot flood Envoy's log.
    refusing: Cell<bool>,
    enqueued: Counter,
    refused: Counter,
    enqueue_failed: Counter,
}

impl FilterRuntime {
    pub fn new<H: AuditHost>(host: &H, config: FilterConfig) -> Self {
        Self {
            options: EventOptions {
                claimed_resource_id_header: config.claimed_resource_id_header.clone(),
            },
            flag_key: backlog_flag_key(&config.queue),
            config,
            queue_id: Cell::new(None),
            refusing: Cell::new(false),
            enqueued: Counter::define(host, METRIC_ENQUEUED),
            refused: Counter::define(host, METRIC_REFUSED),
            enqueue_failed: Counter::define(host, METRIC_ENQUEUE_FAILED),
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
            Some(b"0") => None,
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
    pub fn on_request_headers<H: AuditHost>(&mut self, host: &H, rt: &FilterRuntime) -> Admission {
        self.started_ms = Some(host.now_ms());
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
        let event = build_event(host, &rt.options, self.started_ms);
        let bytes = event.canonical_bytes();
        let ok = rt.queue(host).is_some_and(|q| host.enqueue(q, &bytes));
        if ok {
            rt.enqueued.inc(host);
        } else {
            // The queue may have been re-registered by a restarted service: resolve afresh.
            rt.queue_id.set(None);
            rt.enqueue_failed.inc(host);
            host.log(
                LogLevel::Error,
                "phi_guard audit: event could not be enqueued",
            );
        }
    }
}
