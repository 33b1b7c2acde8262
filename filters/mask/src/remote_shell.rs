//! The host-facing side of a fetched descriptor set ([`crate::remote`]): configure-time
//! logging, the fetch answers' metrics and log lines, and the refusal of requests that arrive
//! before the first good set. Written against [`Host`] so it runs under a fake natively;
//! `wasm.rs` only dispatches the calls and hands the answers here.
//!
//! Logging rule: the reason and the config field, the cluster name and counts; never a byte
//! of a fetched body, never its digest.

use phi_guard_common::{AuthzDecision, GrpcStatus, MaskFailure, MaskSummary};
use phi_guard_host::{read_state, write_state, Flow, Host, LogLevel};

use crate::remote::{FetchError, MaskSource, RemoteMask};
use crate::shell::Metric;

/// `MaskSummary.failure` of a call refused because no descriptor set has arrived yet.
pub const NO_DESCRIPTOR_SET: MaskFailure = MaskFailure::NoDescriptorSet;

/// `phi_guard.mask.descriptor_set_fetch_ok`, `phi_guard.mask.descriptor_set_fetch_failed`
/// (every failed fetch, pin mismatches included), `phi_guard.mask.descriptor_set_pin_mismatch`,
/// `phi_guard.mask.refused_no_descriptor_set`.
#[derive(Debug, Default, Clone)]
pub struct FetchMetrics {
    pub fetch_ok: Metric,
    pub fetch_failed: Metric,
    pub pin_mismatch: Metric,
    pub refused_no_set: Metric,
}

impl FetchMetrics {
    pub fn define(host: &dyn Host) -> Self {
        FetchMetrics {
            fetch_ok: Metric::define(host, "phi_guard.mask.descriptor_set_fetch_ok"),
            fetch_failed: Metric::define(host, "phi_guard.mask.descriptor_set_fetch_failed"),
            pin_mismatch: Metric::define(host, "phi_guard.mask.descriptor_set_pin_mismatch"),
            refused_no_set: Metric::define(host, "phi_guard.mask.refused_no_descriptor_set"),
        }
    }
}

/// on_configure: parses the configuration and says what came of it. `None` (logged with the
/// field) means the plugin must not start.
pub fn configure(
    host: &dyn Host,
    json: &[u8],
    env: &dyn Fn(&str) -> Option<String>,
) -> Option<MaskSource> {
    match MaskSource::parse(json, env) {
        Ok(source) => {
            let line = match &source {
                MaskSource::Inline(config) => format!(
                    "phi-guard mask: configured, {} method(s) with a plan, {} role(s)",
                    config.plans.methods.len(),
                    config.policy.roles.len()
                ),
                MaskSource::Remote(remote) => format!(
                    "phi-guard mask: configured; fetching the descriptor set through cluster {}, \
                     requests are refused until it arrives",
                    remote.source().cluster
                ),
            };
            host.log(LogLevel::Info, &line);
            Some(source)
        }
        Err(err) => {
            host.log(LogLevel::Error, &format!("phi-guard mask: {err}"));
            None
        }
    }
}

/// on_http_request_headers before the first good set: the call is refused with UNAVAILABLE
/// (generic message, nothing reaches the service), counted, and summarised for audit.
pub fn refuse_no_set(host: &dyn Host, metrics: &FetchMetrics) -> Flow {
    metrics.refused_no_set.add(host, 1);
    let role = read_state::<AuthzDecision, _>(host)
        .ok()
        .flatten()
        .and_then(AuthzDecision::allowed_role)
        .unwrap_or_else(|| "default".into());
    let summary = MaskSummary {
        role,
        failure: Some(NO_DESCRIPTOR_SET),
        ..Default::default()
    };
    write_state(host, &summary);
    host.log(
        LogLevel::Debug,
        "phi-guard mask: refused: no descriptor set has arrived yet",
    );
    host.send_grpc_error(GrpcStatus::Unavailable, &[]);
    Flow::Pause
}

/// on_http_call_response of a descriptor-set fetch.
pub fn on_response(
    host: &dyn Host,
    remote: &mut RemoteMask,
    metrics: &FetchMetrics,
    status: Option<&str>,
    body: &[u8],
    env: &dyn Fn(&str) -> Option<String>,
) {
    let status = status.and_then(|s| s.parse::<u32>().ok());
    match remote.on_response(status, body, host.now(), env) {
        Ok(installed) => {
            metrics.fetch_ok.add(host, 1);
            if installed.changed {
                host.log(
                    LogLevel::Info,
                    &format!(
                        "phi-guard mask: descriptor set installed from cluster {}, {} method(s) with a plan",
                        remote.source().cluster,
                        installed.methods
                    ),
                );
            }
        }
        Err(err) => {
            metrics.fetch_failed.add(host, 1);
            if err == FetchError::PinMismatch {
                metrics.pin_mismatch.add(host, 1);
            }
            let keeping = if remote.config().is_some() {
                "keeping the last good set"
            } else {
                "requests stay refused until a good set arrives"
            };
            host.log(
                LogLevel::Warn,
                &format!(
                    "phi-guard mask: descriptor set fetch from cluster {} failed: {err}; {keeping}",
                    remote.source().cluster
                ),
            );
        }
    }
}

/// dispatch_http_call refused the fetch (e.g. an unknown cluster).
pub fn on_dispatch_failed(host: &dyn Host, remote: &mut RemoteMask, metrics: &FetchMetrics) {
    metrics.fetch_failed.add(host, 1);
    remote.on_dispatch_failed(host.now());
    host.log(
        LogLevel::Warn,
        &format!(
            "phi-guard mask: could not dispatch the descriptor set fetch through cluster {} (check the cluster name)",
            remote.source().cluster
        ),
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use phi_guard_host::FakeHost;
    use serde_json::json;

    fn remote(pin: Option<String>) -> (FakeHost, RemoteMask, FetchMetrics) {
        let host = FakeHost::default();
        let mut block = json!({"cluster": "schemas", "path": "/api.binpb", "authority": "s"});
        if let Some(p) = pin {
            block["sha256"] = p.into();
        }
        let doc = json!({"descriptor_set": {"remote": block},
                         "roles": {"nurse": {"*": "redact"}}});
        let metrics = FetchMetrics::define(&host);
        match configure(&host, doc.to_string().as_bytes(), &|_| None) {
            Some(MaskSource::Remote(r)) => (host, *r, metrics),
            _ => panic!("not a remote source"),
        }
    }

    #[test]
    fn requests_before_the_first_set_are_unavailable_and_counted() {
        let (host, _remote, metrics) = remote(None);
        let flow = refuse_no_set(&host, &metrics);
        assert!(matches!(flow, Flow::Pause));
        assert_eq!(host.sent_status(), Some(GrpcStatus::Unavailable));
        assert_eq!(host.counter("phi_guard.mask.refused_no_descriptor_set"), 1);
        let summary: MaskSummary = read_state(&host).unwrap().unwrap();
        assert_eq!(summary.failure, Some(MaskFailure::NoDescriptorSet));
    }

    #[test]
    fn answers_are_counted_and_logged_without_the_body() {
        let set = crate::testdata::demo_descriptor_set();
        let (host, mut r, metrics) = remote(None);
        assert!(r.start_due_fetch(0));
        on_response(
            &host,
            &mut r,
            &metrics,
            Some("200"),
            b"CANARY-not-a-set",
            &|_| None,
        );
        assert_eq!(
            host.counter("phi_guard.mask.descriptor_set_fetch_failed"),
            1
        );
        assert!(r.config().is_none());
        let log = host.log_text();
        assert!(log.contains("field `descriptor_set`"), "{log}");
        assert!(log.contains("requests stay refused"), "{log}");
        assert!(!log.contains("CANARY"), "{log}");
        assert!(r.start_due_fetch(10));
        on_response(&host, &mut r, &metrics, Some("200"), set, &|_| None);
        assert_eq!(host.counter("phi_guard.mask.descriptor_set_fetch_ok"), 1);
        assert!(r.config().is_some());
        assert!(r.start_due_fetch(310));
        on_response(&host, &mut r, &metrics, Some("500"), b"", &|_| None);
        assert!(host
            .log_text()
            .contains("HTTP 500; keeping the last good set"));
        assert!(r.start_due_fetch(320));
        on_dispatch_failed(&host, &mut r, &metrics);
        assert_eq!(
            host.counter("phi_guard.mask.descriptor_set_fetch_failed"),
            3
        );
        assert!(r.config().is_some());
    }

    #[test]
    fn a_pin_mismatch_is_its_own_metric() {
        let (host, mut r, metrics) = remote(Some("ab".repeat(32)));
        assert!(r.start_due_fetch(0));
        let set = crate::testdata::demo_descriptor_set();
        on_response(&host, &mut r, &metrics, Some("200"), set, &|_| None);
        assert_eq!(
            host.counter("phi_guard.mask.descriptor_set_pin_mismatch"),
            1
        );
        assert_eq!(
            host.counter("phi_guard.mask.descriptor_set_fetch_failed"),
            1
        );
        assert_eq!(host.counter("phi_guard.mask.descriptor_set_fetch_ok"), 0);
        assert!(r.config().is_none());
        assert!(host.log_text().contains("descriptor_set.remote.sha256"));
    }
}
