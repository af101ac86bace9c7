//! The Qdrant Edge store against the real engine on disk.

use proptest::prelude::*;
use vidx_core::types::vector_names;
use vidx_core::{IndexPoint, SearchFilter};
use vidx_store::{EdgeStore, EdgeStoreOptions, VectorSpec};

mod common;

use common::{DIMENSION, camera_points, point, query, spec, unit_vector};

#[test]
fn upsert_search_reopen_and_idempotent_ids() -> anyhow::Result<()> {
    let directory = tempfile::tempdir()?;
    let points: Vec<IndexPoint> = (0..50)
        .map(|index| {
            point(
                "acme",
                "cam-1",
                index / 10,
                index as u32 % 10,
                index * 1_000,
                unit_vector(index),
            )
        })
        .collect();
    {
        let store = EdgeStore::open(directory.path(), &spec(), EdgeStoreOptions::default())?;
        store.upsert_blocking(points.clone())?;
        assert_eq!(store.count_blocking(None)?, 50);
        // The same points again: same ids, same count.
        store.upsert_blocking(points.clone())?;
        assert_eq!(store.count_blocking(None)?, 50);

        let hits = store.search_blocking(query(
            unit_vector(17),
            SearchFilter {
                tenant: "acme".into(),
                ..Default::default()
            },
            3,
        ))?;
        assert_eq!(
            hits[0].id, points[17].id,
            "exact vector must be the top hit"
        );
        assert!(hits[0].score > 0.999);
        assert_eq!(hits[0].payload, points[17].payload);
    }
    // A second process cannot open the same store while it is open; after close it can.
    let store = EdgeStore::open(directory.path(), &spec(), EdgeStoreOptions::default())?;
    assert!(EdgeStore::open(directory.path(), &spec(), EdgeStoreOptions::default()).is_err());
    assert_eq!(store.count_blocking(None)?, 50, "points survive a reopen");
    let hits = store.search_blocking(query(
        unit_vector(3),
        SearchFilter {
            tenant: "acme".into(),
            ..Default::default()
        },
        1,
    ))?;
    assert_eq!(hits[0].id, points[3].id);
    Ok(())
}

#[test]
fn dimension_mismatch_is_a_clear_error() -> anyhow::Result<()> {
    let directory = tempfile::tempdir()?;
    drop(EdgeStore::open(
        directory.path(),
        &spec(),
        EdgeStoreOptions::default(),
    )?);
    let wrong = vec![VectorSpec {
        name: vector_names::TEXT.into(),
        dimension: DIMENSION + 1,
    }];
    let error = EdgeStore::open(directory.path(), &wrong, EdgeStoreOptions::default())
        .expect_err("dimension mismatch must fail");
    assert!(error.to_string().contains("dimension 8"), "{error}");
    Ok(())
}

#[test]
fn optimize_builds_the_hnsw_index_after_the_threshold() -> anyhow::Result<()> {
    let directory = tempfile::tempdir()?;
    let options = EdgeStoreOptions {
        optimize_after_points: 1_500,
        indexing_threshold_kb: Some(10),
    };
    let store = EdgeStore::open(directory.path(), &spec(), options)?;
    let points = camera_points(0..1_000);
    store.upsert_blocking(points.clone())?;
    assert_eq!(
        store.indexed_vectors()?,
        0,
        "below the threshold nothing is indexed yet"
    );
    let more = camera_points(1_000..2_000);
    store.upsert_blocking(more)?;
    assert!(
        store.indexed_vectors()? > 0,
        "crossing the threshold builds HNSW"
    );
    assert_eq!(store.count_blocking(None)?, 2_000);
    let hits = store.search_blocking(query(
        unit_vector(1_234),
        SearchFilter {
            tenant: "acme".into(),
            ..Default::default()
        },
        1,
    ))?;
    assert_eq!(hits[0].payload.start_ms, 12_340);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 12, ..ProptestConfig::default() })]

    /// Whatever the filter, a hit is never from another tenant, another stream or outside
    /// the requested time window.
    #[test]
    fn filters_never_leak(
        stream_choice in proptest::option::of(0usize..3),
        from_ms in proptest::option::of(0u64..30_000),
        span_ms in proptest::option::of(0u64..30_000),
        seed in 0u64..1_000,
    ) {
        let directory = tempfile::tempdir().map_err(|e| TestCaseError::fail(e.to_string()))?;
        let store = EdgeStore::open(directory.path(), &spec(), EdgeStoreOptions::default())
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        let streams = ["a", "b", "c"];
        let mut points = Vec::new();
        for tenant in ["acme", "other"] {
            for (stream_index, stream) in streams.iter().enumerate() {
                for index in 0..20u64 {
                    points.push(point(tenant, stream, index / 5, index as u32, index * 2_000,
                        unit_vector(index * 7 + stream_index as u64 + seed)));
                }
            }
        }
        store.upsert_blocking(points).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let to_ms = match (from_ms, span_ms) {
            (Some(from), Some(span)) => Some(from + span),
            (None, Some(span)) => Some(span),
            _ => None,
        };
        let filter = SearchFilter {
            tenant: "acme".into(),
            stream_id: stream_choice.map(|choice| streams[choice].to_string()),
            from_ms,
            to_ms,
        };
        let hits = store.search_blocking(query(unit_vector(seed), filter.clone(), 100))
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        let mut expected = 0;
        for stream in streams {
            if filter.stream_id.as_deref().is_some_and(|wanted| wanted != stream) { continue; }
            for index in 0..20u64 {
                let (start, end) = (index * 2_000, index * 2_000 + 2_000);
                if from_ms.is_none_or(|from| end >= from) && to_ms.is_none_or(|to| start <= to) {
                    expected += 1;
                }
            }
        }
        prop_assert_eq!(hits.len(), expected);
        for hit in hits {
            prop_assert_eq!(&hit.payload.tenant, "acme");
            if let Some(stream) = &filter.stream_id { prop_assert_eq!(&hit.payload.stream_id, stream); }
            if let Some(from) = from_ms { prop_assert!(hit.payload.end_ms >= from); }
            if let Some(to) = to_ms { prop_assert!(hit.payload.start_ms <= to); }
        }
    }
}
