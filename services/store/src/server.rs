//! The `IndexStore` port on a **Qdrant server** (or cluster) through its gRPC API
//! (qdrant-client): the distributed mode's index. The collection and its payload indexes are
//! created on start; upserts wait until the points are applied (`wait=true`), so an ack means
//! durable; searches always carry the tenant condition.

use std::collections::HashMap;
use std::time::Duration;

use qdrant_client::qdrant::point_id::PointIdOptions;
use qdrant_client::qdrant::vectors_config::Config as VectorsConfigKind;
use qdrant_client::qdrant::{
    Condition, CountPointsBuilder, CreateCollectionBuilder, CreateFieldIndexCollectionBuilder,
    Distance, FieldType, Filter, HnswConfigDiffBuilder, PointStruct, QueryPointsBuilder, Range,
    ScoredPoint, UpsertPointsBuilder, VectorParamsBuilder, VectorsConfigBuilder,
};
use qdrant_client::{Payload, Qdrant, QdrantError};
use vidx_core::ports::{Deleted, IndexStore};
use vidx_core::types::payload_keys;
use vidx_core::{Hit, IndexPoint, PointPayload, SearchFilter, StoreError, VectorQuery};

use crate::VectorSpec;
use crate::edge::{INDEXED_INTEGERS, INDEXED_KEYWORDS, PAYLOAD_M, payload_hnsw};

/// Points read and deleted at a time by a delete.
const DELETE_PAGE: u32 = 1_000;

/// How to reach the server and which collection to use.
#[derive(Clone)]
pub struct ServerStoreOptions {
    /// gRPC URL, e.g. `http://qdrant:6334` (`https://` for TLS).
    pub url: String,
    pub api_key: Option<String>,
    pub collection: String,
    pub timeout: Duration,
}

impl std::fmt::Debug for ServerStoreOptions {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("ServerStoreOptions")
            .field("url", &self.url)
            .field("api_key", &self.api_key.as_ref().map(|_| "***"))
            .field("collection", &self.collection)
            .finish()
    }
}

/// A Qdrant server collection. Cloning shares the connection.
#[derive(Clone)]
pub struct ServerStore {
    client: std::sync::Arc<Qdrant>,
    collection: String,
}

impl std::fmt::Debug for ServerStore {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("ServerStore")
            .field("collection", &self.collection)
            .finish_non_exhaustive()
    }
}

/// The server's answer, typed: a request the server rejects as invalid is the data's fault;
/// everything else (unreachable, overloaded, internal, credentials refused, collection gone)
/// is the store's, which the worker waits out instead of dead-lettering. The client reports a
/// refused connection as `Internal` ("Failed to connect"): that is the store's fault too.
fn server_error(what: &'static str) -> impl Fn(QdrantError) -> StoreError {
    move |error| match &error {
        QdrantError::ResponseError { status } => {
            let message = format!("qdrant {what}: {}", status.message());
            match status.code() {
                tonic::Code::InvalidArgument | tonic::Code::OutOfRange => {
                    StoreError::Invalid(message)
                }
                tonic::Code::Unauthenticated | tonic::Code::PermissionDenied => {
                    StoreError::Unauthenticated(message)
                }
                tonic::Code::NotFound => StoreError::CollectionMissing(message),
                tonic::Code::Unavailable
                | tonic::Code::DeadlineExceeded
                | tonic::Code::Cancelled
                | tonic::Code::Unknown
                | tonic::Code::ResourceExhausted
                | tonic::Code::Aborted => StoreError::Unavailable(message),
                _ => StoreError::Internal(message),
            }
        }
        QdrantError::ResourceExhaustedError { .. } | QdrantError::Io(_) => {
            StoreError::Unavailable(format!("qdrant {what}: {error}"))
        }
        QdrantError::ConversionError(_) => StoreError::Invalid(format!("qdrant {what}: {error}")),
        _ => StoreError::Internal(format!("qdrant {what}: {error}")),
    }
}

impl ServerStore {
    /// Connect, and create the collection (named cosine vectors) and the payload indexes if
    /// they do not exist. An existing collection must hold `vectors` with the same dimensions.
    pub async fn connect(
        options: &ServerStoreOptions,
        vectors: &[VectorSpec],
    ) -> Result<Self, StoreError> {
        let client = Qdrant::from_url(&options.url)
            .api_key(options.api_key.clone())
            .timeout(options.timeout)
            .connect_timeout(Duration::from_secs(10))
            .skip_compatibility_check()
            .build()
            .map_err(|error| StoreError::Invalid(format!("qdrant url {}: {error}", options.url)))?;
        let store = Self {
            client: std::sync::Arc::new(client),
            collection: options.collection.clone(),
        };
        store.ensure_collection(vectors).await?;
        Ok(store)
    }

    pub fn collection(&self) -> &str {
        &self.collection
    }

    async fn ensure_collection(&self, vectors: &[VectorSpec]) -> Result<(), StoreError> {
        let exists = self
            .client
            .collection_exists(&self.collection)
            .await
            .map_err(server_error("collection check"))?;
        if !exists {
            let mut config = VectorsConfigBuilder::default();
            for spec in vectors {
                config.add_named_vector_params(
                    spec.name.clone(),
                    VectorParamsBuilder::new(spec.dimension as u64, Distance::Cosine),
                );
            }
            let created = self
                .client
                .create_collection(
                    CreateCollectionBuilder::new(&self.collection)
                        .vectors_config(config)
                        // As on Qdrant Edge (`edge::hnsw_config`): a graph per tenant and per
                        // stream, no global graph.
                        .hnsw_config(
                            HnswConfigDiffBuilder::default()
                                .m(0)
                                .payload_m(PAYLOAD_M as u64),
                        ),
                )
                .await;
            // Another node may have created it meanwhile.
            if let Err(error) = created
                && !error.to_string().contains("already exists")
            {
                return Err(server_error("create collection")(error));
            }
            tracing::info!(collection = %self.collection, "qdrant collection created");
        } else {
            self.check_vectors(vectors).await?;
        }
        use qdrant_client::qdrant::payload_index_params::IndexParams;
        use qdrant_client::qdrant::{IntegerIndexParams, KeywordIndexParams};
        // The same parameters as on Qdrant Edge (`edge::payload_hnsw`): tenant-optimised
        // storage for the tenant, payload-aware HNSW links only for tenant and stream.
        let keywords = INDEXED_KEYWORDS.iter().map(|field| {
            let params = KeywordIndexParams {
                is_tenant: Some(*field == payload_keys::TENANT),
                enable_hnsw: Some(payload_hnsw(field)),
                ..Default::default()
            };
            (*field, FieldType::Keyword, IndexParams::from(params))
        });
        let integers = INDEXED_INTEGERS.iter().map(|field| {
            let params = IntegerIndexParams {
                lookup: Some(true),
                range: Some(true),
                enable_hnsw: Some(payload_hnsw(field)),
                ..Default::default()
            };
            (*field, FieldType::Integer, IndexParams::from(params))
        });
        for (field, kind, params) in keywords.chain(integers) {
            self.client
                .create_field_index(
                    CreateFieldIndexCollectionBuilder::new(&self.collection, field, kind)
                        .field_index_params(params)
                        .wait(true),
                )
                .await
                .map_err(server_error("create payload index"))?;
        }
        // The caption full-text index of the lexical channel, with Qdrant Edge's parameters.
        self.client
            .create_field_index(
                CreateFieldIndexCollectionBuilder::new(
                    &self.collection,
                    payload_keys::CAPTION,
                    FieldType::Text,
                )
                .field_index_params(caption_text_index_params())
                .wait(true),
            )
            .await
            .map_err(server_error("create caption text index"))?;
        Ok(())
    }

    async fn check_vectors(&self, vectors: &[VectorSpec]) -> Result<(), StoreError> {
        let info = self
            .client
            .collection_info(&self.collection)
            .await
            .map_err(server_error("collection info"))?;
        let configured = info
            .result
            .and_then(|info| info.config)
            .and_then(|config| config.params)
            .and_then(|params| params.vectors_config)
            .and_then(|vectors| vectors.config);
        let sizes: HashMap<String, u64> = match configured {
            Some(VectorsConfigKind::ParamsMap(map)) => map
                .map
                .into_iter()
                .map(|(name, params)| (name, params.size))
                .collect(),
            Some(VectorsConfigKind::Params(params)) => {
                HashMap::from([(String::new(), params.size)])
            }
            None => HashMap::new(),
        };
        for spec in vectors {
            match sizes.get(&spec.name) {
                Some(size) if *size == spec.dimension as u64 => {}
                Some(size) => {
                    return Err(StoreError::Invalid(format!(
                        "qdrant collection {} stores `{}` vectors of dimension {size}, but the \
                         configured model gives {}; use a new collection or the original model",
                        self.collection, spec.name, spec.dimension
                    )));
                }
                None => {
                    return Err(StoreError::Invalid(format!(
                        "qdrant collection {} has no `{}` vector; use a new collection",
                        self.collection, spec.name
                    )));
                }
            }
        }
        Ok(())
    }
}

fn to_point(point: IndexPoint) -> Result<PointStruct, StoreError> {
    let payload = serde_json::to_value(&point.payload)
        .map_err(|error| StoreError::Invalid(format!("payload: {error}")))?;
    let payload = Payload::try_from(payload)
        .map_err(|error| StoreError::Invalid(format!("payload: {error}")))?;
    let vectors: HashMap<String, Vec<f32>> = point.vectors.into_iter().collect();
    Ok(PointStruct::new(point.id.to_string(), vectors, payload))
}

fn caption_text_index_params() -> qdrant_client::qdrant::TextIndexParams {
    use qdrant_client::qdrant::{
        SnowballParams, StemmingAlgorithm, StopwordsSet, TextIndexParams, TokenizerType,
        stemming_algorithm,
    };
    TextIndexParams {
        tokenizer: TokenizerType::Word as i32,
        lowercase: Some(true),
        stopwords: Some(StopwordsSet {
            languages: vec!["english".into()],
            custom: Vec::new(),
        }),
        stemmer: Some(StemmingAlgorithm {
            stemming_params: Some(stemming_algorithm::StemmingParams::Snowball(
                SnowballParams {
                    language: "english".into(),
                },
            )),
        }),
        enable_hnsw: Some(payload_hnsw(payload_keys::CAPTION)),
        ..Default::default()
    }
}

/// The tenant condition is always present: no search crosses tenants.
fn to_filter(filter: &SearchFilter, caption_words: Option<&str>) -> Filter {
    let mut conditions = vec![Condition::matches(
        payload_keys::TENANT,
        filter.tenant.clone(),
    )];
    match filter.streams.as_slice() {
        [] => {}
        [stream_id] => conditions.push(Condition::matches(
            payload_keys::STREAM_ID,
            stream_id.clone(),
        )),
        streams => conditions.push(Condition::matches(
            payload_keys::STREAM_ID,
            streams.to_vec(),
        )),
    }
    for label in &filter.labels {
        conditions.push(Condition::matches(payload_keys::LABELS, label.clone()));
    }
    // Overlap with [from, to]: the moment ends at or after `from` and starts at or before `to`.
    if let Some(from_ms) = filter.from_ms {
        conditions.push(Condition::range(
            payload_keys::END_MS,
            Range {
                gte: Some(from_ms as f64),
                ..Range::default()
            },
        ));
    }
    if let Some(to_ms) = filter.to_ms {
        conditions.push(Condition::range(
            payload_keys::START_MS,
            Range {
                lte: Some(to_ms as f64),
                ..Range::default()
            },
        ));
    }
    if let Some(since_ms) = filter.indexed_since_ms {
        conditions.push(Condition::range(
            payload_keys::INDEXED_AT_MS,
            Range {
                gte: Some(since_ms as f64),
                ..Range::default()
            },
        ));
    }
    if let Some(before_ms) = filter.indexed_before_ms {
        conditions.push(Condition::range(
            payload_keys::INDEXED_AT_MS,
            Range {
                lt: Some(before_ms as f64),
                ..Range::default()
            },
        ));
    }
    if let Some(words) = caption_words {
        conditions.push(Condition::matches_text_any(
            payload_keys::CAPTION,
            words.to_string(),
        ));
    }
    Filter::must(conditions)
}

fn payload_of(
    id: uuid::Uuid,
    payload: HashMap<String, qdrant_client::qdrant::Value>,
) -> Result<PointPayload, StoreError> {
    let payload: serde_json::Map<String, serde_json::Value> = payload
        .into_iter()
        .map(|(key, value)| (key, serde_json::Value::from(value)))
        .collect();
    serde_json::from_value(serde_json::Value::Object(payload))
        .map_err(|error| StoreError::Internal(format!("point {id} payload: {error}")))
}

fn to_hit(point: ScoredPoint) -> Result<Hit, StoreError> {
    let id = match point.id.and_then(|id| id.point_id_options) {
        Some(PointIdOptions::Uuid(uuid)) => uuid::Uuid::parse_str(&uuid)
            .map_err(|error| StoreError::Internal(format!("point id {uuid}: {error}")))?,
        other => {
            return Err(StoreError::Internal(format!(
                "point id {other:?} is not a UUID; vidx writes UUIDs only"
            )));
        }
    };
    let payload = payload_of(id, point.payload)?;
    Ok(Hit {
        id,
        score: point.score,
        payload,
    })
}

impl IndexStore for ServerStore {
    async fn point(&self, tenant: &str, id: uuid::Uuid) -> Result<Option<IndexPoint>, StoreError> {
        use qdrant_client::qdrant::vector_output::Vector;
        use qdrant_client::qdrant::vectors_output::VectorsOptions;
        let response = self
            .client
            .get_points(
                qdrant_client::qdrant::GetPointsBuilder::new(
                    &self.collection,
                    vec![id.to_string().into()],
                )
                .with_payload(true)
                .with_vectors(true),
            )
            .await
            .map_err(server_error("get point"))?;
        let Some(record) = response.result.into_iter().next() else {
            return Ok(None);
        };
        let payload = payload_of(id, record.payload)?;
        if payload.tenant != tenant {
            return Ok(None);
        }
        let mut vectors = std::collections::BTreeMap::new();
        if let Some(VectorsOptions::Vectors(named)) =
            record.vectors.and_then(|vectors| vectors.vectors_options)
        {
            for (name, vector) in named.vectors {
                if let Vector::Dense(dense) = vector.into_vector() {
                    vectors.insert(name, dense.data);
                }
            }
        }
        Ok(Some(IndexPoint {
            id,
            vectors,
            payload,
            thumbnail: None,
        }))
    }

    async fn upsert(&self, points: Vec<IndexPoint>) -> Result<(), StoreError> {
        if points.is_empty() {
            return Ok(());
        }
        let points = points
            .into_iter()
            .map(to_point)
            .collect::<Result<Vec<_>, _>>()?;
        self.client
            .upsert_points(UpsertPointsBuilder::new(&self.collection, points).wait(true))
            .await
            .map_err(server_error("upsert"))?;
        Ok(())
    }

    async fn search(&self, query: VectorQuery) -> Result<Vec<Hit>, StoreError> {
        if query.top_k == 0 {
            return Ok(Vec::new());
        }
        let response = self
            .client
            .query(
                QueryPointsBuilder::new(&self.collection)
                    .query(query.vector)
                    .using(query.vector_name)
                    .filter(to_filter(&query.filter, query.caption_words.as_deref()))
                    .limit(query.top_k as u64)
                    .with_payload(true),
            )
            .await
            .map_err(server_error("search"))?;
        response.result.into_iter().map(to_hit).collect()
    }

    /// Pages of ids and thumbnails read with the filter, then those ids deleted (`wait`):
    /// a point stored meanwhile is not deleted without its thumbnail being known.
    async fn delete(&self, filter: SearchFilter) -> Result<Deleted, StoreError> {
        use qdrant_client::qdrant::{DeletePointsBuilder, ScrollPointsBuilder};
        let filter = to_filter(&filter, None);
        let mut deleted = Deleted::default();
        let mut thumbnails = std::collections::BTreeSet::new();
        loop {
            let page = self
                .client
                .scroll(
                    ScrollPointsBuilder::new(&self.collection)
                        .filter(filter.clone())
                        .limit(DELETE_PAGE)
                        .with_payload(true),
                )
                .await
                .map_err(server_error("scroll"))?;
            if page.result.is_empty() {
                break;
            }
            let mut ids = Vec::with_capacity(page.result.len());
            for record in page.result {
                if let Some(thumbnail) = record
                    .payload
                    .get(payload_keys::THUMBNAIL)
                    .and_then(|value| value.as_str())
                {
                    thumbnails.insert(thumbnail.to_string());
                }
                if let Some(id) = record.id {
                    if let Some(PointIdOptions::Uuid(uuid)) = &id.point_id_options
                        && let Ok(uuid) = uuid::Uuid::parse_str(uuid)
                    {
                        deleted.ids.push(uuid);
                    }
                    ids.push(id);
                }
            }
            self.client
                .delete_points(
                    DeletePointsBuilder::new(&self.collection)
                        .points(ids)
                        .wait(true),
                )
                .await
                .map_err(server_error("delete"))?;
        }
        deleted.thumbnails = thumbnails.into_iter().collect();
        Ok(deleted)
    }

    async fn count(&self, filter: Option<SearchFilter>) -> Result<u64, StoreError> {
        let mut request = CountPointsBuilder::new(&self.collection).exact(true);
        if let Some(filter) = &filter {
            request = request.filter(to_filter(filter, None));
        }
        let response = self
            .client
            .count(request)
            .await
            .map_err(server_error("count"))?;
        Ok(response.result.map_or(0, |result| result.count))
    }
}
