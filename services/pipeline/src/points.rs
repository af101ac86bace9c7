//! From a task to the points it produces: fetch the media, sample frames, run the captioners
//! and embedders, derive deterministic ids. Blocking: call it on a blocking thread.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use vidx_core::ports::{
    Captioner, FrameSampler, SegmentAnswer, SegmentAsk, SegmentInput, SharedBytes, TextEmbedder,
    VisualEmbedder,
};
use vidx_core::regions::{RegionKind, RegionSettings, RegionTrack, propose_regions};
use vidx_core::types::vector_names;
use vidx_core::{
    Frame, IndexPoint, PointPayload, SEGMENT_TASK_SCHEMA_VERSION, SegmentMedia, SegmentTask,
    point_id,
};

use crate::PipelineError;
use crate::thumbnails::SegmentThumbnails;

/// The models a worker runs.
#[derive(Clone)]
pub struct Models {
    pub captioners: Vec<Arc<dyn Captioner>>,
    pub text_embedder: Arc<dyn TextEmbedder>,
    /// PE-Core: `visual` vectors for moments, segments and frames, `region` vectors for
    /// region crops.
    pub visual_embedder: Option<Arc<dyn VisualEmbedder>>,
    /// Region proposals (motion tracks, else a coarse grid) embedded as Region records;
    /// `None`: no regions. Needs `visual_embedder`.
    pub regions: Option<RegionSettings>,
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

impl Models {
    /// Run every captioner that looks at frames on a batch of `max_batch` synthetic segments of
    /// `frames` frames each (`width` x `height`), as a GPU worker does before it reports ready
    /// (as TGI warms up on its largest batch): a batch size that does not fit the device fails
    /// here, with [`vidx_core::ModelError::OutOfMemory`], instead of on the first real batch.
    pub fn warm_up(
        &self,
        max_batch: usize,
        frames: usize,
        (width, height): (u32, u32),
    ) -> Result<(), vidx_core::ModelError> {
        let captioners: Vec<&Arc<dyn Captioner>> = self
            .captioners
            .iter()
            .filter(|captioner| captioner.needs_frames())
            .collect();
        if captioners.is_empty() || frames == 0 {
            return Ok(());
        }
        let segment_ms = 1000 * frames as u64;
        let tasks: Vec<SegmentTask> = (0..max_batch.max(1) as u64)
            .map(|seq| SegmentTask {
                generation: None,
                schema_version: SEGMENT_TASK_SCHEMA_VERSION,
                tenant: "warm-up".into(),
                stream_id: "warm-up".into(),
                segment_seq: seq,
                range: vidx_core::TimeRange::new(0, segment_ms),
                media: SegmentMedia::Inline(Vec::new()),
                source_uri: "warm-up".into(),
                attempt: 1,
                subtitles: Vec::new(),
                trace_context: Default::default(),
                labels: Vec::new(),
            })
            .collect();
        let sampled: Vec<Frame> = (0..frames as u64)
            .map(|index| Frame {
                pts_ms: index * 1000,
                width,
                height,
                rgb: vec![128; width as usize * height as usize * 3],
                display_size: (0, 0),
            })
            .collect();
        // As many region prompts per segment as a real one gets at most: the region captions
        // of the largest tracks and the RDCap of the longest (a full-frame track stands in).
        let whole = vidx_core::NormalizedBox {
            x0: 0.0,
            y0: 0.0,
            x1: 1.0,
            y1: 1.0,
        };
        let track = vec![Some(whole); frames];
        let region_captions = match (&self.regions, &self.visual_embedder) {
            (Some(settings), Some(_)) => settings.captions,
            _ => 0,
        };
        let tracks = vec![track.clone(); region_captions];
        let inputs: Vec<SegmentAsk<'_>> = tasks
            .iter()
            .map(|task| SegmentAsk {
                segment: SegmentInput {
                    task,
                    frames: &sampled,
                },
                tracks: &tracks,
                dense_track: (region_captions > 0).then_some(track.as_slice()),
            })
            .collect();
        for captioner in captioners {
            let started = Instant::now();
            captioner.answer_batch(&inputs).map_err(|error| match error {
                vidx_core::ModelError::OutOfMemory { model, reason } => {
                    vidx_core::ModelError::OutOfMemory {
                        model,
                        reason: format!(
                            "warm-up: a batch of {} segments x {frames} frames does not fit ({reason}); lower pipeline.max_batch",
                            inputs.len()
                        ),
                    }
                }
                other => other,
            })?;
            tracing::info!(
                captioner = captioner.name(),
                batch = inputs.len(),
                frames,
                secs = started.elapsed().as_secs_f64(),
                "warm-up batch fits"
            );
        }
        Ok(())
    }
}

/// An inline segment's bytes, shared with its task (no copy).
struct InlineBytes(Arc<SegmentTask>);

impl AsRef<[u8]> for InlineBytes {
    fn as_ref(&self) -> &[u8] {
        match &self.0.media {
            SegmentMedia::Inline(bytes) => bytes,
            SegmentMedia::Blob(_) => &[],
        }
    }
}

/// Sample `count` frames of a task's segment where its media is: in memory for an inline
/// segment (read in place), or the local file a `file://` blob names.
fn sample_task(
    task: &Arc<SegmentTask>,
    sampler: &dyn FrameSampler,
    count: usize,
) -> Result<Vec<Frame>, PipelineError> {
    match &task.media {
        SegmentMedia::Inline(_) => {
            let bytes: SharedBytes = Arc::new(InlineBytes(task.clone()));
            Ok(sampler.sample_bytes(bytes, task.range, count)?)
        }
        SegmentMedia::Blob(uri) => {
            let Some(path) = uri.strip_prefix("file://") else {
                return Err(PipelineError::Fetch(format!(
                    "blob URI `{uri}`: only file:// blobs are readable by this worker"
                )));
            };
            let path = Path::new(path);
            if !path.is_file() {
                return Err(PipelineError::Fetch(format!("blob {uri} does not exist")));
            }
            Ok(sampler.sample(path, task.range, count)?)
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
    // A copy of the task for the batch path: only for callers outside the worker (tests,
    // benchmarks); the worker hands its tasks over shared.
    let task = Arc::new(task.clone());
    let (points, stages) = build_points_batch(&[task], sampler, models, frames_per_segment)?
        .pop()
        .unwrap_or_else(|| Err(PipelineError::Task("no result for the segment".into())))?;
    timings.decode = stages.decode;
    timings.models = stages.models;
    Ok(points)
}

/// One task's result in a batch: its points and stage timings, or why it failed.
pub type TaskPoints = Result<(Vec<IndexPoint>, StageTimings), PipelineError>;

/// Whether `error` leaves the device unusable for this process (a sticky GPU error).
pub fn device_failed(error: &PipelineError) -> bool {
    error.failure() == vidx_core::Failure::Device
}

/// [`build_points_timed`] for several tasks at once, as a GPU worker runs them: frames are
/// sampled per task, each captioner captions every task's segment in one batch, the
/// embedders run per task. A batch that fails (out of device memory, or one bad segment) is
/// split in halves and each half retried, down to single segments, so one segment's failure
/// is its own. One result per task, in order; `Err` only for a device failure, which
/// abandons the whole batch (nothing of it may be committed).
pub fn build_points_batch(
    tasks: &[Arc<SegmentTask>],
    sampler: &dyn FrameSampler,
    models: &Models,
    frames_per_segment: usize,
) -> Result<Vec<TaskPoints>, PipelineError> {
    let mut timings = vec![StageTimings::default(); tasks.len()];
    let mut prepared: Vec<Result<Vec<Frame>, PipelineError>> = tasks
        .iter()
        .zip(&mut timings)
        .map(|(task, timings)| {
            if task.schema_version != SEGMENT_TASK_SCHEMA_VERSION {
                return Err(PipelineError::SchemaVersion {
                    found: task.schema_version,
                    expected: SEGMENT_TASK_SCHEMA_VERSION,
                });
            }
            // Frames are decoded whenever sampling is on, even for captioners that do not
            // look at them: decoding validates the media, so a broken segment fails here
            // instead of being indexed from its subtitles alone.
            let started = Instant::now();
            let frames = if frames_per_segment > 0 {
                sample_task(task, sampler, frames_per_segment)?
            } else {
                Vec::new()
            };
            timings.decode = started.elapsed();
            Ok(frames)
        })
        .collect();

    // Each segment's region tracks, proposed before captioning so that their prompts go in
    // the captioners' batch with the dense captions.
    let mut regions: Vec<Option<SegmentRegions>> = Vec::with_capacity(tasks.len());
    for (index, timings) in timings.iter_mut().enumerate() {
        let started = Instant::now();
        let proposed = match &prepared[index] {
            Ok(frames) => SegmentRegions::propose(frames, models),
            Err(_) => Ok(None),
        };
        timings.models += started.elapsed();
        match proposed {
            Ok(proposed) => regions.push(proposed),
            Err(error) => {
                prepared[index] = Err(error);
                regions.push(None);
            }
        }
    }

    let mut moments: Vec<Vec<RevisedMoment>> = vec![Vec::new(); tasks.len()];
    for captioner in &models.captioners {
        let live: Vec<usize> = (0..tasks.len())
            .filter(|index| prepared[*index].is_ok())
            .collect();
        if live.is_empty() {
            break;
        }
        let asks: Vec<SegmentAsk<'_>> = live
            .iter()
            .filter_map(|index| {
                let frames = prepared[*index].as_ref().ok()?;
                let segment = SegmentInput {
                    task: tasks[*index].as_ref(),
                    frames,
                };
                Some(match &regions[*index] {
                    Some(regions) => regions.ask(segment),
                    None => SegmentAsk::caption(segment),
                })
            })
            .collect();
        let started = Instant::now();
        let results = caption_split(captioner.as_ref(), &asks)?;
        let share = started.elapsed() / live.len() as u32;
        for (index, result) in live.into_iter().zip(results) {
            timings[index].models += share;
            let answer = match result {
                Ok(answer) => answer,
                Err(error) => {
                    prepared[index] = Err(error.into());
                    continue;
                }
            };
            let revision = captioner.revision();
            moments[index].extend(
                answer
                    .moments
                    .into_iter()
                    .enumerate()
                    .map(|(at, moment)| (revision.to_string(), at as u32, moment)),
            );
            if let Some(regions) = &mut regions[index]
                && let Err(error) = regions.take_answers(
                    captioner.as_ref(),
                    answer.region_captions,
                    answer.region_moments,
                )
            {
                prepared[index] = Err(error);
            }
        }
    }

    let mut outcomes = Vec::with_capacity(tasks.len());
    for ((((task, frames), moments), regions), mut timings) in tasks
        .iter()
        .zip(prepared)
        .zip(moments)
        .zip(regions)
        .zip(timings)
    {
        let outcome = frames.and_then(|frames| {
            let started = Instant::now();
            let points = points_from_moments(task, &frames, models, moments, regions)?;
            timings.models += started.elapsed();
            Ok((points, timings))
        });
        if let Err(error) = &outcome
            && device_failed(error)
        {
            return Err(outcome
                .err()
                .unwrap_or(PipelineError::Task("device failed".into())));
        }
        outcomes.push(outcome);
    }
    Ok(outcomes)
}

/// One captioner over a batch; on failure, each half on its own (recursively), so that a
/// batch too large for the device still gets captioned and a bad segment fails alone. `Err`
/// only for a device failure.
fn caption_split(
    captioner: &dyn Captioner,
    asks: &[SegmentAsk<'_>],
) -> Result<Vec<Result<SegmentAnswer, vidx_core::ModelError>>, vidx_core::ModelError> {
    match captioner.answer_batch(asks) {
        Ok(answers) if answers.len() == asks.len() => Ok(answers.into_iter().map(Ok).collect()),
        Ok(answers) => {
            let error = vidx_core::ModelError::Inference {
                model: captioner.name().to_string(),
                reason: format!("{} results for a batch of {}", answers.len(), asks.len()),
            };
            Ok(asks.iter().map(|_| Err(error.clone())).collect())
        }
        Err(error) if error.is_device_failure() => Err(error),
        Err(error) if asks.len() <= 1 => Ok(vec![Err(error)]),
        Err(error) => {
            tracing::warn!(
                captioner = captioner.name(),
                batch = asks.len(),
                error = %error,
                "batch failed; retrying it in halves"
            );
            let (left, right) = asks.split_at(asks.len() / 2);
            let mut answers = caption_split(captioner, left)?;
            answers.extend(caption_split(captioner, right)?);
            Ok(answers)
        }
    }
}

/// A segment's region tracks, which of them its captioners are asked about, and what the
/// first captioner that reads regions said: region captions (PLM's RCap) of the
/// `models.region_captions` largest tracks by area × duration, and RDCap's timed moments of
/// the longest motion track (revision: the captioner's with `+rdcap`).
struct SegmentRegions {
    tracks: Vec<RegionTrack>,
    /// The tracks asked for a caption, and their boxes on each sampled frame.
    asked: Vec<usize>,
    asked_boxes: Vec<Vec<Option<vidx_core::NormalizedBox>>>,
    /// The longest motion track's boxes on each sampled frame, while unanswered.
    dense_boxes: Option<Vec<Option<vidx_core::NormalizedBox>>>,
    /// Track index → (the captioner's revision, the caption).
    captions: BTreeMap<usize, (String, String)>,
    captions_answered: bool,
    dense: Vec<RevisedMoment>,
}

impl SegmentRegions {
    /// The tracks of a segment's frames (none without region settings, a visual embedder or
    /// frames).
    fn propose(frames: &[Frame], models: &Models) -> Result<Option<Self>, PipelineError> {
        let (Some(settings), Some(_), false) =
            (&models.regions, &models.visual_embedder, frames.is_empty())
        else {
            return Ok(None);
        };
        let tracks = propose_regions(frames, settings).map_err(|error| {
            PipelineError::Model(vidx_core::ModelError::Inference {
                model: "regions".into(),
                reason: error.to_string(),
            })
        })?;
        let (mut asked, mut dense_boxes) = (Vec::new(), None);
        if settings.captions > 0 && !models.captioners.is_empty() && !tracks.is_empty() {
            let salience = |track: &RegionTrack| {
                let area = (track.union.x1 - track.union.x0).max(0.0)
                    * (track.union.y1 - track.union.y0).max(0.0);
                // A one-frame track still lasts one sample.
                f64::from(area) * (track.span.duration_ms() + 1) as f64
            };
            asked = (0..tracks.len()).collect();
            asked.sort_by(|a, b| salience(&tracks[*b]).total_cmp(&salience(&tracks[*a])));
            asked.truncate(settings.captions);
            dense_boxes = tracks
                .iter()
                .filter(|track| track.kind == RegionKind::Motion)
                .max_by_key(|track| (track.span.duration_ms(), track.boxes.len()))
                .map(|track| boxes_per_frame(frames, track));
        }
        let asked_boxes = asked
            .iter()
            .map(|index| boxes_per_frame(frames, &tracks[*index]))
            .collect();
        Ok(Some(Self {
            tracks,
            asked,
            asked_boxes,
            dense_boxes,
            captions: BTreeMap::new(),
            captions_answered: false,
            dense: Vec::new(),
        }))
    }

    /// What the next captioner is asked: the region prompts nobody has answered yet.
    fn ask<'a>(&'a self, segment: SegmentInput<'a>) -> SegmentAsk<'a> {
        SegmentAsk {
            segment,
            tracks: if self.captions_answered {
                &[]
            } else {
                &self.asked_boxes
            },
            dense_track: self.dense_boxes.as_deref(),
        }
    }

    /// Keep a captioner's region answers, when it is the first to give them.
    fn take_answers(
        &mut self,
        captioner: &dyn Captioner,
        captions: Vec<String>,
        moments: Vec<vidx_core::Moment>,
    ) -> Result<(), PipelineError> {
        if !self.captions_answered && !captions.is_empty() {
            if captions.len() != self.asked.len() {
                return Err(PipelineError::Model(vidx_core::ModelError::Inference {
                    model: captioner.name().to_string(),
                    reason: format!(
                        "{} region captions for {} tracks",
                        captions.len(),
                        self.asked.len()
                    ),
                }));
            }
            for (index, text) in self.asked.iter().zip(captions) {
                if !text.trim().is_empty() {
                    self.captions
                        .insert(*index, (captioner.revision().to_string(), text));
                }
            }
            self.captions_answered = true;
        }
        if self.dense_boxes.is_some() && !moments.is_empty() {
            let revision = format!("{}+rdcap", captioner.revision());
            self.dense = moments
                .into_iter()
                .enumerate()
                .map(|(index, moment)| (revision.clone(), index as u32, moment))
                .collect();
            self.dense_boxes = None;
        }
        Ok(())
    }
}

/// A moment with the revision and index its point id is made of.
type RevisedMoment = (String, u32, vidx_core::Moment);

/// The points of a segment whose moments are known: visual, region and moment records.
fn points_from_moments(
    task: &SegmentTask,
    frames: &[Frame],
    models: &Models,
    mut moments: Vec<RevisedMoment>,
    regions: Option<SegmentRegions>,
) -> Result<Vec<IndexPoint>, PipelineError> {
    let frame_vectors = match (&models.visual_embedder, frames.is_empty()) {
        (Some(embedder), false) => Some(embedder.embed_frames(frames)?),
        _ => None,
    };
    let mut points = Vec::new();
    let mut thumbnails = SegmentThumbnails::new(task, frames);
    if let (Some(embedder), Some(frame_vectors)) = (&models.visual_embedder, &frame_vectors) {
        points.extend(visual_points(
            task,
            frames,
            frame_vectors,
            embedder.revision(),
            &mut thumbnails,
        ));
        if let Some(regions) = regions {
            let (regions, region_moments) = region_points(
                task,
                frames,
                models,
                embedder.as_ref(),
                regions,
                &thumbnails,
            )?;
            points.extend(regions);
            // RDCap's timed moments of the longest track: caption points with its box.
            moments.extend(region_moments);
        }
    }
    if moments.is_empty() {
        return Ok(points);
    }

    let captions: Vec<String> = moments
        .iter()
        .map(|(_, _, moment)| moment.caption.clone())
        .collect();
    let text_vectors = models.text_embedder.embed(&captions)?;
    points.reserve(moments.len());
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
                task.range.start_ms,
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
                thumbnail: None,
                indexed_at_ms: 0,
                labels: task.labels.clone(),
            },
            thumbnail: thumbnails.for_range(moment.range),
        });
    }
    Ok(points)
}

fn payload(
    task: &SegmentTask,
    kind: vidx_core::RecordKind,
    range: vidx_core::TimeRange,
    model_rev: &str,
    region: Option<vidx_core::NormalizedBox>,
) -> PointPayload {
    PointPayload {
        tenant: task.tenant.clone(),
        stream_id: task.stream_id.clone(),
        segment_seq: task.segment_seq,
        kind,
        start_ms: range.start_ms,
        end_ms: range.end_ms,
        caption: String::new(),
        model_rev: model_rev.to_string(),
        source_uri: task.source_uri.clone(),
        region,
        thumbnail: None,
        indexed_at_ms: 0,
        labels: task.labels.clone(),
    }
}

/// A Segment record (the mean of every sampled frame) and one Frame record per sampled frame,
/// each with a `visual` vector. Frame `i` spans from its timestamp to the next frame's (the
/// last to the segment's end).
fn visual_points(
    task: &SegmentTask,
    frames: &[Frame],
    frame_vectors: &[Vec<f32>],
    model_rev: &str,
    thumbnails: &mut SegmentThumbnails<'_>,
) -> Vec<IndexPoint> {
    use vidx_core::RecordKind;
    let mut points = Vec::with_capacity(frames.len() + 1);
    if let Some(mean) = mean_of_window(frames, frame_vectors, task.range) {
        points.push(IndexPoint {
            id: point_id(
                &task.tenant,
                &task.stream_id,
                task.segment_seq,
                task.range.start_ms,
                RecordKind::Segment,
                0,
                model_rev,
            ),
            vectors: BTreeMap::from([(vector_names::VISUAL.to_string(), mean)]),
            payload: payload(task, RecordKind::Segment, task.range, model_rev, None),
            thumbnail: thumbnails.for_range(task.range),
        });
    }
    for (index, (frame, vector)) in frames.iter().zip(frame_vectors).enumerate() {
        let end_ms = frames
            .get(index + 1)
            .map(|next| next.pts_ms)
            .unwrap_or(task.range.end_ms)
            .max(frame.pts_ms);
        let range = vidx_core::TimeRange::new(frame.pts_ms, end_ms);
        points.push(IndexPoint {
            id: point_id(
                &task.tenant,
                &task.stream_id,
                task.segment_seq,
                task.range.start_ms,
                RecordKind::Frame,
                index as u32,
                model_rev,
            ),
            vectors: BTreeMap::from([(vector_names::VISUAL.to_string(), vector.clone())]),
            payload: payload(task, RecordKind::Frame, range, model_rev, None),
            thumbnail: thumbnails.for_frame(index),
        });
    }
    points
}

/// Crops per region track that are embedded (first, middle and last box); their mean is the
/// track's `region` vector.
const CROPS_PER_TRACK: usize = 3;
/// Crops smaller than this many pixels on a side are widened around their centre.
const MIN_CROP_PIXELS: u32 = 16;

/// Region records: motion tracks (a coarse grid when nothing moves), each embedded from crops
/// of its boxes, with the track's time span and the union of its boxes.
fn region_points(
    task: &SegmentTask,
    frames: &[Frame],
    models: &Models,
    embedder: &dyn VisualEmbedder,
    regions: SegmentRegions,
    thumbnails: &SegmentThumbnails<'_>,
) -> Result<(Vec<IndexPoint>, Vec<RevisedMoment>), PipelineError> {
    let SegmentRegions {
        tracks,
        captions,
        dense,
        ..
    } = regions;
    let mut crops = Vec::new();
    let mut owners = Vec::new();
    for (track_index, track) in tracks.iter().enumerate() {
        for crop in track_crops(frames, track) {
            crops.push(crop);
            owners.push(track_index);
        }
    }
    if crops.is_empty() {
        return Ok((Vec::new(), Vec::new()));
    }
    let vectors = embedder.embed_frames(&crops)?;
    let caption_vectors = {
        let texts: Vec<String> = captions.values().map(|(_, text)| text.clone()).collect();
        let embedded = if texts.is_empty() {
            Vec::new()
        } else {
            models.text_embedder.embed(&texts)?
        };
        captions
            .keys()
            .copied()
            .zip(embedded)
            .collect::<BTreeMap<usize, Vec<f32>>>()
    };
    let mut points = Vec::with_capacity(tracks.len());
    for (track_index, track) in tracks.iter().enumerate() {
        let members: Vec<&Vec<f32>> = owners
            .iter()
            .zip(&vectors)
            .filter(|(owner, _)| **owner == track_index)
            .map(|(_, vector)| vector)
            .collect();
        let Some(vector) = unit_mean(&members) else {
            continue;
        };
        let mut model_rev = format!(
            "{}+regions:{}",
            embedder.revision(),
            match track.kind {
                RegionKind::Motion => "motion",
                RegionKind::Grid => "grid",
            }
        );
        let caption = captions.get(&track_index);
        if let Some((captioner, _)) = caption {
            model_rev.push_str(&format!("+rcap:{captioner}"));
        }
        let id = point_id(
            &task.tenant,
            &task.stream_id,
            task.segment_seq,
            task.range.start_ms,
            vidx_core::RecordKind::Region,
            track_index as u32,
            &model_rev,
        );
        let mut vectors = BTreeMap::from([(vector_names::REGION.to_string(), vector)]);
        let mut payload = payload(
            task,
            vidx_core::RecordKind::Region,
            track.span,
            &model_rev,
            Some(track.union),
        );
        if let (Some((_, text)), Some(text_vector)) = (caption, caption_vectors.get(&track_index)) {
            payload.caption = text.clone();
            vectors.insert(vector_names::TEXT.to_string(), text_vector.clone());
        }
        points.push(IndexPoint {
            id,
            vectors,
            payload,
            thumbnail: thumbnails.for_region(id, track.span, &track.union),
        });
    }
    Ok((points, dense))
}

/// Each track's box on each sampled frame (none where it is not seen).
fn boxes_per_frame(frames: &[Frame], track: &RegionTrack) -> Vec<Option<vidx_core::NormalizedBox>> {
    frames
        .iter()
        .map(|frame| {
            track
                .boxes
                .iter()
                .find(|timed| timed.pts_ms == frame.pts_ms)
                .map(|timed| timed.bbox)
        })
        .collect()
}

/// Up to `CROPS_PER_TRACK` crops of a track: its first, middle and last box, cut from the
/// frame with the same timestamp.
fn track_crops(frames: &[Frame], track: &RegionTrack) -> Vec<Frame> {
    let count = track.boxes.len();
    let mut picks: Vec<usize> = match count {
        0 => Vec::new(),
        1..=CROPS_PER_TRACK => (0..count).collect(),
        _ => vec![0, count / 2, count - 1],
    };
    picks.dedup();
    picks
        .into_iter()
        .filter_map(|index| {
            let track_box = &track.boxes[index];
            let frame = frames
                .iter()
                .find(|frame| frame.pts_ms == track_box.pts_ms)?;
            crop(frame, &track_box.bbox)
        })
        .collect()
}

/// The pixels of `frame` inside a normalised box (at least `MIN_CROP_PIXELS` a side).
fn crop(frame: &Frame, bbox: &vidx_core::NormalizedBox) -> Option<Frame> {
    let (width, height) = (frame.width, frame.height);
    if width == 0 || height == 0 || frame.rgb.len() != (width * height * 3) as usize {
        return None;
    }
    let span = |low: f32, high: f32, size: u32| -> (u32, u32) {
        let low = (low.clamp(0.0, 1.0) * size as f32).floor() as u32;
        let high = ((high.clamp(0.0, 1.0) * size as f32).ceil() as u32).min(size);
        let wanted = MIN_CROP_PIXELS.min(size);
        if high.saturating_sub(low) >= wanted {
            return (low, high);
        }
        let centre = (low + high) / 2;
        let start = centre.saturating_sub(wanted / 2).min(size - wanted);
        (start, start + wanted)
    };
    let (x0, x1) = span(bbox.x0, bbox.x1, width);
    let (y0, y1) = span(bbox.y0, bbox.y1, height);
    let crop_width = x1 - x0;
    let mut rgb = Vec::with_capacity(((y1 - y0) * crop_width * 3) as usize);
    for row in y0..y1 {
        let start = ((row * width + x0) * 3) as usize;
        rgb.extend_from_slice(&frame.rgb[start..start + (crop_width * 3) as usize]);
    }
    Some(Frame {
        pts_ms: frame.pts_ms,
        width: crop_width,
        height: y1 - y0,
        rgb,
        display_size: (0, 0),
    })
}

/// The L2-normalised mean of unit vectors.
fn unit_mean(vectors: &[&Vec<f32>]) -> Option<Vec<f32>> {
    let dimension = vectors.first()?.len();
    let mut mean = vec![0.0f32; dimension];
    for vector in vectors {
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
    unit_mean(&chosen)
}

#[cfg(test)]
mod tests {
    use super::*;
    use vidx_core::{
        ModelError, Moment, NormalizedBox, RecordKind, SEGMENT_TASK_SCHEMA_VERSION, TimeRange,
    };

    const SIZE: u32 = 96;
    const SQUARE: u32 = 16;

    /// A model stand-in: the mean colour of the image (and its aspect), normalised. Crops of
    /// the red square are red; crops of the grey background are grey.
    struct ColourEmbedder;

    impl VisualEmbedder for ColourEmbedder {
        fn name(&self) -> &str {
            "colour"
        }
        fn revision(&self) -> &str {
            "colour-1"
        }
        fn dimension(&self) -> usize {
            4
        }
        fn embed_frames(&self, frames: &[Frame]) -> Result<Vec<Vec<f32>>, ModelError> {
            Ok(frames
                .iter()
                .map(|frame| {
                    let pixels = (frame.width * frame.height) as f32;
                    let mut sums = [0f32; 3];
                    for pixel in frame.rgb.chunks(3) {
                        for channel in 0..3 {
                            sums[channel] += f32::from(pixel[channel]) / 255.0;
                        }
                    }
                    let vector = [
                        sums[0] / pixels,
                        sums[1] / pixels,
                        sums[2] / pixels,
                        frame.width as f32 / frame.height.max(1) as f32 * 0.01,
                    ];
                    let norm = vector.iter().map(|v| v * v).sum::<f32>().sqrt();
                    vector.iter().map(|v| v / norm).collect()
                })
                .collect())
        }
    }

    struct NoText;

    impl TextEmbedder for NoText {
        fn name(&self) -> &str {
            "none"
        }
        fn revision(&self) -> &str {
            "none"
        }
        fn dimension(&self) -> usize {
            1
        }
        fn embed(&self, texts: &[String]) -> Result<Vec<Vec<f32>>, ModelError> {
            Ok(texts.iter().map(|_| vec![1.0]).collect())
        }
    }

    struct Frames(Vec<Frame>);

    impl FrameSampler for Frames {
        fn sample(
            &self,
            _path: &std::path::Path,
            _range: TimeRange,
            _count: usize,
        ) -> Result<Vec<Frame>, vidx_core::MediaError> {
            Ok(self.0.clone())
        }
        fn sample_bytes(
            &self,
            _media: vidx_core::ports::SharedBytes,
            _range: TimeRange,
            _count: usize,
        ) -> Result<Vec<Frame>, vidx_core::MediaError> {
            Ok(self.0.clone())
        }
    }

    /// Eight frames of a textured grey scene; with `moving`, a red square crossing it
    /// diagonally (top-left at `8 + 8·i` px in frame `i`).
    fn frames(moving: bool) -> Vec<Frame> {
        (0..8u32)
            .map(|index| {
                let mut rgb = Vec::with_capacity((SIZE * SIZE * 3) as usize);
                for y in 0..SIZE {
                    for x in 0..SIZE {
                        let shade = 100 + ((x * 7 + y * 13) % 20) as u8;
                        let offset = 8 + 8 * index;
                        let inside = moving
                            && (offset..offset + SQUARE).contains(&x)
                            && (offset..offset + SQUARE).contains(&y);
                        rgb.extend(if inside {
                            [230, 20, 20]
                        } else {
                            [shade, shade, shade]
                        });
                    }
                }
                Frame {
                    pts_ms: 1000 + 250 * u64::from(index),
                    width: SIZE,
                    height: SIZE,
                    rgb,
                    display_size: (0, 0),
                }
            })
            .collect()
    }

    fn task() -> SegmentTask {
        SegmentTask {
            generation: None,
            schema_version: SEGMENT_TASK_SCHEMA_VERSION,
            tenant: "t".into(),
            stream_id: "cam".into(),
            segment_seq: 3,
            range: TimeRange::new(1000, 3000),
            media: SegmentMedia::Inline(vec![0]),
            source_uri: "cam".into(),
            attempt: 1,
            subtitles: Vec::new(),
            trace_context: Default::default(),
            labels: Vec::new(),
        }
    }

    fn models() -> Models {
        Models {
            captioners: Vec::new(),
            text_embedder: Arc::new(NoText),
            visual_embedder: Some(Arc::new(ColourEmbedder)),
            regions: Some(RegionSettings::default()),
        }
    }

    fn of_kind(points: &[IndexPoint], kind: RecordKind) -> Vec<&IndexPoint> {
        points
            .iter()
            .filter(|point| point.payload.kind == kind)
            .collect()
    }

    #[test]
    fn a_visual_model_gives_segment_frame_and_region_records() -> Result<(), PipelineError> {
        let sampler = Frames(frames(true));
        let points = build_points(&task(), &sampler, &models(), 8)?;

        let segment = of_kind(&points, RecordKind::Segment);
        assert_eq!(segment.len(), 1);
        assert_eq!(
            (segment[0].payload.start_ms, segment[0].payload.end_ms),
            (1000, 3000)
        );
        let frame_points = of_kind(&points, RecordKind::Frame);
        assert_eq!(frame_points.len(), 8);
        for (index, point) in frame_points.iter().enumerate() {
            assert_eq!(point.payload.start_ms, 1000 + 250 * index as u64);
            assert!(point.vectors.contains_key(vector_names::VISUAL));
        }
        assert_eq!(frame_points[7].payload.end_ms, 3000);

        // The red square's path: from (8, 8) to (64 + 16, 64 + 16) px.
        let regions = of_kind(&points, RecordKind::Region);
        assert_eq!(regions.len(), 1, "one moving object, one track");
        let region = regions[0];
        assert!(region.payload.model_rev.ends_with("regions:motion"));
        let path = NormalizedBox {
            x0: 8.0 / SIZE as f32,
            y0: 8.0 / SIZE as f32,
            x1: 80.0 / SIZE as f32,
            y1: 80.0 / SIZE as f32,
        };
        let found = region.payload.region.expect("a region box");
        let iou = vidx_core::regions::box_iou(&found, &path);
        assert!(
            iou >= 0.7,
            "track union {found:?} vs path {path:?}: IoU {iou}"
        );
        let vector = &region.vectors[vector_names::REGION];
        assert!(
            vector[0] > 2.0 * vector[1] && vector[0] > 2.0 * vector[2],
            "the region's crops are of the red square: {vector:?}"
        );
        assert!(!region.vectors.contains_key(vector_names::TEXT));

        // Deterministic ids: the same segment again gives the same points, none duplicated.
        let again = build_points(&task(), &sampler, &models(), 8)?;
        let ids: Vec<_> = points.iter().map(|point| point.id).collect();
        let again_ids: Vec<_> = again.iter().map(|point| point.id).collect();
        assert_eq!(ids, again_ids);
        let unique: std::collections::BTreeSet<_> = ids.iter().collect();
        assert_eq!(unique.len(), ids.len());
        Ok(())
    }

    /// A captioner that reads regions (a PLM stand-in): names the colour under each track's
    /// first box, and records the boxes it was shown.
    struct RegionReader {
        shown: std::sync::Mutex<Vec<Vec<Option<NormalizedBox>>>>,
    }

    impl Captioner for RegionReader {
        fn name(&self) -> &str {
            "reader"
        }
        fn revision(&self) -> &str {
            "reader-1"
        }
        fn needs_frames(&self) -> bool {
            true
        }
        fn caption(&self, _segment: SegmentInput<'_>) -> Result<Vec<Moment>, ModelError> {
            Ok(Vec::new())
        }
        fn dense_caption_region(
            &self,
            segment: SegmentInput<'_>,
            boxes: &[Option<NormalizedBox>],
        ) -> Result<Vec<Moment>, ModelError> {
            let seen: Vec<usize> = boxes
                .iter()
                .enumerate()
                .filter_map(|(index, region)| region.map(|_| index))
                .collect();
            let (Some(first), Some(last)) = (seen.first(), seen.last()) else {
                return Ok(Vec::new());
            };
            Ok(vec![Moment {
                kind: RecordKind::Caption,
                range: TimeRange::new(
                    segment.frames[*first].pts_ms,
                    segment.frames[*last].pts_ms + 250,
                ),
                caption: "the red square slides across the wall".into(),
                region: boxes[*first],
            }])
        }
        fn caption_regions(
            &self,
            segment: SegmentInput<'_>,
            tracks: &[Vec<Option<NormalizedBox>>],
        ) -> Result<Vec<String>, ModelError> {
            if let Ok(mut shown) = self.shown.lock() {
                shown.extend(tracks.iter().cloned());
            }
            Ok(tracks
                .iter()
                .map(|boxes| {
                    let (frame, first) = segment
                        .frames
                        .iter()
                        .zip(boxes)
                        .find_map(|(frame, region)| Some((frame, (*region)?)))
                        .expect("a track has a box");
                    let x = ((first.x0 + first.x1) / 2.0 * frame.width as f32) as usize;
                    let y = ((first.y0 + first.y1) / 2.0 * frame.height as f32) as usize;
                    let at = (y * frame.width as usize + x) * 3;
                    if frame.rgb[at] > 200 && frame.rgb[at + 1] < 50 {
                        "a red square moves down and to the right".to_string()
                    } else {
                        "a grey wall".to_string()
                    }
                })
                .collect())
        }
    }

    #[test]
    fn the_largest_region_tracks_get_a_region_caption_that_is_searchable_text()
    -> Result<(), PipelineError> {
        let sampler = Frames(frames(true));
        let reader = Arc::new(RegionReader {
            shown: Default::default(),
        });
        let captioned = Models {
            captioners: vec![reader.clone()],
            ..models()
        };
        let points = build_points(&task(), &sampler, &captioned, 8)?;
        let regions = of_kind(&points, RecordKind::Region);
        assert_eq!(regions.len(), 1);
        let region = regions[0];
        assert_eq!(
            region.payload.caption,
            "a red square moves down and to the right"
        );
        assert!(region.vectors.contains_key(vector_names::TEXT));
        assert!(region.payload.model_rev.ends_with("+rcap:reader-1"));
        // RDCap of the longest (the only) motion track: a timed caption moment with a box.
        let dense: Vec<_> = of_kind(&points, RecordKind::Caption)
            .into_iter()
            .filter(|point| point.payload.model_rev == "reader-1+rdcap")
            .collect();
        assert_eq!(dense.len(), 1, "one RDCap moment");
        assert_eq!(
            dense[0].payload.caption,
            "the red square slides across the wall"
        );
        assert!(dense[0].payload.region.is_some());
        assert!(dense[0].vectors.contains_key(vector_names::TEXT));
        // The captioner saw the track's box on every frame it was found on, none elsewhere.
        let shown = reader
            .shown
            .lock()
            .map(|shown| shown.clone())
            .unwrap_or_default();
        assert_eq!(shown.len(), 1);
        assert_eq!(shown[0].len(), 8);
        assert!(shown[0].iter().filter(|region| region.is_some()).count() >= 3);

        // A static scene: grid cells, only the `captions` largest get one (2 here).
        let static_scene = Frames(frames(false));
        let limited = Models {
            regions: Some(RegionSettings {
                captions: 2,
                ..RegionSettings::default()
            }),
            ..captioned
        };
        let points = build_points(&task(), &static_scene, &limited, 8)?;
        let regions = of_kind(&points, RecordKind::Region);
        assert!(regions.len() > 2);
        let with_caption = regions
            .iter()
            .filter(|point| point.vectors.contains_key(vector_names::TEXT))
            .count();
        assert_eq!(with_caption, 2);
        // Without a captioner that reads regions, region records carry no caption.
        let points = build_points(&task(), &sampler, &models(), 8)?;
        assert!(
            of_kind(&points, RecordKind::Region)
                .iter()
                .all(|point| point.payload.caption.is_empty())
        );
        Ok(())
    }

    #[test]
    fn a_static_scene_gets_grid_regions_and_none_without_the_setting() -> Result<(), PipelineError>
    {
        let sampler = Frames(frames(false));
        let points = build_points(&task(), &sampler, &models(), 8)?;
        let regions = of_kind(&points, RecordKind::Region);
        assert!(!regions.is_empty());
        assert!(
            regions
                .iter()
                .all(|point| point.payload.model_rev.ends_with("regions:grid")),
            "nothing moves: only grid cells"
        );
        let without = Models {
            regions: None,
            ..models()
        };
        let points = build_points(&task(), &sampler, &without, 8)?;
        assert!(of_kind(&points, RecordKind::Region).is_empty());
        assert_eq!(of_kind(&points, RecordKind::Frame).len(), 8);
        Ok(())
    }
}
