//! TLS on `vidx run` (`server.tls`): real `vidx run query` processes serving certificates
//! made here with `rcgen`, reached by the real `vidx search --endpoint https://…` and by
//! tonic and rustls clients. A plaintext client is refused, a client trusting another CA is
//! refused, a TLS client with the CA succeeds, on the gRPC listener and on `GET /metrics`; a
//! certificate replaced on disk serves the next connections without a restart; with
//! `server.tls.client_ca` a client without a certificate, or with one from another CA, is
//! refused and one with a certificate of that CA succeeds.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};
use tokio_rustls::rustls::{ClientConfig, RootCertStore, crypto};
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

const VIDX: &str = env!("CARGO_BIN_EXE_vidx");
const SEARCH_SERVICE: &str = "vidx.v1.SearchService";

/// A certificate authority made for the test.
struct Authority {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl Authority {
    fn new(name: &str) -> Result<Self> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        Ok(Self {
            issuer: CertifiedIssuer::self_signed(params, KeyPair::generate()?)?,
        })
    }

    fn pem(&self) -> String {
        self.issuer.pem()
    }

    /// A leaf certificate and its key, for the server (loopback names) or a client.
    fn leaf(&self, name: &str, server: bool) -> Result<(String, String)> {
        let names = if server {
            vec!["localhost".to_string(), "127.0.0.1".to_string()]
        } else {
            Vec::new()
        };
        let mut params = CertificateParams::new(names)?;
        params.distinguished_name.push(DnType::CommonName, name);
        params.extended_key_usages = vec![if server {
            ExtendedKeyUsagePurpose::ServerAuth
        } else {
            ExtendedKeyUsagePurpose::ClientAuth
        }];
        let key = KeyPair::generate()?;
        let certificate = params.signed_by(&key, &self.issuer)?;
        Ok((certificate.pem(), key.serialize_pem()))
    }
}

/// Replace `path` at once (write beside it, rename over), as certificate managers do.
fn replace(path: &Path, contents: &str) -> Result<()> {
    let temporary = path.with_extension("new");
    std::fs::File::create(&temporary)?.write_all(contents.as_bytes())?;
    std::fs::rename(&temporary, path)?;
    Ok(())
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// A `vidx run query` process, killed when dropped.
struct Node {
    child: Child,
    listen: u16,
    metrics: u16,
    log: PathBuf,
}

impl Node {
    fn start(directory: &Path, name: &str, tls: &[(&str, &Path)]) -> Result<Node> {
        let listen = free_port()?;
        let metrics = free_port()?;
        let log = directory.join(format!("{name}.log"));
        let mut command = Command::new(VIDX);
        command
            .args(["run", "query", "--data-dir"])
            .arg(directory.join(name))
            .env("VIDX__SERVER__LISTEN", format!("127.0.0.1:{listen}"))
            .env(
                "VIDX__SERVER__METRICS_LISTEN",
                format!("127.0.0.1:{metrics}"),
            )
            .env("HF_HUB_OFFLINE", "1")
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log)?);
        for (key, path) in tls {
            command.env(format!("VIDX__SERVER__TLS__{key}"), path);
        }
        Ok(Node {
            child: command.spawn().context("starting vidx run")?,
            listen,
            metrics,
            log,
        })
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn https(&self) -> String {
        format!("https://127.0.0.1:{}", self.listen)
    }

    /// Wait until the search service answers SERVING to `tls`.
    async fn ready(&mut self, tls: &ClientTlsConfig) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(180);
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!("vidx run exited ({status}):\n{}", self.log());
            }
            if let Ok(ServingStatus::Serving) = health(&self.https(), Some(tls.clone())).await {
                return Ok(());
            }
            ensure!(
                Instant::now() < deadline,
                "not serving over TLS after 180 s:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The search service's health, over `url` (with `tls` for https).
async fn health(url: &str, tls: Option<ClientTlsConfig>) -> Result<ServingStatus> {
    let mut endpoint = Endpoint::from_shared(url.to_string())?
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(5));
    if let Some(tls) = tls {
        endpoint = endpoint.tls_config(tls)?;
    }
    let channel = endpoint.connect().await?;
    let status = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: SEARCH_SERVICE.into(),
        })
        .await?
        .into_inner()
        .status();
    Ok(status)
}

fn trusting(ca: &str) -> ClientTlsConfig {
    ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca))
}

/// `GET /metrics` over TLS trusting `ca`: the status line.
async fn scrape_tls(port: u16, ca: &str) -> Result<String> {
    let mut roots = RootCertStore::empty();
    for certificate in CertificateDer::pem_slice_iter(ca.as_bytes()) {
        roots.add(certificate?)?;
    }
    let config = ClientConfig::builder_with_provider(Arc::new(crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    let mut stream = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("127.0.0.1")?.to_owned(), tcp)
        .await?;
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: vidx\r\nConnection: close\r\n\r\n")
        .await?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await?;
    let response = String::from_utf8_lossy(&response).into_owned();
    ensure!(
        response.contains("vidx_"),
        "no vidx metrics in: {response:.300}"
    );
    Ok(response.lines().next().unwrap_or_default().to_string())
}

/// `GET /metrics` in plaintext: what came back, if anything.
async fn scrape_plain(port: u16) -> String {
    let attempt = async {
        let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
        stream
            .write_all(b"GET /metrics HTTP/1.1\r\nHost: vidx\r\nConnection: close\r\n\r\n")
            .await?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await?;
        anyhow::Ok(String::from_utf8_lossy(&response).into_owned())
    };
    match tokio::time::timeout(Duration::from_secs(15), attempt).await {
        Ok(Ok(response)) => response,
        Ok(Err(error)) => format!("error: {error}"),
        Err(_) => "timed out".into(),
    }
}

/// `vidx search --endpoint …` with `arguments`.
fn cli_search(endpoint: &str, arguments: &[&str]) -> Result<Output> {
    Ok(Command::new(VIDX)
        .args(["search", "a person opening a door", "--endpoint", endpoint])
        .args(arguments)
        .env("HF_HUB_OFFLINE", "1")
        .env_remove("VIDX_CA")
        .env_remove("VIDX_ENDPOINT")
        .output()?)
}

fn text(output: &Output) -> String {
    format!(
        "exit {:?}\nstdout: {}\nstderr: {}",
        output.status.code(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn tls_refuses_plaintext_and_unknown_cas_reloads_its_certificate_and_enforces_client_certificates()
-> Result<()> {
    let directory = tempfile::tempdir()?;
    let dir = directory.path();
    let path = |name: &str| dir.join(name);

    let server_ca = Authority::new("vidx test server CA")?;
    let other_ca = Authority::new("an unrelated CA")?;
    let (cert, key) = server_ca.leaf("vidx node", true)?;
    replace(&path("server.pem"), &cert)?;
    replace(&path("server.key"), &key)?;
    std::fs::write(path("server-ca.pem"), server_ca.pem())?;

    // A certificate file that does not exist: the node does not start, and says which key.
    let refused = Command::new(VIDX)
        .args(["run", "query", "--data-dir"])
        .arg(path("broken"))
        .env(
            "VIDX__SERVER__LISTEN",
            format!("127.0.0.1:{}", free_port()?),
        )
        .env("VIDX__SERVER__TLS__CERT", path("missing.pem"))
        .env("VIDX__SERVER__TLS__KEY", path("server.key"))
        .env("HF_HUB_OFFLINE", "1")
        .output()?;
    ensure!(
        !refused.status.success()
            && String::from_utf8_lossy(&refused.stderr).contains("server.tls")
            && String::from_utf8_lossy(&refused.stderr).contains("missing.pem"),
        "a missing certificate file must stop the node naming server.tls: {}",
        text(&refused)
    );

    // ---- TLS without client certificates.
    let mut node = Node::start(
        dir,
        "tls",
        &[("CERT", &path("server.pem")), ("KEY", &path("server.key"))],
    )?;
    node.ready(&trusting(&server_ca.pem())).await?;

    let plaintext = health(&format!("http://127.0.0.1:{}", node.listen), None).await;
    ensure!(
        plaintext.is_err(),
        "a plaintext gRPC client was answered: {plaintext:?}"
    );
    let wrong_ca = health(&node.https(), Some(trusting(&other_ca.pem()))).await;
    ensure!(
        wrong_ca.is_err(),
        "a client trusting another CA was answered: {wrong_ca:?}"
    );

    let ca_file = path("server-ca.pem").display().to_string();
    let searched = cli_search(&node.https(), &["--ca", &ca_file])?;
    ensure!(
        searched.status.success() && String::from_utf8_lossy(&searched.stdout).contains("no hits"),
        "vidx search --ca over TLS: {}",
        text(&searched)
    );
    let untrusted = cli_search(&node.https(), &[])?;
    ensure!(
        !untrusted.status.success()
            && String::from_utf8_lossy(&untrusted.stderr)
                .to_lowercase()
                .contains("certificate"),
        "vidx search without --ca must fail on the unknown issuer: {}",
        text(&untrusted)
    );
    let cleartext = cli_search(&format!("http://127.0.0.1:{}", node.listen), &[])?;
    ensure!(
        !cleartext.status.success(),
        "vidx search over plaintext was answered: {}",
        text(&cleartext)
    );

    let status = scrape_tls(node.metrics, &server_ca.pem()).await?;
    ensure!(status.contains(" 200 "), "metrics over TLS: {status}");
    let plain = scrape_plain(node.metrics).await;
    ensure!(
        !plain.contains("vidx_"),
        "metrics answered in plaintext: {plain:.300}"
    );

    // ---- The certificate renewed on disk (a new CA, even): new connections get it.
    let renewed_ca = Authority::new("vidx renewed CA")?;
    let (cert, key) = renewed_ca.leaf("vidx node renewed", true)?;
    replace(&path("server.key"), &key)?;
    replace(&path("server.pem"), &cert)?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while health(&node.https(), Some(trusting(&renewed_ca.pem())))
        .await
        .is_err()
    {
        ensure!(
            Instant::now() < deadline,
            "the renewed certificate is not served 10 s after it was written:\n{}",
            node.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let old = health(&node.https(), Some(trusting(&server_ca.pem()))).await;
    ensure!(
        old.is_err(),
        "the replaced certificate is still served: {old:?}"
    );
    let status = scrape_tls(node.metrics, &renewed_ca.pem()).await?;
    ensure!(
        status.contains(" 200 "),
        "metrics after the renewal: {status}"
    );
    ensure!(
        node.log().contains("TLS certificate reloaded"),
        "the reload is not logged:\n{}",
        node.log()
    );
    drop(node);

    // ---- Mutual TLS: server.tls.client_ca.
    let client_ca = Authority::new("vidx test client CA")?;
    std::fs::write(path("client-ca.pem"), client_ca.pem())?;
    let (client_cert, client_key) = client_ca.leaf("a vidx client", false)?;
    std::fs::write(path("client.pem"), &client_cert)?;
    std::fs::write(path("client.key"), &client_key)?;
    let (rogue_cert, rogue_key) = other_ca.leaf("a stranger", false)?;
    let mut node = Node::start(
        dir,
        "mtls",
        &[
            ("CERT", &path("server.pem")),
            ("KEY", &path("server.key")),
            ("CLIENT_CA", &path("client-ca.pem")),
        ],
    )?;
    let server_trust = trusting(&renewed_ca.pem());
    node.ready(
        &server_trust
            .clone()
            .identity(Identity::from_pem(&client_cert, &client_key)),
    )
    .await?;
    let anonymous = health(&node.https(), Some(server_trust.clone())).await;
    ensure!(
        anonymous.is_err(),
        "mutual TLS answered a client without a certificate: {anonymous:?}"
    );
    let stranger = health(
        &node.https(),
        Some(
            server_trust
                .clone()
                .identity(Identity::from_pem(&rogue_cert, &rogue_key)),
        ),
    )
    .await;
    ensure!(
        stranger.is_err(),
        "mutual TLS answered a certificate of another CA: {stranger:?}"
    );

    std::fs::write(path("renewed-ca.pem"), renewed_ca.pem())?;
    let ca_file = path("renewed-ca.pem").display().to_string();
    let (cert_file, key_file) = (
        path("client.pem").display().to_string(),
        path("client.key").display().to_string(),
    );
    let searched = cli_search(
        &node.https(),
        &["--ca", &ca_file, "--cert", &cert_file, "--key", &key_file],
    )?;
    ensure!(
        searched.status.success() && String::from_utf8_lossy(&searched.stdout).contains("no hits"),
        "vidx search with a client certificate: {}",
        text(&searched)
    );
    let without = cli_search(&node.https(), &["--ca", &ca_file])?;
    ensure!(
        !without.status.success(),
        "vidx search without a client certificate was answered: {}",
        text(&without)
    );
    Ok(())
}
