//! PerceptionLM as vidx's captioner: the sampled frames of a segment go in as a video, the
//! dense-captioning prompt asks for `[start, end]: description` lines over frame numbers,
//! and the parsed events become caption moments timed by the frames' real timestamps.
//! Region captioning (PLM's red-rectangle prompt over a box track) is here too.

use std::sync::Arc;

use candle_core::Tensor;
use vidx_core::dense_caption::{event_time, parse_dense_captions};
use vidx_core::ports::{Captioner, SegmentAnswer, SegmentAsk, SegmentInput};
use vidx_core::{Frame, ModelError, Moment, NormalizedBox, RecordKind};

use crate::device_error::InferenceFailure;
use crate::models::perception_lm::{
    GenerateOptions, GenerateStats, Media, PlmBundle, PlmInput, Sampling,
};
use crate::processor::RgbImage;

/// The dense-captioning prompt; `{last}` and `{frames}` are filled in. Adapted from PLM's
/// RDCap prompt (PLM-VideoBench) to the whole frame.
pub const DENSE_CAPTION_PROMPT: &str = "Create a dense caption of the actions in the video, including action frames ids and brief descriptions. For each item use the format [start, end]: [description] separated by a newline, where start and end are frame numbers between 0 and {last} in this {frames} frame video.";

/// PLM's region-captioning prompt (RCap): the region is the red rectangle on the frames.
pub const REGION_CAPTION_PROMPT: &str = "Give a detailed description of the events occurring in the region marked by the red rectangle within frames [{start}, {end}] in this {frames} frame video.";

/// PLM's region dense-captioning prompt (RDCap, PLM-VideoBench): the subject is in the red
/// rectangles on the frames; `{last}` and `{frames}` are filled in.
pub const REGION_DENSE_CAPTION_PROMPT: &str = "Create a dense caption of the subject's actions within the red rectangles, including action frames ids and brief descriptions. For each item use the format [start, end]: [description] separated by a newline, where start and end are frame numbers between 0 and {last} in this {frames} frame video.";

/// Red, 4 px: the rectangle PLM was trained to read.
const REGION_COLOR: [u8; 3] = [255, 0, 0];
const REGION_THICKNESS: usize = 4;

/// Generation settings of the captioner.
#[derive(Debug, Clone)]
pub struct CaptionSettings {
    pub prompt: String,
    pub max_new_tokens: usize,
    pub prefill_chunk: usize,
    /// Frames per pass through the vision tower.
    pub vision_batch: usize,
}

impl Default for CaptionSettings {
    fn default() -> Self {
        Self {
            prompt: DENSE_CAPTION_PROMPT.into(),
            max_new_tokens: 512,
            prefill_chunk: 2048,
            vision_batch: 4,
        }
    }
}

pub struct PlmCaptioner {
    bundle: Arc<PlmBundle>,
    settings: CaptionSettings,
    revision: String,
}

impl PlmCaptioner {
    /// `model_id` goes into the revision: another checkpoint writes other points.
    pub fn new(bundle: Arc<PlmBundle>, settings: CaptionSettings, model_id: &str) -> Self {
        Self {
            bundle,
            settings,
            revision: format!("plm-dense-v1:{model_id}"),
        }
    }

    /// Whether a segment of `frames` frames fits the model's context: the prompt with
    /// `frames` × tokens per frame, plus `max_new_tokens`, within `max_position_embeddings`
    /// (checked at load, so a config that cannot work fails before any segment is taken).
    pub fn check_context(&self, frames: usize) -> Result<(), ModelError> {
        if frames == 0 {
            return Ok(());
        }
        let prompt = self
            .settings
            .prompt
            .replace("{last}", &(frames - 1).to_string())
            .replace("{frames}", &frames.to_string());
        let ids = self
            .bundle
            .prompter
            .encode(Media::Video { frames }, &prompt)
            .map_err(|error| self.error(error))?;
        let limit = self.bundle.model.config().text.max_position_embeddings;
        let needed = ids.len() + self.settings.max_new_tokens;
        if needed > limit {
            let per_frame = self.bundle.model.config().tokens_per_tile();
            return Err(ModelError::UnsupportedConfig {
                model: self.revision.clone(),
                field: "text_config.max_position_embeddings".into(),
                reason: format!(
                    "{frames} frames × {per_frame} tokens + {} prompt tokens + {} new tokens \
                     = {needed} > {limit}: lower media.frames_per_segment or \
                     models.max_new_tokens",
                    ids.len() - frames * per_frame,
                    self.settings.max_new_tokens
                ),
            });
        }
        Ok(())
    }

    /// An inference failure, classified (out of device memory, a sticky device error, or
    /// neither) so that the worker can split the batch or restart.
    fn error(&self, failure: impl InferenceFailure) -> ModelError {
        failure.into_model_error("plm")
    }

    /// Frames → visual tokens `[frames·tokens, hidden]`.
    fn encode_frames(&self, frames: &[RgbImage]) -> Result<Tensor, ModelError> {
        let bundle = &*self.bundle;
        let resized: Vec<RgbImage> = frames
            .iter()
            .map(|frame| bundle.processor.video_frame(frame))
            .collect();
        let model = &bundle.model;
        let pixels = bundle
            .processor
            .pixel_values(&resized, model.device(), model.dtype())
            .map_err(|error| self.error(error))?;
        model
            .visual_tokens(&pixels, self.settings.vision_batch)
            .map_err(|error| self.error(error))
    }

    fn options(&self) -> GenerateOptions {
        GenerateOptions {
            max_new_tokens: self.settings.max_new_tokens,
            sampling: Sampling::Greedy,
            stop_tokens: self.bundle.model.config().text.eos_token_ids.clone(),
            prefill_chunk: self.settings.prefill_chunk,
        }
    }

    /// Generate one answer per frame set, all in one batch.
    pub fn answer(
        &self,
        requests: &[(Vec<RgbImage>, String)],
    ) -> Result<(Vec<String>, GenerateStats), ModelError> {
        let mut inputs = Vec::with_capacity(requests.len());
        for (frames, prompt) in requests {
            let (media, visual) = if frames.is_empty() {
                (Media::None, None)
            } else {
                (
                    Media::Video {
                        frames: frames.len(),
                    },
                    Some(self.encode_frames(frames)?),
                )
            };
            let ids = self
                .bundle
                .prompter
                .encode(media, prompt)
                .map_err(|error| self.error(error))?;
            inputs.push(PlmInput { ids, visual });
        }
        let (generated, stats) = self
            .bundle
            .model
            .generate(&inputs, &self.options())
            .map_err(|error| self.error(error))?;
        let texts = generated
            .iter()
            .map(|output| self.bundle.prompter.decode(&output.tokens))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|error| self.error(error))?;
        Ok((texts, stats))
    }

    /// Dense captions for several segments in one batch (a GPU worker batches segments).
    pub fn caption_batch(
        &self,
        segments: &[SegmentInput<'_>],
    ) -> Result<Vec<Vec<Moment>>, ModelError> {
        let asks: Vec<SegmentAsk<'_>> = segments
            .iter()
            .map(|segment| SegmentAsk::caption(*segment))
            .collect();
        Ok(PlmCaptioner::answer_batch(self, &asks)?
            .into_iter()
            .map(|answer| answer.moments)
            .collect())
    }

    /// Every prompt of several segments — each one's dense caption, the region caption
    /// (RCap) of each of its asked tracks and the RDCap of its dense track — generated as
    /// one batch; one answer per ask, in order.
    pub fn answer_batch(&self, asks: &[SegmentAsk<'_>]) -> Result<Vec<SegmentAnswer>, ModelError> {
        enum Slot {
            Dense(usize),
            Region(usize),
            RegionDense(usize, NormalizedBox),
        }
        let mut requests = Vec::new();
        let mut slots = Vec::new();
        for (index, ask) in asks.iter().enumerate() {
            let frames = ask.segment.frames;
            if frames.is_empty() {
                continue;
            }
            requests.push(self.dense_request(frames)?);
            slots.push(Slot::Dense(index));
            for boxes in ask.tracks {
                requests.push(self.region_request(frames, boxes)?);
                slots.push(Slot::Region(index));
            }
            if let Some(boxes) = ask.dense_track
                && let Some(union) = union_of(boxes)
            {
                requests.push(self.region_dense_request(frames, boxes)?);
                slots.push(Slot::RegionDense(index, union));
            }
        }
        let mut answers = vec![SegmentAnswer::default(); asks.len()];
        if requests.is_empty() {
            return Ok(answers);
        }
        let (texts, stats) = self.answer(&requests)?;
        tracing::debug!(
            segments = asks.len(),
            prompts = requests.len(),
            prefill_tokens = stats.prefill_tokens,
            prefill_secs = stats.prefill_secs,
            decode_tokens = stats.decode_tokens,
            decode_secs = stats.decode_secs,
            "plm captioned"
        );
        if texts.len() != slots.len() {
            return Err(self.error(format!(
                "{} answers for {} prompts",
                texts.len(),
                slots.len()
            )));
        }
        for (slot, text) in slots.into_iter().zip(texts) {
            match slot {
                Slot::Dense(index) => {
                    answers[index].moments = moments_from_output(&text, &asks[index].segment);
                }
                Slot::Region(index) => answers[index].region_captions.push(tidy(&text)),
                Slot::RegionDense(index, union) => {
                    answers[index].region_moments =
                        region_moments(&text, &asks[index].segment, union);
                }
            }
        }
        Ok(answers)
    }

    /// PLM's region caption for a box track: `boxes[i]` is the box on frame `i` (or none);
    /// the rectangle is drawn on those frames and the prompt names the frames that carry it.
    pub fn caption_region(
        &self,
        frames: &[Frame],
        boxes: &[Option<NormalizedBox>],
    ) -> Result<String, ModelError> {
        let request = self.region_request(frames, boxes)?;
        let (mut texts, _) = self.answer(&[request])?;
        Ok(texts.pop().map(|text| tidy(&text)).unwrap_or_default())
    }

    /// RDCap: timed moments of what the subject in `boxes` does over the segment's frames,
    /// each carrying the union of the boxes.
    pub fn dense_caption_region(
        &self,
        segment: SegmentInput<'_>,
        boxes: &[Option<NormalizedBox>],
    ) -> Result<Vec<Moment>, ModelError> {
        let (Some(union), false) = (union_of(boxes), segment.frames.is_empty()) else {
            return Ok(Vec::new());
        };
        let request = self.region_dense_request(segment.frames, boxes)?;
        let (mut texts, _) = self.answer(&[request])?;
        Ok(region_moments(
            &texts.pop().unwrap_or_default(),
            &segment,
            union,
        ))
    }

    /// The segment's frames and the dense-captioning prompt.
    fn dense_request(&self, frames: &[Frame]) -> Result<(Vec<RgbImage>, String), ModelError> {
        let images = frames
            .iter()
            .map(rgb_of)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|error| self.error(error))?;
        let prompt = self
            .settings
            .prompt
            .replace("{last}", &(images.len() - 1).to_string())
            .replace("{frames}", &images.len().to_string());
        Ok((images, prompt))
    }

    /// The frames with the track's rectangle drawn, and the region prompt naming them.
    fn region_request(
        &self,
        frames: &[Frame],
        boxes: &[Option<NormalizedBox>],
    ) -> Result<(Vec<RgbImage>, String), ModelError> {
        let (images, first, last) = self.marked(frames, boxes)?;
        let prompt = REGION_CAPTION_PROMPT
            .replace("{start}", &first.to_string())
            .replace("{end}", &last.to_string())
            .replace("{frames}", &frames.len().to_string());
        Ok((images, prompt))
    }

    /// The frames with the subject's rectangles drawn, and the RDCap prompt.
    fn region_dense_request(
        &self,
        frames: &[Frame],
        boxes: &[Option<NormalizedBox>],
    ) -> Result<(Vec<RgbImage>, String), ModelError> {
        let (images, _, _) = self.marked(frames, boxes)?;
        let prompt = REGION_DENSE_CAPTION_PROMPT
            .replace("{last}", &(frames.len() - 1).to_string())
            .replace("{frames}", &frames.len().to_string());
        Ok((images, prompt))
    }

    /// The frames with the rectangle drawn where `boxes` has one, and the first and last of
    /// those frames.
    fn marked(
        &self,
        frames: &[Frame],
        boxes: &[Option<NormalizedBox>],
    ) -> Result<(Vec<RgbImage>, usize, usize), ModelError> {
        let marked: Vec<usize> = boxes
            .iter()
            .enumerate()
            .filter_map(|(index, region)| region.as_ref().map(|_| index))
            .filter(|index| *index < frames.len())
            .collect();
        let (Some(first), Some(last)) = (marked.first(), marked.last()) else {
            return Err(self.error("region caption: no frame carries a box"));
        };
        let mut images = frames
            .iter()
            .map(rgb_of)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|error| self.error(error))?;
        for (image, region) in images.iter_mut().zip(boxes) {
            if let Some(region) = region {
                image.draw_rectangle(region, REGION_COLOR, REGION_THICKNESS);
            }
        }
        Ok((images, *first, *last))
    }
}

/// RDCap's answer as moments, each carrying the union of the subject's boxes.
fn region_moments(text: &str, segment: &SegmentInput<'_>, union: NormalizedBox) -> Vec<Moment> {
    moments_from_output(text, segment)
        .into_iter()
        .map(|moment| Moment {
            region: Some(union),
            ..moment
        })
        .collect()
}

/// The union of a track's boxes (none when it has none).
fn union_of(boxes: &[Option<NormalizedBox>]) -> Option<NormalizedBox> {
    boxes
        .iter()
        .flatten()
        .copied()
        .reduce(|a, b| NormalizedBox {
            x0: a.x0.min(b.x0),
            y0: a.y0.min(b.y0),
            x1: a.x1.max(b.x1),
            y1: a.y1.max(b.y1),
        })
}

fn rgb_of(frame: &Frame) -> Result<RgbImage, String> {
    RgbImage::new(
        frame.width as usize,
        frame.height as usize,
        frame.rgb.clone(),
    )
}

fn tidy(text: &str) -> String {
    let text = text.trim();
    text.strip_suffix('.').unwrap_or(text).trim().to_string()
}

/// Parsed events as moments; an answer that ignored the format still becomes one moment over
/// the whole segment, so the description is searchable.
pub fn moments_from_output(text: &str, segment: &SegmentInput<'_>) -> Vec<Moment> {
    let frames = segment.frames;
    let range = segment.task.range;
    let parsed = parse_dense_captions(text, frames.len());
    if parsed.bad_lines > 0 {
        tracing::debug!(
            stream = %segment.task.stream_id,
            segment = segment.task.segment_seq,
            bad_lines = parsed.bad_lines,
            "plm output lines without a [start, end] event were skipped"
        );
    }
    if parsed.out_of_range > 0 {
        tracing::warn!(
            stream = %segment.task.stream_id,
            segment = segment.task.segment_seq,
            frames = frames.len(),
            dropped = parsed.out_of_range,
            "plm events naming frames past the ones shown were dropped"
        );
    }
    let pts: Vec<u64> = frames.iter().map(|frame| frame.pts_ms).collect();
    let mut moments: Vec<Moment> = parsed
        .events
        .iter()
        .map(|event| Moment {
            kind: RecordKind::Caption,
            range: event_time(event, &pts, range),
            caption: event.text.clone(),
            region: None,
        })
        .collect();
    if moments.is_empty() && !tidy(text).is_empty() {
        moments.push(Moment {
            kind: RecordKind::Caption,
            range,
            caption: tidy(text),
            region: None,
        });
    }
    moments
}

impl Captioner for PlmCaptioner {
    fn name(&self) -> &str {
        "plm"
    }

    fn revision(&self) -> &str {
        &self.revision
    }

    fn needs_frames(&self) -> bool {
        true
    }

    fn caption(&self, segment: SegmentInput<'_>) -> Result<Vec<Moment>, ModelError> {
        Ok(
            PlmCaptioner::caption_batch(self, std::slice::from_ref(&segment))?
                .pop()
                .unwrap_or_default(),
        )
    }

    fn caption_batch(&self, segments: &[SegmentInput<'_>]) -> Result<Vec<Vec<Moment>>, ModelError> {
        PlmCaptioner::caption_batch(self, segments)
    }

    fn caption_regions(
        &self,
        segment: SegmentInput<'_>,
        tracks: &[Vec<Option<NormalizedBox>>],
    ) -> Result<Vec<String>, ModelError> {
        if tracks.is_empty() {
            return Ok(Vec::new());
        }
        let requests = tracks
            .iter()
            .map(|boxes| self.region_request(segment.frames, boxes))
            .collect::<Result<Vec<_>, _>>()?;
        let (texts, _) = self.answer(&requests)?;
        Ok(texts.iter().map(|text| tidy(text)).collect())
    }

    fn dense_caption_region(
        &self,
        segment: SegmentInput<'_>,
        boxes: &[Option<NormalizedBox>],
    ) -> Result<Vec<Moment>, ModelError> {
        PlmCaptioner::dense_caption_region(self, segment, boxes)
    }

    fn answer_batch(&self, asks: &[SegmentAsk<'_>]) -> Result<Vec<SegmentAnswer>, ModelError> {
        PlmCaptioner::answer_batch(self, asks)
    }
}
