//! `vidx search` and `vidx stats`.

use serde::Serialize;
use vidx_core::{SearchFilter, format_hms_ms};
use vidx_pipeline::{PipelineError, SearchRequest};

use crate::app::{AppContext, EXIT_OK, cli_error};
use crate::args::{CommonArgs, SearchArgs};

#[derive(Debug, Serialize)]
pub struct HitLine<'a> {
    pub rank: usize,
    pub id: String,
    pub stream_id: &'a str,
    pub start_ms: u64,
    pub end_ms: u64,
    pub start: String,
    pub end: String,
    pub caption: &'a str,
    pub kind: &'a str,
    pub score: f32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub segment_seq: Option<u64>,
}

/// One line per hit (JSON lines with `json`), or "no hits".
pub fn print_hits(lines: &[HitLine<'_>], json: bool) -> anyhow::Result<()> {
    if lines.is_empty() && !json {
        println!("no hits");
    }
    for line in lines {
        if json {
            println!("{}", serde_json::to_string(line)?);
        } else {
            println!(
                "{:>2}. {:.3}  {} – {}  {}\n    {}",
                line.rank, line.score, line.start, line.end, line.stream_id, line.caption
            );
        }
    }
    Ok(())
}

pub async fn run(context: AppContext, args: &SearchArgs) -> anyhow::Result<u8> {
    if let Some(endpoint) = &args.remote.endpoint {
        return crate::remote::search(endpoint, args.remote.token.as_deref(), args).await;
    }
    let request = SearchRequest {
        text: args.query.clone(),
        filter: SearchFilter {
            tenant: context.config.general.tenant.clone(),
            stream_id: args.stream.clone(),
            from_ms: args.from,
            to_ms: args.to,
        },
        top_k: args.top_k,
    };
    // Reject a bad request before loading anything.
    request.validate().map_err(to_cli_error)?;
    if !context.index_dir().exists() {
        return Err(cli_error(
            vidx_core::ErrorCode::NotFound,
            format!(
                "no index at {}: run `vidx index` first (or pass --data-dir)",
                context.index_dir().display()
            ),
        ));
    }
    let embedder = context.text_embedder().await?;
    let store = context.open_store(embedder.dimension()).await?;
    let hits = vidx_pipeline::search(&store, embedder, request)
        .await
        .map_err(to_cli_error)?;
    let lines: Vec<HitLine<'_>> = hits
        .iter()
        .enumerate()
        .map(|(index, hit)| HitLine {
            rank: index + 1,
            id: hit.id.to_string(),
            stream_id: &hit.payload.stream_id,
            start_ms: hit.payload.start_ms,
            end_ms: hit.payload.end_ms,
            start: format_hms_ms(hit.payload.start_ms),
            end: format_hms_ms(hit.payload.end_ms),
            caption: &hit.payload.caption,
            kind: hit.payload.kind.as_str(),
            score: hit.score,
            segment_seq: Some(hit.payload.segment_seq),
        })
        .collect();
    print_hits(&lines, args.common.json)?;
    Ok(EXIT_OK)
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
