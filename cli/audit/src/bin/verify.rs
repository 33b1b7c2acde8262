//! `phi-guard-audit-verify --key-file KEY [--partial] [--expect-count N] [--single-segment]
//! [--break-glass] FILE...`
//!
//! Verifies the audit chain in collector JSON lines and/or OTLP request bodies, in the order
//! the files are given. Exit 0 with `ok: N events, chain intact`; 1 with the first problem
//! and where it is; 2 for usage or I/O errors. With `--break-glass`, once the chain verified,
//! it also lists every break-glass decision for post-access review, one line each.

#[cfg(not(target_arch = "wasm32"))]
fn main() {
    std::process::exit(native::run(std::env::args().skip(1).collect()));
}

#[cfg(target_arch = "wasm32")]
fn main() {}

#[cfg(not(target_arch = "wasm32"))]
mod native {
    use phi_guard_audit::chain::ChainKey;
    use phi_guard_audit::verify::{break_glass_accesses, parse_input, verify, VerifyOptions};

    const USAGE: &str = "usage: phi-guard-audit-verify --key-file KEY [--partial] [--expect-count N] [--single-segment] [--break-glass] FILE...";

    pub fn run(args: Vec<String>) -> i32 {
        let mut key_file = None;
        let mut opts = VerifyOptions::default();
        let mut files = Vec::new();
        let mut review = false;
        let mut it = args.into_iter();
        while let Some(a) = it.next() {
            match a.as_str() {
                "--key-file" => key_file = it.next(),
                "--partial" => opts.partial = true,
                "--single-segment" => opts.single_segment = true,
                "--break-glass" => review = true,
                "--expect-count" => match it.next().and_then(|n| n.parse().ok()) {
                    Some(n) => opts.expect_count = Some(n),
                    None => {
                        eprintln!("--expect-count needs a number\n{USAGE}");
                        return 2;
                    }
                },
                "-h" | "--help" => {
                    println!("{USAGE}");
                    return 0;
                }
                _ if a.starts_with("--") => {
                    eprintln!("unknown option {a}\n{USAGE}");
                    return 2;
                }
                _ => files.push(a),
            }
        }
        let (Some(key_file), false) = (key_file, files.is_empty()) else {
            eprintln!("{USAGE}");
            return 2;
        };
        let key = match std::fs::read(&key_file) {
            Ok(bytes) => match ChainKey::from_file_bytes(&bytes) {
                Some(k) => k,
                None => {
                    eprintln!(
                        "key file {key_file}: key must be at least {} bytes",
                        phi_guard_audit::chain::MIN_KEY_LEN
                    );
                    return 2;
                }
            },
            Err(e) => {
                eprintln!("key file {key_file}: {e}");
                return 2;
            }
        };
        let mut records = Vec::new();
        for f in &files {
            match std::fs::read_to_string(f) {
                Ok(text) => records.extend(parse_input(f, &text)),
                Err(e) => {
                    eprintln!("{f}: {e}");
                    return 2;
                }
            }
        }
        match verify(&records, &key, &opts) {
            Ok(report) => {
                println!("{report}");
                if review {
                    let accesses = break_glass_accesses(&records);
                    println!("break-glass decisions for review: {}", accesses.len());
                    for access in accesses {
                        println!("  {access}");
                    }
                }
                0
            }
            Err(failure) => {
                println!("FAIL: {failure}");
                1
            }
        }
    }
}
