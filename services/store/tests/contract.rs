//! The store contract: what every `IndexStore` must do, run against Qdrant Edge always and
//! against the Qdrant server: the one at `VIDX_TEST_QDRANT_URL` (gRPC, e.g.
//! `http://127.0.0.1:6334`; `scripts/test.sh` starts one) with `VIDX_TEST_QDRANT_API_KEY` if
//! it needs one, else a server started for the test (`vidx_testkit::QdrantServer`).

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use common::{DIMENSION, point, query, spec, unit_vector};
use vidx_core::ports::IndexStore;
use vidx_core::types::vector_names;
use vidx_core::{IndexPoint, SearchFilter, VectorQuery};
use vidx_store::{EdgeStore, EdgeStoreOptions, ServerStore, ServerStoreOptions, VectorSpec};

/// Two tenants, three streams, points spread over time; acme's cameras labelled by site,
/// stored over 40 s of wall-clock time, every fifth point with a thumbnail.
fn corpus() -> Vec<IndexPoint> {
    let mut points = Vec::new();
    for (group, (tenant, stream, site)) in [
        ("acme", "cam-1", "site=north"),
        ("acme", "cam-2", "site=south"),
        ("globex", "cam-1", "site=north"),
    ]
    .into_iter()
    .enumerate()
    {
        for index in 0..40u64 {
            // Distinct vectors everywhere: a point's own vector finds it and nothing else.
            let seed = index + 1000 * group as u64;
            let mut point = point(
                tenant,
                stream,
                index / 10,
                index as u32 % 10,
                index * 1_000,
                unit_vector(seed),
            );
            point.payload.labels = vec!["group=lobby".into(), site.into()];
            point.payload.indexed_at_ms = 1_700_000_000_000 + index * 1_000;
            if index % 5 == 0 {
                point.payload.thumbnail = Some(format!("file:///t/{tenant}/{stream}/{index}.jpg"));
            }
            points.push(point);
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
                && (filter.streams.is_empty() || filter.streams.contains(&payload.stream_id))
                && filter
                    .labels
                    .iter()
                    .all(|label| payload.labels.contains(label))
                && filter.from_ms.is_none_or(|from| payload.end_ms >= from)
                && filter.to_ms.is_none_or(|to| payload.start_ms <= to)
                && filter
                    .indexed_before_ms
                    .is_none_or(|before| payload.indexed_at_ms < before)
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
            streams: vec!["cam-2".into()],
            ..SearchFilter::default()
        },
        // Several streams: any of them.
        SearchFilter {
            tenant: "acme".into(),
            streams: vec!["cam-1".into(), "cam-2".into(), "cam-9".into()],
            from_ms: Some(30_000),
            ..SearchFilter::default()
        },
        // Labels: all of them.
        SearchFilter {
            tenant: "acme".into(),
            labels: vec!["site=south".into()],
            ..SearchFilter::default()
        },
        SearchFilter {
            tenant: "acme".into(),
            labels: vec!["group=lobby".into(), "site=north".into()],
            ..SearchFilter::default()
        },
        SearchFilter {
            tenant: "acme".into(),
            labels: vec!["site=east".into()],
            ..SearchFilter::default()
        },
        SearchFilter {
            tenant: "acme".into(),
            indexed_before_ms: Some(1_700_000_010_500),
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
            streams: vec!["cam-2".into()],
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

/// Deletes: exactly the admitted points go (every other id stays, other tenants untouched),
/// with the thumbnails they referenced; deleting again deletes nothing.
async fn delete_contract<S: IndexStore>(store: &S) -> Result<()> {
    let points = corpus();
    store.upsert(points.clone()).await?;
    let all: BTreeSet<uuid::Uuid> = points.iter().map(|point| point.id).collect();
    let mut remaining = all.clone();
    let deletes = [
        SearchFilter {
            tenant: "acme".into(),
            streams: vec!["cam-2".into()],
            ..SearchFilter::default()
        },
        // The same stream id in another tenant is that tenant's: not touched above.
        SearchFilter {
            tenant: "acme".into(),
            indexed_before_ms: Some(1_700_000_015_000),
            ..SearchFilter::default()
        },
    ];
    for filter in deletes {
        let expected: BTreeSet<uuid::Uuid> = admitted(&points, &filter)
            .intersection(&remaining)
            .copied()
            .collect();
        ensure!(!expected.is_empty(), "{filter:?} admits nothing");
        let deleted = store.delete(filter.clone()).await?;
        let ids: BTreeSet<uuid::Uuid> = deleted.ids.iter().copied().collect();
        assert_eq!(ids, expected, "{filter:?}");
        let thumbnails: BTreeSet<String> = points
            .iter()
            .filter(|point| expected.contains(&point.id))
            .filter_map(|point| point.payload.thumbnail.clone())
            .collect();
        assert_eq!(
            deleted.thumbnails.iter().cloned().collect::<BTreeSet<_>>(),
            thumbnails,
            "{filter:?}"
        );
        for id in &expected {
            remaining.remove(id);
        }
        // Exactly those went: every other id is still there, in every tenant.
        let mut left = BTreeSet::new();
        for tenant in ["acme", "globex"] {
            for point in &points {
                if point.payload.tenant == tenant && store.point(tenant, point.id).await?.is_some()
                {
                    left.insert(point.id);
                }
            }
        }
        assert_eq!(left, remaining, "{filter:?}");
        // Idempotent.
        let again = store.delete(filter.clone()).await?;
        ensure!(
            again.ids.is_empty() && again.thumbnails.is_empty(),
            "{again:?}"
        );
    }
    assert_eq!(store.count(None).await?, remaining.len() as u64);
    ensure!(remaining.len() < all.len());
    Ok(())
}

/// The options of a fresh collection named `prefix-<uuid>` on the run's Qdrant server
/// (scripts/test.sh), or on one started for the test (returned, to keep it up): never skipped.
fn server_options(
    prefix: &str,
) -> Result<(ServerStoreOptions, Option<vidx_testkit::QdrantServer>)> {
    let (url, server) = vidx_testkit::server_url().map_err(anyhow::Error::msg)?;
    let options = ServerStoreOptions {
        url,
        api_key: std::env::var("VIDX_TEST_QDRANT_API_KEY").ok(),
        collection: format!("{prefix}-{}", uuid::Uuid::new_v4()),
        timeout: Duration::from_secs(30),
    };
    Ok((options, server))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qdrant_edge_keeps_the_delete_contract() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let store = EdgeStore::open(dir.path(), &spec(), EdgeStoreOptions::default())?;
    delete_contract(&store).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qdrant_server_keeps_the_delete_contract() -> Result<()> {
    let (options, _server) = server_options("vidx-delete")?;
    let store = ServerStore::connect(&options, &spec()).await?;
    delete_contract(&store).await
}

/// `text`, `visual` and `region` vectors of one dimension, as an index with a visual model.
fn named_specs() -> Vec<VectorSpec> {
    [
        vector_names::TEXT,
        vector_names::VISUAL,
        vector_names::REGION,
    ]
    .into_iter()
    .map(|name| VectorSpec {
        name: name.into(),
        dimension: DIMENSION,
    })
    .collect()
}

/// Points carry only the vectors of their kind: a subtitle `text` (+ `visual`), a frame
/// `visual`, a region `region` and its box. Each named vector finds exactly the points that
/// have it, and payloads (the box included) come back intact.
async fn named_vectors_contract<S: IndexStore>(store: &S) -> Result<()> {
    use vidx_core::{NormalizedBox, RecordKind};
    let tenant = SearchFilter {
        tenant: "acme".into(),
        ..SearchFilter::default()
    };
    let mut points = Vec::new();
    for index in 0..30u32 {
        let mut record = point(
            "acme",
            "cam-1",
            0,
            index,
            u64::from(index) * 1000,
            unit_vector(u64::from(index)),
        );
        let vectors = &mut record.vectors;
        match index % 3 {
            // A subtitle moment with text and visual vectors.
            0 => {
                vectors.insert(
                    vector_names::VISUAL.into(),
                    unit_vector(500 + u64::from(index)),
                );
            }
            // A frame: visual only.
            1 => {
                let visual = vectors.remove(vector_names::TEXT).unwrap_or_default();
                vectors.insert(vector_names::VISUAL.into(), visual);
                record.payload.kind = RecordKind::Frame;
                record.payload.caption = String::new();
            }
            // A region: region only, with its box.
            _ => {
                let region = vectors.remove(vector_names::TEXT).unwrap_or_default();
                vectors.insert(vector_names::REGION.into(), region);
                record.payload.kind = RecordKind::Region;
                record.payload.caption = String::new();
                record.payload.region = Some(NormalizedBox {
                    x0: 0.25,
                    y0: 0.125,
                    x1: 0.5,
                    y1: 0.75,
                });
            }
        }
        record.id = vidx_core::point_id("acme", "cam-1", 0, 0, record.payload.kind, index, "named");
        points.push(record);
    }
    store.upsert(points.clone()).await?;
    // A point by id: its payload and exactly its own vectors; never another tenant's.
    for original in points.iter().take(3) {
        let found = store
            .point("acme", original.id)
            .await?
            .ok_or_else(|| anyhow::anyhow!("point {} not found", original.id))?;
        assert_eq!(found.payload, original.payload);
        let names: BTreeSet<&String> = found.vectors.keys().collect();
        let expected_names: BTreeSet<&String> = original.vectors.keys().collect();
        assert_eq!(names, expected_names, "vectors of {}", original.id);
        for (name, vector) in &original.vectors {
            let distance: f32 = vector
                .iter()
                .zip(&found.vectors[name])
                .map(|(a, b)| (a - b).abs())
                .fold(0.0, f32::max);
            ensure!(
                distance < 1e-5,
                "vector {name} of {} differs by {distance}",
                original.id
            );
        }
        ensure!(store.point("globex", original.id).await?.is_none());
    }
    ensure!(store.point("acme", uuid::Uuid::new_v4()).await?.is_none());
    for name in [
        vector_names::TEXT,
        vector_names::VISUAL,
        vector_names::REGION,
    ] {
        let expected: BTreeSet<uuid::Uuid> = points
            .iter()
            .filter(|point| point.vectors.contains_key(name))
            .map(|point| point.id)
            .collect();
        let hits = store
            .search(VectorQuery {
                vector_name: name.into(),
                ..query(unit_vector(3), tenant.clone(), 100)
            })
            .await?;
        let found: BTreeSet<uuid::Uuid> = hits.iter().map(|hit| hit.id).collect();
        assert_eq!(found, expected, "vector {name}");
        for hit in &hits {
            let original = points
                .iter()
                .find(|point| point.id == hit.id)
                .map(|point| &point.payload);
            assert_eq!(Some(&hit.payload), original, "payload of {}", hit.id);
        }
    }
    Ok(())
}

/// The lexical restriction: only captions sharing a (stemmed, non-stop) word with the query.
async fn lexical_contract<S: IndexStore>(store: &S) -> Result<()> {
    let captions = [
        "A chef slices ripe tomatoes on a board",
        "The cook chops onions and garlic",
        "Children kick a ball across the park",
        "The tomato sauce simmers",
        "Snow falls over the mountain pass",
    ];
    let mut points = Vec::new();
    for (index, caption) in captions.iter().enumerate() {
        let mut record = point(
            "acme",
            "cam-9",
            0,
            index as u32,
            index as u64 * 1000,
            unit_vector(900 + index as u64),
        );
        record.payload.caption = caption.to_string();
        points.push(record);
    }
    // Another tenant's tomato must stay invisible.
    let mut other = point("globex", "cam-9", 0, 0, 0, unit_vector(950));
    other.payload.caption = "tomato".into();
    points.push(other);
    store.upsert(points.clone()).await?;
    let tenant = SearchFilter {
        tenant: "acme".into(),
        streams: vec!["cam-9".into()],
        ..SearchFilter::default()
    };
    let matching = |words: &str| {
        let tenant = tenant.clone();
        let words = words.to_string();
        async move {
            let hits = store
                .search(VectorQuery {
                    caption_words: Some(words),
                    ..query(unit_vector(1), tenant, 100)
                })
                .await?;
            anyhow::Ok(
                hits.into_iter()
                    .map(|hit| hit.payload.caption)
                    .collect::<BTreeSet<String>>(),
            )
        }
    };
    let expected = |indexes: &[usize]| -> BTreeSet<String> {
        indexes
            .iter()
            .map(|index| captions[*index].to_string())
            .collect()
    };
    // Stemming: "slicing" finds "slices", "Tomatoes" finds "tomato"; any word is enough.
    assert_eq!(matching("slicing Tomatoes").await?, expected(&[0, 3]));
    assert_eq!(matching("garlic or snow").await?, expected(&[1, 4]));
    assert_eq!(matching("helicopter").await?, BTreeSet::new());
    // Stop words alone match nothing.
    assert_eq!(matching("the a and").await?, BTreeSet::new());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qdrant_edge_keeps_the_lexical_contract() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let store = EdgeStore::open(dir.path(), &spec(), EdgeStoreOptions::default())?;
    lexical_contract(&store).await?;
    // Reopening the index keeps the caption text index working.
    drop(store);
    let store = EdgeStore::open(dir.path(), &spec(), EdgeStoreOptions::default())?;
    lexical_contract(&store).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qdrant_server_keeps_the_lexical_contract() -> Result<()> {
    let (options, _server) = server_options("vidx-lexical")?;
    let store = ServerStore::connect(&options, &spec()).await?;
    lexical_contract(&store).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qdrant_edge_keeps_the_named_vector_contract() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let store = EdgeStore::open(dir.path(), &named_specs(), EdgeStoreOptions::default())?;
    named_vectors_contract(&store).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qdrant_server_keeps_the_named_vector_contract() -> Result<()> {
    let (options, _server) = server_options("vidx-named")?;
    let store = ServerStore::connect(&options, &named_specs()).await?;
    named_vectors_contract(&store).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qdrant_edge_keeps_the_store_contract() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let store = EdgeStore::open(dir.path(), &spec(), EdgeStoreOptions::default())?;
    contract(&store).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qdrant_server_keeps_the_store_contract() -> Result<()> {
    let (options, _server) = server_options("vidx-contract")?;
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

/// The corpus again as a new model revision makes it: new ids, the same streams.
fn next_revision(points: &[IndexPoint]) -> Vec<IndexPoint> {
    points
        .iter()
        .map(|point| {
            let mut point = point.clone();
            point.id = uuid::Uuid::new_v5(&point.id, b"rev-2");
            point.payload.model_rev = "rev-2".into();
            point
        })
        .collect()
}

async fn ids_found<S: IndexStore>(
    store: &S,
    points: &[IndexPoint],
) -> Result<BTreeSet<uuid::Uuid>> {
    let mut found = BTreeSet::new();
    for point in points {
        if store
            .point(&point.payload.tenant, point.id)
            .await?
            .is_some()
        {
            found.insert(point.id);
        }
    }
    Ok(found)
}

/// Generations: the next one is built beside the current one, which every read answers from
/// until the switch; upserts and deletes made meanwhile reach both; the switch moves every
/// read at once; retired generations are dropped, the ones in use refused; points for a
/// retired generation are dropped, for a missing newer one refused. `reopen` opens the same
/// index again (a restart): the switch holds.
async fn generation_contract<S, F, Fut>(store: S, reopen: F) -> Result<()>
where
    S: IndexStore,
    F: FnOnce(S) -> Fut,
    Fut: std::future::Future<Output = Result<S>>,
{
    let old = corpus();
    store.upsert(old.clone()).await?;
    let before = store.generations().await?;
    assert_eq!(before.building, None);

    let sources = store.sources().await?;
    let listed: Vec<(String, String, String, u64)> = sources
        .iter()
        .map(|source| {
            (
                source.tenant.clone(),
                source.stream_id.clone(),
                source.source_uri.clone(),
                source.points,
            )
        })
        .collect();
    assert_eq!(
        listed,
        vec![
            (
                "acme".into(),
                "cam-1".into(),
                "/videos/cam-1.mp4".into(),
                40
            ),
            (
                "acme".into(),
                "cam-2".into(),
                "/videos/cam-2.mp4".into(),
                40
            ),
            (
                "globex".into(),
                "cam-1".into(),
                "/videos/cam-1.mp4".into(),
                40
            ),
        ]
    );
    assert_eq!(sources[0].labels, vec!["group=lobby", "site=north"]);

    let generation = store.begin_generation().await?;
    assert_eq!(generation, before.current + 1);
    assert_eq!(
        store.begin_generation().await?,
        generation,
        "one build at a time"
    );
    assert_eq!(store.generations().await?.building, Some(generation));

    let new = next_revision(&old);
    store.upsert_to(generation, new.clone()).await?;
    // Reads answer from the current generation: the old points, none of the new.
    assert_eq!(store.count(None).await?, old.len() as u64);
    assert!(ids_found(&store, &new).await?.is_empty());
    let hits = store
        .search(query(
            unit_vector(3),
            SearchFilter {
                tenant: "acme".into(),
                ..SearchFilter::default()
            },
            5,
        ))
        .await?;
    ensure!(
        !hits.is_empty() && hits.iter().all(|hit| hit.payload.model_rev == "test-rev"),
        "{hits:?}"
    );

    // Indexed during the build: in both generations.
    let mut during = point("acme", "cam-9", 0, 0, 0, unit_vector(9_999));
    during.payload.model_rev = "rev-2".into();
    store.upsert(vec![during.clone()]).await?;
    // Deleted during the build: from both.
    let gone = SearchFilter {
        tenant: "globex".into(),
        streams: vec!["cam-1".into()],
        ..SearchFilter::default()
    };
    let deleted = store.delete(gone.clone()).await?;
    assert_eq!(
        deleted.ids.len(),
        80,
        "40 old and 40 new points of globex's cam-1"
    );

    // Points for a generation that does not exist are refused.
    ensure!(
        store
            .upsert_to(generation + 5, vec![during.clone()])
            .await
            .is_err()
    );
    // A stream that cannot be indexed again keeps its points, unchanged.
    let kept = SearchFilter {
        tenant: "acme".into(),
        streams: vec!["cam-2".into()],
        ..SearchFilter::default()
    };
    assert_eq!(store.carry_over(generation, kept).await?, 40);
    let carried: Vec<IndexPoint> = old
        .iter()
        .filter(|point| point.payload.tenant == "acme" && point.payload.stream_id == "cam-2")
        .cloned()
        .collect();

    store.switch_generation(generation).await?;
    let after = store.generations().await?;
    assert_eq!(after.current, generation);
    assert_eq!(after.building, None);
    let expected: BTreeSet<uuid::Uuid> = new
        .iter()
        .filter(|point| point.payload.tenant != "globex")
        .map(|point| point.id)
        .chain([during.id])
        .chain(carried.iter().map(|point| point.id))
        .collect();
    assert_eq!(store.count(None).await?, expected.len() as u64);
    let found: BTreeSet<uuid::Uuid> = ids_found(&store, &new)
        .await?
        .into_iter()
        .chain(ids_found(&store, std::slice::from_ref(&during)).await?)
        .chain(ids_found(&store, &old).await?)
        .collect();
    assert_eq!(found, expected);
    let carried_back = store
        .point("acme", carried[0].id)
        .await?
        .context("a carried point")?;
    assert_eq!(
        carried_back.vectors, carried[0].vectors,
        "carried unchanged"
    );
    assert_eq!(
        carried_back.payload, carried[0].payload,
        "carried unchanged"
    );
    let hits = store
        .search(query(
            unit_vector(3),
            SearchFilter {
                tenant: "acme".into(),
                streams: vec!["cam-1".into()],
                ..SearchFilter::default()
            },
            5,
        ))
        .await?;
    ensure!(
        !hits.is_empty() && hits.iter().all(|hit| hit.payload.model_rev == "rev-2"),
        "{hits:?}"
    );

    // Late points for the old generation change nothing.
    store.upsert_to(before.current, old.clone()).await?;
    assert_eq!(store.count(None).await?, expected.len() as u64);

    // The switch holds across a restart.
    let store = reopen(store).await?;
    let reopened = store.generations().await?;
    assert_eq!(reopened.current, generation);
    assert_eq!(store.count(None).await?, expected.len() as u64);

    ensure!(
        store.drop_generation(generation).await.is_err(),
        "the current one is refused"
    );
    for retired in reopened.retired.clone() {
        store.drop_generation(retired).await?;
        store.drop_generation(retired).await?;
    }
    assert_eq!(store.generations().await?.retired, Vec::<u32>::new());
    assert_eq!(store.count(None).await?, expected.len() as u64);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qdrant_edge_keeps_the_generation_contract() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let store = EdgeStore::open(dir.path(), &spec(), EdgeStoreOptions::default())?;
    let path = dir.path().to_path_buf();
    generation_contract(store, |store| async move {
        drop(store);
        let store = EdgeStore::open(&path, &spec(), EdgeStoreOptions::default())?;
        ensure!(
            !path.join("shard").exists() || store.generations().await?.retired == vec![0],
            "generation 0 is retired"
        );
        Ok(store)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qdrant_server_keeps_the_generation_contract() -> Result<()> {
    let (options, _server) = server_options("vidx-generations")?;
    let store = ServerStore::connect(&options, &spec()).await?;
    generation_contract(store, |store| async move {
        drop(store);
        Ok(ServerStore::connect(&options, &spec()).await?)
    })
    .await
}

/// A new embedding size is just a new generation: opened for a reindex with the new model's
/// vectors, the store builds the next generation with them; the old points cannot be carried
/// into it (refused, not corrupted); after the switch searches take the new size.
async fn dimension_change_contract<S: IndexStore>(store: S) -> Result<()> {
    let generation = store.begin_generation().await?;
    let all = SearchFilter {
        tenant: "acme".into(),
        ..SearchFilter::default()
    };
    ensure!(
        matches!(
            store.carry_over(generation, all.clone()).await,
            Err(vidx_core::StoreError::Invalid(_))
        ),
        "8-dimensional points do not fit a 12-dimensional generation"
    );
    let mut wide = point("acme", "cam-1", 0, 0, 0, vec![0.5; 12]);
    wide.payload.model_rev = "wide".into();
    store.upsert_to(generation, vec![wide.clone()]).await?;
    store.switch_generation(generation).await?;
    assert_eq!(store.count(None).await?, 1);
    let hits = store.search(query(vec![0.5; 12], all, 3)).await?;
    assert_eq!(hits.len(), 1);
    assert_eq!(hits[0].id, wide.id);
    Ok(())
}

fn wide_spec() -> Vec<VectorSpec> {
    vec![VectorSpec {
        name: vector_names::TEXT.into(),
        dimension: 12,
    }]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qdrant_edge_builds_a_generation_of_another_dimension() -> Result<()> {
    let dir = tempfile::tempdir()?;
    {
        let old = EdgeStore::open(dir.path(), &spec(), EdgeStoreOptions::default())?;
        old.upsert(corpus()).await?;
    }
    let refused = EdgeStore::open(dir.path(), &wide_spec(), EdgeStoreOptions::default());
    let message = refused
        .err()
        .map(|error| error.to_string())
        .unwrap_or_default();
    ensure!(
        message.contains("vidx reindex"),
        "a model of another size is refused, pointing at vidx reindex: {message:?}"
    );
    let reindexing =
        EdgeStore::open_for_reindex(dir.path(), &wide_spec(), EdgeStoreOptions::default())?;
    dimension_change_contract(reindexing).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qdrant_server_builds_a_generation_of_another_dimension() -> Result<()> {
    let (options, _server) = server_options("vidx-dimension")?;
    ServerStore::connect(&options, &spec())
        .await?
        .upsert(corpus())
        .await?;
    let refused = ServerStore::connect(&options, &wide_spec()).await;
    let message = refused
        .err()
        .map(|error| error.to_string())
        .unwrap_or_default();
    ensure!(
        message.contains("vidx reindex"),
        "a model of another size is refused, pointing at vidx reindex: {message:?}"
    );
    let reindexing = ServerStore::connect_for_reindex(&options, &wide_spec()).await?;
    dimension_change_contract(reindexing).await
}
