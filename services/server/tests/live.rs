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
        stream_id: Some("cam-live".into()),
        from_ms,
        to_ms,
        indexed_since_ms: None,
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
