//! The per-stream shell: reads the role and method, drives the [`StreamMasker`] from the body
//! callbacks and turns a masking failure into gRPC INTERNAL without leaking a byte.
//!
//! Written against [`Host`] (headers, properties, metrics, logs) and [`BodyHost`] (the body
//! buffer and trailers, which `Host` does not cover) so it runs natively with fakes.
//!
//! Failure handling, by when the error shows up:
//! - response headers (a masked method answered with a non-gRPC content-type): nothing has
//!   gone downstream yet, so the response is replaced with a trailers-only INTERNAL
//!   (`send_grpc_error`);
//! - a body chunk: the response headers are already on their way, so a local reply is no
//!   longer possible. The chunk is replaced with nothing, every later chunk too, and the
//!   trailers callback overwrites `grpc-status` with 13 and `grpc-message` with
//!   `internal error`: the client sees the messages masked before the failure, then INTERNAL;
//! - a body chunk with `end_of_stream` (no trailers will come, so there is no status to
//!   rewrite): the chunk is dropped and the response stream reset, which gRPC clients report
//!   as an error too.

use std::rc::Rc;

use phi_guard_common::{AuthzDecision, GrpcStatus, MaskSummary, ResourceId};
use phi_guard_host::{read_state, write_state, Flow, Host, LogLevel};

use crate::config::MaskConfig;
use crate::error::MaskError;
use crate::framing::{Encoding, StreamMasker};
use crate::policy::ActionKind;
use crate::resource::{Read, RequestReader};

/// What the shell needs beyond [`Host`]: the request and response body buffers of the current
/// callback, the response trailers, and a stream reset (`filters/host`'s capability trait).
pub use phi_guard_host::BodyHost;

/// A counter that can be bumped by more than one. (`phi_guard_host::Counter` only has `inc`;
/// field counts come in batches per message.)
#[derive(Debug, Default, Clone, Copy)]
pub struct Metric(Option<u32>);

impl Metric {
    pub fn define(host: &dyn Host, name: &str) -> Self {
        Metric(host.define_counter(name))
    }

    pub fn add(&self, host: &dyn Host, by: u64) {
        if let (Some(id), true) = (self.0, by > 0) {
            host.increment_counter(id, i64::try_from(by).unwrap_or(i64::MAX));
        }
    }
}

/// `phi_guard.mask.messages`, `phi_guard.mask.fields_<action>`, `phi_guard.mask.failures`,
/// `phi_guard.mask.unknown_fields_dropped`, `phi_guard.mask.unknown_any_dropped`,
/// `phi_guard.mask.refused_no_plan`, `phi_guard.mask.pass_through`.
#[derive(Debug, Default, Clone)]
pub struct Metrics {
    pub messages: Metric,
    pub fields: [Metric; ActionKind::ALL.len()],
    pub failures: Metric,
    pub unknown_fields: Metric,
    pub unknown_any: Metric,
    pub refused: Metric,
    pub pass_through: Metric,
}

impl Metrics {
    pub fn define(host: &dyn Host) -> Self {
        Metrics {
            messages: Metric::define(host, "phi_guard.mask.messages"),
            fields: ActionKind::ALL
                .map(|k| Metric::define(host, &format!("phi_guard.mask.fields_{}", k.name()))),
            failures: Metric::define(host, "phi_guard.mask.failures"),
            unknown_fields: Metric::define(host, "phi_guard.mask.unknown_fields_dropped"),
            unknown_any: Metric::define(host, "phi_guard.mask.unknown_any_dropped"),
            refused: Metric::define(host, "phi_guard.mask.refused_no_plan"),
            pass_through: Metric::define(host, "phi_guard.mask.pass_through"),
        }
    }
}

/// Counts already added to the metrics: per action, messages, unknown fields, unknown Anys.
#[derive(Debug, Default, Clone, Copy)]
struct Reported {
    fields: [u64; ActionKind::ALL.len()],
    messages: u64,
    unknown_fields: u64,
    unknown_any: u64,
}

#[derive(Debug)]
enum Mode {
    /// Before the response headers, or a method/response this filter leaves alone.
    Idle,
    /// Masking (or failed, when `failure` is set: then every further body byte is dropped;
    /// the masker stays for the summary's counts).
    Masking(Box<StreamMasker>),
}

/// One HTTP stream.
pub struct MaskStream {
    config: Rc<MaskConfig>,
    metrics: Rc<Metrics>,
    /// Root plan of the request's method, when the descriptor set describes it.
    root: Option<usize>,
    /// The method is on the pass-through list (not in the set): responses go through as is.
    pass_through: bool,
    method: String,
    /// The caller's role as rbac wrote it, read once at response headers.
    role: Option<String>,
    /// Reads the resource id from the first request message, until it has.
    request: Option<RequestReader>,
    mode: Mode,
    failure: Option<MaskError>,
    /// Counts already added to the metrics.
    reported: Reported,
    summary_written: bool,
}

impl MaskStream {
    pub fn new(config: Rc<MaskConfig>, metrics: Rc<Metrics>) -> Self {
        MaskStream {
            config,
            metrics,
            root: None,
            pass_through: false,
            method: String::new(),
            role: None,
            request: None,
            mode: Mode::Idle,
            failure: None,
            reported: Reported::default(),
            summary_written: false,
        }
    }

    /// Fail closed: a call whose method the descriptor set does not describe (or that is not
    /// gRPC at all) is refused here, before it reaches the service, unless the method is on
    /// the pass-through list. Nothing of a response the filter cannot mask is ever sent.
    pub fn on_request_headers(&mut self, host: &dyn Host) -> Flow {
        let Some(m) = host.grpc_method() else {
            self.refuse(host, MaskError::NotGrpc);
            return Flow::Pause;
        };
        self.method = m.full_name();
        self.root = self.config.plans.method(&self.method);
        if self.root.is_none() {
            if self.config.passes_through(&self.method) {
                self.pass_through = true;
                self.metrics.pass_through.add(host, 1);
                return Flow::Continue;
            }
            self.refuse(host, MaskError::NoPlan);
            return Flow::Pause;
        }
        if let Some(field) = self.config.resource_ids.for_method(&self.method) {
            let encoding = Encoding::from_header(host.request_header("grpc-encoding").as_deref());
            self.request = Some(RequestReader::new(
                field.clone(),
                encoding,
                self.config.max_message_bytes,
            ));
        }
        Flow::Continue
    }

    /// Copies request body chunks through the [`RequestReader`] until the first message is
    /// read, then writes its resource id to filter state `phi_guard.resource` for the audit
    /// event. The request is never held or changed, and never refused here: a first message
    /// that cannot be read just leaves no id.
    pub fn on_request_body(
        &mut self,
        host: &dyn Host,
        body: &dyn BodyHost,
        body_size: usize,
    ) -> Flow {
        let Some(reader) = &mut self.request else {
            return Flow::Continue;
        };
        if body_size == 0 {
            return Flow::Continue;
        }
        let read = match body.request_body(0, body_size) {
            Some(chunk) => reader.feed(&chunk),
            None => Read::Done(None),
        };
        if let Read::Done(id) = read {
            self.request = None;
            match id {
                Some(id) => write_state(host, &ResourceId(id)),
                // The method only: never a byte of the message.
                None => host.log(
                    LogLevel::Debug,
                    &format!(
                        "phi-guard mask: no resource id recorded for {} (field absent or refused, or the first message unreadable)",
                        self.method
                    ),
                ),
            }
        }
        Flow::Continue
    }

    fn refuse(&mut self, host: &dyn Host, err: MaskError) {
        self.role = Self::read_role(host);
        self.metrics.refused.add(host, 1);
        self.fail(host, err);
        self.write_summary(host);
        host.send_grpc_error(GrpcStatus::Internal, &[]);
    }

    /// The caller's effective role from rbac's decision; `None` (the default block) when the
    /// state is missing or unreadable, or when rbac did not allow the call (a response to a
    /// denied call should not exist; if one does, it gets the strictest treatment).
    fn read_role(host: &dyn Host) -> Option<String> {
        read_state::<AuthzDecision, _>(host)
            .ok()
            .flatten()
            .and_then(AuthzDecision::allowed_role)
    }

    pub fn on_response_headers(&mut self, host: &dyn Host, end_of_stream: bool) -> Flow {
        // Pass-through, a call refused at its request (this is the local reply), or a reply
        // an earlier filter sent before this one saw the request.
        let (Some(root), None) = (self.root, self.failure) else {
            return Flow::Continue;
        };
        self.role = Self::read_role(host);
        let grpc = host
            .response_header("content-type")
            .is_some_and(|ct| ct.to_ascii_lowercase().starts_with("application/grpc"));
        if !grpc {
            // Nothing has been sent downstream yet: answer INTERNAL instead of a body we
            // cannot parse (and so cannot mask).
            self.fail(host, MaskError::NotGrpc);
            self.write_summary(host);
            host.send_grpc_error(GrpcStatus::Internal, &[]);
            return Flow::Pause;
        }
        // Masking changes the body length.
        host.remove_response_header("content-length");
        let encoding = Encoding::from_header(host.response_header("grpc-encoding").as_deref());
        self.mode = Mode::Masking(Box::new(StreamMasker::new(
            root,
            encoding,
            self.config.max_message_bytes,
        )));
        if end_of_stream {
            // Trailers-only response: no message to mask.
            self.write_summary(host);
        }
        Flow::Continue
    }

    pub fn on_response_body(
        &mut self,
        host: &dyn Host,
        body: &dyn BodyHost,
        body_size: usize,
        end_of_stream: bool,
    ) -> Flow {
        if self.failure.is_some() {
            // Failed earlier: nothing more of this response reaches the client.
            if body_size > 0 {
                body.set_response_body(0, body_size, &[]);
            }
        } else if let Mode::Masking(masker) = &mut self.mode {
            let chunk = if body_size == 0 {
                Some(Vec::new())
            } else {
                body.response_body(0, body_size)
            };
            let config = Rc::clone(&self.config);
            let (_, block) = config.policy.for_role(self.role.as_deref());
            let rw = config.rewriter_at(block, i64::try_from(host.now()).unwrap_or(i64::MAX));
            let result = match chunk {
                // The host announced a body and then gave none: nothing to vouch for.
                None => Err(MaskError::Malformed),
                Some(chunk) => masker.feed(&rw, &chunk).map(|out| (chunk, out)),
            }
            .and_then(|r| {
                if end_of_stream {
                    masker.finish()?;
                }
                Ok(r)
            });
            match result {
                Ok((chunk, out)) => {
                    if out != chunk {
                        body.set_response_body(0, body_size, &out);
                    }
                    self.report(host);
                }
                Err(err) => {
                    if body_size > 0 {
                        body.set_response_body(0, body_size, &[]);
                    }
                    self.fail(host, err);
                }
            }
        } else {
            return Flow::Continue;
        }
        if end_of_stream {
            if self.failure.is_some() {
                // No trailers will follow to carry grpc-status 13.
                body.reset_response();
            }
            self.write_summary(host);
        }
        Flow::Continue
    }

    pub fn on_response_trailers(&mut self, host: &dyn Host, body: &dyn BodyHost) -> Flow {
        if let (Mode::Masking(masker), None) = (&mut self.mode, self.failure) {
            if let Err(err) = masker.finish() {
                self.fail(host, err);
            }
        }
        if self.failure.is_some() {
            // Overwrites whatever status upstream sent: the body was cut, so it was not OK.
            let status = GrpcStatus::Internal;
            body.set_response_trailer("grpc-status", &status.code().to_string());
            body.set_response_trailer("grpc-message", status.generic_message());
        }
        self.write_summary(host);
        Flow::Continue
    }

    /// Last chance to leave a summary, for streams that ended without trailers or were reset.
    pub fn on_log(&mut self, host: &dyn Host) {
        if let (Mode::Masking(masker), None) = (&self.mode, self.failure) {
            if masker.framer().buffered() > 0 {
                self.fail(host, MaskError::TruncatedFrame);
            }
        }
        self.write_summary(host);
    }

    fn fail(&mut self, host: &dyn Host, err: MaskError) {
        if self.failure.is_some() {
            return;
        }
        self.report(host);
        self.failure = Some(err);
        self.metrics.failures.add(host, 1);
        // The error code and method only: never a byte of the message.
        host.log(
            LogLevel::Warn,
            &format!(
                "phi-guard mask: masking the response of {} failed ({err}); ending the RPC with INTERNAL",
                self.method
            ),
        );
    }

    /// Adds what was masked since the last report to the metrics.
    fn report(&mut self, host: &dyn Host) {
        let Mode::Masking(masker) = &self.mode else {
            return;
        };
        let r = &mut self.reported;
        let messages = masker.messages;
        self.metrics
            .messages
            .add(host, messages.saturating_sub(r.messages));
        r.messages = messages;
        for (i, kind) in ActionKind::ALL.into_iter().enumerate() {
            let n = masker.counts.per_action(kind);
            self.metrics.fields[i].add(host, n.saturating_sub(r.fields[i]));
            r.fields[i] = n;
        }
        let (u, a) = (masker.counts.unknown_fields, masker.counts.unknown_any);
        self.metrics
            .unknown_fields
            .add(host, u.saturating_sub(r.unknown_fields));
        self.metrics
            .unknown_any
            .add(host, a.saturating_sub(r.unknown_any));
        r.unknown_fields = u;
        r.unknown_any = a;
    }

    /// Writes the [`MaskSummary`] to filter state once, for the audit event.
    fn write_summary(&mut self, host: &dyn Host) {
        let refused = matches!(self.failure, Some(MaskError::NoPlan | MaskError::NotGrpc))
            && self.root.is_none();
        if self.summary_written || (self.root.is_none() && !self.pass_through && !refused) {
            return;
        }
        self.summary_written = true;
        let (label, _) = self.config.policy.for_role(self.role.as_deref());
        let mut summary = MaskSummary {
            role: label.to_string(),
            failure: self.failure.map(|e| e.failure()),
            pass_through: self.pass_through,
            ..Default::default()
        };
        if let Mode::Masking(masker) = &self.mode {
            summary.messages = masker.messages;
            summary.fields = masker.counts.by_name(&self.config.class_names);
            summary.unknown_fields = masker.counts.unknown_fields;
            summary.unknown_any = masker.counts.unknown_any;
        }
        write_state(host, &summary);
    }
}
