//! Helpers for the end-to-end scenarios: TLS probes with an independent client (openssl
//! s_client), continuous RPC load with counts, and polling.

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use phi_guard_proto::health::v1::GetPatientRequest;
use phi_guard_tools::client::Client;
use phi_guard_tools::pki::normalise_serial;

/// What `openssl s_client` saw of one handshake.
#[derive(Debug)]
pub struct Probe {
    /// The handshake completed and the server's chain verified.
    pub handshake_ok: bool,
    /// Serial of the server leaf, when the server sent one.
    pub server_serial: Option<String>,
    pub output: String,
}

/// Options for a probe; defaults are a well-behaved client (TLS 1.2+, ALPN h2, valid cert).
#[derive(Debug, Default, Clone)]
pub struct ProbeOptions<'a> {
    pub cert: Option<(&'a Path, &'a Path)>,
    /// e.g. `["-tls1_1", "-cipher", "DEFAULT@SECLEVEL=0"]`
    pub extra: Vec<&'a str>,
    /// ALPN to offer; `None` offers none.
    pub alpn: Option<&'a str>,
}

/// One handshake with `openssl s_client`, an implementation independent of Envoy's BoringSSL
/// and of the rustls inside tonic.
pub fn probe(addr: &str, server_name: &str, ca: &Path, opts: &ProbeOptions) -> Probe {
    let mut cmd = Command::new("openssl");
    cmd.args(["s_client", "-connect", addr, "-servername", server_name])
        .arg("-CAfile")
        .arg(ca)
        .args(["-verify_return_error", "-showcerts"]);
    if let Some((cert, key)) = opts.cert {
        // -cert sends only the first certificate; -cert_chain adds the intermediate.
        cmd.arg("-cert").arg(cert).arg("-key").arg(key);
        cmd.arg("-cert_chain").arg(cert);
    }
    if let Some(alpn) = opts.alpn {
        cmd.args(["-alpn", alpn]);
    }
    cmd.args(&opts.extra);
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .expect("openssl s_client runs");
    let output = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let server_serial = first_pem(&output).and_then(|pem| pem_serial(&pem));
    let verified = output.contains("Verify return code: 0 (ok)");
    Probe {
        handshake_ok: out.status.success() && verified && server_serial.is_some(),
        server_serial,
        output,
    }
}

fn first_pem(text: &str) -> Option<String> {
    let start = text.find("-----BEGIN CERTIFICATE-----")?;
    let end_marker = "-----END CERTIFICATE-----";
    let end = text[start..].find(end_marker)? + start + end_marker.len();
    Some(text[start..end].to_string())
}

fn pem_serial(pem: &str) -> Option<String> {
    use std::io::Write;
    let mut child = Command::new("openssl")
        .args(["x509", "-noout", "-serial"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    child.stdin.take()?.write_all(pem.as_bytes()).ok()?;
    let out = child.wait_with_output().ok()?;
    out.status
        .success()
        .then(|| normalise_serial(&String::from_utf8_lossy(&out.stdout)))
}

/// Polls `check` every 100 ms until it holds or `within` passes.
pub async fn wait_until<F: FnMut() -> bool>(within: Duration, mut check: F) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if check() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Counts of a load run.
#[derive(Debug, Clone, Copy)]
pub struct LoadReport {
    pub sent: u64,
    pub failed: u64,
}

/// Continuous GetPatient calls from several tasks until stopped. Each task opens a fresh
/// connection (so a fresh TLS handshake) every `calls_per_connection` calls, so rotations are
/// exercised by new handshakes as well as by live connections.
pub struct Load {
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    first_error: Arc<std::sync::Mutex<Option<String>>>,
}

pub type Connect = Arc<
    dyn Fn() -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<Client, String>> + Send>>
        + Send
        + Sync,
>;

impl Load {
    pub fn start(connect: Connect, tasks: usize, calls_per_connection: u64) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(AtomicU64::new(0));
        let first_error = Arc::new(std::sync::Mutex::new(None));
        let handles = (0..tasks)
            .map(|_| {
                let (stop, sent, failed, first_error, connect) = (
                    stop.clone(),
                    sent.clone(),
                    failed.clone(),
                    first_error.clone(),
                    connect.clone(),
                );
                tokio::spawn(async move {
                    let record = |e: String| {
                        failed.fetch_add(1, Ordering::SeqCst);
                        first_error.lock().unwrap().get_or_insert(e);
                    };
                    while !stop.load(Ordering::SeqCst) {
                        let mut client = match connect().await {
                            Ok(c) => c,
                            Err(e) => {
                                // A connection that cannot be made is a failed RPC.
                                sent.fetch_add(1, Ordering::SeqCst);
                                record(format!("connect: {e}"));
                                continue;
                            }
                        };
                        for _ in 0..calls_per_connection {
                            if stop.load(Ordering::SeqCst) {
                                break;
                            }
                            sent.fetch_add(1, Ordering::SeqCst);
                            let request = GetPatientRequest {
                                patient_id: phi_guard_tools::backend::PATIENT_ID.into(),
                            };
                            if let Err(status) = client.get_patient(request).await {
                                record(format!("rpc: {status}"));
                            }
                        }
                    }
                })
            })
            .collect();
        Load {
            stop,
            sent,
            failed,
            tasks: handles,
            first_error,
        }
    }

    pub fn sent(&self) -> u64 {
        self.sent.load(Ordering::SeqCst)
    }

    pub async fn finish(self) -> (LoadReport, Option<String>) {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.tasks {
            let _ = t.await;
        }
        let report = LoadReport {
            sent: self.sent.load(Ordering::SeqCst),
            failed: self.failed.load(Ordering::SeqCst),
        };
        let err = self.first_error.lock().unwrap().clone();
        (report, err)
    }
}

/// The `authn` (or `authz`) reason codes the inbound access log recorded, oldest first.
pub fn logged_reasons(stack: &phi_guard_tools::stack::Stack, field: &str) -> Vec<String> {
    std::fs::read_to_string(stack.dir.join("logs/inbound_access.log"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| v[field].as_str().map(str::to_string))
        .filter_map(|s| serde_json::from_str::<serde_json::Value>(&s).ok())
        .filter_map(|v| v["reason"].as_str().map(str::to_string))
        .collect()
}

/// Length of a mask keyed token: `tok_` and 32 lower-case hex digits (phi-guard-mask's
/// `token::TOKEN_LEN`).
pub const KEYED_TOKEN_LEN: usize = 36;

/// Whether `value` is exactly one keyed token as the mask filter writes it.
pub fn is_keyed_token(value: &[u8]) -> bool {
    value.len() == KEYED_TOKEN_LEN
        && value.starts_with(b"tok_")
        && value[4..]
            .iter()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(b))
}

/// `bytes` with every keyed token (`tok_` + 32 lower-case hex digits) cut out. A token is an
/// HMAC under the stack's random key, so its hex digits spell a given short digit run now and
/// then by chance (a 4-digit run in 32 digits: about once in 2,000 tokens); a scan for
/// fragments of an identifier runs on what is left.
pub fn without_keyed_tokens(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i..]
            .get(..KEYED_TOKEN_LEN)
            .is_some_and(is_keyed_token)
        {
            i += KEYED_TOKEN_LEN;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    out
}

/// Every log Envoy wrote for this stack (its own log and the access logs), for leak scans.
pub fn all_logs(stack: &phi_guard_tools::stack::Stack) -> String {
    let mut text = String::new();
    if let Ok(entries) = std::fs::read_dir(stack.dir.join("logs")) {
        for entry in entries.flatten() {
            text.push_str(&std::fs::read_to_string(entry.path()).unwrap_or_default());
        }
    }
    text
}

/// One GetPatient call as `workload` with `token`; the gRPC code it ended with.
pub async fn get_patient_code(
    stack: &phi_guard_tools::stack::Stack,
    workload: &str,
    token: Option<&str>,
) -> tonic::Code {
    let leaf = &stack.workload(workload).leaf;
    let id = phi_guard_tools::client::ClientCert {
        cert: &leaf.cert,
        key: &leaf.key,
    };
    let mut client = phi_guard_tools::client::connect_mtls(&stack.target(), Some(id), token)
        .await
        .expect("mTLS connects");
    let request = GetPatientRequest {
        patient_id: phi_guard_tools::backend::PATIENT_ID.into(),
    };
    match client.get_patient(request).await {
        Ok(_) => tonic::Code::Ok,
        Err(status) => status.code(),
    }
}

/// Passes gRPC message payloads through as raw bytes, so a test sees exactly what reached
/// the client, parseable or not.
#[derive(Debug, Clone, Copy, Default)]
pub struct RawCodec;

impl tonic::codec::Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawCodec;
    type Decoder = RawCodec;

    fn encoder(&mut self) -> Self::Encoder {
        RawCodec
    }

    fn decoder(&mut self) -> Self::Decoder {
        RawCodec
    }
}

impl tonic::codec::Encoder for RawCodec {
    type Item = Vec<u8>;
    type Error = tonic::Status;

    fn encode(
        &mut self,
        item: Vec<u8>,
        dst: &mut tonic::codec::EncodeBuf<'_>,
    ) -> Result<(), tonic::Status> {
        use bytes::BufMut;
        dst.put_slice(&item);
        Ok(())
    }
}

impl tonic::codec::Decoder for RawCodec {
    type Item = Vec<u8>;
    type Error = tonic::Status;

    fn decode(
        &mut self,
        src: &mut tonic::codec::DecodeBuf<'_>,
    ) -> Result<Option<Vec<u8>>, tonic::Status> {
        use bytes::Buf;
        Ok(Some(src.copy_to_bytes(src.remaining()).to_vec()))
    }
}

/// Calls `path` (`/pkg.Service/Method`) with raw request bytes as `workload` for `user`;
/// returns every response message received and the final status.
pub async fn raw_call(
    stack: &phi_guard_tools::stack::Stack,
    workload: &str,
    user: Option<&str>,
    path: &'static str,
    request: Vec<u8>,
) -> (Vec<Vec<u8>>, tonic::Status) {
    let leaf = &stack.workload(workload).leaf;
    let channel = phi_guard_tools::client::mtls_channel(
        &stack.target(),
        Some(phi_guard_tools::client::ClientCert {
            cert: &leaf.cert,
            key: &leaf.key,
        }),
    )
    .await
    .expect("mTLS connects");
    let token = user.map(|u| stack.token(u));
    let service = tonic::service::interceptor::InterceptedService::new(
        channel,
        phi_guard_tools::client::Bearer::new(token),
    );
    let mut grpc = tonic::client::Grpc::new(service);
    grpc.ready().await.expect("channel ready");
    let path = tonic::codegen::http::uri::PathAndQuery::from_static(path);
    let mut messages = Vec::new();
    let status = match grpc
        .server_streaming(tonic::Request::new(request), path, RawCodec)
        .await
    {
        Err(status) => status,
        Ok(response) => {
            let mut stream = response.into_inner();
            loop {
                match stream.message().await {
                    Ok(Some(m)) => messages.push(m),
                    Ok(None) => break tonic::Status::ok(""),
                    Err(status) => break status,
                }
            }
        }
    };
    (messages, status)
}

#[cfg(test)]
mod tests {
    use super::without_keyed_tokens;

    #[test]
    fn keyed_tokens_are_cut_out_and_everything_else_kept() {
        let token = format!(
            "tok_{}",
            "0123456789abcdef2277".repeat(2).get(..32).unwrap()
        );
        let bytes = format!("a{token}b tok_2277 {token}");
        // Whole tokens go; a `tok_` without 32 hex digits after it is not a token and stays.
        assert_eq!(without_keyed_tokens(bytes.as_bytes()), b"ab tok_2277 ");
        // Upper-case hex is not what the mask filter writes, so it is not a token either.
        let upper = format!("tok_{}", "ABCDEF0123456789".repeat(2));
        assert_eq!(without_keyed_tokens(upper.as_bytes()), upper.as_bytes());
    }
}
