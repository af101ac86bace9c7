//! Wiring shared by the commands: configuration, logging, models, the store, exit codes.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use vidx_config::{Config, ConfigSources};
use vidx_core::ErrorCode;
use vidx_core::ports::{Captioner, TextEmbedder, VisualEmbedder};
use vidx_core::regions::RegionSettings;
use vidx_core::types::vector_names;
use vidx_media::FfmpegFrameSampler;
use vidx_model::captioner::PlmCaptioner;
use vidx_model::models::perception_lm::{PlmBundle, fetch_files};
use vidx_model::{PeCoreEmbedder, PeCoreTextEmbedder, SentenceEmbedder};
use vidx_pipeline::captioners::SubtitleCaptioner;
use vidx_pipeline::{Models, SearchModels};
use vidx_server::{Engine, ModelSettings, StoreSettings};
use vidx_store::{AnyStore, EdgeStore, ServerStore, VectorSpec};

use crate::args::{Cli, Command, CommonArgs, ConfigCommand, ModelCommand};

/// Everything worked.
pub const EXIT_OK: u8 = 0;
/// `vidx index`: at least one input or segment failed (the others were indexed).
pub const EXIT_PARTIAL: u8 = 1;
/// Bad usage, configuration or request.
pub const EXIT_USAGE: u8 = 2;
/// A dependency is missing or unavailable (model files, index in use, disk).
pub const EXIT_RUNTIME: u8 = 3;
/// Interrupted (Ctrl-C / SIGTERM).
pub const EXIT_INTERRUPTED: u8 = 130;

/// An error carrying its exit code.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct CliError {
    pub code: ErrorCode,
    pub message: String,
}

pub fn cli_error(code: ErrorCode, message: impl Into<String>) -> anyhow::Error {
    anyhow::Error::new(CliError {
        code,
        message: message.into(),
    })
}

pub fn exit_code_for(error: &anyhow::Error) -> u8 {
    if let Some(cli_error) = error.downcast_ref::<CliError>() {
        return match cli_error.code {
            ErrorCode::InvalidInput | ErrorCode::Unsupported => EXIT_USAGE,
            _ => EXIT_RUNTIME,
        };
    }
    if error.downcast_ref::<vidx_config::ConfigError>().is_some() {
        return EXIT_USAGE;
    }
    EXIT_RUNTIME
}

pub async fn run(cli: Cli) -> anyhow::Result<u8> {
    let env: BTreeMap<String, String> = std::env::vars().collect();
    match &cli.command {
        Command::Index(args) => {
            let mut overrides = common_overrides(&args.common);
            if let Some(seconds) = args.segment_secs {
                overrides.push(("media.segment_secs".into(), toml::Value::Float(seconds)));
            }
            if let Some(frames) = args.frames {
                overrides.push((
                    "media.frames_per_segment".into(),
                    toml::Value::Integer(frames as i64),
                ));
            }
            if let Some(model) = &args.model {
                overrides.push((
                    "models.captioner".into(),
                    toml::Value::String(model.clone()),
                ));
            }
            if let Some(directory) = &args.model_dir {
                overrides.push((
                    "models.captioner_dir".into(),
                    toml::Value::String(directory.display().to_string()),
                ));
            }
            let context =
                AppContext::load(&cli, &env, overrides, !std::io::stderr().is_terminal())?;
            crate::index::run(context, args).await
        }
        Command::Search(args) => {
            let context = AppContext::load(&cli, &env, common_overrides(&args.common), false)?;
            crate::search::run(context, args).await
        }
        Command::Stats(args) => {
            let context = AppContext::load(&cli, &env, common_overrides(&args.common), false)?;
            crate::search::stats(context, &args.common).await
        }
        Command::Run(args) => {
            let mut overrides = common_overrides(&args.common);
            for (key, value) in [
                ("server.listen", args.listen.clone()),
                ("kafka.brokers", args.brokers.clone()),
                ("models.captioner", args.model.clone()),
                (
                    "models.captioner_dir",
                    args.model_dir
                        .as_ref()
                        .map(|directory| directory.display().to_string()),
                ),
            ] {
                if let Some(value) = value {
                    overrides.push((key.into(), toml::Value::String(value)));
                }
            }
            let context = AppContext::load(&cli, &env, overrides, true)?;
            crate::run::run(context, args).await
        }
        Command::Clip(args) => {
            let context = AppContext::load(&cli, &env, common_overrides(&args.common), false)?;
            crate::clip::run(context, args).await
        }
        Command::Delete(args) => {
            let context = AppContext::load(&cli, &env, common_overrides(&args.common), false)?;
            crate::delete::run(context, args).await
        }
        Command::Reindex(args) => {
            let context = AppContext::load(&cli, &env, common_overrides(&args.common), false)?;
            crate::reindex::run(context, args).await
        }
        Command::Eval(args) => {
            let context = AppContext::load(&cli, &env, common_overrides(&args.common), false)?;
            crate::eval::run(context, args).await
        }
        Command::Serve(args) => {
            let mut overrides = common_overrides(&args.common);
            if let Some(listen) = &args.listen {
                overrides.push((
                    "server.http_listen".into(),
                    toml::Value::String(listen.clone()),
                ));
            }
            let context = AppContext::load(&cli, &env, overrides, true)?;
            crate::serve::run(context).await
        }
        Command::Model(ModelCommand::Fetch { model }) => {
            let context = AppContext::load(&cli, &env, Vec::new(), false)?;
            context.fetch_model(model).await
        }
        Command::Streams(args) => {
            let _context = AppContext::load(&cli, &env, Vec::new(), false)?;
            let Some(endpoint) = &args.remote.endpoint else {
                return Err(cli_error(
                    ErrorCode::InvalidInput,
                    "vidx streams asks a running ingest service: pass --endpoint URL (or VIDX_ENDPOINT)",
                ));
            };
            crate::remote::streams(endpoint, &args.remote, args).await
        }
        Command::Config(ConfigCommand::Check) => {
            let context = AppContext::load(&cli, &env, Vec::new(), false)?;
            print!("{}", context.config.to_redacted_toml());
            eprintln!("config ok (data dir: {})", context.data_dir.display());
            Ok(EXIT_OK)
        }
    }
}

fn common_overrides(common: &CommonArgs) -> Vec<(String, toml::Value)> {
    let mut overrides = Vec::new();
    if let Some(directory) = &common.data_dir {
        overrides.push((
            "general.data_dir".into(),
            toml::Value::String(directory.display().to_string()),
        ));
    }
    if let Some(directory) = &common.text_model_dir {
        overrides.push((
            "models.text_embedder_dir".into(),
            toml::Value::String(directory.display().to_string()),
        ));
    }
    if let Some(device) = &common.device {
        overrides.push(("models.device".into(), toml::Value::String(device.clone())));
    }
    if let Some(path) = &common.visual_model_dir {
        overrides.push((
            "models.visual_embedder_dir".into(),
            toml::Value::String(path.display().to_string()),
        ));
    }
    overrides
}

/// Loaded configuration plus derived paths.
pub struct AppContext {
    pub config: Config,
    pub data_dir: PathBuf,
    /// `models.*`, typed once.
    pub models: ModelSettings,
    /// `store.*`, typed once.
    pub store: StoreSettings,
}

impl AppContext {
    fn load(
        cli: &Cli,
        env: &BTreeMap<String, String>,
        overrides: Vec<(String, toml::Value)>,
        verbose_logs: bool,
    ) -> anyhow::Result<Self> {
        let mut overrides = overrides;
        if let Some(format) = &cli.log_format {
            overrides.push((
                "general.log_format".into(),
                toml::Value::String(format.clone()),
            ));
        }
        let config = Config::load(&ConfigSources {
            file: cli.config.clone(),
            env: env.clone(),
            overrides,
        })?;
        init_logging(&config, env, verbose_logs);
        let data_dir = config.data_dir(env);
        let models = ModelSettings::from_config(&config.models)
            .map_err(|error| cli_error(ErrorCode::InvalidInput, error.to_string()))?;
        let store = StoreSettings::from_config(&config, &data_dir);
        Ok(Self {
            config,
            data_dir,
            models,
            store,
        })
    }

    pub fn index_dir(&self) -> PathBuf {
        self.store.edge_path.clone()
    }

    fn device(&self) -> anyhow::Result<candle_core::Device> {
        vidx_model::select_device(self.models.device)
            .map_err(|error| cli_error(error.code(), error.to_string()))
    }

    /// Load the sentence embedder on a blocking thread.
    pub async fn text_embedder(&self) -> anyhow::Result<Arc<dyn TextEmbedder>> {
        let device = self.device()?;
        let source = self.models.text_embedder.clone();
        let embedder = tokio::task::spawn_blocking(move || {
            SentenceEmbedder::from_hub(&source.id, source.hub, device)
        })
        .await
        .context("model loading task")?
        .map_err(|error| cli_error(error.code(), error.to_string()))?;
        Ok(Arc::new(embedder))
    }

    /// The PE-Core visual embedder when one is configured (`models.visual_embedder[_dir]`),
    /// loaded on a blocking thread.
    pub async fn visual_embedder(&self) -> anyhow::Result<Option<Arc<PeCoreEmbedder>>> {
        let Some(source) = self.models.visual_embedder.clone() else {
            return Ok(None);
        };
        let device = self.device()?;
        // PE-Core runs in f32 on the CPU (candle's CPU matmul has no bf16).
        let dtype = if device.is_cpu() {
            candle_core::DType::F32
        } else {
            vidx_model::select_dtype(self.models.dtype, &device)
        };
        let started = std::time::Instant::now();
        let embedder = tokio::task::spawn_blocking(move || {
            PeCoreEmbedder::from_hub(&source.id, &source.hub, device, dtype)
        })
        .await
        .context("model loading task")?
        .map_err(|error| cli_error(error.code(), error.to_string()))?;
        tracing::info!(
            model = %vidx_core::ports::VisualEmbedder::revision(&embedder),
            secs = started.elapsed().as_secs_f64(),
            "PE-Core visual embedder loaded"
        );
        Ok(Some(Arc::new(embedder)))
    }

    /// Every model a node runs, loaded once for `vidx index` and `vidx run` alike: the
    /// worker's set (PLM when configured, subtitles, the sentence embedder, PE-Core and its
    /// regions when configured) and the query side's.
    pub async fn load_models(&self) -> anyhow::Result<LoadedModels> {
        let text_embedder = self.text_embedder().await?;
        let plm = self.plm_captioner().await?;
        let visual = self.visual_embedder().await?;
        let models = Arc::new(Models {
            captioners: plm
                .into_iter()
                .chain([Arc::new(SubtitleCaptioner) as Arc<dyn Captioner>])
                .collect(),
            text_embedder: text_embedder.clone(),
            visual_embedder: visual
                .clone()
                .map(|visual| visual as Arc<dyn VisualEmbedder>),
            regions: (visual.is_some() && self.models.regions).then(|| RegionSettings {
                captions: self.models.region_captions,
                ..RegionSettings::default()
            }),
        });
        Ok(LoadedModels {
            text_dimension: text_embedder.dimension(),
            visual_dimension: visual.as_ref().map(|visual| visual.dimension()),
            search: self.search_models(text_embedder, visual.as_ref()),
            models,
        })
    }

    /// The models and `store` as a node's engine, with the FFmpeg frame sampler.
    pub fn engine<S>(&self, loaded: LoadedModels, store: S) -> Engine<S> {
        Engine {
            store: Arc::new(store),
            search: loaded.search,
            models: loaded.models,
            sampler: Arc::new(FfmpegFrameSampler::with_max_pixels(
                self.config.media.frame_size,
                self.config.media.max_pixels,
            )),
        }
    }

    /// The query-side models: the sentence embedder and, when configured, PE-Core's text tower.
    pub fn search_models(
        &self,
        caption: Arc<dyn TextEmbedder>,
        visual: Option<&Arc<PeCoreEmbedder>>,
    ) -> SearchModels {
        SearchModels {
            caption,
            visual: visual.map(|visual| {
                Arc::new(PeCoreTextEmbedder(visual.clone())) as Arc<dyn TextEmbedder>
            }),
            fusion: Default::default(),
            merge_gap_ms: self.models.merge_gap_ms,
        }
    }

    /// The PerceptionLM captioner when one is configured (`models.captioner[_dir]`), loaded
    /// on a blocking thread.
    pub async fn plm_captioner(&self) -> anyhow::Result<Option<Arc<dyn Captioner>>> {
        let Some((source, settings)) = self.models.captioner.clone() else {
            return Ok(None);
        };
        let device = self.device()?;
        let dtype = vidx_model::select_dtype(self.models.dtype, &device);
        let started = std::time::Instant::now();
        let frames = self.config.media.frames_per_segment;
        let captioner = tokio::task::spawn_blocking(move || {
            let bundle = PlmBundle::from_hub(&source.id, &source.hub, &device, dtype)?;
            let captioner = PlmCaptioner::new(Arc::new(bundle), settings, &source.id);
            captioner.check_context(frames)?;
            Ok::<_, vidx_core::ModelError>(captioner)
        })
        .await
        .context("model loading task")?
        .map_err(|error| cli_error(error.code(), error.to_string()))?;
        tracing::info!(
            model = %captioner.revision(),
            secs = started.elapsed().as_secs_f64(),
            "PerceptionLM captioner loaded"
        );
        Ok(Some(Arc::new(captioner)))
    }

    /// `vidx model fetch ID`: download everything `--model ID` needs into the HF cache.
    async fn fetch_model(&self, model_id: &str) -> anyhow::Result<u8> {
        let mut options = self.models.text_embedder.hub.clone();
        options.local_dir = None;
        if std::mem::take(&mut options.offline) {
            return Err(cli_error(
                ErrorCode::Unavailable,
                "models.offline is set: fetching needs the hub",
            ));
        }
        eprintln!("fetching {model_id} into the Hugging Face cache (this can take a while)…");
        let id = model_id.to_string();
        let has_token = options.token.is_some()
            || std::env::var("HF_TOKEN").is_ok_and(|token| !token.is_empty());
        let files = tokio::task::spawn_blocking(move || {
            if vidx_model::pe_embedder::is_pe_core(&id) {
                vidx_model::pe_embedder::fetch_pe_core(&id, &options)
            } else {
                fetch_files(&id, &options)
            }
        })
        .await
        .context("download task")?
        .map_err(|error| {
            let hint = if has_token {
                ""
            } else {
                "; no HF_TOKEN is set: the official PerceptionLM repositories are gated \
                     (accept the licence on huggingface.co, then export HF_TOKEN)"
            };
            cli_error(error.code(), format!("{error}{hint}"))
        })?;
        let bytes: u64 = files
            .files
            .iter()
            .filter_map(|(_, path)| std::fs::metadata(path).ok())
            .map(|metadata| metadata.len())
            .sum();
        println!(
            "{model_id}: {} files, {:.1} GB ({})",
            files.files.len(),
            bytes as f64 / 1e9,
            files.origin
        );
        if let Some((_, path)) = files.files.first()
            && let Some(directory) = path.parent()
        {
            println!("  {}", directory.display());
        }
        Ok(EXIT_OK)
    }

    /// Open (or create) the embedded Qdrant Edge index for `text_dimension`-sized text vectors
    /// and, with a visual model, `visual`/`region` vectors of its dimension.
    pub async fn open_store(
        &self,
        text_dimension: usize,
        visual_dimension: Option<usize>,
    ) -> anyhow::Result<EdgeStore> {
        self.open_store_with(vector_specs(text_dimension, visual_dimension))
            .await
    }

    /// The configured store (`store.kind`): the embedded index, or a Qdrant server collection
    /// (created if missing).
    pub async fn open_any_store(
        &self,
        text_dimension: usize,
        visual_dimension: Option<usize>,
    ) -> anyhow::Result<AnyStore> {
        let Some(options) = &self.store.server else {
            return Ok(AnyStore::Edge(
                self.open_store(text_dimension, visual_dimension).await?,
            ));
        };
        let vectors = vector_specs(text_dimension, visual_dimension);
        let server = ServerStore::connect(options, &vectors)
            .await
            .map_err(|error| cli_error(error.code(), error.to_string()))?;
        Ok(AnyStore::Server(server))
    }

    /// The embedded index for a reindex to the configured models: the next generation gets
    /// their vectors; the current one is not checked against them.
    pub async fn open_store_for_reindex(
        &self,
        text_dimension: usize,
        visual_dimension: Option<usize>,
    ) -> anyhow::Result<EdgeStore> {
        let (path, options) = (self.store.edge_path.clone(), self.store.edge.clone());
        let vectors = vector_specs(text_dimension, visual_dimension);
        tokio::task::spawn_blocking(move || EdgeStore::open_for_reindex(&path, &vectors, options))
            .await
            .context("store task")?
            .map_err(|error| cli_error(error.code(), error.to_string()))
    }

    /// Open the existing index without checking its vectors against a model.
    pub async fn open_existing_store(&self) -> anyhow::Result<EdgeStore> {
        self.open_store_with(Vec::new()).await
    }

    /// The embedded index (whatever `store.kind` says: `vidx index` and the local commands
    /// always use it) with `vectors`.
    async fn open_store_with(&self, vectors: Vec<VectorSpec>) -> anyhow::Result<EdgeStore> {
        let (path, options) = (self.store.edge_path.clone(), self.store.edge.clone());
        tokio::task::spawn_blocking(move || EdgeStore::open(&path, &vectors, options))
            .await
            .context("store task")?
            .map_err(|error| cli_error(error.code(), error.to_string()))
    }
}

/// What [`AppContext::load_models`] loaded.
pub struct LoadedModels {
    pub models: Arc<Models>,
    pub search: SearchModels,
    pub text_dimension: usize,
    pub visual_dimension: Option<usize>,
}

/// The named vectors of the index: `text`, plus `visual` and `region` with a visual model.
fn vector_specs(text_dimension: usize, visual_dimension: Option<usize>) -> Vec<VectorSpec> {
    let mut specs = vec![VectorSpec {
        name: vector_names::TEXT.into(),
        dimension: text_dimension,
    }];
    if let Some(dimension) = visual_dimension {
        for name in [vector_names::VISUAL, vector_names::REGION] {
            specs.push(VectorSpec {
                name: name.into(),
                dimension,
            });
        }
    }
    specs
}

/// The process's telemetry, flushed at exit (`shutdown_telemetry`).
static TELEMETRY: std::sync::Mutex<Option<vidx_telemetry::Telemetry>> = std::sync::Mutex::new(None);

fn init_logging(config: &Config, env: &BTreeMap<String, String>, verbose: bool) {
    let level = if verbose {
        config.general.log_level.as_str()
    } else {
        "warn"
    };
    let options = vidx_telemetry::TelemetryOptions {
        log_format: vidx_telemetry::LogFormat::parse(&config.general.log_format)
            .unwrap_or_default(),
        default_filter: format!(
            "warn,qdrant_edge=error,vidx={level},vidx_cli={level},vidx_pipeline={level},vidx_media={level},vidx_model={level},vidx_store={level},vidx_server={level},vidx_bus={level}"
        ),
        ansi: std::io::stderr().is_terminal(),
        service_name: "vidx".into(),
    };
    match vidx_telemetry::init(&options, env) {
        Ok(telemetry) => {
            if telemetry.exporting() {
                tracing::info!("exporting traces over OTLP");
            }
            if let Ok(mut slot) = TELEMETRY.lock() {
                *slot = Some(telemetry);
            }
        }
        Err(error) => eprintln!("warning: traces are not exported: {error}"),
    }
}

/// Flush the spans still buffered for the OTLP exporter.
pub fn shutdown_telemetry() {
    let telemetry = TELEMETRY.lock().ok().and_then(|mut slot| slot.take());
    if let Some(telemetry) = telemetry {
        telemetry.shutdown();
    }
}

/// First Ctrl-C / SIGTERM: stop taking new work and finish cleanly. Second: exit now.
pub fn spawn_signal_handler(shutdown: tokio::sync::watch::Sender<bool>) {
    tokio::spawn(async move {
        wait_for_signal().await;
        eprintln!(
            "stopping: finishing the batch in flight (up to pipeline.shutdown_grace_ms; press Ctrl-C again to exit now)"
        );
        let _ = shutdown.send(true);
        wait_for_signal().await;
        std::process::exit(i32::from(EXIT_INTERRUPTED));
    });
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        let mut terminate =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(signal) => signal,
                Err(_) => {
                    let _ = tokio::signal::ctrl_c().await;
                    return;
                }
            };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = terminate.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
