//! Domain types: the segment task that travels through the queue, sampled frames, moments,
//! the points written to the index and the hits read back.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::time::TimeRange;

/// The version of the `SegmentTask` layout. A worker rejects (dead-letters) other versions.
pub const SEGMENT_TASK_SCHEMA_VERSION: u32 = 1;

/// Named vectors in the index.
pub mod vector_names {
    /// Sentence embedding of a moment's caption text.
    pub const TEXT: &str = "text";
    /// PE-Core embedding of the frames in a moment's window.
    pub const VISUAL: &str = "visual";
    /// PE-Core embedding of a region crop.
    pub const REGION: &str = "region";
}

/// Payload keys in the index (indexed ones are filterable).
pub mod payload_keys {
    pub const TENANT: &str = "tenant";
    pub const STREAM_ID: &str = "stream_id";
    pub const SEGMENT_SEQ: &str = "segment_seq";
    pub const KIND: &str = "kind";
    pub const START_MS: &str = "start_ms";
    pub const END_MS: &str = "end_ms";
    pub const CAPTION: &str = "caption";
    pub const MODEL_REV: &str = "model_rev";
    pub const SOURCE_URI: &str = "source_uri";
    pub const INDEXED_AT_MS: &str = "indexed_at_ms";
    pub const LABELS: &str = "labels";
    pub const THUMBNAIL: &str = "thumbnail";
}

/// Where a segment's encoded media lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SegmentMedia {
    /// The chunk itself, for small segments.
    Inline(Vec<u8>),
    /// A blob URI (`file:///...` in embedded mode; object storage later).
    Blob(String),
}

/// A timed line of subtitle or closed-caption text, in source media time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubtitleCue {
    pub start_ms: u64,
    pub end_ms: u64,
    pub text: String,
}

/// The unit of work: one keyframe-aligned segment of one stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentTask {
    pub schema_version: u32,
    pub tenant: String,
    pub stream_id: String,
    pub segment_seq: u64,
    /// Media time of the segment, ms from the start of the stream.
    pub range: TimeRange,
    pub media: SegmentMedia,
    /// Where the segment came from (path or URL with credentials removed).
    pub source_uri: String,
    /// Delivery attempt, starting at 1.
    pub attempt: u32,
    /// Subtitle cues of the source that overlap this segment (embedded streams and sidecars).
    pub subtitles: Vec<SubtitleCue>,
    /// W3C trace context (`traceparent`, `tracestate`) of the span that published the
    /// segment, so the worker's span joins the same trace; empty when tracing is off. Kafka
    /// carries it in message headers.
    pub trace_context: BTreeMap<String, String>,
    /// The stream's labels (`key=value`, sorted), set when it was submitted; stored on every
    /// point so that searches can filter by them.
    pub labels: Vec<String>,
    /// The index generation the segment's points go to: `None` for the current one (and
    /// the one being built beside it, if any); a reindex sets the generation it builds.
    pub generation: Option<u32>,
}

/// One decoded frame in packed RGB, as shown (pixel aspect and display turn applied), at the
/// smallest size that covers the model input (`media.frame_size`) on both sides, or the
/// source's own when smaller; each model resizes it as its reference preprocessing does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// Exact presentation time of the frame, ms from the start of the stream.
    pub pts_ms: u64,
    pub width: u32,
    pub height: u32,
    /// `width * height * 3` bytes, row-major RGB.
    pub rgb: Vec<u8>,
    /// The source picture's size as displayed (rotation and pixel aspect applied), before
    /// any downscaling; `(0, 0)` when unknown.
    pub display_size: (u32, u32),
}

/// Which kind of record a point holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RecordKind {
    /// A dense caption event from a vision-language model.
    Caption,
    /// A subtitle or closed-caption cue.
    Subtitle,
    /// A region (box or box track).
    Region,
    /// A whole segment: the mean visual vector of its sampled frames.
    Segment,
    /// One sampled frame's visual vector.
    Frame,
}

impl RecordKind {
    pub fn as_str(self) -> &'static str {
        match self {
            RecordKind::Caption => "caption",
            RecordKind::Subtitle => "subtitle",
            RecordKind::Region => "region",
            RecordKind::Segment => "segment",
            RecordKind::Frame => "frame",
        }
    }

    pub fn parse(value: &str) -> Option<Self> {
        match value {
            "caption" => Some(RecordKind::Caption),
            "subtitle" => Some(RecordKind::Subtitle),
            "region" => Some(RecordKind::Region),
            "segment" => Some(RecordKind::Segment),
            "frame" => Some(RecordKind::Frame),
            _ => None,
        }
    }
}

/// A normalised box `[x0, y0, x1, y1]` in `0..=1` image coordinates.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct NormalizedBox {
    pub x0: f32,
    pub y0: f32,
    pub x1: f32,
    pub y1: f32,
}

/// A timestamped description produced by a captioner for one segment.
#[derive(Debug, Clone, PartialEq)]
pub struct Moment {
    pub kind: RecordKind,
    pub range: TimeRange,
    pub caption: String,
    pub region: Option<NormalizedBox>,
}

/// The payload stored with every point.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PointPayload {
    pub tenant: String,
    pub stream_id: String,
    pub segment_seq: u64,
    pub kind: RecordKind,
    pub start_ms: u64,
    pub end_ms: u64,
    pub caption: String,
    pub model_rev: String,
    pub source_uri: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<NormalizedBox>,
    /// Where the point's thumbnail (a JPEG) is in the thumbnail store; never a public URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thumbnail: Option<String>,
    /// When the point was stored (wall-clock ms, set by the worker at its upsert): standing
    /// queries follow it. 0 for points stored before it existed.
    #[serde(default)]
    pub indexed_at_ms: u64,
    /// The stream's labels (`key=value`, sorted), from its submission.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub labels: Vec<String>,
}

/// A point to upsert: deterministic id, named vectors and payload.
#[derive(Debug, Clone, PartialEq)]
pub struct IndexPoint {
    pub id: Uuid,
    pub vectors: BTreeMap<String, Vec<f32>>,
    pub payload: PointPayload,
    /// A JPEG to store before the point (its URI then goes into `payload.thumbnail`); not
    /// part of the stored point.
    pub thumbnail: Option<Thumbnail>,
}

/// A thumbnail to store: points showing the same frame share one (same key).
#[derive(Debug, Clone, PartialEq)]
pub struct Thumbnail {
    /// Relative path in the thumbnail store (`thumbnails/<uuid>.jpg`), the same each time the
    /// segment is indexed.
    pub key: String,
    pub jpeg: std::sync::Arc<Vec<u8>>,
}

/// Restrictions every search applies. The tenant is mandatory: a search never crosses tenants.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SearchFilter {
    pub tenant: String,
    /// Only these streams (any of them); empty: every stream of the tenant.
    pub streams: Vec<String>,
    /// Only points that carry every one of these labels (`key=value`).
    pub labels: Vec<String>,
    /// Only moments that end at or after this time.
    pub from_ms: Option<u64>,
    /// Only moments that start at or before this time.
    pub to_ms: Option<u64>,
    /// Only points stored at or after this wall-clock time (`indexed_at_ms`): standing queries.
    pub indexed_since_ms: Option<u64>,
    /// Only points stored before this wall-clock time: deletes and retention.
    pub indexed_before_ms: Option<u64>,
}

/// A nearest-neighbour query against one named vector.
#[derive(Debug, Clone, PartialEq)]
pub struct VectorQuery {
    pub vector_name: String,
    pub vector: Vec<f32>,
    pub filter: SearchFilter,
    pub top_k: usize,
    /// Lexical restriction: only points whose caption contains at least one of these words
    /// (the store's full-text index: lowercase, English stop words dropped, stemmed).
    pub caption_words: Option<String>,
}

/// One search result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Hit {
    pub id: Uuid,
    pub score: f32,
    pub payload: PointPayload,
}
