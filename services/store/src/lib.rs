//! The `IndexStore` port on Qdrant, in two forms with one behaviour:
//! - **Qdrant Edge**, the embedded Qdrant engine: one shard on disk in the data dir, named
//!   vectors, payload indexes on the filter fields, filtered search, and the HNSW build
//!   (`optimize()`) once enough new points have arrived. The embedded default.
//! - **Qdrant server** (qdrant-client, gRPC): the distributed mode's shared index.
//!
//! [`AnyStore`] picks one at run time (`store.kind`).

mod edge;
mod server;

pub use edge::{EdgeStore, EdgeStoreOptions, VectorSpec};
pub use server::{GENERATIONS_TTL, ServerStore, ServerStoreOptions};

use std::collections::BTreeMap;

use vidx_core::ports::{Deleted, Generations, IndexStore, IndexedSource};
use vidx_core::{Hit, IndexPoint, PointPayload, SearchFilter, StoreError, VectorQuery};

/// Count a point into the distinct sources of a generation (keyed by tenant, stream and
/// source), keeping the labels it carries.
pub(crate) fn count_source(
    sources: &mut BTreeMap<(String, String, String), IndexedSource>,
    payload: PointPayload,
) {
    let key = (
        payload.tenant.clone(),
        payload.stream_id.clone(),
        payload.source_uri.clone(),
    );
    sources
        .entry(key)
        .or_insert_with(|| IndexedSource {
            tenant: payload.tenant,
            stream_id: payload.stream_id,
            source_uri: payload.source_uri,
            labels: payload.labels,
            points: 0,
        })
        .points += 1;
}

/// The store chosen by configuration.
#[derive(Clone)]
pub enum AnyStore {
    Edge(EdgeStore),
    Server(ServerStore),
}

impl std::fmt::Debug for AnyStore {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AnyStore::Edge(store) => {
                write!(formatter, "AnyStore::Edge({})", store.path().display())
            }
            AnyStore::Server(store) => write!(formatter, "AnyStore::Server({store:?})"),
        }
    }
}

impl IndexStore for AnyStore {
    async fn upsert(&self, points: Vec<IndexPoint>) -> Result<(), StoreError> {
        match self {
            AnyStore::Edge(store) => store.upsert(points).await,
            AnyStore::Server(store) => store.upsert(points).await,
        }
    }

    async fn search(&self, query: VectorQuery) -> Result<Vec<Hit>, StoreError> {
        match self {
            AnyStore::Edge(store) => store.search(query).await,
            AnyStore::Server(store) => store.search(query).await,
        }
    }

    async fn count(&self, filter: Option<SearchFilter>) -> Result<u64, StoreError> {
        match self {
            AnyStore::Edge(store) => store.count(filter).await,
            AnyStore::Server(store) => store.count(filter).await,
        }
    }

    async fn point(&self, tenant: &str, id: uuid::Uuid) -> Result<Option<IndexPoint>, StoreError> {
        match self {
            AnyStore::Edge(store) => store.point(tenant, id).await,
            AnyStore::Server(store) => store.point(tenant, id).await,
        }
    }

    async fn delete(&self, filter: SearchFilter) -> Result<Deleted, StoreError> {
        match self {
            AnyStore::Edge(store) => store.delete(filter).await,
            AnyStore::Server(store) => store.delete(filter).await,
        }
    }

    async fn generations(&self) -> Result<Generations, StoreError> {
        match self {
            AnyStore::Edge(store) => store.generations().await,
            AnyStore::Server(store) => store.generations().await,
        }
    }

    async fn begin_generation(&self) -> Result<u32, StoreError> {
        match self {
            AnyStore::Edge(store) => store.begin_generation().await,
            AnyStore::Server(store) => store.begin_generation().await,
        }
    }

    async fn upsert_to(&self, generation: u32, points: Vec<IndexPoint>) -> Result<(), StoreError> {
        match self {
            AnyStore::Edge(store) => store.upsert_to(generation, points).await,
            AnyStore::Server(store) => store.upsert_to(generation, points).await,
        }
    }

    async fn switch_generation(&self, generation: u32) -> Result<(), StoreError> {
        match self {
            AnyStore::Edge(store) => store.switch_generation(generation).await,
            AnyStore::Server(store) => store.switch_generation(generation).await,
        }
    }

    async fn drop_generation(&self, generation: u32) -> Result<(), StoreError> {
        match self {
            AnyStore::Edge(store) => store.drop_generation(generation).await,
            AnyStore::Server(store) => store.drop_generation(generation).await,
        }
    }

    async fn sources(&self) -> Result<Vec<IndexedSource>, StoreError> {
        match self {
            AnyStore::Edge(store) => store.sources().await,
            AnyStore::Server(store) => store.sources().await,
        }
    }

    async fn carry_over(&self, generation: u32, filter: SearchFilter) -> Result<u64, StoreError> {
        match self {
            AnyStore::Edge(store) => store.carry_over(generation, filter).await,
            AnyStore::Server(store) => store.carry_over(generation, filter).await,
        }
    }
}
