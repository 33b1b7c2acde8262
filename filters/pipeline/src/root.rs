//! The module's root context, host-independent: `wasm.rs` hands every SDK root callback here
//! with a `phi_guard_host::ProxyHost`, the tests with a `phi_guard_host::FakeHost`.
//!
//! It owns the [`Pipeline`] (one per VM, i.e. per Envoy worker), sets the tick (audit's
//! `batch_flush_ms` when the audit stage runs, else a second for the fetches), sends the
//! audit stage's batch on every tick, checks the stages' fetches once a second, dispatches
//! them and hands each answer to the stage that asked.

use phi_guard_host::{Environment, HttpCalls, LogLevel, PluginConfig, Timers};

use crate::host::StageHost;
use crate::pipeline::{Pipeline, Stream};

/// Due fetches are checked every second; the intervals themselves are in the stages' configs.
/// The tick itself may be faster (audit's `batch_flush_ms`).
pub const FETCH_CHECK_MS: u64 = 1_000;

/// Everything the root asks of the host.
pub trait RootHost: StageHost + HttpCalls + Timers + PluginConfig + Environment {}

impl<H: StageHost + HttpCalls + Timers + PluginConfig + Environment> RootHost for H {}

pub struct PipelineRoot {
    pipeline: Option<Pipeline>,
    /// Ticks per fetch check, and ticks since the last one.
    ticks_per_fetch_check: u64,
    ticks: u64,
}

impl Default for PipelineRoot {
    fn default() -> Self {
        PipelineRoot {
            pipeline: None,
            ticks_per_fetch_check: 1,
            ticks: 0,
        }
    }
}

impl PipelineRoot {
    pub fn on_configure<H: RootHost>(&mut self, host: &H) -> bool {
        let configuration = host.plugin_configuration().unwrap_or_default();
        // Envoy's vm_config.environment_variables (Istio vmConfig.env) reach the VM through
        // WASI.
        let env = |name: &str| host.env_string(name);
        match Pipeline::configure(host, &configuration, &env) {
            Ok(pipeline) => {
                // A reconfiguration starts over: answers to the old stages' fetches are dropped,
                // the old audit stage's batch is queued.
                let fetches = pipeline.fetches();
                let tick_ms = pipeline.tick_ms(FETCH_CHECK_MS);
                if let Some(old) = self.pipeline.replace(pipeline) {
                    old.retire(host);
                }
                if let Some(ms) = tick_ms {
                    host.set_tick_period_ms(ms);
                    self.ticks_per_fetch_check = FETCH_CHECK_MS.div_ceil(ms.max(1));
                    self.ticks = 0;
                }
                if fetches {
                    self.dispatch_due(host);
                }
                true
            }
            Err(err) => {
                // Names the field, never a value (ConfigError's contract).
                host.log(LogLevel::Error, &format!("phi-guard pipeline: {err}"));
                if let Some(old) = self.pipeline.take() {
                    old.retire(host);
                }
                false
            }
        }
    }

    pub fn on_tick<H: RootHost>(&mut self, host: &H) {
        if let Some(pipeline) = &self.pipeline {
            pipeline.flush(host);
        }
        self.ticks += 1;
        if self.ticks >= self.ticks_per_fetch_check {
            self.ticks = 0;
            self.dispatch_due(host);
        }
    }

    fn dispatch_due<H: RootHost>(&mut self, host: &H) {
        let Some(pipeline) = self.pipeline.as_mut() else {
            return;
        };
        for fetch in pipeline.due_fetches(host) {
            let token = host.get_document(
                &fetch.cluster,
                &fetch.path,
                &fetch.authority,
                fetch.accept,
                fetch.timeout_ms,
            );
            pipeline.on_dispatched(host, fetch.owner, token);
        }
    }

    pub fn on_http_call_response<H: RootHost>(&mut self, host: &H, token: u32, body_size: usize) {
        let Some(pipeline) = self.pipeline.as_mut() else {
            return;
        };
        let Some(limit) = pipeline.response_limit(token) else {
            return;
        };
        let (status, body) = host.http_call_response(body_size, limit);
        let env = |name: &str| host.env_string(name);
        pipeline.on_http_call_response(host, token, status.as_deref(), &body, &env);
    }

    /// The VM is shutting down: the audit stage queues the events it holds, and any stream
    /// that still ends queues its event at once.
    pub fn on_done<H: RootHost>(&mut self, host: &H) -> bool {
        if let Some(pipeline) = &self.pipeline {
            pipeline.retire(host);
        }
        true
    }

    /// create_http_context: a stream through every stage, or one that refuses every call
    /// while no configuration is in force.
    pub fn stream(&self) -> Stream {
        match &self.pipeline {
            Some(pipeline) => pipeline.stream(),
            None => Stream::refusing(),
        }
    }
}
