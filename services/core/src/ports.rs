//! The ports: what the pipeline needs from the outside world. Adapter crates implement them
//! (ffmpeg in `media`, candle in `model`, Qdrant in `store`, queues in `bus`).
//!
//! Model and media ports are blocking (they run on blocking threads behind bounded channels);
//! the store and the queue are async because their remote implementations are.

use std::collections::HashMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;

use crate::error::{BlobError, MediaError, ModelError, QueueError, StoreError};
use crate::time::TimeRange;
use crate::types::{Frame, Hit, IndexPoint, Moment, SearchFilter, SegmentTask, VectorQuery};

/// Bytes shared without copying: an inline segment, still inside its queue message.
pub type SharedBytes = Arc<dyn AsRef<[u8]> + Send + Sync>;

/// Decodes a segment's media and samples frames from it.
pub trait FrameSampler: Send + Sync {
    /// Decode the chunk at `media_path` (a segment covering `range`) and return `count` frames
    /// sampled uniformly over the range, each with its real presentation time.
    fn sample(
        &self,
        media_path: &Path,
        range: TimeRange,
        count: usize,
    ) -> Result<Vec<Frame>, MediaError>;
    /// The same for a chunk held in memory (an inline segment), read where it is: never
    /// written to disk first.
    fn sample_bytes(
        &self,
        media: SharedBytes,
        range: TimeRange,
        count: usize,
    ) -> Result<Vec<Frame>, MediaError>;
}

/// What a model sees of one segment.
#[derive(Debug, Clone, Copy)]
pub struct SegmentInput<'a> {
    pub task: &'a SegmentTask,
    pub frames: &'a [Frame],
}

/// What a captioner is asked of one segment: its dense caption, and — when the segment's
/// region tracks are to be captioned — a region caption (PLM's RCap) per track of
/// `tracks` and the timed moments (RDCap) of `dense_track`. `tracks[i][f]` / `dense_track[f]`
/// is the box on frame `f` of `segment.frames`, or none.
#[derive(Debug, Clone, Copy)]
pub struct SegmentAsk<'a> {
    pub segment: SegmentInput<'a>,
    pub tracks: &'a [Vec<Option<crate::NormalizedBox>>],
    pub dense_track: Option<&'a [Option<crate::NormalizedBox>]>,
}

impl<'a> SegmentAsk<'a> {
    /// Only the segment's dense caption.
    pub fn caption(segment: SegmentInput<'a>) -> Self {
        Self {
            segment,
            tracks: &[],
            dense_track: None,
        }
    }
}

/// A captioner's answer to a [`SegmentAsk`]: the segment's moments, one region caption per
/// asked track (none at all from a captioner without region prompts), and the dense
/// track's timed moments.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SegmentAnswer {
    pub moments: Vec<Moment>,
    pub region_captions: Vec<String>,
    pub region_moments: Vec<Moment>,
}

/// Produces timestamped moments for a segment.
pub trait Captioner: Send + Sync {
    /// A short name for logs and errors.
    fn name(&self) -> &str;
    /// The revision that goes into point ids: a new revision writes new points.
    fn revision(&self) -> &str;
    /// Whether the captioner looks at the sampled frames.
    fn needs_frames(&self) -> bool;
    fn caption(&self, segment: SegmentInput<'_>) -> Result<Vec<Moment>, ModelError>;
    /// Several segments at once, one result per segment in order (a GPU worker batches
    /// segments across queue messages). The default captions them one by one.
    fn caption_batch(&self, segments: &[SegmentInput<'_>]) -> Result<Vec<Vec<Moment>>, ModelError> {
        segments
            .iter()
            .map(|segment| self.caption(*segment))
            .collect()
    }
    /// Region captions (PLM's RCap) of a segment's region tracks: `tracks[i][f]` is track
    /// `i`'s box on frame `f` of `segment.frames`, or none. One caption per track, in order;
    /// the default (a captioner without region prompts) gives none at all.
    fn caption_regions(
        &self,
        segment: SegmentInput<'_>,
        tracks: &[Vec<Option<crate::NormalizedBox>>],
    ) -> Result<Vec<String>, ModelError> {
        let _ = (segment, tracks);
        Ok(Vec::new())
    }
    /// Dense captions of one region over time (PLM's RDCap): `boxes[f]` is the region's box
    /// on frame `f`, or none. Timed moments of what the subject in the box does; the default
    /// gives none.
    fn dense_caption_region(
        &self,
        segment: SegmentInput<'_>,
        boxes: &[Option<crate::NormalizedBox>],
    ) -> Result<Vec<Moment>, ModelError> {
        let _ = (segment, boxes);
        Ok(Vec::new())
    }
    /// Everything asked of several segments, one answer per ask in order. A captioner that
    /// generates (PLM) runs every prompt of the batch — each segment's dense caption, its
    /// region captions and its RDCap — as one generation batch; the default asks
    /// [`Captioner::caption_batch`], then the region prompts segment by segment.
    fn answer_batch(&self, asks: &[SegmentAsk<'_>]) -> Result<Vec<SegmentAnswer>, ModelError> {
        let segments: Vec<SegmentInput<'_>> = asks.iter().map(|ask| ask.segment).collect();
        let captions = self.caption_batch(&segments)?;
        let mut answers = Vec::with_capacity(asks.len());
        for (ask, moments) in asks.iter().zip(captions) {
            let region_captions = if ask.tracks.is_empty() {
                Vec::new()
            } else {
                self.caption_regions(ask.segment, ask.tracks)?
            };
            let region_moments = match ask.dense_track {
                Some(boxes) => self.dense_caption_region(ask.segment, boxes)?,
                None => Vec::new(),
            };
            answers.push(SegmentAnswer {
                moments,
                region_captions,
                region_moments,
            });
        }
        Ok(answers)
    }
}

/// Embeds text (captions at index time, the query at search time).
pub trait TextEmbedder: Send + Sync {
    fn name(&self) -> &str;
    fn revision(&self) -> &str;
    fn dimension(&self) -> usize;
    /// One L2-normalised vector per text, in order.
    fn embed(&self, texts: &[String]) -> Result<Vec<Vec<f32>>, ModelError>;
}

/// Embeds frames into the visual space shared with query text.
pub trait VisualEmbedder: Send + Sync {
    fn name(&self) -> &str;
    fn revision(&self) -> &str;
    fn dimension(&self) -> usize;
    /// One L2-normalised vector per frame, in order.
    fn embed_frames(&self, frames: &[Frame]) -> Result<Vec<Vec<f32>>, ModelError>;
}

/// Stores points and searches them.
pub trait IndexStore: Send + Sync + 'static {
    /// Insert or overwrite points by id. Returns once the points are durable.
    fn upsert(
        &self,
        points: Vec<IndexPoint>,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
    /// Filtered nearest-neighbour search.
    fn search(
        &self,
        query: VectorQuery,
    ) -> impl Future<Output = Result<Vec<Hit>, StoreError>> + Send;
    /// Exact number of points matching the filter (all tenants when `None`).
    fn count(
        &self,
        filter: Option<SearchFilter>,
    ) -> impl Future<Output = Result<u64, StoreError>> + Send;
    /// One point with its payload and vectors, if it exists and belongs to `tenant` (another
    /// tenant's point looks like one that does not exist).
    fn point(
        &self,
        tenant: &str,
        id: uuid::Uuid,
    ) -> impl Future<Output = Result<Option<IndexPoint>, StoreError>> + Send;
    /// Delete every point `filter` admits (its tenant condition always applies). Idempotent:
    /// deleting again removes nothing and is no error.
    fn delete(
        &self,
        filter: SearchFilter,
    ) -> impl Future<Output = Result<Deleted, StoreError>> + Send;

    // Index generations (a reindex): searches answer from the current generation while the
    // next one is built beside it; upserts made meanwhile go to both (when their vectors fit
    // the new one); the switch is atomic. A store without generations has just one.

    /// The generations the store holds now.
    fn generations(&self) -> impl Future<Output = Result<Generations, StoreError>> + Send {
        std::future::ready(Ok(Generations::default()))
    }
    /// Create the next generation (empty, with the configured vectors) beside the current
    /// one, or return the one being built already.
    fn begin_generation(&self) -> impl Future<Output = Result<u32, StoreError>> + Send {
        no_generations()
    }
    /// Upsert into `generation`: the current one (as [`upsert`](Self::upsert)), the one
    /// being built, or an older one (nothing to do: its points are obsolete).
    fn upsert_to(
        &self,
        generation: u32,
        points: Vec<IndexPoint>,
    ) -> impl Future<Output = Result<(), StoreError>> + Send {
        let _ = (generation, points);
        no_generations()
    }
    /// Make `generation` (the one being built) the current one, atomically: every search
    /// after this answers from it.
    fn switch_generation(
        &self,
        generation: u32,
    ) -> impl Future<Output = Result<(), StoreError>> + Send {
        let _ = generation;
        no_generations::<()>()
    }
    /// Remove a retired generation (idempotent); the current one and the one being built
    /// are refused.
    fn drop_generation(
        &self,
        generation: u32,
    ) -> impl Future<Output = Result<(), StoreError>> + Send {
        let _ = generation;
        no_generations::<()>()
    }
    /// The distinct sources of the current generation (all tenants), with their labels and
    /// point counts, ordered.
    fn sources(&self) -> impl Future<Output = Result<Vec<IndexedSource>, StoreError>> + Send {
        no_generations()
    }
    /// Copy the current generation's points that `filter` admits, unchanged, into
    /// `generation` (the one being built): what a reindex keeps of a stream it cannot read
    /// again. The number copied; `Invalid` when their vectors do not fit the new generation.
    fn carry_over(
        &self,
        generation: u32,
        filter: SearchFilter,
    ) -> impl Future<Output = Result<u64, StoreError>> + Send {
        let _ = (generation, filter);
        no_generations()
    }
}

/// The generations of an index: the one searches answer from, the one a reindex is
/// building beside it, and older ones kept for a grace period after a switch.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Generations {
    pub current: u32,
    pub building: Option<u32>,
    /// Older generations still on disk or on the server, oldest first.
    pub retired: Vec<u32>,
}

/// One source as the current generation knows it: what a reindex submits again.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct IndexedSource {
    pub tenant: String,
    pub stream_id: String,
    /// The point's `source_uri`: a path or a URL with credentials removed.
    pub source_uri: String,
    pub labels: Vec<String>,
    /// Points of the stream from this source.
    pub points: u64,
}

fn no_generations<T: Send>() -> impl Future<Output = Result<T, StoreError>> + Send {
    std::future::ready(Err(StoreError::Invalid(
        "this store keeps no index generations".into(),
    )))
}

/// What a delete removed from the index.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Deleted {
    /// The ids of the deleted points.
    pub ids: Vec<uuid::Uuid>,
    /// The thumbnails the deleted points referenced (thumbnail store keys, each once), for
    /// the caller to delete with them.
    pub thumbnails: Vec<String>,
}

/// One message taken from the queue; hand its tag back with `ack` or `nack`.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub tag: DeliveryTag,
    pub task: SegmentTask,
}

/// Identifies a delivery to its queue (a Kafka partition/offset, an in-process sequence).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct DeliveryTag {
    pub partition: i32,
    pub offset: i64,
}

/// The segment queue between ingest and workers.
pub trait SegmentQueue: Send + Sync + 'static {
    /// Publish a task; waits while the queue is full (the bound is the backpressure). Returns
    /// where the task landed, which [`IngestProgress`] reports on later.
    fn publish(
        &self,
        task: SegmentTask,
    ) -> impl Future<Output = Result<DeliveryTag, QueueError>> + Send;
    /// The next task, or `None` once the queue is closed and drained.
    fn receive(&self) -> impl Future<Output = Result<Option<Delivery>, QueueError>> + Send;
    /// The task's points are durable in the store: the queue may forget it.
    fn ack(&self, tag: DeliveryTag) -> impl Future<Output = Result<(), QueueError>> + Send;
    /// The task failed for good with `reason` after `attempts` tries: the queue dead-letters
    /// it (with both), and the rest of its partition moves on.
    fn nack(
        &self,
        tag: DeliveryTag,
        reason: String,
        attempts: u32,
    ) -> impl Future<Output = Result<(), QueueError>> + Send;
    /// No more tasks will be published; `receive` returns `None` once the rest are taken.
    fn close(&self);
}

/// What the ingest learns from its queue about the segments it published: how far the
/// workers got, and which segments were dead-lettered. Both queues implement it (Kafka from
/// the group's committed offsets and the dead-letter topic), so job progress holds across
/// worker crashes and rebalances.
pub trait IngestProgress: Send + Sync + std::fmt::Debug {
    /// Per partition, the first offset not yet settled: every delivery before it was indexed
    /// or dead-lettered. May block on a broker round trip (call it on a blocking thread).
    fn committed(&self) -> Result<HashMap<i32, i64>, QueueError>;
    /// The next dead letter of any segment: the delivery it came from and why it failed.
    fn next_dead_letter(&self) -> BoxFuture<'_, Result<(DeliveryTag, String), QueueError>>;
}

/// What a worker node reports about its queue (`WorkerService.Status`, the metrics' gauges).
pub trait QueueStatus: Send + Sync {
    /// Deliveries taken and not yet settled.
    fn in_flight(&self) -> usize;
    /// The partitions this consumer holds now.
    fn assigned_partitions(&self) -> Vec<i32>;
    /// Whether fetching is paused because every worker is busy.
    fn is_paused(&self) -> bool;
    /// Partitions taken away from this consumer so far.
    fn revocations(&self) -> u64;
    /// Offset commits that failed so far (each is retried; a later one supersedes it).
    fn commit_failures(&self) -> u64 {
        0
    }
    /// Deliveries not yet settled per partition this consumer holds. May block on a broker
    /// round trip (call it on a blocking thread).
    fn lag(&self) -> Result<Vec<(i32, i64)>, QueueError>;
}

/// [`BlobStore::put_file`] by reading the file and [`put`](BlobStore::put)ting its bytes,
/// then removing it: what a store that cannot rename into itself does.
pub async fn upload_file<S: BlobStore + ?Sized>(
    store: &S,
    key: &str,
    path: &Path,
) -> Result<String, BlobError> {
    let bytes = std::fs::read(path)
        .map_err(|error| BlobError::Unavailable(format!("{}: {error}", path.display())))?;
    let uri = store.put(key, bytes).await?;
    // A leftover file is harmless: the ingest removes its spool per job.
    let _ = std::fs::remove_file(path);
    Ok(uri)
}

/// A boxed future, for the ports used as trait objects.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Where segments too large for a queue message travel: a directory on a shared volume, or
/// object storage. Only URIs under the store's own location are ever read or deleted.
pub trait BlobStore: Send + Sync + std::fmt::Debug {
    /// The store's location (`file:///…`, `s3://bucket/prefix`, …), for logs.
    fn location(&self) -> &str;
    /// Store `bytes` under `key` (a relative path) and return the URI that names them.
    fn put<'a>(&'a self, key: &'a str, bytes: Vec<u8>) -> BoxFuture<'a, Result<String, BlobError>>;
    /// Move the file at `path` into the store under `key` and return its URI; the file is
    /// gone afterwards. The default reads it and [`put`](Self::put)s the bytes; a store on the
    /// local filesystem renames it instead (no copy).
    fn put_file<'a>(
        &'a self,
        key: &'a str,
        path: &'a Path,
    ) -> BoxFuture<'a, Result<String, BlobError>> {
        Box::pin(upload_file(self, key, path))
    }
    /// The bytes behind a URI of this store.
    fn get<'a>(&'a self, uri: &'a str) -> BoxFuture<'a, Result<Vec<u8>, BlobError>>;
    /// Remove a blob of this store; a blob that is already gone is not an error.
    fn delete<'a>(&'a self, uri: &'a str) -> BoxFuture<'a, Result<(), BlobError>>;
    /// For a store on the local filesystem: the file behind a URI of this store, which the
    /// decoder can read in place. `None` for remote stores.
    fn local_path(&self, uri: &str) -> Result<Option<PathBuf>, BlobError>;
    /// The blobs whose keys start with `prefix` (a relative path ending in `/`), in no
    /// particular order: what retention sweeps and the clip cutter looks up.
    fn list<'a>(&'a self, prefix: &'a str) -> BoxFuture<'a, Result<Vec<BlobEntry>, BlobError>>;
}

/// One blob of a [`BlobStore::list`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobEntry {
    /// Its key in the store (relative path).
    pub key: String,
    /// The URI [`BlobStore::get`] and [`BlobStore::delete`] take.
    pub uri: String,
    pub bytes: u64,
    /// When it was last written, Unix epoch ms.
    pub modified_ms: u64,
}
