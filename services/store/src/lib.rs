//! The `IndexStore` port on **Qdrant Edge**, the embedded Qdrant engine: one shard on disk in
//! the data dir, named vectors, payload indexes on the filter fields, filtered search, and the
//! HNSW build (`optimize()`) once enough new points have arrived.

mod edge;

pub use edge::{EdgeStore, EdgeStoreOptions, VectorSpec};
