//! `tokens issue|verify|revoke|revoke-all|list`: the auth path, for operators.

use std::process::ExitCode;

use token_sweeper::auth::{Expiry, TokenService};
use token_sweeper::config::Settings;
use token_sweeper::logging;

use super::args::TokensCommand;
use super::failure::{auth_failure, Failure, OrFail};
use super::runtime;

/// Runs one `tokens` action against Redis.
pub fn tokens_command(action: TokensCommand, settings: &Settings) -> Result<ExitCode, Failure> {
    logging::init(&settings.log);
    runtime()?.block_on(tokens(action, settings))
}

async fn tokens(action: TokensCommand, settings: &Settings) -> Result<ExitCode, Failure> {
    let service = TokenService::connect(settings)
        .await
        .map_err(auth_failure)?;
    match action {
        TokensCommand::Issue {
            user,
            ttl,
            claims,
            json,
        } => {
            let extra = parse_claims(&claims).or_usage()?;
            let issued = service
                .issue(&user, ttl, extra)
                .await
                .map_err(auth_failure)?;
            if json {
                let out = serde_json::json!({
                    "token": issued.token,
                    "claims": issued.claims,
                    "sessions_dropped": issued.sessions_dropped,
                });
                println!("{}", json_line(&out)?);
            } else {
                println!("{}", issued.token);
            }
        }
        TokensCommand::Verify { token } => {
            let token = token_argument(token).or_runtime()?;
            let claims = service.verify(&token).await.or_runtime()?;
            println!("{}", json_line(&claims)?);
        }
        TokensCommand::Revoke { token } => {
            let token = token_argument(token).or_runtime()?;
            let was_active = service.revoke(&token).await.or_runtime()?;
            println!(
                "{}",
                if was_active {
                    "revoked"
                } else {
                    "not active (already revoked or expired)"
                }
            );
        }
        TokensCommand::RevokeAll { user } => {
            let ended = service.revoke_all(&user).await.map_err(auth_failure)?;
            println!("ended {ended} active sessions of {user}");
        }
        TokensCommand::List { user, json } => {
            let sessions = service.list(&user).await.map_err(auth_failure)?;
            if json {
                println!("{}", json_line(&sessions)?);
            } else {
                for session in &sessions {
                    println!(
                        "{}  expires {}",
                        session.id(),
                        expiry_text(session.expires_at)
                    );
                }
                eprintln!("{} active sessions", sessions.len());
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// An expiry for `tokens list`: RFC 3339 (UTC), "never" for a `+inf`
/// score, and the seconds since the epoch for a score past the dates chrono
/// can write (some 260 000 years ahead), rather than nothing.
fn expiry_text(expiry: Expiry) -> String {
    match expiry {
        Expiry::Never => "never".to_owned(),
        Expiry::At(secs) => chrono::DateTime::from_timestamp_millis((secs * 1000.0) as i64)
            .map(|t| t.to_rfc3339())
            .unwrap_or_else(|| format!("at {secs:e} s since the epoch")),
    }
}

fn json_line<T: serde::Serialize>(value: &T) -> Result<String, Failure> {
    serde_json::to_string(value).or_runtime()
}

/// `KEY=VALUE` pairs; VALUE is taken as JSON when it parses, else as a string.
fn parse_claims(
    pairs: &[String],
) -> Result<serde_json::Map<String, serde_json::Value>, anyhow::Error> {
    pairs
        .iter()
        .map(|pair| {
            let (key, value) = pair
                .split_once('=')
                .ok_or_else(|| anyhow::anyhow!("--claim {pair:?}: expected KEY=VALUE"))?;
            let value = serde_json::from_str(value)
                .unwrap_or_else(|_| serde_json::Value::String(value.to_owned()));
            Ok((key.to_owned(), value))
        })
        .collect()
}

/// The token from the command line, or from stdin for "-" or none (keeps it
/// out of shell history and `ps`).
fn token_argument(token: Option<String>) -> std::io::Result<String> {
    match token {
        Some(token) if token != "-" => Ok(token),
        _ => {
            let mut text = String::new();
            std::io::Read::read_to_string(&mut std::io::stdin(), &mut text)?;
            Ok(text.trim().to_owned())
        }
    }
}
