//! One trace per segment from ingest to index: the spans exported by an ingest and a worker
//! role (captured in memory) share a trace id per segment, joined through the Kafka message
//! headers of a real Kafka-protocol broker.

mod common;

use std::collections::BTreeMap;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use common::{Node, WordsEmbedder, authorized, config, engine, open_store};
use opentelemetry::trace::{SpanId, TraceId};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SpanData};
use vidx_core::ports::{FrameSampler, TextEmbedder};
use vidx_media::FfmpegFrameSampler;
use vidx_proto::v1;
use vidx_proto::v1::ingest_service_client::IngestServiceClient;
use vidx_server::Roles;
use vidx_testkit::LocalBroker;

fn attribute(span: &SpanData, key: &str) -> Option<String> {
    span.attributes
        .iter()
        .find(|attribute| attribute.key.as_str() == key)
        .map(|attribute| attribute.value.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_segment_s_spans_form_one_trace_from_ingest_through_kafka_to_the_store() -> Result<()> {
    let exporter = InMemorySpanExporter::default();
    let provider = vidx_telemetry::provider_with(exporter.clone(), "vidx-test", true);
    vidx_telemetry::init_for_capture(&provider);

    let dir = tempfile::tempdir()?;
    let media = std::fs::canonicalize(dir.path())?.join("media");
    std::fs::create_dir_all(&media)?;
    let video = media.join("traced.mp4");
    std::fs::write(
        video.with_extension("srt"),
        "1\n00:00:01,000 --> 00:00:03,000\nA red car turns left.\n\n\
         2\n00:00:06,000 --> 00:00:08,000\nA dog crosses the street.\n\n",
    )?;
    let output = Command::new("ffmpeg")
        .args(["-hide_banner", "-loglevel", "error", "-y", "-f", "lavfi"])
        .args(["-i", "testsrc2=s=160x120:r=25:d=10", "-c:v", "libx264"])
        .args(["-preset", "ultrafast", "-g", "25"])
        .arg(&video)
        .output()
        .context("running the ffmpeg CLI")?;
    ensure!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );

    let broker = LocalBroker::start()?;
    let embedder: Arc<dyn TextEmbedder> = Arc::new(WordsEmbedder {
        delay: Duration::ZERO,
    });
    let store = open_store(&dir.path().join("index"), embedder.dimension()).await?;
    let sampler: Arc<dyn FrameSampler> = Arc::new(FfmpegFrameSampler::new(32));
    let mut config = config()?;
    config.media.segment_secs = 5.0;
    config.media.frames_per_segment = 2;
    config.server.ingest_roots = vec![media.display().to_string()];
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
    let ready = engine(store.clone(), embedder.clone(), sampler.clone());
    let node = Node::start(settings, async move { Ok(ready) }).await?;

    let mut ingest = IngestServiceClient::new(node.channel().await?);
    // The caller's own trace: the request carries W3C trace context.
    let caller_trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let mut submit = authorized(
        v1::SubmitRequest {
            source: video.display().to_string(),
            stream_id: Some("traced".into()),
            ..Default::default()
        },
        None,
    );
    submit.metadata_mut().insert(
        "traceparent",
        format!("00-{caller_trace}-00f067aa0ba902b7-01").parse()?,
    );
    let job_id = ingest.submit(submit).await?.into_inner().job_id;
    let deadline = Instant::now() + Duration::from_secs(120);
    let job = loop {
        let job = ingest
            .get_job(authorized(
                v1::GetJobRequest {
                    job_id: job_id.clone(),
                },
                None,
            ))
            .await?
            .into_inner();
        if job.state == v1::JobState::Done as i32 {
            break job;
        }
        ensure!(
            job.state != v1::JobState::Failed as i32,
            "job failed: {job:?}"
        );
        ensure!(Instant::now() < deadline, "job never finished: {job:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    ensure!(job.segments_total >= 2, "{job:?}");

    let _ = provider.force_flush();
    let spans = exporter.get_finished_spans()?;
    let named =
        |name: &str| -> Vec<&SpanData> { spans.iter().filter(|span| span.name == name).collect() };
    // The server span of the Submit call continues the caller's trace, and the job runs in it.
    let request = named("grpc.request")
        .into_iter()
        .find(|span| {
            attribute(span, "rpc.method").as_deref() == Some("/vidx.v1.IngestService/Submit")
        })
        .context("no grpc.request span for Submit")?;
    ensure!(request.span_context.trace_id().to_string() == caller_trace);
    ensure!(request.parent_span_id.to_string() == "00f067aa0ba902b7");
    let jobs = named("ingest.job");
    ensure!(jobs.len() == 1, "{} ingest.job spans", jobs.len());
    let job_span = jobs[0];
    ensure!(
        job_span.span_context.trace_id().to_string() == caller_trace
            && job_span.parent_span_id == request.span_context.span_id(),
        "the job span is not under the Submit request's span"
    );
    let publishes: BTreeMap<String, &SpanData> = named("segment.publish")
        .into_iter()
        .filter(|span| attribute(span, "stream_id").as_deref() == Some("traced"))
        .filter_map(|span| Some((attribute(span, "segment_seq")?, span)))
        .collect();
    ensure!(
        publishes.len() as u64 == job.segments_total,
        "{} publish spans for {} segments",
        publishes.len(),
        job.segments_total
    );
    for (seq, publish) in &publishes {
        let trace = publish.span_context.trace_id();
        ensure!(trace != TraceId::INVALID);
        ensure!(
            trace == job_span.span_context.trace_id()
                && publish.parent_span_id == job_span.span_context.span_id(),
            "segment {seq}: its publish span is not under the job span"
        );
        // The worker's span for the same segment continues the publish span's trace.
        let index = named("segment.index")
            .into_iter()
            .find(|span| {
                attribute(span, "segment_seq").as_deref() == Some(seq.as_str())
                    && attribute(span, "stream_id").as_deref() == Some("traced")
            })
            .with_context(|| format!("no segment.index span for segment {seq}"))?;
        ensure!(
            index.span_context.trace_id() == trace,
            "segment {seq}: the worker started a new trace"
        );
        ensure!(
            index.parent_span_id == publish.span_context.span_id(),
            "segment {seq}: the worker span's parent is {:?}, not the publish span",
            index.parent_span_id
        );
        ensure!(attribute(index, "points").is_some(), "{index:?}");
        // And the store write is inside it.
        let upsert = spans
            .iter()
            .find(|span| {
                span.name == "store.upsert" && span.parent_span_id == index.span_context.span_id()
            })
            .with_context(|| format!("no store.upsert under segment {seq}"))?;
        ensure!(upsert.span_context.trace_id() == trace);
        ensure!(upsert.parent_span_id != SpanId::INVALID);
    }
    // One submitted job is one trace: its segments' publish spans are children of the job
    // span, and each segment's worker and store spans hang below its publish span.
    node.shutdown.send(true)?;
    let _ = tokio::time::timeout(Duration::from_secs(30), node.task).await;
    Ok(())
}
