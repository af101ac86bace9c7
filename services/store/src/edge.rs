use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use qdrant_edge::external::ordered_float::OrderedFloat;
use qdrant_edge::{
    Condition, CountRequest, CreateIndex, Distance, EdgeConfigBuilder, EdgeShard,
    EdgeVectorParamsBuilder, FieldCondition, FieldIndexOperations, Filter, Match, NamedQuery,
    PayloadFieldSchema, PointId, PointInsertOperations, PointOperations, PointStruct,
    PointStructPersisted, QueryEnum, QueryRequest, Range, ScoredPoint, ScoringQuery, ScrollRequest,
    UpdateOperation, ValueVariants, VectorInternal, Vectors, WithPayloadInterface, WithVector,
};
use vidx_core::ports::{Deleted, Generations, IndexStore, IndexedSource};
use vidx_core::types::payload_keys;
use vidx_core::{Hit, IndexPoint, PointPayload, SearchFilter, StoreError, VectorQuery};

/// A named vector and its dimension.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VectorSpec {
    pub name: String,
    pub dimension: usize,
}

/// Tuning of the embedded store.
#[derive(Debug, Clone)]
pub struct EdgeStoreOptions {
    /// Run the optimizers (HNSW build, segment merges) after this many points were upserted
    /// since the last run.
    pub optimize_after_points: u64,
    /// Segments larger than this (KiB of vectors) get an HNSW index when optimized; `None`
    /// keeps Qdrant's default.
    pub indexing_threshold_kb: Option<usize>,
}

impl Default for EdgeStoreOptions {
    fn default() -> Self {
        Self {
            optimize_after_points: 20_000,
            indexing_threshold_kb: None,
        }
    }
}

/// The Qdrant Edge store. Cloning shares the shard.
#[derive(Clone)]
pub struct EdgeStore {
    inner: Arc<Inner>,
}

struct Inner {
    // Qdrant Edge's flush takes its locks with `try_lock().expect(..)`: every call goes
    // through this mutex so no two operations ever race inside the shard.
    state: Mutex<State>,
    /// The generation a reindex is building beside the current one, under a lock of its
    /// own: the reindex's writes there never hold up a search of the current one. Taken
    /// after `state` when both are needed.
    building: Mutex<Option<Building>>,
    path: PathBuf,
    options: EdgeStoreOptions,
    /// The vectors of the configured models: what a new generation is made with (the current
    /// generation's own when none were given).
    vectors: Vec<VectorSpec>,
    // Held for the life of the store: one process per data dir.
    _lock_file: File,
}

/// The generations on disk: generation 0 is `<path>/shard` (every index starts there),
/// generation N > 0 is `<path>/gen-N/`, and the file `<path>/CURRENT` names the current one
/// (no file: 0). The switch is that file's atomic replacement.
struct State {
    shard: EdgeShard,
    generation: u32,
    upserted_since_optimize: u64,
}

struct Building {
    generation: u32,
    shard: EdgeShard,
    upserted_since_optimize: u64,
}

const CURRENT_FILE: &str = "CURRENT";

fn generation_dir(path: &Path, generation: u32) -> PathBuf {
    if generation == 0 {
        path.join("shard")
    } else {
        path.join(format!("gen-{generation}"))
    }
}

fn is_complete(dir: &Path) -> bool {
    dir.join("edge_config.json").exists()
}

fn storage(context: String) -> impl Fn(std::io::Error) -> StoreError {
    move |error| StoreError::Storage(format!("{context}: {error}"))
}

/// The current generation as `<path>/CURRENT` names it (0 without the file).
fn read_current(path: &Path) -> Result<u32, StoreError> {
    let file = path.join(CURRENT_FILE);
    match std::fs::read_to_string(&file) {
        Ok(text) => text.trim().parse().map_err(|_| {
            StoreError::Internal(format!(
                "{} does not name a generation: {:?}",
                file.display(),
                text.trim()
            ))
        }),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(0),
        Err(error) => Err(storage(format!("cannot read {}", file.display()))(error)),
    }
}

/// Replace `<path>/CURRENT` atomically (written beside it, synced, renamed, directory synced).
fn write_current(path: &Path, generation: u32) -> Result<(), StoreError> {
    use std::io::Write;
    let temporary = path.join(format!("{CURRENT_FILE}.tmp"));
    let mut file = File::create(&temporary)
        .map_err(storage(format!("cannot write {}", temporary.display())))?;
    writeln!(file, "{generation}")
        .and_then(|()| file.sync_all())
        .map_err(storage(format!("cannot write {}", temporary.display())))?;
    std::fs::rename(&temporary, path.join(CURRENT_FILE)).map_err(storage(format!(
        "cannot replace {}/{CURRENT_FILE}",
        path.display()
    )))?;
    File::open(path)
        .and_then(|directory| directory.sync_all())
        .map_err(storage(format!("cannot sync {}", path.display())))
}

/// The generations with a directory under `path` (complete or not), ordered.
fn generations_on_disk(path: &Path) -> Result<Vec<u32>, StoreError> {
    let mut found = Vec::new();
    if path.join("shard").exists() {
        found.push(0);
    }
    let entries =
        std::fs::read_dir(path).map_err(storage(format!("cannot list {}", path.display())))?;
    for entry in entries.flatten() {
        let name = entry.file_name();
        if let Some(generation) = name
            .to_str()
            .and_then(|name| name.strip_prefix("gen-"))
            .and_then(|number| number.parse::<u32>().ok())
            .filter(|generation| *generation > 0)
        {
            found.push(generation);
        }
    }
    found.sort_unstable();
    Ok(found)
}

impl std::fmt::Debug for EdgeStore {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("EdgeStore")
            .field("path", &self.inner.path)
            .finish()
    }
}

pub(crate) const INDEXED_KEYWORDS: &[&str] = &[
    payload_keys::TENANT,
    payload_keys::STREAM_ID,
    payload_keys::KIND,
    payload_keys::LABELS,
];
pub(crate) const INDEXED_INTEGERS: &[&str] = &[
    payload_keys::START_MS,
    payload_keys::END_MS,
    payload_keys::SEGMENT_SEQ,
    payload_keys::INDEXED_AT_MS,
];

/// Whether HNSW builds extra links for a payload field's values (payload-aware HNSW), on both
/// stores. Only for the tenant and the stream: filtered searches by them stay on the graph.
/// Not for `kind` (few values, each covering much of the collection), the times and sequence
/// numbers (range filters gain nothing, and a million distinct values multiply the build) or
/// caption words (one subgraph per frequent word): with them the HNSW build of a million
/// points did not finish in two hours on two cores.
pub(crate) fn payload_hnsw(field: &str) -> bool {
    field == payload_keys::TENANT || field == payload_keys::STREAM_ID
}

/// Points read and deleted at a time by a delete.
const DELETE_PAGE: usize = 1_000;

/// Links per point of the payload-aware HNSW graphs (Qdrant's default `m`).
pub(crate) const PAYLOAD_M: usize = 16;

/// The HNSW layout of a new index, on both stores: no global graph (`m = 0`), a graph per
/// tenant and per stream (`payload_m`) instead. Every vidx search carries a tenant condition,
/// so it walks its tenant's own graph and never wades through other tenants' points — Qdrant's
/// multitenancy layout. A search without a filter would scan, and vidx makes none.
fn hnsw_config() -> qdrant_edge::HnswIndexConfig {
    qdrant_edge::HnswIndexConfig {
        m: 0,
        payload_m: Some(PAYLOAD_M),
        ..Default::default()
    }
}

/// The index schema of a keyword or integer field of vidx's payload (Qdrant's JSON form).
fn payload_index_schema(field: &str, integer: bool) -> serde_json::Value {
    if integer {
        serde_json::json!({
            "type": "integer",
            "lookup": true,
            "range": true,
            "enable_hnsw": payload_hnsw(field),
        })
    } else {
        serde_json::json!({
            "type": "keyword",
            "is_tenant": field == payload_keys::TENANT,
            "enable_hnsw": payload_hnsw(field),
        })
    }
}

fn internal(context: &str) -> impl Fn(qdrant_edge::OperationError) -> StoreError + '_ {
    move |error| StoreError::Internal(format!("{context}: {error}"))
}

impl EdgeStore {
    /// Open the store at `path`, creating it with `vectors` when it does not exist. An existing
    /// store must have the same dimension for every vector it already holds; missing named
    /// vectors are added.
    pub fn open(
        path: &Path,
        vectors: &[VectorSpec],
        options: EdgeStoreOptions,
    ) -> Result<Self, StoreError> {
        Self::open_checked(path, vectors, options, true)
    }

    /// Open the store for a reindex to models whose vectors may differ from the current
    /// generation's: `vectors` are what the next generation is made with, and the current one
    /// is not checked against them (searching it with the new models' vectors would fail).
    pub fn open_for_reindex(
        path: &Path,
        vectors: &[VectorSpec],
        options: EdgeStoreOptions,
    ) -> Result<Self, StoreError> {
        Self::open_checked(path, vectors, options, false)
    }

    fn open_checked(
        path: &Path,
        vectors: &[VectorSpec],
        options: EdgeStoreOptions,
        check_current: bool,
    ) -> Result<Self, StoreError> {
        std::fs::create_dir_all(path).map_err(|error| {
            StoreError::Unavailable(format!("cannot create {}: {error}", path.display()))
        })?;
        let lock_file = File::create(path.join(".vidx.lock")).map_err(|error| {
            StoreError::Unavailable(format!("cannot create lock in {}: {error}", path.display()))
        })?;
        lock_file.try_lock().map_err(|_| {
            StoreError::Unavailable(format!(
                "index at {} is in use by another vidx process",
                path.display()
            ))
        })?;
        let generation = read_current(path)?;
        let shard_path = generation_dir(path, generation);
        let shard = if is_complete(&shard_path) {
            let shard = EdgeShard::load(&shard_path, None).map_err(|error| {
                StoreError::Internal(format!(
                    "cannot load index at {}: {error}",
                    shard_path.display()
                ))
            })?;
            if check_current {
                check_vectors(&shard, vectors, &shard_path)?;
            }
            // Indexes added since the shard was made (labels, the caption words).
            create_payload_indexes(&shard)?;
            ensure_caption_index(&shard)?;
            shard
        } else if generation == 0 {
            create_shard(&shard_path, vectors, &options)?
        } else {
            return Err(StoreError::Internal(format!(
                "{}/{CURRENT_FILE} names generation {generation}, but {} holds no index",
                path.display(),
                shard_path.display()
            )));
        };
        // A generation newer than the current one is a reindex's, taken up where it was; one
        // whose creation was cut short is removed.
        let mut building = None;
        for newer in generations_on_disk(path)?
            .into_iter()
            .filter(|newer| *newer > generation)
        {
            let dir = generation_dir(path, newer);
            if !is_complete(&dir) {
                std::fs::remove_dir_all(&dir)
                    .map_err(storage(format!("cannot remove {}", dir.display())))?;
                continue;
            }
            let shard = EdgeShard::load(&dir, None).map_err(|error| {
                StoreError::Internal(format!("cannot load index at {}: {error}", dir.display()))
            })?;
            create_payload_indexes(&shard)?;
            ensure_caption_index(&shard)?;
            building = Some(Building {
                generation: newer,
                shard,
                upserted_since_optimize: 0,
            });
        }
        Ok(Self {
            inner: Arc::new(Inner {
                state: Mutex::new(State {
                    shard,
                    generation,
                    upserted_since_optimize: 0,
                }),
                building: Mutex::new(building),
                path: path.to_path_buf(),
                options,
                vectors: vectors.to_vec(),
                _lock_file: lock_file,
            }),
        })
    }

    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// The shard, locked. A panic inside an earlier call (caught by its blocking task and
    /// reported as an error) does not take the store down: the shard's own write-ahead log
    /// keeps it consistent, so the lock is taken back instead of failing every later call.
    fn state(&self) -> Result<MutexGuard<'_, State>, StoreError> {
        Ok(self.inner.state.lock().unwrap_or_else(|poisoned| {
            tracing::warn!("the store lock was poisoned by an earlier panic; taking it back");
            self.inner.state.clear_poison();
            poisoned.into_inner()
        }))
    }

    /// The generation being built, locked (taken back after a panic, as [`state`](Self::state)).
    fn building(&self) -> Result<MutexGuard<'_, Option<Building>>, StoreError> {
        Ok(self.inner.building.lock().unwrap_or_else(|poisoned| {
            tracing::warn!("the store lock was poisoned by an earlier panic; taking it back");
            self.inner.building.clear_poison();
            poisoned.into_inner()
        }))
    }

    /// Blocking upsert + flush; runs the optimizers when enough points arrived. While a
    /// reindex builds the next generation, the points go there too (when their vectors fit
    /// it): what is indexed during a reindex is not lost at its switch.
    pub fn upsert_blocking(&self, points: Vec<IndexPoint>) -> Result<(), StoreError> {
        if points.is_empty() {
            return Ok(());
        }
        let count = points.len() as u64;
        let persisted = points
            .into_iter()
            .map(to_point)
            .collect::<Result<Vec<_>, _>>()?;
        let mut state = self.state()?;
        // Both under the current generation's lock: a switch cannot come in between.
        let mut building = self.building()?;
        let also = match building.as_ref() {
            Some(building) if fits(&building.shard, &persisted) => Some(persisted.clone()),
            Some(building) => {
                tracing::debug!(
                    generation = building.generation,
                    "points do not fit the generation being built; stored in the current one only"
                );
                None
            }
            None => None,
        };
        upsert_into(&state.shard, persisted)?;
        state.upserted_since_optimize += count;
        if state.upserted_since_optimize >= self.inner.options.optimize_after_points {
            run_optimize(&mut state)?;
        }
        drop(state);
        if let (Some(points), Some(building)) = (also, building.as_mut()) {
            self.upsert_building(building, points, count)?;
        }
        Ok(())
    }

    fn upsert_building(
        &self,
        building: &mut Building,
        points: Vec<PointStructPersisted>,
        count: u64,
    ) -> Result<(), StoreError> {
        upsert_into(&building.shard, points)?;
        building.upserted_since_optimize += count;
        if building.upserted_since_optimize >= self.inner.options.optimize_after_points {
            building.shard.optimize().map_err(internal("optimize"))?;
            building.shard.flush();
            building.upserted_since_optimize = 0;
        }
        Ok(())
    }

    /// [`IndexStore::upsert_to`], blocking.
    pub fn upsert_to_blocking(
        &self,
        generation: u32,
        points: Vec<IndexPoint>,
    ) -> Result<(), StoreError> {
        let current = self.state()?.generation;
        if generation == current {
            return self.upsert_blocking(points);
        }
        if generation < current {
            tracing::debug!(
                generation,
                current,
                "points for a retired generation dropped"
            );
            return Ok(());
        }
        let count = points.len() as u64;
        let persisted = points
            .into_iter()
            .map(to_point)
            .collect::<Result<Vec<_>, _>>()?;
        let mut building = self.building()?;
        match building.as_mut() {
            Some(building) if building.generation == generation => {
                self.upsert_building(building, persisted, count)
            }
            _ => {
                drop(building);
                let mut state = self.state()?;
                if state.generation == generation {
                    // Switched meanwhile: the generation is the current one now.
                    upsert_into(&state.shard, persisted)?;
                    state.upserted_since_optimize += count;
                    return Ok(());
                }
                Err(StoreError::CollectionMissing(format!(
                    "index generation {generation} does not exist in {} (current: {})",
                    self.inner.path.display(),
                    state.generation
                )))
            }
        }
    }

    /// [`IndexStore::generations`], blocking.
    pub fn generations_blocking(&self) -> Result<Generations, StoreError> {
        let state = self.state()?;
        let building = self.building()?;
        let retired = generations_on_disk(&self.inner.path)?
            .into_iter()
            .filter(|generation| *generation < state.generation)
            .collect();
        Ok(Generations {
            current: state.generation,
            building: building.as_ref().map(|building| building.generation),
            retired,
        })
    }

    /// [`IndexStore::begin_generation`], blocking.
    pub fn begin_generation_blocking(&self) -> Result<u32, StoreError> {
        let state = self.state()?;
        let mut building = self.building()?;
        if let Some(building) = building.as_ref() {
            return Ok(building.generation);
        }
        let newest = generations_on_disk(&self.inner.path)?
            .into_iter()
            .max()
            .unwrap_or(0)
            .max(state.generation);
        let generation = newest + 1;
        let vectors = if self.inner.vectors.is_empty() {
            shard_vectors(&state.shard)
        } else {
            self.inner.vectors.clone()
        };
        let dir = generation_dir(&self.inner.path, generation);
        let shard = create_shard(&dir, &vectors, &self.inner.options)?;
        tracing::info!(generation, dir = %dir.display(), "index generation created");
        *building = Some(Building {
            generation,
            shard,
            upserted_since_optimize: 0,
        });
        Ok(generation)
    }

    /// [`IndexStore::switch_generation`], blocking: the new generation is optimized, then
    /// `CURRENT` replaced and the shard swapped under the lock (no search sees neither).
    pub fn switch_generation_blocking(&self, generation: u32) -> Result<(), StoreError> {
        if self.state()?.generation == generation {
            return Ok(());
        }
        let not_built = |current: u32| {
            StoreError::Invalid(format!(
                "index generation {generation} is not being built (current: {current})"
            ))
        };
        // The HNSW build first, under the new generation's lock only: searches go on.
        {
            let building = self.building()?;
            match building.as_ref() {
                Some(building) if building.generation == generation => {
                    building.shard.optimize().map_err(internal("optimize"))?;
                    building.shard.flush();
                }
                _ => {
                    drop(building);
                    return Err(not_built(self.state()?.generation));
                }
            }
        }
        let mut state = self.state()?;
        let mut building = self.building()?;
        let Some(new) = building.take_if(|building| building.generation == generation) else {
            return Err(not_built(state.generation));
        };
        if let Err(error) = write_current(&self.inner.path, generation) {
            *building = Some(new);
            return Err(error);
        }
        let previous = std::mem::replace(&mut state.shard, new.shard);
        let from = std::mem::replace(&mut state.generation, generation);
        state.upserted_since_optimize = new.upserted_since_optimize;
        // Closing the old shard (its flush and threads) happens outside the locks.
        drop(building);
        drop(state);
        drop(previous);
        tracing::info!(from, to = generation, "index generation switched");
        Ok(())
    }

    /// [`IndexStore::drop_generation`], blocking.
    pub fn drop_generation_blocking(&self, generation: u32) -> Result<(), StoreError> {
        let state = self.state()?;
        let building = self.building()?;
        if generation == state.generation
            || building
                .as_ref()
                .is_some_and(|building| building.generation == generation)
        {
            return Err(StoreError::Invalid(format!(
                "index generation {generation} is in use; only retired ones are dropped"
            )));
        }
        // Removed outside the locks: nothing reads a retired generation.
        drop(building);
        drop(state);
        let dir = generation_dir(&self.inner.path, generation);
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => {
                tracing::info!(generation, "index generation dropped");
                Ok(())
            }
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(error) => Err(storage(format!("cannot remove {}", dir.display()))(error)),
        }
    }

    /// [`IndexStore::carry_over`], blocking: pages of the current generation (payload and
    /// vectors) upserted into the one being built.
    pub fn carry_over_blocking(
        &self,
        generation: u32,
        filter: SearchFilter,
    ) -> Result<u64, StoreError> {
        let filter = to_filter(&filter, None)?;
        let mut copied = 0u64;
        let mut offset = None;
        loop {
            let state = self.state()?;
            let (records, next) = state
                .shard
                .scroll(ScrollRequest {
                    offset,
                    limit: Some(DELETE_PAGE),
                    filter: Some(filter.clone()),
                    with_payload: Some(WithPayloadInterface::Bool(true)),
                    with_vector: WithVector::Bool(true),
                    order_by: None,
                })
                .map_err(internal("scroll"))?;
            drop(state);
            let mut points = Vec::with_capacity(records.len());
            for record in records {
                let PointId::Uuid(id) = record.id else {
                    continue;
                };
                points.push(to_point(IndexPoint {
                    id,
                    vectors: dense_vectors(record.vector),
                    payload: payload_of(id, record.payload)?,
                    thumbnail: None,
                })?);
            }
            let count = points.len() as u64;
            let mut building = self.building()?;
            let Some(building) = building
                .as_mut()
                .filter(|building| building.generation == generation)
            else {
                return Err(StoreError::Invalid(format!(
                    "index generation {generation} is not being built"
                )));
            };
            if !fits(&building.shard, &points) {
                return Err(StoreError::Invalid(format!(
                    "the points' vectors do not fit index generation {generation}"
                )));
            }
            self.upsert_building(building, points, count)?;
            copied += count;
            match next {
                Some(next) => offset = Some(next),
                None => return Ok(copied),
            }
        }
    }

    /// [`IndexStore::sources`], blocking: the current generation read a page at a time.
    pub fn sources_blocking(&self) -> Result<Vec<IndexedSource>, StoreError> {
        let mut sources: BTreeMap<(String, String, String), IndexedSource> = BTreeMap::new();
        let mut offset = None;
        loop {
            let state = self.state()?;
            let (records, next) = state
                .shard
                .scroll(ScrollRequest {
                    offset,
                    limit: Some(DELETE_PAGE),
                    filter: None,
                    with_payload: Some(WithPayloadInterface::Bool(true)),
                    with_vector: WithVector::Bool(false),
                    order_by: None,
                })
                .map_err(internal("scroll"))?;
            drop(state);
            for record in records {
                let id = match record.id {
                    PointId::Uuid(id) => id,
                    PointId::NumId(_) => continue,
                };
                let payload = payload_of(id, record.payload)?;
                crate::count_source(&mut sources, payload);
            }
            match next {
                Some(next) => offset = Some(next),
                None => break,
            }
        }
        Ok(sources.into_values().collect())
    }

    /// Build the HNSW index for what is pending, regardless of the threshold. Returns whether
    /// anything was optimized.
    pub fn optimize_blocking(&self) -> Result<bool, StoreError> {
        let mut state = self.state()?;
        run_optimize(&mut state)
    }

    /// Run the optimizers if any point arrived since the last run (end of an indexing job).
    pub fn finish_blocking(&self) -> Result<(), StoreError> {
        let mut state = self.state()?;
        if state.upserted_since_optimize > 0 {
            run_optimize(&mut state)?;
        }
        if let Some(building) = self.building()?.as_mut()
            && building.upserted_since_optimize > 0
        {
            building.shard.optimize().map_err(internal("optimize"))?;
            building.shard.flush();
            building.upserted_since_optimize = 0;
        }
        Ok(())
    }

    pub fn search_blocking(&self, query: VectorQuery) -> Result<Vec<Hit>, StoreError> {
        if query.top_k == 0 {
            return Ok(Vec::new());
        }
        let request = QueryRequest {
            prefetches: vec![],
            query: Some(ScoringQuery::Vector(QueryEnum::Nearest(NamedQuery {
                query: VectorInternal::Dense(query.vector),
                using: Some(query.vector_name.clone()),
            }))),
            filter: Some(to_filter(&query.filter, query.caption_words.as_deref())?),
            score_threshold: None,
            limit: query.top_k,
            offset: 0,
            params: None,
            with_vector: WithVector::Bool(false),
            with_payload: WithPayloadInterface::Bool(true),
        };
        let state = self.state()?;
        let vector_known = state
            .shard
            .config()
            .vectors
            .contains_key(&query.vector_name);
        if !vector_known {
            return Err(StoreError::Invalid(format!(
                "the index has no vector named `{}`",
                query.vector_name
            )));
        }
        let points = state.shard.query(request).map_err(internal("search"))?;
        drop(state);
        points.into_iter().map(to_hit).collect()
    }

    pub fn count_blocking(&self, filter: Option<SearchFilter>) -> Result<u64, StoreError> {
        let state = self.state()?;
        let count = state
            .shard
            .count(CountRequest {
                filter: filter
                    .as_ref()
                    .map(|filter| to_filter(filter, None))
                    .transpose()?,
                exact: true,
            })
            .map_err(internal("count"))?;
        Ok(count as u64)
    }

    /// One point with payload and vectors, if it belongs to `tenant`.
    pub fn point_blocking(
        &self,
        tenant: &str,
        id: uuid::Uuid,
    ) -> Result<Option<IndexPoint>, StoreError> {
        let state = self.state()?;
        let records = state
            .shard
            .retrieve(
                &[PointId::Uuid(id)],
                Some(WithPayloadInterface::Bool(true)),
                Some(WithVector::Bool(true)),
            )
            .map_err(internal("retrieve"))?;
        drop(state);
        let Some(record) = records.into_iter().next() else {
            return Ok(None);
        };
        let payload = payload_of(id, record.payload)?;
        if payload.tenant != tenant {
            return Ok(None);
        }
        Ok(Some(IndexPoint {
            id,
            vectors: dense_vectors(record.vector),
            payload,
            thumbnail: None,
        }))
    }

    /// Delete the points `filter` admits, a page at a time: their ids and thumbnails are read
    /// first, then the ids deleted and flushed; from the generation being built too.
    pub fn delete_blocking(&self, filter: SearchFilter) -> Result<Deleted, StoreError> {
        let filter = to_filter(&filter, None)?;
        let mut deleted = Deleted::default();
        let mut thumbnails = std::collections::BTreeSet::new();
        let state = self.state()?;
        delete_from(&state.shard, &filter, &mut deleted, &mut thumbnails)?;
        if let Some(building) = self.building()?.as_ref() {
            delete_from(&building.shard, &filter, &mut deleted, &mut thumbnails)?;
        }
        drop(state);
        deleted.thumbnails = thumbnails.into_iter().collect();
        Ok(deleted)
    }

    /// Number of vectors that live in HNSW-indexed segments.
    pub fn indexed_vectors(&self) -> Result<u64, StoreError> {
        let state = self.state()?;
        Ok(state.shard.info().indexed_vectors_count as u64)
    }
}

/// The dense named vectors of a stored point.
fn dense_vectors(vector: Option<qdrant_edge::VectorStructInternal>) -> BTreeMap<String, Vec<f32>> {
    let mut vectors = BTreeMap::new();
    if let Some(qdrant_edge::VectorStructInternal::Named(named)) = vector {
        for (name, vector) in named {
            if let VectorInternal::Dense(values) = vector {
                vectors.insert(name.to_string(), values);
            }
        }
    }
    vectors
}

/// A new, empty shard in `dir` with `vectors`, the HNSW layout and the payload indexes.
fn create_shard(
    dir: &Path,
    vectors: &[VectorSpec],
    options: &EdgeStoreOptions,
) -> Result<EdgeShard, StoreError> {
    std::fs::create_dir_all(dir).map_err(|error| {
        StoreError::Unavailable(format!("cannot create {}: {error}", dir.display()))
    })?;
    let mut builder = EdgeConfigBuilder::new().hnsw_config(hnsw_config());
    for spec in vectors {
        builder = builder.vector(
            spec.name.clone(),
            EdgeVectorParamsBuilder::new(spec.dimension, Distance::Cosine).build(),
        );
    }
    if let Some(threshold_kb) = options.indexing_threshold_kb {
        builder = builder.optimizers(qdrant_edge::EdgeOptimizersConfig {
            indexing_threshold: Some(threshold_kb),
            ..Default::default()
        });
    }
    let shard = EdgeShard::new(dir, builder.build()).map_err(internal("cannot create index"))?;
    create_payload_indexes(&shard)?;
    ensure_caption_index(&shard)?;
    shard.flush();
    Ok(shard)
}

/// The shard's named vectors and their dimensions.
fn shard_vectors(shard: &EdgeShard) -> Vec<VectorSpec> {
    shard
        .config()
        .vectors
        .iter()
        .map(|(name, params)| VectorSpec {
            name: name.to_string(),
            dimension: params.size,
        })
        .collect()
}

/// Whether every vector of `points` has a place of its size in `shard`.
fn fits(shard: &EdgeShard, points: &[PointStructPersisted]) -> bool {
    let config = shard.config();
    points.iter().all(|point| match &point.vector {
        qdrant_edge::VectorStructPersisted::Named(named) => named.iter().all(|(name, vector)| {
            let length = match vector {
                qdrant_edge::VectorPersisted::Dense(values) => values.len(),
                _ => return false,
            };
            config
                .vectors
                .get(name.as_str())
                .is_some_and(|params| params.size == length)
        }),
        _ => false,
    })
}

/// Upsert into one shard and flush: the points are acknowledged only once on disk.
fn upsert_into(shard: &EdgeShard, points: Vec<PointStructPersisted>) -> Result<(), StoreError> {
    shard
        .update(UpdateOperation::PointOperation(
            PointOperations::UpsertPoints(PointInsertOperations::PointsList(points)),
        ))
        .map_err(internal("upsert"))?;
    shard.flush();
    Ok(())
}

/// Delete what `filter` admits from one shard, a page at a time (ids and thumbnails read
/// first, then the ids deleted and flushed).
fn delete_from(
    shard: &EdgeShard,
    filter: &Filter,
    deleted: &mut Deleted,
    thumbnails: &mut std::collections::BTreeSet<String>,
) -> Result<(), StoreError> {
    loop {
        let (records, _next) = shard
            .scroll(ScrollRequest {
                offset: None,
                limit: Some(DELETE_PAGE),
                filter: Some(filter.clone()),
                with_payload: Some(WithPayloadInterface::Bool(true)),
                with_vector: WithVector::Bool(false),
                order_by: None,
            })
            .map_err(internal("scroll"))?;
        if records.is_empty() {
            return Ok(());
        }
        let mut ids = Vec::with_capacity(records.len());
        for record in records {
            if let Some(thumbnail) = record
                .payload
                .as_ref()
                .and_then(|payload| payload.0.get(payload_keys::THUMBNAIL))
                .and_then(|value| value.as_str())
            {
                thumbnails.insert(thumbnail.to_string());
            }
            if let PointId::Uuid(id) = record.id
                && !deleted.ids.contains(&id)
            {
                deleted.ids.push(id);
            }
            ids.push(record.id);
        }
        shard
            .update(UpdateOperation::PointOperation(
                PointOperations::DeletePoints { ids },
            ))
            .map_err(internal("delete"))?;
        shard.flush();
    }
}

fn run_optimize(state: &mut State) -> Result<bool, StoreError> {
    let optimized = state.shard.optimize().map_err(internal("optimize"))?;
    state.shard.flush();
    state.upserted_since_optimize = 0;
    Ok(optimized)
}

fn check_vectors(shard: &EdgeShard, vectors: &[VectorSpec], path: &Path) -> Result<(), StoreError> {
    let mut missing = Vec::new();
    {
        let config = shard.config();
        for spec in vectors {
            match config.vectors.get(&spec.name) {
                Some(params) if params.size != spec.dimension => {
                    return Err(StoreError::Invalid(format!(
                        "index at {} stores `{}` vectors of dimension {}, but the configured model gives {}; \
                         run `vidx reindex` to build a generation for the new model, or use the original model",
                        path.display(),
                        spec.name,
                        params.size,
                        spec.dimension
                    )));
                }
                Some(_) => {}
                None => missing.push(spec.clone()),
            }
        }
    }
    for spec in missing {
        // The dense config's wrapper type is not exported; its serde form is the public contract.
        let config: qdrant_edge::VectorNameConfig = serde_json::from_value(serde_json::json!({
            "dense": { "size": spec.dimension, "distance": "Cosine" }
        }))
        .map_err(|error| StoreError::Internal(format!("vector config: {error}")))?;
        shard
            .update(UpdateOperation::VectorNameOperation(
                qdrant_edge::VectorNameOperations::CreateVectorName(
                    qdrant_edge::CreateVectorName {
                        vector_name: spec.name.clone(),
                        config,
                    },
                ),
            ))
            .map_err(internal("add named vector"))?;
    }
    Ok(())
}

/// The full-text index of captions (the lexical channel): words, lowercase, English stop
/// words dropped, Snowball-stemmed. The same parameters on the Qdrant server.
pub(crate) fn caption_text_index() -> serde_json::Value {
    serde_json::json!({
        "type": "text",
        "tokenizer": "word",
        "lowercase": true,
        "stopwords": "english",
        "stemmer": { "type": "snowball", "language": "english" },
        "enable_hnsw": payload_hnsw(payload_keys::CAPTION)
    })
}

/// Create the caption full-text index if the shard lacks it (indexes made before it existed).
fn ensure_caption_index(shard: &EdgeShard) -> Result<(), StoreError> {
    let field_name = key(payload_keys::CAPTION)?;
    if shard.info().payload_schema.contains_key(&field_name) {
        return Ok(());
    }
    let schema: PayloadFieldSchema = serde_json::from_value(caption_text_index())
        .map_err(|error| StoreError::Internal(format!("caption text index: {error}")))?;
    shard
        .update(UpdateOperation::FieldIndexOperation(
            FieldIndexOperations::CreateIndex(CreateIndex {
                field_name,
                field_schema: Some(schema),
            }),
        ))
        .map_err(internal("create caption text index"))
}

/// The keyword and integer payload indexes the shard lacks.
fn create_payload_indexes(shard: &EdgeShard) -> Result<(), StoreError> {
    let schemas = INDEXED_KEYWORDS
        .iter()
        .map(|key| (*key, false))
        .chain(INDEXED_INTEGERS.iter().map(|key| (*key, true)));
    let existing = shard.info().payload_schema;
    for (name, integer) in schemas {
        let field_name = key(name)?;
        if existing.contains_key(&field_name) {
            continue;
        }
        let schema: PayloadFieldSchema =
            serde_json::from_value(payload_index_schema(name, integer)).map_err(|error| {
                StoreError::Internal(format!("payload index schema of {name}: {error}"))
            })?;
        shard
            .update(UpdateOperation::FieldIndexOperation(
                FieldIndexOperations::CreateIndex(CreateIndex {
                    field_name,
                    field_schema: Some(schema),
                }),
            ))
            .map_err(internal("create payload index"))?;
    }
    Ok(())
}

fn to_point(point: IndexPoint) -> Result<PointStructPersisted, StoreError> {
    let payload = serde_json::to_value(&point.payload)
        .map_err(|error| StoreError::Invalid(format!("payload: {error}")))?;
    if !payload.is_object() {
        return Err(StoreError::Invalid("payload is not an object".into()));
    }
    let vectors: BTreeMap<String, Vec<f32>> = point.vectors;
    Ok(PointStruct::new(
        PointId::Uuid(point.id),
        Vectors::new_named(vectors),
        payload,
    )
    .into())
}

fn key(name: &str) -> Result<qdrant_edge::JsonPath, StoreError> {
    name.try_into()
        .map_err(|_| StoreError::Internal(format!("invalid payload key {name}")))
}

/// The tenant condition is always present: no search crosses tenants. A key that cannot be
/// built is an error, never a silently dropped condition.
fn to_filter(filter: &SearchFilter, caption_words: Option<&str>) -> Result<Filter, StoreError> {
    let keyword = |name: &str, value: &str| -> Result<Condition, StoreError> {
        Ok(Condition::Field(FieldCondition::new_match(
            key(name)?,
            Match::new_value(ValueVariants::String(value.to_string())),
        )))
    };
    let range = |name: &str, gte: Option<u64>, lte: Option<u64>| -> Result<Condition, StoreError> {
        Ok(Condition::Field(FieldCondition::new_range(
            key(name)?,
            Range {
                lt: None,
                gt: None,
                gte: gte.map(|value| OrderedFloat(value as f64)),
                lte: lte.map(|value| OrderedFloat(value as f64)),
            },
        )))
    };
    let mut conditions = vec![keyword(payload_keys::TENANT, &filter.tenant)?];
    match filter.streams.as_slice() {
        [] => {}
        [stream_id] => conditions.push(keyword(payload_keys::STREAM_ID, stream_id)?),
        streams => {
            let any: Match = serde_json::from_value(serde_json::json!({ "any": streams }))
                .map_err(|error| StoreError::Invalid(format!("streams: {error}")))?;
            conditions.push(Condition::Field(FieldCondition::new_match(
                key(payload_keys::STREAM_ID)?,
                any,
            )));
        }
    }
    for label in &filter.labels {
        conditions.push(keyword(payload_keys::LABELS, label)?);
    }
    // Overlap with [from, to]: the moment ends at or after `from` and starts at or before `to`.
    if let Some(from_ms) = filter.from_ms {
        conditions.push(range(payload_keys::END_MS, Some(from_ms), None)?);
    }
    if let Some(to_ms) = filter.to_ms {
        conditions.push(range(payload_keys::START_MS, None, Some(to_ms))?);
    }
    if let Some(since_ms) = filter.indexed_since_ms {
        conditions.push(range(payload_keys::INDEXED_AT_MS, Some(since_ms), None)?);
    }
    if let Some(before_ms) = filter.indexed_before_ms {
        conditions.push(Condition::Field(FieldCondition::new_range(
            key(payload_keys::INDEXED_AT_MS)?,
            Range {
                lt: Some(OrderedFloat(before_ms as f64)),
                gt: None,
                gte: None,
                lte: None,
            },
        )));
    }
    if let Some(words) = caption_words {
        let any_word: Match = serde_json::from_value(serde_json::json!({ "text_any": words }))
            .map_err(|error| StoreError::Invalid(format!("caption words: {error}")))?;
        conditions.push(Condition::Field(FieldCondition::new_match(
            key(payload_keys::CAPTION)?,
            any_word,
        )));
    }
    Ok(Filter {
        should: None,
        min_should: None,
        must: Some(conditions),
        must_not: None,
    })
}

fn payload_of(
    id: uuid::Uuid,
    payload: Option<qdrant_edge::Payload>,
) -> Result<PointPayload, StoreError> {
    let payload =
        payload.ok_or_else(|| StoreError::Internal(format!("point {id} has no payload")))?;
    serde_json::from_value(serde_json::Value::Object(payload.0.into_iter().collect()))
        .map_err(|error| StoreError::Internal(format!("point {id} payload: {error}")))
}

fn to_hit(point: ScoredPoint) -> Result<Hit, StoreError> {
    let id = match point.id {
        PointId::Uuid(uuid) => uuid,
        PointId::NumId(number) => {
            return Err(StoreError::Internal(format!(
                "point {number} has a numeric id; vidx writes UUIDs only"
            )));
        }
    };
    let payload = point
        .payload
        .ok_or_else(|| StoreError::Internal(format!("point {id} has no payload")))?;
    let payload: PointPayload =
        serde_json::from_value(serde_json::Value::Object(payload.0.into_iter().collect()))
            .map_err(|error| StoreError::Internal(format!("point {id} payload: {error}")))?;
    Ok(Hit {
        id,
        score: point.score,
        payload,
    })
}

async fn blocking<T: Send + 'static>(
    function: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    tokio::task::spawn_blocking(function)
        .await
        .map_err(|error| StoreError::Storage(format!("store task failed: {error}")))?
}

impl IndexStore for EdgeStore {
    fn upsert(
        &self,
        points: Vec<IndexPoint>,
    ) -> impl std::future::Future<Output = Result<(), StoreError>> + Send {
        let store = self.clone();
        blocking(move || store.upsert_blocking(points))
    }

    fn search(
        &self,
        query: VectorQuery,
    ) -> impl std::future::Future<Output = Result<Vec<Hit>, StoreError>> + Send {
        let store = self.clone();
        blocking(move || store.search_blocking(query))
    }

    fn count(
        &self,
        filter: Option<SearchFilter>,
    ) -> impl std::future::Future<Output = Result<u64, StoreError>> + Send {
        let store = self.clone();
        blocking(move || store.count_blocking(filter))
    }

    fn point(
        &self,
        tenant: &str,
        id: uuid::Uuid,
    ) -> impl std::future::Future<Output = Result<Option<IndexPoint>, StoreError>> + Send {
        let (store, tenant) = (self.clone(), tenant.to_string());
        blocking(move || store.point_blocking(&tenant, id))
    }

    fn delete(
        &self,
        filter: SearchFilter,
    ) -> impl std::future::Future<Output = Result<Deleted, StoreError>> + Send {
        let store = self.clone();
        blocking(move || store.delete_blocking(filter))
    }

    fn generations(
        &self,
    ) -> impl std::future::Future<Output = Result<Generations, StoreError>> + Send {
        let store = self.clone();
        blocking(move || store.generations_blocking())
    }

    fn begin_generation(
        &self,
    ) -> impl std::future::Future<Output = Result<u32, StoreError>> + Send {
        let store = self.clone();
        blocking(move || store.begin_generation_blocking())
    }

    fn upsert_to(
        &self,
        generation: u32,
        points: Vec<IndexPoint>,
    ) -> impl std::future::Future<Output = Result<(), StoreError>> + Send {
        let store = self.clone();
        blocking(move || store.upsert_to_blocking(generation, points))
    }

    fn switch_generation(
        &self,
        generation: u32,
    ) -> impl std::future::Future<Output = Result<(), StoreError>> + Send {
        let store = self.clone();
        blocking(move || store.switch_generation_blocking(generation))
    }

    fn drop_generation(
        &self,
        generation: u32,
    ) -> impl std::future::Future<Output = Result<(), StoreError>> + Send {
        let store = self.clone();
        blocking(move || store.drop_generation_blocking(generation))
    }

    fn sources(
        &self,
    ) -> impl std::future::Future<Output = Result<Vec<IndexedSource>, StoreError>> + Send {
        let store = self.clone();
        blocking(move || store.sources_blocking())
    }

    fn carry_over(
        &self,
        generation: u32,
        filter: SearchFilter,
    ) -> impl std::future::Future<Output = Result<u64, StoreError>> + Send {
        let store = self.clone();
        blocking(move || store.carry_over_blocking(generation, filter))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The HNSW layout and the payload indexes as the engine holds them: no global graph,
    /// tenant-optimised tenant, HNSW links only for tenant and stream (not for kind, times,
    /// sequence numbers or caption words).
    #[test]
    fn payload_indexes_build_hnsw_links_only_for_tenant_and_stream() -> anyhow::Result<()> {
        let directory = tempfile::tempdir()?;
        let store = EdgeStore::open(
            directory.path(),
            &[VectorSpec {
                name: vidx_core::types::vector_names::TEXT.into(),
                dimension: 4,
            }],
            EdgeStoreOptions::default(),
        )?;
        let hnsw = store.state()?.shard.config().hnsw_config;
        assert_eq!(
            (hnsw.m, hnsw.payload_m),
            (0, Some(PAYLOAD_M)),
            "a graph per tenant and stream, no global graph"
        );
        let schema = store.state()?.shard.info().payload_schema;
        let params = |name: &str| -> anyhow::Result<serde_json::Value> {
            let info = schema
                .get(&key(name)?)
                .ok_or_else(|| anyhow::anyhow!("no index on {name}"))?;
            Ok(serde_json::to_value(&info.params)?)
        };
        for field in INDEXED_KEYWORDS.iter().chain(INDEXED_INTEGERS) {
            let expected = *field == payload_keys::TENANT || *field == payload_keys::STREAM_ID;
            assert_eq!(
                params(field)?["enable_hnsw"],
                serde_json::json!(expected),
                "{field}: {}",
                params(field)?
            );
        }
        assert_eq!(
            params(payload_keys::TENANT)?["is_tenant"],
            serde_json::json!(true)
        );
        assert_eq!(
            params(payload_keys::START_MS)?["range"],
            serde_json::json!(true)
        );
        assert_eq!(
            params(payload_keys::CAPTION)?["enable_hnsw"],
            serde_json::json!(false)
        );
        assert_eq!(
            params(payload_keys::CAPTION)?["stemmer"]["type"],
            "snowball"
        );
        Ok(())
    }
}
