//! The routes of the example auth service, in a file of their own so the
//! test in tests/example_app.rs serves exactly this router.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;
use token_sweeper::auth::{AuthError, Claims, TokenService};

/// `POST /login` body. A real service checks a password or an SSO assertion
/// first; the example trusts the user name to stay short.
#[derive(Deserialize)]
pub struct Login {
    pub user: String,
}

/// Builds the service's routes around one shared [`TokenService`].
pub fn router(tokens: Arc<TokenService>) -> Router {
    Router::new()
        .route("/login", post(login))
        .route("/me", get(me))
        .route("/logout", post(logout))
        .route("/logout-all", post(logout_all))
        .route("/sessions", get(sessions))
        .with_state(tokens)
}

async fn login(State(tokens): State<Arc<TokenService>>, Json(login): Json<Login>) -> Response {
    match tokens
        .issue(&login.user, None, serde_json::Map::new())
        .await
    {
        Ok(issued) => {
            Json(json!({ "token": issued.token, "expires_at": issued.claims.exp })).into_response()
        }
        Err(e) => failure(&e),
    }
}

async fn me(State(tokens): State<Arc<TokenService>>, headers: HeaderMap) -> Response {
    match authenticate(&tokens, &headers).await {
        Ok(claims) => Json(claims).into_response(),
        Err(response) => response,
    }
}

async fn logout(State(tokens): State<Arc<TokenService>>, headers: HeaderMap) -> Response {
    // Logout works with an expired token too: revoke() checks the signature only.
    let Some(token) = bearer(&headers) else {
        return unauthorized("missing bearer token");
    };
    match tokens.revoke(token).await {
        Ok(was_active) => Json(json!({ "revoked": was_active })).into_response(),
        Err(e) => failure(&e),
    }
}

async fn logout_all(State(tokens): State<Arc<TokenService>>, headers: HeaderMap) -> Response {
    let claims = match authenticate(&tokens, &headers).await {
        Ok(claims) => claims,
        Err(response) => return response,
    };
    match tokens.revoke_all(&claims.sub).await {
        Ok(ended) => Json(json!({ "ended": ended })).into_response(),
        Err(e) => failure(&e),
    }
}

async fn sessions(State(tokens): State<Arc<TokenService>>, headers: HeaderMap) -> Response {
    let claims = match authenticate(&tokens, &headers).await {
        Ok(claims) => claims,
        Err(response) => return response,
    };
    match tokens.list(&claims.sub).await {
        Ok(sessions) => Json(sessions).into_response(),
        Err(e) => failure(&e),
    }
}

/// The caller's verified claims, or the 401 to send back.
async fn authenticate(tokens: &TokenService, headers: &HeaderMap) -> Result<Claims, Response> {
    let token = bearer(headers).ok_or_else(|| unauthorized("missing bearer token"))?;
    tokens.verify(token).await.map_err(|e| failure(&e))
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
}

fn unauthorized(reason: &str) -> Response {
    (
        StatusCode::UNAUTHORIZED,
        [(header::WWW_AUTHENTICATE, "Bearer")],
        Json(json!({ "error": reason })),
    )
        .into_response()
}

/// Invalid, expired and revoked tokens are 401 with the reason; Redis trouble is 503.
fn failure(e: &AuthError) -> Response {
    match e {
        AuthError::Invalid(_) => unauthorized("invalid token"),
        AuthError::Expired => unauthorized("token expired"),
        AuthError::Revoked => unauthorized("token revoked"),
        AuthError::EmptyUser | AuthError::ReservedClaim(_) | AuthError::OutOfRange { .. } => (
            StatusCode::BAD_REQUEST,
            Json(json!({ "error": e.to_string() })),
        )
            .into_response(),
        AuthError::Redis(_) | AuthError::Unavailable(_) | AuthError::KeyMaterial { .. } => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "error": "session store unavailable" })),
        )
            .into_response(),
    }
}
