//! Generated `vidx.v1` protobuf and gRPC code (from `proto/vidx/v1/vidx.proto`) and the
//! conversions between wire messages and `vidx-core` types.

#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod v1 {
    tonic::include_proto!("vidx.v1");
}

/// The encoded `FileDescriptorSet` of `vidx.v1`, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/vidx_descriptor.bin"));

use prost::Message;
use vidx_core::fusion::{ChannelScores, SearchHit};
use vidx_core::{QueueError, SegmentMedia, SubtitleCue, TimeRange};

/// Encode a jobs-topic record.
pub fn encode_job_entry(entry: &v1::JobJournalEntry) -> Vec<u8> {
    entry.encode_to_vec()
}

/// Decode a jobs-topic record.
pub fn decode_job_entry(bytes: &[u8]) -> Result<v1::JobJournalEntry, QueueError> {
    v1::JobJournalEntry::decode(bytes)
        .map_err(|error| QueueError::Malformed(format!("JobJournalEntry: {error}")))
}

/// Encode a task as the queue message.
pub fn encode_segment_task(task: &vidx_core::SegmentTask) -> Vec<u8> {
    v1::SegmentTask::from(task).encode_to_vec()
}

/// Decode a queue message. Malformed bytes and missing media are `QueueError::Malformed`;
/// the schema version is checked by the worker, so that it can dead-letter with the reason.
pub fn decode_segment_task(bytes: &[u8]) -> Result<vidx_core::SegmentTask, QueueError> {
    let message = v1::SegmentTask::decode(bytes)
        .map_err(|error| QueueError::Malformed(format!("SegmentTask: {error}")))?;
    vidx_core::SegmentTask::try_from(message)
}

impl From<&vidx_core::SegmentTask> for v1::SegmentTask {
    fn from(task: &vidx_core::SegmentTask) -> Self {
        v1::SegmentTask {
            schema_version: task.schema_version,
            tenant: task.tenant.clone(),
            stream_id: task.stream_id.clone(),
            segment_seq: task.segment_seq,
            start_ms: task.range.start_ms,
            end_ms: task.range.end_ms,
            media: Some(match &task.media {
                SegmentMedia::Inline(bytes) => v1::segment_task::Media::InlineMedia(bytes.clone()),
                SegmentMedia::Blob(uri) => v1::segment_task::Media::BlobUri(uri.clone()),
            }),
            source_uri: task.source_uri.clone(),
            attempt: task.attempt,
            subtitles: task
                .subtitles
                .iter()
                .map(|cue| v1::SubtitleCue {
                    start_ms: cue.start_ms,
                    end_ms: cue.end_ms,
                    text: cue.text.clone(),
                })
                .collect(),
            labels: task.labels.clone(),
            generation: task.generation,
        }
    }
}

impl TryFrom<v1::SegmentTask> for vidx_core::SegmentTask {
    type Error = QueueError;

    fn try_from(message: v1::SegmentTask) -> Result<Self, Self::Error> {
        let media = match message.media {
            Some(v1::segment_task::Media::InlineMedia(bytes)) => SegmentMedia::Inline(bytes),
            Some(v1::segment_task::Media::BlobUri(uri)) => SegmentMedia::Blob(uri),
            None => return Err(QueueError::Malformed("SegmentTask.media: missing".into())),
        };
        if message.tenant.is_empty() {
            return Err(QueueError::Malformed("SegmentTask.tenant: empty".into()));
        }
        if message.stream_id.is_empty() {
            return Err(QueueError::Malformed("SegmentTask.stream_id: empty".into()));
        }
        if message.end_ms < message.start_ms {
            return Err(QueueError::Malformed(format!(
                "SegmentTask.end_ms: {} is before start_ms {}",
                message.end_ms, message.start_ms
            )));
        }
        Ok(vidx_core::SegmentTask {
            schema_version: message.schema_version,
            tenant: message.tenant,
            stream_id: message.stream_id,
            segment_seq: message.segment_seq,
            range: TimeRange::new(message.start_ms, message.end_ms),
            media,
            source_uri: message.source_uri,
            attempt: message.attempt,
            subtitles: message
                .subtitles
                .into_iter()
                .map(|cue| SubtitleCue {
                    start_ms: cue.start_ms,
                    end_ms: cue.end_ms,
                    text: cue.text,
                })
                .collect(),
            trace_context: Default::default(),
            labels: vidx_core::labels::parse_all(message.labels.iter().map(String::as_str))
                .map_err(|reason| QueueError::Malformed(format!("SegmentTask.labels: {reason}")))?,
            generation: message.generation,
        })
    }
}

impl From<&SearchHit> for v1::Hit {
    fn from(hit: &SearchHit) -> Self {
        v1::Hit {
            id: hit.id.clone(),
            stream_id: hit.stream_id.clone(),
            start_ms: hit.start_ms,
            end_ms: hit.end_ms,
            caption: hit.caption.clone(),
            score: hit.score,
            kind: hit.kind.clone(),
            r#box: hit
                .region
                .map(|[x0, y0, x1, y1]| v1::Box { x0, y0, x1, y1 }),
            scores: Some(v1::ChannelScores {
                caption: hit.scores.caption,
                visual: hit.scores.visual,
                region: hit.scores.region,
                lexical: hit.scores.lexical,
            }),
            source_uri: hit.source_uri.clone(),
            segment_seq: hit.segment_seq,
            thumbnail_url: hit.thumbnail_url.clone().unwrap_or_default(),
            model_rev: hit.model_rev.clone(),
            labels: hit.labels.clone().into_iter().collect(),
        }
    }
}

impl From<v1::Hit> for SearchHit {
    fn from(hit: v1::Hit) -> Self {
        let scores = hit.scores.unwrap_or_default();
        SearchHit {
            id: hit.id,
            stream_id: hit.stream_id,
            start_ms: hit.start_ms,
            end_ms: hit.end_ms,
            caption: hit.caption,
            kind: hit.kind,
            score: hit.score,
            segment_seq: hit.segment_seq,
            scores: ChannelScores {
                caption: scores.caption,
                visual: scores.visual,
                region: scores.region,
                lexical: scores.lexical,
            },
            region: hit
                .r#box
                .map(|region| [region.x0, region.y0, region.x1, region.y1]),
            source_uri: hit.source_uri,
            thumbnail_url: (!hit.thumbnail_url.is_empty()).then_some(hit.thumbnail_url),
            model_rev: hit.model_rev,
            labels: hit.labels.into_iter().collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segment_task_round_trips_and_rejects_garbage() -> Result<(), QueueError> {
        let task = vidx_core::SegmentTask {
            generation: None,
            schema_version: vidx_core::SEGMENT_TASK_SCHEMA_VERSION,
            tenant: "acme".into(),
            stream_id: "cam-7".into(),
            segment_seq: 42,
            range: TimeRange::new(840_000, 860_000),
            media: SegmentMedia::Blob("file:///spool/a.mkv".into()),
            source_uri: "rtsp://***@cam/7".into(),
            attempt: 2,
            subtitles: vec![SubtitleCue {
                start_ms: 841_000,
                end_ms: 842_000,
                text: "hello".into(),
            }],
            trace_context: Default::default(),
            labels: vec!["group=lobby".into(), "site=north".into()],
        };
        assert_eq!(decode_segment_task(&encode_segment_task(&task))?, task);
        assert!(matches!(
            decode_segment_task(&[0xff, 0xff, 0xff]),
            Err(QueueError::Malformed(_))
        ));
        let no_media = v1::SegmentTask {
            tenant: "t".into(),
            stream_id: "s".into(),
            ..Default::default()
        };
        let error = decode_segment_task(&no_media.encode_to_vec()).expect_err("media missing");
        assert!(error.to_string().contains("media"), "{error}");
        Ok(())
    }

    #[test]
    fn a_search_hit_round_trips_through_the_wire_shape() {
        let hit = SearchHit {
            id: "6f1c4b8e-0000-5000-8000-000000000001".into(),
            stream_id: "cam-1".into(),
            start_ms: 1_000,
            end_ms: 3_500,
            caption: "a dog runs".into(),
            kind: "region".into(),
            score: 0.5,
            segment_seq: Some(7),
            scores: ChannelScores {
                caption: Some(0.25),
                visual: None,
                region: Some(0.75),
                lexical: None,
            },
            region: Some([0.1, 0.2, 0.3, 0.4]),
            source_uri: "/videos/a.mp4".into(),
            thumbnail_url: None,
            model_rev: "subtitles+minilm".into(),
            labels: [("site".to_string(), "north".to_string())].into(),
        };
        assert_eq!(SearchHit::from(v1::Hit::from(&hit)), hit);
    }
}
