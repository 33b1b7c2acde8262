//! gRPC status mapping and method parsing shared by every filter.
//!
//! Callers only ever see the generic message of a status: the specific reason goes to filter
//! state for the audit event, never into `grpc-message`.

/// The subset of gRPC status codes phi-guard answers with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GrpcStatus {
    Ok = 0,
    InvalidArgument = 3,
    PermissionDenied = 7,
    ResourceExhausted = 8,
    Internal = 13,
    Unavailable = 14,
    Unauthenticated = 16,
}

impl GrpcStatus {
    pub fn code(self) -> u32 {
        self as u32
    }

    /// The only text a caller receives. Deliberately uninformative.
    pub fn generic_message(self) -> &'static str {
        match self {
            GrpcStatus::Ok => "",
            GrpcStatus::InvalidArgument => "invalid request",
            GrpcStatus::PermissionDenied => "permission denied",
            GrpcStatus::ResourceExhausted => "resource exhausted",
            GrpcStatus::Internal => "internal error",
            GrpcStatus::Unavailable => "service unavailable",
            GrpcStatus::Unauthenticated => "unauthenticated",
        }
    }

    /// The HTTP status Envoy's `send_http_response` should carry. gRPC clients read the
    /// `grpc-status` header, but a trailers-only gRPC response is still HTTP 200.
    pub fn http_status(self) -> u32 {
        200
    }

    /// Headers of a trailers-only gRPC error response.
    pub fn response_headers(self) -> [(&'static str, String); 3] {
        [
            ("content-type", "application/grpc".to_string()),
            ("grpc-status", self.code().to_string()),
            ("grpc-message", self.generic_message().to_string()),
        ]
    }
}

/// A gRPC method parsed from the `:path` pseudo-header, `/package.Service/Method`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrpcMethod {
    /// Fully qualified service, e.g. `health.v1.PatientService`.
    pub service: String,
    /// Method name, e.g. `GetPatient`.
    pub method: String,
}

impl GrpcMethod {
    /// Parses `:path`. Query strings are not part of gRPC paths and are rejected, as is
    /// anything that is not exactly two non-empty segments: a policy keyed on methods must not
    /// be bypassable through path tricks such as `//`, `..` or percent-encoding.
    pub fn from_path(path: &str) -> Option<Self> {
        let rest = path.strip_prefix('/')?;
        let (service, method) = rest.split_once('/')?;
        let valid = |s: &str| {
            !s.is_empty()
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.')
        };
        if !valid(service) || !valid(method) || method.contains('.') {
            return None;
        }
        if service.starts_with('.') || service.ends_with('.') || service.contains("..") {
            return None;
        }
        Some(Self {
            service: service.to_string(),
            method: method.to_string(),
        })
    }

    /// `service/method`, the form policies and audit events use.
    pub fn full_name(&self) -> String {
        format!("{}/{}", self.service, self.method)
    }
}

/// Written for a `:path` that is not a well-formed gRPC method, or one the sanitizer refuses.
pub const INVALID_METHOD_LABEL: &str = "invalid";

/// What a log line may print for a request's method: `service/method` through
/// [`crate::sanitize::client_id`] (digit runs shaped like an SSN or telephone number become
/// `*`), or [`INVALID_METHOD_LABEL`]. The client chose `:path`, so it is never printed raw.
pub fn method_label(method: Option<&GrpcMethod>) -> String {
    method
        .and_then(|m| crate::sanitize::client_id(&m.full_name()).value())
        .unwrap_or_else(|| INVALID_METHOD_LABEL.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_match_the_grpc_spec() {
        assert_eq!(GrpcStatus::PermissionDenied.code(), 7);
        assert_eq!(GrpcStatus::Internal.code(), 13);
        assert_eq!(GrpcStatus::Unavailable.code(), 14);
        assert_eq!(GrpcStatus::Unauthenticated.code(), 16);
    }

    #[test]
    fn error_headers_carry_only_the_generic_message() {
        let headers = GrpcStatus::Unauthenticated.response_headers();
        assert!(headers.contains(&("grpc-status", "16".to_string())));
        assert!(headers.contains(&("grpc-message", "unauthenticated".to_string())));
    }

    #[test]
    fn parses_grpc_paths() {
        let m = GrpcMethod::from_path("/health.v1.PatientService/GetPatient").unwrap();
        assert_eq!(m.service, "health.v1.PatientService");
        assert_eq!(m.method, "GetPatient");
        assert_eq!(m.full_name(), "health.v1.PatientService/GetPatient");
    }

    #[test]
    fn rejects_paths_that_are_not_grpc_methods() {
        for path in [
            "",
            "/",
            "health.v1.PatientService/GetPatient",
            "/health.v1.PatientService",
            "/health.v1.PatientService/",
            "//GetPatient",
            "/health.v1.PatientService/GetPatient/extra",
            "/health.v1.PatientService/GetPatient?x=1",
            "/health..v1/GetPatient",
            "/health.v1.PatientService/Get%50atient",
            "/.health/Get",
        ] {
            assert!(GrpcMethod::from_path(path).is_none(), "{path:?} accepted");
        }
    }

    #[test]
    fn method_labels_never_carry_the_raw_path() {
        let label = |p: &str| method_label(GrpcMethod::from_path(p).as_ref());
        assert_eq!(
            label("/health.v1.PatientService/GetPatient"),
            "health.v1.PatientService/GetPatient"
        );
        assert_eq!(
            label("/health.v1.PatientService/078051120"),
            "health.v1.PatientService/*********"
        );
        assert_eq!(label("/health.v1.PatientService/078-05-1120"), "invalid");
        assert_eq!(label("/x/jane.doe@example.org"), "invalid");
        assert_eq!(method_label(None), "invalid");
    }
}
