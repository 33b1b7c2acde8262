//! The demo IdP's JWKS endpoint as a process: `phi-demo-idp 127.0.0.1:PORT JWKS_FILE`. Serves
//! the file at /.well-known/jwks.json on loopback, as an identity provider serves `jwks_uri`.

use std::net::SocketAddr;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let usage = "usage: phi-demo-idp 127.0.0.1:PORT JWKS_FILE";
    let addr: SocketAddr = args.next().ok_or(usage)?.parse()?;
    let jwks_file = args.next().ok_or(usage)?;
    if !addr.ip().is_loopback() {
        return Err("the demo IdP binds to loopback only".into());
    }
    let jwks: serde_json::Value = serde_json::from_slice(&std::fs::read(&jwks_file)?)?;
    let server = phi_guard_tools::issuer::JwksServer::bind(addr, &jwks).await?;
    println!("phi-demo-idp serving {} on {}", jwks_file, server.addr);
    tokio::signal::ctrl_c().await?;
    Ok(())
}
