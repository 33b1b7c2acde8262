//! A stand-in OpenTelemetry collector for tests and the demo: accepts OTLP/HTTP logs on
//! `POST /v1/logs` in either encoding (`content-type: application/x-protobuf` or
//! `application/json`; anything else is 415), appends each log record as one JSON line (seq,
//! prev, chain, the exact event string) to a file, flushing per request, and answers 200 with
//! an `ExportLogsServiceResponse` in the request's encoding.
//!
//! Tests steer failures through a control endpoint:
//! - `POST /control/fail?status=503&count=3`: answer the next 3 log requests with 503
//!   (without `count`: until cleared); `status` may be any 4xx/5xx, e.g. 429;
//! - `POST /control/ok`: answer normally again;
//! - `GET /control/stats`: `{"requests":..,"records":..,"failed":..}`.
//!
//! "Going away" is stopping it ([`Collector::stop`]): the port then refuses connections.
//! It listens on loopback only.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinSet;

use phi_guard_audit::otlp::{
    collector_line, error_response, export_response, records_from_body, Encoding,
};
use phi_guard_common::GrpcStatus;

/// Larger request bodies are refused with 413.
pub const MAX_BODY: usize = 16 * 1024 * 1024;

/// Failure injection state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FailMode {
    /// HTTP status to answer log requests with; `None` answers normally.
    pub status: Option<u16>,
    /// How many more requests fail; `None` is until cleared.
    pub remaining: Option<u64>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    pub requests: u64,
    pub records: u64,
    pub failed: u64,
}

struct State {
    out: Mutex<File>,
    fail: Mutex<FailMode>,
    stats: Mutex<Stats>,
}

/// A running collector.
pub struct Collector {
    pub addr: SocketAddr,
    state: Arc<State>,
    shutdown: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl Collector {
    /// Binds `addr` (loopback only; port 0 picks one) and appends to `out`.
    pub async fn start(addr: SocketAddr, out: &Path, fail: FailMode) -> std::io::Result<Self> {
        if !addr.ip().is_loopback() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "the collector listens on loopback addresses only",
            ));
        }
        let file = OpenOptions::new().create(true).append(true).open(out)?;
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let state = Arc::new(State {
            out: Mutex::new(file),
            fail: Mutex::new(fail),
            stats: Mutex::new(Stats::default()),
        });
        let (tx, mut rx) = oneshot::channel();
        let st = state.clone();
        let task = tokio::spawn(async move {
            let mut conns = JoinSet::new();
            loop {
                tokio::select! {
                    _ = &mut rx => break,
                    accepted = listener.accept() => {
                        let Ok((stream, _)) = accepted else { continue };
                        let st = st.clone();
                        conns.spawn(async move {
                            let svc = service_fn(move |req| handle(req, st.clone()));
                            let _ = http1::Builder::new()
                                .serve_connection(TokioIo::new(stream), svc)
                                .await;
                        });
                    }
                }
            }
            // Going away means every connection, not just the listener.
            conns.abort_all();
        });
        Ok(Self {
            addr,
            state,
            shutdown: Some(tx),
            task,
        })
    }

    pub fn set_fail(&self, fail: FailMode) {
        if let Ok(mut f) = self.state.fail.lock() {
            *f = fail;
        }
    }

    pub fn stats(&self) -> Stats {
        self.state.stats.lock().map(|s| *s).unwrap_or_default()
    }

    /// Stops listening and drops open connections.
    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        let _ = (&mut self.task).await;
    }
}

fn reply(status: StatusCode, body: &str) -> Response<Full<Bytes>> {
    reply_as(status, "application/json", body.as_bytes().to_vec())
}

fn reply_as(
    status: StatusCode,
    content_type: &'static str,
    body: Vec<u8>,
) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(content_type),
    );
    resp
}

fn query(req: &Request<Incoming>) -> HashMap<String, String> {
    req.uri()
        .query()
        .unwrap_or_default()
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

async fn handle(
    req: Request<Incoming>,
    st: Arc<State>,
) -> Result<Response<Full<Bytes>>, std::convert::Infallible> {
    let path = req.uri().path().to_string();
    Ok(match (req.method().clone(), path.as_str()) {
        (Method::POST, "/v1/logs") => logs(req, &st).await,
        (Method::POST, "/control/fail") => {
            let q = query(&req);
            let status = q.get("status").and_then(|s| s.parse::<u16>().ok());
            if !status.is_some_and(|s| (400..=599).contains(&s)) {
                return Ok(reply(
                    StatusCode::BAD_REQUEST,
                    r#"{"error":"status must be 400..599"}"#,
                ));
            }
            let remaining = q.get("count").and_then(|c| c.parse().ok());
            if let Ok(mut f) = st.fail.lock() {
                *f = FailMode { status, remaining };
            }
            reply(StatusCode::OK, "{}")
        }
        (Method::POST, "/control/ok") => {
            if let Ok(mut f) = st.fail.lock() {
                *f = FailMode::default();
            }
            reply(StatusCode::OK, "{}")
        }
        (Method::GET, "/control/stats") => {
            let s = st.stats.lock().map(|s| *s).unwrap_or_default();
            reply(
                StatusCode::OK,
                &serde_json::json!({"requests": s.requests, "records": s.records, "failed": s.failed})
                    .to_string(),
            )
        }
        _ => reply(StatusCode::NOT_FOUND, r#"{"error":"not found"}"#),
    })
}

/// Takes one failure off the injection state, if one is armed.
fn injected_failure(st: &State) -> Option<u16> {
    let mut f = st.fail.lock().ok()?;
    let status = f.status?;
    match f.remaining {
        Some(0) => {
            *f = FailMode::default();
            None
        }
        Some(n) => {
            f.remaining = Some(n - 1);
            if n == 1 {
                *f = FailMode::default();
            }
            Some(status)
        }
        None => Some(status),
    }
}

async fn logs(req: Request<Incoming>, st: &State) -> Response<Full<Bytes>> {
    if let Ok(mut s) = st.stats.lock() {
        s.requests += 1;
    }
    let encoding = req
        .headers()
        .get(hyper::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(Encoding::from_content_type);
    let Some(encoding) = encoding else {
        return reply(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            r#"{"error":"content-type must be application/x-protobuf or application/json"}"#,
        );
    };
    // Refusals answer a google.rpc.Status in the request's encoding, as OTLP/HTTP asks.
    let refuse = |status: StatusCode, message: &str| {
        let code = match status.as_u16() {
            429 => GrpcStatus::ResourceExhausted,
            502..=504 => GrpcStatus::Unavailable,
            500..=599 => GrpcStatus::Internal,
            _ => GrpcStatus::InvalidArgument,
        };
        reply_as(
            status,
            encoding.content_type(),
            error_response(encoding, code, message),
        )
    };
    let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => return refuse(StatusCode::PAYLOAD_TOO_LARGE, "body too large"),
    };
    if let Some(status) = injected_failure(st) {
        if let Ok(mut s) = st.stats.lock() {
            s.failed += 1;
        }
        let code = StatusCode::from_u16(status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
        return refuse(code, "injected failure");
    }
    let records = match records_from_body(&body, encoding) {
        Ok(r) => r,
        Err(_) => return refuse(StatusCode::BAD_REQUEST, "not an OTLP logs request"),
    };
    let mut text = String::new();
    let mut rejected = 0u64;
    for r in records {
        match r {
            Ok(r) => {
                text.push_str(&collector_line(&r));
                text.push('\n');
            }
            Err(_) => rejected += 1,
        }
    }
    let written = st.out.lock().ok().and_then(|mut f| {
        f.write_all(text.as_bytes()).ok()?;
        f.flush().ok()
    });
    if written.is_none() {
        return refuse(StatusCode::INTERNAL_SERVER_ERROR, "write failed");
    }
    let lines = text.lines().count() as u64;
    if let Ok(mut s) = st.stats.lock() {
        s.records += lines;
    }
    // OTLP partial success: the sender learns some records were not kept.
    let answer = export_response(
        encoding,
        rejected,
        "records without phi_guard chain attributes",
    );
    reply_as(StatusCode::OK, encoding.content_type(), answer)
}
