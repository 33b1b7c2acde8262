//! The jwt module's root context, host-independent: `wasm.rs` hands every SDK root callback
//! here with a `phi_guard_host::ProxyHost`, the tests with a `phi_guard_host::FakeHost`.
//!
//! It owns the per-VM engine (one VM per Envoy worker), shared with every stream through an
//! `Rc`, and drives the JWKS fetches: checked on a one-second tick, dispatched as GETs, each
//! answer handed to the provider that asked.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

use phi_guard_host::{Environment, Host, HttpCalls, PluginConfig, SharedData, Timers};

use crate::engine::Engine;
use crate::shell::{self, Metrics, JWKS_READ_LIMIT};

/// Due fetches are checked every second; the JWKS intervals themselves are in the config.
pub const TICK_MS: u64 = 1_000;

/// Everything the root asks of the host (shared data: the replay cache the engine may keep).
pub trait RootHost: Host + SharedData + HttpCalls + Timers + PluginConfig + Environment {}

impl<H: Host + SharedData + HttpCalls + Timers + PluginConfig + Environment> RootHost for H {}

/// The engine and counters every stream of this configuration uses.
#[derive(Clone)]
pub struct Shared {
    pub engine: Rc<RefCell<Engine>>,
    pub metrics: Rc<Metrics>,
}

#[derive(Default)]
pub struct JwtRoot {
    shared: Option<Shared>,
    /// dispatch_http_call token → provider index.
    pending: HashMap<u32, usize>,
}

impl JwtRoot {
    pub fn on_configure<H: RootHost>(&mut self, host: &H) -> bool {
        let configuration = host.plugin_configuration();
        // Envoy's vm_config.environment_variables (Istio vmConfig.env) reach the VM as WASI
        // environment variables.
        let env = |name: &str| host.env_string(name);
        let Some((engine, metrics)) = shell::configure(host, configuration.as_deref(), &env) else {
            return false;
        };
        // A reconfiguration starts over: answers to the old engine's fetches are dropped.
        self.pending.clear();
        self.shared = Some(Shared {
            engine: Rc::new(RefCell::new(engine)),
            metrics: Rc::new(metrics),
        });
        host.set_tick_period_ms(TICK_MS);
        self.dispatch_due(host);
        true
    }

    pub fn on_tick<H: RootHost>(&mut self, host: &H) {
        self.dispatch_due(host);
    }

    fn dispatch_due<H: RootHost>(&mut self, host: &H) {
        let Some(shared) = self.shared.clone() else {
            return;
        };
        for fetch in shell::due_fetches(host, &shared.engine) {
            let token = host.get_document(
                &fetch.cluster,
                &fetch.path,
                &fetch.authority,
                "application/json",
                fetch.timeout_ms,
            );
            match token {
                Some(token) => {
                    self.pending.insert(token, fetch.provider);
                }
                None => shell::on_jwks_dispatch_failed(
                    host,
                    &shared.engine,
                    &shared.metrics,
                    fetch.provider,
                ),
            }
        }
    }

    pub fn on_http_call_response<H: RootHost>(&mut self, host: &H, token: u32, body_size: usize) {
        let Some(provider) = self.pending.remove(&token) else {
            return;
        };
        let Some(shared) = self.shared.clone() else {
            return;
        };
        let (status, body) = host.http_call_response(body_size, JWKS_READ_LIMIT);
        shell::on_jwks_response(
            host,
            &shared.engine,
            &shared.metrics,
            provider,
            status.as_deref(),
            &body,
        );
    }

    /// What a new stream uses; `None` before a configuration took (the SDK then has no
    /// context for the stream).
    pub fn shared(&self) -> Option<Shared> {
        self.shared.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use phi_guard_host::FakeHost;

    fn host() -> FakeHost {
        let host = FakeHost::default();
        let doc = serde_json::json!({
            "providers": [{"name": "idp", "issuer": "https://idp.test", "audiences": ["api"],
                           "algorithms": ["EdDSA"],
                           "jwks": {"remote": {"cluster": "idp", "path": "/jwks", "authority": "idp",
                                               "min_refetch_interval_s": 30, "retry_interval_s": 5}}}],
            "rules": [{"match": "health.v1.PatientService/*", "requires": {"provider": "idp"}}]
        });
        *host.plugin_config.borrow_mut() = Some(doc.to_string().into_bytes());
        host.set_clock(1_800_000_000);
        host
    }

    #[test]
    fn jwks_fetches_are_dispatched_and_answered_by_token() {
        let host = host();
        let mut root = JwtRoot::default();
        assert!(
            root.shared().is_none(),
            "no stream context before configure"
        );
        assert!(root.on_configure(&host));
        assert!(root.shared().is_some());
        assert_eq!(host.tick_ms.get(), Some(TICK_MS));
        let call = host.last_call().expect("the JWKS fetch");
        assert_eq!(call.cluster, "idp");
        assert_eq!(call.header(":path"), Some("/jwks"));
        assert_eq!(call.header("accept"), Some("application/json"));
        // Another token is not ours; the fetch's 503 is counted once.
        root.on_http_call_response(&host, call.token + 7, 0);
        *host.call_response.borrow_mut() = (Some("503".into()), Vec::new());
        root.on_http_call_response(&host, call.token, 0);
        root.on_http_call_response(&host, call.token, 0);
        assert_eq!(host.counter("phi_guard.jwt.jwks_fetch_failed"), 1);
        // The retry is due 5 s later; the host refuses it (unknown cluster): counted too.
        host.refuse_calls.set(true);
        host.set_clock(1_800_000_010);
        root.on_tick(&host);
        assert_eq!(host.counter("phi_guard.jwt.jwks_fetch_failed"), 2);
        assert_eq!(host.calls.borrow().len(), 1);
    }

    #[test]
    fn a_refused_configuration_does_not_start() {
        let host = FakeHost::default();
        let mut root = JwtRoot::default();
        assert!(!root.on_configure(&host));
        assert!(root.shared().is_none());
        assert_eq!(host.tick_ms.get(), None);
    }
}
