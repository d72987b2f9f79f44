//! An example auth service using token-sweeper's auth module as a real
//! service would: login issues, every request verifies, logout revokes.
//!
//! ```sh
//! TOKEN_SWEEPER__AUTH__SECRET=$(head -c 32 /dev/urandom | base64) \
//! TOKEN_SWEEPER__REDIS__URL=redis://127.0.0.1:6379 \
//!   cargo run --example auth_service -- 127.0.0.1:8080
//! curl -s -XPOST localhost:8080/login -H 'content-type: application/json' -d '{"user":"42"}'
//! curl -s localhost:8080/me -H "authorization: Bearer $TOKEN"
//! ```
//! Run `token-sweeper run` with the same settings next to it, and the sets it
//! writes stay clean.

mod app;

use std::sync::Arc;

use token_sweeper::auth::TokenService;
use token_sweeper::config::Settings;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let listen = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:8080".to_owned());
    let settings = Settings::load(None)?;
    // Fails here on bad key material or an unreachable Redis; once running,
    // it rides out Redis restarts and failovers (503 meanwhile).
    let tokens = Arc::new(TokenService::connect(&settings).await?);
    let listener = tokio::net::TcpListener::bind(&listen).await?;
    println!("auth service on http://{listen}");
    axum::serve(listener, app::router(tokens)).await?;
    Ok(())
}
