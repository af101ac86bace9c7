//! The distributed mode end to end, on one machine: a real Kafka-protocol broker (tansu on
//! loopback), an ingest + query node and two worker nodes in one consumer group, each a real
//! gRPC server on its own port, real ffmpeg segmenting and decoding, the real sentence
//! embedder (all-MiniLM-L6-v2) and the real Qdrant Edge engine.

mod common;

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use common::{Node, authorized, config, engine, open_store};
use tonic::Code;
use vidx_core::ports::{FrameSampler, IndexStore, TextEmbedder};
use vidx_media::FfmpegFrameSampler;
use vidx_model::SentenceEmbedder;
use vidx_model::hub::HubOptions;
use vidx_proto::v1;
use vidx_proto::v1::ingest_service_client::IngestServiceClient;
use vidx_proto::v1::search_service_client::SearchServiceClient;
use vidx_proto::v1::worker_service_client::WorkerServiceClient;
use vidx_server::Roles;
use vidx_testkit::{LocalBroker, with_local_broker};

/// Subtitle cues of the test video: what each part of it shows.
const CUES: &[(u64, u64, &str)] = &[
    (
        3_000,
        7_000,
        "A chef slices ripe tomatoes on a wooden cutting board.",
    ),
    (
        21_000,
        25_000,
        "Children kick a soccer ball across a sunny park.",
    ),
    (
        37_000,
        41_000,
        "A fluffy cat sleeps on a grey sofa by the window.",
    ),
    (
        52_000,
        56_000,
        "Heavy snow falls over the mountain pass at night.",
    ),
];

fn srt_time(ms: u64) -> String {
    format!(
        "00:{:02}:{:02},{:03}",
        ms / 60_000,
        ms / 1000 % 60,
        ms % 1000
    )
}

/// A 64 s H.264 video (2 s GOP) of four scenes, with the cues in a sidecar `.srt`.
fn make_video(directory: &Path) -> Result<std::path::PathBuf> {
    let video = directory.join("kitchen-park-cat-snow.mp4");
    let srt: String = CUES
        .iter()
        .enumerate()
        .map(|(index, (start, end, text))| {
            format!(
                "{}\n{} --> {}\n{text}\n\n",
                index + 1,
                srt_time(*start),
                srt_time(*end)
            )
        })
        .collect();
    std::fs::write(video.with_extension("srt"), srt)?;
    let scenes = "testsrc2=s=320x240:r=25:d=16[a];color=c=red:s=320x240:r=25:d=16[b];\
                  smptebars=s=320x240:r=25:d=16[c];\
                  mandelbrot=s=320x240:r=25,trim=duration=16,setpts=PTS-STARTPTS[d];\
                  [a][b][c][d]concat=n=4:v=1:a=0,format=yuv420p[v]";
    let output = Command::new("ffmpeg")
        .args([
            "-hide_banner",
            "-loglevel",
            "error",
            "-y",
            "-filter_complex",
            scenes,
        ])
        .args([
            "-map",
            "[v]",
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
            "-g",
            "50",
        ])
        .arg(&video)
        .output()
        .context("running the ffmpeg CLI")?;
    ensure!(
        output.status.success(),
        "ffmpeg: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(video)
}

async fn worker_status(node: &Node) -> Result<v1::WorkerStatusResponse> {
    Ok(WorkerServiceClient::new(node.channel().await?)
        .status(authorized(v1::WorkerStatusRequest {}, None))
        .await?
        .into_inner())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_streams_through_kafka_and_two_workers_are_found_by_grpc_search() -> Result<()> {
    // Bounded: a run that hangs fails (and one whose broker process died is run again).
    with_local_broker(Duration::from_secs(300), three_streams).await
}

async fn three_streams(broker: &LocalBroker) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let media = std::fs::canonicalize(dir.path())?.join("media");
    std::fs::create_dir_all(&media)?;
    let video = make_video(&media)?;

    let embedder: Arc<dyn TextEmbedder> = Arc::new(SentenceEmbedder::from_hub(
        "sentence-transformers/all-MiniLM-L6-v2",
        HubOptions {
            offline: true,
            ..HubOptions::default()
        },
        candle_core::Device::Cpu,
    )?);
    let store = open_store(&dir.path().join("index"), embedder.dimension()).await?;
    let sampler: Arc<dyn FrameSampler> = Arc::new(FfmpegFrameSampler::new(64));

    let mut config = config()?;
    config.media.segment_secs = 10.0;
    config.media.frames_per_segment = 4;
    config.server.ingest_roots = vec![media.display().to_string()];
    config.pipeline.workers = 1;
    config.pipeline.max_batch = 2;
    config.pipeline.retry_backoff_ms = 50;
    let kafka = broker.fresh_settings(4);
    let node = |roles: Roles| -> Result<vidx_server::NodeSettings> {
        let mut settings = common::settings(&config, roles, dir.path())?;
        settings.kafka = kafka.clone();
        Ok(settings)
    };
    let start = |roles: Roles| {
        let settings = node(roles);
        let ready = engine(store.clone(), embedder.clone(), sampler.clone());
        async move { Node::start(settings?, async move { Ok(ready) }).await }
    };
    let front = start(Roles {
        ingest: true,
        query: true,
        ..Roles::default()
    })
    .await?;
    let workers = [
        start(Roles {
            worker: true,
            ..Roles::default()
        })
        .await?,
        start(Roles {
            worker: true,
            ..Roles::default()
        })
        .await?,
    ];

    // Both workers are in the group and hold partitions before any work arrives.
    let deadline = Instant::now() + Duration::from_secs(60);
    for worker in &workers {
        while worker_status(worker).await?.partitions.is_empty() {
            ensure!(Instant::now() < deadline, "a worker never got partitions");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    // 17 over gRPC: refused sources name the rule, and nothing connects to a listener on
    // loopback that a URL points at.
    let mut ingest = IngestServiceClient::new(front.channel().await?);
    let trap = std::net::TcpListener::bind("127.0.0.1:0")?;
    trap.set_nonblocking(true)?;
    let trap_url = format!("http://127.0.0.1:{}/v.mp4", trap.local_addr()?.port());
    let outside = dir.path().join("outside.mp4");
    std::fs::copy(&video, &outside)?;
    for (source, rule) in [
        ("file:///etc/passwd".to_string(), "scheme `file`"),
        ("concat:/a.mp4|/b.mp4".to_string(), "scheme `concat`"),
        ("data:video/mp4;base64,AAAA".to_string(), "scheme `data`"),
        (
            "http://169.254.169.254/latest/meta-data".to_string(),
            "metadata",
        ),
        ("http://[::ffff:127.0.0.1]/v.mp4".to_string(), "loopback"),
        (trap_url.clone(), "loopback"),
        // The same listener spelled to dodge a plain-text check (docs/reliability.md 25).
        (trap_url.replace("127.0.0.1", "127.1"), "loopback"),
        (trap_url.replace("127.0.0.1", "2130706433"), "loopback"),
        (trap_url.replace("127.0.0.1", "0x7f.1"), "loopback"),
        (trap_url.replace("127.0.0.1", "0"), "loopback"),
        (trap_url.replace("127.0.0.1", "localhost."), "loopback"),
        (trap_url.replace("127.0.0.1", "[::ffff:7f00:1]"), "loopback"),
        (format!("{}/../outside.mp4", media.display()), "`..`"),
        (
            outside.display().to_string(),
            "outside the allowed ingest roots",
        ),
    ] {
        let status = ingest
            .submit(authorized(
                v1::SubmitRequest {
                    source: source.clone(),
                    stream_id: None,
                    ..Default::default()
                },
                None,
            ))
            .await
            .expect_err(&source);
        assert_eq!(status.code(), Code::InvalidArgument, "{source}: {status:?}");
        assert!(
            status.message().starts_with("source: "),
            "{}",
            status.message()
        );
        assert!(
            status.message().contains(rule),
            "{source}: {}",
            status.message()
        );
    }
    ensure!(trap.accept().is_err(), "a refused URL was connected to");

    // Three streams (three Kafka keys), submitted at once.
    let started = Instant::now();
    let mut jobs = Vec::new();
    for stream in ["cam-1", "cam-2", "cam-3"] {
        let response = ingest
            .submit(authorized(
                v1::SubmitRequest {
                    source: video.display().to_string(),
                    stream_id: Some(stream.into()),
                    ..Default::default()
                },
                None,
            ))
            .await?
            .into_inner();
        jobs.push(response.job_id);
    }
    let mut totals = 0;
    let deadline = Instant::now() + Duration::from_secs(240);
    // Each job followed as the service pushes its changes (WatchJob): progress only grows, and
    // the stream ends with the job done.
    let unknown = ingest
        .watch_job(authorized(
            v1::GetJobRequest {
                job_id: "no-such-job".into(),
            },
            None,
        ))
        .await;
    ensure!(
        matches!(&unknown, Err(status) if status.code() == tonic::Code::NotFound),
        "watching an unknown job: {unknown:?}"
    );
    for job_id in &jobs {
        let mut last_progress = 0.0f32;
        let mut updates = ingest
            .watch_job(authorized(
                v1::GetJobRequest {
                    job_id: job_id.clone(),
                },
                None,
            ))
            .await?
            .into_inner();
        loop {
            let job = tokio::time::timeout_at(deadline.into(), updates.message())
                .await
                .context("job never finished")??
                .context("the watch ended before the job did")?;
            ensure!(
                job.progress + 1e-6 >= last_progress,
                "progress went back: {job:?}"
            );
            last_progress = job.progress;
            if job.state == v1::JobState::Done as i32 {
                ensure!(job.segments_total >= 6, "64 s in 10 s segments: {job:?}");
                ensure!(
                    job.segments_done == job.segments_total && job.segments_failed == 0,
                    "{job:?}"
                );
                ensure!((job.progress - 1.0).abs() < 1e-6, "{job:?}");
                totals += job.segments_total;
                break;
            }
            ensure!(
                job.state != v1::JobState::Failed as i32,
                "job failed: {job:?}"
            );
        }
    }
    let elapsed = started.elapsed();
    // ListJobs: the three, oldest first, done (the refused sources never became jobs).
    let listed = ingest
        .list_jobs(authorized(v1::ListJobsRequest {}, None))
        .await?
        .into_inner()
        .jobs;
    ensure!(
        listed.iter().map(|job| &job.job_id).eq(jobs.iter())
            && listed
                .iter()
                .all(|job| job.state == v1::JobState::Done as i32),
        "ListJobs: {listed:?}"
    );

    // Every segment was indexed once, by one of the two workers.
    let statuses = [
        worker_status(&workers[0]).await?,
        worker_status(&workers[1]).await?,
    ];
    let indexed: u64 = statuses.iter().map(|status| status.segments_indexed).sum();
    println!(
        "{totals} segments of 3 streams in {elapsed:?}; worker 1 indexed {} (partitions {:?}), worker 2 {} (partitions {:?})",
        statuses[0].segments_indexed,
        statuses[0].partitions,
        statuses[1].segments_indexed,
        statuses[1].partitions
    );
    assert_eq!(indexed, totals, "{statuses:?}");
    assert!(statuses.iter().all(|status| status.segments_failed == 0));
    assert!(
        statuses.iter().all(|status| status.queue_depth == 0),
        "nothing left in flight: {statuses:?}"
    );
    // Each worker reports its batch size (pipeline.max_batch, not its worker count) and its
    // models: the subtitle captioner and the sentence embedder.
    assert!(
        statuses.iter().all(|status| status.max_batch_size == 2
            && status.models.len() == 2
            && status.models.contains(&"subtitles-v1".to_string())),
        "{statuses:?}"
    );
    // One point per cue and stream: nothing lost, nothing duplicated.
    assert_eq!(store.count(None).await?, (CUES.len() * 3) as u64);

    // The query node finds the moment, confined to the requested stream.
    let mut search = SearchServiceClient::new(front.channel().await?);
    let hits = search
        .search(authorized(
            v1::SearchRequest {
                query: "a cat sleeping on a couch".into(),
                stream_id: Some("cam-2".into()),
                top_k: 3,
                ..Default::default()
            },
            None,
        ))
        .await?
        .into_inner()
        .hits;
    let Some(top) = hits.first() else {
        bail!("no hits");
    };
    assert_eq!(top.stream_id, "cam-2");
    assert_eq!((top.start_ms, top.end_ms), (37_000, 41_000), "{top:?}");
    assert!(top.caption.contains("cat"), "{top:?}");
    assert!(hits.iter().all(|hit| hit.stream_id == "cam-2"));

    // What dashboards and autoscalers read: every node answers GET /metrics.
    let (status_line, _) = front.scrape().await?;
    assert!(status_line.contains(" 200 "), "{status_line}");
    assert_eq!(
        front.metric("vidx_segments_published_total").await?,
        totals as f64
    );
    assert!(front.metric("vidx_search_seconds_count").await? >= 1.0);
    for (worker, status) in workers.iter().zip(&statuses) {
        let indexed = worker.metric("vidx_segments_indexed_total").await?;
        assert_eq!(indexed, status.segments_indexed as f64);
        for stage in ["fetch", "decode", "models", "store"] {
            let series = format!("vidx_stage_seconds_count{{stage=\"{stage}\"}}");
            assert_eq!(worker.metric(&series).await?, indexed, "{series}");
        }
        for partition in &status.partitions {
            let series = format!("vidx_consumer_lag{{partition=\"{partition}\"}}");
            // The lag is refreshed from the broker in the background (a scrape serves the
            // last refresh, at most a second old while the broker answers): scrape until a
            // refresh made after the last commit shows it.
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                match worker.metric(&series).await {
                    Ok(0.0) => break,
                    Ok(lag) if Instant::now() > deadline => {
                        panic!("{series}: {lag} left, all were committed")
                    }
                    Err(error) if Instant::now() > deadline => return Err(error),
                    _ => tokio::time::sleep(Duration::from_millis(500)).await,
                }
            }
        }
        assert_eq!(worker.metric("vidx_segments_in_flight").await?, 0.0);
    }

    for worker in workers {
        worker.stop().await?;
    }
    front.stop().await
}
