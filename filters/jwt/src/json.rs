//! Strict JSON for JOSE headers, JWT payloads and JWK sets: the one strict parser, shared with
//! every filter's configuration (see `phi_guard_common::json`).

pub use phi_guard_common::json::{parse_object, JsonError};
