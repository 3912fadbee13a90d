//! TLS with rustls (the ring provider, chosen explicitly so no process-wide
//! default is needed): the client listener's certificate, each upstream's
//! client configuration (CA bundle or the system roots, SNI name, optional
//! client certificate), and the reasons a handshake failed, said so an
//! operator can act on them. Files are read here and only here; nothing in
//! this module keeps a secret in an error or a log line.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::{
    AlertDescription, CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore,
    ServerConfig, SignatureScheme, SupportedProtocolVersion,
};
use tokio::net::TcpStream;
use tracing::warn;

use crate::config::{Listen, TlsVersion, UpstreamConfig};
use crate::net::TlsStream;

/// TLS material that could not be loaded. `field` is the config key.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{field}: cannot read {}: {message}", file.display())]
    File {
        field: String,
        file: PathBuf,
        message: String,
    },
    #[error("{field}: {} holds no PEM certificate", file.display())]
    NoCertificate { field: String, file: PathBuf },
    #[error(
        "{field}: the system has no root certificates (install ca-certificates, or set ca_file)"
    )]
    NoSystemRoots { field: String },
    #[error("{field}: {message}")]
    Rejected { field: String, message: String },
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

static FROM_1_2: &[&SupportedProtocolVersion] = &[&rustls::version::TLS13, &rustls::version::TLS12];
static FROM_1_3: &[&SupportedProtocolVersion] = &[&rustls::version::TLS13];

fn versions(min: Option<TlsVersion>) -> &'static [&'static SupportedProtocolVersion] {
    match min.unwrap_or_default() {
        TlsVersion::V1_2 => FROM_1_2,
        TlsVersion::V1_3 => FROM_1_3,
    }
}

fn certificates(field: &str, file: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let read_err = |e: rustls::pki_types::pem::Error| TlsError::File {
        field: field.into(),
        file: file.into(),
        message: e.to_string(),
    };
    let certs = CertificateDer::pem_file_iter(file)
        .map_err(read_err)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(read_err)?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            field: field.into(),
            file: file.into(),
        });
    }
    Ok(certs)
}

fn private_key(field: &str, file: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    // The error names the file, never what was in it.
    PrivateKeyDer::from_pem_file(file).map_err(|e| TlsError::File {
        field: field.into(),
        file: file.into(),
        message: match e {
            rustls::pki_types::pem::Error::Io(io) => io.to_string(),
            _ => "no PEM private key (PKCS#8, PKCS#1 or SEC1) in it".into(),
        },
    })
}

fn roots(field: &str, file: Option<&Path>) -> Result<RootCertStore, TlsError> {
    let mut store = RootCertStore::empty();
    match file {
        Some(file) => {
            for cert in certificates(field, file)? {
                store.add(cert).map_err(|e| TlsError::Rejected {
                    field: field.into(),
                    message: format!("{}: {e}", file.display()),
                })?;
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            store.add_parsable_certificates(found.certs);
            if store.is_empty() {
                return Err(TlsError::NoSystemRoots {
                    field: field.into(),
                });
            }
        }
    }
    Ok(store)
}

fn rejected(field: &str) -> impl Fn(rustls::Error) -> TlsError + '_ {
    move |e| TlsError::Rejected {
        field: field.into(),
        message: e.to_string(),
    }
}

/// The listener's TLS configuration, `None` when it serves plain TCP.
/// Called at start and on every config reload.
pub fn server_config(listen: &Listen) -> Result<Option<Arc<ServerConfig>>, TlsError> {
    let (Some(cert), Some(key)) = (&listen.tls_cert_file, &listen.tls_key_file) else {
        return Ok(None);
    };
    let chain = certificates("listen.tls_cert_file", cert)?;
    let key = private_key("listen.tls_key_file", key)?;
    let builder = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(versions(listen.tls_min_version))
        .map_err(rejected("listen.tls_min_version"))?;
    let builder = match &listen.tls_client_ca_file {
        Some(ca) => {
            let field = "listen.tls_client_ca_file";
            let verifier = WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots(field, Some(ca))?),
                provider(),
            )
            .build()
            .map_err(|e| TlsError::Rejected {
                field: field.into(),
                message: e.to_string(),
            })?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let config = builder
        .with_single_cert(chain, key)
        .map_err(rejected("listen.tls_key_file"))?;
    Ok(Some(Arc::new(config)))
}

/// How one upstream is reached over TLS.
#[derive(Clone)]
pub struct Connector {
    connector: tokio_rustls::TlsConnector,
    name: ServerName<'static>,
}

impl std::fmt::Debug for Connector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connector")
            .field("name", &self.name)
            .finish()
    }
}

impl Connector {
    /// The TLS handshake over a connected socket.
    pub async fn connect(&self, tcp: TcpStream) -> io::Result<TlsStream> {
        self.connect_to(None, tcp).await
    }

    /// The TLS handshake with a node of a clustered cache: SNI and the
    /// certificate check use the node's announced hostname; a node known
    /// only by its IP is checked against the upstream's name.
    pub async fn connect_to(&self, host: Option<&str>, tcp: TcpStream) -> io::Result<TlsStream> {
        let named = host
            .filter(|h| h.parse::<std::net::IpAddr>().is_err())
            .and_then(|h| ServerName::try_from(h.to_string()).ok());
        let name = named.unwrap_or_else(|| self.name.clone());
        let s = self.connector.connect(name, tcp).await?;
        Ok(tokio_rustls::TlsStream::Client(s))
    }
}

/// The TLS client for upstream `side` (`old`/`new`), `None` without
/// `tls = true`.
pub fn connector(side: &str, up: &UpstreamConfig) -> Result<Option<Connector>, TlsError> {
    if !up.tls {
        return Ok(None);
    }
    let field = |name: &str| format!("upstreams.{side}.{name}");
    let host = match &up.server_name {
        Some(n) => n.clone(),
        None => {
            let host = up.address.rsplit_once(':').map_or("", |(h, _)| h);
            host.trim_matches(['[', ']']).to_string()
        }
    };
    let name = ServerName::try_from(host).map_err(|e| TlsError::Rejected {
        field: field("server_name"),
        message: format!("{e} (set server_name to the name in the cache's certificate)"),
    })?;
    let builder = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(versions(up.tls_min_version))
        .map_err(rejected(&field("tls_min_version")))?;
    let builder = if up.insecure_skip_verify {
        warn!(
            upstream = side,
            "upstreams.{side}.insecure_skip_verify is on: the {side} cache's certificate is NOT checked, anyone on the path can read and change its traffic; for tests only"
        );
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerification(
                provider().signature_verification_algorithms,
            )))
    } else {
        builder.with_root_certificates(roots(&field("ca_file"), up.ca_file.as_deref())?)
    };
    let config = match (&up.client_cert_file, &up.client_key_file) {
        (Some(cert), Some(key)) => {
            let chain = certificates(&field("client_cert_file"), cert)?;
            let key = private_key(&field("client_key_file"), key)?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(rejected(&field("client_key_file")))?
        }
        _ => builder.with_no_client_auth(),
    };
    Ok(Some(Connector {
        connector: tokio_rustls::TlsConnector::from(Arc::new(config)),
        name,
    }))
}

/// `insecure_skip_verify`: any certificate is accepted, but the handshake
/// signatures are still checked (the peer holds the key it presented).
#[derive(Debug)]
struct NoVerification(WebPkiSupportedAlgorithms);

impl ServerCertVerifier for NoVerification {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
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
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_schemes()
    }
}

/// Why a TLS connection to an upstream failed, in words that point at the
/// setting to check; `None` when `err` is not a TLS error.
pub fn explain(err: &io::Error) -> Option<String> {
    let e = err.get_ref()?.downcast_ref::<rustls::Error>()?;
    Some(match e {
        rustls::Error::InvalidCertificate(c) => certificate_problem(c),
        rustls::Error::AlertReceived(alert) => match alert {
            AlertDescription::CertificateRequired => {
                "the cache requires a client certificate (set client_cert_file and client_key_file)"
                    .into()
            }
            AlertDescription::BadCertificate
            | AlertDescription::UnknownCA
            | AlertDescription::CertificateExpired
            | AlertDescription::CertificateUnknown
            | AlertDescription::DecryptError => {
                format!("the cache refused our client certificate ({alert:?})")
            }
            AlertDescription::HandshakeFailure | AlertDescription::ProtocolVersion => {
                format!("the cache ended the handshake ({alert:?}): no TLS version or cipher both accept, or it wants a client certificate")
            }
            other => format!("the cache sent TLS alert {other:?}"),
        },
        rustls::Error::InvalidMessage(_) => {
            "the cache does not speak TLS on this port (check tls and the port)".into()
        }
        rustls::Error::PeerIncompatible(p) => {
            format!("no TLS version or cipher both sides accept ({p:?})")
        }
        other => other.to_string(),
    })
}

fn certificate_problem(c: &CertificateError) -> String {
    let when = |t: &UnixTime| {
        humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(t.as_secs()))
    };
    match c {
        CertificateError::UnknownIssuer => {
            "the cache's certificate is not issued by a trusted CA (set ca_file to the CA that issued it)".into()
        }
        CertificateError::ExpiredContext { not_after, .. } => {
            format!("the cache's certificate expired at {}", when(not_after))
        }
        CertificateError::Expired => "the cache's certificate has expired".into(),
        CertificateError::NotValidYetContext { not_before, .. } => format!(
            "the cache's certificate is not valid before {} (check the clocks)",
            when(not_before)
        ),
        CertificateError::NotValidYet => {
            "the cache's certificate is not valid yet (check the clocks)".into()
        }
        CertificateError::NotValidForNameContext {
            expected,
            presented,
        } => format!(
            "the cache's certificate is not valid for the name {} (it names {}; set server_name)",
            expected.to_str(),
            presented.join(", ")
        ),
        CertificateError::NotValidForName => {
            "the cache's certificate is not valid for the name connected to (set server_name)"
                .into()
        }
        other => format!("the cache's certificate is invalid: {other:?}"),
    }
}
