//! The one way a stage reads or writes a filter-state contract
//! ([`phi_guard_common::state::StateContract`]): no stage names a `phi_guard.*` key or
//! encodes its bytes itself.

use phi_guard_common::state::StateContract;

use crate::Host;

/// The value under `T::KEY` was there but is not `T`'s format (another writer, a version
/// skew, a spoof). Readers fail closed on it as on a missing value; they may say so in a log
/// line (never echoing the bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unreadable;

/// This stream's `T`: `Ok(None)` when no filter wrote it, `Err(Unreadable)` when what is
/// there is not a `T`.
pub fn read_state<T: StateContract, H: Host + ?Sized>(host: &H) -> Result<Option<T>, Unreadable> {
    match host.property(&[T::KEY]) {
        None => Ok(None),
        Some(bytes) => T::decode(&bytes).map(Some).ok_or(Unreadable),
    }
}

/// Writes `value` as this stream's `T`, for the filters after this one and Envoy's access log.
pub fn write_state<T: StateContract, H: Host + ?Sized>(host: &H, value: &T) {
    host.set_property(&[T::KEY], &value.encode());
}
