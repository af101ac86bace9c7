//! A Kafka-protocol broker on loopback for tests and local runs: the `tansu` broker
//! (`cargo install --locked tansu --version 0.6.0 --features dynostore`, done by
//! `scripts/setup-test.sh`) with in-memory storage on a free port, stopped when dropped.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use vidx_bus::KafkaSettings;

/// A running broker; killed on drop.
#[derive(Debug)]
pub struct LocalBroker {
    child: Child,
    address: SocketAddr,
}

impl LocalBroker {
    /// Start `tansu` (from `$TANSU` or `PATH`) and wait until it accepts connections.
    pub fn start() -> std::io::Result<Self> {
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let address = SocketAddr::from(([127, 0, 0, 1], port));
        let program = std::env::var("TANSU").unwrap_or_else(|_| default_program());
        let url = format!("tcp://{address}");
        let child = Command::new(&program)
            .args(["broker", "--listener-url", &url, "--advertised-listener-url", &url])
            .args(["--storage-engine", "memory://tansu/"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|error| {
                std::io::Error::new(
                    error.kind(),
                    format!(
                        "cannot start the Kafka-protocol broker `{program}` ({error}); install it with \
                         `cargo install --locked tansu --version 0.6.0 --features dynostore` \
                         (scripts/setup-test.sh does) or point $TANSU at it"
                    ),
                )
            })?;
        let mut broker = Self { child, address };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if TcpStream::connect_timeout(&address, Duration::from_millis(200)).is_ok() {
                return Ok(broker);
            }
            if let Some(status) = broker.child.try_wait()? {
                return Err(std::io::Error::other(format!(
                    "broker `{program}` exited with {status} before listening on {address}"
                )));
            }
            if Instant::now() > deadline {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("broker `{program}` did not listen on {address} within 30 s"),
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The broker process's exit status, once it has ended (before the drop, it should not).
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// `host:port` for `bootstrap.servers`.
    pub fn bootstrap(&self) -> String {
        self.address.to_string()
    }

    /// Settings for this broker with topics and a group no other caller in this process
    /// uses, so tests sharing a broker never see each other's messages.
    pub fn fresh_settings(&self, partitions: i32) -> KafkaSettings {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let id = format!(
            "{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::SeqCst)
        );
        let defaults = kafka_defaults();
        KafkaSettings {
            brokers: self.bootstrap(),
            topic: format!("segments-{id}"),
            dead_letter_topic: format!("segments-{id}.dlq"),
            jobs_topic: format!("segments-{id}.jobs"),
            group_id: format!("workers-{id}"),
            partitions,
            session_timeout: Duration::from_secs(6),
            delivery_timeout: Duration::from_secs(20),
            ..defaults
        }
    }
}

/// Run `scenario` against a fresh broker within `limit`. tansu 0.6 has been seen to exit in
/// the middle of a run (and a client of a broker that is gone can wait without end): a run
/// whose broker process exited is reported and run once more on a new broker. A run that
/// fails or overruns while its broker lives fails as it is, and so does a second run whose
/// broker exited too.
pub async fn with_local_broker<S>(limit: Duration, scenario: S) -> anyhow::Result<()>
where
    S: AsyncFn(&LocalBroker) -> anyhow::Result<()>,
{
    let mut attempt = 1;
    loop {
        let mut broker = LocalBroker::start()?;
        let outcome = tokio::time::timeout(limit, scenario(&broker)).await;
        match (outcome, broker.exited()) {
            (Ok(Ok(())), _) => return Ok(()),
            (Ok(Err(error)), None) => return Err(error),
            (Err(_), None) => {
                anyhow::bail!("the run overran {limit:?} while its broker was running")
            }
            (outcome, Some(status)) if attempt == 1 => {
                let outcome = match outcome {
                    Ok(result) => format!("{result:?}"),
                    Err(_) => format!("no end within {limit:?}"),
                };
                eprintln!(
                    "the tansu broker exited ({status}) during the run ({outcome}); \
                     running it once more on a new broker"
                );
                attempt += 1;
            }
            (_, Some(status)) => {
                anyhow::bail!("the tansu broker exited ({status}) during both runs")
            }
        }
    }
}

/// The configured Kafka defaults, mapped as every vidx node maps them.
pub fn kafka_defaults() -> KafkaSettings {
    vidx_config::Config::load(&vidx_config::ConfigSources::default())
        .map(|config| vidx_server::kafka_settings(&config.kafka))
        .expect("the embedded default configuration loads")
}

/// `tansu` on `PATH`, else where `cargo install` puts it.
fn default_program() -> String {
    let on_path = std::env::var_os("PATH").is_some_and(|path| {
        std::env::split_paths(&path).any(|directory| directory.join("tansu").is_file())
    });
    if on_path {
        return "tansu".into();
    }
    std::env::var_os("CARGO_HOME")
        .map(std::path::PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| std::path::Path::new(&home).join(".cargo")))
        .map(|cargo_home| cargo_home.join("bin/tansu"))
        .filter(|program| program.is_file())
        .map_or_else(|| "tansu".into(), |program| program.display().to_string())
}

impl Drop for LocalBroker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
