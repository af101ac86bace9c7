//! From a task to the points it produces: fetch the media, sample frames, run the captioners
//! and embedders, derive deterministic ids. Blocking: call it on a blocking thread.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use vidx_core::ports::{Captioner, FrameSampler, SegmentInput, TextEmbedder, VisualEmbedder};
use vidx_core::types::vector_names;
use vidx_core::{
    Frame, IndexPoint, PointPayload, SEGMENT_TASK_SCHEMA_VERSION, SegmentMedia, SegmentTask,
    point_id,
};

use crate::PipelineError;

/// The models a worker runs.
#[derive(Clone)]
pub struct Models {
    pub captioners: Vec<Arc<dyn Captioner>>,
    pub text_embedder: Arc<dyn TextEmbedder>,
    pub visual_embedder: Option<Arc<dyn VisualEmbedder>>,
}

impl std::fmt::Debug for Models {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("Models")
            .field(
                "captioners",
                &self
                    .captioners
                    .iter()
                    .map(|c| c.name().to_string())
                    .collect::<Vec<_>>(),
            )
            .field("text_embedder", &self.text_embedder.name())
            .finish()
    }
}

/// Segment media on local disk for the decoder; a temporary copy is removed on drop.
#[derive(Debug)]
pub struct LocalMedia {
    pub path: PathBuf,
    _temporary: Option<tempfile::NamedTempFile>,
}

/// Make the task's media readable as a local file.
pub fn fetch_media(media: &SegmentMedia) -> Result<LocalMedia, PipelineError> {
    match media {
        SegmentMedia::Inline(bytes) => {
            let mut file = tempfile::Builder::new()
                .prefix("vidx-segment-")
                .suffix(".mkv")
                .tempfile()
                .map_err(|error| PipelineError::Fetch(format!("temporary file: {error}")))?;
            std::io::Write::write_all(&mut file, bytes)
                .map_err(|error| PipelineError::Fetch(format!("temporary file: {error}")))?;
            Ok(LocalMedia {
                path: file.path().to_path_buf(),
                _temporary: Some(file),
            })
        }
        SegmentMedia::Blob(uri) => {
            let Some(path) = uri.strip_prefix("file://") else {
                return Err(PipelineError::Fetch(format!(
                    "blob URI `{uri}`: only file:// blobs are readable by this worker"
                )));
            };
            let path = PathBuf::from(path);
            if !path.is_file() {
                return Err(PipelineError::Fetch(format!("blob {uri} does not exist")));
            }
            Ok(LocalMedia {
                path,
                _temporary: None,
            })
        }
    }
}

/// How long one segment spent in each stage.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct StageTimings {
    /// Reading a blob from the blob store.
    pub fetch: Duration,
    /// Opening the media and sampling frames.
    pub decode: Duration,
    /// Captioners and embedders.
    pub models: Duration,
    /// The upsert, until the store acknowledged it.
    pub store: Duration,
}

/// Run every stage before the upsert for one task.
pub fn build_points(
    task: &SegmentTask,
    sampler: &dyn FrameSampler,
    models: &Models,
    frames_per_segment: usize,
) -> Result<Vec<IndexPoint>, PipelineError> {
    build_points_timed(
        task,
        sampler,
        models,
        frames_per_segment,
        &mut StageTimings::default(),
    )
}

/// [`build_points`], recording the decode and model time in `timings`.
pub fn build_points_timed(
    task: &SegmentTask,
    sampler: &dyn FrameSampler,
    models: &Models,
    frames_per_segment: usize,
    timings: &mut StageTimings,
) -> Result<Vec<IndexPoint>, PipelineError> {
    if task.schema_version != SEGMENT_TASK_SCHEMA_VERSION {
        return Err(PipelineError::SchemaVersion {
            found: task.schema_version,
            expected: SEGMENT_TASK_SCHEMA_VERSION,
        });
    }
    // Frames are decoded whenever sampling is on, even for captioners that do not look at
    // them: decoding validates the media, so a broken segment fails here instead of being
    // indexed from its subtitles alone.
    let wants_frames = frames_per_segment > 0;
    let started = Instant::now();
    let frames: Vec<Frame> = if wants_frames {
        let media = fetch_media(&task.media)?;
        sampler.sample(&media.path, task.range, frames_per_segment)?
    } else {
        Vec::new()
    };
    timings.decode = started.elapsed();
    let started = Instant::now();
    let points = points_from_frames(task, &frames, models)?;
    timings.models = started.elapsed();
    Ok(points)
}

fn points_from_frames(
    task: &SegmentTask,
    frames: &[Frame],
    models: &Models,
) -> Result<Vec<IndexPoint>, PipelineError> {
    let input = SegmentInput { task, frames };
    let mut moments = Vec::new();
    for captioner in &models.captioners {
        for (index, moment) in captioner.caption(input)?.into_iter().enumerate() {
            moments.push((captioner.revision().to_string(), index as u32, moment));
        }
    }
    if moments.is_empty() {
        return Ok(Vec::new());
    }

    let captions: Vec<String> = moments
        .iter()
        .map(|(_, _, moment)| moment.caption.clone())
        .collect();
    let text_vectors = models.text_embedder.embed(&captions)?;
    let frame_vectors = match (&models.visual_embedder, frames.is_empty()) {
        (Some(embedder), false) => Some(embedder.embed_frames(frames)?),
        _ => None,
    };

    let mut points = Vec::with_capacity(moments.len());
    for ((model_rev, index, moment), text_vector) in moments.into_iter().zip(text_vectors) {
        let mut vectors = BTreeMap::from([(vector_names::TEXT.to_string(), text_vector)]);
        if let Some(frame_vectors) = &frame_vectors
            && let Some(visual) = mean_of_window(frames, frame_vectors, moment.range)
        {
            vectors.insert(vector_names::VISUAL.to_string(), visual);
        }
        points.push(IndexPoint {
            id: point_id(
                &task.tenant,
                &task.stream_id,
                task.segment_seq,
                moment.kind,
                index,
                &model_rev,
            ),
            vectors,
            payload: PointPayload {
                tenant: task.tenant.clone(),
                stream_id: task.stream_id.clone(),
                segment_seq: task.segment_seq,
                kind: moment.kind,
                start_ms: moment.range.start_ms,
                end_ms: moment.range.end_ms,
                caption: moment.caption,
                model_rev,
                source_uri: task.source_uri.clone(),
                region: moment.region,
            },
        });
    }
    Ok(points)
}

/// Mean (L2-normalised) of the frame vectors inside `window`; the nearest frame when none
/// falls inside.
fn mean_of_window(
    frames: &[Frame],
    vectors: &[Vec<f32>],
    window: vidx_core::TimeRange,
) -> Option<Vec<f32>> {
    let inside: Vec<&Vec<f32>> = frames
        .iter()
        .zip(vectors)
        .filter(|(frame, _)| window.start_ms <= frame.pts_ms && frame.pts_ms <= window.end_ms)
        .map(|(_, vector)| vector)
        .collect();
    let chosen: Vec<&Vec<f32>> = if inside.is_empty() {
        let nearest = frames
            .iter()
            .zip(vectors)
            .min_by_key(|(frame, _)| frame.pts_ms.abs_diff(window.start_ms))?;
        vec![nearest.1]
    } else {
        inside
    };
    let dimension = chosen.first()?.len();
    let mut mean = vec![0.0f32; dimension];
    for vector in &chosen {
        for (sum, value) in mean.iter_mut().zip(vector.iter()) {
            *sum += value;
        }
    }
    let norm = mean
        .iter()
        .map(|value| value * value)
        .sum::<f32>()
        .sqrt()
        .max(1e-12);
    mean.iter_mut().for_each(|value| *value /= norm);
    Some(mean)
}
