//! Typed, validated vidx configuration with layered loading:
//! embedded defaults < file < `VIDX__SECTION__KEY` environment < command-line flags.
//!
//! The environment is passed in as a map so that tests never touch the process environment.
//! Unknown keys are rejected with the key named; validation runs once, at load.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The embedded defaults (`config/default.toml`).
pub const DEFAULT_TOML: &str = include_str!("../../../config/default.toml");

/// Prefix of configuration environment variables: `VIDX__MEDIA__SEGMENT_SECS=10`.
pub const ENV_PREFIX: &str = "VIDX__";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {reason}")]
    Read { path: PathBuf, reason: String },
    #[error("config file {path} is not valid TOML: {reason}")]
    Parse { path: String, reason: String },
    #[error("config key `{key}`: {reason}")]
    Invalid { key: String, reason: String },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub general: GeneralConfig,
    pub media: MediaConfig,
    pub models: ModelsConfig,
    pub store: StoreConfig,
    pub pipeline: PipelineConfig,
    pub server: ServerConfig,
    pub kafka: KafkaConfig,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GeneralConfig {
    pub data_dir: String,
    pub tenant: String,
    pub log_level: String,
    /// `text` or `json` (one object per line). Flag: --log-format.
    pub log_format: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MediaConfig {
    pub segment_secs: f64,
    /// Past this without a keyframe, a file is cut by re-encoding.
    pub max_segment_secs: f64,
    pub frames_per_segment: usize,
    pub frame_size: u32,
    pub max_pixels: u64,
    pub inline_max_bytes: u64,
    pub allowed_url_schemes: Vec<String>,
    /// A live source without packets for this long (ms) is degraded and reconnected.
    pub live_stall_timeout_ms: u64,
    /// Private networks (CIDR) URLs may reach although the private-address guard is on.
    pub allowed_networks: Vec<String>,
    pub allow_private_hosts: bool,
    /// How long and how much live footage is kept, so that live hits can be played.
    pub retention: RetentionConfig,
}

/// `media.retention`: live segments kept in the media store (beside the thumbnails) and
/// deleted when older or over the size, oldest first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetentionConfig {
    /// Live footage older than this (seconds, by its wall-clock end) is deleted; 0 keeps
    /// none.
    pub max_age_secs: u64,
    /// Above this many bytes of live footage, the oldest is deleted; 0: no size limit.
    pub max_bytes: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelsConfig {
    pub text_embedder: String,
    pub text_embedder_dir: String,
    pub offline: bool,
    pub hf_token: String,
    pub device: String,
    pub captioner: String,
    pub captioner_dir: String,
    /// PE-Core CLIP for the `visual` vectors and visual/hybrid search (`facebook/PE-Core-*`,
    /// `timm/PE-Core-*`); empty: off.
    pub visual_embedder: String,
    /// A local PE-Core directory or weights file; set it or `visual_embedder`.
    pub visual_embedder_dir: String,
    /// Region records (motion tracks, else a coarse grid) embedded with the visual model.
    pub regions: bool,
    /// With PLM: region tracks per segment that get PLM's region caption (0: none).
    pub region_captions: usize,
    /// Gap (ms) within which neighbouring hits of one stream merge into one window.
    pub merge_gap_ms: u64,
    pub dtype: String,
    pub caption_prompt: String,
    pub max_new_tokens: usize,
    pub prefill_chunk: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    pub kind: String,
    pub optimize_after_points: u64,
    pub url: String,
    pub api_key: String,
    pub collection: String,
    pub timeout_ms: u64,
    /// How long indexed moments are kept, per tenant.
    pub retention: StoreRetentionConfig,
    /// After a reindex switched to the new generation, how long the old one is kept (seconds).
    pub reindex_grace_secs: u64,
}

/// `store.retention`: moments indexed longer ago than a tenant's bound are deleted (with their
/// thumbnails) by a background sweeper on the query node and in `vidx serve`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreRetentionConfig {
    /// Every tenant's bound, in seconds; 0 keeps moments forever.
    pub max_age_secs: u64,
    /// Tenants with their own bound (seconds; 0: forever), over `max_age_secs`.
    pub tenants: std::collections::BTreeMap<String, u64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineConfig {
    pub workers: usize,
    pub queue_capacity: usize,
    pub max_attempts: u32,
    pub retry_backoff_ms: u64,
    /// Segments a worker captions together (a GPU batches them; 1 on the CPU).
    pub max_batch: usize,
    /// How long a batch waits to fill once its first segment arrived, in ms.
    pub max_batch_wait_ms: u64,
    /// At shutdown, how long the batch being computed may take to finish, in ms.
    pub shutdown_grace_ms: u64,
    /// How long the models may take over one batch before it is abandoned, in ms; 0: no
    /// limit.
    pub segment_timeout_ms: u64,
}

/// The gRPC services of `vidx run`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    pub listen: String,
    /// `GET /metrics` address; empty: off.
    pub metrics_listen: String,
    /// The web UI and HTTP/JSON API of a query node (and `vidx serve`); empty: off.
    pub http_listen: String,
    pub max_request_bytes: usize,
    pub max_concurrent_requests: usize,
    /// Per tenant and ingest node: jobs remembered, jobs segmenting, live streams followed.
    pub max_jobs_per_tenant: usize,
    pub max_running_jobs_per_tenant: usize,
    pub max_live_streams_per_tenant: usize,
    /// Standing queries one tenant holds open at once on a query node.
    pub max_subscriptions_per_tenant: usize,
    pub request_timeout_ms: u64,
    pub ingest_roots: Vec<String>,
    /// Where segments too large for a message go: a directory, `s3://…` or `gs://…`.
    pub blob_store: String,
    /// `object_store` builder options of the blob store (`aws_region`, `aws_endpoint`, …).
    pub blob_options: BTreeMap<String, String>,
    pub tokens: Vec<TokenConfig>,
    /// Standing queries the query node follows itself, posting each match to a webhook.
    pub alerts: Vec<AlertConfig>,
    /// TLS on the gRPC and metrics listeners; empty files: plaintext.
    pub tls: TlsConfig,
}

/// `server.tls`: PEM files, re-read when they change.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// The certificate chain, leaf first.
    pub cert: String,
    /// Its private key (PKCS#8, PKCS#1 or SEC1).
    pub key: String,
    /// CA certificates of the clients: set, every client must present a certificate it
    /// signed (mutual TLS).
    pub client_ca: String,
}

/// `[[server.alerts]]`: a standing query whose matches are POSTed to a webhook.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertConfig {
    /// Names the alert in its posts and logs, and its resume point in the data dir.
    pub name: String,
    /// Whose moments it watches (default: general.tenant).
    #[serde(default)]
    pub tenant: String,
    pub query: String,
    /// Only this stream's moments; empty: every stream of the tenant.
    #[serde(default)]
    pub stream_id: String,
    /// Least caption cosine of a match; 0: the default (0.45).
    #[serde(default)]
    pub threshold: f32,
    /// `http(s)://` URL each match is POSTed to (JSON).
    pub url: String,
    /// Sent as `Authorization: Bearer …` when set.
    #[serde(default)]
    pub bearer_token: String,
}

/// One bearer token and the tenant it speaks for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenConfig {
    pub tenant: String,
    pub token: String,
    /// RFC 3339 time after which the token is refused; empty: never.
    #[serde(default)]
    pub expires_at: String,
}

/// The Kafka cluster of the distributed mode.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaConfig {
    pub brokers: String,
    pub topic: String,
    pub dead_letter_topic: String,
    pub jobs_topic: String,
    pub group_id: String,
    pub client_id: String,
    pub partitions: i32,
    pub replication: i32,
    pub session_timeout_ms: u64,
    pub max_poll_interval_ms: u64,
    pub delivery_timeout_ms: u64,
    pub max_message_bytes: u64,
    pub group_instance_id: String,
    pub assignment_strategy: String,
    pub properties: BTreeMap<String, String>,
}

/// The layers to merge, lowest precedence first.
#[derive(Debug, Default, Clone)]
pub struct ConfigSources {
    /// A TOML file (`--config`).
    pub file: Option<PathBuf>,
    /// The process environment (or a test's map); only `VIDX__*` keys are read.
    pub env: BTreeMap<String, String>,
    /// Command-line flags as `section.key` → TOML value.
    pub overrides: Vec<(String, toml::Value)>,
}

impl Config {
    /// Merge the layers, deserialize strictly, validate.
    pub fn load(sources: &ConfigSources) -> Result<Config, ConfigError> {
        let mut merged: toml::Table =
            toml::from_str(DEFAULT_TOML).map_err(|error| ConfigError::Parse {
                path: "<embedded defaults>".into(),
                reason: error.to_string(),
            })?;
        if let Some(path) = &sources.file {
            merge(&mut merged, read_file(path)?);
        }
        for (name, value) in &sources.env {
            let Some(rest) = name.strip_prefix(ENV_PREFIX) else {
                continue;
            };
            let key_path: Vec<String> = rest
                .split("__")
                .map(|part| part.to_ascii_lowercase())
                .collect();
            set_path(&mut merged, &key_path, parse_env_value(value), name)?;
        }
        for (dotted, value) in &sources.overrides {
            let key_path: Vec<String> = dotted.split('.').map(str::to_string).collect();
            set_path(&mut merged, &key_path, value.clone(), dotted)?;
        }
        let config: Config =
            serde_path_to_error::deserialize(toml::Value::Table(merged)).map_err(|error| {
                let key = error.path().to_string();
                ConfigError::Invalid {
                    key: if key == "." { "<root>".into() } else { key },
                    reason: error.into_inner().to_string(),
                }
            })?;
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key: &str, reason: &str| {
            Err(ConfigError::Invalid {
                key: key.into(),
                reason: reason.into(),
            })
        };
        if self.general.tenant.trim().is_empty() {
            return invalid("general.tenant", "must not be empty");
        }
        if !["error", "warn", "info", "debug", "trace"].contains(&self.general.log_level.as_str()) {
            return invalid(
                "general.log_level",
                "must be one of error, warn, info, debug, trace",
            );
        }
        if !["text", "json"].contains(&self.general.log_format.as_str()) {
            return invalid("general.log_format", "must be text or json");
        }
        if !(self.media.segment_secs.is_finite()
            && self.media.segment_secs >= 1.0
            && self.media.segment_secs <= 3600.0)
        {
            return invalid("media.segment_secs", "must be between 1 and 3600");
        }
        if !(self.media.max_segment_secs.is_finite()
            && self.media.max_segment_secs >= 1.0
            && self.media.max_segment_secs <= 86_400.0)
        {
            return invalid("media.max_segment_secs", "must be between 1 and 86400");
        }
        if self.media.frames_per_segment > 1024 {
            return invalid("media.frames_per_segment", "must be at most 1024");
        }
        if !(16..=4096).contains(&self.media.frame_size) {
            return invalid("media.frame_size", "must be between 16 and 4096");
        }
        if self.media.max_pixels == 0 {
            return invalid("media.max_pixels", "must be positive");
        }
        if !(500..=600_000).contains(&self.media.live_stall_timeout_ms) {
            return invalid(
                "media.live_stall_timeout_ms",
                "must be between 500 and 600000",
            );
        }
        for scheme in &self.media.allowed_url_schemes {
            let lower = scheme.to_ascii_lowercase();
            if [
                "file", "concat", "data", "pipe", "subfile", "fd", "async", "cache",
            ]
            .contains(&lower.as_str())
            {
                return Err(ConfigError::Invalid {
                    key: "media.allowed_url_schemes".into(),
                    reason: format!("`{scheme}` gives access to local data and cannot be allowed"),
                });
            }
        }
        if self.models.text_embedder.trim().is_empty()
            && self.models.text_embedder_dir.trim().is_empty()
        {
            return invalid(
                "models.text_embedder",
                "set a model id or models.text_embedder_dir",
            );
        }
        if !["auto", "cpu"].contains(&self.models.device.as_str())
            && !self.models.device.starts_with("cuda")
        {
            return invalid("models.device", "must be auto, cpu or cuda[:N]");
        }
        if !["auto", "f32", "bf16", "f16"].contains(&self.models.dtype.as_str()) {
            return invalid("models.dtype", "must be auto, f32, bf16 or f16");
        }
        if self.models.max_new_tokens == 0 || self.models.max_new_tokens > 8192 {
            return invalid("models.max_new_tokens", "must be between 1 and 8192");
        }
        if self.models.prefill_chunk == 0 {
            return invalid("models.prefill_chunk", "must be positive");
        }
        if !self.models.caption_prompt.is_empty() && !self.models.caption_prompt.contains("{last}")
        {
            return invalid(
                "models.caption_prompt",
                "must name the frame range with {last} (and may use {frames})",
            );
        }
        if self.pipeline.workers == 0 || self.pipeline.workers > 256 {
            return invalid("pipeline.workers", "must be between 1 and 256");
        }
        if self.pipeline.queue_capacity == 0 {
            return invalid("pipeline.queue_capacity", "must be positive");
        }
        if self.pipeline.max_batch == 0 || self.pipeline.max_batch > 1024 {
            return invalid("pipeline.max_batch", "must be between 1 and 1024");
        }
        if self.pipeline.max_attempts == 0 {
            return invalid("pipeline.max_attempts", "must be at least 1");
        }
        if !["edge", "qdrant"].contains(&self.store.kind.as_str()) {
            return invalid("store.kind", "must be edge or qdrant");
        }
        if self.store.kind == "qdrant"
            && !(self.store.url.starts_with("http://") || self.store.url.starts_with("https://"))
        {
            return invalid("store.url", "must be an http:// or https:// gRPC URL");
        }
        if self.store.collection.trim().is_empty() {
            return invalid("store.collection", "must not be empty");
        }
        if self.server.listen.parse::<std::net::SocketAddr>().is_err() {
            return invalid("server.listen", "must be an address like 127.0.0.1:7700");
        }
        if !self.server.metrics_listen.is_empty()
            && self
                .server
                .metrics_listen
                .parse::<std::net::SocketAddr>()
                .is_err()
        {
            return invalid(
                "server.metrics_listen",
                "must be empty or an address like 0.0.0.0:9464",
            );
        }
        if !(1024..=(64 << 20)).contains(&self.server.max_request_bytes) {
            return invalid(
                "server.max_request_bytes",
                "must be between 1 KiB and 64 MiB",
            );
        }
        for (key, value) in [
            (
                "server.max_jobs_per_tenant",
                self.server.max_jobs_per_tenant,
            ),
            (
                "server.max_running_jobs_per_tenant",
                self.server.max_running_jobs_per_tenant,
            ),
            (
                "server.max_live_streams_per_tenant",
                self.server.max_live_streams_per_tenant,
            ),
            (
                "server.max_subscriptions_per_tenant",
                self.server.max_subscriptions_per_tenant,
            ),
        ] {
            if value == 0 {
                return invalid(key, "must be positive");
            }
        }
        if !self.server.http_listen.is_empty()
            && self
                .server
                .http_listen
                .parse::<std::net::SocketAddr>()
                .is_err()
        {
            return invalid(
                "server.http_listen",
                "must be empty or an address like 127.0.0.1:7701",
            );
        }
        if self.server.max_concurrent_requests == 0 {
            return invalid("server.max_concurrent_requests", "must be positive");
        }
        if self.server.request_timeout_ms == 0 {
            return invalid("server.request_timeout_ms", "must be positive");
        }
        let tls = &self.server.tls;
        if tls.cert.is_empty() != tls.key.is_empty() {
            return invalid(
                "server.tls",
                "set both cert and key (or neither, for plaintext)",
            );
        }
        if !tls.client_ca.is_empty() && tls.cert.is_empty() {
            return invalid(
                "server.tls.client_ca",
                "needs server.tls.cert and server.tls.key",
            );
        }
        for (index, token) in self.server.tokens.iter().enumerate() {
            let key = |field: &str| format!("server.tokens[{index}].{field}");
            if token.tenant.trim().is_empty() {
                return Err(ConfigError::Invalid {
                    key: key("tenant"),
                    reason: "must not be empty".into(),
                });
            }
            if token.token.len() < 16 {
                return Err(ConfigError::Invalid {
                    key: key("token"),
                    reason: "must be at least 16 characters".into(),
                });
            }
            if !token.expires_at.is_empty()
                && humantime::parse_rfc3339_weak(&token.expires_at).is_err()
            {
                return Err(ConfigError::Invalid {
                    key: key("expires_at"),
                    reason: "must be an RFC 3339 time such as 2027-01-31T00:00:00Z".into(),
                });
            }
        }
        let mut names = std::collections::HashSet::new();
        for (index, alert) in self.server.alerts.iter().enumerate() {
            let key = |field: &str| format!("server.alerts[{index}].{field}");
            let refuse = |field: &str, reason: &str| {
                Err(ConfigError::Invalid {
                    key: key(field),
                    reason: reason.into(),
                })
            };
            if alert.name.is_empty()
                || alert.name.len() > 64
                || !alert
                    .name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            {
                return refuse("name", "1–64 characters of A–Z, a–z, 0–9, - and _");
            }
            if !names.insert(alert.name.as_str()) {
                return refuse("name", "another alert has this name");
            }
            if alert.query.trim().is_empty() {
                return refuse("query", "must not be empty");
            }
            if !(0.0..=1.0).contains(&alert.threshold) {
                return refuse("threshold", "must be between 0 and 1");
            }
            let scheme = alert
                .url
                .split_once("://")
                .map(|(scheme, _)| scheme.to_ascii_lowercase());
            if !matches!(scheme.as_deref(), Some("http" | "https")) {
                return refuse("url", "must be an http:// or https:// URL");
            }
        }
        if self.kafka.brokers.trim().is_empty() {
            return invalid("kafka.brokers", "must not be empty");
        }
        if self.kafka.topic.is_empty() || self.kafka.dead_letter_topic.is_empty() {
            return invalid("kafka.topic", "topics must not be empty");
        }
        if self.kafka.topic == self.kafka.dead_letter_topic {
            return invalid("kafka.dead_letter_topic", "must differ from kafka.topic");
        }
        if self.kafka.group_id.is_empty() {
            return invalid("kafka.group_id", "must not be empty");
        }
        if !(65_536..=(256 << 20)).contains(&self.kafka.max_message_bytes) {
            return invalid(
                "kafka.max_message_bytes",
                "must be between 64 KiB and 256 MiB",
            );
        }
        if self.kafka.max_poll_interval_ms < self.kafka.session_timeout_ms {
            return invalid(
                "kafka.max_poll_interval_ms",
                "must be at least kafka.session_timeout_ms",
            );
        }
        if self.kafka.partitions < 1 || self.kafka.replication < 1 {
            return invalid(
                "kafka.partitions",
                "partitions and replication must be at least 1",
            );
        }
        Ok(())
    }

    /// The data dir: configured, else `$XDG_DATA_HOME/vidx`, else `~/.local/share/vidx`.
    pub fn data_dir(&self, env: &BTreeMap<String, String>) -> PathBuf {
        if !self.general.data_dir.is_empty() {
            return PathBuf::from(&self.general.data_dir);
        }
        if let Some(xdg) = env.get("XDG_DATA_HOME").filter(|value| !value.is_empty()) {
            return Path::new(xdg).join("vidx");
        }
        match env.get("HOME").filter(|value| !value.is_empty()) {
            Some(home) => Path::new(home).join(".local/share/vidx"),
            None => PathBuf::from("vidx-data"),
        }
    }

    /// The effective configuration as TOML, with every secret replaced by `***`.
    pub fn to_redacted_toml(&self) -> String {
        let mut value =
            toml::Value::try_from(self).unwrap_or(toml::Value::Table(toml::Table::new()));
        redact(&mut value);
        toml::to_string_pretty(&value).unwrap_or_default()
    }
}

fn read_file(path: &Path) -> Result<toml::Table, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|error| ConfigError::Read {
        path: path.to_path_buf(),
        reason: error.to_string(),
    })?;
    toml::from_str(&text).map_err(|error| ConfigError::Parse {
        path: path.display().to_string(),
        reason: error.to_string(),
    })
}

fn merge(base: &mut toml::Table, overlay: toml::Table) {
    for (key, value) in overlay {
        match (base.get_mut(&key), value) {
            (Some(toml::Value::Table(base_table)), toml::Value::Table(overlay_table)) => {
                merge(base_table, overlay_table)
            }
            (_, value) => {
                base.insert(key, value);
            }
        }
    }
}

fn set_path(
    table: &mut toml::Table,
    path: &[String],
    value: toml::Value,
    origin: &str,
) -> Result<(), ConfigError> {
    let Some((last, parents)) = path.split_last() else {
        return Err(ConfigError::Invalid {
            key: origin.into(),
            reason: "empty key".into(),
        });
    };
    let mut current = table;
    for part in parents {
        let entry = current
            .entry(part.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        current = match entry {
            toml::Value::Table(inner) => inner,
            _ => {
                return Err(ConfigError::Invalid {
                    key: origin.into(),
                    reason: format!("`{part}` is not a section"),
                });
            }
        };
    }
    current.insert(last.clone(), value);
    Ok(())
}

/// An environment value is read as a TOML value when it parses as one (`10`, `true`,
/// `["http"]`), otherwise as a plain string.
fn parse_env_value(raw: &str) -> toml::Value {
    toml::from_str::<toml::Table>(&format!("value = {raw}"))
        .ok()
        .and_then(|mut table| table.remove("value"))
        .unwrap_or_else(|| toml::Value::String(raw.to_string()))
}

fn is_secret_key(key: &str) -> bool {
    let lower = key.to_ascii_lowercase();
    [
        "token",
        "secret",
        "password",
        "api_key",
        "apikey",
        "credentials",
        "service_account_key",
    ]
    .iter()
    .any(|marker| lower.contains(marker))
}

fn redact(value: &mut toml::Value) {
    match value {
        toml::Value::Table(table) => {
            for (key, inner) in table.iter_mut() {
                if is_secret_key(key) {
                    if let toml::Value::String(secret) = inner
                        && !secret.is_empty()
                    {
                        *secret = "***".into();
                    } else if !inner.is_str() {
                        // `tokens = [...]`, `[kafka.properties]` with `sasl.password`: inside.
                        redact(inner);
                    }
                } else {
                    redact(inner);
                }
            }
        }
        toml::Value::Array(items) => items.iter_mut().for_each(redact),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn the_cluster_example_loads() -> Result<(), ConfigError> {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../config/cluster.toml");
        let config = Config::load(&ConfigSources {
            file: Some(path),
            ..Default::default()
        })?;
        assert_eq!(config.store.kind, "qdrant");
        assert_eq!(config.server.tokens.len(), 1);
        assert_eq!(config.kafka.partitions, 32);
        assert!(config.server.blob_store.starts_with("s3://"));
        Ok(())
    }

    #[test]
    fn defaults_load_and_validate() -> Result<(), ConfigError> {
        let config = Config::load(&ConfigSources::default())?;
        assert_eq!(config.media.segment_secs, 20.0);
        assert_eq!(config.media.frames_per_segment, 32);
        assert_eq!(config.general.tenant, "default");
        Ok(())
    }

    #[test]
    fn precedence_defaults_file_env_flags() -> Result<(), Box<dyn std::error::Error>> {
        let directory = tempfile::tempdir()?;
        let file = directory.path().join("vidx.toml");
        std::fs::write(
            &file,
            "[media]\nsegment_secs = 10\nframes_per_segment = 8\n[general]\ntenant = \"file\"\n",
        )?;
        let sources = ConfigSources {
            file: Some(file),
            env: env(&[
                ("VIDX__MEDIA__FRAMES_PER_SEGMENT", "16"),
                ("VIDX__GENERAL__TENANT", "env"),
                ("PATH", "/bin"),
            ]),
            overrides: vec![("general.tenant".into(), toml::Value::String("flag".into()))],
        };
        let config = Config::load(&sources)?;
        assert_eq!(config.media.segment_secs, 10.0, "file beats defaults");
        assert_eq!(config.media.frames_per_segment, 16, "env beats file");
        assert_eq!(config.general.tenant, "flag", "flags beat env");
        assert_eq!(config.media.frame_size, 448, "untouched keys keep defaults");
        Ok(())
    }

    #[test]
    fn unknown_keys_are_named() {
        let error = Config::load(&ConfigSources {
            env: env(&[("VIDX__MEDIA__SEGMNT_SECS", "5")]),
            ..Default::default()
        })
        .expect_err("unknown key");
        let message = error.to_string();
        assert!(message.contains("segmnt_secs"), "{message}");
        assert!(message.contains("media"), "{message}");

        let error = Config::load(&ConfigSources {
            env: env(&[("VIDX__NOPE__X", "1")]),
            ..Default::default()
        })
        .expect_err("unknown section");
        assert!(error.to_string().contains("nope"), "{error}");
    }

    #[test]
    fn invalid_values_name_the_key() {
        for (key, value, named) in [
            ("VIDX__MEDIA__SEGMENT_SECS", "0", "media.segment_secs"),
            ("VIDX__PIPELINE__WORKERS", "0", "pipeline.workers"),
            (
                "VIDX__MEDIA__ALLOWED_URL_SCHEMES",
                "[\"http\", \"file\"]",
                "media.allowed_url_schemes",
            ),
            ("VIDX__MEDIA__FRAME_SIZE", "\"big\"", "media.frame_size"),
            ("VIDX__SERVER__TLS__CERT", "\"node.pem\"", "server.tls"),
            (
                "VIDX__SERVER__TLS__CLIENT_CA",
                "\"ca.pem\"",
                "server.tls.client_ca",
            ),
        ] {
            let error = Config::load(&ConfigSources {
                env: env(&[(key, value)]),
                ..Default::default()
            })
            .expect_err(key);
            assert!(error.to_string().contains(named), "{key}: {error}");
        }
    }

    #[test]
    fn secrets_are_redacted() -> Result<(), ConfigError> {
        let config = Config::load(&ConfigSources {
            env: env(&[("VIDX__MODELS__HF_TOKEN", "hf_supersecret")]),
            ..Default::default()
        })?;
        assert_eq!(config.models.hf_token, "hf_supersecret");
        let shown = config.to_redacted_toml();
        assert!(!shown.contains("supersecret"), "{shown}");
        assert!(shown.contains("hf_token = \"***\""), "{shown}");

        let file = tempfile::NamedTempFile::new().map_err(|error| ConfigError::Read {
            path: PathBuf::new(),
            reason: error.to_string(),
        })?;
        std::fs::write(
            file.path(),
            "[server]\ntokens = [{ tenant = \"acme\", token = \"tok-aaaaaaaaaaaaaaaa\" }]\n\
             [server.blob_options]\naws_secret_access_key = \"s3secret\"\naws_region = \"eu-west-1\"\n\
             [kafka.properties]\n\"sasl.password\" = \"kafkapass\"\n",
        )
        .map_err(|error| ConfigError::Read {
            path: file.path().to_path_buf(),
            reason: error.to_string(),
        })?;
        let config = Config::load(&ConfigSources {
            file: Some(file.path().to_path_buf()),
            ..Default::default()
        })?;
        assert_eq!(config.server.tokens[0].tenant, "acme");
        let shown = config.to_redacted_toml();
        assert!(!shown.contains("tok-aaaa"), "{shown}");
        assert!(!shown.contains("kafkapass"), "{shown}");
        assert!(!shown.contains("s3secret"), "{shown}");
        assert!(shown.contains("eu-west-1"), "{shown}");
        assert!(shown.contains("acme"), "{shown}");
        Ok(())
    }

    #[test]
    fn bad_server_settings_name_the_key() {
        let cases = [
            ("VIDX__SERVER__LISTEN", "nowhere", "server.listen"),
            (
                "VIDX__SERVER__METRICS_LISTEN",
                "port 9464",
                "server.metrics_listen",
            ),
            (
                "VIDX__SERVER__MAX_REQUEST_BYTES",
                "10",
                "server.max_request_bytes",
            ),
            (
                "VIDX__SERVER__TOKENS",
                "[{ tenant = \"a\", token = \"short\" }]",
                "server.tokens[0].token",
            ),
            (
                "VIDX__SERVER__TOKENS",
                "[{ tenant = \"a\", token = \"long-enough-token-1\", expires_at = \"soon\" }]",
                "server.tokens[0].expires_at",
            ),
            (
                "VIDX__KAFKA__DEAD_LETTER_TOPIC",
                "vidx.segments",
                "kafka.dead_letter_topic",
            ),
        ];
        for (variable, value, key) in cases {
            match Config::load(&ConfigSources {
                env: env(&[(variable, value)]),
                ..Default::default()
            }) {
                Err(ConfigError::Invalid { key: named, .. }) => assert_eq!(named, key),
                other => panic!("{variable}={value}: expected an error for {key}, got {other:?}"),
            }
        }
    }

    #[test]
    fn data_dir_fallbacks() -> Result<(), ConfigError> {
        let config = Config::load(&ConfigSources::default())?;
        assert_eq!(
            config.data_dir(&env(&[("HOME", "/home/u")])),
            PathBuf::from("/home/u/.local/share/vidx")
        );
        assert_eq!(
            config.data_dir(&env(&[("HOME", "/home/u"), ("XDG_DATA_HOME", "/x")])),
            PathBuf::from("/x/vidx")
        );
        Ok(())
    }
}
