//! TLS for the QUIC endpoints: the server's certificate and both sides'
//! rustls configurations (TLS 1.3, the ring provider, ALPN [`ALPN`]).
//!
//! A server certificate comes from files, or for development is a
//! self-signed certificate for `localhost`/`127.0.0.1` kept at a known
//! path for clients to trust. Clients always verify the server against the
//! certificates they are given; there is no switch to skip verification.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

use super::TlsSource;
use super::protocol::ALPN;

/// Why TLS could not be set up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// A certificate or key file could not be read or written.
    #[error("{action} {}: {source}", path.display())]
    Io {
        /// "reading" or "writing".
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A file holds no usable certificate or key.
    #[error("{}: {reason}", path.display())]
    BadFile {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// Generating the development certificate failed.
    #[error("cannot generate the development certificate: {0}")]
    Generate(String),
    /// rustls refused the certificate, key or settings.
    #[error("TLS configuration refused: {0}")]
    Rustls(#[from] rustls::Error),
    /// The provider has no cipher suite QUIC can use.
    #[error("no TLS 1.3 cipher suite usable by QUIC: {0}")]
    NoQuicSuite(String),
}

/// A certificate chain and its private key.
#[derive(Debug)]
pub struct ServerCert {
    /// The chain, leaf first.
    pub chain: Vec<CertificateDer<'static>>,
    /// The leaf's private key.
    pub key: PrivateKeyDer<'static>,
}

impl Clone for ServerCert {
    fn clone(&self) -> Self {
        Self {
            chain: self.chain.clone(),
            key: self.key.clone_key(),
        }
    }
}

impl ServerCert {
    /// The leaf certificate, what a client of a self-signed server trusts.
    pub fn leaf(&self) -> Option<&CertificateDer<'static>> {
        self.chain.first()
    }
}

/// A fresh self-signed certificate for `localhost` and `127.0.0.1`.
pub fn generate_dev_cert() -> Result<ServerCert, TlsError> {
    let certified = rcgen::generate_simple_self_signed(vec![
        "localhost".to_owned(),
        "127.0.0.1".to_owned(),
        "::1".to_owned(),
    ])
    .map_err(|e| TlsError::Generate(e.to_string()))?;
    let key = PrivatePkcs8KeyDer::from(certified.signing_key.serialize_der());
    Ok(ServerCert {
        chain: vec![certified.cert.der().clone()],
        key: PrivateKeyDer::Pkcs8(key),
    })
}

/// The server certificate `source` names: read from files, or for
/// [`TlsSource::Dev`] read back or generated and written (certificate as
/// DER where clients read it, key beside it).
pub fn load_server_cert(source: &TlsSource) -> Result<ServerCert, TlsError> {
    match source {
        TlsSource::Files { cert, key } => Ok(ServerCert {
            chain: read_certificates(cert)?,
            key: read_key(key)?,
        }),
        TlsSource::Dev { cert, key } => {
            if cert.exists() && key.exists() {
                let loaded = ServerCert {
                    chain: read_certificates(cert)?,
                    key: read_key(key)?,
                };
                tracing::info!(cert = %cert.display(), "reusing the development certificate");
                return Ok(loaded);
            }
            let fresh = generate_dev_cert()?;
            write_file(key, fresh.key.secret_der())?;
            write_file(cert, fresh.chain[0].as_ref())?;
            tracing::warn!(
                cert = %cert.display(),
                "generated a self-signed development certificate; clients must trust this file"
            );
            Ok(fresh)
        }
    }
}

fn write_file(path: &Path, bytes: &[u8]) -> Result<(), TlsError> {
    let io = |source| TlsError::Io {
        action: "writing",
        path: path.to_owned(),
        source,
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    std::fs::write(path, bytes).map_err(io)
}

fn read_file(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Io {
        action: "reading",
        path: path.to_owned(),
        source,
    })
}

fn is_pem(bytes: &[u8]) -> bool {
    bytes
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .is_some_and(|i| bytes[i..].starts_with(b"-----BEGIN"))
}

/// Reads certificates from a PEM file (all of them) or a DER file (one).
pub fn read_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bytes = read_file(path)?;
    let bad = |reason: String| TlsError::BadFile {
        path: path.to_owned(),
        reason,
    };
    let chain = if is_pem(&bytes) {
        CertificateDer::pem_slice_iter(&bytes)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| bad(format!("bad PEM: {e}")))?
    } else {
        vec![CertificateDer::from(bytes)]
    };
    if chain.is_empty() || chain.iter().any(|c| c.is_empty()) {
        return Err(bad("no certificate in the file".into()));
    }
    Ok(chain)
}

/// Reads a private key from a PEM file or a PKCS#8 DER file.
pub fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let bytes = read_file(path)?;
    if is_pem(&bytes) {
        PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| TlsError::BadFile {
            path: path.to_owned(),
            reason: format!("no private key: {e}"),
        })
    } else if bytes.is_empty() {
        Err(TlsError::BadFile {
            path: path.to_owned(),
            reason: "empty key file".into(),
        })
    } else {
        Ok(PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(bytes)))
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Transport settings both sides share: datagrams on, idle timeout, keep-alive.
pub(crate) fn transport(idle: Duration) -> quinn::TransportConfig {
    let mut transport = quinn::TransportConfig::default();
    transport
        .max_idle_timeout(quinn::IdleTimeout::try_from(idle).ok())
        .keep_alive_interval(Some(idle / 3))
        .datagram_receive_buffer_size(Some(1024 * 1024))
        .datagram_send_buffer_size(256 * 1024)
        // The client opens one control stream; the server opens a few uni
        // streams for oversized states.
        .max_concurrent_bidi_streams(4u32.into())
        .max_concurrent_uni_streams(64u32.into());
    transport
}

/// The quinn server configuration for `cert`.
pub fn server_config(cert: &ServerCert, idle: Duration) -> Result<quinn::ServerConfig, TlsError> {
    let mut tls = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_no_client_auth()
        .with_single_cert(cert.chain.clone(), cert.key.clone_key())?;
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls)
        .map_err(|e| TlsError::NoQuicSuite(e.to_string()))?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    let mut transport = transport(idle);
    // Clients never open uni streams.
    transport.max_concurrent_uni_streams(0u32.into());
    config.transport_config(Arc::new(transport));
    Ok(config)
}

/// The quinn client configuration trusting exactly `trusted` (verified as
/// roots: a self-signed server certificate is its own root).
pub fn client_config(
    trusted: &[CertificateDer<'static>],
    idle: Duration,
) -> Result<quinn::ClientConfig, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in trusted {
        roots.add(cert.clone())?;
    }
    let mut tls = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls)
        .map_err(|e| TlsError::NoQuicSuite(e.to_string()))?;
    let mut config = quinn::ClientConfig::new(Arc::new(crypto));
    config.transport_config(Arc::new(transport(idle)));
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dev_certificates_are_written_then_reused() {
        let dir = tempfile::tempdir().unwrap();
        let source = TlsSource::Dev {
            cert: dir.path().join("sub/cert.der"),
            key: dir.path().join("sub/key.der"),
        };
        let first = load_server_cert(&source).unwrap();
        let second = load_server_cert(&source).unwrap();
        assert_eq!(first.chain, second.chain);
        let trusted = read_certificates(&dir.path().join("sub/cert.der")).unwrap();
        assert_eq!(trusted, first.chain);
        server_config(&first, Duration::from_secs(5)).unwrap();
        client_config(&trusted, Duration::from_secs(5)).unwrap();
    }

    #[test]
    fn missing_and_empty_files_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope.pem");
        let err = read_certificates(&missing).unwrap_err();
        assert!(err.to_string().contains("nope.pem"), "{err}");
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "-----BEGIN NOTHING-----\n").unwrap();
        assert!(read_certificates(&empty).is_err());
    }
}
