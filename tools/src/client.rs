//! gRPC clients of the demo APIs over mutual TLS (directly to Envoy's inbound listener) or
//! plaintext h2c (to an egress sidecar on loopback).

use std::path::Path;

use phi_guard_proto::fhir::service::fhir_service_client::FhirServiceClient;
use phi_guard_proto::health::v1::patient_service_client::PatientServiceClient;
use tonic::metadata::MetadataValue;
use tonic::service::interceptor::InterceptedService;
use tonic::service::Interceptor;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

pub type Client = PatientServiceClient<InterceptedService<Channel, Bearer>>;
/// A client of `phi.fhir.v1.FhirService`: FHIR messages in and out as raw bytes
/// (`phi_guard_proto::fhir::RawCodec`).
pub type FhirClient = FhirServiceClient<InterceptedService<Channel, Bearer>>;

/// Adds `authorization: Bearer <token>` to every call when a token is set.
#[derive(Clone, Default)]
pub struct Bearer(Option<MetadataValue<tonic::metadata::Ascii>>);

impl Bearer {
    pub fn new(token: Option<&str>) -> Self {
        Bearer(token.and_then(|t| format!("Bearer {t}").parse().ok()))
    }
}

impl Interceptor for Bearer {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(value) = &self.0 {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        Ok(request)
    }
}

/// How a client reaches Envoy's mTLS listener.
#[derive(Debug, Clone)]
pub struct MtlsTarget {
    /// `host:port` of the listener.
    pub endpoint: String,
    /// The DNS SAN the server certificate must carry.
    pub server_name: String,
    pub ca_bundle: std::path::PathBuf,
}

/// A client certificate and key, PEM files.
#[derive(Debug, Clone)]
pub struct ClientCert<'a> {
    pub cert: &'a Path,
    pub key: &'a Path,
}

/// Connects eagerly (one TLS handshake now), presenting `identity` when given and sending
/// `token` as a bearer token on every call when given.
pub async fn connect_mtls(
    target: &MtlsTarget,
    identity: Option<ClientCert<'_>>,
    token: Option<&str>,
) -> Result<Client, Box<dyn std::error::Error + Send + Sync>> {
    let channel = mtls_channel(target, identity).await?;
    Ok(PatientServiceClient::with_interceptor(
        channel,
        Bearer::new(token),
    ))
}

/// As [`connect_mtls`], a client of the FHIR demo service.
pub async fn connect_fhir_mtls(
    target: &MtlsTarget,
    identity: Option<ClientCert<'_>>,
    token: Option<&str>,
) -> Result<FhirClient, Box<dyn std::error::Error + Send + Sync>> {
    let channel = mtls_channel(target, identity).await?;
    Ok(FhirServiceClient::with_interceptor(
        channel,
        Bearer::new(token),
    ))
}

/// The mTLS channel itself, for callers that speak gRPC below the generated client.
pub async fn mtls_channel(
    target: &MtlsTarget,
    identity: Option<ClientCert<'_>>,
) -> Result<Channel, Box<dyn std::error::Error + Send + Sync>> {
    let ca = std::fs::read(&target.ca_bundle)?;
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca))
        .domain_name(target.server_name.clone());
    if let Some(id) = identity {
        tls = tls.identity(Identity::from_pem(
            std::fs::read(id.cert)?,
            std::fs::read(id.key)?,
        ));
    }
    Ok(
        Endpoint::from_shared(format!("https://{}", target.endpoint))?
            .tls_config(tls)?
            .connect_timeout(std::time::Duration::from_secs(5))
            .timeout(std::time::Duration::from_secs(10))
            .connect()
            .await?,
    )
}

/// Connects over plaintext HTTP/2 to a loopback egress listener.
pub async fn connect_plain(
    endpoint: &str,
    token: Option<&str>,
) -> Result<Client, Box<dyn std::error::Error + Send + Sync>> {
    let channel = Endpoint::from_shared(format!("http://{endpoint}"))?
        .connect_timeout(std::time::Duration::from_secs(5))
        .timeout(std::time::Duration::from_secs(10))
        .connect()
        .await?;
    Ok(PatientServiceClient::with_interceptor(
        channel,
        Bearer::new(token),
    ))
}
