//! `phi-guard-audit-collector [--listen 127.0.0.1:4318] --out FILE [--fail-status N [--fail-count M]]`
//!
//! A stand-in OTLP/HTTP logs collector (binary protobuf or JSON) (see `phi_guard_audit_cli::collector`). Prints
//! `listening on ADDR` once bound; stops on SIGINT/SIGTERM.

#[cfg(not(target_arch = "wasm32"))]
fn main() {
    std::process::exit(native::run(std::env::args().skip(1).collect()));
}

#[cfg(target_arch = "wasm32")]
fn main() {}

#[cfg(not(target_arch = "wasm32"))]
mod native {
    use std::io::Write;
    use std::net::SocketAddr;
    use std::path::PathBuf;

    use phi_guard_audit_cli::collector::{Collector, FailMode};

    const USAGE: &str = "usage: phi-guard-audit-collector [--listen 127.0.0.1:4318] --out FILE [--fail-status N [--fail-count M]]";

    pub fn run(args: Vec<String>) -> i32 {
        let mut listen: SocketAddr = ([127, 0, 0, 1], 4318).into();
        let mut out = None;
        let mut fail = FailMode::default();
        let mut it = args.into_iter();
        while let Some(a) = it.next() {
            let value = match a.as_str() {
                "-h" | "--help" => {
                    println!("{USAGE}");
                    return 0;
                }
                _ => it.next(),
            };
            let ok = match (a.as_str(), value) {
                ("--listen", Some(v)) => v.parse().map(|v| listen = v).is_ok(),
                ("--out", Some(v)) => {
                    out = Some(PathBuf::from(v));
                    true
                }
                ("--fail-status", Some(v)) => v
                    .parse::<u16>()
                    .ok()
                    .filter(|s| (400..=599).contains(s))
                    .map(|s| fail.status = Some(s))
                    .is_some(),
                ("--fail-count", Some(v)) => v.parse().map(|n| fail.remaining = Some(n)).is_ok(),
                _ => false,
            };
            if !ok {
                eprintln!("bad argument {a}\n{USAGE}");
                return 2;
            }
        }
        let Some(out) = out else {
            eprintln!("{USAGE}");
            return 2;
        };
        let rt = match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(rt) => rt,
            Err(e) => {
                eprintln!("runtime: {e}");
                return 2;
            }
        };
        rt.block_on(async move {
            let collector = match Collector::start(listen, &out, fail).await {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("collector: {e}");
                    return 2;
                }
            };
            println!("listening on {}", collector.addr);
            let _ = std::io::stdout().flush();
            let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending::<()>().await } } => {}
            }
            let stats = collector.stats();
            collector.stop().await;
            eprintln!(
                "collector stopped: {} requests, {} records, {} failed",
                stats.requests, stats.records, stats.failed
            );
            0
        })
    }
}
