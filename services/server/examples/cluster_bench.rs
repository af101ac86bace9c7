//! Throughput of the whole pipeline with a small model (all-MiniLM-L6-v2 over subtitle
//! moments, frames decoded), in one process on loopback: the embedded path (in-process queue,
//! one worker task) as the baseline, then the distributed path (ingest node → tansu broker →
//! 1 and then 2 worker nodes, each one segment at a time → Qdrant Edge), all on the same
//! generated video. Prints segments/s, the ratios and the per-segment overhead of Kafka and
//! the services relative to the embedded path.
//!
//! `cargo run --release -p vidx-server --example cluster_bench -- [streams] [segment_secs]`

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use tokio::sync::{mpsc, watch};
use vidx_bus::InProcessQueue;
use vidx_config::{Config, ConfigSources};
use vidx_core::ports::{Captioner, FrameSampler, SegmentQueue, TextEmbedder};
use vidx_core::types::vector_names;
use vidx_media::{FfmpegFrameSampler, InputSource, SegmentOptions};
use vidx_pipeline::captioners::SubtitleCaptioner;
use vidx_pipeline::{Models, WorkerEvent, WorkerOptions, run_worker};
use vidx_proto::v1;
use vidx_proto::v1::ingest_service_client::IngestServiceClient;
use vidx_server::{Engine, NodeSettings, Roles};
use vidx_store::{EdgeStore, EdgeStoreOptions, VectorSpec};
use vidx_testkit::LocalBroker;

const FRAMES: usize = 4;

fn make_video(directory: &Path) -> Result<PathBuf> {
    let video = directory.join("bench.mp4");
    let mut srt = String::new();
    for index in 0..60u64 {
        srt.push_str(&format!(
            "{}\n00:{:02}:{:02},000 --> 00:{:02}:{:02},500\nCue {index}: a person walks past the red door.\n\n",
            index + 1,
            index / 60,
            index % 60,
            index / 60,
            index % 60
        ));
    }
    std::fs::write(video.with_extension("srt"), srt)?;
    let status = Command::new("ffmpeg")
        .args(["-hide_banner", "-loglevel", "error", "-y", "-f", "lavfi"])
        .args([
            "-i",
            "testsrc2=s=640x360:r=25:d=60",
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
        ])
        .args(["-g", "25", "-pix_fmt", "yuv420p"])
        .arg(&video)
        .status()
        .context("running the ffmpeg CLI")?;
    ensure!(status.success(), "ffmpeg failed");
    Ok(video)
}

fn store(directory: &Path, dimension: usize) -> Result<Arc<EdgeStore>> {
    Ok(Arc::new(EdgeStore::open(
        directory,
        &[VectorSpec {
            name: vector_names::TEXT.into(),
            dimension,
        }],
        EdgeStoreOptions::default(),
    )?))
}

fn models(embedder: &Arc<dyn TextEmbedder>) -> Arc<Models> {
    Arc::new(Models {
        captioners: vec![Arc::new(SubtitleCaptioner) as Arc<dyn Captioner>],
        text_embedder: embedder.clone(),
        visual_embedder: None,
        regions: None,
    })
}

/// The embedded path: segment every stream into the in-process queue, one worker task.
async fn embedded(
    video: &Path,
    streams: usize,
    segment_ms: u64,
    embedder: &Arc<dyn TextEmbedder>,
    directory: &Path,
) -> Result<(u64, Duration)> {
    let started = Instant::now();
    let queue = Arc::new(InProcessQueue::new(8));
    let store = store(&directory.join("embedded"), embedder.dimension())?;
    let sampler: Arc<dyn FrameSampler> = Arc::new(FfmpegFrameSampler::new(64));
    let (events_tx, mut events) = mpsc::unbounded_channel();
    let (_shutdown_tx, shutdown) = watch::channel(false);
    let options = WorkerOptions {
        frames_per_segment: FRAMES,
        max_attempts: 3,
        retry_backoff: Duration::from_millis(50),
        max_backoff: Duration::from_secs(1),
        outage_limit: Some(Duration::ZERO),
        segment_timeout: None,
        health: Default::default(),
        blobs: None,
        max_batch: 1,
        max_batch_wait: Duration::from_millis(0),
        shutdown_grace: Duration::from_secs(5),
        thumbnails: None,
    };
    let worker = tokio::spawn(run_worker(
        queue.clone(),
        store,
        sampler,
        models(embedder),
        options,
        events_tx,
        shutdown,
    ));
    let spool = tempfile::tempdir()?;
    let (video, producer) = (video.to_path_buf(), queue.clone());
    let runtime = tokio::runtime::Handle::current();
    let options = SegmentOptions::new(segment_ms, spool.path().to_path_buf());
    tokio::task::spawn_blocking(move || -> Result<()> {
        for stream in 0..streams {
            let stream_id = format!("cam-{stream}");
            vidx_media::segment_source(&InputSource::File(video.clone()), &options, |chunk| {
                chunk
                    .into_task("bench", &stream_id, &stream_id, u64::MAX)
                    .is_ok_and(|task| runtime.block_on(producer.publish(task)).is_ok())
            })?;
        }
        producer.close();
        Ok(())
    })
    .await??;
    let mut segments = 0;
    while let Some(event) = events.recv().await {
        match event {
            WorkerEvent::Indexed { .. } => segments += 1,
            WorkerEvent::Failed { error, .. } => bail!("segment failed: {error}"),
        }
    }
    worker.await??;
    Ok((segments, started.elapsed()))
}

/// The distributed path: an ingest node and `workers` worker nodes on loopback.
async fn distributed(
    video: &Path,
    streams: usize,
    segment_secs: f64,
    workers: usize,
    embedder: &Arc<dyn TextEmbedder>,
    broker: &LocalBroker,
    directory: &Path,
) -> Result<(u64, Duration)> {
    let mut config = Config::load(&ConfigSources::default())?;
    config.media.segment_secs = segment_secs;
    config.media.frames_per_segment = FRAMES;
    config.pipeline.workers = 1;
    config.server.ingest_roots = vec![
        video
            .parent()
            .context("video directory")?
            .display()
            .to_string(),
    ];
    let kafka = broker.fresh_settings(4);
    let store = store(
        &directory.join(format!("cluster-{workers}")),
        embedder.dimension(),
    )?;
    let sampler: Arc<dyn FrameSampler> = Arc::new(FfmpegFrameSampler::new(64));
    let mut stops = Vec::new();
    let mut tasks = Vec::new();
    let mut start = |roles: Roles| -> Result<std::net::SocketAddr> {
        let mut settings = NodeSettings::from_config(&config, roles, directory)?;
        settings.kafka = kafka.clone();
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        listener.set_nonblocking(true)?;
        let address = listener.local_addr()?;
        let listener = tokio::net::TcpListener::from_std(listener)?;
        let (stop, shutdown) = watch::channel(false);
        let engine = Engine {
            store: store.clone(),
            search: vidx_pipeline::SearchModels::caption_only(embedder.clone()),
            models: models(embedder),
            sampler: sampler.clone(),
        };
        tasks.push(tokio::spawn(vidx_server::serve(
            settings,
            listener,
            async move { Ok(engine) },
            shutdown,
        )));
        stops.push(stop);
        Ok(address)
    };
    let front = start(Roles {
        ingest: true,
        ..Roles::default()
    })?;
    for _ in 0..workers {
        start(Roles {
            worker: true,
            ..Roles::default()
        })?;
    }
    // Let the group settle (every worker holding partitions) before the clock starts.
    tokio::time::sleep(Duration::from_secs(8)).await;
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{front}"))?
        .connect()
        .await?;
    let mut ingest = IngestServiceClient::new(channel);
    let started = Instant::now();
    let mut jobs = Vec::new();
    for stream in 0..streams {
        let request = v1::SubmitRequest {
            source: video.display().to_string(),
            stream_id: Some(format!("cam-{stream}")),
            ..Default::default()
        };
        jobs.push(ingest.submit(request).await?.into_inner().job_id);
    }
    let mut segments = 0;
    for job_id in jobs {
        loop {
            let job = ingest
                .get_job(v1::GetJobRequest {
                    job_id: job_id.clone(),
                })
                .await?
                .into_inner();
            if job.state == v1::JobState::Done as i32 {
                segments += job.segments_done;
                break;
            }
            ensure!(
                job.state != v1::JobState::Failed as i32,
                "job failed: {job:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let elapsed = started.elapsed();
    for stop in stops {
        let _ = stop.send(true);
    }
    for task in tasks {
        task.await??;
    }
    Ok((segments, elapsed))
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> Result<()> {
    let arguments: Vec<String> = std::env::args().skip(1).collect();
    let streams: usize = arguments.first().map_or(Ok(4), |value| value.parse())?;
    let segment_secs: f64 = arguments.get(1).map_or(Ok(5.0), |value| value.parse())?;
    let directory = tempfile::tempdir()?;
    let media = std::fs::canonicalize(directory.path())?.join("media");
    std::fs::create_dir_all(&media)?;
    let video = make_video(&media)?;
    let embedder: Arc<dyn TextEmbedder> = Arc::new(vidx_model::SentenceEmbedder::from_hub(
        "sentence-transformers/all-MiniLM-L6-v2",
        vidx_model::hub::HubOptions {
            offline: true,
            ..Default::default()
        },
        candle_core::Device::Cpu,
    )?);
    let broker = LocalBroker::start()?;
    println!("{streams} streams x 60 s, {segment_secs} s segments, {FRAMES} frames each");

    let (base_segments, base) = embedded(
        &video,
        streams,
        (segment_secs * 1000.0) as u64,
        &embedder,
        directory.path(),
    )
    .await?;
    let (one_segments, one) = distributed(
        &video,
        streams,
        segment_secs,
        1,
        &embedder,
        &broker,
        directory.path(),
    )
    .await?;
    let (two_segments, two) = distributed(
        &video,
        streams,
        segment_secs,
        2,
        &embedder,
        &broker,
        directory.path(),
    )
    .await?;
    let rate = |segments: u64, elapsed: Duration| segments as f64 / elapsed.as_secs_f64();
    println!(
        "embedded (1 worker task): {base_segments} segments in {:.2} s = {:.1} segments/s",
        base.as_secs_f64(),
        rate(base_segments, base)
    );
    println!(
        "kafka, 1 worker node:     {one_segments} segments in {:.2} s = {:.1} segments/s ({:.2}x embedded)",
        one.as_secs_f64(),
        rate(one_segments, one),
        rate(one_segments, one) / rate(base_segments, base)
    );
    println!(
        "kafka, 2 worker nodes:    {two_segments} segments in {:.2} s = {:.1} segments/s ({:.2}x one node)",
        two.as_secs_f64(),
        rate(two_segments, two),
        rate(two_segments, two) / rate(one_segments, one)
    );
    println!(
        "overhead of kafka + services per segment: {:.1} ms",
        (one.as_secs_f64() / one_segments.max(1) as f64
            - base.as_secs_f64() / base_segments.max(1) as f64)
            * 1000.0
    );
    Ok(())
}
