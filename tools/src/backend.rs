//! The demo healthcare backend: a tonic `health.v1.PatientService` serving synthetic
//! patients, and `phi.fhir.v1.FhirService` serving the same kind of data as FHIR R4 resources. Every sensitive value is a recognisable canary (never real PHI) so tests can scan
//! logs, stats and audit events for leaks.

use std::net::SocketAddr;
use std::pin::Pin;

use phi_guard_proto::fhir;
use phi_guard_proto::fhir::service::fhir_service_server::{FhirService, FhirServiceServer};
use phi_guard_proto::health::v1::patient_service_server::{PatientService, PatientServiceServer};
use phi_guard_proto::health::v1::{
    DeletePatientRequest, DeletePatientResponse, Encounter, GetPatientRequest,
    ListEncountersRequest, Patient,
};
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

pub use phi_guard_proto::demo::{canary, encounter, patient, MAX_ENCOUNTERS, PATIENT_ID};

#[derive(Debug, Default, Clone)]
pub struct DemoPatientService;

type EncounterStream = Pin<Box<dyn Stream<Item = Result<Encounter, Status>> + Send>>;

#[tonic::async_trait]
impl PatientService for DemoPatientService {
    async fn get_patient(
        &self,
        request: Request<GetPatientRequest>,
    ) -> Result<Response<Patient>, Status> {
        if request.get_ref().patient_id != PATIENT_ID {
            return Err(Status::not_found("no such patient"));
        }
        Ok(Response::new(patient()))
    }

    type ListEncountersStream = EncounterStream;

    async fn list_encounters(
        &self,
        request: Request<ListEncountersRequest>,
    ) -> Result<Response<Self::ListEncountersStream>, Status> {
        let req = request.into_inner();
        if req.patient_id != PATIENT_ID {
            return Err(Status::not_found("no such patient"));
        }
        let limit = req.limit.clamp(1, MAX_ENCOUNTERS);
        let note_bytes = req.note_bytes;
        let stream = tokio_stream::iter((0..limit).map(move |i| Ok(encounter(i, note_bytes))));
        Ok(Response::new(Box::pin(stream)))
    }

    async fn delete_patient(
        &self,
        request: Request<DeletePatientRequest>,
    ) -> Result<Response<DeletePatientResponse>, Status> {
        // The demo never deletes anything; it reports whether the patient exists.
        Ok(Response::new(DeletePatientResponse {
            deleted: request.get_ref().patient_id == PATIENT_ID,
        }))
    }
}

/// The service with gzip accepted and, when the client asks for it, used on responses.
pub fn service() -> PatientServiceServer<DemoPatientService> {
    PatientServiceServer::new(DemoPatientService)
        .accept_compressed(tonic::codec::CompressionEncoding::Gzip)
        .send_compressed(tonic::codec::CompressionEncoding::Gzip)
}

/// The FHIR demo service (`phi.fhir.v1.FhirService`): Google's FHIR R4 messages, built from
/// the committed descriptor set, carried as raw bytes.
#[derive(Debug, Default, Clone)]
pub struct DemoFhirService;

type RawStream = Pin<Box<dyn Stream<Item = Result<bytes::Bytes, Status>> + Send>>;

#[tonic::async_trait]
impl FhirService for DemoFhirService {
    async fn get_patient(
        &self,
        request: Request<bytes::Bytes>,
    ) -> Result<Response<bytes::Bytes>, Status> {
        use prost::Message;
        let req = fhir::GetPatientRequest::decode(request.into_inner())
            .map_err(|_| Status::invalid_argument("malformed request"))?;
        if req.id != fhir::PATIENT_ID {
            return Err(Status::not_found("no such patient"));
        }
        Ok(Response::new(fhir::patient().into()))
    }

    type ListObservationsStream = RawStream;

    async fn list_observations(
        &self,
        request: Request<bytes::Bytes>,
    ) -> Result<Response<Self::ListObservationsStream>, Status> {
        use prost::Message;
        let req = fhir::ListObservationsRequest::decode(request.into_inner())
            .map_err(|_| Status::invalid_argument("malformed request"))?;
        if req.patient_id != fhir::PATIENT_ID {
            return Err(Status::not_found("no such patient"));
        }
        let limit = if req.limit == 0 {
            3
        } else {
            req.limit.min(fhir::MAX_OBSERVATIONS)
        };
        let stream = tokio_stream::iter((0..limit).map(|i| Ok(fhir::observation(i).into())));
        Ok(Response::new(Box::pin(stream)))
    }
}

/// The FHIR service with gzip as the patient service has it.
pub fn fhir_service() -> FhirServiceServer<DemoFhirService> {
    FhirServiceServer::new(DemoFhirService)
        .accept_compressed(tonic::codec::CompressionEncoding::Gzip)
        .send_compressed(tonic::codec::CompressionEncoding::Gzip)
}

/// Serves plaintext h2c on `listener` (loopback only: Envoy terminates mTLS in front of it)
/// until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> Result<(), tonic::transport::Error> {
    // TCP_NODELAY as Envoy sets it on its side: without it a response written in pieces
    // (headers, message, trailers) can wait out a 40 ms delayed ACK.
    let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
    tonic::transport::Server::builder()
        .add_service(service())
        .add_service(fhir_service())
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await
}

/// Binds the backend on an ephemeral loopback port and serves it on the current runtime.
pub async fn spawn() -> std::io::Result<(SocketAddr, tokio::sync::oneshot::Sender<()>)> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        let _ = serve(listener, async {
            let _ = stopped.await;
        })
        .await;
    });
    Ok((addr, stop))
}

/// A misbehaving upstream for the mask filter's fail-closed tests: it answers every call with
/// a well-formed Patient message followed by a malformed one (a length prefix running past
/// the end, with canary values inside), then `grpc-status: 0` trailers, as a buggy or
/// compromised service might.
pub async fn spawn_malformed() -> std::io::Result<(SocketAddr, tokio::sync::oneshot::Sender<()>)> {
    use prost::Message;
    spawn_raw(|_path| {
        vec![
            grpc_frame(&patient().encode_to_vec()),
            grpc_frame(&malformed_patient()),
        ]
    })
    .await
}

/// A canary that only the fail-closed tests' upstreams send: in a field the descriptor set
/// does not declare, or in the response of a method the set does not describe.
pub const UNKNOWN_FIELD_CANARY: &str = "CANARY-UNDECLARED-4242";

/// An upstream whose schema moved ahead of the mask filter's descriptor set: `GetPatient`
/// answers the demo patient plus fields the set does not declare (number 99 at the top level
/// and inside the name, holding [`UNKNOWN_FIELD_CANARY`]), the FHIR service's `GetPatient`
/// likewise ([`drifted_fhir_patient`]); `grpc.health.v1.Health/Check`
/// answers SERVING; every other path (a method added to the service but not to the set)
/// answers a message full of canaries.
pub async fn spawn_drifted() -> std::io::Result<(SocketAddr, tokio::sync::oneshot::Sender<()>)> {
    spawn_raw(|path| match path {
        "/health.v1.PatientService/GetPatient" => vec![grpc_frame(&drifted_patient())],
        "/phi.fhir.v1.FhirService/GetPatient" => vec![grpc_frame(&drifted_fhir_patient())],
        // grpc.health.v1.HealthCheckResponse { status: SERVING }
        "/grpc.health.v1.Health/Check" => vec![grpc_frame(&[0x08, 0x01])],
        _ => {
            let mut m = Vec::new();
            for value in [canary::SSN, canary::MRN, UNKNOWN_FIELD_CANARY] {
                m.push((1 << 3) | 2);
                m.push(value.len() as u8);
                m.extend_from_slice(value.as_bytes());
            }
            vec![grpc_frame(&m)]
        }
    })
    .await
}

/// The demo patient with undeclared fields carrying [`UNKNOWN_FIELD_CANARY`]: field 99 at the
/// top level, and field 99 inside `name` (field 3).
pub fn drifted_patient() -> Vec<u8> {
    use prost::Message;
    let mut p = patient();
    let name = p.name.take().unwrap_or_default();
    let undeclared = |out: &mut Vec<u8>| {
        out.extend_from_slice(&[0x9a, 0x06]); // field 99, LEN
        out.push(UNKNOWN_FIELD_CANARY.len() as u8);
        out.extend_from_slice(UNKNOWN_FIELD_CANARY.as_bytes());
    };
    let mut inner = name.encode_to_vec();
    undeclared(&mut inner);
    let mut bytes = p.encode_to_vec();
    bytes.push((3 << 3) | 2);
    prost::encoding::encode_varint(inner.len() as u64, &mut bytes);
    bytes.extend_from_slice(&inner);
    undeclared(&mut bytes);
    bytes
}

/// The FHIR demo Patient ([`fhir::patient`]) with fields Google's protos do not declare,
/// holding [`UNKNOWN_FIELD_CANARY`]: number 999 at the top level, and number 99 inside
/// `gender` (a second occurrence of the singular message field, which protobuf merges into
/// the first).
pub fn drifted_fhir_patient() -> Vec<u8> {
    let undeclared = |number: u64, out: &mut Vec<u8>| {
        prost::encoding::encode_varint((number << 3) | 2, out);
        prost::encoding::encode_varint(UNKNOWN_FIELD_CANARY.len() as u64, out);
        out.extend_from_slice(UNKNOWN_FIELD_CANARY.as_bytes());
    };
    let gender = fhir::pool()
        .get_message_by_name(fhir::PATIENT_TYPE)
        .and_then(|m| m.get_field_by_name("gender"))
        .map(|f| u64::from(f.number()))
        .expect("Patient.gender in the FHIR set");
    let mut inner = Vec::new();
    undeclared(99, &mut inner);
    let mut bytes = fhir::patient();
    prost::encoding::encode_varint((gender << 3) | 2, &mut bytes);
    prost::encoding::encode_varint(inner.len() as u64, &mut bytes);
    bytes.extend_from_slice(&inner);
    undeclared(999, &mut bytes);
    bytes
}

/// An HTTP/2 upstream that answers each request with `frames(path)` as DATA and then
/// `grpc-status: 0` trailers, whatever a real service would do.
async fn spawn_raw(
    frames: fn(&str) -> Vec<Vec<u8>>,
) -> std::io::Result<(SocketAddr, tokio::sync::oneshot::Sender<()>)> {
    use bytes::Bytes;
    use http_body_util::StreamBody;
    use hyper::body::Frame;

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
    let body_frames = move |path: &str| {
        let mut trailers = hyper::HeaderMap::new();
        trailers.insert("grpc-status", "0".parse().expect("static header value"));
        let mut out: Vec<Result<Frame<Bytes>, std::convert::Infallible>> = frames(path)
            .into_iter()
            .map(|f| Ok(Frame::data(Bytes::from(f))))
            .collect();
        out.push(Ok(Frame::trailers(trailers)));
        StreamBody::new(tokio_stream::iter(out))
    };
    tokio::spawn(async move {
        loop {
            let conn = tokio::select! {
                _ = &mut stopped => break,
                accepted = listener.accept() => match accepted {
                    Ok((conn, _)) => conn,
                    Err(_) => continue,
                },
            };
            let service = hyper::service::service_fn(
                move |request: hyper::Request<hyper::body::Incoming>| async move {
                    let response = hyper::Response::builder()
                        .header("content-type", "application/grpc")
                        .body(body_frames(request.uri().path()))
                        .expect("static response");
                    Ok::<_, std::convert::Infallible>(response)
                },
            );
            tokio::spawn(async move {
                let _ =
                    hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                        .serve_connection(hyper_util::rt::TokioIo::new(conn), service)
                        .await;
            });
        }
    });
    Ok((addr, stop))
}

/// An uncompressed gRPC message frame.
pub fn grpc_frame(payload: &[u8]) -> Vec<u8> {
    let mut frame = Vec::with_capacity(payload.len() + 5);
    frame.push(0);
    frame.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    frame.extend_from_slice(payload);
    frame
}

/// Patient bytes whose `ssn` field (4, a string) claims more bytes than follow: the canary
/// SSN is inside, and no parser may let it through.
pub fn malformed_patient() -> Vec<u8> {
    let mut bytes = Vec::new();
    bytes.push((2 << 3) | 2);
    bytes.push(canary::MRN.len() as u8);
    bytes.extend_from_slice(canary::MRN.as_bytes());
    bytes.push((4 << 3) | 2);
    bytes.push(200);
    bytes.extend_from_slice(canary::SSN.as_bytes());
    bytes
}
