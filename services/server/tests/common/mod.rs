//! Shared by the server tests: a fake text embedder (these tests are about the services),
//! nodes on real loopback ports, and gRPC clients with or without a token.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use tokio::sync::watch;
use tonic::transport::{Channel, Endpoint};
use vidx_config::{Config, ConfigSources};
use vidx_core::ports::{FrameSampler, TextEmbedder};
use vidx_core::types::vector_names;
use vidx_core::{IndexPoint, ModelError, PointPayload, RecordKind, point_id};
use vidx_pipeline::Models;
use vidx_server::{Engine, NodeSettings, Roles, ServerError};
use vidx_store::{
    AnyStore, EdgeStore, EdgeStoreOptions, ServerStore, ServerStoreOptions, VectorSpec,
};

pub const DIMENSION: usize = 16;

/// Bag-of-words hashing: texts sharing words are close. Sleeps `delay` per call.
pub struct WordsEmbedder {
    pub delay: Duration,
}

impl TextEmbedder for WordsEmbedder {
    fn name(&self) -> &str {
        "words"
    }
    fn revision(&self) -> &str {
        "words-1"
    }
    fn dimension(&self) -> usize {
        DIMENSION
    }
    fn embed(&self, texts: &[String]) -> Result<Vec<Vec<f32>>, ModelError> {
        std::thread::sleep(self.delay);
        Ok(texts
            .iter()
            .map(|text| {
                let mut vector = [0.01f32; DIMENSION];
                for word in text.to_lowercase().split(|c: char| !c.is_alphanumeric()) {
                    if word.is_empty() {
                        continue;
                    }
                    let hash = word
                        .bytes()
                        .fold(7usize, |h, b| h.wrapping_mul(31).wrapping_add(b as usize));
                    vector[hash % DIMENSION] += 1.0;
                }
                let norm = vector.iter().map(|v| v * v).sum::<f32>().sqrt();
                vector.iter().map(|v| v / norm).collect()
            })
            .collect())
    }
}

/// The index of a test: Qdrant Edge in `directory`, or a fresh collection on the Qdrant
/// server at `VIDX_TEST_QDRANT_URL` (gRPC) when that is set, so the same tests also run the
/// distributed path against a real server.
pub async fn open_store(directory: &Path, dimension: usize) -> Result<Arc<AnyStore>> {
    open_store_with(directory, &[vector_names::TEXT], dimension).await
}

/// A store with the named vectors `names`, all of `dimension`.
pub async fn open_store_with(
    directory: &Path,
    names: &[&str],
    dimension: usize,
) -> Result<Arc<AnyStore>> {
    let spec: Vec<VectorSpec> = names
        .iter()
        .map(|name| VectorSpec {
            name: name.to_string(),
            dimension,
        })
        .collect();
    let Ok(url) = std::env::var("VIDX_TEST_QDRANT_URL") else {
        return Ok(Arc::new(AnyStore::Edge(EdgeStore::open(
            directory,
            &spec,
            EdgeStoreOptions::default(),
        )?)));
    };
    let options = ServerStoreOptions {
        url,
        api_key: std::env::var("VIDX_TEST_QDRANT_API_KEY").ok(),
        collection: format!("vidx-test-{}", uuid::Uuid::new_v4()),
        timeout: std::time::Duration::from_secs(30),
    };
    Ok(Arc::new(AnyStore::Server(
        ServerStore::connect(&options, &spec).await?,
    )))
}

/// A caption point of `tenant`'s `stream_id`, embedded with `embedder`.
pub fn point(
    embedder: &dyn TextEmbedder,
    tenant: &str,
    stream_id: &str,
    seq: u64,
    caption: &str,
) -> Result<IndexPoint> {
    let vector = embedder.embed(&[caption.to_string()])?.remove(0);
    Ok(IndexPoint {
        id: point_id(
            tenant,
            stream_id,
            seq,
            seq * 10_000,
            RecordKind::Caption,
            0,
            "test",
        ),
        vectors: BTreeMap::from([(vector_names::TEXT.to_string(), vector)]),
        payload: PointPayload {
            tenant: tenant.into(),
            stream_id: stream_id.into(),
            segment_seq: seq,
            kind: RecordKind::Caption,
            start_ms: seq * 10_000,
            end_ms: seq * 10_000 + 5_000,
            caption: caption.into(),
            model_rev: "test".into(),
            source_uri: stream_id.into(),
            region: None,
            thumbnail: None,
            indexed_at_ms: 0,
            labels: Vec::new(),
        },
        thumbnail: None,
    })
}

/// The default configuration, as a node would read it.
pub fn config() -> Result<Config> {
    Ok(Config::load(&ConfigSources::default())?)
}

pub fn settings(config: &Config, roles: Roles, data_dir: &Path) -> Result<NodeSettings> {
    Ok(NodeSettings::from_config(config, roles, data_dir)?)
}

/// An engine over `store` with `embedder` (subtitles are the only captioner).
pub fn engine(
    store: Arc<AnyStore>,
    embedder: Arc<dyn TextEmbedder>,
    sampler: Arc<dyn FrameSampler>,
) -> Engine<AnyStore> {
    Engine {
        store,
        search: vidx_pipeline::SearchModels::caption_only(embedder.clone()),
        models: Arc::new(Models {
            captioners: vec![Arc::new(vidx_pipeline::captioners::SubtitleCaptioner)],
            text_embedder: embedder,
            visual_embedder: None,
            regions: None,
        }),
        sampler,
    }
}

/// A running node: its address, and the switch that stops it.
pub struct Node {
    pub address: SocketAddr,
    /// Where `GET /metrics` answers.
    pub metrics_address: SocketAddr,
    pub shutdown: watch::Sender<bool>,
    pub task: tokio::task::JoinHandle<Result<(), ServerError>>,
}

impl Node {
    pub async fn start<F>(settings: NodeSettings, engine: F) -> Result<Node>
    where
        F: std::future::Future<Output = Result<Engine<AnyStore>, ServerError>> + Send + 'static,
    {
        Self::start_listening(settings, None, engine).await
    }

    /// [`start`](Self::start), with the web UI and HTTP API on `http_listener`.
    pub async fn start_with_http<F>(
        settings: NodeSettings,
        http_listener: tokio::net::TcpListener,
        engine: F,
    ) -> Result<Node>
    where
        F: std::future::Future<Output = Result<Engine<AnyStore>, ServerError>> + Send + 'static,
    {
        Self::start_listening(settings, Some(http_listener), engine).await
    }

    /// The node on loopback ports of its own (gRPC and metrics), and `http` if given.
    async fn start_listening<F>(
        settings: NodeSettings,
        http: Option<tokio::net::TcpListener>,
        engine: F,
    ) -> Result<Node>
    where
        F: std::future::Future<Output = Result<Engine<AnyStore>, ServerError>> + Send + 'static,
    {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let address = listener.local_addr()?;
        let metrics_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let metrics_address = metrics_listener.local_addr()?;
        let (shutdown, receiver) = watch::channel(false);
        let task = tokio::spawn(vidx_server::serve_all(
            settings,
            vidx_server::Listeners {
                grpc: listener,
                metrics: Some(metrics_listener),
                http,
            },
            engine,
            receiver,
        ));
        Ok(Node {
            address,
            metrics_address,
            shutdown,
            task,
        })
    }

    pub async fn channel(&self) -> Result<Channel> {
        let endpoint = Endpoint::from_shared(format!("http://{}", self.address))?
            .timeout(Duration::from_secs(30));
        // The server may still be starting (Kafka, topics): retry the connection briefly.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            match endpoint.connect().await {
                Ok(channel) => return Ok(channel),
                Err(error) if tokio::time::Instant::now() > deadline => {
                    return Err(error).context("connecting to the node");
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }

    /// `GET /metrics` over plain HTTP/1.1: the status line and the body.
    pub async fn scrape(&self) -> Result<(String, String)> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut stream = tokio::net::TcpStream::connect(self.metrics_address).await?;
        stream
            .write_all(b"GET /metrics HTTP/1.1\r\nHost: vidx\r\nConnection: close\r\n\r\n")
            .await?;
        let mut response = String::new();
        stream.read_to_string(&mut response).await?;
        let (head, body) = response
            .split_once("\r\n\r\n")
            .ok_or_else(|| anyhow::anyhow!("no HTTP response: {response}"))?;
        let status = head.lines().next().unwrap_or_default().to_string();
        Ok((status, body.to_string()))
    }

    /// The value of the series `name` (with its labels, as exposed) in a scrape.
    pub async fn metric(&self, series: &str) -> Result<f64> {
        let (_, body) = self.scrape().await?;
        body.lines()
            .find_map(|line| {
                line.strip_prefix(series)
                    .and_then(|rest| rest.strip_prefix(' '))
                    .and_then(|value| value.trim().parse().ok())
            })
            .ok_or_else(|| anyhow::anyhow!("no series {series} in:\n{body}"))
    }

    pub async fn stop(self) -> Result<()> {
        let _ = self.shutdown.send(true);
        tokio::time::timeout(Duration::from_secs(40), self.task)
            .await
            .context("node did not stop")???;
        Ok(())
    }
}

/// A request with `authorization: Bearer <token>` when a token is given.
pub fn authorized<T>(message: T, token: Option<&str>) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    if let Some(token) = token {
        let value = format!("Bearer {token}")
            .parse()
            .expect("ascii token in tests");
        request.metadata_mut().insert("authorization", value);
    }
    request
}

/// A model stand-in: frames become vectors of their first pixel's colour (so every segment
/// yields frame and segment records to count, without a caption model).
pub struct MeanColour;

impl vidx_core::ports::VisualEmbedder for MeanColour {
    fn name(&self) -> &str {
        "mean-colour"
    }
    fn revision(&self) -> &str {
        "mean-colour-1"
    }
    fn dimension(&self) -> usize {
        DIMENSION
    }
    fn embed_frames(&self, frames: &[vidx_core::Frame]) -> Result<Vec<Vec<f32>>, ModelError> {
        Ok(frames
            .iter()
            .map(|frame| {
                let mut vector = vec![0.1f32; DIMENSION];
                for (index, value) in frame.rgb.iter().take(3).enumerate() {
                    vector[index] += f32::from(*value) / 255.0;
                }
                vector
            })
            .collect())
    }
}
