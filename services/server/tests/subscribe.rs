//! Standing queries over a live source: a node with the ingest, worker and query roles follows
//! an MPEG-TS camera that the ffmpeg CLI serves on loopback; a caption stand-in describes its
//! 1 s segments in turn as a red van at the gate and as gulls over water. A gRPC
//! subscriber to "red van at the gate" gets every van moment within 2 s of its upsert and no
//! gull; after a disconnect it resumes with its last cursor and misses nothing stored
//! meanwhile. The same over HTTP as server-sent events. The latencies (upsert → delivery) are
//! printed as p50/p99.

mod common;

use std::net::TcpListener;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use common::{Node, WordsEmbedder, authorized, config};
use tokio_stream::StreamExt;
use vidx_core::ports::{Captioner, FrameSampler, SegmentInput, TextEmbedder};
use vidx_core::{ModelError, Moment, RecordKind, SearchFilter};
use vidx_media::FfmpegFrameSampler;
use vidx_pipeline::{Models, SearchModels};
use vidx_proto::v1;
use vidx_proto::v1::ingest_service_client::IngestServiceClient;
use vidx_proto::v1::search_service_client::SearchServiceClient;
use vidx_server::{Engine, Roles};
use vidx_testkit::{Camera, LocalBroker};

const VAN: &str = "a red delivery van stops at the gate";
const GULL: &str = "gulls circling over water";

/// Captions even segments as the van, odd ones as the gull (a model stand-in).
struct Alternating;

impl Captioner for Alternating {
    fn name(&self) -> &str {
        "alternating"
    }
    fn revision(&self) -> &str {
        "alternating-1"
    }
    fn needs_frames(&self) -> bool {
        false
    }
    fn caption(&self, segment: SegmentInput<'_>) -> Result<Vec<Moment>, ModelError> {
        let caption = if segment.task.segment_seq.is_multiple_of(2) {
            VAN
        } else {
            GULL
        };
        Ok(vec![Moment {
            kind: RecordKind::Caption,
            range: segment.task.range,
            caption: caption.into(),
            region: None,
        }])
    }
}

/// A webhook on loopback: answers its first post 503 (a retry must follow), the rest 204;
/// records each post's `authorization` header and JSON body.
struct Webhook {
    address: std::net::SocketAddr,
    posts: Arc<std::sync::Mutex<Vec<(String, serde_json::Value)>>>,
}

impl Webhook {
    fn start() -> Result<Self> {
        use std::io::{BufRead, Read, Write};
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let address = listener.local_addr()?;
        let posts: Arc<std::sync::Mutex<Vec<(String, serde_json::Value)>>> = Arc::default();
        let recorded = posts.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let mut reader = std::io::BufReader::new(&stream);
                let (mut length, mut authorization) = (0usize, String::new());
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 || line.trim().is_empty() {
                        break;
                    }
                    if let Some((name, value)) = line.split_once(':') {
                        match name.trim().to_ascii_lowercase().as_str() {
                            "content-length" => length = value.trim().parse().unwrap_or(0),
                            "authorization" => authorization = value.trim().to_string(),
                            _ => {}
                        }
                    }
                }
                let mut body = vec![0u8; length];
                if reader.read_exact(&mut body).is_err() {
                    continue;
                }
                let Ok(mut posts) = recorded.lock() else {
                    return;
                };
                let status = if posts.is_empty() {
                    "503 Service Unavailable"
                } else {
                    "204 No Content"
                };
                posts.push((
                    authorization,
                    serde_json::from_slice(&body).unwrap_or_default(),
                ));
                drop(posts);
                let _ = (&stream).write_all(
                    format!("HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                        .as_bytes(),
                );
            }
        });
        Ok(Self { address, posts })
    }

    fn posts(&self) -> Vec<(String, serde_json::Value)> {
        self.posts
            .lock()
            .map(|posts| posts.clone())
            .unwrap_or_default()
    }
}

fn percentile(sorted: &[u64], fraction: f64) -> u64 {
    let index = ((sorted.len() as f64 - 1.0) * fraction).round() as usize;
    sorted.get(index).copied().unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_subscriber_gets_each_matching_live_moment_within_2_s_and_resumes_without_loss()
-> Result<()> {
    let dir = tempfile::tempdir()?;
    let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let _camera = Camera::start(port)?;
    let broker = LocalBroker::start()?;
    let embedder: Arc<dyn TextEmbedder> = Arc::new(WordsEmbedder {
        delay: Duration::ZERO,
    });
    let store = common::open_store(&dir.path().join("index"), embedder.dimension()).await?;
    let sampler: Arc<dyn FrameSampler> = Arc::new(FfmpegFrameSampler::new(32));
    let mut config = config()?;
    config.media.segment_secs = 1.0;
    config.media.frames_per_segment = 1;
    config.media.allowed_url_schemes = vec!["tcp".into()];
    config.media.allow_private_hosts = true;
    config.pipeline.workers = 1;
    config.server.max_subscriptions_per_tenant = 2;
    // An alert: the same standing query, posted to a webhook that fails its first post.
    let webhook = Webhook::start()?;
    config.server.alerts = vec![vidx_config::AlertConfig {
        name: "van".into(),
        tenant: String::new(),
        query: "red van at the gate".into(),
        stream_id: "gate-cam".into(),
        threshold: 0.6,
        url: format!("http://{}/hook", webhook.address),
        bearer_token: "hook-token-0123456789".into(),
    }];
    let mut settings = common::settings(
        &config,
        Roles {
            ingest: true,
            worker: true,
            query: true,
        },
        dir.path(),
    )?;
    settings.kafka = broker.fresh_settings(2);
    let engine = Engine {
        store: store.clone(),
        search: SearchModels::caption_only(embedder.clone()),
        models: Arc::new(Models {
            captioners: vec![Arc::new(Alternating)],
            text_embedder: embedder.clone(),
            visual_embedder: None,
            regions: None,
        }),
        sampler,
    };
    let http_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let http_address = http_listener.local_addr()?;
    let node = Node::start_with_http(settings, http_listener, async move { Ok(engine) }).await?;
    let channel = node.channel().await?;
    let mut search = SearchServiceClient::new(channel.clone());

    // Subscribe before the camera is followed: everything that matches is new.
    let request = || v1::SubscribeRequest {
        query: "red van at the gate".into(),
        stream_id: Some("gate-cam".into()),
        threshold: 0.6,
        after: String::new(),
    };
    let mut matches = search
        .subscribe(authorized(request(), None))
        .await?
        .into_inner();
    IngestServiceClient::new(channel)
        .submit(authorized(
            v1::SubmitRequest {
                source: format!("tcp://127.0.0.1:{port}"),
                stream_id: Some("gate-cam".into()),
                ..Default::default()
            },
            None,
        ))
        .await?;

    let mut latencies = Vec::new();
    let mut delivered = Vec::new();
    while delivered.len() < 4 {
        let matched = tokio::time::timeout(Duration::from_secs(60), matches.next())
            .await
            .context("no match within 60 s")?
            .context("stream ended")??;
        let received_ms = vidx_server::subscribe::now_ms();
        let hit = matched.hit.context("match without hit")?;
        ensure!(
            hit.caption == VAN,
            "a non-matching moment was pushed: {hit:?}"
        );
        latencies.push(received_ms.saturating_sub(matched.indexed_at_ms));
        delivered.push((matched.indexed_at_ms, hit.id, matched.cursor));
    }
    let last_cursor = delivered.last().context("none")?.2.clone();
    drop(matches);

    // Disconnected while the camera goes on; then resume after the last cursor.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let mut resumed = search
        .subscribe(authorized(
            v1::SubscribeRequest {
                after: last_cursor.clone(),
                ..request()
            },
            None,
        ))
        .await?
        .into_inner();
    let mut after_resume = Vec::new();
    while after_resume.len() < 3 {
        let matched = tokio::time::timeout(Duration::from_secs(60), resumed.next())
            .await
            .context("no match after resuming")?
            .context("stream ended")??;
        let hit = matched.hit.context("match without hit")?;
        ensure!(
            hit.caption == VAN,
            "a non-matching moment was pushed: {hit:?}"
        );
        after_resume.push((matched.indexed_at_ms, hit.id));
    }
    drop(resumed);
    // Every van moment stored between the last delivered one and the first after resuming
    // was delivered: none lost while disconnected, none delivered twice.
    let (last_at, last_id, _) = delivered.last().context("none")?.clone();
    let first_after = after_resume.first().context("none")?.clone();
    // Every point of the stream stored since: the caption channel returns up to top_k of
    // them whatever their similarity.
    let stored = vidx_pipeline::search(
        store.as_ref(),
        &SearchModels::caption_only(embedder.clone()),
        vidx_pipeline::SearchRequest {
            text: "red van at the gate".into(),
            filter: SearchFilter {
                tenant: config.general.tenant.clone(),
                streams: vec!["gate-cam".into()],
                indexed_since_ms: Some(last_at),
                ..SearchFilter::default()
            },
            top_k: 1000,
            mode: vidx_pipeline::SearchMode::Caption,
            example: None,
        },
    )
    .await?;
    let mut gap: Vec<(u64, String)> = Vec::new();
    for hit in &stored.hits {
        let key = (hit.payload.indexed_at_ms, hit.id.to_string());
        if hit.payload.caption == VAN && key > (last_at, last_id.clone()) && key < first_after {
            gap.push(key);
        }
    }
    ensure!(
        gap.is_empty(),
        "van moments stored while disconnected and never delivered: {gap:?}"
    );
    ensure!(
        !after_resume
            .iter()
            .any(|(_, id)| delivered.iter().any(|(_, seen, _)| seen == id)),
        "a moment was delivered twice"
    );

    // Server-sent events: the same standing query over HTTP.
    let sse_latency = {
        use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
        let mut stream = tokio::net::TcpStream::connect(http_address).await?;
        stream
            .write_all(
                b"GET /v1/subscribe?query=red+van+at+the+gate&stream_id=gate-cam&threshold=0.6 \
                  HTTP/1.1\r\nHost: vidx\r\nAccept: text/event-stream\r\n\r\n",
            )
            .await?;
        let mut lines = BufReader::new(stream).lines();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let line = tokio::time::timeout_at(deadline.into(), lines.next_line())
                .await
                .context("no server-sent match within 60 s")??
                .context("event stream ended")?;
            if let Some(data) = line.strip_prefix("data:") {
                let event: serde_json::Value = serde_json::from_str(data.trim())?;
                ensure!(event["hit"]["caption"] == VAN, "SSE pushed {event}");
                let at = event["indexed_at_ms"].as_u64().context("indexed_at_ms")?;
                break vidx_server::subscribe::now_ms().saturating_sub(at);
            }
        }
    };

    // The alert's webhook: every van moment, in order, none twice but the first (its post
    // failed with 503 and was retried), with the bearer token; the cursor kept on disk.
    // The cursor first: it is written after its post landed, so that post is in the list.
    let kept = std::fs::read_to_string(dir.path().join("alerts/van.cursor"))?;
    let posts = webhook.posts();
    ensure!(posts.len() >= 4, "{} webhook posts", posts.len());
    ensure!(
        posts[0].1 == posts[1].1,
        "the failed first post was not retried: {posts:?}"
    );
    let delivered_posts = &posts[1..];
    ensure!(
        delivered_posts.iter().all(|(authorization, body)| {
            authorization == "Bearer hook-token-0123456789"
                && body["alert"] == "van"
                && body["hit"]["caption"] == VAN
        }),
        "webhook posts: {posts:?}"
    );
    let cursors: Vec<(u64, String)> = delivered_posts
        .iter()
        .filter_map(|(_, body)| {
            vidx_server::subscribe::parse_cursor(body["cursor"].as_str()?, 0).ok()
        })
        .collect();
    ensure!(
        cursors.len() == delivered_posts.len() && cursors.windows(2).all(|pair| pair[0] < pair[1]),
        "webhook posts out of order or repeated: {cursors:?}"
    );
    ensure!(
        cursors.iter().any(|(ms, id)| format!("{ms}:{id}") == kept),
        "the kept cursor {kept} is not a delivered one"
    );

    // Let the finished subscriptions notice their closed streams.
    tokio::time::sleep(Duration::from_millis(600)).await;

    // The tenant's cap (2 here): a third standing query is refused over gRPC and HTTP;
    // closing one gives its slot back.
    let first = search.subscribe(authorized(request(), None)).await?;
    let _second = search.subscribe(authorized(request(), None)).await?;
    let third = search.subscribe(authorized(request(), None)).await;
    ensure!(
        matches!(&third, Err(status) if status.code() == tonic::Code::ResourceExhausted
            && status.message().contains("max_subscriptions_per_tenant")),
        "a third subscription: {third:?}"
    );
    let (status, _, _) = vidx_testkit::http::request(
        http_address,
        "GET",
        "/v1/subscribe?query=red+van",
        &[],
        None,
    )?;
    ensure!(status == 429, "a third subscription over HTTP: {status}");
    drop(first);
    let deadline = Instant::now() + Duration::from_secs(5);
    let _again = loop {
        match search.subscribe(authorized(request(), None)).await {
            Ok(stream) => break stream,
            Err(status) if status.code() == tonic::Code::ResourceExhausted => {
                ensure!(Instant::now() < deadline, "the closed slot never came back");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(status) => return Err(status.into()),
        }
    };
    latencies.sort_unstable();
    let (p50, p99) = (percentile(&latencies, 0.5), percentile(&latencies, 0.99));
    println!(
        "subscribe latency, upsert → delivery: p50 {p50} ms, p99 {p99} ms over {} matches; SSE {sse_latency} ms",
        latencies.len()
    );
    ensure!(
        p99 <= 2_000 && sse_latency <= 2_000,
        "matches pushed later than 2 s after their upsert: {latencies:?}, SSE {sse_latency} ms"
    );
    node.stop().await
}
