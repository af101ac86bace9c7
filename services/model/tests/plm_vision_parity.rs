//! Parity of the candle Perception Encoder tower and PLM projector with the reference
//! (transformers PerceptionLM + timm), on the tiny checkpoints made by
//! `scripts/make_plm_fixtures.py`: a CLS configuration (like PLM-1B/3B) and one without
//! (like PLM-8B).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use vidx_model::models::perception_encoder::{
    PeVisionConfig, PeVisionTower, PlmProjector, TimmVisionConfig,
};

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
    Ok((left - right)?
        .abs()?
        .flatten_all()?
        .max(0)?
        .to_scalar::<f32>()?)
}

fn check(name: &str) -> anyhow::Result<()> {
    let device = Device::Cpu;
    let directory = fixtures().join(name);
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(directory.join("config.json"))?)?;
    let vision_config: TimmVisionConfig = serde_json::from_value(config["vision_config"].clone())?;
    let vision = PeVisionConfig::resolve(&vision_config, name)?;
    assert_eq!(
        vision.class_token,
        config["vision_use_cls_token"].as_bool().unwrap_or(true),
        "{name}"
    );
    let text_dim = config["text_config"]["hidden_size"].as_u64().unwrap_or(0) as usize;
    let pooling = config["projector_pooling_ratio"].as_u64().unwrap_or(1) as usize;

    let variables = VarBuilder::from_buffered_safetensors(
        std::fs::read(directory.join("model.safetensors"))?,
        DType::F32,
        &device,
    )?;
    let tower = PeVisionTower::load(&vision, variables.pp("model.vision_tower.timm_model"))?;
    let projector = PlmProjector::load(
        vision.embed_dim,
        text_dim,
        pooling,
        variables.pp("model.multi_modal_projector"),
    )?;

    let inputs: HashMap<String, Tensor> =
        candle_core::safetensors::load(fixtures().join("inputs.safetensors"), &device)?;
    let reference: HashMap<String, Tensor> =
        candle_core::safetensors::load(directory.join("reference.safetensors"), &device)?;
    for input in ["video", "image"] {
        let pixels = &inputs[&format!("{input}.pixel_values")];
        let features = tower.patch_features(pixels)?;
        let vision_diff = max_abs_diff(&features, &reference[&format!("{input}.vision_out")])?;
        assert!(
            vision_diff <= 1e-4,
            "{name} {input}: vision tower max abs diff {vision_diff}"
        );
        let projected = projector.forward(&features)?;
        let projector_diff =
            max_abs_diff(&projected, &reference[&format!("{input}.projector_out")])?;
        assert!(
            projector_diff <= 1e-4,
            "{name} {input}: projector max abs diff {projector_diff}"
        );
        println!("{name} {input}: vision {vision_diff:.2e}, projector {projector_diff:.2e}");
    }
    if vision.class_token {
        let full = tower.forward(&inputs["video.pixel_values"])?;
        let cls = full.narrow(1, 0, 1)?.squeeze(1)?;
        let cls_diff = max_abs_diff(&cls, &reference["video.vision_cls"])?;
        assert!(cls_diff <= 1e-4, "{name}: CLS row max abs diff {cls_diff}");
    }
    Ok(())
}

#[test]
fn vision_tower_and_projector_match_reference_with_cls() -> anyhow::Result<()> {
    check("cls")
}

#[test]
fn vision_tower_and_projector_match_reference_without_cls() -> anyhow::Result<()> {
    check("nocls")
}

#[test]
fn unsupported_vision_config_names_the_field() -> anyhow::Result<()> {
    let config: TimmVisionConfig = serde_json::from_value(serde_json::json!({
        "architecture": "vit_pe_core_large_patch14_336",
        "model_args": { "img_size": [56, 56], "ref_feat_shape": [8, 8] }
    }))?;
    let error = PeVisionConfig::resolve(&config, "tiny").expect_err("ref_feat_shape mismatch");
    assert!(
        error
            .to_string()
            .contains("vision_config.model_args.ref_feat_shape"),
        "{error}"
    );
    let config: TimmVisionConfig =
        serde_json::from_value(serde_json::json!({ "architecture": "vit_base_patch16_224" }))?;
    let error = PeVisionConfig::resolve(&config, "tiny").expect_err("not PE");
    assert!(
        error.to_string().contains("vision_config.architecture"),
        "{error}"
    );
    Ok(())
}
