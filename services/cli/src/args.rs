//! Command-line arguments.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "vidx",
    version,
    about = "Index video into searchable moments, then search them in plain language"
)]
pub struct Cli {
    /// A TOML config file (layered over the embedded defaults; env VIDX__SECTION__KEY and flags override it).
    #[arg(long, global = true, env = "VIDX_CONFIG")]
    pub config: Option<PathBuf>,
    /// Log lines as text or JSON objects (config general.log_format).
    #[arg(long, global = true, value_parser = ["text", "json"])]
    pub log_format: Option<String>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Index video files, directories (recursively) and http(s) URLs.
    Index(IndexArgs),
    /// Search indexed moments with a natural-language query.
    Search(SearchArgs),
    /// Show what the index holds.
    Stats(StatsArgs),
    /// Run services of the distributed mode: ingest, worker and/or query, in one process
    /// (`vidx run ingest worker query` on one machine) or one role per process.
    Run(RunArgs),
    /// Export a hit's clip (its `id` from `vidx search --json`) from the local index as MP4.
    Clip(ClipArgs),
    /// Measure retrieval quality on labelled queries (JSON lines: query, stream_id,
    /// start_ms, end_ms): recall@1/5/10, MRR and mean IoU per search mode.
    Eval(EvalArgs),
    /// Serve the web UI and the HTTP/JSON API (search, thumbnails, clips) over the local
    /// index, on one machine (`vidx run query` does the same in a cluster).
    Serve(ServeArgs),
    /// Live streams of a running ingest service (rtsp, rtmp, MPEG-TS, HLS): their state
    /// (connecting, live, degraded, stopped), segments and reconnects; `--stop JOB` ends one.
    Streams(StreamsArgs),
    /// Delete indexed moments of the caller's tenant: every moment of one stream (its
    /// thumbnails and kept live footage too), or every moment indexed before a time.
    /// Idempotent: deleting again deletes nothing and succeeds.
    Delete(DeleteArgs),
    /// Build the index again with the configured models (a new PLM or embedder, another
    /// embedding size) as a new generation, from the sources it was made from, and switch to
    /// it when complete; searches answer from the old one meanwhile. A reindex cut short
    /// (Ctrl-C, a crash) is taken up where it was by the next `vidx reindex`.
    Reindex(ReindexArgs),
    /// Configuration commands.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Model commands.
    #[command(subcommand)]
    Model(ModelCommand),
}

#[derive(Debug, Subcommand)]
pub enum ModelCommand {
    /// Download a PerceptionLM checkpoint (config, tokenizer, processor, all weight shards)
    /// or a PE-Core checkpoint (facebook/PE-Core-*, timm/PE-Core-*) into the Hugging Face
    /// cache, where `--model ID` / `models.visual_embedder` find it offline later.
    /// Gated repositories need HF_TOKEN (or models.hf_token).
    Fetch {
        /// Hugging Face model id, e.g. facebook/Perception-LM-1B.
        model: String,
    },
}

#[derive(Debug, Args, Clone)]
pub struct CommonArgs {
    /// Data directory holding the index (config general.data_dir).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// A local directory with the sentence-embedder files (config models.text_embedder_dir).
    #[arg(long)]
    pub text_model_dir: Option<PathBuf>,
    /// A local PE-Core checkpoint (directory or weights file) for visual vectors and visual
    /// search (config models.visual_embedder_dir).
    #[arg(long, value_name = "PATH")]
    pub visual_model_dir: Option<PathBuf>,
    /// Where the models run: auto, cpu, cuda or cuda:N (config models.device; auto: the GPU
    /// when the build has the cuda feature and one answers, else the CPU).
    #[arg(long, value_name = "DEVICE")]
    pub device: Option<String>,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Talking to a running `vidx run` instead of the local index.
#[derive(Debug, Args, Clone)]
pub struct RemoteArgs {
    /// A vidx gRPC endpoint (http://host:port or https://host:port) to send the work to.
    #[arg(long, env = "VIDX_ENDPOINT", value_name = "URL")]
    pub endpoint: Option<String>,
    /// Bearer token for the endpoint.
    #[arg(long, env = "VIDX_TOKEN", hide_env_values = true, value_name = "TOKEN")]
    pub token: Option<String>,
    /// PEM file of the CA that signed the endpoint's certificate (https:// endpoints signed
    /// by a private CA); without it, the public web PKI.
    #[arg(long, env = "VIDX_CA", value_name = "FILE")]
    pub ca: Option<std::path::PathBuf>,
    /// PEM client certificate, for an endpoint that requires one (mutual TLS).
    #[arg(long, env = "VIDX_CLIENT_CERT", value_name = "FILE", requires = "key")]
    pub cert: Option<std::path::PathBuf>,
    /// PEM private key of --cert.
    #[arg(long, env = "VIDX_CLIENT_KEY", value_name = "FILE", requires = "cert")]
    pub key: Option<std::path::PathBuf>,
}

#[derive(Debug, Args)]
pub struct IndexArgs {
    /// Files, directories or URLs.
    #[arg(required = true, value_name = "PATH|URL")]
    pub inputs: Vec<String>,
    /// Target segment length in seconds (config media.segment_secs).
    #[arg(long)]
    pub segment_secs: Option<f64>,
    /// Frames sampled per segment (config media.frames_per_segment).
    #[arg(long)]
    pub frames: Option<usize>,
    /// Caption with this PerceptionLM checkpoint from the Hugging Face cache or hub, e.g.
    /// facebook/Perception-LM-1B (config models.captioner).
    #[arg(long, value_name = "ID")]
    pub model: Option<String>,
    /// Caption with the PerceptionLM checkpoint in this directory (config models.captioner_dir).
    #[arg(long, value_name = "DIR")]
    pub model_dir: Option<PathBuf>,
    /// Submit to a running ingest service instead of indexing here; files must be under one
    /// of its server.ingest_roots. Waits for the jobs unless --no-wait.
    #[command(flatten)]
    pub remote: RemoteArgs,
    /// With --endpoint: print the job ids and return at once.
    #[arg(long)]
    pub no_wait: bool,
    /// A label of the streams indexed (repeatable): `--label site=north --label group=lobby`;
    /// stored on every moment, filterable with `vidx search --label`.
    #[arg(long = "label", value_name = "KEY=VALUE")]
    pub labels: Vec<String>,
    #[command(flatten)]
    pub common: CommonArgs,
}

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("what").required(true).args(["stream", "before"])))]
pub struct DeleteArgs {
    /// Delete every moment of this stream (for files: the absolute path).
    #[arg(long)]
    pub stream: Option<String>,
    /// Delete every moment indexed before this time: a date (2026-12-01T10:00:00Z) or a time
    /// ago (-30d, -2h).
    #[arg(long, value_parser = parse_instant_ms, allow_hyphen_values = true)]
    pub before: Option<u64>,
    /// Delete in a running query service's index instead of the local one.
    #[command(flatten)]
    pub remote: RemoteArgs,
    #[command(flatten)]
    pub common: CommonArgs,
}

#[derive(Debug, Args)]
pub struct ReindexArgs {
    /// Reindex a running node's index (a node with the ingest and query roles) instead of
    /// the local one, following its progress.
    #[command(flatten)]
    pub remote: RemoteArgs,
    #[command(flatten)]
    pub common: CommonArgs,
}

#[derive(Debug, Args)]
pub struct SearchArgs {
    /// What to look for, in plain language.
    #[arg(required_unless_present_any = ["image", "like"])]
    pub query: Option<String>,
    /// Search by example: moments and regions that look like this image (PNG, JPEG, …;
    /// needs models.visual_embedder).
    #[arg(long, value_name = "FILE", conflicts_with = "like")]
    pub image: Option<PathBuf>,
    /// Search by example: moments and regions that look like this hit (its id from an
    /// earlier search; a frame, segment, region or a moment with a visual vector).
    #[arg(long, value_name = "ID")]
    pub like: Option<String>,
    /// Only this stream (for files: the absolute path); repeat for any of several streams.
    #[arg(long = "stream", value_name = "ID")]
    pub streams: Vec<String>,
    /// Only streams indexed with this label (repeatable: all of them).
    #[arg(long = "label", value_name = "KEY=VALUE")]
    pub labels: Vec<String>,
    /// Only moments that end at or after this time: ms or hh:mm:ss[.mmm] into a file, or for
    /// live streams a date (2026-12-01T10:00:00Z) or a time ago (-2h, -30m, now).
    #[arg(long, value_parser = parse_time_ms, allow_hyphen_values = true)]
    pub from: Option<u64>,
    /// Only moments that start at or before this time (as --from).
    #[arg(long, value_parser = parse_time_ms, allow_hyphen_values = true)]
    pub to: Option<u64>,
    /// Number of hits.
    #[arg(long, default_value_t = 10)]
    pub top_k: usize,
    /// Which vectors to search: caption (caption and subtitle text), visual (what the frames
    /// look like; needs models.visual_embedder), region, or hybrid (all of them fused; the
    /// default, captions only without a visual model).
    #[arg(long, default_value = "hybrid", value_parser = ["caption", "visual", "region", "hybrid"])]
    pub mode: String,
    /// Print merged moment windows (neighbouring hits of one stream) instead of single hits.
    #[arg(long)]
    pub windows: bool,
    /// Ask a running query service instead of the local index.
    #[command(flatten)]
    pub remote: RemoteArgs,
    #[command(flatten)]
    pub common: CommonArgs,
}

/// A role of `vidx run`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Role {
    /// IngestService: segment submitted files and URLs and publish them to Kafka.
    Ingest,
    /// Consume segments from Kafka (consumer group), run the models, write the index.
    Worker,
    /// SearchService over the index.
    Query,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// The roles this process takes.
    #[arg(required = true, value_enum)]
    pub roles: Vec<Role>,
    /// gRPC listen address (config server.listen).
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<String>,
    /// Kafka bootstrap brokers (config kafka.brokers).
    #[arg(long, value_name = "HOST:PORT")]
    pub brokers: Option<String>,
    /// Caption with this PerceptionLM checkpoint (config models.captioner).
    #[arg(long, value_name = "ID")]
    pub model: Option<String>,
    /// Caption with the PerceptionLM checkpoint in this directory (config models.captioner_dir).
    #[arg(long, value_name = "DIR")]
    pub model_dir: Option<PathBuf>,
    #[command(flatten)]
    pub common: CommonArgs,
}

#[derive(Debug, Args)]
pub struct ClipArgs {
    /// The hit's id.
    pub id: String,
    /// Where to write the MP4.
    #[arg(short, long, value_name = "FILE")]
    pub output: PathBuf,
    #[command(flatten)]
    pub common: CommonArgs,
}

#[derive(Debug, Args)]
pub struct EvalArgs {
    /// The labelled queries: one `{"query", "stream_id", "start_ms", "end_ms"}` per line.
    pub queries: PathBuf,
    /// Search modes to measure, comma-separated (visual and region need a PE-Core model).
    #[arg(long, default_value = "caption,visual,region,hybrid")]
    pub modes: String,
    #[command(flatten)]
    pub common: CommonArgs,
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to listen on (config server.http_listen, 127.0.0.1:7701 by default).
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<String>,
    #[command(flatten)]
    pub common: CommonArgs,
}

#[derive(Debug, Args)]
pub struct StatsArgs {
    #[command(flatten)]
    pub common: CommonArgs,
}

#[derive(Debug, Args)]
pub struct StreamsArgs {
    /// Stop ingesting this live job (its id from `vidx index --endpoint` or the list).
    #[arg(long, value_name = "JOB_ID")]
    pub stop: Option<String>,
    #[command(flatten)]
    pub remote: RemoteArgs,
    #[command(flatten)]
    pub common: CommonArgs,
}

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Validate and print the effective configuration, secrets redacted.
    Check,
}

/// `1500` → 1500 ms; `01:02:03.5` / `02:03` → ms into a file; for live streams (timed in
/// wall-clock ms) `2026-12-01T10:00:00Z` (RFC 3339), `-2h` / `-90s` / `-1d` (that long ago)
/// and `now` → ms since the Unix epoch.
pub fn parse_time_ms(value: &str) -> Result<u64, String> {
    parse_time_ms_at(value, std::time::SystemTime::now())
}

/// A wall-clock instant: `2026-12-01T10:00:00Z`, `-30d` (that long ago), `now`, or Unix
/// epoch ms; never a time into a file.
pub fn parse_instant_ms(value: &str) -> Result<u64, String> {
    let trimmed = value.trim();
    let date_like = trimmed.len() >= 10 && trimmed.as_bytes()[4] == b'-';
    if date_like
        || trimmed.starts_with('-')
        || trimmed.eq_ignore_ascii_case("now")
        || trimmed.chars().all(|c| c.is_ascii_digit())
    {
        return parse_time_ms(trimmed);
    }
    Err(format!(
        "`{value}`: a date (2026-12-01T10:00:00Z), a time ago (-30d, -2h) or epoch ms"
    ))
}

fn parse_time_ms_at(value: &str, now: std::time::SystemTime) -> Result<u64, String> {
    let epoch_ms = |time: std::time::SystemTime| -> Result<u64, String> {
        time.duration_since(std::time::UNIX_EPOCH)
            .map(|since| since.as_millis() as u64)
            .map_err(|_| format!("`{value}` is before 1970"))
    };
    let value = value.trim();
    if let Ok(ms) = value.parse::<u64>() {
        return Ok(ms);
    }
    if value.eq_ignore_ascii_case("now") {
        return epoch_ms(now);
    }
    if let Some(ago) = value.strip_prefix('-') {
        let duration = humantime::parse_duration(ago)
            .map_err(|error| format!("`{value}`: {error} (a time ago looks like -2h or -30m)"))?;
        return epoch_ms(
            now.checked_sub(duration)
                .ok_or_else(|| format!("`{value}` is before 1970"))?,
        );
    }
    if value.len() >= 10 && value.as_bytes()[4] == b'-' && value.as_bytes()[7] == b'-' {
        let time = humantime::parse_rfc3339_weak(value).map_err(|error| {
            format!("`{value}`: {error} (a date looks like 2026-12-01T10:00:00Z)")
        })?;
        return epoch_ms(time);
    }
    let (clock, fraction) = value.split_once('.').unwrap_or((value, ""));
    let parts: Vec<&str> = clock.split(':').collect();
    if parts.len() < 2 || parts.len() > 3 {
        return Err(format!(
            "`{value}` is neither milliseconds nor hh:mm:ss[.mmm]"
        ));
    }
    let mut seconds: u64 = 0;
    for part in &parts {
        let number: u64 = part
            .parse()
            .map_err(|_| format!("`{value}`: `{part}` is not a number"))?;
        seconds = seconds * 60 + number;
    }
    let millis = if fraction.is_empty() {
        0
    } else {
        let digits: String = fraction.chars().take(3).collect();
        format!("{digits:0<3}")
            .parse::<u64>()
            .map_err(|_| format!("`{value}`: bad fraction"))?
    };
    Ok(seconds * 1000 + millis)
}

#[cfg(test)]
mod tests {
    use super::parse_time_ms;

    #[test]
    fn parses_ms_and_clock_times() {
        assert_eq!(parse_time_ms("1500"), Ok(1500));
        assert_eq!(parse_time_ms("01:02:03.5"), Ok(3_723_500));
        assert_eq!(parse_time_ms("02:03"), Ok(123_000));
        assert!(parse_time_ms("soon").is_err());
    }

    #[test]
    fn parses_dates_and_times_ago_for_live_streams() {
        let now = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_764_583_200);
        assert_eq!(
            super::parse_time_ms_at("2025-12-01T10:00:00Z", now),
            Ok(1_764_583_200_000)
        );
        assert_eq!(super::parse_time_ms_at("now", now), Ok(1_764_583_200_000));
        assert_eq!(
            super::parse_time_ms_at("-2h", now),
            Ok(1_764_583_200_000 - 7_200_000)
        );
        assert_eq!(
            super::parse_time_ms_at("-90s", now),
            Ok(1_764_583_200_000 - 90_000)
        );
        assert!(super::parse_time_ms_at("-soon", now).is_err());
        assert!(super::parse_time_ms_at("2025-13-01T10:00:00Z", now).is_err());
    }
}
