//! The policy parser and compiler on arbitrary JSON-ish input: errors, never panics.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = phi_guard_rbac::Policy::parse(data);
});
