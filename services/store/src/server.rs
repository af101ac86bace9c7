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
use vidx_core::ports::{Deleted, Generations, IndexStore, IndexedSource};
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
///
/// Index generations: generation N > 0 is the collection `<collection>_gN`, and the alias
/// `<collection>` (what every search, upsert and count names) points at the current one; a new
/// deployment starts at generation 1. A real collection named `<collection>` (made before
/// generations existed) is generation 0. The switch is one alias update, atomic on the server.
#[derive(Clone)]
pub struct ServerStore {
    client: std::sync::Arc<Qdrant>,
    collection: String,
    /// The vectors of the configured models: what a new generation is made with.
    vectors: Vec<VectorSpec>,
    /// The generations as last read, for the upserts (other nodes start and switch them).
    known: std::sync::Arc<std::sync::Mutex<Option<(std::time::Instant, Layout)>>>,
}

/// How long the generations read from the server are trusted by upserts: a node learns of a
/// reindex started elsewhere within this.
pub const GENERATIONS_TTL: Duration = Duration::from_secs(2);

/// The generations on the server.
#[derive(Debug, Clone, Default)]
struct Layout {
    current: u32,
    /// The generation being built, its collection and its vectors' sizes.
    building: Option<(u32, String, HashMap<String, u64>)>,
    retired: Vec<u32>,
}

/// The collection of `generation` of `collection`.
fn generation_name(collection: &str, generation: u32) -> String {
    if generation == 0 {
        collection.to_string()
    } else {
        format!("{collection}_g{generation}")
    }
}

/// The generation a collection name stands for (`<collection>_gN`, N > 0).
fn generation_of(collection: &str, name: &str) -> Option<u32> {
    name.strip_prefix(collection)?
        .strip_prefix("_g")?
        .parse()
        .ok()
        .filter(|generation| *generation > 0)
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
        Self::connect_checked(options, vectors, true).await
    }

    /// Connect for a reindex to models whose vectors may differ from the current
    /// generation's: `vectors` are what the next generation is made with.
    pub async fn connect_for_reindex(
        options: &ServerStoreOptions,
        vectors: &[VectorSpec],
    ) -> Result<Self, StoreError> {
        Self::connect_checked(options, vectors, false).await
    }

    async fn connect_checked(
        options: &ServerStoreOptions,
        vectors: &[VectorSpec],
        check_current: bool,
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
            vectors: vectors.to_vec(),
            known: Default::default(),
        };
        store.ensure_collection(vectors, check_current).await?;
        Ok(store)
    }

    pub fn collection(&self) -> &str {
        &self.collection
    }

    /// The collection the alias names, if the alias exists.
    async fn alias_target(&self) -> Result<Option<String>, StoreError> {
        let aliases = self
            .client
            .list_aliases()
            .await
            .map_err(server_error("list aliases"))?;
        Ok(aliases
            .aliases
            .into_iter()
            .find(|alias| alias.alias_name == self.collection)
            .map(|alias| alias.collection_name))
    }

    async fn ensure_collection(
        &self,
        vectors: &[VectorSpec],
        check_current: bool,
    ) -> Result<(), StoreError> {
        let target = match self.alias_target().await? {
            Some(target) => target,
            None => {
                let legacy = self
                    .client
                    .collection_exists(&self.collection)
                    .await
                    .map_err(server_error("collection check"))?;
                if legacy {
                    self.collection.clone()
                } else {
                    // A new index: generation 1 behind the alias.
                    let first = generation_name(&self.collection, 1);
                    self.create_generation(&first, vectors).await?;
                    self.point_alias_at(&first).await?;
                    tracing::info!(collection = %first, alias = %self.collection, "qdrant collection created");
                    return Ok(());
                }
            }
        };
        if check_current {
            self.check_vectors(&target, vectors).await?;
        }
        self.ensure_indexes(&target).await
    }

    /// Point the alias at `target`: created, or replaced in one step.
    async fn point_alias_at(&self, target: &str) -> Result<(), StoreError> {
        self.client
            .create_alias(qdrant_client::qdrant::CreateAliasBuilder::new(
                target,
                &self.collection,
            ))
            .await
            .map_err(server_error("point the alias"))?;
        Ok(())
    }

    /// Create the collection `name` (named cosine vectors, the HNSW layout) with its payload
    /// indexes; one that exists already (another node made it) is fine.
    async fn create_generation(
        &self,
        name: &str,
        vectors: &[VectorSpec],
    ) -> Result<(), StoreError> {
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
                CreateCollectionBuilder::new(name)
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
        self.ensure_indexes(name).await
    }

    async fn ensure_indexes(&self, collection: &str) -> Result<(), StoreError> {
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
                    CreateFieldIndexCollectionBuilder::new(collection, field, kind)
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
                    collection,
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

    /// The named vectors of `collection` and their sizes.
    async fn vector_sizes(&self, collection: &str) -> Result<HashMap<String, u64>, StoreError> {
        let info = self
            .client
            .collection_info(collection)
            .await
            .map_err(server_error("collection info"))?;
        let configured = info
            .result
            .and_then(|info| info.config)
            .and_then(|config| config.params)
            .and_then(|params| params.vectors_config)
            .and_then(|vectors| vectors.config);
        Ok(match configured {
            Some(VectorsConfigKind::ParamsMap(map)) => map
                .map
                .into_iter()
                .map(|(name, params)| (name, params.size))
                .collect(),
            Some(VectorsConfigKind::Params(params)) => {
                HashMap::from([(String::new(), params.size)])
            }
            None => HashMap::new(),
        })
    }

    async fn check_vectors(
        &self,
        collection: &str,
        vectors: &[VectorSpec],
    ) -> Result<(), StoreError> {
        let sizes = self.vector_sizes(collection).await?;
        for spec in vectors {
            match sizes.get(&spec.name) {
                Some(size) if *size == spec.dimension as u64 => {}
                Some(size) => {
                    return Err(StoreError::Invalid(format!(
                        "qdrant collection {} stores `{}` vectors of dimension {size}, but the \
                         configured model gives {}; run `vidx reindex` to build a generation for \
                         the new model, or use the original model",
                        self.collection, spec.name, spec.dimension
                    )));
                }
                None => {
                    return Err(StoreError::Invalid(format!(
                        "qdrant collection {} has no `{}` vector; run `vidx reindex` to build a \
                         generation with it",
                        self.collection, spec.name
                    )));
                }
            }
        }
        Ok(())
    }

    /// The generations as the server holds them now (and remembered for the upserts).
    async fn layout(&self) -> Result<Layout, StoreError> {
        let target = self.alias_target().await?;
        let collections: Vec<String> = self
            .client
            .list_collections()
            .await
            .map_err(server_error("list collections"))?
            .collections
            .into_iter()
            .map(|description| description.name)
            .collect();
        let current = match target {
            Some(target) => generation_of(&self.collection, &target).ok_or_else(|| {
                StoreError::Internal(format!(
                    "the alias {} names {target}, which is not one of its generations",
                    self.collection
                ))
            })?,
            None if collections.contains(&self.collection) => 0,
            None => {
                return Err(StoreError::CollectionMissing(format!(
                    "qdrant collection {} is gone",
                    self.collection
                )));
            }
        };
        let mut generations: Vec<u32> = collections
            .iter()
            .filter_map(|name| generation_of(&self.collection, name))
            .collect();
        generations.sort_unstable();
        let building = match generations.iter().copied().filter(|g| *g > current).max() {
            Some(generation) => {
                let name = generation_name(&self.collection, generation);
                let sizes = self.vector_sizes(&name).await?;
                Some((generation, name, sizes))
            }
            None => None,
        };
        let layout = Layout {
            current,
            building,
            retired: generations.into_iter().filter(|g| *g < current).collect(),
        };
        if let Ok(mut known) = self.known.lock() {
            *known = Some((std::time::Instant::now(), layout.clone()));
        }
        Ok(layout)
    }

    /// The generations as last read, if that was within [`GENERATIONS_TTL`]; else read now.
    async fn known_layout(&self) -> Result<Layout, StoreError> {
        let remembered = self.known.lock().ok().and_then(|known| {
            known
                .as_ref()
                .filter(|(at, _)| at.elapsed() < GENERATIONS_TTL)
                .map(|(_, layout)| layout.clone())
        });
        match remembered {
            Some(layout) => Ok(layout),
            None => self.layout().await,
        }
    }

    async fn upsert_into(
        &self,
        collection: &str,
        points: Vec<PointStruct>,
    ) -> Result<(), StoreError> {
        self.client
            .upsert_points(UpsertPointsBuilder::new(collection, points).wait(true))
            .await
            .map_err(server_error("upsert"))?;
        Ok(())
    }

    /// Pages of ids and thumbnails read with the filter from `collection`, then those ids
    /// deleted (`wait`).
    async fn delete_in(
        &self,
        collection: &str,
        filter: &Filter,
        deleted: &mut Deleted,
        thumbnails: &mut std::collections::BTreeSet<String>,
    ) -> Result<(), StoreError> {
        use qdrant_client::qdrant::{DeletePointsBuilder, ScrollPointsBuilder};
        loop {
            let page = self
                .client
                .scroll(
                    ScrollPointsBuilder::new(collection)
                        .filter(filter.clone())
                        .limit(DELETE_PAGE)
                        .with_payload(true),
                )
                .await
                .map_err(server_error("scroll"))?;
            if page.result.is_empty() {
                return Ok(());
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
                        && !deleted.ids.contains(&uuid)
                    {
                        deleted.ids.push(uuid);
                    }
                    ids.push(id);
                }
            }
            self.client
                .delete_points(DeletePointsBuilder::new(collection).points(ids).wait(true))
                .await
                .map_err(server_error("delete"))?;
        }
    }
}

/// The dense named vectors of a point as the server returned them.
fn dense_vectors(
    vectors: Option<qdrant_client::qdrant::VectorsOutput>,
) -> std::collections::BTreeMap<String, Vec<f32>> {
    use qdrant_client::qdrant::vector_output::Vector;
    use qdrant_client::qdrant::vectors_output::VectorsOptions;
    let mut dense = std::collections::BTreeMap::new();
    if let Some(VectorsOptions::Vectors(named)) =
        vectors.and_then(|vectors| vectors.vectors_options)
    {
        for (name, vector) in named.vectors {
            if let Vector::Dense(values) = vector.into_vector() {
                dense.insert(name, values.data);
            }
        }
    }
    dense
}

/// Whether every vector of `points` has a place of its size among `sizes`.
fn fits(sizes: &HashMap<String, u64>, points: &[IndexPoint]) -> bool {
    points.iter().all(|point| {
        point
            .vectors
            .iter()
            .all(|(name, vector)| sizes.get(name) == Some(&(vector.len() as u64)))
    })
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
        Ok(Some(IndexPoint {
            id,
            vectors: dense_vectors(record.vectors),
            payload,
            thumbnail: None,
        }))
    }

    /// Into the current generation (the alias), and into the one being built when there is
    /// one and the points fit it: what is indexed during a reindex is not lost at its switch.
    async fn upsert(&self, points: Vec<IndexPoint>) -> Result<(), StoreError> {
        if points.is_empty() {
            return Ok(());
        }
        let building = match self.known_layout().await?.building {
            Some((_, name, sizes)) if fits(&sizes, &points) => Some(name),
            _ => None,
        };
        let points = points
            .into_iter()
            .map(to_point)
            .collect::<Result<Vec<_>, _>>()?;
        match building {
            Some(name) => {
                self.upsert_into(&self.collection, points.clone()).await?;
                self.upsert_into(&name, points).await
            }
            None => self.upsert_into(&self.collection, points).await,
        }
    }

    async fn upsert_to(&self, generation: u32, points: Vec<IndexPoint>) -> Result<(), StoreError> {
        let mut layout = self.known_layout().await?;
        if layout.current < generation
            && layout.building.as_ref().map(|(g, _, _)| *g) != Some(generation)
        {
            // Perhaps started or switched since it was read.
            layout = self.layout().await?;
        }
        if generation == layout.current {
            return self.upsert(points).await;
        }
        if generation < layout.current {
            tracing::debug!(
                generation,
                current = layout.current,
                "points for a retired generation dropped"
            );
            return Ok(());
        }
        match layout.building {
            Some((building, name, _)) if building == generation => {
                let points = points
                    .into_iter()
                    .map(to_point)
                    .collect::<Result<Vec<_>, _>>()?;
                self.upsert_into(&name, points).await
            }
            _ => Err(StoreError::CollectionMissing(format!(
                "index generation {generation} of {} does not exist (current: {})",
                self.collection, layout.current
            ))),
        }
    }

    async fn generations(&self) -> Result<Generations, StoreError> {
        let layout = self.layout().await?;
        Ok(Generations {
            current: layout.current,
            building: layout.building.map(|(generation, _, _)| generation),
            retired: layout.retired,
        })
    }

    async fn begin_generation(&self) -> Result<u32, StoreError> {
        let layout = self.layout().await?;
        if let Some((generation, _, _)) = layout.building {
            return Ok(generation);
        }
        let newest = layout
            .retired
            .iter()
            .copied()
            .max()
            .unwrap_or(0)
            .max(layout.current);
        let generation = newest + 1;
        let vectors = if self.vectors.is_empty() {
            let current = generation_name(&self.collection, layout.current);
            self.vector_sizes(&current)
                .await?
                .into_iter()
                .map(|(name, size)| VectorSpec {
                    name,
                    dimension: size as usize,
                })
                .collect()
        } else {
            self.vectors.clone()
        };
        let name = generation_name(&self.collection, generation);
        self.create_generation(&name, &vectors).await?;
        tracing::info!(generation, collection = %name, "index generation created");
        self.layout().await?;
        Ok(generation)
    }

    async fn switch_generation(&self, generation: u32) -> Result<(), StoreError> {
        let layout = self.layout().await?;
        if layout.current == generation {
            return Ok(());
        }
        let Some((_, name, _)) = layout.building.filter(|(g, _, _)| *g == generation) else {
            return Err(StoreError::Invalid(format!(
                "index generation {generation} of {} is not being built (current: {})",
                self.collection, layout.current
            )));
        };
        if layout.current == 0 {
            // A collection made before generations holds the alias's name: it has to go
            // before the alias can take it (searches fail until the alias exists).
            tracing::warn!(collection = %self.collection, "replacing the pre-generation collection by an alias; searches fail for a moment");
            self.client
                .delete_collection(&self.collection)
                .await
                .map_err(server_error("delete the pre-generation collection"))?;
        }
        self.point_alias_at(&name).await?;
        tracing::info!(
            from = layout.current,
            to = generation,
            "index generation switched"
        );
        self.layout().await?;
        Ok(())
    }

    async fn drop_generation(&self, generation: u32) -> Result<(), StoreError> {
        let layout = self.layout().await?;
        if generation == layout.current
            || layout
                .building
                .as_ref()
                .is_some_and(|(g, _, _)| *g == generation)
        {
            return Err(StoreError::Invalid(format!(
                "index generation {generation} is in use; only retired ones are dropped"
            )));
        }
        if generation == 0 {
            // Deleted at the switch.
            return Ok(());
        }
        let name = generation_name(&self.collection, generation);
        match self.client.delete_collection(&name).await {
            Ok(_) => {
                tracing::info!(generation, collection = %name, "index generation dropped");
                Ok(())
            }
            Err(error) => match server_error("drop generation")(error) {
                StoreError::CollectionMissing(_) => Ok(()),
                error => Err(error),
            },
        }
    }

    /// Pages of the current generation (payload and vectors) upserted into the one being
    /// built.
    async fn carry_over(&self, generation: u32, filter: SearchFilter) -> Result<u64, StoreError> {
        use qdrant_client::qdrant::ScrollPointsBuilder;
        let layout = self.layout().await?;
        let Some((_, name, sizes)) = layout.building.filter(|(g, _, _)| *g == generation) else {
            return Err(StoreError::Invalid(format!(
                "index generation {generation} of {} is not being built",
                self.collection
            )));
        };
        let filter = to_filter(&filter, None);
        let mut copied = 0u64;
        let mut offset = None;
        loop {
            let mut request = ScrollPointsBuilder::new(&self.collection)
                .filter(filter.clone())
                .limit(DELETE_PAGE)
                .with_payload(true)
                .with_vectors(true);
            if let Some(offset) = offset.take() {
                request = request.offset(offset);
            }
            let page = self
                .client
                .scroll(request)
                .await
                .map_err(server_error("scroll"))?;
            let mut points = Vec::with_capacity(page.result.len());
            for record in page.result {
                let id = match record.id.and_then(|id| id.point_id_options) {
                    Some(PointIdOptions::Uuid(uuid)) => {
                        uuid::Uuid::parse_str(&uuid).map_err(|error| {
                            StoreError::Internal(format!("point id {uuid}: {error}"))
                        })?
                    }
                    _ => continue,
                };
                points.push(IndexPoint {
                    id,
                    vectors: dense_vectors(record.vectors),
                    payload: payload_of(id, record.payload)?,
                    thumbnail: None,
                });
            }
            if !fits(&sizes, &points) {
                return Err(StoreError::Invalid(format!(
                    "the points' vectors do not fit index generation {generation}"
                )));
            }
            copied += points.len() as u64;
            let points = points
                .into_iter()
                .map(to_point)
                .collect::<Result<Vec<_>, _>>()?;
            if !points.is_empty() {
                self.upsert_into(&name, points).await?;
            }
            match page.next_page_offset {
                Some(next) => offset = Some(next),
                None => return Ok(copied),
            }
        }
    }

    async fn sources(&self) -> Result<Vec<IndexedSource>, StoreError> {
        use qdrant_client::qdrant::ScrollPointsBuilder;
        let mut sources = std::collections::BTreeMap::new();
        let mut offset = None;
        loop {
            let mut request = ScrollPointsBuilder::new(&self.collection)
                .limit(DELETE_PAGE)
                .with_payload(true);
            if let Some(offset) = offset.take() {
                request = request.offset(offset);
            }
            let page = self
                .client
                .scroll(request)
                .await
                .map_err(server_error("scroll"))?;
            for record in page.result {
                let id = match record.id.and_then(|id| id.point_id_options) {
                    Some(PointIdOptions::Uuid(uuid)) => {
                        uuid::Uuid::parse_str(&uuid).map_err(|error| {
                            StoreError::Internal(format!("point id {uuid}: {error}"))
                        })?
                    }
                    _ => continue,
                };
                crate::count_source(&mut sources, payload_of(id, record.payload)?);
            }
            match page.next_page_offset {
                Some(next) => offset = Some(next),
                None => break,
            }
        }
        Ok(sources.into_values().collect())
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
    /// a point stored meanwhile is not deleted without its thumbnail being known. From the
    /// generation being built too.
    async fn delete(&self, filter: SearchFilter) -> Result<Deleted, StoreError> {
        let filter = to_filter(&filter, None);
        let mut deleted = Deleted::default();
        let mut thumbnails = std::collections::BTreeSet::new();
        self.delete_in(&self.collection, &filter, &mut deleted, &mut thumbnails)
            .await?;
        if let Some((_, name, _)) = self.layout().await?.building {
            self.delete_in(&name, &filter, &mut deleted, &mut thumbnails)
                .await?;
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
