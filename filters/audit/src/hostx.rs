//! What audit asks of the host, as sets of `filters/host`'s capability traits: the HTTP
//! filter's ([`AuditHost`]) and the singleton service's ([`ServiceHost`]). Both are
//! implemented by anything that implements their parts: `phi_guard_host::ProxyHost` in
//! Envoy, `phi_guard_host::FakeHost` in tests (fakes on one `phi_guard_host::Bus` share
//! queues and shared data, so a filter and a service can be driven end to end natively).

use phi_guard_host::{
    Clock, Environment, Gauges, Host, HttpCalls, Queues, SharedData, Timers, Trailers,
};

/// The HTTP filter: the stream ([`Host`]), millisecond time, response trailers (for
/// `grpc-status`), the service's queue and its shared data (the backlog flag, the format).
pub trait AuditHost: Host + Clock + Trailers + Queues + SharedData {}

impl<H: Host + Clock + Trailers + Queues + SharedData + ?Sized> AuditHost for H {}

/// The singleton service's root context: logs and counters ([`Host`]), millisecond time, the
/// chain key from the environment, its queue, the flag in shared data, the collector calls,
/// the tick and a gauge.
pub trait ServiceHost:
    Host + Clock + Environment + Queues + SharedData + HttpCalls + Timers + Gauges
{
}

impl<
        H: Host + Clock + Environment + Queues + SharedData + HttpCalls + Timers + Gauges + ?Sized,
    > ServiceHost for H
{
}
