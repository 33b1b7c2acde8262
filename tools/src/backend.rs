//! The demo healthcare backend: a tonic `health.v1.PatientService` serving synthetic
//! patients. Every sensitive value is a recognisable canary (never real PHI) so tests can scan
//! logs, stats and audit events for leaks.

use std::net::SocketAddr;
use std::pin::Pin;

use phi_guard_proto::health::v1::patient_service_server::{PatientService, PatientServiceServer};
use phi_guard_proto::health::v1::{
    patient, Address, Contact, DeletePatientRequest, DeletePatientResponse, Diagnosis, Encounter,
    GetPatientRequest, HumanName, ListEncountersRequest, Patient,
};
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

/// Synthetic sensitive values. None may ever appear in a log line, a metric, an audit event
/// or an error message; where a role must not see them, not in a response either.
pub mod canary {
    pub const SSN: &str = "900-55-1234";
    pub const MRN: &str = "MRN-7Q4K-CANARY";
    pub const FAMILY: &str = "Canarysmith";
    pub const GIVEN: &str = "Zebediah";
    pub const BIRTH_DATE: &str = "1931-02-29";
    pub const PHONE: &str = "555-013-4477";
    pub const EMAIL: &str = "zebediah.canarysmith@example.test";
    pub const STREET: &str = "77 Canary Wharf Lane";
    pub const CITY: &str = "Yellowbird";
    pub const POSTAL: &str = "99501-7788";
    pub const INSURANCE: &str = "INS-CANARY-55667788";
    pub const EXTERNAL_ID: &str = "EXT-CANARY-3141";
    pub const EMERGENCY_PHONE: &str = "555-019-8822";
    pub const DIAGNOSIS: &str = "canary-pox, chronic";
    /// Free text that embeds identifiers, as clinicians' notes do.
    pub fn note() -> String {
        format!("Pt {GIVEN} {FAMILY} called from {PHONE} re SSN {SSN}; MRN {MRN}.")
    }

    /// Every canary, for leak scans.
    pub const ALL: &[&str] = &[
        SSN,
        MRN,
        FAMILY,
        GIVEN,
        BIRTH_DATE,
        PHONE,
        EMAIL,
        STREET,
        CITY,
        POSTAL,
        INSURANCE,
        EXTERNAL_ID,
        EMERGENCY_PHONE,
        DIAGNOSIS,
    ];
}

/// The only patient id the demo knows.
pub const PATIENT_ID: &str = "p-0001";
/// Upper bound on streamed encounters per call, so a client cannot make the backend spin.
pub const MAX_ENCOUNTERS: u32 = 10_000;
/// Upper bound on the padded note size.
pub const MAX_NOTE_BYTES: u32 = 1 << 20;

pub fn patient() -> Patient {
    use canary::*;
    Patient {
        patient_id: PATIENT_ID.into(),
        mrn: MRN.into(),
        name: Some(HumanName {
            family: FAMILY.into(),
            given: vec![GIVEN.into(), "Q".into()],
            prefix: "Mx".into(),
        }),
        ssn: SSN.into(),
        birth_date: BIRTH_DATE.into(),
        contacts: vec![Contact {
            phone: PHONE.into(),
            email: EMAIL.into(),
            r#use: "home".into(),
        }],
        address: Some(Address {
            line: vec![STREET.into(), "Apt 3".into()],
            city: CITY.into(),
            state: "AK".into(),
            postal_code: POSTAL.into(),
        }),
        identifiers: [("lab-system".to_string(), EXTERNAL_ID.to_string())].into(),
        emergency_contact: Some(patient::EmergencyContact::EmergencyPhone(
            EMERGENCY_PHONE.into(),
        )),
        allergy_codes: vec![91936005, 300916003, 418689008],
        notes: note(),
        insurance_member_id: INSURANCE.into(),
        tenant: "north".into(),
    }
}

pub fn encounter(index: u32, note_bytes: u32) -> Encounter {
    let mut note = canary::note();
    let target = note_bytes.min(MAX_NOTE_BYTES) as usize;
    while note.len() < target {
        note.push_str(" Vitals stable, plan unchanged.");
    }
    Encounter {
        encounter_id: format!("e-{index:05}"),
        patient_id: PATIENT_ID.into(),
        mrn: canary::MRN.into(),
        start_time: format!("2026-01-{:02}T09:30:00Z", index % 28 + 1),
        attending: Some(HumanName {
            family: "Attending".into(),
            given: vec!["Dana".into()],
            prefix: "Dr".into(),
        }),
        diagnoses: vec![Diagnosis {
            code: "Z00.00".into(),
            description: canary::DIAGNOSIS.into(),
        }],
        vitals: vec![36.8, 72.0, 118.0, 76.0],
        note,
    }
}

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

/// Serves plaintext h2c on `listener` (loopback only: Envoy terminates mTLS in front of it)
/// until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> Result<(), tonic::transport::Error> {
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    tonic::transport::Server::builder()
        .add_service(service())
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
    use bytes::Bytes;
    use http_body_util::StreamBody;
    use hyper::body::Frame;
    use prost::Message;

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
    let body_frames = move || {
        let good = grpc_frame(&patient().encode_to_vec());
        let bad = grpc_frame(&malformed_patient());
        let mut trailers = hyper::HeaderMap::new();
        trailers.insert("grpc-status", "0".parse().expect("static header value"));
        let frames: Vec<Result<Frame<Bytes>, std::convert::Infallible>> = vec![
            Ok(Frame::data(Bytes::from(good))),
            Ok(Frame::data(Bytes::from(bad))),
            Ok(Frame::trailers(trailers)),
        ];
        StreamBody::new(tokio_stream::iter(frames))
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
            let service = hyper::service::service_fn(move |_request| async move {
                let response = hyper::Response::builder()
                    .header("content-type", "application/grpc")
                    .body(body_frames())
                    .expect("static response");
                Ok::<_, std::convert::Infallible>(response)
            });
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
