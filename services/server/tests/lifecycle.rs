//! Deleting moments with what belongs to them, on Qdrant Edge and on the Qdrant server, with
//! the media store on disk as a node keeps it: a stream's deletion takes exactly its points,
//! the thumbnail files they referenced, its live footage and the clips cut from it, and
//! touches nothing else; `store.retention` takes exactly the points indexed before its bound.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Result, ensure};
use common::{WordsEmbedder, point};
use vidx_core::ports::{BlobStore, IndexStore};
use vidx_core::types::vector_names;
use vidx_core::{IndexPoint, TimeRange};
use vidx_server::lifecycle::{self, MediaPlaces, Scope, StoreRetention};
use vidx_store::{
    AnyStore, EdgeStore, EdgeStoreOptions, ServerStore, ServerStoreOptions, VectorSpec,
};

const NOW_MS: u64 = 1_800_000_000_000;
const HOUR_MS: u64 = 3_600_000;

fn spec() -> Vec<VectorSpec> {
    vec![VectorSpec {
        name: vector_names::TEXT.into(),
        dimension: common::DIMENSION,
    }]
}

/// Points of acme's cam-1 and cam-2 and of globex's cam-1, each stream with one point
/// indexed two hours ago and two indexed a minute ago, every point with a thumbnail file of
/// its own; live footage of each stream (old and recent); a cached clip of every point.
async fn fill(store: &AnyStore, media: &dyn BlobStore, clip_dir: &Path) -> Result<Vec<IndexPoint>> {
    let embedder = WordsEmbedder {
        delay: Duration::ZERO,
    };
    std::fs::create_dir_all(clip_dir)?;
    let mut points = Vec::new();
    for (tenant, stream) in [("acme", "cam-1"), ("acme", "cam-2"), ("globex", "cam-1")] {
        for seq in 0..3u64 {
            let mut point = point(&embedder, tenant, stream, seq, "a red van at the gate")?;
            point.payload.indexed_at_ms = if seq == 0 {
                NOW_MS - 2 * HOUR_MS
            } else {
                NOW_MS - 60_000
            };
            let uri = media
                .put(&format!("thumbnails/{}.jpg", point.id), b"jpeg".to_vec())
                .await?;
            point.payload.thumbnail = Some(uri);
            std::fs::write(clip_dir.join(format!("{}.mp4", point.id)), b"mp4")?;
            std::fs::write(clip_dir.join(format!("{}.json", point.id)), b"{}")?;
            points.push(point);
        }
        for end_ms in [NOW_MS - 2 * HOUR_MS, NOW_MS - 60_000] {
            let range = TimeRange::new(end_ms - 20_000, end_ms);
            media
                .put(
                    &vidx_server::footage::key(tenant, stream, range),
                    b"mkv".to_vec(),
                )
                .await?;
        }
    }
    store.upsert(points.clone()).await?;
    Ok(points)
}

async fn present(store: &AnyStore, points: &[IndexPoint]) -> Result<BTreeSet<uuid::Uuid>> {
    let mut ids = BTreeSet::new();
    for point in points {
        if store
            .point(&point.payload.tenant, point.id)
            .await?
            .is_some()
        {
            ids.insert(point.id);
        }
    }
    Ok(ids)
}

fn thumbnails_on_disk(data_dir: &Path, points: &[IndexPoint]) -> BTreeSet<uuid::Uuid> {
    points
        .iter()
        .filter(|point| {
            data_dir
                .join(format!("thumbnails/{}.jpg", point.id))
                .is_file()
        })
        .map(|point| point.id)
        .collect()
}

fn clips_on_disk(clip_dir: &Path, points: &[IndexPoint]) -> BTreeSet<uuid::Uuid> {
    points
        .iter()
        .filter(|point| clip_dir.join(format!("{}.mp4", point.id)).is_file())
        .map(|point| point.id)
        .collect()
}

/// (tenant, stream, end_ms) of the footage in the store.
async fn footage(media: &dyn BlobStore) -> Result<BTreeSet<(String, String, u64)>> {
    let mut kept = BTreeSet::new();
    for (tenant, stream) in [("acme", "cam-1"), ("acme", "cam-2"), ("globex", "cam-1")] {
        for entry in media
            .list(&vidx_server::footage::stream_prefix(tenant, stream))
            .await?
        {
            let end = entry
                .key
                .rsplit('-')
                .next()
                .and_then(|name| name.strip_suffix(".mkv"))
                .and_then(|end| end.parse().ok())
                .unwrap_or(0);
            kept.insert((tenant.to_string(), stream.to_string(), end));
        }
    }
    Ok(kept)
}

async fn lifecycle_contract(store: AnyStore) -> Result<()> {
    let data_dir = tempfile::tempdir()?;
    let media: Arc<dyn BlobStore> = Arc::new(vidx_blob::ObjectBlobStore::open(
        &data_dir.path().display().to_string(),
        &BTreeMap::new(),
    )?);
    let clip_dir = data_dir.path().join("clips");
    let places = MediaPlaces {
        store: Some(media.clone()),
        clip_dir: Some(clip_dir.clone()),
    };
    let points = fill(&store, media.as_ref(), &clip_dir).await?;
    let all: BTreeSet<uuid::Uuid> = points.iter().map(|point| point.id).collect();
    ensure!(present(&store, &points).await? == all);
    ensure!(thumbnails_on_disk(data_dir.path(), &points) == all);
    let all_footage = footage(media.as_ref()).await?;
    assert_eq!(all_footage.len(), 6);

    // Forget acme's cam-1: its three points, thumbnails, clips and both footage segments.
    let removed =
        lifecycle::delete(&store, &places, "acme", &Scope::Stream("cam-1".into())).await?;
    let gone: BTreeSet<uuid::Uuid> = points
        .iter()
        .filter(|point| point.payload.tenant == "acme" && point.payload.stream_id == "cam-1")
        .map(|point| point.id)
        .collect();
    assert_eq!(
        (
            removed.points,
            removed.thumbnails,
            removed.footage,
            removed.clips
        ),
        (3, 3, 2, 3)
    );
    let left: BTreeSet<uuid::Uuid> = all.difference(&gone).copied().collect();
    assert_eq!(present(&store, &points).await?, left);
    assert_eq!(thumbnails_on_disk(data_dir.path(), &points), left);
    assert_eq!(clips_on_disk(&clip_dir, &points), left);
    let footage_left = footage(media.as_ref()).await?;
    let expected_footage: BTreeSet<_> = all_footage
        .iter()
        .filter(|(tenant, stream, _)| !(tenant == "acme" && stream == "cam-1"))
        .cloned()
        .collect();
    assert_eq!(footage_left, expected_footage);
    // Again: nothing to delete, no error.
    let again = lifecycle::delete(&store, &places, "acme", &Scope::Stream("cam-1".into())).await?;
    assert_eq!(again, lifecycle::Removed::default());

    // Retention: acme keeps an hour, globex forever: exactly acme's old point goes, with its
    // thumbnail and its old footage.
    let retention = StoreRetention::from_config(&vidx_config::StoreRetentionConfig {
        max_age_secs: 3600,
        tenants: BTreeMap::from([("globex".to_string(), 0)]),
    });
    let swept = lifecycle::sweep(
        &store,
        &places,
        &retention,
        &["acme".to_string(), "globex".to_string()],
        NOW_MS,
    )
    .await?;
    let expired: BTreeSet<uuid::Uuid> = points
        .iter()
        .filter(|point| {
            point.payload.tenant == "acme"
                && point.payload.stream_id == "cam-2"
                && point.payload.indexed_at_ms < NOW_MS - HOUR_MS
        })
        .map(|point| point.id)
        .collect();
    assert_eq!(expired.len(), 1);
    assert_eq!(swept.get("acme").map(|removed| removed.points), Some(1));
    assert!(!swept.contains_key("globex"), "{swept:?}");
    let left: BTreeSet<uuid::Uuid> = left.difference(&expired).copied().collect();
    assert_eq!(present(&store, &points).await?, left);
    assert_eq!(thumbnails_on_disk(data_dir.path(), &points), left);
    let expected_footage: BTreeSet<_> = expected_footage
        .into_iter()
        .filter(|(tenant, _, end)| !(tenant == "acme" && *end < NOW_MS - HOUR_MS))
        .collect();
    assert_eq!(footage(media.as_ref()).await?, expected_footage);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qdrant_edge_deletes_streams_and_expired_moments_with_their_media() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let store = EdgeStore::open(dir.path(), &spec(), EdgeStoreOptions::default())?;
    lifecycle_contract(AnyStore::Edge(store)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qdrant_server_deletes_streams_and_expired_moments_with_their_media() -> Result<()> {
    // The run's server (scripts/test.sh), or one started for this test: never skipped.
    let (url, _server) = vidx_testkit::server_url().map_err(anyhow::Error::msg)?;
    let options = ServerStoreOptions {
        url,
        api_key: std::env::var("VIDX_TEST_QDRANT_API_KEY").ok(),
        collection: format!("vidx-lifecycle-{}", uuid::Uuid::new_v4()),
        timeout: Duration::from_secs(30),
    };
    let store = ServerStore::connect(&options, &spec()).await?;
    lifecycle_contract(AnyStore::Server(store)).await
}
