//! The pipeline: every configured stage, run in order from one root context and one HTTP
//! context. This is the one file to read (and to change) to add a stage.
//!
//! A stage is an existing filter crate used without its `module` feature: its shell
//! (`phi_guard_<stage>::shell` and friends) is driven from here exactly as that filter's own
//! `wasm.rs` drives it in the single-stage layout. Per stage this file holds:
//!
//! 1. its configured state in [`Pipeline`] (built in [`Pipeline::configure`] from the stage's
//!    own configuration document, parsed by the stage's own parser);
//! 2. its per-stream state in [`Stream`] (made in [`Pipeline::stream`]);
//! 3. its calls in the stream callbacks, in stage order. A stage that refuses a request
//!    (sends a gRPC error) returns `false`/[`Flow::Pause`] and the later stages do not see the
//!    request, as in the single-stage layout where Envoy stops the filter chain; every stage
//!    still gets `on_log` (audit records refused calls there);
//! 4. if it fetches something (jwt's JWKS, mask's descriptor set), its fetches in
//!    [`Pipeline::due_fetches`] and its answers in [`Pipeline::on_http_call_response`].
//!
//! Adding a fifth stage: its name in [`crate::config::StageName`] at its place in the order,
//! with the contracts it reads ([`crate::config::StageName::reads`]), then the four points
//! above. Stages hand results to later stages through their typed
//! contracts (`phi_guard_common::state::StateContract`, read and written only with
//! `phi_guard_host::{read_state, write_state}`), the same calls in both layouts: inside the
//! pipeline a later stage gets the value the earlier one wrote, in memory
//! ([`crate::host::Cached`], the stream's `StateSlots`), while the bytes reach Envoy's filter
//! state once per key the pipeline publishes (its `filter_state`).

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

use phi_guard_audit::config::FilterConfig as AuditConfig;
use phi_guard_audit::filter::{Admission, AuditStream, FilterRuntime};
use phi_guard_common::state::Published;
use phi_guard_common::{ConfigError, GrpcStatus, StateSlots};
use phi_guard_host::{Flow, Host, LogLevel};
use phi_guard_jwt::engine::Engine as JwtEngine;
use phi_guard_jwt::shell as jwt_shell;
use phi_guard_mask::remote::{MaskSource, RemoteMask};
use phi_guard_mask::remote_shell::{self, FetchMetrics};
use phi_guard_mask::shell::{BodyHost, MaskStream, Metrics as MaskMetrics};
use phi_guard_mask::MaskConfig;
use phi_guard_rbac::shell::Filter as RbacFilter;

use crate::config::{PipelineConfig, StageName};
use crate::host::{Cached, ConnectionFacts, StageHost, StreamCache};

/// The jwt stage: the per-VM engine (token cache, JWKS) and its counters.
pub struct JwtStage {
    pub engine: RefCell<JwtEngine>,
    pub metrics: jwt_shell::Metrics,
}

/// The mask stage: an inline descriptor set's config, or a fetched one's state.
pub struct MaskStage {
    inline: Option<Rc<MaskConfig>>,
    remote: Option<RemoteMask>,
    metrics: Rc<MaskMetrics>,
    fetch_metrics: Rc<FetchMetrics>,
}

/// Who a `dispatch_http_call` answer belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FetchOwner {
    /// jwt's JWKS fetch for this provider index.
    Jwt(usize),
    /// mask's descriptor-set fetch.
    Mask,
}

/// A fetch to dispatch now (GET).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fetch {
    pub owner: FetchOwner,
    pub cluster: String,
    pub path: String,
    pub authority: String,
    pub accept: &'static str,
    pub timeout_ms: u64,
}

/// The configured pipeline, one per VM (root context).
pub struct Pipeline {
    jwt: Option<Rc<JwtStage>>,
    rbac: Option<Rc<RbacFilter>>,
    mask: Option<MaskStage>,
    audit: Option<Rc<FilterRuntime>>,
    /// dispatch_http_call token → whose fetch it is.
    pending: HashMap<u32, FetchOwner>,
    /// The VM's connection attributes, per connection (`crate::host`).
    connections: Rc<RefCell<ConnectionFacts>>,
    /// The contracts written to Envoy's filter state (`filter_state`).
    published: Published,
}

fn refused(stage: StageName, index: usize) -> ConfigError {
    ConfigError::new(
        format!("stages[{index}].{}", stage.name()),
        format!(
            "refused by the {} stage (its log line names the field)",
            stage.name()
        ),
    )
}

impl Pipeline {
    /// on_configure: the envelope, then each stage through its own parser. Any error (it
    /// names the field, `stages[1].rbac: rules[0].name`) means the plugin must not start.
    pub fn configure<H: StageHost>(
        host: &H,
        bytes: &[u8],
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Pipeline, ConfigError> {
        let config = PipelineConfig::parse(bytes)?;
        let mut pipeline = Pipeline {
            jwt: None,
            rbac: None,
            mask: None,
            audit: None,
            pending: HashMap::new(),
            connections: Rc::default(),
            published: config.published,
        };
        for (index, (stage, doc)) in config.stages.iter().enumerate() {
            let within = format!("stages[{index}].{}", stage.name());
            match stage {
                StageName::Jwt => {
                    // Logs its own error (naming the field) and refuses.
                    let (engine, metrics) = jwt_shell::configure(host, Some(doc.as_slice()), env)
                        .ok_or_else(|| refused(*stage, index))?;
                    pipeline.jwt = Some(Rc::new(JwtStage {
                        engine: RefCell::new(engine),
                        metrics,
                    }));
                }
                StageName::Rbac => {
                    let filter = RbacFilter::configure(host, doc).map_err(|e| e.within(&within))?;
                    pipeline.rbac = Some(Rc::new(filter));
                }
                StageName::Mask => {
                    let source = remote_shell::configure(host, doc, env)
                        .ok_or_else(|| refused(*stage, index))?;
                    let (inline, remote) = match source {
                        MaskSource::Inline(config) => (Some(Rc::new(*config)), None),
                        MaskSource::Remote(remote) => (None, Some(*remote)),
                    };
                    pipeline.mask = Some(MaskStage {
                        inline,
                        remote,
                        metrics: Rc::new(MaskMetrics::define(host)),
                        fetch_metrics: Rc::new(FetchMetrics::define(host)),
                    });
                }
                StageName::Audit => {
                    let config = AuditConfig::parse(doc).map_err(|e| e.within(&within))?;
                    pipeline.audit = Some(Rc::new(FilterRuntime::new(host, config)));
                }
            }
        }
        let names: Vec<&str> = config.stages.iter().map(|(s, _)| s.name()).collect();
        host.log(
            LogLevel::Info,
            &format!("phi-guard pipeline: configured stages {}", names.join(", ")),
        );
        Ok(pipeline)
    }

    /// Whether a stage fetches anything (the root then needs a tick).
    pub fn fetches(&self) -> bool {
        self.jwt.is_some() || self.mask.as_ref().is_some_and(|m| m.remote.is_some())
    }

    /// The root's tick period: audit's `batch_flush_ms` when the audit stage runs (it sends
    /// its batch on every tick), else `fetch_ms` when a stage fetches, else none.
    pub fn tick_ms(&self, fetch_ms: u64) -> Option<u64> {
        match (&self.audit, self.fetches()) {
            (Some(audit), true) => Some(audit.tick_ms().min(fetch_ms)),
            (Some(audit), false) => Some(audit.tick_ms()),
            (None, true) => Some(fetch_ms),
            (None, false) => None,
        }
    }

    /// on_tick and on_done: the audit stage queues the events it holds.
    pub fn flush<H: StageHost>(&self, host: &H) {
        if let Some(audit) = &self.audit {
            audit.on_tick(host);
        }
    }

    /// A new configuration replaces this pipeline: the audit stage queues what it holds, and
    /// streams still running under this one queue their events at once.
    pub fn retire<H: StageHost>(&self, host: &H) {
        if let Some(audit) = &self.audit {
            audit.retire(host);
        }
    }

    /// on_tick (and right after configure): every stage's fetches due now.
    pub fn due_fetches(&mut self, host: &dyn Host) -> Vec<Fetch> {
        let mut fetches = Vec::new();
        if let Some(jwt) = &self.jwt {
            for f in jwt_shell::due_fetches(host, &jwt.engine) {
                fetches.push(Fetch {
                    owner: FetchOwner::Jwt(f.provider),
                    cluster: f.cluster,
                    path: f.path,
                    authority: f.authority,
                    accept: "application/json",
                    timeout_ms: f.timeout_ms,
                });
            }
        }
        if let Some(remote) = self.mask.as_mut().and_then(|m| m.remote.as_mut()) {
            if remote.start_due_fetch(host.now()) {
                let source = remote.source();
                fetches.push(Fetch {
                    owner: FetchOwner::Mask,
                    cluster: source.cluster.clone(),
                    path: source.path.clone(),
                    authority: source.authority.clone(),
                    accept: "application/octet-stream",
                    timeout_ms: source.timeout_ms,
                });
            }
        }
        fetches
    }

    /// What came of dispatching `owner`'s fetch: its token, or `None` when the host refused.
    pub fn on_dispatched(&mut self, host: &dyn Host, owner: FetchOwner, token: Option<u32>) {
        if let Some(token) = token {
            self.pending.insert(token, owner);
            return;
        }
        match owner {
            FetchOwner::Jwt(provider) => {
                if let Some(jwt) = &self.jwt {
                    jwt_shell::on_jwks_dispatch_failed(host, &jwt.engine, &jwt.metrics, provider);
                }
            }
            FetchOwner::Mask => {
                if let Some(mask) = self.mask.as_mut() {
                    if let Some(remote) = mask.remote.as_mut() {
                        remote_shell::on_dispatch_failed(host, remote, &mask.fetch_metrics);
                    }
                }
            }
        }
    }

    /// Most body bytes to read of the answer to `token` (one more than its stage accepts),
    /// `None` for a token no stage is waiting for.
    pub fn response_limit(&self, token: u32) -> Option<usize> {
        self.pending.get(&token).map(|owner| match owner {
            FetchOwner::Jwt(_) => jwt_shell::JWKS_READ_LIMIT,
            FetchOwner::Mask => phi_guard_mask::remote::READ_LIMIT,
        })
    }

    /// on_http_call_response: hands the answer to the stage that made the call.
    pub fn on_http_call_response(
        &mut self,
        host: &dyn Host,
        token: u32,
        status: Option<&str>,
        body: &[u8],
        env: &dyn Fn(&str) -> Option<String>,
    ) {
        let Some(owner) = self.pending.remove(&token) else {
            return;
        };
        match owner {
            FetchOwner::Jwt(provider) => {
                if let Some(jwt) = &self.jwt {
                    jwt_shell::on_jwks_response(
                        host,
                        &jwt.engine,
                        &jwt.metrics,
                        provider,
                        status,
                        body,
                    );
                }
            }
            FetchOwner::Mask => {
                if let Some(mask) = self.mask.as_mut() {
                    if let Some(remote) = mask.remote.as_mut() {
                        remote_shell::on_response(
                            host,
                            remote,
                            &mask.fetch_metrics,
                            status,
                            body,
                            env,
                        );
                    }
                }
            }
        }
    }

    /// create_http_context: one stream through every stage.
    pub fn stream(&self) -> Stream {
        let mask = match &self.mask {
            None => MaskState::Off,
            Some(m) => {
                let config = match (&m.inline, &m.remote) {
                    (Some(config), _) => Some(Rc::clone(config)),
                    (None, Some(remote)) => remote.config(),
                    (None, None) => None,
                };
                match config {
                    Some(config) => {
                        MaskState::Masking(Box::new(MaskStream::new(config, Rc::clone(&m.metrics))))
                    }
                    // Before the first fetched set: refused at its headers.
                    None => MaskState::NoSet(Rc::clone(&m.fetch_metrics)),
                }
            }
        };
        Stream {
            configured: true,
            jwt: self.jwt.clone(),
            rbac: self.rbac.clone(),
            mask,
            audit: self.audit.clone().map(|runtime| AuditState {
                runtime,
                stream: AuditStream::default(),
            }),
            cache: RefCell::default(),
            slots: RefCell::default(),
            connections: Rc::clone(&self.connections),
            published: self.published,
            observer: None,
        }
    }
}

enum MaskState {
    Off,
    Masking(Box<MaskStream>),
    NoSet(Rc<FetchMetrics>),
}

struct AuditState {
    runtime: Rc<FilterRuntime>,
    stream: AuditStream,
}

/// One HTTP stream through the pipeline.
pub struct Stream {
    /// `false` for a stream of a pipeline that is not configured: every call is refused.
    configured: bool,
    jwt: Option<Rc<JwtStage>>,
    rbac: Option<Rc<RbacFilter>>,
    mask: MaskState,
    audit: Option<AuditState>,
    cache: RefCell<StreamCache>,
    /// The contracts the stages wrote, one typed slot each, for the stream's life.
    slots: RefCell<StateSlots>,
    connections: Rc<RefCell<ConnectionFacts>>,
    published: Published,
    observer: Option<StageObserver>,
}

/// Told which stage runs (`Some`) and when the pipeline's own code runs again (`None`): the
/// host-call count per stage (tests/hostcalls.rs) attributes calls with it.
pub type StageObserver = Rc<dyn Fn(Option<StageName>)>;

impl Stream {
    /// Reports every stage entry and exit to `observer` (measurement only).
    pub fn observe(&mut self, observer: StageObserver) {
        self.observer = Some(observer);
    }

    /// A stream created while no configuration is in force: refuses every call (fail closed).
    pub fn refusing() -> Stream {
        Stream {
            configured: false,
            jwt: None,
            rbac: None,
            mask: MaskState::Off,
            audit: None,
            cache: RefCell::default(),
            slots: RefCell::default(),
            connections: Rc::default(),
            published: Published::NONE,
            observer: None,
        }
    }

    /// Runs `f` with the stream's cached view of `host` for one callback.
    fn callback<H: StageHost, T>(
        &mut self,
        host: &H,
        f: impl FnOnce(&mut StageSet<'_>, &Cached<'_, H>) -> T,
    ) -> T {
        let Stream {
            jwt,
            rbac,
            mask,
            audit,
            cache,
            slots,
            connections,
            published,
            observer,
            ..
        } = self;
        let cached = Cached::new(host, cache, slots, connections).publishing(*published);
        let mut stages = StageSet {
            jwt,
            rbac,
            mask,
            audit,
            observer: observer.as_deref(),
        };
        let out = f(&mut stages, &cached);
        cache.borrow_mut().end_callback();
        out
    }

    pub fn on_request_headers<H: StageHost>(&mut self, host: &H) -> Flow {
        if !self.configured {
            // The pipeline refused its configuration (or has none yet): nothing passes.
            Host::log(
                host,
                LogLevel::Warn,
                "phi-guard pipeline: not configured, refusing",
            );
            host.send_grpc_error(GrpcStatus::Unavailable, &[]);
            return Flow::Pause;
        }
        self.callback(host, |s, host| s.request_headers(host))
    }

    pub fn on_request_body<H: StageHost>(
        &mut self,
        host: &H,
        body: &dyn BodyHost,
        body_size: usize,
    ) -> Flow {
        self.callback(host, |s, host| {
            s.mask(|m| m.on_request_body(host, body, body_size))
        })
    }

    pub fn on_response_headers<H: StageHost>(&mut self, host: &H, end_of_stream: bool) -> Flow {
        self.callback(host, |s, host| {
            s.mask(|m| m.on_response_headers(host, end_of_stream))
        })
    }

    pub fn on_response_body<H: StageHost>(
        &mut self,
        host: &H,
        body: &dyn BodyHost,
        body_size: usize,
        end_of_stream: bool,
    ) -> Flow {
        self.callback(host, |s, host| {
            s.mask(|m| m.on_response_body(host, body, body_size, end_of_stream))
        })
    }

    pub fn on_response_trailers<H: StageHost>(&mut self, host: &H, body: &dyn BodyHost) -> Flow {
        self.callback(host, |s, host| {
            s.mask(|m| m.on_response_trailers(host, body))
        })
    }

    /// Stream end: mask leaves its summary, then audit builds and queues the event from what
    /// every stage left (the single-stage layout's `on_log` order, mask before audit).
    pub fn on_log<H: StageHost>(&mut self, host: &H) {
        self.callback(host, |s, host| {
            s.mask(|m| {
                m.on_log(host);
                Flow::Continue
            });
            if let Some(audit) = s.audit.as_mut() {
                let observer = s.observer;
                if let Some(o) = observer {
                    o(Some(StageName::Audit));
                }
                audit.stream.on_log(host, &audit.runtime);
                if let Some(o) = observer {
                    o(None);
                }
            }
        })
    }
}

/// The stages of one stream, borrowed for one callback.
struct StageSet<'s> {
    jwt: &'s Option<Rc<JwtStage>>,
    rbac: &'s Option<Rc<RbacFilter>>,
    mask: &'s mut MaskState,
    audit: &'s mut Option<AuditState>,
    observer: Option<&'s dyn Fn(Option<StageName>)>,
}

impl StageSet<'_> {
    fn enter(&self, stage: Option<StageName>) {
        if let Some(observer) = self.observer {
            observer(stage);
        }
    }

    /// A response-side (or body) callback: only mask has work there.
    fn mask(&mut self, f: impl FnOnce(&mut MaskStream) -> Flow) -> Flow {
        if !matches!(self.mask, MaskState::Masking(_)) {
            return Flow::Continue;
        }
        self.enter(Some(StageName::Mask));
        let MaskState::Masking(m) = &mut *self.mask else {
            return Flow::Continue;
        };
        let flow = f(m);
        self.enter(None);
        flow
    }

    /// Request headers through each stage in order, the first that refuses ending the walk.
    fn request_headers<H: StageHost>(&mut self, host: &H) -> Flow {
        let flow = self.request_headers_inner(host);
        self.enter(None);
        flow
    }

    fn request_headers_inner<H: StageHost>(&mut self, host: &H) -> Flow {
        if let Some(audit) = self.audit.as_mut() {
            // Before any stage can refuse: a refused call's event has its duration too (the
            // clock is read once per callback, jwt reads it anyway).
            audit.stream.note_start(host.now_ms());
        }
        if let Some(jwt) = self.jwt {
            self.enter(Some(StageName::Jwt));
            if !jwt_shell::on_request_headers(host, &jwt.engine, &jwt.metrics) {
                return Flow::Pause;
            }
        }
        if let Some(rbac) = self.rbac {
            self.enter(Some(StageName::Rbac));
            if !rbac.on_request_headers(host) {
                return Flow::Pause;
            }
        }
        if !matches!(self.mask, MaskState::Off) {
            self.enter(Some(StageName::Mask));
        }
        match self.mask {
            MaskState::Off => {}
            MaskState::Masking(m) => {
                if m.on_request_headers(host) == Flow::Pause {
                    return Flow::Pause;
                }
            }
            MaskState::NoSet(metrics) => {
                return remote_shell::refuse_no_set(host, metrics);
            }
        }
        if let Some(audit) = self.audit.as_mut() {
            if let Some(observer) = self.observer {
                observer(Some(StageName::Audit));
            }
            if audit.stream.on_request_headers(host, &audit.runtime) == Admission::Refused {
                return Flow::Pause;
            }
        }
        Flow::Continue
    }
}
