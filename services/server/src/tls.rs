//! TLS on the node's listeners (`server.tls`): the gRPC services and `GET /metrics`.
//!
//! Connections are accepted on the TCP listener and their handshakes completed off the accept
//! loop (a slow or silent client holds only its own task, for at most [`HANDSHAKE_TIMEOUT`]).
//! The PEM files are checked before each handshake (their size and modification time): a
//! changed file is read again and the new certificate serves the next connections, without a
//! restart. A file that does not load (a renewal half written) keeps the previous
//! certificate and is logged; it is read again at the next connection.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc, watch};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::server::WebPkiClientVerifier;
use tokio_rustls::rustls::{RootCertStore, ServerConfig, crypto};
use tokio_rustls::server::TlsStream;

use crate::ServerError;

/// How long a client may take over its handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Handshakes in progress at once on one listener; further connections wait in the kernel's
/// backlog.
const MAX_HANDSHAKES: usize = 256;

/// The PEM files of `server.tls`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// Certificate chain, leaf first.
    pub cert: PathBuf,
    /// The leaf's private key.
    pub key: PathBuf,
    /// Set: mutual TLS, clients must present a certificate signed by one of these CAs.
    pub client_ca: Option<PathBuf>,
}

impl TlsFiles {
    fn paths(&self) -> impl Iterator<Item = &Path> {
        [Some(self.cert.as_path()), Some(self.key.as_path())]
            .into_iter()
            .chain(std::iter::once(self.client_ca.as_deref()))
            .flatten()
    }
}

/// What identifies one version of the files: size and modification time of each.
type Stamp = Vec<Option<(SystemTime, u64)>>;

fn stamp(files: &TlsFiles) -> Stamp {
    files
        .paths()
        .map(|path| {
            std::fs::metadata(path)
                .ok()
                .and_then(|meta| Some((meta.modified().ok()?, meta.len())))
        })
        .collect()
}

/// A server configuration that follows its files.
pub struct ReloadingConfig {
    files: TlsFiles,
    alpn: Vec<Vec<u8>>,
    current: Mutex<(Stamp, Arc<ServerConfig>)>,
}

impl std::fmt::Debug for ReloadingConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReloadingConfig")
            .field("files", &self.files)
            .finish_non_exhaustive()
    }
}

impl ReloadingConfig {
    /// Load the files now (a node does not start on files that do not load); `alpn` are the
    /// protocols offered (`h2` for gRPC, `http/1.1` for the metrics).
    pub fn open(files: TlsFiles, alpn: &[&[u8]]) -> Result<Self, ServerError> {
        let alpn: Vec<Vec<u8>> = alpn.iter().map(|protocol| protocol.to_vec()).collect();
        let stamp = stamp(&files);
        let config = load(&files, &alpn).map_err(|reason| ServerError::Config {
            key: "server.tls".into(),
            reason,
        })?;
        Ok(Self {
            files,
            alpn,
            current: Mutex::new((stamp, Arc::new(config))),
        })
    }

    /// The configuration for the next handshake: the files read again if they changed.
    pub fn current(&self) -> Arc<ServerConfig> {
        let now = stamp(&self.files);
        let mut current = self
            .current
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if current.0 != now {
            match load(&self.files, &self.alpn) {
                Ok(config) => {
                    tracing::info!(cert = %self.files.cert.display(), "TLS certificate reloaded");
                    *current = (now, Arc::new(config));
                }
                // The stamp stays old: the next connection tries again.
                Err(reason) => tracing::warn!(
                    %reason,
                    "TLS files changed but do not load; serving the previous certificate"
                ),
            }
        }
        current.1.clone()
    }
}

fn read(path: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|error| format!("{}: {error}", path.display()))
}

fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let bytes = read(path)?;
    let certificates = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| format!("{}: {error}", path.display()))?;
    if certificates.is_empty() {
        return Err(format!("{}: no PEM certificate in it", path.display()));
    }
    Ok(certificates)
}

fn load(files: &TlsFiles, alpn: &[Vec<u8>]) -> Result<ServerConfig, String> {
    let chain = certificates(&files.cert)?;
    let key = PrivateKeyDer::from_pem_slice(&read(&files.key)?)
        .map_err(|error| format!("{}: no usable private key ({error})", files.key.display()))?;
    let provider = Arc::new(crypto::ring::default_provider());
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|error| error.to_string())?;
    let builder = match &files.client_ca {
        None => builder.with_no_client_auth(),
        Some(path) => {
            let mut roots = RootCertStore::empty();
            for certificate in certificates(path)? {
                roots
                    .add(certificate)
                    .map_err(|error| format!("{}: {error}", path.display()))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|error| format!("{}: {error}", path.display()))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder.with_single_cert(chain, key).map_err(|error| {
        format!(
            "{} and {}: {error}",
            files.cert.display(),
            files.key.display()
        )
    })?;
    config.alpn_protocols = alpn.to_vec();
    Ok(config)
}

/// Accept connections on `listener` until `shutdown`, and hand over those whose handshake
/// succeeded. Failed handshakes (a plaintext client, an unknown client certificate) are
/// logged at debug level and closed.
pub fn accept(
    listener: TcpListener,
    config: Arc<ReloadingConfig>,
    shutdown: watch::Receiver<bool>,
) -> mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)> {
    let (sender, receiver) = mpsc::channel(64);
    tokio::spawn(async move {
        let stop = crate::stopped(shutdown);
        tokio::pin!(stop);
        let handshakes = Arc::new(Semaphore::new(MAX_HANDSHAKES));
        loop {
            let Ok(permit) = handshakes.clone().acquire_owned().await else {
                return;
            };
            let (stream, peer) = tokio::select! {
                _ = &mut stop => return,
                _ = sender.closed() => return,
                accepted = listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(error) => {
                        // Out of descriptors and the like: wait instead of spinning.
                        tracing::warn!(%error, "accepting a connection");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
            };
            let acceptor = TlsAcceptor::from(config.current());
            let sender = sender.clone();
            tokio::spawn(async move {
                let _permit = permit;
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                    Ok(Ok(stream)) => {
                        let _ = sender.send((stream, peer)).await;
                    }
                    Ok(Err(error)) => tracing::debug!(%peer, %error, "TLS handshake failed"),
                    Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                }
            });
        }
    });
    receiver
}

/// The accepted TLS connections as an axum listener (the metrics endpoint).
pub struct TlsListener {
    pub incoming: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    pub local: SocketAddr,
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.incoming.recv().await {
            Some(accepted) => accepted,
            // The accept loop stopped (shutdown): nothing more comes.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        Ok(self.local)
    }
}
