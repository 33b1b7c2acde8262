//! The gRPC frame splitter on arbitrary bytes cut into arbitrary chunks: every completed
//! frame has the length its prefix declared, and the buffer stays bounded.
#![no_main]

use libfuzzer_sys::fuzz_target;
use phi_guard_mask::Framer;

const MAX: usize = 1 << 12;

fuzz_target!(|data: &[u8]| {
    let Some((&cut, rest)) = data.split_first() else {
        return;
    };
    let step = usize::from(cut).max(1);
    let mut framer = Framer::new(MAX);
    for chunk in rest.chunks(step) {
        let fed = framer.feed(chunk, |_flag, payload| {
            assert!(payload.len() <= MAX);
            Ok(())
        });
        if fed.is_err() {
            return;
        }
    }
    let _ = framer.finish();
});
