//! `labs-client`: calls labs.v1.LabResults through Envoy over mutual TLS and prints one JSON
//! line: `{"status": "OK", "result": {...}}` or `{"status": "PERMISSION_DENIED"}` (gRPC status
//! names). Exit 0 whenever the RPC completed, whatever its status; 2 when it could not connect.

use clap::Parser;
use phi_guard_labs::labs::v1::lab_results_client::LabResultsClient;
use phi_guard_labs::labs::v1::{DeleteResultRequest, GetResultRequest};
use phi_guard_tools::client::{mtls_channel, Bearer, ClientCert, MtlsTarget};
use serde_json::{json, Value};

#[derive(Parser)]
#[command(about = "Call labs.v1.LabResults through Envoy over mTLS")]
struct Args {
    /// Envoy's listener, host:port.
    #[arg(long)]
    endpoint: String,
    /// The DNS SAN of the server certificate.
    #[arg(long)]
    server_name: String,
    /// Trust bundle (PEM) to verify the server with.
    #[arg(long)]
    ca: std::path::PathBuf,
    /// Client certificate and key (PEM).
    #[arg(long)]
    cert: std::path::PathBuf,
    #[arg(long)]
    key: std::path::PathBuf,
    /// Bearer token (a JWT from your IdP).
    #[arg(long)]
    token: Option<String>,
    /// GetResult or DeleteResult.
    #[arg(long, default_value = "GetResult")]
    method: String,
    #[arg(long, default_value = phi_guard_labs::RESULT_ID)]
    result_id: String,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let target = MtlsTarget {
        endpoint: args.endpoint.clone(),
        server_name: args.server_name.clone(),
        ca_bundle: args.ca.clone(),
    };
    let cert = ClientCert {
        cert: &args.cert,
        key: &args.key,
    };
    let channel = match mtls_channel(&target, Some(cert)).await {
        Ok(c) => c,
        Err(e) => {
            eprintln!("labs-client: cannot connect to {}: {e}", args.endpoint);
            return std::process::ExitCode::from(2);
        }
    };
    let mut client = LabResultsClient::with_interceptor(
        channel,
        Bearer::new(args.token.as_deref().filter(|t| !t.is_empty())),
    );
    let outcome: Result<Value, tonic::Status> = match args.method.as_str() {
        "GetResult" => {
            // The audit trail reads the result id from the request message itself
            // (`phi.v1.resource_id` on `result_id`): no header to send.
            let request = tonic::Request::new(GetResultRequest {
                result_id: args.result_id.clone(),
            });
            client.get_result(request).await.map(|r| {
                let r = r.into_inner();
                json!({
                    "result_id": r.result_id, "patient_name": r.patient_name, "mrn": r.mrn,
                    "date_of_birth": r.date_of_birth, "ssn": r.ssn, "test_code": r.test_code,
                    "value": r.value, "unit": r.unit, "comments": r.comments,
                })
            })
        }
        "DeleteResult" => {
            let request = tonic::Request::new(DeleteResultRequest {
                result_id: args.result_id.clone(),
            });
            client
                .delete_result(request)
                .await
                .map(|r| json!({"deleted": r.into_inner().deleted}))
        }
        other => {
            eprintln!("labs-client: unknown method {other}");
            return std::process::ExitCode::from(2);
        }
    };
    let line = match outcome {
        Ok(result) => json!({"status": "OK", "result": result}),
        Err(status) => json!({"status": status_name(status.code())}),
    };
    println!("{line}");
    std::process::ExitCode::SUCCESS
}

/// The gRPC status name (grpc/doc/statuscodes.md).
fn status_name(code: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match code {
        Ok => "OK",
        Cancelled => "CANCELLED",
        Unknown => "UNKNOWN",
        InvalidArgument => "INVALID_ARGUMENT",
        DeadlineExceeded => "DEADLINE_EXCEEDED",
        NotFound => "NOT_FOUND",
        AlreadyExists => "ALREADY_EXISTS",
        PermissionDenied => "PERMISSION_DENIED",
        ResourceExhausted => "RESOURCE_EXHAUSTED",
        FailedPrecondition => "FAILED_PRECONDITION",
        Aborted => "ABORTED",
        OutOfRange => "OUT_OF_RANGE",
        Unimplemented => "UNIMPLEMENTED",
        Internal => "INTERNAL",
        Unavailable => "UNAVAILABLE",
        DataLoss => "DATA_LOSS",
        Unauthenticated => "UNAUTHENTICATED",
    }
}
