//! Search planning: validate the request, embed the query once per channel (the sentence
//! embedder against caption `text` vectors, PE-Core's text tower against `visual` and
//! `region` vectors), run one filtered vector search per channel, fuse the ranked lists by
//! reciprocal rank fusion and merge neighbouring hits of a stream into windows.
//!
//! The channels are searched separately and fused here rather than in one Qdrant query with
//! prefetches: every hit then carries each channel's own rank and score, and the Qdrant Edge
//! and Qdrant server stores behave identically.

use std::collections::BTreeMap;
use std::sync::Arc;

use vidx_core::fusion::{Channel, FusedHit, FusionSettings, MomentWindow, fuse, merge_windows};
use vidx_core::ports::{IndexStore, TextEmbedder};
use vidx_core::types::vector_names;
use vidx_core::{SearchFilter, VectorQuery};

use crate::PipelineError;

/// Largest `top_k` a search may ask for.
pub const MAX_TOP_K: usize = 1000;
/// Longest query text accepted, in characters.
pub const MAX_QUERY_CHARS: usize = 2048;
/// Each channel returns this many times `top_k` candidates before fusion (capped at
/// `MAX_TOP_K`), so a point ranked lower by one channel can still be lifted by another.
const CANDIDATE_FACTOR: usize = 3;

/// Which vectors a search consults.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SearchMode {
    /// Caption and subtitle text (sentence embeddings).
    Caption,
    /// What the moment's frames look like (PE-Core).
    Visual,
    /// What regions inside the frames look like (PE-Core).
    Region,
    /// All of them, fused.
    Hybrid,
}

impl SearchMode {
    /// `""` means hybrid (which falls back to captions when no visual model is loaded).
    pub fn parse(value: &str) -> Result<Self, PipelineError> {
        match value {
            "" | "hybrid" => Ok(SearchMode::Hybrid),
            "caption" => Ok(SearchMode::Caption),
            "visual" => Ok(SearchMode::Visual),
            "region" => Ok(SearchMode::Region),
            other => Err(PipelineError::InvalidArgument {
                field: "mode",
                reason: format!("`{other}` is not one of caption, visual, region, hybrid"),
            }),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            SearchMode::Caption => "caption",
            SearchMode::Visual => "visual",
            SearchMode::Region => "region",
            SearchMode::Hybrid => "hybrid",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct SearchRequest {
    pub text: String,
    pub filter: SearchFilter,
    pub top_k: usize,
    pub mode: SearchMode,
    /// Search by example: a PE-Core image embedding used instead of the text against the
    /// `visual` and `region` vectors (the text may then be empty).
    pub example: Option<Vec<f32>>,
}

impl SearchRequest {
    /// Reject requests that cannot be answered, naming the field.
    pub fn validate(&self) -> Result<(), PipelineError> {
        let invalid = |field: &'static str, reason: String| {
            Err(PipelineError::InvalidArgument { field, reason })
        };
        if self.text.trim().is_empty() && self.example.is_none() {
            return invalid("query", "must not be empty".into());
        }
        if self.example.is_some() && self.mode == SearchMode::Caption {
            return invalid(
                "mode",
                "an example (an image or a hit) searches visual or region vectors, not captions"
                    .into(),
            );
        }
        if self.text.chars().count() > MAX_QUERY_CHARS {
            return invalid("query", format!("longer than {MAX_QUERY_CHARS} characters"));
        }
        if self.top_k == 0 || self.top_k > MAX_TOP_K {
            return invalid("top_k", format!("must be between 1 and {MAX_TOP_K}"));
        }
        if self.filter.tenant.is_empty() {
            return invalid("tenant", "must not be empty".into());
        }
        if let (Some(from_ms), Some(to_ms)) = (self.filter.from_ms, self.filter.to_ms)
            && from_ms > to_ms
        {
            return invalid("from_ms", format!("{from_ms} is after to_ms {to_ms}"));
        }
        Ok(())
    }
}

/// The query-side models.
#[derive(Clone)]
pub struct SearchModels {
    /// The sentence embedder of caption and subtitle text.
    pub caption: Arc<dyn TextEmbedder>,
    /// PE-Core's text tower, when a visual model is configured.
    pub visual: Option<Arc<dyn TextEmbedder>>,
    pub fusion: FusionSettings,
    /// Neighbouring hits of one stream closer than this merge into one window.
    pub merge_gap_ms: u64,
}

impl std::fmt::Debug for SearchModels {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("SearchModels")
            .field("caption", &self.caption.name())
            .field(
                "visual",
                &self.visual.as_ref().map(|model| model.name().to_string()),
            )
            .finish()
    }
}

impl SearchModels {
    pub fn caption_only(caption: Arc<dyn TextEmbedder>) -> Self {
        Self {
            caption,
            visual: None,
            fusion: FusionSettings::default(),
            merge_gap_ms: 2000,
        }
    }

    /// The channels `mode` consults with these models; an error when it needs a model that
    /// is not loaded.
    pub fn channels(&self, mode: SearchMode) -> Result<Vec<Channel>, PipelineError> {
        let needs_visual = |mode: SearchMode| PipelineError::InvalidArgument {
            field: "mode",
            reason: format!(
                "`{}` search needs a PE-Core model (models.visual_embedder); this node has none",
                mode.as_str()
            ),
        };
        match (mode, self.visual.is_some()) {
            (SearchMode::Caption, _) => Ok(vec![Channel::Caption]),
            (SearchMode::Visual, true) => Ok(vec![Channel::Visual]),
            (SearchMode::Region, true) => Ok(vec![Channel::Region]),
            (SearchMode::Visual | SearchMode::Region, false) => Err(needs_visual(mode)),
            (SearchMode::Hybrid, true) => Ok(vec![
                Channel::Caption,
                Channel::Lexical,
                Channel::Visual,
                Channel::Region,
            ]),
            (SearchMode::Hybrid, false) => Ok(vec![Channel::Caption, Channel::Lexical]),
        }
    }
}

/// Fused hits (best first) and the windows they form.
#[derive(Debug, Clone, PartialEq)]
pub struct SearchResults {
    pub hits: Vec<FusedHit>,
    pub windows: Vec<MomentWindow>,
    /// The channels that were searched.
    pub channels: Vec<Channel>,
}

/// Run `request` over its channels and fuse.
pub async fn search<S: IndexStore>(
    store: &S,
    models: &SearchModels,
    request: SearchRequest,
) -> Result<SearchResults, PipelineError> {
    request.validate()?;
    let channels = if request.example.is_some() {
        // An example (an image's or a stored point's vector) has no caption embedding or
        // words: it searches what things look like, and needs no model.
        match request.mode {
            SearchMode::Visual => vec![Channel::Visual],
            SearchMode::Region => vec![Channel::Region],
            SearchMode::Hybrid | SearchMode::Caption => vec![Channel::Visual, Channel::Region],
        }
    } else {
        models.channels(request.mode)?
    };
    let candidates = if channels.len() > 1 {
        (request.top_k * CANDIDATE_FACTOR).min(MAX_TOP_K)
    } else {
        request.top_k
    };
    let caption_vector = if channels
        .iter()
        .any(|channel| matches!(channel, Channel::Caption | Channel::Lexical))
    {
        Some(embed_query(models.caption.clone(), &request.text).await?)
    } else {
        None
    };
    let wants_visual = channels
        .iter()
        .any(|channel| matches!(channel, Channel::Visual | Channel::Region));
    let visual_vector = match (&request.example, &models.visual, wants_visual) {
        (Some(example), _, true) => Some(example.clone()),
        (None, Some(visual), true) => Some(embed_query(visual.clone(), &request.text).await?),
        _ => None,
    };
    let mut ranked = BTreeMap::new();
    for channel in &channels {
        // The lexical channel: captions that share a word with the query (the store's
        // full-text index), ranked by the caption embedding.
        let (vector, vector_name, caption_words) = match channel {
            Channel::Caption => (caption_vector.clone(), vector_names::TEXT, None),
            Channel::Lexical => (
                caption_vector.clone(),
                vector_names::TEXT,
                Some(request.text.clone()),
            ),
            Channel::Visual => (visual_vector.clone(), vector_names::VISUAL, None),
            Channel::Region => (visual_vector.clone(), vector_names::REGION, None),
        };
        let Some(vector) = vector else {
            continue;
        };
        let hits = store
            .search(VectorQuery {
                vector_name: vector_name.into(),
                vector,
                filter: request.filter.clone(),
                top_k: candidates,
                caption_words,
            })
            .await?;
        ranked.insert(*channel, hits);
    }
    let mut hits = fuse(ranked, &models.fusion, request.top_k);
    if let [only] = channels.as_slice() {
        // One channel: report its own similarity rather than a rank-derived score.
        for hit in &mut hits {
            if let Some(channel_score) = hit.channels.get(only) {
                hit.score = f64::from(channel_score.score);
            }
        }
    }
    let windows = merge_windows(hits.clone(), models.merge_gap_ms);
    Ok(SearchResults {
        hits,
        windows,
        channels,
    })
}

async fn embed_query(
    embedder: Arc<dyn TextEmbedder>,
    text: &str,
) -> Result<Vec<f32>, PipelineError> {
    let text = text.to_string();
    let mut vectors = tokio::task::spawn_blocking(move || embedder.embed(&[text]))
        .await
        .map_err(|error| PipelineError::Task(error.to_string()))??;
    vectors
        .pop()
        .ok_or_else(|| PipelineError::Task("embedder returned no vector".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request() -> SearchRequest {
        SearchRequest {
            text: "a cat".into(),
            filter: SearchFilter {
                tenant: "t".into(),
                ..Default::default()
            },
            top_k: 10,
            mode: SearchMode::Hybrid,
            example: None,
        }
    }

    #[test]
    fn validation_names_the_field() {
        let cases: Vec<(SearchRequest, &str)> = vec![
            (
                SearchRequest {
                    text: "  ".into(),
                    ..request()
                },
                "query",
            ),
            (
                SearchRequest {
                    top_k: 0,
                    ..request()
                },
                "top_k",
            ),
            (
                SearchRequest {
                    top_k: MAX_TOP_K + 1,
                    ..request()
                },
                "top_k",
            ),
            (
                SearchRequest {
                    text: "x".repeat(MAX_QUERY_CHARS + 1),
                    ..request()
                },
                "query",
            ),
            (
                SearchRequest {
                    filter: SearchFilter {
                        tenant: "t".into(),
                        from_ms: Some(10),
                        to_ms: Some(5),
                        ..Default::default()
                    },
                    ..request()
                },
                "from_ms",
            ),
        ];
        for (case, field) in cases {
            match case.validate() {
                Err(PipelineError::InvalidArgument { field: named, .. }) => {
                    assert_eq!(named, field)
                }
                other => panic!("expected invalid {field}, got {other:?}"),
            }
        }
        assert!(request().validate().is_ok());
    }
}
