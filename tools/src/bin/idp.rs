//! The demo IdP, a stand-in for your identity provider while you try phi-guard out:
//!
//!   phi-demo-idp serve 127.0.0.1:PORT JWKS_FILE   serve JWKS_FILE at /.well-known/jwks.json
//!                (loopback; `serve` may be left out)
//!   phi-demo-idp keygen DIR [--kid KID]     a new ES256 key: DIR/signing_key.pem, DIR/jwks.json
//!   phi-demo-idp mint --key PEM --kid KID --issuer ISS --audience AUD --subject SUB
//!                [--role R]... [--scope S] [--tenant T] [--purpose-of-use P] [--minutes N]
//!                print a signed token (JWT, ES256); tenant and purpose_of_use only when given

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

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
    /// Serve a JWKS file at /.well-known/jwks.json on a loopback address.
    Serve {
        /// `127.0.0.1:PORT` (loopback only).
        addr: SocketAddr,
        jwks_file: PathBuf,
    },
    /// Sign a token: `sub`, `roles`, `scope`, and `tenant` / `purpose_of_use` only when given.
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
        #[arg(long, default_value = "patient.read encounter.read")]
        scope: String,
        /// The `tenant` claim; none when not given.
        #[arg(long)]
        tenant: Option<String>,
        /// The `purpose_of_use` claim (e.g. TREAT); none when not given.
        #[arg(long)]
        purpose_of_use: Option<String>,
        #[arg(long, default_value_t = 15)]
        minutes: u64,
    },
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // The older form `phi-demo-idp 127.0.0.1:PORT JWKS_FILE` still serves.
    let mut args: Vec<String> = std::env::args().collect();
    if args.get(1).is_some_and(|a| a.parse::<SocketAddr>().is_ok()) {
        args.insert(1, "serve".into());
    }
    match Cli::parse_from(args).command {
        Command::Serve { addr, jwks_file } => serve(addr, &jwks_file).await?,
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
            scope,
            tenant,
            purpose_of_use,
            minutes,
        } => {
            let key = SigningKey::es256_from_pem(&kid, &std::fs::read_to_string(&key)?)?;
            let roles: Vec<&str> = roles.iter().map(String::as_str).collect();
            let now = jwt_simple::prelude::Clock::now_since_epoch().as_secs();
            let claims = UserClaims {
                scope,
                tenant,
                purpose_of_use,
                ..UserClaims::user(&subject, &roles)
            };
            let token = key.mint_at(&claims, &iss, &audience, now, now + minutes * 60);
            println!("{token}");
        }
    }
    Ok(())
}

async fn serve(addr: SocketAddr, jwks_file: &Path) -> Result<(), Box<dyn std::error::Error>> {
    if !addr.ip().is_loopback() {
        return Err("the demo IdP binds to loopback only".into());
    }
    let jwks: serde_json::Value = serde_json::from_slice(&std::fs::read(jwks_file)?)?;
    let server = issuer::JwksServer::bind(addr, &jwks).await?;
    println!(
        "phi-demo-idp serving {} on {}",
        jwks_file.display(),
        server.addr
    );
    tokio::signal::ctrl_c().await?;
    Ok(())
}
