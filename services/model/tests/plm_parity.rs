//! End-to-end parity of the candle PerceptionLM with the reference (transformers 5.24 +
//! timm) on the tiny checkpoints of `scripts/make_plm_fixtures.py`: the processor's pixels
//! and prompt ids, logits at several positions (chunked prefill), greedy tokens with the KV
//! cache, and the same results when prompts of different lengths share a padded batch.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, IndexOp, Tensor};
use vidx_model::hub::{HubOptions, ModelFiles, resolve_model_dir};
use vidx_model::models::llama::argmax;
use vidx_model::models::perception_lm::{
    GenerateOptions, Media, PLM_OPTIONAL_FILES, PLM_REQUIRED_FILES, PlmBundle, PlmInput, Sampling,
};
use vidx_model::processor::RgbImage;

const VIDEO_PROMPT: &str = "What is happening in the video?";
const IMAGE_PROMPT: &str = "Describe the image in detail.";

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/plm")
}

fn max_abs_diff(left: &Tensor, right: &Tensor) -> anyhow::Result<f32> {
    anyhow::ensure!(
        left.dims() == right.dims(),
        "shape {:?} vs {:?}",
        left.dims(),
        right.dims()
    );
    Ok((left.to_dtype(DType::F32)? - right.to_dtype(DType::F32)?)?
        .abs()?
        .flatten_all()?
        .max(0)?
        .to_scalar::<f32>()?)
}

fn slice_diff(left: &[f32], right: &Tensor) -> anyhow::Result<f32> {
    let right = right.to_dtype(DType::F32)?.to_vec1::<f32>()?;
    anyhow::ensure!(
        left.len() == right.len(),
        "{} vs {}",
        left.len(),
        right.len()
    );
    Ok(left
        .iter()
        .zip(&right)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f32::max))
}

fn ids(tensor: &Tensor) -> anyhow::Result<Vec<u32>> {
    Ok(tensor
        .to_dtype(DType::I64)?
        .to_vec1::<i64>()?
        .into_iter()
        .map(|id| id as u32)
        .collect())
}

fn u8_images(tensor: &Tensor) -> anyhow::Result<Vec<RgbImage>> {
    let tensor = if tensor.rank() == 3 {
        tensor.unsqueeze(0)?
    } else {
        tensor.clone()
    };
    let (count, height, width, _) = tensor.dims4()?;
    (0..count)
        .map(|index| {
            let data = tensor.i(index)?.flatten_all()?.to_vec1::<u8>()?;
            RgbImage::new(width, height, data).map_err(anyhow::Error::msg)
        })
        .collect()
}

/// The checkpoint files in a fixture directory, found as `--model-dir` finds them.
fn local_files(name: &str, directory: &Path) -> anyhow::Result<ModelFiles> {
    Ok(resolve_model_dir(
        name,
        PLM_REQUIRED_FILES,
        PLM_OPTIONAL_FILES,
        &HubOptions {
            local_dir: Some(directory.to_path_buf()),
            ..Default::default()
        },
    )?)
}

struct Fixture {
    bundle: PlmBundle,
    inputs: HashMap<String, Tensor>,
    reference: HashMap<String, Tensor>,
}

fn load(name: &str) -> anyhow::Result<Fixture> {
    let device = Device::Cpu;
    let directory = fixtures().join(name);
    let files = local_files(name, &directory)?;
    Ok(Fixture {
        bundle: PlmBundle::load(&files, &device, DType::F32)?,
        inputs: candle_core::safetensors::load(fixtures().join("inputs.safetensors"), &device)?,
        reference: candle_core::safetensors::load(
            directory.join("reference.safetensors"),
            &device,
        )?,
    })
}

impl Fixture {
    fn input(&self, media: &str) -> anyhow::Result<PlmInput> {
        let model = &self.bundle.model;
        let pixels = &self.inputs[&format!("{media}.pixel_values")];
        let visual = model.visual_tokens(pixels, 8)?;
        Ok(PlmInput {
            ids: ids(&self.reference[&format!("{media}.input_ids")])?,
            visual: Some(visual),
        })
    }
}

fn processor_matches(name: &str) -> anyhow::Result<()> {
    let fixture = load(name)?;
    let processor = &fixture.bundle.processor;
    let device = Device::Cpu;
    // Pixels: the reference resizes uint8 with torchvision's antialiased bicubic (torch's
    // native uint8 kernel: int16 weights, integer passes), which vidx's resize reproduces to
    // the level: the same pixels (in [0, 1] units; normalised values are (x - 0.5) / 0.5,
    // hence the 0.5 factor).
    let frames: Vec<RgbImage> = u8_images(&fixture.inputs["video.frames_u8"])?
        .iter()
        .map(|frame| processor.video_frame(frame))
        .collect();
    let video = processor.pixel_values(&frames, &device, DType::F32)?;
    let video_diff = max_abs_diff(&video, &fixture.inputs["video.pixel_values"])? * 0.5;
    assert!(
        video_diff <= 1e-6,
        "{name}: video pixels differ by {video_diff}"
    );
    let image = &u8_images(&fixture.inputs["image.u8"])?[0];
    let tiles = processor.image_tiles(image);
    let image_pixels = processor.pixel_values(&tiles, &device, DType::F32)?;
    let image_diff = max_abs_diff(&image_pixels, &fixture.inputs["image.pixel_values"])? * 0.5;
    assert!(
        image_diff <= 1e-6,
        "{name}: image pixels differ by {image_diff}"
    );
    println!(
        "{name}: pixels video {video_diff:.4}, image {image_diff:.4} (x255: {:.2}, {:.2})",
        video_diff * 255.0,
        image_diff * 255.0
    );

    // Prompt ids, placeholders expanded.
    let prompter = &fixture.bundle.prompter;
    let video_ids = prompter
        .encode(
            Media::Video {
                frames: frames.len(),
            },
            VIDEO_PROMPT,
        )
        .map_err(anyhow::Error::msg)?;
    assert_eq!(
        video_ids,
        ids(&fixture.reference["video.input_ids"])?,
        "{name}: video prompt ids"
    );
    let image_ids = prompter
        .encode(Media::Image { tiles: tiles.len() }, IMAGE_PROMPT)
        .map_err(anyhow::Error::msg)?;
    assert_eq!(
        image_ids,
        ids(&fixture.reference["image.input_ids"])?,
        "{name}: image prompt ids"
    );
    Ok(())
}

fn logits_match(name: &str) -> anyhow::Result<()> {
    let fixture = load(name)?;
    let model = &fixture.bundle.model;
    let video = fixture.input("video")?;
    let embeds = model.embed_prompt(&video)?.unsqueeze(0)?;
    let length = embeds.dim(1)?;
    // Chunked prefill: 50 positions at a time, so chunks cut through the visual span.
    let mut cache = model.llm().new_cache(length);
    let mut hidden = Vec::new();
    for start in (0..length).step_by(50) {
        let chunk = 50.min(length - start);
        hidden.push(
            model
                .llm()
                .forward(&embeds.narrow(1, start, chunk)?, &mut cache, &[0])?,
        );
    }
    let hidden = Tensor::cat(&hidden, 1)?.squeeze(0)?;
    let positions = ids(&fixture.reference["video.logit_positions"])?;
    let reference_at = &fixture.reference["video.logits_at"];
    let mut worst: f32 = 0.0;
    for (row, position) in positions.iter().enumerate() {
        let logits = model
            .llm()
            .logits(&hidden.i(*position as usize..*position as usize + 1)?)?
            .squeeze(0)?;
        worst = worst.max(max_abs_diff(&logits, &reference_at.i(row)?)?);
    }
    assert!(
        worst <= 1e-3,
        "{name}: logits at {positions:?} differ by {worst}"
    );
    let last = model
        .llm()
        .logits(&hidden.i(length - 1..length)?)?
        .squeeze(0)?;
    let last_diff = max_abs_diff(&last, &fixture.reference["video.logits_last"])?;
    assert!(
        last_diff <= 1e-3,
        "{name}: last logits differ by {last_diff}"
    );
    // The prefill path: chunks before the last fill only the cache, and the last layer of the
    // last chunk computes only the last position (`Outputs::Last`). The same logits.
    let prefilled = model.prefill(&[video], 50, 1)?;
    let prefill_last = Tensor::new(prefilled.logits[0].as_slice(), &Device::Cpu)?;
    let prefill_diff = max_abs_diff(&prefill_last, &last)?;
    assert!(
        prefill_diff <= 1e-4,
        "{name}: prefill's last logits differ from the full forward's by {prefill_diff}"
    );
    assert_eq!(
        prefilled.cache.len(),
        length,
        "{name}: every position cached"
    );
    println!(
        "{name}: logits at {} positions {worst:.2e}, last {last_diff:.2e}, prefill {prefill_diff:.2e}",
        positions.len()
    );
    Ok(())
}

fn greedy_and_batch_match(name: &str) -> anyhow::Result<()> {
    let fixture = load(name)?;
    let model = &fixture.bundle.model;
    let expected = ids(&fixture.reference["video.generated_ids"])?;
    let options = GenerateOptions {
        max_new_tokens: expected.len(),
        sampling: Sampling::Greedy,
        stop_tokens: Vec::new(), // the reference ignored EOS
        prefill_chunk: 64,
    };
    let (single, stats) = model.generate(&[fixture.input("video")?], &options)?;
    assert_eq!(single[0].tokens, expected, "{name}: greedy tokens");
    assert_eq!(stats.decode_tokens, expected.len());

    // A padded batch: the image prompt is shorter than the video one.
    let batch = [fixture.input("video")?, fixture.input("image")?];
    let prefilled = model.prefill(&batch, 64, 0)?;
    assert!(
        prefilled.padding[1] > 0,
        "{name}: the image row should be padded"
    );
    let video_diff = slice_diff(
        &prefilled.logits[0],
        &fixture.reference["video.logits_last"],
    )?;
    let image_diff = slice_diff(
        &prefilled.logits[1],
        &fixture.reference["image.logits_last"],
    )?;
    assert!(
        video_diff <= 1e-3,
        "{name}: batched video logits differ by {video_diff}"
    );
    assert!(
        image_diff <= 1e-3,
        "{name}: batched image logits differ by {image_diff}"
    );
    let (batched, _) = model.generate(&batch, &options)?;
    assert_eq!(
        batched[0].tokens, expected,
        "{name}: greedy tokens in a batch"
    );
    let image_first = argmax(&fixture.reference["image.logits_last"].to_vec1::<f32>()?);
    assert_eq!(
        batched[1].tokens[0], image_first,
        "{name}: image row's first token"
    );
    println!("{name}: batched last logits video {video_diff:.2e}, image {image_diff:.2e}");
    Ok(())
}

fn stops_and_samples(name: &str) -> anyhow::Result<()> {
    let fixture = load(name)?;
    let model = &fixture.bundle.model;
    let expected = ids(&fixture.reference["video.generated_ids"])?;
    // Stop on the 5th greedy token: four tokens come out, marked stopped.
    let options = GenerateOptions {
        max_new_tokens: 20,
        sampling: Sampling::Greedy,
        stop_tokens: vec![expected[4]],
        prefill_chunk: 1024,
    };
    let first_stop = expected
        .iter()
        .position(|id| *id == expected[4])
        .unwrap_or(4);
    let (generated, _) = model.generate(&[fixture.input("video")?], &options)?;
    assert!(generated[0].stopped, "{name}: stop token not honoured");
    assert_eq!(generated[0].tokens, expected[..first_stop].to_vec());
    // Sampling: same seed → same tokens; temperature → not always the argmax path.
    let sample = |seed| GenerateOptions {
        max_new_tokens: 16,
        sampling: Sampling::TopP {
            temperature: 5.0,
            top_p: 0.95,
            seed,
        },
        stop_tokens: Vec::new(),
        prefill_chunk: 1024,
    };
    let (first, _) = model.generate(&[fixture.input("video")?], &sample(7))?;
    let (again, _) = model.generate(&[fixture.input("video")?], &sample(7))?;
    let (other, _) = model.generate(&[fixture.input("video")?], &sample(8))?;
    assert_eq!(
        first[0].tokens, again[0].tokens,
        "{name}: seeded sampling repeats"
    );
    assert_ne!(
        first[0].tokens, other[0].tokens,
        "{name}: seeds give different samples"
    );
    assert_ne!(
        first[0].tokens,
        expected[..16].to_vec(),
        "{name}: hot sampling is not greedy"
    );
    Ok(())
}

#[test]
fn processor_matches_reference_cls() -> anyhow::Result<()> {
    processor_matches("cls")
}

#[test]
fn processor_matches_reference_nocls() -> anyhow::Result<()> {
    processor_matches("nocls")
}

#[test]
fn logits_match_reference_cls() -> anyhow::Result<()> {
    logits_match("cls")
}

#[test]
fn logits_match_reference_nocls() -> anyhow::Result<()> {
    logits_match("nocls")
}

#[test]
fn greedy_and_batched_generation_match_reference_cls() -> anyhow::Result<()> {
    greedy_and_batch_match("cls")
}

#[test]
fn greedy_and_batched_generation_match_reference_nocls() -> anyhow::Result<()> {
    greedy_and_batch_match("nocls")
}

#[test]
fn stop_tokens_and_seeded_sampling() -> anyhow::Result<()> {
    stops_and_samples("cls")
}

/// Half-precision weights and activations stay close to the f32 reference (f16: candle's
/// CPU matmul has no bf16; bf16 on CPU is refused with the field named).
#[test]
fn half_precision_logits_stay_close_to_reference() -> anyhow::Result<()> {
    let directory = fixtures().join("cls");
    let files = local_files("cls", &directory)?;
    let device = Device::Cpu;
    let refused = PlmBundle::load(&files, &device, DType::BF16)
        .err()
        .map(|error| error.to_string())
        .unwrap_or_default();
    assert!(refused.contains("models.dtype"), "bf16 on cpu: {refused}");
    let bundle = PlmBundle::load(&files, &device, DType::F16)?;
    assert_eq!(bundle.model.dtype(), DType::F16);
    let inputs = candle_core::safetensors::load(fixtures().join("inputs.safetensors"), &device)?;
    let reference =
        candle_core::safetensors::load(directory.join("reference.safetensors"), &device)?;
    let visual = bundle
        .model
        .visual_tokens(&inputs["video.pixel_values"], 8)?;
    let prefilled = bundle.model.prefill(
        &[PlmInput {
            ids: ids(&reference["video.input_ids"])?,
            visual: Some(visual),
        }],
        128,
        0,
    )?;
    let expected = reference["video.logits_last"].to_vec1::<f32>()?;
    let got = &prefilled.logits[0];
    let dot: f32 = got.iter().zip(&expected).map(|(a, b)| a * b).sum();
    let norm = |v: &[f32]| v.iter().map(|x| x * x).sum::<f32>().sqrt();
    let cosine = dot / (norm(got) * norm(&expected));
    assert!(cosine >= 0.99, "f16 last-logit cosine {cosine}");
    println!("f16 cosine {cosine:.5}");
    Ok(())
}

/// A checkpoint split into shards with a `model.safetensors.index.json` (how the official
/// repositories ship) loads to the same model.
#[test]
fn sharded_checkpoint_loads_the_same_model() -> anyhow::Result<()> {
    let device = Device::Cpu;
    let source = fixtures().join("cls");
    let directory = tempfile::tempdir()?;
    for file in ["config.json", "tokenizer.json", "processor_config.json"] {
        std::fs::copy(source.join(file), directory.path().join(file))?;
    }
    let tensors = candle_core::safetensors::load(source.join("model.safetensors"), &device)?;
    let mut names: Vec<&String> = tensors.keys().collect();
    names.sort();
    let (first, second) = names.split_at(names.len() / 2);
    let mut weight_map = serde_json::Map::new();
    for (shard, part) in [
        ("model-00001-of-00002.safetensors", first),
        ("model-00002-of-00002.safetensors", second),
    ] {
        let subset: HashMap<String, Tensor> = part
            .iter()
            .map(|name| ((*name).clone(), tensors[*name].clone()))
            .collect();
        candle_core::safetensors::save(&subset, directory.path().join(shard))?;
        for name in part {
            weight_map.insert((*name).clone(), shard.into());
        }
    }
    std::fs::write(
        directory.path().join("model.safetensors.index.json"),
        serde_json::json!({ "metadata": {}, "weight_map": weight_map }).to_string(),
    )?;
    let options = HubOptions {
        local_dir: Some(directory.path().to_path_buf()),
        ..Default::default()
    };
    let bundle = PlmBundle::from_hub("sharded", &options, &device, DType::F32)?;
    let fixture = load("cls")?;
    let input = |bundle: &PlmBundle| -> anyhow::Result<PlmInput> {
        Ok(PlmInput {
            ids: ids(&fixture.reference["video.input_ids"])?,
            visual: Some(
                bundle
                    .model
                    .visual_tokens(&fixture.inputs["video.pixel_values"], 8)?,
            ),
        })
    };
    let logits = bundle.model.prefill(&[input(&bundle)?], 256, 0)?.logits;
    let diff = slice_diff(&logits[0], &fixture.reference["video.logits_last"])?;
    assert!(diff <= 1e-3, "sharded checkpoint logits differ by {diff}");

    // A shard that went missing is named.
    std::fs::remove_file(directory.path().join("model-00002-of-00002.safetensors"))?;
    let error = PlmBundle::from_hub("sharded", &options, &device, DType::F32)
        .err()
        .map(|error| error.to_string())
        .unwrap_or_default();
    assert!(
        error.contains("model-00002-of-00002.safetensors"),
        "{error}"
    );
    Ok(())
}

/// PLM's video preprocessing in production, against the reference on a real encoded clip
/// (`scripts/make_plm_video_fixture.py`): vidx's sampler decodes the 640x360 H.264 clip at
/// its own size (it is smaller than 448 on one side) with the frame the reference saw at
/// each sampled time, the same RGB as FFmpeg's CLI; the processor's 448x448 pixels then
/// agree with transformers' `PerceptionLMVideoProcessor`.
#[test]
fn production_frames_of_a_real_clip_get_the_reference_preprocessing() -> anyhow::Result<()> {
    use vidx_core::ports::FrameSampler;
    let directory = fixtures().join("clip");
    let reference: HashMap<String, Tensor> =
        candle_core::safetensors::load(directory.join("reference.safetensors"), &Device::Cpu)?;
    let sampler = vidx_media::FfmpegFrameSampler::new(448);
    let frames = sampler.sample(
        &directory.join("clip.mp4"),
        vidx_core::TimeRange::new(0, 2_000),
        3,
    )?;
    let frame_ms = reference["frame_ms"].to_vec1::<i64>()?;
    let decoded = u8_images(&reference["frames_u8"])?;
    anyhow::ensure!(frames.len() == decoded.len(), "{} frames", frames.len());
    let processor = vidx_model::processor::ProcessorConfig::defaults(448);
    let mut images = Vec::new();
    for ((frame, expected), ms) in frames.iter().zip(&decoded).zip(&frame_ms) {
        anyhow::ensure!(
            frame.pts_ms == *ms as u64,
            "frame at {} ms, the reference's at {ms} ms",
            frame.pts_ms
        );
        anyhow::ensure!(
            (frame.width as usize, frame.height as usize) == (expected.width, expected.height),
            "decoded at {}x{}, not at the source's {}x{}",
            frame.width,
            frame.height,
            expected.width,
            expected.height
        );
        let differing = frame
            .rgb
            .iter()
            .zip(&expected.data)
            .filter(|(a, b)| a.abs_diff(**b) > 1)
            .count();
        anyhow::ensure!(
            differing == 0,
            "{differing} RGB values differ from FFmpeg's by more than 1 at {ms} ms"
        );
        let image = RgbImage::new(
            frame.width as usize,
            frame.height as usize,
            frame.rgb.clone(),
        )
        .map_err(anyhow::Error::msg)?;
        images.push(processor.video_frame(&image));
    }
    let ours = processor.pixel_values(&images, &Device::Cpu, DType::F32)?;
    // The reference's pixels, normalised as it normalised them.
    let theirs = ((reference["pixels_u8"].to_dtype(DType::F32)? / 255.0)? - 0.5)? / 0.5;
    let theirs = theirs?;
    let difference = (ours - &theirs)?.abs()?.flatten_all()?;
    let max = difference.max(0)?.to_scalar::<f32>()?;
    let mean = difference.mean(0)?.to_scalar::<f32>()?;
    println!("real clip, 640x360 -> 448x448: max {max:.5}, mean {mean:.6} (normalised units)");
    // The same levels as the reference's, every pixel (the bound is 1e-3 in
    // normalised units, where one level is 2/255).
    anyhow::ensure!(max <= 1e-6, "max difference {max}");
    anyhow::ensure!(mean <= 1e-6, "mean difference {mean}");
    Ok(())
}

/// PLM's region prompt path (RCap) against the reference (`scripts/make_plm_region_fixture.py`):
/// the rectangle vidx draws on frames 8..23 is the reference's, the processor's pixels of the
/// marked frames agree, the region prompt's ids are the processor's, and the tiny model's
/// first logits and greedy continuation on them are transformers'.
#[test]
fn the_region_prompt_path_matches_the_reference() -> anyhow::Result<()> {
    let fixture = load("cls")?;
    let device = Device::Cpu;
    let region = candle_core::safetensors::load(
        fixtures().join("cls/region_reference.safetensors"),
        &device,
    )?;
    let mut frames = u8_images(&fixture.inputs["video.frames_u8"])?;
    let boxed = vidx_core::NormalizedBox {
        x0: 0.1,
        y0: 0.1,
        x1: 0.6,
        y1: 0.7,
    };
    for frame in &mut frames[8..24] {
        frame.draw_rectangle(&boxed, [255, 0, 0], 4);
    }
    let marked = u8_images(&region["region.marked_u8"])?;
    for (index, (ours, theirs)) in frames.iter().zip(&marked).enumerate() {
        anyhow::ensure!(
            ours.data == theirs.data,
            "frame {index}: the rectangle differs from the reference's"
        );
    }
    let processor = &fixture.bundle.processor;
    let resized: Vec<RgbImage> = frames
        .iter()
        .map(|frame| processor.video_frame(frame))
        .collect();
    let pixels = processor.pixel_values(&resized, &device, DType::F32)?;
    let pixel_diff = max_abs_diff(&pixels, &region["region.pixel_values"])? * 0.5;
    anyhow::ensure!(pixel_diff <= 1e-6, "marked pixels differ by {pixel_diff}");
    let prompt = vidx_model::captioner::REGION_CAPTION_PROMPT
        .replace("{start}", "8")
        .replace("{end}", "23")
        .replace("{frames}", "32");
    let prompt_ids = fixture
        .bundle
        .prompter
        .encode(Media::Video { frames: 32 }, &prompt)
        .map_err(anyhow::Error::msg)?;
    anyhow::ensure!(
        prompt_ids == ids(&region["region.input_ids"])?,
        "region prompt ids differ from the processor's"
    );
    let model = &fixture.bundle.model;
    let input = PlmInput {
        ids: prompt_ids,
        visual: Some(model.visual_tokens(&region["region.pixel_values"], 8)?),
    };
    let prefilled = model.prefill(std::slice::from_ref(&input), 64, 0)?;
    let first = slice_diff(&prefilled.logits[0], &region["region.greedy_logits"].i(0)?)?;
    anyhow::ensure!(first <= 1e-3, "first region logits differ by {first}");
    let expected = region["region.greedy_ids"]
        .to_vec1::<i64>()?
        .iter()
        .map(|&id| id as u32)
        .collect::<Vec<_>>();
    let options = GenerateOptions {
        max_new_tokens: expected.len(),
        sampling: Sampling::Greedy,
        stop_tokens: Vec::new(),
        prefill_chunk: 64,
    };
    let (generated, _) = model.generate(&[input], &options)?;
    anyhow::ensure!(
        generated[0].tokens == expected,
        "greedy region tokens {:?}, the reference's {expected:?}",
        generated[0].tokens
    );
    // RDCap: the dense region prompt over the same marked frames.
    let dense_prompt = vidx_model::captioner::REGION_DENSE_CAPTION_PROMPT
        .replace("{last}", "31")
        .replace("{frames}", "32");
    let dense_ids = fixture
        .bundle
        .prompter
        .encode(Media::Video { frames: 32 }, &dense_prompt)
        .map_err(anyhow::Error::msg)?;
    anyhow::ensure!(
        dense_ids == ids(&region["rdcap.input_ids"])?,
        "RDCap prompt ids differ from the processor's"
    );
    let dense_input = PlmInput {
        ids: dense_ids,
        visual: Some(model.visual_tokens(&region["region.pixel_values"], 8)?),
    };
    let dense_expected = ids(&region["rdcap.greedy_ids"])?;
    let (dense, _) = model.generate(&[dense_input], &options)?;
    anyhow::ensure!(
        dense[0].tokens == dense_expected,
        "greedy RDCap tokens {:?}, the reference's {dense_expected:?}",
        dense[0].tokens
    );
    println!("region prompt: pixels {pixel_diff:.4}, first logits {first:.2e}");
    Ok(())
}
