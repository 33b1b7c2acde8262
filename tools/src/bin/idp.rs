//! The demo IdP, a stand-in for your identity provider while you try phi-guard out:
//!
//!   phi-demo-idp 127.0.0.1:PORT JWKS_FILE   serve JWKS_FILE at /.well-known/jwks.json (loopback)
//!   phi-demo-idp keygen DIR [--kid KID]     a new ES256 key: DIR/signing_key.pem, DIR/jwks.json
//!   phi-demo-idp mint --key PEM --kid KID --issuer ISS --audience AUD --subject SUB
//!                [--role R]... [--minutes N]   print a signed token (JWT, ES256)

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Parser, Subcommand};
use phi_guard_tools::issuer::{self, SigningKey, UserClaims};

#[derive(Parser)]
#[command(name = "phi-demo-idp")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Make an ES256 signing key and its JWKS.
    Keygen {
        dir: PathBuf,
        #[arg(long, default_value = "demo-key-1")]
        kid: String,
    },
    /// Sign a token.
    Mint {
        #[arg(long)]
        key: PathBuf,
        #[arg(long, default_value = "demo-key-1")]
        kid: String,
        #[arg(long)]
        issuer: String,
        #[arg(long)]
        audience: String,
        #[arg(long)]
        subject: String,
        #[arg(long = "role")]
        roles: Vec<String>,
        #[arg(long, default_value_t = 15)]
        minutes: u64,
    },
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let first = std::env::args().nth(1).unwrap_or_default();
    if first != "keygen" && first != "mint" && !first.starts_with('-') {
        return serve().await;
    }
    match Cli::parse().command {
        Command::Keygen { dir, kid } => {
            let key = SigningKey::generate(&kid);
            std::fs::create_dir_all(&dir)?;
            std::fs::write(dir.join("signing_key.pem"), key.private_pem())?;
            std::fs::write(
                dir.join("jwks.json"),
                serde_json::to_vec_pretty(&issuer::jwks(&[&key]))?,
            )?;
            println!(
                "wrote {0}/signing_key.pem and {0}/jwks.json (kid {kid})",
                dir.display()
            );
        }
        Command::Mint {
            key,
            kid,
            issuer: iss,
            audience,
            subject,
            roles,
            minutes,
        } => {
            let key = SigningKey::es256_from_pem(&kid, &std::fs::read_to_string(&key)?)?;
            let roles: Vec<&str> = roles.iter().map(String::as_str).collect();
            let now = jwt_simple::prelude::Clock::now_since_epoch().as_secs();
            let token = key.mint_at(
                &UserClaims::user(&subject, &roles),
                &iss,
                &audience,
                now,
                now + minutes * 60,
            );
            println!("{token}");
        }
    }
    Ok(())
}

async fn serve() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let usage = "usage: phi-demo-idp 127.0.0.1:PORT JWKS_FILE | keygen DIR | mint ...";
    let addr: SocketAddr = args.next().ok_or(usage)?.parse()?;
    let jwks_file = args.next().ok_or(usage)?;
    if !addr.ip().is_loopback() {
        return Err("the demo IdP binds to loopback only".into());
    }
    let jwks: serde_json::Value = serde_json::from_slice(&std::fs::read(&jwks_file)?)?;
    let server = issuer::JwksServer::bind(addr, &jwks).await?;
    println!("phi-demo-idp serving {} on {}", jwks_file, server.addr);
    tokio::signal::ctrl_c().await?;
    Ok(())
}
