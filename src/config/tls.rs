//! The TLS files of `[redis]` (`tls_ca_file`, `tls_cert_file`,
//! `tls_key_file`): read and checked the way the TLS library will use them,
//! so a wrong file is refused when the settings load, naming its key.

use std::fmt;
use std::path::Path;

use super::{ConfigError, RedisSettings, Secret};

/// The files of `redis.tls_*`, read and parsed: what a TLS connection is
/// set up with.
#[derive(Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// The PEM text of `redis.tls_ca_file`: one or more CA certificates.
    pub ca: Option<Vec<u8>>,
    /// The PEM texts of `redis.tls_cert_file` and `redis.tls_key_file`: a
    /// certificate chain and the private key of its first certificate.
    pub client: Option<(Vec<u8>, Vec<u8>)>,
}

impl fmt::Debug for TlsFiles {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsFiles")
            .field("ca", &self.ca.as_ref().map(Vec::len))
            .field("client", &self.client.as_ref().map(|_| Secret::REDACTED))
            .finish()
    }
}

impl RedisSettings {
    /// The TLS files, read and checked the way the TLS library will use
    /// them, or `None` when none is set: the CA file holds at least one
    /// certificate and nothing that fails to parse as one, the certificate
    /// file likewise, and the key file holds a private key that is the key
    /// of the certificate. Each problem names its key and file; without
    /// these checks an empty CA file is silently ignored (the handshake then
    /// fails with "UnknownIssuer") and a bad client certificate shows as the
    /// server's "peer sent no certificates".
    ///
    /// # Errors
    /// The first file that cannot be read or is not what its key needs.
    pub fn tls_files(&self) -> Result<Option<TlsFiles>, ConfigError> {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};

        let read = |key: &str, path: &Path| {
            std::fs::read(path)
                .map_err(|e| ConfigError::invalid(key, format!("{}: {e}", path.display())))
        };
        let certificates = |key: &str, path: &Path, pem: &[u8]| {
            let bad =
                |what: String| ConfigError::invalid(key, format!("{}: {what}", path.display()));
            let certs = CertificateDer::pem_slice_iter(pem)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| bad(format!("not PEM: {e}")))?;
            if certs.is_empty() {
                return Err(bad(
                    "no certificate in it (a PEM -----BEGIN CERTIFICATE----- block)".to_owned(),
                ));
            }
            for (n, cert) in certs.iter().enumerate() {
                // Parses the certificate as X.509, which PEM armour alone does not.
                rustls::RootCertStore::empty()
                    .add(cert.clone())
                    .map_err(|e| bad(format!("certificate {} is not valid X.509: {e}", n + 1)))?;
            }
            Ok(certs)
        };
        let ca = match &self.tls_ca_file {
            Some(path) => {
                let pem = read("redis.tls_ca_file", path)?;
                certificates("redis.tls_ca_file", path, &pem)?;
                Some(pem)
            }
            None => None,
        };
        let client = match (&self.tls_cert_file, &self.tls_key_file) {
            (Some(cert_path), Some(key_path)) => {
                let cert_pem = read("redis.tls_cert_file", cert_path)?;
                let chain = certificates("redis.tls_cert_file", cert_path, &cert_pem)?;
                let key_pem = read("redis.tls_key_file", key_path)?;
                let bad_key = |what: String| {
                    ConfigError::invalid(
                        "redis.tls_key_file",
                        format!("{}: {what}", key_path.display()),
                    )
                };
                let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| {
                    let why = match e {
                        rustls::pki_types::pem::Error::NoItemsFound => String::new(),
                        other => format!(": {other}"),
                    };
                    bad_key(format!(
                        "no private key in it (an unencrypted PEM PKCS#8, PKCS#1 or SEC1 key){why}"
                    ))
                })?;
                let provider = rustls::crypto::ring::default_provider();
                match rustls::sign::CertifiedKey::from_der(chain, key, &provider) {
                    Ok(_) => {}
                    Err(rustls::Error::InconsistentKeys(_)) => {
                        return Err(bad_key(format!(
                            "is not the key of the certificate in redis.tls_cert_file ({})",
                            cert_path.display()
                        )))
                    }
                    Err(e) => return Err(bad_key(format!("not a usable private key: {e}"))),
                }
                Some((cert_pem, key_pem))
            }
            // Validation reports a certificate without its key and the reverse.
            _ => None,
        };
        if ca.is_none() && client.is_none() {
            return Ok(None);
        }
        Ok(Some(TlsFiles { ca, client }))
    }
}
