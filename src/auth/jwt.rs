//! Signing and decoding tokens: the algorithm and `typ` pinned, `exp`,
//! `nbf`, `iss` and `aud` checked by `jsonwebtoken` on the host clock with
//! `auth.leeway` (so that a token refused here costs Redis nothing).

use jsonwebtoken::{EncodingKey, Header, Validation};

use crate::config::AuthSettings;

use super::keys::Keys;
use super::{AuthError, Claims};

/// The `typ` header of every token issued, and the only one accepted.
const TYP: &str = "JWT";

/// The key material and the two ways of checking a token.
pub(super) struct Jwt {
    keys: Keys,
    /// Full validation, for `verify`.
    validation: Validation,
    /// Signature, algorithm, issuer, audience and `nbf` but not expiry: an
    /// expired token can still be revoked.
    revocation: Validation,
}

/// A key that can sign, checked before any round trip to Redis.
pub(super) struct Signer<'a> {
    keys: &'a Keys,
    encoding: &'a EncodingKey,
}

impl Jwt {
    /// Loads and proves the key material named by `settings`.
    pub(super) fn new(settings: &AuthSettings) -> Result<Self, AuthError> {
        let keys = Keys::load(settings)?;
        let mut validation = Validation::new(keys.algorithm);
        validation.leeway = settings.leeway.as_secs();
        // jsonwebtoken checks `nbf` only when asked; a token that is not
        // valid yet is not valid.
        validation.validate_nbf = true;
        validation.set_required_spec_claims(&["exp", "sub"]);
        match &settings.issuer {
            Some(iss) => {
                validation.set_issuer(&[iss]);
                validation.required_spec_claims.insert("iss".to_owned());
            }
            None => validation.iss = None,
        }
        match &settings.audience {
            Some(aud) => {
                validation.set_audience(&[aud]);
                validation.required_spec_claims.insert("aud".to_owned());
            }
            None => validation.validate_aud = false,
        }
        let mut revocation = validation.clone();
        revocation.validate_exp = false;
        Ok(Self {
            keys,
            validation,
            revocation,
        })
    }

    /// The signing key, or why this instance cannot issue.
    pub(super) fn signer(&self) -> Result<Signer<'_>, AuthError> {
        let encoding = self.keys.encoding.as_ref().ok_or(AuthError::KeyMaterial {
            key: "auth.private_key_file",
            message: format!(
                "needed to issue {:?} tokens; only a public key is configured",
                self.keys.algorithm
            ),
        })?;
        Ok(Signer {
            keys: &self.keys,
            encoding,
        })
    }

    /// Every check, expiry included.
    pub(super) fn decode(&self, token: &str) -> Result<Claims, AuthError> {
        self.decode_with(token, &self.validation)
    }

    /// Every check but expiry: what a token must pass to be revoked.
    pub(super) fn decode_revocable(&self, token: &str) -> Result<Claims, AuthError> {
        self.decode_with(token, &self.revocation)
    }

    fn decode_with(&self, token: &str, validation: &Validation) -> Result<Claims, AuthError> {
        use jsonwebtoken::errors::ErrorKind;
        let data =
            match jsonwebtoken::decode::<Claims>(token.trim(), &self.keys.decoding, validation) {
                Ok(data) => data,
                Err(e) => {
                    return match e.kind() {
                        ErrorKind::ExpiredSignature => Err(AuthError::Expired),
                        _ => Err(AuthError::Invalid(e.to_string())),
                    }
                }
            };
        if data.header.typ.as_deref() != Some(TYP) {
            return Err(AuthError::Invalid(format!(
                "typ {:?} is not {TYP:?}",
                data.header.typ.unwrap_or_default()
            )));
        }
        Ok(data.claims)
    }
}

impl Signer<'_> {
    /// Encodes `claims` with the `typ` [`Jwt`] accepts.
    pub(super) fn sign(&self, claims: &Claims) -> Result<String, AuthError> {
        let header = Header::new(self.keys.algorithm);
        jsonwebtoken::encode(&header, claims, self.encoding).map_err(|e| AuthError::KeyMaterial {
            key: self.keys.signing_key,
            message: format!("cannot sign {:?}: {e}", self.keys.algorithm),
        })
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime, UNIX_EPOCH};

    use super::*;
    use crate::config::Secret;

    fn jwt(secret: &str) -> Result<Jwt, AuthError> {
        Jwt::new(&AuthSettings {
            secret: Some(Secret::new(secret)),
            leeway: Duration::ZERO,
            ..AuthSettings::default()
        })
    }

    fn now() -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
    }

    fn claims(exp: u64) -> Claims {
        Claims::sample(now(), exp)
    }

    const SECRET: &str = "0123456789abcdef0123456789abcdef";

    #[test]
    fn a_token_signed_here_decodes_to_its_claims() -> Result<(), AuthError> {
        let jwt = jwt(SECRET)?;
        let claims = claims(now() + 60);
        let token = jwt.signer()?.sign(&claims)?;
        assert_eq!(jwt.decode(&token)?, claims);
        Ok(())
    }

    #[test]
    fn an_expired_token_is_expired_yet_revocable() -> Result<(), AuthError> {
        let jwt = jwt(SECRET)?;
        let token = jwt.signer()?.sign(&claims(now() - 60))?;
        assert!(matches!(jwt.decode(&token), Err(AuthError::Expired)));
        assert_eq!(jwt.decode_revocable(&token)?.sub, "42");
        Ok(())
    }

    #[test]
    fn another_typ_or_key_is_invalid() -> Result<(), AuthError> {
        let jwt = jwt(SECRET)?;
        let mut header = Header::new(jsonwebtoken::Algorithm::HS256);
        header.typ = Some("at+jwt".to_owned());
        let key = EncodingKey::from_secret(SECRET.as_bytes());
        let token = jsonwebtoken::encode(&header, &claims(now() + 60), &key)
            .map_err(|e| AuthError::Invalid(e.to_string()))?;
        assert!(matches!(
            jwt.decode(&token),
            Err(AuthError::Invalid(message)) if message.contains("typ")
        ));
        let other = self::jwt(&SECRET.replace('0', "1"))?;
        let token = other.signer()?.sign(&claims(now() + 60))?;
        assert!(matches!(jwt.decode(&token), Err(AuthError::Invalid(_))));
        Ok(())
    }

    #[test]
    fn a_token_not_valid_yet_is_invalid() -> Result<(), AuthError> {
        let jwt = jwt(SECRET)?;
        let mut claims = claims(now() + 600);
        claims.extra.insert("nbf".to_owned(), (now() + 300).into());
        let token = jwt.signer()?.sign(&claims)?;
        assert!(matches!(jwt.decode(&token), Err(AuthError::Invalid(_))));
        Ok(())
    }

    #[test]
    fn a_short_secret_is_refused() {
        assert!(matches!(
            jwt("short"),
            Err(AuthError::KeyMaterial {
                key: "auth.secret",
                ..
            })
        ));
    }
}
