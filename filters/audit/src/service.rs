//! The singleton service shell: moves bytes between Envoy's shared queue, the [`Delivery`]
//! core and `dispatch_http_call`, publishes the fail-closed flag, and turns the core's
//! totals into metrics. Generic over [`ServiceHost`] so it runs against the fakes natively.

use phi_guard_host::LogLevel;

use crate::chain::ChainKey;
use crate::config::{backlog_flag_key, ServiceConfig};
use crate::delivery::{CallOutcome, Delivery, Stats};
use crate::hostx::ServiceHost;
use crate::otlp::{Encoding, OtlpMeta};

pub const METRIC_SHIPPED: &str = "phi_guard.audit.shipped";
/// Records the collector acknowledged but rejected (OTLP partial success).
pub const METRIC_REJECTED: &str = "phi_guard.audit.rejected";
/// 2xx answers whose body is not an `ExportLogsServiceResponse` (their batch counts as
/// shipped; the receiver may not be an OTLP one, and may have kept nothing).
pub const METRIC_UNREADABLE_ANSWERS: &str = "phi_guard.audit.unreadable_answers";
pub const METRIC_RETRIED: &str = "phi_guard.audit.retried";
pub const METRIC_DROPPED: &str = "phi_guard.audit.dropped";
pub const METRIC_BACKLOG_FULL: &str = "phi_guard.audit.backlog_full";
/// Events chained by the service (the filter counts `enqueued`).
pub const METRIC_CHAINED: &str = "phi_guard.audit.chained";
/// Gauge: records waiting for the collector.
pub const METRIC_BACKLOG: &str = "phi_guard.audit.backlog";
/// Queue items refused whole: malformed batches (see [`crate::batch`]).
pub const METRIC_BATCH_REFUSED: &str = "phi_guard.audit.batch_refused";

/// Upper bound of events taken per callback, so one callback never runs unbounded under
/// drop_oldest (the rest is taken on the next tick). Checked between queue items, so one
/// callback takes at most this plus one batch.
const MAX_DEQUEUE_PER_PUMP: usize = 10_000;

/// Most bytes of the collector's answer read (for its `partial_success`); a longer answer is
/// cut there, does not decode, and counts as a plain 2xx.
pub const MAX_RESPONSE_BYTES: usize = 64 * 1024;

/// The records a 2xx answer says were rejected, or `None` when it is not an OTLP
/// `ExportLogsServiceResponse` in `encoding`: a `content-type` other than the request's (OTLP
/// receivers answer in the request's; a missing one is taken as that), or a body that does
/// not decode.
fn answer_rejected<H: ServiceHost>(host: &H, encoding: Encoding, body: &[u8]) -> Option<u64> {
    if let Some(content_type) = host.http_call_response_header("content-type") {
        if Encoding::from_content_type(&content_type) != Some(encoding) {
            return None;
        }
    }
    crate::otlp::rejected_records(encoding, body)
}

#[derive(Debug, Default)]
struct Metrics {
    chained: Option<u32>,
    shipped: Option<u32>,
    rejected: Option<u32>,
    unreadable_answers: Option<u32>,
    retried: Option<u32>,
    dropped: Option<u32>,
    backlog_full: Option<u32>,
    batch_refused: Option<u32>,
    backlog: Option<u32>,
}

#[derive(Debug, Default)]
pub struct AuditService {
    config: Option<ServiceConfig>,
    core: Option<Delivery>,
    queue_id: Option<u32>,
    flag_key: String,
    /// Shared-data key of the batch format this service reads ([`crate::batch::format_key`]).
    format_key: String,
    /// Whether `format_key` was written for the current queue.
    format_published: bool,
    /// The flag value last written to shared data.
    published: Option<bool>,
    /// Token of the in-flight `dispatch_http_call`, the batch it carries and the batch's
    /// encoding (the answer's; a reconfiguration may change the service's meanwhile).
    call: Option<(u32, u64, Encoding)>,
    metrics: Metrics,
    reported: Stats,
}

impl AuditService {
    /// Idempotent: Envoy has been seen to configure the singleton twice with the same queue.
    /// A second call keeps the chain, the backlog and an in-flight batch.
    pub fn on_configure<H: ServiceHost>(&mut self, host: &H, config: &[u8]) -> bool {
        let cfg = match ServiceConfig::parse(config) {
            Ok(cfg) => cfg,
            Err(e) => {
                host.log(LogLevel::Error, &format!("phi_guard audit service: {e}"));
                return false;
            }
        };
        let Some(queue_id) = host.register_queue(&cfg.queue) else {
            host.log(
                LogLevel::Error,
                "phi_guard audit service: could not register the shared queue",
            );
            return false;
        };
        let meta = OtlpMeta {
            service_name: cfg.service_name.clone(),
            encoding: cfg.encoding,
        };
        match self.core.as_mut() {
            Some(core) => {
                if self.config.as_ref().map(|c| &c.key_env) != Some(&cfg.key_env) {
                    host.log(
                        LogLevel::Warn,
                        "phi_guard audit service: key_env changed; the running chain keeps its key until restart",
                    );
                }
                core.reconfigure(cfg.delivery(), meta);
            }
            None => {
                let key = host.env_var(&cfg.key_env).and_then(|k| ChainKey::new(&k));
                let Some(key) = key else {
                    // Names the variable, never its value.
                    host.log(
                        LogLevel::Error,
                        &format!(
                            "phi_guard audit service: invalid configuration: field `key_env`: environment variable {} is missing or shorter than {} bytes",
                            cfg.key_env,
                            crate::chain::MIN_KEY_LEN
                        ),
                    );
                    return false;
                };
                self.core = Some(Delivery::new(cfg.delivery(), key, meta));
            }
        }
        if self.metrics.shipped.is_none() {
            self.metrics = Metrics {
                chained: host.define_counter(METRIC_CHAINED),
                shipped: host.define_counter(METRIC_SHIPPED),
                rejected: host.define_counter(METRIC_REJECTED),
                unreadable_answers: host.define_counter(METRIC_UNREADABLE_ANSWERS),
                retried: host.define_counter(METRIC_RETRIED),
                dropped: host.define_counter(METRIC_DROPPED),
                backlog_full: host.define_counter(METRIC_BACKLOG_FULL),
                batch_refused: host.define_counter(METRIC_BATCH_REFUSED),
                backlog: host.define_gauge(METRIC_BACKLOG),
            };
        }
        let new_flag_key = backlog_flag_key(&cfg.queue);
        if new_flag_key != self.flag_key {
            self.published = None;
            self.flag_key = new_flag_key;
            self.format_key = crate::batch::format_key(&cfg.queue);
            self.format_published = false;
        }
        host.set_tick_period_ms(cfg.tick_ms);
        self.queue_id = Some(queue_id);
        self.config = Some(cfg);
        self.pump(host);
        true
    }

    pub fn on_queue_ready<H: ServiceHost>(&mut self, host: &H, queue_id: u32) {
        if Some(queue_id) == self.queue_id {
            self.pump(host);
        }
    }

    pub fn on_tick<H: ServiceHost>(&mut self, host: &H) {
        self.pump(host);
    }

    /// `status` is the `:status` of the collector's answer, `None` when the call failed;
    /// `body` its body (at most [`MAX_RESPONSE_BYTES`] of it), read for a 2xx's partial
    /// success.
    pub fn on_http_call_response<H: ServiceHost>(
        &mut self,
        host: &H,
        token: u32,
        status: Option<u32>,
        body: &[u8],
    ) {
        let Some((expected, batch, encoding)) = self.call else {
            return;
        };
        if expected != token {
            return;
        }
        self.call = None;
        if let Some(core) = self.core.as_mut() {
            let outcome = match status {
                None => CallOutcome::Failed,
                // A 2xx answer that is not an ExportLogsServiceResponse still acknowledges the
                // batch: the status is the receiver's verdict.
                Some(s @ 200..=299) => match answer_rejected(host, encoding, body) {
                    Some(rejected) if rejected > 0 => CallOutcome::PartialSuccess { rejected },
                    Some(_) => CallOutcome::Status(s),
                    None => {
                        if let Some(id) = self.metrics.unreadable_answers {
                            host.increment_counter(id, 1);
                        }
                        host.log(
                            LogLevel::Warn,
                            &format!(
                                "phi_guard audit service: collector answered HTTP {s} with a body that is not an OTLP ExportLogsServiceResponse; batch counted as shipped (is the cluster an OTLP receiver?)"
                            ),
                        );
                        CallOutcome::Status(s)
                    }
                },
                Some(s) => CallOutcome::Status(s),
            };
            core.on_response(batch, outcome, host.now_ms());
            if let CallOutcome::PartialSuccess { rejected } = outcome {
                // The count only: the receiver's error message is its text, not ours to log.
                host.log(
                    LogLevel::Warn,
                    &format!(
                        "phi_guard audit service: collector rejected {rejected} record(s) of a batch (OTLP partial success); not resent"
                    ),
                );
            }
            if !outcome.is_success() {
                host.log(
                    LogLevel::Warn,
                    &format!(
                        "phi_guard audit service: collector call failed ({}); batch retained",
                        status.map_or("no response".to_string(), |s| format!("HTTP {s}"))
                    ),
                );
            }
        }
        self.pump(host);
    }

    /// The one place that moves bytes: queue → core → collector, then flag and metrics.
    fn pump<H: ServiceHost>(&mut self, host: &H) {
        let (Some(core), Some(cfg), Some(queue)) =
            (self.core.as_mut(), self.config.as_ref(), self.queue_id)
        else {
            return;
        };
        // The format goes out before the admission flag: a filter that sees the flag also
        // sees which batches this service reads.
        if !self.format_published {
            let version = [b'0' + crate::batch::VERSION];
            self.format_published = host.set_shared_data(&self.format_key, &version);
        }
        let now = host.now_ms();
        let mut taken = 0;
        while core.has_room() && taken < MAX_DEQUEUE_PER_PUMP {
            let Some(bytes) = host.dequeue(queue) else {
                break;
            };
            // A refused item is counted in the core's `dropped` or `refused_items`; its
            // contents are not logged.
            taken += core.on_item(&bytes, now).unwrap_or(1).max(1);
        }
        let batch = core.poll(now);
        if let Some(batch) = batch {
            let headers = [
                (":method", "POST"),
                (":path", cfg.path.as_str()),
                (":authority", cfg.authority()),
                ("content-type", cfg.encoding.content_type()),
            ];
            match host.dispatch_http_call(
                &cfg.cluster,
                &headers,
                Some(&batch.body),
                cfg.request_timeout_ms,
            ) {
                Some(token) => self.call = Some((token, batch.id, cfg.encoding)),
                None => {
                    host.log(
                        LogLevel::Warn,
                        "phi_guard audit service: dispatch_http_call refused; batch retained",
                    );
                    core.on_response(batch.id, CallOutcome::Failed, now);
                }
            }
        }
        let blocked = core.blocked();
        if self.published != Some(blocked) && self.format_published {
            let value: &[u8] = if blocked { b"1" } else { b"0" };
            if host.set_shared_data(&self.flag_key, value) {
                self.published = Some(blocked);
                if blocked {
                    host.log(
                        LogLevel::Warn,
                        "phi_guard audit service: backlog full, refusing new RPCs until it drains",
                    );
                }
            }
        }
        let stats = core.stats();
        let backlog = core.backlog_len() as u64;
        self.report(host, stats, backlog);
    }

    fn report<H: ServiceHost>(&mut self, host: &H, s: Stats, backlog: u64) {
        let r = self.reported;
        let m = &self.metrics;
        for (id, now, before) in [
            (m.chained, s.accepted, r.accepted),
            (m.shipped, s.shipped, r.shipped),
            (m.rejected, s.rejected, r.rejected),
            (m.retried, s.retried, r.retried),
            (m.dropped, s.dropped, r.dropped),
            (m.backlog_full, s.backlog_full, r.backlog_full),
            (m.batch_refused, s.refused_items, r.refused_items),
        ] {
            if let (Some(id), true) = (id, now > before) {
                host.increment_counter(id, i64::try_from(now - before).unwrap_or(i64::MAX));
            }
        }
        if let Some(id) = m.backlog {
            host.record_gauge(id, backlog);
        }
        self.reported = s;
    }

    pub fn core(&self) -> Option<&Delivery> {
        self.core.as_ref()
    }
}
