//! A live source through the services (docs/reliability.md fault 9): the ingest service follows
//! an MPEG-TS stream that the ffmpeg CLI serves over TCP on loopback, publishes its segments
//! with wall-clock times, reports the stream's state through ListStreams and GetJob, survives a
//! stall (degraded) and a drop (reconnect, live again), and stops on request.

mod common;

use std::net::TcpListener;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, ensure};
use common::{MeanColour, Node, WordsEmbedder, authorized, config};
use vidx_core::SearchFilter;
use vidx_core::ports::{FrameSampler, IndexStore, TextEmbedder};
use vidx_media::FfmpegFrameSampler;
use vidx_pipeline::{Models, SearchModels};
use vidx_proto::v1;
use vidx_proto::v1::ingest_service_client::IngestServiceClient;
use vidx_server::{Engine, Roles};
use vidx_testkit::{Camera, LocalBroker};

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_millis() as u64)
}

async fn stream(
    ingest: &mut IngestServiceClient<tonic::transport::Channel>,
    job_id: &str,
) -> Result<v1::LiveStream> {
    let streams = ingest
        .list_streams(authorized(v1::ListStreamsRequest {}, None))
        .await?
        .into_inner()
        .streams;
    streams
        .into_iter()
        .find(|stream| stream.job_id == job_id)
        .with_context(|| format!("job {job_id} is not listed as a stream"))
}

async fn wait_for(
    ingest: &mut IngestServiceClient<tonic::transport::Channel>,
    job_id: &str,
    what: &str,
    timeout: Duration,
    predicate: impl Fn(&v1::LiveStream) -> bool,
) -> Result<v1::LiveStream> {
    let deadline = Instant::now() + timeout;
    loop {
        let current = stream(ingest, job_id).await?;
        if predicate(&current) {
            return Ok(current);
        }
        ensure!(Instant::now() < deadline, "{what}: still {current:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_live_stream_survives_a_stall_and_a_drop_with_wall_clock_moments() -> Result<()> {
    let started_ms = now_ms();
    let dir = tempfile::tempdir()?;
    let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let camera = Camera::start(port)?;

    let broker = LocalBroker::start()?;
    let embedder: Arc<dyn TextEmbedder> = Arc::new(WordsEmbedder {
        delay: Duration::ZERO,
    });
    let store = common::open_store_with(
        &dir.path().join("index"),
        &[
            vidx_core::types::vector_names::TEXT,
            vidx_core::types::vector_names::VISUAL,
        ],
        embedder.dimension(),
    )
    .await?;
    let sampler: Arc<dyn FrameSampler> = Arc::new(FfmpegFrameSampler::new(32));
    let mut config = config()?;
    config.media.segment_secs = 1.0;
    config.media.frames_per_segment = 2;
    config.media.allowed_url_schemes = vec!["tcp".into()];
    config.media.allow_private_hosts = true;
    config.media.live_stall_timeout_ms = 2000;
    config.pipeline.workers = 1;
    let mut settings = common::settings(
        &config,
        Roles {
            ingest: true,
            worker: true,
            ..Roles::default()
        },
        dir.path(),
    )?;
    settings.kafka = broker.fresh_settings(2);
    let engine = Engine {
        store: store.clone(),
        search: SearchModels::caption_only(embedder.clone()),
        models: Arc::new(Models {
            captioners: vec![Arc::new(vidx_pipeline::captioners::SubtitleCaptioner)],
            text_embedder: embedder.clone(),
            visual_embedder: Some(Arc::new(MeanColour)),
            regions: None,
        }),
        sampler,
    };
    let node = Node::start(settings, async move { Ok(engine) }).await?;
    let mut ingest = IngestServiceClient::new(node.channel().await?);

    // Credentials in the URL are never shown back.
    let source = format!("tcp://viewer:s3cret@127.0.0.1:{port}");
    let job_id = ingest
        .submit(authorized(
            v1::SubmitRequest {
                source,
                stream_id: Some("cam-live".into()),
                ..Default::default()
            },
            None,
        ))
        .await?
        .into_inner()
        .job_id;
    let live = wait_for(
        &mut ingest,
        &job_id,
        "live with 3 segments",
        Duration::from_secs(40),
        |s| s.state == v1::StreamState::Live as i32 && s.segments >= 3,
    )
    .await?;
    ensure!(
        !live.source.contains("s3cret"),
        "credentials shown: {live:?}"
    );
    ensure!(
        live.last_end_ms >= started_ms && live.last_end_ms <= now_ms() + 1000,
        "{live:?}"
    );

    // The indexed records carry wall-clock times: none before the test began.
    let tenant = config.general.tenant.clone();
    let deadline = Instant::now() + Duration::from_secs(40);
    let filter = |from_ms: Option<u64>, to_ms: Option<u64>| SearchFilter {
        tenant: tenant.clone(),
        streams: vec!["cam-live".into()],
        from_ms,
        to_ms,
        ..SearchFilter::default()
    };
    loop {
        let indexed = store.count(Some(filter(Some(started_ms), None))).await?;
        if indexed >= 3 {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "only {indexed} live records indexed"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let before = store
        .count(Some(filter(None, Some(started_ms.saturating_sub(1)))))
        .await?;
    ensure!(
        before == 0,
        "{before} records are timed before the stream existed"
    );

    // A stall: the camera freezes; the stream is reported degraded.
    camera.signal("-STOP")?;
    let degraded = wait_for(
        &mut ingest,
        &job_id,
        "degraded",
        Duration::from_secs(20),
        |s| s.state == v1::StreamState::Degraded as i32,
    )
    .await?;
    ensure!(
        !degraded.reason.is_empty() && !degraded.reason.contains("s3cret"),
        "{degraded:?}"
    );
    let segments_before = degraded.segments;

    // A drop: the camera dies and comes back on the same port; the stream is live again.
    drop(camera);
    let camera = Camera::start(port)?;
    let back = wait_for(
        &mut ingest,
        &job_id,
        "live again",
        Duration::from_secs(40),
        |s| s.state == v1::StreamState::Live as i32 && s.segments >= segments_before + 2,
    )
    .await?;
    ensure!(back.reconnects >= 1, "{back:?}");
    ensure!(
        back.last_end_ms > degraded.last_end_ms,
        "{back:?} after {degraded:?}"
    );

    // GetJob tells the same story.
    let job = ingest
        .get_job(authorized(
            v1::GetJobRequest {
                job_id: job_id.clone(),
            },
            None,
        ))
        .await?
        .into_inner();
    let job_stream = job.stream.context("GetJob of a live job has its stream")?;
    ensure!(job_stream.stream_id == "cam-live", "{job_stream:?}");

    // Stop on request.
    ingest
        .stop_stream(authorized(
            v1::StopStreamRequest {
                job_id: job_id.clone(),
            },
            None,
        ))
        .await?;
    wait_for(
        &mut ingest,
        &job_id,
        "stopped",
        Duration::from_secs(20),
        |s| s.state == v1::StreamState::Stopped as i32,
    )
    .await?;
    // A file job is not a stream.
    let status = ingest
        .stop_stream(authorized(
            v1::StopStreamRequest {
                job_id: "nope".into(),
            },
            None,
        ))
        .await
        .expect_err("no such job");
    ensure!(status.code() == tonic::Code::NotFound, "{status:?}");

    // The same camera resubmitted under the same stream id numbers its segments from 0
    // again: the first session's moments stay (ids include the wall-clock start), the second
    // session's come beside them.
    drop(camera);
    let stopped_ms = now_ms();
    let mut first_session = store.count(Some(filter(None, None))).await?;
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let now = store.count(Some(filter(None, None))).await?;
        if now == first_session {
            break;
        }
        first_session = now;
    }
    ensure!(
        store.count(Some(filter(None, Some(stopped_ms)))).await? == first_session,
        "the first session's records all lie before its stop"
    );
    let camera = Camera::start(port)?;
    let second = ingest
        .submit(authorized(
            v1::SubmitRequest {
                source: format!("tcp://127.0.0.1:{port}"),
                stream_id: Some("cam-live".into()),
                ..Default::default()
            },
            None,
        ))
        .await?
        .into_inner()
        .job_id;
    wait_for(
        &mut ingest,
        &second,
        "the second session live with 3 segments",
        Duration::from_secs(40),
        |s| s.state == v1::StreamState::Live as i32 && s.segments >= 3,
    )
    .await?;
    let deadline = Instant::now() + Duration::from_secs(40);
    while store.count(Some(filter(Some(stopped_ms), None))).await? < 3 {
        ensure!(
            Instant::now() < deadline,
            "the second session's records are not indexed"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let kept = store.count(Some(filter(None, Some(stopped_ms)))).await?;
    ensure!(
        kept == first_session,
        "the second session overwrote the first: {kept} of {first_session} records left"
    );

    drop(camera);
    node.shutdown.send(true)?;
    let _ = tokio::time::timeout(Duration::from_secs(30), node.task).await;
    Ok(())
}

/// Captions every live segment alike (a model stand-in): each segment is one moment.
struct YardCaptioner;

impl vidx_core::ports::Captioner for YardCaptioner {
    fn name(&self) -> &str {
        "yard"
    }
    fn revision(&self) -> &str {
        "yard-1"
    }
    fn needs_frames(&self) -> bool {
        false
    }
    fn caption(
        &self,
        segment: vidx_core::ports::SegmentInput<'_>,
    ) -> Result<Vec<vidx_core::Moment>, vidx_core::ModelError> {
        Ok(vec![vidx_core::Moment {
            kind: vidx_core::RecordKind::Caption,
            range: segment.task.range,
            caption: "a car waits at the yard gate".into(),
            region: None,
        }])
    }
}

/// `media.retention` (issue 21): a live camera's segments are kept as footage beside the
/// thumbnails; the sweeper deletes those that ended more than `max_age_secs` ago. A recent
/// live hit's clip plays (a real MP4 cut from its kept segment, at the hit's wall-clock
/// time); an old one's is `410 Gone`, though its moment is still found.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn live_footage_is_kept_for_the_retention_and_older_footage_is_deleted() -> Result<()> {
    const MAX_AGE_MS: u64 = 4_000;
    let started_ms = now_ms();
    let dir = tempfile::tempdir()?;
    let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let camera = Camera::start(port)?;
    let broker = LocalBroker::start()?;
    let embedder: Arc<dyn TextEmbedder> = Arc::new(WordsEmbedder {
        delay: Duration::ZERO,
    });
    let store = common::open_store(&dir.path().join("index"), embedder.dimension()).await?;
    let mut config = config()?;
    config.media.segment_secs = 1.0;
    config.media.frames_per_segment = 0;
    config.media.allowed_url_schemes = vec!["tcp".into()];
    config.media.allow_private_hosts = true;
    config.media.retention.max_age_secs = MAX_AGE_MS / 1000;
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
            captioners: vec![Arc::new(YardCaptioner)],
            text_embedder: embedder.clone(),
            visual_embedder: None,
            regions: None,
        }),
        sampler: Arc::new(vidx_testkit::NoFrames),
    };
    let http_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let http = http_listener.local_addr()?;
    let node = Node::start_with_http(settings, http_listener, async move { Ok(engine) }).await?;
    let mut ingest = IngestServiceClient::new(node.channel().await?);
    let job_id = ingest
        .submit(authorized(
            v1::SubmitRequest {
                source: format!("tcp://127.0.0.1:{port}"),
                stream_id: Some("yard-cam".into()),
                ..Default::default()
            },
            None,
        ))
        .await?
        .into_inner()
        .job_id;
    // Twice the retention and more: the first segments have been swept.
    wait_for(
        &mut ingest,
        &job_id,
        "live with 10 segments",
        Duration::from_secs(60),
        |s| s.state == v1::StreamState::Live as i32 && s.segments >= 10,
    )
    .await?;
    let hits = loop {
        let body = serde_json::json!({"query": "car at the yard gate", "stream_id": "yard-cam", "top_k": 100});
        let (status, _, answer) = vidx_testkit::http::request(
            http,
            "POST",
            "/v1/search",
            &[("Content-Type", "application/json")],
            Some(body.to_string().as_bytes()),
        )?;
        ensure!(status == 200, "search: {status}");
        let answer: serde_json::Value = serde_json::from_slice(&answer)?;
        let hits = answer["hits"].as_array().cloned().unwrap_or_default();
        if hits.len() >= 8 {
            break hits;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };

    // The footage kept: nothing that ended before the retention (one sweep of slack), and
    // not the first segments any more.
    let media = vidx_blob::ObjectBlobStore::open(
        &dir.path().join("blobs").display().to_string(),
        &Default::default(),
    )?;
    let listed_ms = now_ms();
    let footage = vidx_core::ports::BlobStore::list(&media, "footage/").await?;
    let ends: Vec<u64> = footage
        .iter()
        .filter_map(|entry| {
            let name = entry.key.rsplit('/').next()?.strip_suffix(".mkv")?;
            name.split_once('-')?.1.parse().ok()
        })
        .collect();
    ensure!(
        ends.len() == footage.len() && !ends.is_empty(),
        "footage keys: {footage:?}"
    );
    ensure!(
        ends.iter()
            .all(|end| *end + MAX_AGE_MS + 1_500 >= listed_ms),
        "footage older than the retention is left: ends {ends:?} at {listed_ms}"
    );
    ensure!(
        footage.len() < hits.len(),
        "{} segments kept of {} indexed: none deleted",
        footage.len(),
        hits.len()
    );

    let time = |hit: &serde_json::Value, field: &str| hit[field].as_u64().unwrap_or(0);
    let newest = hits
        .iter()
        .max_by_key(|hit| time(hit, "start_ms"))
        .context("no hit")?;
    let oldest = hits
        .iter()
        .min_by_key(|hit| time(hit, "start_ms"))
        .context("no hit")?;
    ensure!(
        time(oldest, "end_ms") + MAX_AGE_MS + 1_500 < listed_ms,
        "the oldest hit is not old enough to test: {oldest}"
    );
    ensure!(time(oldest, "start_ms") >= started_ms, "{oldest}");

    // A recent moment plays: an MP4 of the kept segment, starting at or before the moment.
    let id = newest["id"].as_str().context("id")?;
    let (status, headers, mp4) =
        vidx_testkit::http::request(http, "GET", &format!("/v1/clips/{id}.mp4"), &[], None)?;
    ensure!(
        status == 200,
        "clip of a recent live hit: {status} {}",
        String::from_utf8_lossy(&mp4)
    );
    let header = |name: &str| {
        headers
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.clone())
            .unwrap_or_default()
    };
    ensure!(header("content-type") == "video/mp4", "{headers:?}");
    let clip_start: u64 = header("x-vidx-clip-start-ms").parse()?;
    ensure!(
        clip_start <= time(newest, "start_ms") && clip_start + 2_000 >= time(newest, "start_ms"),
        "the clip starts at {clip_start}, the moment at {}",
        time(newest, "start_ms")
    );
    let clip_path = dir.path().join("recent.mp4");
    std::fs::write(&clip_path, &mp4)?;
    let info = vidx_media::probe(&vidx_media::InputSource::File(clip_path))?;
    let video = info.video.context("the clip has no video")?;
    ensure!(
        video.width == 160 && video.height == 120,
        "the camera's picture: {video:?}"
    );
    ensure!(
        info.duration_ms
            .is_some_and(|ms| (400..=2_500).contains(&ms)),
        "one segment's worth: {:?}",
        info.duration_ms
    );

    // An old moment is still found, but its footage is gone.
    let id = oldest["id"].as_str().context("id")?;
    let (status, _, body) =
        vidx_testkit::http::request(http, "GET", &format!("/v1/clips/{id}.mp4"), &[], None)?;
    let body = String::from_utf8_lossy(&body);
    ensure!(
        status == 410 && body.contains("media.retention"),
        "clip of a swept live hit: {status} {body}"
    );

    drop(camera);
    node.shutdown.send(true)?;
    let _ = tokio::time::timeout(Duration::from_secs(30), node.task).await;
    Ok(())
}
