//! Key material: the HMAC secret or the PEM pair `auth.algorithm` needs,
//! loaded from the settings and proven by signing and verifying a probe, so
//! that a broken key fails at start-up, not at the first login.

use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey, EncodingKey};

use crate::config::AuthSettings;

use super::AuthError;

/// The key material for one algorithm, proven usable by a probe.
pub(super) struct Keys {
    pub(super) algorithm: Algorithm,
    /// `None` when only a public key is configured: this instance verifies only.
    pub(super) encoding: Option<EncodingKey>,
    pub(super) decoding: DecodingKey,
    /// The setting that holds the signing key, for error messages.
    pub(super) signing_key: &'static str,
}

impl Keys {
    /// Loads the key material named by `settings` and proves it with a probe.
    pub(super) fn load(settings: &AuthSettings) -> Result<Self, AuthError> {
        let algorithm = settings.algorithm;
        let keys = if algorithm.family() == AlgorithmFamily::Hmac {
            Self::hmac(settings, algorithm)?
        } else {
            Self::pem(settings, algorithm)?
        };
        keys.probe()?;
        Ok(keys)
    }

    fn hmac(settings: &AuthSettings, algorithm: Algorithm) -> Result<Self, AuthError> {
        let key = if settings.secret.is_none() && settings.secret_file.is_some() {
            "auth.secret_file"
        } else {
            "auth.secret"
        };
        let secret = settings
            .resolved_secret()
            .map_err(|e| AuthError::KeyMaterial {
                key: "auth.secret_file",
                message: e.to_string(),
            })?
            .ok_or(AuthError::KeyMaterial {
                key: "auth.secret",
                message: format!(
                    "{algorithm:?} needs a secret: set TOKEN_SWEEPER__AUTH__SECRET or auth.secret_file"
                ),
            })?;
        let bytes = secret.expose().as_bytes();
        // RFC 7518 section 3.2: a key of at least the hash output size.
        let minimum = match algorithm {
            Algorithm::HS512 => 64,
            Algorithm::HS384 => 48,
            _ => 32,
        };
        if bytes.len() < minimum {
            return Err(AuthError::KeyMaterial {
                key,
                message: format!(
                    "{algorithm:?} needs at least {minimum} bytes (RFC 7518 section 3.2), got {}",
                    bytes.len()
                ),
            });
        }
        Ok(Self {
            algorithm,
            encoding: Some(EncodingKey::from_secret(bytes)),
            decoding: DecodingKey::from_secret(bytes),
            signing_key: key,
        })
    }

    fn pem(settings: &AuthSettings, algorithm: Algorithm) -> Result<Self, AuthError> {
        let family = algorithm.family();
        let read = |key: &'static str, path: &std::path::Path| {
            std::fs::read(path).map_err(|e| AuthError::KeyMaterial {
                key,
                message: format!("{}: {e}", path.display()),
            })
        };
        let bad_pem = |key: &'static str| {
            move |e: jsonwebtoken::errors::Error| AuthError::KeyMaterial {
                key,
                message: format!("not a {family:?} PEM key for {algorithm:?}: {e}"),
            }
        };
        let public_path = settings
            .public_key_file
            .as_deref()
            .ok_or(AuthError::KeyMaterial {
                key: "auth.public_key_file",
                message: format!("{algorithm:?} needs a PEM public key to verify tokens"),
            })?;
        let public = read("auth.public_key_file", public_path)?;
        let decoding = match family {
            AlgorithmFamily::Rsa => DecodingKey::from_rsa_pem(&public),
            AlgorithmFamily::Ec => DecodingKey::from_ec_pem(&public),
            _ => DecodingKey::from_ed_pem(&public),
        }
        .map_err(bad_pem("auth.public_key_file"))?;
        let encoding = match &settings.private_key_file {
            None => None,
            Some(path) => {
                let private = read("auth.private_key_file", path)?;
                Some(
                    match family {
                        AlgorithmFamily::Rsa => EncodingKey::from_rsa_pem(&private),
                        AlgorithmFamily::Ec => EncodingKey::from_ec_pem(&private),
                        _ => EncodingKey::from_ed_pem(&private),
                    }
                    .map_err(bad_pem("auth.private_key_file"))?,
                )
            }
        };
        Ok(Self {
            algorithm,
            encoding,
            decoding,
            signing_key: "auth.private_key_file",
        })
    }

    /// Signs a probe with the signing key and verifies it with the verifying
    /// key, so that keys from different pairs, or a key for another curve
    /// (a P-384 key for ES256), fail at start-up and not at the first login.
    /// With a public key only, checks that the verifier accepts it.
    fn probe(&self) -> Result<(), AuthError> {
        const PROBE: &[u8] = b"token-sweeper key probe";
        let algorithm = self.algorithm;
        let verifying_key = if algorithm.family() == AlgorithmFamily::Hmac {
            self.signing_key
        } else {
            "auth.public_key_file"
        };
        let unusable = |key: &'static str, what: &str, e: jsonwebtoken::errors::Error| {
            AuthError::KeyMaterial {
                key,
                message: format!("cannot {what} {algorithm:?} with this key: {e}"),
            }
        };
        let Some(encoding) = &self.encoding else {
            // No signature to check; "AAAA" only has to decode. An error
            // (rather than `false`) means the key itself is refused.
            return jsonwebtoken::crypto::verify("AAAA", PROBE, &self.decoding, algorithm)
                .map(drop)
                .map_err(|e| unusable(verifying_key, "verify", e));
        };
        let signature = jsonwebtoken::crypto::sign(PROBE, encoding, algorithm)
            .map_err(|e| unusable(self.signing_key, "sign", e))?;
        match jsonwebtoken::crypto::verify(&signature, PROBE, &self.decoding, algorithm) {
            Ok(true) => Ok(()),
            Ok(false) => Err(AuthError::KeyMaterial {
                key: verifying_key,
                message: format!(
                    "does not verify a {algorithm:?} signature made with {}: the two keys are not one pair",
                    self.signing_key
                ),
            }),
            Err(e) => Err(unusable(verifying_key, "verify", e)),
        }
    }
}
