//! The mask module's root context, host-independent: `wasm.rs` hands every SDK root callback
//! here with a `phi_guard_host::ProxyHost`, the tests with a `phi_guard_host::FakeHost`.
//!
//! It parses the config once per VM and, for a fetched descriptor set, dispatches the
//! fetches on a tick (once a second) and hands the answers to [`remote_shell`].

use std::rc::Rc;

use phi_guard_host::{Environment, Host, HttpCalls, PluginConfig, Timers};

use crate::config::MaskConfig;
use crate::remote::{MaskSource, RemoteMask, READ_LIMIT};
use crate::remote_shell::{self, FetchMetrics};
use crate::shell::{MaskStream, Metrics};

/// Due descriptor-set fetches are checked every second; the intervals are in the config.
pub const TICK_MS: u64 = 1_000;

/// Everything the root asks of the host.
pub trait RootHost: Host + HttpCalls + Timers + PluginConfig + Environment {}

impl<H: Host + HttpCalls + Timers + PluginConfig + Environment> RootHost for H {}

pub struct MaskRoot {
    /// The inline set's config; `None` with a fetched set (see `remote`).
    config: Option<Rc<MaskConfig>>,
    remote: Option<RemoteMask>,
    /// Token of the descriptor-set fetch in flight.
    pending: Option<u32>,
    metrics: Rc<Metrics>,
    fetch_metrics: Rc<FetchMetrics>,
}

impl Default for MaskRoot {
    fn default() -> Self {
        MaskRoot {
            config: None,
            remote: None,
            pending: None,
            metrics: Rc::new(Metrics::default()),
            fetch_metrics: Rc::new(FetchMetrics::default()),
        }
    }
}

/// What a new stream gets.
pub enum RootStream {
    Masking(Box<MaskStream>),
    /// Began before the first descriptor set arrived: refused at its headers
    /// ([`remote_shell::refuse_no_set`]).
    NoSet(Rc<FetchMetrics>),
}

impl MaskRoot {
    pub fn on_configure<H: RootHost>(&mut self, host: &H) -> bool {
        // An absent configuration is an empty one: the common parser refuses both by name.
        let json = host.plugin_configuration().unwrap_or_default();
        let env = |name: &str| host.env_string(name);
        let Some(source) = remote_shell::configure(host, &json, &env) else {
            return false;
        };
        // Metrics are defined once per VM; a reconfigure keeps the same ids.
        if self.config.is_none() && self.remote.is_none() {
            self.metrics = Rc::new(Metrics::define(host));
            self.fetch_metrics = Rc::new(FetchMetrics::define(host));
        }
        // A reconfiguration starts over: the answer to the old source's fetch is dropped.
        self.pending = None;
        match source {
            MaskSource::Inline(config) => {
                self.config = Some(Rc::new(*config));
                self.remote = None;
            }
            MaskSource::Remote(remote) => {
                self.config = None;
                self.remote = Some(*remote);
                host.set_tick_period_ms(TICK_MS);
                self.dispatch_due(host);
            }
        }
        true
    }

    pub fn on_tick<H: RootHost>(&mut self, host: &H) {
        self.dispatch_due(host);
    }

    fn dispatch_due<H: RootHost>(&mut self, host: &H) {
        let Some(remote) = self.remote.as_mut() else {
            return;
        };
        if !remote.start_due_fetch(host.now()) {
            return;
        }
        let source = remote.source();
        let token = host.get_document(
            &source.cluster,
            &source.path,
            &source.authority,
            "application/octet-stream",
            source.timeout_ms,
        );
        match token {
            Some(token) => self.pending = Some(token),
            None => remote_shell::on_dispatch_failed(host, remote, &self.fetch_metrics),
        }
    }

    pub fn on_http_call_response<H: RootHost>(&mut self, host: &H, token: u32, body_size: usize) {
        if self.pending != Some(token) {
            return;
        }
        self.pending = None;
        let Some(remote) = self.remote.as_mut() else {
            return;
        };
        let (status, body) = host.http_call_response(body_size, READ_LIMIT);
        let env = |name: &str| host.env_string(name);
        remote_shell::on_response(
            host,
            remote,
            &self.fetch_metrics,
            status.as_deref(),
            &body,
            &env,
        );
    }

    /// create_http_context; `None` before any configuration (the SDK then has no context).
    pub fn stream(&self) -> Option<RootStream> {
        let config = match (&self.config, &self.remote) {
            (Some(config), _) => Some(Rc::clone(config)),
            (None, Some(remote)) => remote.config(),
            (None, None) => return None,
        };
        Some(match config {
            Some(config) => {
                RootStream::Masking(Box::new(MaskStream::new(config, Rc::clone(&self.metrics))))
            }
            None => RootStream::NoSet(Rc::clone(&self.fetch_metrics)),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use phi_guard_common::GrpcStatus;
    use phi_guard_host::FakeHost;

    fn remote_host() -> FakeHost {
        let host = FakeHost::default();
        let doc = serde_json::json!({
            "descriptor_set": {"remote": {"cluster": "schemas", "path": "/api.binpb", "authority": "s"}},
            "roles": {"nurse": {"*": "redact"}}
        });
        *host.plugin_config.borrow_mut() = Some(doc.to_string().into_bytes());
        host
    }

    #[test]
    fn a_fetched_set_is_dispatched_refused_until_it_arrives_then_masks() {
        let host = remote_host();
        let mut root = MaskRoot::default();
        assert!(root.stream().is_none(), "no context before configure");
        assert!(root.on_configure(&host));
        assert_eq!(host.tick_ms.get(), Some(TICK_MS));
        let call = host.last_call().expect("the descriptor-set fetch");
        assert_eq!(call.cluster, "schemas");
        let accept = call.headers.iter().find(|(k, _)| k == "accept");
        assert_eq!(
            accept.map(|(_, v)| v.as_str()),
            Some("application/octet-stream")
        );
        // Before the set: streams are refused with UNAVAILABLE.
        let Some(RootStream::NoSet(metrics)) = root.stream() else {
            panic!("expected a refusing stream");
        };
        remote_shell::refuse_no_set(&host, &metrics);
        assert_eq!(host.sent_status(), Some(GrpcStatus::Unavailable));
        // An answer to another token is ignored; the set's answer installs it.
        root.on_http_call_response(&host, call.token + 1, 0);
        assert!(matches!(root.stream(), Some(RootStream::NoSet(_))));
        let set = crate::testdata::demo_descriptor_set().to_vec();
        let size = set.len();
        *host.call_response.borrow_mut() = (Some("200".into()), set);
        root.on_http_call_response(&host, call.token, size);
        assert_eq!(host.counter("phi_guard.mask.descriptor_set_fetch_ok"), 1);
        assert!(matches!(root.stream(), Some(RootStream::Masking(_))));
    }

    #[test]
    fn a_refused_configuration_does_not_start() {
        let host = FakeHost::default();
        assert!(!MaskRoot::default().on_configure(&host));
        assert!(
            host.log_text().contains("phi-guard mask"),
            "{}",
            host.log_text()
        );
        assert_eq!(host.tick_ms.get(), None);
        assert!(host.calls.borrow().is_empty());
    }
}
