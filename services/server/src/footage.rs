//! Live footage: a live stream has no file to cut a clip from afterwards, so the ingest keeps
//! each of its segments in the media store (beside the thumbnails, where every query node
//! reads them) under `footage/<tenant>/<stream>/<start_ms>-<end_ms>.mkv`: tenant and stream in
//! hex (any id is then a safe key), the segment's wall-clock range (epoch ms) in the name, so
//! a hit's footage is found by listing its stream. `media.retention` bounds it: footage that
//! ended more than `max_age_secs` ago is deleted, then the oldest while all of it is over
//! `max_bytes`. A swept hit's clip is `410 Gone`; its point, thumbnail and caption stay.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use vidx_core::ports::{BlobEntry, BlobStore};
use vidx_core::{BlobError, MediaError, TimeRange};
use vidx_media::{Clip, ClipOptions, InputSource};

/// How much live footage is kept (`media.retention`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// Footage that ended longer ago is deleted; zero keeps none.
    pub max_age: Duration,
    /// Above this many bytes in all, the oldest footage is deleted; 0: no limit.
    pub max_bytes: u64,
}

impl Retention {
    /// Whether live segments are kept at all.
    pub fn keeps_footage(&self) -> bool {
        !self.max_age.is_zero()
    }

    /// How often the sweeper runs: a quarter of the age, between 1 s and a minute.
    pub fn sweep_interval(&self) -> Duration {
        (self.max_age / 4).clamp(Duration::from_secs(1), Duration::from_secs(60))
    }
}

/// Where all footage lives in the store.
const ROOT: &str = "footage/";

fn hex(id: &str) -> String {
    id.bytes().map(|byte| format!("{byte:02x}")).collect()
}

/// The store prefix of one tenant's footage.
pub fn tenant_prefix(tenant: &str) -> String {
    format!("{ROOT}{}/", hex(tenant))
}

/// Whether the footage at `key` ended before `before_ms` (epoch ms); a key that names no
/// range is not footage vidx wrote, and is left alone.
pub fn ended_before(key: &str, before_ms: u64) -> bool {
    range_of(key).is_some_and(|range| range.end_ms < before_ms)
}

/// The store prefix of one stream's footage.
pub fn stream_prefix(tenant: &str, stream_id: &str) -> String {
    format!("{ROOT}{}/{}/", hex(tenant), hex(stream_id))
}

/// The key of a live segment's footage.
pub fn key(tenant: &str, stream_id: &str, range: TimeRange) -> String {
    format!(
        "{}{}-{}.mkv",
        stream_prefix(tenant, stream_id),
        range.start_ms,
        range.end_ms
    )
}

/// The wall-clock range a footage key names.
fn range_of(key: &str) -> Option<TimeRange> {
    let name = key.rsplit('/').next()?.strip_suffix(".mkv")?;
    let (start, end) = name.split_once('-')?;
    let (start, end) = (start.parse().ok()?, end.parse().ok()?);
    (start < end).then(|| TimeRange::new(start, end))
}

/// Keep a live segment (the chunk file the ingest cut) as footage; its URI.
pub async fn keep(
    store: &dyn BlobStore,
    tenant: &str,
    stream_id: &str,
    range: TimeRange,
    chunk: &Path,
) -> Result<String, BlobError> {
    let bytes = tokio::fs::read(chunk)
        .await
        .map_err(|error| BlobError::Unavailable(format!("{}: {error}", chunk.display())))?;
    store.put(&key(tenant, stream_id, range), bytes).await
}

/// What one sweep did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Swept {
    /// Segments deleted for their age, and for the size limit.
    pub expired: usize,
    pub over_size: usize,
    /// Footage left, in bytes.
    pub kept_bytes: u64,
}

/// Delete the footage `retention` no longer keeps, as of `now_ms` (epoch ms).
pub async fn sweep(
    store: &dyn BlobStore,
    retention: Retention,
    now_ms: u64,
) -> Result<Swept, BlobError> {
    let mut entries: Vec<(u64, BlobEntry)> = store
        .list(ROOT)
        .await?
        .into_iter()
        .map(|entry| {
            let end = range_of(&entry.key).map_or(entry.modified_ms, |range| range.end_ms);
            (end, entry)
        })
        .collect();
    entries.sort_by_key(|(end, _)| *end);
    let horizon =
        now_ms.saturating_sub(u64::try_from(retention.max_age.as_millis()).unwrap_or(u64::MAX));
    let mut swept = Swept {
        kept_bytes: entries.iter().map(|(_, entry)| entry.bytes).sum(),
        ..Swept::default()
    };
    for (end, entry) in &entries {
        let expired = *end < horizon || !retention.keeps_footage();
        let over_size = retention.max_bytes > 0 && swept.kept_bytes > retention.max_bytes;
        if !expired && !over_size {
            break;
        }
        store.delete(&entry.uri).await?;
        swept.kept_bytes -= entry.bytes;
        if expired {
            swept.expired += 1;
        } else {
            swept.over_size += 1;
        }
    }
    Ok(swept)
}

/// Sweep `store` every [`Retention::sweep_interval`] until `shutdown`.
pub fn spawn_sweeper(
    store: Arc<dyn BlobStore>,
    retention: Retention,
    mut shutdown: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        tracing::info!(
            store = store.location(),
            max_age_s = retention.max_age.as_secs(),
            max_bytes = retention.max_bytes,
            "live footage kept (media.retention)"
        );
        loop {
            match sweep(store.as_ref(), retention, crate::subscribe::now_ms()).await {
                Ok(swept) if swept.expired + swept.over_size > 0 => tracing::info!(
                    expired = swept.expired,
                    over_size = swept.over_size,
                    kept_bytes = swept.kept_bytes,
                    "old live footage deleted"
                ),
                Ok(_) => {}
                Err(error) => tracing::warn!(error = %error, "live footage not swept"),
            }
            tokio::select! {
                _ = tokio::time::sleep(retention.sweep_interval()) => {}
                _ = shutdown.wait_for(|stop| *stop) => return,
            }
        }
    })
}

/// Why a live hit has no clip.
#[derive(Debug, thiserror::Error)]
pub enum FootageError {
    /// Its footage was deleted by retention (or never kept).
    #[error(
        "the footage of this live moment is no longer kept (media.retention deletes live \
         segments after max_age_secs or above max_bytes)"
    )]
    Gone,
    #[error("live footage: {0}")]
    Store(#[from] BlobError),
    #[error(transparent)]
    Media(#[from] MediaError),
}

/// The kept segment of `tenant`'s `stream_id` that holds the moment starting at `start_ms`.
pub async fn find(
    store: &dyn BlobStore,
    tenant: &str,
    stream_id: &str,
    moment: TimeRange,
) -> Result<(BlobEntry, TimeRange), FootageError> {
    let mut candidates: Vec<(BlobEntry, TimeRange)> = store
        .list(&stream_prefix(tenant, stream_id))
        .await?
        .into_iter()
        .filter_map(|entry| range_of(&entry.key).map(|range| (entry, range)))
        .filter(|(_, range)| range.start_ms < moment.end_ms.max(moment.start_ms + 1))
        .filter(|(_, range)| range.end_ms > moment.start_ms)
        .collect();
    // The segment the moment starts in; else the first it overlaps.
    candidates.sort_by_key(|(_, range)| (range.start_ms > moment.start_ms, range.start_ms));
    candidates.into_iter().next().ok_or(FootageError::Gone)
}

/// Cut the clip of `moment` (wall-clock ms) from kept `footage` into the MP4 `output`; a
/// remote store's segment is fetched into `scratch` first. The clip's times are wall-clock.
pub async fn cut(
    store: &dyn BlobStore,
    (footage, segment): (BlobEntry, TimeRange),
    moment: TimeRange,
    output: &Path,
    scratch: &Path,
    options: ClipOptions,
) -> Result<Clip, FootageError> {
    let (path, fetched) = match store.local_path(&footage.uri) {
        Ok(Some(path)) => (path, false),
        Ok(None) => {
            let bytes = store.get(&footage.uri).await?;
            let path = scratch.join(format!(".footage-{}.mkv", uuid::Uuid::new_v4()));
            tokio::fs::write(&path, bytes)
                .await
                .map_err(|error| BlobError::Unavailable(format!("{}: {error}", path.display())))?;
            (path, true)
        }
        Err(BlobError::NotFound(_)) => return Err(FootageError::Gone),
        Err(error) => return Err(error.into()),
    };
    // Media time 0 of the segment is its first keyframe, at the segment's wall-clock start.
    let within = TimeRange::new(
        moment.start_ms.saturating_sub(segment.start_ms),
        moment
            .end_ms
            .min(segment.end_ms)
            .saturating_sub(segment.start_ms),
    );
    let (source, output_path) = (InputSource::File(path.clone()), output.to_path_buf());
    let clip = tokio::task::spawn_blocking(move || {
        vidx_media::cut_clip(&source, within, &output_path, &options)
    })
    .await;
    if fetched {
        let _ = tokio::fs::remove_file(&path).await;
    }
    let clip = clip.map_err(|error| MediaError::Io {
        input: footage.key.clone(),
        reason: format!("cutting the clip: {error}"),
    })??;
    Ok(Clip {
        start_ms: segment.start_ms + clip.start_ms,
        end_ms: segment.start_ms + clip.end_ms,
        ..clip
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_name_the_stream_safely_and_its_range() {
        let key = key("acme", "cam/1 ..", TimeRange::new(1_000, 2_500));
        assert_eq!(key, "footage/61636d65/63616d2f31202e2e/1000-2500.mkv");
        assert_eq!(range_of(&key), Some(TimeRange::new(1_000, 2_500)));
        assert_eq!(range_of("footage/a/b/x.mkv"), None);
        assert_eq!(range_of("footage/a/b/5-5.mkv"), None);
        assert!(key.starts_with(&stream_prefix("acme", "cam/1 ..")));
    }

    #[test]
    fn the_sweep_runs_often_enough_and_not_too_often() {
        let every = |secs| {
            Retention {
                max_age: Duration::from_secs(secs),
                max_bytes: 0,
            }
            .sweep_interval()
        };
        assert_eq!(every(2), Duration::from_secs(1));
        assert_eq!(every(40), Duration::from_secs(10));
        assert_eq!(every(86_400), Duration::from_secs(60));
    }
}
