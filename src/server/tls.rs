//! TLS for the server's listeners: the certificate chain and key, read from PEM files, as a
//! rustls configuration (TLS 1.2 and 1.3, ring's cryptography) for the Postgres wire protocol
//! and for HTTP.

use std::path::Path;
use std::sync::Arc;

use pgwire::tokio::tokio_rustls::rustls;
use pgwire::tokio::TlsAcceptor;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// What can go wrong reading the certificate and key.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A PEM file could not be read or holds nothing of the kind.
    #[error("reading {what} from {path}: {reason}")]
    Pem {
        /// The certificate chain or the private key.
        what: &'static str,
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
    /// rustls refused the pair (a key that is not the certificate's, an unsupported key).
    #[error("the TLS certificate and key do not make a server configuration: {0}")]
    Config(#[from] rustls::Error),
}

/// The server's TLS identity: its certificate chain and key, checked to make a configuration.
#[derive(Clone)]
pub struct TlsIdentity {
    config: rustls::ServerConfig,
    chain_pem: Vec<u8>,
}

impl TlsIdentity {
    /// An acceptor for the Postgres wire protocol.
    pub fn pgwire(&self) -> TlsAcceptor {
        TlsAcceptor::from(Arc::new(self.config.clone()))
    }

    /// The certificate chain as read (PEM): SCRAM's channel binding signs the first.
    pub fn chain_pem(&self) -> &[u8] {
        &self.chain_pem
    }

    /// An acceptor for HTTP/1.1 (named in ALPN, as browsers and curl ask).
    pub fn http(&self) -> TlsAcceptor {
        let mut config = self.config.clone();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        TlsAcceptor::from(Arc::new(config))
    }
}

/// The identity of the chain in `cert` (PEM, the server's certificate first) with the
/// private key in `key` (PEM: PKCS#8, PKCS#1 or SEC1).
pub fn identity(cert: &Path, key: &Path) -> Result<TlsIdentity, TlsError> {
    let pem = |what, path: &Path, reason: String| TlsError::Pem {
        what,
        path: path.display().to_string(),
        reason,
    };
    let chain = CertificateDer::pem_file_iter(cert)
        .map_err(|e| pem("the certificate chain", cert, e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem("the certificate chain", cert, e.to_string()))?;
    if chain.is_empty() {
        return Err(pem(
            "the certificate chain",
            cert,
            "no CERTIFICATE block".into(),
        ));
    }
    // The key's own error names only the file, never its content.
    let private_key = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| pem("the private key", key, e.to_string()))?;
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_no_client_auth()
    .with_single_cert(chain, private_key)?;
    let chain_pem =
        std::fs::read(cert).map_err(|e| pem("the certificate chain", cert, e.to_string()))?;
    Ok(TlsIdentity { config, chain_pem })
}
