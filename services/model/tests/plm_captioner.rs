//! The PLM captioner on the tiny CLS checkpoint: real frames in, moments inside the segment
//! out; the same frames batched give the same answers; the region rectangle reaches the
//! model; region prompts batched with the dense captions answer as asked alone; dense-caption
//! output becomes timed moments.

use std::sync::Arc;

use candle_core::{DType, Device, IndexOp, Tensor};
use vidx_core::ports::{Captioner, SegmentAsk, SegmentInput};
use vidx_core::{Frame, NormalizedBox, RecordKind, SegmentMedia, SegmentTask, TimeRange};
use vidx_model::captioner::{CaptionSettings, PlmCaptioner, moments_from_output};
use vidx_model::hub::{HubOptions, resolve_model_dir};
use vidx_model::models::perception_lm::{PLM_OPTIONAL_FILES, PLM_REQUIRED_FILES, PlmBundle};

fn fixtures() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/plm")
}

fn captioner() -> anyhow::Result<PlmCaptioner> {
    let files = resolve_model_dir(
        "tiny-plm",
        PLM_REQUIRED_FILES,
        PLM_OPTIONAL_FILES,
        &HubOptions {
            local_dir: Some(fixtures().join("cls")),
            ..Default::default()
        },
    )?;
    let bundle = PlmBundle::load(&files, &Device::Cpu, DType::F32)?;
    let settings = CaptionSettings {
        max_new_tokens: 12,
        ..Default::default()
    };
    Ok(PlmCaptioner::new(Arc::new(bundle), settings, "tiny-plm"))
}

/// The fixture's 32 synthetic frames (64×48), timed 0.5 s apart from 10 s.
fn frames() -> anyhow::Result<Vec<Frame>> {
    let inputs =
        candle_core::safetensors::load(fixtures().join("inputs.safetensors"), &Device::Cpu)?;
    let video: &Tensor = &inputs["video.frames_u8"];
    let (count, height, width, _) = video.dims4()?;
    (0..count)
        .map(|index| {
            Ok(Frame {
                pts_ms: 10_000 + 500 * index as u64,
                width: width as u32,
                height: height as u32,
                rgb: video.i(index)?.flatten_all()?.to_vec1::<u8>()?,
                display_size: (0, 0),
            })
        })
        .collect()
}

fn task(seq: u64) -> SegmentTask {
    SegmentTask {
        generation: None,
        schema_version: vidx_core::SEGMENT_TASK_SCHEMA_VERSION,
        tenant: "default".into(),
        stream_id: "cam".into(),
        segment_seq: seq,
        range: TimeRange::new(10_000, 26_000),
        media: SegmentMedia::Inline(Vec::new()),
        source_uri: "test".into(),
        attempt: 1,
        subtitles: Vec::new(),
        trace_context: Default::default(),
        labels: Vec::new(),
    }
}

#[test]
fn captions_land_inside_the_segment_and_batching_changes_nothing() -> anyhow::Result<()> {
    let captioner = captioner()?;
    let frames = frames()?;
    let first = task(0);
    let segment = SegmentInput {
        task: &first,
        frames: &frames,
    };
    let single = captioner.caption(segment)?;
    assert!(
        !single.is_empty(),
        "a non-empty answer always yields a moment"
    );
    for moment in &single {
        assert_eq!(moment.kind, RecordKind::Caption);
        assert!(first.range.start_ms <= moment.range.start_ms);
        assert!(moment.range.end_ms <= first.range.end_ms);
        assert!(!moment.caption.is_empty());
    }
    // The same segment twice, plus the reversed frames, in one batch.
    let reversed: Vec<Frame> = frames.iter().rev().cloned().collect();
    let second = task(1);
    let batch = captioner.caption_batch(&[
        segment,
        SegmentInput {
            task: &second,
            frames: &reversed,
        },
        segment,
    ])?;
    assert_eq!(batch.len(), 3);
    assert_eq!(
        batch[0], single,
        "batched answer differs from the single one"
    );
    assert_eq!(batch[2], single);
    // The odd one out too, and through the port a worker batches with.
    let second_alone = captioner.caption(SegmentInput {
        task: &second,
        frames: &reversed,
    })?;
    assert_eq!(
        batch[1], second_alone,
        "batched answer differs from the single one"
    );
    let through_port = vidx_core::ports::Captioner::caption_batch(
        &captioner,
        &[
            SegmentInput {
                task: &second,
                frames: &reversed,
            },
            segment,
        ],
    )?;
    assert_eq!(through_port, vec![second_alone, single]);
    let empty = captioner.caption(SegmentInput {
        task: &first,
        frames: &[],
    })?;
    assert!(empty.is_empty(), "no frames, no captions");
    Ok(())
}

#[test]
fn region_rectangle_reaches_the_model() -> anyhow::Result<()> {
    let captioner = captioner()?;
    let frames = frames()?;
    let region = NormalizedBox {
        x0: 0.1,
        y0: 0.1,
        x1: 0.6,
        y1: 0.7,
    };
    let boxes: Vec<Option<NormalizedBox>> = (0..frames.len())
        .map(|index| (8..24).contains(&index).then_some(region))
        .collect();
    let boxed = captioner.caption_region(&frames, &boxes)?;
    let elsewhere = NormalizedBox {
        x0: 0.5,
        y0: 0.5,
        x1: 0.95,
        y1: 0.95,
    };
    let moved: Vec<Option<NormalizedBox>> = boxes.iter().map(|b| b.map(|_| elsewhere)).collect();
    let other = captioner.caption_region(&frames, &moved)?;
    assert!(!boxed.is_empty());
    assert_ne!(
        boxed, other,
        "the rectangle's position must change what the model sees"
    );
    assert!(
        captioner
            .caption_region(&frames, &vec![None; frames.len()])
            .is_err()
    );
    // Through the Captioner port, both tracks in one batch: the same captions as one by one.
    let segment_task = task(0);
    let batched = Captioner::caption_regions(
        &captioner,
        SegmentInput {
            task: &segment_task,
            frames: &frames,
        },
        &[boxes, moved],
    )?;
    assert_eq!(batched, vec![boxed, other]);
    Ok(())
}

/// A worker's batch: two segments, the first with two region tracks (RCap) and a dense
/// track (RDCap), the second with its dense caption only — every prompt in one generation
/// batch — answers exactly as the prompts asked one by one.
#[test]
fn region_prompts_batched_with_the_dense_captions_answer_as_asked_alone() -> anyhow::Result<()> {
    let captioner = captioner()?;
    let frames = frames()?;
    let reversed: Vec<Frame> = frames.iter().rev().cloned().collect();
    let (first, second) = (task(0), task(1));
    let segment = SegmentInput {
        task: &first,
        frames: &frames,
    };
    let other = SegmentInput {
        task: &second,
        frames: &reversed,
    };
    let region = |x0: f32, y0: f32, x1: f32, y1: f32, on: std::ops::Range<usize>| {
        (0..frames.len())
            .map(|index| {
                on.contains(&index)
                    .then_some(NormalizedBox { x0, y0, x1, y1 })
            })
            .collect::<Vec<_>>()
    };
    let tracks = vec![
        region(0.1, 0.1, 0.6, 0.7, 8..24),
        region(0.5, 0.5, 0.95, 0.95, 0..32),
    ];
    let dense = region(0.2, 0.3, 0.5, 0.9, 4..20);
    let answers = Captioner::answer_batch(
        &captioner,
        &[
            SegmentAsk {
                segment,
                tracks: &tracks,
                dense_track: Some(&dense),
            },
            SegmentAsk::caption(other),
        ],
    )?;
    assert_eq!(answers.len(), 2);
    assert_eq!(answers[0].moments, captioner.caption(segment)?);
    assert_eq!(
        answers[0].region_captions,
        vec![
            captioner.caption_region(&frames, &tracks[0])?,
            captioner.caption_region(&frames, &tracks[1])?,
        ]
    );
    let alone = captioner.dense_caption_region(segment, &dense)?;
    assert!(!alone.is_empty());
    assert_eq!(answers[0].region_moments, alone);
    // RDCap's moments carry the union of the subject's boxes.
    assert!(alone.iter().all(|moment| moment.region
        == Some(NormalizedBox {
            x0: 0.2,
            y0: 0.3,
            x1: 0.5,
            y1: 0.9
        })));
    assert_eq!(answers[1].moments, captioner.caption(other)?);
    assert!(answers[1].region_captions.is_empty() && answers[1].region_moments.is_empty());
    Ok(())
}

#[test]
fn dense_output_becomes_timed_moments() -> anyhow::Result<()> {
    let frames = frames()?;
    let segment_task = task(0);
    let segment = SegmentInput {
        task: &segment_task,
        frames: &frames,
    };
    let moments = moments_from_output(
        "[0, 3]: A red square enters from the left.\nnot an event\n[10, 31]: It stops in the centre.",
        &segment,
    );
    let summary: Vec<(u64, u64, &str)> = moments
        .iter()
        .map(|m| (m.range.start_ms, m.range.end_ms, m.caption.as_str()))
        .collect();
    // Frame i is at 10 s + 0.5 s·i; an event ends where the frame after its last begins.
    assert_eq!(
        summary,
        vec![
            (10_000, 12_000, "A red square enters from the left"),
            (15_000, 26_000, "It stops in the centre"),
        ]
    );
    let free_form = moments_from_output("A man walks a dog.", &segment);
    assert_eq!(free_form.len(), 1);
    assert_eq!(free_form[0].range, segment_task.range);
    assert_eq!(free_form[0].caption, "A man walks a dog");
    Ok(())
}

#[test]
fn a_segment_that_cannot_fit_the_context_is_refused_at_load_with_the_numbers() -> anyhow::Result<()>
{
    // The tiny checkpoint: 4 tokens per frame, max_position_embeddings 1024, 12 new tokens.
    let captioner = captioner()?;
    captioner.check_context(32)?;
    let error = captioner
        .check_context(300)
        .expect_err("300 frames × 4 tokens do not fit 1024 positions");
    let message = error.to_string();
    assert!(
        message.contains("max_position_embeddings")
            && message.contains("300 frames × 4 tokens")
            && message.contains("> 1024"),
        "{message}"
    );
    Ok(())
}
