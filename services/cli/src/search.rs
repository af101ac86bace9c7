//! `vidx search` and `vidx stats`.

use serde::Serialize;
use vidx_core::fusion::SearchHit;
use vidx_core::ports::IndexStore;
use vidx_core::types::vector_names;
use vidx_core::{SearchFilter, format_time_ms};
use vidx_pipeline::{PipelineError, SearchMode, SearchRequest};

use crate::app::{AppContext, EXIT_OK, cli_error};
use crate::args::{CommonArgs, SearchArgs};

/// A hit as `vidx search` prints it: its rank and readable times, then the hit itself
/// (the same shape locally and over `--endpoint`).
#[derive(Debug, Serialize)]
struct HitLine<'a> {
    rank: usize,
    start: String,
    end: String,
    #[serde(flatten)]
    hit: &'a SearchHit,
}

/// One line per hit (JSON lines with `json`), or "no hits".
pub fn print_hits(hits: &[SearchHit], json: bool) -> anyhow::Result<()> {
    if hits.is_empty() && !json {
        println!("no hits");
    }
    for (index, hit) in hits.iter().enumerate() {
        let line = HitLine {
            rank: index + 1,
            start: format_time_ms(hit.start_ms),
            end: format_time_ms(hit.end_ms),
            hit,
        };
        if json {
            println!("{}", serde_json::to_string(&line)?);
        } else {
            let description = match (hit.caption.is_empty(), hit.region) {
                (false, _) => hit.caption.clone(),
                (true, Some([x0, y0, x1, y1])) => {
                    format!("[{} {x0:.2},{y0:.2}–{x1:.2},{y1:.2}]", hit.kind)
                }
                (true, None) => format!("[{}]", hit.kind),
            };
            println!(
                "{:>2}. {:.3}  {} – {}  {}\n    {}",
                line.rank, hit.score, line.start, line.end, hit.stream_id, description
            );
        }
    }
    Ok(())
}

/// `--label key=value` flags, checked.
pub fn label_args(labels: &[String]) -> anyhow::Result<Vec<String>> {
    vidx_core::labels::parse_all(labels.iter().map(String::as_str)).map_err(|reason| {
        cli_error(
            vidx_core::ErrorCode::InvalidInput,
            format!("--label: {reason}"),
        )
    })
}

pub async fn run(context: AppContext, args: &SearchArgs) -> anyhow::Result<u8> {
    if let Some(endpoint) = &args.remote.endpoint {
        return crate::remote::search(endpoint, &args.remote, args).await;
    }
    let mut request = SearchRequest {
        text: args.query.clone().unwrap_or_default(),
        filter: SearchFilter {
            tenant: context.config.general.tenant.clone(),
            streams: args.streams.clone(),
            labels: label_args(&args.labels)?,
            from_ms: args.from,
            to_ms: args.to,
            ..SearchFilter::default()
        },
        top_k: args.top_k,
        mode: SearchMode::parse(&args.mode).map_err(to_cli_error)?,
        // A placeholder until the image is embedded below; validation only needs to know
        // that there is one.
        example: (args.image.is_some() || args.like.is_some()).then(Vec::new),
    };
    // Reject a bad request before loading anything.
    request.validate().map_err(to_cli_error)?;
    if let Some(image) = &args.image
        && !image.is_file()
    {
        return Err(cli_error(
            vidx_core::ErrorCode::NotFound,
            format!("--image {}: no such file", image.display()),
        ));
    }
    if !context.index_dir().exists() {
        return Err(cli_error(
            vidx_core::ErrorCode::NotFound,
            format!(
                "no index at {}: run `vidx index` first (or pass --data-dir)",
                context.index_dir().display()
            ),
        ));
    }
    let like = match &args.like {
        Some(id) => Some(vidx_core::Uuid::parse_str(id.trim()).map_err(|error| {
            cli_error(
                vidx_core::ErrorCode::InvalidInput,
                format!("--like {id}: not a hit id ({error})"),
            )
        })?),
        None => None,
    };
    let embedder = context.text_embedder().await?;
    let visual = if request.mode == SearchMode::Caption || like.is_some() {
        None
    } else {
        context.visual_embedder().await?
    };
    let store = context
        .open_store(
            embedder.dimension(),
            visual.as_ref().map(|visual| visual.dimension()),
        )
        .await?;
    if let Some(image) = &args.image {
        let Some(visual) = &visual else {
            return Err(cli_error(
                vidx_core::ErrorCode::InvalidInput,
                "--image needs a PE-Core model (models.visual_embedder or --visual-model-dir)",
            ));
        };
        request.example = Some(embed_image(visual.clone(), image.clone()).await?);
    }
    if let Some(id) = like {
        let point = store
            .point(&request.filter.tenant, id)
            .await
            .map_err(|error| cli_error(error.code(), error.to_string()))?
            .ok_or_else(|| {
                cli_error(
                    vidx_core::ErrorCode::NotFound,
                    format!("--like {id}: no such hit in this index"),
                )
            })?;
        let vector = [vector_names::VISUAL, vector_names::REGION]
            .iter()
            .find_map(|name| point.vectors.get(*name).cloned())
            .ok_or_else(|| {
                cli_error(
                    vidx_core::ErrorCode::InvalidInput,
                    format!(
                        "--like {id}: this {} has no visual or region vector (it was indexed \
                         without models.visual_embedder); search by its caption instead",
                        point.payload.kind.as_str()
                    ),
                )
            })?;
        request.example = Some(vector);
    }
    let models = context.search_models(embedder, visual.as_ref());
    let results = vidx_pipeline::search(&store, &models, request)
        .await
        .map_err(to_cli_error)?;
    if args.windows {
        let windows: Vec<_> = results
            .windows
            .iter()
            .map(vidx_server::query::window_of)
            .collect();
        print_windows(&windows, args.common.json)?;
        return Ok(EXIT_OK);
    }
    // The local index's thumbnails are files under the data dir: name them so.
    let hits: Vec<SearchHit> = results
        .hits
        .iter()
        .map(|fused| SearchHit {
            thumbnail_url: fused.payload.thumbnail.clone(),
            ..SearchHit::from(fused)
        })
        .collect();
    print_hits(&hits, args.common.json)?;
    Ok(EXIT_OK)
}

#[derive(Debug, Serialize)]
struct WindowLine<'a> {
    rank: usize,
    stream_id: &'a str,
    start_ms: u64,
    end_ms: u64,
    start: String,
    end: String,
    score: f64,
    /// The best member's caption.
    caption: &'a str,
    hits: usize,
}

/// Merged windows as the local index and the gRPC API both give them.
pub fn print_windows(windows: &[vidx_proto::v1::Window], json: bool) -> anyhow::Result<()> {
    if windows.is_empty() && !json {
        println!("no hits");
    }
    for (index, window) in windows.iter().enumerate() {
        let line = WindowLine {
            rank: index + 1,
            stream_id: &window.stream_id,
            start_ms: window.start_ms,
            end_ms: window.end_ms,
            start: format_time_ms(window.start_ms),
            end: format_time_ms(window.end_ms),
            score: window.score,
            caption: &window.caption,
            hits: window.hits as usize,
        };
        if json {
            println!("{}", serde_json::to_string(&line)?);
        } else {
            println!(
                "{:>2}. {:.3}  {} – {}  {}  ({} hits)\n    {}",
                line.rank,
                line.score,
                line.start,
                line.end,
                line.stream_id,
                line.hits,
                line.caption
            );
        }
    }
    Ok(())
}

/// Decode an image file with ffmpeg and embed it with PE-Core.
async fn embed_image(
    visual: std::sync::Arc<vidx_model::PeCoreEmbedder>,
    image: std::path::PathBuf,
) -> anyhow::Result<Vec<f32>> {
    use vidx_core::ports::{FrameSampler, VisualEmbedder};
    let size = visual.model().config().vision.image_size as u32;
    tokio::task::spawn_blocking(move || -> anyhow::Result<Vec<f32>> {
        let frames = vidx_media::FfmpegFrameSampler::new(size)
            .sample(&image, vidx_core::TimeRange::new(0, 1000), 1)
            .map_err(|error| {
                cli_error(
                    error.code(),
                    format!("--image {}: {error}", image.display()),
                )
            })?;
        let mut vectors = visual
            .embed_frames(&frames)
            .map_err(|error| cli_error(error.code(), error.to_string()))?;
        vectors
            .pop()
            .ok_or_else(|| cli_error(vidx_core::ErrorCode::Internal, "no image embedding"))
    })
    .await?
}

fn to_cli_error(error: PipelineError) -> anyhow::Error {
    cli_error(error.code(), error.to_string())
}

pub async fn stats(context: AppContext, common: &CommonArgs) -> anyhow::Result<u8> {
    if !context.index_dir().exists() {
        return Err(cli_error(
            vidx_core::ErrorCode::NotFound,
            format!("no index at {}", context.index_dir().display()),
        ));
    }
    // Counting needs no model: open the store as it is.
    let store = context.open_existing_store().await?;
    let counting = store.clone();
    let (points, indexed) =
        tokio::task::spawn_blocking(move || -> Result<(u64, u64), vidx_core::StoreError> {
            Ok((counting.count_blocking(None)?, counting.indexed_vectors()?))
        })
        .await??;
    if common.json {
        println!(
            "{}",
            serde_json::json!({ "data_dir": context.data_dir, "points": points, "indexed_vectors": indexed })
        );
    } else {
        println!("index:   {}", context.index_dir().display());
        println!("points:  {points}");
        println!("in HNSW: {indexed}");
    }
    Ok(EXIT_OK)
}
