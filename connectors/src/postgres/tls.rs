//! TLS to PostgreSQL: libpq's `sslmode` and `sslrootcert` URL parameters, as a rustls connector
//! for tokio-postgres sessions and as the TLS settings of the replication stream.

use std::future::Future;
use std::io;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_postgres::tls::{ChannelBinding, MakeTlsConnect, TlsConnect, TlsStream};
use tokio_postgres::Socket;

/// How much TLS a connection asks for, as libpq's `sslmode` says it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SslMode {
    /// Plain text only.
    Disable,
    /// TLS when the server offers it, unverified; plain text otherwise (libpq's default).
    Prefer,
    /// TLS or no connection; the certificate is not verified.
    Require,
    /// TLS with a certificate signed by a trusted authority, whatever name it carries.
    VerifyCa,
    /// TLS with a trusted certificate for the host connected to.
    VerifyFull,
}

impl SslMode {
    fn parse(value: &str) -> Option<SslMode> {
        Some(match value {
            "disable" => SslMode::Disable,
            "prefer" | "allow" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            _ => return None,
        })
    }
}

/// Where trusted authorities come from when a mode verifies certificates.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RootCertificates {
    /// The operating system's store (`sslrootcert=system`, or none given).
    System,
    /// A PEM file of authorities.
    File(PathBuf),
}

/// The TLS settings of one PostgreSQL URL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PgTls {
    /// The `sslmode`.
    pub mode: SslMode,
    /// The `sslrootcert`.
    pub roots: RootCertificates,
}

impl PgTls {
    /// Takes `sslmode` and `sslrootcert` out of a URL (`postgres://...?sslmode=verify-full`) or
    /// a `key=value` connection string, which tokio-postgres does not read in full; returns the
    /// rest of the URL and the settings, or why a value is not understood.
    pub fn split(url: &str) -> Result<(String, PgTls), String> {
        let mut mode = None;
        let mut root = None;
        let mut take = |key: &str, value: String| -> Result<bool, String> {
            match key {
                "sslmode" => {
                    mode = Some(SslMode::parse(&value).ok_or_else(|| {
                        format!(
                            "sslmode '{value}' is not one of disable, allow, prefer, require, \
                             verify-ca, verify-full"
                        )
                    })?);
                    Ok(true)
                }
                "sslrootcert" => {
                    root = Some(value);
                    Ok(true)
                }
                _ => Ok(false),
            }
        };
        let rest = if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            match url.split_once('?') {
                None => url.to_string(),
                Some((base, query)) => {
                    let mut kept = Vec::new();
                    for pair in query.split('&').filter(|p| !p.is_empty()) {
                        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
                        if !take(key, percent_decode(value))? {
                            kept.push(pair);
                        }
                    }
                    if kept.is_empty() {
                        base.to_string()
                    } else {
                        format!("{base}?{}", kept.join("&"))
                    }
                }
            }
        } else {
            let mut kept = Vec::new();
            for word in url.split_whitespace() {
                let (key, value) = word.split_once('=').unwrap_or((word, ""));
                let value = value.trim_matches('\'').to_string();
                if !take(key.trim(), value)? {
                    kept.push(word);
                }
            }
            kept.join(" ")
        };
        let roots = match root.as_deref() {
            None | Some("") | Some("system") => RootCertificates::System,
            Some(path) => RootCertificates::File(PathBuf::from(path)),
        };
        // libpq: "require" with a root certificate given verifies the chain, as verify-ca.
        let mode = match (mode.unwrap_or(SslMode::Prefer), &roots) {
            (SslMode::Require, RootCertificates::File(_)) => SslMode::VerifyCa,
            (mode, _) => mode,
        };
        Ok((rest, PgTls { mode, roots }))
    }

    /// The mode as tokio-postgres knows it (verification is the connector's business).
    pub fn session_mode(&self) -> tokio_postgres::config::SslMode {
        match self.mode {
            SslMode::Disable => tokio_postgres::config::SslMode::Disable,
            SslMode::Prefer => tokio_postgres::config::SslMode::Prefer,
            _ => tokio_postgres::config::SslMode::Require,
        }
    }

    /// The settings of the replication stream.
    pub fn replication(&self) -> pgwire_replication::TlsConfig {
        use pgwire_replication::{SslMode as Mode, TlsConfig};
        let ca = match &self.roots {
            RootCertificates::File(path) => Some(path.clone()),
            RootCertificates::System => None,
        };
        match self.mode {
            SslMode::Disable => TlsConfig::disabled(),
            SslMode::Prefer => TlsConfig {
                mode: Mode::Prefer,
                ..TlsConfig::default()
            },
            SslMode::Require => TlsConfig::require(),
            SslMode::VerifyCa => TlsConfig::verify_ca(ca),
            SslMode::VerifyFull => TlsConfig::verify_full(ca),
        }
    }

    /// A connector for tokio-postgres: the roots read now, so a renewed file takes effect at
    /// the next connection.
    pub fn connector(&self) -> Result<RustlsConnector, String> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?;
        let config = match self.mode {
            SslMode::Disable | SslMode::Prefer | SslMode::Require => builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
                .with_no_client_auth(),
            SslMode::VerifyCa => {
                let chain = WebPkiServerVerifier::builder_with_provider(
                    Arc::new(self.root_store()?),
                    provider,
                )
                .build()
                .map_err(|e| e.to_string())?;
                builder
                    .dangerous()
                    .with_custom_certificate_verifier(Arc::new(ChainOnly(chain)))
                    .with_no_client_auth()
            }
            SslMode::VerifyFull => builder
                .with_root_certificates(self.root_store()?)
                .with_no_client_auth(),
        };
        Ok(RustlsConnector {
            config: Arc::new(config),
        })
    }

    fn root_store(&self) -> Result<RootCertStore, String> {
        let mut store = RootCertStore::empty();
        match &self.roots {
            RootCertificates::File(path) => {
                let read = |e: &dyn std::fmt::Display| {
                    format!("reading sslrootcert {}: {e}", path.display())
                };
                for cert in CertificateDer::pem_file_iter(path).map_err(|e| read(&e))? {
                    store
                        .add(cert.map_err(|e| read(&e))?)
                        .map_err(|e| read(&e))?;
                }
                if store.is_empty() {
                    return Err(read(&"no CERTIFICATE block"));
                }
            }
            RootCertificates::System => {
                let found = rustls_native_certs::load_native_certs();
                let (added, _) = store.add_parsable_certificates(found.certs);
                if added == 0 {
                    return Err(
                        "sslmode verifies the server's certificate, but no sslrootcert was \
                         given and the system has no trusted authorities"
                            .into(),
                    );
                }
            }
        }
        Ok(store)
    }
}

/// `%2F` and friends in a URL parameter's value; a malformed escape is kept as written.
fn percent_decode(value: &str) -> String {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match (bytes[i], bytes.get(i + 1), bytes.get(i + 2)) {
            (b'%', Some(&h), Some(&l)) if hex(h).is_some() && hex(l).is_some() => {
                out.push((hex(h).unwrap_or(0) * 16 + hex(l).unwrap_or(0)) as u8);
                i += 3;
            }
            (b, _, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Why TLS with PostgreSQL failed; `permanent` when trying again cannot help (an untrusted
/// certificate, a protocol mismatch), as opposed to a connection that broke mid-handshake.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct TlsFailure {
    message: String,
    /// Whether the same attempt fails the same way again.
    pub permanent: bool,
}

/// Makes TLS sessions for tokio-postgres from one rustls configuration.
#[derive(Clone)]
pub struct RustlsConnector {
    config: Arc<ClientConfig>,
}

impl MakeTlsConnect<Socket> for RustlsConnector {
    type Stream = RustlsStream;
    type TlsConnect = RustlsConnect;
    type Error = TlsFailure;

    fn make_tls_connect(&mut self, host: &str) -> Result<RustlsConnect, TlsFailure> {
        let name = ServerName::try_from(host.to_string()).map_err(|_| TlsFailure {
            message: format!("'{host}' is not a host name TLS can verify"),
            permanent: true,
        })?;
        Ok(RustlsConnect {
            config: self.config.clone(),
            name,
        })
    }
}

/// One TLS handshake to come.
pub struct RustlsConnect {
    config: Arc<ClientConfig>,
    name: ServerName<'static>,
}

impl TlsConnect<Socket> for RustlsConnect {
    type Stream = RustlsStream;
    type Error = TlsFailure;
    type Future = Pin<Box<dyn Future<Output = Result<RustlsStream, TlsFailure>> + Send>>;

    fn connect(self, stream: Socket) -> Self::Future {
        Box::pin(async move {
            tokio_rustls::TlsConnector::from(self.config)
                .connect(self.name, stream)
                .await
                .map(RustlsStream)
                .map_err(|e| TlsFailure {
                    // rustls reports what it refused as InvalidData; the rest is the network.
                    permanent: e.kind() == io::ErrorKind::InvalidData,
                    message: e.to_string(),
                })
        })
    }
}

/// A TLS session with PostgreSQL.
pub struct RustlsStream(tokio_rustls::client::TlsStream<Socket>);

impl TlsStream for RustlsStream {
    fn channel_binding(&self) -> ChannelBinding {
        ChannelBinding::none()
    }
}

impl AsyncRead for RustlsStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for RustlsStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

/// `require` and `prefer`: encryption without checking who is at the other end (libpq's
/// meaning), though the handshake's signatures are still checked.
#[derive(Debug)]
struct AnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// `verify-ca`: a trusted chain, whatever host name the certificate names.
#[derive(Debug)]
struct ChainOnly(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_parameters_leave_the_url_and_the_rest_stays() {
        let (rest, tls) =
            PgTls::split("postgres://u:p@db:5432/shop?sslmode=verify-full&sslrootcert=%2Fetc%2Fca.pem&connect_timeout=5")
                .unwrap();
        assert_eq!(rest, "postgres://u:p@db:5432/shop?connect_timeout=5");
        assert_eq!(tls.mode, SslMode::VerifyFull);
        assert_eq!(tls.roots, RootCertificates::File("/etc/ca.pem".into()));

        let (rest, tls) = PgTls::split("postgres://u@db/shop").unwrap();
        assert_eq!(rest, "postgres://u@db/shop");
        assert_eq!(tls.mode, SslMode::Prefer);
        assert_eq!(tls.roots, RootCertificates::System);

        // libpq: require with a root certificate verifies the chain.
        let (rest, tls) =
            PgTls::split("host=db user=u sslmode=require sslrootcert='/ca.pem' dbname=shop")
                .unwrap();
        assert_eq!(rest, "host=db user=u dbname=shop");
        assert_eq!(tls.mode, SslMode::VerifyCa);

        let (_, tls) = PgTls::split("postgresql://db/x?sslmode=disable").unwrap();
        assert_eq!(tls.mode, SslMode::Disable);
        let err = PgTls::split("postgres://db/x?sslmode=verify-all").unwrap_err();
        assert!(
            err.contains("verify-all") && err.contains("verify-full"),
            "{err}"
        );
    }

    #[test]
    fn a_root_file_without_certificates_is_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("empty.pem");
        std::fs::write(&path, "not a certificate\n").unwrap();
        let tls = PgTls {
            mode: SslMode::VerifyFull,
            roots: RootCertificates::File(path.clone()),
        };
        let err = tls.connector().err().unwrap();
        assert!(
            err.contains(&path.display().to_string()) && err.contains("no CERTIFICATE"),
            "{err}"
        );
    }
}
