//! The one way a stage reads or writes a filter-state contract
//! ([`phi_guard_common::state::StateContract`]): no stage names a `phi_guard.*` key or
//! encodes its bytes itself.
//!
//! Writes reach the host's filter state (Envoy's access log prints them; a filter after this
//! one, in another module, reads them there), except those the host does not publish
//! ([`Host::publishes_state`], the pipeline's `filter_state` setting). A host with typed slots
//! ([`Host::state_slots`], the pipeline) also keeps the value, and a later read of it in the
//! same stream is that value: no bytes are parsed between stages of one module. A contract
//! no stage of this stream wrote is read from filter state, so a single-stage module placed
//! before the pipeline still hands its result over.

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
    if let Some(slots) = host.state_slots() {
        if let Some(value) = T::slot(&mut slots.borrow_mut()).as_ref() {
            return Ok(Some(value.clone()));
        }
    }
    from_filter_state(host)
}

/// [`read_state`] for the stream's last reader (audit, at the stream's end): the value is
/// moved out of the host's typed slot instead of copied. A later read of `T` in this stream
/// finds the slot empty and reads filter state, as on a host without slots.
pub fn take_state<T: StateContract, H: Host + ?Sized>(host: &H) -> Result<Option<T>, Unreadable> {
    if let Some(slots) = host.state_slots() {
        if let Some(value) = T::slot(&mut slots.borrow_mut()).take() {
            return Ok(Some(value));
        }
    }
    from_filter_state(host)
}

fn from_filter_state<T: StateContract, H: Host + ?Sized>(
    host: &H,
) -> Result<Option<T>, Unreadable> {
    match host.property(&[T::KEY]) {
        None => Ok(None),
        Some(bytes) => T::decode(&bytes).map(Some).ok_or(Unreadable),
    }
}

/// Writes `value` as this stream's `T`, for the filters after this one and Envoy's access log
/// (unless the host does not publish `T`: [`Host::publishes_state`]), and into the host's typed
/// slot, if it has one.
pub fn write_state<T: StateContract, H: Host + ?Sized>(host: &H, value: &T) {
    if host.publishes_state(T::KEY) {
        host.set_property(&[T::KEY], &value.encode());
    }
    if let Some(slots) = host.state_slots() {
        *T::slot(&mut slots.borrow_mut()) = Some(value.clone());
    }
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;

    use phi_guard_common::{state, AuthzDecision, AuthzMode, StateSlots, Verdict};

    use super::*;
    use crate::FakeHost;

    fn decision() -> AuthzDecision {
        AuthzDecision {
            decision: Verdict::Allow,
            rule: None,
            role: "nurse".into(),
            policy_version: "v".into(),
            mode: AuthzMode::Enforce,
            shadow_decision: None,
            reason: "matched_allow".into(),
            break_glass: false,
            break_glass_reason: None,
        }
    }

    /// A host with slots, as the pipeline's is.
    struct Slotted {
        base: FakeHost,
        slots: RefCell<StateSlots>,
    }

    fn slotted() -> Slotted {
        Slotted {
            base: FakeHost::default(),
            slots: RefCell::default(),
        }
    }

    impl Host for Slotted {
        fn request_header(&self, name: &str) -> Option<String> {
            self.base.request_header(name)
        }
        fn request_headers(&self) -> Vec<(String, String)> {
            self.base.request_headers()
        }
        fn set_request_header(&self, name: &str, value: &str) {
            self.base.set_request_header(name, value)
        }
        fn remove_request_header(&self, name: &str) {
            self.base.remove_request_header(name)
        }
        fn response_header(&self, name: &str) -> Option<String> {
            self.base.response_header(name)
        }
        fn remove_response_header(&self, name: &str) {
            self.base.remove_response_header(name)
        }
        fn property(&self, path: &[&str]) -> Option<Vec<u8>> {
            self.base.property(path)
        }
        fn set_property(&self, path: &[&str], value: &[u8]) {
            self.base.set_property(path, value)
        }
        fn send_grpc_error(
            &self,
            status: phi_guard_common::GrpcStatus,
            extra_headers: &[(&str, &str)],
        ) {
            self.base.send_grpc_error(status, extra_headers)
        }
        fn now(&self) -> phi_guard_common::UnixSeconds {
            self.base.now()
        }
        fn log(&self, level: crate::LogLevel, message: &str) {
            self.base.log(level, message)
        }
        fn define_counter(&self, name: &str) -> Option<u32> {
            self.base.define_counter(name)
        }
        fn increment_counter(&self, id: u32, by: i64) {
            self.base.increment_counter(id, by)
        }
        fn state_slots(&self) -> Option<&RefCell<StateSlots>> {
            Some(&self.slots)
        }
    }

    #[test]
    fn without_slots_state_goes_through_the_bytes() {
        let host = FakeHost::default();
        assert_eq!(read_state::<AuthzDecision, _>(&host), Ok(None));
        write_state(&host, &decision());
        assert_eq!(
            host.property(&[state::AUTHZ]),
            Some(decision().encode()),
            "the bytes Envoy's access log prints"
        );
        assert_eq!(read_state(&host), Ok(Some(decision())));
        host.insert_property(&[state::AUTHZ], b"{\"decision\":\"allow\"}");
        assert_eq!(read_state::<AuthzDecision, _>(&host), Err(Unreadable));
    }

    #[test]
    fn with_slots_a_written_value_is_read_back_without_parsing() {
        let host = slotted();
        write_state(&host, &decision());
        // Still written once to filter state, for the access log and later modules.
        assert_eq!(
            host.base.property(&[state::AUTHZ]),
            Some(decision().encode())
        );
        assert_eq!(host.slots.borrow().authz, Some(decision()));
        // What the slot holds is what a later stage reads, whatever the bytes say now (no
        // stage of this stream parses them).
        host.base.insert_property(&[state::AUTHZ], b"garbage");
        assert_eq!(read_state(&host), Ok(Some(decision())));
    }

    #[test]
    fn take_moves_the_slot_out_and_then_reads_filter_state() {
        let host = slotted();
        write_state(&host, &decision());
        assert_eq!(take_state(&host), Ok(Some(decision())));
        assert_eq!(host.slots.borrow().authz, None, "moved, not copied");
        // The slot is empty now: a later read is filter state's, as without slots.
        host.base.insert_property(&[state::AUTHZ], b"{}");
        assert_eq!(read_state::<AuthzDecision, _>(&host), Err(Unreadable));
        assert_eq!(take_state::<AuthzDecision, _>(&host), Err(Unreadable));
        // Without slots take is read.
        let plain = FakeHost::default();
        write_state(&plain, &decision());
        assert_eq!(take_state(&plain), Ok(Some(decision())));
        assert_eq!(read_state(&plain), Ok(Some(decision())));
    }

    #[test]
    fn with_slots_a_value_this_stream_did_not_write_comes_from_filter_state() {
        let host = slotted();
        assert_eq!(read_state::<AuthzDecision, _>(&host), Ok(None));
        // A single-stage module before the pipeline wrote it.
        host.base
            .insert_property(&[state::AUTHZ], &decision().encode());
        assert_eq!(read_state(&host), Ok(Some(decision())));
        host.base.insert_property(&[state::AUTHZ], b"{}");
        assert_eq!(read_state::<AuthzDecision, _>(&host), Err(Unreadable));
    }
}
