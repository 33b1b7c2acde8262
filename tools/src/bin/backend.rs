//! The demo backend as a process: `phi-demo-backend 127.0.0.1:PORT`. Plaintext h2c, loopback
//! only: Envoy terminates mTLS in front of it.

use std::net::SocketAddr;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let addr: SocketAddr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:50051".into())
        .parse()?;
    if !addr.ip().is_loopback() {
        return Err("the demo backend binds to loopback only".into());
    }
    let listener = tokio::net::TcpListener::bind(addr).await?;
    println!("phi-demo-backend serving health.v1.PatientService on {addr}");
    phi_guard_tools::backend::serve(listener, async {
        let _ = tokio::signal::ctrl_c().await;
    })
    .await?;
    Ok(())
}
