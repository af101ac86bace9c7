//! Search planning: validate the request, embed the query, run the filtered vector search.

use std::sync::Arc;

use vidx_core::ports::{IndexStore, TextEmbedder};
use vidx_core::types::vector_names;
use vidx_core::{Hit, SearchFilter, VectorQuery};

use crate::PipelineError;

/// Largest `top_k` a search may ask for.
pub const MAX_TOP_K: usize = 1000;
/// Longest query text accepted, in characters.
pub const MAX_QUERY_CHARS: usize = 2048;

#[derive(Debug, Clone, PartialEq)]
pub struct SearchRequest {
    pub text: String,
    pub filter: SearchFilter,
    pub top_k: usize,
}

impl SearchRequest {
    /// Reject requests that cannot be answered, naming the field.
    pub fn validate(&self) -> Result<(), PipelineError> {
        let invalid = |field: &'static str, reason: String| {
            Err(PipelineError::InvalidArgument { field, reason })
        };
        if self.text.trim().is_empty() {
            return invalid("query", "must not be empty".into());
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

/// Embed the query text and search the caption/subtitle text vectors.
pub async fn search<S: IndexStore>(
    store: &S,
    embedder: Arc<dyn TextEmbedder>,
    request: SearchRequest,
) -> Result<Vec<Hit>, PipelineError> {
    request.validate()?;
    let text = request.text.clone();
    let mut vectors = tokio::task::spawn_blocking(move || embedder.embed(&[text]))
        .await
        .map_err(|error| PipelineError::Task(error.to_string()))??;
    let vector = vectors
        .pop()
        .ok_or_else(|| PipelineError::Task("embedder returned no vector".into()))?;
    let hits = store
        .search(VectorQuery {
            vector_name: vector_names::TEXT.into(),
            vector,
            filter: request.filter,
            top_k: request.top_k,
        })
        .await?;
    Ok(hits)
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
