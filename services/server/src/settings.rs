//! The configuration mapped once into typed runtime settings: the node's ([`NodeSettings`]:
//! roles, limits, Kafka, ingest, workers), the models' ([`ModelSettings`]) and the store's
//! ([`StoreSettings`]). Nothing downstream reads `vidx_config::Config` strings again.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use vidx_blob::ObjectBlobStore;
use vidx_bus::KafkaSettings;
use vidx_config::{Config, KafkaConfig, ModelsConfig, TokenConfig};
use vidx_core::ports::BlobStore;
use vidx_media::UrlPolicy;
use vidx_model::captioner::CaptionSettings;
use vidx_model::{DTypeChoice, DeviceChoice, HubOptions};
use vidx_pipeline::{DependencyHealth, WorkerOptions};
use vidx_store::{EdgeStoreOptions, ServerStoreOptions};

use crate::ingest::TenantLimits;
use crate::{INLINE_HEADROOM_BYTES, IngestSettings, Roles, ServerError};

/// The files of `server.tls`, `None` for plaintext (the configuration checked that cert and
/// key come together).
fn tls_files(tls: &vidx_config::TlsConfig) -> Option<crate::tls::TlsFiles> {
    if tls.cert.is_empty() {
        return None;
    }
    Some(crate::tls::TlsFiles {
        cert: PathBuf::from(&tls.cert),
        key: PathBuf::from(&tls.key),
        client_ca: (!tls.client_ca.is_empty()).then(|| PathBuf::from(&tls.client_ca)),
    })
}

/// Everything a node needs besides its engine.
#[derive(Debug, Clone)]
pub struct NodeSettings {
    pub roles: Roles,
    pub worker_id: String,
    /// The tenant of every request when no tokens are configured.
    pub default_tenant: String,
    pub tokens: Vec<TokenConfig>,
    pub max_request_bytes: usize,
    pub max_concurrent_requests: usize,
    /// Standing queries one tenant holds open at once.
    pub max_subscriptions_per_tenant: usize,
    pub request_timeout: Duration,
    pub kafka: KafkaSettings,
    pub ingest: IngestSettings,
    pub worker: WorkerOptions,
    /// Segments one worker node processes at once.
    pub concurrency: usize,
    /// The side of the frames the sampler produces (the warm-up batch uses it).
    pub frame_size: u32,
    /// `server.tls`: TLS on the gRPC, HTTP and metrics listeners.
    pub tls: Option<crate::tls::TlsFiles>,
    /// The cache of clips a query node cuts for its HTTP API (`<data-dir>/clips`).
    pub clip_dir: PathBuf,
    /// Alerts the query role follows (`server.alerts`), and where their cursors are kept
    /// (`<data-dir>/alerts`).
    pub alerts: Vec<crate::alerts::Alert>,
    pub alert_dir: PathBuf,
    /// `store.retention`, and the tenants it applies to (the query role sweeps them).
    pub retention: crate::lifecycle::StoreRetention,
    pub tenants: Vec<String>,
    /// Where a reindex keeps its plan (`<data-dir>/reindex.json`), and how long the old
    /// generation stays after its switch (`store.reindex_grace_secs`).
    pub reindex_state: PathBuf,
    pub reindex_grace: Duration,
}

impl NodeSettings {
    /// Settings from the configuration; `data_dir` holds the default blob directory.
    pub fn from_config(
        config: &Config,
        roles: Roles,
        data_dir: &Path,
    ) -> Result<Self, ServerError> {
        let mut roots = Vec::new();
        for root in &config.server.ingest_roots {
            roots.push(
                std::fs::canonicalize(root).map_err(|error| ServerError::Config {
                    key: "server.ingest_roots".into(),
                    reason: format!("{root}: {error}"),
                })?,
            );
        }
        let blob_location = if config.server.blob_store.is_empty() {
            data_dir.join("blobs").display().to_string()
        } else {
            config.server.blob_store.clone()
        };
        let blobs: Arc<dyn BlobStore> = Arc::new(
            ObjectBlobStore::open(&blob_location, &config.server.blob_options).map_err(
                |error| ServerError::Config {
                    key: "server.blob_store".into(),
                    reason: error.to_string(),
                },
            )?,
        );
        Self::map(config, roles, roots, blobs, data_dir.join("spool"))
    }

    /// The settings of an embedded node (`vidx index`): the ingest and worker roles of
    /// [`from_config`](Self::from_config), mapped alike, except that segments are cut into
    /// `spool` and handed to the workers as files in a blob store there (moved, never copied
    /// or held in memory), and that a failing local store is not waited out: the run stops
    /// with its error (an error on a local directory does not heal by waiting), settling
    /// nothing, so that the next run redoes the segments. The server
    /// keys (`server.ingest_roots`, `server.blob_store`) do not apply.
    pub fn embedded(config: &Config, spool: &Path, data_dir: &Path) -> Result<Self, ServerError> {
        let blobs: Arc<dyn BlobStore> = Arc::new(
            ObjectBlobStore::open(
                &spool.join("blobs").display().to_string(),
                &Default::default(),
            )
            .map_err(|error| ServerError::Config {
                key: "general.data_dir".into(),
                reason: error.to_string(),
            })?,
        );
        let roles = Roles {
            ingest: true,
            worker: true,
            query: false,
        };
        let mut settings = Self::map(config, roles, Vec::new(), blobs, spool.join("chunks"))?;
        settings.ingest.inline_max_bytes = 0;
        // One user and one run: every input is a job the run reports on.
        settings.ingest.limits = TenantLimits {
            jobs: usize::MAX,
            running_jobs: usize::MAX,
            live_streams: usize::MAX,
        };
        settings.worker.outage_limit = Some(Duration::ZERO);
        // Thumbnails and live footage stay with the index, under the data dir (`thumbnails/`,
        // `footage/`).
        let media: Arc<dyn BlobStore> = Arc::new(
            ObjectBlobStore::open(&data_dir.display().to_string(), &Default::default()).map_err(
                |error| ServerError::Config {
                    key: "general.data_dir".into(),
                    reason: error.to_string(),
                },
            )?,
        );
        settings.worker.thumbnails = Some(media.clone());
        settings.ingest.footage = Some(media);
        // Beside the index it rebuilds.
        settings.reindex_state = data_dir.join("reindex.json");
        Ok(settings)
    }

    /// The typed settings of `config`, given what needs the filesystem (the canonical ingest
    /// roots, the opened blob store, the spool directory).
    fn map(
        config: &Config,
        roles: Roles,
        roots: Vec<std::path::PathBuf>,
        blobs: Arc<dyn BlobStore>,
        spool_dir: std::path::PathBuf,
    ) -> Result<Self, ServerError> {
        let kafka = &config.kafka;
        Ok(Self {
            roles,
            worker_id: format!(
                "{}-{}",
                std::env::var("HOSTNAME").unwrap_or_else(|_| "vidx".into()),
                std::process::id()
            ),
            default_tenant: config.general.tenant.clone(),
            tokens: config.server.tokens.clone(),
            tls: tls_files(&config.server.tls),
            clip_dir: spool_dir
                .parent()
                .map_or_else(|| spool_dir.join("clips"), |parent| parent.join("clips")),
            alerts: alerts(config),
            retention: crate::lifecycle::StoreRetention::from_config(&config.store.retention),
            tenants: crate::lifecycle::known_tenants(config),
            reindex_state: spool_dir.parent().map_or_else(
                || spool_dir.join("reindex.json"),
                |parent| parent.join("reindex.json"),
            ),
            reindex_grace: Duration::from_secs(config.store.reindex_grace_secs),
            alert_dir: spool_dir
                .parent()
                .map_or_else(|| spool_dir.join("alerts"), |parent| parent.join("alerts")),
            max_request_bytes: config.server.max_request_bytes,
            max_concurrent_requests: config.server.max_concurrent_requests,
            max_subscriptions_per_tenant: config.server.max_subscriptions_per_tenant,
            request_timeout: Duration::from_millis(config.server.request_timeout_ms),
            kafka: kafka_settings(kafka),
            ingest: IngestSettings {
                roots,
                policy: url_policy(config)?,
                segment_ms: (config.media.segment_secs * 1000.0) as u64,
                max_segment_ms: (config.media.max_segment_secs.max(config.media.segment_secs)
                    * 1000.0) as u64,
                max_pixels: config.media.max_pixels,
                // A segment travels inline only if its message fits the brokers' limit (with
                // room for the rest of the message: subtitles, ids); others go by blob.
                inline_max_bytes: config.media.inline_max_bytes.min(
                    kafka
                        .max_message_bytes
                        .saturating_sub(INLINE_HEADROOM_BYTES),
                ),
                spool_dir,
                blobs: blobs.clone(),
                limits: TenantLimits {
                    jobs: config.server.max_jobs_per_tenant,
                    running_jobs: config.server.max_running_jobs_per_tenant,
                    live_streams: config.server.max_live_streams_per_tenant,
                },
                live_stall_timeout: Duration::from_millis(config.media.live_stall_timeout_ms),
                // Live footage beside the thumbnails, where the query nodes read it.
                footage: Some(blobs.clone()),
                retention: crate::footage::Retention {
                    max_age: Duration::from_secs(config.media.retention.max_age_secs),
                    max_bytes: config.media.retention.max_bytes,
                },
            },
            worker: WorkerOptions {
                frames_per_segment: config.media.frames_per_segment,
                max_attempts: config.pipeline.max_attempts,
                retry_backoff: Duration::from_millis(config.pipeline.retry_backoff_ms),
                max_backoff: Duration::from_secs(30),
                // A down Qdrant is waited out: no commit, no dead letters, until it is back.
                outage_limit: None,
                segment_timeout: (config.pipeline.segment_timeout_ms > 0)
                    .then(|| Duration::from_millis(config.pipeline.segment_timeout_ms)),
                health: Arc::new(DependencyHealth::new()),
                // Thumbnails beside the segment blobs, where every query node reads them.
                thumbnails: Some(blobs.clone()),
                blobs: Some(blobs),
                max_batch: config.pipeline.max_batch,
                max_batch_wait: Duration::from_millis(config.pipeline.max_batch_wait_ms),
                shutdown_grace: Duration::from_millis(config.pipeline.shutdown_grace_ms),
            },
            concurrency: config.pipeline.workers,
            frame_size: config.media.frame_size,
        })
    }
}

/// The alerts of `server.alerts`, typed (each of the default tenant unless it names one).
pub fn alerts(config: &Config) -> Vec<crate::alerts::Alert> {
    config
        .server
        .alerts
        .iter()
        .map(|alert| crate::alerts::Alert {
            name: alert.name.clone(),
            tenant: if alert.tenant.is_empty() {
                config.general.tenant.clone()
            } else {
                alert.tenant.clone()
            },
            query: alert.query.clone(),
            stream_id: (!alert.stream_id.is_empty()).then(|| alert.stream_id.clone()),
            threshold: alert.threshold,
            url: alert.url.clone(),
            bearer_token: (!alert.bearer_token.is_empty()).then(|| alert.bearer_token.clone()),
        })
        .collect()
}

/// The URL rules of `media.*` (schemes, private addresses, allowed networks), as the ingest
/// and the clip cutter apply them.
pub fn url_policy(config: &Config) -> Result<UrlPolicy, ServerError> {
    Ok(UrlPolicy {
        allowed_schemes: config
            .media
            .allowed_url_schemes
            .iter()
            .map(|scheme| scheme.to_ascii_lowercase())
            .collect(),
        allow_private_hosts: config.media.allow_private_hosts,
        allowed_networks: config
            .media
            .allowed_networks
            .iter()
            .map(|network| {
                network.parse().map_err(|reason| ServerError::Config {
                    key: "media.allowed_networks".into(),
                    reason,
                })
            })
            .collect::<Result<_, _>>()?,
    })
}

/// The Kafka settings of `kafka.*`: durations and sizes typed once, for every role.
pub fn kafka_settings(kafka: &KafkaConfig) -> KafkaSettings {
    KafkaSettings {
        brokers: kafka.brokers.clone(),
        topic: kafka.topic.clone(),
        dead_letter_topic: kafka.dead_letter_topic.clone(),
        jobs_topic: kafka.jobs_topic.clone(),
        group_id: kafka.group_id.clone(),
        client_id: kafka.client_id.clone(),
        partitions: kafka.partitions,
        replication: kafka.replication,
        session_timeout: Duration::from_millis(kafka.session_timeout_ms),
        max_poll_interval: Duration::from_millis(kafka.max_poll_interval_ms),
        delivery_timeout: Duration::from_millis(kafka.delivery_timeout_ms),
        max_message_bytes: kafka.max_message_bytes,
        group_instance_id: (!kafka.group_instance_id.is_empty())
            .then(|| kafka.group_instance_id.clone()),
        assignment_strategy: kafka.assignment_strategy.clone(),
        properties: kafka.properties.clone(),
    }
}

/// A model to load: its Hugging Face id (or the local directory when no id is set) and the
/// hub options to resolve it with.
#[derive(Debug, Clone)]
pub struct ModelSource {
    /// The id a loader resolves and names in logs and point revisions.
    pub id: String,
    pub hub: HubOptions,
}

/// The models of `models.*`, typed once: which to load, where, on what device and in what
/// dtype.
#[derive(Debug, Clone)]
pub struct ModelSettings {
    pub device: DeviceChoice,
    pub dtype: DTypeChoice,
    /// The sentence embedder of captions, subtitles and queries.
    pub text_embedder: ModelSource,
    /// PerceptionLM and how it captions, when one is configured.
    pub captioner: Option<(ModelSource, CaptionSettings)>,
    /// PE-Core, when one is configured.
    pub visual_embedder: Option<ModelSource>,
    /// Regions (with a visual embedder).
    pub regions: bool,
    /// Region tracks per segment that get PLM's region caption.
    pub region_captions: usize,
    /// Search: neighbouring hits of one stream closer than this merge.
    pub merge_gap_ms: u64,
}

impl ModelSettings {
    pub fn from_config(models: &ModelsConfig) -> Result<Self, ServerError> {
        let invalid = |key: &str, error: vidx_core::ModelError| ServerError::Config {
            key: key.into(),
            reason: error.to_string(),
        };
        let hub = |local_dir: &str| HubOptions {
            local_dir: (!local_dir.is_empty()).then(|| PathBuf::from(local_dir)),
            offline: models.offline,
            token: (!models.hf_token.is_empty()).then(|| models.hf_token.clone()),
            pypi_package: None,
        };
        // A model named by id, or else by its local directory; `None` when neither is set.
        let source = |id: &str, local_dir: &str| {
            (!id.is_empty() || !local_dir.is_empty()).then(|| ModelSource {
                id: if id.is_empty() { local_dir } else { id }.to_string(),
                hub: hub(local_dir),
            })
        };
        Ok(Self {
            device: models
                .device
                .parse()
                .map_err(|error| invalid("models.device", error))?,
            dtype: models
                .dtype
                .parse()
                .map_err(|error| invalid("models.dtype", error))?,
            text_embedder: ModelSource {
                id: models.text_embedder.clone(),
                hub: hub(&models.text_embedder_dir),
            },
            captioner: source(&models.captioner, &models.captioner_dir).map(|source| {
                let settings = CaptionSettings {
                    prompt: if models.caption_prompt.is_empty() {
                        vidx_model::captioner::DENSE_CAPTION_PROMPT.into()
                    } else {
                        models.caption_prompt.clone()
                    },
                    max_new_tokens: models.max_new_tokens,
                    prefill_chunk: models.prefill_chunk,
                    ..CaptionSettings::default()
                };
                (source, settings)
            }),
            visual_embedder: source(&models.visual_embedder, &models.visual_embedder_dir),
            regions: models.regions,
            region_captions: models.region_captions,
            merge_gap_ms: models.merge_gap_ms,
        })
    }
}

/// The store of `store.*`.
#[derive(Debug, Clone)]
pub struct StoreSettings {
    /// The embedded index, under the data directory: what `vidx index` and the local commands
    /// use, and `vidx run` unless `store.kind = "qdrant"`.
    pub edge_path: PathBuf,
    pub edge: EdgeStoreOptions,
    /// The Qdrant server collection of `store.kind = "qdrant"`.
    pub server: Option<ServerStoreOptions>,
}

impl StoreSettings {
    /// The store of `config`; the embedded index lives in `data_dir/index`.
    pub fn from_config(config: &Config, data_dir: &Path) -> Self {
        let store = &config.store;
        Self {
            edge_path: data_dir.join("index"),
            edge: EdgeStoreOptions {
                optimize_after_points: store.optimize_after_points,
                indexing_threshold_kb: None,
            },
            server: (store.kind == "qdrant").then(|| ServerStoreOptions {
                url: store.url.clone(),
                api_key: (!store.api_key.is_empty()).then(|| store.api_key.clone()),
                collection: store.collection.clone(),
                timeout: Duration::from_millis(store.timeout_ms),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vidx_config::ConfigSources;

    fn config(overrides: &[(&str, &str)]) -> Config {
        Config::load(&ConfigSources {
            overrides: overrides
                .iter()
                .map(|(key, value)| (key.to_string(), toml::Value::String(value.to_string())))
                .collect(),
            ..Default::default()
        })
        .expect("config loads")
    }

    #[test]
    fn model_settings_are_typed_once_and_name_the_key_they_refuse() {
        let defaults = ModelSettings::from_config(&config(&[]).models).expect("defaults map");
        assert_eq!(defaults.device, DeviceChoice::Auto);
        assert_eq!(defaults.dtype, DTypeChoice::Auto);
        assert!(defaults.captioner.is_none() && defaults.visual_embedder.is_none());
        assert_eq!(
            defaults.text_embedder.id,
            "sentence-transformers/all-MiniLM-L6-v2"
        );

        let set = config(&[
            ("models.device", "cuda:1"),
            ("models.dtype", "f16"),
            ("models.captioner_dir", "/models/plm"),
            ("models.hf_token", "hf_secret_value"),
        ]);
        let settings = ModelSettings::from_config(&set.models).expect("maps");
        assert_eq!(settings.device, DeviceChoice::Cuda(1));
        assert_eq!(settings.dtype, DTypeChoice::F16);
        let (source, caption) = settings.captioner.clone().expect("a captioner");
        // Named by its directory when no id is set; the built-in prompt when none is given.
        assert_eq!(source.id, "/models/plm");
        assert_eq!(
            source.hub.local_dir.as_deref(),
            Some(Path::new("/models/plm"))
        );
        assert_eq!(caption.prompt, vidx_model::captioner::DENSE_CAPTION_PROMPT);
        // The token reaches the loaders but never a Debug rendering (logs, errors).
        assert_eq!(source.hub.token.as_deref(), Some("hf_secret_value"));
        assert!(!format!("{source:?} {settings:?}").contains("hf_secret_value"));

        // A device the config's own check lets through (`cuda…`) but nothing can parse.
        let mut bad = config(&[]);
        bad.models.device = "cuda:gpu".into();
        let error = ModelSettings::from_config(&bad.models).expect_err("refused");
        assert!(error.to_string().contains("models.device"), "{error}");
    }

    #[test]
    fn allowed_networks_are_parsed_once_and_a_bad_one_names_the_key() {
        let dir = tempfile::tempdir().expect("temp dir");
        let dir = dir.path();
        let mut config = config(&[]);
        config.media.allowed_networks = vec!["192.168.10.0/24".into()];
        let settings = NodeSettings::embedded(&config, dir, dir).expect("maps");
        assert!(
            settings
                .ingest
                .policy
                .check("rtsp://192.168.10.5/live")
                .is_err(),
            "rtsp is not an allowed scheme by default"
        );
        assert!(
            settings
                .ingest
                .policy
                .check("http://192.168.10.5/v.mp4")
                .is_ok()
        );
        assert!(
            settings
                .ingest
                .policy
                .check("http://192.168.11.5/v.mp4")
                .is_err()
        );
        config.media.allowed_networks = vec!["192.168.10.0/40".into()];
        let error = NodeSettings::embedded(&config, dir, dir).expect_err("a bad prefix");
        assert!(
            error.to_string().contains("media.allowed_networks"),
            "{error}"
        );
    }

    #[test]
    fn the_store_is_the_embedded_index_unless_the_server_is_configured() {
        let data = Path::new("/data");
        let edge = StoreSettings::from_config(&config(&[]), data);
        assert_eq!(edge.edge_path, data.join("index"));
        assert!(edge.server.is_none());
        let server = StoreSettings::from_config(
            &config(&[
                ("store.kind", "qdrant"),
                ("store.url", "http://qdrant:6334"),
                ("store.api_key", "qdrant_secret_key"),
            ]),
            data,
        );
        let options = server.server.clone().expect("the server store");
        assert_eq!(options.url, "http://qdrant:6334");
        assert_eq!(options.api_key.as_deref(), Some("qdrant_secret_key"));
        assert!(!format!("{server:?}").contains("qdrant_secret_key"));
    }
}
