//! Real faults on a real cluster: `vidx run` nodes as child processes (an ingest node and
//! worker nodes), librdkafka's mock Kafka cluster hosted by this test process on loopback
//! (its group coordinator evicts dead members, which tansu does not), and the official
//! Qdrant server (`../shared/bin/qdrant`), each killed, stopped or restarted with real
//! signals. After every fault the store must hold exactly the points the input produces: one
//! caption point per segment, with the deterministic id of its segment, and nothing else.
//!
//! The rows of docs/reliability.md these cover: 1, 2, 11 and 21 (store killed, store
//! refusing the credentials), 22 (SIGSTOP past the session timeout).

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use serde_json::Value;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use vidx_core::{RecordKind, point_id};
use vidx_proto::v1;
use vidx_proto::v1::ingest_service_client::IngestServiceClient;
use vidx_proto::v1::worker_service_client::WorkerServiceClient;
use vidx_testkit::{Camera, MockBroker, QdrantServer, ffmpeg};

const VIDX: &str = env!("CARGO_BIN_EXE_vidx");
const SEGMENT_MS: u64 = 2_000;
const PARTITIONS: i32 = 4;
const SESSION_TIMEOUT_MS: u64 = 6_000;
const COLLECTION: &str = "faults";

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// One HTTP/1.1 request on loopback; the status code and body.
fn http(
    address: SocketAddr,
    method: &str,
    path: &str,
    body: Option<&Value>,
) -> Result<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&address, Duration::from_secs(2))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let body = body.map(Value::to_string).unwrap_or_default();
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response)?;
    let response = String::from_utf8_lossy(&response).into_owned();
    let (head, rest) = response
        .split_once("\r\n\r\n")
        .context("malformed HTTP response")?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .context("no HTTP status")?;
    // Chunked bodies (axum's metrics): drop the chunk sizes.
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        let mut body = String::new();
        let mut rest = rest;
        while let Some((size, tail)) = rest.split_once("\r\n") {
            let size = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
            if size == 0 || tail.len() < size {
                break;
            }
            body.push_str(&tail[..size]);
            rest = tail[size..].trim_start_matches("\r\n");
        }
        body
    } else {
        rest.to_string()
    };
    Ok((status, body))
}

fn caption(seq: u64) -> String {
    format!("Segment number {seq} shows the test pattern moving.")
}

/// `segments` segments of H.264 (one keyframe per segment) with a sidecar `.srt` holding one
/// cue inside each segment.
fn make_video(directory: &Path, segments: u64) -> Result<PathBuf> {
    let video = directory.join("pattern.mp4");
    let seconds = (segments * SEGMENT_MS / 1000).to_string();
    ffmpeg(&[
        "-f",
        "lavfi",
        "-i",
        &format!("testsrc2=s=160x120:r=25:d={seconds}"),
        "-c:v",
        "libx264",
        "-preset",
        "ultrafast",
        // Small segments: the mock cluster keeps at most 5 MB per partition, and one
        // stream's segments share a partition.
        "-crf",
        "32",
        "-g",
        "50",
        "-pix_fmt",
        "yuv420p",
        video.to_str().context("path")?,
    ])?;
    let time = |ms: u64| {
        format!(
            "{:02}:{:02}:{:02},{:03}",
            ms / 3_600_000,
            ms / 60_000 % 60,
            ms / 1000 % 60,
            ms % 1000
        )
    };
    let mut srt = String::new();
    for seq in 0..segments {
        let start = seq * SEGMENT_MS + 300;
        srt.push_str(&format!(
            "{}\n{} --> {}\n{}\n\n",
            seq + 1,
            time(start),
            time(start + 1_200),
            caption(seq)
        ));
    }
    std::fs::write(video.with_extension("srt"), srt)?;
    Ok(video)
}

/// A `vidx run` process, killed when dropped.
struct Node {
    name: String,
    arguments: Vec<String>,
    environment: Vec<(String, String)>,
    metrics: SocketAddr,
    listen: u16,
    log: PathBuf,
    child: Option<Child>,
}

impl Node {
    fn start(&mut self) -> Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        self.child = Some(
            Command::new(VIDX)
                .args(&self.arguments)
                .envs(self.environment.iter().cloned())
                .env("HF_HUB_OFFLINE", "1")
                .env("RUST_LOG", "info")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .with_context(|| format!("starting {}", self.name))?,
        );
        Ok(())
    }

    fn pid(&self) -> Result<u32> {
        Ok(self.child.as_ref().context("not running")?.id())
    }

    /// Send a real signal (`KILL`, `STOP`, `CONT`).
    fn signal(&mut self, signal: &str) -> Result<()> {
        let status = Command::new("kill")
            .args([format!("-{signal}"), self.pid()?.to_string()])
            .status()?;
        ensure!(status.success(), "kill -{signal} {}", self.name);
        if signal == "KILL"
            && let Some(mut child) = self.child.take()
        {
            child.wait()?;
        }
        Ok(())
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The node's Prometheus text, `None` while it does not answer.
    fn scrape(&self) -> Option<String> {
        match http(self.metrics, "GET", "/metrics", None) {
            Ok((200, body)) => Some(body),
            _ => None,
        }
    }

    /// The value of a series (`name{labels}` as written in the text), 0 when absent.
    fn metric(&self, series: &str) -> Option<f64> {
        let text = self.scrape()?;
        Some(
            text.lines()
                .filter(|line| line.starts_with(series))
                .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
                .sum(),
        )
    }

    /// What the node's gRPC services say: the overall health status (grpc.health.v1) and
    /// `WorkerService.Status.outage`.
    fn grpc_health(&self) -> Result<(i32, String)> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        runtime.block_on(async {
            let channel = tonic::transport::Endpoint::from_shared(format!(
                "http://127.0.0.1:{}",
                self.listen
            ))?
            .connect_timeout(Duration::from_secs(2))
            .timeout(Duration::from_secs(5))
            .connect()
            .await?;
            let status = HealthClient::new(channel.clone())
                .check(HealthCheckRequest {
                    service: String::new(),
                })
                .await?
                .into_inner()
                .status;
            let outage = WorkerServiceClient::new(channel)
                .status(v1::WorkerStatusRequest {})
                .await?
                .into_inner()
                .outage;
            Ok((status, outage))
        })
    }

    /// The partitions the worker holds (the labels of its consumer-lag gauge).
    fn partitions(&self) -> Option<BTreeSet<String>> {
        let text = self.scrape()?;
        Some(
            text.lines()
                .filter(|line| line.starts_with("vidx_consumer_lag{"))
                .filter_map(|line| {
                    let start = line.find("partition=\"")? + "partition=\"".len();
                    let end = start + line[start..].find('"')?;
                    Some(line[start..end].to_string())
                })
                .collect(),
        )
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// One cluster at a time in this process, whatever runs the tests (`cargo test` runs a
/// binary's tests in parallel; nextest runs them alone, `.config/nextest.toml`): their
/// recovery bounds are seconds, and parallel clusters would starve each other's nodes.
static ONE_CLUSTER: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// A broker, a Qdrant server, an ingest node and worker nodes, with a video to index.
struct Cluster {
    directory: tempfile::TempDir,
    qdrant: QdrantServer,
    _broker: MockBroker,
    ingest: Node,
    workers: Vec<Node>,
    video: PathBuf,
    segments: u64,
    /// Last: released once everything above is stopped.
    _alone: std::sync::MutexGuard<'static, ()>,
}

impl Cluster {
    fn start(workers: usize, segments: u64) -> Result<Self> {
        Self::start_with(workers, segments, &["ingest"])
    }

    /// [`start`](Self::start), with the ingest node taking `ingest_roles`.
    fn start_with(workers: usize, segments: u64, ingest_roles: &[&str]) -> Result<Self> {
        let alone = ONE_CLUSTER
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let directory = tempfile::tempdir()?;
        let media = std::fs::canonicalize(directory.path())?.join("media");
        std::fs::create_dir_all(&media)?;
        let video = make_video(&media, segments)?;
        let broker = MockBroker::start(&[
            ("faults.segments", PARTITIONS),
            ("faults.segments.dlq", PARTITIONS),
            ("faults.jobs", 1),
        ])
        .map_err(anyhow::Error::msg)?;
        let qdrant = QdrantServer::start().map_err(anyhow::Error::msg)?;
        let config = format!(
            "[media]\nsegment_secs = {segment_secs}\nframes_per_segment = 2\nframe_size = 64\n\
             [pipeline]\nworkers = 1\nmax_attempts = 3\nretry_backoff_ms = 200\n\
             [store]\nkind = \"qdrant\"\nurl = \"{qdrant}\"\ncollection = \"{COLLECTION}\"\n\
             timeout_ms = 5000\nreindex_grace_secs = 1\n\
             [server]\ningest_roots = [\"{media}\"]\n\
             [kafka]\nbrokers = \"{brokers}\"\ntopic = \"faults.segments\"\n\
             dead_letter_topic = \"faults.segments.dlq\"\njobs_topic = \"faults.jobs\"\n\
             group_id = \"faults\"\n\
             partitions = {PARTITIONS}\nsession_timeout_ms = {SESSION_TIMEOUT_MS}\n\
             max_poll_interval_ms = 60000\ndelivery_timeout_ms = 20000\n",
            segment_secs = SEGMENT_MS as f64 / 1000.0,
            qdrant = qdrant.url(),
            media = media.display(),
            brokers = broker.bootstrap(),
        );
        let config_path = directory.path().join("cluster.toml");
        std::fs::write(&config_path, config)?;
        // Each node its own addresses, through the environment (over the shared file).
        let node = |name: &str, roles: &[&str]| -> Result<Node> {
            let listen = free_port()?;
            let metrics = free_port()?;
            let mut arguments = vec!["run".to_string()];
            arguments.extend(roles.iter().map(|role| role.to_string()));
            arguments.extend([
                "--config".into(),
                config_path.display().to_string(),
                "--data-dir".into(),
                directory.path().join(name).display().to_string(),
            ]);
            Ok(Node {
                name: name.into(),
                arguments,
                environment: vec![
                    ("VIDX__SERVER__LISTEN".into(), format!("127.0.0.1:{listen}")),
                    (
                        "VIDX__SERVER__METRICS_LISTEN".into(),
                        format!("127.0.0.1:{metrics}"),
                    ),
                ],
                metrics: SocketAddr::from(([127, 0, 0, 1], metrics)),
                listen,
                log: directory.path().join(format!("{name}.log")),
                child: None,
            })
        };
        let mut ingest = node("ingest", ingest_roles)?;
        ingest.start()?;
        let mut nodes = Vec::new();
        for index in 0..workers {
            let mut worker = node(&format!("worker-{index}"), &["worker"])?;
            worker.start()?;
            nodes.push(worker);
        }
        let cluster = Self {
            directory,
            qdrant,
            _broker: broker,
            ingest,
            workers: nodes,
            video,
            segments,
            _alone: alone,
        };
        for worker in &cluster.workers {
            cluster.wait_for(
                &format!("{} ready", worker.name),
                Duration::from_secs(120),
                || {
                    Ok(worker
                        .scrape()
                        .is_some_and(|text| text.contains("vidx_segments_in_flight")))
                },
            )?;
        }
        Ok(cluster)
    }

    /// Poll `condition` every 100 ms until it holds or `limit` passes.
    fn wait_for(
        &self,
        what: &str,
        limit: Duration,
        mut condition: impl FnMut() -> Result<bool>,
    ) -> Result<Duration> {
        let started = Instant::now();
        loop {
            if condition()? {
                return Ok(started.elapsed());
            }
            if started.elapsed() > limit {
                bail!("{what}: not within {limit:?}\n{}", self.logs());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Wait until every worker holds at least one partition (the group has settled).
    fn wait_for_every_worker_to_hold_partitions(&self) -> Result<Duration> {
        self.wait_for(
            "partitions on every worker",
            Duration::from_secs(60),
            || {
                Ok(self
                    .workers
                    .iter()
                    .all(|worker| worker.partitions().is_some_and(|held| !held.is_empty())))
            },
        )
    }

    /// Segments the workers logged as indexed, over all of them (those indexed twice, by a
    /// crashed worker and the one that replayed them, count twice).
    fn segments_indexed_by_workers(&self) -> usize {
        self.workers
            .iter()
            .map(|worker| worker.log().matches("segment indexed").count())
            .sum()
    }

    fn logs(&self) -> String {
        let mut logs = format!("--- ingest\n{}", tail(&self.ingest.log()));
        for worker in &self.workers {
            logs.push_str(&format!("--- {}\n{}", worker.name, tail(&worker.log())));
        }
        logs
    }

    /// Submit the video through `vidx index --endpoint` (it follows the job to the end).
    fn submit(&self) -> Result<Child> {
        let output = self.directory.path().join("submit.json");
        Ok(Command::new(VIDX)
            .args(["index", "--json", "--endpoint"])
            .arg(format!("http://127.0.0.1:{}", self.ingest.listen))
            .arg(&self.video)
            .env("HF_HUB_OFFLINE", "1")
            .stdout(std::fs::File::create(&output)?)
            .stderr(std::fs::File::create(
                self.directory.path().join("submit.log"),
            )?)
            .spawn()?)
    }

    /// Wait for the submitting command; the job's last JSON line.
    fn job(&self, mut submit: Child, limit: Duration) -> Result<Value> {
        let started = Instant::now();
        loop {
            if let Some(status) = submit.try_wait()? {
                let text = std::fs::read_to_string(self.directory.path().join("submit.json"))?;
                let errors = std::fs::read_to_string(self.directory.path().join("submit.log"))?;
                ensure!(
                    status.success(),
                    "vidx index: {status}\n{errors}\n{}",
                    self.logs()
                );
                let last = text.lines().rfind(|line| !line.trim().is_empty());
                return serde_json::from_str(last.context("no job line")?).context("job line");
            }
            if started.elapsed() > limit {
                let _ = submit.kill();
                bail!("the job did not finish within {limit:?}\n{}", self.logs());
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Every point in the collection: id → payload.
    fn points(&self) -> Result<BTreeMap<String, Value>> {
        let mut points = BTreeMap::new();
        let mut offset = Value::Null;
        loop {
            let (status, body) = http(
                self.qdrant.http_address(),
                "POST",
                &format!("/collections/{COLLECTION}/points/scroll"),
                Some(&serde_json::json!({
                    "limit": 256, "with_payload": true, "with_vector": false, "offset": offset
                })),
            )?;
            if status == 404 {
                return Ok(points);
            }
            ensure!(status == 200, "scroll: {status} {body}");
            let page: Value = serde_json::from_str(&body)?;
            for point in page["result"]["points"].as_array().context("points")? {
                let id = point["id"].as_str().context("id")?.to_string();
                ensure!(
                    points
                        .insert(id.clone(), point["payload"].clone())
                        .is_none(),
                    "point {id} listed twice"
                );
            }
            offset = page["result"]["next_page_offset"].clone();
            if offset.is_null() {
                return Ok(points);
            }
        }
    }

    fn count(&self) -> usize {
        self.points().map(|points| points.len()).unwrap_or(0)
    }

    /// Exactly the points the video produces: one subtitle point per segment, each with the
    /// id its segment determines; nothing missing, nothing extra.
    fn assert_exact(&self) -> Result<()> {
        self.check_exact().with_context(|| self.logs())
    }

    fn check_exact(&self) -> Result<()> {
        let points = self.points()?;
        let mut seen = BTreeSet::new();
        for (id, payload) in &points {
            let seq = payload["segment_seq"].as_u64().context("segment_seq")?;
            let kind =
                RecordKind::parse(payload["kind"].as_str().context("kind")?).context("kind")?;
            ensure!(
                kind == RecordKind::Subtitle,
                "an unexpected {kind:?} point {id}"
            );
            let expected = point_id(
                payload["tenant"].as_str().context("tenant")?,
                payload["stream_id"].as_str().context("stream_id")?,
                seq,
                // One keyframe every SEGMENT_MS: segment `seq` starts there.
                seq * SEGMENT_MS,
                kind,
                0,
                payload["model_rev"].as_str().context("model_rev")?,
            );
            ensure!(
                expected.to_string() == *id,
                "point {id} is not its segment's id {expected}"
            );
            ensure!(
                payload["caption"].as_str() == Some(caption(seq).as_str()),
                "segment {seq}: {payload}"
            );
            ensure!(seen.insert(seq), "segment {seq} has two points");
        }
        let expected: BTreeSet<u64> = (0..self.segments).collect();
        ensure!(
            seen == expected,
            "missing segments {:?}, extra {:?}; {} points: {:?}",
            expected.difference(&seen).collect::<Vec<_>>(),
            seen.difference(&expected).collect::<Vec<_>>(),
            points.len(),
            points.values().take(3).collect::<Vec<_>>()
        );
        Ok(())
    }
}

fn tail(text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(60)..].join("\n") + "\n"
}

/// docs/reliability.md faults 1 and 2: one of two workers is SIGKILLed while the job runs.
/// Its partitions reach the survivor within the session timeout plus 10 s, the job finishes
/// with nothing dead-lettered, and the store holds exactly the expected points.
#[test]
fn a_worker_killed_mid_job_loses_and_duplicates_nothing() -> Result<()> {
    let mut cluster = Cluster::start(2, 40)?;
    // Both workers hold partitions before the kill.
    cluster.wait_for_every_worker_to_hold_partitions()?;
    let submit = cluster.submit()?;
    cluster.wait_for("first points", Duration::from_secs(120), || {
        Ok(cluster.count() >= 3)
    })?;
    let at_kill = cluster.count();
    cluster.workers[0].signal("KILL")?;
    let killed = Instant::now();
    ensure!(
        at_kill < cluster.segments as usize,
        "the job was over before the kill: nothing was in flight"
    );
    let survivor = &cluster.workers[1];
    let moved = cluster.wait_for(
        "the dead worker's partitions on the survivor",
        Duration::from_millis(SESSION_TIMEOUT_MS) + Duration::from_secs(10),
        || {
            Ok(survivor
                .partitions()
                .is_some_and(|held| held.len() == PARTITIONS as usize))
        },
    )?;
    let job = cluster.job(submit, Duration::from_secs(180))?;
    let finished = killed.elapsed();
    assert_eq!(job["state"], "JOB_STATE_DONE", "{job}");
    assert_eq!(job["segments_failed"], 0, "{job}");
    cluster.assert_exact()?;
    // Segments indexed more than once: what the crash made the survivor replay (the dead
    // worker's upserts that it never committed).
    let indexed = cluster.segments_indexed_by_workers();
    eprintln!(
        "recovery: partitions moved {:.1} s after the SIGKILL (session timeout {} s); \
         job done {:.1} s after it; {at_kill} of {} points stored at the kill; \
         {} segments replayed",
        moved.as_secs_f64(),
        SESSION_TIMEOUT_MS / 1000,
        finished.as_secs_f64(),
        cluster.segments,
        indexed.saturating_sub(cluster.segments as usize)
    );
    Ok(())
}

/// docs/reliability.md faults 11 and 21: the Qdrant server refuses the workers' credentials
/// (restarted with an API key the workers do not have), then is SIGKILLed, while a job runs.
/// Through both (30 s and 10 s): the worker is NOT_SERVING (gRPC health) with the reason
/// (outage gauge by kind, `WorkerService.Status.outage`, log),
/// nothing is indexed, committed or dead-lettered; after each recovery it resumes, and the
/// job ends with every segment indexed exactly once.
#[test]
fn a_store_refusing_credentials_or_killed_is_waited_out() -> Result<()> {
    let mut cluster = Cluster::start(1, 40)?;
    let submit = cluster.submit()?;
    cluster.wait_for("first points", Duration::from_secs(120), || {
        Ok(cluster.count() >= 3)
    })?;

    for (phase, kind) in [("wrong key", "store_unauthenticated"), ("killed", "")] {
        if phase == "wrong key" {
            cluster
                .qdrant
                .restart_with_api_key(Some("a-key-the-workers-do-not-have"))
                .map_err(anyhow::Error::msg)?;
        } else {
            cluster.qdrant.kill();
        }
        let worker = &cluster.workers[0];
        cluster.wait_for(
            &format!("{phase}: outage reported"),
            Duration::from_secs(30),
            || {
                Ok(worker.scrape().is_some_and(|text| {
                    text.lines().any(|line| {
                        line.starts_with("vidx_dependency_outage{")
                            && line.contains(kind)
                            && line.ends_with(" 1")
                    })
                }))
            },
        )?;
        let indexed = worker.metric("vidx_segments_indexed_total").unwrap_or(-1.0);
        // The lag gauge serves the last background refresh (at most a second old): let one
        // refresh start well inside the outage and read its value as the baseline.
        std::thread::sleep(Duration::from_millis(2500));
        let _ = worker.scrape();
        std::thread::sleep(Duration::from_millis(1500));
        let lag = worker.metric("vidx_consumer_lag{").unwrap_or(-1.0);
        // Held long enough for many retries (the backoff stops growing at 4 s) and past
        // `max_attempts` of them: an outage never counts as the segment's attempts.
        std::thread::sleep(Duration::from_secs(if phase == "wrong key" {
            30
        } else {
            10
        }));
        assert_eq!(
            worker.metric("vidx_segments_indexed_total").unwrap_or(-2.0),
            indexed,
            "{phase}: nothing is acked while the store fails"
        );
        assert!(
            worker.metric("vidx_consumer_lag{").unwrap_or(-1.0) >= lag,
            "{phase}: no offset is committed while the store fails"
        );
        assert_eq!(
            worker.metric("vidx_segments_failed_total").unwrap_or(0.0),
            0.0,
            "{phase}"
        );
        assert!(
            worker.log().contains("dependency outage"),
            "{phase}: {}",
            worker.log()
        );
        let (status, outage) = worker.grpc_health()?;
        assert_eq!(
            status,
            ServingStatus::NotServing as i32,
            "{phase}: the node is NOT_SERVING during the outage"
        );
        assert!(
            outage.starts_with("store") && !outage.contains("a-key-the-workers"),
            "{phase}: WorkerService.Status names the outage, without the key: {outage}"
        );
        cluster
            .qdrant
            .restart_with_api_key(None)
            .map_err(anyhow::Error::msg)?;
        let worker = &cluster.workers[0];
        cluster.wait_for(
            &format!("{phase}: recovery"),
            Duration::from_secs(60),
            || Ok(worker.metric("vidx_segments_indexed_total").unwrap_or(0.0) > indexed),
        )?;
        assert_eq!(
            worker.metric("vidx_dependency_outage{").unwrap_or(1.0),
            0.0,
            "{phase}: the outage is over"
        );
        let (status, outage) = worker.grpc_health()?;
        assert_eq!(
            (status, outage.as_str()),
            (ServingStatus::Serving as i32, ""),
            "{phase}: serving again"
        );
    }
    let job = cluster.job(submit, Duration::from_secs(180))?;
    assert_eq!(job["state"], "JOB_STATE_DONE", "{job}");
    assert_eq!(job["segments_failed"], 0, "{job}");
    cluster.assert_exact()?;
    Ok(())
}

/// docs/reliability.md fault 22: a worker SIGSTOPped past the session timeout is evicted (its
/// partitions move to the other worker, which indexes them), then SIGCONTed: it rejoins, and
/// the store holds exactly the expected points, none twice.
#[test]
fn a_worker_stopped_past_its_session_timeout_rejoins_without_duplicates() -> Result<()> {
    let mut cluster = Cluster::start(2, 40)?;
    cluster.wait_for_every_worker_to_hold_partitions()?;
    let submit = cluster.submit()?;
    cluster.wait_for("first points", Duration::from_secs(120), || {
        Ok(cluster.count() >= 3)
    })?;
    cluster.workers[0].signal("STOP")?;
    let other = &cluster.workers[1];
    cluster.wait_for(
        "the stopped worker's partitions on the other",
        Duration::from_millis(SESSION_TIMEOUT_MS) + Duration::from_secs(10),
        || {
            Ok(other
                .partitions()
                .is_some_and(|held| held.len() == PARTITIONS as usize))
        },
    )?;
    let job = cluster.job(submit, Duration::from_secs(180))?;
    assert_eq!(job["segments_failed"], 0, "{job}");
    cluster.workers[0].signal("CONT")?;
    let resumed = &cluster.workers[0];
    cluster.wait_for(
        "the resumed worker rejoins",
        Duration::from_secs(60),
        || Ok(resumed.partitions().is_some_and(|held| !held.is_empty())),
    )?;
    cluster.assert_exact()?;
    Ok(())
}

/// docs/reliability.md fault 23: the ingest node is SIGKILLed right after it accepted a job
/// (while it segments it) and restarted: it still answers for the job (kept in the jobs
/// topic), finishes it, and the store holds exactly the expected points.
#[test]
fn an_ingest_node_killed_mid_job_finishes_it_after_a_restart() -> Result<()> {
    let mut cluster = Cluster::start(1, 40)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let endpoint = format!("http://127.0.0.1:{}", cluster.ingest.listen);
    let client = || async {
        let channel = tonic::transport::Endpoint::from_shared(endpoint.clone())?
            .connect_timeout(Duration::from_secs(2))
            .timeout(Duration::from_secs(10))
            .connect()
            .await?;
        anyhow::Ok(IngestServiceClient::new(channel))
    };
    let source = cluster.video.display().to_string();
    let job_id = runtime.block_on(async {
        // The node answers once its services are up.
        let started = Instant::now();
        loop {
            let submitted = async {
                let mut client = client().await?;
                let response = client
                    .submit(v1::SubmitRequest {
                        source: source.clone(),
                        ..Default::default()
                    })
                    .await?;
                anyhow::Ok(response.into_inner().job_id)
            }
            .await;
            match submitted {
                Ok(job_id) => return Ok(job_id),
                Err(error) if started.elapsed() > Duration::from_secs(60) => return Err(error),
                Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
    })?;
    cluster.ingest.signal("KILL")?;
    cluster.ingest.start()?;
    let job = runtime.block_on(async {
        let started = Instant::now();
        loop {
            let answer = async {
                let mut client = client().await?;
                let job = client
                    .get_job(v1::GetJobRequest {
                        job_id: job_id.clone(),
                    })
                    .await?
                    .into_inner();
                anyhow::Ok(job)
            }
            .await;
            match answer {
                Ok(job) if job.state == v1::JobState::Done as i32 => return Ok(job),
                Ok(job) if job.state == v1::JobState::Failed as i32 => bail!("job failed: {job:?}"),
                Ok(_) | Err(_) if started.elapsed() < Duration::from_secs(120) => {
                    tokio::time::sleep(Duration::from_millis(300)).await;
                }
                Ok(job) => bail!("job not done within 120 s: {job:?}"),
                Err(error) => return Err(error),
            }
        }
    });
    let job = job.with_context(|| cluster.logs())?;
    assert_eq!(job.segments_failed, 0, "{job:?}");
    assert_eq!(job.segments_total, cluster.segments, "{job:?}");
    cluster.assert_exact()?;
    assert!(
        cluster
            .ingest
            .log()
            .contains("jobs restored from the journal"),
        "{}",
        cluster.ingest.log()
    );
    Ok(())
}

/// A reindex on the Qdrant server, its node SIGKILLed midway: the node (ingest and query
/// roles) builds generation 2 of the collection from two streams' sources through Kafka and
/// the worker; killed once the new generation holds some points, it resumes the reindex from
/// `<data-dir>/reindex.json` when restarted, switches the alias and drops generation 1 after
/// the grace period. The collection then holds one generation's points, each stream's once.
#[test]
fn a_reindex_whose_node_is_killed_resumes_and_switches() -> Result<()> {
    let mut cluster = Cluster::start_with(1, 12, &["ingest", "query"])?;
    let second = cluster.video.with_file_name("pattern-2.mp4");
    std::fs::copy(&cluster.video, &second)?;
    std::fs::copy(
        cluster.video.with_extension("srt"),
        second.with_extension("srt"),
    )?;
    for video in [cluster.video.clone(), second] {
        let output = Command::new(VIDX)
            .args(["index", "--json", "--endpoint"])
            .arg(format!("http://127.0.0.1:{}", cluster.ingest.listen))
            .arg(&video)
            .env("HF_HUB_OFFLINE", "1")
            .output()?;
        ensure!(
            output.status.success(),
            "vidx index --endpoint: {}\n{}",
            String::from_utf8_lossy(&output.stderr),
            cluster.logs()
        );
    }
    let one_generation = 2 * cluster.segments as usize;
    assert_eq!(cluster.count(), one_generation);

    let qdrant = cluster.qdrant.http_address();
    let count_in = |collection: &str| -> Result<Option<u64>> {
        let (status, body) = http(
            qdrant,
            "POST",
            &format!("/collections/{collection}/points/count"),
            Some(&serde_json::json!({ "exact": true })),
        )?;
        if status == 404 {
            return Ok(None);
        }
        ensure!(status == 200, "count: {status} {body}");
        let body: Value = serde_json::from_str(&body)?;
        Ok(body["result"]["count"].as_u64())
    };
    let endpoint = format!("http://127.0.0.1:{}", cluster.ingest.listen);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let index_client = || async {
        let channel = tonic::transport::Endpoint::from_shared(endpoint.clone())?
            .connect_timeout(Duration::from_secs(2))
            .timeout(Duration::from_secs(10))
            .connect()
            .await?;
        anyhow::Ok(v1::index_service_client::IndexServiceClient::new(channel))
    };
    let started = runtime.block_on(async {
        index_client()
            .await?
            .reindex(v1::ReindexRequest {})
            .await
            .map_err(anyhow::Error::from)
    })?;
    assert_eq!(
        started.get_ref().state,
        v1::reindex_status::State::Building as i32
    );
    let new = format!("{COLLECTION}_g2");
    cluster.wait_for(
        "points in the new generation",
        Duration::from_secs(90),
        || Ok(count_in(&new)?.is_some_and(|count| count > 0)),
    )?;
    let before_kill = count_in(&new)?.unwrap_or(0) as usize;
    cluster.ingest.signal("KILL")?;
    ensure!(
        before_kill < one_generation,
        "the kill came too late ({before_kill} of {one_generation})"
    );
    // Searches keep answering from generation 1 meanwhile.
    assert_eq!(cluster.count(), one_generation);
    ensure!(
        cluster
            .directory
            .path()
            .join("ingest/reindex.json")
            .exists()
    );

    cluster.ingest.start()?;
    let status = runtime.block_on(async {
        let started = Instant::now();
        loop {
            let answer = async {
                anyhow::Ok(
                    index_client()
                        .await?
                        .get_reindex_status(v1::ReindexStatusRequest {})
                        .await?
                        .into_inner(),
                )
            }
            .await;
            match answer {
                Ok(status) if status.state == v1::reindex_status::State::Done as i32 => {
                    return Ok(status);
                }
                Ok(status) if status.state == v1::reindex_status::State::Failed as i32 => {
                    bail!("reindex failed: {status:?}")
                }
                _ if started.elapsed() < Duration::from_secs(120) => {
                    tokio::time::sleep(Duration::from_millis(300)).await;
                }
                answer => bail!("reindex not done within 120 s: {answer:?}"),
            }
        }
    });
    let status = status.with_context(|| cluster.logs())?;
    ensure!(status.resumed, "{status:?}");
    assert_eq!(
        (
            status.generation,
            status.sources_done,
            status.sources_skipped
        ),
        (2, 2, 0),
        "{status:?}"
    );
    ensure!(
        cluster.ingest.log().contains("resuming the reindex"),
        "{}",
        cluster.ingest.log()
    );
    // One generation's points behind the alias; generation 1 dropped after the grace period.
    assert_eq!(count_in(&new)?, Some(one_generation as u64));
    assert_eq!(cluster.count(), one_generation);
    assert_eq!(count_in(&format!("{COLLECTION}_g1"))?, None);
    let (status, aliases) = http(qdrant, "GET", "/aliases", None)?;
    ensure!(status == 200 && aliases.contains(&new), "{aliases}");
    ensure!(
        !cluster
            .directory
            .path()
            .join("ingest/reindex.json")
            .exists()
    );

    // Another one, through the CLI: it follows the node's reindex until the switch.
    let output = Command::new(VIDX)
        .args(["reindex", "--json", "--endpoint", &endpoint])
        .env("HF_HUB_OFFLINE", "1")
        .output()?;
    ensure!(
        output.status.success(),
        "vidx reindex --endpoint: {}\n{}",
        String::from_utf8_lossy(&output.stderr),
        cluster.logs()
    );
    let summary: Value = serde_json::from_slice(&output.stdout)?;
    assert_eq!(summary["generation"], 3, "{summary}");
    assert_eq!(summary["sources_done"], 2, "{summary}");
    assert_eq!(cluster.count(), one_generation);
    Ok(())
}

/// docs/reliability.md fault 23 for a live stream: the ingest node following a camera is
/// SIGKILLed and restarted; it takes the stream back from the jobs topic and reconnects (the
/// camera is back on its port by then), and the workers index its segments again. `GetJob`
/// and `ListStreams` answer for it on the new process, and `StopStream` ends it.
#[test]
fn a_live_stream_reconnects_after_its_ingest_node_is_killed() -> Result<()> {
    let mut cluster = Cluster::start(1, 1)?;
    // The camera is on loopback: open that one address to the ingest node (by CIDR, the
    // private-address guard stays on).
    cluster.ingest.signal("KILL")?;
    cluster.ingest.environment.extend([
        (
            "VIDX__MEDIA__ALLOWED_URL_SCHEMES".to_string(),
            "[\"tcp\"]".to_string(),
        ),
        (
            "VIDX__MEDIA__ALLOWED_NETWORKS".to_string(),
            "[\"127.0.0.1/32\"]".to_string(),
        ),
    ]);
    cluster.ingest.start()?;
    let port = free_port()?;
    let mut camera = Camera::start(port)?;

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let endpoint = format!("http://127.0.0.1:{}", cluster.ingest.listen);
    let client = || async {
        let channel = tonic::transport::Endpoint::from_shared(endpoint.clone())?
            .connect_timeout(Duration::from_secs(2))
            .timeout(Duration::from_secs(10))
            .connect()
            .await?;
        anyhow::Ok(IngestServiceClient::new(channel))
    };
    // Retried until the node answers; `None` while it does not.
    let stream_of = |job_id: String| {
        let client = &client;
        async move {
            let mut client = client().await.ok()?;
            client
                .list_streams(v1::ListStreamsRequest {})
                .await
                .ok()?
                .into_inner()
                .streams
                .into_iter()
                .find(|stream| stream.job_id == job_id)
        }
    };
    let indexed = |cluster: &Cluster| {
        cluster.workers[0]
            .log()
            .lines()
            .filter(|line| line.contains("segment indexed") && line.contains("cam-faults"))
            .count()
    };
    let job_id = runtime.block_on(async {
        let started = Instant::now();
        loop {
            let submitted = async {
                let mut client = client().await?;
                let response = client
                    .submit(v1::SubmitRequest {
                        source: format!("tcp://127.0.0.1:{port}"),
                        stream_id: Some("cam-faults".into()),
                        ..Default::default()
                    })
                    .await?;
                anyhow::Ok(response.into_inner().job_id)
            }
            .await;
            match submitted {
                Ok(job_id) => return Ok(job_id),
                Err(error) if started.elapsed() > Duration::from_secs(60) => return Err(error),
                Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
    })?;
    cluster.wait_for("the stream indexed", Duration::from_secs(60), || {
        Ok(indexed(&cluster) >= 3)
    })?;

    cluster.ingest.signal("KILL")?;
    let before = indexed(&cluster);
    // The camera lost its client with the ingest node; it serves the next one.
    drop(camera);
    camera = Camera::start(port)?;
    cluster.ingest.start()?;
    let restored = cluster.wait_for(
        "the stream live again on the restarted ingest node",
        Duration::from_secs(60),
        || {
            Ok(runtime
                .block_on(stream_of(job_id.clone()))
                .is_some_and(|stream| {
                    stream.state == v1::StreamState::Live as i32 && stream.segments >= 2
                }))
        },
    )?;
    cluster.wait_for(
        "the stream's segments indexed after the restart",
        Duration::from_secs(60),
        || Ok(indexed(&cluster) >= before + 2),
    )?;
    println!(
        "live again {:.1} s after the restart; {before} segments before the kill",
        restored.as_secs_f64()
    );
    ensure!(
        cluster
            .ingest
            .log()
            .contains("jobs restored from the journal"),
        "{}",
        cluster.ingest.log()
    );
    let job = runtime.block_on(async {
        let mut client = client().await?;
        anyhow::Ok(
            client
                .get_job(v1::GetJobRequest {
                    job_id: job_id.clone(),
                })
                .await?
                .into_inner(),
        )
    })?;
    ensure!(
        job.stream
            .as_ref()
            .is_some_and(|stream| stream.stream_id == "cam-faults"),
        "{job:?}"
    );
    runtime.block_on(async {
        let mut client = client().await?;
        client
            .stop_stream(v1::StopStreamRequest {
                job_id: job_id.clone(),
            })
            .await?;
        anyhow::Ok(())
    })?;
    cluster.wait_for("the stream stopped", Duration::from_secs(30), || {
        Ok(runtime
            .block_on(stream_of(job_id.clone()))
            .is_some_and(|stream| stream.state == v1::StreamState::Stopped as i32))
    })?;
    drop(camera);
    Ok(())
}

/// The benchmark of this harness (`scripts/bench-faults.sh` runs it in release and keeps its
/// JSON under bench/results/): segments/s of the cluster with 1, 2 and 3 worker processes on
/// the Qdrant server against `vidx index` (embedded: in-process queue, Qdrant Edge) on the
/// same video as the baseline, the Kafka + store overhead per segment, and the recovery after
/// a worker's SIGKILL. Not a test: it asserts nothing but that the runs complete.
#[test]
#[ignore = "benchmark: scripts/bench-faults.sh"]
fn bench_cluster_throughput_and_recovery() -> Result<()> {
    const SEGMENTS: u64 = 120;
    // The baseline: the embedded path, one worker, same models and frames.
    let directory = tempfile::tempdir()?;
    let media = directory.path().join("media");
    std::fs::create_dir_all(&media)?;
    let video = make_video(&media, SEGMENTS)?;
    let config = directory.path().join("embedded.toml");
    std::fs::write(
        &config,
        format!(
            "[media]\nsegment_secs = {}\nframes_per_segment = 2\nframe_size = 64\n\
             [pipeline]\nworkers = 1\n",
            SEGMENT_MS as f64 / 1000.0
        ),
    )?;
    let embedded = |video: &Path, data: &str| -> Result<f64> {
        let started = Instant::now();
        let output = Command::new(VIDX)
            .args(["index", "--json", "--config"])
            .arg(&config)
            .arg("--data-dir")
            .arg(directory.path().join(data))
            .arg(video)
            .env("HF_HUB_OFFLINE", "1")
            .output()?;
        ensure!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        Ok(started.elapsed().as_secs_f64())
    };
    // The process's fixed cost (start, model load, index open and close), measured on a
    // one-segment video, is taken off: the cluster's time runs from submit to job done, with
    // its models already loaded.
    let short = tempfile::tempdir()?;
    let fixed_s = embedded(&make_video(short.path(), 1)?, "fixed")?;
    let total_s = embedded(&video, "data")?;
    let embedded_s = (total_s - fixed_s).max(0.001);
    let embedded_rate = SEGMENTS as f64 / embedded_s;

    let mut runs = Vec::new();
    for workers in 1..=3 {
        let cluster = Cluster::start(workers, SEGMENTS)?;
        cluster.wait_for_every_worker_to_hold_partitions()?;
        let started = Instant::now();
        let job = cluster.job(cluster.submit()?, Duration::from_secs(600))?;
        let seconds = started.elapsed().as_secs_f64();
        ensure!(job["segments_failed"] == 0, "{job}");
        cluster.assert_exact()?;
        let rate = SEGMENTS as f64 / seconds;
        runs.push(serde_json::json!({
            "worker_processes": workers,
            "seconds": seconds,
            "segments_per_s": rate,
            "ratio_to_embedded": rate / embedded_rate,
            "overhead_ms_per_segment": (1.0 / rate - 1.0 / embedded_rate) * 1000.0,
        }));
    }

    let mut cluster = Cluster::start(2, SEGMENTS)?;
    cluster.wait_for_every_worker_to_hold_partitions()?;
    let submit = cluster.submit()?;
    cluster.wait_for("points", Duration::from_secs(120), || {
        Ok(cluster.count() >= SEGMENTS as usize / 4)
    })?;
    cluster.workers[0].signal("KILL")?;
    let killed = Instant::now();
    let survivor = &cluster.workers[1];
    let moved = cluster.wait_for("partitions moved", Duration::from_secs(60), || {
        Ok(survivor
            .partitions()
            .is_some_and(|held| held.len() == PARTITIONS as usize))
    })?;
    cluster.job(submit, Duration::from_secs(600))?;
    let done = killed.elapsed();
    cluster.assert_exact()?;
    let indexed = cluster.segments_indexed_by_workers();
    let report = serde_json::json!({
        "benchmark": "cluster throughput and recovery (services/cli/tests/faults.rs)",
        "segments": SEGMENTS,
        "segment_ms": SEGMENT_MS,
        "models": "all-MiniLM-L6-v2 over one subtitle cue per segment, 2 frames decoded per segment",
        "broker": "librdkafka mock cluster (in the bench process, loopback)",
        "store": "Qdrant server v1.16.3 (loopback); baseline: Qdrant Edge",
        "baseline": {
            "command": "vidx index (embedded, 1 worker), minus its run on a 1-segment video",
            "seconds": embedded_s,
            "seconds_with_startup": total_s,
            "startup_seconds": fixed_s,
            "segments_per_s": embedded_rate,
        },
        "cluster": runs,
        "recovery": {
            "worker_processes": 2,
            "session_timeout_ms": SESSION_TIMEOUT_MS,
            "partitions_moved_s": moved.as_secs_f64(),
            "job_done_after_kill_s": done.as_secs_f64(),
            "segments_replayed": indexed.saturating_sub(SEGMENTS as usize),
        },
    });
    println!("{report:#}");
    Ok(())
}
