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
pub use server::{ServerStore, ServerStoreOptions};

use vidx_core::ports::{Deleted, IndexStore};
use vidx_core::{Hit, IndexPoint, SearchFilter, StoreError, VectorQuery};

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
}
