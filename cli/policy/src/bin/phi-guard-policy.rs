//! `phi-guard-policy`: validate a phi-guard rbac policy, check one request against it, or run
//! a file of expectation cases. See `phi_guard_policy_cli` and filters/rbac/README.md.

use std::io::{stderr, stdout};
use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let code = phi_guard_policy_cli::run(&args, &mut stdout().lock(), &mut stderr().lock());
    ExitCode::from(u8::try_from(code).unwrap_or(2))
}
