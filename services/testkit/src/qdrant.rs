//! The Qdrant server (an official build, `../shared/bin/qdrant` beside the repository) on
//! loopback with its own storage, for the tests of the distributed path. It can be killed
//! and restarted on the same ports and storage, as the crash tests do.
//!
//! Suites that need a server call [`server_url`]: the server `scripts/test.sh` started for
//! the whole run (`VIDX_TEST_QDRANT_URL`), else one started for the caller. Under `CI=true`
//! a missing server binary is an error, never a skipped test.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A Qdrant server process; killed when dropped (its storage is removed with it).
#[derive(Debug)]
pub struct QdrantServer {
    program: PathBuf,
    storage: tempfile::TempDir,
    grpc_port: u16,
    http_port: u16,
    api_key: Option<String>,
    child: Option<Child>,
}

/// Where the server binary is: `$VIDX_QDRANT_BIN`, `shared/bin/qdrant` in a directory above
/// the repository, or `qdrant` on `PATH`.
pub fn qdrant_program() -> Result<PathBuf, String> {
    if let Some(program) = std::env::var_os("VIDX_QDRANT_BIN") {
        return Ok(PathBuf::from(program));
    }
    let here = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    for directory in here.ancestors() {
        let candidate = directory.join("shared/bin/qdrant");
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    if let Some(path) = std::env::var_os("PATH") {
        for directory in std::env::split_paths(&path) {
            let candidate = directory.join("qdrant");
            if candidate.is_file() {
                return Ok(candidate);
            }
        }
    }
    Err(
        "no Qdrant server binary: set VIDX_QDRANT_BIN, or put it at ../shared/bin/qdrant \
         beside the repository or on PATH (scripts/test.sh starts it for the test run)"
            .into(),
    )
}

/// The gRPC URL of a Qdrant server for a test: `VIDX_TEST_QDRANT_URL` when set (the one
/// `scripts/test.sh` started), else a server started now, returned with it (keep it alive
/// while the URL is used).
pub fn server_url() -> Result<(String, Option<QdrantServer>), String> {
    if let Ok(url) = std::env::var("VIDX_TEST_QDRANT_URL") {
        return Ok((url, None));
    }
    let server = QdrantServer::start()?;
    Ok((server.url(), Some(server)))
}

fn free_port() -> Result<u16, String> {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|address| address.port())
        .map_err(|error| format!("free port: {error}"))
}

impl QdrantServer {
    /// Start a server with empty storage on free loopback ports and wait until it is ready.
    pub fn start() -> Result<Self, String> {
        let mut server = Self {
            program: qdrant_program()?,
            storage: tempfile::tempdir().map_err(|error| format!("qdrant storage: {error}"))?,
            grpc_port: free_port()?,
            http_port: free_port()?,
            api_key: None,
            child: None,
        };
        server.launch()?;
        Ok(server)
    }

    /// The gRPC URL (what `store.url` takes).
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.grpc_port)
    }

    /// The REST address (`/readyz`, `/collections/…`).
    pub fn http_address(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.http_port))
    }

    /// SIGKILL the server (as a crash would) and reap it. Its storage stays.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Start it again on the same ports and storage, and wait until it is ready.
    pub fn restart(&mut self) -> Result<(), String> {
        self.kill();
        self.launch()
    }

    /// Restart it requiring `api_key` from its clients (`None`: none), as an operator
    /// rotating the key would.
    pub fn restart_with_api_key(&mut self, api_key: Option<&str>) -> Result<(), String> {
        self.api_key = api_key.map(str::to_string);
        self.restart()
    }

    fn launch(&mut self) -> Result<(), String> {
        let mut command = Command::new(&self.program);
        if let Some(key) = &self.api_key {
            command.env("QDRANT__SERVICE__API_KEY", key);
        }
        let child = command
            .current_dir(self.storage.path())
            .env(
                "QDRANT__STORAGE__STORAGE_PATH",
                self.storage.path().join("storage"),
            )
            .env(
                "QDRANT__STORAGE__SNAPSHOTS_PATH",
                self.storage.path().join("snapshots"),
            )
            .env("QDRANT__SERVICE__HOST", "127.0.0.1")
            .env("QDRANT__SERVICE__GRPC_PORT", self.grpc_port.to_string())
            .env("QDRANT__SERVICE__HTTP_PORT", self.http_port.to_string())
            .env("QDRANT__TELEMETRY_DISABLED", "true")
            .env("QDRANT__LOG_LEVEL", "WARN")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|error| format!("cannot start {}: {error}", self.program.display()))?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if self.ready() {
                return Ok(());
            }
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                return Err(format!("qdrant exited with {status} before it was ready"));
            }
            if Instant::now() > deadline {
                return Err("qdrant was not ready within 60 s".into());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// `GET /readyz` answers 200.
    fn ready(&self) -> bool {
        let Ok(mut stream) =
            TcpStream::connect_timeout(&self.http_address(), Duration::from_millis(300))
        else {
            return false;
        };
        let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
        let request = "GET /readyz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n";
        if stream.write_all(request.as_bytes()).is_err() {
            return false;
        }
        let mut response = String::new();
        let _ = stream.read_to_string(&mut response);
        response.starts_with("HTTP/1.1 200")
    }
}

impl Drop for QdrantServer {
    fn drop(&mut self) {
        self.kill();
    }
}
