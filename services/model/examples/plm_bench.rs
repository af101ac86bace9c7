//! Benchmark body for `scripts/bench-plm.sh`: load a PerceptionLM checkpoint, then time the
//! vision tower + projector over N frames, the prefill of the video prompt (visual tokens
//! spliced, chunked), and greedy decoding of T tokens with the KV cache. Inputs are seeded
//! random pixels: content does not change the cost. `--warmup` runs (default 1) go first and
//! are not timed, so the figures are steady-state ones, as in a long-running worker (the first
//! run of a process also pays page faults and allocator growth). Writes JSON.
//!
//! With `--batch B` it times what a GPU worker does with B segments: the vision tower over all
//! B x N frames, then one batched generation over the B prompts, and reports segments/s and the
//! multiple of real time for segments of `--segment-secs` (20 by default).
//!
//!     plm_bench --model-dir DIR [--device cpu|cuda|cuda:N] [--frames 8] [--new-tokens 32]
//!               [--repeats 2] [--warmup 1] [--batch 1] [--segment-secs 20]
//!               [--prefill-chunk 2048] [--vision-batch 4] [--dtype f32|bf16|f16] [--json FILE]
//!     plm_bench --check-attention TOLERANCE [--device ...] [--dtype ...]
//!     plm_bench --micro 1 [--device ...] [--dtype ...]
//!
//! `--check-attention` compares the fused attention kernel of the device (the CPU's for f32, the
//! CUDA one for bf16/f16) with the tensor-op attention in f32 on the same device, prints the
//! largest difference per case as JSON and fails when one exceeds TOLERANCE or no fused kernel
//! applies (`vidx_model::attention::fused_error`). `--micro` times single operations in
//! Perception-LM-1B's shapes (attention fused and not, a linear layer and its parts, layer
//! norm, GELU) and prints JSON: `bench_plm_device.py` times the same in PyTorch beside them.

use std::time::Instant;

use anyhow::Context;
use candle_core::{DType, Device, Tensor};
use vidx_model::hub::{HubOptions, resolve_model_dir};
use vidx_model::models::perception_lm::{
    GenerateOptions, Media, PLM_OPTIONAL_FILES, PLM_REQUIRED_FILES, PlmBundle, PlmInput, Sampling,
};

// The binaries use mimalloc: it reuses freed memory instead of handing large buffers back to
// the kernel, which would fault in fresh zeroed pages on every tensor allocation.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc's `purge_delay` option (its index in mimalloc 3's `mi_option_t`).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Keep freed memory mapped: model steps free and reallocate the same large buffers, and
/// returning them to the kernel costs a page fault and a zeroed page per touch next time.
fn keep_freed_memory() {
    #[allow(unsafe_code)]
    // SAFETY: sets a plain integer option; mimalloc's option table is safe to write at any
    // time and this runs before any worker thread starts.
    unsafe {
        libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1)
    };
}

struct Arguments {
    model_dir: std::path::PathBuf,
    frames: usize,
    new_tokens: usize,
    repeats: usize,
    warmup: usize,
    batch: usize,
    prefill_chunk: usize,
    vision_batch: usize,
    dtype: DType,
    device: String,
    segment_secs: f64,
    json: Option<std::path::PathBuf>,
    check_attention: Option<f32>,
    micro: bool,
}

fn arguments() -> anyhow::Result<Arguments> {
    let mut parsed = Arguments {
        model_dir: std::path::PathBuf::new(),
        frames: 8,
        new_tokens: 32,
        repeats: 2,
        warmup: 1,
        batch: 1,
        prefill_chunk: 2048,
        vision_batch: 4,
        dtype: DType::F32,
        device: "cpu".into(),
        segment_secs: 20.0,
        json: None,
        check_attention: None,
        micro: false,
    };
    let mut raw = std::env::args().skip(1);
    while let Some(flag) = raw.next() {
        let value = raw
            .next()
            .with_context(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--model-dir" => parsed.model_dir = value.into(),
            "--frames" => parsed.frames = value.parse()?,
            "--new-tokens" => parsed.new_tokens = value.parse()?,
            "--repeats" => parsed.repeats = value.parse::<usize>()?.max(1),
            "--warmup" => parsed.warmup = value.parse()?,
            "--batch" => parsed.batch = value.parse::<usize>()?.max(1),
            "--prefill-chunk" => parsed.prefill_chunk = value.parse()?,
            "--vision-batch" => parsed.vision_batch = value.parse::<usize>()?.max(1),
            "--dtype" => {
                parsed.dtype = match value.as_str() {
                    "f32" => DType::F32,
                    "bf16" => DType::BF16,
                    "f16" => DType::F16,
                    other => anyhow::bail!("--dtype {other}: f32, bf16 or f16"),
                }
            }
            "--json" => parsed.json = Some(value.into()),
            "--device" => parsed.device = value,
            "--segment-secs" => parsed.segment_secs = value.parse()?,
            "--check-attention" => parsed.check_attention = Some(value.parse()?),
            "--micro" => parsed.micro = value != "0",
            other => anyhow::bail!("unknown flag {other}"),
        }
    }
    anyhow::ensure!(
        parsed.check_attention.is_some()
            || parsed.micro
            || !parsed.model_dir.as_os_str().is_empty(),
        "--model-dir is required"
    );
    Ok(parsed)
}

fn main() -> anyhow::Result<()> {
    keep_freed_memory();
    let arguments = arguments()?;
    let device: Device = vidx_model::select_device(arguments.device.parse()?)?;
    if let Some(tolerance) = arguments.check_attention {
        return check_attention(&device, arguments.dtype, tolerance);
    }
    if arguments.micro {
        return micro(&device, arguments.dtype);
    }
    let files = resolve_model_dir(
        "bench",
        PLM_REQUIRED_FILES,
        PLM_OPTIONAL_FILES,
        &HubOptions {
            local_dir: Some(arguments.model_dir.clone()),
            ..Default::default()
        },
    )?;
    let bundle = PlmBundle::load(&files, &device, arguments.dtype)?;
    let model = &bundle.model;
    let size = bundle.processor.video_size;
    let frames = arguments.frames;
    let batch = arguments.batch;
    // Every segment of the batch has frames of its own: the tower runs over all of them.
    let pixels = Tensor::rand(-1f32, 1f32, (batch * frames, 3, size, size), &device)?;
    let ids = bundle
        .prompter
        .encode(Media::Video { frames }, "What is happening in the video?")
        .map_err(anyhow::Error::msg)?;
    let options = GenerateOptions {
        max_new_tokens: arguments.new_tokens,
        sampling: Sampling::Greedy,
        stop_tokens: Vec::new(),
        prefill_chunk: arguments.prefill_chunk,
    };

    let (mut vision_secs, mut prefill_secs, mut decode_secs) = (f64::MAX, f64::MAX, f64::MAX);
    let mut decoded = 0;
    for run in 0..arguments.warmup + arguments.repeats {
        let timed = run >= arguments.warmup;
        if run == arguments.warmup {
            // VIDX_PROFILE=1: stage times of the timed runs only.
            let _ = vidx_model::profile::take();
        }
        let started = Instant::now();
        let visual = if std::env::var_os("PLM_BENCH_SKIP_VISION").is_some() {
            let tokens = model.config().tokens_per_tile();
            Tensor::randn(
                0f32,
                1f32,
                (batch * frames, tokens, model.config().text.hidden_size),
                &device,
            )?
            .to_dtype(model.dtype())?
        } else {
            model.visual_tokens(&pixels, arguments.vision_batch)?
        };
        let _ = visual.sum_all()?.to_dtype(DType::F32)?.to_scalar::<f32>()?;
        device.synchronize()?;
        if timed {
            vision_secs = vision_secs.min(started.elapsed().as_secs_f64());
        }
        let inputs: Vec<PlmInput> = (0..batch)
            .map(|segment| {
                Ok(PlmInput {
                    ids: ids.clone(),
                    visual: Some(visual.narrow(0, segment * frames, frames)?),
                })
            })
            .collect::<candle_core::Result<_>>()?;
        let (_, stats) = model.generate(&inputs, &options)?;
        device.synchronize()?;
        if !timed {
            continue;
        }
        prefill_secs = prefill_secs.min(stats.prefill_secs);
        // The first token comes from the prefill logits; the rest are decode steps.
        let steps = stats.decode_tokens.saturating_sub(arguments.batch);
        if steps > 0 {
            decode_secs = decode_secs.min(stats.decode_secs);
            decoded = steps;
        }
    }
    let prompt_tokens = ids.len() * batch;
    // One batch end to end: the tower over its frames, the prefill, the decode steps.
    let batch_secs = vision_secs + prefill_secs + if decoded > 0 { decode_secs } else { 0.0 };
    let segments_per_s = batch as f64 / batch_secs;
    let report = serde_json::json!({
        "device": arguments.device,
        "frames": frames,
        "batch": batch,
        "segment_secs": arguments.segment_secs,
        "vision_batch": arguments.vision_batch,
        "prefill_chunk": arguments.prefill_chunk,
        "prompt_tokens": prompt_tokens,
        "new_tokens": arguments.new_tokens,
        "warmup_runs": arguments.warmup,
        "threads": std::env::var("RAYON_NUM_THREADS").ok(),
        "dtype": format!("{:?}", arguments.dtype),
        "vision_secs": vision_secs,
        "prefill_secs": prefill_secs,
        "decode_secs": decode_secs,
        "batch_secs": batch_secs,
        "segments_per_s": segments_per_s,
        "x_realtime": segments_per_s * arguments.segment_secs,
        "vision_frames_per_s": (batch * frames) as f64 / vision_secs,
        "prefill_tokens_per_s": prompt_tokens as f64 / prefill_secs,
        "decode_tokens_per_s": decoded as f64 / decode_secs,
    });
    let mut report = report;
    let stages = vidx_model::profile::take();
    if !stages.is_empty() {
        report["profile"] = stages
            .into_iter()
            .map(|(stage, secs, calls)| serde_json::json!({"stage": stage, "secs": secs, "calls": calls}))
            .collect();
    }
    let text = serde_json::to_string_pretty(&report)?;
    match &arguments.json {
        Some(path) => std::fs::write(path, &text)?,
        None => println!("{text}"),
    }
    Ok(())
}

/// `--check-attention`: the fused kernel against the f32 tensor ops on `device`.
fn check_attention(device: &Device, dtype: DType, tolerance: f32) -> anyhow::Result<()> {
    #[allow(unused_mut)]
    let mut errors: Vec<(String, Option<f32>)> = vidx_model::attention::fused_error(device, dtype)?
        .into_iter()
        .map(|(name, error)| (name.to_string(), error))
        .collect();
    // What the models run decides; each CUDA kernel on its own is reported beside it.
    let ok = errors
        .iter()
        .all(|(_, error)| error.is_some_and(|error| error <= tolerance));
    // Each CUDA kernel on its own.
    #[cfg(feature = "cuda")]
    if device.is_cuda() {
        for kernel in vidx_model::fused::Kernel::ALL {
            let attend = |q: &Tensor, k: &Tensor, v: &Tensor, scale, visible: Option<&_>| {
                vidx_model::fused::attend_with(kernel, q, k, v, scale, visible)
            };
            for (name, error) in vidx_model::attention::fused_error_with(device, dtype, &attend)? {
                errors.push((format!("{} {name}", kernel.name()), error));
            }
        }
    }
    let cases: serde_json::Map<String, serde_json::Value> = errors
        .iter()
        .map(|(name, error)| (name.to_string(), serde_json::json!(error)))
        .collect();
    // The start-up check of every vidx CUDA kernel (relative errors) and what it let run.
    #[allow(unused_mut)]
    let mut kernels = serde_json::json!(null);
    #[cfg(feature = "cuda")]
    if device.is_cuda() {
        use vidx_model::fused::{Family, attention_kernel, check, verified};
        let cases: serde_json::Map<String, serde_json::Value> = check(device)?
            .into_iter()
            .map(|(name, error)| (name, serde_json::json!(error)))
            .collect();
        kernels = serde_json::json!({
            "relative_error": cases,
            "epilogue": verified(device, Family::Epilogue),
            "swiglu": verified(device, Family::SwiGlu),
            "rope": verified(device, Family::Rope),
            "attention": attention_kernel(device).map(|kernel| kernel.name()),
        });
    }
    println!(
        "{}",
        serde_json::json!({
            "check": "attention",
            "dtype": format!("{dtype:?}"),
            "tolerance": tolerance,
            "max_abs_diff": cases,
            "kernels": kernels,
            "ok": ok,
        })
    );
    anyhow::ensure!(
        ok,
        "the fused attention is off by more than {tolerance} (or did not apply)"
    );
    Ok(())
}

/// `--micro`: single operations in PLM-1B's shapes, each the mean of 10 runs after one.
fn micro(device: &Device, dtype: DType) -> anyhow::Result<()> {
    use candle_core::Module;
    use vidx_model::attention::{Visibility, attend, attend_fused};
    let time = |work: &dyn Fn() -> candle_core::Result<Tensor>| -> anyhow::Result<f64> {
        work()?;
        device.synchronize()?;
        let started = Instant::now();
        for _ in 0..10 {
            work()?;
        }
        device.synchronize()?;
        Ok(started.elapsed().as_secs_f64() / 10.0)
    };
    let randn = |shape: &[usize]| Tensor::randn(0f32, 1.0, shape, device)?.to_dtype(dtype);
    let mut results = Vec::new();
    let mut record = |name: &str, secs: f64, flops: f64, bytes: f64| {
        results.push(serde_json::json!({
            "op": name,
            "ms": secs * 1e3,
            "tflops": (flops > 0.0).then(|| flops / secs / 1e12),
            "gb_per_s": (bytes > 0.0).then(|| bytes / secs / 1e9),
        }));
    };
    // The decoder's prefill: one 8192-token prompt, 32 query heads on 8 KV heads, causal.
    let length = 8192;
    let q = randn(&[1, length, 32, 64])?.transpose(1, 2)?;
    let (k, v) = (randn(&[1, 8, length, 64])?, randn(&[1, 8, length, 64])?);
    let causal = Visibility::new(vec![(0..length).map(|i| (0, i + 1)).collect()]);
    let flops = 4.0 * 64.0 * 32.0 * (length * (length + 1) / 2) as f64;
    if attend_fused(&q, &k, &v, 0.125, Some(&causal))?.is_some() {
        let secs = time(&|| Ok(attend_fused(&q, &k, &v, 0.125, Some(&causal))?.expect("fused")))?;
        record("attention_prefill_8192_causal_fused", secs, flops, 0.0);
    }
    #[cfg(feature = "cuda")]
    for kernel in vidx_model::fused::Kernel::ALL {
        let run = || vidx_model::fused::attend_with(kernel, &q, &k, &v, 0.125, Some(&causal));
        if run()?.is_some() {
            let secs = time(&|| Ok(run()?.expect("kernel")))?;
            record(
                &format!("attention_prefill_8192_causal_{}", kernel.name()),
                secs,
                flops,
                0.0,
            );
        }
    }
    // A decode step at batch 32: one query per row over 8192 cached keys (the tensor ops the
    // decoder runs beside each fused kernel).
    let (batch, keys) = (32, 8192);
    let qd = randn(&[batch, 32, 1, 64])?;
    let (kd, vd) = (randn(&[batch, 8, keys, 64])?, randn(&[batch, 8, keys, 64])?);
    let flops = 4.0 * 64.0 * (batch * 32 * keys) as f64;
    let stacked = qd.reshape((batch, 8, 4, 64))?;
    let secs =
        time(&|| vidx_model::attention::attend_grouped_batch(&stacked, &kd, &vd, 0.125, 4, None))?;
    record("attention_decode_32x8192_tensor_ops", secs, flops, 0.0);
    #[cfg(feature = "cuda")]
    for kernel in vidx_model::fused::Kernel::ALL {
        let run = || vidx_model::fused::attend_with(kernel, &qd, &kd, &vd, 0.125, None);
        if run()?.is_some() {
            let secs = time(&|| Ok(run()?.expect("kernel")))?;
            record(
                &format!("attention_decode_32x8192_{}", kernel.name()),
                secs,
                flops,
                0.0,
            );
        }
    }
    // The vision tower: 32 frames x 1025 tokens, 16 heads, no mask.
    let (frames, tokens, heads) = (32, 1025, 16);
    let qv = randn(&[frames, heads, tokens, 64])?;
    let kv = randn(&[frames, heads, tokens, 64])?;
    let vv = randn(&[frames, heads, tokens, 64])?;
    let flops = 4.0 * 64.0 * (frames * heads * tokens * tokens) as f64;
    if attend_fused(&qv, &kv, &vv, 0.125, None)?.is_some() {
        let secs = time(&|| Ok(attend_fused(&qv, &kv, &vv, 0.125, None)?.expect("fused")))?;
        record("attention_vision_32x1025_fused", secs, flops, 0.0);
    }
    #[cfg(feature = "cuda")]
    for kernel in vidx_model::fused::Kernel::ALL {
        let run = || vidx_model::fused::attend_with(kernel, &qv, &kv, &vv, 0.125, None);
        if run()?.is_some() {
            let secs = time(&|| Ok(run()?.expect("kernel")))?;
            record(
                &format!("attention_vision_32x1025_{}", kernel.name()),
                secs,
                flops,
                0.0,
            );
        }
    }
    let flat = |t: &Tensor| t.reshape((frames * heads, tokens, 64));
    let (qf, kf, vf) = (flat(&qv)?, flat(&kv)?, flat(&vv)?);
    let secs = time(&|| attend(&qf, &kf, &vf, 0.125))?;
    record("attention_vision_32x1025_tensor_ops", secs, flops, 0.0);
    // The vision tower's RoPE on its fused projection: 32 frames x 1025 tokens, 16 heads.
    let qkv = randn(&[frames, tokens, 3 * 1024])?;
    let angles = Tensor::randn(0f32, 3.0, &[tokens, 32], device)?;
    let (cos, sin) = (
        angles.cos()?.to_dtype(dtype)?,
        angles.sin()?.to_dtype(dtype)?,
    );
    let bytes = 4.0 * (frames * tokens * 1024 * dtype.size_in_bytes()) as f64;
    let secs = time(&|| Ok(vidx_model::ops::rope_qk_ops(&qkv, 16, &cos, &sin)?.0))?;
    record("rope_qk_32x1025_tensor_ops", secs, 0.0, bytes);
    #[cfg(feature = "cuda")]
    if vidx_model::fused::rope_qk(&qkv, 16, &cos, &sin)?.is_some() {
        let secs = time(&|| {
            Ok(vidx_model::fused::rope_qk(&qkv, 16, &cos, &sin)?
                .expect("rope kernel")
                .0)
        })?;
        record("rope_qk_32x1025_vidx", secs, 0.0, bytes);
    }
    // The vision MLP's first layer: 32 frames x 1025 tokens, 1024 -> 4096, and its parts.
    let rows = frames * tokens;
    let x = randn(&[rows, 1024])?;
    let weight = randn(&[4096, 1024])?;
    let bias = randn(&[4096])?;
    let linear = candle_nn::Linear::new(weight.clone(), Some(bias.clone()));
    let flops = 2.0 * (rows * 1024 * 4096) as f64;
    let element = dtype.size_in_bytes() as f64;
    record(
        "linear_32800x1024x4096_bias",
        time(&|| linear.forward(&x))?,
        flops,
        0.0,
    );
    record(
        "matmul_32800x1024x4096",
        time(&|| x.matmul(&weight.t()?))?,
        flops,
        0.0,
    );
    let y = x.matmul(&weight.t()?)?;
    let out_bytes = (rows * 4096) as f64 * element;
    record(
        "bias_add_32800x4096",
        time(&|| y.broadcast_add(&bias))?,
        0.0,
        2.0 * out_bytes,
    );
    record("add_32800x4096", time(&|| &y + &y)?, 0.0, 3.0 * out_bytes);
    record(
        "gelu_erf_32800x4096",
        time(&|| vidx_model::ops::gelu_erf(&y))?,
        0.0,
        2.0 * out_bytes,
    );
    record(
        "linear_gelu_32800x1024x4096_vidx",
        time(&|| {
            vidx_model::ops::linear_epilogue(
                &linear,
                &x,
                vidx_model::ops::Activation::GeluErf,
                None,
                None,
            )
        })?,
        flops,
        0.0,
    );
    record(
        "bias_gelu_32800x4096_vidx",
        time(&|| {
            vidx_model::ops::epilogue(
                &y,
                Some(&bias),
                vidx_model::ops::Activation::GeluErf,
                None,
                None,
            )
        })?,
        0.0,
        2.0 * out_bytes,
    );
    // The decoder's SwiGLU over an 8192-token chunk: [8192, 2 x 8192] -> [8192, 8192].
    let stacked = randn(&[8192, 2 * 8192])?;
    let swiglu_bytes = 3.0 * (8192 * 8192) as f64 * element;
    record(
        "swiglu_8192x8192_vidx",
        time(&|| vidx_model::ops::swiglu(&stacked, 8192))?,
        0.0,
        swiglu_bytes,
    );
    record(
        "swiglu_8192x8192_tensor_ops",
        time(&|| vidx_model::ops::swiglu_ops(&stacked, 8192))?,
        0.0,
        swiglu_bytes,
    );
    let norm = candle_nn::LayerNorm::new(randn(&[1024])?, randn(&[1024])?, 1e-5);
    let in_bytes = (rows * 1024) as f64 * element;
    record(
        "layer_norm_32800x1024",
        time(&|| norm.forward(&x))?,
        0.0,
        2.0 * in_bytes,
    );
    #[cfg(feature = "cuda")]
    if vidx_model::fused::norm(&x, norm.weight(), norm.bias(), norm.eps(), true)?.is_some() {
        record(
            "layer_norm_32800x1024_vidx",
            time(&|| vidx_model::ops::layer_norm(&norm, &x))?,
            0.0,
            2.0 * in_bytes,
        );
    }
    println!(
        "{}",
        serde_json::json!({"micro": "candle", "dtype": format!("{dtype:?}"), "ops": results})
    );
    Ok(())
}
