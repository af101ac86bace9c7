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
            streams: stream_choice.map(|choice| streams[choice].to_string()).into_iter().collect(),
            from_ms,
            to_ms,
            ..SearchFilter::default()
        };
        let hits = store.search_blocking(query(unit_vector(seed), filter.clone(), 100))
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        let mut expected = 0;
        for stream in streams {
            if !filter.streams.is_empty() && !filter.streams.iter().any(|wanted| wanted == stream) { continue; }
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
            if let Some(stream) = filter.streams.first() { prop_assert_eq!(&hit.payload.stream_id, stream); }
            if let Some(from) = from_ms { prop_assert!(hit.payload.end_ms >= from); }
            if let Some(to) = to_ms { prop_assert!(hit.payload.start_ms <= to); }
        }
    }
}

/// One random point of the brute-force test: where it lives and when, and its vector's seed.
#[derive(Debug, Clone)]
struct RandomPoint {
    tenant: usize,
    stream: usize,
    start_ms: u64,
    length_ms: u64,
    vector_seed: u64,
}

/// One random search: the tenant is always set, the rest may be absent.
#[derive(Debug, Clone)]
struct RandomSearch {
    tenant: usize,
    stream: Option<usize>,
    from_ms: Option<u64>,
    to_ms: Option<u64>,
    vector_seed: u64,
    top_k: usize,
}

// The last tenant never has points: a search for it must come back empty.
const TENANTS: [&str; 4] = ["acme", "globex", "initech", "nobody"];
const STREAMS: [&str; 3] = ["cam-1", "cam-2", "lobby"];
// Times on a coarse grid, so that a moment ending exactly at `from_ms` or starting exactly at
// `to_ms` (the inclusive bounds) is common, and zero-length moments occur.
const STEP_MS: u64 = 500;

fn random_point() -> impl Strategy<Value = RandomPoint> {
    (0usize..3, 0usize..3, 0u64..120, 0u64..8, any::<u64>()).prop_map(
        |(tenant, stream, start_step, length_steps, vector_seed)| RandomPoint {
            tenant,
            stream,
            start_ms: start_step * STEP_MS,
            length_ms: length_steps * STEP_MS,
            vector_seed,
        },
    )
}

fn random_search() -> impl Strategy<Value = RandomSearch> {
    (
        0usize..TENANTS.len(),
        proptest::option::of(0usize..STREAMS.len()),
        proptest::option::of((0u64..125).prop_map(|step| step * STEP_MS)),
        proptest::option::of((0u64..125).prop_map(|step| step * STEP_MS)),
        any::<u64>(),
        1usize..12,
    )
        .prop_map(
            |(tenant, stream, from_ms, to_ms, vector_seed, top_k)| RandomSearch {
                tenant,
                stream,
                from_ms,
                to_ms,
                vector_seed,
                top_k,
            },
        )
}

fn fail(error: impl std::fmt::Display) -> TestCaseError {
    TestCaseError::fail(error.to_string())
}

fn dot(left: &[f32], right: &[f32]) -> f32 {
    left.iter().zip(right).map(|(a, b)| a * b).sum()
}

/// `SearchFilter`'s contract, written out independently of the store: same tenant, same
/// stream when one is given, and the moment overlaps `[from_ms, to_ms]` (ends at or after
/// `from_ms`, starts at or before `to_ms`).
fn matches(filter: &SearchFilter, point: &IndexPoint) -> bool {
    let payload = &point.payload;
    payload.tenant == filter.tenant
        && filter
            .streams
            .first()
            .is_none_or(|stream| &payload.stream_id == stream)
        && filter
            .from_ms
            .is_none_or(|from_ms| payload.end_ms >= from_ms)
        && filter.to_ms.is_none_or(|to_ms| payload.start_ms <= to_ms)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 16, ..ProptestConfig::default() })]

    /// Random points (tenants, streams, time ranges, vectors) and random filtered searches
    /// against a brute-force scan of what was inserted: no hit ever breaks the filter, a
    /// `top_k` at least the number of matches returns every match, and a smaller `top_k`
    /// returns the nearest matches (the filter is applied before the ranking, not after a
    /// truncated search).
    #[test]
    fn random_filters_match_a_brute_force_scan(
        random_points in proptest::collection::vec(random_point(), 1..150),
        searches in proptest::collection::vec(random_search(), 1..10),
        optimized in any::<bool>(),
    ) {
        let directory = tempfile::tempdir().map_err(fail)?;
        let options = EdgeStoreOptions {
            indexing_threshold_kb: optimized.then_some(1),
            ..EdgeStoreOptions::default()
        };
        let store = EdgeStore::open(directory.path(), &spec(), options).map_err(fail)?;
        // The position is the segment number: every point gets its own id.
        let inserted: Vec<IndexPoint> = random_points
            .iter()
            .enumerate()
            .map(|(position, random)| {
                let mut indexed = point(
                    TENANTS[random.tenant],
                    STREAMS[random.stream],
                    position as u64,
                    0,
                    random.start_ms,
                    unit_vector(random.vector_seed),
                );
                indexed.payload.end_ms = random.start_ms + random.length_ms;
                indexed
            })
            .collect();
        store.upsert_blocking(inserted.clone()).map_err(fail)?;
        if optimized {
            store.optimize_blocking().map_err(fail)?;
        }
        prop_assert_eq!(store.count_blocking(None).map_err(fail)?, inserted.len() as u64);

        for search in searches {
            let filter = SearchFilter {
                tenant: TENANTS[search.tenant].into(),
                streams: search.stream.map(|stream| STREAMS[stream].to_string()).into_iter().collect(),
                from_ms: search.from_ms,
                to_ms: search.to_ms,
                ..SearchFilter::default()
            };
            let vector = unit_vector(search.vector_seed);
            let matching: Vec<&IndexPoint> =
                inserted.iter().filter(|point| matches(&filter, point)).collect();
            prop_assert_eq!(
                store.count_blocking(Some(filter.clone())).map_err(fail)?,
                matching.len() as u64
            );

            // top_k at least the number of matches: exactly the matching points come back.
            let everything = store
                .search_blocking(query(vector.clone(), filter.clone(), inserted.len()))
                .map_err(fail)?;
            for hit in &everything {
                prop_assert_eq!(&hit.payload.tenant, &filter.tenant);
                if let Some(stream) = filter.streams.first() {
                    prop_assert_eq!(&hit.payload.stream_id, stream);
                }
                if let Some(from_ms) = filter.from_ms {
                    prop_assert!(hit.payload.end_ms >= from_ms, "{hit:?} ends before {from_ms}");
                }
                if let Some(to_ms) = filter.to_ms {
                    prop_assert!(hit.payload.start_ms <= to_ms, "{hit:?} starts after {to_ms}");
                }
            }
            let mut returned: Vec<_> = everything.iter().map(|hit| hit.id).collect();
            returned.sort_unstable();
            let mut expected: Vec<_> = matching.iter().map(|point| point.id).collect();
            expected.sort_unstable();
            prop_assert_eq!(returned, expected, "filter {:?}", filter);

            // A small top_k: the nearest matches, by cosine, best first.
            let mut nearest: Vec<f32> = matching
                .iter()
                .map(|point| dot(&point.vectors[vector_names::TEXT], &vector))
                .collect();
            nearest.sort_by(|left, right| right.total_cmp(left));
            nearest.truncate(search.top_k);
            let top = store
                .search_blocking(query(vector, filter.clone(), search.top_k))
                .map_err(fail)?;
            prop_assert_eq!(top.len(), nearest.len());
            for (hit, expected_score) in top.iter().zip(&nearest) {
                let source = inserted
                    .iter()
                    .find(|point| point.id == hit.id)
                    .ok_or_else(|| fail(format!("unknown id {}", hit.id)))?;
                prop_assert!(matches(&filter, source));
                prop_assert!(
                    (hit.score - expected_score).abs() < 1e-4,
                    "score {} where the scan found {expected_score}", hit.score
                );
            }
        }
    }
}
