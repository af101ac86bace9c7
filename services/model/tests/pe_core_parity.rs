//! Parity of the candle PE-Core CLIP (both towers, the logit scale, the CLIP tokenizer) with
//! the reference (open_clip + timm), on the tiny checkpoints made by
//! `scripts/make_pe_core_fixtures.py`: a CLS configuration in open_clip's layout and one
//! without CLS in the official perception_models `.pt` layout.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use vidx_model::clip_tokenizer::ClipTokenizer;
use vidx_model::models::pe_core::{PeCoreClip, PeCoreLayout};
use vidx_model::processor::RgbImage;

const TOLERANCE: f32 = 1e-4;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/pe_core")
}

fn max_abs_diff(left: &Tensor, right: &Tensor) -> anyhow::Result<f32> {
    anyhow::ensure!(
        left.dims() == right.dims(),
        "shape {:?} vs {:?}",
        left.dims(),
        right.dims()
    );
    Ok((left - right)?
        .abs()?
        .flatten_all()?
        .max(0)?
        .to_scalar::<f32>()?)
}

fn reference(name: &str) -> anyhow::Result<HashMap<String, Tensor>> {
    Ok(candle_core::safetensors::load(
        fixtures().join(name).join("reference.safetensors"),
        &Device::Cpu,
    )?)
}

fn texts(name: &str) -> anyhow::Result<Vec<String>> {
    let manifest: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(
        fixtures().join(name).join("manifest.json"),
    )?)?;
    Ok(manifest["texts"]
        .as_array()
        .map(|texts| {
            texts
                .iter()
                .filter_map(|text| text.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default())
}

fn check(name: &str, layout: PeCoreLayout, class_token: bool) -> anyhow::Result<()> {
    let device = Device::Cpu;
    let reference = reference(name)?;
    let model = PeCoreClip::from_path(&fixtures().join(name), DType::F32, &device, name)?;
    let config = model.config();
    assert_eq!(config.layout, layout, "{name}: layout");
    assert_eq!(config.vision.class_token, class_token, "{name}: CLS token");

    // Vision: tokens after ln_post, then the pooled, projected embedding.
    let pixels = &reference["pixel_values"];
    let tokens = model.vision().tokens(pixels)?;
    let tokens_diff = max_abs_diff(&tokens, &reference["vision_tokens"])?;
    let image = model.vision().forward(pixels)?;
    let image_diff = max_abs_diff(&image, &reference["image_features"])?;

    // Text: the tokenizer must give the reference ids, then the tower the reference features.
    let tokenizer = ClipTokenizer::new()?;
    let text_model = model.text().expect("the fixture has a text tower");
    let context = text_model.config().context_length;
    let expected_ids: Vec<Vec<u32>> = reference["token_ids"]
        .to_dtype(DType::U32)?
        .to_vec2::<u32>()?;
    let ids: Vec<Vec<u32>> = texts(name)?
        .iter()
        .map(|text| tokenizer.tokenize(text, context))
        .collect();
    assert_eq!(ids, expected_ids, "{name}: token ids");
    let text = text_model.forward(&ids)?;
    let text_diff = max_abs_diff(&text, &reference["text_features"])?;

    // Logits: exp(logit_scale) · cos.
    let scale = model.logit_scale().expect("logit_scale");
    let reference_scale = reference["logit_scale"].to_scalar::<f32>()?;
    assert!(
        (scale - reference_scale).abs() < 1e-6,
        "{name}: logit scale"
    );
    let normalise = |tensor: &Tensor| -> candle_core::Result<Tensor> {
        tensor.broadcast_div(&tensor.sqr()?.sum_keepdim(1)?.sqrt()?)
    };
    let logits = (normalise(&image)?.matmul(&normalise(&text)?.t()?)? * f64::from(scale.exp()))?;
    let logits_diff = max_abs_diff(&logits, &reference["logits_per_image"])?;

    eprintln!(
        "{name}: vision tokens {tokens_diff:.2e}, image {image_diff:.2e}, text {text_diff:.2e}, logits {logits_diff:.2e}"
    );
    assert!(
        tokens_diff <= TOLERANCE,
        "{name}: vision tokens {tokens_diff}"
    );
    assert!(
        image_diff <= TOLERANCE,
        "{name}: image embeddings {image_diff}"
    );
    assert!(
        text_diff <= TOLERANCE,
        "{name}: text embeddings {text_diff}"
    );
    assert!(logits_diff <= 1e-3, "{name}: logits {logits_diff}");

    // The preprocessing: uint8 frames at the native size → the reference pixel values.
    let frames_u8 = &reference["image_u8"];
    let (count, height, width, _) = frames_u8.dims4()?;
    let raw = frames_u8.flatten_all()?.to_vec1::<u8>()?;
    let frames: Vec<RgbImage> = raw
        .chunks(height * width * 3)
        .take(count)
        .map(|chunk| RgbImage::new(width, height, chunk.to_vec()))
        .collect::<Result<_, _>>()
        .map_err(anyhow::Error::msg)?;
    let values = vidx_model::models::pe_core::pixel_values(
        &frames,
        config.vision.image_size,
        DType::F32,
        &device,
    )?;
    let pixel_diff = max_abs_diff(&values, pixels)?;
    assert!(pixel_diff <= 1e-6, "{name}: pixel values {pixel_diff}");
    Ok(())
}

#[test]
fn pe_core_with_cls_token_in_open_clip_layout_matches_the_reference() -> anyhow::Result<()> {
    check("cls", PeCoreLayout::OpenClip, true)
}

#[test]
fn pe_core_without_cls_token_in_the_official_layout_matches_the_reference() -> anyhow::Result<()> {
    check("nocls", PeCoreLayout::Official, false)
}

#[test]
fn the_clip_tokenizer_gives_open_clip_s_ids() -> anyhow::Result<()> {
    let cases: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixtures().join("tokenizer.json"))?)?;
    let tokenizer = ClipTokenizer::new()?;
    let cases = cases["cases"].as_array().cloned().unwrap_or_default();
    assert!(cases.len() >= 20, "{} tokenizer cases", cases.len());
    for case in cases {
        let text = case["text"].as_str().unwrap_or_default();
        let context = case["context_length"].as_u64().unwrap_or(77) as usize;
        let expected: Vec<u32> = case["ids"]
            .as_array()
            .map(|ids| {
                ids.iter()
                    .filter_map(|id| id.as_u64())
                    .map(|id| id as u32)
                    .collect()
            })
            .unwrap_or_default();
        let ids: Vec<u32> = tokenizer
            .tokenize(text, context)
            .into_iter()
            .filter(|&id| id != 0)
            .collect();
        assert_eq!(ids, expected, "text {text:?} at context {context}");
    }
    Ok(())
}

fn unit(rows: Vec<Vec<f32>>) -> Vec<Vec<f32>> {
    rows.into_iter()
        .map(|row| {
            let norm = row.iter().map(|value| value * value).sum::<f32>().sqrt();
            row.into_iter().map(|value| value / norm).collect()
        })
        .collect()
}

fn max_row_diff(left: &[Vec<f32>], right: &[Vec<f32>]) -> f32 {
    assert_eq!(left.len(), right.len());
    left.iter()
        .zip(right)
        .flat_map(|(left, right)| left.iter().zip(right).map(|(a, b)| (a - b).abs()))
        .fold(0.0, f32::max)
}

#[test]
fn the_embedder_gives_unit_vectors_of_frames_and_queries_in_one_space() -> anyhow::Result<()> {
    use vidx_core::ports::{TextEmbedder, VisualEmbedder};
    let reference = reference("cls")?;
    let embedder = std::sync::Arc::new(vidx_model::PeCoreEmbedder::from_path(
        &fixtures().join("cls"),
        "pe-core-tiny",
        Device::Cpu,
        DType::F32,
    )?);
    assert_eq!(VisualEmbedder::dimension(embedder.as_ref()), 24);
    let frames_u8 = &reference["image_u8"];
    let (count, height, width, _) = frames_u8.dims4()?;
    let raw = frames_u8.flatten_all()?.to_vec1::<u8>()?;
    let frames: Vec<vidx_core::Frame> = raw
        .chunks(height * width * 3)
        .take(count)
        .enumerate()
        .map(|(index, chunk)| vidx_core::Frame {
            pts_ms: index as u64 * 500,
            width: width as u32,
            height: height as u32,
            rgb: chunk.to_vec(),
            display_size: (0, 0),
        })
        .collect();
    let images = embedder.embed_frames(&frames)?;
    let expected_images = unit(reference["image_features"].to_vec2::<f32>()?);
    assert!(max_row_diff(&images, &expected_images) <= TOLERANCE);

    let queries = vidx_model::PeCoreTextEmbedder(embedder.clone());
    let texts = queries.embed(&texts("cls")?)?;
    let expected_texts = unit(reference["text_features"].to_vec2::<f32>()?);
    assert!(max_row_diff(&texts, &expected_texts) <= TOLERANCE);

    // A frame of the wrong size is an error naming the frame, not a panic.
    let broken = vidx_core::Frame {
        pts_ms: 7,
        width: 10,
        height: 10,
        rgb: vec![0; 12],
        display_size: (0, 0),
    };
    let error = embedder
        .embed_frames(&[broken])
        .expect_err("a truncated frame");
    assert!(error.to_string().contains("7 ms"), "{error}");
    Ok(())
}

#[test]
fn a_directory_without_a_checkpoint_says_what_it_looked_for() {
    let directory = tempfile::tempdir().expect("temp dir");
    let error = PeCoreClip::from_path(directory.path(), DType::F32, &Device::Cpu, "x")
        .err()
        .expect("no checkpoint");
    let message = error.to_string();
    assert!(
        message.contains("open_clip_model.safetensors") && message.contains("*.pt"),
        "{message}"
    );
}
