//! `vidx eval QUERIES.jsonl`: retrieval quality of the local index against labelled queries.
//!
//! One JSON object per line: `{"query", "stream_id", "start_ms", "end_ms"}`. A hit is right
//! when it is of that stream and its time overlaps that span. Per search mode (caption,
//! visual, region, hybrid; visual and region need the PE-Core model) it reports recall@1,
//! @5 and @10 (queries with a right hit among the first k), MRR (the mean of 1 / the rank of
//! the first right hit, 0 without one in the top 10) and mean IoU (the intersection over
//! union of the labelled span with the first merged window of the right stream; 0 without
//! one).

use std::path::Path;

use serde::{Deserialize, Serialize};
use vidx_core::ErrorCode;
use vidx_core::SearchFilter;
use vidx_pipeline::{SearchMode, SearchRequest};

use crate::app::{AppContext, EXIT_OK, cli_error};
use crate::args::EvalArgs;

/// Hits looked at per query: recall is reported up to 10.
const DEPTH: usize = 10;

/// A labelled query.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct Labelled {
    query: String,
    stream_id: String,
    start_ms: u64,
    end_ms: u64,
}

/// One mode's scores.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Scores {
    pub recall_at_1: f64,
    pub recall_at_5: f64,
    pub recall_at_10: f64,
    pub mrr: f64,
    pub mean_iou: f64,
}

#[derive(Debug, Serialize)]
struct Report {
    queries: usize,
    /// Scores per mode.
    modes: serde_json::Map<String, serde_json::Value>,
    /// Modes asked for that could not run, and why.
    #[serde(skip_serializing_if = "serde_json::Map::is_empty")]
    unavailable: serde_json::Map<String, serde_json::Value>,
}

/// The labelled queries of `path`; a bad line is an error naming it.
fn read_queries(path: &Path) -> anyhow::Result<Vec<Labelled>> {
    let text = std::fs::read_to_string(path)
        .map_err(|error| cli_error(ErrorCode::NotFound, format!("{}: {error}", path.display())))?;
    let mut queries = Vec::new();
    for (index, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let bad = |reason: String| {
            cli_error(
                ErrorCode::InvalidInput,
                format!("{} line {}: {reason}", path.display(), index + 1),
            )
        };
        let labelled: Labelled = serde_json::from_str(line).map_err(|error| {
            bad(format!(
                "{error} (expected {{\"query\", \"stream_id\", \"start_ms\", \"end_ms\"}})"
            ))
        })?;
        if labelled.query.trim().is_empty() {
            return Err(bad("query is empty".into()));
        }
        if labelled.end_ms <= labelled.start_ms {
            return Err(bad("end_ms must be after start_ms".into()));
        }
        queries.push(labelled);
    }
    if queries.is_empty() {
        return Err(cli_error(
            ErrorCode::InvalidInput,
            format!("{}: no queries", path.display()),
        ));
    }
    Ok(queries)
}

fn overlaps(a: (u64, u64), b: (u64, u64)) -> bool {
    a.0 < b.1 && b.0 < a.1
}

fn iou(a: (u64, u64), b: (u64, u64)) -> f64 {
    let intersection = a.1.min(b.1).saturating_sub(a.0.max(b.0));
    let union = a.1.max(b.1) - a.0.min(b.0);
    if union == 0 {
        0.0
    } else {
        intersection as f64 / union as f64
    }
}

/// What one query's search gave: the rank of its first right hit, and the IoU of its first
/// window of the right stream.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Judged {
    pub rank: Option<usize>,
    pub iou: f64,
}

/// Scores over the judged queries.
pub fn score(judged: &[Judged]) -> Scores {
    let count = judged.len().max(1) as f64;
    let within = |k: usize| {
        judged
            .iter()
            .filter(|judged| judged.rank.is_some_and(|rank| rank <= k))
            .count() as f64
            / count
    };
    Scores {
        recall_at_1: within(1),
        recall_at_5: within(5),
        recall_at_10: within(10),
        mrr: judged
            .iter()
            .map(|judged| judged.rank.map_or(0.0, |rank| 1.0 / rank as f64))
            .sum::<f64>()
            / count,
        mean_iou: judged.iter().map(|judged| judged.iou).sum::<f64>() / count,
    }
}

pub async fn run(context: AppContext, args: &EvalArgs) -> anyhow::Result<u8> {
    let queries = read_queries(&args.queries)?;
    let mut modes = Vec::new();
    for name in args
        .modes
        .split(',')
        .map(str::trim)
        .filter(|m| !m.is_empty())
    {
        let mode = SearchMode::parse(name)
            .map_err(|error| cli_error(ErrorCode::InvalidInput, format!("--modes: {error}")))?;
        modes.push((name.to_string(), mode));
    }
    if !context.index_dir().exists() {
        return Err(cli_error(
            ErrorCode::NotFound,
            format!(
                "no index at {}: run `vidx index` first (or pass --data-dir)",
                context.index_dir().display()
            ),
        ));
    }
    let embedder = context.text_embedder().await?;
    let needs_visual = modes.iter().any(|(_, mode)| *mode != SearchMode::Caption);
    let visual = if needs_visual {
        context.visual_embedder().await?
    } else {
        None
    };
    let store = context
        .open_store(
            embedder.dimension(),
            visual.as_ref().map(|visual| visual.dimension()),
        )
        .await?;
    let models = context.search_models(embedder, visual.as_ref());
    let mut report = Report {
        queries: queries.len(),
        modes: Default::default(),
        unavailable: Default::default(),
    };
    for (name, mode) in modes {
        if matches!(mode, SearchMode::Visual | SearchMode::Region) && visual.is_none() {
            report.unavailable.insert(
                name,
                "needs a PE-Core model (models.visual_embedder or --visual-model-dir)".into(),
            );
            continue;
        }
        let mut judged = Vec::with_capacity(queries.len());
        for labelled in &queries {
            let request = SearchRequest {
                text: labelled.query.clone(),
                filter: SearchFilter {
                    tenant: context.config.general.tenant.clone(),
                    ..SearchFilter::default()
                },
                top_k: DEPTH,
                mode,
                example: None,
            };
            let results = vidx_pipeline::search(&store, &models, request)
                .await
                .map_err(|error| cli_error(ErrorCode::Internal, error.to_string()))?;
            let truth = (labelled.start_ms, labelled.end_ms);
            let right = |stream: &str, span: (u64, u64)| {
                stream == labelled.stream_id && overlaps(span, truth)
            };
            let rank = results
                .hits
                .iter()
                .position(|hit| {
                    right(
                        &hit.payload.stream_id,
                        (hit.payload.start_ms, hit.payload.end_ms),
                    )
                })
                .map(|index| index + 1);
            let iou = results
                .windows
                .iter()
                .find(|window| window.stream_id == labelled.stream_id)
                .map_or(0.0, |window| iou((window.start_ms, window.end_ms), truth));
            judged.push(Judged { rank, iou });
        }
        report
            .modes
            .insert(name, serde_json::to_value(score(&judged))?);
    }
    if args.common.json {
        println!("{}", serde_json::to_string(&report)?);
        return Ok(EXIT_OK);
    }
    println!(
        "{:<8} {:>7} {:>6} {:>6} {:>6} {:>6} {:>6}",
        "mode", "queries", "R@1", "R@5", "R@10", "MRR", "mIoU"
    );
    for (name, scores) in &report.modes {
        let scores: Scores = Scores {
            recall_at_1: scores["recall_at_1"].as_f64().unwrap_or(0.0),
            recall_at_5: scores["recall_at_5"].as_f64().unwrap_or(0.0),
            recall_at_10: scores["recall_at_10"].as_f64().unwrap_or(0.0),
            mrr: scores["mrr"].as_f64().unwrap_or(0.0),
            mean_iou: scores["mean_iou"].as_f64().unwrap_or(0.0),
        };
        println!(
            "{name:<8} {:>7} {:>6.3} {:>6.3} {:>6.3} {:>6.3} {:>6.3}",
            report.queries,
            scores.recall_at_1,
            scores.recall_at_5,
            scores.recall_at_10,
            scores.mrr,
            scores.mean_iou
        );
    }
    for (name, reason) in &report.unavailable {
        println!("{name:<8} not run: {}", reason.as_str().unwrap_or_default());
    }
    Ok(EXIT_OK)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scores_follow_their_definitions() {
        let judged = [
            Judged {
                rank: Some(1),
                iou: 1.0,
            },
            Judged {
                rank: Some(3),
                iou: 0.5,
            },
            Judged {
                rank: Some(7),
                iou: 0.0,
            },
            Judged {
                rank: None,
                iou: 0.0,
            },
        ];
        let scores = score(&judged);
        assert_eq!(scores.recall_at_1, 0.25);
        assert_eq!(scores.recall_at_5, 0.5);
        assert_eq!(scores.recall_at_10, 0.75);
        assert!((scores.mrr - (1.0 + 1.0 / 3.0 + 1.0 / 7.0) / 4.0).abs() < 1e-12);
        assert_eq!(scores.mean_iou, 0.375);
        assert_eq!(iou((0, 10), (5, 15)), 5.0 / 15.0);
        assert!(overlaps((0, 10), (9, 20)) && !overlaps((0, 10), (10, 20)));
    }
}
