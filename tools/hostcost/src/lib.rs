//! `phi_guard_hostcost.wasm`: a measuring module, not a filter. Configured with one kind of
//! host call and a count `n`, it makes that call `n` times in each request's
//! `on_http_request_headers`, through the same `phi_guard_host::ProxyHost` the stages use,
//! and lets the request through. `phi-bench --hostcost` puts it alone in front of the
//! passthrough config and reads Envoy's CPU per RPC: (`kind` − `none`) / `n` is one call's
//! cost in V8, and `none` − passthrough is the cost of being a wasm filter at all.
//!
//! Configuration (JSON): `{"kind": "<Kind in snake_case>", "n": <count, 0..=1000>}`.

#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

use phi_guard_common::ConfigError;
use phi_guard_host::{Host, SharedData};
use serde::Deserialize;

#[cfg(target_os = "wasi")]
mod wasm;

/// The host calls priced, each as a stage makes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// No call: the module's own floor (context creation and the stream callbacks).
    None,
    /// `get_header_map_value(:path)`.
    RequestHeader,
    /// `get_header_map_pairs` of the request headers.
    RequestHeaders,
    /// `get_property(connection.uri_san_peer_certificate)`: an Envoy attribute.
    Attribute,
    /// `get_property(connection.peer_certificate)`: the URL-encoded PEM rbac reads.
    PeerCertificate,
    /// `set_property` of a filter-state key (the contracts, the access log's keys).
    SetFilterState,
    /// `get_property` of a filter-state key this module wrote.
    GetFilterState,
    /// `increment_metric` of one counter.
    IncrementCounter,
    /// `get_current_time_nanoseconds`.
    Now,
    /// `remove_header_map_value` of a request header that is not there.
    RemoveRequestHeader,
    /// `get_shared_data` of a key (audit's admission flag, jwt's replay cache).
    SharedData,
    /// The four filter-state keys Envoy's access log prints (`phi_guard.method`,
    /// `.request_id`, `.authn`, `.authz`), each written once per repetition with a value of
    /// the shape a stage writes: what being printed adds to a write.
    LoggedState,
    /// Four other keys written the same way (the contracts nothing in Envoy prints).
    UnloggedState,
}

/// What [`Kind::LoggedState`] and [`Kind::UnloggedState`] write: key suffix and value.
const STATE_VALUES: [(&str, &[u8]); 4] = [
    ("method", b"health.v1.PatientService/GetPatient"),
    ("request_id", b"4bf92f35-77b3-4da6-a3ce-929d0e0e4736"),
    ("authn", br#"{"provider":"demo-idp","result":"ok"}"#),
    (
        "authz",
        br#"{"decision":"allow","mode":"enforce","policy_version":"2026-11-01","reason":"matched_allow","role":"nurse","rule":"frontend-clinical-reads"}"#,
    ),
];

/// The module's configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub kind: Kind,
    pub n: u32,
}

/// The most calls per request a config may ask for.
pub const MAX_N: u32 = 1000;

/// The filter-state key the `*_filter_state` kinds write and read.
pub const STATE_KEY: &str = "phi_guard.hostcost";

impl Config {
    /// Parses the plugin configuration; the error names the field.
    pub fn parse(bytes: &[u8]) -> Result<Config, ConfigError> {
        let config: Config = phi_guard_common::config::parse_config(bytes, "hostcost")?;
        if config.n > MAX_N {
            return Err(ConfigError::new("n", format!("at most {MAX_N}")));
        }
        Ok(config)
    }
}

/// Makes the configured calls once (one request's worth); returns how many answered, so the
/// optimiser cannot drop them.
pub fn run<H: Host + SharedData>(host: &H, counter: Option<u32>, config: Config) -> u32 {
    let mut answered = 0;
    for _ in 0..config.n {
        let got = match config.kind {
            Kind::None => false,
            Kind::RequestHeader => host.request_header(":path").is_some(),
            Kind::RequestHeaders => !host.request_headers().is_empty(),
            Kind::Attribute => host
                .property(&["connection", "uri_san_peer_certificate"])
                .is_some(),
            Kind::PeerCertificate => host.property(&["connection", "peer_certificate"]).is_some(),
            Kind::SetFilterState => {
                host.set_property(&[STATE_KEY], b"{\"decision\":\"allow\"}");
                true
            }
            Kind::GetFilterState => host.property(&[STATE_KEY]).is_some(),
            Kind::IncrementCounter => match counter {
                Some(id) => {
                    host.increment_counter(id, 1);
                    true
                }
                None => false,
            },
            Kind::Now => host.now() > 0,
            Kind::RemoveRequestHeader => {
                host.remove_request_header("x-phi-guard-hostcost");
                true
            }
            Kind::SharedData => host.shared_data(STATE_KEY).is_some(),
            Kind::LoggedState | Kind::UnloggedState => {
                let prefix = if config.kind == Kind::LoggedState {
                    "phi_guard"
                } else {
                    "phi_guard.hostcost"
                };
                for (key, value) in STATE_VALUES {
                    host.set_property(&[&format!("{prefix}.{key}")], value);
                }
                true
            }
        };
        answered += u32::from(got);
    }
    answered
}

#[cfg(test)]
mod tests {
    use super::*;
    use phi_guard_host::FakeHost;

    #[test]
    fn parses_and_bounds_the_config() {
        let config = Config::parse(br#"{"kind": "request_headers", "n": 32}"#).unwrap();
        assert_eq!(
            config,
            Config {
                kind: Kind::RequestHeaders,
                n: 32
            }
        );
        let err = Config::parse(br#"{"kind": "now", "n": 5000}"#).unwrap_err();
        assert_eq!(err.field, "n");
        assert!(Config::parse(br#"{"kind": "dequeue", "n": 1}"#).is_err());
        assert!(Config::parse(br#"{"kind": "now", "n": 1, "x": 2}"#).is_err());
    }

    #[test]
    fn makes_exactly_n_calls_of_the_kind() {
        let host =
            FakeHost::with_request_headers(&[(":path", "/health.v1.PatientService/GetPatient")]);
        let counter = host.define_counter("hostcost");
        let n = 7;
        let config = |kind| Config { kind, n };
        assert_eq!(run(&host, counter, config(Kind::IncrementCounter)), n);
        assert_eq!(host.counter("hostcost"), i64::from(n));
        assert_eq!(run(&host, counter, config(Kind::RequestHeader)), n);
        assert_eq!(run(&host, counter, config(Kind::SetFilterState)), n);
        assert_eq!(run(&host, counter, config(Kind::GetFilterState)), n);
        assert_eq!(run(&host, counter, config(Kind::RemoveRequestHeader)), n);
        assert!(host.set_shared_data(STATE_KEY, b"0"));
        assert_eq!(run(&host, counter, config(Kind::SharedData)), n);
        assert_eq!(run(&host, counter, config(Kind::LoggedState)), n);
        assert!(host.property(&["phi_guard.authz"]).is_some());
        assert_eq!(run(&host, counter, config(Kind::UnloggedState)), n);
        assert!(host.property(&["phi_guard.hostcost.authz"]).is_some());
        assert_eq!(run(&host, counter, config(Kind::None)), 0);
    }
}
