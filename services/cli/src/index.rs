//! `vidx index`: discover inputs, segment them into the in-process queue, run the workers,
//! report a summary. Inputs fail independently: a bad file is reported and the rest go on.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::sync::Arc;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use tokio::sync::{mpsc, watch};
use vidx_blob::ObjectBlobStore;
use vidx_bus::InProcessQueue;
use vidx_core::format_hms_ms;
use vidx_core::ports::{BlobStore, Captioner, FrameSampler, SegmentQueue, VisualEmbedder};
use vidx_core::regions::RegionSettings;
use vidx_media::{FfmpegFrameSampler, InputSource, SegmentOptions, UrlPolicy};
use vidx_pipeline::captioners::SubtitleCaptioner;
use vidx_pipeline::{Models, WorkerEvent, WorkerOptions, run_worker};

use crate::app::{AppContext, EXIT_INTERRUPTED, EXIT_OK, EXIT_PARTIAL, spawn_signal_handler};
use crate::args::IndexArgs;

#[derive(Debug, Default, Serialize)]
struct InputReport {
    input: String,
    segments: u64,
    segments_failed: u64,
    moments: u64,
    media_ms: u64,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    errors: Vec<String>,
}

#[derive(Debug, Serialize)]
struct Summary {
    data_dir: String,
    inputs: usize,
    inputs_failed: usize,
    segments: u64,
    segments_failed: u64,
    moments: u64,
    media_ms: u64,
    wall_ms: u64,
    realtime_factor: f64,
    interrupted: bool,
    failures: Vec<Failure>,
}

#[derive(Debug, Serialize)]
struct Failure {
    input: String,
    error: String,
}

pub async fn run(context: AppContext, args: &IndexArgs) -> anyhow::Result<u8> {
    if let Some(endpoint) = &args.remote.endpoint {
        return crate::remote::index(endpoint, args.remote.token.as_deref(), args).await;
    }
    let started = Instant::now();
    let config = context.config.clone();
    let policy = UrlPolicy {
        allowed_schemes: config
            .media
            .allowed_url_schemes
            .iter()
            .map(|s| s.to_ascii_lowercase())
            .collect(),
        allow_private_hosts: config.media.allow_private_hosts,
    };
    let (inputs, discovery_errors) = vidx_media::discover_inputs(&args.inputs, &policy);
    let mut reports: BTreeMap<String, InputReport> = BTreeMap::new();
    for error in &discovery_errors {
        report_for(&mut reports, error.input())
            .errors
            .push(error.to_string());
    }
    for input in &inputs {
        report_for(&mut reports, &input.display_name());
    }

    if inputs.is_empty() {
        // Nothing indexable: report without loading models or opening the index.
        let summary = summarize(&context, &reports, 0, 0, started, false);
        print_summary(&summary, args.common.json)?;
        return Ok(EXIT_PARTIAL);
    }

    let text_embedder = context.text_embedder().await?;
    let plm = context.plm_captioner().await?;
    let visual = context.visual_embedder().await?;
    let store = Arc::new(
        context
            .open_store(
                text_embedder.dimension(),
                visual.as_ref().map(|visual| visual.dimension()),
            )
            .await?,
    );

    let queue = Arc::new(InProcessQueue::new(config.pipeline.queue_capacity));
    let sampler: Arc<dyn FrameSampler> = Arc::new(FfmpegFrameSampler::new(config.media.frame_size));
    let models = Arc::new(Models {
        captioners: plm
            .into_iter()
            .chain([Arc::new(SubtitleCaptioner) as Arc<dyn Captioner>])
            .collect(),
        text_embedder,
        regions: (visual.is_some() && config.models.regions).then(RegionSettings::default),
        visual_embedder: visual.map(|visual| visual as Arc<dyn VisualEmbedder>),
    });
    // Segments that do not travel inline wait in the spool; the workers read only from it.
    let spool = tempfile::Builder::new().prefix("vidx-spool-").tempdir()?;
    let blobs: Arc<dyn BlobStore> = Arc::new(ObjectBlobStore::open(
        &spool.path().display().to_string(),
        &Default::default(),
    )?);
    let worker_options = WorkerOptions {
        frames_per_segment: config.media.frames_per_segment,
        max_attempts: config.pipeline.max_attempts,
        retry_backoff: Duration::from_millis(config.pipeline.retry_backoff_ms),
        max_backoff: Duration::from_secs(30),
        // The embedded store is a local directory: an error there will not heal by waiting
        // long, so the bounded retries apply.
        store_outage_limit: Some(Duration::ZERO),
        blobs: Some(blobs),
        max_batch: config.pipeline.max_batch,
        max_batch_wait: Duration::from_millis(config.pipeline.max_batch_wait_ms),
    };
    if worker_options.max_batch > 1 {
        // A batch that does not fit the device fails here, before any segment is taken.
        let (warm_models, size) = (models.clone(), config.media.frame_size);
        let (batch, frames) = (worker_options.max_batch, worker_options.frames_per_segment);
        tokio::task::spawn_blocking(move || warm_models.warm_up(batch, frames, (size, size)))
            .await??;
    }
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let (events_tx, mut events_rx) = mpsc::unbounded_channel();
    let mut workers = Vec::new();
    for _ in 0..config.pipeline.workers {
        workers.push(tokio::spawn(run_worker(
            queue.clone(),
            store.clone(),
            sampler.clone(),
            models.clone(),
            worker_options.clone(),
            events_tx.clone(),
            shutdown_rx.clone(),
        )));
    }
    drop(events_tx);
    spawn_signal_handler(shutdown_tx.clone());

    let progress = progress_spinner(args.common.json);
    let segment_options = SegmentOptions {
        max_pixels: config.media.max_pixels,
        ..SegmentOptions::new(
            (config.media.segment_secs * 1000.0) as u64,
            spool.path().to_path_buf(),
        )
    };

    // Ingest runs beside the workers; events are folded into the reports as they arrive.
    let ingest = tokio::spawn(ingest_inputs(
        inputs,
        segment_options,
        queue.clone(),
        config.general.tenant.clone(),
        config.media.inline_max_bytes,
        shutdown_rx.clone(),
    ));
    let mut indexed = 0u64;
    let mut moments = 0u64;
    while let Some(event) = events_rx.recv().await {
        match event {
            WorkerEvent::Indexed {
                stream_id,
                points,
                media_ms,
                ..
            } => {
                let report = report_for(&mut reports, &stream_id);
                report.segments += 1;
                report.moments += points as u64;
                report.media_ms += media_ms;
                indexed += 1;
                moments += points as u64;
            }
            WorkerEvent::Failed {
                stream_id,
                segment_seq,
                attempts,
                error,
                ..
            } => {
                let report = report_for(&mut reports, &stream_id);
                report.segments_failed += 1;
                report.errors.push(format!(
                    "segment {segment_seq} failed after {attempts} attempt(s): {error}"
                ));
            }
        }
        progress.set_message(format!("{indexed} segments, {moments} moments"));
    }
    let ingest_results = ingest.await?;
    for (name, error) in ingest_results.errors {
        report_for(&mut reports, &name).errors.push(error);
    }
    for worker in workers {
        worker.await??;
    }
    let interrupted = *shutdown_rx.borrow();
    if !interrupted {
        let finishing_store = store.clone();
        tokio::task::spawn_blocking(move || finishing_store.finish_blocking()).await??;
    }
    progress.finish_and_clear();

    let summary = summarize(&context, &reports, indexed, moments, started, interrupted);
    print_summary(&summary, args.common.json)?;
    Ok(if interrupted {
        EXIT_INTERRUPTED
    } else if summary.inputs_failed > 0 {
        EXIT_PARTIAL
    } else {
        EXIT_OK
    })
}

fn summarize(
    context: &AppContext,
    reports: &BTreeMap<String, InputReport>,
    segments: u64,
    moments: u64,
    started: Instant,
    interrupted: bool,
) -> Summary {
    let wall_ms = started.elapsed().as_millis() as u64;
    let media_ms: u64 = reports.values().map(|report| report.media_ms).sum();
    let failures = reports
        .values()
        .flat_map(|report| {
            report.errors.iter().map(|error| Failure {
                input: report.input.clone(),
                error: error.clone(),
            })
        })
        .collect();
    Summary {
        data_dir: context.data_dir.display().to_string(),
        inputs: reports.len(),
        inputs_failed: reports
            .values()
            .filter(|report| !report.errors.is_empty())
            .count(),
        segments,
        segments_failed: reports.values().map(|report| report.segments_failed).sum(),
        moments,
        media_ms,
        wall_ms,
        realtime_factor: if wall_ms == 0 {
            0.0
        } else {
            media_ms as f64 / wall_ms as f64
        },
        interrupted,
        failures,
    }
}

fn report_for<'a>(
    reports: &'a mut BTreeMap<String, InputReport>,
    name: &str,
) -> &'a mut InputReport {
    reports
        .entry(name.to_string())
        .or_insert_with(|| InputReport {
            input: name.to_string(),
            ..Default::default()
        })
}

#[derive(Debug, Default)]
struct IngestResults {
    errors: Vec<(String, String)>,
}

/// Segment each input in turn (blocking ffmpeg work on a blocking thread) and publish its
/// chunks; the queue's bound throttles segmenting to the workers' pace.
async fn ingest_inputs(
    inputs: Vec<InputSource>,
    options: SegmentOptions,
    queue: Arc<InProcessQueue>,
    tenant: String,
    inline_max_bytes: u64,
    shutdown: watch::Receiver<bool>,
) -> IngestResults {
    let mut results = IngestResults::default();
    let runtime = tokio::runtime::Handle::current();
    for input in inputs {
        if *shutdown.borrow() {
            break;
        }
        let name = input.display_name();
        let (queue, tenant, options, shutdown, runtime) = (
            queue.clone(),
            tenant.clone(),
            options.clone(),
            shutdown.clone(),
            runtime.clone(),
        );
        let stream_id = name.clone();
        let outcome = tokio::task::spawn_blocking(move || {
            vidx_media::segment_source(&input, &options, |chunk| {
                if *shutdown.borrow() {
                    return false;
                }
                let task = match chunk.into_task(&tenant, &stream_id, &stream_id, inline_max_bytes)
                {
                    Ok(task) => task,
                    Err(error) => {
                        tracing::warn!(stream_id, %error, "cannot read segment chunk");
                        return false;
                    }
                };
                // A blocking thread may wait on the runtime; the bounded queue is the backpressure.
                runtime.block_on(queue.publish(task)).is_ok()
            })
        })
        .await;
        match outcome {
            Ok(Ok(summary)) => {
                tracing::info!(input = %name, segments = summary.segments, cues = summary.subtitle_cues, "segmented");
                if summary.subtitle_cues == 0 {
                    tracing::warn!(input = %name, "no subtitles found: without a captioning model this input yields no moments");
                }
            }
            Ok(Err(error)) => results.errors.push((name, error.to_string())),
            Err(error) => results
                .errors
                .push((name, format!("segmenting task failed: {error}"))),
        }
    }
    queue.close();
    results
}

/// A spinner with the running counts: the number of segments is unknown until segmenting ends.
fn progress_spinner(json: bool) -> ProgressBar {
    if json || !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new_spinner();
    if let Ok(style) = ProgressStyle::with_template("{spinner} [{elapsed_precise}] {msg}") {
        bar.set_style(style);
    }
    bar.enable_steady_tick(Duration::from_millis(120));
    bar
}

fn print_summary(summary: &Summary, json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string(summary)?);
        return Ok(());
    }
    let ok_inputs = summary.inputs - summary.inputs_failed;
    println!(
        "indexed {ok_inputs} of {} input(s) in {:.1} s{}",
        summary.inputs,
        summary.wall_ms as f64 / 1000.0,
        if summary.interrupted {
            " (interrupted)"
        } else {
            ""
        }
    );
    println!(
        "  segments: {} indexed, {} failed",
        summary.segments, summary.segments_failed
    );
    println!("  moments:  {}", summary.moments);
    println!(
        "  media:    {} ({:.1}x real time)",
        format_hms_ms(summary.media_ms),
        summary.realtime_factor
    );
    println!("  index:    {}", summary.data_dir);
    if !summary.failures.is_empty() {
        println!("failures:");
        for failure in &summary.failures {
            println!("  {}: {}", failure.input, failure.error);
        }
    }
    Ok(())
}
