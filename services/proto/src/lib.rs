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
use vidx_core::{QueueError, SegmentMedia, SubtitleCue, TimeRange};

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
        })
    }
}

impl From<&vidx_core::fusion::FusedHit> for v1::Hit {
    /// `score` is the fused score (the channel's own similarity when one channel was
    /// searched); `scores` holds each channel's similarity.
    fn from(hit: &vidx_core::fusion::FusedHit) -> Self {
        use vidx_core::fusion::Channel;
        let channel = |channel: Channel| hit.channels.get(&channel).map(|score| score.score);
        let payload = &hit.payload;
        v1::Hit {
            id: hit.id.to_string(),
            stream_id: payload.stream_id.clone(),
            start_ms: payload.start_ms,
            end_ms: payload.end_ms,
            caption: payload.caption.clone(),
            score: hit.score as f32,
            kind: payload.kind.as_str().to_string(),
            r#box: payload.region.map(|region| v1::Box {
                x0: region.x0,
                y0: region.y0,
                x1: region.x1,
                y1: region.y1,
            }),
            scores: Some(v1::ChannelScores {
                caption: channel(Channel::Caption),
                visual: channel(Channel::Visual),
                region: channel(Channel::Region),
                lexical: channel(Channel::Lexical),
            }),
            source_uri: payload.source_uri.clone(),
        }
    }
}

impl From<&vidx_core::Hit> for v1::Hit {
    fn from(hit: &vidx_core::Hit) -> Self {
        let payload = &hit.payload;
        v1::Hit {
            id: hit.id.to_string(),
            stream_id: payload.stream_id.clone(),
            start_ms: payload.start_ms,
            end_ms: payload.end_ms,
            caption: payload.caption.clone(),
            score: hit.score,
            kind: payload.kind.as_str().to_string(),
            r#box: payload.region.map(|region| v1::Box {
                x0: region.x0,
                y0: region.y0,
                x1: region.x1,
                y1: region.y1,
            }),
            // One channel so far: the caption text vectors.
            scores: Some(v1::ChannelScores {
                caption: Some(hit.score),
                visual: None,
                region: None,
                lexical: None,
            }),
            source_uri: payload.source_uri.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segment_task_round_trips_and_rejects_garbage() -> Result<(), QueueError> {
        let task = vidx_core::SegmentTask {
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
}
