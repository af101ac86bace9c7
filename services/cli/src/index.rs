//! `vidx index`: an in-process node — the ingest and workers of `vidx run` over the
//! in-process queue and the embedded index. Discover the inputs, submit each as a job,
//! follow the workers, report a summary. Inputs fail independently: a bad file is reported
//! and the rest go on.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use tokio::sync::watch;
use vidx_core::format_hms_ms;
use vidx_core::ports::SegmentQueue;
use vidx_pipeline::WorkerEvent;

use crate::app::{
    AppContext, EXIT_INTERRUPTED, EXIT_OK, EXIT_PARTIAL, cli_error, spawn_signal_handler,
};
use crate::args::IndexArgs;
use crate::node::InProcessNode;

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
        return crate::remote::index(endpoint, &args.remote, args).await;
    }
    let started = Instant::now();
    let labels = crate::search::label_args(&args.labels)?;
    let config = context.config.clone();
    let (settings, spool) = crate::node::settings(&context)?;
    let (inputs, discovery_errors) =
        vidx_media::discover_inputs(&args.inputs, &settings.ingest.policy);
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

    let loaded = context.load_models().await?;
    let store = context
        .open_store(loaded.text_dimension, loaded.visual_dimension)
        .await?;
    let engine = context.engine(loaded, store);
    crate::node::warm_up(&engine, &settings).await?;

    // The in-process node: the ingest and the workers of `vidx run`, over the in-process
    // queue and the embedded index.
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let mut node = InProcessNode::start(
        (settings, spool),
        &engine,
        config.pipeline.queue_capacity,
        &shutdown_rx,
    )?;
    let (ingest, queue) = (node.ingest.clone(), node.queue.clone());
    let mut workers = std::mem::take(&mut node.workers);
    let mut events_rx = node.take_events();
    spawn_signal_handler(shutdown_tx.clone());
    // A worker that fails (the index's storage failing: never waited out here, never
    // dead-lettered) stops the others, and the run ends with its error, settling nothing.
    let supervise = tokio::spawn({
        let shutdown_tx = shutdown_tx.clone();
        async move {
            let mut failure = None;
            while let Some(joined) = workers.join_next().await {
                let result = match joined {
                    Ok(result) => result.map_err(|error| error.to_string()),
                    Err(error) => Err(error.to_string()),
                };
                if let Err(error) = result
                    && failure.is_none()
                {
                    failure = Some(error);
                    let _ = shutdown_tx.send(true);
                }
            }
            failure
        }
    });

    let progress = progress_spinner(args.common.json);
    // Jobs run one after the other, beside the workers; the bounded queue paces segmenting.
    let tenant = config.general.tenant.clone();
    let submit = tokio::spawn({
        let (ingest, queue, shutdown) = (ingest.clone(), queue.clone(), shutdown_rx.clone());
        let labels = labels.clone();
        async move {
            let mut jobs = Vec::new();
            for input in inputs {
                if *shutdown.borrow() {
                    break;
                }
                let name = input.display_name();
                let accepted = ingest.accept(&tenant, input, name.clone(), labels.clone(), false);
                match accepted {
                    Ok((job_id, work)) => {
                        work.await;
                        jobs.push((name, Ok(job_id)));
                    }
                    Err(status) => jobs.push((name, Err(status.message().to_string()))),
                }
            }
            queue.close();
            jobs
        }
    });
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
    if *shutdown_rx.borrow() {
        // The workers stopped taking segments: drain what segmenting may still be publishing
        // into the full queue, so that it sees the shutdown and ends (the next run indexes
        // those segments again; their ids make that idempotent).
        let drain = queue.clone();
        tokio::spawn(async move { while let Ok(Some(_)) = drain.receive().await {} });
    }
    let jobs = submit.await?;
    if let Some(error) = supervise.await? {
        progress.finish_and_clear();
        return Err(cli_error(vidx_core::ErrorCode::Unavailable, error));
    }
    let interrupted = *shutdown_rx.borrow();
    // What segmenting said of each input (the workers' outcomes are in the reports already).
    for (name, job) in jobs {
        let error = match job {
            Ok(job_id) => ingest.ingest_error(&job_id),
            Err(reason) => Some(reason),
        };
        if let Some(error) = error
            && !(interrupted && error == vidx_server::ingest::INTERRUPTED)
        {
            report_for(&mut reports, &name).errors.push(error);
        }
    }
    drop(node);
    if !interrupted {
        let finishing_store = engine.store.clone();
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
