//! `phi-bench` (run by `scripts/bench`): phi-guard's cost against Envoy's native filters, on
//! one machine, in one run.
//!
//! It starts the demo stack (backend, an RS256 IdP, the audit collector) and one Envoy per
//! configuration of [`phi_guard_tools::bench::variants`], all from `envoy/inbound.yaml`, then
//! drives gRPC over mutual TLS with the demo client certificate through each in turn, rounds
//! interleaved. Per run it reads Envoy's process CPU from /proc and the client's latencies,
//! and it prints medians with their spread, the targets, and writes a JSON result file.
//!
//! `phi-bench [--rounds N] [--rpcs N] [--quick] [--only RUN,..] [--out FILE] [--baseline DIR]`
//!
//! `--only` measures some runs (ids as in the table) and skips the summary of targets; the
//! samples still go to the result file.
//!
//! `--baseline DIR` adds the one-module jwt + rbac and full chain with the `phi_guard.wasm` in
//! DIR (another commit's `target/wasm32-wasip1/release`), runs `pcb` and `pdb`, interleaved
//! with the rest: what a change gained, measured in one run.
//!
//! `phi-bench --hostcost [--rounds N] [--rpcs N]` prices the host calls instead: the passthrough,
//! the measuring module `tools/hostcost` making no call, and the module making
//! [`bench::HOSTCOST_CALLS`] calls of one kind per request, one Envoy each; it prints what one
//! wasm filter costs as such and what one call of each kind costs (Envoy CPU µs, medians of
//! the differences taken within each round).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use phi_guard_mask::{Encoding, MaskConfig, StreamMasker};
use phi_guard_proto::demo::{encounter, PATIENT_ID};
use phi_guard_proto::fhir;
use phi_guard_proto::fhir::service::fhir_service_client::FhirServiceClient;
use phi_guard_proto::health::v1::patient_service_client::PatientServiceClient;
use phi_guard_proto::health::v1::{GetPatientRequest, ListEncountersRequest};
use phi_guard_tools::bench::{self, Run, Sample, Summary, ThreadCpu, Workload, RUNS};
use phi_guard_tools::client::{self, ClientCert, MtlsTarget};
use phi_guard_tools::issuer::{self, UserClaims};
use phi_guard_tools::stack::{self, Envoy, Error, Stack};
use prost::Message;
use serde_json::json;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::Channel;

/// The client workload and user every run calls as: the clinic frontend, a nurse.
const WORKLOAD: (&str, &str, &str) = ("ehr-frontend", "clinic", "ehr-frontend");
const USER: &str = "nurse";
/// The large stream: 16 encounters with 32 KiB notes, about 0.5 MB per RPC.
const STREAM_LIMIT: u32 = 16;
const STREAM_NOTE_BYTES: u32 = 32 * 1024;
/// The FHIR stream: 1,000 R4 Observations (~0.4 KB each) per RPC.
const FHIR_OBSERVATIONS: u32 = 1000;

#[derive(Debug, Clone)]
struct Options {
    rounds: usize,
    /// RPCs per measured run with a reused token.
    rpcs: u64,
    /// RPCs per run with a fresh token each.
    fresh_rpcs: u64,
    /// RPCs per stream run.
    streams: u64,
    warmup: u64,
    concurrency: usize,
    connections: usize,
    out: PathBuf,
    /// Run ids to measure (default: all), for looking at one config closely.
    only: Option<Vec<String>>,
    /// Price the host calls (`--hostcost`) instead of comparing the layouts.
    hostcost: bool,
    /// Another build's wasm directory to run its pipeline beside this one (`--baseline`).
    baseline: Option<&'static str>,
}

/// What `--help` prints.
const USAGE: &str = "\
usage: phi-bench [--rounds N] [--rpcs N] [--quick] [--only RUN,..] [--out FILE] [--baseline DIR]
       phi-bench --hostcost [--rounds N] [--rpcs N]

  --rounds N      rounds of every run, interleaved, the order rotated each round (default 7)
  --rpcs N        GetPatient RPCs measured per run (default 4000)
  --quick         one short round: proves every config starts and serves; figures not to trust
  --only RUN,..   only these runs (ids as in the table: a, b, pc, pm, pd, c, d, j, e_phi, ...);
                  no summary, the samples still written to --out
  --out FILE      the JSON result file (default target/bench/results.json)
  --baseline DIR  also run jwt + rbac and the full chain with DIR/phi_guard.wasm (another
                  build's target/wasm32-wasip1/release) as runs pcb, pdb, and print the difference
  --hostcost      price the proxy-wasm host calls instead (tools/hostcost)

Envoy CPU per RPC is every Envoy thread's time on a CPU (/proc/PID/task/*/schedstat), also
shown split into the workers, the main thread (the audit service) and V8's threads.
Run it on an idle machine; docs/PERFORMANCE.md reads the output.
";

impl Options {
    fn parse() -> Result<Options, Error> {
        let mut o = Options {
            rounds: 7,
            rpcs: 4000,
            fresh_rpcs: 1500,
            streams: 60,
            warmup: 300,
            concurrency: 16,
            connections: 4,
            out: phi_guard_tools::repo_root().join("target/bench/results.json"),
            only: None,
            hostcost: false,
            baseline: None,
        };
        let mut args = std::env::args().skip(1);
        while let Some(arg) = args.next() {
            let mut value = || args.next().ok_or(format!("{arg} needs a value"));
            match arg.as_str() {
                "--rounds" => o.rounds = value()?.parse()?,
                "--rpcs" => o.rpcs = value()?.parse()?,
                "--out" => o.out = PathBuf::from(value()?),
                "--only" => o.only = Some(value()?.split(',').map(str::to_string).collect()),
                "--hostcost" => o.hostcost = true,
                "--help" | "-h" => {
                    print!("{USAGE}");
                    std::process::exit(0);
                }
                // Lives as long as the run: the variants borrow it.
                "--baseline" => o.baseline = Some(String::leak(value()?)),
                // A smoke run: every config and figure, too few samples to trust.
                "--quick" => {
                    o.rounds = 1;
                    o.rpcs = 300;
                    o.fresh_rpcs = 100;
                    o.streams = 8;
                    o.warmup = 50;
                }
                other => return Err(format!("unknown argument {other}").into()),
            }
        }
        if o.rounds == 0 || o.rpcs == 0 {
            return Err("--rounds and --rpcs must be at least 1".into());
        }
        Ok(o)
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    if let Err(e) = run().await {
        eprintln!("phi-bench: {e}");
        std::process::exit(1);
    }
}

/// Everything a run needs to call a variant.
struct Caller {
    target: MtlsTarget,
    cert: PathBuf,
    key: PathBuf,
    token: MetadataValue<Ascii>,
    /// Never-seen tokens for the fresh-token runs, used up in order per variant.
    fresh: Arc<Vec<MetadataValue<Ascii>>>,
}

async fn run() -> Result<(), Error> {
    let options = Options::parse()?;
    let machine = machine();
    println!(
        "phi-bench on {}",
        machine["summary"].as_str().unwrap_or("?")
    );
    let wasm_sizes = wasm_sizes()?;
    let pipeline_size = std::fs::metadata(stack::wasm_dir()?.join("phi_guard.wasm"))
        .ok()
        .map(|m| m.len());

    // Variants are cut from the single-stage layout's rendered config (bench::variants).
    let stack = Stack::builder("bench")
        .layout(stack::Layout::Single)
        .rs256_idp()
        .workload(WORKLOAD.0, WORKLOAD.1, WORKLOAD.2)
        .start()
        .await?;
    let (variants, runs): (Vec<bench::Variant>, Vec<Run>) = if options.hostcost {
        let variants = bench::hostcost_variants();
        let runs = variants
            .iter()
            .map(|v| Run {
                id: v.id,
                variant: v.id,
                workload: Workload::Get,
                label: v.label,
            })
            .collect();
        (variants, runs)
    } else {
        let (mut variants, mut runs) = (bench::variants(), RUNS.to_vec());
        if let Some(dir) = options.baseline {
            let module = std::path::Path::new(dir).join("phi_guard.wasm");
            if !module.exists() {
                return Err(format!("--baseline: no {}", module.display()).into());
            }
            variants.extend(bench::baseline_variants(dir));
            runs.extend(bench::BASELINE_RUNS);
        }
        (variants, runs)
    };
    let mut envoys = BTreeMap::new();
    for variant in variants {
        let v = variant.clone();
        let envoy = stack.start_inbound_variant(&format!("bench-{}", v.id), 1, move |yaml| {
            v.render(&yaml)
                .expect("variant renders from envoy/inbound.yaml")
        })?;
        println!(
            "  {} {:<48} Envoy pid {}",
            variant.id,
            variant.label,
            envoy.pid().unwrap_or(0)
        );
        envoys.insert(variant.id, envoy);
    }

    let fresh_needed = (options.rounds as u64 * options.fresh_rpcs) as usize;
    print!("minting {fresh_needed} RS256 tokens for the fresh-token runs… ");
    let started = Instant::now();
    let fresh = mint_tokens(&stack, fresh_needed).await?;
    println!("{:.1}s", started.elapsed().as_secs_f64());

    let leaf = &stack.workload(WORKLOAD.0).leaf;
    let caller = Caller {
        target: stack.target(),
        cert: leaf.cert.clone(),
        key: leaf.key.clone(),
        token: format!("Bearer {}", stack.token(USER)).parse()?,
        fresh: Arc::new(fresh),
    };

    let native_mask_mb_s = native_mask_throughput(&stack)?;
    println!("native masking (nurse, {STREAM_LIMIT} x {STREAM_NOTE_BYTES} B notes): {native_mask_mb_s:.0} MB/s");
    let native_fhir_mask_mb_s = native_fhir_mask_throughput(&stack)?;
    println!(
        "native masking (nurse, {FHIR_OBSERVATIONS} FHIR R4 Observations): {native_fhir_mask_mb_s:.0} MB/s"
    );

    // Rounds: every run once per round, the order rotated each round.
    let mut samples: BTreeMap<&'static str, Vec<Sample>> = BTreeMap::new();
    let mut fresh_used: BTreeMap<&'static str, usize> = BTreeMap::new();
    for round in 0..options.rounds {
        for i in 0..runs.len() {
            let run = runs[(i + round) % runs.len()];
            if let Some(only) = &options.only {
                if !only.iter().any(|id| id == run.id) {
                    continue;
                }
            }
            let envoy = &envoys[run.variant];
            let offset = fresh_used.entry(run.variant).or_default();
            let sample = measure(&caller, envoy, run, &options, offset).await?;
            let threads = sample.threads_per_rpc();
            println!(
                "round {}/{} {:<9} {:>7.1} µs/RPC (worker {:.1}, main {:.1}, V8 {:.1}) {:>7.0} RPC/s p99 {:>6.2} ms{}",
                round + 1,
                options.rounds,
                run.id,
                sample.cpu_us_per_rpc(),
                threads.workers_us,
                threads.main_us,
                threads.v8_us,
                sample.rps(),
                sample.p99_us as f64 / 1e3,
                if sample.errors > 0 {
                    format!("  ({} errors)", sample.errors)
                } else {
                    String::new()
                }
            );
            samples.entry(run.id).or_default().push(sample);
        }
    }

    if options.hostcost {
        let report = hostcost_report(&samples);
        let result = json!({
            "machine": machine,
            "options": {"rounds": options.rounds, "rpcs": options.rpcs,
                        "calls": bench::HOSTCOST_CALLS},
            "hostcost": report,
            "samples": samples,
        });
        write_result(&options.out, "results", &result)?;
        return Ok(());
    }
    if options.only.is_some() {
        // No summary from a subset of the runs; its samples are still worth keeping.
        let result = json!({
            "machine": machine,
            "options": {"rounds": options.rounds, "rpcs": options.rpcs, "only": options.only},
            "samples": samples,
        });
        write_result(&options.out, "samples", &result)?;
        return Ok(());
    }
    let rss_per_worker = rss_per_worker(&stack, &caller, &options).await?;

    let summaries: BTreeMap<&'static str, Summary> = samples
        .iter()
        .map(|(id, s)| (*id, Summary::of(s)))
        .collect();
    let baseline = summaries["a"].cpu_us_per_rpc.median;
    let rows: Vec<(Run, &Summary)> = runs.iter().map(|r| (*r, &summaries[r.id])).collect();
    println!(
        "\nEnvoy 1 worker, {} rounds, medians (min–max over rounds):\n",
        options.rounds
    );
    print!("{}", bench::markdown_table(&rows, baseline));

    let targets = bench::targets(&bench::Inputs {
        runs: &summaries,
        native_mask_mb_s,
        native_fhir_mask_mb_s,
        rss_full_chain_mib: rss_per_worker.0,
        wasm_sizes: &wasm_sizes,
    });
    println!("\nTargets:\n");
    for t in &targets {
        let verdict = if t.met() {
            "met".to_string()
        } else {
            format!("MISSED by {:.2}x", t.miss_factor())
        };
        let bound = if t.at_most { "≤" } else { "≥" };
        println!(
            "- {}: {:.1} {} ({} {} {}) — {verdict}; {}",
            t.name, t.measured, t.unit, bound, t.limit, t.unit, t.how
        );
    }
    println!(
        "\nWhat each stage adds in the one-module layout (Envoy CPU µs per GetPatient RPC: the medians' difference; the median of the differences within rounds, min–max):\n"
    );
    let additions = bench::per_filter_cpu(&summaries, &samples);
    for a in &additions {
        let w = a.within_rounds;
        println!(
            "- {}: {:.1}; within rounds {:.1} ({:.1} to {:.1})",
            a.what, a.of_medians, w.median, w.min, w.max
        );
    }
    println!("\nThe two layouts (Envoy CPU µs per GetPatient RPC, medians; added over a):\n");
    for (what, modules, single, one) in [
        ("jwt + rbac", "two", "c", "pc"),
        ("full chain", "four", "d", "pd"),
    ] {
        if let (Some(s), Some(p)) = (summaries.get(single), summaries.get(one)) {
            let (s, p) = (s.cpu_us_per_rpc.median, p.cpu_us_per_rpc.median);
            let (added_s, added_p) = (s - baseline, p - baseline);
            println!(
                "- {what}: {modules} modules {s:.1} (adds {added_s:.1}), one module {p:.1} (adds {added_p:.1}): the one module adds {:.0}% of what the single-stage layout adds",
                100.0 * added_p / added_s
            );
        }
    }
    if let Some(dir) = options.baseline {
        println!("\nThis build against the baseline build ({dir}), one run (added over a):\n");
        for (what, now, base) in [("jwt + rbac", "pc", "pcb"), ("full chain", "pd", "pdb")] {
            let (n, b) = (
                summaries[now].cpu_us_per_rpc.median,
                summaries[base].cpu_us_per_rpc.median,
            );
            let d = bench::paired_difference(&samples[now], &samples[base]);
            println!(
                "- {what}: {n:.1} µs/RPC (adds {:.1}) against {b:.1} (adds {:.1}); within each round this build minus the baseline: median {:+.1} µs ({:+.1} to {:+.1})",
                n - baseline,
                b - baseline,
                d.median,
                d.min,
                d.max
            );
        }
    }
    println!(
        "\n- Envoy RSS, full chain in one module: {:.0} MiB with 1 worker; {:+.1} MiB for each further worker ({:.0} MiB with 2); four modules {:.0} MiB, passthrough {:.0} MiB (medians over rounds, 1 worker)",
        rss_per_worker.0,
        rss_per_worker.1 - rss_per_worker.0,
        rss_per_worker.1,
        summaries["d"].rss_mib.median,
        summaries["a"].rss_mib.median,
    );
    if let Some(size) = pipeline_size {
        println!(
            "- phi_guard.wasm (the one module): {:.0} KiB; the four single-stage modules {:.0} KiB together",
            size as f64 / 1024.0,
            wasm_sizes.values().sum::<u64>() as f64 / 1024.0
        );
    }
    let errors: u64 = summaries.values().map(|s| s.errors).sum();
    if errors > 0 {
        println!(
            "\nWARNING: {errors} RPCs failed during the measured runs; see the per-round lines"
        );
    }

    let result = json!({
        "machine": machine,
        "options": {
            "rounds": options.rounds, "rpcs": options.rpcs, "fresh_rpcs": options.fresh_rpcs,
            "streams": options.streams, "concurrency": options.concurrency,
            "connections": options.connections,
            "stream": {"limit": STREAM_LIMIT, "note_bytes": STREAM_NOTE_BYTES},
            "fhir_stream": {"observations": FHIR_OBSERVATIONS},
        },
        "variants": bench::variants().iter().map(|v| json!({"id": v.id, "label": v.label})).collect::<Vec<_>>(),
        "runs": runs.iter().map(|r| json!({
            "id": r.id, "variant": r.variant, "workload": r.workload, "label": r.label,
            "summary": summaries[r.id], "samples": samples[r.id],
        })).collect::<Vec<_>>(),
        "targets": targets.iter().map(|t| json!({
            "name": t.name, "measured": t.measured, "unit": t.unit, "at_most": t.at_most,
            "limit": t.limit, "met": t.met(), "detail": t.how,
        })).collect::<Vec<_>>(),
        "per_filter_cpu_us": additions,
        "native_mask_mb_s": native_mask_mb_s,
        "native_fhir_mask_mb_s": native_fhir_mask_mb_s,
        "wasm_bytes": wasm_sizes,
        "pipeline_wasm_bytes": pipeline_size,
        "rss_full_chain_mib": {"workers_1": rss_per_worker.0, "workers_2": rss_per_worker.1},
        "errors": errors,
    });
    write_result(&options.out, "results", &result)?;
    if errors > 0 {
        return Err(format!("{errors} RPCs failed").into());
    }
    Ok(())
}

/// Writes a run's JSON to `path` (its directory made if need be) and says where.
fn write_result(
    path: &std::path::Path,
    what: &str,
    result: &serde_json::Value,
) -> Result<(), Error> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(path, serde_json::to_vec_pretty(result)?)?;
    println!("\n{what}: {}", path.display());
    Ok(())
}

/// `--hostcost`'s report, printed and returned for the result file: one wasm filter's floor
/// over the passthrough, then each kind's cost per repetition over the module making none.
/// Differences are taken within each round (the runs of a round are seconds apart) and their
/// median reported, which a shared host's drift between rounds does not move as it moves the
/// medians of each run.
fn hostcost_report(samples: &BTreeMap<&'static str, Vec<Sample>>) -> serde_json::Value {
    let paired = |x: &str, y: &str| match (samples.get(x), samples.get(y)) {
        (Some(x), Some(y)) => Some(bench::paired_difference(x, y).median),
        _ => None,
    };
    let (Some(a), Some(h0)) = (
        samples.get("a").map(|s| Summary::of(s).cpu_us_per_rpc),
        paired("h0", "a"),
    ) else {
        return serde_json::Value::Null;
    };
    println!(
        "\nEnvoy CPU µs per GetPatient RPC (medians of the differences within each round):\n\n- passthrough: {:.1} ({:.1}–{:.1})\n- one wasm module making no host call adds {h0:.1} over the passthrough",
        a.median, a.min, a.max
    );
    println!("\n| host call (through phi_guard_host::ProxyHost) | repetitions per request | adds | µs per repetition |\n|---|---|---|---|");
    let mut kinds = Vec::new();
    for (id, kind, n) in bench::HOSTCOST_KINDS {
        if let Some(d) = paired(id, "h0") {
            let each = d / f64::from(n);
            println!("| {kind} | {n} | {d:.1} | {each:.2} |");
            kinds.push(
                json!({"id": id, "kind": kind, "per_request": n, "adds_us": d, "us_each": each}),
            );
        }
    }
    json!({"passthrough_us": a, "module_floor_us": h0, "kinds": kinds})
}

/// One measured run: warm up, then `n` RPCs with Envoy's CPU read before and after.
async fn measure(
    caller: &Caller,
    envoy: &Envoy,
    run: Run,
    options: &Options,
    fresh_offset: &mut usize,
) -> Result<Sample, Error> {
    let pid = envoy.pid().ok_or("Envoy is not running")?;
    let target = MtlsTarget {
        endpoint: envoy.listen.to_string(),
        ..caller.target.clone()
    };
    let mut channels = Vec::new();
    for _ in 0..options.connections {
        channels.push(
            client::mtls_channel(
                &target,
                Some(ClientCert {
                    cert: &caller.cert,
                    key: &caller.key,
                }),
            )
            .await?,
        );
    }
    let (n, concurrency) = match run.workload {
        Workload::Get => (options.rpcs, options.concurrency),
        Workload::FreshToken => (options.fresh_rpcs, options.concurrency),
        // Large messages: fewer in flight, as many as there are connections.
        Workload::Stream | Workload::FhirStream => (options.streams, options.connections),
    };
    let warmup = match run.workload {
        Workload::Stream | Workload::FhirStream => options.warmup / 20 + 1,
        _ => options.warmup,
    };
    // Warm-up with the reused token: connections, JIT tiers and caches settle first.
    let warm = if run.workload == Workload::FreshToken {
        Workload::Get
    } else {
        run.workload
    };
    drive(caller, &channels, warm, warmup, concurrency, None).await;

    let fresh = (run.workload == Workload::FreshToken).then(|| {
        let from = *fresh_offset;
        *fresh_offset += n as usize;
        from
    });
    let cpu_before = process_cpu_us(pid)?;
    let started = Instant::now();
    let outcome = drive(caller, &channels, run.workload, n, concurrency, fresh).await;
    let wall = started.elapsed();
    let cpu_after = process_cpu_us(pid)?;
    let mut latencies = outcome.latencies_us;
    latencies.sort_unstable();
    Ok(Sample {
        rpcs: n,
        errors: outcome.errors,
        threads: cpu_after.since(&cpu_before),
        wall_s: wall.as_secs_f64(),
        p50_us: bench::percentile(&latencies, 50.0),
        p99_us: bench::percentile(&latencies, 99.0),
        envoy_rss_kib: process_rss_kib(pid)?,
        response_bytes: outcome.bytes,
    })
}

#[derive(Default)]
struct Outcome {
    latencies_us: Vec<u64>,
    errors: u64,
    bytes: u64,
}

/// `n` RPCs from `concurrency` callers in a closed loop over `channels`. With `fresh_from`,
/// RPC k carries fresh token `fresh_from + k`.
async fn drive(
    caller: &Caller,
    channels: &[Channel],
    workload: Workload,
    n: u64,
    concurrency: usize,
    fresh_from: Option<usize>,
) -> Outcome {
    let next = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for i in 0..concurrency {
        let channel = channels[i % channels.len()].clone();
        let mut client = (
            PatientServiceClient::new(channel.clone()),
            FhirServiceClient::new(channel),
        );
        let next = next.clone();
        let token = caller.token.clone();
        let fresh = caller.fresh.clone();
        tasks.push(tokio::spawn(async move {
            let mut out = Outcome::default();
            loop {
                let k = next.fetch_add(1, Ordering::Relaxed);
                if k >= n {
                    break;
                }
                let token = match fresh_from {
                    Some(from) => fresh[from + k as usize].clone(),
                    None => token.clone(),
                };
                let started = Instant::now();
                match call(&mut client, workload, token).await {
                    Ok(bytes) => out.bytes += bytes,
                    Err(_) => out.errors += 1,
                }
                out.latencies_us.push(started.elapsed().as_micros() as u64);
            }
            out
        }));
    }
    let mut total = Outcome::default();
    for task in tasks {
        match task.await {
            Ok(out) => {
                total.latencies_us.extend(out.latencies_us);
                total.errors += out.errors;
                total.bytes += out.bytes;
            }
            Err(_) => total.errors += 1,
        }
    }
    total
}

/// One RPC; the response payload bytes received.
async fn call(
    (client, fhir_client): &mut (PatientServiceClient<Channel>, FhirServiceClient<Channel>),
    workload: Workload,
    token: MetadataValue<Ascii>,
) -> Result<u64, tonic::Status> {
    match workload {
        Workload::FhirStream => {
            let body = fhir::ListObservationsRequest {
                patient_id: fhir::PATIENT_ID.into(),
                limit: FHIR_OBSERVATIONS,
            }
            .encode_to_vec();
            let mut request = tonic::Request::new(bytes::Bytes::from(body));
            request.metadata_mut().insert("authorization", token);
            let mut stream = fhir_client.list_observations(request).await?.into_inner();
            let mut bytes = 0;
            while let Some(message) = stream.message().await? {
                bytes += message.len() as u64;
            }
            Ok(bytes)
        }
        Workload::Get | Workload::FreshToken => {
            let mut request = tonic::Request::new(GetPatientRequest {
                patient_id: PATIENT_ID.into(),
            });
            request.metadata_mut().insert("authorization", token);
            let patient = client.get_patient(request).await?.into_inner();
            Ok(patient.encoded_len() as u64)
        }
        Workload::Stream => {
            let mut request = tonic::Request::new(ListEncountersRequest {
                patient_id: PATIENT_ID.into(),
                limit: STREAM_LIMIT,
                note_bytes: STREAM_NOTE_BYTES,
            });
            request.metadata_mut().insert("authorization", token);
            let mut stream = client.list_encounters(request).await?.into_inner();
            let mut bytes = 0;
            while let Some(message) = stream.message().await? {
                bytes += message.encoded_len() as u64;
            }
            Ok(bytes)
        }
    }
}

/// `count` distinct valid tokens for the demo nurse, signed by the stack's RS256 key.
async fn mint_tokens(stack: &Stack, count: usize) -> Result<Vec<MetadataValue<Ascii>>, Error> {
    let pem = stack.idp.key.private_pem();
    let kid = stack.idp.key.kid.clone();
    let ttl = jwt_simple::prelude::Duration::from_mins(stack::TOKEN_TTL_MINUTES);
    let threads = 2;
    let mut tasks = Vec::new();
    for t in 0..threads {
        let (pem, kid) = (pem.clone(), kid.clone());
        tasks.push(tokio::task::spawn_blocking(move || {
            let key = issuer::SigningKey::rs256_from_pem(&kid, &pem)?;
            let mut claims = UserClaims::user(USER, &["nurse"]);
            (t..count)
                .step_by(threads)
                .map(|i| {
                    // A distinct subject suffix makes every token (and its signature) new.
                    claims.subject = format!("{USER}-{i}");
                    let token = key.mint(&claims, issuer::AUDIENCE, ttl);
                    Ok(format!("Bearer {token}").parse()?)
                })
                .collect::<Result<Vec<_>, Error>>()
        }));
    }
    let mut tokens = Vec::with_capacity(count);
    for task in tasks {
        tokens.extend(task.await??);
    }
    Ok(tokens)
}

/// The mask filter's own code, natively, over the stream runs' messages as the nurse sees
/// them: bytes in per second.
fn native_mask_throughput(stack: &Stack) -> Result<f64, Error> {
    let messages = (0..STREAM_LIMIT)
        .map(|i| encounter(i, STREAM_NOTE_BYTES).encode_to_vec())
        .collect();
    native_throughput(stack, "health.v1.PatientService/ListEncounters", messages)
}

/// The same over the FHIR stream's Observations (Google's R4 protos, masked through the
/// catalog's entries).
fn native_fhir_mask_throughput(stack: &Stack) -> Result<f64, Error> {
    let messages = (0..FHIR_OBSERVATIONS).map(fhir::observation).collect();
    native_throughput(stack, fhir::LIST_OBSERVATIONS, messages)
}

/// `StreamMasker` with the stack's mask config over `messages` as responses of `method`, as
/// the nurse sees them, in the 16 KiB chunks Envoy hands the filter, for 1.5 s: MB in per
/// second.
fn native_throughput(stack: &Stack, method: &str, messages: Vec<Vec<u8>>) -> Result<f64, Error> {
    let yaml = std::fs::read_to_string(&stack.inbound.config)?;
    let config_json = stack::embedded_filter_config(&yaml, "mask").ok_or("no mask config")?;
    let key = std::fs::read_to_string(&stack.mask_key)?;
    let config = MaskConfig::parse(&serde_json::to_vec(&config_json)?, &|_| Some(key.clone()))
        .map_err(|e| format!("mask config: {e}"))?;
    let plan = config
        .plans
        .method(method)
        .ok_or_else(|| format!("{method} not in the descriptor set"))?;
    let mut stream = Vec::new();
    for message in messages {
        stream.push(0);
        stream.extend((message.len() as u32).to_be_bytes());
        stream.extend(message);
    }
    let (_, block) = config.policy.for_role(Some("nurse"));
    let rewriter = config.rewriter(block);
    let mut bytes = 0u64;
    let started = Instant::now();
    while started.elapsed() < Duration::from_millis(1500) {
        let mut masker = StreamMasker::new(plan, Encoding::Identity, config.max_message_bytes);
        // Envoy hands the filter DATA frames of up to 16 KiB.
        for chunk in stream.chunks(16 * 1024) {
            std::hint::black_box(masker.feed(&rewriter, chunk).map_err(|e| e.to_string())?);
        }
        masker.finish().map_err(|e| e.to_string())?;
        bytes += stream.len() as u64;
    }
    Ok(bytes as f64 / started.elapsed().as_secs_f64() / 1e6)
}

/// Envoy RSS with the shipped full chain (one module) with 1 and with 2 workers, each after
/// the same load (MiB): each worker holds its own V8 isolate and filter instances.
async fn rss_per_worker(
    stack: &Stack,
    caller: &Caller,
    options: &Options,
) -> Result<(f64, f64), Error> {
    let full = bench::variants()
        .into_iter()
        .find(|v| v.id == "q")
        .ok_or("no full-chain variant")?;
    let mut rss = Vec::new();
    for workers in [1, 2] {
        let v = full.clone();
        let envoy =
            stack.start_inbound_variant(&format!("bench-q-{workers}w"), workers, move |yaml| {
                v.render(&yaml).expect("variant renders")
            })?;
        let run = Run {
            id: "rss",
            variant: "q",
            workload: Workload::Get,
            label: "",
        };
        // Enough connections that every worker gets some.
        let opts = Options {
            connections: 8,
            ..options.clone()
        };
        measure(caller, &envoy, run, &opts, &mut 0).await?;
        rss.push(process_rss_kib(envoy.pid().ok_or("Envoy is not running")?)? as f64 / 1024.0);
    }
    Ok((rss[0], rss[1]))
}

/// CPU time of a process, all threads, user and system (µs), by thread class
/// ([`bench::ThreadCpu`]): each thread's time on a CPU from `/proc/PID/task/TID/schedstat`
/// (nanoseconds, the scheduler's own accounting), classed by its `comm`. `/proc/PID/stat`'s
/// utime + stime count clock ticks (10 ms at the usual 100 Hz), which over a run of a few
/// hundred milliseconds is too coarse for the few µs per RPC a native filter adds. Envoy's
/// threads live as long as the process, so none of the run's time is lost with an exited
/// thread. A kernel without schedstat files (no `CONFIG_SCHED_INFO`) gets the ticks, all of
/// them counted as `other`.
fn process_cpu_us(pid: u32) -> Result<ThreadCpu, Error> {
    let mut cpu = ThreadCpu::default();
    let mut read = false;
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        let dir = task?.path();
        let path = dir.join("schedstat");
        // A thread that ended between the listing and the read has nothing left to count.
        let Ok(text) = std::fs::read_to_string(&path) else {
            continue;
        };
        let on_cpu = text
            .split_whitespace()
            .next()
            .ok_or_else(|| format!("empty {}", path.display()))?;
        let comm = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
        cpu.add(comm.trim_end(), on_cpu.parse::<u64>()? as f64 / 1e3);
        read = true;
    }
    if !read {
        cpu.add("", process_cpu_ticks_us(pid)?);
    }
    Ok(cpu)
}

/// User + system CPU of a process, all threads, from /proc/PID/stat, in clock ticks (µs).
fn process_cpu_ticks_us(pid: u32) -> Result<f64, Error> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .ok_or("malformed /proc stat")?
        .1
        .split_whitespace()
        .collect();
    let ticks: u64 = fields[11].parse::<u64>()? + fields[12].parse::<u64>()?;
    Ok(ticks as f64 * 1e6 / clock_ticks_per_second() as f64)
}

fn clock_ticks_per_second() -> u64 {
    static TCK: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *TCK.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(100)
    })
}

fn process_rss_kib(pid: u32) -> Result<u64, Error> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| "no VmRSS".into())
}

/// Each filter module's size.
fn wasm_sizes() -> Result<BTreeMap<String, u64>, Error> {
    let dir = stack::wasm_dir()?;
    let mut sizes = BTreeMap::new();
    for entry in std::fs::read_dir(&dir)? {
        let path = entry?.path();
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        // The single-stage modules; tools/hostcost's measuring module is not one.
        if name.starts_with("phi_guard_")
            && name.ends_with(".wasm")
            && name != "phi_guard_hostcost.wasm"
        {
            sizes.insert(name.to_string(), std::fs::metadata(&path)?.len());
        }
    }
    Ok(sizes)
}

/// What the numbers came from.
fn machine() -> serde_json::Value {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|m| m.trim_start_matches([' ', '\t', ':']).to_string())
        .unwrap_or_default();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let memory_gib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        })
        .map_or(0.0, |kib| kib / 1024.0 / 1024.0);
    let envoy = stack::envoy_binary()
        .ok()
        .and_then(|bin| {
            std::process::Command::new(bin)
                .arg("--version")
                .output()
                .ok()
        })
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    // `envoy --version` prints the binary's path, then `version: HASH/VERSION/...`.
    let envoy = envoy
        .split_once("version: ")
        .map_or(envoy.as_str(), |(_, v)| v)
        .to_string();
    let commit = std::process::Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .current_dir(phi_guard_tools::repo_root())
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    json!({
        "summary": format!("{model}, {cores} cores, {memory_gib:.0} GiB, Linux {}, Envoy {envoy}", kernel.trim()),
        "cpu": model,
        "cores": cores,
        "memory_gib": memory_gib,
        "kernel": kernel.trim(),
        "envoy": envoy,
        "commit": commit,
        "date_unix": std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs()),
    })
}
