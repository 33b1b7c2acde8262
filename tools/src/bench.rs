//! The pure half of `phi-bench` (scripts/bench): the Envoy configurations it compares, built
//! from `envoy/inbound.yaml` so every variant keeps the same listener, TLS, limits and access
//! logs and differs only in its HTTP filters; and the statistics and targets it reports.
//!
//! Measuring (processes, load, /proc) lives in `src/bin/bench.rs`.

use std::collections::BTreeMap;

use serde::Serialize;

/// The native filters the comparison configs use, equivalent to the demo's phi-guard config:
/// jwt_authn for the same provider, RBAC with the rules of `filters/rbac/policy.demo.json`.
const NATIVE_JWT_AUTHN: &str = include_str!("../../envoy/bench/native_jwt_authn.yaml");
const NATIVE_RBAC: &str = include_str!("../../envoy/bench/native_rbac.yaml");
/// The line of [`NATIVE_JWT_AUTHN`] that turns jwt_authn's verified-token cache on.
const JWT_CACHE_LINE: &str = "jwt_cache_config: {jwt_cache_size: 4096}";

/// One HTTP filter of a variant, before the router.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Filter {
    /// `phi_guard.<name>` exactly as `envoy/inbound.yaml` configures it.
    PhiGuard(&'static str),
    NativeJwtAuthn {
        cache: bool,
    },
    NativeRbac,
    /// `phi_guard` (filters/pipeline, one module) running these stages, each with the config
    /// its single-stage filter has in `envoy/inbound.yaml`.
    Pipeline(&'static [&'static str]),
    /// [`Filter::Pipeline`] with `phi_guard.wasm` from another build's directory (`phi-bench
    /// --baseline DIR`): the same stages and configs, another commit's module, in one run.
    PipelineAt {
        stages: &'static [&'static str],
        dir: &'static str,
    },
    /// The measuring module (`tools/hostcost`): `n` host calls of `kind` per request, then
    /// on to the router; see [`hostcost_variants`].
    HostCost {
        kind: &'static str,
        n: u32,
    },
}

/// An Envoy configuration under test.
#[derive(Debug, Clone)]
pub struct Variant {
    pub id: &'static str,
    pub label: &'static str,
    pub filters: Vec<Filter>,
}

impl Variant {
    /// Whether the config needs the audit service (bootstrap extension).
    fn audits(&self) -> bool {
        self.filters.iter().any(|f| match f {
            Filter::PhiGuard(name) => *name == "audit",
            Filter::Pipeline(stages) | Filter::PipelineAt { stages, .. } => {
                stages.contains(&"audit")
            }
            _ => false,
        })
    }

    /// `inbound` (the rendered `envoy/inbound.yaml`) with this variant's HTTP filters.
    pub fn render(&self, inbound: &str) -> Result<String, String> {
        let (head, blocks, tail) = split_http_filters(inbound)?;
        let mut out = String::from(head);
        for filter in &self.filters {
            match filter {
                Filter::PhiGuard(name) => {
                    let wanted = format!("phi_guard.{name}");
                    let block = blocks
                        .iter()
                        .find(|(n, _)| *n == wanted)
                        .ok_or_else(|| format!("envoy/inbound.yaml has no filter {wanted}"))?;
                    out.push_str(block.1);
                }
                Filter::NativeJwtAuthn { cache: true } => out.push_str(NATIVE_JWT_AUTHN),
                Filter::NativeJwtAuthn { cache: false } => {
                    let without: String = NATIVE_JWT_AUTHN
                        .lines()
                        .filter(|l| l.trim() != JWT_CACHE_LINE)
                        .map(|l| format!("{l}\n"))
                        .collect();
                    out.push_str(&without);
                }
                Filter::NativeRbac => out.push_str(NATIVE_RBAC),
                Filter::Pipeline(stages) => {
                    // As `phi-guard render` ships it: writing to Envoy only the filter state
                    // the access log prints.
                    let logged: Vec<&str> =
                        crate::render::logged_filter_state(inbound, "envoy/inbound.yaml")
                            .map_err(|e| e.to_string())?
                            .keys()
                            .collect();
                    out.push_str(&pipeline_block(&blocks, stages, None, Some(&logged))?)
                }
                // Another commit's module may not know `filter_state`: it writes them all.
                Filter::PipelineAt { stages, dir } => {
                    out.push_str(&pipeline_block(&blocks, stages, Some(dir), None)?)
                }
                Filter::HostCost { kind, n } => {
                    out.push_str(&hostcost_block(&wasm_dir_of(&blocks)?, kind, *n))
                }
            }
        }
        let router = blocks
            .iter()
            .find(|(n, _)| *n == "envoy.filters.http.router")
            .ok_or("envoy/inbound.yaml has no router")?;
        out.push_str(router.1);
        out.push_str(tail);
        if !self.audits() {
            out = without_bootstrap_extensions(&out)?;
        }
        // The baseline build's audit service too: the service's work is part of the chain's.
        let baseline = self.filters.iter().find_map(|f| match f {
            Filter::PipelineAt { dir, .. } => Some(*dir),
            _ => None,
        });
        if let Some(dir) = baseline {
            let ours = format!("\"{}/phi_guard_audit.wasm\"", wasm_dir_of(&blocks)?);
            out = out.replace(&ours, &format!("\"{dir}/phi_guard_audit.wasm\""));
        }
        Ok(out)
    }
}

/// The `phi_guard` pipeline filter running `stages`, from the single-stage blocks of a rendered
/// `envoy/inbound.yaml`: each stage's JSON, the wasm directory and the secrets' variables as
/// they are there (what `envoy/inbound.pipeline.yaml` renders to for the same project).
fn pipeline_block(
    blocks: &[(&str, &str)],
    stages: &[&str],
    module_dir: Option<&str>,
    filter_state: Option<&[&str]>,
) -> Result<String, String> {
    let block = |stage: &str| {
        let name = format!("phi_guard.{stage}");
        blocks
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, b)| *b)
            .ok_or_else(|| format!("envoy/inbound.yaml has no filter {name}"))
    };
    let mut configs = Vec::new();
    let mut env_keys: Vec<String> = Vec::new();
    for stage in stages {
        let text = block(stage)?;
        let config = crate::stack::embedded_filter_config(text, stage)
            .ok_or_else(|| format!("phi_guard.{stage}: no JSON configuration (render it first)"))?;
        configs.push(serde_json::json!({ *stage: config }));
        if *stage != "audit" {
            for line in text.lines() {
                if let Some(list) = line.trim().strip_prefix("host_env_keys: [") {
                    for key in list.trim_end_matches(']').split(',') {
                        let key = key.trim().to_string();
                        if !key.is_empty() && !env_keys.contains(&key) {
                            env_keys.push(key);
                        }
                    }
                }
            }
        }
    }
    let wasm_dir = match module_dir {
        Some(dir) => dir.to_string(),
        None => wasm_dir_of(blocks)?,
    };
    let mut envelope = serde_json::json!({ "stages": configs });
    if let Some(keys) = filter_state {
        envelope["filter_state"] = serde_json::json!(keys);
    }
    let config = serde_json::to_string_pretty(&envelope).map_err(|e| e.to_string())?;
    let mut out = format!(
        "          - name: phi_guard
            typed_config:
              \"@type\": type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm
              config:
                name: phi_guard
                root_id: phi_guard
                failure_policy: FAIL_CLOSED
                vm_config:
                  vm_id: phi_guard_audit
                  runtime: envoy.wasm.runtime.v8
                  environment_variables:
                    host_env_keys: [{}]
                  code: {{local: {{filename: \"{wasm_dir}/phi_guard.wasm\"}}}}
                configuration:
                  \"@type\": type.googleapis.com/google.protobuf.StringValue
                  value: |
",
        env_keys.join(", ")
    );
    for line in config.lines() {
        out.push_str("                    ");
        out.push_str(line);
        out.push('\n');
    }
    Ok(out)
}

/// The directory of the wasm modules, as the rendered jwt filter names its module.
fn wasm_dir_of(blocks: &[(&str, &str)]) -> Result<String, String> {
    blocks
        .iter()
        .find(|(n, _)| *n == "phi_guard.jwt")
        .and_then(|(_, jwt)| jwt.split("filename: \"").nth(1))
        .and_then(|rest| rest.split("/phi_guard_jwt.wasm").next())
        .map(str::to_string)
        .ok_or_else(|| "phi_guard.jwt: no module file name".to_string())
}

/// The measuring module's filter block: `n` calls of `kind` per request, in a VM of its own.
fn hostcost_block(wasm_dir: &str, kind: &str, n: u32) -> String {
    format!(
        "          - name: phi_guard.hostcost
            typed_config:
              \"@type\": type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm
              config:
                name: phi_guard_hostcost
                failure_policy: FAIL_CLOSED
                vm_config:
                  vm_id: phi_guard_hostcost
                  runtime: envoy.wasm.runtime.v8
                  code: {{local: {{filename: \"{wasm_dir}/phi_guard_hostcost.wasm\"}}}}
                configuration:
                  \"@type\": type.googleapis.com/google.protobuf.StringValue
                  value: '{{\"kind\": \"{kind}\", \"n\": {n}}}'
"
    )
}

/// `phi-bench --baseline DIR`'s extra configurations: the one-module jwt + rbac (`pb`) and
/// full chain (`qb`) with the `phi_guard.wasm` of `dir`, beside this build's `p` and `q`.
pub fn baseline_variants(dir: &'static str) -> Vec<Variant> {
    vec![
        Variant {
            id: "pb",
            label: "phi-guard pipeline: jwt + rbac (one module, the baseline build)",
            filters: vec![Filter::PipelineAt {
                stages: &["jwt", "rbac"],
                dir,
            }],
        },
        Variant {
            id: "qb",
            label: "phi-guard pipeline: full chain (one module, the baseline build)",
            filters: vec![Filter::PipelineAt {
                stages: &["jwt", "rbac", "mask", "audit"],
                dir,
            }],
        },
    ]
}

/// The runs of [`baseline_variants`], GetPatient with a reused token as `pc` and `pd`.
pub const BASELINE_RUNS: [Run; 2] = [
    Run {
        id: "pcb",
        variant: "pb",
        workload: Workload::Get,
        label: "phi-guard jwt + rbac (one module, the baseline build)",
    },
    Run {
        id: "pdb",
        variant: "qb",
        workload: Workload::Get,
        label: "phi-guard full chain (one module, the baseline build)",
    },
];

/// Host calls per request in each `phi-bench --hostcost` variant but `h0`.
pub const HOSTCOST_CALLS: u32 = 40;

/// The host-call kinds `phi-bench --hostcost` prices (`tools/hostcost`'s `Kind`), with their
/// variant ids and repetitions per request.
pub const HOSTCOST_KINDS: [(&str, &str, u32); 12] = [
    ("hh", "request_header", HOSTCOST_CALLS),
    ("hm", "request_headers", HOSTCOST_CALLS),
    ("ha", "attribute", HOSTCOST_CALLS),
    ("hp", "peer_certificate", HOSTCOST_CALLS),
    ("hs", "set_filter_state", HOSTCOST_CALLS),
    ("hg", "get_filter_state", HOSTCOST_CALLS),
    ("hc", "increment_counter", HOSTCOST_CALLS),
    ("ht", "now", HOSTCOST_CALLS),
    ("hr", "remove_request_header", HOSTCOST_CALLS),
    ("hd", "shared_data", HOSTCOST_CALLS),
    // Four keys once per request: what a stage's contracts cost Envoy, printed or not.
    ("hl", "logged_state", 1),
    ("hu", "unlogged_state", 1),
];

/// `phi-bench --hostcost`'s configurations: the passthrough `a`, the measuring module making
/// no call (`h0`: the cost of one wasm filter as such), and one per kind making its calls per
/// request ([`HOSTCOST_CALLS`] for single calls).
pub fn hostcost_variants() -> Vec<Variant> {
    let mut out = vec![
        Variant {
            id: "a",
            label: "mTLS passthrough (no HTTP filters)",
            filters: vec![],
        },
        Variant {
            id: "h0",
            label: "one wasm module, no host call",
            filters: vec![Filter::HostCost { kind: "none", n: 0 }],
        },
    ];
    for (id, kind, n) in HOSTCOST_KINDS {
        out.push(Variant {
            id,
            label: kind,
            filters: vec![Filter::HostCost { kind, n }],
        });
    }
    out
}

/// The configurations `scripts/bench` compares (the letters are the issue's).
pub fn variants() -> Vec<Variant> {
    use Filter::*;
    vec![
        Variant {
            id: "a",
            label: "mTLS passthrough (no HTTP filters)",
            filters: vec![],
        },
        Variant {
            id: "b",
            label: "native jwt_authn (cached) + RBAC",
            filters: vec![NativeJwtAuthn { cache: true }, NativeRbac],
        },
        Variant {
            id: "c",
            label: "phi-guard jwt + rbac",
            filters: vec![PhiGuard("jwt"), PhiGuard("rbac")],
        },
        Variant {
            id: "d",
            label: "phi-guard full chain (jwt, rbac, mask, audit)",
            filters: vec![
                PhiGuard("jwt"),
                PhiGuard("rbac"),
                PhiGuard("mask"),
                PhiGuard("audit"),
            ],
        },
        Variant {
            id: "j",
            label: "phi-guard jwt alone",
            filters: vec![PhiGuard("jwt")],
        },
        Variant {
            id: "n",
            label: "native jwt_authn without cache",
            filters: vec![NativeJwtAuthn { cache: false }],
        },
        Variant {
            id: "p",
            label: "phi-guard pipeline: jwt + rbac (one module)",
            filters: vec![Pipeline(&["jwt", "rbac"])],
        },
        Variant {
            id: "pm",
            label: "phi-guard pipeline: jwt + rbac + mask (one module)",
            filters: vec![Pipeline(&["jwt", "rbac", "mask"])],
        },
        Variant {
            id: "q",
            label: "phi-guard pipeline: full chain (one module)",
            filters: vec![Pipeline(&["jwt", "rbac", "mask", "audit"])],
        },
    ]
}

/// What the load generator sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Workload {
    /// GetPatient (~1 KiB response) with the same token on every RPC, as real clients reuse
    /// tokens until they expire.
    Get,
    /// GetPatient with a token never seen before on every RPC: every RPC pays a verification.
    FreshToken,
    /// ListEncounters streaming large messages: masking throughput.
    Stream,
    /// The FHIR service's ListObservations: many small FHIR R4 `Observation`s (Google's
    /// protos, masked through catalog entries): masking throughput on a real healthcare API.
    FhirStream,
}

/// One measured run: a variant under a workload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Run {
    /// The row's name in the report.
    pub id: &'static str,
    pub variant: &'static str,
    pub workload: Workload,
    pub label: &'static str,
}

/// The runs of one round, in the order they run; rounds repeat them (rotated) so that slow
/// drift of the machine spreads over every config.
pub const RUNS: [Run; 14] = [
    Run {
        id: "a",
        variant: "a",
        workload: Workload::Get,
        label: "mTLS passthrough",
    },
    Run {
        id: "b",
        variant: "b",
        workload: Workload::Get,
        label: "native jwt_authn (cached) + RBAC",
    },
    Run {
        id: "pc",
        variant: "p",
        workload: Workload::Get,
        label: "phi-guard jwt + rbac (one module)",
    },
    Run {
        id: "pm",
        variant: "pm",
        workload: Workload::Get,
        label: "phi-guard jwt + rbac + mask (one module)",
    },
    Run {
        id: "pd",
        variant: "q",
        workload: Workload::Get,
        label: "phi-guard full chain (one module, the shipped layout)",
    },
    Run {
        id: "c",
        variant: "c",
        workload: Workload::Get,
        label: "phi-guard jwt + rbac (single-stage layout, two modules)",
    },
    Run {
        id: "d",
        variant: "d",
        workload: Workload::Get,
        label: "phi-guard full chain (single-stage layout, four modules)",
    },
    Run {
        id: "j",
        variant: "j",
        workload: Workload::Get,
        label: "phi-guard jwt, reused token",
    },
    Run {
        id: "e_phi",
        variant: "j",
        workload: Workload::FreshToken,
        label: "phi-guard jwt, fresh RS256 token per RPC",
    },
    Run {
        id: "e_native",
        variant: "n",
        workload: Workload::FreshToken,
        label: "native jwt_authn no cache, fresh RS256 token per RPC",
    },
    Run {
        id: "pc_stream",
        variant: "p",
        workload: Workload::Stream,
        label: "phi-guard jwt + rbac, large stream (one module)",
    },
    Run {
        id: "pm_stream",
        variant: "pm",
        workload: Workload::Stream,
        label: "phi-guard jwt + rbac + mask, large stream (one module)",
    },
    Run {
        id: "pc_fhir",
        variant: "p",
        workload: Workload::FhirStream,
        label: "phi-guard jwt + rbac, FHIR Observation stream (one module)",
    },
    Run {
        id: "pm_fhir",
        variant: "pm",
        workload: Workload::FhirStream,
        label: "phi-guard jwt + rbac + mask, FHIR Observation stream (one module)",
    },
];

/// A config split around its `http_filters` list: the text up to and including
/// `http_filters:`, each filter block by name (with the comment lines above it), and the rest.
type SplitConfig<'a> = (&'a str, Vec<(&'a str, &'a str)>, &'a str);

fn split_http_filters(yaml: &str) -> Result<SplitConfig<'_>, String> {
    const LIST: &str = "\n          http_filters:\n";
    const INDENT: usize = 10;
    const ITEM: &str = "          - name: ";
    let start = yaml.find(LIST).ok_or("no http_filters list")? + LIST.len();
    let mut blocks = Vec::new();
    let mut current: Option<(usize, &str)> = None;
    // Where the comment lines just above the next item begin.
    let mut comment_from: Option<usize> = None;
    let mut pos = start;
    for line in yaml[start..].split_inclusive('\n') {
        let indent = line.len() - line.trim_start().len();
        let is_item = line.starts_with(ITEM);
        let ends_list = !line.trim().is_empty() && indent < INDENT;
        if is_item || ends_list {
            let block_end = comment_from.unwrap_or(pos);
            if let Some((from, name)) = current.take() {
                blocks.push((name, &yaml[from..block_end]));
            }
            if ends_list {
                return Ok((&yaml[..start], blocks, &yaml[block_end..]));
            }
            current = Some((block_end, line[ITEM.len()..].trim()));
            comment_from = None;
        } else if indent == INDENT && line.trim_start().starts_with('#') {
            comment_from.get_or_insert(pos);
        } else {
            comment_from = None;
        }
        pos += line.len();
    }
    Err("http_filters is the last section: expected more config after it".into())
}

/// The config without its `bootstrap_extensions` (the audit service), for variants that do
/// not audit.
fn without_bootstrap_extensions(yaml: &str) -> Result<String, String> {
    const KEY: &str = "\nbootstrap_extensions:\n";
    let start = yaml.find(KEY).ok_or("no bootstrap_extensions")? + 1;
    let mut end = start + KEY.len() - 1;
    // The section runs until the next top-level key.
    for line in yaml[end..].split_inclusive('\n') {
        if !(line.starts_with(' ') || line.starts_with('-') || line.trim().is_empty()) {
            break;
        }
        end += line.len();
    }
    Ok(format!("{}{}", &yaml[..start], &yaml[end..]))
}

/// One run's measurements.
#[derive(Debug, Clone, Serialize)]
pub struct Sample {
    pub rpcs: u64,
    pub errors: u64,
    /// Envoy's process CPU (user + system) over the run, by thread ([`ThreadCpu`]; all
    /// threads: [`ThreadCpu::total_us`]).
    pub threads: ThreadCpu,
    pub wall_s: f64,
    pub p50_us: u64,
    pub p99_us: u64,
    pub envoy_rss_kib: u64,
    /// Response payload bytes the client received (protobuf messages, unframed).
    pub response_bytes: u64,
}

impl Sample {
    pub fn cpu_us_per_rpc(&self) -> f64 {
        self.threads.total_us() / self.rpcs.max(1) as f64
    }

    /// [`ThreadCpu`] per RPC (µs).
    pub fn threads_per_rpc(&self) -> ThreadCpu {
        let n = self.rpcs.max(1) as f64;
        ThreadCpu {
            workers_us: self.threads.workers_us / n,
            main_us: self.threads.main_us / n,
            v8_us: self.threads.v8_us / n,
            other_us: self.threads.other_us / n,
        }
    }

    pub fn rps(&self) -> f64 {
        self.rpcs as f64 / self.wall_s.max(1e-9)
    }
}

/// Envoy's CPU time split by the thread that spent it (µs), told apart by the names Envoy and
/// V8 give their threads (`/proc/PID/task/TID/comm`). Where a filter's cost lands says what it
/// is: the HTTP filters and the codecs run on the workers; the audit service's singleton VM,
/// its HTTP callouts to the collector and the stats flush on the main thread; V8's background
/// compilation and garbage collection on V8's own threads.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq)]
pub struct ThreadCpu {
    /// Worker threads, named `wrk:worker_N`.
    pub workers_us: f64,
    /// Envoy's main thread, named `envoy` (as the process).
    pub main_us: f64,
    /// V8's platform threads, named `V8 DefaultWorker` and the like.
    pub v8_us: f64,
    /// Everything else: watchdogs, the access-log flusher, gRPC client threads.
    pub other_us: f64,
}

impl ThreadCpu {
    /// Adds `us` of CPU to the class of the thread named `comm`.
    pub fn add(&mut self, comm: &str, us: f64) {
        let slot = if comm.starts_with("wrk:") {
            &mut self.workers_us
        } else if comm == "envoy" {
            &mut self.main_us
        } else if comm.starts_with("V8 ") {
            &mut self.v8_us
        } else {
            &mut self.other_us
        };
        *slot += us;
    }

    /// The sum over every class.
    pub fn total_us(&self) -> f64 {
        self.workers_us + self.main_us + self.v8_us + self.other_us
    }

    /// `self - before`, class by class: the CPU spent between two readings.
    pub fn since(&self, before: &ThreadCpu) -> ThreadCpu {
        ThreadCpu {
            workers_us: self.workers_us - before.workers_us,
            main_us: self.main_us - before.main_us,
            v8_us: self.v8_us - before.v8_us,
            other_us: self.other_us - before.other_us,
        }
    }
}

/// The `p`-th percentile (0..=100) of sorted values, nearest rank.
pub fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Median, min and max of a set of repeated measurements.
#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
pub struct Spread {
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

impl Spread {
    pub fn of(values: &[f64]) -> Spread {
        let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
        if v.is_empty() {
            return Spread {
                median: f64::NAN,
                min: f64::NAN,
                max: f64::NAN,
            };
        }
        v.sort_by(f64::total_cmp);
        let mid = v.len() / 2;
        let median = if v.len().is_multiple_of(2) {
            (v[mid - 1] + v[mid]) / 2.0
        } else {
            v[mid]
        };
        Spread {
            median,
            min: v[0],
            max: v[v.len() - 1],
        }
    }
}

/// The per-round differences of CPU µs per RPC between two runs measured in the same rounds
/// (`x[i]` and `y[i]` seconds apart): their median and spread. A shared machine's speed drifts
/// between rounds; a difference taken within a round cancels most of that drift, which the
/// difference of two runs' medians does not.
pub fn paired_difference(x: &[Sample], y: &[Sample]) -> Spread {
    paired_difference_by(x, y, Sample::cpu_us_per_rpc)
}

/// [`paired_difference`] of any per-RPC figure of a sample.
pub fn paired_difference_by(x: &[Sample], y: &[Sample], f: impl Fn(&Sample) -> f64) -> Spread {
    let d: Vec<f64> = x.iter().zip(y).map(|(x, y)| f(x) - f(y)).collect();
    Spread::of(&d)
}

/// A run's figures over every round.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub cpu_us_per_rpc: Spread,
    /// The worker threads' share of `cpu_us_per_rpc` ([`ThreadCpu`]).
    pub workers_us_per_rpc: Spread,
    /// Envoy's main thread's share.
    pub main_us_per_rpc: Spread,
    /// V8's own threads' share.
    pub v8_us_per_rpc: Spread,
    pub rps: Spread,
    pub p50_us: Spread,
    pub p99_us: Spread,
    pub rss_mib: Spread,
    pub errors: u64,
    pub response_bytes_per_rpc: f64,
}

impl Summary {
    pub fn of(samples: &[Sample]) -> Summary {
        let spread =
            |f: &dyn Fn(&Sample) -> f64| Spread::of(&samples.iter().map(f).collect::<Vec<_>>());
        Summary {
            cpu_us_per_rpc: spread(&Sample::cpu_us_per_rpc),
            workers_us_per_rpc: spread(&|s| s.threads_per_rpc().workers_us),
            main_us_per_rpc: spread(&|s| s.threads_per_rpc().main_us),
            v8_us_per_rpc: spread(&|s| s.threads_per_rpc().v8_us),
            rps: spread(&Sample::rps),
            p50_us: spread(&|s| s.p50_us as f64),
            p99_us: spread(&|s| s.p99_us as f64),
            rss_mib: spread(&|s| s.envoy_rss_kib as f64 / 1024.0),
            errors: samples.iter().map(|s| s.errors).sum(),
            response_bytes_per_rpc: Spread::of(
                &samples
                    .iter()
                    .map(|s| s.response_bytes as f64 / s.rpcs.max(1) as f64)
                    .collect::<Vec<_>>(),
            )
            .median,
        }
    }
}

/// A target of the issue, checked against the measurements.
#[derive(Debug, Clone, Serialize)]
pub struct Target {
    pub name: &'static str,
    pub measured: f64,
    pub unit: &'static str,
    /// `measured` must be at most (`true`) or at least (`false`) `limit`.
    pub at_most: bool,
    pub limit: f64,
    pub how: String,
}

impl Target {
    pub fn met(&self) -> bool {
        if self.at_most {
            self.measured <= self.limit
        } else {
            self.measured >= self.limit
        }
    }

    /// By how much a missed target is missed, as a factor (1.0 when met).
    pub fn miss_factor(&self) -> f64 {
        if self.met() {
            1.0
        } else if self.at_most {
            self.measured / self.limit
        } else {
            self.limit / self.measured
        }
    }
}

/// What the runs' medians say about the targets.
pub struct Inputs<'a> {
    pub runs: &'a BTreeMap<&'static str, Summary>,
    pub native_mask_mb_s: f64,
    /// The same natively for the FHIR Observation stream's messages.
    pub native_fhir_mask_mb_s: f64,
    /// Envoy's RSS with the shipped full chain and one worker, after load (MiB).
    pub rss_full_chain_mib: f64,
    /// Each single-stage module's size (bytes), by file name.
    pub wasm_sizes: &'a BTreeMap<String, u64>,
}

/// The CPU per RPC a run adds over another, medians.
fn cpu(runs: &BTreeMap<&'static str, Summary>, id: &str) -> f64 {
    runs.get(id).map_or(f64::NAN, |s| s.cpu_us_per_rpc.median)
}

/// Masking throughput in Envoy: the stream's bytes over what masking adds to the RPC (MB/s).
fn wasm_mask_rate(
    runs: &BTreeMap<&'static str, Summary>,
    without: &str,
    with: &str,
) -> (f64, f64, f64) {
    let bytes = runs
        .get(without)
        .map_or(f64::NAN, |s| s.response_bytes_per_rpc);
    let us = cpu(runs, with) - cpu(runs, without);
    (bytes / us, bytes, us)
}

/// The targets of issues 11 and 13, measured on the shipped layout (one module,
/// `phi_guard.wasm`), each with how it was computed.
pub fn targets(inputs: &Inputs<'_>) -> Vec<Target> {
    let runs = inputs.runs;
    let a = cpu(runs, "a");
    let added_b = cpu(runs, "b") - a;
    let added_pc = cpu(runs, "pc") - a;
    let added_e_phi = cpu(runs, "e_phi") - a;
    let added_e_native = cpu(runs, "e_native") - a;
    let audit = cpu(runs, "pd") - cpu(runs, "pm");
    let (stream_rate, stream_bytes, stream_us) = wasm_mask_rate(runs, "pc_stream", "pm_stream");
    let (fhir_rate, fhir_bytes, fhir_us) = wasm_mask_rate(runs, "pc_fhir", "pm_fhir");
    let mut out = vec![
        Target {
            name: "cached jwt+rbac added CPU vs native jwt_authn+RBAC (pc-a)/(b-a)",
            measured: added_pc / added_b,
            unit: "x",
            at_most: true,
            limit: 1.0,
            how: format!(
                "phi-guard adds {added_pc:.1} µs/RPC, native {added_b:.1} µs/RPC (never above 1.5x)"
            ),
        },
        Target {
            name: "full chain CPU vs passthrough pd/a",
            measured: cpu(runs, "pd") / a,
            unit: "x",
            at_most: true,
            limit: 2.0,
            how: format!("{:.1} vs {a:.1} µs/RPC (goal 1.5x)", cpu(runs, "pd")),
        },
        Target {
            name: "audit added over jwt+rbac+mask pd-pm",
            measured: audit,
            unit: "µs",
            at_most: true,
            limit: 20.0,
            how: format!(
                "{:.1} vs {:.1} µs/RPC, audit service included",
                cpu(runs, "pd"),
                cpu(runs, "pm")
            ),
        },
        Target {
            name: "uncached RS256 added CPU vs native jwt_authn without cache (e_phi-a)/(e_native-a)",
            measured: added_e_phi / added_e_native,
            unit: "x",
            at_most: true,
            limit: 2.5,
            how: format!(
                "phi-guard adds {added_e_phi:.1} µs/RPC, native {added_e_native:.1} µs/RPC; the verification alone (e_phi-j) {:.1} µs",
                cpu(runs, "e_phi") - cpu(runs, "j")
            ),
        },
        Target {
            name: "masking a large stream in V8 (bytes / (pm_stream-pc_stream))",
            measured: stream_rate,
            unit: "MB/s",
            at_most: false,
            limit: 400.0,
            how: format!("{:.0} KB per RPC, {stream_us:.0} µs/RPC", stream_bytes / 1e3),
        },
        Target {
            name: "masking natively (same messages, same role)",
            measured: inputs.native_mask_mb_s,
            unit: "MB/s",
            at_most: false,
            limit: 300.0,
            how: "StreamMasker over the stream's frames, nurse".into(),
        },
        Target {
            name: "FHIR masking in V8 (bytes / (pm_fhir-pc_fhir))",
            measured: fhir_rate,
            unit: "MB/s",
            at_most: false,
            limit: 150.0,
            how: format!(
                "{:.0} KB of Observations per RPC, {fhir_us:.0} µs/RPC",
                fhir_bytes / 1e3
            ),
        },
        Target {
            name: "FHIR masking natively (same messages, same role)",
            measured: inputs.native_fhir_mask_mb_s,
            unit: "MB/s",
            at_most: false,
            limit: 300.0,
            how: "StreamMasker over the FHIR stream's frames, nurse".into(),
        },
        Target {
            name: "Envoy RSS, full chain, one worker",
            measured: inputs.rss_full_chain_mib,
            unit: "MiB",
            at_most: true,
            limit: 100.0,
            how: format!(
                "one module after load; passthrough {:.0} MiB",
                runs.get("a").map_or(f64::NAN, |s| s.rss_mib.median)
            ),
        },
    ];
    for (module, bytes) in inputs.wasm_sizes {
        out.push(Target {
            name: "single-stage wasm module size",
            measured: *bytes as f64 / 1024.0,
            unit: "KiB",
            at_most: true,
            limit: 1024.0,
            how: module.clone(),
        });
    }
    out
}

/// Which of a sample's CPU a stage's addition counts ([`ThreadCpu`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CpuOf {
    /// Every thread.
    Envoy,
    /// The worker threads.
    Workers,
    /// Envoy's main thread.
    Main,
}

impl CpuOf {
    fn of_sample(self, s: &Sample) -> f64 {
        match self {
            CpuOf::Envoy => s.cpu_us_per_rpc(),
            CpuOf::Workers => s.threads_per_rpc().workers_us,
            CpuOf::Main => s.threads_per_rpc().main_us,
        }
    }

    fn of_summary(self, s: &Summary) -> f64 {
        match self {
            CpuOf::Envoy => s.cpu_us_per_rpc.median,
            CpuOf::Workers => s.workers_us_per_rpc.median,
            CpuOf::Main => s.main_us_per_rpc.median,
        }
    }
}

/// What each stage adds per RPC on the GetPatient workload in the shipped layout: jwt over
/// the passthrough, each further stage over the chain before it (what, the run with it, the
/// run without it, the CPU counted).
pub const STAGE_ADDITIONS: [(&str, &str, &str, CpuOf); 7] = [
    ("jwt (cached token)", "j", "a", CpuOf::Envoy),
    ("rbac", "pc", "j", CpuOf::Envoy),
    ("mask (1 KiB response)", "pm", "pc", CpuOf::Envoy),
    ("audit (stage + service)", "pd", "pm", CpuOf::Envoy),
    (
        "audit on the worker (the stage, the batches' enqueue)",
        "pd",
        "pm",
        CpuOf::Workers,
    ),
    (
        "audit on the main thread (the service: chain, OTLP, shipping)",
        "pd",
        "pm",
        CpuOf::Main,
    ),
    ("all four", "pd", "a", CpuOf::Envoy),
];

/// One stage's addition, two ways: the difference of the two runs' medians, and the median
/// (with its spread) of the differences taken within each round ([`paired_difference`]),
/// which a host drifting between rounds moves less.
#[derive(Debug, Clone, Serialize)]
pub struct Addition {
    pub what: &'static str,
    pub of_medians: f64,
    pub within_rounds: Spread,
}

/// [`STAGE_ADDITIONS`], measured; a run that did not run gives NaN.
pub fn per_filter_cpu(
    runs: &BTreeMap<&'static str, Summary>,
    samples: &BTreeMap<&'static str, Vec<Sample>>,
) -> Vec<Addition> {
    STAGE_ADDITIONS
        .iter()
        .map(|&(what, with, without, of)| {
            let median = |id: &str| runs.get(id).map_or(f64::NAN, |s| of.of_summary(s));
            Addition {
                what,
                of_medians: median(with) - median(without),
                within_rounds: match (samples.get(with), samples.get(without)) {
                    (Some(x), Some(y)) => paired_difference_by(x, y, |s| of.of_sample(s)),
                    _ => Spread::of(&[]),
                },
            }
        })
        .collect()
}

/// The table of runs, as Markdown (readable as plain text too).
pub fn markdown_table(runs: &[(Run, &Summary)], baseline: f64) -> String {
    let mut out = String::from(
        "| run | config | Envoy CPU µs/RPC (median, min–max) | added over a | worker · main · V8 µs/RPC | RPC/s | p50 ms | p99 ms | Envoy RSS MiB |\n\
         |---|---|---|---|---|---|---|---|---|\n",
    );
    for (run, s) in runs {
        let c = s.cpu_us_per_rpc;
        out.push_str(&format!(
            "| {} | {} | {:.1} ({:.1}–{:.1}) | {} | {:.1} · {:.1} · {:.1} | {:.0} | {:.2} | {:.2} | {:.0} |\n",
            run.id,
            run.label,
            c.median,
            c.min,
            c.max,
            if run.id == "a" {
                "–".to_string()
            } else {
                format!("{:.1}", c.median - baseline)
            },
            s.workers_us_per_rpc.median,
            s.main_us_per_rpc.median,
            s.v8_us_per_rpc.median,
            s.rps.median,
            s.p50_us.median / 1e3,
            s.p99_us.median / 1e3,
            s.rss_mib.median,
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `envoy/inbound.yaml` rendered for the demo project, as the bench starts it.
    fn inbound() -> String {
        let mut inbound = crate::render::Inbound::from_project(
            &crate::repo_root().join("envoy/demo/phi-guard.toml"),
        )
        .unwrap();
        inbound.descriptor_set = Some(crate::demo_api::descriptor_set().unwrap());
        inbound.render().unwrap().envoy
    }

    #[test]
    fn the_pipeline_variant_carries_the_single_stage_configs() {
        let yaml = inbound();
        let full = variants().into_iter().find(|v| v.id == "q").unwrap();
        let rendered = full.render(&yaml).unwrap();
        assert_eq!(
            filter_names(&rendered),
            ["phi_guard", "envoy.filters.http.router"]
        );
        assert!(rendered.contains("/phi_guard.wasm\""));
        assert!(rendered.contains("host_env_keys: [PHI_GUARD_MASK_TOKEN_KEY]"));
        assert!(rendered.contains("bootstrap_extensions"));
        for stage in ["jwt", "rbac", "mask", "audit"] {
            let single = crate::stack::embedded_filter_config(&yaml, stage).unwrap();
            let piped = crate::stack::embedded_filter_config(&rendered, stage).unwrap();
            assert_eq!(single, piped, "{stage}");
        }
        // The same block the renderer's pipeline layout makes, but for its comments.
        let mut project = crate::render::Inbound::from_project(
            &crate::repo_root().join("envoy/demo/phi-guard.toml"),
        )
        .unwrap();
        project.descriptor_set = Some(crate::demo_api::descriptor_set().unwrap());
        project.layout = crate::render::Layout::Pipeline;
        let from_template = project.render().unwrap().envoy;
        let (_, blocks, _) = split_http_filters(&from_template).unwrap();
        let strip = |b: &str| -> String {
            b.lines()
                .filter(|l| !l.trim_start().starts_with('#'))
                .map(|l| format!("{l}\n"))
                .collect()
        };
        let (_, ours, _) = split_http_filters(&rendered).unwrap();
        assert_eq!(strip(ours[0].1), strip(blocks[0].1));
        let jwt_rbac = variants().into_iter().find(|v| v.id == "p").unwrap();
        assert!(!jwt_rbac
            .render(&yaml)
            .unwrap()
            .contains("bootstrap_extensions"));
    }

    fn filter_names(yaml: &str) -> Vec<String> {
        let (_, blocks, _) = split_http_filters(yaml).unwrap();
        blocks.iter().map(|(n, _)| n.to_string()).collect()
    }

    #[test]
    fn the_shipped_config_has_the_full_chain() {
        assert_eq!(
            filter_names(&inbound()),
            [
                "phi_guard.jwt",
                "phi_guard.rbac",
                "phi_guard.mask",
                "phi_guard.audit",
                "envoy.filters.http.router"
            ]
        );
    }

    #[test]
    fn variants_differ_only_in_their_http_filters() {
        let yaml = inbound();
        let (head, _, tail) = split_http_filters(&yaml).unwrap();
        for variant in variants() {
            let rendered = variant.render(&yaml).unwrap();
            let names = filter_names(&rendered);
            assert_eq!(names.len(), variant.filters.len() + 1, "{}", variant.id);
            assert_eq!(names.last().unwrap(), "envoy.filters.http.router");
            let (h, _, t) = split_http_filters(&rendered).unwrap();
            assert_eq!(t, tail, "{}", variant.id);
            if variant.audits() {
                assert_eq!(h, head);
            } else {
                assert!(!h.contains("bootstrap_extensions"), "{}", variant.id);
                assert!(h.contains("\noverload_manager:\n"), "{}", variant.id);
                let stripped = without_bootstrap_extensions(&yaml).unwrap();
                assert_eq!(
                    h,
                    split_http_filters(&stripped).unwrap().0,
                    "{}",
                    variant.id
                );
            }
        }
    }

    #[test]
    fn hostcost_variants_put_the_measuring_module_alone_before_the_router() {
        let yaml = inbound();
        let (head, _, tail) = split_http_filters(&yaml).unwrap();
        let stripped = without_bootstrap_extensions(&yaml).unwrap();
        let variants = hostcost_variants();
        assert_eq!(variants.len(), HOSTCOST_KINDS.len() + 2);
        for variant in &variants {
            let rendered = variant.render(&yaml).unwrap();
            let names = filter_names(&rendered);
            let (h, _, t) = split_http_filters(&rendered).unwrap();
            assert_eq!(t, tail, "{}", variant.id);
            assert_eq!(
                h,
                split_http_filters(&stripped).unwrap().0,
                "{}",
                variant.id
            );
            assert_ne!(h, head);
            match &variant.filters[..] {
                [] => assert_eq!(names, ["envoy.filters.http.router"]),
                [Filter::HostCost { kind, n }] => {
                    assert_eq!(names, ["phi_guard.hostcost", "envoy.filters.http.router"]);
                    assert!(
                        rendered.contains("/phi_guard_hostcost.wasm\""),
                        "{}",
                        variant.id
                    );
                    assert!(
                        rendered.contains(&format!("'{{\"kind\": \"{kind}\", \"n\": {n}}}'")),
                        "{}",
                        variant.id
                    );
                    // The module's own parser takes what the bench renders.
                    let config = format!("{{\"kind\": \"{kind}\", \"n\": {n}}}");
                    phi_guard_hostcost::Config::parse(config.as_bytes()).unwrap();
                }
                other => panic!("{other:?}"),
            }
        }
    }

    /// `yaml` without the pipeline's `filter_state` member (its pretty-printed lines).
    fn without_filter_state(yaml: &str) -> String {
        let mut out = String::new();
        let mut inside = false;
        for line in yaml.split_inclusive('\n') {
            if line.trim_start().starts_with("\"filter_state\": [") {
                inside = true;
            } else if inside {
                inside = line.trim() != "],";
            } else {
                out.push_str(line);
            }
        }
        out
    }

    /// The baseline runs another build's module as that build shipped: the same stages and
    /// stage configs, the module files of the other build (the pipeline's and, with audit,
    /// the service's), and no `filter_state` (a build from before it refuses the member), so
    /// it writes every contract to filter state.
    #[test]
    fn baseline_variants_differ_from_theirs_only_in_the_module_files_and_filter_state() {
        let yaml = inbound();
        let ours = variants();
        for (twin, run) in baseline_variants("/elsewhere/release")
            .iter()
            .zip(BASELINE_RUNS)
        {
            assert_eq!(run.variant, twin.id);
            let own = ours
                .iter()
                .find(|v| v.id == twin.id.trim_end_matches('b'))
                .unwrap();
            let (theirs, mine) = (twin.render(&yaml).unwrap(), own.render(&yaml).unwrap());
            let dir = wasm_dir_of(&split_http_filters(&yaml).unwrap().1).unwrap();
            assert!(theirs.contains("\"/elsewhere/release/phi_guard.wasm\""));
            assert_eq!(
                theirs.contains("\"/elsewhere/release/phi_guard_audit.wasm\""),
                twin.audits(),
                "the baseline's audit service with its audit stage: {}",
                twin.id
            );
            assert_eq!(
                theirs
                    .replace(
                        "/elsewhere/release/phi_guard.wasm",
                        &format!("{dir}/phi_guard.wasm")
                    )
                    .replace(
                        "/elsewhere/release/phi_guard_audit.wasm",
                        &format!("{dir}/phi_guard_audit.wasm")
                    ),
                without_filter_state(&mine),
                "{}",
                twin.id
            );
            assert!(!theirs.contains("filter_state"), "{}", twin.id);
            assert!(mine.contains("\"filter_state\": ["), "{}", twin.id);
        }
    }

    #[test]
    fn native_jwt_authn_cache_is_switchable() {
        let yaml = inbound();
        let with_cache = |cache| {
            Variant {
                id: "x",
                label: "",
                filters: vec![Filter::NativeJwtAuthn { cache }],
            }
            .render(&yaml)
            .unwrap()
        };
        let (cached, uncached) = (with_cache(true), with_cache(false));
        assert!(cached.contains(JWT_CACHE_LINE));
        assert!(!uncached.contains(JWT_CACHE_LINE));
        assert!(uncached.contains("envoy.filters.http.jwt_authn"));
    }

    #[test]
    fn native_rbac_names_the_demo_policy_rules() {
        // The native comparison must authorize what the demo policy authorizes.
        let policy: serde_json::Value = serde_json::from_slice(
            &std::fs::read(crate::repo_root().join("filters/rbac/policy.demo.json")).unwrap(),
        )
        .unwrap();
        for rule in policy["rules"].as_array().unwrap() {
            if rule["action"] == "allow" {
                let name = rule["name"].as_str().unwrap();
                assert!(NATIVE_RBAC.contains(&format!("{name}:")), "{name}");
                for principal in rule["principals"].as_array().unwrap() {
                    if let Some(id) = principal.as_str() {
                        assert!(NATIVE_RBAC.contains(id), "{id}");
                    }
                }
            }
        }
    }

    #[test]
    fn paired_differences_are_taken_within_rounds() {
        let sample = |cpu_us: f64| Sample {
            rpcs: 10,
            errors: 0,
            threads: ThreadCpu {
                workers_us: cpu_us * 10.0,
                ..ThreadCpu::default()
            },
            wall_s: 1.0,
            p50_us: 0,
            p99_us: 0,
            envoy_rss_kib: 0,
            response_bytes: 0,
        };
        // The machine slows down round by round; x stays 5 µs above y in every round.
        let y: Vec<Sample> = [50.0, 80.0, 120.0].into_iter().map(sample).collect();
        let x: Vec<Sample> = [55.0, 85.0, 125.0].into_iter().map(sample).collect();
        let d = paired_difference(&x, &y);
        assert!((d.median - 5.0).abs() < 1e-9, "{d:?}");
        assert!((d.min - 5.0).abs() < 1e-9 && (d.max - 5.0).abs() < 1e-9);
        // The medians' difference happens to agree here, but a missing round does not pair.
        assert!((paired_difference(&x[..2], &y).median - 5.0).abs() < 1e-9);
        assert!(paired_difference(&[], &y).median.is_nan());
    }

    #[test]
    fn percentiles_and_spread() {
        let v: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile(&v, 50.0), 50);
        assert_eq!(percentile(&v, 99.0), 99);
        assert_eq!(percentile(&v, 100.0), 100);
        assert_eq!(percentile(&[], 50.0), 0);
        let s = Spread::of(&[3.0, 1.0, 2.0, f64::NAN]);
        assert_eq!((s.median, s.min, s.max), (2.0, 1.0, 3.0));
        assert_eq!(Spread::of(&[1.0, 2.0, 3.0, 4.0]).median, 2.5);
    }

    #[test]
    fn thread_cpu_is_classed_by_the_names_envoy_and_v8_give_their_threads() {
        let mut before = ThreadCpu::default();
        before.add("wrk:worker_0", 5.0);
        let mut after = before;
        for (comm, us) in [
            ("wrk:worker_0", 10.0),
            ("wrk:worker_1", 1.0),
            ("envoy", 3.0),
            ("V8 DefaultWorke", 2.0),
            ("dog:main_thread", 0.5),
            ("AccessLogFlush", 0.25),
        ] {
            after.add(comm, us);
        }
        let spent = after.since(&before);
        assert_eq!(
            spent,
            ThreadCpu {
                workers_us: 11.0,
                main_us: 3.0,
                v8_us: 2.0,
                other_us: 0.75,
            }
        );
        assert_eq!(spent.total_us(), 16.75);
    }

    #[test]
    fn targets_compare_medians() {
        let summary = |cpu: f64, bytes: f64| Summary {
            cpu_us_per_rpc: Spread {
                median: cpu,
                min: cpu,
                max: cpu,
            },
            workers_us_per_rpc: Spread::of(&[cpu / 2.0]),
            main_us_per_rpc: Spread::of(&[cpu / 4.0]),
            v8_us_per_rpc: Spread::of(&[0.0]),
            rps: Spread::of(&[1.0]),
            p50_us: Spread::of(&[1.0]),
            p99_us: Spread::of(&[1.0]),
            rss_mib: Spread::of(&[70.0]),
            errors: 0,
            response_bytes_per_rpc: bytes,
        };
        let runs: BTreeMap<&'static str, Summary> = [
            ("a", summary(40.0, 1e3)),
            ("b", summary(50.0, 1e3)),
            ("pc", summary(56.0, 1e3)),
            ("pm", summary(70.0, 1e3)),
            ("pd", summary(90.0, 1e3)),
            ("j", summary(50.0, 1e3)),
            ("e_phi", summary(350.0, 1e3)),
            ("e_native", summary(140.0, 1e3)),
            ("pc_stream", summary(1000.0, 1e6)),
            ("pm_stream", summary(3000.0, 1e6)),
            ("pc_fhir", summary(1000.0, 4e5)),
            ("pm_fhir", summary(3000.0, 4e5)),
        ]
        .into_iter()
        .collect();
        let sizes: BTreeMap<String, u64> = [("jwt".to_string(), 900 * 1024)].into_iter().collect();
        let t = targets(&Inputs {
            runs: &runs,
            native_mask_mb_s: 400.0,
            native_fhir_mask_mb_s: 250.0,
            rss_full_chain_mib: 120.0,
            wasm_sizes: &sizes,
        });
        // (56-40)/(50-40)
        assert_eq!(t[0].measured, 1.6);
        assert!(!t[0].met());
        assert!((t[0].miss_factor() - 1.6).abs() < 1e-9);
        assert_eq!(t[1].measured, 2.25);
        assert!(!t[1].met());
        assert_eq!(t[2].measured, 20.0);
        assert!(t[2].met());
        // (350-40)/(140-40)
        assert!((t[3].measured - 3.1).abs() < 1e-9);
        assert!(!t[3].met());
        assert_eq!(t[4].measured, 500.0);
        assert!(t[4].met());
        assert!(t[5].met());
        assert_eq!(t[6].measured, 200.0);
        assert!(t[6].met());
        assert!(!t[7].met());
        assert!(!t[8].met());
        assert!((t[8].miss_factor() - 1.2).abs() < 1e-9);
        assert!(t[9].met());
        // Two rounds of pd and pm, the second on a host 40 µs slower: within each round audit
        // adds 20 µs, 12 on the worker and 8 on the main thread.
        let sample = |cpu: f64, main: f64| Sample {
            rpcs: 10,
            errors: 0,
            threads: ThreadCpu {
                workers_us: (cpu - main) * 10.0,
                main_us: main * 10.0,
                v8_us: 0.0,
                other_us: 0.0,
            },
            wall_s: 1.0,
            p50_us: 0,
            p99_us: 0,
            envoy_rss_kib: 0,
            response_bytes: 0,
        };
        let samples: BTreeMap<&'static str, Vec<Sample>> = [
            ("pd", vec![sample(90.0, 8.0), sample(130.0, 8.0)]),
            ("pm", vec![sample(70.0, 0.0), sample(110.0, 0.0)]),
        ]
        .into_iter()
        .collect();
        let per_filter = per_filter_cpu(&runs, &samples);
        let of_medians: Vec<f64> = per_filter.iter().map(|a| a.of_medians).collect();
        // The summaries put half of each run's CPU on the worker and a quarter on main.
        assert_eq!(of_medians, [10.0, 6.0, 14.0, 20.0, 10.0, 5.0, 50.0]);
        assert_eq!(per_filter[0].what, "jwt (cached token)");
        assert_eq!(per_filter[6].what, "all four");
        let within: Vec<f64> = per_filter.iter().map(|a| a.within_rounds.median).collect();
        assert_eq!(&within[3..6], [20.0, 12.0, 8.0]);
        // Runs without samples have no within-round figure.
        assert!(within[0].is_nan() && within[6].is_nan());
    }
}
