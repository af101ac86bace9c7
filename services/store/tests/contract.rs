//! The store contract: what every `IndexStore` must do, run against Qdrant Edge always and
//! against a Qdrant server when `VIDX_TEST_QDRANT_URL` (gRPC, e.g. `http://127.0.0.1:6334`)
//! is set, with `VIDX_TEST_QDRANT_API_KEY` if it needs one.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use anyhow::{Result, ensure};
use common::{DIMENSION, point, query, spec, unit_vector};
use vidx_core::ports::IndexStore;
use vidx_core::types::vector_names;
use vidx_core::{IndexPoint, SearchFilter, VectorQuery};
use vidx_store::{EdgeStore, EdgeStoreOptions, ServerStore, ServerStoreOptions, VectorSpec};

/// Two tenants, three streams, points spread over time.
fn corpus() -> Vec<IndexPoint> {
    let mut points = Vec::new();
    for (group, (tenant, stream)) in [("acme", "cam-1"), ("acme", "cam-2"), ("globex", "cam-1")]
        .into_iter()
        .enumerate()
    {
        for index in 0..40u64 {
            // Distinct vectors everywhere: a point's own vector finds it and nothing else.
            let seed = index + 1000 * group as u64;
            points.push(point(
                tenant,
                stream,
                index / 10,
                index as u32 % 10,
                index * 1_000,
                unit_vector(seed),
            ));
        }
    }
    points
}

/// Ids of `points` that `filter` admits, by the contract's rules (overlap for time).
fn admitted(points: &[IndexPoint], filter: &SearchFilter) -> BTreeSet<uuid::Uuid> {
    points
        .iter()
        .filter(|point| {
            let payload = &point.payload;
            payload.tenant == filter.tenant
                && filter
                    .stream_id
                    .as_ref()
                    .is_none_or(|stream| &payload.stream_id == stream)
                && filter.from_ms.is_none_or(|from| payload.end_ms >= from)
                && filter.to_ms.is_none_or(|to| payload.start_ms <= to)
        })
        .map(|point| point.id)
        .collect()
}

async fn contract<S: IndexStore>(store: &S) -> Result<()> {
    let points = corpus();
    store.upsert(Vec::new()).await?;
    store.upsert(points.clone()).await?;
    assert_eq!(store.count(None).await?, points.len() as u64);
    let acme = SearchFilter {
        tenant: "acme".into(),
        ..SearchFilter::default()
    };
    assert_eq!(store.count(Some(acme.clone())).await?, 80);

    // A point's own vector finds it first, with cosine score ~1, scores descending.
    let target = &points[17];
    let hits = store
        .search(query(
            target.vectors[vector_names::TEXT].clone(),
            acme.clone(),
            5,
        ))
        .await?;
    ensure!(
        hits.first().is_some_and(|hit| hit.id == target.id),
        "{hits:?}"
    );
    ensure!(
        (hits[0].score - 1.0).abs() < 1e-3,
        "score {}",
        hits[0].score
    );
    ensure!(
        hits.windows(2).all(|pair| pair[0].score >= pair[1].score),
        "not sorted"
    );
    assert_eq!(hits[0].payload, target.payload);

    // Filters: with top_k above the corpus size, the hits are exactly the admitted points.
    let filters = [
        acme.clone(),
        SearchFilter {
            tenant: "globex".into(),
            ..SearchFilter::default()
        },
        SearchFilter {
            tenant: "acme".into(),
            stream_id: Some("cam-2".into()),
            ..SearchFilter::default()
        },
        SearchFilter {
            tenant: "acme".into(),
            from_ms: Some(10_500),
            to_ms: Some(20_000),
            ..SearchFilter::default()
        },
        SearchFilter {
            tenant: "globex".into(),
            stream_id: Some("cam-2".into()),
            ..SearchFilter::default()
        },
        SearchFilter {
            tenant: "nobody".into(),
            ..SearchFilter::default()
        },
    ];
    for filter in filters {
        let hits = store
            .search(query(unit_vector(7), filter.clone(), 500))
            .await?;
        let found: BTreeSet<uuid::Uuid> = hits.iter().map(|hit| hit.id).collect();
        assert_eq!(found, admitted(&points, &filter), "{filter:?}");
        assert_eq!(
            store.count(Some(filter.clone())).await?,
            found.len() as u64,
            "{filter:?}"
        );
    }

    // Idempotent by id: the same points again change nothing; a changed point overwrites.
    store.upsert(points.clone()).await?;
    assert_eq!(store.count(None).await?, points.len() as u64);
    let mut changed = target.clone();
    changed.payload.caption = "rewritten".into();
    store.upsert(vec![changed]).await?;
    assert_eq!(store.count(None).await?, points.len() as u64);
    let hits = store
        .search(query(
            target.vectors[vector_names::TEXT].clone(),
            acme.clone(),
            1,
        ))
        .await?;
    assert_eq!(hits[0].payload.caption, "rewritten");

    assert!(
        store
            .search(query(unit_vector(1), acme.clone(), 0))
            .await?
            .is_empty()
    );
    let unknown = VectorQuery {
        vector_name: "nope".into(),
        ..query(unit_vector(1), acme, 3)
    };
    ensure!(
        store.search(unknown).await.is_err(),
        "an unknown vector name must be an error"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qdrant_edge_keeps_the_store_contract() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let store = EdgeStore::open(dir.path(), &spec(), EdgeStoreOptions::default())?;
    contract(&store).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qdrant_server_keeps_the_store_contract() -> Result<()> {
    let Ok(url) = std::env::var("VIDX_TEST_QDRANT_URL") else {
        eprintln!(
            "VIDX_TEST_QDRANT_URL is not set: the Qdrant server run of the contract is skipped"
        );
        return Ok(());
    };
    let options = ServerStoreOptions {
        url,
        api_key: std::env::var("VIDX_TEST_QDRANT_API_KEY").ok(),
        collection: format!("vidx-contract-{}", uuid::Uuid::new_v4()),
        timeout: Duration::from_secs(30),
    };
    let store = ServerStore::connect(&options, &spec()).await?;
    contract(&store).await?;
    // Reconnecting to the collection checks its vectors: a different dimension is refused.
    let wrong = [VectorSpec {
        name: vector_names::TEXT.into(),
        dimension: DIMENSION + 1,
    }];
    let error = ServerStore::connect(&options, &wrong)
        .await
        .expect_err("dimension mismatch");
    ensure!(error.to_string().contains("dimension"), "{error}");
    // A server that wants a key refuses a wrong one with an error that says so (no retries).
    if options.api_key.is_some() {
        let wrong_key = ServerStoreOptions {
            api_key: Some("not-the-key".into()),
            ..options.clone()
        };
        let error = ServerStore::connect(&wrong_key, &spec())
            .await
            .expect_err("a wrong API key");
        ensure!(
            error.code() == vidx_core::ErrorCode::InvalidInput
                && error.to_string().contains("store.api_key"),
            "{error}"
        );
    }
    Ok(())
}
