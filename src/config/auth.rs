//! `[auth]`: the auth path's settings (key template, member, JWT algorithm
//! and key material, token lifetime), and the token lifetime rule that the
//! settings, `issue` and `--ttl` share.

use std::path::PathBuf;
use std::time::Duration;

use jsonwebtoken::Algorithm;
use serde::{Deserialize, Serialize};

use super::secret::{read_secret, refuse_both};
use super::values::{human_duration, in_days, string_enum};
use super::{ConfigError, Secret};

/// The longest token lifetime `issue` accepts (10 years, 3650 days). It keeps
/// every score and key expiry exact (far below 2^53 milliseconds) and well
/// inside the 50 years ahead that the sweeper's unit guard takes for a
/// plausible expiry, so a long-lived token can never make a set look like
/// the other unit.
pub const MAX_TTL: Duration = Duration::from_secs(3650 * 86_400);

/// What is wrong with a token lifetime (`auth.ttl`, the `ttl` of
/// `TokenService::issue`, `--ttl`), or `None` when it is one a token can
/// have: whole seconds (`exp` is whole seconds: 1.5 s would silently become
/// 1 s), at least one second (a lifetime of 0 would issue a token that is
/// expired as it is handed out), at most [`MAX_TTL`]. Long values are
/// written in days, as the limit is.
pub fn ttl_problem(ttl: Duration) -> Option<String> {
    if ttl > MAX_TTL {
        Some(format!(
            "{} is longer than the longest token lifetime, {}",
            in_days(ttl),
            in_days(MAX_TTL)
        ))
    } else if ttl < Duration::from_secs(1) || ttl.subsec_nanos() != 0 {
        Some(format!(
            "must be whole seconds, at least 1s, got {}",
            in_days(ttl)
        ))
    } else {
        None
    }
}
string_enum! {
    /// What the auth module stores as the set member for a token.
    MemberKind {
        /// Lowercase hex SHA-256 of the token: a leaked dump of Redis holds no usable token.
        Sha256 = "sha256",
        /// The raw token, only for compatibility with existing data.
        Token = "token",
        /// The token's `jti` claim.
        Jti = "jti",
    }
}

/// The auth path: issuing, verifying, revoking and listing tokens.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthSettings {
    /// Key of a user's set; `{user}` is replaced by the user id. For Redis
    /// Cluster hash tags write `{{user}}-tokens`, which gives `{42}-tokens`.
    pub key_template: String,
    /// What the member of a token is.
    pub member: MemberKind,
    /// JWT signing algorithm: HS256/384/512, RS256/384/512, PS256/384/512,
    /// ES256/384 or EdDSA. Verification accepts this one only.
    #[serde(with = "jwt_algorithm")]
    pub algorithm: Algorithm,
    /// `iss` written into tokens and required when verifying.
    pub issuer: Option<String>,
    /// `aud` written into tokens and required when verifying.
    pub audience: Option<String>,
    /// Lifetime of issued tokens: whole seconds, from 1s to 3650 days
    /// ([`MAX_TTL`]; see [`ttl_problem`]).
    #[serde(with = "human_duration")]
    pub ttl: Duration,
    /// Clock tolerance, whole seconds up to 1h: a token verifies until `exp`
    /// plus this (stored-score check and key TTL included), and `nbf`/`iat`
    /// may be this far ahead. `sweep.grace` must be at least this long.
    #[serde(with = "human_duration")]
    pub leeway: Duration,
    /// Keep at most this many sessions per user; 0 = no limit. A login never
    /// drops its own session; of the others it drops those that expire first
    /// (the oldest logins, with one ttl). Ties go in the members' order.
    pub max_sessions: u32,
    /// HMAC secret (HS*): set it with `TOKEN_SWEEPER__AUTH__SECRET` or `secret_file`.
    pub secret: Option<Secret>,
    /// File holding the HMAC secret.
    pub secret_file: Option<PathBuf>,
    /// PEM private key (RS*/PS*/ES*/EdDSA), needed to issue.
    pub private_key_file: Option<PathBuf>,
    /// PEM public key (RS*/PS*/ES*/EdDSA), needed to verify.
    pub public_key_file: Option<PathBuf>,
}

impl Default for AuthSettings {
    fn default() -> Self {
        Self {
            key_template: "{user}-tokens".to_owned(),
            member: MemberKind::Sha256,
            algorithm: Algorithm::HS256,
            issuer: None,
            audience: None,
            ttl: Duration::from_secs(24 * 3600),
            leeway: Duration::ZERO,
            max_sessions: 0,
            secret: None,
            secret_file: None,
            private_key_file: None,
            public_key_file: None,
        }
    }
}

impl AuthSettings {
    /// The HMAC secret from `secret` or `secret_file`.
    ///
    /// # Errors
    /// When the file cannot be read.
    pub fn resolved_secret(&self) -> Result<Option<Secret>, ConfigError> {
        read_secret(
            "auth.secret_file",
            self.secret.as_ref(),
            self.secret_file.as_deref(),
        )
    }

    /// The rules between `[auth]` keys that the settings alone can check
    /// (the key material is proven by the auth module, which can sign).
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        if !self.key_template.contains("{user}") {
            return Err(ConfigError::invalid(
                "auth.key_template",
                format!("{:?} must contain {{user}}", self.key_template),
            ));
        }
        refuse_both(
            "auth.secret",
            "auth.secret_file",
            self.secret.is_some() && self.secret_file.is_some(),
        )?;
        if let Some(problem) = ttl_problem(self.ttl) {
            return Err(ConfigError::invalid("auth.ttl", problem));
        }
        Ok(())
    }
}

/// `auth.algorithm` as the name JWT headers use (`HS256`, `EdDSA`).
mod jwt_algorithm {
    use jsonwebtoken::Algorithm;
    use serde::{Deserializer, Serialize, Serializer};

    use super::super::values::from_text;

    pub fn serialize<S: Serializer>(algorithm: &Algorithm, s: S) -> Result<S::Ok, S::Error> {
        algorithm.serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Algorithm, D::Error> {
        from_text(d, |text| {
            text.parse().map_err(|e| {
                format!("{text:?} is not a JWT algorithm (HS256, RS256, ES256, EdDSA, ...): {e}")
            })
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn algorithm(text: &str) -> Result<Algorithm, String> {
        let value = serde_json::json!({ "algorithm": text });
        serde_json::from_value::<AuthSettings>(value)
            .map(|settings| settings.algorithm)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn the_algorithm_is_read_as_jwt_headers_name_it() {
        assert_eq!(algorithm("EdDSA"), Ok(Algorithm::EdDSA));
        assert_eq!(algorithm("PS512"), Ok(Algorithm::PS512));
        for bad in ["hs256", "none", "EDDSA", ""] {
            let err = algorithm(bad).unwrap_err();
            assert!(
                err.starts_with(&format!(
                    "{bad:?} is not a JWT algorithm (HS256, RS256, ES256, EdDSA, ...): "
                )),
                "{err}"
            );
        }
        let written = toml::to_string(&AuthSettings {
            algorithm: Algorithm::ES384,
            ..AuthSettings::default()
        })
        .unwrap();
        assert!(written.contains("algorithm = \"ES384\"\n"), "{written}");
    }

    #[test]
    fn token_lifetimes_are_whole_seconds_up_to_ten_years() {
        assert_eq!(ttl_problem(Duration::from_secs(1)), None);
        assert_eq!(ttl_problem(MAX_TTL), None);
        assert_eq!(
            ttl_problem(Duration::from_millis(1500)).as_deref(),
            Some("must be whole seconds, at least 1s, got 1s 500ms")
        );
        assert_eq!(
            ttl_problem(Duration::ZERO).as_deref(),
            Some("must be whole seconds, at least 1s, got 0s")
        );
        assert_eq!(
            ttl_problem(MAX_TTL + Duration::from_secs(1)).as_deref(),
            Some("3650 days 1s is longer than the longest token lifetime, 3650 days")
        );
    }

    #[test]
    fn one_secret_source_at_a_time() {
        let both = AuthSettings {
            secret: Some(Secret::new("s")),
            secret_file: Some("/s".into()),
            ..AuthSettings::default()
        };
        assert_eq!(
            both.validate().unwrap_err().to_string(),
            "auth.secret_file: set either auth.secret or auth.secret_file, not both"
        );
    }
}
