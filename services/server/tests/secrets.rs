//! docs/reliability.md: credentials in a source URL (its user info and credential query
//! parameters: `token`, `X-Amz-Signature`, …) reach no log line, no exported span, no error,
//! no job or stream answer, no default stream id and no stored point. A real live camera (the
//! FFmpeg CLI on loopback) is indexed from a URL carrying all of them, with every log line
//! (JSON, debug) and every span captured.

mod common;

use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use common::{MeanColour, Node, WordsEmbedder, authorized, config};
use opentelemetry_sdk::trace::InMemorySpanExporter;
use tonic::Code;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};
use vidx_core::ports::{FrameSampler, IndexStore, TextEmbedder};
use vidx_core::{SearchFilter, VectorQuery};
use vidx_media::FfmpegFrameSampler;
use vidx_pipeline::{Models, SearchModels};
use vidx_proto::v1;
use vidx_proto::v1::ingest_service_client::IngestServiceClient;
use vidx_server::{Engine, Roles};
use vidx_testkit::{Camera, LocalBroker};

const PASSWORD: &str = "pw-Secret-0001";
const TOKEN: &str = "tok-Secret-0002";
const SIGNATURE: &str = "amz-Secret-0003";
const SIG: &str = "sig-Secret-0004";

/// Every log line written, shared with the subscriber.
#[derive(Clone, Default)]
struct Logs(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Logs {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        if let Ok(mut logs) = self.0.lock() {
            logs.extend_from_slice(bytes);
        }
        Ok(bytes.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Logs {
    fn text(&self) -> String {
        self.0
            .lock()
            .map(|logs| String::from_utf8_lossy(&logs).into_owned())
            .unwrap_or_default()
    }
}

/// The secrets found in `text`.
fn leaked(text: &str) -> Vec<&'static str> {
    [PASSWORD, TOKEN, SIGNATURE, SIG]
        .into_iter()
        .filter(|secret| text.contains(secret))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn credentials_in_a_url_reach_no_log_span_answer_or_point() -> Result<()> {
    let exporter = InMemorySpanExporter::default();
    let provider = vidx_telemetry::provider_with(exporter.clone(), "vidx-test", true);
    let logs = Logs::default();
    let writer = logs.clone();
    tracing_subscriber::registry()
        .with(vidx_telemetry::trace_layer(&provider))
        .with(
            tracing_subscriber::fmt::layer()
                .json()
                .with_writer(move || writer.clone())
                .with_filter(EnvFilter::new("debug,h2=info,hyper=info,tower=info")),
        )
        .try_init()
        .context("the test's subscriber")?;

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

    // A refused source: the error names the rule, not the secrets.
    let refused = ingest
        .submit(authorized(
            v1::SubmitRequest {
                source: format!("ftp://u:{PASSWORD}@example.com/v.mp4?token={TOKEN}"),
                stream_id: None,
                ..Default::default()
            },
            None,
        ))
        .await
        .expect_err("ftp is not allowed");
    ensure!(refused.code() == Code::InvalidArgument, "{refused:?}");
    ensure!(
        leaked(refused.message()).is_empty(),
        "{}",
        refused.message()
    );

    // The camera, with credentials in its user info and its query string, and no stream id:
    // the default one is derived from the URL.
    let source = format!(
        "tcp://viewer:{PASSWORD}@127.0.0.1:{port}?token={TOKEN}&X-Amz-Signature={SIGNATURE}\
         &sig={SIG}&quality=low"
    );
    let job_id = ingest
        .submit(authorized(
            v1::SubmitRequest {
                source,
                stream_id: None,
                ..Default::default()
            },
            None,
        ))
        .await?
        .into_inner()
        .job_id;
    let deadline = Instant::now() + Duration::from_secs(60);
    let tenant = config.general.tenant.clone();
    let stream = loop {
        let streams = ingest
            .list_streams(authorized(v1::ListStreamsRequest {}, None))
            .await?
            .into_inner()
            .streams;
        let stream = streams
            .into_iter()
            .find(|stream| stream.job_id == job_id)
            .context("the job is listed as a stream")?;
        let indexed = store
            .count(Some(SearchFilter {
                tenant: tenant.clone(),
                ..Default::default()
            }))
            .await?;
        if stream.segments >= 2 && indexed >= 2 {
            break stream;
        }
        ensure!(
            Instant::now() < deadline,
            "{stream:?}, {indexed} records indexed"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let job = ingest
        .get_job(authorized(
            v1::GetJobRequest {
                job_id: job_id.clone(),
            },
            None,
        ))
        .await?
        .into_inner();
    let answers = format!("{stream:?} {job:?}");
    ensure!(leaked(&answers).is_empty(), "answered: {answers}");
    ensure!(
        stream.stream_id.contains("token=***") && stream.source.contains("token=***"),
        "the stream is still named by its URL, redacted: {stream:?}"
    );
    ingest
        .stop_stream(authorized(v1::StopStreamRequest { job_id }, None))
        .await?;
    drop(camera);

    // The stored points (what hits are made of) carry the redacted URL only.
    let hits = store
        .search(VectorQuery {
            vector_name: vidx_core::types::vector_names::VISUAL.into(),
            vector: vec![1.0; common::DIMENSION],
            filter: SearchFilter {
                tenant: tenant.clone(),
                ..Default::default()
            },
            top_k: 1000,
            caption_words: None,
        })
        .await?;
    ensure!(hits.len() >= 2, "{} points", hits.len());
    for hit in &hits {
        let payload = format!("{:?}", hit.payload);
        ensure!(leaked(&payload).is_empty(), "stored: {payload}");
        ensure!(
            hit.payload.source_uri.contains("X-Amz-Signature=***"),
            "{payload}"
        );
    }

    node.shutdown.send(true)?;
    let _ = tokio::time::timeout(Duration::from_secs(30), node.task).await;
    let _ = provider.force_flush();
    let spans = exporter.get_finished_spans()?;
    ensure!(!spans.is_empty(), "no spans captured");
    for span in &spans {
        let text = format!("{} {:?} {:?}", span.name, span.attributes, span.events);
        ensure!(leaked(&text).is_empty(), "span: {text}");
    }
    let logs = logs.text();
    ensure!(
        logs.contains("token=***"),
        "the logs name the source (redacted): the scan below means something"
    );
    ensure!(leaked(&logs).is_empty(), "logged: {:?}", leaked(&logs));
    Ok(())
}
