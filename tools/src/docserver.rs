//! A one-document HTTP/1.1 server on loopback: what an IdP's `jwks_uri` or a schema registry
//! serving a descriptor set looks like to Envoy. Tests switch what it answers (the document,
//! an error status, garbage) to show that the filters keep their last good document.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// What the server answers on its path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// 200 with the document.
    Document,
    /// This status, empty body (`503` for an IdP in trouble).
    Status(u16),
    /// 200 with these bytes instead of the document.
    Body(Vec<u8>),
}

struct State {
    path: String,
    content_type: String,
    document: Vec<u8>,
    answer: Answer,
    requests: u64,
}

/// Serves one document on one path (any other path: 404), `connection: close`.
#[derive(Clone)]
pub struct DocumentServer {
    pub addr: SocketAddr,
    state: Arc<Mutex<State>>,
}

impl DocumentServer {
    /// Serves `document` at `path` on an ephemeral loopback port.
    pub async fn start(
        path: &str,
        content_type: &str,
        document: Vec<u8>,
    ) -> std::io::Result<DocumentServer> {
        Self::bind(
            SocketAddr::from(([127, 0, 0, 1], 0)),
            path,
            content_type,
            document,
        )
        .await
    }

    pub async fn bind(
        addr: SocketAddr,
        path: &str,
        content_type: &str,
        document: Vec<u8>,
    ) -> std::io::Result<DocumentServer> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let state = Arc::new(Mutex::new(State {
            path: path.to_string(),
            content_type: content_type.to_string(),
            document,
            answer: Answer::Document,
            requests: 0,
        }));
        let server_state = state.clone();
        tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                let state = server_state.clone();
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 8192];
                    let mut read = 0;
                    // Read the request head; a GET has no body.
                    while read < buf.len() {
                        match conn.read(&mut buf[read..]).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => read += n,
                        }
                        if buf[..read].windows(4).any(|w| w == b"\r\n\r\n") {
                            break;
                        }
                    }
                    let head = String::from_utf8_lossy(&buf[..read]).to_string();
                    let (status, content_type, body) = {
                        let mut s = state.lock().unwrap();
                        s.requests += 1;
                        let on_path = head.starts_with(&format!("GET {} ", s.path));
                        let ct = s.content_type.clone();
                        match (&s.answer, on_path) {
                            (Answer::Status(code), _) => (status_line(*code), ct, Vec::new()),
                            (_, false) => (status_line(404), ct, Vec::new()),
                            (Answer::Document, true) => (status_line(200), ct, s.document.clone()),
                            (Answer::Body(b), true) => (status_line(200), ct, b.clone()),
                        }
                    };
                    let head = format!(
                        "HTTP/1.1 {status}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                        body.len()
                    );
                    let _ = conn.write_all(head.as_bytes()).await;
                    let _ = conn.write_all(&body).await;
                    let _ = conn.shutdown().await;
                });
            }
        });
        Ok(DocumentServer { addr, state })
    }

    /// Replaces the document.
    pub fn set_document(&self, document: Vec<u8>) {
        self.state.lock().unwrap().document = document;
    }

    pub fn set_answer(&self, answer: Answer) {
        self.state.lock().unwrap().answer = answer;
    }

    /// How many requests the server has answered, any status.
    pub fn requests(&self) -> u64 {
        self.state.lock().unwrap().requests
    }

    /// `http://ADDR<path>`.
    pub fn url(&self) -> String {
        format!("http://{}{}", self.addr, self.state.lock().unwrap().path)
    }
}

fn status_line(code: u16) -> String {
    let reason = match code {
        200 => "OK",
        404 => "Not Found",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Status",
    };
    format!("{code} {reason}")
}

/// Lower-case hex SHA-256 of `bytes`: the pin of a document (`sha256sum`'s output).
pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest as _;
    phi_guard_common::hex::encode(&sha2::Sha256::digest(bytes))
}
