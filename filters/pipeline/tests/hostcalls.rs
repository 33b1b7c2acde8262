//! The pipeline over a recording host, natively: an allowed unary GetPatient is masked by the
//! caller's role and audited; a denied call and a call without a token are refused and still
//! audited; every filter-state key the access log and Envoy read is still written. And the
//! host calls each stage makes per allowed unary RPC, in the single-stage layout (each filter's
//! shell on its own, as its module runs it) and in the pipeline, counted call by call: the
//! table in docs/PERFORMANCE.md (`cargo test -p phi-guard-pipeline --test hostcalls --
//! --nocapture` prints it).

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::rc::Rc;

use phi_guard::{Pipeline, StageName};
use phi_guard_audit::config::FilterConfig;
use phi_guard_audit::filter::{Admission, AuditStream, FilterRuntime};
use phi_guard_common::{state, AuthzDecision, GrpcStatus, UnixSeconds, Verdict};
use phi_guard_host::{
    bus, read_state, BodyHost, Bus, Clock, FakeHost, Flow, Host, LogLevel, Queues, SharedData,
    SharedDataError, Trailers, UnixMillis,
};
use phi_guard_mask::remote::MaskSource;
use phi_guard_mask::shell::{MaskStream, Metrics as MaskMetrics};

mod support;
use support::*;

// ---------------------------------------------------------------------------------------------
// The recording host: a FakeHost on the audit bus (headers, properties, clock, trailers,
// queues, shared data, body buffers), counting every call by the stage it is made for.

struct Recorder {
    base: FakeHost,
    /// The caller's role in each RPC's token; `None`: no token.
    role: Option<String>,
    /// The stage calls are attributed to right now.
    stage: Cell<Option<&'static str>>,
    /// (stage, host call) → count.
    calls: RefCell<BTreeMap<(&'static str, &'static str), u32>>,
}

impl Recorder {
    fn new(bus: Bus, role: Option<&str>) -> Self {
        let base = connected_host(bus);
        let recorder = Recorder {
            base,
            role: role.map(str::to_string),
            stage: Cell::new(None),
            calls: RefCell::default(),
        };
        recorder.begin_stream();
        recorder
    }

    /// A new RPC on the same connection: its request, no response yet, no filter state.
    fn begin_stream(&self) {
        let token = self.role.as_deref().map(token);
        reset_stream(&self.base, token.as_deref());
    }

    fn count(&self, call: &'static str) {
        let stage = self.stage.get().unwrap_or("pipeline");
        *self.calls.borrow_mut().entry((stage, call)).or_default() += 1;
    }

    fn total(&self, stage: &str) -> u32 {
        self.calls
            .borrow()
            .iter()
            .filter(|((s, _), _)| *s == stage)
            .map(|(_, n)| n)
            .sum()
    }

    fn respond(&self) {
        respond(&self.base);
    }

    /// Every event on the audit queue, in order, out of its batches.
    fn events(&self) -> Vec<serde_json::Value> {
        let bus = self.base.bus.borrow();
        bus.queues
            .values()
            .flat_map(|q| q.iter())
            .flat_map(|item| phi_guard_audit::batch::decode(item).unwrap())
            .map(|b| serde_json::from_slice(b.event).unwrap())
            .collect()
    }
}

impl Host for Recorder {
    fn request_header(&self, name: &str) -> Option<String> {
        self.count("get_header");
        self.base.request_header(name)
    }
    fn request_headers(&self) -> Vec<(String, String)> {
        self.count("get_headers");
        self.base.request_headers()
    }
    fn set_request_header(&self, name: &str, value: &str) {
        self.count("set_header");
        self.base.set_request_header(name, value)
    }
    fn remove_request_header(&self, name: &str) {
        self.count("remove_header");
        self.base.remove_request_header(name)
    }
    fn response_header(&self, name: &str) -> Option<String> {
        self.count("get_header");
        self.base.response_header(name)
    }
    fn remove_response_header(&self, name: &str) {
        self.count("remove_header");
        self.base.remove_response_header(name)
    }
    fn property(&self, path: &[&str]) -> Option<Vec<u8>> {
        self.count(if path.len() == 1 && path[0].starts_with("phi_guard.") {
            "get_filter_state"
        } else {
            "get_property"
        });
        self.base.property(path)
    }
    fn set_property(&self, path: &[&str], value: &[u8]) {
        self.count("set_filter_state");
        self.base.set_property(path, value)
    }
    fn send_grpc_error(&self, status: GrpcStatus, extra_headers: &[(&str, &str)]) {
        self.count("send_local_reply");
        self.base.send_grpc_error(status, extra_headers)
    }
    fn now(&self) -> UnixSeconds {
        self.count("get_time");
        self.base.now()
    }
    fn log(&self, level: LogLevel, message: &str) {
        self.count("log");
        self.base.log(level, message)
    }
    fn define_counter(&self, name: &str) -> Option<u32> {
        self.base.define_counter(name)
    }
    fn increment_counter(&self, id: u32, by: i64) {
        self.count("increment_metric");
        self.base.increment_counter(id, by)
    }
}

impl SharedData for Recorder {
    fn get_shared_data_cas(&self, key: &str) -> Result<Option<(Vec<u8>, u32)>, SharedDataError> {
        self.count("get_shared_data");
        self.base.get_shared_data_cas(key)
    }
    fn set_shared_data_cas(
        &self,
        key: &str,
        value: &[u8],
        cas: Option<u32>,
    ) -> Result<(), SharedDataError> {
        self.count("set_shared_data");
        self.base.set_shared_data_cas(key, value, cas)
    }
}

impl Clock for Recorder {
    fn now_ms(&self) -> UnixMillis {
        self.count("get_time");
        self.base.now_ms()
    }
}

impl Trailers for Recorder {
    fn response_trailer(&self, name: &str) -> Option<String> {
        self.count("get_header");
        self.base.response_trailer(name)
    }
}

impl Queues for Recorder {
    fn register_queue(&self, name: &str) -> Option<u32> {
        self.count("register_queue");
        self.base.register_queue(name)
    }
    fn resolve_queue(&self, vm_id: &str, name: &str) -> Option<u32> {
        self.count("resolve_queue");
        self.base.resolve_queue(vm_id, name)
    }
    fn enqueue(&self, queue_id: u32, bytes: &[u8]) -> bool {
        self.count("enqueue");
        self.base.enqueue(queue_id, bytes)
    }
    fn dequeue(&self, queue_id: u32) -> Option<Vec<u8>> {
        self.count("dequeue");
        self.base.dequeue(queue_id)
    }
}

impl BodyHost for Recorder {
    fn request_body(&self, start: usize, size: usize) -> Option<Vec<u8>> {
        self.count("get_body");
        self.base.request_body(start, size)
    }
    fn response_body(&self, start: usize, size: usize) -> Option<Vec<u8>> {
        self.count("get_body");
        self.base.response_body(start, size)
    }
    fn set_response_body(&self, start: usize, size: usize, value: &[u8]) {
        self.count("set_body");
        self.base.set_response_body(start, size, value)
    }
    fn set_response_trailer(&self, name: &str, value: &str) {
        self.count("set_trailer");
        self.base.set_response_trailer(name, value)
    }
    fn reset_response(&self) {
        self.count("reset");
        self.base.reset_response()
    }
}

// ---------------------------------------------------------------------------------------------
// One unary RPC through each layout.

/// The stage the root's tick is counted under: what it costs is paid once per batch of up to
/// `batch_max_events` RPCs, not per RPC.
const PER_BATCH: &str = "audit tick";

/// The pipeline layout: one module, one stream, then the root's tick (audit queues its
/// batch). Returns the request flow.
fn run_pipeline(host: &Rc<Recorder>) -> Flow {
    run_pipeline_with(host, &pipeline_config())
}

fn run_pipeline_with(host: &Rc<Recorder>, config: &[u8]) -> Flow {
    run_pipeline_rpcs(host, config, 1)
}

/// `rpcs` RPCs on one connection through one configured pipeline; the calls of the last are
/// left counted, and its flow returned.
fn run_pipeline_rpcs(host: &Rc<Recorder>, config: &[u8], rpcs: usize) -> Flow {
    let mut pipeline =
        Pipeline::configure(host.as_ref(), config, &env).unwrap_or_else(|e| panic!("{e}"));
    let _ = pipeline.due_fetches(host.as_ref());
    let mut flow = Flow::Pause;
    for rpc in 0..rpcs {
        if rpc > 0 {
            host.begin_stream();
        }
        host.calls.borrow_mut().clear();
        flow = pipeline_rpc(host, &mut pipeline);
    }
    flow
}

fn pipeline_rpc(host: &Rc<Recorder>, pipeline: &mut Pipeline) -> Flow {
    let mut stream = pipeline.stream();
    let observer = Rc::clone(host);
    stream.observe(Rc::new(move |stage: Option<StageName>| {
        observer.stage.set(stage.map(StageName::name));
    }));
    let h = host.as_ref();
    let flow = stream.on_request_headers(h);
    if flow == Flow::Continue {
        let size = h.base.request_body.borrow().len();
        stream.on_request_body(h, h, size);
        h.respond();
        stream.on_response_headers(h, false);
        let size = h.base.response_body.borrow().len();
        stream.on_response_body(h, h, size, false);
        stream.on_response_trailers(h, h);
    }
    stream.on_log(h);
    h.stage.set(Some(PER_BATCH));
    pipeline.flush(h);
    h.stage.set(None);
    flow
}

/// The single-stage layout: four modules, each filter's shell as its own `wasm.rs` drives it;
/// `rpcs` RPCs on one connection, the calls of the last left counted.
fn run_single(h: &Recorder, rpcs: usize) -> Flow {
    let jwt_doc = jwt_config().to_string().into_bytes();
    let (engine, jwt_metrics) = phi_guard_jwt::shell::configure(h, Some(&jwt_doc), &env).unwrap();
    let engine = RefCell::new(engine);
    let rbac =
        phi_guard_rbac::shell::Filter::configure(h, rbac_config().to_string().as_bytes()).unwrap();
    let Some(MaskSource::Inline(mask_cfg)) =
        phi_guard_mask::remote_shell::configure(h, mask_config().to_string().as_bytes(), &env)
    else {
        panic!("inline mask config");
    };
    let (mask_cfg, mask_metrics) = (Rc::new(*mask_cfg), Rc::new(MaskMetrics::define(h)));
    let audit_rt = FilterRuntime::new(
        h,
        FilterConfig::parse(audit_config().to_string().as_bytes()).unwrap(),
    );
    let mut flow = Flow::Pause;
    for rpc in 0..rpcs {
        if rpc > 0 {
            h.begin_stream();
        }
        h.calls.borrow_mut().clear();
        let mut mask = MaskStream::new(Rc::clone(&mask_cfg), Rc::clone(&mask_metrics));
        flow = single_rpc(h, &engine, &jwt_metrics, &rbac, &mut mask, &audit_rt);
    }
    flow
}

fn single_rpc(
    h: &Recorder,
    engine: &RefCell<phi_guard_jwt::engine::Engine>,
    jwt_metrics: &phi_guard_jwt::shell::Metrics,
    rbac: &phi_guard_rbac::shell::Filter,
    mask: &mut MaskStream,
    audit_rt: &FilterRuntime,
) -> Flow {
    let mut audit = AuditStream::default();
    let at = |stage: &'static str| h.stage.set(Some(stage));

    at("jwt");
    let mut flow = if phi_guard_jwt::shell::on_request_headers(h, engine, jwt_metrics) {
        Flow::Continue
    } else {
        Flow::Pause
    };
    if flow == Flow::Continue {
        at("rbac");
        if !rbac.on_request_headers(h) {
            flow = Flow::Pause;
        }
    }
    if flow == Flow::Continue {
        at("mask");
        flow = mask.on_request_headers(h);
    }
    if flow == Flow::Continue {
        at("audit");
        if audit.on_request_headers(h, audit_rt) == Admission::Refused {
            flow = Flow::Pause;
        }
    }
    if flow == Flow::Continue {
        at("mask");
        let size = h.base.request_body.borrow().len();
        mask.on_request_body(h, h, size);
        h.respond();
        mask.on_response_headers(h, false);
        let size = h.base.response_body.borrow().len();
        mask.on_response_body(h, h, size, false);
        mask.on_response_trailers(h, h);
    }
    at("mask");
    mask.on_log(h);
    at("audit");
    audit.on_log(h, audit_rt);
    at(PER_BATCH);
    audit_rt.on_tick(h);
    h.stage.set(None);
    flow
}

/// An audit event without its time, the one field two runs of the same RPC differ in.
fn without_time(mut event: serde_json::Value) -> serde_json::Value {
    event["time"] = serde_json::Value::Null;
    event
}

fn authz(host: &Recorder) -> AuthzDecision {
    read_state(&host.base).unwrap().unwrap()
}

#[test]
fn an_allowed_call_is_masked_by_role_and_audited() {
    let host = Rc::new(Recorder::new(audit_bus(), Some("nurse")));
    assert_eq!(run_pipeline(&host), Flow::Continue);
    assert_eq!(host.base.sent_status(), None);
    // The spoofed role header is gone before the service sees the request.
    assert_eq!(host.base.request_header("x-phi-guard-role"), None);
    // The nurse sees the last four digits of the SSN, never the whole number.
    let body = host.base.response_body.borrow().clone();
    let text = String::from_utf8_lossy(&body);
    assert!(
        !text.contains(phi_guard_proto::demo::canary::SSN),
        "SSN leaked"
    );
    assert!(text.contains("***-**-1234"), "SSN not partially masked");
    assert_eq!(host.base.response_header("content-length"), None);
    // Every key the access log and a later filter read is written to the host.
    for key in [
        state::IDENTITY,
        state::AUTHN,
        state::AUTHZ,
        state::MASK,
        state::RESOURCE,
        state::METHOD,
        state::REQUEST_ID,
    ] {
        assert!(host.base.property(&[key]).is_some(), "{key} not written");
    }
    let decision = authz(&host);
    assert_eq!(
        (decision.decision, decision.role.as_str()),
        (Verdict::Allow, "nurse")
    );
    let events = host.events();
    assert_eq!(events.len(), 1, "{events:?}");
    let e = &events[0];
    assert_eq!(e["outcome"]["authz"]["decision"], "allow");
    assert_eq!(e["outcome"]["authz"]["rule"], "frontend-clinical-reads");
    assert_eq!(e["outcome"]["authn"]["result"], "ok");
    assert_eq!(e["who"]["role"], "nurse");
    assert_eq!(e["who"]["subject"], "nurse");
    assert_eq!(e["who"]["peer"], FE);
    assert_eq!(e["what"]["resource_id"], "p-0001");
    assert_eq!(e["what"]["method"], "GetPatient");
    assert_eq!(e["outcome"]["grpc_status"], 0);
    assert_eq!(e["outcome"]["mask"]["messages"], 1);
    assert_eq!(e["correlation"]["request_id"], "req-0001");
    // No token in any log line.
    assert!(!host.base.log_text().contains("eyJ"));
}

#[test]
fn the_billing_clerk_sees_everything() {
    let host = Rc::new(Recorder::new(audit_bus(), Some("billing")));
    assert_eq!(run_pipeline(&host), Flow::Continue);
    let body = host.base.response_body.borrow().clone();
    assert!(String::from_utf8_lossy(&body).contains(phi_guard_proto::demo::canary::SSN));
    assert_eq!(host.events()[0]["who"]["role"], "billing");
}

#[test]
fn a_denied_call_is_refused_and_audited() {
    // research may not read through the EHR frontend.
    let host = Rc::new(Recorder::new(audit_bus(), Some("research")));
    assert_eq!(run_pipeline(&host), Flow::Pause);
    assert_eq!(host.base.sent_status(), Some(GrpcStatus::PermissionDenied));
    assert_eq!(authz(&host).decision, Verdict::Deny);
    let events = host.events();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["outcome"]["authz"]["decision"], "deny");
    assert_eq!(events[0]["outcome"]["authn"]["result"], "ok");
    // Timed from the stream's start though audit's own request headers never ran (the fake
    // clock stands still), and not from Envoy's attribute.
    assert_eq!(events[0]["outcome"]["duration_ms"], 0);
    assert_eq!(host.base.reads_of("request.duration"), 0);
}

#[test]
fn a_call_without_a_token_is_refused_and_audited() {
    let host = Rc::new(Recorder::new(audit_bus(), None));
    assert_eq!(run_pipeline(&host), Flow::Pause);
    assert_eq!(host.base.sent_status(), Some(GrpcStatus::Unauthenticated));
    assert_eq!(host.base.property(&[state::AUTHZ]), None);
    let events = host.events();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["outcome"]["authn"]["result"], "failed");
    assert_eq!(events[0]["outcome"]["authn"]["reason"], "missing");
    assert_eq!(events[0]["outcome"]["duration_ms"], 0);
}

/// The stages after jwt, as a pipeline placed after jwt's single-stage module.
fn pipeline_without_jwt() -> Vec<u8> {
    serde_json::json!({"stages": [
        {"rbac": rbac_config()}, {"mask": mask_config()}, {"audit": audit_config()}
    ]})
    .to_string()
    .into_bytes()
}

/// No stage of the pipeline wrote the identity: its stages read what the module before it
/// left in filter state, through the same `read_state`.
#[test]
fn a_module_before_the_pipeline_hands_its_contracts_over() {
    let host = Rc::new(Recorder::new(audit_bus(), Some("nurse")));
    let jwt_doc = jwt_config().to_string().into_bytes();
    let (engine, metrics) =
        phi_guard_jwt::shell::configure(host.as_ref(), Some(&jwt_doc), &env).unwrap();
    let engine = RefCell::new(engine);
    assert!(phi_guard_jwt::shell::on_request_headers(
        host.as_ref(),
        &engine,
        &metrics
    ));
    assert_eq!(
        run_pipeline_with(&host, &pipeline_without_jwt()),
        Flow::Continue
    );
    assert_eq!(host.base.sent_status(), None);
    let body = host.base.response_body.borrow().clone();
    let text = String::from_utf8_lossy(&body);
    assert!(
        !text.contains(phi_guard_proto::demo::canary::SSN),
        "SSN leaked"
    );
    assert!(text.contains("***-**-1234"), "not masked for the nurse");
    assert_eq!(authz(&host).role, "nurse");
    let e = &host.events()[0];
    assert_eq!(e["outcome"]["authn"]["result"], "ok");
    assert_eq!(e["outcome"]["authz"]["decision"], "allow");
    assert_eq!(e["who"]["subject"], "nurse");
}

/// An identity the module before the pipeline left unreadable is no end user: rbac refuses
/// (UNAUTHENTICATED), as in the single-stage layout.
#[test]
fn an_unreadable_contract_from_before_the_pipeline_fails_closed() {
    let host = Rc::new(Recorder::new(audit_bus(), Some("nurse")));
    host.base.insert_property(
        &[state::IDENTITY],
        br#"{"subject":"nurse","roles":["admin"]}"#,
    );
    assert_eq!(
        run_pipeline_with(&host, &pipeline_without_jwt()),
        Flow::Pause
    );
    assert_eq!(host.base.sent_status(), Some(GrpcStatus::Unauthenticated));
    assert_eq!(authz(&host).decision, Verdict::Unauthenticated);
    assert!(host
        .base
        .log_text()
        .contains("identity filter state unreadable"));
    let e = &host.events()[0];
    assert_eq!(e["who"].get("subject"), None);
}

#[test]
fn without_the_audit_service_calls_are_refused() {
    let host = Rc::new(Recorder::new(bus(), Some("nurse")));
    assert_eq!(run_pipeline(&host), Flow::Pause);
    assert_eq!(host.base.sent_status(), Some(GrpcStatus::Unavailable));
    assert!(host.events().is_empty());
}

/// The shipped pipeline's `filter_state`: what `envoy/inbound.pipeline.yaml`'s access log
/// prints (`phi-guard render` derives it from the template).
const LOGGED: [&str; 4] = [state::AUTHN, state::AUTHZ, state::METHOD, state::REQUEST_ID];

#[test]
fn the_pipeline_writes_only_the_filter_state_it_is_told_to() {
    let with = |published: Option<&[&str]>| {
        let mut doc: serde_json::Value = serde_json::from_slice(&pipeline_config()).unwrap();
        if let Some(keys) = published {
            doc["filter_state"] = serde_json::json!(keys);
        }
        let host = Rc::new(Recorder::new(audit_bus(), Some("nurse")));
        assert_eq!(
            run_pipeline_rpcs(&host, doc.to_string().as_bytes(), 2),
            Flow::Continue
        );
        host
    };
    let (all, logged, none) = (with(None), with(Some(&LOGGED)), with(Some(&[])));
    for key in state::KEYS {
        assert!(all.base.property(&[key]).is_some(), "{key} not written");
        assert_eq!(
            logged.base.property(&[key]).is_some(),
            LOGGED.contains(&key),
            "{key}"
        );
        assert_eq!(none.base.property(&[key]), None, "{key}");
        if LOGGED.contains(&key) {
            assert_eq!(
                logged.base.property(&[key]),
                all.base.property(&[key]),
                "{key}"
            );
        }
    }
    // The stages hand every value over in memory all the same: the same answer, the same
    // decision, the same audit event.
    for host in [&logged, &none] {
        assert_eq!(
            *host.base.response_body.borrow(),
            *all.base.response_body.borrow()
        );
        assert_eq!(
            without_time(host.events().last().unwrap().clone()),
            without_time(all.events().last().unwrap().clone())
        );
    }
    let writes = |r: &Recorder| {
        r.calls
            .borrow()
            .iter()
            .filter(|((_, call), _)| *call == "set_filter_state")
            .map(|(_, n)| n)
            .sum::<u32>()
    };
    assert_eq!(
        (writes(&all), writes(&logged), writes(&none)),
        (7, 4, 0),
        "filter-state writes per steady-state RPC"
    );
}

/// Audit as its own module after a jwt + rbac + mask pipeline (an Istio mesh's layout,
/// envoy/istio/pipeline.wasmplugin.yaml): however short the pipeline's `filter_state`, what
/// audit reads is written, and its event is the one the four-stage pipeline records.
#[test]
fn a_module_after_the_pipeline_gets_what_it_reads() {
    let host = Rc::new(Recorder::new(audit_bus(), Some("nurse")));
    let doc = serde_json::json!({"stages": [
        {"jwt": jwt_config()}, {"rbac": rbac_config()}, {"mask": mask_config()}
    ], "filter_state": []});
    assert_eq!(
        run_pipeline_with(&host, doc.to_string().as_bytes()),
        Flow::Continue
    );
    let audit_rt = FilterRuntime::new(
        host.as_ref(),
        FilterConfig::parse(audit_config().to_string().as_bytes()).unwrap(),
    );
    let mut audit = AuditStream::default();
    assert_eq!(
        audit.on_request_headers(host.as_ref(), &audit_rt),
        Admission::Continue
    );
    audit.on_log(host.as_ref(), &audit_rt);
    audit_rt.on_tick(host.as_ref());
    let after = host.events().last().unwrap().clone();

    let whole = Rc::new(Recorder::new(audit_bus(), Some("nurse")));
    assert_eq!(run_pipeline(&whole), Flow::Continue);
    assert_eq!(
        without_time(after.clone()),
        without_time(whole.events()[0].clone())
    );
    assert_eq!(after["who"]["subject"], "nurse");
    assert_eq!(after["what"]["resource_id"], "p-0001");
    assert_eq!(after["outcome"]["mask"]["messages"], 1);
    // Only what audit reads was written: not the access log's method and request id.
    assert_eq!(host.base.property(&[state::METHOD]), None);
    assert_eq!(host.base.property(&[state::REQUEST_ID]), None);
}

#[test]
fn a_stage_config_error_names_the_stage_and_field() {
    let host = Recorder::new(audit_bus(), None);
    let doc = serde_json::json!({"stages": [{"rbac": {"version": "v", "mode": "enforce",
        "rules": [{"name": "r", "action": "allow", "bogus": 1}]}}]});
    let err = Pipeline::configure(&host, doc.to_string().as_bytes(), &env)
        .err()
        .expect("refused");
    assert!(err.field.starts_with("stages[0].rbac"), "{err}");
    let doc = serde_json::json!({"stages": [{"jwt": {"providers": []}}]});
    let err = Pipeline::configure(&host, doc.to_string().as_bytes(), &env)
        .err()
        .expect("refused");
    assert_eq!(err.field, "stages[0].jwt", "{err}");
    let doc = serde_json::json!({"stages": [{"audit": {"queue": ""}}]});
    let err = Pipeline::configure(&host, doc.to_string().as_bytes(), &env)
        .err()
        .expect("refused");
    assert_eq!(err.field, "stages[0].audit.queue", "{err}");
}

#[test]
fn host_calls_per_allowed_unary_rpc_single_and_pipeline() {
    // The first RPC on a fresh VM and connection, then the steady state: the second RPC on
    // the same connection (what every further RPC costs).
    let both_layouts = |rpcs: usize| {
        let single = Recorder::new(audit_bus(), Some("nurse"));
        assert_eq!(run_single(&single, rpcs), Flow::Continue);
        let piped = Rc::new(Recorder::new(audit_bus(), Some("nurse")));
        assert_eq!(
            run_pipeline_rpcs(&piped, &pipeline_config(), rpcs),
            Flow::Continue
        );
        (single, piped)
    };
    let (first_single, first_piped) = both_layouts(1);
    let (single, piped) = both_layouts(2);
    // Both layouts answer the same: same body, same event (but for the time fields).
    assert_eq!(
        *single.base.response_body.borrow(),
        *piped.base.response_body.borrow()
    );
    assert_eq!(
        without_time(single.events().last().unwrap().clone()),
        without_time(piped.events().last().unwrap().clone())
    );
    for key in [
        state::IDENTITY,
        state::AUTHN,
        state::AUTHZ,
        state::MASK,
        state::RESOURCE,
    ] {
        assert_eq!(
            single.base.property(&[key]),
            piped.base.property(&[key]),
            "{key}"
        );
    }

    let all = |r: &Recorder| {
        ["jwt", "rbac", "mask", "audit", "pipeline"]
            .iter()
            .map(|s| r.total(s))
            .sum::<u32>()
    };
    println!(
        "\nthe first RPC on a fresh VM and connection: {} single-stage, {} pipeline",
        all(&first_single),
        all(&first_piped)
    );
    println!("\nhost calls per allowed unary GetPatient (nurse), steady state, by stage:");
    println!("{:<8} {:>7} {:>9}", "stage", "single", "pipeline");
    let mut totals = (0, 0);
    for stage in ["jwt", "rbac", "mask", "audit", "pipeline"] {
        let (s, p) = (single.total(stage), piped.total(stage));
        totals.0 += s;
        totals.1 += p;
        println!("{stage:<8} {s:>7} {p:>9}");
    }
    println!("{:<8} {:>7} {:>9}", "total", totals.0, totals.1);
    println!(
        "{PER_BATCH} (once per batch, not per RPC): {} / {}",
        single.total(PER_BATCH),
        piped.total(PER_BATCH)
    );
    println!("\nby call (single / pipeline):");
    let mut kinds: BTreeMap<&str, (u32, u32)> = BTreeMap::new();
    for ((stage, call), n) in single.calls.borrow().iter() {
        if *stage != PER_BATCH {
            kinds.entry(call).or_default().0 += n;
        }
    }
    for ((stage, call), n) in piped.calls.borrow().iter() {
        if *stage != PER_BATCH {
            kinds.entry(call).or_default().1 += n;
        }
    }
    for (call, (s, p)) in &kinds {
        println!("{call:<18} {s:>4} {p:>4}");
    }
    println!("\npipeline, by stage and call:");
    for ((stage, call), n) in piped.calls.borrow().iter() {
        println!("{stage:<8} {call:<18} {n:>3}");
    }
    assert!(totals.1 < totals.0, "the pipeline makes fewer host calls");
    // Every filter-state key read here was written by an earlier stage of the stream: all of
    // them are answered from memory.
    let (_, state_reads) = kinds.get("get_filter_state").copied().unwrap_or_default();
    assert_eq!(state_reads, 0, "{kinds:?}");
}
