//! The free-text prefilter against the whole-text search, on any detector pattern: a custom
//! pattern (the input's first line, if it compiles) beside the four built-ins, over the rest
//! of the input as text. Searching only the prefilter's windows must find exactly the matches,
//! in the same order, that searching every byte finds; a miss would leave an identifier
//! unmasked in free text.
#![no_main]

use libfuzzer_sys::fuzz_target;
use phi_guard_mask::freetext::{
    Detectors, DEFAULT_MRN_PATTERN, EMAIL_PATTERN, PHONE_PATTERN, SSN_PATTERN,
};

fuzz_target!(|data: &[u8]| {
    let split = data.iter().position(|&b| b == b'\n').unwrap_or(data.len());
    let Ok(pattern) = std::str::from_utf8(&data[..split]) else {
        return;
    };
    // Keep compile times (and the DFA's size) bounded.
    if pattern.len() > 64 {
        return;
    }
    let text = data.get(split + 1..).unwrap_or_default();
    let Ok(detectors) = Detectors::new(&[
        (10, pattern.to_string()),
        (7, EMAIL_PATTERN.into()),
        (1, SSN_PATTERN.into()),
        (6, PHONE_PATTERN.into()),
        (2, DEFAULT_MRN_PATTERN.into()),
    ]) else {
        return;
    };
    let found = |windowed| {
        let mut v = Vec::new();
        detectors
            .each_by(windowed, text, |f| v.push(f))
            .map(|()| v)
            .ok()
    };
    assert_eq!(found(true), found(false), "pattern {pattern:?}");
});
