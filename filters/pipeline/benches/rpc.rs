//! One steady-state unary `GetPatient` through `phi_guard.wasm`'s stream, natively, on the
//! fake host (the nurse's cached HS256 token, the demo rbac and mask policies, audit with its
//! queue): wall time per RPC (criterion) and heap allocations per RPC (printed first), for
//! jwt + rbac, jwt + rbac + mask and all four stages. The fake host's own copies (its header
//! list, its property map) are in both figures; what Envoy does is not. In V8 the same code
//! runs slower and each allocation costs more: read these as the module's share of an RPC,
//! and compare two builds on one machine.
//!
//! `cargo bench -p phi-guard-pipeline --bench rpc`

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use phi_guard::Pipeline;
use phi_guard_host::{FakeHost, Flow};

#[path = "../tests/support/mod.rs"]
mod support;
use support::*;

/// Counts allocations and reallocations (a realloc is a new block as often as not).
struct Counting;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

// SAFETY: every call is passed to the system allocator unchanged.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Relaxed);
        // SAFETY: the caller's contract is System's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: as above.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Relaxed);
        // SAFETY: as above.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Batches go on the audit queue once per this many RPCs, as with the root's tick.
const RPCS_PER_FLUSH: u64 = 32;

struct Chain {
    host: FakeHost,
    pipeline: Pipeline,
    token: String,
    rpcs: Cell<u64>,
}

impl Chain {
    fn new(stages: serde_json::Value) -> Self {
        let host = connected_host(audit_bus());
        // What `phi-guard render` ships for the demo: the filter state its access log prints.
        let config = serde_json::json!({
            "stages": stages,
            "filter_state": [
                "phi_guard.authn",
                "phi_guard.authz",
                "phi_guard.method",
                "phi_guard.request_id"
            ],
        })
        .to_string();
        let mut pipeline =
            Pipeline::configure(&host, config.as_bytes(), &env).unwrap_or_else(|e| panic!("{e}"));
        let _ = pipeline.due_fetches(&host);
        let chain = Chain {
            host,
            pipeline,
            token: token("nurse"),
            rpcs: Cell::new(0),
        };
        // The connection's first RPC reads what later ones find cached.
        chain.reset();
        chain.rpc();
        chain
    }

    /// The next RPC's request on the connection; the audit queue emptied.
    fn reset(&self) {
        reset_stream(&self.host, Some(&self.token));
        let mut bus = self.host.bus.borrow_mut();
        bus.queues.values_mut().for_each(|q| q.clear());
    }

    fn rpc(&self) {
        let h = &self.host;
        let mut stream = self.pipeline.stream();
        let flow = stream.on_request_headers(h);
        assert_eq!(
            flow,
            Flow::Continue,
            "the nurse is allowed, RPC {}: {:?} {}",
            self.rpcs.get(),
            h.sent_status(),
            h.log_text()
        );
        let size = h.request_body.borrow().len();
        stream.on_request_body(h, h, size);
        respond(h);
        stream.on_response_headers(h, false);
        let size = h.response_body.borrow().len();
        stream.on_response_body(h, h, size, false);
        stream.on_response_trailers(h, h);
        stream.on_log(h);
        drop(stream);
        self.rpcs.set(self.rpcs.get() + 1);
        if self.rpcs.get().is_multiple_of(RPCS_PER_FLUSH) {
            self.pipeline.flush(h);
        }
    }

    /// Allocations per RPC over `n` RPCs, the requests' setup not counted.
    fn allocations(&self, n: u64) -> f64 {
        let mut total = 0;
        for _ in 0..n {
            self.reset();
            let before = ALLOCATIONS.load(Relaxed);
            self.rpc();
            total += ALLOCATIONS.load(Relaxed) - before;
        }
        total as f64 / n as f64
    }
}

fn layouts() -> [(&'static str, serde_json::Value); 3] {
    let jwt = serde_json::json!({ "jwt": jwt_config() });
    let rbac = serde_json::json!({ "rbac": rbac_config() });
    let mask = serde_json::json!({ "mask": mask_config() });
    let audit = serde_json::json!({ "audit": audit_config() });
    [
        ("jwt_rbac", serde_json::json!([jwt, rbac])),
        ("jwt_rbac_mask", serde_json::json!([jwt, rbac, mask])),
        ("all_four", serde_json::json!([jwt, rbac, mask, audit])),
    ]
}

fn benches(c: &mut Criterion) {
    for (name, stages) in layouts() {
        let chain = Chain::new(stages);
        println!(
            "pipeline/{name}: {:.1} heap allocations per RPC",
            chain.allocations(2_000)
        );
    }
    let mut g = c.benchmark_group("pipeline");
    for (name, stages) in layouts() {
        let chain = Chain::new(stages);
        g.bench_function(name, |b| {
            b.iter_batched_ref(
                || chain.reset(),
                |()| {
                    chain.rpc();
                    black_box(chain.rpcs.get())
                },
                // One request per routine: the stream consumes what setup left on the host.
                BatchSize::PerIteration,
            )
        });
    }
    g.finish();
}

criterion_group!(pipeline, benches);
criterion_main!(pipeline);
