//! Reindex under query load, on Qdrant Edge and on the Qdrant server: real encoded clips with
//! subtitles are indexed by one model revision through the in-process node (ingest, queue,
//! workers); a reindex by the next revision builds a new generation from the same sources
//! while a client searches every 100 ms. Not one search errs or comes back empty; after the
//! switch every hit carries the new revision, the count is one generation's, and the old
//! generation is gone. The latencies with and without the reindex are printed side by side.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use common::WordsEmbedder;
use tokio::sync::watch;
use vidx_bus::InProcessQueue;
use vidx_core::ports::{
    Captioner, FrameSampler, IndexStore, SegmentInput, SegmentQueue, TextEmbedder,
};
use vidx_core::types::vector_names;
use vidx_core::{ModelError, Moment, SearchFilter, VectorQuery};
use vidx_media::{FfmpegFrameSampler, InputSource};
use vidx_proto::v1;
use vidx_server::reindex::{ReindexSettings, Reindexer};
use vidx_server::{Engine, Ingest, Metrics, NodeSettings, start_workers};
use vidx_store::{AnyStore, EdgeStore, EdgeStoreOptions, ServerStore, ServerStoreOptions};

const TENANT: &str = "acme";

/// The subtitle captioner under another revision: what a model upgrade looks like to the
/// index (new point ids, `model_rev` in every hit).
struct Revision(&'static str);

impl Captioner for Revision {
    fn name(&self) -> &str {
        "subtitles"
    }
    fn revision(&self) -> &str {
        self.0
    }
    fn needs_frames(&self) -> bool {
        false
    }
    fn caption(&self, segment: SegmentInput<'_>) -> Result<Vec<Moment>, ModelError> {
        vidx_pipeline::captioners::SubtitleCaptioner.caption(segment)
    }
}

/// A 24 s H.264 clip (2 s GOP) with six subtitle cues in a sidecar `.srt`, all naming `word`.
fn make_clip(directory: &Path, name: &str, word: &str) -> Result<PathBuf> {
    let video = directory.join(format!("{name}.mp4"));
    let srt: String = (0..6u64)
        .map(|index| {
            let (start, end) = (index * 4_000 + 500, index * 4_000 + 3_500);
            let time = |ms: u64| format!("00:00:{:02},{:03}", ms / 1000, ms % 1000);
            format!(
                "{}\n{} --> {}\na {word} in scene {index}\n\n",
                index + 1,
                time(start),
                time(end)
            )
        })
        .collect();
    std::fs::write(video.with_extension("srt"), srt)?;
    let output = Command::new("ffmpeg")
        .args([
            "-hide_banner",
            "-loglevel",
            "error",
            "-y",
            "-f",
            "lavfi",
            "-i",
        ])
        .arg("testsrc2=s=160x120:r=25:d=24")
        .args([
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
            "-g",
            "50",
            "-pix_fmt",
            "yuv420p",
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

fn engine(store: Arc<AnyStore>, revision: &'static str) -> Engine<AnyStore> {
    let embedder: Arc<dyn TextEmbedder> = Arc::new(WordsEmbedder {
        delay: Duration::ZERO,
    });
    let sampler: Arc<dyn FrameSampler> = Arc::new(FfmpegFrameSampler::new(64));
    let mut engine = common::engine(store, embedder, sampler);
    Arc::get_mut(&mut engine.models)
        .expect("not shared yet")
        .captioners = vec![Arc::new(Revision(revision))];
    engine
}

/// The in-process node of `vidx index`: its ingest, and workers over `engine`.
struct LocalNode {
    ingest: Arc<Ingest<InProcessQueue>>,
    queue: Arc<InProcessQueue>,
    shutdown: watch::Sender<bool>,
    workers: tokio::task::JoinSet<Result<(), vidx_server::ServerError>>,
}

impl LocalNode {
    fn start(engine: &Engine<AnyStore>, spool: &Path, data_dir: &Path) -> Result<Self> {
        let config = common::config()?;
        let settings = NodeSettings::embedded(&config, spool, data_dir)?;
        let queue = Arc::new(InProcessQueue::new(8));
        let (shutdown, shutdown_rx) = watch::channel(false);
        let metrics = Arc::new(Metrics::new(Arc::new(std::sync::OnceLock::new()))?);
        let ingest = Arc::new(Ingest::new(
            settings.ingest.clone(),
            queue.clone(),
            queue.clone(),
            Arc::new(vidx_server::ingest::NoJournal),
            metrics,
            shutdown_rx.clone(),
        ));
        let (workers, mut events) =
            start_workers(queue.clone(), engine, &settings.worker, 2, &shutdown_rx);
        tokio::spawn(async move { while events.recv().await.is_some() {} });
        let follow = ingest.clone();
        tokio::spawn(async move { follow.follow_dead_letters().await });
        Ok(Self {
            ingest,
            queue,
            shutdown,
            workers,
        })
    }

    /// Index `clips` as streams of the tenant and wait until every segment is stored.
    async fn index(&self, clips: &[PathBuf]) -> Result<()> {
        let mut jobs = Vec::new();
        for clip in clips {
            let name = clip.display().to_string();
            let (job_id, work) = self
                .ingest
                .accept(
                    TENANT,
                    InputSource::File(clip.clone()),
                    name,
                    Vec::new(),
                    false,
                )
                .map_err(|status| anyhow::anyhow!("{status}"))?;
            work.await;
            jobs.push(job_id);
        }
        let deadline = Instant::now() + Duration::from_secs(120);
        for job_id in jobs {
            loop {
                let job = self.ingest.job(TENANT, &job_id).await?;
                if job.state == v1::JobState::Done as i32 {
                    break;
                }
                ensure!(
                    job.state != v1::JobState::Failed as i32,
                    "job failed: {job:?}"
                );
                ensure!(Instant::now() < deadline, "job not done: {job:?}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        Ok(())
    }

    async fn stop(mut self) {
        self.queue.close();
        let _ = self.shutdown.send(true);
        while self.workers.join_next().await.is_some() {}
    }
}

/// What a client saw searching every 100 ms.
#[derive(Debug, Default)]
struct Load {
    latencies: Vec<Duration>,
    errors: Vec<String>,
    empty: usize,
    revisions: std::collections::BTreeSet<String>,
    /// (stream, revision) of every hit.
    streams: std::collections::BTreeSet<(String, String)>,
}

impl Load {
    fn percentile(&self, fraction: f64) -> Duration {
        let mut sorted = self.latencies.clone();
        sorted.sort_unstable();
        let index = ((sorted.len() as f64 * fraction).ceil() as usize).clamp(1, sorted.len()) - 1;
        sorted[index]
    }
}

/// Search for "kite" every 100 ms until `stop`.
async fn search_load(store: Arc<AnyStore>, stop: Arc<AtomicBool>) -> Load {
    search_for(store, stop, "a kite").await
}

/// Search for `text` every 100 ms until `stop`.
async fn search_for(store: Arc<AnyStore>, stop: Arc<AtomicBool>, text: &str) -> Load {
    let embedder = WordsEmbedder {
        delay: Duration::ZERO,
    };
    let vector = embedder
        .embed(&[text.to_string()])
        .map(|mut vectors| vectors.remove(0))
        .unwrap_or_default();
    let mut load = Load::default();
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    while !stop.load(Ordering::SeqCst) {
        tick.tick().await;
        let started = Instant::now();
        let answer = store
            .search(VectorQuery {
                vector_name: vector_names::TEXT.into(),
                vector: vector.clone(),
                filter: SearchFilter {
                    tenant: TENANT.into(),
                    ..SearchFilter::default()
                },
                top_k: 10,
                caption_words: None,
            })
            .await;
        load.latencies.push(started.elapsed());
        match answer {
            Ok(hits) if hits.is_empty() => load.empty += 1,
            Ok(hits) => {
                for hit in hits {
                    load.revisions.insert(hit.payload.model_rev.clone());
                    load.streams
                        .insert((hit.payload.stream_id, hit.payload.model_rev));
                }
            }
            Err(error) => load.errors.push(error.to_string()),
        }
    }
    load
}

async fn reindex_under_query_load(store: Arc<AnyStore>, dir: &Path) -> Result<()> {
    let media = std::fs::canonicalize(dir)?.join("media");
    std::fs::create_dir_all(&media)?;
    let clips = vec![
        make_clip(&media, "kites", "kite")?,
        make_clip(&media, "boats", "boat")?,
        make_clip(&media, "trains", "train")?,
        make_clip(&media, "birds", "bird")?,
    ];
    let data_dir = dir.join("data");
    std::fs::create_dir_all(&data_dir)?;

    let first = LocalNode::start(
        &engine(store.clone(), "subtitles-a"),
        &dir.join("spool-a"),
        &data_dir,
    )?;
    first.index(&clips).await?;
    first.stop().await;
    let one_generation = store.count(None).await?;
    ensure!(one_generation >= 18, "{one_generation} points");
    let before = store.generations().await?;
    // A source gone before the reindex: skipped, its moments kept as they are.
    std::fs::remove_file(&clips[3])?;

    // Without a reindex: the same load for as long.
    let stop = Arc::new(AtomicBool::new(false));
    let quiet = tokio::spawn(search_load(store.clone(), stop.clone()));
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.store(true, Ordering::SeqCst);
    let quiet = quiet.await?;

    let second = LocalNode::start(
        &engine(store.clone(), "subtitles-b"),
        &dir.join("spool-b"),
        &data_dir,
    )?;
    let reindexer = Reindexer::new(
        second.ingest.clone(),
        store.clone(),
        ReindexSettings {
            state_file: data_dir.join("reindex.json"),
            grace: Duration::from_secs(1),
            jobs_in_flight: 2,
            settle: Duration::ZERO,
            local_files_anywhere: true,
        },
        second.shutdown.subscribe(),
    );
    let stop = Arc::new(AtomicBool::new(false));
    let busy = tokio::spawn(search_load(store.clone(), stop.clone()));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = Instant::now();
    let status = reindexer.run().await?;
    let took = started.elapsed();
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::SeqCst);
    let busy = busy.await?;
    second.stop().await;

    println!(
        "reindex of {} sources ({} segments) in {:.2} s; search p50/p99: {:.1}/{:.1} ms without a \
         reindex ({} searches), {:.1}/{:.1} ms during it ({} searches)",
        status.sources_total,
        status.segments,
        took.as_secs_f64(),
        quiet.percentile(0.5).as_secs_f64() * 1e3,
        quiet.percentile(0.99).as_secs_f64() * 1e3,
        quiet.latencies.len(),
        busy.percentile(0.5).as_secs_f64() * 1e3,
        busy.percentile(0.99).as_secs_f64() * 1e3,
        busy.latencies.len(),
    );
    assert_eq!(
        status.state,
        v1::reindex_status::State::Done as i32,
        "{status:?}"
    );
    assert_eq!(
        (
            status.sources_total,
            status.sources_done,
            status.sources_skipped
        ),
        (4, 3, 1),
        "{status:?}"
    );
    ensure!(
        status.skipped.len() == 1
            && status.skipped[0].contains("is gone")
            && status.skipped[0].contains("6 of its 6 moments kept"),
        "{:?}",
        status.skipped
    );
    ensure!(busy.errors.is_empty(), "searches failed: {:?}", busy.errors);
    assert_eq!(busy.empty, 0, "empty answers during the reindex");
    ensure!(
        busy.latencies.len() >= 5,
        "{} searches",
        busy.latencies.len()
    );
    // Both revisions were answered during the run: the old before the switch, the new after.
    ensure!(
        busy.revisions.contains("subtitles-a") && busy.revisions.contains("subtitles-b"),
        "{:?}",
        busy.revisions
    );

    // After the switch: the new revision only, one generation's points, the old one gone.
    let after = store.generations().await?;
    assert_eq!(after.current, before.current + 1);
    assert_eq!(after.building, None);
    assert_eq!(after.retired, Vec::<u32>::new());
    assert_eq!(store.count(None).await?, one_generation);
    let stop = Arc::new(AtomicBool::new(false));
    let handle = tokio::spawn(search_load(store.clone(), stop.clone()));
    tokio::time::sleep(Duration::from_millis(250)).await;
    stop.store(true, Ordering::SeqCst);
    let load = handle.await?;
    // Every stream read again answers with the new revision only; the one whose file is gone
    // with the old one only.
    for (stream, revision) in &load.streams {
        let expected = if stream.ends_with("birds.mp4") {
            "subtitles-a"
        } else {
            "subtitles-b"
        };
        assert_eq!(revision, expected, "{stream}: {:?}", load.streams);
    }
    ensure!(load.revisions.contains("subtitles-b"), "{:?}", load.streams);
    // The stream whose file is gone kept its moments, of the old revision.
    let stop = Arc::new(AtomicBool::new(false));
    let handle = tokio::spawn(search_for(store.clone(), stop.clone(), "a bird"));
    tokio::time::sleep(Duration::from_millis(250)).await;
    stop.store(true, Ordering::SeqCst);
    let birds = handle.await?;
    ensure!(
        birds.revisions.contains("subtitles-a"),
        "{:?}",
        birds.revisions
    );
    ensure!(
        !data_dir.join("reindex.json").exists(),
        "the plan is removed when done"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn qdrant_edge_reindex_under_query_load_never_fails_a_search() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let store = Arc::new(AnyStore::Edge(EdgeStore::open(
        &dir.path().join("index"),
        &[vidx_store::VectorSpec {
            name: vector_names::TEXT.into(),
            dimension: common::DIMENSION,
        }],
        EdgeStoreOptions::default(),
    )?));
    reindex_under_query_load(store, dir.path()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn qdrant_server_reindex_under_query_load_never_fails_a_search() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let (url, _server) = vidx_testkit::server_url().map_err(anyhow::Error::msg)?;
    let options = ServerStoreOptions {
        url,
        api_key: std::env::var("VIDX_TEST_QDRANT_API_KEY").ok(),
        collection: format!("vidx-reindex-{}", uuid::Uuid::new_v4()),
        timeout: Duration::from_secs(30),
    };
    let store = Arc::new(AnyStore::Server(
        ServerStore::connect(
            &options,
            &[vidx_store::VectorSpec {
                name: vector_names::TEXT.into(),
                dimension: common::DIMENSION,
            }],
        )
        .await?,
    ));
    reindex_under_query_load(store, dir.path()).await
}
