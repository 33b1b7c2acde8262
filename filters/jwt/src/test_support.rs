//! Lets every unit test run natively (`cargo test`) and on wasm32-unknown-unknown under
//! wasm-bindgen-test: test modules `use crate::test_support::test;`, which shadows the
//! built-in `#[test]` with the right attribute for the target.

#[cfg(not(target_arch = "wasm32"))]
pub use core::prelude::v1::test;
#[cfg(target_arch = "wasm32")]
pub use wasm_bindgen_test::wasm_bindgen_test as test;
