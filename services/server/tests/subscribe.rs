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
                stream_id: Some("gate-cam".into()),
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

    // Let the finished subscriptions notice their closed streams before the index goes.
    tokio::time::sleep(Duration::from_millis(600)).await;
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
