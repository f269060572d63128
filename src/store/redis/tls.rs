//! TLS material for `rediss://` connections: the root CA to trust (a
//! private CA, e.g. managed Redis) and an optional client certificate for
//! mutual TLS, as PEM bytes.
//!
//! This module checks the PEM up front, so a bad file is refused with its
//! name instead of failing later inside a handshake, and builds the
//! single-node and cluster clients with it. The handshake itself is
//! redis-rs's, on rustls with the ring provider.

use std::fmt;
use std::path::Path;

use redis::cluster::ClusterClientBuilder;
use redis::{ClientTlsConfig, IntoConnectionInfo, RedisResult, TlsCertificates};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::store::StoreError;

/// TLS material for [`RedisStore::connect_tls`](super::RedisStore::connect_tls).
///
/// Without a root CA the system's roots are trusted; without a client
/// certificate none is presented. The PEM is checked when connecting (or at
/// once by [`RedisTls::from_files`]); errors name where each part came
/// from. `Debug` shows sources and sizes, never the key.
///
/// ```
/// use tickforge::store::RedisTls;
///
/// let ca = b"-----BEGIN CERTIFICATE-----\n...".to_vec();
/// let tls = RedisTls::new().with_root_ca_pem(ca);
/// assert!(tls.has_root_ca() && !tls.has_client_cert());
/// ```
#[derive(Clone, Default, PartialEq, Eq)]
pub struct RedisTls {
    root_ca: Option<Pem>,
    client: Option<(Pem, Pem)>,
}

/// PEM bytes and where they came from (a path, or the builder method).
#[derive(Clone, PartialEq, Eq)]
struct Pem {
    bytes: Vec<u8>,
    source: String,
}

impl fmt::Debug for Pem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({} bytes)", self.source, self.bytes.len())
    }
}

impl fmt::Debug for RedisTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisTls")
            .field("root_ca", &self.root_ca)
            .field("client_cert", &self.client.as_ref().map(|(cert, _)| cert))
            .field("client_key", &self.client.as_ref().map(|_| "(redacted)"))
            .finish()
    }
}

impl RedisTls {
    /// No material: the system's roots, no client certificate.
    pub fn new() -> RedisTls {
        RedisTls::default()
    }

    /// Trusts the PEM certificate(s) in `pem` instead of the system's
    /// roots.
    pub fn with_root_ca_pem(mut self, pem: impl Into<Vec<u8>>) -> RedisTls {
        self.root_ca = Some(Pem {
            bytes: pem.into(),
            source: "the root CA PEM".to_owned(),
        });
        self
    }

    /// Presents `cert_pem` (a certificate, or a chain leaf first) with its
    /// private key `key_pem` (PKCS#8, PKCS#1 or SEC1) for mutual TLS.
    pub fn with_client_cert_pem(
        mut self,
        cert_pem: impl Into<Vec<u8>>,
        key_pem: impl Into<Vec<u8>>,
    ) -> RedisTls {
        self.client = Some((
            Pem {
                bytes: cert_pem.into(),
                source: "the client certificate PEM".to_owned(),
            },
            Pem {
                bytes: key_pem.into(),
                source: "the client key PEM".to_owned(),
            },
        ));
        self
    }

    /// Reads and checks PEM files: `ca_file` to trust, and `client` as
    /// (certificate file, key file). Errors are
    /// [`StoreError::Unavailable`] naming the file.
    pub fn from_files(
        ca_file: Option<&Path>,
        client: Option<(&Path, &Path)>,
    ) -> Result<RedisTls, StoreError> {
        let tls = RedisTls {
            root_ca: ca_file.map(|path| read("CA", path)).transpose()?,
            client: match client {
                Some((cert, key)) => {
                    Some((read("client certificate", cert)?, read("client key", key)?))
                }
                None => None,
            },
        };
        tls.certificates()?;
        Ok(tls)
    }

    /// Whether a root CA is given (else the system's roots are trusted).
    pub fn has_root_ca(&self) -> bool {
        self.root_ca.is_some()
    }

    /// Whether a client certificate is given.
    pub fn has_client_cert(&self) -> bool {
        self.client.is_some()
    }

    /// Checks the PEM and converts it for redis-rs.
    pub(super) fn certificates(&self) -> Result<TlsCertificates, StoreError> {
        if let Some(ca) = &self.root_ca {
            let certs = certificates(ca)?;
            let mut roots = rustls::RootCertStore::empty();
            for cert in certs {
                roots.add(cert).map_err(|e| {
                    invalid(
                        ca,
                        &format!("a certificate is not a usable trust anchor: {e}"),
                    )
                })?;
            }
        }
        if let Some((cert, key)) = &self.client {
            certificates(cert)?;
            PrivateKeyDer::from_pem_slice(&key.bytes)
                .map_err(|e| invalid(key, &format!("no PEM private key found ({e})")))?;
        }
        Ok(TlsCertificates {
            client_tls: self.client.as_ref().map(|(cert, key)| ClientTlsConfig {
                client_cert: cert.bytes.clone(),
                client_key: key.bytes.clone(),
            }),
            root_cert: self.root_ca.as_ref().map(|ca| ca.bytes.clone()),
        })
    }
}

fn read(what: &str, path: &Path) -> Result<Pem, StoreError> {
    let bytes = std::fs::read(path).map_err(|e| {
        StoreError::Unavailable(format!(
            "cannot read Redis TLS {what} file {}: {e}",
            path.display()
        ))
    })?;
    Ok(Pem {
        bytes,
        source: format!("Redis TLS {what} file {}", path.display()),
    })
}

fn invalid(pem: &Pem, reason: &str) -> StoreError {
    StoreError::Unavailable(format!("{}: {reason}", pem.source))
}

/// The certificates in `pem`: at least one.
fn certificates(pem: &Pem) -> Result<Vec<CertificateDer<'static>>, StoreError> {
    let certs = CertificateDer::pem_slice_iter(&pem.bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| invalid(pem, &format!("not valid PEM ({e})")))?;
    if certs.is_empty() {
        return Err(invalid(
            pem,
            "no PEM certificate (-----BEGIN CERTIFICATE-----) found",
        ));
    }
    Ok(certs)
}

/// A single-node client for `url`, with `certs` if given (which then
/// require a `rediss://` URL).
pub(super) fn single_client(
    url: &str,
    certs: Option<&TlsCertificates>,
) -> RedisResult<redis::Client> {
    single_client_speaking(url, certs, redis::ProtocolVersion::RESP2)
}

/// Like [`single_client`], speaking `protocol` (RESP3 for push messages).
pub(super) fn single_client_speaking(
    url: &str,
    certs: Option<&TlsCertificates>,
    protocol: redis::ProtocolVersion,
) -> RedisResult<redis::Client> {
    let info = url.into_connection_info()?;
    let settings = info.redis_settings().clone().set_protocol(protocol);
    let info = info.set_redis_settings(settings);
    match certs {
        None => redis::Client::open(info),
        Some(certs) => redis::Client::build_with_tls(info, certs.clone()),
    }
}

/// A cluster client builder for the seeds `urls`, with `certs` if given.
pub(super) fn cluster_builder(
    urls: &[String],
    certs: Option<&TlsCertificates>,
) -> ClusterClientBuilder {
    let builder = ClusterClientBuilder::new(urls.iter().map(String::as_str));
    match certs {
        None => builder,
        Some(certs) => builder.certs(certs.clone()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(result: Result<TlsCertificates, StoreError>) -> String {
        match result {
            Err(StoreError::Unavailable(message)) => message,
            Err(other) => panic!("expected Unavailable, got {other:?}"),
            Ok(_) => panic!("expected an error"),
        }
    }

    fn generated() -> (String, String) {
        let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()])
            .expect("generated certificate");
        (certified.cert.pem(), certified.signing_key.serialize_pem())
    }

    #[test]
    fn good_pem_converts() {
        let (cert, key) = generated();
        let certs = RedisTls::new()
            .with_root_ca_pem(cert.clone())
            .with_client_cert_pem(cert.clone(), key.clone())
            .certificates()
            .unwrap();
        assert_eq!(certs.root_cert.as_deref(), Some(cert.as_bytes()));
        let client = certs.client_tls.expect("client material");
        assert_eq!(client.client_cert, cert.as_bytes());
        assert_eq!(client.client_key, key.as_bytes());
    }

    #[test]
    fn bad_pem_is_refused_naming_its_part() {
        let (cert, key) = generated();
        let text = message(RedisTls::new().with_root_ca_pem("junk").certificates());
        assert!(
            text.contains("root CA") && text.contains("no PEM certificate"),
            "{text}"
        );
        // A key is not a certificate.
        let text = message(RedisTls::new().with_root_ca_pem(key.clone()).certificates());
        assert!(text.contains("no PEM certificate"), "{text}");
        let text = message(
            RedisTls::new()
                .with_client_cert_pem(cert.clone(), cert.clone())
                .certificates(),
        );
        assert!(
            text.contains("client key") && text.contains("private key"),
            "{text}"
        );
        let text = message(
            RedisTls::new()
                .with_client_cert_pem(key.clone(), key)
                .certificates(),
        );
        assert!(text.contains("client certificate"), "{text}");
    }

    #[test]
    fn debug_never_shows_the_key() {
        let (cert, key) = generated();
        let tls = RedisTls::new().with_client_cert_pem(cert, key.clone());
        let shown = format!("{tls:?}");
        assert!(shown.contains("(redacted)"), "{shown}");
        assert!(!shown.contains("PRIVATE KEY"), "{shown}");
    }

    #[test]
    fn files_are_named_in_errors() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("absent-ca.pem");
        let err = RedisTls::from_files(Some(&missing), None).unwrap_err();
        assert!(err.to_string().contains("absent-ca.pem"), "{err}");
        let junk = dir.path().join("junk-ca.pem");
        std::fs::write(&junk, "not a certificate").unwrap();
        let err = RedisTls::from_files(Some(&junk), None).unwrap_err();
        assert!(err.to_string().contains("junk-ca.pem"), "{err}");
    }
}
