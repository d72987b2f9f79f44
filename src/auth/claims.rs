//! What a token says: the claims this module signs, and the token handed back by `issue`.

use serde::{Deserialize, Serialize};

use super::AuthError;

/// The claims of tokens this module issues.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Claims {
    /// The user id.
    pub sub: String,
    /// Issued at, seconds since the epoch (Redis `TIME`).
    pub iat: u64,
    /// Expiry, seconds since the epoch.
    pub exp: u64,
    /// Random 128-bit id, hex.
    pub jti: String,
    /// Issuer, when `auth.issuer` is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iss: Option<String>,
    /// Audience, when `auth.audience` is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aud: Option<String>,
    /// Whatever else the caller put in.
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

/// The claims the module sets itself; an extra claim may not override them.
const RESERVED: &[&str] = &["sub", "iat", "exp", "jti", "iss", "aud", "nbf"];

/// Refuses extra claims that name a claim this module sets.
pub(super) fn check_extra(
    extra: &serde_json::Map<String, serde_json::Value>,
) -> Result<(), AuthError> {
    match extra.keys().find(|k| RESERVED.contains(&k.as_str())) {
        Some(name) => Err(AuthError::ReservedClaim(name.clone())),
        None => Ok(()),
    }
}

/// A freshly issued token.
#[derive(Clone, Debug)]
pub struct IssuedToken {
    /// The encoded JWT, for the client.
    pub token: String,
    /// What it says.
    pub claims: Claims,
    /// Other sessions dropped to respect `auth.max_sessions`.
    pub sessions_dropped: u64,
}

#[cfg(test)]
impl Claims {
    /// Claims of user 42 without issuer, audience or extras, for unit tests.
    pub(super) fn sample(iat: u64, exp: u64) -> Self {
        Self {
            sub: "42".to_owned(),
            iat,
            exp,
            jti: "j".to_owned(),
            iss: None,
            aud: None,
            extra: serde_json::Map::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_extra_claim_may_not_override_one_the_module_sets() {
        let mut extra = serde_json::Map::new();
        extra.insert("role".to_owned(), "admin".into());
        assert!(check_extra(&extra).is_ok());
        extra.insert("nbf".to_owned(), 0.into());
        assert!(matches!(
            check_extra(&extra),
            Err(AuthError::ReservedClaim(name)) if name == "nbf"
        ));
    }
}
